//! The RabbitMQ side of the worker: consume `{ns}.inbound` with a bounded
//! prefetch, gather deliveries into batches, hand each batch to the
//! [`Processor`] in its own task, and carry out its decisions: ack only after
//! the commit, and move a delivery to a retry tier or the DLQ with a
//! confirmed publish before acking it, never the other way round. A batch's
//! plain acks go out as one multiple ack when that is safe (see [`crate::ack`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wa_broker::{Broker, Outgoing, headers};
use wa_core::backoff::full_jitter;
use wa_core::telemetry::error_chain;

use crate::ack::{self, AckChain, AckTurn};
use crate::pipeline::{Disposition, Processor};
use crate::retry::{Hop, Origin, RetryPolicy};
use crate::stored_body::BodyDigest;

#[derive(Debug, Clone)]
pub(crate) struct ConsumeSettings {
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
    shutdown: CancellationToken,
    metrics: DeliveryMetrics,
}

/// The handles every acked delivery records to, looked up once: a labelled
/// `counter!` resolves its handle in the registry on every call.
struct DeliveryMetrics {
    acked: metrics::Counter,
    ingest_delay: metrics::Histogram,
}

impl DeliveryMetrics {
    fn register() -> Self {
        // The recorder must be installed before handles are taken from it.
        let _ = wa_core::ops::metrics_handle();
        Self {
            acked: metrics::counter!("wa_deliveries_total", "outcome" => "acked"),
            ingest_delay: metrics::histogram!("wa_ingest_delay_seconds"),
        }
    }
}

/// Deliveries handled together, and when the first of them arrived.
struct Batch {
    deliveries: Vec<Delivery>,
    since: Instant,
}

/// Consumes until `shutdown`, then stops taking deliveries and returns once
/// the batches in flight are finished and acked. Survives broker restarts:
/// after a lost connection it consumes again on the next one, and whatever
/// was unacked is redelivered (and absorbed as duplicates).
pub(crate) async fn consume(
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
        shutdown: shutdown.clone(),
        metrics: DeliveryMetrics::register(),
    });
    let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let tasks = TaskTracker::new();
    // The channel consumed on when shutdown came. lapin closes a channel
    // once its last handle is dropped, and deliveries hold none: it is kept
    // until the batches in flight have acked on it, then closed.
    let mut last_channel = None;
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
        let mut acks = AckChain::new();
        let mut batch: Vec<Delivery> = Vec::with_capacity(settings.batch_size);
        let mut since = Instant::now();
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
                () = tokio::time::sleep_until(since + settings.batch_linger), if !batch.is_empty() => {
                    let deliveries = std::mem::take(&mut batch);
                    dispatch(&shared, &slots, &tasks, Batch { deliveries, since }, acks.next_turn()).await;
                }
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        if batch.is_empty() {
                            since = Instant::now();
                        }
                        batch.push(delivery);
                        if batch.len() >= settings.batch_size {
                            let deliveries = std::mem::take(&mut batch);
                            dispatch(&shared, &slots, &tasks, Batch { deliveries, since }, acks.next_turn()).await;
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
            dispatch(
                &shared,
                &slots,
                &tasks,
                Batch {
                    deliveries: batch,
                    since,
                },
                acks.next_turn(),
            )
            .await;
        }
        if shutdown.is_cancelled() {
            last_channel = Some(channel);
            break;
        }
    }
    tasks.close();
    tasks.wait().await;
    if let Some(channel) = last_channel {
        // Closed before the broker link closes the connection, so the
        // close is not cut short (lapin logs that as a connection error).
        let _ = channel.close(200, "worker stopped".into()).await;
    }
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
/// never dropped halfway by a cancelled future. While the worker is paused
/// the batch does not wait here: its task dead-letters what does not parse
/// at once and waits for a slot itself, so the consumer keeps sorting out
/// poison payloads among the deliveries the prefetch lets in.
async fn dispatch(
    shared: &Arc<Shared>,
    slots: &Arc<Semaphore>,
    tasks: &TaskTracker,
    batch: Batch,
    turn: AckTurn,
) {
    let slot = tokio::select! {
        slot = slots.clone().acquire_owned() => slot.ok(),
        () = shared.processor.paused() => None,
    };
    let shared = shared.clone();
    let slots = slots.clone();
    metrics::gauge!("wa_deliveries_in_flight").increment(batch.deliveries.len() as f64);
    tasks.spawn(async move {
        let size = batch.deliveries.len();
        handle(&shared, batch, slot, &slots, turn).await;
        metrics::gauge!("wa_deliveries_in_flight").decrement(size as f64);
    });
}

