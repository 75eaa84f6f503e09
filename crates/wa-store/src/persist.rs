use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashMapExt, HashSet};
use serde_json::json;
use serde_json::value::RawValue;
use sqlx::pool::PoolConnection;
use sqlx::{Acquire, PgConnection, PgPool, Postgres};
use wa_payload::{
    Event, GroupEvent, MessageEvent, OtherEvent, ParticipantChange, RawItem, StatusEvent,
    status_rank,
};

use crate::StoreError;
use crate::database::answered;
use crate::identity::{self, ContactChanges, Directory, Sighting};
use crate::outbox::{self, OutboxRow, ParticipantView};

#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

/// How long a write waits for a lock another session holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// The session's `lock_timeout` (the worker's: 5 s).
    Session,
    /// A quarter of a second, many times as long as a worker's own batch
    /// holds its rows: for the deliveries of a batch that has waited out
    /// the session's bound, tried one at a time. Only those that need the
    /// held rows fail, each in a moment rather than in 5 s.
    Brief,
}

/// The events of one write that were new (by key, borrowed from the
/// events written); the others were already stored.
#[derive(Debug, Default)]
pub struct Persisted<'a> {
    pub inserted: HashSet<&'a str>,
    /// What resolving the batch's users did to the contacts table.
    pub contacts: ContactChanges,
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
    /// writers lock them in the same order and cannot deadlock each other;
    /// the users the events name are resolved to their contact records
    /// first (see [`crate::identity`]), which also locks in one order.
    #[tracing::instrument(name = "store", skip_all, fields(events = events.len()))]
    pub async fn persist<'a>(
        &self,
        events: &[&'a Event],
        lock_wait: LockWait,
    ) -> Result<Persisted<'a>, StoreError> {
        let mut connection = self.acquire().await?;
        let persisted = async {
            let mut tx = answered(connection.begin()).await?;
            if lock_wait == LockWait::Brief {
                answered(sqlx::raw_sql("SET LOCAL lock_timeout = 250").execute(&mut *tx)).await?;
            }
            let persisted = answered(write(&mut tx, events)).await?;
            // A frozen worker, not a frozen server: outside the bound.
            #[cfg(feature = "failpoints")]
            crate::failpoint::hold_before_commit(events).await;
            answered(tx.commit()).await?;
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
        let probed = answered(async {
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
        })
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

async fn write<'a>(
    tx: &mut PgConnection,
    events: &[&'a Event],
) -> Result<Persisted<'a>, StoreError> {
    #[cfg(feature = "failpoints")]
    crate::failpoint::check(events)?;
    let mut messages: Vec<&'a MessageEvent> = Vec::new();
    let mut statuses: Vec<&'a StatusEvent> = Vec::new();
    let mut groups: Vec<&'a GroupEvent> = Vec::new();
    let mut others: Vec<&'a OtherEvent> = Vec::new();
    for event in events {
        match event {
            Event::Message(m) => messages.push(m),
            Event::Status(s) => statuses.push(s),
            Event::Group(g) => groups.push(g),
            Event::Other(o) => others.push(o),
        }
    }
    messages.sort_by(|a, b| a.wamid.cmp(&b.wamid));
    statuses.sort_by(|a, b| {
        (&a.wamid, &a.status, &a.participant).cmp(&(&b.wamid, &b.status, &b.participant))
    });
    groups.sort_by(|a, b| a.key.cmp(&b.key));
    others.sort_by(|a, b| a.key.cmp(&b.key));

    let mut persisted = Persisted::default();
    let mut outbox_rows = Vec::new();
    let (contacts, changes) =
        identity::resolve(tx, &sightings(&messages, &statuses, &groups)).await?;
    persisted.contacts = changes;
    // Each item is written as JSON once: its row and its downstream event
    // take the same text.
    let message_items = items_json(&messages, |m| &m.raw);
    let status_items = items_json(&statuses, |s| &s.raw);
    let group_items = items_json(&groups, |g| &g.raw);
    if !messages.is_empty() {
        let new = insert_messages(tx, &messages, &message_items, &contacts).await?;
        for (message, item) in messages.iter().zip(&message_items) {
            if new.contains(&message.wamid) {
                let contact_key = contacts.key_of(&message.contact);
                outbox_rows.push(OutboxRow::message_created(message, item, contact_key));
                persisted.inserted.insert(&message.key);
            }
        }
    }
    // Outlives the block: the receipts' outbox rows borrow their states.
    let participant_states: HashMap<(String, String), String>;
    if !statuses.is_empty() {
        let returned = insert_statuses(tx, &statuses, &status_items, &contacts).await?;
        let new: HashSet<(&str, &str, &str)> = returned
            .iter()
            .map(|(wamid, status, participant)| {
                (wamid.as_str(), status.as_str(), participant.as_str())
            })
            .collect();
        let new_statuses: Vec<&StatusEvent> = statuses
            .iter()
            .copied()
            .filter(|s| new.contains(&status_row(s)))
            .collect();
        let item_of: HashMap<&str, &RawValue> = statuses
            .iter()
            .zip(&status_items)
            .map(|(status, item)| (status.key.as_str(), &**item))
            .collect();
        let (receipts, own): (Vec<&StatusEvent>, Vec<&StatusEvent>) =
            new_statuses.iter().partition(|s| s.participant.is_some());
        // A message's own status gives an event when it advances.
        for status in advance_latest_status(tx, &own).await? {
            let contact_key = contacts.key_of(&status.contact);
            let item = item_of[status.key.as_str()];
            outbox_rows.push(OutboxRow::message_status(status, item, contact_key, None));
        }
        // Every group receipt is news (who got or read it, when), with
        // the participant's state, which never goes backwards.
        participant_states = advance_participant_status(tx, &receipts, &contacts).await?;
        for receipt in receipts {
            let contact_key = contacts.key_of(&receipt.contact);
            let state = participant_states
                .get(&participant_row(receipt))
                .map(String::as_str);
            let item = item_of[receipt.key.as_str()];
            outbox_rows.push(OutboxRow::message_status(receipt, item, contact_key, state));
        }
        persisted
            .inserted
            .extend(new_statuses.iter().map(|s| s.key.as_str()));
    }
    if !groups.is_empty() {
        let new = insert_groups(tx, &groups, &group_items).await?;
        let (new_groups, new_items): (Vec<&GroupEvent>, Vec<&RawValue>) = groups
            .iter()
            .copied()
            .zip(group_items.iter().map(|item| &**item))
            .filter(|(g, _)| new.contains(&g.key))
            .unzip();
        update_membership(tx, &new_groups, &contacts).await?;
        for (group, item) in new_groups.iter().zip(new_items) {
            let participants = group
                .participants
                .iter()
                .map(|p| {
                    ParticipantView::of(p.change.as_str(), &p.contact, contacts.key_of(&p.contact))
                })
                .collect();
            outbox_rows.push(OutboxRow::group_event(group, item, participants));
        }
        persisted
            .inserted
            .extend(new_groups.iter().map(|g| g.key.as_str()));
    }
    if !others.is_empty() {
        let new = insert_others(tx, &others).await?;
        persisted.inserted.extend(
            others
                .iter()
                .filter(|o| new.contains(&o.key))
                .map(|o| o.key.as_str()),
        );
    }
    outbox::enqueue(tx, outbox_rows).await?;
    Ok(persisted)
}

