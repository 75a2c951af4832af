//! Background work: checkpoints, lease expiry when nobody pulls, retention.

use super::*;

impl EmbeddedEngine {
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
        let all_topics: Vec<_> = self.registry.read().topics.values().cloned().collect();
        let topics: Vec<_> = all_topics
            .iter()
            .cloned()
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
            for topic in all_topics {
                topic.flush_delays()?;
                topic.log.persist_next_seq()?;
            }
            journal.remove_before(file)
        })
        .await
        .map_err(|e| Error::Storage(format!("checkpoint task failed: {e}")))?
    }

    pub(super) fn start_background(&self) {
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
            if sub.next_wake(&st).is_some_and(|at| at <= now) {
                sub.notify.notify_waiters();
            }
        }
        // A delay index that outgrew its memory bound is flushed off the workers.
        let full: Vec<_> = self
            .registry
            .read()
            .topics
            .values()
            .filter(|t| t.delays.wants_flush())
            .cloned()
            .collect();
        for topic in full {
            self.tasks.spawn_blocking(move || {
                if let Err(e) = topic.try_flush_delays() {
                    tracing::error!(topic = %topic.name, error = %e, "flushing the delay index failed");
                }
            });
        }
    }

    /// Applies every topic's retention limits and tells its subscriptions.
    pub fn enforce_retention(&self) -> Result<()> {
        let now = self.clock.now();
        let topics: Vec<_> = self.registry.read().topics.values().cloned().collect();
        for topic in topics {
            let first = topic.log.enforce_retention(&topic.config.retention, now)?;
            if first > topic.delays.floor() {
                topic.delays.trim(first)?;
            }
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
}
