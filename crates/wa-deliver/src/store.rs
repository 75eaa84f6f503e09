//! Endpoints, deliveries and attempts in PostgreSQL: the library API of the
//! `endpoints` commands, the deliverer and the operator console.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{FromRow, PgPool, Row};
use uuid::Uuid;
use wa_store::StoreError;

/// An endpoint as stored. Its secrets are never serialized.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Endpoint {
    pub id: i64,
    pub url: String,
    pub description: String,
    #[serde(skip)]
    pub secrets: Vec<String>,
    pub event_types: Vec<String>,
    pub phone_number_ids: Vec<String>,
    pub rate_limit: Option<i32>,
    pub max_in_flight: i32,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub failing_since: Option<DateTime<Utc>>,
    pub paused_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An endpoint with what waits for it.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct EndpointStatus {
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// Deliveries not yet acknowledged with a 2xx.
    pub backlog: i64,
    /// Conversations with deliveries waiting.
    pub waiting_conversations: i64,
    pub delivered: i64,
}

#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub url: String,
    pub description: String,
    pub secret: String,
    pub event_types: Vec<String>,
    pub phone_number_ids: Vec<String>,
    pub rate_limit: Option<i32>,
    pub max_in_flight: i32,
}

/// Fields to change; `None` keeps the stored value.
#[derive(Debug, Clone, Default)]
pub struct EndpointChanges {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub phone_number_ids: Option<Vec<String>>,
    /// `Some(None)` removes the limit.
    pub rate_limit: Option<Option<i32>>,
    pub max_in_flight: Option<i32>,
}

/// One HTTP attempt.
#[derive(Debug, Clone, sqlx::FromRow, Serialize)]
pub struct Attempt {
    pub id: i64,
    pub delivery_id: i64,
    pub event_id: String,
    pub attempted_at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub latency_ms: f64,
    pub error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

const ENDPOINT_COLUMNS: &str =
    "e.id, e.url, e.description, e.secrets, e.event_types, e.phone_number_ids,
    e.rate_limit, e.max_in_flight, e.enabled, e.disabled_reason, e.disabled_at, e.failing_since,
    e.paused_until, e.created_at, e.updated_at";

pub async fn add(pool: &PgPool, endpoint: &NewEndpoint) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO delivery_endpoints
             (url, description, secrets, event_types, phone_number_ids, rate_limit, max_in_flight)
         VALUES ($1, $2, ARRAY[$3], $4, $5, $6, $7)
         RETURNING id",
    )
    .bind(&endpoint.url)
    .bind(&endpoint.description)
    .bind(&endpoint.secret)
    .bind(&endpoint.event_types)
    .bind(&endpoint.phone_number_ids)
    .bind(endpoint.rate_limit)
    .bind(endpoint.max_in_flight)
    .fetch_one(pool)
    .await
}

/// Every endpoint with its backlog, by id.
pub async fn list(pool: &PgPool) -> Result<Vec<EndpointStatus>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLUMNS},
                COALESCE(l.backlog, 0)::int8 AS backlog,
                COALESCE(l.conversations, 0)::int8 AS waiting_conversations,
                (SELECT count(*) FROM deliveries d
                 WHERE d.endpoint_id = e.id AND d.state = 'delivered') AS delivered
         FROM delivery_endpoints e
         LEFT JOIN (SELECT endpoint_id, sum(pending) AS backlog, count(*) AS conversations
                    FROM delivery_lanes WHERE pending > 0 GROUP BY endpoint_id) l
           ON l.endpoint_id = e.id
         ORDER BY e.id"
    )))
    .fetch_all(pool)
    .await
}

