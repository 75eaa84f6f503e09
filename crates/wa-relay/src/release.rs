//! One release: lock due contacts, walk each contact's pending events in
//! Meta-timestamp order up to the first one still inside the reorder window,
//! publish them all with confirms pipelined (one contact's on one channel,
//! in order; many in flight), then, once every confirm is in, mark them
//! published in the same transaction that held the locks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use sqlx::PgPool;
use wa_broker::headers::{self, CONTACT_KEY, LATE, SEQUENCE};
use wa_broker::{Broker, Outgoing, PublishError, Unconfirmed, event_shard};
use wa_store::outbox::{self, ContactCursor, PendingEvent, PublishedEvent};

#[derive(Debug, Clone)]
pub struct ReleaseSettings {
    pub window: Duration,
    pub shards: u16,
    pub max_contacts: i64,
    pub max_events: i64,
}

/// What one release did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Events published.
    pub events: usize,
    /// Contacts whose events it read (the others it locked had none within
    /// the event budget).
    pub contacts_read: usize,
    /// It read as many events as it may: more are due.
    pub full: bool,
}

impl Released {
    /// Contacts the next release should lock, out of at most `max`. A
    /// release that filled its event budget from a few contacts kept the
    /// rest locked for nothing while concurrent releases skipped them: lock
    /// about what the budget needs (twice, for room). Otherwise grow back.
    pub fn contacts_next(&self, locked: i64, max: i64) -> i64 {
        let wanted = if self.full {
            2 * i64::try_from(self.contacts_read).unwrap_or(max)
        } else {
            2 * locked
        };
        wanted.clamp(1, max.max(1))
    }
}

/// An event with the place it takes in its contact's stream.
struct Planned<'a> {
    event: &'a PendingEvent,
    sequence: i64,
    late: bool,
}

/// Releases what is due now, locking at most `max_contacts` contacts.
#[tracing::instrument(
    name = "release",
    skip_all,
    fields(contacts = tracing::field::Empty, events = tracing::field::Empty)
)]
pub async fn release_due(
    pool: &PgPool,
    broker: &Broker,
    settings: &ReleaseSettings,
    max_contacts: i64,
) -> anyhow::Result<Released> {
    let started = Instant::now();
    let mut claim = outbox::claim(pool, settings.window, max_contacts, settings.max_events).await?;
    let events = std::mem::take(&mut claim.events);
    if events.is_empty() {
        return Ok(Released::default());
    }
    let full = i64::try_from(events.len()).unwrap_or(i64::MAX) >= settings.max_events;
    // Grouped by contact: each new key starts a contact.
    let contacts_read = 1 + events
        .windows(2)
        .filter(|pair| pair[0].contact_key != pair[1].contact_key)
        .count();
    let span = tracing::Span::current();
    span.record("contacts", claim.contacts.len());
    span.record("events", events.len());
    let mut cursors: HashMap<&str, ContactCursor> = claim
        .contacts
        .iter()
        .map(|c| (c.contact_key.as_str(), c.clone()))
        .collect();
    let mut held: HashSet<&str> = HashSet::new();
    let mut by_contact: HashMap<&str, Vec<Planned<'_>>> = HashMap::new();
    for event in &events {
        let contact = event.contact_key.as_str();
        let Some(cursor) = cursors.get_mut(contact) else {
            continue;
        };
        // Everything after an event still inside the window waits with it,
        // so that a late earlier message can still take its place.
        if held.contains(contact) || !event.due {
            held.insert(contact);
            continue;
        }
        let late = is_late(cursor, event);
        cursor.last_sequence += 1;
        if let Some(ts) = event.meta_timestamp
            && !late
        {
            cursor.last_timestamp = Some(ts);
            cursor.last_wamid = Some(event.wamid.clone());
        }
        by_contact.entry(contact).or_default().push(Planned {
            event,
            sequence: cursor.last_sequence,
            late,
        });
    }

    if let Err(error) = publish_all(broker, settings.shards, &by_contact).await {
        // Nothing is marked: the next release publishes these again, same ids.
        return Err(anyhow::Error::new(error).context("publishing events failed"));
    }

    let published: Vec<PublishedEvent> = by_contact
        .values()
        .flatten()
        .map(|planned| PublishedEvent {
            id: planned.event.id,
            sequence: planned.sequence,
            late: planned.late,
        })
        .collect();
    let moved: Vec<ContactCursor> = by_contact
        .keys()
        .filter_map(|contact| cursors.get(contact).cloned())
        .collect();
    claim.commit(&published, &moved).await?;

    let mut counts: BTreeMap<(&str, bool), u64> = BTreeMap::new();
    let age = metrics::histogram!("wa_relay_event_age_seconds");
    for planned in by_contact.values().flatten() {
        *counts
            .entry((planned.event.event_type.as_str(), planned.late))
            .or_default() += 1;
        age.record(planned.event.age_seconds);
    }
    for ((event_type, late), n) in counts {
        metrics::counter!("wa_relay_events_total", "type" => event_type.to_owned(), "late" => late.to_string())
            .increment(n);
    }
    metrics::histogram!("wa_relay_release_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    Ok(Released {
        events: published.len(),
        contacts_read,
        full,
    })
}

