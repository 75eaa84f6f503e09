//! The transactional outbox: downstream events written with the rows they
//! announce, and released by the relay per contact in Meta-timestamp order.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use wa_payload::{Contact, MessageEvent, StatusEvent};

use crate::StoreError;

pub const MESSAGE_CREATED: &str = "message.created";
pub const MESSAGE_STATUS: &str = "message.status";

/// One event to enqueue.
pub(crate) struct OutboxRow<'a> {
    event_id: &'a str,
    event_type: &'static str,
    contact_key: &'a str,
    wamid: &'a str,
    timestamp: Option<DateTime<Utc>>,
    payload: Value,
}

impl<'a> OutboxRow<'a> {
    pub(crate) fn message_created(message: &'a MessageEvent) -> Self {
        let data = json!({
            "direction": message.direction.as_str(),
            "message_type": message.message_type,
            "item": message.raw,
        });
        Self::new(
            &message.key,
            MESSAGE_CREATED,
            &message.wamid,
            &message.contact,
            message.timestamp,
            message.phone_number_id.as_deref(),
            data,
        )
    }

    pub(crate) fn message_status(status: &'a StatusEvent) -> Self {
        let data = json!({ "status": status.status, "item": status.raw });
        Self::new(
            &status.key,
            MESSAGE_STATUS,
            &status.wamid,
            &status.contact,
            status.timestamp,
            status.phone_number_id.as_deref(),
            data,
        )
    }

    fn new(
        event_id: &'a str,
        event_type: &'static str,
        wamid: &'a str,
        contact: &'a Contact,
        timestamp: Option<DateTime<Utc>>,
        phone_number_id: Option<&str>,
        data: Value,
    ) -> Self {
        let contact_key = contact.key().unwrap_or("");
        Self {
            event_id,
            event_type,
            contact_key,
            wamid,
            timestamp,
            payload: json!({
                "id": event_id,
                "type": event_type,
                "wamid": wamid,
                "contact": { "key": contact_key, "wa_id": contact.wa_id, "user_id": contact.user_id },
                "phone_number_id": phone_number_id,
                "timestamp": timestamp,
                "data": data,
            }),
        }
    }
}

pub(crate) async fn enqueue(
    tx: &mut PgConnection,
    mut rows: Vec<OutboxRow<'_>>,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    rows.sort_by(|a, b| a.event_id.cmp(b.event_id));
    let contacts: BTreeSet<&str> = rows.iter().map(|r| r.contact_key).collect();
    let contacts: Vec<&str> = contacts.into_iter().collect();
    sqlx::query(
        "INSERT INTO outbox_contacts (contact_key) SELECT * FROM UNNEST($1::text[])
         ON CONFLICT DO NOTHING",
    )
    .bind(&contacts)
    .execute(&mut *tx)
    .await?;
    let ids: Vec<&str> = rows.iter().map(|r| r.event_id).collect();
    let types: Vec<&str> = rows.iter().map(|r| r.event_type).collect();
    let keys: Vec<&str> = rows.iter().map(|r| r.contact_key).collect();
    let wamids: Vec<&str> = rows.iter().map(|r| r.wamid).collect();
    let timestamps: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.timestamp).collect();
    let payloads: Vec<&Value> = rows.iter().map(|r| &r.payload).collect();
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, contact_key, wamid, meta_timestamp, payload)
         SELECT t.id, t.type, t.contact_key, t.wamid, t.ts, $6::jsonb -> (t.ord - 1)::int
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
              WITH ORDINALITY AS t(id, type, contact_key, wamid, ts, ord)
         ORDER BY t.ord
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&types)
    .bind(&keys)
    .bind(&wamids)
    .bind(&timestamps)
    .bind(sqlx::types::Json(&payloads))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A pending event as the relay sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingEvent {
    pub id: i64,
    pub event_id: String,
    pub event_type: String,
    pub contact_key: String,
    pub wamid: String,
    pub meta_timestamp: Option<DateTime<Utc>>,
    pub payload: Value,
    /// Older than the reorder window.
    pub due: bool,
    /// Seconds since it was stored.
    pub age_seconds: f64,
}

/// A contact's release position, locked for the claim's transaction.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ContactCursor {
    pub contact_key: String,
    pub last_sequence: i64,
    pub last_timestamp: Option<DateTime<Utc>>,
    pub last_wamid: Option<String>,
}

/// An event the relay has published, with what it was given.
pub struct Released {
    pub id: i64,
    pub sequence: i64,
    pub late: bool,
}