/// A message, a status of it, a group receipt, a group membership change
/// and an account update, with keys no webhook has: every table a real
/// write touches.
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
        }, {
            "id": wamid, "status": "read", "timestamp": "0",
            "recipient_id": format!("probe-group.{unique}"), "recipient_type": "group",
            "recipient_participant_id": format!("probe.{unique}")
        }]
    });
    let group = json!({
        "messaging_product": "whatsapp",
        "metadata": { "display_phone_number": "0", "phone_number_id": "wa-ingest-probe" },
        "groups": [{
            "timestamp": "0", "group_id": format!("probe-group.{unique}"),
            "type": "group_participants_add",
            "added_participants": [{ "wa_id": format!("probe.{unique}") }]
        }]
    });
    let body = json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": "wa-ingest-probe", "time": 0, "changes": [
            { "field": "messages", "value": value },
            { "field": "group_participants_update", "value": group },
            { "field": "account_update", "value": { "event": "probe", "nonce": unique } }
        ]}]
    });
    wa_payload::parse_payload(body.to_string().as_bytes())
        .expect("the probe payload is a valid WhatsApp envelope")
}

/// Every item as JSON text, in the order of `events`.
fn items_json<'a, E>(events: &[&'a E], item: impl Fn(&'a E) -> &'a RawItem) -> Vec<&'a RawValue> {
    events.iter().map(|event| item(event).as_raw()).collect()
}

