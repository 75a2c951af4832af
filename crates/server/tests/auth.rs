//! JWT auth on the real-time routes and on publishing: missing, expired,
//! wrong-issuer, wrong-audience, wrong-topic and wrong-filter tokens are
//! refused with stable codes; granted ones pass; HS256 and RS256 keys.

mod common;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use common::realtime::{create_topic, Sse};
use common::TestServer;
use courier_api::realtime::{Audience, Claims, Grant, Grants};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(subscribe: Vec<Grant>, publish: Vec<Grant>) -> Claims {
    Claims {
        sub: Some("user-42".into()),
        exp: now() + 600,
        iss: Some("courier-test".into()),
        aud: Some(Audience::One("courier".into())),
        courier: Grants { subscribe, publish },
    }
}

fn hs256(c: &Claims) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        c,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn rs256(c: &Claims) -> String {
    let pem = std::fs::read(fixture("jwt_rs256_test.key.pem")).unwrap();
    encode(
        &Header::new(Algorithm::RS256),
        c,
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap()
}

fn topic(t: &str) -> Grant {
    Grant::Topic(t.into())
}

fn keyed(t: &str, key: &str) -> Grant {
    Grant::Restricted {
        topic: t.into(),
        key: Some(key.into()),
        headers: Default::default(),
    }
}

async fn hs_server(anonymous_read: bool) -> TestServer {
    let s = TestServer::start_with(|c| {
        c.auth.jwt_hs256_secret = Some(SECRET.into());
        c.auth.issuer = Some("courier-test".into());
        c.auth.audience = Some("courier".into());
        c.auth.anonymous_read = anonymous_read;
    })
    .await;
    create_topic(&s.url, "notifications", json!({})).await;
    create_topic(&s.url, "news.eu", json!({})).await;
    create_topic(&s.url, "secret", json!({})).await;
    s
}

/// Status and problem code of an event-stream request.
async fn stream(s: &TestServer, path_query: &str, bearer: Option<&str>) -> (u16, Value) {
    let r = Sse::request(&format!("{}{path_query}", s.url), None, bearer).await;
    let status = r.status().as_u16();
    if status == 200 {
        return (200, Value::Null);
    }
    if status == 401 {
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
    }
    (status, r.json().await.unwrap())
}

fn code(v: &(u16, Value)) -> (u16, &str) {
    (v.0, v.1["code"].as_str().unwrap_or(""))
}

async fn publish(
    s: &TestServer,
    topic: &str,
    key: Option<&str>,
    bearer: Option<&str>,
) -> (u16, Value) {
    let mut message = json!({"body": "x"});
    if let Some(k) = key {
        message["key"] = json!(k);
    }
    let mut r = reqwest::Client::new()
        .post(format!("{}/v1/topics/{topic}/messages/batch", s.url))
        .json(&json!({ "messages": [message] }));
    if let Some(t) = bearer {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn hs256_tokens_are_checked_and_their_grants_applied() {
    let s = hs_server(false).await;
    let events = "/v1/topics/notifications/events";

    // Missing, malformed, expired, wrong issuer, wrong audience, wrong key: 401.
    assert_eq!(
        code(&stream(&s, events, None).await),
        (401, "unauthenticated")
    );
    assert_eq!(
        code(&stream(&s, events, Some("not-a-jwt")).await),
        (401, "unauthenticated")
    );
    let mut expired = claims(vec![topic("*")], vec![]);
    expired.exp = now() - 3600;
    let got = stream(&s, events, Some(&hs256(&expired))).await;
    assert_eq!(code(&got), (401, "unauthenticated"));
    assert!(got.1["detail"].as_str().unwrap().contains("expired"));
    let mut other_issuer = claims(vec![topic("*")], vec![]);
    other_issuer.iss = Some("someone-else".into());
    let got = stream(&s, events, Some(&hs256(&other_issuer))).await;
    assert_eq!(code(&got), (401, "unauthenticated"));
    assert!(got.1["detail"].as_str().unwrap().contains("issuer"));
    let mut other_audience = claims(vec![topic("*")], vec![]);
    other_audience.aud = Some(Audience::Many(vec!["billing".into()]));
    assert_eq!(
        code(&stream(&s, events, Some(&hs256(&other_audience))).await),
        (401, "unauthenticated")
    );
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &claims(vec![topic("*")], vec![]),
        &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!"),
    )
    .unwrap();
    assert_eq!(
        code(&stream(&s, events, Some(&forged)).await),
        (401, "unauthenticated")
    );
    // An RS256 token where only HS256 is configured.
    let rs = rs256(&claims(vec![topic("*")], vec![]));
    assert_eq!(
        code(&stream(&s, events, Some(&rs)).await),
        (401, "unauthenticated")
    );

    // Wrong topic and wrong filter: 403.
    let user = hs256(&claims(
        vec![keyed("notifications", "user-42"), topic("news.*")],
        vec![topic("notifications")],
    ));
    assert_eq!(
        code(&stream(&s, "/v1/topics/secret/events", Some(&user)).await),
        (403, "forbidden")
    );
    assert_eq!(
        code(&stream(&s, events, Some(&user)).await),
        (403, "forbidden"),
        "no key"
    );
    assert_eq!(
        code(&stream(&s, &format!("{events}?key=user-43"), Some(&user)).await),
        (403, "forbidden")
    );
    let poll = "/v1/topics/notifications/poll?wait_ms=0&key=user-43";
    assert_eq!(code(&get(&s, poll, Some(&user)).await), (403, "forbidden"));

    // Allowed: the granted filter (a narrower one too), prefix patterns,
    // and the token as a query parameter (EventSource).
    assert_eq!(
        stream(&s, &format!("{events}?key=user-42"), Some(&user))
            .await
            .0,
        200
    );
    assert_eq!(
        stream(
            &s,
            &format!("{events}?key=user-42&header.kind=x"),
            Some(&user)
        )
        .await
        .0,
        200
    );
    assert_eq!(
        stream(&s, "/v1/topics/news.eu/events", Some(&user)).await.0,
        200
    );
    let with_query = format!("{events}?key=user-42&token={user}");
    let mut sse = Sse::open(&format!("{}{with_query}", s.url), None).await;
    let (status, receipt) = publish(&s, "notifications", Some("user-42"), Some(&user)).await;
    assert_eq!(status, 201, "{receipt}");
    assert_eq!(
        sse.seqs(1).await,
        vec![receipt["receipts"][0]["seq"].as_u64().unwrap()]
    );
    let poll = "/v1/topics/notifications/poll?cursor=1&wait_ms=0&key=user-42";
    assert_eq!(get(&s, poll, Some(&user)).await.0, 200);
    assert_eq!(
        get(&s, "/v1/topics/notifications/presence", Some(&user))
            .await
            .0,
        200
    );
    assert_eq!(
        code(&get(&s, "/v1/topics/secret/presence", Some(&user)).await),
        (403, "forbidden")
    );

    // Publishing: no token, another topic.
    assert_eq!(
        code(&publish(&s, "notifications", None, None).await),
        (401, "unauthenticated")
    );
    assert_eq!(
        code(&publish(&s, "secret", None, Some(&user)).await),
        (403, "forbidden")
    );
    // Routes without auth checks are unchanged.
    assert_eq!(get(&s, "/v1/topics", None).await.0, 200);
}

#[tokio::test]
async fn publish_grants_restricted_to_a_key() {
    let s = hs_server(false).await;
    let t = hs256(&claims(vec![], vec![keyed("notifications", "user-42")]));
    assert_eq!(
        publish(&s, "notifications", Some("user-42"), Some(&t))
            .await
            .0,
        201
    );
    assert_eq!(
        code(&publish(&s, "notifications", Some("user-7"), Some(&t)).await),
        (403, "forbidden")
    );
    assert_eq!(
        code(&publish(&s, "notifications", None, Some(&t)).await),
        (403, "forbidden")
    );
    // A subscribe-only token may not publish, and the reverse.
    assert_eq!(
        code(&stream(&s, "/v1/topics/notifications/events?key=user-42", Some(&t)).await),
        (403, "forbidden")
    );
}

#[tokio::test]
async fn anonymous_reading_when_allowed() {
    let s = hs_server(true).await;
    assert_eq!(stream(&s, "/v1/topics/secret/events", None).await.0, 200);
    assert_eq!(
        code(&publish(&s, "secret", None, None).await),
        (401, "unauthenticated")
    );
    // A bad token is refused even where no token would do.
    assert_eq!(
        code(&stream(&s, "/v1/topics/secret/events", Some("x.y.z")).await),
        (401, "unauthenticated")
    );
}

#[tokio::test]
async fn rs256_public_key_from_a_file() {
    let s = TestServer::start_with(|c| {
        c.auth.jwt_rs256_public_key_pem =
            Some(fixture("jwt_rs256_test.pub.pem").display().to_string());
    })
    .await;
    create_topic(&s.url, "t", json!({})).await;
    let mut c = claims(vec![topic("t")], vec![topic("t")]);
    // No issuer or audience configured: neither is checked.
    c.iss = None;
    c.aud = None;
    let token = rs256(&c);
    assert_eq!(stream(&s, "/v1/topics/t/events", Some(&token)).await.0, 200);
    assert_eq!(publish(&s, "t", None, Some(&token)).await.0, 201);
    let hs = hs256(&c);
    assert_eq!(
        code(&stream(&s, "/v1/topics/t/events", Some(&hs)).await),
        (401, "unauthenticated")
    );
}

#[test]
fn config_refuses_unusable_keys() {
    let mut c = courier_server::Config::default();
    c.auth.jwt_hs256_secret = Some("short".into());
    assert!(c.validate().unwrap_err().to_string().contains("32 bytes"));
    let mut c = courier_server::Config::default();
    c.auth.jwt_rs256_public_key_pem =
        Some("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----".into());
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("jwt_rs256_public_key_pem"));
}

async fn get(s: &TestServer, path_query: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut r = reqwest::Client::new().get(format!("{}{path_query}", s.url));
    if let Some(t) = bearer {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}
