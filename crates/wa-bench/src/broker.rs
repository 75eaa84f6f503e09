//! The queue ceiling: confirmed persistent publishes into a quorum queue,
//! and consume + ack of them, with no Redis or PostgreSQL work.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

pub(crate) struct BrokerCeiling {
    pub publish_per_second: f64,
    pub consume_ack_per_second: f64,
}

/// `concurrency` publishers over `channels` confirm channels, each awaiting
/// its confirm before the next publish (as the receiver does), for
/// `duration`; then one consumer with `prefetch` acks them all.
pub(crate) async fn measure(
    url: &str,
    queue: &str,
    body: Arc<Vec<u8>>,
    concurrency: usize,
    channels: usize,
    duration: Duration,
    prefetch: u16,
) -> anyhow::Result<BrokerCeiling> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let setup = connection.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    setup.queue_declare(queue.into(), durable, args).await?;

    let mut publishers = Vec::new();
    for _ in 0..channels.max(1) {
        let channel = connection.create_channel().await?;
        channel.confirm_select(Default::default()).await?;
        publishers.push(channel);
    }
    let published = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks = (0..concurrency).map(|i| {
        let channel = publishers[i % publishers.len()].clone();
        let (body, published, queue) = (body.clone(), published.clone(), queue.to_owned());
        tokio::spawn(async move {
            while started.elapsed() < duration {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await?
                    .await?;
                if confirm.is_ack() {
                    published.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<(), lapin::Error>(())
        })
    });
    for task in futures_util::future::join_all(tasks).await {
        task??;
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    let published = published.load(Ordering::Relaxed);

    let consumer_channel = connection.create_channel().await?;
    consumer_channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.into(),
            "bench-ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let mut acked = 0u64;
    while acked < published {
        let Some(delivery) = consumer.next().await else {
            break;
        };
        delivery?.ack(BasicAckOptions::default()).await?;
        acked += 1;
    }
    let consume_seconds = started.elapsed().as_secs_f64();
    let _ = setup
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "bench done".into()).await;
    Ok(BrokerCeiling {
        publish_per_second: published as f64 / publish_seconds,
        consume_ack_per_second: acked as f64 / consume_seconds,
    })
}