/// The unique identity of a status row.
fn status_row(status: &StatusEvent) -> (&str, &str, &str) {
    (
        &status.wamid,
        &status.status,
        status.participant.as_deref().unwrap_or(""),
    )
}

fn participant_row(status: &StatusEvent) -> (String, String) {
    (
        status.wamid.clone(),
        status.participant.clone().unwrap_or_default(),
    )
}

/// Every user the events name, at the event's Meta time. A participant the
/// business failed to add or remove is not a sighting: the id may be wrong.
fn sightings<'a>(
    messages: &[&'a MessageEvent],
    statuses: &[&'a StatusEvent],
    groups: &[&'a GroupEvent],
) -> Vec<Sighting<'a>> {
    let messages = messages.iter().map(|m| Sighting {
        contact: &m.contact,
        at: m.timestamp,
    });
    let statuses = statuses.iter().map(|s| Sighting {
        contact: &s.contact,
        at: s.timestamp,
    });
    let participants = groups.iter().flat_map(|g| {
        g.participants
            .iter()
            .filter(|p| p.change != ParticipantChange::Failed)
            .map(|p| Sighting {
                contact: &p.contact,
                at: g.timestamp,
            })
    });
    messages.chain(statuses).chain(participants).collect()
}

async fn insert_messages(
    tx: &mut PgConnection,
    messages: &[&MessageEvent],
    items: &[&RawValue],
    contacts: &Directory,
) -> Result<HashSet<String>, sqlx::Error> {
    let text = |f: fn(&MessageEvent) -> Option<&str>| -> Vec<Option<&str>> {
        messages.iter().map(|m| f(m)).collect()
    };
    let wamids: Vec<&str> = messages.iter().map(|m| m.wamid.as_str()).collect();
    let directions: Vec<&str> = messages.iter().map(|m| m.direction.as_str()).collect();
    let types: Vec<&str> = messages.iter().map(|m| m.message_type.as_str()).collect();
    let timestamps: Vec<Option<DateTime<Utc>>> = messages.iter().map(|m| m.timestamp).collect();
    let contact_keys: Vec<Option<&str>> = messages
        .iter()
        .map(|m| contacts.key_of(&m.contact))
        .collect();
    let rows: Vec<(String,)> = sqlx::query_as(
        "INSERT INTO messages (wamid, direction, contact_key, wa_id, user_id, phone_number_id,
                               display_phone_number, message_type, meta_timestamp, group_id, raw)
         SELECT t.wamid, t.direction, t.contact_key, t.wa_id, t.user_id, t.phone_number_id,
                t.display_phone_number, t.message_type, t.ts, t.group_id,
                $11::jsonb -> (t.ord - 1)::int
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::text[], $8::text[], $9::timestamptz[], $10::text[])
              WITH ORDINALITY AS t(wamid, direction, contact_key, wa_id, user_id, phone_number_id,
                                   display_phone_number, message_type, ts, group_id, ord)
         ORDER BY t.ord
         ON CONFLICT (wamid) DO NOTHING
         RETURNING wamid",
    )
    .bind(&wamids)
    .bind(&directions)
    .bind(&contact_keys)
    .bind(text(|m| m.contact.wa_id.as_deref()))
    .bind(text(|m| m.contact.user_id.as_deref()))
    .bind(text(|m| m.phone_number_id.as_deref()))
    .bind(text(|m| m.display_phone_number.as_deref()))
    .bind(&types)
    .bind(&timestamps)
    .bind(text(|m| m.group_id.as_deref()))
    .bind(sqlx::types::Json(items))
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().map(|(wamid,)| wamid).collect())
}

