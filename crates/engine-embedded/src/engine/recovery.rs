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
    let (store, mut meta) = MetaStore::open(dir)?;
    let unsalted: Vec<String> = meta
        .topics
        .keys()
        .filter(|name| !meta.topic_salts.contains_key(*name))
        .cloned()
        .collect();
    if !unsalted.is_empty() {
        for name in unsalted {
            meta.topic_salts
                .insert(name.clone(), Topic::legacy_salt(&name));
        }
        store.save(&meta)?;
    }
    let mut registry = Registry::default();
    for (name, topic_config) in &meta.topics {
        let dir = topic_dir(config, name);
        let log = TopicLog::open(&dir, config.log_options())?;
        let delays = DelayIndex::open(&dir.join(DELAYS_DIR), config.fsync)?;
        let salt = meta.topic_salts[name];
        let topic = Topic::new(name.clone(), topic_config.clone(), log, delays, salt);
        topic.recover_delays()?;
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
    // A subscription that read further than the log now reaches (its tail
    // was lost) proves those sequences were given out: they are never
    // given again.
    for (name, state, _) in states.values() {
        let topic = &meta.subscriptions[name].config.topic;
        if let Some(topic) = registry.topics.get(topic) {
            topic.log.ensure_next_seq_at_least(state.next())?;
        }
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
            clock.clone(),
            cancel.child_token(),
        );
        // The entries replayed above are only in the journal: the checkpoint
        // taken at open must save this state before it removes those files.
        sub.set_checkpointed(checkpointed);
        registry.subscriptions.insert(name, Arc::new(sub));
    }
    Ok((store, meta, journal, registry))
}
