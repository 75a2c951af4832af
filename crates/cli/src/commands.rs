//! The client commands: each turns its flags into one or a few API calls and
//! prints the answer through `output`.

use std::io::{BufRead, Read};
use std::time::Duration;

use bytes::Bytes;
use courier_client::wire::{
    InstanceRegistration, NackBody, PublishMessage, PullBody, RejectBody, SettleResponse,
};
use courier_client::{Client, Publish};
use courier_core::{Outcome, SubscriptionConfig, SubscriptionUpdate, TopicConfig};

use crate::args::{
    Command, DlqCommand, Global, PublishArgs, PullArgs, ServiceCommand, SubscriptionCommand,
    SubscriptionCreate, SubscriptionUpdateArgs, TailArgs, TopicCommand,
};
use crate::output::Output;
use crate::{exit, Failure};

/// Lines of `publish --file` sent per request.
const FILE_BATCH: usize = 500;
/// How long each `tail` pull waits; the server shortens it to its own maximum.
const TAIL_WAIT: Duration = Duration::from_secs(30);

pub(crate) async fn run(global: Global, command: Command) -> Result<(), Failure> {
    let client = Client::new(&global.url)?;
    let out = Output::new(global.json);
    run_with(&client, &out, command).await.map_err(|f| {
        if f.kind == "unreachable" {
            // Say where we knocked, and how to knock elsewhere.
            let why = f
                .message
                .strip_prefix("cannot reach the broker: ")
                .unwrap_or(&f.message)
                .to_owned();
            Failure {
                message: format!(
                    "cannot reach the broker at {}: {why} (set --url or COURIER_URL to use another)",
                    global.url
                ),
                ..f
            }
        } else {
            f
        }
    })
}

async fn run_with(client: &Client, out: &Output, command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve(_) => unreachable!("handled in main"),
        Command::Topic(c) => topic(client, out, c).await,
        Command::Subscription(c) => subscription(client, out, c).await,
        Command::Publish(args) => publish(client, out, args).await,
        Command::Pull(args) => pull(client, out, args).await,
        Command::Tail(args) => tail(client, out, args).await,
        Command::Ack(args) => {
            let answer = client
                .ack(&args.leases.subscription, &args.leases.tokens)
                .await?;
            settled(out, &answer, "acked")
        }
        Command::Nack(args) => {
            let body = NackBody {
                tokens: args.leases.tokens,
                delay_ms: args.delay.map(|d| d.as_millis() as u64),
                error: args.error,
            };
            let answer = client.nack(&args.leases.subscription, &body).await?;
            settled(out, &answer, "nacked")
        }
        Command::Extend(args) => {
            let answer = client
                .extend(&args.leases.subscription, &args.leases.tokens, args.by)
                .await?;
            settled(out, &answer, "extended")
        }
        Command::Release(args) => {
            let answer = client
                .release(&args.leases.subscription, &args.leases.tokens)
                .await?;
            settled(out, &answer, "released")
        }
        Command::Reject(args) => {
            let body = RejectBody {
                tokens: args.leases.tokens,
                error: args.error,
            };
            let answer = client.reject(&args.leases.subscription, &body).await?;
            settled(out, &answer, "rejected")
        }
        Command::Service(c) => service(client, out, c).await,
        Command::Dlq(DlqCommand::List { subscription, max }) => {
            out.messages(&client.dead_letters(&subscription, max).await?);
            Ok(())
        }
        Command::Dlq(DlqCommand::Replay {
            subscription,
            up_to,
        }) => {
            let n = client.replay_dead_letters(&subscription, up_to).await?;
            out.value(
                &serde_json::json!({ "replayed": n }),
                &format!("replayed {n}"),
            );
            Ok(())
        }
        Command::Stats => {
            let stats = client.stats().await?;
            let mut push = Vec::new();
            for sub in client.list_subscriptions().await? {
                if sub.config.push.is_some() {
                    push.push(client.push_stats(&sub.name).await?);
                }
            }
            out.stats(&stats, &push);
            Ok(())
        }
        Command::Capabilities => {
            out.capabilities(&client.capabilities().await?);
            Ok(())
        }
    }
}