/// `errors`, `conversation` and `pricing` are read from the item in SQL:
/// JSON `null` when the item has none, as they were when sent beside it.
async fn insert_statuses(
    tx: &mut PgConnection,
    statuses: &[&StatusEvent],
    items: &[&RawValue],
    contacts: &Directory,
) -> Result<Vec<(String, String, String)>, sqlx::Error> {
    let text = |f: fn(&StatusEvent) -> Option<&str>| -> Vec<Option<&str>> {
        statuses.iter().map(|s| f(s)).collect()
    };
    let wamids: Vec<&str> = statuses.iter().map(|s| s.wamid.as_str()).collect();
    let names: Vec<&str> = statuses.iter().map(|s| s.status.as_str()).collect();
    let participants: Vec<&str> = statuses
        .iter()
        .map(|s| s.participant.as_deref().unwrap_or(""))
        .collect();
    let timestamps: Vec<Option<DateTime<Utc>>> = statuses.iter().map(|s| s.timestamp).collect();
    let contact_keys: Vec<Option<&str>> = statuses
        .iter()
        .map(|s| contacts.key_of(&s.contact))
        .collect();
    sqlx::query_as(
        "INSERT INTO message_statuses (wamid, status, participant, meta_timestamp, recipient_id,
                                       recipient_user_id, recipient_parent_user_id, group_id,
                                       contact_key, phone_number_id, errors, conversation,
                                       pricing, raw)
         SELECT u.wamid, u.status, u.participant, u.ts, u.recipient_id, u.recipient_user_id,
                u.recipient_parent_user_id, u.group_id, u.contact_key, u.phone_number_id,
                COALESCE(u.item->'errors', 'null'::jsonb),
                COALESCE(u.item->'conversation', 'null'::jsonb),
                COALESCE(u.item->'pricing', 'null'::jsonb), u.item
         FROM (SELECT t.*, $11::jsonb -> (t.ord - 1)::int AS item
               FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[],
                           $6::text[], $7::text[], $8::text[], $9::text[], $10::text[])
                    WITH ORDINALITY AS t(wamid, status, participant, ts, recipient_id,
                                         recipient_user_id, recipient_parent_user_id, group_id,
                                         contact_key, phone_number_id, ord)) u
         ORDER BY u.ord
         ON CONFLICT (wamid, status, participant) DO NOTHING
         RETURNING wamid, status, participant",
    )
    .bind(&wamids)
    .bind(&names)
    .bind(&participants)
    .bind(&timestamps)
    .bind(text(|s| s.contact.wa_id.as_deref()))
    .bind(text(|s| s.contact.user_id.as_deref()))
    .bind(text(|s| s.contact.parent_user_id.as_deref()))
    .bind(text(|s| s.group_id.as_deref()))
    .bind(&contact_keys)
    .bind(text(|s| s.phone_number_id.as_deref()))
    .bind(sqlx::types::Json(items))
    .fetch_all(&mut *tx)
    .await
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

