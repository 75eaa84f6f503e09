//! One batch of deliveries, from raw bodies to a decision per delivery:
//! parse every event, drop duplicates inside the batch, claim the rest in one
//! Redis round trip, store the claimed ones in one transaction, mark them
//! done. Nothing here talks to RabbitMQ; the consumer carries out the
//! decisions.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wa_core::backoff::full_jitter;
use wa_payload::{Event, parse_payload};
use wa_store::{Store, StoreError};

use crate::claim::{Claim, Claims};
use crate::failure::{Failure, FailureClass};

/// What the consumer must do with one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Every event in it is stored (now or before): ack.
    Ack,
    /// Some event is claimed by another worker that may have died: look
    /// again after a delay, without counting an attempt.
    Defer,
    /// Failed for now: to the next retry tier, or the DLQ when none is left.
    Retry(Failure),
    /// Will never succeed: to the DLQ at once.
    DeadLetter(Failure),
    /// Not handled (shutdown during an outage): give it back to the queue.
    Requeue,
}

/// Whether the dependencies answered the last time we asked; `/readyz`
/// reports it.
#[derive(Debug)]
pub struct Health {
    database: AtomicBool,
    redis: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            database: AtomicBool::new(true),
            redis: AtomicBool::new(true),
        }
    }
}

impl Health {
    pub fn check(&self) -> Result<(), String> {
        match (
            self.database.load(Ordering::Relaxed),
            self.redis.load(Ordering::Relaxed),
        ) {
            (true, true) => Ok(()),
            (false, _) => Err("PostgreSQL unreachable; paused".to_owned()),
            (_, false) => Err("Redis unreachable and claims fail closed; paused".to_owned()),
        }
    }
}

pub struct Processor {
    claims: Claims,
    store: Store,
    quick_retries: usize,
    health: Arc<Health>,
    shutdown: CancellationToken,
}

/// A dependency outage: the batch waits for it, it does not fail.
enum Outage {
    Database,
    Redis,
}

/// The unique events of a batch, each with the deliveries it came from.
struct Unique<'a> {
    events: Vec<&'a Event>,
    owners: Vec<Vec<usize>>,
}

