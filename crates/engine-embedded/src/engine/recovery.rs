//! Opening a data directory: see the module docs of `engine` for the steps.

use super::*;

pub(super) type Recovered = (MetaStore, Meta, Journal, Registry);

pub(super) fn recover(
    config: &EmbeddedConfig,
    dir: &std::path::Path,
    clock: Clock,
    cancel: &CancellationToken,
) -> Result<Recovered> {
    std::fs::create_dir_all(dir)?;
    let (store, meta) = MetaStore::open(dir)?;
    let mut registry = Registry::default();
    for (name, topic_config) in &meta.topics {
        let log = TopicLog::open(&topic_dir(config, name), config.log_options())?;
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
