//! Request extractors whose rejections are problem documents with stable codes,
//! in place of axum's plain-text defaults.

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::{codes, ApiError};

/// A JSON request body. A missing or blank body reads as `{}`, so endpoints whose
/// fields are all optional can be called without one.
///
/// The body must be sent as JSON (`application/json`, a `+json` type, or no
/// content type): a web page can send forms and plain text to any origin
/// without asking, so those are refused (415) rather than read as JSON. Where
/// the API expects an object, at any depth, only an object is accepted (serde
/// would also take an array of the fields in order); errors name the field.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

/// A request body type and the name of the OpenAPI schema that describes it.
pub trait BodySchema {
    const SCHEMA: &'static str;
}

macro_rules! body_schemas {
    ($($ty:ty => $name:literal),* $(,)?) => {
        $(impl BodySchema for $ty {
            const SCHEMA: &'static str = $name;
        })*
    };
}

body_schemas! {
    courier_api::PublishBatch => "PublishBatch",
    courier_api::PullBody => "PullBody",
    courier_api::AckBody => "AckBody",
    courier_api::NackBody => "NackBody",
    courier_api::ExtendBody => "ExtendBody",
    courier_api::SeekBody => "SeekBody",
    courier_api::ReplayBody => "ReplayBody",
    courier_api::RejectBody => "RejectBody",
    courier_api::InstanceRegistration => "InstanceRegistration",
    courier_upstream::ServiceConfig => "ServiceConfig",
    courier_core::TopicConfig => "TopicConfig",
    courier_core::SubscriptionConfig => "SubscriptionConfig",
    courier_core::SubscriptionUpdate => "SubscriptionUpdate",
}

impl<S: Send + Sync, T: DeserializeOwned + BodySchema> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(ct) = req.headers().get(CONTENT_TYPE) {
            if !is_json(ct.as_bytes()) {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    codes::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "expected a JSON body sent as 'Content-Type: application/json', got '{}' \
                         (with curl: -H 'content-type: application/json')",
                        String::from_utf8_lossy(ct.as_bytes())
                    ),
                ));
            }
        }
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse_body(&bytes).map(JsonBody)
    }
}

/// Parses a JSON body into `T`, checking its shape against `T`'s schema first.
pub fn parse_body<T: DeserializeOwned + BodySchema>(bytes: &[u8]) -> Result<T, ApiError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    // The common case costs one typed parse and one byte scan: a body that
    // parses and holds arrays only where the schema has them (serde would
    // also take an array for an object) is what the slow path would accept.
    // Anything else takes the slow path, which refuses or normalises
    // (`479.0` for an integer) and words the error with the field's path.
    if let Ok(parsed) = serde_json::from_slice::<T>(text) {
        if shape::arrays_fit(text, T::SCHEMA) {
            return Ok(parsed);
        }
    }
    let mut value: serde_json::Value = serde_json::from_slice(text).map_err(json_error)?;
    shape::check(&mut value, T::SCHEMA).map_err(|detail| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::INVALID_FIELD,
            detail,
        )
    })?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = describe(&path, inner.to_string());
        let code = if message.starts_with("unknown field") {
            codes::UNKNOWN_FIELD
        } else {
            codes::INVALID_FIELD
        };
        let detail = if path == "." {
            message
        } else {
            format!("{path}: {message}")
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    })
}

/// Fields that hold durations in milliseconds.
const MILLIS: &[&str] = &[
    "ack_deadline",
    "dedup_window",
    "max_age",
    "initial_backoff",
    "max_backoff",
    "by_ms",
    "delay_ms",
    "wait_ms",
];

/// serde's words for numbers, in the API's.
fn describe(path: &str, message: String) -> String {
    let field = path.rsplit('.').next().unwrap_or(path);
    for rust in ["expected u64", "expected u32", "expected i64"] {
        if let Some(start) = message.find(rust) {
            let what = if MILLIS.contains(&field) {
                "expected milliseconds as a number"
            } else {
                "expected a whole number"
            };
            return format!(
                "{}{what}{}",
                &message[..start],
                &message[start + rust.len()..]
            );
        }
    }
    message
}

