//! One batch of deliveries, from raw bodies to a decision per delivery:
//! ack at once the copies of bodies stored before (one Redis round trip for
//! the batch, no parse), parse every event of the others, drop duplicates
//! inside the batch, claim the rest in one Redis round trip, store the
//! claimed ones in one transaction, mark them done. Every write passes the
//! [`Gate`] first: a failure that would hit any message the same way closes
//! it, and the batches wait, unfailed, until a probe of what failed passes.
//! Nothing here talks to RabbitMQ; the consumer carries out the decisions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use foldhash::{HashMap, HashMapExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wa_core::backoff::full_jitter;
use wa_core::telemetry::error_chain;
use wa_payload::{Event, parse_payload};
use wa_store::{ErrorClass, LockWait, Store, StoreError};

use crate::breaker::Breaker;
use crate::claim::{Claim, Claims, ClaimsUnavailable};
use crate::failure::{
    Dependency, Failed, Failure, FailureClass, Pause, PauseReason, StoreOutcome, redis_class,
};
use crate::pause::{Admit, Gate};
use crate::stored_body::{BodyDigest, EventTally};

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
    /// Not handled (shutdown while paused): give it back to the queue.
    Requeue,
    /// Held past the hold limit while paused: republish it to the queue,
    /// unchanged, and ack this copy. Unlike a requeue, that does not count
    /// against the queue's delivery limit.
    HandBack,
}

impl Disposition {
    /// For logs and spans.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ack => "ack",
            Self::Defer => "defer",
            Self::Retry(_) => "retry",
            Self::DeadLetter(_) => "dead_letter",
            Self::Requeue => "requeue",
            Self::HandBack => "hand_back",
        }
    }
}

/// One delivery's body, parsed.
pub struct Parsed {
    pub events: Result<Vec<Event>, Failure>,
    /// Its marker once all its events are stored; its fingerprint for the breaker.
    digest: BodyDigest,
}

#[derive(Debug, Clone)]
pub struct ProcessorSettings {
    pub quick_retries: usize,
    pub breaker_threshold: usize,
    pub breaker_window: Duration,
    pub hold_limit: Duration,
}

pub struct Processor {
    claims: Arc<Claims>,
    store: Store,
    gate: Arc<Gate>,
    breaker: Breaker,
    settings: ProcessorSettings,
    shutdown: CancellationToken,
}

/// The unique events of a batch, each with the deliveries it came from:
/// the first in `owner`, the deliveries of its later copies in
/// `more_owners` as (event, delivery), so that an event costs no list of
/// its own. A delivery may be named more than once there; the deliveries
/// to defer are deduplicated anyway.
struct Unique<'a> {
    events: Vec<&'a Event>,
    owner: Vec<usize>,
    more_owners: Vec<(usize, usize)>,
    duplicates: Vec<&'a Event>,
}

/// How a set of deliveries is tried.
#[derive(Debug, Clone, Copy)]
struct Try {
    /// A transient error is tried again at once, a few times: a deadlock
    /// or a lost race settles in milliseconds. A lock held past the wait
    /// for it does not.
    quick_retries: bool,
    lock_wait: LockWait,
}

/// How one try of a set of deliveries ended.
enum Attempt {
    /// Stored; these deliveries are to be deferred.
    Stored(Vec<usize>),
    Failed(Failed),
    /// Not tried: shutdown or the hold limit came first.
    Stopped(Disposition),
}

impl Processor {
    /// Starts paused until PostgreSQL passes a first probe: a worker is
    /// ready only once it has reached the database.
    pub fn start(
        claims: Claims,
        store: Store,
        settings: ProcessorSettings,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let starting = Pause {
            dependency: Dependency::Postgresql,
            reason: PauseReason::Starting,
            detail: String::new(),
        };
        let processor = Arc::new(Self {
            claims: Arc::new(claims),
            store,
            gate: Arc::new(Gate::closed(starting.clone())),
            breaker: Breaker::new(settings.breaker_threshold, settings.breaker_window),
            settings,
            shutdown,
        });
        processor.spawn_probe(starting);
        processor
    }

    /// For `/readyz`: `Err` with the reason while paused.
    pub fn check_ready(&self) -> Result<(), String> {
        self.gate.check()
    }

