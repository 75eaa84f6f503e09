//! Payloads shaped like Meta's, varied the way real traffic is.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const PHONE_NUMBER_ID: &str = "106540352242922";
const ACCOUNT_ID: &str = "102290129340398";

/// Builds payload `i` of a run. The same run id, seed and index give the
/// same bytes; different run ids never share a wamid.
pub struct Generator {
    run_id: String,
    contacts: usize,
    seed: u64,
}

impl Generator {
    pub fn new(run_id: impl Into<String>, contacts: usize, seed: u64) -> Self {
        Self {
            run_id: run_id.into(),
            contacts: contacts.max(1),
            seed,
        }
    }

    pub fn payload(&self, i: usize) -> Vec<u8> {
        let mut rng =
            StdRng::seed_from_u64(self.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let contact = rng.random_range(0..self.contacts);
        let wa_id = format!("1555{contact:07}");
        let ts = 1_760_000_000 + i as i64 * 7 + rng.random_range(0..5);
        let id = |n: usize| format!("wamid.{}.{i}.{n}", self.run_id);
        // The same person's business-scoped id, which Meta may send with or
        // without the number.
        let user_id = format!("US.{}{contact:08}", self.seed % 1000);
        let group_id = format!("Y2FwaV9ncm91cDp{}{}", self.run_id, contact % 4);
        let change = match i % 8 {
            0 => messages(&wa_id, vec![text(&id(0), &wa_id, ts)]),
            1 => messages(
                &wa_id,
                vec![
                    media(&id(0), &wa_id, ts, "image"),
                    json!({"from": wa_id, "id": id(1), "timestamp": (ts + 1).to_string(), "type": "location",
                           "location": {"latitude": 52.52, "longitude": 13.405, "name": "Somewhere"}}),
                ],
            ),
            // A reply to the business, a reaction to it, and the status
            // trail of a business message, arriving read, sent, delivered.
            2 => {
                let mut change = messages(
                    &wa_id,
                    vec![
                        json!({"from": wa_id, "id": id(0), "timestamp": ts.to_string(), "type": "interactive",
                               "interactive": {"type": "button_reply", "button_reply": {"id": "yes", "title": "Yes"}}}),
                        json!({"from": wa_id, "id": id(1), "timestamp": (ts + 2).to_string(), "type": "reaction",
                               "reaction": {"message_id": id(0), "emoji": "\u{1F44D}"}}),
                    ],
                );
                change["value"]["statuses"] = json!(["read", "sent", "delivered"]
                    .iter()
                    .enumerate()
                    .map(|(k, status)| json!({"id": id(9), "status": status, "recipient_id": wa_id,
                                              "timestamp": (ts + 3 - k as i64).to_string()}))
                    .collect::<Vec<_>>());
                change
            }
            3 => statuses(&wa_id, &id(0), ts),
            // A user known only by a business-scoped id.
            4 => {
                json!({"field": "messages", "value": {
                    "messaging_product": "whatsapp", "metadata": metadata(),
                    "contacts": [{"profile": {"name": format!("User {contact}")}, "user_id": user_id}],
                    "messages": [{"from_user_id": user_id, "id": id(0), "timestamp": ts.to_string(),
                                  "type": "text", "text": {"body": "hello"}}]}})
            }
            5 => json!({"field": "message_template_status_update", "value": {
                "event": "APPROVED", "message_template_id": i, "message_template_name": format!("tpl_{}", self.run_id),
                "message_template_language": "en_US", "reason": "NONE"}}),
            // A group chat message from a participant named by number and
            // BSUID together (which links the two).
            6 => json!({"field": "messages", "value": {
                "messaging_product": "whatsapp", "metadata": metadata(),
                "contacts": [{"profile": {"name": format!("User {contact}")}, "wa_id": wa_id, "user_id": user_id}],
                "messages": [{"from": wa_id, "from_user_id": user_id, "group_id": group_id, "id": id(0),
                              "timestamp": ts.to_string(), "type": "text", "text": {"body": "Hi all"}}]}}),
            // The receipts of a business message to a group, one per
            // participant, with both spellings of the participant's number.
            _ => json!({"field": "messages", "value": {
                "messaging_product": "whatsapp", "metadata": metadata(),
                "statuses": (0..3).map(|p| {
                    let participant = format!("1555{:07}", (contact + p) % self.contacts);
                    let spelling = if p % 2 == 0 { "recipient_participant_id" } else { "participant_recipient_id" };
                    let mut receipt = json!({"id": id(0), "status": "delivered", "timestamp": (ts + p as i64).to_string(),
                                             "recipient_id": group_id, "recipient_type": "group"});
                    receipt[spelling] = json!(participant);
                    receipt
                }).collect::<Vec<_>>()}}),
        };
        // Every fourth payload carries a second entry, as Meta's batches do.
        let mut entries = vec![entry(change, ts)];
        if i % 4 == 3 {
            let other = format!("1555{:07}", (contact + 1) % self.contacts);
            entries.push(entry(
                messages(&other, vec![text(&id(5), &other, ts + 4)]),
                ts + 4,
            ));
        }
        serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": entries}))
            .expect("a JSON value serializes")
    }
}

fn metadata() -> Value {
    json!({"display_phone_number": "15550001111", "phone_number_id": PHONE_NUMBER_ID})
}

fn entry(change: Value, ts: i64) -> Value {
    json!({"id": ACCOUNT_ID, "time": ts, "changes": [change]})
}

fn messages(wa_id: &str, items: Vec<Value>) -> Value {
    json!({"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": metadata(),
        "contacts": [{"profile": {"name": format!("User {wa_id}")}, "wa_id": wa_id}],
        "messages": items}})
}

