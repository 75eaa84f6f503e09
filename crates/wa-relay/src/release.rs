//! One release: lock due contacts, walk each contact's pending events in
//! Meta-timestamp order up to the first one still inside the reorder window,
//! publish them with confirms (one contact's in order, contacts in parallel),
//! then mark them published in the same transaction that held the locks.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use sqlx::PgPool;
use wa_broker::headers::{self, CONTACT_KEY, LATE, SEQUENCE};
use wa_broker::{Broker, Outgoing, PublishError, event_shard};
use wa_store::outbox::{self, ContactCursor, PendingEvent, PublishedEvent};

#[derive(Debug, Clone)]
pub struct ReleaseSettings {
    pub window: Duration,
    pub shards: u16,
    pub max_contacts: i64,
    pub max_events: i64,
}

/// Releases what is due now; returns how many events were published.
#[tracing::instrument(
    name = "release",
    skip_all,
    fields(contacts = tracing::field::Empty, events = tracing::field::Empty)
)]
pub async fn release_due(
    pool: &PgPool,
    broker: &Broker,
    settings: &ReleaseSettings,
) -> anyhow::Result<usize> {
    let started = Instant::now();
    let mut claim = outbox::claim(
        pool,
        settings.window,
        settings.max_contacts,
        settings.max_events,
    )
    .await?;
    let events = std::mem::take(&mut claim.events);
    if events.is_empty() {
        return Ok(0);
    }
    let span = tracing::Span::current();
    span.record("contacts", claim.contacts.len());
    span.record("events", events.len());
    let mut cursors: HashMap<&str, ContactCursor> = claim
        .contacts
        .iter()
        .map(|c| (c.contact_key.as_str(), c.clone()))
        .collect();
    let mut held: HashSet<&str> = HashSet::new();
    let mut by_contact: HashMap<&str, Vec<(&PendingEvent, i64, bool)>> = HashMap::new();
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
        by_contact
            .entry(contact)
            .or_default()
            .push((event, cursor.last_sequence, late));
    }

    let outcomes = join_all(by_contact.values().map(|events| async move {
        for (event, sequence, late) in events {
            publish(broker, settings.shards, event, *sequence, *late).await?;
        }
        Ok::<(), PublishError>(())
    }))
    .await;
    if let Some(Err(error)) = outcomes.into_iter().find(Result::is_err) {
        // Nothing is marked: the next release publishes these again, same ids.
        return Err(anyhow::Error::new(error).context("publishing events failed"));
    }

    let published: Vec<PublishedEvent> = by_contact
        .values()
        .flatten()
        .map(|(event, sequence, late)| PublishedEvent {
            id: event.id,
            sequence: *sequence,
            late: *late,
        })
        .collect();
    let moved: Vec<ContactCursor> = by_contact
        .keys()
        .filter_map(|contact| cursors.get(contact).cloned())
        .collect();
    claim.commit(&published, &moved).await?;

    for (event, _, late) in by_contact.values().flatten() {
        metrics::counter!("wa_relay_events_total", "type" => event.event_type.clone(), "late" => late.to_string())
            .increment(1);
        metrics::histogram!("wa_relay_event_age_seconds").record(event.age_seconds);
    }
    metrics::histogram!("wa_relay_release_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    Ok(published.len())
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

#[tracing::instrument(
    name = "publish_event",
    skip_all,
    fields(event_id = %event.event_id, sequence = sequence, late = late)
)]
async fn publish(
    broker: &Broker,
    shards: u16,
    event: &PendingEvent,
    sequence: i64,
    late: bool,
) -> Result<(), PublishError> {
    let mut body = event.payload.clone();
    if let Some(object) = body.as_object_mut() {
        object.insert("sequence".into(), sequence.into());
        object.insert("late".into(), late.into());
    }
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let mut table = FieldTable::default();
    table.insert(SEQUENCE.into(), AMQPValue::LongLongInt(sequence));
    table.insert(LATE.into(), AMQPValue::Boolean(late));
    table.insert(CONTACT_KEY.into(), headers::text_value(&event.contact_key));
    let properties = BasicProperties::default()
        .with_message_id(event.event_id.as_str().into())
        .with_type(event.event_type.as_str().into())
        .with_content_type("application/json".into())
        .with_headers(table);
    let exchange = broker.topology().events();
    let shard = event_shard(&event.contact_key, shards).to_string();
    broker
        .publish(Outgoing {
            exchange: &exchange,
            routing_key: &shard,
            body: &body,
            properties,
        })
        .await
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
            payload: serde_json::Value::Null,
            due: true,
            age_seconds: 0.0,
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