    /// Resolves once the worker is paused.
    pub async fn paused(&self) {
        self.gate.wait_closed().await;
    }

    /// Which of the bodies were stored before, whole: those deliveries are
    /// acked without being parsed. One Redis round trip for the batch; their
    /// events are counted as `duplicate_delivery`.
    pub async fn stored_before(&self, digests: &[BodyDigest]) -> Vec<bool> {
        metrics::histogram!("wa_batch_size").record(digests.len() as f64);
        let started = std::time::Instant::now();
        let found = self.claims.stored_bodies(digests).await;
        record_stage("stored_bodies", started);
        let mut events = EventTally::default();
        let known = found
            .iter()
            .map(|tally| {
                let Some(tally) = tally else { return false };
                for (kind, n) in tally.counts() {
                    events.add(kind, n);
                }
                true
            })
            .collect();
        for (kind, n) in events.counts() {
            metrics::counter!("wa_events_total", "kind" => kind.as_str(), "outcome" => "duplicate_delivery")
                .increment(n);
        }
        known
    }

    /// Parses every body. The ones that fail are the payload's fault and
    /// can be dead-lettered at once, even while the worker is paused.
    pub fn parse(&self, bodies: &[(&[u8], BodyDigest)]) -> Vec<Parsed> {
        timed("parse", || {
            bodies
                .iter()
                .map(|(body, digest)| Parsed {
                    events: parse_payload(body).map_err(|error| {
                        tracing::warn!(error = %error_chain(&error), "undeliverable payload");
                        Failure::from(&error)
                    }),
                    digest: *digest,
                })
                .collect()
        })
    }

    /// Stores the parsed deliveries and decides each of them; `None` for
    /// those that did not parse. `held_since` is when the deliveries
    /// arrived: past the hold limit, a paused worker hands them back.
    pub async fn store(&self, parsed: &[Parsed], held_since: Instant) -> Vec<Option<Disposition>> {
        let started = std::time::Instant::now();
        let hold_until = held_since + self.settings.hold_limit;
        let pending: Vec<usize> = (0..parsed.len())
            .filter(|&i| parsed[i].events.is_ok())
            .collect();
        let mut decisions: Vec<Option<Disposition>> = vec![None; parsed.len()];
        let mut alone = Try {
            quick_retries: pending.len() == 1,
            lock_wait: LockWait::Session,
        };
        if pending.len() > 1 {
            let together = Try {
                quick_retries: true,
                lock_wait: LockWait::Session,
            };
            match self
                .store_when_open(parsed, &pending, together, hold_until)
                .await
            {
                Attempt::Stored(deferred) => {
                    for &i in &pending {
                        decisions[i] = Some(if deferred.contains(&i) {
                            Disposition::Defer
                        } else {
                            Disposition::Ack
                        });
                    }
                    metrics::histogram!("wa_batch_duration_seconds")
                        .record(started.elapsed().as_secs_f64());
                    return decisions;
                }
                Attempt::Stopped(disposition) => {
                    for &i in &pending {
                        decisions[i] = Some(disposition.clone());
                    }
                    return decisions;
                }
                // One delivery at a time: only the ones that fail alone are
                // failed, and the breaker sees each of them. Behind a lock
                // that outlasted the batch's wait, those that need it fail
                // in a moment each, and the others are stored.
                Attempt::Failed(failed) => {
                    if failed.lock_held {
                        alone.lock_wait = LockWait::Brief;
                    }
                }
            }
        }
        for &i in &pending {
            decisions[i] = Some(self.store_alone(parsed, i, alone, hold_until).await);
        }
        metrics::histogram!("wa_batch_duration_seconds").record(started.elapsed().as_secs_f64());
        decisions
    }