/// Prints what an ack, nack or extend did, token by token; fails (exit 1)
/// when none of the tokens took effect.
fn settled(out: &Output, answer: &SettleResponse, verb: &str) -> Result<(), Failure> {
    out.results(&answer.results);
    match nothing_took_effect(answer) {
        Some(why) => Err(
            Failure::new(exit::FAILED, format!("nothing was {verb}: {why}"))
                .with_kind("nothing_took_effect"),
        ),
        None => Ok(()),
    }
}

/// `None` when at least one token took effect; else a count of what happened
/// instead, e.g. `1 lease_lost, 2 not_found`.
fn nothing_took_effect(answer: &SettleResponse) -> Option<String> {
    if answer.ok_count() > 0 {
        return None;
    }
    let mut counts: Vec<(Outcome, usize)> = Vec::new();
    for r in &answer.results {
        match counts.iter_mut().find(|(o, _)| *o == r.outcome) {
            Some((_, n)) => *n += 1,
            None => counts.push((r.outcome, 1)),
        }
    }
    let why: Vec<String> = counts
        .iter()
        .map(|(o, n)| format!("{n} {}", o.as_str()))
        .collect();
    Some(why.join(", "))
}

/// Tells on stderr which tokens of an ack made by `pull --ack` or `tail --ack`
/// did not take effect: those messages will be delivered again.
fn warn_unsettled(answer: &SettleResponse) {
    for r in answer.results.iter().filter(|r| !r.outcome.is_ok()) {
        eprintln!(
            "warning: {} {}: not acked, it will be delivered again",
            r.token,
            r.outcome.as_str()
        );
    }
}

async fn topic(client: &Client, out: &Output, command: TopicCommand) -> Result<(), Failure> {
    match command {
        TopicCommand::Create {
            name,
            dedup_window,
            max_age,
            max_bytes,
            max_messages,
        } => {
            let mut config = TopicConfig::default();
            if let Some(w) = dedup_window {
                config.dedup_window = w;
            }
            config.retention.max_age = max_age;
            config.retention.max_bytes = max_bytes;
            config.retention.max_messages = max_messages;
            let created = client.create_topic(&name, &config).await?;
            out.topic(&created.value, Some(created.created));
        }
        TopicCommand::List => out.topics(&client.list_topics().await?),
        TopicCommand::Show { name } => out.topic(&client.topic(&name).await?, None),
        TopicCommand::Delete { name, force } => {
            if force {
                client.delete_topic_force(&name).await?;
            } else {
                client.delete_topic(&name).await?;
            }
            out.value(
                &serde_json::json!({ "deleted": "topic", "name": name }),
                &format!("deleted topic {name}"),
            );
        }
    }
    Ok(())
}

async fn subscription(
    client: &Client,
    out: &Output,
    command: SubscriptionCommand,
) -> Result<(), Failure> {
    match command {
        SubscriptionCommand::Create(args) => {
            let name = args.name.clone();
            let config = subscription_config(args);
            let created = client.create_subscription(&name, &config).await?;
            out.subscription(&created.value, Some(created.created));
        }
        SubscriptionCommand::List => out.subscriptions(&client.list_subscriptions().await?),
        SubscriptionCommand::Show { name } => {
            out.subscription(&client.subscription(&name).await?, None)
        }
        SubscriptionCommand::Update(args) => {
            let name = args.name.clone();
            let update = subscription_update(client, args).await?;
            let info = client.update_subscription(&name, &update).await?;
            out.done(&format!("updated subscription {name}"));
            out.subscription(&info, None);
        }
        SubscriptionCommand::Delete { name } => {
            client.delete_subscription(&name).await?;
            out.value(
                &serde_json::json!({ "deleted": "subscription", "name": name }),
                &format!("deleted subscription {name}"),
            );
        }
    }
    Ok(())
}

