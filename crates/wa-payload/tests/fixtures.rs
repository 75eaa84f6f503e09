//! Webhook bodies shaped like the ones Meta documents for the WhatsApp Cloud
//! API (`tests/fixtures/*.json`), and exactly what `parse_payload` makes of
//! them.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use wa_payload::{
    Contact, Direction, Event, EventKind, GroupEvent, MessageEvent, OtherEvent, ParticipantChange,
    PayloadError, StatusEvent, parse_payload, status_rank,
};

/// The WhatsApp Business Account, business number and user most fixtures use.
const WABA_ID: &str = "102290129340398";
const PHONE_NUMBER_ID: &str = "106540352242922";
const DISPLAY_PHONE_NUMBER: &str = "15550783881";
const USER_WA_ID: &str = "16505551234";
const USER_NAME: &str = "Sheena Nelson";
const USER_BSUID: &str = "US.13491208655302741918";

/// Messages the business sent to `USER_WA_ID`; the status fixtures are about them.
const OUTBOUND_1: &str = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBQ4RTc0QUJFMTYxQUExMjFGQjhBNQA=";
const OUTBOUND_2: &str = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBRGNzI4QUY5MzUwMjkzMDU4MzlFMAA=";
const OUTBOUND_3: &str = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBRCMEFEQ0ZENjBERjJBQTlDMDcwNgA=";

const FIRST_MESSAGE: &str = "/entry/0/changes/0/value/messages/0";
const FIRST_STATUS: &str = "/entry/0/changes/0/value/statuses/0";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The part of a fixture at a JSON pointer, to compare with an event's `raw`.
fn fixture_json(name: &str, pointer: &str) -> Value {
    let whole: Value = serde_json::from_slice(&fixture(name))
        .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
    whole
        .pointer(pointer)
        .cloned()
        .unwrap_or_else(|| panic!("{name} has nothing at {pointer}"))
}

fn parse_fixture(name: &str) -> Vec<Event> {
    parse_payload(&fixture(name)).unwrap_or_else(|e| panic!("{name} does not parse: {e}"))
}

