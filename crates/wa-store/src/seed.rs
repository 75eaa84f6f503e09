//! Events written straight into the outbox as already released, the way a
//! relay's commit leaves them: the benchmark and the tests feed the
//! deliverer with these without running a relay.

use serde_json::Value;
use sqlx::PgPool;

use crate::StoreError;

/// One downstream event as a relay releases it.
#[derive(Debug, Clone)]
pub struct ReleasedEvent {
    pub event_id: String,
    pub event_type: String,
    pub contact_key: String,
    pub sequence: i64,
    pub payload: Value,
}

/// Writes `events` into the outbox, then marks them published in one
/// statement, as the relay's commit does, so the fan-out trigger runs.
pub async fn release(pool: &PgPool, events: &[ReleasedEvent]) -> Result<(), StoreError> {
    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let keys: Vec<&str> = events.iter().map(|e| e.contact_key.as_str()).collect();
    let sequences: Vec<i64> = events.iter().map(|e| e.sequence).collect();
    let payloads: Vec<&Value> = events.iter().map(|e| &e.payload).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, contact_key, wamid, payload)
         SELECT id, kind, key, id, payload
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::jsonb[]) AS t(id, kind, key, payload)",
    )
    .bind(&ids)
    .bind(&types)
    .bind(&keys)
    .bind(&payloads)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE outbox SET published_at = now(), sequence = u.seq, late = false
         FROM UNNEST($1::text[], $2::int8[]) AS u(id, seq) WHERE outbox.event_id = u.id",
    )
    .bind(&ids)
    .bind(&sequences)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
