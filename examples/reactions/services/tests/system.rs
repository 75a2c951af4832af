//! The reactions example over its real processes: the `courier` binary and
//! the two service binaries on free ports, SQLite in a temp dir (and
//! PostgreSQL when `COURIER_TEST_POSTGRES_URL` or `DATABASE_URL` names one).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{eventually, System};
use reqwest::Method;
use serde_json::{json, Value};

/// The event ids of a user's notifications.
fn event_ids(list: &Value) -> Vec<String> {
    list["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["event_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn exactly_n_notifications(sys: &System, user: &str, n: usize) -> Vec<String> {
    eventually(&format!("{n} notifications are stored"), || async {
        let ids = event_ids(&sys.notifications(user).await);
        (ids.len() >= n).then_some(())
    })
    .await;
    // Give a duplicate time to show up, then check there is none.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let ids = event_ids(&sys.notifications(user).await);
    assert_eq!(ids.len(), n, "exactly {n} notifications: {ids:?}");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), n, "no duplicates");
    ids
}

/// Reads an SSE stream until its first `message` event; its JSON data.
async fn first_sse_message(mut response: reqwest::Response) -> Value {
    let mut text = String::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(30), response.chunk())
            .await
            .expect("an event within 30 s")
            .unwrap()
            .expect("the stream stays open until the event");
        text.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(at) = text.find("event: message\n") {
            let rest = &text[at..];
            if let Some(data) = rest.lines().find_map(|l| l.strip_prefix("data: ")) {
                if rest.contains("\n\n") {
                    return serde_json::from_str(data).unwrap();
                }
            }
        }
    }
}

