//! Mutations of real webhook bodies: structure-aware ones on the parsed JSON
//! (retype, delete, duplicate, nest deeply, odd numbers, long and strange
//! strings, keys the parser looks for), then byte-level ones on the text
//! (flips, invalid UTF-8, truncation, splices of raw JSON the serializer
//! would never write: huge exponents, lone surrogates, duplicate keys).

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde_json::{Map, Number, Value};

/// Keys `wa_payload` reads: mutating them reaches the most code.
const KEYS: &[&str] = &[
    "object",
    "entry",
    "id",
    "time",
    "changes",
    "field",
    "value",
    "metadata",
    "phone_number_id",
    "display_phone_number",
    "contacts",
    "wa_id",
    "user_id",
    "profile",
    "name",
    "messages",
    "message_echoes",
    "statuses",
    "errors",
    "from",
    "from_user_id",
    "to",
    "to_user_id",
    "type",
    "timestamp",
    "status",
    "recipient_id",
    "recipient_user_id",
    "recipient_participant_id",
    "participant_recipient_id",
    "conversation",
    "pricing",
];

/// Raw JSON text no serializer writes, spliced in at random.
const RAW: &[&str] = &[
    "1e999999",
    "-1e999999",
    "-0",
    "123456789012345678901234567890",
    "18446744073709551616",
    "-9223372036854775809",
    "0.0000000000000000000000000001",
    "\"\\ud800\"",
    "\"\\udfff\\ud800\"",
    "\"\\u0000\"",
    ",\"id\":\"dup\"",
    ",\"entry\":[]",
    "{\"id\":1,\"id\":2}",
    "[[[[[[[[[[[[[[[[",
    "\"timestamp\":\"-1\"",
    "null",
    "\u{feff}",
];

/// Inputs stay within the receiver's default body limit (WA_BODY_LIMIT):
/// nothing larger reaches the parser.
pub(crate) const MAX_INPUT_LEN: usize = 4 * 1024 * 1024;

/// A mutated copy of `seed` (a corpus body), at most [`MAX_INPUT_LEN`] bytes.
pub(crate) fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    for _ in 0..8 {
        let mutated = mutate_once(rng, seed);
        if mutated.len() <= MAX_INPUT_LEN {
            return mutated;
        }
    }
    seed.to_vec()
}

fn mutate_once(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut bytes = match serde_json::from_slice::<Value>(seed) {
        Ok(mut value) if rng.random_bool(0.9) => {
            for _ in 0..rng.random_range(1..=4) {
                // What the document may still grow by: mutations compound.
                let room = MAX_INPUT_LEN.saturating_sub(encoded_len(&value));
                mutate_value(rng, &mut value, room);
            }
            serde_json::to_vec(&value).expect("a Value always serializes")
        }
        _ => seed.to_vec(),
    };
    if rng.random_bool(0.35) {
        for _ in 0..rng.random_range(1..=3) {
            mutate_bytes(rng, &mut bytes);
        }
    }
    bytes
}

fn mutate_value(rng: &mut StdRng, root: &mut Value, room: usize) {
    if rng.random_ratio(1, 9) {
        // Graft a copy of one part of the document onto another.
        let graft = pick_subtree(rng, root).clone();
        if encoded_len(&graft) <= room {
            *pick_node(rng, root) = graft;
        }
        return;
    }
    let target = pick_node(rng, root);
    match rng.random_range(0..8) {
        0 => *target = random_value(rng, 2),
        1 => delete_child(rng, target),
        2 => duplicate_child(rng, target, room),
        3 => {
            let depth = rng.random_range(1..=300);
            nest(rng, target, depth);
        }
        4 => *target = odd_number(rng),
        5 => *target = Value::String(strange_string(rng)),
        6 => {
            if let Value::Object(map) = target {
                let key = (*KEYS.choose(rng).expect("keys")).to_owned();
                map.insert(key, random_value(rng, 2));
            }
        }
        _ => {
            if let Value::Object(map) = target {
                map.clear();
            }
        }
    }
}

/// A random node, reached by a random walk from `root`.
fn pick_node<'a>(rng: &mut StdRng, root: &'a mut Value) -> &'a mut Value {
    let mut node = root;
    loop {
        let children = match node {
            Value::Array(items) => items.len(),
            Value::Object(map) => map.len(),
            _ => 0,
        };
        if children == 0 || rng.random_bool(0.25) {
            return node;
        }
        let index = rng.random_range(0..children);
        node = match node {
            Value::Array(items) => &mut items[index],
            Value::Object(map) => map.values_mut().nth(index).expect("index in range"),
            _ => unreachable!("only containers have children"),
        };
    }
}

fn encoded_len(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |bytes| bytes.len())
}

