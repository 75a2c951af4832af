//! Messages to and from HTTP: the single publish (metadata in `Courier-*`
//! headers, body untouched), the batch JSON form, and the raw delivery that
//! hands a message back the way it came (CloudEvents binary or structured mode).

use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use courier_api::{decode_body, headers as h, PublishMessage, Timestamp, CLOUDEVENTS_JSON};
use courier_core::{Delivery, Headers, Millis, NewMessage};

use crate::bounds;
use crate::error::{codes, ApiError};
use crate::extract::json_error;

/// The message header the request's `Content-Type` is stored under.
const STORED_CONTENT_TYPE: &str = "content-type";

/// Builds the message of a single publish from the request headers and body.
pub(crate) fn message_from_http(
    headers: &HeaderMap,
    body: Bytes,
    max_headers: usize,
) -> Result<NewMessage, ApiError> {
    message_from_headers(
        headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
        body,
        max_headers,
    )
}

/// Whether a request header (name in lower case) says something about the
/// message rather than the request: `Courier-*`, `ce-*` and `Content-Type`.
pub(crate) fn is_message_header(name: &str) -> bool {
    name.starts_with("courier-")
        || name.starts_with(h::CLOUDEVENTS_PREFIX)
        || name == STORED_CONTENT_TYPE
}

/// [`message_from_http`] over any list of request headers whose names are in
/// lower case, in the order they came.
pub(crate) fn message_from_headers<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    body: Bytes,
    max_headers: usize,
) -> Result<NewMessage, ApiError> {
    let mut message = NewMessage {
        body,
        ..NewMessage::default()
    };
    let mut delay = None;
    let mut deliver_at = None;
    for (name, value) in headers {
        if !is_message_header(name) {
            continue; // Host, User-Agent, Accept…: about the request, not the message.
        }
        let is_ours = name.starts_with("courier-");
        let value = std::str::from_utf8(value).map_err(|_| {
            ApiError::bad_request(
                codes::INVALID_HEADER,
                format!("header '{name}' is not UTF-8"),
            )
        })?;
        let single = |slot: &mut Option<String>| {
            if slot.replace(value.to_owned()).is_some() {
                Err(ApiError::bad_request(
                    codes::INVALID_HEADER,
                    format!("header '{name}' is given more than once"),
                ))
            } else {
                Ok(())
            }
        };
        match name {
            h::ID => single(&mut message.id)?,
            h::KEY => single(&mut message.key)?,
            h::DELAY => single(&mut delay)?,
            h::DELIVER_AT => single(&mut deliver_at)?,
            _ => {
                let stored = match name.strip_prefix(h::HEADER_PREFIX) {
                    Some("") => {
                        return Err(ApiError::bad_request(
                            codes::INVALID_HEADER,
                            "'Courier-Header-' needs a header name after it",
                        ))
                    }
                    Some(stored) => stored,
                    None if is_ours => {
                        return Err(ApiError::bad_request(
                            codes::INVALID_HEADER,
                            format!(
                                "unknown header '{name}'; message headers are sent as 'Courier-Header-<name>'"
                            ),
                        ))
                    }
                    None => name,
                };
                // Repeated HTTP headers combine as a comma-separated list (RFC 9110 §5.3).
                message
                    .headers
                    .entry(stored.to_owned())
                    .and_modify(|v| {
                        v.push_str(", ");
                        v.push_str(value);
                    })
                    .or_insert_with(|| value.to_owned());
            }
        }
    }
    check_header_count(&message.headers, max_headers)?;
    if message.id.as_deref() == Some("") {
        return Err(ApiError::bad_request(
            codes::INVALID_HEADER,
            "'Courier-Id' is empty",
        ));
    }
    if message.id.is_none() {
        message.id = cloudevent_id(&message.headers, &message.body)?;
    }
    let delay = delay
        .map(|d| {
            let ms = d.trim().parse::<u64>().map_err(|_| {
                format!("'Courier-Delay: {d}' is not a whole number of milliseconds")
            })?;
            bounds::duration_ms("Courier-Delay", ms)
        })
        .transpose()
        .map_err(|e| ApiError::bad_request(codes::INVALID_HEADER, e))?;
    let deliver_at = deliver_at
        .map(|d| {
            let t = match d.trim().parse::<u64>() {
                Ok(ms) => Timestamp::Millis(ms),
                Err(_) => Timestamp::Rfc3339(d.trim().to_owned()),
            };
            timestamp_millis(&t).map_err(|e| {
                ApiError::bad_request(codes::INVALID_HEADER, format!("'Courier-Deliver-At': {e}"))
            })
        })
        .transpose()?;
    (message.deliver_at, message.delay) = delivery_time(delay, deliver_at)
        .map_err(|e| ApiError::bad_request(codes::INVALID_HEADER, e))?;
    Ok(message)
}

