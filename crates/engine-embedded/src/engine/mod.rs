//! The embedded engine: topics, subscriptions, recovery and the background work
//! (lease expiry, dead-lettering, checkpoints, retention).
//!
//! # Recovery
//! 1. `meta.json` names the topics and subscriptions.
//! 2. Each topic log opens, cutting off any torn tail, and re-learns the client
//!    ids of its dedup window from its dedup checkpoint and the log after it.
//! 3. Each subscription starts from its last checkpoint (or its start
//!    position) and replays the journal entries numbered after it.
//! 4. A checkpoint is taken at once, so the journal starts short again.

mod background;
mod dead_letter;
mod recovery;
mod validate;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::state::{Event, SubState};
use async_trait::async_trait;
use courier_core::types::dlq_headers;
use courier_core::{
    error::validate_name, Capabilities, Clock, Delivery, Engine, Error, LeaseToken, Message,
    NewMessage, Outcome, PublishReceipt, PullRequest, Result, SeekTarget, Seq, StartPosition,
    Stats, SubscriptionConfig, SubscriptionInfo, SubscriptionUpdate, Tail, TopicConfig, TopicInfo,
};
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::delays::DelayIndex;
use crate::journal::Journal;
use crate::log::TopicLog;
use crate::meta::{Meta, MetaStore, SubscriptionMeta};
use crate::subscription::{JournalEntry, Subscription};
use crate::topic::Topic;
use crate::EmbeddedConfig;

use recovery::recover;
use validate::validate_subscription;

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
    /// Computed once: requests check against it on every call.
    caps: Capabilities,
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
        Self::open_with_clock(config, Clock::system()).await
    }

    /// Opens with another clock than the system's (tests drive time with it).
    pub async fn open_with_clock(
        config: EmbeddedConfig,
        clock: Clock,
    ) -> Result<Arc<EmbeddedEngine>> {
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
        let cfg = config.clone();
        let recovery_clock = clock.clone();
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        // Opening reads files; keep it off the async workers.
        let (store, meta, journal, registry) =
            tokio::task::spawn_blocking(move || recover(&cfg, &dir, recovery_clock, &token))
                .await
                .map_err(|e| Error::Storage(format!("recovery panicked: {e}")))??;
        let caps = Capabilities::all("embedded", config.max_message_bytes);
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
            caps,
            me: me.clone(),
            lock: parking_lot::Mutex::new(Some(lock)),
        });
        engine.remember_letters()?;
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

    /// Tail counters of a topic: shared and catch-up log reads, running
    /// readers, listeners (for tests).
    #[doc(hidden)]
    pub fn tail_stats(&self, topic: &str) -> Option<crate::tail::TailStats> {
        self.topic_ref(topic).ok().map(|t| crate::tail::stats(&t))
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

    /// The dead-letter topic `name`, created with defaults when missing (one
    /// configured by hand keeps its settings). Holds the admin lock.
    fn ensure_dead_letter_topic(&self, meta: &mut Meta, name: &str) -> Result<Arc<Topic>> {
        self.create_topic_locked(meta, name, TopicConfig::default())
            .or_else(|e| match e {
                Error::TopicExists(_) => self.topic_ref(name),
                e => Err(e),
            })
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
        let dir = topic_dir(&self.config, name);
        let log = TopicLog::open(&dir, self.config.log_options())?;
        let delays = DelayIndex::open(&dir.join(DELAYS_DIR), self.config.fsync)?;
        let salt = Topic::new_salt();
        let topic = Arc::new(Topic::new(
            name.to_string(),
            config.clone(),
            log,
            delays,
            salt,
        ));
        meta.topics.insert(name.to_string(), config);
        meta.topic_salts.insert(name.to_string(), salt);
        self.store.save(meta)?;
        self.registry
            .write()
            .topics
            .insert(name.to_string(), topic.clone());
        Ok(topic)
    }
}

#[async_trait]
impl Engine for EmbeddedEngine {
    fn capabilities(&self) -> Capabilities {
        self.caps.clone()
    }

    async fn tail(&self, topic: &str, from: StartPosition) -> Result<Tail> {
        self.check_open()?;
        let topic = self.topic_ref(topic)?;
        // Not raised to the first retained sequence: the tail reports the gap.
        let from = start_seq(&topic.log, from)?;
        Ok(crate::tail::follow(topic, from, self.cancel.clone()))
    }

