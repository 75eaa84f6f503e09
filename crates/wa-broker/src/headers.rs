//! The AMQP headers wa-ingest writes, shared by the roles that write them
//! (receiver, worker, relay) and the code that reads them (`wa-ingest dlq`,
//! `events tail`, the tests).

use lapin::BasicProperties;
use lapin::types::{AMQPValue, LongString};

/// When the receiver accepted the webhook, in Unix milliseconds.
pub const RECEIVED_AT: &str = "x-wa-received-at";
/// Meta's `X-Hub-Signature-256`, kept so the body can be verified again.
pub const SIGNATURE: &str = "x-hub-signature-256";
/// Failed attempts so far.
pub const ATTEMPTS: &str = "x-wa-attempts";
/// Times the delivery waited for another worker's claim.
pub const DEFERRALS: &str = "x-wa-deferrals";
/// `transient` or `permanent`.
pub const ERROR_CLASS: &str = "x-wa-error-class";
pub const ERROR: &str = "x-wa-error";
/// RFC 3339 times of the first and the latest failure.
pub const FIRST_FAILURE_AT: &str = "x-wa-first-failure-at";
pub const LAST_FAILURE_AT: &str = "x-wa-last-failure-at";
/// Where the delivery was first published.
pub const ORIGINAL_EXCHANGE: &str = "x-wa-original-exchange";
pub const ORIGINAL_ROUTING_KEY: &str = "x-wa-original-routing-key";
/// The worker that moved it to the DLQ.
pub const DEAD_LETTERED_BY: &str = "x-wa-dead-lettered-by";
/// When `wa-ingest dlq replay` sent it back, RFC 3339.
pub const REPLAYED_AT: &str = "x-wa-replayed-at";

// Written by the relay on every downstream event.
/// The event's place in its ordering key's sequence (1, 2, ...).
pub const SEQUENCE: &str = "x-wa-sequence";
/// Published behind a later event of the same key (it came after the window).
pub const LATE: &str = "x-wa-late";
/// The ordering key (contact or group) the event is ordered and sharded by.
pub const CONTACT_KEY: &str = "x-wa-contact-key";

fn get<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    properties.headers().as_ref()?.inner().get(name)
}

/// An integer header, whatever integer type the publisher used; 0 if absent.
pub fn int(properties: &BasicProperties, name: &str) -> i64 {
    match get(properties, name) {
        Some(AMQPValue::ShortShortInt(v)) => i64::from(*v),
        Some(AMQPValue::ShortShortUInt(v)) => i64::from(*v),
        Some(AMQPValue::ShortInt(v)) => i64::from(*v),
        Some(AMQPValue::ShortUInt(v)) => i64::from(*v),
        Some(AMQPValue::LongInt(v)) => i64::from(*v),
        Some(AMQPValue::LongUInt(v)) => i64::from(*v),
        Some(AMQPValue::LongLongInt(v)) => *v,
        _ => 0,
    }
}

/// A string header, if present and UTF-8.
pub fn text(properties: &BasicProperties, name: &str) -> Option<String> {
    match get(properties, name)? {
        AMQPValue::LongString(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        AMQPValue::ShortString(v) => Some(v.as_str().to_owned()),
        _ => None,
    }
}

/// A string header value.
pub fn text_value(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}