    /// Stores one delivery. A transient failure counts towards the breaker;
    /// the failure that trips it is not spent: the delivery waits for the
    /// probe like the others.
    async fn store_alone(
        &self,
        parsed: &[Parsed],
        delivery: usize,
        how: Try,
        hold_until: Instant,
    ) -> Disposition {
        loop {
            let attempt = self
                .store_when_open(parsed, &[delivery], how, hold_until)
                .await;
            let failed = match attempt {
                Attempt::Stored(deferred) if deferred.is_empty() => return Disposition::Ack,
                Attempt::Stored(_) => return Disposition::Defer,
                Attempt::Stopped(disposition) => return disposition,
                Attempt::Failed(failed) => failed,
            };
            if failed.failure.class == FailureClass::Permanent {
                return Disposition::DeadLetter(failed.failure);
            }
            if !self.gate.is_open() {
                // Another batch paused the worker meanwhile, most likely for
                // this same error: wait for the probe instead of spending an attempt.
                continue;
            }
            let now = std::time::Instant::now();
            if !self.breaker.record(
                &failed.signature,
                parsed[delivery].digest.fingerprint(),
                now,
            ) {
                return Disposition::Retry(failed.failure);
            }
            self.pause(Pause {
                dependency: failed.dependency,
                reason: PauseReason::Breaker,
                detail: failed.failure.reason,
            });
        }
    }

    /// Waits for the gate, then tries; a systemic failure closes the gate
    /// and the same deliveries wait and try again.
    async fn store_when_open(
        &self,
        parsed: &[Parsed],
        deliveries: &[usize],
        how: Try,
        hold_until: Instant,
    ) -> Attempt {
        loop {
            let admitted = tokio::select! {
                biased;
                admitted = self.gate.wait_open(hold_until) => admitted,
                () = self.shutdown.cancelled() => {
                    return Attempt::Stopped(Disposition::Requeue);
                }
            };
            if admitted == Admit::HoldLimit {
                return Attempt::Stopped(Disposition::HandBack);
            }
            match self.store_once(parsed, deliveries, how).await {
                Ok(deferred) => return Attempt::Stored(deferred),
                Err(StoreOutcome::Pause(pause)) => self.pause(pause),
                Err(StoreOutcome::Failed(failed)) => return Attempt::Failed(failed),
            }
        }
    }

