//! The RabbitMQ side of the worker: consume `{ns}.inbound` with a bounded
//! prefetch, gather deliveries into batches, hand each batch to the
//! [`Processor`] in its own task, and carry out its decisions: ack only after
//! the commit, and move a delivery to a retry tier or the DLQ with a
//! confirmed publish before acking it, never the other way round.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wa_core::broker::{Broker, Outgoing, headers};
use wa_core::telemetry::error_chain;

use crate::pipeline::{Disposition, Processor};
use crate::retry::{Hop, Origin, RetryPolicy};

#[derive(Debug, Clone)]
pub struct ConsumeSettings {
    pub prefetch: u16,
    pub batch_size: usize,
    pub batch_linger: Duration,
    pub concurrency: usize,
    pub consumer_tag: String,
}

/// Everything a batch task needs, shared by all of them.
struct Shared {
    broker: Broker,
    processor: Arc<Processor>,
    retry: RetryPolicy,
}

/// Consumes until `shutdown`, then stops taking deliveries and returns once
/// the batches in flight are finished and acked. Survives broker restarts:
/// after a lost connection it consumes again on the next one, and whatever
/// was unacked is redelivered (and absorbed as duplicates).
pub async fn consume(
    broker: Broker,
    processor: Arc<Processor>,
    retry: RetryPolicy,
    settings: ConsumeSettings,
    shutdown: CancellationToken,
) {
    let shared = Arc::new(Shared {
        broker: broker.clone(),
        processor,
        retry,
    });
    let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let tasks = TaskTracker::new();
    while let Some(session) = broker.connected(&shutdown).await {
        let opened = open(session.connection(), &broker, &settings).await;
        let (channel, mut consumer) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "cannot start consuming");
                session.mark_broken();
                continue;
            }
        };
        tracing::info!(queue = %broker.topology().inbound(), "consuming");
        let mut batch: Vec<Delivery> = Vec::with_capacity(settings.batch_size);
        let mut deadline = Instant::now();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    let _ = channel
                        .basic_cancel(settings.consumer_tag.as_str().into(), BasicCancelOptions::default())
                        .await;
                    break;
                }
                () = session.broken() => break,
                () = tokio::time::sleep_until(deadline), if !batch.is_empty() => {
                    dispatch(&shared, &slots, &tasks, std::mem::take(&mut batch)).await;
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        if batch.is_empty() {
                            deadline = Instant::now() + settings.batch_linger;
                        }
                        batch.push(delivery);
                        if batch.len() >= settings.batch_size {
                            dispatch(&shared, &slots, &tasks, std::mem::take(&mut batch)).await;
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(error = %error_chain(&error), "consumer failed");
                        session.mark_broken();
                        break;
                    }
                    None => {
                        tracing::warn!("the broker ended the consumer");
                        session.mark_broken();
                        break;
                    }
                },
            }
        }
        // Deliveries already here are handled, not dropped: their acks still
        // work while the channel is open, and are redelivered if it is not.
        if !batch.is_empty() {
            dispatch(&shared, &slots, &tasks, batch).await;
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    tasks.close();
    tasks.wait().await;
}

async fn open(
    connection: &lapin::Connection,
    broker: &Broker,
    settings: &ConsumeSettings,
) -> lapin::Result<(lapin::Channel, lapin::Consumer)> {
    // Its own channel: a channel error must not take the publishers down.
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            broker.topology().inbound().as_str().into(),
            settings.consumer_tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Waits for a free slot (this is the backpressure: no slot, no new batch),
/// then handles the batch in a task of its own, so a database transaction is
/// never dropped halfway by a cancelled future.
async fn dispatch(
    shared: &Arc<Shared>,
    slots: &Arc<Semaphore>,
    tasks: &TaskTracker,
    batch: Vec<Delivery>,
) {
    let Ok(slot) = slots.clone().acquire_owned().await else {
        return;
    };
    let shared = shared.clone();
    metrics::gauge!("wa_deliveries_in_flight").increment(batch.len() as f64);
    tasks.spawn(async move {
        let size = batch.len();
        handle(&shared, batch).await;
        metrics::gauge!("wa_deliveries_in_flight").decrement(size as f64);
        drop(slot);
    });
}

async fn handle(shared: &Shared, batch: Vec<Delivery>) {
    let bodies: Vec<&[u8]> = batch.iter().map(|d| d.data.as_slice()).collect();
    let decisions = shared.processor.process(&bodies).await;
    let started = std::time::Instant::now();
    // Acks and moves go out together: waiting for each in turn would make
    // the batch pay one trip through the connection per delivery.
    let settling = batch
        .iter()
        .zip(decisions)
        .map(|(delivery, decision)| settle(shared, delivery, decision));
    futures_util::future::join_all(settling).await;
    crate::pipeline::record_stage("settle", started);
}

async fn settle(shared: &Shared, delivery: &Delivery, decision: Disposition) {
    let origin = Origin {
        exchange: delivery.exchange.as_str(),
        routing_key: delivery.routing_key.as_str(),
        properties: &delivery.properties,
    };
    let hop = match &decision {
        Disposition::Ack => None,
        Disposition::Defer => Some(("deferred", shared.retry.defer(&origin))),
        Disposition::Retry(failure) => {
            let hop = shared.retry.retry(&origin, failure);
            let label = if hop.queue == shared.broker.topology().dlq() {
                "dead_lettered"
            } else {
                "retried"
            };
            Some((label, hop))
        }
        Disposition::DeadLetter(failure) => {
            Some(("dead_lettered", shared.retry.dead_letter(&origin, failure)))
        }
        Disposition::Requeue => {
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            if let Err(error) = delivery.nack(requeue).await {
                tracing::debug!(%error, "could not requeue; the broker will redeliver");
            }
            return;
        }
    };
    if let Some((label, hop)) = hop {
        if !forward(shared, delivery, &hop).await {
            return;
        }
        metrics::counter!("wa_deliveries_total", "outcome" => label).increment(1);
        if let Disposition::Retry(failure) | Disposition::DeadLetter(failure) = &decision {
            tracing::warn!(
                queue = %hop.queue,
                class = %failure.class,
                error = %failure.reason,
                message_id = delivery.properties.message_id().as_ref().map(|id| id.as_str()).unwrap_or(""),
                "delivery moved"
            );
        }
    } else {
        metrics::counter!("wa_deliveries_total", "outcome" => "acked").increment(1);
        record_ingest_delay(delivery);
    }
    if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
        // The broker redelivers it; the claims and the database absorb that.
        tracing::debug!(%error, "ack failed");
    }
}

/// Publishes the delivery to its next queue with a confirm. On failure the
/// delivery is given back to the queue instead of being acked.
async fn forward(shared: &Shared, delivery: &Delivery, hop: &Hop) -> bool {
    let published = shared
        .broker
        .publish(Outgoing {
            exchange: "",
            routing_key: &hop.queue,
            body: &delivery.data,
            properties: hop.properties.clone(),
        })
        .await;
    match published {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(queue = %hop.queue, %error, "could not move delivery; requeueing");
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            let _ = delivery.nack(requeue).await;
            false
        }
    }
}

/// From the receiver's acceptance to the ack: how far behind the pipeline is.
fn record_ingest_delay(delivery: &Delivery) {
    let received = headers::int(&delivery.properties, headers::RECEIVED_AT);
    let now = chrono::Utc::now().timestamp_millis();
    if received > 0 && now >= received {
        metrics::histogram!("wa_ingest_delay_seconds").record((now - received) as f64 / 1000.0);
    }
}
