//! The worker: consumes webhook bodies from `{ns}.inbound` and stores every
//! event in them exactly once, however often and however concurrently Meta
//! delivered them.

mod ack;
mod breaker;
pub mod claim;
mod config;
mod consumer;
pub mod failure;
mod monitor;
mod pause;
pub mod pipeline;
pub mod redis_link;
pub mod retry;
pub mod stored_body;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wa_broker::Topology;

pub use config::{RedisArgs, WorkerConfig, default_retry_tiers};

use crate::claim::{ClaimConfig, Claims};
use crate::consumer::ConsumeSettings;
use crate::pipeline::{Processor, ProcessorSettings};
use crate::redis_link::RedisTarget;
use crate::retry::RetryPolicy;

/// Runs until `shutdown` fires, then stops consuming, finishes and acks the
/// batches in flight (for at most the grace period) and returns.
/// `ops_listener` serves `/healthz`, `/readyz` and `/metrics`.
pub async fn run(
    ops_listener: TcpListener,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let namespace = config.broker.namespace.namespace.clone();
    let worker_id = config.worker_id();
    let topology = Topology::new(namespace.clone()).with_retry_tiers(&config.retry_tiers);

    // The broker link outlives the consumer: batches finishing after the
    // shutdown signal still publish retries and ack.
    let broker_stop = CancellationToken::new();
    let broker = config.broker.start(
        &format!("wa-ingest worker {worker_id}"),
        topology.clone(),
        broker_stop.clone(),
    )?;
    let pool = config.database.writer_pool()?;
    let claims = Claims::new(
        RedisTarget::from_args(&config.redis)?,
        namespace,
        ClaimConfig {
            lease: config.claim_lease,
            done_ttl: config.claim_done_ttl,
            fail_mode: config.claim_fail_mode,
            timeout: config.redis.redis_timeout,
        },
    );
    let processor = Processor::start(
        claims,
        wa_store::Store::new(pool.clone()),
        ProcessorSettings {
            quick_retries: usize::from(config.quick_retries),
            breaker_threshold: usize::from(config.breaker_threshold),
            breaker_window: config.breaker_window,
            hold_limit: config.pause_hold_limit,
        },
        shutdown.clone(),
    );

    let ops_stop = CancellationToken::new();
    let readiness = {
        let broker = broker.clone();
        let processor = processor.clone();
        move || {
            broker
                .check_connected()
                .and_then(|()| processor.check_ready())
        }
    };
    let ops = tokio::spawn(wa_core::ops::serve(
        ops_listener,
        Arc::new(readiness),
        ops_stop.clone(),
    ));
    tokio::spawn(monitor::watch_queue_depths(
        broker.clone(),
        std::time::Duration::from_secs(10),
        ops_stop.clone(),
    ));

    let settings = ConsumeSettings {
        prefetch: config.prefetch,
        batch_size: usize::from(config.batch_size),
        batch_linger: config.batch_linger,
        concurrency: usize::from(config.concurrency),
        consumer_tag: format!("wa-ingest-{worker_id}"),
    };
    tracing::info!(%worker_id, ?settings, "worker starting");
    let consuming = consumer::consume(
        broker,
        processor,
        RetryPolicy::new(topology, worker_id),
        settings,
        shutdown.clone(),
    );
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(config.shutdown_grace).await;
    };
    tokio::select! {
        () = consuming => tracing::info!("worker drained"),
        () = grace => tracing::warn!(
            grace = ?config.shutdown_grace,
            "shutdown grace period over; unacked deliveries will be redelivered"
        ),
    }
    broker_stop.cancel();
    ops_stop.cancel();
    let _ = ops.await;
    pool.close().await;
    Ok(())
}
