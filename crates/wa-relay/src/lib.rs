//! The relay: releases downstream events from the outbox to `{ns}.events`,
//! per ordering key (a 1:1 chat's contact, or a group) in Meta-timestamp
//! order after a reorder window, with stable ids and a per-key sequence
//! number. Several relays may run: a relay locks the keys it releases, and
//! the others skip them.
//!
//! Delivery is at least once: a relay that dies between the broker's confirm
//! and its commit leaves the events unmarked, and they are published again
//! with the same ids. Consumers deduplicate on the message id.

mod config;
mod release;
pub mod tail;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wa_broker::{Broker, Topology};
use wa_core::backoff::full_jitter;
use wa_core::telemetry::error_chain;

pub use config::{DEFAULT_EVENT_SHARDS, RelayConfig};
pub use release::{ReleaseSettings, release_due};

/// Runs until `shutdown`, then finishes the release in progress and returns.
pub async fn run(
    ops_listener: TcpListener,
    config: RelayConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topology =
        Topology::new(config.namespace.namespace.clone()).with_event_shards(config.event_shards);
    let broker_stop = CancellationToken::new();
    let broker = Broker::start(
        config.amqp.broker_config("wa-ingest relay")?,
        topology,
        broker_stop.clone(),
    );
    let pool = config.database.pool()?;
    // The ops server has its own stop: its metrics stay up while the
    // release in progress finishes after the shutdown signal.
    let ops_stop = CancellationToken::new();
    let readiness = broker.clone();
    let ops = tokio::spawn(wa_core::ops::serve(
        ops_listener,
        Arc::new(move || readiness.check_connected()),
        ops_stop.clone(),
    ));
    let settings = ReleaseSettings {
        window: config.reorder_window,
        shards: config.event_shards,
        max_contacts: i64::from(config.batch_contacts),
        max_events: i64::from(config.batch_events),
    };
    tracing::info!(?settings, "relay starting");

    let mut failures = full_jitter(Duration::from_millis(200), Duration::from_secs(5), None);
    let mut last_prune = tokio::time::Instant::now();
    while !shutdown.is_cancelled() {
        if broker.connected(&shutdown).await.is_none() {
            break;
        }
        let pause = match release_due(&pool, &broker, &settings).await {
            Ok(0) => config.poll_interval,
            Ok(_) => {
                failures = full_jitter(Duration::from_millis(200), Duration::from_secs(5), None);
                Duration::ZERO
            }
            Err(error) => {
                tracing::warn!(
                    error = %error_chain(error.as_ref()),
                    "release failed; will retry"
                );
                failures.next().unwrap_or(Duration::from_secs(5))
            }
        };
        if last_prune.elapsed() >= Duration::from_secs(60) {
            last_prune = tokio::time::Instant::now();
            match wa_store::outbox::prune(&pool, config.outbox_retention, 10_000).await {
                Ok(pruned) if pruned > 0 => {
                    tracing::info!(pruned, "pruned published outbox events")
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "could not prune the outbox")
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => {}
        }
    }
    broker_stop.cancel();
    ops_stop.cancel();
    let _ = ops.await;
    pool.close().await;
    tracing::info!("relay stopped");
    Ok(())
}
