//! What the engine refuses before touching anything.

use super::*;

impl EmbeddedEngine {
    pub(super) fn validate_message(&self, m: &NewMessage) -> Result<()> {
        if m.body.len() > self.config.max_message_bytes {
            return Err(Error::MessageTooLarge {
                size: m.body.len(),
                limit: self.config.max_message_bytes,
            });
        }
        let short = |what: &str, s: &str| {
            if s.is_empty() || s.len() > MAX_ID_LEN {
                Err(Error::InvalidArgument(format!(
                    "{what} must be 1 to {MAX_ID_LEN} bytes"
                )))
            } else {
                Ok(())
            }
        };
        if let Some(id) = &m.id {
            short("message id", id)?;
        }
        if let Some(key) = &m.key {
            short("ordering key", key)?;
        }
        for (name, value) in &m.headers {
            short("header name", name)?;
            if value.len() > MAX_HEADER_VALUE_LEN {
                return Err(Error::InvalidArgument(format!(
                    "header '{name}' is longer than {MAX_HEADER_VALUE_LEN} bytes"
                )));
            }
        }
        Ok(())
    }
}

pub(super) fn validate_subscription(name: &str, c: &SubscriptionConfig) -> Result<()> {
    let bad = |msg: &str| {
        Err(Error::InvalidArgument(format!(
            "subscription '{name}': {msg}"
        )))
    };
    validate_name(&c.topic)?;
    if let Some(dlq) = &c.dead_letter_topic {
        validate_name(dlq)?;
    }
    if c.dead_letter_topic_for(name) == c.topic {
        return Err(Error::InvalidArgument(
            "the dead-letter topic must differ from the subscription's topic".into(),
        ));
    }
    if c.ack_deadline < Duration::from_millis(1) {
        return bad("ack_deadline must be at least 1 ms");
    }
    if c.max_in_flight == 0 || c.max_in_flight_per_consumer == 0 {
        return bad("max_in_flight and max_in_flight_per_consumer must be at least 1");
    }
    let r = &c.retry;
    if !(r.multiplier.is_finite() && r.multiplier >= 1.0) {
        return bad("retry.multiplier must be a number >= 1");
    }
    if !(0.0..=1.0).contains(&r.jitter) {
        return bad("retry.jitter must be between 0 and 1");
    }
    if r.initial_backoff > r.max_backoff {
        return bad("retry.initial_backoff must not exceed retry.max_backoff");
    }
    if let Some(problem) = c.push_problem() {
        return bad(&problem);
    }
    Ok(())
}
