//! The committed OpenAPI document is the generated one.
//!
//! Regenerate after changing the API:
//! `COURIER_WRITE_OPENAPI=1 cargo test -p courier-server --test openapi`

use std::collections::BTreeSet;
use std::path::PathBuf;

use courier_core::*;
use serde_json::Value;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[test]
fn committed_openapi_matches_the_code() {
    let generated = courier_server::openapi_json();
    let path = committed_path();
    if std::env::var_os("COURIER_WRITE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is out of date; regenerate it with\n  \
         COURIER_WRITE_OPENAPI=1 cargo test -p courier-server --test openapi"
    );
}

#[test]
fn every_route_is_documented() {
    let doc: Value = serde_json::from_str(&courier_server::openapi_json()).unwrap();
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for p in [
        "/v1/topics",
        "/v1/topics/{name}",
        "/v1/topics/{name}/messages",
        "/v1/topics/{name}/messages/batch",
        "/v1/subscriptions",
        "/v1/subscriptions/{name}",
        "/v1/subscriptions/{name}/pull",
        "/v1/subscriptions/{name}/ack",
        "/v1/subscriptions/{name}/nack",
        "/v1/subscriptions/{name}/extend",
        "/v1/subscriptions/{name}/seek",
        "/v1/subscriptions/{name}/dead-letters",
        "/v1/subscriptions/{name}/dead-letters/replay",
        "/v1/stats",
        "/v1/capabilities",
        "/healthz",
        "/readyz",
        "/openapi.json",
    ] {
        assert!(paths.contains(p), "{p} missing from the document");
    }
}

/// The hand-written schemas of core types list exactly the fields those types serialize.
#[test]
fn core_type_schemas_match_their_serde_form() {
    let doc: Value = serde_json::from_str(&courier_server::openapi_json()).unwrap();
    let schemas = &doc["components"]["schemas"];
    let full_retention = Retention {
        max_age: Some(std::time::Duration::from_secs(1)),
        max_bytes: Some(1),
        max_messages: Some(1),
    };
    let topic = TopicInfo {
        name: "t".into(),
        config: TopicConfig {
            retention: full_retention.clone(),
            ..TopicConfig::default()
        },
        first_seq: 1,
        next_seq: 1,
        messages: 0,
        bytes: 0,
    };
    let full_push = courier_core::PushConfig {
        service: "svc".into(),
        secret: Some("whsec_AAAA".into()),
        bearer_token: Some("t".into()),
        hash_header: Some("h".into()),
        ..courier_core::PushConfig::default()
    };
    let sub_config = SubscriptionConfig {
        dead_letter_topic: Some("d".into()),
        push: Some(full_push.clone()),
        ..SubscriptionConfig::for_topic("t")
    };
    let sub = SubscriptionInfo {
        name: "s".into(),
        config: sub_config.clone(),
        ack_floor: 0,
        backlog: 0,
        in_flight: 0,
        waiting: 0,
        delivered_total: 0,
        acked_total: 0,
        dead_lettered_total: 0,
    };
    let receipt = PublishReceipt {
        seq: 1,
        id: "x".into(),
        duplicate: false,
    };
    let cases: Vec<(&str, Value)> = vec![
        ("Retention", serde_json::to_value(&full_retention).unwrap()),
        ("TopicConfig", serde_json::to_value(&topic.config).unwrap()),
        ("TopicInfo", serde_json::to_value(&topic).unwrap()),
        (
            "RetryPolicy",
            serde_json::to_value(RetryPolicy::default()).unwrap(),
        ),
        (
            "SubscriptionConfig",
            serde_json::to_value(&sub_config).unwrap(),
        ),
        ("SubscriptionInfo", serde_json::to_value(&sub).unwrap()),
        ("PublishReceipt", serde_json::to_value(&receipt).unwrap()),
        ("PushConfig", serde_json::to_value(&full_push).unwrap()),
        (
            "ServiceConfig",
            serde_json::to_value(courier_upstream::ServiceConfig {
                health_check: Some(Default::default()),
                ..Default::default()
            })
            .unwrap(),
        ),
        ("Stats", serde_json::to_value(Stats::default()).unwrap()),
        (
            "Capabilities",
            serde_json::to_value(Capabilities::all("embedded", 1)).unwrap(),
        ),
        (
            "SubscriptionUpdate",
            serde_json::to_value(SubscriptionUpdate {
                ack_deadline: Some(std::time::Duration::from_secs(1)),
                max_in_flight: Some(1),
                max_in_flight_per_consumer: Some(1),
                retry: Some(RetryPolicy::default()),
                dead_letter_topic: Some("d".into()),
                push: Some(Some(full_push.clone())),
            })
            .unwrap(),
        ),
    ];
    for (name, value) in cases {
        let serialized: BTreeSet<&String> = value.as_object().unwrap().keys().collect();
        let documented: BTreeSet<&String> = schemas[name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {name} has properties"))
            .keys()
            .collect();
        assert_eq!(serialized, documented, "schema {name}");
    }
}

/// 429 `rate_limited` is documented on every operation the limiter covers, and
/// only there: the health probes are never limited.
#[test]
fn rate_limited_answers_are_documented_where_they_happen() {
    let doc: Value = serde_json::from_str(&courier_server::openapi_json()).unwrap();
    let rate_limited = &doc["components"]["responses"]["RateLimited"];
    assert!(rate_limited["headers"]["Retry-After"].is_object());
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let has_429 = op["responses"].get("429").is_some();
            let exempt = path == "/healthz" || path == "/readyz";
            assert_eq!(has_429, !exempt, "{method} {path}");
        }
    }
}