/// The span of a batch names its deliveries by their tags, so every log
/// line of the batch (claim, store, settle) says which batch it belongs to.
#[tracing::instrument(
    name = "batch",
    skip_all,
    fields(
        batch_size = batch.deliveries.len(),
        first_delivery_tag = batch.deliveries.first().map(|d| d.delivery_tag),
        last_delivery_tag = batch.deliveries.last().map(|d| d.delivery_tag),
    )
)]
async fn handle(
    shared: &Shared,
    batch: Batch,
    slot: Option<OwnedSemaphorePermit>,
    slots: &Arc<Semaphore>,
    turn: AckTurn,
) {
    let digests: Vec<BodyDigest> = batch
        .deliveries
        .iter()
        .map(|d| BodyDigest::of(&d.data))
        .collect();
    let stored_before = shared.processor.stored_before(&digests).await;
    // Copies of bodies stored whole before need nothing parsed or stored.
    let mut repeated = Vec::new();
    let mut deliveries = Vec::with_capacity(batch.deliveries.len());
    let mut bodies = Vec::with_capacity(batch.deliveries.len());
    for ((delivery, digest), known) in batch.deliveries.iter().zip(digests).zip(stored_before) {
        if known {
            repeated.push(delivery);
        } else {
            deliveries.push(delivery);
            bodies.push((delivery.data.as_slice(), digest));
        }
    }
    // Copies that need nothing stored wait for the batch's one ack when the
    // batch has nothing to store either; otherwise they are acked at once,
    // even while the store waits out an outage.
    let mut pending: Vec<&Delivery> = Vec::with_capacity(batch.deliveries.len());
    let acked_at_once = if deliveries.is_empty() {
        pending.append(&mut repeated);
        Vec::new()
    } else {
        repeated
    };
    let acking_repeated = futures_util::future::join_all(
        acked_at_once
            .iter()
            .map(|delivery| settle(shared, delivery, Disposition::Ack)),
    );
    let parsed = shared.processor.parse(&bodies);
    // A payload that is not a webhook leaves at once, even while the store
    // waits out an outage: a poison message is dead-lettered, not held.
    let rejected = deliveries
        .iter()
        .zip(&parsed)
        .filter_map(|(delivery, parsed)| {
            let failure = parsed.events.as_ref().err()?;
            Some(settle(
                shared,
                delivery,
                Disposition::DeadLetter(failure.clone()),
            ))
        });
    let storing = async {
        let slot = match slot {
            Some(slot) => Some(slot),
            None => slots.clone().acquire_owned().await.ok(),
        };
        (slot, shared.processor.store(&parsed, batch.since).await)
    };
    let (repeated_acked, rejected_settled, (slot, decisions)) = tokio::join!(
        acking_repeated,
        futures_util::future::join_all(rejected),
        storing
    );
    // What is left is the broker's part: the next batch may be stored meanwhile.
    drop(slot);
    let started = std::time::Instant::now();
    let mut moving = Vec::new();
    for (delivery, decision) in deliveries.iter().zip(decisions) {
        match decision {
            Some(Disposition::Ack) => pending.push(delivery),
            Some(decision) => moving.push(settle(shared, delivery, decision)),
            None => {}
        }
    }
    // Moves go out together: waiting for each in turn would make the batch
    // pay one trip through the connection per delivery.
    let moved = futures_util::future::join_all(moving).await;
    // Every delivery of the batch is acked, moved or requeued by now, or the
    // multiple ack would take one that is none of these with it.
    let accounted = acked_at_once.len() + rejected_settled.len() + moved.len() + pending.len();
    let rest_settled = accounted == batch.deliveries.len()
        && repeated_acked
            .iter()
            .chain(&rejected_settled)
            .chain(&moved)
            .all(|settled| *settled);
    for delivery in &pending {
        count_acked(shared, delivery);
    }
    turn.finish(&pending, rest_settled).await;
    crate::pipeline::record_stage("settle", started);
}

