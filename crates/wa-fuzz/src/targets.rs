//! The fuzz targets: what each one feeds the code under test and which
//! properties must hold on every input (beyond "no panic").

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use wa_core::SecretString;
use wa_payload::{Event, EventKind, parse_payload, status_rank};
use wa_receiver::{SignatureError, SignatureVerifier, parse_signature_header, sign};

use crate::mutate::mutate;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Target {
    /// `wa_payload::parse_payload` and everything derived from its events.
    Payload,
    /// The `X-Hub-Signature-256` parser and the (incremental) verifier.
    Signature,
}

impl Target {
    pub(crate) const ALL: [Target; 2] = [Target::Payload, Target::Signature];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::Payload => "payload",
            Target::Signature => "signature",
        }
    }

    /// The input number `index` of this target: the same for the same seed,
    /// so that any failure can be replayed alone.
    pub(crate) fn input(self, corpus: &[Vec<u8>], rng: &mut StdRng) -> Vec<u8> {
        let seed = corpus.choose(rng).expect("the corpus is not empty");
        match self {
            Target::Payload => mutate(rng, seed),
            Target::Signature => signature_input(rng, seed),
        }
    }

    /// Runs the input; `Err` names a broken property.
    pub(crate) fn run(self, input: &[u8]) -> Result<(), String> {
        match self {
            Target::Payload => check_payload(input),
            Target::Signature => check_signature(input),
        }
    }
}

/// Keys cannot grow past this: ids longer than 512 bytes are not ids, and
/// the longest key is three ids with their separators
/// (`group:{group}:{type}:join_request:{id}`).
const MAX_KEY_LEN: usize = "group:".len() + 3 * 512 + ":".len() + ":join_request:".len();

fn check_payload(body: &[u8]) -> Result<(), String> {
    let Ok(events) = parse_payload(body) else {
        return Ok(());
    };
    for event in &events {
        let key = event.key();
        let prefix = match event.kind() {
            EventKind::Message => "msg:",
            EventKind::Echo => "echo:",
            EventKind::Status => "status:",
            EventKind::Group => "group:",
            EventKind::Other => "event:",
        };
        if !key.starts_with(prefix) || key.len() <= prefix.len() {
            return Err(format!("{:?} event with key {key:?}", event.kind()));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(format!("key of {} bytes", key.len()));
        }
        if key.contains('\0') {
            return Err(format!("key with U+0000: {key:?}"));
        }
        storable_by_postgresql(event)?;
        match event {
            Event::Message(message) => {
                let _ = message.contact.key();
                let _ = message.timestamp.map(|t| t.to_rfc3339());
                if event.wamid().is_none_or(str::is_empty) {
                    return Err("a message without a wamid".to_owned());
                }
            }
            Event::Status(status) => {
                let _ = status_rank(&status.status);
                let _ = status.contact.key();
                let _ = status.timestamp.map(|t| t.to_rfc3339());
            }
            Event::Group(group) => {
                for participant in &group.participants {
                    let _ = participant.contact.key();
                }
                let _ = group.timestamp.map(|t| t.to_rfc3339());
            }
            Event::Other(other) => {
                if other.key.len() != "event:".len() + 64 {
                    return Err(format!("content hash key {:?}", other.key));
                }
                let _ = other.timestamp.map(|t| t.to_rfc3339());
            }
        }
    }
    // Redeliveries must key the same: parsing is deterministic.
    let again = parse_payload(body).map_err(|e| format!("second parse failed: {e}"))?;
    if again != events {
        return Err("two parses of the same bytes differ".to_owned());
    }
    Ok(())
}

/// PostgreSQL refuses U+0000 and lone surrogates in `jsonb`; the parser
/// makes both U+FFFD, so no event's raw item may hold either.
fn storable_by_postgresql(event: &Event) -> Result<(), String> {
    let raw = match event {
        Event::Message(message) => &message.raw,
        Event::Status(status) => &status.raw,
        Event::Group(group) => &group.raw,
        Event::Other(other) => &other.raw,
    };
    storable_escapes(raw.as_raw().get())
        .map_err(|refused| format!("a raw item PostgreSQL would refuse: {refused}"))
}

/// Decodes every run of `\uXXXX` escapes in `json` with the standard
/// library's UTF-16 decoder: written apart from the parser's rewrite
/// (`wa-payload/src/escapes.rs`), so that it can judge it.
fn storable_escapes(json: &str) -> Result<(), String> {
    let mut run: Vec<u16> = Vec::new();
    let mut chars = json.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            decode_run(&mut run)?;
            continue;
        }
        match chars.next() {
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                let unit = Some(&hex)
                    .filter(|hex| hex.len() == 4 && hex.chars().all(|c| c.is_ascii_hexdigit()))
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| format!("a broken escape \\u{hex}"))?;
                run.push(unit);
            }
            // `\\`, `\"`, `\n`, ...: one character, and the end of a run.
            _ => decode_run(&mut run)?,
        }
    }
    decode_run(&mut run)
}