/// Objects where the OpenAPI document says object, and integers where it says
/// integer, including those written with a zero fraction (`479.0`, which JSON
/// Schema counts as an integer). The document is the one the server serves,
/// so what it describes and what is accepted agree.
mod shape {
    use std::sync::LazyLock;

    use serde_json::Value;

    static SCHEMAS: LazyLock<Value> = LazyLock::new(|| {
        let doc = serde_json::to_value(crate::api::openapi()).expect("the document serializes");
        doc["components"]["schemas"].clone()
    });

    /// The top-level fields of each schema that hold arrays.
    static ARRAY_FIELDS: LazyLock<std::collections::HashMap<String, Vec<String>>> =
        LazyLock::new(|| {
            let Some(schemas) = SCHEMAS.as_object() else {
                return Default::default();
            };
            schemas
                .iter()
                .map(|(name, schema)| {
                    let fields = resolve(schema)
                        .get("properties")
                        .and_then(Value::as_object)
                        .map(|props| {
                            props
                                .iter()
                                .filter(|(_, p)| types(resolve(p)).contains(&"array"))
                                .map(|(k, _)| k.clone())
                                .collect()
                        })
                        .unwrap_or_default();
                    (name.clone(), fields)
                })
                .collect()
        });

    /// Whether every array in `text` (valid JSON: it has just parsed) is the
    /// value of one of the schema's top-level array fields: a scan of the
    /// bytes (strings skipped) that never builds the document. Hand-written
    /// because serde cannot tell a struct read from an array.
    pub fn arrays_fit(text: &[u8], schema: &str) -> bool {
        let allowed = ARRAY_FIELDS.get(schema).map_or(&[][..], Vec::as_slice);
        let mut stack: Vec<u8> = Vec::with_capacity(8);
        // At depth 1 in an object: whether the next string is a key, and the last key.
        let mut expect_key = false;
        let mut key: &[u8] = b"";
        let mut i = 0;
        while i < text.len() {
            match text[i] {
                b'"' => {
                    let start = i + 1;
                    i += 1;
                    while i < text.len() && text[i] != b'"' {
                        i += if text[i] == b'\\' { 2 } else { 1 };
                    }
                    if stack.as_slice() == b"{" && expect_key {
                        key = &text[start..i.min(text.len())];
                        expect_key = false;
                    }
                }
                b'{' => {
                    stack.push(b'{');
                    expect_key = stack.len() == 1;
                }
                b'[' => {
                    let field = std::str::from_utf8(key).unwrap_or("");
                    if stack.as_slice() != b"{" || !allowed.iter().any(|a| a == field) {
                        return false;
                    }
                    stack.push(b'[');
                }
                b'}' | b']' => {
                    stack.pop();
                }
                b',' if stack.as_slice() == b"{" => expect_key = true,
                _ => {}
            }
            i += 1;
        }
        true
    }

    /// `Err`: what is wrong, naming the field.
    pub fn check(value: &mut Value, schema: &str) -> Result<(), String> {
        let schema = SCHEMAS
            .get(schema)
            .unwrap_or_else(|| panic!("no schema {schema} in the OpenAPI document"));
        walk(value, schema, &mut String::new())
    }