    /// Claims and stores the events of `deliveries`; returns the deliveries
    /// to defer. Outcomes are counted only here, on success, so a batch that
    /// is tried again counts each event once.
    #[tracing::instrument(
        name = "events",
        skip_all,
        fields(deliveries = deliveries.len(), events = tracing::field::Empty, keys = tracing::field::Empty)
    )]
    async fn store_once(
        &self,
        parsed: &[Parsed],
        deliveries: &[usize],
        how: Try,
    ) -> Result<Vec<usize>, StoreOutcome> {
        let events: Vec<(usize, &Event)> = deliveries
            .iter()
            .filter_map(|&i| parsed[i].events.as_ref().ok().map(|events| (i, events)))
            .flat_map(|(i, events)| events.iter().map(move |e| (i, e)))
            .collect();
        let unique = Unique::of(&events);
        let span = tracing::Span::current();
        span.record("events", unique.events.len());
        span.record("keys", key_list(unique.events.iter().map(|e| e.key())));
        let mut outcomes: Vec<(&Event, &'static str)> = unique
            .duplicates
            .iter()
            .map(|event| (*event, "duplicate_batch"))
            .collect();
        let mut deferred: Vec<usize> = Vec::new();
        let mut to_store = Vec::new();
        let mut claimed_keys = Vec::new();
        let token = uuid::Uuid::new_v4().simple().to_string();
        if !unique.events.is_empty() {
            let keys: Vec<&str> = unique.events.iter().map(|e| e.key()).collect();
            let stage = std::time::Instant::now();
            let claimed = self.claims.claim(&token, &keys).await;
            record_stage("claim", stage);
            let claims = claimed.map_err(|error| claims_outcome(&error))?;
            let mut held = vec![false; unique.events.len()];
            for ((at, event), claim) in unique.events.iter().enumerate().zip(&claims) {
                match claim {
                    Claim::Claimed => {
                        claimed_keys.push(event.key());
                        to_store.push(*event);
                    }
                    Claim::Unguarded => to_store.push(*event),
                    Claim::Done => outcomes.push((event, "duplicate_claim")),
                    Claim::HeldByOther => {
                        outcomes.push((event, "deferred"));
                        held[at] = true;
                    }
                }
            }
            deferred.extend(unique.owners_of(&held));
        }

        let stage = std::time::Instant::now();
        let persisted = self.persist(&to_store, how).await;
        record_stage("store", stage);
        let persisted = match persisted {
            Ok(persisted) => persisted,
            Err(outcome) => {
                self.claims.abandon(&token, &claimed_keys).await;
                return Err(outcome);
            }
        };
        count_contact_changes(&persisted.contacts);
        for event in &to_store {
            let outcome = if persisted.inserted.contains(event.key()) {
                "stored"
            } else {
                "duplicate_db"
            };
            outcomes.push((event, outcome));
        }
        count(&outcomes);
        deferred.sort_unstable();
        deferred.dedup();
        // Every event of these is stored now (or was before, or waits in
        // this commit for a copy in the same batch): a later copy of the
        // body can be acked on sight.
        let stored_bodies: Vec<(BodyDigest, EventTally)> = deliveries
            .iter()
            .filter(|i| deferred.binary_search(i).is_err())
            .filter_map(|&i| {
                let events = parsed[i].events.as_ref().ok()?;
                Some((parsed[i].digest, EventTally::of(events)))
            })
            .collect();
        let stage = std::time::Instant::now();
        self.claims
            .mark_done(&token, &claimed_keys, &stored_bodies)
            .await;
        record_stage("mark_done", stage);
        Ok(deferred)
    }

    /// Stores with a few quick retries for transient errors.
    async fn persist<'a>(
        &self,
        events: &[&'a Event],
        how: Try,
    ) -> Result<wa_store::Persisted<'a>, StoreOutcome> {
        if events.is_empty() {
            return Ok(wa_store::Persisted::default());
        }
        let retries = if how.quick_retries {
            self.settings.quick_retries
        } else {
            0
        };
        let mut delays = full_jitter(
            Duration::from_millis(50),
            Duration::from_secs(1),
            Some(retries),
        );
        loop {
            let error = match self.store.persist(events, how.lock_wait).await {
                Ok(persisted) => return Ok(persisted),
                Err(error) => error,
            };
            let outcome = StoreOutcome::from(&error);
            if let StoreOutcome::Failed(failed) = &outcome {
                if failed.failure.class == FailureClass::Transient
                    && !failed.lock_held
                    && let Some(delay) = delays.next()
                {
                    tracing::info!(
                        error = %error_chain(&error),
                        ?delay,
                        "transient store error; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    continue;
                }
                log_store_failure(&error);
            }
            return Err(outcome);
        }
    }

    /// Closes the gate; the first to close it logs why and starts the probe.
    fn pause(&self, pause: Pause) {
        if !self.gate.close(pause.clone()) {
            return;
        }
        tracing::warn!(
            dependency = pause.dependency.as_str(),
            reason = pause.reason.as_str(),
            error = %pause.detail,
            "worker paused: deliveries wait unacked while it probes"
        );
        metrics::counter!(
            "wa_worker_pauses_total",
            "dependency" => pause.dependency.as_str(),
            "reason" => pause.reason.as_str()
        )
        .increment(1);
        self.spawn_probe(pause);
    }

    fn spawn_probe(&self, pause: Pause) {
        set_paused_gauge(&pause, 1.0);
        metrics::gauge!("wa_dependency_up", "dependency" => pause.dependency.as_str()).set(0.0);
        tokio::spawn(probe_until_back(
            self.store.clone(),
            self.claims.clone(),
            self.gate.clone(),
            pause,
            self.shutdown.clone(),
        ));
    }
}

