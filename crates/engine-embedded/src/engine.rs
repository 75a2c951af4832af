//! The embedded engine: topics, subscriptions, recovery and the background work
//! (lease expiry, dead-lettering, checkpoints, retention).
//!
//! # Recovery
//! 1. `meta.json` names the topics and subscriptions.
//! 2. Each topic log opens, cutting off any torn tail, and re-learns the client
//!    ids of its dedup window.
//! 3. Each subscription starts from its last checkpoint (or its start
//!    position) and replays the journal entries numbered after it.
//! 4. A checkpoint is taken at once, so the journal starts short again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use courier_core::subscription::{Event, SubState};
use courier_core::types::dlq_headers;
use courier_core::{
    error::validate_name, Clock, Delivery, Engine, Error, Message, NewMessage, PublishReceipt,
    PullRequest, Result, SeekTarget, Seq, StartPosition, Stats, SubscriptionConfig,
    SubscriptionInfo, TopicConfig, TopicInfo,
};
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::journal::Journal;
use crate::log::{LogOptions, TopicLog};
use crate::meta::{Meta, MetaStore, SubscriptionMeta};
use crate::subscription::{JournalEntry, Subscription};
use crate::topic::Topic;
use crate::EmbeddedConfig;

/// Longest accepted message id, ordering key, header name or value.
const MAX_ID_LEN: usize = 1024;
const MAX_HEADER_VALUE_LEN: usize = 64 * 1024;
/// Most messages in one publish call: a bigger batch holds a commit group and
/// its memory for too long.
pub const MAX_BATCH: usize = 10_000;
/// Dead letters moved per state-lock acquisition.
const DEAD_LETTER_BATCH: usize = 512;

pub struct EmbeddedEngine {
    config: EmbeddedConfig,
    clock: Clock,
    journal: Journal,
    store: Arc<MetaStore>,
    registry: RwLock<Registry>,
    /// Serialises changes to topics and subscriptions (and so to `meta.json`).
    admin: tokio::sync::Mutex<Meta>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    closed: AtomicBool,
    me: Weak<EmbeddedEngine>,
    /// An exclusive lock on `data_dir/LOCK`, held for the engine's life: two
    /// processes writing one log would corrupt it. Released by `shutdown`.
    lock: parking_lot::Mutex<Option<std::fs::File>>,
}

#[derive(Default)]
struct Registry {
    topics: HashMap<String, Arc<Topic>>,
    subscriptions: HashMap<String, Arc<Subscription>>,
}