/// The message id a CloudEvent carries: `ce-id` in binary mode, the `id` member
/// in structured mode. Using it lets the topic's dedup window catch redelivered events.
fn cloudevent_id(headers: &Headers, body: &[u8]) -> Result<Option<String>, ApiError> {
    if let Some(id) = headers.get("ce-id") {
        return Ok(Some(id.clone()));
    }
    let structured = headers
        .get(STORED_CONTENT_TYPE)
        .is_some_and(|ct| essence(ct) == CLOUDEVENTS_JSON);
    if !structured {
        return Ok(None);
    }
    // Stored untouched; parsed only to refuse broken events and find the id.
    let event: serde_json::Value = serde_json::from_slice(body).map_err(json_error)?;
    Ok(event
        .get("id")
        .and_then(|id| id.as_str())
        .filter(|id| !id.is_empty())
        .map(str::to_owned))
}

fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Builds one message of a batch publish.
pub(crate) fn message_from_json(
    index: usize,
    m: PublishMessage,
    max_headers: usize,
) -> Result<NewMessage, ApiError> {
    let at = |e: String| ApiError::invalid_argument(format!("messages[{index}]: {e}"));
    if m.body.is_some() && m.body_base64.is_some() {
        return Err(at("give either body or body_base64, not both".into()));
    }
    let body = decode_body(m.body.as_deref(), m.body_base64.as_deref())
        .map_err(|e| at(format!("body_base64 is not valid base64: {e}")))?;
    let mut headers = Headers::new();
    for (name, value) in m.headers {
        // Stored lower-case, as names from HTTP headers are, so one message reads the
        // same whichever way it was published, and valid so raw pulls can send it.
        let valid_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ApiError::bad_request(
                codes::INVALID_HEADER,
                format!("messages[{index}]: '{name}' is not a valid header name"),
            )
        })?;
        if HeaderValue::from_bytes(value.as_bytes()).is_err() {
            return Err(ApiError::bad_request(
                codes::INVALID_HEADER,
                format!(
                    "messages[{index}]: the value of header '{name}' contains control characters"
                ),
            ));
        }
        headers.insert(valid_name.as_str().to_owned(), value);
    }
    check_header_count(&headers, max_headers).map_err(|mut e| {
        e.detail = format!("messages[{index}]: {}", e.detail);
        e
    })?;
    if m.id.as_deref() == Some("") {
        return Err(at("id is empty".into()));
    }
    let deliver_at = m
        .deliver_at
        .as_ref()
        .map(timestamp_millis)
        .transpose()
        .map_err(at)?;
    let delay_ms = m
        .delay_ms
        .map(|ms| bounds::duration_ms("delay_ms", ms))
        .transpose()
        .map_err(at)?;
    let (deliver_at, delay) = delivery_time(delay_ms, deliver_at).map_err(at)?;
    let id = match m.id {
        Some(id) => Some(id),
        None => headers.get("ce-id").cloned(),
    };
    Ok(NewMessage {
        id,
        key: m.key,
        headers,
        body,
        deliver_at,
        delay,
    })
}

fn check_header_count(headers: &Headers, max: usize) -> Result<(), ApiError> {
    if headers.len() > max {
        return Err(ApiError::bad_request(
            codes::TOO_MANY_HEADERS,
            format!("{} message headers, at most {max} allowed", headers.len()),
        ));
    }
    Ok(())
}

/// The message's `deliver_at` and `delay`. A delay goes to the engine as it
/// is, to be counted from the engine's own clock when it stores the message
/// (this server's clock may differ from the engine's); a delay of 0 is none.
fn delivery_time(
    delay_ms: Option<u64>,
    deliver_at: Option<Millis>,
) -> Result<(Option<Millis>, Option<Duration>), String> {
    match (delay_ms, deliver_at) {
        (Some(_), Some(_)) => Err("give a delay or a delivery time, not both".into()),
        (Some(0), None) => Ok((None, None)),
        (Some(delay), None) => Ok((None, Some(Duration::from_millis(delay)))),
        (None, at) => Ok((at, None)),
    }
}

