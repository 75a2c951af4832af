//! Live listener counts, per topic and per filter: each streaming listener
//! holds a [`Listening`] guard for as long as it is connected, and dropping
//! it (the client went away, shutdown) takes it out of the count. Shown by
//! `GET /v1/topics/{name}/presence` and, per topic, by `/metrics`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::Json;
use courier_api::realtime::{FilterPresence, Presence as PresenceView};
use courier_api::Problem;

use crate::api::AppState;
use crate::auth::Access;
use crate::error::ApiError;
use crate::extract::Name;

/// Listeners by topic, then by filter label. A `std` mutex: it is held only
/// for a map update, never across an await.
#[derive(Default)]
pub(crate) struct Presence {
    topics: Mutex<HashMap<String, HashMap<String, u64>>>,
}

impl Presence {
    /// Counts one listener of `topic` with the filter labelled `filter` until
    /// the guard is dropped.
    pub(crate) fn join(self: &Arc<Self>, topic: &str, filter: String) -> Listening {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        *topics
            .entry(topic.to_owned())
            .or_default()
            .entry(filter.clone())
            .or_default() += 1;
        Listening {
            presence: self.clone(),
            topic: topic.to_owned(),
            filter,
        }
    }

    /// The counts of one topic (zeros when nobody listens).
    pub(crate) fn of(&self, topic: &str) -> PresenceView {
        let topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        let mut filters: Vec<FilterPresence> = topics
            .get(topic)
            .into_iter()
            .flatten()
            .map(|(filter, &listeners)| FilterPresence {
                filter: filter.clone(),
                listeners,
            })
            .collect();
        filters.sort_by(|a, b| {
            b.listeners
                .cmp(&a.listeners)
                .then_with(|| a.filter.cmp(&b.filter))
        });
        PresenceView {
            topic: topic.to_owned(),
            listeners: filters.iter().map(|f| f.listeners).sum(),
            filters,
        }
    }

    /// Listeners per topic, for `/metrics`, sorted by topic.
    pub(crate) fn per_topic(&self) -> Vec<(String, u64)> {
        let topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, u64)> = topics
            .iter()
            .map(|(t, filters)| (t.clone(), filters.values().sum()))
            .collect();
        out.sort();
        out
    }
}

/// One counted listener; dropping it uncounts it.
pub(crate) struct Listening {
    presence: Arc<Presence>,
    topic: String,
    filter: String,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let mut topics = self
            .presence
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(filters) = topics.get_mut(&self.topic) {
            if let Some(n) = filters.get_mut(&self.filter) {
                *n -= 1;
                if *n == 0 {
                    filters.remove(&self.filter);
                }
            }
            if filters.is_empty() {
                topics.remove(&self.topic);
            }
        }
    }
}

/// Live listeners of a topic, in total and by filter.
#[utoipa::path(
    get, path = "/v1/topics/{name}/presence", tag = "realtime",
    params(
        ("name" = String, Path, description = "Topic name"),
        ("token" = Option<String>, Query, description = "A JWT, for clients that cannot send `Authorization: Bearer`"),
    ),
    security((), ("bearer" = []), ("token" = [])),
    responses(
        (status = 200, description = "Streaming listeners now (event streams and WebSocket subscriptions; long polls are not counted)", body = PresenceView),
        (status = 401, description = "`unauthenticated`", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: the token grants no subscription to this topic", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`topic_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn presence(
    State(s): State<AppState>,
    Name(topic): Name,
    access: Access,
) -> Result<Json<PresenceView>, ApiError> {
    access.check_observe(&topic)?;
    s.engine.topic(&topic).await?;
    Ok(Json(s.realtime.presence.of(&topic)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_and_uncount() {
        let p = Arc::new(Presence::default());
        let a = p.join("t", String::new());
        let b = p.join("t", "key=k".into());
        let c = p.join("t", "key=k".into());
        let view = p.of("t");
        assert_eq!(view.listeners, 3);
        assert_eq!(view.filters[0].filter, "key=k");
        assert_eq!(view.filters[0].listeners, 2);
        drop((a, b));
        assert_eq!(p.per_topic(), vec![("t".to_owned(), 1)]);
        drop(c);
        assert!(p.per_topic().is_empty());
        assert_eq!(p.of("t").listeners, 0);
    }
}