/// Counts a delivery that is about to be acked, and how long it took from
/// the receiver's answer.
fn count_acked(shared: &Shared, delivery: &Delivery) {
    shared.metrics.acked.increment(1);
    record_ingest_delay(&shared.metrics.ingest_delay, delivery);
}

/// Carries out `decision` for one delivery: true once the broker has it
/// settled (moved and acked, or requeued). Its span is at debug level: one
/// per delivery, it cost an already-stored delivery a tenth of its CPU at
/// the default level, and the warnings below name the message themselves.
#[tracing::instrument(
    name = "settle",
    level = "debug",
    skip_all,
    fields(delivery_tag = delivery.delivery_tag, decision = decision.name())
)]
async fn settle(shared: &Shared, delivery: &Delivery, decision: Disposition) -> bool {
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
        Disposition::HandBack => Some(("handed_back", handed_back(shared, &origin))),
        Disposition::Requeue => {
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            return match delivery.nack(requeue).await {
                Ok(sent) => sent,
                Err(error) => {
                    tracing::debug!(error = %error_chain(&error), "could not requeue; the broker will redeliver");
                    false
                }
            };
        }
    };
    if let Some((label, hop)) = hop {
        if !forward(shared, delivery, &hop).await {
            return false;
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
        count_acked(shared, delivery);
    }
    ack::ack(delivery, false).await
}

/// The same message, back to `{ns}.inbound` as the receiver published it:
/// a new message to the broker, so its delivery count starts again.
fn handed_back(shared: &Shared, origin: &Origin<'_>) -> Hop {
    let mut properties = origin.properties.clone();
    if let Some(table) = origin.properties.headers() {
        let mut headers = lapin::types::FieldTable::default();
        for (key, value) in table.inner() {
            if key.as_str() != "x-delivery-count" {
                headers.insert(key.clone(), value.clone());
            }
        }
        properties = properties.with_headers(headers);
    }
    Hop {
        exchange: shared.broker.topology().inbound(),
        queue: String::new(),
        properties,
    }
}

/// Publishes the delivery to its next queue with a confirm. While the broker
/// refuses (a full or missing queue, a lost confirm) the delivery is held
/// and the publish tried again with backoff: a requeue would count against
/// the delivery limit, and this batch holding its slot slows the worker
/// down instead. False when the delivery cannot be acked any more (its
/// channel is gone, and the broker redelivers it) or the worker stops.
async fn forward(shared: &Shared, delivery: &Delivery, hop: &Hop) -> bool {
    let mut delays = full_jitter(Duration::from_millis(200), Duration::from_secs(5), None);
    let mut failures = 0u32;
    loop {
        let published = shared
            .broker
            .publish(Outgoing {
                exchange: &hop.exchange,
                routing_key: &hop.queue,
                body: &delivery.data,
                properties: hop.properties.clone(),
            })
            .await;
        let error = match published {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(queue = %hop.destination(), failures, "delivery moved after all");
                }
                return true;
            }
            Err(error) => error,
        };
        failures += 1;
        if failures == 1 {
            tracing::warn!(
                queue = %hop.destination(),
                error = %error_chain(&error),
                "could not move delivery; holding it and trying again"
            );
        }
        if !delivery.acker.usable() {
            return false;
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.shutdown.cancelled() => {
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                let _ = delivery.nack(requeue).await;
                return false;
            }
        }
    }
}

/// From the receiver's acceptance to the ack: how far behind the pipeline is.
fn record_ingest_delay(histogram: &metrics::Histogram, delivery: &Delivery) {
    let received = headers::int(&delivery.properties, headers::RECEIVED_AT);
    let now = chrono::Utc::now().timestamp_millis();
    if received > 0 && now >= received {
        histogram.record((now - received) as f64 / 1000.0);
    }
}