/// Milliseconds since the epoch of a wire timestamp, refused past the year 9999.
pub(crate) fn timestamp_millis(t: &Timestamp) -> Result<Millis, String> {
    match t {
        Timestamp::Millis(ms) => bounds::timestamp(*ms),
        Timestamp::Rfc3339(s) => {
            let at = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map_err(|e| {
                    format!("'{s}' is neither milliseconds since the epoch nor RFC 3339: {e}")
                })?;
            let ms = at.unix_timestamp_nanos() / 1_000_000;
            let ms = Millis::try_from(ms).map_err(|_| format!("'{s}' is before 1970"))?;
            bounds::timestamp(ms)
        }
    }
}

/// One delivery as a bare HTTP response: the stored body with its stored
/// content type, `ce-*` attributes as headers (CloudEvents binary mode), other
/// message headers as `Courier-Header-*`, and the lease as `Courier-*` headers
/// (`Courier-Token` names it for ack, nack and extend).
pub(crate) fn raw_delivery(d: Delivery) -> Response {
    let m = d.message;
    let mut out = HeaderMap::new();
    let mut put = |name: &str, value: &str| {
        // Headers stored by another transport may not be valid in HTTP; the JSON
        // pull still shows them, here they are left out rather than failing.
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            (Ok(n), Ok(v)) => {
                out.append(n, v);
            }
            _ => tracing::debug!(header = name, "header not representable in HTTP, left out"),
        }
    };
    put(h::SEQ, &m.seq.to_string());
    put(h::TOKEN, d.token.as_str());
    put(h::ID, &m.id);
    put(h::ATTEMPT, &d.attempt.to_string());
    put(h::LEASE_DEADLINE, &d.lease_deadline.to_string());
    put(h::PUBLISHED_AT, &m.published_at.to_string());
    if let Some(key) = &m.key {
        put(h::KEY, key);
    }
    if let Some(at) = m.deliver_at {
        put(h::DELIVER_AT, &at.to_string());
    }
    for (name, value) in &m.headers {
        if name == STORED_CONTENT_TYPE || name.starts_with(h::CLOUDEVENTS_PREFIX) {
            put(name, value);
        } else {
            put(&format!("{}{name}", h::HEADER_PREFIX), value);
        }
    }
    if !out.contains_key(CONTENT_TYPE) {
        out.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    (StatusCode::OK, out, m.body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn single_publish_metadata_and_headers() {
        let m = message_from_http(
            &headers(&[
                ("Courier-Id", "abc"),
                ("Courier-Key", "k1"),
                ("Courier-Header-Trace", "t1"),
                ("Content-Type", "text/plain"),
                ("ce-type", "com.example"),
                ("User-Agent", "curl"),
            ]),
            Bytes::from_static(b"hi"),
            10,
        )
        .unwrap();
        assert_eq!(m.id.as_deref(), Some("abc"));
        assert_eq!(m.key.as_deref(), Some("k1"));
        assert_eq!(m.headers.get("trace").map(String::as_str), Some("t1"));
        assert_eq!(
            m.headers.get("content-type").map(String::as_str),
            Some("text/plain")
        );
        assert_eq!(
            m.headers.get("ce-type").map(String::as_str),
            Some("com.example")
        );
        assert_eq!(m.headers.len(), 3);
        assert_eq!(&m.body[..], b"hi");
    }

    #[test]
    fn delays_go_to_the_engine_as_durations() {
        let m =
            message_from_http(&headers(&[("Courier-Delay", "1500")]), Bytes::new(), 10).unwrap();
        assert_eq!(m.delay, Some(Duration::from_millis(1500)));
        assert_eq!(m.deliver_at, None, "the server does not read its own clock");
        let at = message_from_http(
            &headers(&[("Courier-Deliver-At", "1000")]),
            Bytes::new(),
            10,
        )
        .unwrap();
        assert_eq!((at.deliver_at, at.delay), (Some(1000), None));
        let zero =
            message_from_http(&headers(&[("Courier-Delay", "0")]), Bytes::new(), 10).unwrap();
        assert_eq!((zero.deliver_at, zero.delay), (None, None));
        let batch = message_from_json(
            0,
            PublishMessage {
                delay_ms: Some(250),
                ..Default::default()
            },
            10,
        )
        .unwrap();
        assert_eq!(batch.delay, Some(Duration::from_millis(250)));
        assert_eq!(batch.deliver_at, None);
    }

    #[test]
    fn cloudevent_ids() {
        let binary = message_from_http(&headers(&[("ce-id", "e1")]), Bytes::new(), 10).unwrap();
        assert_eq!(binary.id.as_deref(), Some("e1"));
        let structured = message_from_http(
            &headers(&[(
                "content-type",
                "application/cloudevents+json; charset=utf-8",
            )]),
            Bytes::from_static(br#"{"specversion":"1.0","id":"e2","type":"t","source":"s"}"#),
            10,
        )
        .unwrap();
        assert_eq!(structured.id.as_deref(), Some("e2"));
        let broken = message_from_http(
            &headers(&[("content-type", "application/cloudevents+json")]),
            Bytes::from_static(b"{\"id\":"),
            10,
        )
        .unwrap_err();
        assert_eq!(broken.code, codes::MALFORMED_JSON);
    }

    #[test]
    fn bad_headers_are_refused() {
        for (pairs, code) in [
            (vec![("Courier-Delay", "soon")], codes::INVALID_HEADER),
            (
                vec![("Courier-Deliver-At", "tomorrow")],
                codes::INVALID_HEADER,
            ),
            (
                vec![("Courier-Delay", "5"), ("Courier-Deliver-At", "5")],
                codes::INVALID_HEADER,
            ),
            (vec![("Courier-Hedaer-X", "1")], codes::INVALID_HEADER),
            (vec![("Courier-Id", "")], codes::INVALID_HEADER),
            (
                vec![("Courier-Id", "a"), ("Courier-Id", "b")],
                codes::INVALID_HEADER,
            ),
            (
                vec![("Courier-Key", "a"), ("Courier-Key", "a")],
                codes::INVALID_HEADER,
            ),
            (
                vec![("Courier-Delay", "18446744073709551615")],
                codes::INVALID_HEADER,
            ),
            (
                vec![("Courier-Delay", "18446744073709551616")],
                codes::INVALID_HEADER,
            ),
            (
                vec![("Courier-Deliver-At", "18446744073709551615")],
                codes::INVALID_HEADER,
            ),
            (
                vec![("Courier-Header-a", "1"), ("Courier-Header-b", "2")],
                codes::TOO_MANY_HEADERS,
            ),
        ] {
            let err = message_from_http(&headers(&pairs), Bytes::new(), 1).unwrap_err();
            assert_eq!(err.code, code, "{pairs:?}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp_millis(&Timestamp::Millis(5)), Ok(5));
        assert_eq!(
            timestamp_millis(&Timestamp::Rfc3339("1970-01-01T00:00:01.5Z".into())),
            Ok(1500)
        );
        assert!(timestamp_millis(&Timestamp::Rfc3339("1969-12-31T23:59:59Z".into())).is_err());
        assert!(timestamp_millis(&Timestamp::Rfc3339("yesterday".into())).is_err());
        assert!(timestamp_millis(&Timestamp::Millis(u64::MAX)).is_err());
        assert!(timestamp_millis(&Timestamp::Rfc3339("9999-12-31T23:59:59-01:00".into())).is_err());
        assert_eq!(
            timestamp_millis(&Timestamp::Rfc3339("9999-12-31T23:59:59.999Z".into())),
            Ok(bounds::MAX_TIMESTAMP_MS)
        );
    }

    #[test]
    fn batch_messages() {
        let m = message_from_json(
            0,
            PublishMessage {
                headers: [("Trace".to_string(), "x".to_string())].into(),
                body_base64: Some("AAE=".into()),
                ..Default::default()
            },
            10,
        )
        .unwrap();
        assert_eq!(&m.body[..], &[0, 1]);
        assert!(m.headers.contains_key("trace"));
        let both = PublishMessage {
            body: Some("a".into()),
            body_base64: Some("YQ==".into()),
            ..Default::default()
        };
        assert_eq!(
            message_from_json(3, both, 10).unwrap_err().code,
            "invalid_argument"
        );
        let bad_name = PublishMessage {
            headers: [("a b".to_string(), "x".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(
            message_from_json(0, bad_name, 10).unwrap_err().code,
            codes::INVALID_HEADER
        );
    }
}
