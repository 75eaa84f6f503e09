use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::pool::PoolConnection;
use sqlx::{Acquire, PgConnection, PgPool, Postgres};
use wa_payload::{Direction, Event, MessageEvent, OtherEvent, StatusEvent, status_rank};

use crate::StoreError;
use crate::outbox::{self, OutboxRow};

#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

/// The events of one write that were new; the others were already stored.
#[derive(Debug, Default)]
pub struct Persisted {
    pub inserted: HashSet<String>,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Stores `events` (unique by key) in one transaction, one multi-row
    /// statement per table. Rows are sorted by key so that concurrent
    /// writers lock them in the same order and cannot deadlock each other.
    pub async fn persist(&self, events: &[&Event]) -> Result<Persisted, StoreError> {
        let mut connection = self.acquire().await?;
        let persisted = async {
            let mut tx = connection.begin().await?;
            let persisted = write(&mut tx, events).await?;
            tx.commit().await?;
            Ok(persisted)
        }
        .await;
        discard_if_systemic(&mut connection, &persisted);
        persisted
    }

    /// Succeeds when a write would succeed now: the server is neither a
    /// standby nor read-only, and the real statements run with synthetic
    /// events in a transaction that is rolled back, which checks the
    /// privileges, the schema and that the server can take the rows. A bare
    /// `SELECT 1` would pass on a standby.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let mut connection = self.acquire().await?;
        let probed = async {
            let (in_recovery, read_only): (bool, String) = sqlx::query_as(
                "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')",
            )
            .fetch_one(&mut *connection)
            .await?;
            if in_recovery || read_only == "on" {
                return Err(StoreError::read_only(in_recovery));
            }
            let events = probe_events();
            let events: Vec<&Event> = events.iter().collect();
            let mut tx = connection.begin().await?;
            write(&mut tx, &events).await?;
            tx.rollback().await?;
            Ok(())
        }
        .await;
        discard_if_systemic(&mut connection, &probed);
        probed
    }

    async fn acquire(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        self.pool.acquire().await.map_err(StoreError::connecting)
    }
}

/// A connection that met a dependency error is not reused: its session may
/// keep what caused it (a read-only default from before the switch back, a
/// half-closed socket). The pool opens a fresh one.
fn discard_if_systemic<T>(
    connection: &mut PoolConnection<Postgres>,
    result: &Result<T, StoreError>,
) {
    if result.as_ref().is_err_and(StoreError::is_systemic) {
        connection.close_on_drop();
    }
}

async fn write(tx: &mut PgConnection, events: &[&Event]) -> Result<Persisted, StoreError> {
    #[cfg(feature = "failpoints")]
    crate::failpoint::check(events)?;
    let mut messages: Vec<&MessageEvent> = Vec::new();
    let mut statuses: Vec<&StatusEvent> = Vec::new();
    let mut others: Vec<&OtherEvent> = Vec::new();
    for event in events {
        match event {
            Event::Message(m) => messages.push(m),
            Event::Status(s) => statuses.push(s),
            Event::Other(o) => others.push(o),
        }
    }
    messages.sort_by(|a, b| a.wamid.cmp(&b.wamid));
    statuses.sort_by(|a, b| (&a.wamid, &a.status).cmp(&(&b.wamid, &b.status)));
    others.sort_by(|a, b| a.key.cmp(&b.key));

    let mut persisted = Persisted::default();
    let mut outbox_rows = Vec::new();
    if !messages.is_empty() {
        let new = insert_messages(tx, &messages).await?;
        let new_messages: Vec<&MessageEvent> = messages
            .iter()
            .copied()
            .filter(|m| new.contains(&m.wamid))
            .collect();
        upsert_contacts(tx, &new_messages).await?;
        outbox_rows.extend(new_messages.iter().map(|m| OutboxRow::message_created(m)));
        persisted
            .inserted
            .extend(new_messages.iter().map(|m| m.key.clone()));
    }
    if !statuses.is_empty() {
        let new = insert_statuses(tx, &statuses).await?;
        let new_statuses: Vec<&StatusEvent> = statuses
            .iter()
            .copied()
            .filter(|s| new.contains(&(s.wamid.clone(), s.status.clone())))
            .collect();
        let advanced = advance_latest_status(tx, &new_statuses).await?;
        outbox_rows.extend(advanced.into_iter().map(OutboxRow::message_status));
        persisted
            .inserted
            .extend(new_statuses.iter().map(|s| s.key.clone()));
    }
    if !others.is_empty() {
        let new = insert_others(tx, &others).await?;
        persisted.inserted.extend(new);
    }
    outbox::enqueue(tx, outbox_rows).await?;
    Ok(persisted)
}