pub async fn status(pool: &PgPool, id: i64) -> Result<Option<EndpointStatus>, sqlx::Error> {
    Ok(list(pool).await?.into_iter().find(|e| e.endpoint.id == id))
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<Endpoint>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENDPOINT_COLUMNS} FROM delivery_endpoints e WHERE e.id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// `false` when there is no such endpoint.
pub async fn update(
    pool: &PgPool,
    id: i64,
    changes: &EndpointChanges,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE delivery_endpoints SET
             url = COALESCE($2, url),
             description = COALESCE($3, description),
             event_types = COALESCE($4, event_types),
             phone_number_ids = COALESCE($5, phone_number_ids),
             rate_limit = CASE WHEN $6 THEN $7 ELSE rate_limit END,
             max_in_flight = COALESCE($8, max_in_flight),
             updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(&changes.url)
    .bind(&changes.description)
    .bind(&changes.event_types)
    .bind(&changes.phone_number_ids)
    .bind(changes.rate_limit.is_some())
    .bind(changes.rate_limit.flatten())
    .bind(changes.max_in_flight)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Disables with a reason; what waits for the endpoint stays, and new
/// events keep queueing for it.
pub async fn disable(pool: &PgPool, id: i64, reason: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE delivery_endpoints
         SET enabled = false, disabled_reason = $2, disabled_at = now(), updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Enables, forgets past failures, and makes every waiting conversation
/// due at once.
pub async fn enable(pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Lanes first, then the endpoint: the order a failed delivery locks them in.
    sqlx::query(
        "UPDATE delivery_lanes SET next_attempt_at = now() WHERE endpoint_id = $1 AND pending > 0",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let done = sqlx::query(
        "UPDATE delivery_endpoints
         SET enabled = true, disabled_reason = NULL, disabled_at = NULL, failing_since = NULL,
             paused_until = NULL, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// Signs with `secret` from now on, and with the previous newest secret
/// too until [`finish_rotation`], so that receivers can switch at leisure.
pub async fn rotate_secret(pool: &PgPool, id: i64, secret: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE delivery_endpoints SET secrets = ARRAY[$2] || secrets[1:1], updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(secret)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Stops signing with the older secrets.
pub async fn finish_rotation(pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE delivery_endpoints SET secrets = secrets[1:1], updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes the endpoint with its deliveries and attempts.
pub async fn remove(pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM delivery_endpoints WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The latest attempts, newest first.
pub async fn attempts(
    pool: &PgPool,
    endpoint: i64,
    limit: i64,
) -> Result<Vec<Attempt>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, delivery_id, event_id, attempted_at, status_code, latency_ms, error, next_attempt_at
         FROM delivery_attempts WHERE endpoint_id = $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(endpoint)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Queues again every delivered event the endpoint got since `since`
/// (same `webhook-id`, per conversation in order); returns how many.
pub async fn replay(
    pool: &PgPool,
    endpoint: i64,
    since: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let queued: i64 = sqlx::query_scalar(
        "WITH reset AS (
             UPDATE deliveries SET state = 'pending', delivered_at = NULL
             WHERE endpoint_id = $1 AND created_at >= $2 AND state = 'delivered'
             RETURNING conversation
         ), lanes AS (
             INSERT INTO delivery_lanes AS l (endpoint_id, conversation, pending)
             SELECT $1, conversation, count(*) FROM reset GROUP BY conversation ORDER BY conversation
             ON CONFLICT (endpoint_id, conversation) DO UPDATE SET pending = l.pending + EXCLUDED.pending
         )
         SELECT count(*) FROM reset",
    )
    .bind(endpoint)
    .bind(since)
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(queued).unwrap_or(0))
}

/// Deletes deliveries delivered longer than `retention` ago, with their
/// attempts, at most [`PRUNE_BATCH`](wa_store::retention::PRUNE_BATCH) at a
/// time; rows another deliverer is deleting are left to it. Pending ones
/// stay, however old.
///
/// The conversations of the deleted ones lose their lane too when nothing
/// waits in it and no deliverer holds it: a lane is one row per endpoint and
/// contact, so kept for good they grew with every contact ever seen. One
/// whose deliveries are all gone has nothing to keep; a lane deleted while
/// its conversation is still active is only made again by the next event.
/// A lane locked by anyone (a release adding to it, a deliverer, another
/// pruner whose batch shares its conversations) is passed over rather than
/// waited for, since two pruners waiting on each other's lanes deadlocked;
/// the prune of the conversation's next delivery, if any, takes it.
pub async fn prune_delivered(pool: &PgPool, retention: Duration) -> Result<u64, StoreError> {
    wa_store::retention::delete_batch(
        pool,
        "WITH batch AS (
             SELECT id, endpoint_id, conversation FROM deliveries
             WHERE state = 'delivered' AND delivered_at < now() - make_interval(secs => $1)
             LIMIT $2 FOR UPDATE SKIP LOCKED
         ), idle AS (
             SELECT l.endpoint_id, l.conversation FROM delivery_lanes l
             WHERE (l.endpoint_id, l.conversation) IN (SELECT endpoint_id, conversation FROM batch)
               AND l.pending = 0 AND (l.leased_until IS NULL OR l.leased_until < now())
             FOR UPDATE SKIP LOCKED
         ), idle_lanes AS (
             DELETE FROM delivery_lanes l USING idle
             WHERE l.endpoint_id = idle.endpoint_id AND l.conversation = idle.conversation
         )
         DELETE FROM deliveries WHERE id IN (SELECT id FROM batch)",
        retention,
    )
    .await
}

/// Per endpoint: whether it is enabled, and how many deliveries wait (the gauges).
pub async fn backlogs(pool: &PgPool) -> Result<Vec<(i64, bool, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT e.id, e.enabled, COALESCE(sum(l.pending), 0)::int8
         FROM delivery_endpoints e LEFT JOIN delivery_lanes l ON l.endpoint_id = e.id AND l.pending > 0
         GROUP BY e.id",
    )
    .fetch_all(pool)
    .await
}

// ---- The deliverer's side ----

/// An endpoint a deliverer may send to now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ActiveEndpoint {
    pub id: i64,
    pub rate_limit: Option<i32>,
    pub max_in_flight: i32,
}

pub async fn active_endpoints(pool: &PgPool) -> Result<Vec<ActiveEndpoint>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, rate_limit, max_in_flight FROM delivery_endpoints
         WHERE enabled AND (paused_until IS NULL OR paused_until <= now())
         ORDER BY id",
    )
    .fetch_all(pool)
    .await
}

/// Leases up to `room` due conversations of `endpoint` that no deliverer
/// holds, and no more than all deliverers together leave of its `lanes`.
///
/// Claims of one endpoint take its row lock in turn (`NO KEY UPDATE`, so
/// the relay's fan-out, whose foreign key checks take `KEY SHARE`, never
/// waits on it) and only then count, in a statement of their own: its
/// snapshot is taken after the lock, so it sees the claim that held the
/// lock before, and two deliverers never both take the last free place.
pub async fn claim_lanes(
    pool: &PgPool,
    endpoint: i64,
    owner: Uuid,
    lease: Duration,
    lanes: i64,
    room: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT 1 FROM delivery_endpoints WHERE id = $1 FOR NO KEY UPDATE")
        .bind(endpoint)
        .execute(&mut *tx)
        .await?;
    let claimed = sqlx::query_scalar(
        "UPDATE delivery_lanes l
         SET leased_until = now() + make_interval(secs => $3), lease_owner = $2
         FROM (SELECT conversation FROM delivery_lanes
               WHERE endpoint_id = $1 AND pending > 0 AND next_attempt_at <= now()
                 AND (leased_until IS NULL OR leased_until < now())
               ORDER BY next_attempt_at
               LIMIT GREATEST(0, LEAST($5, $4 - (SELECT count(*) FROM delivery_lanes
                                                  WHERE endpoint_id = $1 AND leased_until > now())))
               FOR UPDATE SKIP LOCKED) due
         WHERE l.endpoint_id = $1 AND l.conversation = due.conversation
         RETURNING l.conversation",
    )
    .bind(endpoint)
    .bind(owner.to_string())
    .bind(lease.as_secs_f64())
    .bind(lanes)
    .bind(room)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(claimed)
}

/// Takes `endpoint`'s next request slot and says how long until it comes:
/// the slot is now, or `1 / per_second` after the one taken last, by
/// whichever deliverer. All of them take their slots from the same row, so
/// the rate holds across them; the wait is reckoned by the database's
/// clock alone, so the deliverers' clocks need not agree.
pub async fn take_rate_slot(
    pool: &PgPool,
    endpoint: i64,
    per_second: i32,
) -> Result<Duration, sqlx::Error> {
    let wait: Option<f64> = sqlx::query_scalar(
        "UPDATE delivery_endpoints
         SET rate_slot_at = GREATEST(rate_slot_at, clock_timestamp())
                            + make_interval(secs => 1.0 / $2::float8)
         WHERE id = $1
         RETURNING extract(epoch FROM rate_slot_at - make_interval(secs => 1.0 / $2::float8)
                                      - clock_timestamp())::float8",
    )
    .bind(endpoint)
    .bind(per_second)
    .fetch_optional(pool)
    .await?;
    // A removed endpoint has no slot: its next read finds nothing to send.
    Ok(wait.map_or(Duration::ZERO, |w| {
        Duration::try_from_secs_f64(w).unwrap_or_default()
    }))
}

/// The next delivery of a conversation, with the endpoint as it is now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Head {
    pub id: i64,
    pub endpoint_id: i64,
    pub conversation: String,
    pub event_id: String,
    pub event_type: String,
    pub payload: Value,
    pub attempts: i32,
    pub url: String,
    pub secrets: Vec<String>,
    pub failing_since: Option<DateTime<Utc>>,
}

