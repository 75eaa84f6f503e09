//! Regressions from fuzzing (`crates/wa-fuzz`): bodies no sender should
//! write, which must still cost the parser time and memory in proportion to
//! their size.

use serde_json::{Value, json};
use wa_payload::{Event, parse_payload};

const PHONE_NUMBER_ID: &str = "106540352242922";

/// 2,000 errors beside a 64 KiB `metadata`: every error event used to carry
/// a copy of all of it (128 MB and as much hashing from a 200 KB body).
#[test]
fn error_events_copy_an_oversized_metadata_as_its_ids_only() {
    let metadata = json!({
        "display_phone_number": "15550783881",
        "phone_number_id": PHONE_NUMBER_ID,
        "padding": "x".repeat(64 * 1024),
    });
    let errors: Vec<Value> = (0..2000).map(|code| json!({ "code": code })).collect();
    let body = serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": "1", "changes": [{ "field": "messages", "value": {
            "metadata": metadata, "errors": errors
        }}]}]
    }))
    .unwrap();
    let events = parse_payload(&body).unwrap();
    assert_eq!(events.len(), 2000);
    for event in &events {
        let Event::Other(other) = event else {
            panic!("{event:?}")
        };
        assert_eq!(
            other.raw.to_value()["metadata"],
            json!({"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID})
        );
        assert!(other.raw.as_raw().get().len() < 1024);
    }
}

/// Meta's own `metadata` is small and stays whole in every error event.
#[test]
fn error_events_keep_a_small_metadata_whole() {
    let metadata = json!({"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID, "extra": 1});
    let body = serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": "1", "changes": [{ "field": "messages", "value": {
            "metadata": metadata, "errors": [{"code": 1}]
        }}]}]
    }))
    .unwrap();
    let events = parse_payload(&body).unwrap();
    let Event::Other(other) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(other.raw.to_value()["metadata"], metadata);
}

/// The shape of fuzz input 854626 (seed 20261129): an `entry` that is an
/// array of 2,000 copies of a value nested 100 levels deep (2.4 MB).
/// It is one event, hashed without copying the whole entry again.
#[test]
fn a_deeply_nested_entry_is_one_event() {
    let mut nested = json!({"id": "x"});
    for level in 0..100 {
        nested = if level % 2 == 0 {
            json!([nested])
        } else {
            json!({ "changes": nested })
        };
    }
    let body = serde_json::to_vec(&json!({
        "object": "whatsapp_business_account",
        "entry": [vec![nested; 2000]]
    }))
    .unwrap();
    let events = parse_payload(&body).unwrap();
    assert_eq!(events.len(), 1);
    assert!(events[0].key().starts_with("event:"));
    assert_eq!(
        parse_payload(&body).unwrap(),
        events,
        "parsing is deterministic"
    );
}
