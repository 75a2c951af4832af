//! A topic: its log, its delay index, and publish-side deduplication.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use courier_core::{Error, Message, Millis, NewMessage, PublishReceipt, Result, Seq, TopicConfig};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::delays::DelayIndex;
use crate::log::{AppendRecord, Appended, TopicLog};

pub(crate) struct Topic {
    pub name: String,
    pub config: TopicConfig,
    pub log: TopicLog,
    id_salt: u128,
    /// (deliver_at, seq) of every message published to be delivered later.
    pub delays: DelayIndex,
    /// Publishes of delayed messages between their append and their index
    /// entries: the index covers the log only up to where none is.
    delays_feeding: Mutex<usize>,
    /// Held by a flush of the delay index, so flushes asked for while one runs are skipped.
    delays_flushing: Mutex<()>,
    dedup: Mutex<Dedup>,
    /// `covered` of the last dedup checkpoint written.
    pub dedup_saved: std::sync::atomic::AtomicU64,
}

/// Client-supplied ids seen within the dedup window.
///
/// Memory is bounded by the window times the rate of publishes that carry an
/// id; ids the broker generates are never stored here (they cannot repeat).
#[derive(Default)]
struct Dedup {
    stored: HashMap<String, Seq>,
    /// Ids in the order they were stored, for expiry.
    order: VecDeque<(Millis, String)>,
    /// Ids being appended right now: a concurrent retry waits for the first.
    in_flight: HashMap<String, watch::Receiver<Option<Seq>>>,
    /// Publishes with ids between their claim and their `stored` entries.
    appending: usize,
    /// `stored` holds every client id of the log below this sequence (within the window).
    covered: Seq,
}

/// The dedup table as checkpointed, so a restart reads only the log written
/// after it instead of the whole window.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct DedupSnapshot {
    pub covered: Seq,
    pub entries: Vec<(String, Seq, Millis)>,
}

enum Claim {
    Stored(Seq),
    Wait(watch::Receiver<Option<Seq>>),
    Mine(watch::Sender<Option<Seq>>),
}

impl Topic {
    /// `salt` goes into every id the broker generates for this topic; it is
    /// stored with the topic's definition so ids never change once given out.
    pub fn new(
        name: String,
        config: TopicConfig,
        log: TopicLog,
        delays: DelayIndex,
        salt: u16,
    ) -> Self {
        Self {
            name,
            config,
            log,
            delays,
            delays_feeding: Mutex::new(0),
            delays_flushing: Mutex::new(()),
            id_salt: u128::from(salt) << 64,
            dedup: Mutex::new(Dedup::default()),
            dedup_saved: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A new topic's salt: random, so two topics' ids differ even for the
    /// same sequence and millisecond.
    pub fn new_salt() -> u16 {
        rand::random()
    }

    /// The salt of a topic created before salts were stored: it was derived
    /// from the name with std's `DefaultHasher`, which is not stable across
    /// Rust releases, so it is computed once at the first open and stored.
    pub fn legacy_salt(name: &str) -> u16 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut hasher);
        (hasher.finish() & 0xffff) as u16
    }

    /// Re-learns the client ids published within the dedup window: those of
    /// the last checkpoint, then those of the log written after it.
    pub fn recover_dedup(&self, now: Millis, snapshot: Option<DedupSnapshot>) -> Result<()> {
        let since = now.saturating_sub(self.config.dedup_window.as_millis() as u64);
        let snapshot = snapshot.unwrap_or_default();
        let mut dedup = self.dedup.lock();
        for (id, seq, at) in snapshot.entries {
            if at >= since && seq < self.log.next_seq() {
                dedup.order.push_back((at, id.clone()));
                dedup.stored.insert(id, seq);
            }
        }
        let mut seq = self.log.seq_for_time(since)?.max(snapshot.covered);
        loop {
            let batch = self.log.read(seq, 4096, 8 << 20)?;
            let Some(last) = batch.last() else { break };
            seq = last.seq + 1;
            for m in batch.into_iter().filter(|m| !m.id.is_empty()) {
                dedup.order.push_back((m.published_at, m.id.clone()));
                dedup.stored.insert(m.id, m.seq);
            }
        }
        dedup.covered = seq;
        Ok(())
    }