/// What a recorded success leaves the conversation with.
#[derive(Debug)]
pub enum Recorded {
    /// Another deliverer leased the conversation meanwhile.
    LeaseLost,
    /// The lease is renewed; with the next pending delivery as the same
    /// statement saw it. `None` says only that it saw none: one may have been
    /// released since, so ask [`head`] before letting the conversation go.
    Held(Option<Head>),
}

/// The columns of a [`Head`], from `deliveries d` and `delivery_endpoints e`.
const HEAD_COLUMNS: &str = "d.id, d.endpoint_id, d.conversation, d.event_id, d.event_type,
    d.payload, d.attempts, e.url, e.secrets, e.failing_since";

/// Pending deliveries of conversation `$2` of endpoint `$1` while the
/// endpoint is enabled and not paused, in the order they go.
const PENDING_OF_CONVERSATION: &str = "FROM deliveries d
    JOIN delivery_endpoints e ON e.id = d.endpoint_id
    WHERE d.endpoint_id = $1 AND d.conversation = $2 AND d.state = 'pending'
      AND e.enabled AND (e.paused_until IS NULL OR e.paused_until <= now())";

/// `None` when nothing waits, or the endpoint was disabled or paused since.
pub async fn head(
    pool: &PgPool,
    endpoint: i64,
    conversation: &str,
) -> Result<Option<Head>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {HEAD_COLUMNS} {PENDING_OF_CONVERSATION} ORDER BY d.sequence, d.id LIMIT 1"
    )))
    .bind(endpoint)
    .bind(conversation)
    .fetch_optional(pool)
    .await
}

