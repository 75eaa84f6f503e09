use serde_json::{Map, Value};

use crate::canonical::identity_hash;
use crate::event::{Contact, Direction, Event, MessageEvent, OtherEvent, StatusEvent};
use crate::timestamp::meta_timestamp;

/// Longer ids are not ids: such an item is kept as an [`OtherEvent`].
const MAX_ID_LEN: usize = 512;

/// Why a body is not a webhook wa-ingest can store. Both are permanent: the
/// same bytes will fail the same way on every retry.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not JSON")]
    NotJson(#[from] serde_json::Error),
    #[error("not a WhatsApp webhook envelope: {0}")]
    NotWhatsApp(&'static str),
}

/// Every event in a webhook body, in payload order: every `entry` x every
/// `change` x every item. Items repeated inside one payload are returned as
/// often as they occur; deduplication is the caller's job.
pub fn parse_payload(body: &[u8]) -> Result<Vec<Event>, PayloadError> {
    let envelope: Value = serde_json::from_slice(body)?;
    let Value::Object(envelope) = envelope else {
        return Err(PayloadError::NotWhatsApp("the body is not a JSON object"));
    };
    match envelope.get("object") {
        None | Some(Value::Null) => {}
        Some(Value::String(object)) if object == "whatsapp_business_account" => {}
        Some(_) => {
            return Err(PayloadError::NotWhatsApp(
                "`object` is not \"whatsapp_business_account\"",
            ));
        }
    }
    // Owned from here on: what is kept whole (an odd entry or change) moves
    // into its event instead of being copied.
    let mut envelope = envelope;
    let Some(Value::Array(entries)) = envelope.remove("entry") else {
        return Err(PayloadError::NotWhatsApp("no `entry` array"));
    };

    let mut events = Vec::new();
    for entry in entries {
        let Value::Object(mut entry) = entry else {
            events.push(other("entry", &EntryContext::default(), entry));
            continue;
        };
        let context = EntryContext {
            account_id: string_field(&entry, "id"),
            time: entry.get("time").cloned().unwrap_or(Value::Null),
        };
        let Some(Value::Array(changes)) = entry.remove("changes") else {
            continue;
        };
        for change in changes {
            parse_change(change, &context, &mut events);
        }
    }
    Ok(events)
}

/// What the items of one `entry` share: the WhatsApp Business Account and
/// the time Meta gives the notification. Both tell apart notifications
/// whose `value` is the same: an update for two accounts, a template approved
/// twice.
#[derive(Default)]
struct EntryContext {
    account_id: Option<String>,
    time: Value,
}

fn parse_change(change: Value, entry: &EntryContext, events: &mut Vec<Event>) {
    let field = change
        .get("field")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_owned();
    let field = field.as_str();
    let Some(Value::Object(value)) = change.get("value") else {
        events.push(other(field, entry, change));
        return;
    };
    let before = events.len();
    let context = ChangeContext::new(value);

    for item in array(value, "messages") {
        events.push(message(item, Direction::Inbound, &context, field, entry));
    }
    for item in array(value, "message_echoes") {
        events.push(message(item, Direction::Echo, &context, field, entry));
    }
    for item in array(value, "statuses") {
        events.push(status(item, &context, field, entry));
    }
    let error_metadata = error_metadata(value);
    for error in array(value, "errors") {
        let raw = serde_json::json!({
            "metadata": error_metadata,
            "error": error,
        });
        events.push(other(&format!("{field}.errors"), entry, raw));
    }

    // A change we extracted nothing from (a template update, an account
    // update, a field we have never seen) is stored whole.
    if events.len() == before {
        let mut change = change;
        let value = change.get_mut("value").map(Value::take).unwrap_or_default();
        events.push(other(field, entry, value));
    }
}

/// Meta's `metadata` (two short ids) is copied into every error event;
/// larger than this it is not Meta's, and copying it once per error would
/// make a small body take memory and time in the square of its size.
const MAX_ERROR_METADATA_LEN: usize = 1024;

/// The `metadata` each error event of a change carries: Meta's as it is,
/// anything larger cut down to the ids that say which number it is about.
fn error_metadata(value: &Map<String, Value>) -> Option<Value> {
    let metadata = value.get("metadata")?;
    let small = serde_json::to_vec(metadata)
        .map(|encoded| encoded.len() <= MAX_ERROR_METADATA_LEN)
        .unwrap_or(false);
    if small {
        return Some(metadata.clone());
    }
    let Value::Object(fields) = metadata else {
        return Some(Value::Null);
    };
    let ids = ["display_phone_number", "phone_number_id"]
        .into_iter()
        .filter_map(|key| {
            let id = string_field(fields, key).filter(|id| id.len() <= MAX_ID_LEN)?;
            Some((key.to_owned(), Value::String(id)))
        })
        .collect();
    Some(Value::Object(ids))
}

/// What every item of one change shares: the business number and the
/// `contacts` array that names the users of its messages.
struct ChangeContext<'a> {
    phone_number_id: Option<String>,
    display_phone_number: Option<String>,
    contacts: Vec<&'a Map<String, Value>>,
}

