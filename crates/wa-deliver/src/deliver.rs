//! The deliverer: leases due conversations per endpoint (as many as the
//! endpoint's `max_in_flight` leaves beside what all deliverers hold, and
//! the process's concurrency allows) and, for each, sends its pending
//! events one by one in sequence order, each recorded before the next goes
//! and each in a request slot of the endpoint's `rate_limit`. A failure
//! leaves the conversation's head where it is until its next attempt;
//! other conversations and endpoints go on. Each exchange with the
//! database is bounded ([`wa_store::ANSWER_WITHIN`]): a server that stops
//! answering (frozen, or left behind paused by a failover) makes the
//! deliverer not ready and its work go to new connections, not wait on it
//! for good.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wa_core::telemetry::error_chain;
use wa_store::{StoreError, answered};

use crate::http::{Outcome, Sender, Signed};
use crate::schedule::RetrySchedule;
use crate::sign::{SigningSecret, signature_header};
use crate::store::{
    self, ActiveEndpoint, AttemptRecord, EndpointEffect, EndpointState, Head, Recorded,
};

/// What every conversation task shares.
pub struct Deliverer {
    pub pool: sqlx::PgPool,
    pub sender: Sender,
    /// This process's lease owner id.
    pub owner: Uuid,
    pub schedule: RetrySchedule,
    pub disable_after: Duration,
    pub lease: Duration,
    /// Set while the database answered the last look for work.
    pub healthy: Arc<AtomicBool>,
}

/// Looks for work until `shutdown`, then lets the conversations in flight
/// finish the request they are in and returns.
pub(crate) async fn run_loop(
    deliverer: Arc<Deliverer>,
    concurrency: usize,
    poll: Duration,
    shutdown: CancellationToken,
) {
    let mut tasks: JoinSet<i64> = JoinSet::new();
    let mut running: HashMap<i64, usize> = HashMap::new();
    let mut last_gauges = Instant::now() - Duration::from_secs(60);
    while !shutdown.is_cancelled() {
        while let Some(done) = tasks.try_join_next() {
            finished(&mut running, done);
        }
        if last_gauges.elapsed() >= Duration::from_secs(5) {
            last_gauges = Instant::now();
            update_gauges(&deliverer.pool).await;
        }
        let started = match claim_round(
            &deliverer,
            concurrency,
            &mut tasks,
            &mut running,
            &shutdown,
        )
        .await
        {
            Ok(started) => {
                deliverer.healthy.store(true, Ordering::Relaxed);
                started
            }
            Err(error) => {
                deliverer.healthy.store(false, Ordering::Relaxed);
                tracing::warn!(error = %error_chain(&error), "looking for due deliveries failed; will retry");
                0
            }
        };
        metrics::gauge!("wa_deliver_in_flight").set(tasks.len() as f64);
        if started > 0 {
            continue;
        }
        // Nothing new: wait for the poll interval, a conversation to end, or shutdown.
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            Some(done) = tasks.join_next(), if !tasks.is_empty() => finished(&mut running, done),
            () = shutdown.cancelled() => {}
        }
    }
    while let Some(done) = tasks.join_next().await {
        finished(&mut running, done);
    }
}

fn finished(running: &mut HashMap<i64, usize>, done: Result<i64, tokio::task::JoinError>) {
    match done {
        Ok(endpoint) => {
            if let Some(count) = running.get_mut(&endpoint) {
                *count = count.saturating_sub(1);
            }
        }
        Err(error) => tracing::error!(%error, "a conversation task failed"),
    }
}