/// A message, a status of it and an account update, with keys no webhook
/// has: every table a real write touches.
fn probe_events() -> Vec<Event> {
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = format!(
        "{}.{}.{}",
        std::process::id(),
        Utc::now().timestamp_millis(),
        PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let wamid = format!("wamid.wa-ingest-probe.{unique}");
    let value = json!({
        "messaging_product": "whatsapp",
        "metadata": { "display_phone_number": "0", "phone_number_id": "wa-ingest-probe" },
        "contacts": [{ "profile": { "name": "probe" }, "wa_id": format!("probe.{unique}") }],
        "messages": [{
            "from": format!("probe.{unique}"), "id": wamid, "timestamp": "0",
            "type": "text", "text": { "body": "probe" }
        }],
        "statuses": [{
            "id": wamid, "status": "sent", "timestamp": "0",
            "recipient_id": format!("probe.{unique}")
        }]
    });
    let body = json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": "wa-ingest-probe", "time": 0, "changes": [
            { "field": "messages", "value": value },
            { "field": "account_update", "value": { "event": "probe", "nonce": unique } }
        ]}]
    });
    wa_payload::parse_payload(body.to_string().as_bytes())
        .expect("the probe payload is a valid WhatsApp envelope")
}

async fn insert_messages(
    tx: &mut PgConnection,
    messages: &[&MessageEvent],
) -> Result<HashSet<String>, sqlx::Error> {
    let text = |f: fn(&MessageEvent) -> Option<&str>| -> Vec<Option<&str>> {
        messages.iter().map(|m| f(m)).collect()
    };
    let wamids: Vec<&str> = messages.iter().map(|m| m.wamid.as_str()).collect();
    let directions: Vec<&str> = messages.iter().map(|m| m.direction.as_str()).collect();
    let types: Vec<&str> = messages.iter().map(|m| m.message_type.as_str()).collect();
    let timestamps: Vec<Option<DateTime<Utc>>> = messages.iter().map(|m| m.timestamp).collect();
    let raws: Vec<&Value> = messages.iter().map(|m| &m.raw).collect();
    let rows: Vec<(String,)> = sqlx::query_as(
        "INSERT INTO messages (wamid, direction, contact_key, wa_id, user_id, phone_number_id,
                               display_phone_number, message_type, meta_timestamp, raw)
         SELECT t.wamid, t.direction, t.contact_key, t.wa_id, t.user_id, t.phone_number_id,
                t.display_phone_number, t.message_type, t.ts, $10::jsonb -> (t.ord - 1)::int
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::text[], $8::text[], $9::timestamptz[])
              WITH ORDINALITY AS t(wamid, direction, contact_key, wa_id, user_id, phone_number_id,
                                   display_phone_number, message_type, ts, ord)
         ORDER BY t.ord
         ON CONFLICT (wamid) DO NOTHING
         RETURNING wamid",
    )
    .bind(&wamids)
    .bind(&directions)
    .bind(text(|m| m.contact.key()))
    .bind(text(|m| m.contact.wa_id.as_deref()))
    .bind(text(|m| m.contact.user_id.as_deref()))
    .bind(text(|m| m.phone_number_id.as_deref()))
    .bind(text(|m| m.display_phone_number.as_deref()))
    .bind(&types)
    .bind(&timestamps)
    .bind(sqlx::types::Json(&raws))
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().map(|(wamid,)| wamid).collect())
}