impl EmbeddedEngine {
    pub async fn open(config: EmbeddedConfig) -> Result<Arc<EmbeddedEngine>> {
        config.validate()?;
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir)?;
        let lock = std::fs::File::create(dir.join("LOCK"))?;
        lock.try_lock().map_err(|_| {
            Error::Storage(format!(
                "{} is in use by another Courier process",
                dir.display()
            ))
        })?;
        let clock = Clock::new();
        let cfg = config.clone();
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        // Opening reads files; keep it off the async workers.
        let (store, meta, journal, registry) =
            tokio::task::spawn_blocking(move || recover(&cfg, &dir, clock, &token))
                .await
                .map_err(|e| Error::Storage(format!("recovery panicked: {e}")))??;
        let engine = Arc::new_cyclic(|me| EmbeddedEngine {
            config,
            clock,
            journal,
            store: Arc::new(store),
            registry: RwLock::new(registry),
            admin: tokio::sync::Mutex::new(meta),
            cancel,
            tasks: TaskTracker::new(),
            closed: AtomicBool::new(false),
            me: me.clone(),
            lock: parking_lot::Mutex::new(Some(lock)),
        });
        engine.checkpoint().await?;
        let subs: Vec<_> = engine
            .registry
            .read()
            .subscriptions
            .values()
            .cloned()
            .collect();
        for sub in subs {
            engine.start_dead_letter_worker(sub);
        }
        engine.start_background();
        Ok(engine)
    }

    pub fn config(&self) -> &EmbeddedConfig {
        &self.config
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::ShuttingDown)
        } else {
            Ok(())
        }
    }

    fn topic_ref(&self, name: &str) -> Result<Arc<Topic>> {
        self.registry
            .read()
            .topics
            .get(name)
            .cloned()
            .ok_or_else(|| Error::TopicNotFound(name.to_string()))
    }

    fn sub_ref(&self, name: &str) -> Result<Arc<Subscription>> {
        self.check_open()?;
        self.registry
            .read()
            .subscriptions
            .get(name)
            .cloned()
            .ok_or_else(|| Error::SubscriptionNotFound(name.to_string()))
    }

    fn subscriptions(&self) -> Vec<Arc<Subscription>> {
        self.registry
            .read()
            .subscriptions
            .values()
            .cloned()
            .collect()
    }

    fn topic_info(&self, topic: &Topic) -> TopicInfo {
        let (messages, bytes) = topic.log.usage();
        TopicInfo {
            name: topic.name.clone(),
            config: topic.config.clone(),
            first_seq: topic.log.first_seq(),
            next_seq: topic.log.next_seq(),
            messages,
            bytes,
        }
    }

    /// Creates a topic while holding the admin lock.
    fn create_topic_locked(
        &self,
        meta: &mut Meta,
        name: &str,
        config: TopicConfig,
    ) -> Result<Arc<Topic>> {
        validate_name(name)?;
        if let Some(existing) = self.registry.read().topics.get(name) {
            return if existing.config == config {
                Ok(existing.clone())
            } else {
                Err(Error::TopicExists(name.to_string()))
            };
        }
        let log = TopicLog::open_with(
            &topic_dir(&self.config, name),
            self.log_options(),
            self.config.preallocate_segments,
        )?;
        let topic = Arc::new(Topic::new(name.to_string(), config.clone(), log));
        meta.topics.insert(name.to_string(), config);
        self.store.save(meta)?;
        self.registry
            .write()
            .topics
            .insert(name.to_string(), topic.clone());
        Ok(topic)
    }

    fn log_options(&self) -> LogOptions {
        LogOptions {
            segment_bytes: self.config.segment_bytes,
            fsync: self.config.fsync,
        }
    }

    /// Writes a checkpoint of every subscription whose state changed, then
    /// drops the journal files the checkpoints cover.
    pub async fn checkpoint(&self) -> Result<()> {
        let file = self.journal.rotate().await?;
        let subs: Vec<_> = self
            .subscriptions()
            .into_iter()
            .filter_map(|sub| {
                let snapshot = {
                    let st = sub.state.lock();
                    (st.applied() != sub.checkpointed()).then(|| st.snapshot())
                }?;
                Some((sub, snapshot))
            })
            .collect();
        let topics: Vec<_> = self.registry.read().topics.values().cloned().collect();
        let topics: Vec<_> = topics
            .into_iter()
            .map(|topic| {
                let snapshot = topic.dedup_snapshot();
                (topic, snapshot)
            })
            .filter(|(topic, s)| s.covered != topic.dedup_saved.load(Ordering::Acquire))
            .collect();
        let store = self.store.clone();
        let journal = self.journal.clone();
        // Each file is written and fsynced: keep that off the async workers.
        tokio::task::spawn_blocking(move || {
            for (sub, snapshot) in subs {
                store.save_snapshot(sub.id, &snapshot)?;
                sub.set_checkpointed(snapshot.applied);
            }
            for (topic, snapshot) in topics {
                store.save_dedup(&topic.name, &snapshot)?;
                topic.dedup_saved.store(snapshot.covered, Ordering::Release);
            }
            journal.remove_before(file)
        })
        .await
        .map_err(|e| Error::Storage(format!("checkpoint task failed: {e}")))?
    }

    fn start_background(&self) {
        self.every(self.config.tick_interval, |engine| async move {
            engine.tick();
        });
        self.every(self.config.checkpoint_interval, |engine| async move {
            if let Err(e) = engine.checkpoint().await {
                tracing::error!(error = %e, "checkpoint failed");
            }
        });
        self.every(self.config.retention_interval, |engine| async move {
            if let Err(e) = engine.enforce_retention() {
                tracing::error!(error = %e, "retention failed");
            }
        });
    }

    /// Runs `job` every `period` (never when it is zero) until shutdown. The
    /// task holds the engine weakly, so it never keeps a dropped engine alive.
    fn every<F, Fut>(&self, period: Duration, job: F)
    where
        F: Fn(Arc<EmbeddedEngine>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        if period.is_zero() {
            return;
        }
        let me = self.me.clone();
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Some(engine) = me.upgrade() else { break };
                job(engine).await;
            }
        });
    }

    /// Expires leases everywhere, so messages of consumers that died come back
    /// (and run out of attempts) even when nobody is pulling.
    pub fn tick(&self) {
        let now = self.clock.now();
        for sub in self.subscriptions() {
            let mut st = sub.state.lock();
            sub.expire_locked(&mut st, now);
            if st.next_wake().is_some_and(|at| at <= now) {
                sub.notify.notify_waiters();
            }
        }
    }

    /// Applies every topic's retention limits and tells its subscriptions.
    pub fn enforce_retention(&self) -> Result<()> {
        let now = self.clock.now();
        let topics: Vec<_> = self.registry.read().topics.values().cloned().collect();
        for topic in topics {
            let first = topic.log.enforce_retention(&topic.config.retention, now)?;
            for sub in self.subscriptions() {
                if sub.topic.name != topic.name {
                    continue;
                }
                let mut st = sub.state.lock();
                if st.ack_floor() < first {
                    let e = st.emit(Event::Trimmed { first });
                    sub.record(&st, e);
                }
            }
        }
        Ok(())
    }

    fn start_dead_letter_worker(&self, sub: Arc<Subscription>) {
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
    /// here, so a crash in between dead-letters it twice rather than never.
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

    async fn store_dead_letters(
        &self,
        sub: &Subscription,
        views: &[courier_core::subscription::PendingView],
    ) -> Result<()> {
        let dlq = {
            let mut meta = self.admin.lock().await;
            self.create_topic_locked(&mut meta, &sub.dlq_topic, TopicConfig::default())
                .or_else(|e| match e {
                    Error::TopicExists(_) => self.topic_ref(&sub.dlq_topic),
                    e => Err(e),
                })?
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
                id: None,
                key: m.key,
                headers,
                body: m.body,
                deliver_at: None,
            });
        }
        if !letters.is_empty() {
            dlq.publish(letters, now).await?;
        }
        Ok(())
    }

    /// This subscription's dead letters after its replay cursor, oldest first,
    /// reading at most `limit` of them (and `up_to` in the dead-letter topic).
    fn scan_dead_letters(
        &self,
        sub: &Subscription,
        limit: usize,
        up_to: Option<Seq>,
    ) -> Result<(Vec<Message>, Seq)> {
        let Ok(dlq) = self.topic_ref(&sub.dlq_topic) else {
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

#[async_trait]
impl Engine for EmbeddedEngine {
    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicInfo> {
        self.check_open()?;
        let mut meta = self.admin.lock().await;
        let topic = self.create_topic_locked(&mut meta, name, config)?;
        Ok(self.topic_info(&topic))
    }

    async fn delete_topic(&self, name: &str) -> Result<()> {
        self.check_open()?;
        let mut meta = self.admin.lock().await;
        let topic = self.topic_ref(name)?;
        let attached: Vec<String> = meta
            .subscriptions
            .iter()
            .filter(|(_, s)| s.config.topic == name)
            .map(|(n, _)| n.clone())
            .collect();
        if !attached.is_empty() {
            return Err(Error::TopicInUse {
                topic: name.to_string(),
                subscriptions: attached.join(", "),
            });
        }
        meta.topics.remove(name);
        self.store.save(&meta)?;
        self.registry.write().topics.remove(name);
        topic.log.close().await?;
        std::fs::remove_dir_all(topic_dir(&self.config, name))?;
        self.store.remove_dedup(name)?;
        Ok(())
    }

    async fn topic(&self, name: &str) -> Result<TopicInfo> {
        self.check_open()?;
        let topic = self.topic_ref(name)?;
        Ok(self.topic_info(&topic))
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        self.check_open()?;
        let mut topics: Vec<_> = self.registry.read().topics.values().cloned().collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics.iter().map(|t| self.topic_info(t)).collect())
    }

    async fn publish(&self, topic: &str, messages: Vec<NewMessage>) -> Result<Vec<PublishReceipt>> {
        self.check_open()?;
        let topic = self.topic_ref(topic)?;
        if messages.is_empty() || messages.len() > MAX_BATCH {
            return Err(Error::InvalidArgument(format!(
                "a publish carries 1 to {MAX_BATCH} messages, not {}",
                messages.len()
            )));
        }
        for m in &messages {
            self.validate_message(m)?;
        }
        let now = self.clock.now();
        if messages.iter().all(|m| m.id.is_none()) {
            return topic.publish(messages, now).await;
        }
        // Claiming ids and storing them must run to the end even if the caller
        // goes away (a client that disconnects), or a claim would stay behind
        // and block every retry of its id.
        tokio::spawn(async move { topic.publish(messages, now).await })
            .await
            .map_err(|e| Error::Storage(format!("publish task failed: {e}")))?
    }

    async fn read(&self, topic: &str, from: Seq, max: usize) -> Result<Vec<Message>> {
        self.check_open()?;
        let topic = self.topic_ref(topic)?;
        let batch = topic
            .log
            .read(from.max(1), max.clamp(1, 10_000), 32 << 20)?;
        Ok(batch.into_iter().map(|m| topic.named(m)).collect())
    }

    async fn create_subscription(
        &self,
        name: &str,
        config: SubscriptionConfig,
    ) -> Result<SubscriptionInfo> {
        self.check_open()?;
        validate_name(name)?;
        validate_subscription(name, &config)?;
        let mut meta = self.admin.lock().await;
        if let Some(existing) = meta.subscriptions.get(name) {
            return if existing.config == config {
                Ok(self.sub_ref(name)?.info())
            } else {
                Err(Error::SubscriptionExists(name.to_string()))
            };
        }
        let topic = self.topic_ref(&config.topic)?;
        let dlq_name = config.dead_letter_topic_for(name);
        if dlq_name == config.topic {
            return Err(Error::InvalidArgument(
                "the dead-letter topic must differ from the subscription's topic".into(),
            ));
        }
        self.create_topic_locked(&mut meta, &dlq_name, TopicConfig::default())
            .or_else(|e| match e {
                Error::TopicExists(_) => self.topic_ref(&dlq_name),
                e => Err(e),
            })?;
        let log = &topic.log;
        let start_seq = match config.start {
            StartPosition::New => log.next_seq(),
            StartPosition::Earliest => log.first_seq(),
            StartPosition::Seq(s) => s.clamp(log.first_seq(), log.next_seq()),
            StartPosition::Time(t) => log.seq_for_time(t)?,
        };
        let id = meta.next_subscription_id;
        meta.next_subscription_id += 1;
        meta.subscriptions.insert(
            name.to_string(),
            SubscriptionMeta {
                id,
                config: config.clone(),
                start_seq,
            },
        );
        self.store.save(&meta)?;
        let sub = Arc::new(Subscription::new(
            name.to_string(),
            id,
            topic,
            SubState::new(config, start_seq),
            self.journal.clone(),
            self.clock,
            self.cancel.child_token(),
        ));
        self.registry
            .write()
            .subscriptions
            .insert(name.to_string(), sub.clone());
        self.start_dead_letter_worker(sub.clone());
        Ok(sub.info())
    }

    async fn delete_subscription(&self, name: &str) -> Result<()> {
        self.check_open()?;
        let mut meta = self.admin.lock().await;
        let Some(removed) = meta.subscriptions.remove(name) else {
            return Err(Error::SubscriptionNotFound(name.to_string()));
        };
        self.store.save(&meta)?;
        if let Some(sub) = self.registry.write().subscriptions.remove(name) {
            sub.cancel.cancel();
            sub.notify.notify_waiters();
        }
        self.store.remove_snapshot(removed.id)
    }

    async fn subscription(&self, name: &str) -> Result<SubscriptionInfo> {
        Ok(self.sub_ref(name)?.info())
    }

    async fn list_subscriptions(&self) -> Result<Vec<SubscriptionInfo>> {
        self.check_open()?;
        let mut subs: Vec<_> = self.subscriptions().iter().map(|s| s.info()).collect();
        subs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(subs)
    }

    async fn pull(&self, subscription: &str, request: PullRequest) -> Result<Vec<Delivery>> {
        let sub = self.sub_ref(subscription)?;
        if request.max_messages == 0 {
            return Err(Error::InvalidArgument(
                "max_messages must be at least 1".into(),
            ));
        }
        tokio::select! {
            out = sub.pull(&request) => out,
            _ = sub.cancel.cancelled() => Err(Error::SubscriptionNotFound(subscription.to_string())),
            _ = self.cancel.cancelled() => Err(Error::ShuttingDown),
        }
    }

    async fn ack(&self, subscription: &str, seqs: &[Seq]) -> Result<()> {
        self.sub_ref(subscription)?.ack(seqs).await
    }

    async fn nack(
        &self,
        subscription: &str,
        seqs: &[Seq],
        delay: Option<Duration>,
        error: Option<String>,
    ) -> Result<()> {
        self.sub_ref(subscription)?.nack(seqs, delay, error).await
    }

    async fn extend(&self, subscription: &str, seqs: &[Seq], by: Duration) -> Result<()> {
        if by.is_zero() {
            return Err(Error::InvalidArgument(
                "extend needs a positive duration".into(),
            ));
        }
        self.sub_ref(subscription)?.extend(seqs, by).await
    }

    async fn seek(&self, subscription: &str, target: SeekTarget) -> Result<()> {
        self.sub_ref(subscription)?.seek(target).await
    }

    async fn dead_letters(&self, subscription: &str, max: usize) -> Result<Vec<Message>> {
        let sub = self.sub_ref(subscription)?;
        Ok(self.scan_dead_letters(&sub, max.clamp(1, 10_000), None)?.0)
    }

    async fn replay_dead_letters(&self, subscription: &str, up_to: Option<Seq>) -> Result<u64> {
        let sub = self.sub_ref(subscription)?;
        let mut replayed = 0;
        loop {
            let (letters, last) = self.scan_dead_letters(&sub, 4096, up_to)?;
            if last == 0 {
                break;
            }
            let seqs: Vec<(Seq, Option<String>)> = letters
                .iter()
                .filter_map(|m| {
                    let seq = m.headers.get(dlq_headers::SEQ)?.parse().ok()?;
                    Some((seq, m.headers.get(dlq_headers::KEY).cloned()))
                })
                .collect();
            replayed += seqs.len() as u64;
            let mut st = sub.state.lock();
            let e = st.emit(Event::Replayed {
                seqs,
                at: self.clock.now(),
                dlq_cursor: last,
            });
            sub.record(&st, e);
        }
        sub.notify.notify_waiters();
        sub.sync().await?;
        Ok(replayed)
    }

    async fn stats(&self) -> Result<Stats> {
        self.check_open()?;
        let registry = self.registry.read();
        let mut stats = Stats {
            topics: registry.topics.len() as u64,
            subscriptions: registry.subscriptions.len() as u64,
            ..Stats::default()
        };
        for topic in registry.topics.values() {
            let (messages, bytes) = topic.log.usage();
            stats.messages += messages;
            stats.bytes += bytes;
            stats.published_total += topic.log.next_seq() - 1;
        }
        for sub in registry.subscriptions.values() {
            let c = sub.state.lock().counters();
            stats.delivered_total += c.delivered;
            stats.acked_total += c.acked;
            stats.dead_lettered_total += c.dead_lettered;
        }
        Ok(stats)
    }

    async fn shutdown(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        let _admin = self.admin.lock().await;
        self.checkpoint().await?;
        let topics: Vec<_> = self.registry.read().topics.values().cloned().collect();
        for topic in topics {
            topic.log.close().await?;
        }
        self.journal.close().await?;
        self.lock.lock().take();
        Ok(())
    }
}

impl EmbeddedEngine {
    fn validate_message(&self, m: &NewMessage) -> Result<()> {
        if m.body.len() > self.config.max_message_bytes {
            return Err(Error::MessageTooLarge {
                size: m.body.len(),
                limit: self.config.max_message_bytes,
            });
        }
        let short = |what: &str, s: &str| {
            if s.is_empty() || s.len() > MAX_ID_LEN {
                Err(Error::InvalidArgument(format!(
                    "{what} must be 1 to {MAX_ID_LEN} bytes"
                )))
            } else {
                Ok(())
            }
        };
        if let Some(id) = &m.id {
            short("message id", id)?;
        }
        if let Some(key) = &m.key {
            short("ordering key", key)?;
        }
        for (name, value) in &m.headers {
            short("header name", name)?;
            if value.len() > MAX_HEADER_VALUE_LEN {
                return Err(Error::InvalidArgument(format!(
                    "header '{name}' is longer than {MAX_HEADER_VALUE_LEN} bytes"
                )));
            }
        }
        Ok(())
    }
}

fn validate_subscription(name: &str, c: &SubscriptionConfig) -> Result<()> {
    let bad = |msg: &str| {
        Err(Error::InvalidArgument(format!(
            "subscription '{name}': {msg}"
        )))
    };
    validate_name(&c.topic)?;
    if let Some(dlq) = &c.dead_letter_topic {
        validate_name(dlq)?;
    }
    if c.ack_deadline < Duration::from_millis(1) {
        return bad("ack_deadline must be at least 1 ms");
    }
    if c.max_in_flight == 0 || c.max_in_flight_per_consumer == 0 {
        return bad("max_in_flight and max_in_flight_per_consumer must be at least 1");
    }
    let r = &c.retry;
    if !(r.multiplier.is_finite() && r.multiplier >= 1.0) {
        return bad("retry.multiplier must be a number >= 1");
    }
    if !(0.0..=1.0).contains(&r.jitter) {
        return bad("retry.jitter must be between 0 and 1");
    }
    if r.initial_backoff > r.max_backoff {
        return bad("retry.initial_backoff must not exceed retry.max_backoff");
    }
    Ok(())
}

fn topic_dir(config: &EmbeddedConfig, name: &str) -> PathBuf {
    config.data_dir.join("topics").join(name)
}

type Recovered = (MetaStore, Meta, Journal, Registry);

fn recover(
    config: &EmbeddedConfig,
    dir: &std::path::Path,
    clock: Clock,
    cancel: &CancellationToken,
) -> Result<Recovered> {
    std::fs::create_dir_all(dir)?;
    let (store, meta) = MetaStore::open(dir)?;
    let options = LogOptions {
        segment_bytes: config.segment_bytes,
        fsync: config.fsync,
    };
    let mut registry = Registry::default();
    for (name, topic_config) in &meta.topics {
        let log = TopicLog::open_with(
            &topic_dir(config, name),
            options.clone(),
            config.preallocate_segments,
        )?;
        let topic = Topic::new(name.clone(), topic_config.clone(), log);
        topic.recover_dedup(clock.now(), store.load_dedup(name)?)?;
        registry.topics.insert(name.clone(), Arc::new(topic));
    }
    let (journal, entries) = Journal::open(&dir.join("journal"), config.fsync)?;
    // Per subscription: its name, its state, and the event number its snapshot covers.
    let mut states: HashMap<u64, (String, SubState, u64)> = HashMap::new();
    for (name, sub) in &meta.subscriptions {
        let state = match store.load_snapshot(sub.id)? {
            Some(snapshot) => SubState::restore(sub.config.clone(), snapshot),
            None => SubState::new(sub.config.clone(), sub.start_seq),
        };
        let checkpointed = state.applied();
        states.insert(sub.id, (name.clone(), state, checkpointed));
    }
    for bytes in entries.iter().filter(|b| !b.is_empty()) {
        let entry: JournalEntry = postcard::from_bytes(bytes)
            .map_err(|e| Error::Corrupt(format!("journal entry: {e}")))?;
        let Some((name, state, _)) = states.get_mut(&entry.sub) else {
            continue;
        };
        if entry.no <= state.applied() {
            continue;
        }
        if entry.no != state.applied() + 1 {
            tracing::warn!(subscription = %name, expected = state.applied() + 1, found = entry.no,
                "gap in the journal; continuing");
        }
        state.apply(&entry.event);
    }
    for (id, (name, state, checkpointed)) in states {
        let sub = &meta.subscriptions[&name];
        let topic = registry
            .topics
            .get(&sub.config.topic)
            .cloned()
            .ok_or_else(|| Error::Corrupt(format!("subscription '{name}' has no topic")))?;
        let sub = Subscription::new(
            name.clone(),
            id,
            topic,
            state,
            journal.clone(),
            clock,
            cancel.child_token(),
        );
        // The entries replayed above are only in the journal: the checkpoint
        // taken at open must save this state before it removes those files.
        sub.set_checkpointed(checkpointed);
        registry.subscriptions.insert(name, Arc::new(sub));
    }
    Ok((store, meta, journal, registry))
}