fn as_message(event: &Event) -> &MessageEvent {
    match event {
        Event::Message(message) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn as_status(event: &Event) -> &StatusEvent {
    match event {
        Event::Status(status) => status,
        other => panic!("expected a status, got {other:?}"),
    }
}

fn as_group(event: &Event) -> &GroupEvent {
    match event {
        Event::Group(group) => group,
        other => panic!("expected a group event, got {other:?}"),
    }
}

fn as_other(event: &Event) -> &OtherEvent {
    match event {
        Event::Other(other) => other,
        event => panic!("expected an other event, got {event:?}"),
    }
}

/// The one event of a fixture that must hold exactly one.
fn only_event(name: &str) -> Event {
    let mut events = parse_fixture(name);
    assert_eq!(events.len(), 1, "{name}: {events:#?}");
    events.remove(0)
}

fn only_message(name: &str) -> MessageEvent {
    as_message(&only_event(name)).clone()
}

fn only_status(name: &str) -> StatusEvent {
    as_status(&only_event(name)).clone()
}

fn only_other(name: &str) -> OtherEvent {
    as_other(&only_event(name)).clone()
}

fn keys(events: &[Event]) -> Vec<&str> {
    events.iter().map(Event::key).collect()
}

fn at(seconds: i64) -> Option<DateTime<Utc>> {
    Some(DateTime::from_timestamp(seconds, 0).expect("a valid Unix time"))
}

fn contact(wa_id: Option<&str>, user_id: Option<&str>, profile_name: Option<&str>) -> Contact {
    Contact {
        wa_id: wa_id.map(str::to_owned),
        user_id: user_id.map(str::to_owned),
        profile_name: profile_name.map(str::to_owned),
        ..Contact::default()
    }
}

fn with_username(contact: Contact, username: &str) -> Contact {
    Contact {
        username: Some(username.to_owned()),
        ..contact
    }
}

fn sheena() -> Contact {
    contact(Some(USER_WA_ID), None, Some(USER_NAME))
}

/// `event:` followed by a lowercase hex SHA-256.
fn assert_content_key(key: &str) {
    let hash = key
        .strip_prefix("event:")
        .unwrap_or_else(|| panic!("{key} is not an event: key"));
    assert_eq!(hash.len(), 64, "{key}");
    assert!(
        hash.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{key}"
    );
}

/// Everything an inbound message from the fixtures' usual user must carry.
/// Returns the message for type-specific checks.
fn assert_inbound_from_sheena(
    name: &str,
    wamid: &str,
    message_type: &str,
    timestamp: i64,
) -> MessageEvent {
    let event = only_event(name);
    assert_eq!(event.kind(), EventKind::Message);
    assert_eq!(event.key(), format!("msg:{wamid}"));
    assert_eq!(event.wamid(), Some(wamid));

    let message = as_message(&event).clone();
    assert_eq!(message.key, format!("msg:{wamid}"));
    assert_eq!(message.wamid, wamid);
    assert_eq!(message.direction, Direction::Inbound);
    assert_eq!(message.message_type, message_type);
    assert_eq!(message.contact, sheena());
    assert_eq!(message.contact.key(), Some(USER_WA_ID));
    assert_eq!(message.phone_number_id.as_deref(), Some(PHONE_NUMBER_ID));
    assert_eq!(
        message.display_phone_number.as_deref(),
        Some(DISPLAY_PHONE_NUMBER)
    );
    assert_eq!(message.timestamp, at(timestamp));
    assert_eq!(message.raw.to_value(), fixture_json(name, FIRST_MESSAGE));
    message
}

/// Everything a status of a message sent to the usual user must carry.
fn assert_status_to_sheena(name: &str, wamid: &str, status: &str, timestamp: i64) -> StatusEvent {
    let event = only_event(name);
    assert_eq!(event.kind(), EventKind::Status);
    assert_eq!(event.key(), format!("status:{wamid}:{status}"));
    assert_eq!(event.wamid(), Some(wamid));

    let parsed = as_status(&event).clone();
    assert_eq!(parsed.key, format!("status:{wamid}:{status}"));
    assert_eq!(parsed.wamid, wamid);
    assert_eq!(parsed.status, status);
    // Statuses come without `contacts`: only the recipient's number is known.
    assert_eq!(parsed.contact, contact(Some(USER_WA_ID), None, None));
    assert_eq!(parsed.contact.key(), Some(USER_WA_ID));
    assert_eq!(parsed.phone_number_id.as_deref(), Some(PHONE_NUMBER_ID));
    assert_eq!(parsed.timestamp, at(timestamp));
    assert_eq!(parsed.raw.to_value(), fixture_json(name, FIRST_STATUS));
    parsed
}

// ---------------------------------------------------------------------------
// Inbound messages: every type Meta documents, plus one it has not invented yet
// ---------------------------------------------------------------------------

/// The plain inbound messages: fixture, wamid, type, timestamp, and a part
/// of `raw` with what it must hold (`None` where the type carries nothing
/// more to check).
#[test]
fn text_and_media_messages() {
    let cases = [
        (
            "message_text.json",
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzNzJFQTA4Q0FCMzNFNzFDMDJDNgA=",
            "text",
            1_749_416_383,
            Some((
                "/text/body",
                json!("Hi, is the blue jacket still available in medium?"),
            )),
        ),
        // An edit and a revoke have ids of their own: each is a message
        // that names the one it changes, never a copy of that one.
        (
            "message_edit.json",
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQ0RTFBRDIwOUI3QjJEMUQ2RDVGMwA=",
            "edit",
            1_749_416_500,
            Some((
                "/edit/original_message_id",
                json!("wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzNzJFQTA4Q0FCMzNFNzFDMDJDNgA="),
            )),
        ),
        (
            "message_revoke.json",
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQ5QjNGMjE3MEE0OEE4QjE5QzBENQA=",
            "revoke",
            1_749_416_560,
            Some((
                "/revoke/original_message_id",
                json!("wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzNzJFQTA4Q0FCMzNFNzFDMDJDNgA="),
            )),
        ),
        (
            "message_image.json",
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQwRTc2MjkyNzk0ODg4RDRGMUZBNwA=",
            "image",
            1_749_416_412,
            Some(("/image/id", json!("1003383421387256"))),
        ),
        (
            "message_audio_voice.json",
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBRBMDZBNDkyOTU5Q0UxMkIzRjAyOQA=",
            "audio",
            1_749_416_455,
            Some(("/audio/voice", json!(true))),
        ),
        (
            "message_video.json",
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBRGRkJBRjU4RjEyMzE2MjhGOUFDMgA=",
            "video",
            1_749_416_501,
            None,
        ),
        (
            "message_document.json",
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQ0RjgyNzhDODlBRDE2REEwNUZFQwA=",
            "document",
            1_749_416_540,
            Some(("/document/filename", json!("receipt-2025-03.pdf"))),
        ),
        (
            "message_sticker.json",
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQ2NTgxRjY1NDMxNDhDQzI0MjUyRQA=",
            "sticker",
            1_749_416_577,
            None,
        ),
        (
            "message_location.json",
            "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQ2NDY5QUM4NEE4OTc0OEJCNjdCOQA=",
            "location",
            1_749_416_610,
            Some(("/location/latitude", json!(37.484847))),
        ),
    ];
    for (name, wamid, kind, timestamp, part) in cases {
        let message = assert_inbound_from_sheena(name, wamid, kind, timestamp);
        if let Some((pointer, expected)) = part {
            assert_eq!(
                message.raw.to_value().pointer(pointer),
                Some(&expected),
                "{name}"
            );
        }
    }
}

/// What a user typed can hold U+0000 or half an emoji (a client that cut a
/// text between the two halves of a surrogate pair). PostgreSQL stores
/// neither, and the other messages of the webhook must not go to the DLQ
/// with it: each such escape is read as U+FFFD, everything else as sent.
#[test]
fn nul_and_half_emoji_are_read_as_the_replacement_character() {
    let name = "message_text_unstorable_escapes.json";
    let events = parse_fixture(name);
    let bodies: Vec<String> = events
        .iter()
        .map(|event| {
            let message = as_message(event);
            assert_eq!(message.message_type, "text");
            assert_eq!(message.contact.key(), Some(USER_WA_ID));
            message.raw.to_value()["text"]["body"]
                .as_str()
                .expect("a text body")
                .to_owned()
        })
        .collect();
    assert_eq!(
        bodies,
        [
            "Is it still available?\u{fffd}",
            "In blue \u{fffd}",
            "Thanks \u{1f600} \\u0000 stays text",
        ]
    );
    assert_eq!(
        as_message(&events[0]).contact.profile_name.as_deref(),
        Some("Sheena\u{fffd} Nelson")
    );
}

#[test]
fn contacts_message_does_not_mistake_the_shared_card_for_the_sender() {
    // The shared card has a WhatsApp number of its own (14155550123); the
    // sender is still the user named in `value.contacts`.
    let message = assert_inbound_from_sheena(
        "message_contacts.json",
        "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQ5REI0OUE1OTI0OUVFRkI2RjY1MgA=",
        "contacts",
        1_749_416_644,
    );
    assert_eq!(
        message.raw.to_value()["contacts"][0]["phones"][0]["wa_id"],
        "14155550123"
    );
}

#[test]
fn interactive_button_reply_message() {
    let message = assert_inbound_from_sheena(
        "message_interactive_button_reply.json",
        "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQwOTI1QzUyRjQ1MkFFMjJERUE2NAA=",
        "interactive",
        1_749_416_701,
    );
    assert_eq!(
        message.raw.to_value()["interactive"]["type"],
        "button_reply"
    );
    assert_eq!(message.raw.to_value()["context"]["id"], OUTBOUND_1);
}

#[test]
fn interactive_list_reply_message() {
    let message = assert_inbound_from_sheena(
        "message_interactive_list_reply.json",
        "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzRjEwMkY4NTlGREQwNEVCM0IzNQA=",
        "interactive",
        1_749_416_733,
    );
    assert_eq!(message.raw.to_value()["interactive"]["type"], "list_reply");
}

#[test]
fn interactive_flow_nfm_reply_message() {
    let message = assert_inbound_from_sheena(
        "message_interactive_nfm_reply.json",
        "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQ4MkIwOTk3NENGQkRCM0Y1MDY4NwA=",
        "interactive",
        1_749_416_790,
    );
    assert_eq!(message.raw.to_value()["interactive"]["type"], "nfm_reply");
    // `response_json` is a string holding JSON; it is kept as that string.
    let raw = message.raw.to_value();
    let response = raw["interactive"]["nfm_reply"]["response_json"]
        .as_str()
        .expect("response_json is a string");
    let response: Value = serde_json::from_str(response).expect("response_json holds JSON");
    assert_eq!(response["flow_token"], "appointment-7f3a2c");
}

#[test]
fn template_quick_reply_button_message() {
    let message = assert_inbound_from_sheena(
        "message_button.json",
        "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQ3QjdGQ0M3OEQ2Q0QxNTA3OTI1QgA=",
        "button",
        1_749_416_822,
    );
    assert_eq!(
        message.raw.to_value()["button"]["payload"],
        "STOP_PROMOTIONS"
    );
}

#[test]
fn reaction_message() {
    let message = assert_inbound_from_sheena(
        "message_reaction.json",
        "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBRBOTA0M0ZGRTQ2OTgwM0Y3QTdGMAA=",
        "reaction",
        1_749_416_860,
    );
    assert_eq!(message.raw.to_value()["reaction"]["emoji"], "\u{1f44d}");
}

#[test]
fn reaction_removal_with_empty_emoji_is_still_a_reaction_message() {
    let message = assert_inbound_from_sheena(
        "message_reaction_removed.json",
        "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQ3QzA3MTBEMUJEN0Y1OTJDNzY5MwA=",
        "reaction",
        1_749_416_903,
    );
    assert_eq!(message.raw.to_value()["reaction"]["emoji"], "");
    assert_eq!(
        message.raw.to_value()["reaction"]["message_id"],
        "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBQ3RjA0NkY2OTk5MEE4NTA2RjIyQQA="
    );
}

#[test]
fn order_message() {
    let message = assert_inbound_from_sheena(
        "message_order.json",
        "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBRDQ0U1NUU0MzA5QTc1Mzk4NUJERAA=",
        "order",
        1_749_416_950,
    );
    let raw = message.raw.to_value();
    let items = raw["order"]["product_items"]
        .as_array()
        .expect("product_items");
    assert_eq!(items.len(), 2);
}

#[test]
fn system_user_changed_number_message_without_contacts() {
    let name = "message_system_user_changed_number.json";
    let wamid = "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzMTdGMUU3NjFGMkZBQThEQTc4MQA=";
    let message = only_message(name);
    assert_eq!(message.key, format!("msg:{wamid}"));
    assert_eq!(message.wamid, wamid);
    assert_eq!(message.direction, Direction::Inbound);
    assert_eq!(message.message_type, "system");
    // No `contacts` array: the user is the old number in `from`, unnamed.
    assert_eq!(message.contact, contact(Some(USER_WA_ID), None, None));
    assert_eq!(message.contact.key(), Some(USER_WA_ID));
    assert_eq!(message.phone_number_id.as_deref(), Some(PHONE_NUMBER_ID));
    assert_eq!(message.timestamp, at(1_749_417_002));
    assert_eq!(message.raw.to_value(), fixture_json(name, FIRST_MESSAGE));
    assert_eq!(
        message.raw.to_value()["system"]["type"],
        "user_changed_number"
    );
    assert_eq!(message.raw.to_value()["system"]["wa_id"], "16505559876");
}

#[test]
fn request_welcome_message() {
    assert_inbound_from_sheena(
        "message_request_welcome.json",
        "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBRGMEJDMERFODg3NDc4RDVFNUEyMgA=",
        "request_welcome",
        1_749_417_040,
    );
}

#[test]
fn unsupported_message_keeps_its_errors_in_raw() {
    let message = assert_inbound_from_sheena(
        "message_unsupported.json",
        "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQ5OTVGRUUxRjFBN0VCM0EyQTkzNQA=",
        "unsupported",
        1_749_417_088,
    );
    assert_eq!(message.raw.to_value()["errors"][0]["code"], 131051);
    assert_eq!(
        message.raw.to_value()["unsupported"]["type"],
        "poll_creation"
    );
}

#[test]
fn unknown_future_message_type_is_kept_as_a_message() {
    let message = assert_inbound_from_sheena(
        "message_unknown_type.json",
        "wamid.HBgLMTY1MDU1NTEyMzQVAgASGBRCQTFBOTFCNEE2MjNGNjRGQzFERQA=",
        "hologram",
        1_749_417_120,
    );
    assert_eq!(message.raw.to_value()["hologram"]["id"], "1553023378402117");
}

#[test]
fn message_id_without_wamid_prefix_is_accepted() {
    // The shape of the dashboard's "Test" button: ids like "ABGGFlA5Fpa".
    let name = "message_non_wamid_id.json";
    let event = only_event(name);
    assert_eq!(event.key(), "msg:ABGGFlA5Fpa");
    assert_eq!(event.wamid(), Some("ABGGFlA5Fpa"));
    let message = as_message(&event);
    assert_eq!(message.message_type, "text");
    assert_eq!(
        message.contact,
        contact(Some("16315551181"), None, Some("test user name"))
    );
    assert_eq!(message.phone_number_id.as_deref(), Some("123456123"));
    assert_eq!(message.display_phone_number.as_deref(), Some("16505551111"));
    assert_eq!(message.timestamp, at(1_504_902_988));
    assert_eq!(message.raw.to_value(), fixture_json(name, FIRST_MESSAGE));
}

// ---------------------------------------------------------------------------
// Statuses
// ---------------------------------------------------------------------------

/// A field of a status's item, when present and not null.
fn item_field(status: &StatusEvent, key: &str) -> Option<Value> {
    status
        .raw
        .to_value()
        .get(key)
        .filter(|v| !v.is_null())
        .cloned()
}

#[test]
fn sent_status_carries_conversation_and_pricing() {
    let status = assert_status_to_sheena("status_sent.json", OUTBOUND_1, "sent", 1_749_417_201);
    assert_eq!(item_field(&status, "errors"), None);
    assert_eq!(
        item_field(&status, "conversation"),
        Some(json!({
            "id": "a75d17ad06104c51166f948319b03c6a",
            "expiration_timestamp": "1749503601",
            "origin": { "type": "utility" }
        }))
    );
    assert_eq!(
        item_field(&status, "pricing"),
        Some(json!({
            "billable": true,
            "pricing_model": "PMP",
            "category": "utility",
            "type": "regular"
        }))
    );
    assert_eq!(
        status.raw.to_value()["biz_opaque_callback_data"],
        "order-88213"
    );
}

#[test]
fn delivered_status() {
    let status = assert_status_to_sheena(
        "status_delivered.json",
        OUTBOUND_1,
        "delivered",
        1_749_417_203,
    );
    assert_eq!(item_field(&status, "errors"), None);
    let conversation = item_field(&status, "conversation").expect("conversation");
    assert_eq!(conversation["id"], "a75d17ad06104c51166f948319b03c6a");
    let pricing = item_field(&status, "pricing").expect("pricing");
    assert_eq!(pricing["category"], "utility");
}

#[test]
fn read_and_played_statuses_carry_no_conversation_or_pricing() {
    for (name, wamid, kind, timestamp) in [
        ("status_read.json", OUTBOUND_1, "read", 1_749_417_260),
        ("status_played.json", OUTBOUND_2, "played", 1_749_417_333),
    ] {
        let status = assert_status_to_sheena(name, wamid, kind, timestamp);
        assert_eq!(item_field(&status, "errors"), None);
        assert_eq!(item_field(&status, "conversation"), None);
        assert_eq!(item_field(&status, "pricing"), None);
    }
}

#[test]
fn failed_status_carries_its_errors() {
    let status = assert_status_to_sheena("status_failed.json", OUTBOUND_3, "failed", 1_749_417_402);
    let errors = item_field(&status, "errors").expect("errors");
    let errors = errors.as_array().expect("errors is an array");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["code"], 131047);
    assert_eq!(errors[0]["title"], "Re-engagement message");
    assert_eq!(item_field(&status, "conversation"), None);
    assert_eq!(item_field(&status, "pricing"), None);
}

/// Meta's group receipts: `recipient_id` is the group, the participant is in
/// `recipient_participant_id`, and one payload may aggregate the receipts of
/// several participants for the same message.
const GROUP_FIXTURE: &str = "status_group_delivered.json";
const GROUP_ID: &str = "Y2FwaV9ncm91cDoxNTU1MDc4Mzg4MToxMjAzNjMzOTQzMjAxODQ5NDA=";
const GROUP_MESSAGE: &str =
    "wamid.HBgSMTIwMzYzMzk0MzIwMTg0OTQwFQIAERgUMUExOEVCMUJFMjEyMzBFRTJFMUMA";

#[test]
fn group_status_receipts_are_all_returned_each_keyed_by_its_participant() {
    let events = parse_fixture(GROUP_FIXTURE);
    assert_eq!(events.len(), 2, "{events:#?}");
    let participants = [
        ("16505551234", "US.13491208655302741918", "Sheena Nelson"),
        ("14155550199", "US.20715316698304557122", "Jordan Lee"),
    ];
    for (i, (event, (wa_id, user_id, name))) in events.iter().zip(participants).enumerate() {
        let status = as_status(event);
        assert_eq!(status.wamid, GROUP_MESSAGE);
        assert_eq!(status.status, "delivered");
        // Only the phone number is in the receipt: it names the participant.
        assert_eq!(status.participant.as_deref(), Some(wa_id));
        assert_eq!(
            status.key,
            format!("status:{GROUP_MESSAGE}:delivered:{wa_id}")
        );
        assert_eq!(status.group_id.as_deref(), Some(GROUP_ID));
        // The aggregated `contacts` entry of the participant adds the BSUID.
        assert_eq!(
            status.contact,
            contact(Some(wa_id), Some(user_id), Some(name))
        );
        assert_eq!(status.phone_number_id.as_deref(), Some(PHONE_NUMBER_ID));
        assert_eq!(
            status.raw.to_value(),
            fixture_json(
                GROUP_FIXTURE,
                &format!("/entry/0/changes/0/value/statuses/{i}")
            )
        );
        assert_eq!(status.raw.to_value()["recipient_id"], GROUP_ID);
        assert_eq!(status.raw.to_value()["recipient_participant_id"], wa_id);
    }
}

// Group messages and receipts, after Meta's "Group messages webhook
// reference" (webhooks/reference/messages/group), "Webhooks for Groups API"
// (groups/webhooks: "Group message delivered" spells the participant
// `participant_recipient_id`, "Aggregated group message status" spells it
// `recipient_participant_id`) and "Business-scoped user IDs" ("Status
// messages webhooks for groups": `recipient_participant_user_id`,
// `recipient_participant_parent_user_id`).
const DOCS_GROUP_ID: &str = "Y2FwaV9ncm91cDoxNzA1NTU1MDEzOToxMjAzNjM0MDQ2OTQyMzM4MjAZD";
const DOCS_GROUP_MESSAGE: &str =
    "wamid.HBgSMTIwMzYzNDA0Njk0MjMzODIwFQIAERgUM0E5QjA3QzUwNUE4RjVGNUFEMDgA";
const JORDAN_WA_ID: &str = "14155550199";
const JORDAN_BSUID: &str = "US.20715316698304557122";

#[test]
fn group_receipt_with_the_participant_recipient_id_spelling() {
    let status = only_status("status_group_read_participant_recipient_id.json");
    assert_eq!(
        status.key,
        format!("status:{DOCS_GROUP_MESSAGE}:read:{JORDAN_WA_ID}")
    );
    assert_eq!(status.participant.as_deref(), Some(JORDAN_WA_ID));
    assert_eq!(status.group_id.as_deref(), Some(DOCS_GROUP_ID));
    assert_eq!(status.contact, contact(Some(JORDAN_WA_ID), None, None));
    assert_eq!(status.timestamp, at(1_749_420_800));
}

#[test]
fn group_receipts_name_the_participant_by_bsuid_when_meta_gives_one() {
    let events = parse_fixture("status_group_read_bsuid.json");
    let statuses: Vec<&StatusEvent> = events.iter().map(as_status).collect();
    assert_eq!(
        keys(&events),
        [
            format!("status:{DOCS_GROUP_MESSAGE}:read:{USER_BSUID}"),
            format!("status:{DOCS_GROUP_MESSAGE}:read:{JORDAN_BSUID}"),
        ]
    );
    assert_eq!(
        statuses[0].contact,
        Contact {
            parent_user_id: Some("US.ENT.11815799212886844830".to_owned()),
            ..with_username(
                contact(None, Some(USER_BSUID), Some(USER_NAME)),
                "@sheena.nelson"
            )
        }
    );
    // The phone number is there too, but the BSUID names the participant.
    assert_eq!(
        statuses[1].contact,
        contact(Some(JORDAN_WA_ID), Some(JORDAN_BSUID), Some("Jordan Lee"))
    );
    assert!(
        statuses
            .iter()
            .all(|s| s.group_id.as_deref() == Some(DOCS_GROUP_ID))
    );
}

#[test]
fn a_group_message_sent_status_is_the_message_own_and_names_no_participant() {
    let status = only_status("status_group_sent.json");
    assert_eq!(status.key, format!("status:{DOCS_GROUP_MESSAGE}:sent"));
    assert_eq!(status.participant, None);
    assert_eq!(status.group_id.as_deref(), Some(DOCS_GROUP_ID));
    // The group is not a user: no contact, not even the only `contacts` entry.
    assert_eq!(status.contact, Contact::default());
}

#[test]
fn group_message_carries_its_group_and_its_sender() {
    let name = "message_group_text.json";
    let message = only_message(name);
    assert_eq!(
        message.key,
        "msg:wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzQUZGNDQyRjBBM0Q3MDYyQjJGRgA="
    );
    assert_eq!(message.group_id.as_deref(), Some(DOCS_GROUP_ID));
    assert_eq!(
        message.contact,
        with_username(
            contact(Some(USER_WA_ID), Some(USER_BSUID), Some(USER_NAME)),
            "@sheena.nelson"
        )
    );
    assert_eq!(message.raw.to_value(), fixture_json(name, FIRST_MESSAGE));
}

#[test]
fn unknown_status_values_and_future_identity_fields_are_kept() {
    let body = serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA_ID, "changes": [{"field": "messages", "value": {
            "metadata": {"phone_number_id": PHONE_NUMBER_ID},
            "statuses": [
                {"id": DOCS_GROUP_MESSAGE, "status": "reacted", "timestamp": "1749420900",
                 "recipient_id": DOCS_GROUP_ID, "recipient_type": "group",
                 "recipient_participant_id": JORDAN_WA_ID,
                 "recipient_participant_lid": "LID.42"},
                {"id": OUTBOUND_1, "status": "deleted", "timestamp": "1749420901",
                 "recipient_id": USER_WA_ID, "recipient_handle_id": "@sheena"}
            ]}}]}]
    }))
    .expect("JSON");
    let events = parse_payload(&body).expect("parses");
    assert_eq!(
        keys(&events),
        [
            format!("status:{DOCS_GROUP_MESSAGE}:reacted:{JORDAN_WA_ID}"),
            format!("status:{OUTBOUND_1}:deleted"),
        ]
    );
    let receipt = as_status(&events[0]);
    assert_eq!(status_rank(&receipt.status), 0);
    assert_eq!(
        receipt.raw.to_value()["recipient_participant_lid"],
        "LID.42"
    );
    assert_eq!(
        as_status(&events[1]).raw.to_value()["recipient_handle_id"],
        "@sheena"
    );
}

