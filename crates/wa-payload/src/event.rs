use chrono::{DateTime, Utc};
use serde_json::Value;
use serde_json::value::RawValue;

/// One item of one change of one entry: the unit that is claimed, stored and
/// deduplicated.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Message(MessageEvent),
    Status(StatusEvent),
    Group(GroupEvent),
    Other(OtherEvent),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Message,
    Echo,
    Status,
    Group,
    Other,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 5] = [
        EventKind::Message,
        EventKind::Echo,
        EventKind::Status,
        EventKind::Group,
        EventKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::Echo => "echo",
            EventKind::Status => "status",
            EventKind::Group => "group",
            EventKind::Other => "other",
        }
    }
}

impl Event {
    /// The idempotency key (`msg:{wamid}`, `echo:{wamid}`,
    /// `status:{wamid}:{status}[:{participant}]`, `group:...`, `event:{sha256}`).
    pub fn key(&self) -> &str {
        match self {
            Event::Message(m) => &m.key,
            Event::Status(s) => &s.key,
            Event::Group(g) => &g.key,
            Event::Other(o) => &o.key,
        }
    }

    pub fn kind(&self) -> EventKind {
        match self {
            Event::Message(m) if m.direction == Direction::Echo => EventKind::Echo,
            Event::Message(_) => EventKind::Message,
            Event::Status(_) => EventKind::Status,
            Event::Group(_) => EventKind::Group,
            Event::Other(_) => EventKind::Other,
        }
    }

    /// The wamid a message or status is about, for logs and DLQ listings.
    pub fn wamid(&self) -> Option<&str> {
        match self {
            Event::Message(m) => Some(&m.wamid),
            Event::Status(s) => Some(&s.wamid),
            Event::Group(_) | Event::Other(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A WhatsApp user wrote to the business (`value.messages[]`).
    Inbound,
    /// The business wrote from the WhatsApp Business app (`value.message_echoes[]`).
    Echo,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Echo => "echo",
        }
    }
}

/// Who a message or status is about, as the item names them. `user_id` is
/// the business-scoped user id (BSUID) that may come without a phone number
/// (`wa_id`) from 2026 on; `parent_user_id` the BSUID shared by linked
/// business portfolios. The store resolves every sighting to one durable
/// contact record, whichever of the ids it carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contact {
    pub wa_id: Option<String>,
    pub user_id: Option<String>,
    pub parent_user_id: Option<String>,
    /// `profile.username`, when the user adopted one.
    pub username: Option<String>,
    pub profile_name: Option<String>,
}

impl Contact {
    /// `user_id` when present, else `wa_id`; `None` for items with neither
    /// (some system messages).
    pub fn key(&self) -> Option<&str> {
        self.user_id.as_deref().or(self.wa_id.as_deref())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MessageEvent {
    pub key: String,
    pub wamid: String,
    pub direction: Direction,
    /// The WhatsApp user: the sender of an inbound message, the recipient of an echo.
    pub contact: Contact,
    pub phone_number_id: Option<String>,
    pub display_phone_number: Option<String>,
    /// `type` as Meta sent it (`text`, `image`, ..., or one we have never seen).
    pub message_type: String,
    /// The group the message was written in; `None` for a 1:1 chat.
    pub group_id: Option<String>,
    pub timestamp: Option<DateTime<Utc>>,
    /// The whole item as received.
    pub raw: RawItem,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StatusEvent {
    pub key: String,
    pub wamid: String,
    pub status: String,
    /// The recipient of a 1:1 message, or the group participant a group
    /// receipt is from (empty for a group message's own `sent`/`failed`).
    pub contact: Contact,
    /// `recipient_id` of a status with `recipient_type: "group"`.
    pub group_id: Option<String>,
    /// The participant of a group receipt as its key names it (BSUID, else
    /// phone number); `None` for 1:1 statuses and message-level group ones.
    pub participant: Option<String>,
    pub phone_number_id: Option<String>,
    pub timestamp: Option<DateTime<Utc>>,
    /// The whole item as received (the database reads `errors`,
    /// `conversation` and `pricing` from it).
    pub raw: RawItem,
}

/// An item as JSON text, stored as it is. Read the usual way it is the
/// item's own bytes from the body; read from a parsed value it is that value
/// written out once.
#[derive(Debug, Clone)]
pub struct RawItem(Box<RawValue>);

impl RawItem {
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }

    /// The item parsed: for tests and tools, never on the hot path.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.0.get()).expect("a RawItem holds JSON")
    }

    pub(crate) fn of(value: &Value) -> Self {
        Self(serde_json::value::to_raw_value(value).expect("a JSON value writes as JSON"))
    }
}

impl From<&RawValue> for RawItem {
    fn from(raw: &RawValue) -> Self {
        Self(raw.to_owned())
    }
}

impl Default for RawItem {
    fn default() -> Self {
        Self::from(RawValue::NULL)
    }
}

/// The same JSON, however it is written (key order, spacing, escapes).
impl PartialEq for RawItem {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get() || self.to_value() == other.to_value()
    }
}

