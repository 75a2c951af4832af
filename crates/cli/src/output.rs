//! Human-readable output by default; `--json` prints the API's own JSON so
//! scripts see exactly what the broker answered.

use courier_client::wire::{DeliveryView, MessageView, TokenResult};
use courier_core::{Capabilities, Headers, PublishReceipt, Stats, SubscriptionInfo, TopicInfo};
use serde::Serialize;

pub(crate) struct Output {
    json: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    fn print_json<T: Serialize + ?Sized>(&self, value: &T) {
        match serde_json::to_string(value) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: cannot print JSON: {e}"),
        }
    }

    /// A value: as JSON, or the human line.
    pub fn value<T: Serialize>(&self, value: &T, human: &str) {
        if self.json {
            self.print_json(value);
        } else {
            println!("{human}");
        }
    }

    /// Commands with nothing to show: silent in JSON mode (the exit code says it all).
    pub fn done(&self, human: &str) {
        if !self.json {
            println!("{human}");
        }
    }

    pub fn topic(&self, t: &TopicInfo, created: Option<bool>) {
        if self.json {
            return self.print_json(t);
        }
        created_line("topic", &t.name, created);
        println!("name:          {}", t.name);
        println!("messages:      {}", t.messages);
        println!("bytes:         {}", t.bytes);
        println!("sequences:     {}..{}", t.first_seq, t.next_seq);
        println!("dedup window:  {} ms", t.config.dedup_window.as_millis());
        let r = &t.config.retention;
        let limit = |v: Option<u64>| v.map_or("unlimited".to_string(), |v| v.to_string());
        println!(
            "retention:     max_age={} max_bytes={} max_messages={}",
            r.max_age
                .map_or("unlimited".to_string(), |d| format!("{}ms", d.as_millis())),
            limit(r.max_bytes),
            limit(r.max_messages)
        );
    }

    pub fn topics(&self, topics: &[TopicInfo]) {
        if self.json {
            return self.print_json(topics);
        }
        println!(
            "{:<32} {:>10} {:>12} {:>10} {:>10}",
            "NAME", "MESSAGES", "BYTES", "FIRST", "NEXT"
        );
        for t in topics {
            println!(
                "{:<32} {:>10} {:>12} {:>10} {:>10}",
                t.name, t.messages, t.bytes, t.first_seq, t.next_seq
            );
        }
    }

    pub fn subscription(&self, s: &SubscriptionInfo, created: Option<bool>) {
        if self.json {
            return self.print_json(s);
        }
        created_line("subscription", &s.name, created);
        let c = &s.config;
        println!("name:          {}", s.name);
        println!("topic:         {}", c.topic);
        println!("start:         {}", c.start);
        println!("ack deadline:  {} ms", c.ack_deadline.as_millis());
        println!(
            "in flight:     {} (max {}, {} per consumer)",
            s.in_flight, c.max_in_flight, c.max_in_flight_per_consumer
        );
        println!("backlog:       {}", s.backlog);
        println!("waiting:       {}", s.waiting);
        println!("ack floor:     {}", s.ack_floor);
        println!(
            "retry:         max {} attempts, backoff {}ms..{}ms x{} jitter {}",
            c.retry.max_attempts,
            c.retry.initial_backoff.as_millis(),
            c.retry.max_backoff.as_millis(),
            c.retry.multiplier,
            c.retry.jitter
        );
        println!("dead letters:  {}", c.dead_letter_topic_for(&s.name));
        println!("ordered:       {}", c.ordered);
        println!(
            "totals:        delivered {} acked {} dead-lettered {}",
            s.delivered_total, s.acked_total, s.dead_lettered_total
        );
    }

    pub fn subscriptions(&self, subs: &[SubscriptionInfo]) {
        if self.json {
            return self.print_json(subs);
        }
        println!(
            "{:<32} {:<24} {:>9} {:>9} {:>8} {:>10} {:>6}",
            "NAME", "TOPIC", "BACKLOG", "IN_FLIGHT", "WAITING", "ACK_FLOOR", "DEAD"
        );
        for s in subs {
            println!(
                "{:<32} {:<24} {:>9} {:>9} {:>8} {:>10} {:>6}",
                s.name,
                s.config.topic,
                s.backlog,
                s.in_flight,
                s.waiting,
                s.ack_floor,
                s.dead_lettered_total
            );
        }
    }

    pub fn receipt(&self, r: &PublishReceipt) {
        if self.json {
            return self.print_json(r);
        }
        let dup = if r.duplicate { " (duplicate)" } else { "" };
        println!("seq={} id={}{dup}", r.seq, r.id);
    }

    pub fn deliveries(&self, deliveries: &[DeliveryView]) {
        if self.json {
            return self.print_json(deliveries);
        }
        if deliveries.is_empty() {
            println!("no messages");
        }
        for d in deliveries {
            self.delivery_line(d);
        }
    }

    /// One delivery; in JSON mode one object per line, for streams.
    pub fn delivery_line(&self, d: &DeliveryView) {
        if self.json {
            return self.print_json(d);
        }
        let m = &d.message;
        println!(
            "#{} token={} id={} attempt={}{}{}",
            m.seq,
            d.token,
            m.id,
            d.attempt,
            m.key
                .as_ref()
                .map(|k| format!(" key={k}"))
                .unwrap_or_default(),
            headers(&m.headers)
        );
        println!("  {}", body(m.body.as_deref(), m.body_base64.as_deref()));
    }

    /// What an ack, nack or extend did: `<token> <outcome>` per token, or the
    /// results array in JSON mode.
    pub fn results(&self, results: &[TokenResult]) {
        if self.json {
            return self.print_json(results);
        }
        for r in results {
            println!("{} {}", r.token, r.outcome.as_str());
        }
    }

    pub fn messages(&self, messages: &[MessageView]) {
        if self.json {
            return self.print_json(messages);
        }
        if messages.is_empty() {
            println!("no messages");
        }
        for m in messages {
            println!(
                "#{} id={}{}{}",
                m.seq,
                m.id,
                m.key
                    .as_ref()
                    .map(|k| format!(" key={k}"))
                    .unwrap_or_default(),
                headers(&m.headers)
            );
            println!("  {}", body(m.body.as_deref(), m.body_base64.as_deref()));
        }
    }

    pub fn capabilities(&self, c: &Capabilities) {
        if self.json {
            return self.print_json(c);
        }
        println!("engine:             {}", c.engine);
        println!("max message bytes:  {}", c.max_message_bytes);
        println!(
            "max dedup window:   {}",
            c.max_dedup_window
                .map_or("unbounded".to_string(), |d| format!("{} ms", d.as_millis()))
        );
        println!("features:");
        for f in &c.features {
            // The wire name (snake_case), as `--json` and the API show it.
            let name = serde_json::to_value(f)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{f:?}"));
            println!("  {name:<24} {}", f.describe());
        }
    }

    /// Broker-wide counters, then one line per push subscription.
    pub fn stats(&self, s: &Stats, push: &[serde_json::Value]) {
        if self.json {
            let mut value = serde_json::to_value(s).unwrap_or_default();
            if let Some(map) = value.as_object_mut() {
                map.insert("push".into(), push.to_vec().into());
            }
            return self.print_json(&value);
        }
        println!("topics:          {}", s.topics);
        println!("subscriptions:   {}", s.subscriptions);
        println!("messages:        {}", s.messages);
        println!("bytes:           {}", s.bytes);
        println!("published total: {}", s.published_total);
        println!("delivered total: {}", s.delivered_total);
        println!("acked total:     {}", s.acked_total);
        println!("dead-lettered:   {}", s.dead_lettered_total);
        for p in push {
            let n = |k: &str| p[k].as_u64().unwrap_or(0);
            let age = p["oldest_unacked_age"]
                .as_u64()
                .map_or_else(|| "-".to_string(), |ms| format!("{ms} ms"));
            println!(
                "push {} -> {}: backlog {}, in flight {}, delivered {}, failed {}, dead-lettered {}, oldest unacked {age}",
                p["subscription"].as_str().unwrap_or("?"),
                p["service"].as_str().unwrap_or("?"),
                n("backlog"),
                n("messages_in_flight"),
                n("delivered_total"),
                n("failed_total"),
                n("dead_lettered_total"),
            );
        }
    }
}

/// What a create did: `created topic t`, or that an identical one was there.
fn created_line(kind: &str, name: &str, created: Option<bool>) {
    match created {
        Some(true) => println!("created {kind} {name}"),
        Some(false) => println!("{kind} {name} already exists (identical)"),
        None => {}
    }
}

fn headers(h: &Headers) -> String {
    h.iter().map(|(k, v)| format!(" {k}={v}")).collect()
}

fn body(text: Option<&str>, b64: Option<&str>) -> String {
    match (text, b64) {
        (Some(t), _) => t.to_owned(),
        (None, Some(b)) => format!("(binary, base64) {b}"),
        (None, None) => String::new(),
    }
}