/// Moves each group participant's latest status forward, per (wamid,
/// participant) exactly as [`advance_latest_status`] does per wamid, and
/// returns every touched participant's state after the move.
async fn advance_participant_status(
    tx: &mut PgConnection,
    receipts: &[&StatusEvent],
    contacts: &Directory,
) -> Result<HashMap<(String, String), String>, sqlx::Error> {
    let mut best: BTreeMap<(String, String), &StatusEvent> = BTreeMap::new();
    for receipt in receipts {
        let rank = status_rank(&receipt.status);
        best.entry(participant_row(receipt))
            .and_modify(|current| {
                if rank > status_rank(&current.status) {
                    *current = receipt;
                }
            })
            .or_insert(receipt);
    }
    if best.is_empty() {
        return Ok(HashMap::new());
    }
    let wamids: Vec<&str> = best.keys().map(|(wamid, _)| wamid.as_str()).collect();
    let participants: Vec<&str> = best.keys().map(|(_, p)| p.as_str()).collect();
    let groups: Vec<Option<&str>> = best.values().map(|s| s.group_id.as_deref()).collect();
    let contact_keys: Vec<Option<&str>> =
        best.values().map(|s| contacts.key_of(&s.contact)).collect();
    let names: Vec<&str> = best.values().map(|s| s.status.as_str()).collect();
    let ranks: Vec<i16> = best.values().map(|s| status_rank(&s.status)).collect();
    let timestamps: Vec<Option<DateTime<Utc>>> = best.values().map(|s| s.timestamp).collect();
    let states: Vec<(String, String, String)> = sqlx::query_as(
        "INSERT INTO message_participant_status AS l
                (wamid, participant, group_id, contact_key, status, status_rank, meta_timestamp)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::int2[], $7::timestamptz[])
         ON CONFLICT (wamid, participant) DO UPDATE SET
             group_id = COALESCE(l.group_id, EXCLUDED.group_id),
             contact_key = COALESCE(l.contact_key, EXCLUDED.contact_key),
             status = CASE WHEN EXCLUDED.status_rank > l.status_rank
                           THEN EXCLUDED.status ELSE l.status END,
             meta_timestamp = CASE WHEN EXCLUDED.status_rank > l.status_rank
                                   THEN EXCLUDED.meta_timestamp ELSE l.meta_timestamp END,
             updated_at = CASE WHEN EXCLUDED.status_rank > l.status_rank
                               THEN now() ELSE l.updated_at END,
             status_rank = GREATEST(l.status_rank, EXCLUDED.status_rank)
         RETURNING wamid, participant, status",
    )
    .bind(&wamids)
    .bind(&participants)
    .bind(&groups)
    .bind(&contact_keys)
    .bind(&names)
    .bind(&ranks)
    .bind(&timestamps)
    .fetch_all(&mut *tx)
    .await?;
    Ok(states
        .into_iter()
        .map(|(wamid, participant, status)| ((wamid, participant), status))
        .collect())
}

async fn insert_groups(
    tx: &mut PgConnection,
    groups: &[&GroupEvent],
    items: &[&RawValue],
) -> Result<HashSet<String>, sqlx::Error> {
    let text = |f: fn(&GroupEvent) -> Option<&str>| -> Vec<Option<&str>> {
        groups.iter().map(|g| f(g)).collect()
    };
    let keys: Vec<&str> = groups.iter().map(|g| g.key.as_str()).collect();
    let fields: Vec<&str> = groups.iter().map(|g| g.field.as_str()).collect();
    let timestamps: Vec<Option<DateTime<Utc>>> = groups.iter().map(|g| g.timestamp).collect();
    let rows: Vec<(String,)> = sqlx::query_as(
        "INSERT INTO group_events (event_key, field, group_id, update_type, request_id,
                                   join_request_id, account_id, phone_number_id,
                                   meta_timestamp, raw)
         SELECT t.key, t.field, t.group_id, t.update_type, t.request_id, t.join_request_id,
                t.account_id, t.phone_number_id, t.ts, $10::jsonb -> (t.ord - 1)::int
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::timestamptz[])
              WITH ORDINALITY AS t(key, field, group_id, update_type, request_id,
                                   join_request_id, account_id, phone_number_id, ts, ord)
         ORDER BY t.ord
         ON CONFLICT (event_key) DO NOTHING
         RETURNING event_key",
    )
    .bind(&keys)
    .bind(&fields)
    .bind(text(|g| g.group_id.as_deref()))
    .bind(text(|g| g.update_type.as_deref()))
    .bind(text(|g| g.request_id.as_deref()))
    .bind(text(|g| g.join_request_id.as_deref()))
    .bind(text(|g| g.account_id.as_deref()))
    .bind(text(|g| g.phone_number_id.as_deref()))
    .bind(&timestamps)
    .bind(sqlx::types::Json(items))
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().map(|(key,)| key).collect())
}