impl<'a> ChangeContext<'a> {
    fn new(value: &'a Map<String, Value>) -> Self {
        let metadata = value.get("metadata").and_then(Value::as_object);
        Self {
            phone_number_id: metadata.and_then(|m| string_field(m, "phone_number_id")),
            display_phone_number: metadata.and_then(|m| string_field(m, "display_phone_number")),
            contacts: array(value, "contacts")
                .iter()
                .filter_map(Value::as_object)
                .collect(),
        }
    }

    /// Completes what an item says about its user with the matching entry of
    /// `contacts` (by `wa_id` or `user_id`; the only entry when there is one).
    fn contact(&self, wa_id: Option<String>, user_id: Option<String>) -> Contact {
        let matches = |c: &&&Map<String, Value>| {
            let same_wa = wa_id.is_some() && string_field(c, "wa_id") == wa_id;
            let same_user = user_id.is_some() && string_field(c, "user_id") == user_id;
            same_wa || same_user
        };
        let entry = self
            .contacts
            .iter()
            .find(matches)
            .or_else(|| match self.contacts.as_slice() {
                [only] if !conflicts(only, wa_id.as_deref(), user_id.as_deref()) => Some(only),
                _ => None,
            })
            .copied();
        let profile_name = entry
            .and_then(|c| c.get("profile"))
            .and_then(|p| p.get("name"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Contact {
            wa_id: wa_id.or_else(|| entry.and_then(|c| string_field(c, "wa_id"))),
            user_id: user_id.or_else(|| entry.and_then(|c| string_field(c, "user_id"))),
            profile_name,
        }
    }
}

/// The only `contacts` entry names the item's user unless one of its ids
/// says otherwise.
fn conflicts(contact: &Map<String, Value>, wa_id: Option<&str>, user_id: Option<&str>) -> bool {
    let differs = |key: &str, ours: Option<&str>| match (string_field(contact, key), ours) {
        (Some(theirs), Some(ours)) => theirs != ours,
        _ => false,
    };
    differs("wa_id", wa_id) || differs("user_id", user_id)
}

fn message(
    item: &Value,
    direction: Direction,
    context: &ChangeContext<'_>,
    field: &str,
    entry: &EntryContext,
) -> Event {
    let Some((object, wamid)) = object_with_id(item) else {
        return other(&format!("{field}.invalid_message"), entry, item.clone());
    };
    // The user is the sender of an inbound message and the recipient of an echo.
    let (wa_key, user_key) = match direction {
        Direction::Inbound => ("from", "from_user_id"),
        Direction::Echo => ("to", "to_user_id"),
    };
    let contact = context.contact(string_field(object, wa_key), string_field(object, user_key));
    let prefix = match direction {
        Direction::Inbound => "msg",
        Direction::Echo => "echo",
    };
    Event::Message(MessageEvent {
        key: format!("{prefix}:{wamid}"),
        message_type: string_field(object, "type").unwrap_or_else(|| "unknown".to_owned()),
        timestamp: meta_timestamp(object.get("timestamp")),
        wamid,
        direction,
        contact,
        phone_number_id: context.phone_number_id.clone(),
        display_phone_number: context.display_phone_number.clone(),
        raw: item.clone(),
    })
}

fn status(item: &Value, context: &ChangeContext<'_>, field: &str, entry: &EntryContext) -> Event {
    let parsed = object_with_id(item).and_then(|(object, wamid)| {
        let status = string_field(object, "status").filter(|s| s.len() <= MAX_ID_LEN)?;
        Some((object, wamid, status))
    });
    let Some((object, wamid, status)) = parsed else {
        return other(&format!("{field}.invalid_status"), entry, item.clone());
    };
    let contact = context.contact(
        string_field(object, "recipient_id"),
        string_field(object, "recipient_user_id"),
    );
    let present = |key: &str| object.get(key).filter(|v| !v.is_null()).cloned();
    Event::Status(StatusEvent {
        key: format!("status:{wamid}:{status}"),
        timestamp: meta_timestamp(object.get("timestamp")),
        errors: present("errors"),
        conversation: present("conversation"),
        pricing: present("pricing"),
        wamid,
        status,
        contact,
        phone_number_id: context.phone_number_id.clone(),
        raw: item.clone(),
    })
}

/// Keyed by the hash of the field and the canonical content, with the entry's
/// account and time: a redelivery hashes the same, a new notification does not.
fn other(field: &str, entry: &EntryContext, raw: Value) -> Event {
    let hash = identity_hash(field, entry.account_id.as_deref(), &entry.time, &raw);
    Event::Other(OtherEvent {
        key: format!("event:{hash}"),
        field: field.to_owned(),
        account_id: entry.account_id.clone(),
        timestamp: meta_timestamp(Some(&entry.time)),
        raw,
    })
}

fn object_with_id(item: &Value) -> Option<(&Map<String, Value>, String)> {
    let object = item.as_object()?;
    let id = string_field(object, "id").filter(|id| !id.is_empty() && id.len() <= MAX_ID_LEN)?;
    Some((object, id))
}

fn array<'a>(object: &'a Map<String, Value>, key: &str) -> &'a [Value] {
    object
        .get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// A string field, also accepting numbers (some senders write phone numbers
/// and ids as integers).
fn string_field(object: &Map<String, Value>, key: &str) -> Option<String> {
    match object.get(key)? {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}