impl Processor {
    pub fn new(
        claims: Claims,
        store: Store,
        quick_retries: usize,
        health: Arc<Health>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            claims,
            store,
            quick_retries,
            health,
            shutdown,
        }
    }

    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Handles a batch and returns one decision per body, in order.
    pub async fn process(&self, bodies: &[&[u8]]) -> Vec<Disposition> {
        let started = Instant::now();
        metrics::histogram!("wa_batch_size").record(bodies.len() as f64);
        let parsed: Vec<_> = timed("parse", || {
            bodies.iter().map(|body| parse_payload(body)).collect()
        });
        let mut decisions: Vec<Option<Disposition>> = parsed
            .iter()
            .map(|p| match p {
                Ok(_) => None,
                Err(error) => {
                    tracing::warn!(%error, "undeliverable payload");
                    Some(Disposition::DeadLetter(Failure::from(error)))
                }
            })
            .collect();
        let events: Vec<(usize, &Event)> = parsed
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().ok().map(|events| (i, events)))
            .flat_map(|(i, events)| events.iter().map(move |e| (i, e)))
            .collect();

        match self.store_unique(&events).await {
            Ok(deferred) => {
                for (i, decision) in decisions.iter_mut().enumerate() {
                    decision.get_or_insert(if deferred.contains(&i) {
                        Disposition::Defer
                    } else {
                        Disposition::Ack
                    });
                }
            }
            Err(BatchError::Failed(failure)) => {
                let healthy = decisions.iter().filter(|d| d.is_none()).count();
                if failure.class == FailureClass::Permanent && healthy > 1 {
                    // One bad payload must not take the others down: one at a time.
                    return Box::pin(self.process_one_by_one(bodies, decisions)).await;
                }
                for decision in decisions.iter_mut().filter(|d| d.is_none()) {
                    *decision = Some(match failure.class {
                        FailureClass::Transient => Disposition::Retry(failure.clone()),
                        FailureClass::Permanent => Disposition::DeadLetter(failure.clone()),
                    });
                }
            }
            Err(BatchError::ShuttingDown) => {
                for decision in decisions.iter_mut().filter(|d| d.is_none()) {
                    *decision = Some(Disposition::Requeue);
                }
            }
        }
        metrics::histogram!("wa_batch_duration_seconds").record(started.elapsed().as_secs_f64());
        decisions
            .into_iter()
            .map(|d| d.unwrap_or(Disposition::Ack))
            .collect()
    }

    async fn process_one_by_one(
        &self,
        bodies: &[&[u8]],
        mut decisions: Vec<Option<Disposition>>,
    ) -> Vec<Disposition> {
        for (body, decision) in bodies.iter().zip(decisions.iter_mut()) {
            if decision.is_none() {
                *decision = self.process(&[body]).await.pop();
            }
        }
        decisions
            .into_iter()
            .map(|d| d.unwrap_or(Disposition::Ack))
            .collect()
    }

    /// Claims and stores the unique events; returns the deliveries to defer.
    async fn store_unique(&self, events: &[(usize, &Event)]) -> Result<Vec<usize>, BatchError> {
        let unique = Unique::of(events);
        if unique.events.is_empty() {
            return Ok(Vec::new());
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let keys: Vec<&str> = unique.events.iter().map(|e| e.key()).collect();
        let claims = loop {
            let stage = Instant::now();
            let claimed = self.claims.claim(&token, &keys).await;
            record_stage("claim", stage);
            match claimed {
                Ok(claims) => break claims,
                Err(error) => {
                    tracing::warn!(%error, "claims unavailable");
                    self.wait_out(Outage::Redis).await?;
                }
            }
        };

        let mut to_store = Vec::new();
        let mut claimed_keys = Vec::new();
        let mut deferred = Vec::new();
        for ((event, owners), claim) in unique.events.iter().zip(&unique.owners).zip(&claims) {
            match claim {
                Claim::Claimed => {
                    claimed_keys.push(event.key());
                    to_store.push(*event);
                }
                Claim::Unguarded => to_store.push(*event),
                Claim::Done => count(event, "duplicate_claim"),
                Claim::HeldByOther => {
                    count(event, "deferred");
                    deferred.extend(owners);
                }
            }
        }

        let stage = Instant::now();
        let persisted = self.persist(&to_store).await;
        record_stage("store", stage);
        let persisted = match persisted {
            Ok(persisted) => persisted,
            Err(error) => {
                self.claims.release(&token, &claimed_keys).await;
                return Err(error);
            }
        };
        count_contact_changes(&persisted.contacts);
        for event in &to_store {
            let outcome = if persisted.inserted.contains(event.key()) {
                "stored"
            } else {
                "duplicate_db"
            };
            count(event, outcome);
        }
        let stage = Instant::now();
        self.claims.mark_done(&token, &claimed_keys).await;
        record_stage("mark_done", stage);
        deferred.sort_unstable();
        deferred.dedup();
        Ok(deferred)
    }

    /// Stores with a few quick retries for transient errors; waits out an
    /// unreachable database without spending any attempt.
    async fn persist(&self, events: &[&Event]) -> Result<wa_store::Persisted, BatchError> {
        if events.is_empty() {
            return Ok(wa_store::Persisted::default());
        }
        let mut delays = full_jitter(
            Duration::from_millis(50),
            Duration::from_secs(1),
            Some(self.quick_retries),
        );
        loop {
            match self.store.persist(events).await {
                Ok(persisted) => return Ok(persisted),
                Err(error) if error.is_unreachable() => {
                    tracing::warn!(%error, "PostgreSQL unreachable");
                    self.wait_out(Outage::Database).await?;
                }
                Err(error) => {
                    let failure = Failure::from(&error);
                    match delays.next() {
                        Some(delay) if error.is_transient() => {
                            tracing::info!(%error, ?delay, "transient store error; retrying");
                            tokio::time::sleep(delay).await;
                        }
                        _ => {
                            log_store_failure(&error);
                            return Err(BatchError::Failed(failure));
                        }
                    }
                }
            }
        }
    }

    /// Marks the worker unready and probes the dependency with backoff until
    /// it answers. Deliveries wait unacked meanwhile: prefetch bounds them,
    /// and none spends a retry attempt on someone else's outage.
    async fn wait_out(&self, outage: Outage) -> Result<(), BatchError> {
        let flag = match outage {
            Outage::Database => &self.health.database,
            Outage::Redis => &self.health.redis,
        };
        flag.store(false, Ordering::Relaxed);
        metrics::gauge!("wa_dependency_up", "dependency" => outage.name()).set(0.0);
        let mut delays = full_jitter(Duration::from_millis(200), Duration::from_secs(5), None);
        loop {
            let delay = delays.next().unwrap_or(Duration::from_secs(5));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.cancelled() => return Err(BatchError::ShuttingDown),
            }
            let answered = match outage {
                Outage::Database => sqlx::query("SELECT 1")
                    .execute(self.store.pool())
                    .await
                    .is_ok(),
                Outage::Redis => self.claims.ping().await.is_ok(),
            };
            if answered {
                flag.store(true, Ordering::Relaxed);
                metrics::gauge!("wa_dependency_up", "dependency" => outage.name()).set(1.0);
                tracing::info!(dependency = outage.name(), "dependency is back; resuming");
                return Ok(());
            }
        }
    }
}