    /// Adds the client ids of `messages` to the dedup table as if stored at
    /// `now`, so they are remembered for a whole window from now on.
    pub fn remember_ids(&self, messages: &[Message], now: Millis) {
        let mut dedup = self.dedup.lock();
        for m in messages.iter().filter(|m| !m.id.is_empty()) {
            if dedup.stored.insert(m.id.clone(), m.seq).is_none() {
                dedup.order.push_back((now, m.id.clone()));
            }
        }
    }

    /// The dedup table for a checkpoint. `covered` only moves while no publish
    /// with ids is between its append and its table entry, so everything below
    /// it is in the table.
    pub fn dedup_snapshot(&self) -> DedupSnapshot {
        let mut dedup = self.dedup.lock();
        if dedup.appending == 0 {
            dedup.covered = self.log.next_seq();
        }
        let entries = dedup
            .order
            .iter()
            .filter_map(|(at, id)| dedup.stored.get(id).map(|&seq| (id.clone(), seq, *at)))
            .collect();
        DedupSnapshot {
            covered: dedup.covered,
            entries,
        }
    }

    /// The id of a message the broker named itself: a ULID made of the publish
    /// time and the sequence, so it is unique, sortable by time, and needs no
    /// bytes in the log.
    pub fn generated_id(&self, seq: Seq, published_at: Millis) -> String {
        ulid::Ulid::from_parts(published_at, self.id_salt | seq as u128).to_string()
    }

    /// Fills in the generated id of a message read from the log.
    pub fn named(&self, mut message: Message) -> Message {
        if message.id.is_empty() {
            message.id = self.generated_id(message.seq, message.published_at);
        }
        message
    }

    /// Appends `messages`, returning once they are durable. Ids already stored
    /// within the dedup window are answered with their original sequence.
    pub async fn publish(
        &self,
        messages: Vec<NewMessage>,
        now: Millis,
    ) -> Result<Vec<PublishReceipt>> {
        if messages.iter().all(|m| m.id.is_none()) {
            return self.publish_unnamed(messages, now).await;
        }
        let mut receipts: Vec<Option<PublishReceipt>> = vec![None; messages.len()];
        let mut waits = Vec::new();
        let mut mine = Vec::new();
        let mut records = Vec::with_capacity(messages.len());
        let mut record_index = Vec::with_capacity(messages.len());
        {
            let mut dedup = self.dedup.lock();
            dedup.expire(now.saturating_sub(self.config.dedup_window.as_millis() as u64));
            dedup.appending += 1;
            for (i, m) in messages.into_iter().enumerate() {
                if let Some(id) = &m.id {
                    match dedup.claim(id) {
                        Claim::Stored(seq) => {
                            receipts[i] = Some(duplicate(seq, id));
                            continue;
                        }
                        Claim::Wait(rx) => {
                            waits.push((i, id.clone(), rx));
                            continue;
                        }
                        Claim::Mine(tx) => mine.push((records.len(), id.clone(), tx)),
                    }
                }
                record_index.push((i, m.id.clone()));
                records.push(AppendRecord {
                    id: m.id.unwrap_or_default(),
                    key: m.key,
                    headers: m.headers,
                    body: m.body,
                    deliver_at: m.deliver_at,
                });
            }
        }
        let records_were_empty = records.is_empty();
        if !records_were_empty {
            let appended = self.append(records, now).await;
            let mut dedup = self.dedup.lock();
            match &appended {
                Ok(a) => {
                    for (offset, id, tx) in mine {
                        let seq = a.first_seq + offset as u64;
                        dedup.in_flight.remove(&id);
                        dedup.stored.insert(id.clone(), seq);
                        dedup.order.push_back((a.published_at, id));
                        let _ = tx.send(Some(seq));
                    }
                }
                Err(_) => {
                    // Dropping the senders tells waiters to fail too; the ids
                    // were not stored, so a later retry may append.
                    for (_, id, _) in mine {
                        dedup.in_flight.remove(&id);
                    }
                }
            }
            dedup.appending -= 1;
            drop(dedup);
            let a = appended?;
            for (offset, (i, id)) in record_index.into_iter().enumerate() {
                let seq = a.first_seq + offset as u64;
                receipts[i] = Some(PublishReceipt {
                    seq,
                    id: id.unwrap_or_else(|| self.generated_id(seq, a.published_at)),
                    duplicate: false,
                });
            }
        }
        if records_were_empty {
            self.dedup.lock().appending -= 1;
        }
        for (i, id, mut rx) in waits {
            let seq = loop {
                if let Some(seq) = *rx.borrow_and_update() {
                    break seq;
                }
                if rx.changed().await.is_err() {
                    return Err(Error::Storage(format!(
                        "the first publish of id '{id}' failed; retry"
                    )));
                }
            };
            receipts[i] = Some(duplicate(seq, &id));
        }
        Ok(receipts
            .into_iter()
            .map(|r| r.expect("every message answered"))
            .collect())
    }
}