/// Probes what failed, with backoff, until it takes writes again; then opens
/// the gate. While the worker starts the first probe runs at once; after a
/// breaker trip the probes start later, since the probe may not meet the
/// unknown error that tripped it.
async fn probe_until_back(
    store: Store,
    claims: Arc<Claims>,
    gate: Arc<Gate>,
    pause: Pause,
    shutdown: CancellationToken,
) {
    let started = std::time::Instant::now();
    let (min, max) = match pause.reason {
        PauseReason::Breaker => (Duration::from_secs(1), Duration::from_secs(10)),
        _ => (Duration::from_millis(200), Duration::from_secs(5)),
    };
    let mut delays = full_jitter(min, max, None);
    let mut probes = 0u64;
    let mut current = pause.clone();
    loop {
        if probes > 0 || pause.reason != PauseReason::Starting {
            let delay = delays.next().unwrap_or(max).max(min / 2);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return,
            }
        }
        probes += 1;
        let probed = match pause.dependency {
            Dependency::Postgresql => store
                .probe()
                .await
                .map_err(|e| (error_chain(&e), e.class())),
            Dependency::Redis => claims
                .probe()
                .await
                .map_err(|e| (error_chain(&e), redis_class(&e))),
        };
        // A probe that meets an error about the attempt (a deadlock, a
        // trigger's exception) found the dependency up: the writes decide
        // from there, and the breaker watches them. Only a breaker trip needs
        // a clean probe, since its error is of that kind.
        let probed = match probed {
            Err((_, ErrorClass::Transient | ErrorClass::Permanent))
                if pause.reason != PauseReason::Breaker =>
            {
                Ok(())
            }
            Err((error, class)) => {
                if let (ErrorClass::Systemic(systemic), false) =
                    (class, pause.reason == PauseReason::Breaker)
                {
                    let found = Pause {
                        dependency: pause.dependency,
                        reason: PauseReason::Systemic(systemic),
                        detail: error.clone(),
                    };
                    if found.reason != current.reason && gate.update(found.clone()) {
                        set_paused_gauge(&current, 0.0);
                        set_paused_gauge(&found, 1.0);
                        tracing::info!(
                            dependency = found.dependency.as_str(),
                            reason = found.reason.as_str(),
                            "still paused, for another reason"
                        );
                        current = found;
                    }
                }
                Err(error)
            }
            Ok(()) => Ok(()),
        };
        match probed {
            Ok(()) => break,
            // Said once: the pause already logged its cause.
            Err(error) if probes == 1 && pause.reason == PauseReason::Starting => {
                tracing::warn!(
                    dependency = pause.dependency.as_str(),
                    %error,
                    "cannot write to the database yet; probing"
                );
            }
            Err(error) => tracing::debug!(
                dependency = pause.dependency.as_str(),
                %error,
                "still paused"
            ),
        }
    }
    gate.open();
    set_paused_gauge(&current, 0.0);
    metrics::gauge!("wa_dependency_up", "dependency" => pause.dependency.as_str()).set(1.0);
    if pause.reason == PauseReason::Starting {
        tracing::info!(dependency = pause.dependency.as_str(), "database reached");
    } else {
        tracing::info!(
            dependency = pause.dependency.as_str(),
            reason = pause.reason.as_str(),
            paused_for = ?started.elapsed(),
            probes,
            "worker resumed: the probe passed"
        );
    }
}

fn set_paused_gauge(pause: &Pause, value: f64) {
    metrics::gauge!(
        "wa_worker_paused",
        "dependency" => pause.dependency.as_str(),
        "reason" => pause.reason.as_str()
    )
    .set(value);
}

/// A claim round trip that failed while claims fail closed.
fn claims_outcome(error: &ClaimsUnavailable) -> StoreOutcome {
    let detail = error_chain(error);
    match redis_class(error.redis_error()) {
        ErrorClass::Systemic(systemic) => StoreOutcome::Pause(Pause {
            dependency: Dependency::Redis,
            reason: PauseReason::Systemic(systemic),
            detail,
        }),
        ErrorClass::Transient | ErrorClass::Permanent => {
            tracing::warn!(error = %detail, "could not claim the batch's events");
            StoreOutcome::Failed(Failed {
                failure: Failure::transient(format!("Redis error: {detail}")),
                signature: format!("redis {:?}", error.redis_error().kind()),
                dependency: Dependency::Redis,
                lock_held: false,
            })
        }
    }
}

