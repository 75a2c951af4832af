//! What the answer to a push means for each message it carried.

use std::time::{Duration, SystemTime};

use courier_api::push::{headers as h, PushBatchAnswer, PushEntryStatus};
use courier_core::Delivery;
use courier_upstream::{CallError, Reply};

/// The longest `Retry-After` honoured; a longer one is cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How much of an error answer's body is kept with the message.
const ERROR_BODY_CHARS: usize = 200;

/// The fate of one pushed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Ack,
    /// A failed attempt: retried after `delay`, or the policy's backoff.
    Retry {
        delay: Option<Duration>,
        error: String,
    },
    /// Straight to the dead-letter topic.
    DeadLetter {
        error: String,
    },
    /// Never reached a service: given back without spending an attempt.
    Release,
}

/// A single push: 2xx acks; `Courier-Dead-Letter` on another answer
/// dead-letters; other answers, timeouts and broken connections are failed
/// attempts; a connection that could not be made, or no instance at all,
/// means the message never left, so it is released.
pub(crate) fn single(result: &Result<Reply, CallError>) -> Verdict {
    match result {
        Ok(reply) if reply.status.is_success() => Verdict::Ack,
        Ok(reply) => failed(reply),
        Err(e) => call_error(e),
    }
}

/// A batch push: a 2xx with an empty body acks all; a 2xx with results
/// settles each named entry and retries the ones left out; anything else
/// fails them all, as for a single push.
pub(crate) fn batch(result: &Result<Reply, CallError>, deliveries: &[Delivery]) -> Vec<Verdict> {
    let reply = match result {
        Ok(reply) if reply.status.is_success() => reply,
        Ok(reply) => return vec![failed(reply); deliveries.len()],
        Err(e) => return vec![call_error(e); deliveries.len()],
    };
    if reply.body.iter().all(u8::is_ascii_whitespace) {
        return vec![Verdict::Ack; deliveries.len()];
    }
    let answer: PushBatchAnswer = match serde_json::from_slice(&reply.body) {
        Ok(a) => a,
        Err(e) => {
            let error = format!(
                "unreadable batch answer from {} ({e}): expected {{\"results\":[{{\"id\",\"status\"}}]}}",
                reply.instance
            );
            return vec![Verdict::Retry { delay: None, error }; deliveries.len()];
        }
    };
    deliveries
        .iter()
        .map(|d| {
            let Some(entry) = answer.results.iter().find(|r| r.id == d.message.id) else {
                return Verdict::Retry {
                    delay: None,
                    error: format!(
                        "the batch answer from {} left this message out",
                        reply.instance
                    ),
                };
            };
            let error = || {
                entry
                    .error
                    .clone()
                    .unwrap_or_else(|| format!("refused by {} in a batch", reply.instance))
            };
            match entry.status {
                PushEntryStatus::Ack => Verdict::Ack,
                PushEntryStatus::Retry => Verdict::Retry {
                    delay: entry
                        .retry_after
                        .map(|ms| Duration::from_millis(ms).min(MAX_RETRY_AFTER)),
                    error: error(),
                },
                PushEntryStatus::DeadLetter => Verdict::DeadLetter { error: error() },
            }
        })
        .collect()
}

fn failed(reply: &Reply) -> Verdict {
    let body = String::from_utf8_lossy(&reply.body);
    let body: String = body.chars().take(ERROR_BODY_CHARS).collect();
    if let Some(reason) = reply.headers.get(h::DEAD_LETTER) {
        let reason = reason.to_str().unwrap_or("").trim();
        let error = if reason.is_empty() {
            format!(
                "HTTP {} from {}: dead-letter asked",
                reply.status.as_u16(),
                reply.instance
            )
        } else {
            reason.to_string()
        };
        return Verdict::DeadLetter { error };
    }
    Verdict::Retry {
        delay: retry_after(&reply.headers, SystemTime::now()),
        error: format!(
            "HTTP {} from {}: {body}",
            reply.status.as_u16(),
            reply.instance
        ),
    }
}

fn call_error(e: &CallError) -> Verdict {
    match e {
        CallError::NoInstance | CallError::Connect { .. } => Verdict::Release,
        other => Verdict::Retry {
            delay: None,
            error: other.to_string(),
        },
    }
}

/// `Retry-After` as whole seconds or as an HTTP date (RFC 9110 10.2.3).
fn retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use courier_core::{LeaseToken, Message};
    use http::{HeaderMap, StatusCode};

    fn reply(status: u16, headers: &[(&str, &str)], body: &str) -> Result<Reply, CallError> {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.insert(
                http::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Ok(Reply {
            instance: "i1".into(),
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: Bytes::from(body.to_string()),
            latency: Duration::ZERO,
        })
    }

    fn delivery(id: &str) -> Delivery {
        Delivery {
            message: Message {
                seq: 1,
                id: id.into(),
                published_at: 0,
                deliver_at: None,
                key: None,
                headers: Default::default(),
                body: Bytes::new(),
            },
            attempt: 1,
            lease_deadline: 0,
            token: LeaseToken::new("1.1"),
        }
    }

    #[test]
    fn single_answers() {
        assert_eq!(single(&reply(204, &[], "")), Verdict::Ack);
        assert_eq!(
            single(&reply(503, &[("retry-after", "7")], "busy")),
            Verdict::Retry {
                delay: Some(Duration::from_secs(7)),
                error: "HTTP 503 from i1: busy".into()
            }
        );
        assert_eq!(
            single(&reply(422, &[("courier-dead-letter", "bad payload")], "")),
            Verdict::DeadLetter {
                error: "bad payload".into()
            }
        );
        // A dead-letter header on a 2xx is still an ack.
        assert_eq!(
            single(&reply(200, &[("courier-dead-letter", "x")], "")),
            Verdict::Ack
        );
        assert_eq!(single(&Err(CallError::NoInstance)), Verdict::Release);
        assert!(matches!(
            single(&Err(CallError::Timeout {
                instance: "i1".into()
            })),
            Verdict::Retry { delay: None, .. }
        ));
    }

    #[test]
    fn retry_after_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut map = HeaderMap::new();
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        map.insert(http::header::RETRY_AFTER, later.parse().unwrap());
        assert_eq!(retry_after(&map, now), Some(Duration::from_secs(30)));
        map.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&map, now), None);
    }

    #[test]
    fn batch_answers() {
        let ds = [delivery("a"), delivery("b"), delivery("c"), delivery("d")];
        assert_eq!(batch(&reply(200, &[], ""), &ds), vec![Verdict::Ack; 4]);
        let body = r#"{"results":[{"id":"a","status":"ack"},{"id":"b","status":"retry","retry_after":1500},{"id":"c","status":"dead_letter","error":"no such post"}]}"#;
        let v = batch(&reply(200, &[], body), &ds);
        assert_eq!(v[0], Verdict::Ack);
        assert_eq!(
            v[1],
            Verdict::Retry {
                delay: Some(Duration::from_millis(1500)),
                error: "refused by i1 in a batch".into()
            }
        );
        assert_eq!(
            v[2],
            Verdict::DeadLetter {
                error: "no such post".into()
            }
        );
        assert!(matches!(v[3], Verdict::Retry { delay: None, .. }));
        assert!(batch(&reply(500, &[], ""), &ds)
            .iter()
            .all(|v| matches!(v, Verdict::Retry { .. })));
        assert!(batch(&reply(200, &[], "not json"), &ds)
            .iter()
            .all(|v| matches!(v, Verdict::Retry { .. })));
    }
}