/// Like [`pick_node`], for reading.
fn pick_subtree<'a>(rng: &mut StdRng, root: &'a Value) -> &'a Value {
    let mut node = root;
    loop {
        let children: Vec<&Value> = match node {
            Value::Array(items) => items.iter().collect(),
            Value::Object(map) => map.values().collect(),
            _ => Vec::new(),
        };
        match children.choose(rng) {
            Some(child) if !rng.random_bool(0.25) => node = child,
            _ => return node,
        }
    }
}

fn delete_child(rng: &mut StdRng, node: &mut Value) {
    match node {
        Value::Array(items) if !items.is_empty() => {
            items.remove(rng.random_range(0..items.len()));
        }
        Value::Object(map) if !map.is_empty() => {
            let key = map
                .keys()
                .nth(rng.random_range(0..map.len()))
                .cloned()
                .expect("index in range");
            map.remove(&key);
        }
        _ => {}
    }
}

/// Repeats an element many times: the shape of quadratic work and of
/// allocation amplification.
fn duplicate_child(rng: &mut StdRng, node: &mut Value, room: usize) {
    if let Value::Array(items) = node
        && let Some(item) = items.choose(rng).cloned()
    {
        let copies = if rng.random_bool(0.1) {
            rng.random_range(100..=3000)
        } else {
            rng.random_range(1..=8)
        };
        let copies = copies.min(room / encoded_len(&item).max(1));
        items.extend(std::iter::repeat_n(item, copies));
    }
}

fn nest(rng: &mut StdRng, node: &mut Value, depth: usize) {
    let mut inner = std::mem::take(node);
    for _ in 0..depth {
        inner = if rng.random_bool(0.5) {
            Value::Array(vec![inner])
        } else {
            let mut map = Map::new();
            map.insert((*KEYS.choose(rng).expect("keys")).to_owned(), inner);
            Value::Object(map)
        };
    }
    *node = inner;
}

fn odd_number(rng: &mut StdRng) -> Value {
    let choices = [
        Number::from(i64::MIN),
        Number::from(i64::MAX),
        Number::from(u64::MAX),
        Number::from(0),
        Number::from(-1),
        Number::from(100_000_000_001i64),
        Number::from(1_700_000_000_000_000i64),
        Number::from_f64(1e308).expect("finite"),
        Number::from_f64(-1e308).expect("finite"),
        Number::from_f64(1.5e9).expect("finite"),
        Number::from_f64(f64::MIN_POSITIVE).expect("finite"),
        Number::from_f64(-0.0).expect("finite"),
    ];
    Value::Number(choices.choose(rng).expect("numbers").clone())
}

fn strange_string(rng: &mut StdRng) -> String {
    match rng.random_range(0..6) {
        0 => "x".repeat(rng.random_range(500..=64 * 1024)),
        1 => "\u{0000}".repeat(rng.random_range(1..=4)),
        2 => "\u{202e}\u{1f600}\u{fffd}é\u{10ffff}".to_owned(),
        3 => " 1700000000 ".to_owned(),
        4 => String::new(),
        _ => format!("wamid.{}", "A".repeat(rng.random_range(500..=600))),
    }
}

fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..7) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => odd_number(rng),
        3 => Value::Number(Number::from(rng.random::<i32>())),
        4 => Value::String(strange_string(rng)),
        5 if depth > 0 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        6 if depth > 0 => {
            let mut map = Map::new();
            for _ in 0..rng.random_range(0..4) {
                map.insert(
                    (*KEYS.choose(rng).expect("keys")).to_owned(),
                    random_value(rng, depth - 1),
                );
            }
            Value::Object(map)
        }
        _ => Value::String("1700000000".to_owned()),
    }
}

fn mutate_bytes(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    if bytes.is_empty() {
        bytes.extend_from_slice(b"{}");
    }
    let at = rng.random_range(0..bytes.len());
    match rng.random_range(0..6) {
        0 => bytes[at] ^= 1 << rng.random_range(0..8),
        1 => {
            let invalid: &[&[u8]] = &[b"\xff", b"\xc3\x28", b"\x80", b"\xed\xa0\x80", b"\xf8\x88"];
            let insert = invalid.choose(rng).expect("sequences");
            bytes.splice(at..at, insert.iter().copied());
        }
        2 => bytes.truncate(at),
        3 => {
            let end = rng.random_range(at..=bytes.len().min(at + 256));
            let slice = bytes[at..end].to_vec();
            bytes.splice(at..at, slice);
        }
        4 => {
            let raw = RAW.choose(rng).expect("raw snippets");
            bytes.splice(at..at, raw.bytes());
        }
        _ => {
            let end = rng.random_range(at..=bytes.len().min(at + 64));
            bytes.drain(at..end);
        }
    }
}