impl Topic {
    /// Publishes messages without client ids: nothing to deduplicate.
    async fn publish_unnamed(
        &self,
        messages: Vec<NewMessage>,
        now: Millis,
    ) -> Result<Vec<PublishReceipt>> {
        let records = messages
            .into_iter()
            .map(|m| AppendRecord {
                id: String::new(),
                key: m.key,
                headers: m.headers,
                body: m.body,
                deliver_at: m.deliver_at,
            })
            .collect::<Vec<_>>();
        let n = records.len() as u64;
        let a = self.append(records, now).await?;
        Ok((a.first_seq..a.first_seq + n)
            .map(|seq| PublishReceipt {
                seq,
                id: self.generated_id(seq, a.published_at),
                duplicate: false,
            })
            .collect())
    }
}

impl Topic {
    /// Appends to the log and enters the delayed records (due after `now`)
    /// in the delay index.
    async fn append(&self, records: Vec<AppendRecord>, now: Millis) -> Result<Appended> {
        let delayed: Vec<(usize, Millis)> = records
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.deliver_at.filter(|&at| at > now).map(|at| (i, at)))
            .collect();
        if delayed.is_empty() {
            return self.log.append_at(records, now).await;
        }
        *self.delays_feeding.lock() += 1;
        let appended = self.log.append_at(records, now).await;
        if let Ok(a) = &appended {
            let entries: Vec<(Millis, Seq)> = delayed
                .iter()
                .map(|&(i, at)| (at, a.first_seq + i as u64))
                .collect();
            self.delays.insert(&entries);
        }
        *self.delays_feeding.lock() -= 1;
        appended
    }

    /// Makes the delay index durable up to where it covers the log. Blocking.
    pub fn flush_delays(&self) -> Result<()> {
        let _flushing = self.delays_flushing.lock();
        self.flush_delays_locked()
    }

    /// Like [`flush_delays`](Self::flush_delays), unless a flush is running.
    pub fn try_flush_delays(&self) -> Result<()> {
        match self.delays_flushing.try_lock() {
            Some(_flushing) => self.flush_delays_locked(),
            None => Ok(()),
        }
    }

    fn flush_delays_locked(&self) -> Result<()> {
        let covered = {
            let feeding = self.delays_feeding.lock();
            // An append counted here took its seqs after this read.
            (*feeding == 0).then(|| self.log.next_seq())
        };
        self.delays
            .flush(covered.unwrap_or_else(|| self.delays.covered()))
    }

    /// After a restart: enters the delayed records of the log written after
    /// the index's last flush (a message is delayed if due after it was stored).
    pub fn recover_delays(&self) -> Result<()> {
        let mut seq = self.delays.covered().max(self.log.first_seq());
        loop {
            let batch = self.log.read(seq, 4096, 8 << 20)?;
            let Some(last) = batch.last() else { break };
            seq = last.seq + 1;
            let entries: Vec<(Millis, Seq)> = batch
                .iter()
                .filter_map(|m| {
                    m.deliver_at
                        .filter(|&at| at > m.published_at)
                        .map(|at| (at, m.seq))
                })
                .collect();
            self.delays.insert(&entries);
        }
        Ok(())
    }
}

fn duplicate(seq: Seq, id: &str) -> PublishReceipt {
    PublishReceipt {
        seq,
        id: id.to_string(),
        duplicate: true,
    }
}

impl Dedup {
    fn expire(&mut self, before: Millis) {
        while let Some((at, _)) = self.order.front() {
            if *at >= before {
                break;
            }
            let (_, id) = self.order.pop_front().expect("front exists");
            self.stored.remove(&id);
        }
    }

    fn claim(&mut self, id: &str) -> Claim {
        if let Some(&seq) = self.stored.get(id) {
            return Claim::Stored(seq);
        }
        if let Some(rx) = self.in_flight.get(id) {
            return Claim::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        self.in_flight.insert(id.to_string(), rx);
        Claim::Mine(tx)
    }
}
