use chrono::{DateTime, Utc};
use lapin::message::BasicGetMessage;
use serde::Serialize;
use wa_broker::headers;

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
}

impl DlqEntry {
    pub fn from_message(message: &BasicGetMessage) -> Self {
        let properties = &message.delivery.properties;
        let time = |name| {
            headers::text(properties, name)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        let mut wamids: Vec<String> = wa_payload::parse_payload(&message.delivery.data)
            .map(|events| {
                events
                    .iter()
                    .filter_map(|e| e.wamid().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        wamids.dedup();
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
            bytes: message.delivery.data.len(),
            wamids,
        }
    }
}