/// Sends every planned event, then waits for all the confirms. A contact's
/// events go to one shard and out on that shard's channel, in order, so the
/// broker routes them in order; shards send in parallel. Only a nack (an
/// internal broker error) can let a later event through while an earlier one
/// is published again by the next release: its sequence number tells.
async fn publish_all(
    broker: &Broker,
    shards: u16,
    by_contact: &HashMap<&str, Vec<Planned<'_>>>,
) -> Result<(), PublishError> {
    let mut by_shard: BTreeMap<u16, Vec<&Planned<'_>>> = BTreeMap::new();
    for (contact, planned) in by_contact {
        by_shard
            .entry(event_shard(contact, shards))
            .or_default()
            .extend(planned);
    }
    let exchange = broker.topology().events();
    let sent = join_all(by_shard.iter().map(|(shard, planned)| {
        let exchange = exchange.as_str();
        async move {
            let routing_key = shard.to_string();
            let mut unconfirmed: Vec<Unconfirmed> = Vec::with_capacity(planned.len());
            for planned in planned {
                match send_event(broker, *shard, exchange, &routing_key, planned).await {
                    Ok(pending) => unconfirmed.push(pending),
                    // Stop sending; what was sent is still awaited below.
                    Err(error) => return (unconfirmed, Err(error)),
                }
            }
            (unconfirmed, Ok(()))
        }
    }))
    .await;
    let mut failure = None;
    let mut unconfirmed = Vec::new();
    for (pending, outcome) in sent {
        unconfirmed.extend(pending);
        if let Err(error) = outcome {
            failure.get_or_insert(error);
        }
    }
    // Await every confirm even after a failure, so that no confirm outlives
    // the release that is about to report it.
    let confirmed = join_all(unconfirmed.into_iter().map(Unconfirmed::confirmed)).await;
    match failure {
        Some(error) => Err(error),
        None => confirmed.into_iter().collect(),
    }
}

/// Sends one event on its shard's channel; its confirm is awaited with the
/// release's others. No span of its own: the release's covers it, and one
/// per event cost more than the publish.
async fn send_event(
    broker: &Broker,
    shard: u16,
    exchange: &str,
    routing_key: &str,
    planned: &Planned<'_>,
) -> Result<Unconfirmed, PublishError> {
    let body = body_with_position(&planned.event.payload, planned.sequence, planned.late);
    let message = Outgoing {
        exchange,
        routing_key,
        body: &body,
        properties: properties(planned),
    };
    broker.send(u64::from(shard), message).await
}

/// The stored payload (a JSON object, as PostgreSQL prints `jsonb`) with the
/// event's `sequence` and `late` added, without parsing it.
fn body_with_position(payload: &str, sequence: i64, late: bool) -> Vec<u8> {
    let object = payload.trim_end();
    let inner = object.strip_suffix('}').unwrap_or(object).trim_end();
    let separator = if inner.ends_with('{') { "" } else { ", " };
    format!("{inner}{separator}\"sequence\": {sequence}, \"late\": {late}}}").into_bytes()
}