fn subscription_config(a: SubscriptionCreate) -> SubscriptionConfig {
    let mut c = SubscriptionConfig::for_topic(a.topic);
    if let Some(v) = a.start {
        c.start = v;
    }
    if let Some(v) = a.ack_deadline {
        c.ack_deadline = v;
    }
    if let Some(v) = a.max_in_flight {
        c.max_in_flight = v;
    }
    if let Some(v) = a.max_in_flight_per_consumer {
        c.max_in_flight_per_consumer = v;
    }
    if let Some(v) = a.max_attempts {
        c.retry.max_attempts = v;
    }
    if let Some(v) = a.initial_backoff {
        c.retry.initial_backoff = v;
    }
    if let Some(v) = a.max_backoff {
        c.retry.max_backoff = v;
    }
    if let Some(v) = a.backoff_multiplier {
        c.retry.multiplier = v;
    }
    if let Some(v) = a.jitter {
        c.retry.jitter = v;
    }
    c.dead_letter_topic = a.dead_letter_topic;
    c.ordered = a.ordered;
    c.push = a.push.config();
    c
}

/// The update the flags ask for. `--max-attempts` changes one field of the
/// retry policy, which the API replaces as a whole: the rest is read from the
/// subscription first.
async fn subscription_update(
    client: &Client,
    a: SubscriptionUpdateArgs,
) -> Result<SubscriptionUpdate, Failure> {
    let retry = match a.max_attempts {
        Some(n) => {
            let mut retry = client.subscription(&a.name).await?.config.retry;
            retry.max_attempts = n;
            Some(retry)
        }
        None => None,
    };
    Ok(SubscriptionUpdate {
        ack_deadline: a.ack_deadline,
        max_in_flight: a.max_in_flight,
        max_in_flight_per_consumer: a.max_in_flight_per_consumer,
        retry,
        dead_letter_topic: a.dead_letter_topic,
        push: if a.no_push {
            Some(None)
        } else {
            a.push.config().map(Some)
        },
    })
}

async fn publish(client: &Client, out: &Output, a: PublishArgs) -> Result<(), Failure> {
    let headers = a.headers.iter().cloned().collect();
    let Some(file) = &a.file else {
        let body = match &a.body {
            Some(body) => Bytes::from(body.clone()),
            None => {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .map_err(|e| Failure::usage(format!("cannot read stdin: {e}")))?;
                Bytes::from(buf)
            }
        };
        let options = Publish {
            id: a.id.clone(),
            key: a.key.clone(),
            headers,
            content_type: a.content_type.clone(),
            delay: a.delay,
            deliver_at: None,
        };
        let receipt = client.publish(&a.topic, body, &options).await?;
        out.receipt(&receipt);
        return Ok(());
    };

    let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(file)
            .map_err(|e| Failure::usage(format!("cannot open {}: {e}", file.display())))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut header_map: courier_core::Headers = headers;
    if let Some(ct) = &a.content_type {
        header_map.insert("content-type".into(), ct.clone());
    }
    let mut batch = Vec::with_capacity(FILE_BATCH);
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| Failure::usage(format!("cannot read line {}: {e}", n + 1)))?;
        let mut m = PublishMessage::new(line);
        m.id = a.id.as_ref().map(|prefix| format!("{prefix}-{}", n + 1));
        m.key = a.key.clone();
        m.headers = header_map.clone();
        m.delay_ms = a.delay.map(|d| d.as_millis() as u64);
        batch.push(m);
        if batch.len() == FILE_BATCH {
            for r in client
                .publish_batch(&a.topic, std::mem::take(&mut batch))
                .await?
            {
                out.receipt(&r);
            }
        }
    }
    if !batch.is_empty() {
        for r in client.publish_batch(&a.topic, batch).await? {
            out.receipt(&r);
        }
    }
    Ok(())
}

async fn pull(client: &Client, out: &Output, a: PullArgs) -> Result<(), Failure> {
    let body = PullBody {
        consumer: a.consumer,
        max_messages: Some(a.max),
        wait_ms: a.wait.map(|w| w.as_millis() as u64),
    };
    let deliveries = client.pull(&a.subscription, &body).await?;
    out.deliveries(&deliveries);
    if a.ack && !deliveries.is_empty() {
        let tokens: Vec<_> = deliveries.iter().map(|d| d.token.clone()).collect();
        let answer = client.ack(&a.subscription, &tokens).await?;
        warn_unsettled(&answer);
        if let Some(why) = nothing_took_effect(&answer) {
            return Err(
                Failure::new(exit::FAILED, format!("nothing was acked: {why}"))
                    .with_kind("nothing_took_effect"),
            );
        }
    }
    Ok(())
}