/// Leases what each endpoint has room for and starts a task per conversation.
async fn claim_round(
    deliverer: &Arc<Deliverer>,
    concurrency: usize,
    tasks: &mut JoinSet<i64>,
    running: &mut HashMap<i64, usize>,
    shutdown: &CancellationToken,
) -> Result<usize, StoreError> {
    let endpoints = answered(store::active_endpoints(&deliverer.pool)).await?;
    let mut started = 0;
    for endpoint in endpoints {
        let busy = running.get(&endpoint.id).copied().unwrap_or(0);
        // With a rate limit, no more conversations than requests per second:
        // each then waits at most about a second for its slot, far inside
        // its lease. The database holds this across deliverers; what this
        // one runs already only spares it a claim with no room.
        let lanes = match endpoint.rate_limit {
            Some(rate) => endpoint.max_in_flight.min(rate.max(1)),
            None => endpoint.max_in_flight,
        };
        let room = usize::try_from(lanes)
            .unwrap_or(1)
            .saturating_sub(busy)
            .min(concurrency.saturating_sub(tasks.len()));
        if room == 0 {
            continue;
        }
        let conversations = answered(store::claim_lanes(
            &deliverer.pool,
            endpoint.id,
            deliverer.owner,
            deliverer.lease,
            i64::from(lanes),
            i64::try_from(room).unwrap_or(1),
        ))
        .await?;
        for conversation in conversations {
            *running.entry(endpoint.id).or_default() += 1;
            started += 1;
            tasks.spawn(drive_conversation(
                deliverer.clone(),
                endpoint.clone(),
                conversation,
                shutdown.clone(),
            ));
        }
    }
    Ok(started)
}

/// Deliveries one lease round sends before the conversation goes to the back
/// of the line, so that busy conversations do not starve the others of an
/// endpoint's `max_in_flight`.
const ROUND: usize = 100;

/// Sends one conversation's pending events in order while this deliverer
/// holds its lease and they succeed (at most [`ROUND`]); returns the
/// endpoint's id.
async fn drive_conversation(
    deliverer: Arc<Deliverer>,
    endpoint: ActiveEndpoint,
    conversation: String,
    shutdown: CancellationToken,
) -> i64 {
    let label = endpoint.id.to_string();
    // After a full round (or at shutdown) it may be claimed again at once,
    // behind the conversations that waited longer.
    let mut wait_before_next = Duration::ZERO;
    // The next delivery, when recording the last success read it already.
    let mut known_next: Option<Head> = None;
    for sent in 0.. {
        if shutdown.is_cancelled() || sent == ROUND {
            break;
        }
        let next = match known_next.take() {
            Some(head) => Ok(Some(head)),
            None => answered(store::head(&deliverer.pool, endpoint.id, &conversation)).await,
        };
        let head = match next {
            Ok(Some(head)) => head,
            Ok(None) => {
                // Nothing pending, or the endpoint was paused or disabled
                // meanwhile: then the conversation rests a second.
                wait_before_next = Duration::from_secs(1);
                break;
            }
            Err(error) => {
                tracing::warn!(endpoint = endpoint.id, error = %error_chain(&error), "cannot read the next delivery");
                break;
            }
        };
        if let Some(rate) = endpoint.rate_limit {
            match answered(store::take_rate_slot(&deliverer.pool, endpoint.id, rate)).await {
                Ok(wait) => tokio::time::sleep(wait).await,
                Err(error) => {
                    tracing::warn!(endpoint = endpoint.id, error = %error_chain(&error), "cannot take a request slot");
                    break;
                }
            }
        }
        let outcome = send(&deliverer, &head).await;
        metrics::histogram!("wa_deliver_latency_seconds", "endpoint" => label.clone())
            .record(outcome.latency.as_secs_f64());
        let attempt = AttemptRecord {
            status_code: outcome.status,
            latency: outcome.latency,
            error: outcome.error.as_deref(),
        };
        if outcome.succeeded() {
            metrics::counter!("wa_deliver_attempts_total", "endpoint" => label.clone(), "outcome" => "success").increment(1);
            match answered(store::record_success(
                &deliverer.pool,
                &head,
                &attempt,
                deliverer.owner,
                deliverer.lease,
            ))
            .await
            {
                Ok(Recorded::Held(next)) => {
                    known_next = next;
                    continue;
                }
                Ok(Recorded::LeaseLost) => return endpoint.id,
                Err(error) => {
                    // Sent but not recorded: it goes again (same webhook-id)
                    // once the lease runs out.
                    tracing::warn!(endpoint = endpoint.id, event_id = %head.event_id, error = %error_chain(&error), "delivered but not recorded");
                    return endpoint.id;
                }
            }
        }
        let outcome_label = if outcome.status.is_some() {
            "http_error"
        } else {
            "network_error"
        };
        metrics::counter!("wa_deliver_attempts_total", "endpoint" => label.clone(), "outcome" => outcome_label).increment(1);
        fail(&deliverer, &head, &outcome, &attempt).await;
        return endpoint.id;
    }
    if let Err(error) = answered(store::release_lane(
        &deliverer.pool,
        endpoint.id,
        &conversation,
        deliverer.owner,
        wait_before_next,
    ))
    .await
    {
        tracing::warn!(endpoint = endpoint.id, error = %error_chain(&error), "cannot let a conversation go; its lease runs out");
    }
    endpoint.id
}

