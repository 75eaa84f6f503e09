//! Deleting rows past their retention (the relay's published outbox
//! events, the deliverer's delivered deliveries): at start and then every
//! minute, in batches so that no statement runs long or holds many locks,
//! and each time until a batch comes back short, so that pruning keeps
//! pace with any inflow (one batch a minute fell behind above 10,000 rows a
//! minute, about 170 events a second, and the table grew for good).

use std::future::Future;
use std::time::Duration;

use sqlx::PgPool;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use wa_core::telemetry::error_chain;

use crate::StoreError;
use crate::database::answered;

/// Rows one statement deletes at most.
pub const PRUNE_BATCH: i64 = 10_000;

const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Runs `delete`, a statement that deletes at most `$2` rows older than
/// `$1` seconds, with `retention` and [`PRUNE_BATCH`]; says how many went.
pub async fn delete_batch(
    pool: &PgPool,
    delete: &'static str,
    retention: Duration,
) -> Result<u64, StoreError> {
    let done = answered(
        sqlx::query(delete)
            .bind(retention.as_secs_f64())
            .bind(PRUNE_BATCH)
            .execute(pool),
    )
    .await?;
    Ok(done.rows_affected())
}

/// Calls `prune_batch` (which deletes at most [`PRUNE_BATCH`] rows and
/// says how many) at once and then every minute until `shutdown`, each
/// time again until a batch deletes fewer.
pub async fn prune_until<F, Fut>(
    what: &'static str,
    shutdown: &CancellationToken,
    mut prune_batch: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, StoreError>>,
{
    let mut every = tokio::time::interval(PRUNE_EVERY);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let mut pruned = 0;
        loop {
            match prune_batch().await {
                Ok(deleted) => {
                    pruned += deleted;
                    if deleted < PRUNE_BATCH.unsigned_abs() || shutdown.is_cancelled() {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(what, error = %error_chain(&error), "could not prune");
                    break;
                }
            }
        }
        if pruned > 0 {
            tracing::info!(what, pruned, "pruned past their retention");
        }
    }
}