async fn tail(client: &Client, out: &Output, a: TailArgs) -> Result<(), Failure> {
    let mut remaining = a.count.unwrap_or(u64::MAX);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while remaining > 0 {
        let body = PullBody {
            consumer: a.consumer.clone(),
            max_messages: Some(remaining.min(100) as u32),
            wait_ms: Some(TAIL_WAIT.as_millis() as u64),
        };
        let deliveries = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            result = patiently(|| client.pull(&a.subscription, &body)) => result?,
        };
        for d in &deliveries {
            out.delivery_line(d);
            if a.ack {
                // A lost lease (this terminal was slow) is worth a warning,
                // not the end of the tail.
                let tokens = [d.token.clone()];
                warn_unsettled(&patiently(|| client.ack(&a.subscription, &tokens)).await?);
            }
        }
        remaining = remaining.saturating_sub(deliveries.len() as u64);
    }
    Ok(())
}

/// Runs `call` again for as long as the broker answers 429, after the wait it
/// asks for: a follower like `tail` should slow down, not die. One-shot commands
/// do not use this; they exit 5 and leave the retrying to the script.
async fn patiently<T, F, Fut>(mut call: F) -> Result<T, courier_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, courier_client::Error>>,
{
    loop {
        match call().await {
            Err(e) if e.is_rate_limited() => {
                tokio::time::sleep(e.retry_after().unwrap_or(Duration::from_secs(1))).await;
            }
            result => return result,
        }
    }
}

async fn service(client: &Client, out: &Output, c: ServiceCommand) -> Result<(), Failure> {
    match c {
        ServiceCommand::List => {
            let list = client.services().await?;
            let text = list["services"]
                .as_array()
                .map(|s| s.iter().map(service_line).collect::<Vec<_>>().join("\n"))
                .unwrap_or_default();
            out.value(&list, &text);
        }
        ServiceCommand::Show { name } => {
            let view = client.service(&name).await?;
            let text = serde_json::to_string_pretty(&view).unwrap_or_default();
            out.value(&view, &text);
        }
        ServiceCommand::Define {
            name,
            balance,
            max_concurrent_per_instance,
            health_path,
            health_interval,
        } => {
            let mut settings = serde_json::Map::new();
            if let Some(b) = balance {
                settings.insert("balance".into(), b.into());
            }
            if let Some(n) = max_concurrent_per_instance {
                settings.insert("max_concurrent_per_instance".into(), n.into());
            }
            if let Some(path) = health_path {
                let mut check = serde_json::Map::new();
                check.insert("path".into(), path.into());
                if let Some(i) = health_interval {
                    check.insert("interval".into(), (i.as_millis() as u64).into());
                }
                settings.insert("health_check".into(), check.into());
            }
            let view = client.define_service(&name, &settings.into()).await?;
            out.value(&view, &format!("service {name} defined"));
        }
        ServiceCommand::Delete { name } => {
            client.delete_service(&name).await?;
            out.value(
                &serde_json::json!({ "deleted": name }),
                &format!("service {name} deleted"),
            );
        }
        ServiceCommand::Register {
            name,
            instance_url,
            id,
            weight,
        } => {
            let registration = InstanceRegistration {
                url: instance_url,
                id,
                weight,
            };
            let r = client.register_instance(&name, &registration).await?;
            let text = format!(
                "registered {} in {} for {} ms (register again or heartbeat before then)",
                r.id, r.service, r.expires_in
            );
            out.value(&r, &text);
        }
        ServiceCommand::Deregister { name, id } => {
            client.deregister(&name, &id).await?;
            out.value(
                &serde_json::json!({ "service": name, "deregistered": id }),
                &format!("deregistered {id} from {name}"),
            );
        }
    }
    Ok(())
}

/// `name  3 instances (2 ready)` for `service list`.
fn service_line(s: &serde_json::Value) -> String {
    let instances = s["stats"]["instances"].as_array().map_or(0, Vec::len);
    format!(
        "{}\t{instances} instance(s)",
        s["name"].as_str().unwrap_or("?")
    )
}