async fn like_reaches_the_author_live(sys: &System) {
    let alice = sys.user("Alice").await;
    let bob = sys.user("Bob").await;
    let post = sys.post(&alice, "hello").await;
    // Alice's browser: Courier's event stream, filtered to her key.
    let stream = sys
        .http
        .get(format!(
            "{}/v1/topics/notifications/events?key={alice}&max_events=1",
            sys.c()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let (status, reaction) = sys.react(&post, &bob, "like").await;
    assert_eq!(status, 201, "{reaction}");

    let event = first_sse_message(stream).await;
    assert_eq!(event["key"], alice.as_str());
    let n: Value = serde_json::from_str(event["body"].as_str().unwrap()).unwrap();
    assert_eq!(n["user_id"], alice.as_str());
    assert_eq!(n["actor_id"], bob.as_str());
    assert_eq!(n["actor_name"], "Bob");
    assert_eq!(n["kind"], "like");
    assert_eq!(n["post_id"], post.as_str());

    let list = sys.notifications(&alice).await;
    assert_eq!(list["unread"], 1);
    let (s, _) = sys
        .send(
            Method::POST,
            &format!("{}/v1/users/{alice}/notifications/read", sys.n()),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(sys.notifications(&alice).await["unread"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_like_reaches_the_authors_event_stream_as_a_notification() {
    let sys = System::start().await;
    like_reaches_the_author_live(&sys).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn while_notifications_are_down_reactions_succeed_and_every_one_is_delivered_once_later() {
    let sys = System::start().await;
    let author = sys.user("Author").await;
    let post = sys.post(&author, "popular").await;
    let mut fans = Vec::new();
    for i in 0..7 {
        fans.push(sys.user(&format!("fan{i}")).await);
    }
    sys.faults(json!({ "down": true })).await;
    for fan in &fans {
        for kind in ["like", "love", "laugh"] {
            let (status, body) = sys.react(&post, fan, kind).await;
            assert_eq!(
                status, 201,
                "async mode does not wait for notifications: {body}"
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        event_ids(&sys.notifications(&author).await).is_empty(),
        "nothing while down"
    );

    sys.faults(json!({ "down": false })).await;
    exactly_n_notifications(&sys, &author, 21).await;
    let outbox = sys.get(&format!("{}/v1/outbox", sys.r())).await.unwrap();
    assert_eq!(outbox["pending"], 0);
    assert_eq!(outbox["sent"], 21);
}

/// Courier pushes in batches: an entry that is no `reaction.created` goes to
/// the dead letters on its own, and the valid events beside it are stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_event_is_dead_lettered_without_holding_back_the_batch() {
    let sys = System::start().await;
    let author = sys.user("Author").await;
    let fan = sys.user("Fan").await;
    let post = sys.post(&author, "batched").await;
    let event = |id: &str| {
        json!({
            "event_id": id, "type": "reaction.created", "reaction_id": format!("r-{id}"),
            "post_id": post, "post_author_id": author, "post_text": "batched",
            "user_id": fan, "user_name": "Fan", "kind": "like", "created_at": 1,
        })
        .to_string()
    };
    // Straight into the topic, in one batch, while the service is down so
    // that the push that follows carries all three together.
    sys.faults(json!({ "down": true })).await;
    let (status, body) = sys
        .send(
            Method::POST,
            &format!("{}/v1/topics/reactions/messages/batch", sys.c()),
            Some(json!({ "messages": [
                { "id": "direct-1", "body": event("direct-1") },
                { "id": "garbage-1", "body": "{\"not\": \"a reaction\"}" },
                { "id": "direct-2", "body": event("direct-2") },
            ]})),
        )
        .await;
    assert!(status < 300, "{status} {body}");
    sys.faults(json!({ "down": false })).await;

    let mut ids = exactly_n_notifications(&sys, &author, 2).await;
    ids.sort();
    assert_eq!(ids, ["direct-1", "direct-2"]);
    let dead = eventually("the malformed event is dead-lettered", || async {
        let v = sys
            .get(&format!(
                "{}/v1/subscriptions/notifications-push/dead-letters",
                sys.c()
            ))
            .await
            .ok()?;
        (!v["messages"].as_array()?.is_empty()).then_some(v)
    })
    .await;
    let dead = dead["messages"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        dead[0]["headers"]["courier-dlq-id"], "garbage-1",
        "{dead:?}"
    );
    let error = dead[0]["headers"]["courier-dlq-last-error"]
        .as_str()
        .unwrap();
    assert!(error.contains("not a reaction.created"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_commit_and_publish_loses_nothing_and_duplicates_nothing() {
    let mut sys = System::start().await;
    let author = sys.user("Author").await;
    let fan = sys.user("Fan").await;
    let post = sys.post(&author, "crash me").await;

    // 1. The relay dies after the reaction committed, before publishing.
    sys.start_reactions(Some("before_publish"));
    // The answer may or may not make it out before the exit; the commit did.
    let _ = sys
        .http
        .post(format!("{}/v1/posts/{post}/reactions", sys.r()))
        .json(&json!({ "user_id": fan, "kind": "like" }))
        .send()
        .await;
    let code = sys
        .reactions
        .as_mut()
        .unwrap()
        .wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(86), "the fault hook fired");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        event_ids(&sys.notifications(&author).await).is_empty(),
        "nothing was published"
    );

    sys.start_reactions(None);
    let reactions = sys
        .get(&format!("{}/v1/posts/{post}/reactions", sys.r()))
        .await
        .unwrap();
    assert_eq!(
        reactions["counts"]["like"], 1,
        "the reaction survived: {reactions}"
    );
    let first = exactly_n_notifications(&sys, &author, 1).await;

    // 2. The relay dies after Courier accepted the event, before marking it
    //    sent: the restarted relay publishes it again, Courier deduplicates.
    sys.start_reactions(Some("after_publish"));
    let _ = sys
        .http
        .post(format!("{}/v1/posts/{post}/reactions", sys.r()))
        .json(&json!({ "user_id": fan, "kind": "love" }))
        .send()
        .await;
    let code = sys
        .reactions
        .as_mut()
        .unwrap()
        .wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(87), "the fault hook fired");
    sys.start_reactions(None);
    let ids = exactly_n_notifications(&sys, &author, 2).await;
    assert!(ids.contains(&first[0]));
    eventually("the outbox is drained", || async {
        let outbox = sys.get(&format!("{}/v1/outbox", sys.r())).await.ok()?;
        (outbox["pending"] == 0).then_some(())
    })
    .await;
    // Courier kept one copy of each event.
    let topic = sys
        .get(&format!(
            "{}/v1/topics/reactions/messages?from=1&max=100",
            sys.c()
        ))
        .await
        .unwrap();
    assert_eq!(topic["messages"].as_array().unwrap().len(), 2, "{topic}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reacting_twice_is_a_no_op_and_undo_removes_the_reaction() {
    let sys = System::start().await;
    let author = sys.user("Author").await;
    let fan = sys.user("Fan").await;
    let post = sys.post(&author, "undo me").await;
    let (s1, first) = sys.react(&post, &fan, "love").await;
    assert_eq!(s1, 201);
    let (s2, again) = sys.react(&post, &fan, "love").await;
    assert_eq!(s2, 200, "already there");
    assert_eq!(first["id"], again["id"]);
    let counts = sys
        .get(&format!("{}/v1/posts/{post}", sys.r()))
        .await
        .unwrap()["counts"]
        .clone();
    assert_eq!(
        counts,
        json!({ "like": 0, "love": 1, "laugh": 0, "total": 1 })
    );

    let undo = format!("{}/v1/posts/{post}/reactions/love?user_id={fan}", sys.r());
    assert_eq!(sys.send(Method::DELETE, &undo, None).await.0, 204);
    let (s, p) = sys.send(Method::DELETE, &undo, None).await;
    assert_eq!((s, p["code"].as_str()), (404, Some("reaction_not_found")));
    let list = sys
        .get(&format!("{}/v1/posts/{post}/reactions", sys.r()))
        .await
        .unwrap();
    assert_eq!(list["counts"]["total"], 0);
    assert!(list["reactions"].as_array().unwrap().is_empty());
    // Undo emits nothing: the one notification of the first reaction stays.
    exactly_n_notifications(&sys, &author, 1).await;
    // Reacting again after an undo is a new reaction, and a new notification.
    assert_eq!(sys.react(&post, &fan, "love").await.0, 201);
    exactly_n_notifications(&sys, &author, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_mode_fails_the_users_request_when_notifications_fail() {
    let sys = System::start().await;
    let author = sys.user("Author").await;
    let fan = sys.user("Fan").await;
    let post = sys.post(&author, "sync").await;
    let mode = format!("{}/v1/mode", sys.r());
    let (s, m) = sys
        .send(
            Method::PUT,
            &mode,
            Some(json!({ "mode": "sync", "sync_timeout_ms": 300 })),
        )
        .await;
    assert_eq!((s, m["mode"].as_str()), (200, Some("sync")));

    assert_eq!(sys.react(&post, &fan, "like").await.0, 201);
    assert_eq!(
        event_ids(&sys.notifications(&author).await).len(),
        1,
        "stored before the answer"
    );

    sys.faults(json!({ "down": true })).await;
    let (s, p) = sys.react(&post, &fan, "love").await;
    assert_eq!(
        (s, p["code"].as_str()),
        (502, Some("notification_failed")),
        "{p}"
    );
    sys.faults(json!({ "down": false, "latency_ms": 1000 }))
        .await;
    let (s, p) = sys.react(&post, &fan, "laugh").await;
    assert_eq!(
        (s, p["code"].as_str()),
        (504, Some("notification_timeout")),
        "{p}"
    );
    let counts = sys
        .get(&format!("{}/v1/posts/{post}", sys.r()))
        .await
        .unwrap()["counts"]
        .clone();
    assert_eq!(
        counts["total"], 1,
        "failed reactions are not kept: {counts}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_problem_documents() {
    let sys = System::start().await;
    let author = sys.user("Author").await;
    let post = sys.post(&author, "p").await;
    let r = sys.r();
    let like = format!(r#"{{"user_id":"{author}","kind":"like"}}"#);
    let meh = format!(r#"{{"user_id":"{author}","kind":"meh"}}"#);
    let cases: Vec<(Method, String, Option<&str>, u16, &str)> = vec![
        (
            Method::POST,
            format!("{r}/v1/users"),
            Some("{not json"),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            format!("{r}/v1/users"),
            Some(r#"{"name":"  "}"#),
            422,
            "invalid_name",
        ),
        (
            Method::POST,
            format!("{r}/v1/users"),
            Some(r#"{"nom":"x"}"#),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            format!("{r}/v1/posts"),
            Some(r#"{"author_id":"nobody","text":"x"}"#),
            422,
            "unknown_user",
        ),
        (
            Method::POST,
            format!("{r}/v1/posts/nope/reactions"),
            Some(&like),
            404,
            "post_not_found",
        ),
        (
            Method::POST,
            format!("{r}/v1/posts/{post}/reactions"),
            Some(&meh),
            422,
            "invalid_kind",
        ),
        (
            Method::POST,
            format!("{r}/v1/posts/{post}/reactions"),
            Some(r#"{"user_id":"ghost","kind":"like"}"#),
            422,
            "unknown_user",
        ),
        (
            Method::DELETE,
            format!("{r}/v1/posts/{post}/reactions/like"),
            None,
            400,
            "missing_user_id",
        ),
        (
            Method::DELETE,
            format!("{r}/v1/posts/{post}/reactions/wow?user_id={author}"),
            None,
            422,
            "invalid_kind",
        ),
        (
            Method::PUT,
            format!("{r}/v1/mode"),
            Some(r#"{"mode":"sometimes"}"#),
            400,
            "invalid_json",
        ),
        (
            Method::PUT,
            format!("{r}/v1/mode"),
            Some(r#"{"sync_timeout_ms":0}"#),
            422,
            "invalid_timeout",
        ),
        (
            Method::GET,
            format!("{r}/v1/nothing"),
            None,
            404,
            "route_not_found",
        ),
        (
            Method::PUT,
            format!("{}/v1/faults", sys.n()),
            Some(r#"{"error_rate":2}"#),
            422,
            "invalid_fault",
        ),
        (
            Method::GET,
            format!("{}/v1/users/x/notifications?limit=0", sys.n()),
            None,
            400,
            "invalid_limit",
        ),
    ];
    for (method, url, body, status, code) in cases {
        let mut req = sys.http.request(method.clone(), &url);
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = req.send().await.unwrap();
        assert_eq!(
            response.status().as_u16(),
            status,
            "{method} {url} {body:?}"
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{method} {url}"
        );
        let p: Value = response.json().await.unwrap();
        assert_eq!(p["code"], code, "{method} {url}: {p}");
        assert_eq!(p["status"], status);
        assert!(!p["detail"].as_str().unwrap().is_empty());
    }
    // A body without a JSON content type.
    let response = sys
        .http
        .post(format!("{r}/v1/users"))
        .body(r#"{"name":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    // A push that Courier did not sign.
    let response = sys
        .http
        .post(format!("{}/v1/push/reactions", sys.n()))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

/// The same like-to-notification path on PostgreSQL: both services get a
/// database of their own, created for the test on the server named by
/// `COURIER_TEST_POSTGRES_URL` (or `DATABASE_URL`). Skipped when neither is set.
#[tokio::test(flavor = "multi_thread")]
async fn on_postgresql_a_like_reaches_the_author() {
    let Some(url) = std::env::var("COURIER_TEST_POSTGRES_URL")
        .ok()
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .filter(|u| u.starts_with("postgres"))
    else {
        eprintln!("skipped: set COURIER_TEST_POSTGRES_URL (e.g. postgres://postgres@127.0.0.1:5432/postgres) to run it");
        return;
    };
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("COURIER_TEST_POSTGRES_URL is set but unreachable: {e}"));
    let suffix = ulid::Ulid::generate().to_string().to_lowercase();
    let (rdb, ndb) = (
        format!("reactions_{suffix}"),
        format!("notifications_{suffix}"),
    );
    for db in [&rdb, &ndb] {
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let with_db = |db: &str| match url.rfind('/') {
        Some(i) if i > url.find("://").unwrap() + 2 => {
            let (base, rest) = url.split_at(i);
            let query = rest.find('?').map(|q| &rest[q..]).unwrap_or("");
            format!("{base}/{db}{query}")
        }
        _ => format!("{}/{db}", url.trim_end_matches('/')),
    };
    {
        let sys =
            System::start_with(tempfile::tempdir().unwrap(), with_db(&rdb), with_db(&ndb)).await;
        like_reaches_the_author_live(&sys).await;
    }
    for db in [&rdb, &ndb] {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
}