    fn resolve(schema: &Value) -> &Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => r
                .strip_prefix("#/components/schemas/")
                .and_then(|name| SCHEMAS.get(name))
                .map_or(schema, resolve),
            None => schema,
        }
    }

    fn types(schema: &Value) -> Vec<&str> {
        match schema.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ if schema.get("properties").is_some() => vec!["object"],
            _ => Vec::new(),
        }
    }

    fn kind(value: &Value) -> &'static str {
        match value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }

    fn at(path: &str) -> String {
        if path.is_empty() {
            "the body".to_owned()
        } else {
            path.to_owned()
        }
    }

    fn article(json_type: &str) -> String {
        match json_type {
            "object" => "a JSON object".to_owned(),
            "array" | "integer" => format!("an {json_type}"),
            other => format!("a {other}"),
        }
    }

    /// Whether `value` is of a type `schema` allows (true when it names none).
    fn accepts(schema: &Value, value: &Value) -> bool {
        let types = types(schema);
        if types.is_empty() {
            return true;
        }
        let fits = |t: &str| match value {
            Value::Null => t == "null",
            Value::Bool(_) => t == "boolean",
            Value::Number(n) => t == "number" || (t == "integer" && integral(n).is_some()),
            Value::String(_) => t == "string",
            Value::Array(_) => t == "array",
            Value::Object(_) => t == "object",
        };
        types.into_iter().any(fits)
    }

    /// The integer a JSON number stands for, if it is one.
    fn integral(n: &serde_json::Number) -> Option<serde_json::Number> {
        if !n.is_f64() {
            return Some(n.clone());
        }
        let f = n.as_f64()?;
        if f.fract() != 0.0 {
            return None;
        }
        // `as` is exact for integral values in range; 2^64 and -2^63 are exact floats.
        if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
            Some((f as u64).into())
        } else if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
            Some((f as i64).into())
        } else {
            None
        }
    }

    fn walk(value: &mut Value, schema: &Value, path: &mut String) -> Result<(), String> {
        let schema = resolve(schema);
        for key in ["oneOf", "anyOf"] {
            if let Some(alternatives) = schema.get(key).and_then(Value::as_array) {
                let alternatives: Vec<&Value> = alternatives.iter().map(resolve).collect();
                let fitting: Vec<&Value> = alternatives
                    .iter()
                    .copied()
                    .filter(|a| accepts(a, value))
                    .collect();
                let value = &mut *value;
                if fitting.is_empty() {
                    let mut expected: Vec<&str> = alternatives
                        .iter()
                        .flat_map(|a| types(a))
                        .filter(|t| *t != "null")
                        .collect();
                    expected.dedup();
                    // Only shapes are checked here; serde words other mismatches.
                    if expected.contains(&"object") {
                        let expected: Vec<String> = expected.iter().map(|t| article(t)).collect();
                        return Err(format!(
                            "{}: expected {}, got {}",
                            at(path),
                            expected.join(" or "),
                            kind(value)
                        ));
                    }
                    return Ok(());
                }
                let mut first = None;
                for alternative in fitting {
                    match walk(value, alternative, path) {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            first.get_or_insert(e);
                        }
                    }
                }
                if let Some(e) = first {
                    return Err(e);
                }
            }
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for part in all {
                walk(value, part, path)?;
            }
        }
        let types = types(schema);
        if types.contains(&"integer") {
            if let Value::Number(n) = value {
                if let Some(i) = integral(n) {
                    *n = i;
                }
            }
        }
        if types.contains(&"object") {
            let Value::Object(fields) = value else {
                if value.is_null() && types.contains(&"null") {
                    return Ok(());
                }
                return Err(format!(
                    "{}: expected a JSON object, got {}",
                    at(path),
                    kind(value)
                ));
            };
            for (name, field) in fields.iter_mut() {
                let field_schema = schema
                    .get("properties")
                    .and_then(|p| p.get(name))
                    .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
                if let Some(field_schema) = field_schema {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(name);
                    let result = walk(field, field_schema, path);
                    path.truncate(len);
                    result?;
                }
            }
        }
        if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
            if types.contains(&"array") {
                for (i, item) in items.iter_mut().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    let result = walk(item, item_schema, path);
                    path.truncate(len);
                    result?;
                }
            }
        }
        Ok(())
    }
}

