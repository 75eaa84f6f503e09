//! WhatsApp payloads shaped like Meta's, built for a test or read from the
//! parser's fixtures, and signed POSTs.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::roles::APP_SECRET;

pub const PHONE_NUMBER_ID: &str = "106540352242922";

/// The parser's fixture corpus, `crates/wa-payload/tests/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/wa-payload/tests/fixtures")
}

/// One body of the corpus, by file name.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every body of the corpus with its file name, sorted by name.
pub fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = fixtures_dir();
    let mut bodies: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| {
            let name = entry
                .expect("a fixture")
                .file_name()
                .to_string_lossy()
                .into_owned();
            let body = fixture(&name);
            (name, body)
        })
        .collect();
    bodies.sort();
    bodies
}

pub fn text_message(wamid: &str, from: &str, timestamp: i64) -> Value {
    json!({
        "from": from,
        "id": wamid,
        "timestamp": timestamp.to_string(),
        "type": "text",
        "text": { "body": format!("message {wamid}") }
    })
}

pub fn status(wamid: &str, status: &str, recipient: &str, timestamp: i64) -> Value {
    json!({
        "id": wamid,
        "status": status,
        "timestamp": timestamp.to_string(),
        "recipient_id": recipient
    })
}

/// A message written in a group by a participant known by phone number,
/// BSUID or both (Meta's "Group messages webhook reference").
pub fn group_text_message(
    wamid: &str,
    group_id: &str,
    from: Option<&str>,
    from_user_id: Option<&str>,
    timestamp: i64,
) -> Value {
    let mut message = json!({
        "group_id": group_id,
        "id": wamid,
        "timestamp": timestamp.to_string(),
        "type": "text",
        "text": { "body": format!("message {wamid}") }
    });
    if let Some(from) = from {
        message["from"] = json!(from);
    }
    if let Some(user_id) = from_user_id {
        message["from_user_id"] = json!(user_id);
    }
    message
}

/// How a group receipt names its participant: Meta's pages use all three.
#[derive(Debug, Clone, Copy)]
pub enum Participant<'a> {
    /// `recipient_participant_id` (phone number).
    RecipientParticipantId(&'a str),
    /// `participant_recipient_id` (phone number).
    ParticipantRecipientId(&'a str),
    /// `recipient_participant_user_id` (BSUID), with the number if known.
    Bsuid {
        user_id: &'a str,
        phone: Option<&'a str>,
    },
}

impl Participant<'_> {
    /// What the receipt's key names the participant by.
    pub fn key(&self) -> &str {
        match self {
            Participant::RecipientParticipantId(phone)
            | Participant::ParticipantRecipientId(phone) => phone,
            Participant::Bsuid { user_id, .. } => user_id,
        }
    }
}

/// A delivered/read receipt of a message sent to a group.
pub fn group_receipt(
    wamid: &str,
    status: &str,
    group_id: &str,
    participant: Participant<'_>,
    timestamp: i64,
) -> Value {
    let mut receipt = json!({
        "id": wamid,
        "status": status,
        "timestamp": timestamp.to_string(),
        "recipient_id": group_id,
        "recipient_type": "group"
    });
    match participant {
        Participant::RecipientParticipantId(phone) => {
            receipt["recipient_participant_id"] = json!(phone);
        }
        Participant::ParticipantRecipientId(phone) => {
            receipt["participant_recipient_id"] = json!(phone);
        }
        Participant::Bsuid { user_id, phone } => {
            receipt["recipient_participant_user_id"] = json!(user_id);
            if let Some(phone) = phone {
                receipt["recipient_participant_id"] = json!(phone);
            }
        }
    }
    receipt
}

/// One entry, one change of a group webhook `field` holding `groups` items.
pub fn groups_envelope(field: &str, items: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": "102290129340398", "changes": [{ "field": field, "value": {
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": "15550001111", "phone_number_id": PHONE_NUMBER_ID },
            "groups": items
        } }] }]
    }))
    .expect("JSON")
}

/// One entry, one `messages` change holding `messages` and `statuses`, with a
/// `contacts` entry for every sender (by `from` and `from_user_id`).
pub fn envelope(messages: &[Value], statuses: &[Value]) -> Vec<u8> {
    envelope_for(PHONE_NUMBER_ID, messages, statuses)
}

/// [`envelope`] for the business phone number `phone_number_id`.
pub fn envelope_for(phone_number_id: &str, messages: &[Value], statuses: &[Value]) -> Vec<u8> {
    let contacts: Vec<Value> = messages
        .iter()
        .filter_map(|m| {
            let wa_id = m.get("from").and_then(Value::as_str);
            let user_id = m.get("from_user_id").and_then(Value::as_str);
            let name = wa_id.or(user_id)?;
            let mut contact = json!({ "profile": { "name": format!("User {name}") } });
            if let Some(wa_id) = wa_id {
                contact["wa_id"] = json!(wa_id);
            }
            if let Some(user_id) = user_id {
                contact["user_id"] = json!(user_id);
            }
            Some(contact)
        })
        .collect();
    let mut value = json!({
        "messaging_product": "whatsapp",
        "metadata": { "display_phone_number": "15550001111", "phone_number_id": phone_number_id }
    });
    if !messages.is_empty() {
        value["contacts"] = Value::from(contacts);
        value["messages"] = Value::from(messages.to_vec());
    }
    if !statuses.is_empty() {
        value["statuses"] = Value::from(statuses.to_vec());
    }
    serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": "102290129340398", "changes": [{ "field": "messages", "value": value }] }]
    }))
    .expect("JSON")
}

/// `count` payloads of one message each ([`mixed`]), tagged `{tag}0`,
/// `{tag}1`, ...
pub fn mixed_each(tag: &str, count: usize) -> Vec<Vec<u8>> {
    (0..count).map(|i| mixed(&format!("{tag}{i}"), 1)).collect()
}

/// A payload of `messages` text messages and a `sent`, `delivered` and `read`
/// status for each: `messages * 4` unique events.
pub fn mixed(tag: &str, messages: usize) -> Vec<u8> {
    mixed_from(tag, messages, 15_550_000_000)
}

/// [`mixed`] with its senders numbered from `first_sender` up (`mixed`'s
/// are 15550000000, 15550000001, ...).
pub fn mixed_from(tag: &str, messages: usize, first_sender: u64) -> Vec<u8> {
    let mut items = Vec::new();
    let mut statuses = Vec::new();
    for i in 0..messages {
        let ts = 1_700_000_000 + i as i64;
        let from = (first_sender + i as u64).to_string();
        items.push(text_message(&format!("wamid.{tag}.in.{i}"), &from, ts));
        for (offset, name) in ["sent", "delivered", "read"].iter().enumerate() {
            statuses.push(status(
                &format!("wamid.{tag}.out.{i}"),
                name,
                &from,
                ts + offset as i64,
            ));
        }
    }
    envelope(&items, &statuses)
}

pub fn signature(body: &[u8]) -> String {
    wa_receiver::sign(APP_SECRET, body)
}

/// POSTs `body` signed with the test app secret; returns the status code.
pub async fn post_signed(client: &reqwest::Client, url: &str, body: Vec<u8>) -> u16 {
    let signature = signature(&body);
    match client
        .post(url)
        .header("content-type", "application/json")
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
    {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}