/// One row per contact: the earliest and latest sighting in this batch and
/// the profile name of the latest. `last_seen_at` only moves forward, and the
/// name is replaced only by a newer message's.
async fn upsert_contacts(
    tx: &mut PgConnection,
    messages: &[&MessageEvent],
) -> Result<(), sqlx::Error> {
    struct Sighting<'a> {
        wa_id: Option<&'a str>,
        user_id: Option<&'a str>,
        profile_name: Option<&'a str>,
        first: Option<DateTime<Utc>>,
        last: Option<DateTime<Utc>>,
    }
    let mut contacts: BTreeMap<&str, Sighting<'_>> = BTreeMap::new();
    for message in messages
        .iter()
        .filter(|m| m.direction == Direction::Inbound)
    {
        let Some(key) = message.contact.key() else {
            continue;
        };
        let contact = &message.contact;
        let sighting = contacts.entry(key).or_insert(Sighting {
            wa_id: None,
            user_id: None,
            profile_name: None,
            first: message.timestamp,
            last: message.timestamp,
        });
        sighting.wa_id = sighting.wa_id.or(contact.wa_id.as_deref());
        sighting.user_id = sighting.user_id.or(contact.user_id.as_deref());
        sighting.first = sighting.first.min(message.timestamp).or(message.timestamp);
        if message.timestamp >= sighting.last {
            sighting.last = message.timestamp;
            sighting.profile_name = contact.profile_name.as_deref().or(sighting.profile_name);
        }
    }
    if contacts.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = contacts.keys().copied().collect();
    let values = contacts.values();
    let wa_ids: Vec<Option<&str>> = values.clone().map(|s| s.wa_id).collect();
    let user_ids: Vec<Option<&str>> = values.clone().map(|s| s.user_id).collect();
    let names: Vec<Option<&str>> = values.clone().map(|s| s.profile_name).collect();
    let firsts: Vec<Option<DateTime<Utc>>> = values.clone().map(|s| s.first).collect();
    let lasts: Vec<Option<DateTime<Utc>>> = values.map(|s| s.last).collect();
    sqlx::query(
        "INSERT INTO contacts AS c (contact_key, wa_id, user_id, profile_name, first_seen_at, last_seen_at)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[],
                              $5::timestamptz[], $6::timestamptz[])
         ON CONFLICT (contact_key) DO UPDATE SET
             wa_id = COALESCE(c.wa_id, EXCLUDED.wa_id),
             user_id = COALESCE(c.user_id, EXCLUDED.user_id),
             profile_name = CASE
                 WHEN EXCLUDED.last_seen_at >= c.last_seen_at OR c.last_seen_at IS NULL
                 THEN COALESCE(EXCLUDED.profile_name, c.profile_name)
                 ELSE c.profile_name END,
             first_seen_at = LEAST(c.first_seen_at, EXCLUDED.first_seen_at),
             last_seen_at = GREATEST(c.last_seen_at, EXCLUDED.last_seen_at),
             updated_at = now()",
    )
    .bind(&keys)
    .bind(&wa_ids)
    .bind(&user_ids)
    .bind(&names)
    .bind(&firsts)
    .bind(&lasts)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_statuses(
    tx: &mut PgConnection,
    statuses: &[&StatusEvent],
) -> Result<HashSet<(String, String)>, sqlx::Error> {
    let text = |f: fn(&StatusEvent) -> Option<&str>| -> Vec<Option<&str>> {
        statuses.iter().map(|s| f(s)).collect()
    };
    let json = |f: fn(&StatusEvent) -> Option<&Value>| -> sqlx::types::Json<Vec<Option<&Value>>> {
        sqlx::types::Json(statuses.iter().map(|s| f(s)).collect())
    };
    let wamids: Vec<&str> = statuses.iter().map(|s| s.wamid.as_str()).collect();
    let names: Vec<&str> = statuses.iter().map(|s| s.status.as_str()).collect();
    let timestamps: Vec<Option<DateTime<Utc>>> = statuses.iter().map(|s| s.timestamp).collect();
    let raws: Vec<&Value> = statuses.iter().map(|s| &s.raw).collect();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO message_statuses (wamid, status, meta_timestamp, recipient_id,
                                       recipient_user_id, contact_key, phone_number_id,
                                       errors, conversation, pricing, raw)
         SELECT u.wamid, u.status, u.ts, u.recipient_id, u.recipient_user_id, u.contact_key,
                u.phone_number_id, u.errors->u.i, u.conversation->u.i, u.pricing->u.i, u.raw->u.i
         FROM (SELECT t.*, (t.ord - 1)::int AS i, $8::jsonb AS errors, $9::jsonb AS conversation,
                      $10::jsonb AS pricing, $11::jsonb AS raw
               FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],
                           $6::text[], $7::text[])
                    WITH ORDINALITY AS t(wamid, status, ts, recipient_id, recipient_user_id,
                                         contact_key, phone_number_id, ord)) u
         ORDER BY u.ord
         ON CONFLICT (wamid, status) DO NOTHING
         RETURNING wamid, status",
    )
    .bind(&wamids)
    .bind(&names)
    .bind(&timestamps)
    .bind(text(|s| s.contact.wa_id.as_deref()))
    .bind(text(|s| s.contact.user_id.as_deref()))
    .bind(text(|s| s.contact.key()))
    .bind(text(|s| s.phone_number_id.as_deref()))
    .bind(json(|s| s.errors.as_ref()))
    .bind(json(|s| s.conversation.as_ref()))
    .bind(json(|s| s.pricing.as_ref()))
    .bind(sqlx::types::Json(&raws))
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Moves each wamid's latest status forward to the highest-ranked status
/// that was newly stored; a lower or equal rank never replaces a higher one,
/// whatever the arrival order. Returns the statuses that moved it.
async fn advance_latest_status<'a>(
    tx: &mut PgConnection,
    statuses: &[&'a StatusEvent],
) -> Result<Vec<&'a StatusEvent>, sqlx::Error> {
    let mut best: BTreeMap<&str, &'a StatusEvent> = BTreeMap::new();
    for status in statuses {
        let rank = status_rank(&status.status);
        best.entry(&status.wamid)
            .and_modify(|current| {
                if rank > status_rank(&current.status) {
                    *current = status;
                }
            })
            .or_insert(status);
    }
    if best.is_empty() {
        return Ok(Vec::new());
    }
    let wamids: Vec<&str> = best.keys().copied().collect();
    let names: Vec<&str> = best.values().map(|s| s.status.as_str()).collect();
    let ranks: Vec<i16> = best.values().map(|s| status_rank(&s.status)).collect();
    let timestamps: Vec<Option<DateTime<Utc>>> = best.values().map(|s| s.timestamp).collect();
    let advanced: Vec<(String,)> = sqlx::query_as(
        "INSERT INTO message_latest_status AS l (wamid, status, status_rank, meta_timestamp)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::int2[], $4::timestamptz[])
         ON CONFLICT (wamid) DO UPDATE SET
             status = EXCLUDED.status,
             status_rank = EXCLUDED.status_rank,
             meta_timestamp = EXCLUDED.meta_timestamp,
             updated_at = now()
         WHERE l.status_rank < EXCLUDED.status_rank
         RETURNING wamid",
    )
    .bind(&wamids)
    .bind(&names)
    .bind(&ranks)
    .bind(&timestamps)
    .fetch_all(&mut *tx)
    .await?;
    Ok(advanced
        .into_iter()
        .filter_map(|(wamid,): (String,)| best.get(wamid.as_str()).copied())
        .collect())
}