/// One attempt's result, as recorded.
pub struct AttemptRecord<'a> {
    pub status_code: Option<u16>,
    pub latency: Duration,
    pub error: Option<&'a str>,
}

/// Records a 2xx: the delivery is done, the conversation moves on, the
/// lease is renewed, and the next delivery is read. One statement (one
/// round trip and one pooled connection, atomic): this is the deliverer's
/// hot path.
pub async fn record_success(
    pool: &PgPool,
    head: &Head,
    attempt: &AttemptRecord<'_>,
    owner: Uuid,
    lease: Duration,
) -> Result<Recorded, sqlx::Error> {
    // Every part of one statement reads the same snapshot, in which the
    // delivery just done is still pending: the next one is the first other.
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH done AS (
             UPDATE deliveries SET state = 'delivered', attempts = attempts + 1,
                 last_attempt_at = now(), delivered_at = now()
             WHERE id = $3 AND state = 'pending'
             RETURNING id
         ), attempt AS (
             INSERT INTO delivery_attempts (delivery_id, endpoint_id, event_id, status_code, latency_ms)
             VALUES ($3, $1, $4, $5, $6)
         ), recovered AS (
             UPDATE delivery_endpoints SET failing_since = NULL
             WHERE $8 AND id = $1 AND failing_since IS NOT NULL
         ), lane AS (
             UPDATE delivery_lanes
             SET pending = pending - (SELECT count(*) FROM done)::int,
                 leased_until = CASE WHEN lease_owner = $7 THEN now() + make_interval(secs => $9)
                                     ELSE leased_until END
             WHERE endpoint_id = $1 AND conversation = $2
             RETURNING COALESCE(lease_owner = $7, false) AS held
         )
         SELECT lane.held, next.* FROM lane
         LEFT JOIN LATERAL (
             SELECT {HEAD_COLUMNS} {PENDING_OF_CONVERSATION} AND lane.held AND d.id <> $3
             ORDER BY d.sequence, d.id LIMIT 1
         ) next ON true"
    )))
    .bind(head.endpoint_id)
    .bind(&head.conversation)
    .bind(head.id)
    .bind(&head.event_id)
    .bind(attempt.status_code.map(i32::from))
    .bind(attempt.latency.as_secs_f64() * 1000.0)
    .bind(owner.to_string())
    .bind(head.failing_since.is_some())
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(Recorded::LeaseLost);
    };
    if !row.try_get::<bool, _>("held")? {
        return Ok(Recorded::LeaseLost);
    }
    let next = match row.try_get::<Option<i64>, _>("id")? {
        Some(_) => Some(Head::from_row(&row)?),
        None => None,
    };
    Ok(Recorded::Held(next))
}

