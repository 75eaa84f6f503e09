use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::canonical::{content_hash, identity_hash};
use crate::contact::{self, ContactsEntry, IdField, Ids, ProfileField};
use crate::escapes::storable;
use crate::event::{
    Contact, Direction, Event, GroupEvent, GroupParticipant, MessageEvent, OtherEvent,
    ParticipantChange, RawItem, StatusEvent,
};
use crate::key;
use crate::timestamp::meta_timestamp;

/// Longer ids are not ids: such an item is kept as an [`OtherEvent`].
pub(crate) const MAX_ID_LEN: usize = 512;

/// The Calling API's change. Its `statuses` are a call's (`wacid.` ids,
/// `RINGING`, `ACCEPTED`, ...), not a message's: the change is kept whole
/// as an event of its field, like its `calls` items, so that no call shows
/// up as a message's status downstream.
pub(crate) const CALLS_FIELD: &str = "calls";

/// A group key names the participants of its item up to this length; a
/// longer list is named by its hash, so keys stay short.
const MAX_PARTICIPANTS_IN_KEY: usize = 200;

/// Where each kind of item names its user. Meta's pages spell some of these
/// two ways; every spelling is read, the first present wins.
const MESSAGE_SENDER: IdFields = IdFields {
    wa_id: &["from"],
    user_id: &["from_user_id"],
    parent_user_id: &["from_parent_user_id"],
};
const ECHO_RECIPIENT: IdFields = IdFields {
    wa_id: &["to"],
    user_id: &["to_user_id"],
    parent_user_id: &["to_parent_user_id"],
};
const STATUS_RECIPIENT: IdFields = IdFields {
    wa_id: &["recipient_id"],
    user_id: &["recipient_user_id"],
    parent_user_id: &[
        "recipient_parent_user_id",
        "parent_recipient_user_id",
        "parent_user_id",
    ],
};
const GROUP_RECEIPT_PARTICIPANT: IdFields = IdFields {
    wa_id: &["recipient_participant_id", "participant_recipient_id"],
    user_id: &[
        "recipient_participant_user_id",
        "participant_recipient_user_id",
    ],
    parent_user_id: &[
        "recipient_participant_parent_user_id",
        "participant_recipient_parent_user_id",
    ],
};
/// Group participants and join requests, and `contacts[]` entries.
const USER_OBJECT: IdFields = IdFields {
    wa_id: &["wa_id"],
    user_id: &["user_id"],
    parent_user_id: &["parent_user_id"],
};

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
///
/// The body is read with `\u0000` and lone surrogates made U+FFFD first
/// (`escapes.rs`), so no event carries what PostgreSQL cannot store. The
/// usual notification is then read without a JSON tree
/// ([`parse_payload_fast`]); every other body goes through the tolerant
/// parser ([`parse_payload_tree`]).
pub fn parse_payload(body: &[u8]) -> Result<Vec<Event>, PayloadError> {
    let body = storable(body);
    match crate::fast::parse(&body) {
        Some(events) => Ok(events),
        None => parse_tree(&body),
    }
}

/// The events of a body of the usual shape, read without a JSON tree; `None`
/// for any other body. Public for the tests that hold it to the answers of
/// [`parse_payload_tree`].
#[doc(hidden)]
pub fn parse_payload_fast(body: &[u8]) -> Option<Vec<Event>> {
    crate::fast::parse(&storable(body))
}

/// [`parse_payload`] through the tolerant parser alone, which reads any
/// body into a JSON tree first.
#[doc(hidden)]
pub fn parse_payload_tree(body: &[u8]) -> Result<Vec<Event>, PayloadError> {
    parse_tree(&storable(body))
}