/// The hand-written enums of core types list exactly the names those types serialize.
#[test]
fn core_enum_schemas_match_their_serde_form() {
    let doc: Value = serde_json::from_str(&courier_server::openapi_json()).unwrap();
    let schemas = &doc["components"]["schemas"];
    let names = |values: Vec<Value>| -> BTreeSet<String> {
        values
            .into_iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let documented = |name: &str| {
        names(
            schemas[name]["enum"]
                .as_array()
                .unwrap_or_else(|| panic!("schema {name} is an enum"))
                .clone(),
        )
    };
    let features = Feature::ALL
        .iter()
        .map(|f| serde_json::to_value(f).unwrap())
        .collect();
    assert_eq!(documented("Feature"), names(features));
    let outcomes = [
        Outcome::Ok,
        Outcome::LeaseLost,
        Outcome::NotLeased,
        Outcome::NotFound,
    ]
    .iter()
    .map(|o| serde_json::to_value(o).unwrap())
    .collect();
    assert_eq!(documented("Outcome"), names(outcomes));
}

/// Ack, nack and extend document their 200 answer with one result per token.
#[test]
fn settling_answers_are_documented() {
    let doc: Value = serde_json::from_str(&courier_server::openapi_json()).unwrap();
    for action in ["ack", "nack", "extend"] {
        let op = &doc["paths"][format!("/v1/subscriptions/{{name}}/{action}")]["post"];
        let ok = &op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(ok, "#/components/schemas/SettleResponse", "{action}");
        assert!(op["responses"].get("204").is_none(), "{action}");
    }
    let results = &doc["components"]["schemas"]["SettleResponse"]["properties"]["results"];
    assert_eq!(results["items"]["$ref"], "#/components/schemas/TokenResult");
    let patch = &doc["paths"]["/v1/subscriptions/{name}"]["patch"];
    assert!(patch["responses"]["200"].is_object());
    assert!(
        patch["responses"]["429"].is_object(),
        "PATCH is rate limited too"
    );
    assert!(
        doc["components"]["responses"]["EngineUnavailable"]["headers"]["Retry-After"].is_object()
    );
}

/// Every `$ref` names something the document has.
#[test]
fn every_reference_resolves() {
    fn walk(v: &Value, doc: &Value, at: &str) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    let pointer = r.strip_prefix('#').expect("a local reference");
                    assert!(doc.pointer(pointer).is_some(), "{at}: dangling {r}");
                }
                for (k, v) in map {
                    walk(v, doc, &format!("{at}/{k}"));
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, doc, at)),
            _ => {}
        }
    }
    let doc: Value = serde_json::from_str(&courier_server::openapi_json()).unwrap();
    walk(&doc, &doc, "");
}

/// The limits the server checks are the ones the document states.
#[test]
fn limits_are_documented() {
    let doc: Value = serde_json::from_str(&courier_server::openapi_json()).unwrap();
    let schemas = &doc["components"]["schemas"];
    for body in ["AckBody", "NackBody", "ExtendBody"] {
        let tokens = &schemas[body]["properties"]["tokens"];
        assert_eq!(tokens["minItems"], 1, "{body}");
        assert_eq!(tokens["maxItems"], 10_000, "{body}");
    }
    assert_eq!(
        schemas["PublishBatch"]["properties"]["messages"]["minItems"],
        1
    );
    let by_ms = &schemas["ExtendBody"]["properties"]["by_ms"];
    assert_eq!(by_ms["minimum"], 1);
    assert_eq!(by_ms["maximum"], 3_153_600_000_000_u64);
    assert_eq!(
        schemas["PullBody"]["properties"]["max_messages"]["minimum"],
        1
    );
    assert_eq!(
        schemas["PullBody"]["properties"]["max_messages"]["maximum"],
        1000
    );
    // Unsigned 64-bit integers are documented as such, up to u64::MAX.
    let seq = &schemas["SeekBody"]["properties"]["seq"];
    assert_eq!(seq["format"], "uint64");
    assert_eq!(seq["maximum"], u64::MAX);
    for (path, param) in [
        ("/v1/topics/{name}/messages", "max"),
        ("/v1/subscriptions/{name}/dead-letters", "max"),
    ] {
        let params = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
        let p = params.iter().find(|p| p["name"] == param).unwrap();
        assert_eq!(p["schema"]["minimum"], 1, "{path} {param}");
        assert_eq!(p["schema"]["maximum"], 1000, "{path} {param}");
    }
    let params = doc["paths"]["/v1/topics/{name}/messages"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let from = params.iter().find(|p| p["name"] == "from").unwrap();
    assert_eq!(from["schema"]["type"], "integer", "{from}");
    assert_eq!(from["schema"]["format"], "uint64", "{from}");
}
