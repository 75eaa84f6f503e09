use chrono::{DateTime, Utc};
use lapin::message::{BasicGetMessage, Delivery};
use serde::Serialize;
use wa_broker::headers;
use wa_payload::Event;

/// What an operator needs to know about one dead-lettered delivery.
#[derive(Debug, Clone, Serialize)]
pub struct DlqEntry {
    /// The message id: SHA-256 of the body, the same for every copy of a webhook.
    pub id: String,
    pub class: String,
    pub error: String,
    pub attempts: i64,
    pub first_failure_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub dead_lettered_by: Option<String>,
    pub original_exchange: Option<String>,
    pub original_routing_key: Option<String>,
    pub received_at: Option<DateTime<Utc>>,
    /// When `dlq replay` last sent it back, if it did.
    pub replayed_at: Option<DateTime<Utc>>,
    pub bytes: usize,
    /// The wamids inside, when the body parses.
    pub wamids: Vec<String>,
    /// The business phone numbers (`metadata.phone_number_id`) the events are for.
    pub phone_number_ids: Vec<String>,
    /// The events inside, when the body parses: ids and kinds, no content.
    pub events: Vec<EventSummary>,
}

/// One event of a dead-lettered body, without its content (personal data).
#[derive(Debug, Clone, Serialize)]
pub struct EventSummary {
    pub kind: &'static str,
    pub key: String,
    pub wamid: Option<String>,
    pub phone_number_id: Option<String>,
    pub timestamp: Option<DateTime<Utc>>,
}

impl EventSummary {
    fn of(event: &Event) -> Self {
        let (phone_number_id, timestamp) = match event {
            Event::Message(m) => (m.phone_number_id.clone(), m.timestamp),
            Event::Status(s) => (s.phone_number_id.clone(), s.timestamp),
            Event::Group(g) => (g.phone_number_id.clone(), g.timestamp),
            Event::Other(o) => (None, o.timestamp),
        };
        Self {
            kind: event.kind().as_str(),
            key: event.key().to_owned(),
            wamid: event.wamid().map(str::to_owned),
            phone_number_id,
            timestamp,
        }
    }
}

impl DlqEntry {
    pub fn from_message(message: &BasicGetMessage) -> Self {
        Self::from_delivery(&message.delivery)
    }

    pub fn from_delivery(delivery: &Delivery) -> Self {
        let properties = &delivery.properties;
        let time = |name| {
            headers::text(properties, name)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        let events: Vec<EventSummary> = wa_payload::parse_payload(&delivery.data)
            .map(|events| events.iter().map(EventSummary::of).collect())
            .unwrap_or_default();
        let mut wamids: Vec<String> = events.iter().filter_map(|e| e.wamid.clone()).collect();
        wamids.dedup();
        let mut phone_number_ids: Vec<String> = events
            .iter()
            .filter_map(|e| e.phone_number_id.clone())
            .collect();
        phone_number_ids.sort();
        phone_number_ids.dedup();
        Self {
            id: properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_default(),
            // Dead-lettered by the broker itself (delivery limit): no class of ours.
            class: headers::text(properties, headers::ERROR_CLASS)
                .unwrap_or_else(|| "unknown".into()),
            error: headers::text(properties, headers::ERROR)
                .unwrap_or_else(|| "dead-lettered by the broker (delivery limit)".into()),
            attempts: headers::int(properties, headers::ATTEMPTS),
            first_failure_at: time(headers::FIRST_FAILURE_AT),
            last_failure_at: time(headers::LAST_FAILURE_AT),
            dead_lettered_by: headers::text(properties, headers::DEAD_LETTERED_BY),
            original_exchange: headers::text(properties, headers::ORIGINAL_EXCHANGE),
            original_routing_key: headers::text(properties, headers::ORIGINAL_ROUTING_KEY),
            received_at: DateTime::from_timestamp_millis(headers::int(
                properties,
                headers::RECEIVED_AT,
            ))
            .filter(|t| t.timestamp() > 0),
            replayed_at: time(headers::REPLAYED_AT),
            bytes: delivery.data.len(),
            wamids,
            phone_number_ids,
            events,
        }
    }

    /// When it last failed (or first, or was received): what "since" and
    /// "older than" compare.
    pub fn failed_at(&self) -> Option<DateTime<Utc>> {
        self.last_failure_at
            .or(self.first_failure_at)
            .or(self.received_at)
    }
}
