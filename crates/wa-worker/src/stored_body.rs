//! A delivery's body known by its SHA-256. Once every event of a body is
//! stored, the worker leaves a marker under that digest (with the body's
//! event counts as its value); a later copy of the same bytes finds it
//! before it is parsed and is acked at once. The digest is the worker's
//! own: it trusts no publisher's `message_id`.

use std::fmt::Write;

use sha2::{Digest, Sha256};
use wa_payload::{Event, EventKind};

/// The SHA-256 of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyDigest([u8; 32]);

impl BodyDigest {
    pub fn of(body: &[u8]) -> Self {
        Self(Sha256::digest(body).into())
    }

    /// The lowercase hex digits, written into `out`: `hex::encode` builds
    /// its string a char at a time, which cost a marker key more than the
    /// SHA-256 it names.
    pub fn hex_into<'a>(&self, out: &'a mut [u8; 64]) -> &'a str {
        hex::encode_to_slice(self.0, out).expect("64 hex digits for 32 bytes");
        std::str::from_utf8(out).expect("hex digits are ASCII")
    }

    /// Tells deliveries apart for the breaker; copies of one body are one.
    pub fn fingerprint(&self) -> u64 {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(first)
    }
}

/// How many events of each kind a body holds: a copy acked by its marker is
/// counted in `wa_events_total` like the events it carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventTally([u64; EventKind::ALL.len()]);

impl EventTally {
    pub fn of(events: &[Event]) -> Self {
        let mut tally = Self::default();
        for event in events {
            tally.add(event.kind(), 1);
        }
        tally
    }

    pub fn add(&mut self, kind: EventKind, n: u64) {
        if let Some(at) = EventKind::ALL.iter().position(|k| *k == kind) {
            self.0[at] += n;
        }
    }

    /// The kinds present, with their counts.
    pub fn counts(&self) -> impl Iterator<Item = (EventKind, u64)> + '_ {
        EventKind::ALL
            .iter()
            .zip(self.0)
            .filter(|(_, n)| *n > 0)
            .map(|(kind, n)| (*kind, n))
    }

    /// The marker's value: `message=1 status=2` (`-` for a body without events).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        for (kind, n) in self.counts() {
            if !text.is_empty() {
                text.push(' ');
            }
            // Writing to a String cannot fail.
            let _ = write!(text, "{}={n}", kind.as_str());
        }
        if text.is_empty() {
            text.push('-');
        }
        text
    }

    /// `None` for a value this worker does not understand: that body takes
    /// the normal path.
    pub fn decode(text: &str) -> Option<Self> {
        let mut tally = Self::default();
        if text == "-" {
            return Some(tally);
        }
        for part in text.split(' ') {
            let (name, n) = part.split_once('=')?;
            let kind = EventKind::ALL.iter().find(|k| k.as_str() == name)?;
            tally.add(*kind, n.parse().ok()?);
        }
        Some(tally)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_survives_its_marker() {
        let mut tally = EventTally::default();
        tally.add(EventKind::Message, 1);
        tally.add(EventKind::Status, 2);
        assert_eq!(tally.encode(), "message=1 status=2");
        assert_eq!(EventTally::decode(&tally.encode()), Some(tally));
        let empty = EventTally::default();
        assert_eq!(EventTally::decode(&empty.encode()), Some(empty));
    }

    #[test]
    fn a_marker_this_worker_cannot_read_means_the_normal_path() {
        for odd in [
            "",
            "message",
            "message=x",
            "reaction=1",
            "message=1  status=2",
        ] {
            assert_eq!(EventTally::decode(odd), None, "{odd:?}");
        }
    }

    #[test]
    fn copies_of_a_body_share_a_digest_and_a_fingerprint() {
        let a = BodyDigest::of(b"{\"object\":\"whatsapp_business_account\"}");
        let b = BodyDigest::of(b"{\"object\":\"whatsapp_business_account\"}");
        assert_eq!(a, b);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a, BodyDigest::of(b"{}"));
        assert_eq!(a.hex_into(&mut [0; 64]).len(), 64);
    }
}