async fn insert_others(
    tx: &mut PgConnection,
    others: &[&OtherEvent],
) -> Result<Vec<String>, sqlx::Error> {
    let keys: Vec<&str> = others.iter().map(|o| o.key.as_str()).collect();
    let fields: Vec<&str> = others.iter().map(|o| o.field.as_str()).collect();
    let accounts: Vec<Option<&str>> = others.iter().map(|o| o.account_id.as_deref()).collect();
    let timestamps: Vec<Option<DateTime<Utc>>> = others.iter().map(|o| o.timestamp).collect();
    let raws: Vec<&Value> = others.iter().map(|o| &o.raw).collect();
    let rows: Vec<(String,)> = sqlx::query_as(
        "INSERT INTO webhook_events (event_key, field, account_id, meta_timestamp, raw)
         SELECT t.key, t.field, t.account_id, t.ts, $5::jsonb -> (t.ord - 1)::int
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[])
              WITH ORDINALITY AS t(key, field, account_id, ts, ord)
         ORDER BY t.ord
         ON CONFLICT (event_key) DO NOTHING
         RETURNING event_key",
    )
    .bind(&keys)
    .bind(&fields)
    .bind(&accounts)
    .bind(&timestamps)
    .bind(sqlx::types::Json(&raws))
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().map(|(key,)| key).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_writes_a_message_a_status_and_another_event() {
        let events = probe_events();
        assert!(events.iter().any(|e| matches!(e, Event::Message(_))));
        assert!(events.iter().any(|e| matches!(e, Event::Status(_))));
        assert!(events.iter().any(|e| matches!(e, Event::Other(_))));
        let again = probe_events();
        assert_ne!(
            events[0].key(),
            again[0].key(),
            "each probe has keys of its own"
        );
    }
}