impl Outage {
    fn name(&self) -> &'static str {
        match self {
            Outage::Database => "postgresql",
            Outage::Redis => "redis",
        }
    }
}

enum BatchError {
    Failed(Failure),
    ShuttingDown,
}

impl<'a> Unique<'a> {
    /// First occurrence wins; later ones in the same batch are duplicates.
    fn of(events: &[(usize, &'a Event)]) -> Self {
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(events.len());
        let mut unique = Unique {
            events: Vec::with_capacity(events.len()),
            owners: Vec::with_capacity(events.len()),
        };
        for &(delivery, event) in events {
            match index.get(event.key()) {
                Some(&at) => {
                    count(event, "duplicate_batch");
                    if !unique.owners[at].contains(&delivery) {
                        unique.owners[at].push(delivery);
                    }
                }
                None => {
                    index.insert(event.key(), unique.events.len());
                    unique.events.push(event);
                    unique.owners.push(vec![delivery]);
                }
            }
        }
        unique
    }
}

/// Where batch time goes, for profiling in production: `wa_stage_seconds{stage}`.
pub(crate) fn record_stage(stage: &'static str, started: Instant) {
    metrics::histogram!("wa_stage_seconds", "stage" => stage)
        .record(started.elapsed().as_secs_f64());
}

fn timed<T>(stage: &'static str, work: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = work();
    record_stage(stage, started);
    result
}

fn count(event: &Event, outcome: &'static str) {
    metrics::counter!("wa_events_total", "kind" => event.kind().as_str(), "outcome" => outcome)
        .increment(1);
}

/// How identity resolution changed the contacts table (`created`,
/// `linked`, `merged`, `conflict`): merges and conflicts are worth a look.
fn count_contact_changes(changes: &wa_store::ContactChanges) {
    for (change, n) in [
        ("created", changes.created),
        ("linked", changes.linked),
        ("merged", changes.merged),
        ("conflict", changes.conflicts),
    ] {
        if n > 0 {
            metrics::counter!("wa_contacts_total", "change" => change).increment(n);
        }
    }
}

fn log_store_failure(error: &StoreError) {
    tracing::warn!(
        error = %wa_core::telemetry::error_chain(error),
        sqlstate = error.sqlstate().as_deref().unwrap_or(""),
        transient = error.is_transient(),
        "could not store batch"
    );
}