    async fn update_subscription(
        &self,
        name: &str,
        update: SubscriptionUpdate,
    ) -> Result<SubscriptionInfo> {
        self.check_open()?;
        let mut meta = self.admin.lock().await;
        let sub = self.sub_ref(name)?;
        let current = meta
            .subscriptions
            .get(name)
            .ok_or_else(|| Error::SubscriptionNotFound(name.to_string()))?;
        let config = update.applied_to(&current.config);
        validate_subscription(name, &config)?;
        self.caps.check_subscription(&config)?;
        let dlq_name = config.dead_letter_topic_for(name);
        if config == current.config {
            return Ok(sub.info());
        }
        self.ensure_dead_letter_topic(&mut meta, &dlq_name)?;
        meta.subscriptions
            .get_mut(name)
            .expect("checked above")
            .config = config.clone();
        self.store.save(&meta)?;
        sub.reconfigure(config).await?;
        Ok(sub.info())
    }

    async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicInfo> {
        self.check_open()?;
        self.caps.check_topic(&config)?;
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
        meta.topic_salts.remove(name);
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
        let caps = &self.caps;
        let now = self.clock.now();
        let mut messages = messages;
        for m in &mut messages {
            caps.check_message(m)?;
            self.validate_message(m)?;
            if let Some(delay) = m.delay.take() {
                if m.deliver_at.is_some() {
                    return Err(Error::InvalidArgument(
                        "give a delay or a delivery time, not both".into(),
                    ));
                }
                let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                m.deliver_at = (ms > 0).then(|| now.saturating_add(ms));
            }
        }
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
        self.caps.check_subscription(&config)?;
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
        self.ensure_dead_letter_topic(&mut meta, &dlq_name)?;
        let log = &topic.log;
        // What retention removed is skipped, not reported, by a subscription.
        let start_seq = start_seq(log, config.start)?.max(log.first_seq());
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
            self.clock.clone(),
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

    async fn ack(&self, subscription: &str, tokens: &[LeaseToken]) -> Result<Vec<Outcome>> {
        self.sub_ref(subscription)?.ack(tokens).await
    }

    async fn nack(
        &self,
        subscription: &str,
        tokens: &[LeaseToken],
        delay: Option<Duration>,
        error: Option<String>,
    ) -> Result<Vec<Outcome>> {
        self.sub_ref(subscription)?.nack(tokens, delay, error).await
    }

    async fn extend(
        &self,
        subscription: &str,
        tokens: &[LeaseToken],
        by: Duration,
    ) -> Result<Vec<Outcome>> {
        if by.is_zero() {
            return Err(Error::InvalidArgument(
                "extend needs a positive duration".into(),
            ));
        }
        let sub = self.sub_ref(subscription)?;
        let ack_deadline = sub.state.lock().config().ack_deadline;
        self.caps.check_extend(by, ack_deadline)?;
        sub.extend(tokens, by).await
    }

    async fn release(&self, subscription: &str, tokens: &[LeaseToken]) -> Result<Vec<Outcome>> {
        self.sub_ref(subscription)?.release(tokens).await
    }

    async fn reject(
        &self,
        subscription: &str,
        tokens: &[LeaseToken],
        error: Option<String>,
    ) -> Result<Vec<Outcome>> {
        self.sub_ref(subscription)?.reject(tokens, error).await
    }

    async fn seek(&self, subscription: &str, target: SeekTarget) -> Result<()> {
        self.caps.check_seek(&target)?;
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

/// The sequence a start position names on `log` (a sequence past the end is
/// the end; one removed by retention is kept, for the caller to decide).
fn start_seq(log: &TopicLog, start: StartPosition) -> Result<Seq> {
    Ok(match start {
        StartPosition::New => log.next_seq(),
        StartPosition::Earliest => log.first_seq(),
        StartPosition::Seq(s) => s.clamp(1, log.next_seq()),
        StartPosition::Time(t) => log.seq_for_time(t)?,
    })
}

/// The delay index's folder inside a topic's.
const DELAYS_DIR: &str = "delays";

fn topic_dir(config: &EmbeddedConfig, name: &str) -> PathBuf {
    config.data_dir.join("topics").join(name)
}
