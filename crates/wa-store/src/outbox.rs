//! The transactional outbox: downstream events written with the rows they
//! announce, and released by the relay per contact (or per group) in
//! Meta-timestamp order.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use wa_payload::{Contact, GroupEvent, MessageEvent, StatusEvent};

use crate::StoreError;
use crate::database::answered;

pub const MESSAGE_CREATED: &str = "message.created";
pub const MESSAGE_STATUS: &str = "message.status";
/// `group_participants_update`: joins, join requests, removals, leaves.
pub const GROUP_PARTICIPANTS_UPDATED: &str = "group.participants_updated";
/// `group_lifecycle_update`: a group created or deleted (or failing to be).
pub const GROUP_LIFECYCLE: &str = "group.lifecycle";
/// `group_settings_update`: subject, description, picture.
pub const GROUP_SETTINGS_UPDATED: &str = "group.settings_updated";
/// `group_status_update`: a group suspended or cleared.
pub const GROUP_STATUS_UPDATED: &str = "group.status_updated";
/// A `group_*` field wa-ingest does not know yet; `data.field` names it.
pub const GROUP_UPDATED: &str = "group.updated";

/// The downstream type of a group webhook field: one per field Meta
/// defines, so that consumers can subscribe to exactly what they handle.
pub fn group_event_type(field: &str) -> &'static str {
    match field {
        "group_participants_update" => GROUP_PARTICIPANTS_UPDATED,
        "group_lifecycle_update" => GROUP_LIFECYCLE,
        "group_settings_update" => GROUP_SETTINGS_UPDATED,
        "group_status_update" => GROUP_STATUS_UPDATED,
        _ => GROUP_UPDATED,
    }
}

/// The key the relay orders and shards by: a group's events (its messages,
/// their receipts, its membership and settings) by the group, so that a
/// consumer renders a group chat in order; a 1:1 chat's by its contact
/// record; `''` when the item names neither.
pub(crate) fn ordering_key<'a>(
    group_id: Option<&str>,
    contact_key: Option<&'a str>,
) -> Cow<'a, str> {
    match (group_id, contact_key) {
        (Some(group), _) => Cow::Owned(format!("group:{group}")),
        (None, Some(contact)) => Cow::Borrowed(contact),
        (None, None) => Cow::Borrowed(""),
    }
}

/// One event to enqueue. Its payload borrows the event it announces and the
/// item's JSON text its row was written with, and is serialized once,
/// straight into the statement's parameter: no copy of the item as a
/// `Value` per event, and the item is not written to JSON a second time.
pub(crate) struct OutboxRow<'a> {
    event_id: &'a str,
    event_type: &'static str,
    ordering_key: Cow<'a, str>,
    /// The wamid; for group events (which have none) the event id, so that
    /// ties in Meta time still sort the same way everywhere.
    sort_id: &'a str,
    timestamp: Option<DateTime<Utc>>,
    wamid: Option<&'a str>,
    group_id: Option<&'a str>,
    contact: Option<ContactView<'a>>,
    phone_number_id: Option<&'a str>,
    data: Data<'a>,
}

/// A user as downstream events show them: their contact record's key and
/// the ids the item gave.
#[derive(Serialize)]
struct ContactView<'a> {
    key: &'a str,
    wa_id: Option<&'a str>,
    user_id: Option<&'a str>,
    parent_user_id: Option<&'a str>,
    username: Option<&'a str>,
}

impl<'a> ContactView<'a> {
    fn of(contact: &'a Contact, contact_key: Option<&'a str>) -> Self {
        Self {
            key: contact_key.unwrap_or(""),
            wa_id: contact.wa_id.as_deref(),
            user_id: contact.user_id.as_deref(),
            parent_user_id: contact.parent_user_id.as_deref(),
            username: contact.username.as_deref(),
        }
    }
}

/// A participant of a group item as downstream events show it.
#[derive(Serialize)]
pub(crate) struct ParticipantView<'a> {
    change: &'static str,
    contact: ContactView<'a>,
}

