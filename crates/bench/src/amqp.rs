//! The RabbitMQ side of the delivery benchmarks, over AMQP 0-9-1 (`lapin`):
//! durable queues, persistent messages published with publisher confirms,
//! consumers with manual acks and a prefetch limit.
//!
//! The server is the one named by `COURIER_BENCH_AMQP_URL` (by default a
//! local RabbitMQ as guest). It is shared: this module never changes its
//! settings, only declares queues named by the caller and deletes them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::task::JoinHandle;

use crate::openloop::OpenLoop;
use crate::tally::{stamped, Tally};

/// The server when `COURIER_BENCH_AMQP_URL` is not set.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// `COURIER_BENCH_AMQP_URL`, else [`DEFAULT_URL`].
pub fn url() -> String {
    std::env::var("COURIER_BENCH_AMQP_URL").unwrap_or_else(|_| DEFAULT_URL.into())
}

/// `url` with its password left out, for printing.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = &url[scheme + 3..at];
            let user = user.split(':').next().unwrap_or("");
            format!("{}{user}:…{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

pub async fn connect(url: &str) -> Result<Connection> {
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .context("no answer within 10 s")?
    .with_context(|| format!("cannot connect to {}", redacted(url)))
}

/// Messages are persistent (delivery mode 2): written to disk by a durable queue.
fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// Declares the durable (classic) queue `name`, empty.
pub async fn declare(connection: &Connection, name: &str) -> Result<()> {
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("declaring queue {name}"))?;
    channel.queue_purge(name.into(), Default::default()).await?;
    let _ = channel.close(200, "done".into()).await;
    Ok(())
}

/// Deletes queue `name` (one this run declared).
pub async fn delete(connection: &Connection, name: &str) -> Result<()> {
    let channel = connection.create_channel().await?;
    channel
        .queue_delete(name.into(), QueueDeleteOptions::default())
        .await
        .with_context(|| format!("deleting queue {name}"))?;
    let _ = channel.close(200, "done".into()).await;
    Ok(())
}

/// A channel in confirm mode.
async fn confirming(connection: &Connection) -> Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Publishes `count` persistent copies of `body` to `queue` with publisher
/// confirms, over 4 channels with up to 1000 confirms outstanding on each
/// (the pre-fill, not a measured figure); returns how long it took.
pub async fn prefill(
    connection: &Connection,
    queue: &str,
    count: u64,
    body: &[u8],
) -> Result<Duration> {
    const CHANNELS: u64 = 4;
    const WINDOW: u64 = 1000;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..CHANNELS {
        let channel = confirming(connection).await?;
        let (queue, body) = (queue.to_string(), body.to_vec());
        let mine = count / CHANNELS + u64::from(i < count % CHANNELS);
        tasks.push(tokio::spawn(async move {
            let mut confirms = Vec::with_capacity(WINDOW as usize);
            for n in 0..mine {
                confirms.push(
                    channel
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions::default(),
                            &body,
                            persistent(),
                        )
                        .await?,
                );
                if confirms.len() as u64 == WINDOW || n + 1 == mine {
                    for confirm in confirms.drain(..) {
                        if !confirm.await?.is_ack() {
                            bail!("RabbitMQ refused (nacked) a publish");
                        }
                    }
                }
            }
            let _ = channel.close(200, "done".into()).await;
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

/// Consumers on one queue, each on its own connection and channel, with
/// manual acks (one `basic.ack` per message, `multiple` off) and `prefetch`
/// unacknowledged messages at most. Dropping them stops them; unacked
/// messages go back to the queue.
pub struct Consumers {
    connections: Vec<Connection>,
    tasks: Vec<JoinHandle<Result<()>>>,
}

impl Consumers {
    /// Starts `n` consumers on `queue`, counting into `tally`.
    pub async fn start(
        url: &str,
        queue: &str,
        n: usize,
        prefetch: u16,
        tally: Arc<Tally>,
    ) -> Result<Consumers> {
        let mut connections = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let connection = connect(url).await?;
            let channel = connection.create_channel().await?;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            let mut consumer = channel
                .basic_consume(
                    queue.into(),
                    format!("courier-bench-{i}").into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("consuming from {queue}"))?;
            let tally = tally.clone();
            tasks.push(tokio::spawn(async move {
                // Each delivery is acked on its own, but the consumer does not
                // wait for one ack to be handed to the connection before it
                // takes the next delivery (as a handler answering several
                // requests at once would not).
                let mut acks = FuturesUnordered::new();
                loop {
                    tokio::select! {
                        Some(acked) = acks.next(), if !acks.is_empty() => {
                            acked?;
                        }
                        delivery = consumer.next() => {
                            let Some(delivery) = delivery else { break };
                            let delivery = delivery?;
                            tally.one(&delivery.data);
                            acks.push(async move {
                                delivery.acker.ack(BasicAckOptions::default()).await
                            });
                        }
                    }
                }
                while let Some(acked) = acks.next().await {
                    acked?;
                }
                Ok(())
            }));
            connections.push(connection);
        }
        Ok(Consumers { connections, tasks })
    }

    /// Closes the consumers' connections and fails if a consumer had failed.
    pub async fn stop(mut self) -> Result<()> {
        for connection in &self.connections {
            let _ = connection.close(200, "done".into()).await;
        }
        for task in self.tasks.drain(..) {
            match tokio::time::timeout(Duration::from_secs(5), task).await {
                Ok(Ok(Ok(()))) | Err(_) => {}
                // A closed connection ends its stream with an error; only
                // errors before the close would matter, and they show as
                // missing messages.
                Ok(Ok(Err(_))) => {}
                Ok(Err(e)) => return Err(e).context("a consumer panicked"),
            }
        }
        Ok(())
    }
}

impl Drop for Consumers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Publishes stamped persistent messages of `len` bytes to `queue` as
/// `schedule` makes them due, on one confirm-mode channel of `connection`:
/// confirms stay in flight (never awaited before the next publish) and are
/// all checked. Several of these may share one schedule. Returns how many
/// this one published.
pub async fn publish_open_loop(
    connection: &Connection,
    queue: &str,
    schedule: Arc<OpenLoop>,
    len: usize,
) -> Result<u64> {
    let channel = confirming(connection).await?;
    // Confirms are awaited by a second task, in order, so none piles up
    // unchecked and the publishing loop never waits for one.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<lapin::PublisherConfirm>();
    let checker = tokio::spawn(async move {
        let mut confirmed = 0u64;
        while let Some(confirm) = rx.recv().await {
            if !confirm.await?.is_ack() {
                bail!("RabbitMQ refused (nacked) a publish");
            }
            confirmed += 1;
        }
        anyhow::Ok(confirmed)
    });
    let mut published = 0u64;
    while let Some(intended) = schedule.next().await {
        schedule.sending(intended);
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &stamped(intended, len),
                persistent(),
            )
            .await?;
        let _ = tx.send(confirm);
        published += 1;
    }
    drop(tx);
    let confirmed = checker.await.context("the confirm checker panicked")??;
    if confirmed != published {
        bail!("{confirmed} of {published} publishes confirmed");
    }
    let _ = channel.close(200, "done".into()).await;
    Ok(published)
}