/// `application/json`, or any `+json` type, with or without parameters. Not
/// forms or text: a web page on another origin may send those without a
/// CORS preflight.
fn is_json(content_type: &[u8]) -> bool {
    let Ok(ct) = std::str::from_utf8(content_type) else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Sorts serde's complaints into the codes clients can act on.
pub fn json_error(e: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Io => ApiError::bad_request(
            codes::MALFORMED_JSON,
            format!("the body is not valid JSON: {e}"),
        ),
        Category::Eof => ApiError::bad_request(
            codes::MALFORMED_JSON,
            format!("the JSON body ends too early (truncated?): {e}"),
        ),
        Category::Data if e.to_string().starts_with("unknown field") => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::UNKNOWN_FIELD,
            e.to_string(),
        ),
        Category::Data => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::INVALID_FIELD,
            e.to_string(),
        ),
    }
}

/// The request body as bytes, with the body limit and read failures reported
/// as problems.
#[derive(Debug, Clone, Default)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(RawBody(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    codes::BODY_TOO_LARGE,
                    "the request body is larger than the server's body limit",
                ))
            }
            Err(rejection) => Err(ApiError::bad_request(
                codes::MALFORMED_JSON,
                format!("cannot read the request body: {}", rejection.body_text()),
            )),
        }
    }
}

/// A topic or subscription name from the path, checked against the naming rules
/// before any engine sees it.
#[derive(Debug, Clone)]
pub struct Name(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Name {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|r| {
                ApiError::from(courier_core::Error::InvalidName {
                    name: parts.uri.path().to_owned(),
                    reason: if r.status().is_client_error() {
                        "the path segment is not valid UTF-8"
                    } else {
                        "cannot read the path"
                    },
                })
            })?;
        courier_core::error::validate_name(&name)?;
        Ok(Name(name))
    }
}

/// Query parameters, refused with `invalid_query`.
#[derive(Debug, Clone, Default)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| QueryParams(q))
            .map_err(|r| ApiError::bad_request(codes::INVALID_QUERY, r.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_fit_only_where_the_schema_has_them() {
        let fits = |t: &str| shape::arrays_fit(t.as_bytes(), "PublishBatch");
        assert!(fits(r#"{"messages":[{"body":"[x]","headers":{"a":"["}}]}"#));
        assert!(fits(r#" { "messages" : [ { "body" : "a\"[" } ] } "#));
        assert!(!fits(r#"[[["hello"]]]"#));
        assert!(!fits(r#"{"messages":[["hello"]]}"#));
        assert!(!fits(r#"{"messages":[{"headers":[1]}]}"#));
        let ack = |t: &str| shape::arrays_fit(t.as_bytes(), "AckBody");
        assert!(ack(r#"{"tokens":["1-2","3-4"]}"#));
        assert!(!ack(r#"{"messages":["1-2"]}"#));
        let topic = |t: &str| shape::arrays_fit(t.as_bytes(), "TopicConfig");
        assert!(topic(r#"{"retention":{"max_age":5}}"#));
        assert!(!topic(r#"{"retention":[5,6,7]}"#));
        // Typed parses that an array would fool are sent to the slow path.
        let got: Result<courier_core::TopicConfig, _> = parse_body(br#"{"retention":[5,6,7]}"#);
        assert_eq!(got.unwrap_err().code, codes::INVALID_FIELD);
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(is_json(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/xml",
            "json",
            "application/jsonx",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            assert!(!is_json(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn serde_errors_map_to_codes() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            a: u32,
        }
        let code = |s: &str| json_error(serde_json::from_str::<T>(s).unwrap_err()).code;
        assert_eq!(code("{\"a\": 1"), codes::MALFORMED_JSON);
        assert_eq!(code("{a: 1}"), codes::MALFORMED_JSON);
        assert_eq!(code("{\"a\": 1, \"b\": 2}"), codes::UNKNOWN_FIELD);
        assert_eq!(code("{\"a\": \"x\"}"), codes::INVALID_FIELD);
        assert_eq!(code("{}"), codes::INVALID_FIELD);
    }
}
