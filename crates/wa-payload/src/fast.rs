//! The usual notification read without building a JSON tree: Meta's own
//! shape of inbound messages and their statuses, every field a string. Each
//! item is kept as its own bytes from the body, and only the fields the
//! events need are read from it.
//!
//! Anything else (echoes, groups, errors, an unknown key in a change's
//! `value`, a number where Meta writes a string, an id too long, a group
//! receipt, a change nothing is read from, a `calls` change) makes [`parse`]
//! give up, and the tolerant parser in `parse.rs` reads the body instead.
//! So this module only ever returns what that parser would, which a test
//! checks on every fixture and on the load generator's payloads. Building
//! the tree cost the worker about a fifth of its CPU per stored event
//! (docs/performance.md).

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use crate::contact::{self, ContactsEntry, IdField, Ids, ProfileField};
use crate::event::{Contact, Direction, Event, MessageEvent, RawItem, StatusEvent};
use crate::key;
use crate::parse::{CALLS_FIELD, MAX_ID_LEN};
use crate::timestamp::timestamp_text;

/// Text borrowed from the body where it has no escapes.
type Text<'a> = Option<Cow<'a, str>>;

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    object: Text<'a>,
    #[serde(borrow)]
    entry: Vec<Entry<'a>>,
}

/// `id` and `time` only matter to events this module does not build.
#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    changes: Option<Vec<Change<'a>>>,
}

/// `field` otherwise only names the events of items this module gives up on.
#[derive(Deserialize)]
struct Change<'a> {
    #[serde(borrow)]
    field: Text<'a>,
    #[serde(borrow)]
    value: ChangeValue<'a>,
}

/// Every key this module reads; any other is left to the tolerant parser.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeValue<'a> {
    #[serde(rename = "messaging_product")]
    _messaging_product: Option<IgnoredAny>,
    #[serde(borrow)]
    metadata: Option<Metadata<'a>>,
    #[serde(borrow)]
    contacts: Option<Vec<ContactEntry<'a>>>,
    #[serde(borrow)]
    messages: Option<Vec<&'a RawValue>>,
    #[serde(borrow)]
    statuses: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow)]
    phone_number_id: Text<'a>,
    #[serde(borrow)]
    display_phone_number: Text<'a>,
}

#[derive(Deserialize)]
struct ContactEntry<'a> {
    #[serde(borrow)]
    wa_id: Text<'a>,
    #[serde(borrow)]
    user_id: Text<'a>,
    #[serde(borrow)]
    parent_user_id: Text<'a>,
    #[serde(borrow)]
    profile: Option<Profile<'a>>,
}

#[derive(Deserialize)]
struct Profile<'a> {
    #[serde(borrow)]
    name: Text<'a>,
    #[serde(borrow)]
    username: Text<'a>,
}

/// The fields of `messages[]` that the events need.
#[derive(Deserialize)]
struct MessageItem<'a> {
    #[serde(borrow)]
    id: Text<'a>,
    #[serde(borrow)]
    from: Text<'a>,
    #[serde(borrow)]
    from_user_id: Text<'a>,
    #[serde(borrow)]
    from_parent_user_id: Text<'a>,
    #[serde(borrow)]
    username: Text<'a>,
    #[serde(borrow, rename = "type")]
    kind: Text<'a>,
    #[serde(borrow)]
    group_id: Text<'a>,
    #[serde(borrow)]
    timestamp: Text<'a>,
}

/// The fields of `statuses[]` that the events need, and those that make it
/// a group receipt (left to the tolerant parser).
#[derive(Deserialize)]
struct StatusItem<'a> {
    #[serde(borrow)]
    id: Text<'a>,
    #[serde(borrow)]
    status: Text<'a>,
    #[serde(borrow)]
    recipient_id: Text<'a>,
    #[serde(borrow)]
    recipient_user_id: Text<'a>,
    #[serde(borrow)]
    recipient_parent_user_id: Text<'a>,
    #[serde(borrow)]
    parent_recipient_user_id: Text<'a>,
    #[serde(borrow)]
    parent_user_id: Text<'a>,
    #[serde(borrow)]
    username: Text<'a>,
    #[serde(borrow)]
    recipient_type: Text<'a>,
    #[serde(borrow)]
    timestamp: Text<'a>,
    recipient_participant_id: Option<IgnoredAny>,
    participant_recipient_id: Option<IgnoredAny>,
    recipient_participant_user_id: Option<IgnoredAny>,
    participant_recipient_user_id: Option<IgnoredAny>,
    recipient_participant_parent_user_id: Option<IgnoredAny>,
    participant_recipient_parent_user_id: Option<IgnoredAny>,
}

impl StatusItem<'_> {
    fn is_group_receipt(&self) -> bool {
        self.recipient_type.as_deref() == Some("group")
            || self.recipient_participant_id.is_some()
            || self.participant_recipient_id.is_some()
            || self.recipient_participant_user_id.is_some()
            || self.participant_recipient_user_id.is_some()
            || self.recipient_participant_parent_user_id.is_some()
            || self.participant_recipient_parent_user_id.is_some()
    }
}