impl<'a> ParticipantView<'a> {
    pub(crate) fn of(
        change: &'static str,
        contact: &'a Contact,
        contact_key: Option<&'a str>,
    ) -> Self {
        Self {
            change,
            contact: ContactView::of(contact, contact_key),
        }
    }
}

/// `data` of a downstream event: what its type adds to the envelope.
#[derive(Serialize)]
#[serde(untagged)]
enum Data<'a> {
    Message {
        direction: &'static str,
        message_type: &'a str,
        item: &'a RawValue,
    },
    Status {
        status: &'a str,
        item: &'a RawValue,
        /// Group receipts only, with the participant's state after it
        /// (`null` when unknown).
        #[serde(skip_serializing_if = "Option::is_none")]
        participant: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        participant_status: Option<Option<&'a str>>,
    },
    Group {
        field: &'a str,
        group_type: Option<&'a str>,
        request_id: Option<&'a str>,
        join_request_id: Option<&'a str>,
        participants: Vec<ParticipantView<'a>>,
        item: &'a RawValue,
    },
}

/// The downstream event as JSON: the fields every event carries, and its `data`.
#[derive(Serialize)]
struct Payload<'r, 'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'static str,
    wamid: Option<&'a str>,
    ordering_key: &'r str,
    group_id: Option<&'a str>,
    contact: &'r Option<ContactView<'a>>,
    phone_number_id: Option<&'a str>,
    timestamp: Option<DateTime<Utc>>,
    data: &'r Data<'a>,
}

impl<'a> OutboxRow<'a> {
    pub(crate) fn message_created(
        message: &'a MessageEvent,
        item: &'a RawValue,
        contact_key: Option<&'a str>,
    ) -> Self {
        Self::new(
            Envelope {
                event_id: &message.key,
                event_type: MESSAGE_CREATED,
                wamid: Some(&message.wamid),
                group_id: message.group_id.as_deref(),
                contact: Some(ContactView::of(&message.contact, contact_key)),
                contact_key,
                phone_number_id: message.phone_number_id.as_deref(),
                timestamp: message.timestamp,
            },
            Data::Message {
                direction: message.direction.as_str(),
                message_type: &message.message_type,
                item,
            },
        )
    }

    /// `participant_status` is the participant's latest status after this
    /// receipt (group receipts only): it never goes backwards.
    pub(crate) fn message_status(
        status: &'a StatusEvent,
        item: &'a RawValue,
        contact_key: Option<&'a str>,
        participant_status: Option<&'a str>,
    ) -> Self {
        let participant = status.participant.as_deref();
        Self::new(
            Envelope {
                event_id: &status.key,
                event_type: MESSAGE_STATUS,
                wamid: Some(&status.wamid),
                group_id: status.group_id.as_deref(),
                contact: Some(ContactView::of(&status.contact, contact_key)),
                contact_key,
                phone_number_id: status.phone_number_id.as_deref(),
                timestamp: status.timestamp,
            },
            Data::Status {
                status: &status.status,
                item,
                participant,
                participant_status: participant.map(|_| participant_status),
            },
        )
    }

    /// `participants` pairs each participant the item names with their
    /// contact record's key.
    pub(crate) fn group_event(
        group: &'a GroupEvent,
        item: &'a RawValue,
        participants: Vec<ParticipantView<'a>>,
    ) -> Self {
        Self::new(
            Envelope {
                event_id: &group.key,
                event_type: group_event_type(&group.field),
                wamid: None,
                group_id: group.group_id.as_deref(),
                contact: None,
                contact_key: None,
                phone_number_id: group.phone_number_id.as_deref(),
                timestamp: group.timestamp,
            },
            Data::Group {
                field: &group.field,
                group_type: group.update_type.as_deref(),
                request_id: group.request_id.as_deref(),
                join_request_id: group.join_request_id.as_deref(),
                participants,
                item,
            },
        )
    }