#[test]
fn one_to_one_messages_have_no_group() {
    assert_eq!(only_message("message_text.json").group_id, None);
    let status = only_status("status_read.json");
    assert_eq!((status.group_id, status.participant), (None, None));
}

#[test]
fn status_ranks_follow_the_lifecycle_of_the_fixtures() {
    let mut ranked: Vec<(i16, String)> = [
        "status_failed.json",
        "status_read.json",
        "status_sent.json",
        "status_played.json",
        "status_delivered.json",
    ]
    .iter()
    .map(|name| {
        let status = only_status(name);
        (status_rank(&status.status), status.status)
    })
    .collect();
    ranked.sort();
    let order: Vec<&str> = ranked.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(order, ["sent", "delivered", "read", "played", "failed"]);
    assert!(ranked.iter().all(|(rank, _)| *rank > 0));
}

// ---------------------------------------------------------------------------
// Group webhook fields. Each fixture follows an example of Meta's "Webhooks
// for Groups API" page (developers.facebook.com/docs/whatsapp/cloud-api/
// groups/webhooks), with the BSUID properties of "Business-scoped user IDs"
// ("group_participants_update webhooks"), filled in with concrete values:
//
// | fixture | example on the page |
// | --- | --- |
// | group_lifecycle_create | Group create succeed |
// | group_lifecycle_create_failed | Group create fail |
// | group_lifecycle_delete | Delete group succeed |
// | group_participants_invite_link_join | User joined group using invite link succeed (+ BSUID page) |
// | group_participants_join_request_created / _revoked | User accepts or cancels join request |
// | group_participants_join_request_approved | Join request approved (integer timestamp as there) |
// | group_participants_remove | Group participant remove succeed (`input` by phone and by BSUID) |
// | group_participants_remove_partial_failure | Group participant remove with participants partially fails |
// | group_participants_leave | Group participant leaves webhook (+ BSUID page) |
// | group_settings_update | Group settings update succeed |
// | group_settings_update_partial_failure | Group settings update partial fail |
// | group_status_update_suspend / _cleared | Group suspended / Group suspension cleared |
// | group_unknown_future_field | none: a `group_*` field Meta may add |
// ---------------------------------------------------------------------------

