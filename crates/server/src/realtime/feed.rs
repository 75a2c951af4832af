//! A filtered, resumable stream of one topic's events: the one thing every
//! real-time transport delivers. It wraps the engine's topic tail
//! ([`courier_core::Engine::tail`]: listeners of a topic share one read of
//! the log), drops what the filter does not want, turns gaps into
//! [`Reset`]s, and keeps the cursor (the next sequence to look at), so a
//! transport only encodes.
//!
//! Positions: a client names where to start with [`parse_from`] (`new`,
//! `earliest`, a sequence, `seq:N`, `time:MILLIS`) or resumes after the last
//! sequence it saw with [`resume_after`] (SSE's `Last-Event-ID`); both read
//! the durable log, so nothing between is missed and nothing is repeated.

use courier_api::realtime::Reset;
use courier_core::{Engine, Message, MessageBatch, Seq, StartPosition, Tail, TailEvent};
use futures_util::StreamExt;

use super::Filter;
use crate::error::{codes, ApiError};

/// What a [`Feed`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FeedEvent {
    /// A stored message that matches the filter.
    Message(Message),
    /// Messages were removed by retention before they could be read.
    Reset(Reset),
    /// A run of messages the filter dropped; the cursor moved past them.
    /// Transports that show nothing for it can ignore it.
    Skipped { count: u64 },
}

/// A topic's events from a position on, through a filter.
pub(crate) struct Feed {
    tail: Tail,
    filter: Filter,
    batch: Option<MessageBatch>,
    at: usize,
    cursor: Option<Seq>,
}

impl Feed {
    /// Starts following `topic` at `start`. Fails at once (topic not found,
    /// shutting down) rather than in the stream.
    pub(crate) async fn open(
        engine: &dyn Engine,
        topic: &str,
        start: StartPosition,
        filter: Filter,
    ) -> Result<Self, ApiError> {
        let tail = engine.tail(topic, start).await?;
        Ok(Self {
            tail,
            filter,
            batch: None,
            at: 0,
            cursor: match start {
                StartPosition::Seq(s) => Some(s),
                _ => None,
            },
        })
    }

    /// The next sequence to look at: past the last message yielded or
    /// skipped, or the start when nothing was. `None` before the first event
    /// of a feed that did not start at a sequence.
    pub(crate) fn cursor(&self) -> Option<Seq> {
        self.cursor
    }

    /// The next event; `None` when the tail ended (topic deleted, engine
    /// shutting down: the error comes first). Cancel-safe: dropping the
    /// future loses nothing.
    pub(crate) async fn next(&mut self) -> Option<Result<FeedEvent, courier_core::Error>> {
        loop {
            if let Some(batch) = &self.batch {
                let mut skipped = 0;
                while let Some(m) = batch.get(self.at) {
                    self.at += 1;
                    self.cursor = Some(m.seq + 1);
                    if self.filter.matches(m) {
                        if skipped > 0 {
                            // The message is yielded next time.
                            self.at -= 1;
                            self.cursor = Some(m.seq);
                            return Some(Ok(FeedEvent::Skipped { count: skipped }));
                        }
                        return Some(Ok(FeedEvent::Message(m.clone())));
                    }
                    skipped += 1;
                }
                self.batch = None;
                if skipped > 0 {
                    return Some(Ok(FeedEvent::Skipped { count: skipped }));
                }
            }
            match self.tail.next().await? {
                Ok(TailEvent::Messages(batch)) => {
                    self.batch = Some(batch);
                    self.at = 0;
                }
                Ok(TailEvent::Gap { from, to }) => {
                    self.cursor = Some(to);
                    return Some(Ok(FeedEvent::Reset(Reset::for_gap(from, to))));
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// A `from` parameter: `new`, `earliest`, a sequence (`42` or `seq:42`), or
/// `time:<ms since the epoch>` (the CLI's spelling of start positions, plus
/// the bare number).
pub(crate) fn parse_from(value: &str) -> Result<StartPosition, ApiError> {
    let position = match value.parse::<Seq>() {
        Ok(seq) => StartPosition::Seq(seq),
        Err(_) => value
            .parse::<StartPosition>()
            .map_err(|e| ApiError::bad_request(codes::INVALID_QUERY, format!("from: {e}")))?,
    };
    if let StartPosition::Time(ms) = position {
        crate::bounds::timestamp(ms)
            .map_err(|e| ApiError::bad_request(codes::INVALID_QUERY, format!("from: {e}")))?;
    }
    Ok(position)
}

/// Where a client that last saw sequence `last_event_id` goes on: right after it.
pub(crate) fn resume_after(last_event_id: &str, what: &str) -> Result<StartPosition, ApiError> {
    let seq = last_event_id.trim().parse::<Seq>().map_err(|_| {
        ApiError::bad_request(
            if what == "Last-Event-ID" {
                codes::INVALID_HEADER
            } else {
                codes::INVALID_QUERY
            },
            format!("{what} '{last_event_id}' is not a sequence number"),
        )
    })?;
    Ok(StartPosition::Seq(seq.saturating_add(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        assert_eq!(parse_from("new").unwrap(), StartPosition::New);
        assert_eq!(parse_from("earliest").unwrap(), StartPosition::Earliest);
        assert_eq!(parse_from("42").unwrap(), StartPosition::Seq(42));
        assert_eq!(parse_from("seq:42").unwrap(), StartPosition::Seq(42));
        assert_eq!(parse_from("time:5").unwrap(), StartPosition::Time(5));
        assert!(parse_from("later").is_err());
        assert!(parse_from("time:99999999999999999").is_err());
        assert_eq!(
            resume_after("41", "Last-Event-ID").unwrap(),
            StartPosition::Seq(42)
        );
        assert_eq!(
            resume_after("x", "Last-Event-ID").unwrap_err().code,
            codes::INVALID_HEADER
        );
    }
}
