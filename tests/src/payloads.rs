//! WhatsApp payloads shaped like Meta's, built for a test, and signed POSTs.

use serde_json::{Value, json};

use crate::roles::APP_SECRET;

pub const PHONE_NUMBER_ID: &str = "106540352242922";

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

/// One entry, one `messages` change holding `messages` and `statuses`, with a
/// `contacts` entry for every sender.
pub fn envelope(messages: &[Value], statuses: &[Value]) -> Vec<u8> {
    let contacts: Vec<Value> = messages
        .iter()
        .filter_map(|m| m.get("from").and_then(Value::as_str))
        .map(|from| json!({ "profile": { "name": format!("User {from}") }, "wa_id": from }))
        .collect();
    let mut value = json!({
        "messaging_product": "whatsapp",
        "metadata": { "display_phone_number": "15550001111", "phone_number_id": PHONE_NUMBER_ID }
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

/// A payload of `messages` text messages and a `sent`, `delivered` and `read`
/// status for each: `messages * 4` unique events.
pub fn mixed(tag: &str, messages: usize) -> Vec<u8> {
    let mut items = Vec::new();
    let mut statuses = Vec::new();
    for i in 0..messages {
        let ts = 1_700_000_000 + i as i64;
        let from = format!("1555{:07}", i);
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