impl<'a> Unique<'a> {
    /// First occurrence wins; later ones in the same batch are duplicates.
    fn of(events: &[(usize, &'a Event)]) -> Self {
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(events.len());
        let mut unique = Unique {
            events: Vec::with_capacity(events.len()),
            owner: Vec::with_capacity(events.len()),
            more_owners: Vec::new(),
            duplicates: Vec::new(),
        };
        for &(delivery, event) in events {
            match index.get(event.key()) {
                Some(&at) => {
                    unique.duplicates.push(event);
                    if unique.owner[at] != delivery {
                        unique.more_owners.push((at, delivery));
                    }
                }
                None => {
                    index.insert(event.key(), unique.events.len());
                    unique.events.push(event);
                    unique.owner.push(delivery);
                }
            }
        }
        unique
    }

    /// The deliveries the unique events marked in `events` came from
    /// (repeats possible).
    fn owners_of<'b>(&'b self, events: &'b [bool]) -> impl Iterator<Item = usize> + 'b {
        let first = self
            .owner
            .iter()
            .zip(events)
            .filter(|(_, marked)| **marked)
            .map(|(delivery, _)| *delivery);
        let more = self
            .more_owners
            .iter()
            .filter(move |(at, _)| events[*at])
            .map(|(_, delivery)| *delivery);
        first.chain(more)
    }
}

/// Where batch time goes, for profiling in production: `wa_stage_seconds{stage}`.
pub(crate) fn record_stage(stage: &'static str, started: std::time::Instant) {
    metrics::histogram!("wa_stage_seconds", "stage" => stage)
        .record(started.elapsed().as_secs_f64());
}

fn timed<T>(stage: &'static str, work: impl FnOnce() -> T) -> T {
    let started = std::time::Instant::now();
    let result = work();
    record_stage(stage, started);
    result
}

/// Counted per kind and outcome, not per event: a batch touches the
/// registry a few times instead of once per event.
fn count(outcomes: &[(&Event, &'static str)]) {
    let mut counts: BTreeMap<(&'static str, &'static str), u64> = BTreeMap::new();
    for (event, outcome) in outcomes {
        *counts.entry((event.kind().as_str(), outcome)).or_default() += 1;
    }
    for ((kind, outcome), n) in counts {
        metrics::counter!("wa_events_total", "kind" => kind, "outcome" => outcome).increment(n);
    }
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
        error = %error_chain(error),
        sqlstate = error.sqlstate().as_deref().unwrap_or(""),
        class = ?error.class(),
        "could not store batch"
    );
}

/// Event keys for a span field: the first few, then how many more (a span
/// names its events; it does not list a whole batch).
fn key_list<'a>(keys: impl ExactSizeIterator<Item = &'a str>) -> String {
    const SHOWN: usize = 8;
    let total = keys.len();
    let mut list: Vec<&str> = keys.take(SHOWN).collect();
    let more = total.saturating_sub(SHOWN);
    let more_text = format!("(+{more} more)");
    if more > 0 {
        list.push(&more_text);
    }
    list.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str) -> Event {
        Event::Other(wa_payload::OtherEvent {
            key: key.to_owned(),
            field: "account_update".to_owned(),
            account_id: None,
            timestamp: None,
            raw: wa_payload::RawItem::default(),
        })
    }

    #[test]
    fn an_event_held_by_another_defers_every_delivery_it_came_from() {
        let (a, b, c) = (event("event:a"), event("event:b"), event("event:c"));
        // Delivery 0 has a and b, delivery 1 has b twice and c, delivery 2 has a.
        let events = [(0, &a), (0, &b), (1, &b), (1, &b), (1, &c), (2, &a)];
        let unique = Unique::of(&events);
        let keys: Vec<&str> = unique.events.iter().map(|e| e.key()).collect();
        assert_eq!(keys, ["event:a", "event:b", "event:c"]);
        assert_eq!(unique.duplicates.len(), 3);
        let owners = |held: [bool; 3]| {
            let mut owners: Vec<usize> = unique.owners_of(&held).collect();
            owners.sort_unstable();
            owners.dedup();
            owners
        };
        assert_eq!(owners([true, false, false]), [0, 2]);
        assert_eq!(owners([false, true, false]), [0, 1]);
        assert_eq!(owners([false, false, true]), [1]);
        assert_eq!(owners([false, false, false]), Vec::<usize>::new());
    }

    #[test]
    fn a_span_names_the_first_keys_and_counts_the_rest() {
        assert_eq!(
            key_list(["msg:a", "status:a:read"].into_iter()),
            "msg:a status:a:read"
        );
        let many: Vec<String> = (0..10).map(|i| format!("msg:{i}")).collect();
        assert_eq!(
            key_list(many.iter().map(String::as_str)),
            "msg:0 msg:1 msg:2 msg:3 msg:4 msg:5 msg:6 msg:7 (+2 more)"
        );
        assert_eq!(key_list(std::iter::empty()), "");
    }
}
