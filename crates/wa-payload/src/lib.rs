//! WhatsApp Cloud API webhook payloads, turned into the events wa-ingest stores.
//!
//! The parser is tolerant by design: Meta adds message types and fields without
//! notice, so anything it does not know is kept as raw JSON rather than
//! rejected. Only a body that is not JSON, or not a WhatsApp envelope at all,
//! is an error.

mod canonical;
mod contact;
mod escapes;
mod event;
mod fast;
mod key;
mod parse;
mod timestamp;

pub use event::{
    Contact, Direction, Event, EventKind, GroupEvent, GroupParticipant, MessageEvent, OtherEvent,
    ParticipantChange, RawItem, StatusEvent, status_rank,
};
pub use key::EventKey;
pub use parse::{PayloadError, parse_payload, parse_payload_fast, parse_payload_tree};