fn only_group(name: &str) -> GroupEvent {
    let event = only_event(name);
    assert_eq!(event.kind(), EventKind::Group, "{name}");
    assert_eq!(event.wamid(), None);
    as_group(&event).clone()
}

fn group_key(kind: &str, rest: &str) -> String {
    format!("group:{DOCS_GROUP_ID}:{kind}:{rest}")
}

/// What each participant of a group item is, by what happened to them.
fn participant_changes(group: &GroupEvent) -> Vec<(ParticipantChange, Option<&str>)> {
    group
        .participants
        .iter()
        .map(|p| (p.change, p.contact.key()))
        .collect()
}

/// A fixture, its field and type, the key it must get, and its participants.
struct GroupCase(
    &'static str,
    &'static str,
    &'static str,
    String,
    Vec<(ParticipantChange, Option<&'static str>)>,
);

#[test]
fn every_group_fixture_is_one_group_event_keyed_by_meta_ids() {
    use ParticipantChange::*;
    let cases: [GroupCase; 14] = [
        GroupCase(
            "group_lifecycle_create.json",
            "group_lifecycle_update",
            "group_create",
            group_key("group_create", "request:6f3c1b2a9d8e4f70a1b2c3d4e5f60718"),
            vec![],
        ),
        GroupCase(
            "group_lifecycle_create_failed.json",
            "group_lifecycle_update",
            "group_create",
            group_key("group_create", "request:a0b1c2d3e4f5061728394a5b6c7d8e9f"),
            vec![],
        ),
        GroupCase(
            "group_lifecycle_delete.json",
            "group_lifecycle_update",
            "group_delete",
            group_key("group_delete", "request:0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
            vec![],
        ),
        GroupCase(
            "group_participants_invite_link_join.json",
            "group_participants_update",
            "group_participants_add",
            group_key(
                "group_participants_add",
                &format!("at:1749420300:{USER_BSUID}"),
            ),
            vec![(Added, Some(USER_BSUID))],
        ),
        GroupCase(
            "group_participants_join_request_created.json",
            "group_participants_update",
            "group_join_request_created",
            group_key(
                "group_join_request_created",
                "join_request:MTY0NjcwNDM1OTU6MTIwMzYzNDA0Njk0MjMzODIw",
            ),
            vec![(JoinRequested, Some(JORDAN_BSUID))],
        ),
        GroupCase(
            "group_participants_join_request_revoked.json",
            "group_participants_update",
            "group_join_request_revoked",
            group_key(
                "group_join_request_revoked",
                "join_request:MTY0NjcwNDM1OTU6MTIwMzYzNDA0Njk0MjMzODIw",
            ),
            vec![(JoinRequestRevoked, Some(JORDAN_BSUID))],
        ),
        GroupCase(
            "group_participants_join_request_approved.json",
            "group_participants_update",
            "group_participants_add",
            group_key(
                "group_participants_add",
                "at:1749420500:12125550147,14155550199",
            ),
            vec![(Added, Some(JORDAN_WA_ID)), (Added, Some("12125550147"))],
        ),
        GroupCase(
            "group_participants_remove.json",
            "group_participants_update",
            "group_participants_remove",
            group_key(
                "group_participants_remove",
                "request:1a2b3c4d5e6f708192a3b4c5d6e7f809",
            ),
            // `input` is a phone number or a BSUID, whichever the business used.
            vec![
                (Removed, Some("12125550147")),
                (Removed, Some(JORDAN_BSUID)),
            ],
        ),
        GroupCase(
            "group_participants_remove_partial_failure.json",
            "group_participants_update",
            "group_participants_remove",
            group_key(
                "group_participants_remove",
                "request:9f8e7d6c5b4a39281706f5e4d3c2b1a0",
            ),
            vec![(Removed, Some(USER_WA_ID)), (Failed, Some("13125550111"))],
        ),
        GroupCase(
            "group_participants_leave.json",
            "group_participants_update",
            "group_participants_remove",
            group_key(
                "group_participants_remove",
                &format!("at:1749421200:{JORDAN_BSUID}"),
            ),
            vec![(Removed, Some(JORDAN_BSUID))],
        ),
        GroupCase(
            "group_settings_update.json",
            "group_settings_update",
            "group_settings_update",
            group_key(
                "group_settings_update",
                "request:5e4d3c2b1a0f9e8d7c6b5a4938271605",
            ),
            vec![],
        ),
        GroupCase(
            "group_settings_update_partial_failure.json",
            "group_settings_update",
            "group_settings_update",
            group_key(
                "group_settings_update",
                "request:4d3c2b1a0f9e8d7c6b5a493827160554",
            ),
            vec![],
        ),
        GroupCase(
            "group_status_update_suspend.json",
            "group_status_update",
            "group_suspend",
            group_key("group_suspend", "at:1749423000"),
            vec![],
        ),
        GroupCase(
            "group_status_update_suspend_cleared.json",
            "group_status_update",
            "group_suspend_cleared",
            group_key("group_suspend_cleared", "at:1749426600"),
            vec![],
        ),
    ];
    for GroupCase(name, field, kind, key, participants) in cases {
        let group = only_group(name);
        assert_eq!(group.key, key, "{name}");
        assert_eq!(group.field, field, "{name}");
        assert_eq!(group.update_type.as_deref(), Some(kind), "{name}");
        assert_eq!(group.group_id.as_deref(), Some(DOCS_GROUP_ID), "{name}");
        assert_eq!(group.account_id.as_deref(), Some(WABA_ID), "{name}");
        assert_eq!(
            group.phone_number_id.as_deref(),
            Some(PHONE_NUMBER_ID),
            "{name}"
        );
        assert!(group.timestamp.is_some(), "{name}");
        assert_eq!(participant_changes(&group), participants, "{name}");
        assert_eq!(
            group.raw.to_value(),
            fixture_json(name, "/entry/0/changes/0/value/groups/0"),
            "{name}"
        );
    }
}

#[test]
fn group_participants_keep_every_id_and_username_meta_gives() {
    let group = only_group("group_participants_invite_link_join.json");
    assert_eq!(
        group.participants[0].contact,
        with_username(
            contact(Some(USER_WA_ID), Some(USER_BSUID), None),
            "@sheena.nelson"
        )
    );
    let approved = only_group("group_participants_join_request_approved.json");
    assert_eq!(approved.timestamp, at(1_749_420_500));
}

#[test]
fn a_group_field_wa_ingest_does_not_know_is_kept_as_a_group_event() {
    let group = only_group("group_unknown_future_field.json");
    assert_eq!(group.field, "group_pinned_message_update");
    assert_eq!(group.update_type.as_deref(), Some("group_message_pinned"));
    assert_eq!(
        group.key,
        group_key("group_message_pinned", "at:1749424000")
    );
    assert_eq!(
        group.raw.to_value()["pinned_message_id"],
        "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBRGRUE1MjY2MEE2NzJBMDA0MzNBNgA="
    );
}

fn groups_payload(items: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA_ID, "time": 1_749_430_000, "changes": [{
            "field": "group_participants_update",
            "value": {"messaging_product": "whatsapp",
                      "metadata": {"phone_number_id": PHONE_NUMBER_ID},
                      "groups": items}}]}]
    }))
    .expect("JSON")
}