/// A membership change: who, in which group, since when, by which event.
struct MembershipChange<'a> {
    is_member: bool,
    wa_id: Option<&'a str>,
    user_id: Option<&'a str>,
    at: DateTime<Utc>,
    event_key: &'a str,
}

/// Added participants become members, removed ones stop being members. A
/// row moves only to a later change (Meta time, then event key), so replays
/// and out-of-order deliveries leave the latest state.
async fn update_membership(
    tx: &mut PgConnection,
    groups: &[&GroupEvent],
    contacts: &Directory,
) -> Result<(), sqlx::Error> {
    let mut latest: BTreeMap<(&str, &str), MembershipChange<'_>> = BTreeMap::new();
    for group in groups {
        let (Some(group_id), Some(at)) = (group.group_id.as_deref(), group.timestamp) else {
            continue;
        };
        for participant in &group.participants {
            let is_member = match participant.change {
                ParticipantChange::Added => true,
                ParticipantChange::Removed => false,
                _ => continue,
            };
            let Some(contact_key) = contacts.key_of(&participant.contact) else {
                continue;
            };
            let change = MembershipChange {
                is_member,
                wa_id: participant.contact.wa_id.as_deref(),
                user_id: participant.contact.user_id.as_deref(),
                at,
                event_key: &group.key,
            };
            latest
                .entry((group_id, contact_key))
                .and_modify(|current| {
                    if (change.at, change.event_key) > (current.at, current.event_key) {
                        *current = MembershipChange { ..change };
                    }
                })
                .or_insert(change);
        }
    }
    if latest.is_empty() {
        return Ok(());
    }
    let group_ids: Vec<&str> = latest.keys().map(|(g, _)| *g).collect();
    let contact_keys: Vec<&str> = latest.keys().map(|(_, c)| *c).collect();
    let changes = latest.values();
    let members: Vec<bool> = changes.clone().map(|c| c.is_member).collect();
    let wa_ids: Vec<Option<&str>> = changes.clone().map(|c| c.wa_id).collect();
    let user_ids: Vec<Option<&str>> = changes.clone().map(|c| c.user_id).collect();
    let times: Vec<DateTime<Utc>> = changes.clone().map(|c| c.at).collect();
    let event_keys: Vec<&str> = changes.map(|c| c.event_key).collect();
    sqlx::query(concat!(
        "INSERT INTO group_members AS m (group_id, contact_key, is_member, wa_id, user_id,
                                         changed_at, event_key)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bool[], $4::text[], $5::text[],
                              $6::timestamptz[], $7::text[])
         ",
        later_membership_wins!()
    ))
    .bind(&group_ids)
    .bind(&contact_keys)
    .bind(&members)
    .bind(&wa_ids)
    .bind(&user_ids)
    .bind(&times)
    .bind(&event_keys)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_others(
    tx: &mut PgConnection,
    others: &[&OtherEvent],
) -> Result<HashSet<String>, sqlx::Error> {
    let keys: Vec<&str> = others.iter().map(|o| o.key.as_str()).collect();
    let fields: Vec<&str> = others.iter().map(|o| o.field.as_str()).collect();
    let accounts: Vec<Option<&str>> = others.iter().map(|o| o.account_id.as_deref()).collect();
    let timestamps: Vec<Option<DateTime<Utc>>> = others.iter().map(|o| o.timestamp).collect();
    let raws: Vec<&RawValue> = others.iter().map(|o| o.raw.as_raw()).collect();
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
    fn the_probe_writes_every_kind_of_event() {
        let events = probe_events();
        assert!(events.iter().any(|e| matches!(e, Event::Message(_))));
        assert!(events.iter().any(|e| matches!(e, Event::Status(_))));
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Status(s) if s.participant.is_some())),
            "a group receipt"
        );
        assert!(events.iter().any(|e| matches!(e, Event::Group(_))));
        assert!(events.iter().any(|e| matches!(e, Event::Other(_))));
        let again = probe_events();
        assert_ne!(
            events[0].key(),
            again[0].key(),
            "each probe has keys of its own"
        );
    }
}
