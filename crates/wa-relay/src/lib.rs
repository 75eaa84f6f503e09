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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wa_broker::Broker;
use wa_core::backoff::full_jitter;
use wa_core::telemetry::error_chain;

pub use config::{DEFAULT_EVENT_SHARDS, RelayConfig};
pub use release::{ReleaseSettings, Released, release_due};

/// Runs until `shutdown`, then finishes the release in progress and returns.
pub async fn run(
    ops_listener: TcpListener,
    config: RelayConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let topology = config
        .broker
        .topology()
        .with_event_shards(config.event_shards);
    let broker_stop = CancellationToken::new();
    let broker = config
        .broker
        .start("wa-ingest relay", topology, broker_stop.clone())?;
    let pool = config.database.pool()?;
    // The ops server has its own stop: its metrics stay up while the
    // release in progress finishes after the shutdown signal.
    let ops_stop = CancellationToken::new();
    // Ready while connected to RabbitMQ and PostgreSQL answered the last
    // release: a relay that cannot read the outbox releases nothing.
    let database_answered = Arc::new(AtomicBool::new(false));
    let (readiness, answered) = (broker.clone(), database_answered.clone());
    let ops = tokio::spawn(wa_core::ops::serve(
        ops_listener,
        Arc::new(move || {
            readiness.check_connected()?;
            if answered.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("PostgreSQL did not answer the last release".to_owned())
            }
        }),
        ops_stop.clone(),
    ));
    let settings = ReleaseSettings {
        window: config.reorder_window,
        shards: config.event_shards,
        max_contacts: i64::from(config.batch_contacts),
        max_events: i64::from(config.batch_events),
    };
    tracing::info!(
        ?settings,
        concurrency = config.concurrency,
        "relay starting"
    );

    let mut releases = tokio::task::JoinSet::new();
    for _ in 0..config.concurrency {
        releases.spawn(release_until(
            pool.clone(),
            broker.clone(),
            settings.clone(),
            config.poll_interval,
            database_answered.clone(),
            shutdown.clone(),
        ));
    }
    let retention = config.outbox_retention;
    wa_store::retention::prune_until("published outbox events", &shutdown, || {
        wa_store::outbox::prune(&pool, retention)
    })
    .await;
    while releases.join_next().await.is_some() {}
    broker_stop.cancel();
    ops_stop.cancel();
    let _ = ops.await;
    pool.close().await;
    tracing::info!("relay stopped");
    Ok(())
}

/// One release after another until `shutdown`; several of these run at once
/// and lock disjoint contacts. Each says in `database_answered` whether
/// PostgreSQL answered it.
async fn release_until(
    pool: PgPool,
    broker: Broker,
    settings: ReleaseSettings,
    poll_interval: Duration,
    database_answered: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut failures = failure_backoff();
    let mut contacts = settings.max_contacts;
    while !shutdown.is_cancelled() {
        if broker.connected(&shutdown).await.is_none() {
            break;
        }
        let released = release_due(&pool, &broker, &settings, contacts).await;
        match &released {
            Ok(_) => database_answered.store(true, Ordering::Relaxed),
            Err(error) if error.downcast_ref::<wa_store::StoreError>().is_some() => {
                database_answered.store(false, Ordering::Relaxed);
            }
            // The broker's failures: its link says whether it is connected.
            Err(_) => {}
        }
        let pause = match released {
            Ok(released) if released.events == 0 => {
                contacts = released.contacts_next(contacts, settings.max_contacts);
                poll_interval
            }
            Ok(released) => {
                contacts = released.contacts_next(contacts, settings.max_contacts);
                failures = failure_backoff();
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
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => {}
        }
    }
}

fn failure_backoff() -> impl Iterator<Item = Duration> {
    full_jitter(Duration::from_millis(200), Duration::from_secs(5), None)
}