fn parse_tree(body: &[u8]) -> Result<Vec<Event>, PayloadError> {
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

fn parse_change(mut change: Value, entry: &EntryContext, events: &mut Vec<Event>) {
    let field = change
        .get("field")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_owned();
    let field = field.as_str();
    let Some(Value::Object(value)) = change.get_mut("value") else {
        events.push(other(field, entry, change));
        return;
    };
    // The items move out of the body into their events (no copy): only
    // non-empty lists are taken, and each of their items gives an event, so
    // a change nothing is taken from is still whole for the fallback below.
    let messages = take_items(value, "messages");
    let echoes = take_items(value, "message_echoes");
    let statuses = if field == CALLS_FIELD {
        Vec::new()
    } else {
        take_items(value, "statuses")
    };
    let groups = if field.starts_with("group_") {
        take_items(value, "groups")
    } else {
        Vec::new()
    };
    let errors = take_items(value, "errors");
    let value = &*value;
    let before = events.len();
    let context = ChangeContext::new(value);

    for item in messages {
        events.push(message(item, Direction::Inbound, &context, field, entry));
    }
    for item in echoes {
        events.push(message(item, Direction::Echo, &context, field, entry));
    }
    for item in statuses {
        events.push(status(item, &context, field, entry));
    }
    for item in groups {
        events.push(group(item, &context, field, entry));
    }
    if !errors.is_empty() {
        let error_metadata = error_metadata(value);
        let errors_field = format!("{field}.errors");
        for error in errors {
            let raw = serde_json::json!({
                "metadata": error_metadata,
                "error": error,
            });
            events.push(other(&errors_field, entry, raw));
        }
    }

    // A change we extracted nothing from (a template update, an account
    // update, a field we have never seen) is stored whole.
    if events.len() == before {
        let value = change.get_mut("value").map(Value::take).unwrap_or_default();
        events.push(other(field, entry, value));
    }
}

/// The items of `object[key]` when it is a non-empty list, moved out of it;
/// otherwise nothing, and `object` is left as it was.
fn take_items(object: &mut Map<String, Value>, key: &str) -> Vec<Value> {
    match object.get_mut(key) {
        Some(Value::Array(items)) if !items.is_empty() => std::mem::take(items),
        _ => Vec::new(),
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
    /// `contacts` (by `wa_id` or `user_id`; the only entry when there is one
    /// and `only_entry_names_it`).
    fn contact(&self, ids: Ids, only_entry_names_it: bool) -> Contact {
        contact::complete(&self.contacts, ids, only_entry_names_it)
    }
}

impl ContactsEntry for &Map<String, Value> {
    fn id(&self, field: IdField) -> Option<Cow<'_, str>> {
        field_text(self, field.key())
    }

    fn profile(&self, field: ProfileField) -> Option<Cow<'_, str>> {
        let profile = self.get("profile").and_then(Value::as_object)?;
        field_text(profile, field.key())
    }
}

/// The field names under which one kind of item gives its user's ids.
struct IdFields {
    wa_id: &'static [&'static str],
    user_id: &'static [&'static str],
    parent_user_id: &'static [&'static str],
}

impl Ids {
    fn read(object: &Map<String, Value>, fields: &IdFields) -> Self {
        Self {
            wa_id: first_field(object, fields.wa_id),
            user_id: first_field(object, fields.user_id),
            parent_user_id: first_field(object, fields.parent_user_id),
            username: string_field(object, "username"),
        }
    }

    fn is_empty(&self) -> bool {
        self.wa_id.is_none() && self.user_id.is_none() && self.parent_user_id.is_none()
    }
}

fn message(
    item: Value,
    direction: Direction,
    context: &ChangeContext<'_>,
    field: &str,
    entry: &EntryContext,
) -> Event {
    let Some((object, wamid)) = object_with_id(&item) else {
        return other(&format!("{field}.invalid_message"), entry, item);
    };
    // The user is the sender of an inbound message and the recipient of an echo.
    let fields = match direction {
        Direction::Inbound => &MESSAGE_SENDER,
        Direction::Echo => &ECHO_RECIPIENT,
    };
    let contact = context.contact(Ids::read(object, fields), true);
    let message_type = string_field(object, "type").unwrap_or_else(|| "unknown".to_owned());
    let group_id = id_field(object, "group_id");
    let timestamp = meta_timestamp(object.get("timestamp"));
    Event::Message(MessageEvent {
        key: key::message(direction, &wamid),
        message_type,
        group_id,
        timestamp,
        wamid,
        direction,
        contact,
        phone_number_id: context.phone_number_id.clone(),
        display_phone_number: context.display_phone_number.clone(),
        raw: RawItem::of(&item),
    })
}

