//! The reaction service's queries. Every write that emits an event commits
//! its outbox row in the same transaction.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use crate::db::{now_ms, Db};
use crate::event::{ReactionCreated, ReactionKind, REACTIONS_TOPIC, REACTION_CREATED};

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Post {
    pub id: String,
    pub author_id: String,
    pub author_name: String,
    pub text: String,
    pub created_at: i64,
    pub counts: Counts,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub like: i64,
    pub love: i64,
    pub laugh: i64,
    pub total: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reaction {
    pub id: String,
    pub post_id: String,
    pub user_id: String,
    pub kind: ReactionKind,
    pub created_at: i64,
}

/// What [`insert_reaction`] did.
pub enum Inserted {
    /// A new reaction, with the event to deliver.
    New(Reaction, Box<ReactionCreated>),
    /// The user had already reacted with this kind: nothing changed.
    Existing(Reaction),
}

pub fn new_id() -> String {
    ulid::Ulid::generate().to_string()
}

pub async fn create_user(db: &Db, name: &str) -> sqlx::Result<User> {
    let _writer = db.writer().await;
    let user = User {
        id: new_id(),
        name: name.to_owned(),
        created_at: now_ms(),
    };
    sqlx::query("INSERT INTO users (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(&user.id)
        .bind(&user.name)
        .bind(user.created_at)
        .execute(&db.pool)
        .await?;
    Ok(user)
}

pub async fn users(db: &Db) -> sqlx::Result<Vec<User>> {
    let rows = sqlx::query("SELECT id, name, created_at FROM users ORDER BY created_at, id")
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(user_of).collect()
}

pub async fn user(pool: &AnyPool, id: &str) -> sqlx::Result<Option<User>> {
    let row = sqlx::query("SELECT id, name, created_at FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(user_of).transpose()
}

fn user_of(row: &AnyRow) -> sqlx::Result<User> {
    Ok(User {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

pub async fn create_post(db: &Db, author: &User, text: &str) -> sqlx::Result<Post> {
    let _writer = db.writer().await;
    let post = Post {
        id: new_id(),
        author_id: author.id.clone(),
        author_name: author.name.clone(),
        text: text.to_owned(),
        created_at: now_ms(),
        counts: Counts::default(),
    };
    sqlx::query("INSERT INTO posts (id, author_id, text, created_at) VALUES ($1, $2, $3, $4)")
        .bind(&post.id)
        .bind(&post.author_id)
        .bind(&post.text)
        .bind(post.created_at)
        .execute(&db.pool)
        .await?;
    Ok(post)
}

const POST_COLUMNS: &str = "p.id, p.author_id, u.name AS author_name, p.text, p.created_at,
    (SELECT COUNT(*) FROM reactions r WHERE r.post_id = p.id AND r.kind = 'like') AS n_like,
    (SELECT COUNT(*) FROM reactions r WHERE r.post_id = p.id AND r.kind = 'love') AS n_love,
    (SELECT COUNT(*) FROM reactions r WHERE r.post_id = p.id AND r.kind = 'laugh') AS n_laugh";

pub async fn posts(db: &Db) -> sqlx::Result<Vec<Post>> {
    let sql = format!(
        "SELECT {POST_COLUMNS} FROM posts p JOIN users u ON u.id = p.author_id
         ORDER BY p.created_at DESC, p.id DESC LIMIT 200"
    );
    let rows = sqlx::query(&sql).fetch_all(&db.pool).await?;
    rows.iter().map(post_of).collect()
}

pub async fn post(pool: &AnyPool, id: &str) -> sqlx::Result<Option<Post>> {
    let sql = format!(
        "SELECT {POST_COLUMNS} FROM posts p JOIN users u ON u.id = p.author_id WHERE p.id = $1"
    );
    let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
    row.as_ref().map(post_of).transpose()
}

fn post_of(row: &AnyRow) -> sqlx::Result<Post> {
    let (like, love, laugh): (i64, i64, i64) = (
        row.try_get("n_like")?,
        row.try_get("n_love")?,
        row.try_get("n_laugh")?,
    );
    Ok(Post {
        id: row.try_get("id")?,
        author_id: row.try_get("author_id")?,
        author_name: row.try_get("author_name")?,
        text: row.try_get("text")?,
        created_at: row.try_get("created_at")?,
        counts: Counts {
            like,
            love,
            laugh,
            total: like + love + laugh,
        },
    })
}

/// What a new reaction needs of its post.
#[derive(Debug, Clone)]
pub struct PostRef {
    pub id: String,
    pub author_id: String,
    pub text: String,
}

/// What a new reaction needs of its user.
#[derive(Debug, Clone)]
pub struct UserRef {
    pub id: String,
    pub name: String,
}

/// The post and the user of a new reaction, each `None` when it does not
/// exist, in one query: a reaction's request path reads the database once
/// before its transaction (no reaction counts; each round trip to SQLite is a
/// thread hand-off, which is what the request's latency is made of).
pub async fn reaction_target(
    pool: &AnyPool,
    post_id: &str,
    user_id: &str,
) -> sqlx::Result<(Option<PostRef>, Option<UserRef>)> {
    let row = sqlx::query(
        "SELECT p.author_id, p.text, u.name AS user_name
         FROM (SELECT 1 AS one) AS one
         LEFT JOIN posts p ON p.id = $1
         LEFT JOIN users u ON u.id = $2",
    )
    .bind(post_id)
    .bind(user_id)
    .fetch_one(pool)
    .await?;
    let author_id: Option<String> = row.try_get("author_id")?;
    let text: Option<String> = row.try_get("text")?;
    let user_name: Option<String> = row.try_get("user_name")?;
    let post = author_id.zip(text).map(|(author_id, text)| PostRef {
        id: post_id.to_owned(),
        author_id,
        text,
    });
    let user = user_name.map(|name| UserRef {
        id: user_id.to_owned(),
        name,
    });
    Ok((post, user))
}

/// Stores a reaction. With `outbox`, the `reaction.created` event is written
/// to the outbox in the same transaction: both rows commit or neither does.
pub async fn insert_reaction(
    db: &Db,
    post: &PostRef,
    user: &UserRef,
    kind: ReactionKind,
    outbox: bool,
) -> sqlx::Result<Inserted> {
    let _writer = db.writer().await;
    let reaction = Reaction {
        id: new_id(),
        post_id: post.id.clone(),
        user_id: user.id.clone(),
        kind,
        created_at: now_ms(),
    };
    let event = ReactionCreated {
        event_id: new_id(),
        event_type: REACTION_CREATED.into(),
        reaction_id: reaction.id.clone(),
        post_id: post.id.clone(),
        post_author_id: post.author_id.clone(),
        post_text: post.text.clone(),
        user_id: user.id.clone(),
        user_name: user.name.clone(),
        kind,
        created_at: reaction.created_at,
    };
    let mut tx = db.pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO reactions (id, post_id, user_id, kind, created_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (post_id, user_id, kind) DO NOTHING",
    )
    .bind(&reaction.id)
    .bind(&reaction.post_id)
    .bind(&reaction.user_id)
    .bind(kind.as_str())
    .bind(reaction.created_at)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        tx.rollback().await?;
        let existing = find_reaction(&db.pool, &post.id, &user.id, kind)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        return Ok(Inserted::Existing(existing));
    }
    if outbox {
        let payload = serde_json::to_string(&event).map_err(|e| sqlx::Error::Encode(e.into()))?;
        sqlx::query(
            "INSERT INTO outbox (id, topic, msg_key, payload, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&event.event_id)
        .bind(REACTIONS_TOPIC)
        .bind(&event.post_id)
        .bind(payload)
        .bind(event.created_at)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Inserted::New(reaction, Box::new(event)))
}

pub async fn find_reaction(
    pool: &AnyPool,
    post_id: &str,
    user_id: &str,
    kind: ReactionKind,
) -> sqlx::Result<Option<Reaction>> {
    let row = sqlx::query(
        "SELECT id, post_id, user_id, kind, created_at FROM reactions
         WHERE post_id = $1 AND user_id = $2 AND kind = $3",
    )
    .bind(post_id)
    .bind(user_id)
    .bind(kind.as_str())
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(reaction_of).transpose()
}

/// Removes a reaction; whether there was one. Undo emits no event: the
/// notification already sent stays (see the README).
pub async fn delete_reaction(
    db: &Db,
    post_id: &str,
    user_id: &str,
    kind: ReactionKind,
) -> sqlx::Result<bool> {
    let _writer = db.writer().await;
    let n = sqlx::query("DELETE FROM reactions WHERE post_id = $1 AND user_id = $2 AND kind = $3")
        .bind(post_id)
        .bind(user_id)
        .bind(kind.as_str())
        .execute(&db.pool)
        .await?
        .rows_affected();
    Ok(n > 0)
}

/// Undoes a reaction whose synchronous notification failed.
pub async fn delete_reaction_by_id(db: &Db, id: &str) -> sqlx::Result<()> {
    let _writer = db.writer().await;
    sqlx::query("DELETE FROM reactions WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

pub async fn reactions_of(db: &Db, post_id: &str) -> sqlx::Result<Vec<Reaction>> {
    let rows = sqlx::query(
        "SELECT id, post_id, user_id, kind, created_at FROM reactions
         WHERE post_id = $1 ORDER BY created_at, id",
    )
    .bind(post_id)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(reaction_of).collect()
}

fn reaction_of(row: &AnyRow) -> sqlx::Result<Reaction> {
    let kind: String = row.try_get("kind")?;
    Ok(Reaction {
        id: row.try_get("id")?,
        post_id: row.try_get("post_id")?,
        user_id: row.try_get("user_id")?,
        kind: ReactionKind::parse(&kind).ok_or_else(|| sqlx::Error::Decode(kind.into()))?,
        created_at: row.try_get("created_at")?,
    })
}

/// One pending outbox row.
pub struct Pending {
    pub id: String,
    pub topic: String,
    pub key: Option<String>,
    pub payload: String,
}

pub async fn pending(db: &Db, limit: i64) -> sqlx::Result<Vec<Pending>> {
    let rows = sqlx::query(
        "SELECT id, topic, msg_key, payload FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Pending {
                id: row.try_get("id")?,
                topic: row.try_get("topic")?,
                key: row.try_get("msg_key")?,
                payload: row.try_get("payload")?,
            })
        })
        .collect()
}

pub async fn mark_sent(db: &Db, ids: &[String]) -> sqlx::Result<()> {
    let _writer = db.writer().await;
    let sql = format!(
        "UPDATE outbox SET sent_at = $1 WHERE id IN ({})",
        crate::db::placeholders(2, ids.len())
    );
    let mut query = sqlx::query(&sql).bind(now_ms());
    for id in ids {
        query = query.bind(id);
    }
    query.execute(&db.pool).await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct OutboxStats {
    pub pending: i64,
    pub sent: i64,
}

pub async fn outbox_stats(db: &Db) -> sqlx::Result<OutboxStats> {
    let row = sqlx::query(
        "SELECT COALESCE(SUM(CASE WHEN sent_at IS NULL THEN 1 ELSE 0 END), 0) AS pending,
                COALESCE(SUM(CASE WHEN sent_at IS NULL THEN 0 ELSE 1 END), 0) AS sent
         FROM outbox",
    )
    .fetch_one(&db.pool)
    .await?;
    Ok(OutboxStats {
        pending: row.try_get("pending")?,
        sent: row.try_get("sent")?,
    })
}