/// What a failure does to the endpoint besides delaying the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointEffect {
    None,
    /// Retry-After: the whole endpoint waits until then.
    Pause(DateTime<Utc>),
    /// 410 Gone.
    Disable(String),
}

/// What became of the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointState {
    Active,
    Paused,
    /// Disabled by this failure, and why.
    Disabled(String),
    /// Already disabled (by another conversation's failure, or an operator).
    Inactive,
}

/// Records a failed attempt: the conversation waits until `next_attempt`
/// and its lease is let go. The endpoint is disabled when it has failed
/// for longer than `disable_after` with no success.
pub async fn record_failure(
    pool: &PgPool,
    head: &Head,
    attempt: &AttemptRecord<'_>,
    owner: Uuid,
    next_attempt: DateTime<Utc>,
    effect: &EndpointEffect,
    disable_after: Duration,
) -> Result<EndpointState, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE deliveries SET attempts = attempts + 1, last_attempt_at = now() WHERE id = $1",
    )
    .bind(head.id)
    .execute(&mut *tx)
    .await?;
    let next_for_record = match effect {
        EndpointEffect::Disable(_) => None,
        _ => Some(next_attempt),
    };
    insert_attempt(&mut tx, head, attempt, next_for_record).await?;
    sqlx::query(
        "UPDATE delivery_lanes
         SET next_attempt_at = $3,
             leased_until = CASE WHEN lease_owner = $4 THEN NULL ELSE leased_until END
         WHERE endpoint_id = $1 AND conversation = $2",
    )
    .bind(head.endpoint_id)
    .bind(&head.conversation)
    .bind(next_attempt)
    .bind(owner.to_string())
    .execute(&mut *tx)
    .await?;
    let (paused_until, gone) = match effect {
        EndpointEffect::None => (None, None),
        EndpointEffect::Pause(until) => (Some(*until), None),
        EndpointEffect::Disable(reason) => (None, Some(reason.as_str())),
    };
    // Locked first, so that of two failures racing only one finds it enabled.
    let was_enabled: bool =
        sqlx::query_scalar("SELECT enabled FROM delivery_endpoints WHERE id = $1 FOR UPDATE")
            .bind(head.endpoint_id)
            .fetch_one(&mut *tx)
            .await?;
    let state: (bool, Option<String>, Option<DateTime<Utc>>) = sqlx::query_as(
        "UPDATE delivery_endpoints e SET
             failing_since = COALESCE(e.failing_since, now()),
             paused_until = GREATEST(e.paused_until, $2),
             enabled = e.enabled AND $3::text IS NULL
                       AND COALESCE(e.failing_since, now()) > now() - make_interval(secs => $4),
             disabled_reason = CASE
                 WHEN NOT e.enabled THEN e.disabled_reason
                 WHEN $3::text IS NOT NULL THEN $3::text
                 WHEN COALESCE(e.failing_since, now()) <= now() - make_interval(secs => $4)
                     THEN 'failing since ' || to_char(e.failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                          || ' (WA_DELIVER_DISABLE_AFTER); last error: ' || $5
                 ELSE NULL END,
             disabled_at = CASE WHEN e.enabled AND ($3::text IS NOT NULL
                                  OR COALESCE(e.failing_since, now()) <= now() - make_interval(secs => $4))
                                THEN now() ELSE e.disabled_at END,
             updated_at = now()
         WHERE e.id = $1
         RETURNING e.enabled, e.disabled_reason, e.paused_until",
    )
    .bind(head.endpoint_id)
    .bind(paused_until)
    .bind(gone)
    .bind(disable_after.as_secs_f64())
    .bind(describe(attempt))
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(match (was_enabled, state) {
        (true, (false, reason, _)) => EndpointState::Disabled(reason.unwrap_or_default()),
        (false, _) => EndpointState::Inactive,
        (_, (true, _, Some(until))) if until > Utc::now() => EndpointState::Paused,
        _ => EndpointState::Active,
    })
}

