//! HTTP delivery of downstream events (`wa-ingest deliver` and
//! `wa-ingest endpoints`).
//!
//! The relay releases each event once, per conversation (a contact or a
//! group) in Meta-timestamp order; a trigger in that same transaction fans
//! it out to every matching endpoint as a `deliveries` row with the event's
//! per-conversation sequence. Deliverers lease `(endpoint, conversation)`
//! lanes with `FOR UPDATE SKIP LOCKED`, so replicas share the work and a
//! conversation is never sent in parallel, and POST the events of a lane in
//! sequence order, signed per Standard Webhooks with `webhook-id` = the
//! event id. A delivery is recorded before the next of its conversation
//! goes: a crash in between sends it again, with the same `webhook-id`.

pub mod cli;
mod config;
mod deliver;
pub mod guard;
pub mod http;
pub mod schedule;
pub mod sign;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use cli::EndpointsArgs;
pub use config::{AllowArgs, DeliverConfig};
pub use deliver::Deliverer;

/// Runs a deliverer until `shutdown`; the requests in flight then finish
/// (each within WA_DELIVER_TIMEOUT) and their results are recorded.
pub async fn run(
    ops_listener: TcpListener,
    config: DeliverConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let pool = config.database.pool()?;
    let sender = http::Sender::new(
        config.allow.guard(),
        http::HttpLimits {
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            response_limit: usize::try_from(config.response_limit).unwrap_or(usize::MAX),
        },
    )?;
    let healthy = Arc::new(AtomicBool::new(false));
    let readiness = healthy.clone();
    let ops_stop = CancellationToken::new();
    let ops = tokio::spawn(wa_core::ops::serve(
        ops_listener,
        Arc::new(move || {
            if readiness.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("the database does not answer".to_owned())
            }
        }),
        ops_stop.clone(),
    ));
    let deliverer = Arc::new(Deliverer {
        pool: pool.clone(),
        sender,
        owner: uuid::Uuid::new_v4(),
        schedule: config.retry_schedule.clone(),
        disable_after: config.disable_after,
        lease: config.lease,
        healthy,
    });
    tracing::info!(
        owner = %deliverer.owner,
        allow = ?config.allow.allow,
        concurrency = config.concurrency,
        schedule = ?config.retry_schedule,
        "deliverer starting"
    );
    let pruning = {
        let (pool, retention, shutdown) = (pool.clone(), config.retention, shutdown.clone());
        tokio::spawn(async move {
            wa_store::retention::prune_until("delivered deliveries", &shutdown, || {
                store::prune_delivered(&pool, retention)
            })
            .await;
        })
    };
    deliver::run_loop(
        deliverer,
        usize::try_from(config.concurrency).unwrap_or(64),
        config.poll_interval,
        shutdown,
    )
    .await;
    let _ = pruning.await;
    ops_stop.cancel();
    let _ = ops.await;
    pool.close().await;
    tracing::info!("deliverer stopped");
    Ok(())
}
