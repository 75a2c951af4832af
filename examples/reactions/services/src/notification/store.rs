//! The notification service's queries.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::db::{now_ms, Db};
use crate::event::{ReactionCreated, ReactionKind};

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Notification {
    pub id: String,
    pub event_id: String,
    /// The recipient: the post's author.
    pub user_id: String,
    pub actor_id: String,
    pub actor_name: String,
    pub post_id: String,
    pub post_text: String,
    pub kind: ReactionKind,
    /// When the reaction was accepted, ms since the epoch.
    pub event_created_at: i64,
    /// When this notification was stored.
    pub created_at: i64,
    pub read: bool,
}

/// Stores the notification of an event unless one exists: `(notification,
/// true)` when this call stored it.
pub async fn store(db: &Db, event: &ReactionCreated) -> sqlx::Result<(Notification, bool)> {
    let _writer = db.writer().await;
    let mut conn = db.pool.acquire().await?;
    store_on(&mut conn, event).await
}

/// [`store`] for a batch of events, in one transaction: one commit (and one
/// WAL sync) for the batch instead of one per event.
pub async fn store_many(
    db: &Db,
    events: &[ReactionCreated],
) -> sqlx::Result<Vec<(Notification, bool)>> {
    let _writer = db.writer().await;
    let mut tx = db.pool.begin().await?;
    let mut stored = Vec::with_capacity(events.len());
    for event in events {
        stored.push(store_on(&mut tx, event).await?);
    }
    tx.commit().await?;
    Ok(stored)
}

async fn store_on(
    conn: &mut sqlx::AnyConnection,
    event: &ReactionCreated,
) -> sqlx::Result<(Notification, bool)> {
    let n = Notification {
        id: crate::reaction::store::new_id(),
        event_id: event.event_id.clone(),
        user_id: event.post_author_id.clone(),
        actor_id: event.user_id.clone(),
        actor_name: event.user_name.clone(),
        post_id: event.post_id.clone(),
        post_text: event.post_text.clone(),
        kind: event.kind,
        event_created_at: event.created_at,
        created_at: now_ms(),
        read: false,
    };
    let inserted = sqlx::query(
        "INSERT INTO notifications (id, event_id, user_id, actor_id, actor_name, post_id, post_text,
                                    kind, event_created_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&n.id)
    .bind(&n.event_id)
    .bind(&n.user_id)
    .bind(&n.actor_id)
    .bind(&n.actor_name)
    .bind(&n.post_id)
    .bind(&n.post_text)
    .bind(n.kind.as_str())
    .bind(n.event_created_at)
    .bind(n.created_at)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok((n, true));
    }
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM notifications WHERE event_id = $1"
    ))
    .bind(&event.event_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok((notification_of(&row)?, false))
}

const COLUMNS: &str = "id, event_id, user_id, actor_id, actor_name, post_id, post_text, kind,
                       event_created_at, created_at, read_at";

pub async fn list(db: &Db, user_id: &str, limit: i64) -> sqlx::Result<Vec<Notification>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM notifications WHERE user_id = $1
         ORDER BY created_at DESC, id DESC LIMIT $2"
    ))
    .bind(user_id)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(notification_of).collect()
}

pub async fn unread(db: &Db, user_id: &str) -> sqlx::Result<i64> {
    sqlx::query("SELECT COUNT(*) AS n FROM notifications WHERE user_id = $1 AND read_at IS NULL")
        .bind(user_id)
        .fetch_one(&db.pool)
        .await?
        .try_get("n")
}

/// Marks every notification of the user read; how many changed.
pub async fn mark_read(db: &Db, user_id: &str) -> sqlx::Result<u64> {
    let _writer = db.writer().await;
    Ok(
        sqlx::query("UPDATE notifications SET read_at = $1 WHERE user_id = $2 AND read_at IS NULL")
            .bind(now_ms())
            .bind(user_id)
            .execute(&db.pool)
            .await?
            .rows_affected(),
    )
}

/// Notifications stored in total, and for events created at or after `since` (ms).
pub async fn count_since(db: &Db, since: i64) -> sqlx::Result<(i64, i64)> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS total,
                COALESCE(SUM(CASE WHEN event_created_at >= $1 THEN 1 ELSE 0 END), 0) AS since
         FROM notifications",
    )
    .bind(since)
    .fetch_one(&db.pool)
    .await?;
    Ok((row.try_get("total")?, row.try_get("since")?))
}

fn notification_of(row: &AnyRow) -> sqlx::Result<Notification> {
    let kind: String = row.try_get("kind")?;
    let read_at: Option<i64> = row.try_get("read_at")?;
    Ok(Notification {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        user_id: row.try_get("user_id")?,
        actor_id: row.try_get("actor_id")?,
        actor_name: row.try_get("actor_name")?,
        post_id: row.try_get("post_id")?,
        post_text: row.try_get("post_text")?,
        kind: ReactionKind::parse(&kind).ok_or_else(|| sqlx::Error::Decode(kind.into()))?,
        event_created_at: row.try_get("event_created_at")?,
        created_at: row.try_get("created_at")?,
        read: read_at.is_some(),
    })
}