/// A short text of what an attempt gave.
pub fn describe(attempt: &AttemptRecord<'_>) -> String {
    match (attempt.status_code, attempt.error) {
        (Some(code), _) => format!("HTTP {code}"),
        (None, Some(error)) => error.to_owned(),
        (None, None) => "unknown".to_owned(),
    }
}

async fn insert_attempt(
    tx: &mut sqlx::PgConnection,
    head: &Head,
    attempt: &AttemptRecord<'_>,
    next_attempt: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO delivery_attempts
             (delivery_id, endpoint_id, event_id, status_code, latency_ms, error, next_attempt_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(head.id)
    .bind(head.endpoint_id)
    .bind(&head.event_id)
    .bind(attempt.status_code.map(i32::from))
    .bind(attempt.latency.as_secs_f64() * 1000.0)
    .bind(attempt.error)
    .bind(next_attempt)
    .execute(tx)
    .await?;
    Ok(())
}

/// Lets a conversation go, for another deliverer or a later round. One
/// that still counts deliveries (its endpoint was paused or disabled in
/// the meantime) waits `idle_for` rather than being claimed again at once.
pub async fn release_lane(
    pool: &PgPool,
    endpoint: i64,
    conversation: &str,
    owner: Uuid,
    idle_for: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE delivery_lanes
         SET leased_until = NULL,
             next_attempt_at = CASE WHEN pending > 0
                 THEN GREATEST(next_attempt_at, now() + make_interval(secs => $4))
                 ELSE next_attempt_at END
         WHERE endpoint_id = $1 AND conversation = $2 AND lease_owner = $3",
    )
    .bind(endpoint)
    .bind(conversation)
    .bind(owner.to_string())
    .bind(idle_for.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}
