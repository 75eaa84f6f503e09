use chrono::{DateTime, Utc};
use serde_json::Value;

/// Meta sends Unix seconds as a string ("1700000000"); other senders use
/// integers, milliseconds or junk. Whatever cannot be read is `None`: the raw
/// item keeps the original.
pub(crate) fn meta_timestamp(value: Option<&Value>) -> Option<DateTime<Utc>> {
    match value? {
        Value::String(text) => timestamp_text(text),
        Value::Number(number) => from_seconds(
            number
                .as_i64()
                .or_else(|| number.as_f64().map(|f| f as i64))?,
        ),
        _ => None,
    }
}

/// [`meta_timestamp`] of a string.
pub(crate) fn timestamp_text(text: &str) -> Option<DateTime<Utc>> {
    from_seconds(text.trim().parse().ok()?)
}

fn from_seconds(seconds: i64) -> Option<DateTime<Utc>> {
    // Values past the year 5138 in seconds are milliseconds in practice.
    let seconds = if seconds > 100_000_000_000 {
        seconds / 1000
    } else {
        seconds
    };
    if seconds <= 0 {
        return None;
    }
    DateTime::from_timestamp(seconds, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_strings_integers_and_milliseconds() {
        let expected = DateTime::from_timestamp(1_700_000_000, 0);
        assert_eq!(meta_timestamp(Some(&json!("1700000000"))), expected);
        assert_eq!(meta_timestamp(Some(&json!(1_700_000_000))), expected);
        assert_eq!(meta_timestamp(Some(&json!(1_700_000_000_000i64))), expected);
    }

    #[test]
    fn junk_is_none() {
        for junk in [
            json!("yesterday"),
            json!(null),
            json!({}),
            json!(-5),
            json!(""),
        ] {
            assert_eq!(meta_timestamp(Some(&junk)), None, "{junk}");
        }
        assert_eq!(meta_timestamp(None), None);
    }
}
