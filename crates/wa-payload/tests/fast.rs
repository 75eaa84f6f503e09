//! The fast path reads the usual notification without a JSON tree. Whatever
//! body it answers for, its events must be those of the tolerant parser:
//! every fixture as it is, and every fixture with one value of a change
//! changed to each kind of value the fast path does not expect.

use std::path::PathBuf;

use serde_json::{Value, json};
use wa_payload::{parse_payload, parse_payload_fast, parse_payload_tree};

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut bodies: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|entry| {
            let path = entry.expect("fixture").path();
            let name = path
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).expect("fixture"))
        })
        .collect();
    bodies.sort();
    bodies
}

/// The fast path's answer, when it gives one, is the tolerant parser's.
fn assert_same(name: &str, body: &[u8]) -> bool {
    let Some(fast) = parse_payload_fast(body) else {
        return false;
    };
    let tree = parse_payload_tree(body).unwrap_or_else(|error| {
        panic!("{name}: the fast path read a body the tree refuses: {error}")
    });
    assert_eq!(fast, tree, "{name}");
    assert_eq!(parse_payload(body).expect("parses"), tree, "{name}");
    true
}

#[test]
fn the_fast_path_reads_the_usual_fixtures_as_the_tolerant_parser_does() {
    let mut fast = Vec::new();
    for (name, body) in fixtures() {
        if assert_same(&name, &body) {
            fast.push(name);
        }
    }
    for usual in [
        "message_text.json",
        "message_image.json",
        "status_sent.json",
        "status_failed.json",
    ] {
        assert!(
            fast.iter().any(|name| name == usual),
            "{usual} took the tree: {fast:?}"
        );
    }
}

/// Every string and number leaf under each change's `value` (the items,
/// `contacts`, `metadata`), by JSON pointer.
fn leaves(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                leaves(child, format!("{at}/{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                leaves(child, format!("{at}/{i}"), out);
            }
        }
        _ => out.push(at),
    }
}

#[test]
fn every_value_the_fast_path_does_not_expect_gives_the_tolerant_parsers_events() {
    let replacements = [
        json!(""),
        json!(15551234567u64),
        json!(null),
        json!({"nested": "object"}),
        json!(["list"]),
        json!("x".repeat(600)),
        json!("group"),
        json!("16505551234"),
    ];
    let mut checked = 0;
    for (name, body) in fixtures() {
        if parse_payload_fast(&body).is_none() {
            continue;
        }
        // A fixture with a lone surrogate is no tree to vary (the parsers
        // read it only once it is made U+FFFD); the test above covers it.
        let Ok(original) = serde_json::from_slice::<Value>(&body) else {
            continue;
        };
        let mut paths = Vec::new();
        leaves(&original, String::new(), &mut paths);
        for path in paths.iter().filter(|p| p.contains("/value/")) {
            for replacement in &replacements {
                let mut changed = original.clone();
                *changed.pointer_mut(path).unwrap() = replacement.clone();
                let body = serde_json::to_vec(&changed).unwrap();
                assert_same(&format!("{name} with {path} = {replacement}"), &body);
                checked += 1;
            }
        }
        // A key the fast path does not read, in a change's value and in an item.
        for (object, key) in [
            ("/entry/0/changes/0/value", "message_echoes"),
            ("/entry/0/changes/0/value", "errors"),
            (
                "/entry/0/changes/0/value/statuses/0",
                "recipient_participant_id",
            ),
            ("/entry/0/changes/0/value/messages/0", "group_id"),
        ] {
            let mut changed = original.clone();
            if let Some(Value::Object(map)) = changed.pointer_mut(object) {
                map.insert(key.to_owned(), json!("16505550000"));
                let body = serde_json::to_vec(&changed).unwrap();
                assert_same(&format!("{name} with {object}/{key}"), &body);
                checked += 1;
            }
        }
    }
    assert!(checked > 1000, "only {checked} variants checked");
}

#[test]
fn bytes_that_are_not_utf_8_are_left_to_the_tree() {
    let body = b"{\"object\":\"whatsapp_business_account\",\"x\":\"\xff\",\"entry\":[]}";
    assert!(parse_payload_fast(body).is_none());
    assert!(parse_payload(body).is_err());
}