#[test]
fn two_users_joining_in_the_same_second_are_two_events() {
    let join = |wa_id: &str| {
        json!({"timestamp": "1749420300", "group_id": DOCS_GROUP_ID,
               "type": "group_participants_add", "reason": "invite_link",
               "added_participants": [{"wa_id": wa_id}]})
    };
    let events = parse_payload(&groups_payload(json!([
        join("16505551234"),
        join("14155550199")
    ])))
    .expect("parses");
    let keys = keys(&events);
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1]);
    // A redelivery is the same event.
    let again = parse_payload(&groups_payload(json!([join("16505551234")]))).expect("parses");
    assert_eq!(again[0].key(), keys[0]);
}

#[test]
fn a_group_item_without_its_ids_is_keyed_by_its_content() {
    let events = parse_payload(&groups_payload(json!([
        {"type": "group_participants_add", "timestamp": "1749420300"},
        {"group_id": DOCS_GROUP_ID, "type": "group_participants_add"},
        "not an object"
    ])))
    .expect("parses");
    assert_eq!(events.len(), 3);
    for event in &events[..2] {
        let key = as_group(event)
            .key
            .strip_prefix("group:")
            .expect("group key");
        assert_eq!(key.len(), 64, "{key}");
    }
    assert_eq!(
        as_other(&events[2]).field,
        "group_participants_update.invalid_group"
    );
}