async fn send(deliverer: &Deliverer, head: &Head) -> Outcome {
    let secrets: Result<Vec<SigningSecret>, _> = head
        .secrets
        .iter()
        .map(|s| SigningSecret::parse(s))
        .collect();
    let secrets = match secrets {
        Ok(secrets) => secrets,
        Err(error) => {
            return Outcome {
                status: None,
                latency: Duration::ZERO,
                error: Some(format!("the endpoint's secret cannot sign: {error}")),
                retry_after: None,
            };
        }
    };
    let body = serde_json::to_vec(&head.payload).unwrap_or_default();
    let timestamp = Utc::now().timestamp();
    let signature = signature_header(&secrets, &head.event_id, timestamp, &body);
    deliverer
        .sender
        .post(
            &head.url,
            Signed {
                webhook_id: &head.event_id,
                timestamp,
                signature,
            },
            body.into(),
        )
        .await
}

/// Records a failed attempt and decides when the conversation goes next:
/// `Retry-After` of a 429 or 503 pauses the whole endpoint, 410 disables it,
/// anything else follows the schedule.
async fn fail(deliverer: &Deliverer, head: &Head, outcome: &Outcome, attempt: &AttemptRecord<'_>) {
    let failures = u32::try_from(head.attempts).unwrap_or(0) + 1;
    let (delay, effect) = match (outcome.status, outcome.retry_after) {
        (Some(410), _) => (
            deliverer.schedule.delay(failures),
            EndpointEffect::Disable(
                "410 Gone: the receiver asked for no more deliveries".to_owned(),
            ),
        ),
        (Some(429 | 503), Some(wait)) => {
            let until = Utc::now() + wait;
            (wait, EndpointEffect::Pause(until))
        }
        _ => (deliverer.schedule.delay(failures), EndpointEffect::None),
    };
    let next = Utc::now() + delay;
    match answered(store::record_failure(
        &deliverer.pool,
        head,
        attempt,
        deliverer.owner,
        next,
        &effect,
        deliverer.disable_after,
    ))
    .await
    {
        Ok(EndpointState::Disabled(reason)) => {
            metrics::counter!("wa_deliver_endpoint_disabled_total", "endpoint" => head.endpoint_id.to_string()).increment(1);
            tracing::error!(endpoint = head.endpoint_id, url = %head.url, %reason, "endpoint disabled; its deliveries stay pending until `wa-ingest endpoints enable`");
        }
        Ok(_) => tracing::info!(
            endpoint = head.endpoint_id,
            event_id = %head.event_id,
            result = %store::describe(attempt),
            retry_in = ?delay,
            "delivery failed; will retry"
        ),
        Err(error) => {
            tracing::warn!(endpoint = head.endpoint_id, error = %error_chain(&error), "cannot record a failed delivery; its lease runs out")
        }
    }
}

async fn update_gauges(pool: &sqlx::PgPool) {
    match answered(store::backlogs(pool)).await {
        Ok(rows) => {
            for (endpoint, enabled, backlog) in rows {
                let label = endpoint.to_string();
                metrics::gauge!("wa_deliver_backlog", "endpoint" => label.clone())
                    .set(backlog as f64);
                metrics::gauge!("wa_deliver_endpoint_enabled", "endpoint" => label)
                    .set(if enabled { 1.0 } else { 0.0 });
            }
        }
        Err(error) => tracing::debug!(error = %error_chain(&error), "cannot read the backlog"),
    }
}