/// The events of `body`, or `None` when it is not the usual shape.
pub(crate) fn parse(body: &[u8]) -> Option<Vec<Event>> {
    // Fields this module skips are not checked for UTF-8 when read from bytes.
    let text = std::str::from_utf8(body).ok()?;
    let envelope: Envelope<'_> = serde_json::from_str(text).ok()?;
    if envelope
        .object
        .as_deref()
        .is_some_and(|object| object != "whatsapp_business_account")
    {
        return None;
    }
    let mut events = Vec::new();
    for entry in envelope.entry {
        for change in entry.changes.unwrap_or_default() {
            let before = events.len();
            read_change(change, &mut events)?;
            if events.len() == before {
                return None;
            }
        }
    }
    Some(events)
}

fn read_change(change: Change<'_>, events: &mut Vec<Event>) -> Option<()> {
    if change.field.as_deref() == Some(CALLS_FIELD) {
        return None;
    }
    let value = change.value;
    let metadata = value.metadata.as_ref();
    let context = Context {
        phone_number_id: metadata.and_then(|m| text(&m.phone_number_id)),
        display_phone_number: metadata.and_then(|m| text(&m.display_phone_number)),
        contacts: value.contacts.unwrap_or_default(),
    };
    for raw in value.messages.unwrap_or_default() {
        events.push(message(raw, &context)?);
    }
    for raw in value.statuses.unwrap_or_default() {
        events.push(status(raw, &context)?);
    }
    Some(())
}

fn message(raw: &RawValue, context: &Context<'_>) -> Option<Event> {
    let item: MessageItem<'_> = serde_json::from_str(raw.get()).ok()?;
    let wamid = id(&item.id)?;
    let ids = Ids {
        wa_id: text(&item.from),
        user_id: text(&item.from_user_id),
        parent_user_id: text(&item.from_parent_user_id),
        username: text(&item.username),
    };
    Some(Event::Message(MessageEvent {
        key: key::message(Direction::Inbound, &wamid),
        wamid,
        direction: Direction::Inbound,
        contact: context.contact(ids),
        phone_number_id: context.phone_number_id.clone(),
        display_phone_number: context.display_phone_number.clone(),
        message_type: text(&item.kind).unwrap_or_else(|| "unknown".to_owned()),
        group_id: text(&item.group_id).filter(|id| id.len() <= MAX_ID_LEN),
        timestamp: item.timestamp.as_deref().and_then(timestamp_text),
        raw: RawItem::from(raw),
    }))
}

fn status(raw: &RawValue, context: &Context<'_>) -> Option<Event> {
    let item: StatusItem<'_> = serde_json::from_str(raw.get()).ok()?;
    if item.is_group_receipt() {
        return None;
    }
    let wamid = id(&item.id)?;
    let status = id(&item.status)?;
    let ids = Ids {
        wa_id: text(&item.recipient_id),
        user_id: text(&item.recipient_user_id),
        parent_user_id: text(&item.recipient_parent_user_id)
            .or_else(|| text(&item.parent_recipient_user_id))
            .or_else(|| text(&item.parent_user_id)),
        username: text(&item.username),
    };
    Some(Event::Status(StatusEvent {
        key: key::status(&wamid, &status, None),
        wamid,
        status,
        contact: context.contact(ids),
        group_id: None,
        participant: None,
        phone_number_id: context.phone_number_id.clone(),
        timestamp: item.timestamp.as_deref().and_then(timestamp_text),
        raw: RawItem::from(raw),
    }))
}

/// A field as the tolerant parser reads it: an empty string is no value.
fn present<'b>(field: &'b Text<'_>) -> Option<&'b str> {
    field.as_deref().filter(|text| !text.is_empty())
}

/// [`present`], owned.
fn text(field: &Text<'_>) -> Option<String> {
    present(field).map(str::to_owned)
}

/// An id the item cannot do without: given up on when missing or too long.
fn id(field: &Text<'_>) -> Option<String> {
    text(field).filter(|id| id.len() <= MAX_ID_LEN)
}

/// What the items of one change share.
struct Context<'a> {
    phone_number_id: Option<String>,
    display_phone_number: Option<String>,
    contacts: Vec<ContactEntry<'a>>,
}

impl Context<'_> {
    fn contact(&self, ids: Ids) -> Contact {
        // Group receipts are left to the tolerant parser, so the only entry
        // may always name the user.
        contact::complete(&self.contacts, ids, true)
    }
}

impl ContactsEntry for ContactEntry<'_> {
    fn id(&self, field: IdField) -> Option<Cow<'_, str>> {
        let id = match field {
            IdField::Wa => &self.wa_id,
            IdField::User => &self.user_id,
            IdField::ParentUser => &self.parent_user_id,
        };
        present(id).map(Cow::Borrowed)
    }

    fn profile(&self, field: ProfileField) -> Option<Cow<'_, str>> {
        let profile = self.profile.as_ref()?;
        let text = match field {
            ProfileField::Name => &profile.name,
            ProfileField::Username => &profile.username,
        };
        present(text).map(Cow::Borrowed)
    }
}