#[test]
fn a_long_participant_list_is_named_by_its_hash() {
    let many: Vec<Value> = (0..40)
        .map(|i| json!({"wa_id": format!("1555000{i:04}")}))
        .collect();
    let events = parse_payload(&groups_payload(json!([{
        "timestamp": "1749420300", "group_id": DOCS_GROUP_ID,
        "type": "group_participants_add", "added_participants": many
    }])))
    .expect("parses");
    let group = as_group(&events[0]);
    assert_eq!(group.participants.len(), 40);
    assert!(group.key.len() < 200, "{}", group.key);
}

// ---------------------------------------------------------------------------
// Message echoes (WhatsApp Business app, coexistence)
// ---------------------------------------------------------------------------

#[test]
fn smb_message_echoes_are_echo_messages_about_the_recipient() {
    let name = "smb_message_echoes.json";
    let events = parse_fixture(name);
    assert_eq!(
        keys(&events),
        [
            "echo:wamid.HBgLMTY1MDU1NTEyMzQVAgARGBQwRjEwQUM4NDFCMEEzNDlFQjAxQwA=",
            "echo:wamid.HBgLMTY1MDU1NTEyMzQVAgARGBQ0RTI2RDk5QzlBQkE2MTExRkZDQwA=",
        ]
    );
    let expected = [("text", 1_749_417_500), ("image", 1_749_417_512)];
    for (i, (event, (message_type, timestamp))) in events.iter().zip(expected).enumerate() {
        assert_eq!(event.kind(), EventKind::Echo);
        let echo = as_message(event);
        assert_eq!(echo.direction, Direction::Echo);
        assert_eq!(echo.message_type, message_type);
        // The user is the `to` of an echo, never the business number in `from`.
        assert_eq!(echo.contact, contact(Some(USER_WA_ID), None, None));
        assert_eq!(echo.contact.key(), Some(USER_WA_ID));
        assert_eq!(echo.phone_number_id.as_deref(), Some(PHONE_NUMBER_ID));
        assert_eq!(
            echo.display_phone_number.as_deref(),
            Some(DISPLAY_PHONE_NUMBER)
        );
        assert_eq!(echo.timestamp, at(timestamp));
        assert_eq!(
            echo.raw.to_value(),
            fixture_json(
                name,
                &format!("/entry/0/changes/0/value/message_echoes/{i}")
            )
        );
        assert_eq!(echo.raw.to_value()["from"], DISPLAY_PHONE_NUMBER);
    }
}

// ---------------------------------------------------------------------------
// Value-level errors and fields that are neither messages nor statuses
// ---------------------------------------------------------------------------

#[test]
fn value_level_errors_give_one_other_event_per_error() {
    let name = "value_errors.json";
    let events = parse_fixture(name);
    assert_eq!(events.len(), 2, "{events:#?}");
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.kind(), EventKind::Other);
        assert_eq!(event.wamid(), None);
        let other = as_other(event);
        assert_eq!(other.field, "messages.errors");
        assert_eq!(other.account_id.as_deref(), Some(WABA_ID));
        assert_content_key(&other.key);
        assert_eq!(
            other.raw.to_value()["error"],
            fixture_json(name, &format!("/entry/0/changes/0/value/errors/{i}"))
        );
        assert_eq!(
            other.raw.to_value()["metadata"]["phone_number_id"],
            PHONE_NUMBER_ID
        );
    }
    assert_eq!(as_other(&events[0]).raw.to_value()["error"]["code"], 130429);
    assert_eq!(as_other(&events[1]).raw.to_value()["error"]["code"], 131000);
    assert_ne!(events[0].key(), events[1].key());
}

/// Account-level fields: one other event holding the change's value, keyed
/// by its content. Fixture, field, and a part of the value with what it holds.
#[test]
fn account_level_updates_are_one_other_event_holding_the_value() {
    let cases = [
        (
            "template_status_update.json",
            "message_template_status_update",
            "event",
            json!("APPROVED"),
        ),
        (
            "account_update.json",
            "account_update",
            "event",
            json!("VERIFIED_ACCOUNT"),
        ),
        (
            "phone_number_quality_update.json",
            "phone_number_quality_update",
            "current_limit",
            json!("TIER_10K"),
        ),
        (
            "user_preferences.json",
            "user_preferences",
            "user_preferences",
            json!([{
                "wa_id": USER_WA_ID,
                "detail": "User requested to stop marketing messages",
                "category": "marketing_messages",
                "value": "stop",
                "timestamp": 1_749_416_700
            }]),
        ),
        // The Calling API: a call's statuses are not a message's (`wacid.`
        // ids), so they are kept with their change, as its `calls` are.
        (
            "calls_status_ringing.json",
            "calls",
            "statuses",
            json!([{
                "id": "wacid.HBgLMTY1MDU1NTEyMzQVAgASGCA2RjBDMkI0QTlFNUM3RDhFMEYxQTJCM0M0RDVFNkY3AA==",
                "timestamp": "1749416600",
                "type": "call",
                "status": "RINGING",
                "recipient_id": USER_WA_ID
            }]),
        ),
        (
            "calls_connect.json",
            "calls",
            "calls",
            fixture_json("calls_connect.json", "/entry/0/changes/0/value/calls"),
        ),
    ];
    for (name, field, part, expected) in cases {
        let other = only_other(name);
        assert_eq!(other.field, field);
        assert_eq!(other.account_id.as_deref(), Some(WABA_ID));
        assert_content_key(&other.key);
        assert_eq!(
            other.raw.to_value(),
            fixture_json(name, "/entry/0/changes/0/value")
        );
        assert_eq!(other.raw.to_value()[part], expected, "{name}");
    }
}