fn decode_run(run: &mut Vec<u16>) -> Result<(), String> {
    for decoded in char::decode_utf16(run.drain(..)) {
        match decoded {
            Ok('\0') => return Err("U+0000".to_owned()),
            Ok(_) => {}
            Err(lone) => {
                return Err(format!(
                    "a lone surrogate {:04x}",
                    lone.unpaired_surrogate()
                ));
            }
        }
    }
    Ok(())
}

const SECRETS: [&str; 2] = ["fuzz-app-secret", "fuzz-app-secret-next"];

/// `header length (u16 BE) | header | flags | body`: a header that is
/// correct for the body, then perhaps a damaged header or body. Flag bit 0
/// says the header still signs the body.
fn signature_input(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let body = if rng.random_bool(0.5) {
        seed.to_vec()
    } else {
        mutate(rng, seed)
    };
    let secret = SECRETS.choose(rng).expect("secrets");
    let mut header = sign(secret, &body).into_bytes();
    let mut body = body;
    let mut intact = true;
    match rng.random_range(0..10) {
        0 => {
            let at = rng.random_range(0..header.len());
            header[at] ^= 1 << rng.random_range(0..8);
            intact = false;
        }
        1 => {
            header.truncate(rng.random_range(0..header.len()));
            intact = false;
        }
        2 => {
            let junk: Vec<u8> = (0..rng.random_range(1..300))
                .map(|_| rng.random())
                .collect();
            header.extend(junk);
            intact = false;
        }
        3 => {
            header = (0..rng.random_range(0..200))
                .map(|_| rng.random())
                .collect();
            intact = false;
        }
        4 => {
            // Spelling that must still verify: upper-case hex, whitespace.
            let (prefix, digest) = header.split_at(7);
            header = [
                b"  ".as_slice(),
                prefix,
                &digest.to_ascii_uppercase(),
                b" \t",
            ]
            .concat();
        }
        5 if !body.is_empty() => {
            let at = rng.random_range(0..body.len());
            body[at] ^= 1 << rng.random_range(0..8);
            intact = false;
        }
        6 => {
            header = sign("not-a-configured-secret", &body).into_bytes();
            intact = false;
        }
        _ => {}
    }
    let mut input = Vec::with_capacity(3 + header.len() + body.len());
    let length = u16::try_from(header.len()).unwrap_or(u16::MAX);
    input.extend_from_slice(&length.to_be_bytes());
    input.extend_from_slice(&header[..usize::from(length)]);
    input.push(u8::from(intact));
    input.extend_from_slice(&body);
    input
}

fn check_signature(input: &[u8]) -> Result<(), String> {
    let Some((length, rest)) = input.split_first_chunk::<2>() else {
        return Ok(());
    };
    let length = usize::from(u16::from_be_bytes(*length));
    if rest.len() < length + 1 {
        return Ok(());
    }
    let (header, rest) = rest.split_at(length);
    let (flags, body) = rest.split_first().expect("length checked");
    let verifier = SignatureVerifier::new(SECRETS.iter().map(|s| SecretString::new(*s)).collect());

    let at_once = verifier.verify(Some(header), body);
    // Fed in pieces, as the receiver does while the body arrives.
    let in_pieces = verifier.start(Some(header)).and_then(|mut check| {
        for piece in body.chunks(1 + body.len() / 7) {
            check.update(piece);
        }
        check.finish()
    });
    if at_once != in_pieces {
        return Err(format!("at once {at_once:?}, in pieces {in_pieces:?}"));
    }
    let intact = flags & 1 == 1;
    // A damage that only changed the case of a hex digit still signs the body.
    let signed_by_us = header
        .trim_ascii()
        .strip_prefix(b"sha256=")
        .map(<[u8]>::trim_ascii)
        .is_some_and(|digest| {
            SECRETS
                .iter()
                .any(|secret| digest.eq_ignore_ascii_case(&sign(secret, body).as_bytes()[7..]))
        });
    match (&at_once, intact || signed_by_us) {
        (Ok(()), false) => return Err("a damaged signature verified".to_owned()),
        (Err(error), true) => return Err(format!("a correct signature failed: {error}")),
        _ => {}
    }
    let parsed = parse_signature_header(Some(header));
    let well_formed = header
        .trim_ascii()
        .strip_prefix(b"sha256=")
        .map(<[u8]>::trim_ascii)
        .is_some_and(|hex| hex.len() == 64 && hex.iter().all(u8::is_ascii_hexdigit));
    if parsed.is_ok() != well_formed {
        return Err(format!(
            "header parse {parsed:?}, well formed {well_formed}"
        ));
    }
    if matches!(at_once, Err(SignatureError::Malformed)) == well_formed {
        return Err("malformed is reported exactly for malformed headers".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::storable_escapes;

    #[test]
    fn the_oracle_refuses_nul_and_lone_surrogates_only() {
        for json in [
            r#"["plain","\ud83d\ude00","\u00e9\n\"","\\u0000","\\\\ud83d","\ufffd"]"#,
            "",
        ] {
            assert_eq!(storable_escapes(json), Ok(()), "{json}");
        }
        for json in [
            r#"["\u0000"]"#,
            r#"["\ud83d"]"#,
            r#"["\ude00\ud83d"]"#,
            r#"["\\\ud83dx"]"#,
        ] {
            assert!(storable_escapes(json).is_err(), "{json}");
        }
    }
}
