//! Moving messages that ran out of attempts to their dead-letter topic, and
//! reading them back for listing and replay.

use super::*;
use crate::state::PendingView;

impl EmbeddedEngine {
    pub(super) fn start_dead_letter_worker(&self, sub: Arc<Subscription>) {
        let me = self.me.clone();
        let cancel = sub.cancel.clone();
        sub.exhausted.notify_one();
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = sub.exhausted.notified() => {}
                }
                let Some(engine) = me.upgrade() else { break };
                if let Err(e) = engine.dead_letter(&sub).await {
                    tracing::warn!(subscription = %sub.name, error = %e, "dead-lettering failed; will retry");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => sub.exhausted.notify_one(),
                    }
                }
            }
        });
    }

    /// Moves every message of `sub` that ran out of attempts to its
    /// dead-letter topic. The copy is durable before the message is settled
    /// here; a crash in between stores it again after the restart, under the
    /// same id (see [`letter_id`]), which the dead-letter topic deduplicates
    /// (see [`EmbeddedEngine::remember_letters`]), so it is stored once.
    async fn dead_letter(&self, sub: &Subscription) -> Result<()> {
        loop {
            let views = sub.state.lock().take_exhausted(DEAD_LETTER_BATCH);
            if views.is_empty() {
                return Ok(());
            }
            let seqs: Vec<Seq> = views.iter().map(|v| v.seq).collect();
            let result = self.store_dead_letters(sub, &views).await;
            {
                let mut st = sub.state.lock();
                if let Err(e) = result {
                    st.abort_dead_letter(&seqs);
                    return Err(e);
                }
                let e = st.emit(Event::DeadLettered { seqs });
                sub.record(&st, e);
            }
            sub.notify.notify_waiters();
            // Durable before the next batch: a crash now would otherwise store
            // these letters twice.
            sub.sync().await?;
        }
    }

    async fn store_dead_letters(&self, sub: &Subscription, views: &[PendingView]) -> Result<()> {
        let dlq_topic = sub.dlq_topic();
        let dlq = {
            let mut meta = self.admin.lock().await;
            self.ensure_dead_letter_topic(&mut meta, &dlq_topic)?
        };
        let now = self.clock.now();
        let mut letters = Vec::with_capacity(views.len());
        for view in views {
            // A message already removed by retention has nothing to keep.
            let Some(m) = sub.topic.log.read_one(view.seq)? else {
                continue;
            };
            let m = sub.topic.named(m);
            let mut headers = m.headers;
            headers.insert(dlq_headers::SUBSCRIPTION.into(), sub.name.clone());
            headers.insert(dlq_headers::TOPIC.into(), sub.topic.name.clone());
            headers.insert(dlq_headers::SEQ.into(), m.seq.to_string());
            headers.insert(dlq_headers::ID.into(), m.id);
            headers.insert(dlq_headers::ATTEMPTS.into(), view.attempts.to_string());
            headers.insert(dlq_headers::DEAD_LETTERED_AT.into(), now.to_string());
            if let Some(error) = &view.last_error {
                headers.insert(dlq_headers::LAST_ERROR.into(), error.clone());
            }
            if let Some(key) = &m.key {
                headers.insert(dlq_headers::KEY.into(), key.clone());
            }
            letters.push(NewMessage {
                id: Some(letter_id(sub.id, view)),
                key: m.key,
                headers,
                body: m.body,
                deliver_at: None,
                delay: None,
            });
        }
        if !letters.is_empty() {
            dlq.publish(letters, now).await?;
        }
        Ok(())
    }

    /// This subscription's dead letters after its replay cursor, oldest first,
    /// reading at most `limit` of them (and `up_to` in the dead-letter topic).
    pub(super) fn scan_dead_letters(
        &self,
        sub: &Subscription,
        limit: usize,
        up_to: Option<Seq>,
    ) -> Result<(Vec<Message>, Seq)> {
        let Ok(dlq) = self.topic_ref(&sub.dlq_topic()) else {
            return Ok((Vec::new(), 0));
        };
        let mut from = sub.state.lock().dlq_cursor() + 1;
        let end = up_to.map_or(Seq::MAX, |s| s.saturating_add(1));
        let mut out = Vec::new();
        let mut last = 0;
        while out.len() < limit && from < end {
            let batch = dlq.log.read(from, 1024, 16 << 20)?;
            let Some(tail) = batch.last() else { break };
            from = tail.seq + 1;
            for m in batch {
                if m.seq >= end || out.len() >= limit {
                    return Ok((out, last));
                }
                last = m.seq;
                if m.headers.get(dlq_headers::SUBSCRIPTION) == Some(&sub.name)
                    && m.headers.get(dlq_headers::TOPIC) == Some(&sub.topic.name)
                {
                    out.push(dlq.named(m));
                }
            }
        }
        Ok((out, last))
    }
}

/// The id of a dead letter: the subscription, the message and the incarnation
/// of its tracking (a replayed or re-sought message dies under a new one).
pub(super) fn letter_id(sub_id: u64, view: &PendingView) -> String {
    format!("courier-dlq.{sub_id}.{}.{}", view.seq, view.born)
}

/// Letters that may still be in doubt after a crash, per subscription that
/// writes to a dead-letter topic: one batch whose settling was not durable
/// yet, and one more that a subscription sharing the topic wrote meanwhile
/// (settles are journaled in one ordered journal, so none can be further behind).
const LETTERS_IN_DOUBT: usize = 2 * DEAD_LETTER_BATCH;

impl EmbeddedEngine {
    /// Teaches each dead-letter topic the ids of its last letters, whatever
    /// their age, so that a dead-lettering redone after a crash (even one
    /// longer than the topic's dedup window) is recognised as a duplicate.
    pub(super) fn remember_letters(&self) -> Result<()> {
        let mut writers: HashMap<String, usize> = HashMap::new();
        for sub in self.subscriptions() {
            *writers.entry(sub.dlq_topic()).or_default() += 1;
        }
        for (name, subs) in writers {
            let Ok(dlq) = self.topic_ref(&name) else {
                continue;
            };
            let n = (LETTERS_IN_DOUBT * subs) as u64;
            let from = dlq
                .log
                .next_seq()
                .saturating_sub(n)
                .max(dlq.log.first_seq());
            let mut seq = from;
            loop {
                let batch = dlq.log.read(seq, 4096, 16 << 20)?;
                let Some(last) = batch.last() else { break };
                seq = last.seq + 1;
                dlq.remember_ids(&batch, self.clock.now());
            }
        }
        Ok(())
    }
}
