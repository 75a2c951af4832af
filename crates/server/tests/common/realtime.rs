//! Helpers of the real-time tests: a small Server-Sent Events reader over
//! reqwest, and publishing with keys and headers.

use std::pin::Pin;

use bytes::Bytes;
use futures_core::Stream;
use serde_json::{json, Value};

use super::DEADLINE;

/// One SSE frame (the lines up to a blank line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
    pub comments: Vec<String>,
}

impl Frame {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("data")).expect("JSON data")
    }
    pub fn seq(&self) -> u64 {
        self.json()["seq"].as_u64().expect("seq")
    }
}

pub struct Sse {
    pub response_headers: reqwest::header::HeaderMap,
    stream: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: String,
}

impl Sse {
    /// Opens `url` (with `Last-Event-ID` when given); panics unless 200.
    pub async fn open(url: &str, last_event_id: Option<u64>) -> Sse {
        let response = Self::request(url, last_event_id, None).await;
        assert_eq!(response.status(), 200, "{url}: {:?}", response.headers());
        Self::from_response(response)
    }

    pub async fn request(
        url: &str,
        last_event_id: Option<u64>,
        bearer: Option<&str>,
    ) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request sent")
    }

    pub fn from_response(response: reqwest::Response) -> Sse {
        Sse {
            response_headers: response.headers().clone(),
            stream: Box::pin(response.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next frame, or `None` when the server ended the stream.
    pub async fn frame(&mut self) -> Option<Frame> {
        tokio::time::timeout(DEADLINE, self.frame_inner())
            .await
            .expect("an SSE frame in time")
    }

    async fn frame_inner(&mut self) -> Option<Frame> {
        use futures_util::StreamExt;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let text: String = self.buf.drain(..end + 2).collect();
                let mut frame = Frame::default();
                for line in text.lines().filter(|l| !l.is_empty()) {
                    if let Some(c) = line.strip_prefix(':') {
                        frame.comments.push(c.trim().to_owned());
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
                    match field {
                        "id" => frame.id = Some(value),
                        "event" => frame.event = Some(value),
                        "data" => {
                            assert!(frame.data.is_none(), "one data line per event");
                            frame.data = Some(value)
                        }
                        "retry" => frame.retry = Some(value.parse().unwrap()),
                        other => panic!("unexpected field {other}"),
                    }
                }
                return Some(frame);
            }
            match self.stream.next().await {
                Some(Ok(chunk)) => self.buf.push_str(std::str::from_utf8(&chunk).unwrap()),
                Some(Err(e)) => panic!("stream error: {e}"),
                None => return None,
            }
        }
    }

    /// The next event with `data` (keep-alives and the retry hint skipped).
    pub async fn event(&mut self) -> Frame {
        loop {
            let frame = self.frame().await.expect("the stream goes on");
            if frame.data.is_some() {
                return frame;
            }
        }
    }

    /// The next `n` message events' sequences (no other events between).
    pub async fn seqs(&mut self, n: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for _ in 0..n {
            let e = self.event().await;
            assert_eq!(e.event.as_deref(), Some("message"), "{e:?}");
            assert_eq!(e.id, Some(e.seq().to_string()), "the id is the sequence");
            out.push(e.seq());
        }
        out
    }
}

pub async fn create_topic(url: &str, topic: &str, config: Value) {
    let r = reqwest::Client::new()
        .put(format!("{url}/v1/topics/{topic}"))
        .json(&config)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// Publishes one message per body, with an optional key and headers; returns the sequences.
pub async fn publish(
    url: &str,
    topic: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    bodies: &[&str],
) -> Vec<u64> {
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let messages: Vec<Value> = bodies
        .iter()
        .map(|b| json!({"key": key, "headers": headers, "body": b}))
        .map(|mut m| {
            if m["key"].is_null() {
                m.as_object_mut().unwrap().remove("key");
            }
            m
        })
        .collect();
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/topics/{topic}/messages/batch"))
        .json(&json!({ "messages": messages }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    v["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect()
}

pub async fn get_json(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}