/// The contacts a relay holds and their pending events, inside the
/// transaction that keeps other relays off them until `commit`.
pub struct OutboxClaim {
    tx: Transaction<'static, Postgres>,
    pub contacts: Vec<ContactCursor>,
    /// Sorted by contact, then Meta timestamp, then wamid.
    pub events: Vec<PendingEvent>,
}

/// Locks up to `max_contacts` contacts that have an event older than
/// `window` and no other relay holds, and reads their pending events (at
/// most `max_events`).
pub async fn claim(
    pool: &PgPool,
    window: Duration,
    max_contacts: i64,
    max_events: i64,
) -> Result<OutboxClaim, StoreError> {
    let mut tx = pool.begin().await.map_err(StoreError::connecting)?;
    let window_seconds = window.as_secs_f64();
    let contacts: Vec<ContactCursor> = sqlx::query_as(
        "SELECT c.contact_key, c.last_sequence, c.last_timestamp, c.last_wamid
         FROM outbox_contacts c
         WHERE c.contact_key IN (
             SELECT o.contact_key FROM outbox o
             WHERE o.published_at IS NULL
               AND o.created_at <= now() - make_interval(secs => $1)
             ORDER BY o.created_at
             LIMIT 10000)
         ORDER BY c.contact_key
         LIMIT $2
         FOR UPDATE OF c SKIP LOCKED",
    )
    .bind(window_seconds)
    .bind(max_contacts)
    .fetch_all(&mut *tx)
    .await?;
    if contacts.is_empty() {
        return Ok(OutboxClaim {
            tx,
            contacts,
            events: Vec::new(),
        });
    }
    let keys: Vec<&str> = contacts.iter().map(|c| c.contact_key.as_str()).collect();
    let events: Vec<PendingEvent> = sqlx::query_as(
        "SELECT id, event_id, event_type, contact_key, wamid, meta_timestamp, payload,
                created_at <= now() - make_interval(secs => $2) AS due,
                EXTRACT(EPOCH FROM now() - created_at)::float8 AS age_seconds
         FROM outbox
         WHERE published_at IS NULL AND contact_key = ANY($1)
         ORDER BY contact_key, COALESCE(meta_timestamp, created_at), wamid, id
         LIMIT $3",
    )
    .bind(&keys)
    .bind(window_seconds)
    .bind(max_events)
    .fetch_all(&mut *tx)
    .await?;
    Ok(OutboxClaim {
        tx,
        contacts,
        events,
    })
}

impl OutboxClaim {
    /// Marks `released` published and moves each contact's cursor, then
    /// releases the locks.
    pub async fn commit(
        mut self,
        released: &[Released],
        cursors: &[ContactCursor],
    ) -> Result<(), StoreError> {
        if !released.is_empty() {
            let ids: Vec<i64> = released.iter().map(|r| r.id).collect();
            let sequences: Vec<i64> = released.iter().map(|r| r.sequence).collect();
            let lates: Vec<bool> = released.iter().map(|r| r.late).collect();
            sqlx::query(
                "UPDATE outbox SET published_at = now(), sequence = u.sequence, late = u.late
                 FROM UNNEST($1::int8[], $2::int8[], $3::bool[]) AS u(id, sequence, late)
                 WHERE outbox.id = u.id",
            )
            .bind(&ids)
            .bind(&sequences)
            .bind(&lates)
            .execute(&mut *self.tx)
            .await?;
        }
        if !cursors.is_empty() {
            let keys: Vec<&str> = cursors.iter().map(|c| c.contact_key.as_str()).collect();
            let sequences: Vec<i64> = cursors.iter().map(|c| c.last_sequence).collect();
            let timestamps: Vec<Option<DateTime<Utc>>> =
                cursors.iter().map(|c| c.last_timestamp).collect();
            let wamids: Vec<Option<&str>> =
                cursors.iter().map(|c| c.last_wamid.as_deref()).collect();
            sqlx::query(
                "UPDATE outbox_contacts c SET last_sequence = u.seq, last_timestamp = u.ts, last_wamid = u.wamid
                 FROM UNNEST($1::text[], $2::int8[], $3::timestamptz[], $4::text[]) AS u(key, seq, ts, wamid)
                 WHERE c.contact_key = u.key",
            )
            .bind(&keys)
            .bind(&sequences)
            .bind(&timestamps)
            .bind(&wamids)
            .execute(&mut *self.tx)
            .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

/// Deletes published events older than `retention`, at most `limit` at a time.
pub async fn prune(pool: &PgPool, retention: Duration, limit: i64) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM outbox WHERE id IN (
             SELECT id FROM outbox
             WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)
             LIMIT $2)",
    )
    .bind(retention.as_secs_f64())
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