fn properties(planned: &Planned<'_>) -> BasicProperties {
    let event = planned.event;
    let mut table = FieldTable::default();
    table.insert(SEQUENCE.into(), AMQPValue::LongLongInt(planned.sequence));
    table.insert(LATE.into(), AMQPValue::Boolean(planned.late));
    table.insert(CONTACT_KEY.into(), headers::text_value(&event.contact_key));
    BasicProperties::default()
        .with_message_id(event.event_id.as_str().into())
        .with_type(event.event_type.as_str().into())
        .with_content_type("application/json".into())
        .with_headers(table)
}

/// Behind what this contact already released, by Meta's timestamp (ties by
/// wamid): published anyway, flagged late.
fn is_late(cursor: &ContactCursor, event: &PendingEvent) -> bool {
    match (cursor.last_timestamp, event.meta_timestamp) {
        (Some(last), Some(ts)) => {
            (ts, event.wamid.as_str()) < (last, cursor.last_wamid.as_deref().unwrap_or(""))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeZone, Utc};

    use super::*;

    fn at(seconds: i64) -> Option<DateTime<Utc>> {
        Utc.timestamp_opt(seconds, 0).single()
    }

    fn cursor(last: Option<DateTime<Utc>>, wamid: Option<&str>) -> ContactCursor {
        ContactCursor {
            contact_key: "c".into(),
            last_sequence: 3,
            last_timestamp: last,
            last_wamid: wamid.map(str::to_owned),
        }
    }

    fn event(timestamp: Option<DateTime<Utc>>, wamid: &str) -> PendingEvent {
        PendingEvent {
            id: 1,
            event_id: "e".into(),
            event_type: "message.created".into(),
            contact_key: "c".into(),
            wamid: wamid.into(),
            meta_timestamp: timestamp,
            payload: "{}".into(),
            due: true,
            age_seconds: 0.0,
        }
    }

    #[test]
    fn a_release_that_filled_its_budget_from_few_contacts_locks_fewer_next() {
        let full = |contacts_read| Released {
            events: 1000,
            contacts_read,
            full: true,
        };
        assert_eq!(full(8).contacts_next(200, 200), 16);
        assert_eq!(full(150).contacts_next(200, 200), 200);
        // Not full: grow back towards the maximum.
        let partial = Released {
            events: 10,
            contacts_read: 5,
            full: false,
        };
        assert_eq!(partial.contacts_next(16, 200), 32);
        assert_eq!(partial.contacts_next(150, 200), 200);
        assert_eq!(Released::default().contacts_next(0, 200), 1);
    }

    #[test]
    fn the_position_is_added_to_the_stored_object() {
        for (payload, expected) in [
            (
                r#"{"id": "msg:a", "data": {"x": [1, 2]}}"#,
                serde_json::json!({"id": "msg:a", "data": {"x": [1, 2]}, "sequence": 7, "late": true}),
            ),
            ("{}", serde_json::json!({"sequence": 7, "late": true})),
        ] {
            let body = body_with_position(payload, 7, true);
            let parsed: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            assert_eq!(parsed, expected);
        }
    }

    #[test]
    fn an_event_behind_what_its_contact_released_is_late() {
        let released = cursor(at(100), Some("wamid.B"));
        assert!(is_late(&released, &event(at(99), "wamid.Z")));
        // Same second: the wamid breaks the tie.
        assert!(is_late(&released, &event(at(100), "wamid.A")));
        assert!(!is_late(&released, &event(at(100), "wamid.B")));
        assert!(!is_late(&released, &event(at(100), "wamid.C")));
        assert!(!is_late(&released, &event(at(101), "wamid.A")));
    }

    #[test]
    fn without_a_timestamp_on_either_side_nothing_is_late() {
        assert!(!is_late(&cursor(None, None), &event(at(1), "wamid.A")));
        assert!(!is_late(
            &cursor(at(100), Some("wamid.B")),
            &event(None, "wamid.A")
        ));
    }
}
