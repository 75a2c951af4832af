//! Seed data: a few users and posts, through the reaction service's API.

use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Clone, Deserialize)]
pub struct Created {
    pub id: String,
}

/// Users and posts made by [`seed`].
#[derive(Debug, Clone, Default)]
pub struct Seeded {
    pub users: Vec<String>,
    pub posts: Vec<String>,
}

pub async fn user(http: &reqwest::Client, base: &str, name: &str) -> anyhow::Result<String> {
    let c: Created = http
        .post(format!("{base}/v1/users"))
        .json(&json!({ "name": name }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(c.id)
}

pub async fn post(
    http: &reqwest::Client,
    base: &str,
    author: &str,
    text: &str,
) -> anyhow::Result<String> {
    let c: Created = http
        .post(format!("{base}/v1/posts"))
        .json(&json!({ "author_id": author, "text": text }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(c.id)
}

/// Three users with a post or two each; nothing when users exist already.
pub async fn seed(base: &str) -> anyhow::Result<Seeded> {
    let http = reqwest::Client::new();
    let existing: serde_json::Value = http
        .get(format!("{base}/v1/users"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    if existing["users"].as_array().is_some_and(|u| !u.is_empty()) {
        return Ok(Seeded::default());
    }
    let mut seeded = Seeded::default();
    for (name, posts) in [
        (
            "Alice",
            &["Shipped the outbox relay today. Nothing lost, nothing twice."][..],
        ),
        (
            "Bob",
            &[
                "Our notification service went down for an hour and nobody noticed.",
                "Hot take: the broker should be the most boring part of the system.",
            ][..],
        ),
        (
            "Carol",
            &["p99 is the only latency your users remember."][..],
        ),
    ] {
        let id = user(&http, base, name).await?;
        for text in posts {
            seeded.posts.push(post(&http, base, &id, text).await?);
        }
        seeded.users.push(id);
    }
    Ok(seeded)
}