#[test]
fn other_event_key_ignores_key_order() {
    let original = only_other("template_status_update.json");
    let reordered = only_other("template_status_update_reordered.json");
    assert_eq!(reordered.key, original.key);
    assert_eq!(reordered.raw, original.raw);
}

#[test]
fn other_event_key_changes_with_content() {
    let approved = only_other("template_status_update.json");
    let rejected = only_other("template_status_update_rejected.json");
    assert_eq!(rejected.field, approved.field);
    assert_ne!(rejected.key, approved.key);
}

#[test]
fn other_event_key_changes_with_field() {
    let template = only_other("template_status_update.json");
    let account = only_other("account_update.json");
    let quality = only_other("phone_number_quality_update.json");
    assert_ne!(template.key, account.key);
    assert_ne!(template.key, quality.key);
    assert_ne!(account.key, quality.key);
}

/// Meta dates these changes only in `entry[].time`; `value` has no time of its
/// own. A template that is edited and approved again sends the very same
/// `value` with a later `entry.time`, and must not look like a redelivery.
#[test]

fn template_approved_again_later_gets_a_new_key() {
    let first = only_other("template_status_update.json");
    let again = only_other("template_status_update_reapproved.json");
    assert_eq!(again.raw, first.raw);
    assert_ne!(again.key, first.key);
}

/// Business-wide account updates (here the authentication-international rate
/// eligibility) reach every WhatsApp Business Account of the business with
/// the same `value`; only `entry.id` tells them apart.
#[test]

fn identical_account_update_for_two_accounts_gets_two_keys() {
    let events = parse_fixture("account_update_two_accounts.json");
    assert_eq!(events.len(), 2, "{events:#?}");
    let first = as_other(&events[0]);
    let second = as_other(&events[1]);
    assert_eq!(first.account_id.as_deref(), Some(WABA_ID));
    assert_eq!(second.account_id.as_deref(), Some("198765432109876"));
    assert_ne!(first.key, second.key);
}

// ---------------------------------------------------------------------------
// Whole payloads
// ---------------------------------------------------------------------------

#[test]
fn batch_returns_every_item_of_every_change_of_every_entry_in_order() {
    let events = parse_fixture("batch.json");
    assert_eq!(
        keys(&events),
        [
            "msg:wamid.HBgLMTY1MDU1NTEyMzQVAgASGBRDNTk2Rjc2MjcxQTkwM0FBNkNBOQA=",
            "msg:wamid.HBgLMTQxNTU1NTAxOTkVAgASGBQyRTM5NzhDMzBDQUU2RjYwNEI1MgA=",
            "status:wamid.HBgLMTY1MDU1NTEyMzQVAgARGBQ4RTc0QUJFMTYxQUExMjFGQjhBNQA=:delivered",
            "status:wamid.HBgLMTY1MDU1NTEyMzQVAgARGBRGNzI4QUY5MzUwMjkzMDU4MzlFMAA=:read",
            "status:wamid.HBgLMTQxNTU1NTAxOTkVAgASGBREQjMxMDAyNTdDRjVGQ0M4NzE3RAA=:sent",
            "status:wamid.HBgMNDQ3NzAwOTAwMTIzFQIAEhgUOUZFNjU1NjBBNEMyQTI0NEE1RkUA:delivered",
            "status:wamid.HBgMNDQ3NzAwOTAwMTIzFQIAEhgUOUZFNjU1NjBBNEMyQTI0NEE1RkUA:read",
            "msg:wamid.HBgMNDQ3NzAwOTAwMTIzFQIAEhgUQzREMzk4MTk1ODE1NUY4NjQwNDkA",
            "msg:wamid.HBgMNDQ3NzAwOTAwMTIzFQIAEhgUMDFEQTdEODc0QjhBMzIxNzQ4QkYA",
        ]
    );
    let kinds: Vec<EventKind> = events.iter().map(Event::kind).collect();
    use EventKind::{Message, Status};
    assert_eq!(
        kinds,
        [
            Message, Message, Status, Status, Status, Status, Status, Message, Message
        ]
    );
    let timestamps: Vec<Option<DateTime<Utc>>> = events
        .iter()
        .map(|event| match event {
            Event::Message(m) => m.timestamp,
            Event::Status(s) => s.timestamp,
            Event::Group(_) | Event::Other(_) => None,
        })
        .collect();
    let expected: Vec<Option<DateTime<Utc>>> = [
        1_749_418_001,
        1_749_418_003,
        1_749_418_004,
        1_749_418_006,
        1_749_418_007,
        1_749_418_010,
        1_749_418_012,
        1_749_418_015,
        1_749_418_016,
    ]
    .into_iter()
    .map(at)
    .collect();
    assert_eq!(timestamps, expected);
}

#[test]
fn batch_items_take_business_number_and_user_from_their_own_change() {
    let events = parse_fixture("batch.json");
    assert_eq!(events.len(), 9);

    // Entry 1, change 1: `contacts` lists Jordan before Sheena, the messages
    // come the other way round; each sender still gets their own name.
    let first = as_message(&events[0]);
    assert_eq!(first.contact, sheena());
    assert_eq!(first.phone_number_id.as_deref(), Some(PHONE_NUMBER_ID));
    let second = as_message(&events[1]);
    assert_eq!(
        second.contact,
        contact(Some("14155550199"), None, Some("Jordan Lee"))
    );
    assert_eq!(second.message_type, "image");

    // Entry 1, change 2: statuses to both users.
    let recipients: Vec<Option<&str>> = events[2..5]
        .iter()
        .map(|event| as_status(event).contact.wa_id.as_deref())
        .collect();
    assert_eq!(
        recipients,
        [Some(USER_WA_ID), Some(USER_WA_ID), Some("14155550199")]
    );
    assert!(item_field(as_status(&events[2]), "pricing").is_some());
    assert!(item_field(as_status(&events[3]), "pricing").is_none());

    // Entry 2: another business number and another user.
    for event in &events[5..7] {
        let status = as_status(event);
        assert_eq!(status.phone_number_id.as_deref(), Some("117223344556677"));
        assert_eq!(status.contact, contact(Some("447700900123"), None, None));
    }
    for event in &events[7..9] {
        let message = as_message(event);
        assert_eq!(message.phone_number_id.as_deref(), Some("117223344556677"));
        assert_eq!(
            message.display_phone_number.as_deref(),
            Some("447700900000")
        );
        assert_eq!(
            message.contact,
            contact(Some("447700900123"), None, Some("Amelia Clarke"))
        );
    }
    assert_eq!(as_message(&events[8]).message_type, "reaction");
}