fn status(item: Value, context: &ChangeContext<'_>, field: &str, entry: &EntryContext) -> Event {
    let parsed = object_with_id(&item).and_then(|(object, wamid)| {
        let status = string_field(object, "status").filter(|s| s.len() <= MAX_ID_LEN)?;
        Some((object, wamid, status))
    });
    let Some((object, wamid, status)) = parsed else {
        return other(&format!("{field}.invalid_status"), entry, item);
    };
    // A group receipt names the group in `recipient_id` and the participant
    // in fields of its own; one message gets one receipt per participant.
    let participant_ids = Ids::read(object, &GROUP_RECEIPT_PARTICIPANT);
    let is_group = field_text(object, "recipient_type").as_deref() == Some("group")
        || !participant_ids.is_empty();
    let (contact, group_id, participant) = if is_group {
        let participant = participant_ids
            .user_id
            .clone()
            .or_else(|| participant_ids.wa_id.clone())
            .or_else(|| participant_ids.parent_user_id.clone());
        let contact = if participant_ids.is_empty() {
            Contact::default()
        } else {
            context.contact(participant_ids, false)
        };
        (contact, id_field(object, "recipient_id"), participant)
    } else {
        let contact = context.contact(Ids::read(object, &STATUS_RECIPIENT), true);
        (contact, None, None)
    };
    if participant.as_ref().is_some_and(|p| p.len() > MAX_ID_LEN) {
        return other(&format!("{field}.invalid_status"), entry, item);
    }
    let key = key::status(&wamid, &status, participant.as_deref());
    let timestamp = meta_timestamp(object.get("timestamp"));
    Event::Status(StatusEvent {
        key,
        timestamp,
        wamid,
        status,
        contact,
        group_id,
        participant,
        phone_number_id: context.phone_number_id.clone(),
        raw: RawItem::of(&item),
    })
}

/// One item of `value.groups[]`. Keyed by the ids Meta gives the item (the
/// API request it answers, the join request), else by group, type, time and
/// the participants it names; by content hash when even those are missing.
fn group(item: Value, context: &ChangeContext<'_>, field: &str, entry: &EntryContext) -> Event {
    let Some(object) = item.as_object() else {
        return other(&format!("{field}.invalid_group"), entry, item);
    };
    let update_type = id_field(object, "type");
    let mut participants = Vec::new();
    for (list, change) in [
        ("added_participants", ParticipantChange::Added),
        ("removed_participants", ParticipantChange::Removed),
        ("failed_participants", ParticipantChange::Failed),
    ] {
        for participant in array(object, list).iter().filter_map(Value::as_object) {
            participants.push(GroupParticipant {
                change,
                contact: context.contact(participant_ids(participant), false),
            });
        }
    }
    // Join requests name their user on the item itself.
    let requester = Ids::read(object, &USER_OBJECT);
    if !requester.is_empty() {
        let change = match update_type.as_deref() {
            Some("group_join_request_created") => ParticipantChange::JoinRequested,
            Some("group_join_request_revoked") => ParticipantChange::JoinRequestRevoked,
            _ => ParticipantChange::Named,
        };
        participants.push(GroupParticipant {
            change,
            contact: context.contact(requester, false),
        });
    }
    let group_id = id_field(object, "group_id");
    let request_id = id_field(object, "request_id");
    let join_request_id = id_field(object, "join_request_id");
    let item_time = meta_timestamp(object.get("timestamp"));
    let key = match (&group_id, &update_type) {
        (Some(group), Some(kind)) => {
            if let Some(request) = &request_id {
                Some(key::group(&format!("{group}:{kind}:request:{request}")))
            } else if let Some(join_request) = &join_request_id {
                Some(key::group(&format!(
                    "{group}:{kind}:join_request:{join_request}"
                )))
            } else {
                item_time.map(|at| {
                    let named = participants_in_key(&participants);
                    key::group(&format!("{group}:{kind}:at:{}{named}", at.timestamp()))
                })
            }
        }
        _ => None,
    };
    let key = key.unwrap_or_else(|| key::group(&entry_hash(field, entry, &item)));
    Event::Group(GroupEvent {
        key,
        field: field.to_owned(),
        group_id,
        update_type,
        request_id,
        join_request_id,
        account_id: entry.account_id.clone(),
        phone_number_id: context.phone_number_id.clone(),
        timestamp: item_time.or_else(|| meta_timestamp(Some(&entry.time))),
        participants,
        raw: RawItem::of(&item),
    })
}