/// One item of `value.groups[]` of a group webhook field
/// (`group_lifecycle_update`, `group_participants_update`,
/// `group_settings_update`, `group_status_update`, or a `group_*` field
/// wa-ingest does not know yet).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupEvent {
    /// `group:{group_id}:{type}:request:{request_id}`,
    /// `group:{group_id}:{type}:join_request:{join_request_id}`,
    /// `group:{group_id}:{type}:at:{unix time}[:{participants}]`, or
    /// `group:{sha256}` when the item lacks those ids.
    pub key: String,
    /// The webhook field, e.g. `group_participants_update`.
    pub field: String,
    pub group_id: Option<String>,
    /// The item's `type` as Meta sent it (`group_create`,
    /// `group_participants_add`, `group_suspend`, ...).
    pub update_type: Option<String>,
    pub request_id: Option<String>,
    pub join_request_id: Option<String>,
    /// `entry.id`: the WhatsApp Business Account id.
    pub account_id: Option<String>,
    pub phone_number_id: Option<String>,
    /// The item's `timestamp`, else `entry.time`.
    pub timestamp: Option<DateTime<Utc>>,
    /// Everyone the item names, with what happened to them.
    pub participants: Vec<GroupParticipant>,
    pub raw: RawItem,
}

/// A user named by a group item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupParticipant {
    pub change: ParticipantChange,
    pub contact: Contact,
}

/// What a group item says happened to a participant: the list it was in
/// (`added_participants`, `removed_participants`, `failed_participants`), or
/// for a join request item, the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParticipantChange {
    Added,
    Removed,
    Failed,
    JoinRequested,
    JoinRequestRevoked,
    /// Named by an item whose `type` wa-ingest does not know.
    Named,
}

impl ParticipantChange {
    pub fn as_str(self) -> &'static str {
        match self {
            ParticipantChange::Added => "added",
            ParticipantChange::Removed => "removed",
            ParticipantChange::Failed => "failed",
            ParticipantChange::JoinRequested => "join_requested",
            ParticipantChange::JoinRequestRevoked => "join_request_revoked",
            ParticipantChange::Named => "named",
        }
    }
}

/// Anything that is neither a message nor a status: template and account
/// updates, value-level `errors`, fields wa-ingest does not know yet.
#[derive(Debug, Clone, PartialEq)]
pub struct OtherEvent {
    pub key: String,
    pub field: String,
    /// `entry.id`: the WhatsApp Business Account id.
    pub account_id: Option<String>,
    /// `entry.time`, when it could be read.
    pub timestamp: Option<DateTime<Utc>>,
    pub raw: RawItem,
}

/// Where a status sits in a message's life. Higher never yields to lower:
/// `sent < delivered < read < played`, and `failed` is terminal (it ranks above
/// all, so a late `sent` cannot revive a failed message). Statuses we do not
/// know rank 0: stored, but they never move the latest state.
pub fn status_rank(status: &str) -> i16 {
    match status {
        "sent" => 1,
        "delivered" => 2,
        "read" => 3,
        "played" => 4,
        "failed" => 5,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ALL` in declaration order, each kind once. A new kind stops this
    /// match from compiling, which points here, at `ALL`, to list it.
    #[test]
    fn all_lists_every_kind_once_in_order() {
        let position = |kind: EventKind| match kind {
            EventKind::Message => 0,
            EventKind::Echo => 1,
            EventKind::Status => 2,
            EventKind::Group => 3,
            EventKind::Other => 4,
        };
        for (at, kind) in EventKind::ALL.iter().enumerate() {
            assert_eq!(position(*kind), at, "{}", kind.as_str());
        }
    }
}