    fn new(envelope: Envelope<'a>, data: Data<'a>) -> Self {
        Self {
            event_id: envelope.event_id,
            event_type: envelope.event_type,
            ordering_key: ordering_key(envelope.group_id, envelope.contact_key),
            sort_id: envelope.wamid.unwrap_or(envelope.event_id),
            timestamp: envelope.timestamp,
            wamid: envelope.wamid,
            group_id: envelope.group_id,
            contact: envelope.contact,
            phone_number_id: envelope.phone_number_id,
            data,
        }
    }

    fn payload(&self) -> Payload<'_, 'a> {
        Payload {
            id: self.event_id,
            event_type: self.event_type,
            wamid: self.wamid,
            ordering_key: &self.ordering_key,
            group_id: self.group_id,
            contact: &self.contact,
            phone_number_id: self.phone_number_id,
            timestamp: self.timestamp,
            data: &self.data,
        }
    }
}

/// The fields every downstream event carries.
struct Envelope<'a> {
    event_id: &'a str,
    event_type: &'static str,
    wamid: Option<&'a str>,
    group_id: Option<&'a str>,
    contact: Option<ContactView<'a>>,
    contact_key: Option<&'a str>,
    phone_number_id: Option<&'a str>,
    timestamp: Option<DateTime<Utc>>,
}

pub(crate) async fn enqueue(
    tx: &mut PgConnection,
    mut rows: Vec<OutboxRow<'_>>,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    rows.sort_by(|a, b| a.event_id.cmp(b.event_id));
    let contacts: BTreeSet<&str> = rows.iter().map(|r| &*r.ordering_key).collect();
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
    let keys: Vec<&str> = rows.iter().map(|r| &*r.ordering_key).collect();
    let wamids: Vec<&str> = rows.iter().map(|r| r.sort_id).collect();
    let timestamps: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.timestamp).collect();
    let payloads: Vec<Payload<'_, '_>> = rows.iter().map(OutboxRow::payload).collect();
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
    /// The event as JSON text: the relay adds its position without parsing it.
    pub payload: String,
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
pub struct PublishedEvent {
    pub id: i64,
    pub sequence: i64,
    pub late: bool,
}

/// The contacts a relay holds and their pending events, inside the
/// transaction that keeps other relays off them until `commit`.
pub struct OutboxClaim {
    tx: Transaction<'static, Postgres>,
    pub contacts: Vec<ContactCursor>,
    /// Grouped by contact (in the order of `contacts`), then sorted by Meta
    /// timestamp, then wamid.
    pub events: Vec<PendingEvent>,
}

/// Locks up to `max_contacts` contacts that have an event older than
/// `window` and no other relay holds, and reads their pending events (at
/// most `max_events`). Each exchange is bounded ([`crate::ANSWER_WITHIN`]):
/// a relay left with a frozen server's connections gives them up and
/// claims again on new ones.
pub async fn claim(
    pool: &PgPool,
    window: Duration,
    max_contacts: i64,
    max_events: i64,
) -> Result<OutboxClaim, StoreError> {
    let mut tx = answered(async { pool.begin().await.map_err(StoreError::connecting) }).await?;
    let window_seconds = window.as_secs_f64();
    // The contacts whose due events are oldest first: in key order, a
    // steady stream to the first keys kept the last ones waiting.
    let due_contacts = sqlx::query_as(
        "SELECT c.contact_key, c.last_sequence, c.last_timestamp, c.last_wamid
         FROM (SELECT o.contact_key, min(o.created_at) AS oldest
               FROM (SELECT contact_key, created_at FROM outbox
                     WHERE published_at IS NULL
                       AND created_at <= now() - make_interval(secs => $1)
                     ORDER BY created_at
                     LIMIT 10000) o
               GROUP BY o.contact_key) due
         JOIN outbox_contacts c ON c.contact_key = due.contact_key
         ORDER BY due.oldest, c.contact_key
         LIMIT $2
         FOR UPDATE OF c SKIP LOCKED",
    )
    .bind(window_seconds)
    .bind(max_contacts);
    let contacts: Vec<ContactCursor> = answered(due_contacts.fetch_all(&mut *tx)).await?;
    if contacts.is_empty() {
        return Ok(OutboxClaim {
            tx,
            contacts,
            events: Vec::new(),
        });
    }
    let keys: Vec<&str> = contacts.iter().map(|c| c.contact_key.as_str()).collect();
    // Contact by contact (in the order locked, their ordinality is the
    // presorted part of an incremental sort): only the first contacts'
    // events up to the limit are read and sorted, not every pending event
    // of every contact locked.
    let their_events = sqlx::query_as(
        "SELECT o.id, o.event_id, o.event_type, o.contact_key, o.wamid, o.meta_timestamp,
                o.payload::text AS payload, o.created_at <= now() - make_interval(secs => $2) AS due,
                EXTRACT(EPOCH FROM now() - o.created_at)::float8 AS age_seconds
         FROM UNNEST($1::text[]) WITH ORDINALITY AS k(contact_key, ord)
         JOIN outbox o ON o.contact_key = k.contact_key AND o.published_at IS NULL
         ORDER BY k.ord, COALESCE(o.meta_timestamp, o.created_at), o.wamid, o.id
         LIMIT $3",
    )
    .bind(&keys)
    .bind(window_seconds)
    .bind(max_events);
    let events: Vec<PendingEvent> = answered(their_events.fetch_all(&mut *tx)).await?;
    Ok(OutboxClaim {
        tx,
        contacts,
        events,
    })
}