#[test]
fn same_wamid_twice_in_one_payload_is_returned_twice_with_one_key() {
    let events = parse_fixture("duplicate_wamid.json");
    assert_eq!(events.len(), 2, "{events:#?}");
    let key = "msg:wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQ3MTE2QUJDREQyRDM2MjZFNUZDNwA=";
    assert_eq!(keys(&events), [key, key]);
    assert_eq!(events[0], events[1]);
    assert_eq!(as_message(&events[0]).contact, sheena());
}

// ---------------------------------------------------------------------------
// Business-scoped user ids (users without a phone number)
// ---------------------------------------------------------------------------

#[test]
fn message_from_user_id_without_wa_id_is_keyed_by_user_id() {
    let name = "message_user_id_only.json";
    let wamid = "wamid.HBgXVVMuMTM0OTEyMDg2NTUzMDI3NDE5MTgVAgASGBQ5QjYzMEU5NzlCOEY2RjYzQkYyOAA=";
    let message = only_message(name);
    assert_eq!(message.key, format!("msg:{wamid}"));
    assert_eq!(message.direction, Direction::Inbound);
    assert_eq!(message.message_type, "text");
    assert_eq!(
        message.contact,
        with_username(
            contact(None, Some(USER_BSUID), Some("Marisol R.")),
            "@marisol.r"
        )
    );
    assert_eq!(message.contact.key(), Some(USER_BSUID));
    assert_eq!(message.phone_number_id.as_deref(), Some(PHONE_NUMBER_ID));
    assert_eq!(message.timestamp, at(1_749_418_200));
    assert_eq!(message.raw.to_value(), fixture_json(name, FIRST_MESSAGE));
}

#[test]
fn status_with_recipient_user_id_without_recipient_id_is_keyed_by_user_id() {
    let name = "status_user_id_only.json";
    let wamid = "wamid.HBgXVVMuMTM0OTEyMDg2NTUzMDI3NDE5MTgVAgARGBRBNjBCRUI5MDU0OUQ4NzlENEE5QQA=";
    let status = only_status(name);
    assert_eq!(status.key, format!("status:{wamid}:delivered"));
    assert_eq!(status.status, "delivered");
    assert_eq!(
        status.contact,
        with_username(
            contact(None, Some(USER_BSUID), Some("Marisol R.")),
            "@marisol.r"
        )
    );
    assert_eq!(status.contact.key(), Some(USER_BSUID));
    assert_eq!(status.timestamp, at(1_749_418_260));
    assert!(item_field(&status, "pricing").is_some());
    assert_eq!(status.raw.to_value(), fixture_json(name, FIRST_STATUS));
}

#[test]
fn status_contacts_add_user_id_and_name_to_the_recipient_number() {
    let name = "status_delivered_with_contacts.json";
    let wamid = "wamid.HBgLMTY1MDU1NTEyMzQVAgARGBQzMjBEQzZGMThDNUY5QTQ2NDUyNwA=";
    let status = only_status(name);
    assert_eq!(status.key, format!("status:{wamid}:delivered"));
    assert_eq!(
        status.contact,
        Contact {
            parent_user_id: Some("US.ENT.11815799212886844830".to_owned()),
            ..with_username(
                contact(Some(USER_WA_ID), Some(USER_BSUID), Some(USER_NAME)),
                "@sheena.nelson"
            )
        }
    );
    // The business-scoped id wins over the phone number as the user's key.
    assert_eq!(status.contact.key(), Some(USER_BSUID));
    assert_eq!(status.timestamp, at(1_749_418_290));
    assert_eq!(
        item_field(&status, "pricing").expect("pricing")["category"],
        "marketing"
    );
    assert_eq!(status.raw.to_value(), fixture_json(name, FIRST_STATUS));
}

// ---------------------------------------------------------------------------
// Timestamps
// ---------------------------------------------------------------------------

fn timestamp_messages() -> Vec<MessageEvent> {
    let events = parse_fixture("timestamps.json");
    assert_eq!(events.len(), 3, "{events:#?}");
    events.iter().map(as_message).cloned().collect()
}

#[test]
fn string_timestamp_is_unix_seconds() {
    assert_eq!(timestamp_messages()[0].timestamp, at(1_749_418_300));
}

#[test]
fn integer_timestamp_is_unix_seconds() {
    let message = &timestamp_messages()[1];
    assert_eq!(message.raw.to_value()["timestamp"], 1_749_418_360);
    assert_eq!(message.timestamp, at(1_749_418_360));
}

#[test]
fn junk_timestamp_is_none_but_the_message_is_kept() {
    let message = &timestamp_messages()[2];
    assert_eq!(message.timestamp, None);
    assert_eq!(
        message.key,
        "msg:wamid.HBgLMTY1MDU1NTEyMzQVAgASGBQzNzlBQkNDNDk0NzE1RjQ5NEVFQwA="
    );
    assert_eq!(message.contact, sheena());
    assert_eq!(message.raw.to_value()["timestamp"], "yesterday");
    assert_eq!(
        message.raw.to_value(),
        fixture_json("timestamps.json", "/entry/0/changes/0/value/messages/2")
    );
}

// ---------------------------------------------------------------------------
// Bodies that are not WhatsApp webhooks
// ---------------------------------------------------------------------------

#[test]
fn non_json_body_is_not_json() {
    for body in [&b"<html>502 Bad Gateway</html>"[..], b"", b"{\"object\":"] {
        let result = parse_payload(body);
        assert!(
            matches!(result, Err(PayloadError::NotJson(_))),
            "{:?}: {result:?}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn other_object_is_not_whatsapp() {
    let result = parse_payload(br#"{"object":"page","entry":[]}"#);
    assert!(
        matches!(result, Err(PayloadError::NotWhatsApp(_))),
        "{result:?}"
    );
}

#[test]
fn json_array_is_not_whatsapp() {
    let result = parse_payload(b"[1,2]");
    assert!(
        matches!(result, Err(PayloadError::NotWhatsApp(_))),
        "{result:?}"
    );
}

#[test]
fn object_without_entry_is_not_whatsapp() {
    let result = parse_payload(br#"{"foo":1}"#);
    assert!(
        matches!(result, Err(PayloadError::NotWhatsApp(_))),
        "{result:?}"
    );
}

#[test]
fn empty_entry_list_is_no_events() {
    let events = parse_payload(br#"{"object":"whatsapp_business_account","entry":[]}"#)
        .expect("an empty entry list is a valid webhook");
    assert!(events.is_empty(), "{events:#?}");
}

// ---------------------------------------------------------------------------
// Every fixture
// ---------------------------------------------------------------------------

#[test]
fn every_fixture_parses_to_at_least_one_event() {
    let dir = fixture_path("");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").file_name())
        .filter_map(|name| name.into_string().ok())
        .filter(|name| name.ends_with(".json"))
        .collect();
    names.sort();
    assert!(names.len() >= 30, "{names:?}");
    for name in &names {
        let events = parse_fixture(name);
        assert!(!events.is_empty(), "{name} gave no events");
        for event in &events {
            assert!(!event.key().is_empty(), "{name}: {event:?}");
        }
    }
}
