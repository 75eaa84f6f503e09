//! Two JSON escapes that name no storable character: `\u0000` (PostgreSQL
//! refuses U+0000 in `text` and `jsonb`) and a UTF-16 surrogate without its
//! other half (serde_json refuses it in a string, PostgreSQL in `jsonb`).
//! Both can reach a webhook through what a user typed, and either one would
//! send the whole webhook, every other event in it included, to the DLQ as
//! permanent. Each is rewritten as `\ufffd` (U+FFFD, the replacement
//! character) before the body is parsed: the same six bytes, so nothing
//! moves, and the same rewrite on every delivery of the body, so keys and
//! hashes stay stable.

use std::borrow::Cow;

const REPLACEMENT: &[u8; 6] = b"\\ufffd";

/// `body` with every `\u0000` and lone surrogate escape replaced by
/// `\ufffd`; borrowed when there is none (the usual case: one scan for
/// backslashes, no copy).
pub(crate) fn storable(body: &[u8]) -> Cow<'_, [u8]> {
    let mut body = Cow::Borrowed(body);
    let mut at = 0;
    while let Some(found) = body.get(at..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        let escape = at + found;
        // Any other escape is two bytes, `\\` included: skipping both keeps an
        // escaped backslash from being read as the start of an escape.
        at = escape + 2;
        let Some(unit) = code_unit(&body, escape) else {
            continue;
        };
        at = escape + 6;
        let lone = match unit {
            0 => true,
            0xD800..=0xDBFF => match code_unit(&body, at) {
                Some(0xDC00..=0xDFFF) => {
                    at += 6;
                    false
                }
                _ => true,
            },
            // A low half that no high half before it claimed.
            0xDC00..=0xDFFF => true,
            _ => false,
        };
        if lone {
            body.to_mut()[escape..escape + 6].copy_from_slice(REPLACEMENT);
        }
    }
    body
}

/// The code unit of a `\uXXXX` escape starting at `at`, if one does.
fn code_unit(body: &[u8], at: usize) -> Option<u16> {
    let escape = body.get(at..at + 6)?;
    let hex = escape.strip_prefix(b"\\u")?;
    // Digits only: `from_str_radix` would also take a sign (`\u+000`).
    if !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(json: &str) -> Option<String> {
        match storable(json.as_bytes()) {
            Cow::Borrowed(_) => None,
            Cow::Owned(bytes) => Some(String::from_utf8(bytes).expect("UTF-8 stays UTF-8")),
        }
    }

    #[test]
    fn nul_and_lone_surrogates_become_the_replacement_character() {
        for (json, expected) in [
            (r#"{"body":"a\u0000b"}"#, r#"{"body":"a\ufffdb"}"#),
            (r#"{"a\u0000":1}"#, r#"{"a\ufffd":1}"#),
            (r#"["\ud83d"]"#, r#"["\ufffd"]"#),
            (r#"["\uD83Dx"]"#, r#"["\ufffdx"]"#),
            (r#"["\ude00\ud83d"]"#, r#"["\ufffd\ufffd"]"#),
            (r#"["\ud83d\u0041"]"#, r#"["\ufffd\u0041"]"#),
            (r#"["\ud83d\ud83d\ude00"]"#, r#"["\ufffd\ud83d\ude00"]"#),
            (r#"["\\\u0000"]"#, r#"["\\\ufffd"]"#),
        ] {
            assert_eq!(rewritten(json).as_deref(), Some(expected), "{json}");
            let value: serde_json::Value = serde_json::from_str(expected).expect(expected);
            assert!(!value.to_string().contains('\0'), "{value}");
        }
    }

    #[test]
    fn everything_else_is_borrowed_as_it_is() {
        for json in [
            r#"{"body":"plain"}"#,
            r#"["\ud83d\ude00","\uD83D\uDE00","\u00e9\u0001\/\n\"\\"]"#,
            r#"["\\u0000","\\\\u0000","\\ud83d"]"#,
            r#"["\u000"]"#,
            r#"["\u00zz","\u+000","\u-000","\"#,
            "",
        ] {
            assert_eq!(rewritten(json), None, "{json}");
        }
    }
}