impl OutboxClaim {
    /// Marks `published` as published and moves each contact's cursor, then
    /// releases the locks; each exchange bounded as the claim's. Given up,
    /// the commit may or may not have happened: either way the events are
    /// published again with the same ids or not at all, at least once.
    pub async fn commit(
        mut self,
        published: &[PublishedEvent],
        cursors: &[ContactCursor],
    ) -> Result<(), StoreError> {
        if !published.is_empty() {
            let ids: Vec<i64> = published.iter().map(|r| r.id).collect();
            let sequences: Vec<i64> = published.iter().map(|r| r.sequence).collect();
            let lates: Vec<bool> = published.iter().map(|r| r.late).collect();
            answered(
                sqlx::query(
                    "UPDATE outbox SET published_at = now(), sequence = u.sequence, late = u.late
                 FROM UNNEST($1::int8[], $2::int8[], $3::bool[]) AS u(id, sequence, late)
                 WHERE outbox.id = u.id",
                )
                .bind(&ids)
                .bind(&sequences)
                .bind(&lates)
                .execute(&mut *self.tx),
            )
            .await?;
        }
        if !cursors.is_empty() {
            let keys: Vec<&str> = cursors.iter().map(|c| c.contact_key.as_str()).collect();
            let sequences: Vec<i64> = cursors.iter().map(|c| c.last_sequence).collect();
            let timestamps: Vec<Option<DateTime<Utc>>> =
                cursors.iter().map(|c| c.last_timestamp).collect();
            let wamids: Vec<Option<&str>> =
                cursors.iter().map(|c| c.last_wamid.as_deref()).collect();
            answered(sqlx::query(
                "UPDATE outbox_contacts c SET last_sequence = u.seq, last_timestamp = u.ts, last_wamid = u.wamid
                 FROM UNNEST($1::text[], $2::int8[], $3::timestamptz[], $4::text[]) AS u(key, seq, ts, wamid)
                 WHERE c.contact_key = u.key",
            )
            .bind(&keys)
            .bind(&sequences)
            .bind(&timestamps)
            .bind(&wamids)
            .execute(&mut *self.tx))
            .await?;
        }
        answered(self.tx.commit()).await?;
        Ok(())
    }
}

/// Deletes published events older than `retention`, at most
/// [`PRUNE_BATCH`](crate::retention::PRUNE_BATCH) at a time; rows another
/// relay is deleting are left to it.
pub async fn prune(pool: &PgPool, retention: Duration) -> Result<u64, StoreError> {
    crate::retention::delete_batch(
        pool,
        "DELETE FROM outbox WHERE id IN (
         SELECT id FROM outbox
         WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)
         LIMIT $2 FOR UPDATE SKIP LOCKED)",
        retention,
    )
    .await
}

/// Events not yet published (the bench's progress).
pub async fn count_unpublished(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(pool)
            .await?,
    )
}
