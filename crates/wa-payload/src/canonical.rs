use serde_json::Value;
use sha2::{Digest, Sha256};

/// Writes `value` as JSON with object keys sorted, so that two payloads that
/// differ only in key order hash the same.
pub(crate) fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// `sha256(field || 0x00 || canonical(value))` as lowercase hex.
pub(crate) fn content_hash(field: &str, value: &Value) -> String {
    let mut canonical = String::new();
    write_canonical(value, &mut canonical);
    hash(field, &canonical)
}

/// [`content_hash`] of `{"account_id": account_id, "time": time, "value":
/// value}` (the keys in canonical order), written straight from the parts:
/// building that object would copy `value`, which may be most of the body.
pub(crate) fn identity_hash(
    field: &str,
    account_id: Option<&str>,
    time: &Value,
    value: &Value,
) -> String {
    let mut canonical = String::from("{\"account_id\":");
    match account_id {
        Some(id) => write_canonical(&Value::String(id.to_owned()), &mut canonical),
        None => canonical.push_str("null"),
    }
    canonical.push_str(",\"time\":");
    write_canonical(time, &mut canonical);
    canonical.push_str(",\"value\":");
    write_canonical(value, &mut canonical);
    canonical.push('}');
    hash(field, &canonical)
}

fn hash(field: &str, canonical: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(field.as_bytes());
    hasher.update([0u8]);
    hasher.update(canonical.as_bytes());
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_identity_hash_is_the_hash_of_the_identity_object() {
        let values = [
            json!({"b": [1, {"z": null, "a": "é\n\"q\""}], "a": 1.5}),
            json!([]),
            json!("text"),
            json!(null),
        ];
        for value in &values {
            for (account, time) in [
                (Some("102290129340398"), json!(1_700_000_000)),
                (None, json!(null)),
                (Some("a\"b"), json!("1700000000")),
            ] {
                let object = json!({"account_id": account, "time": time, "value": value});
                assert_eq!(
                    identity_hash("f", account, &time, value),
                    content_hash("f", &object),
                    "{object}"
                );
            }
        }
    }

    #[test]
    fn key_order_does_not_change_the_hash() {
        let a = json!({"b": 1, "a": {"y": [1, {"q": 1, "p": 2}], "x": null}});
        let b = json!({"a": {"x": null, "y": [1, {"p": 2, "q": 1}]}, "b": 1});
        assert_eq!(content_hash("f", &a), content_hash("f", &b));
        assert_ne!(content_hash("f", &a), content_hash("g", &a));
    }
}