fn statuses(wa_id: &str, wamid: &str, ts: i64) -> Value {
    json!({"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": metadata(),
        "statuses": [
            {"id": wamid, "status": "delivered", "timestamp": (ts + 1).to_string(), "recipient_id": wa_id},
            {"id": wamid, "status": "sent", "timestamp": ts.to_string(), "recipient_id": wa_id,
             "conversation": {"id": "c1", "origin": {"type": "service"}},
             "pricing": {"billable": true, "pricing_model": "PMP", "category": "service"}}]}})
}

fn text(wamid: &str, wa_id: &str, ts: i64) -> Value {
    json!({"from": wa_id, "id": wamid, "timestamp": ts.to_string(), "type": "text",
           "text": {"body": "Hi! Is my order on its way?"}})
}

fn media(wamid: &str, wa_id: &str, ts: i64, kind: &str) -> Value {
    json!({"from": wa_id, "id": wamid, "timestamp": ts.to_string(), "type": kind,
           kind: {"id": "1234567890", "mime_type": "image/jpeg", "sha256": "abc="}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_and_differ() {
        let generator = Generator::new("t", 10, 1);
        let mut keys = std::collections::HashSet::new();
        for i in 0..24 {
            let events = wa_payload::parse_payload(&generator.payload(i)).expect("parses");
            assert!(!events.is_empty());
            for event in events {
                keys.insert(event.key().to_owned());
            }
        }
        assert!(keys.len() > 40, "{}", keys.len());
        assert_eq!(generator.payload(7), Generator::new("t", 10, 1).payload(7));
    }

    /// The parser reads most of the mix without a JSON tree, and what it
    /// reads that way is what the tolerant parser reads.
    #[test]
    fn the_fast_path_reads_the_mix_as_the_tolerant_parser_does() {
        let generator = Generator::new("t", 10, 1);
        let mut fast = 0;
        for i in 0..64 {
            let body = generator.payload(i);
            if let Some(events) = wa_payload::parse_payload_fast(&body) {
                assert_eq!(
                    events,
                    wa_payload::parse_payload_tree(&body).unwrap(),
                    "payload {i}"
                );
                fast += 1;
            }
        }
        assert!(fast >= 32, "only {fast} of 64 payloads took the fast path");
    }

    #[test]
    fn group_traffic_has_messages_and_one_receipt_per_participant() {
        let generator = Generator::new("t", 10, 1);
        let events = wa_payload::parse_payload(&generator.payload(6)).expect("parses");
        let wa_payload::Event::Message(message) = &events[0] else {
            panic!("{events:?}");
        };
        assert!(message.group_id.is_some());
        assert!(message.contact.wa_id.is_some() && message.contact.user_id.is_some());
        let receipts = wa_payload::parse_payload(&generator.payload(7)).expect("parses");
        let participants: std::collections::HashSet<_> = receipts
            .iter()
            .filter_map(|e| match e {
                wa_payload::Event::Status(s) => Some(s.participant.clone().expect("a participant")),
                _ => None,
            })
            .collect();
        assert_eq!(participants.len(), 3);
    }
}