/// A participant object: `wa_id` / `user_id` when Meta resolved them, else
/// the `input` the business used, which is a phone number or a BSUID.
fn participant_ids(participant: &Map<String, Value>) -> Ids {
    let mut ids = Ids::read(participant, &USER_OBJECT);
    if ids.wa_id.is_none()
        && ids.user_id.is_none()
        && let Some(input) = string_field(participant, "input")
    {
        if is_bsuid(&input) {
            ids.user_id = Some(input);
        } else {
            let digits: String = input.chars().filter(char::is_ascii_digit).collect();
            ids.wa_id = Some(digits).filter(|d| !d.is_empty());
        }
    }
    ids
}

/// A business-scoped user id: a two-letter country code, a period, then
/// alphanumerics (`US.13491208655302741918`; parent ids have another period).
fn is_bsuid(text: &str) -> bool {
    match text.split_once('.') {
        Some((country, rest)) => {
            country.len() == 2
                && country.chars().all(|c| c.is_ascii_alphabetic())
                && rest.chars().any(|c| c.is_ascii_alphanumeric())
                && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
        }
        None => false,
    }
}

/// `:{participants}` for a key: the users a group item names, sorted, so
/// that two users joining the same group in the same second are two events.
fn participants_in_key(participants: &[GroupParticipant]) -> String {
    let mut named: Vec<&str> = participants
        .iter()
        .filter_map(|p| p.contact.key())
        .collect();
    named.sort_unstable();
    named.dedup();
    let named = named.join(",");
    match named.len() {
        0 => String::new(),
        n if n <= MAX_PARTICIPANTS_IN_KEY => format!(":{named}"),
        _ => format!(":{}", content_hash("participants", &Value::String(named))),
    }
}

/// Keyed by the hash of the field and the canonical content, with the entry's
/// account and time: a redelivery hashes the same, a new notification does not.
fn other(field: &str, entry: &EntryContext, raw: Value) -> Event {
    Event::Other(OtherEvent {
        key: key::other(&entry_hash(field, entry, &raw)),
        field: field.to_owned(),
        account_id: entry.account_id.clone(),
        timestamp: meta_timestamp(Some(&entry.time)),
        raw: RawItem::of(&raw),
    })
}

/// The hash of a notification's content with its entry's account and time:
/// a redelivery hashes the same, a new notification does not.
fn entry_hash(field: &str, entry: &EntryContext, value: &Value) -> String {
    identity_hash(field, entry.account_id.as_deref(), &entry.time, value)
}

fn object_with_id(item: &Value) -> Option<(&Map<String, Value>, String)> {
    let object = item.as_object()?;
    let id = string_field(object, "id").filter(|id| !id.is_empty() && id.len() <= MAX_ID_LEN)?;
    Some((object, id))
}

/// An id: a string field that is neither empty nor overlong.
fn id_field(object: &Map<String, Value>, key: &str) -> Option<String> {
    string_field(object, key).filter(|id| id.len() <= MAX_ID_LEN)
}

/// The first of `keys` present as a string field.
fn first_field(object: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|key| string_field(object, key))
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
    field_text(object, key).map(Cow::into_owned)
}

/// [`string_field`] borrowed where the field is a string: for comparisons.
fn field_text<'a>(object: &'a Map<String, Value>, key: &str) -> Option<Cow<'a, str>> {
    match object.get(key)? {
        Value::String(text) if !text.is_empty() => Some(Cow::Borrowed(text)),
        Value::Number(number) => Some(Cow::Owned(number.to_string())),
        _ => None,
    }
}
