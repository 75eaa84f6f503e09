//! Support for the end-to-end tests: a private namespace, database and Redis
//! prefix per test, the roles started in-process on port 0, a TCP relay that
//! can cut a connection, hosts of the test's own whose link can be pulled
//! (network namespaces) and names it can move (a hosts file), signed
//! requests and WhatsApp payloads.
//!
//! Tests need the three servers. A missing server fails the test with a
//! message that says which one: a skipped test would hide a regression.

pub mod browser;
pub mod deliver;
pub mod edge;
pub mod env;
pub mod logs;
pub mod network;
pub mod payloads;
pub mod relay;
pub mod roles;
pub mod servers;
pub mod sink;
pub mod sockets;
pub mod stream;
pub mod tls;

pub use env::{TestEnv, TestRole};
pub use relay::TcpRelay;
pub use roles::{Console, Receiver, Relay, Worker};
pub use sink::Sink;

use std::future::Future;
use std::time::Duration;

/// The properties of a dead letter as a worker writes it: class, error,
/// four attempts, failed now.
pub fn dead_letter(class: &str, error: &str) -> lapin::BasicProperties {
    use lapin::types::{AMQPValue, FieldTable};
    use wa_broker::headers;
    let mut table = FieldTable::default();
    table.insert(headers::ERROR_CLASS.into(), headers::text_value(class));
    table.insert(headers::ERROR.into(), headers::text_value(error));
    table.insert(headers::ATTEMPTS.into(), AMQPValue::LongLongInt(4));
    let now = chrono::Utc::now().to_rfc3339();
    table.insert(headers::FIRST_FAILURE_AT.into(), headers::text_value(&now));
    table.insert(headers::LAST_FAILURE_AT.into(), headers::text_value(&now));
    lapin::BasicProperties::default().with_headers(table)
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `limit`
/// with `what` and the last value seen.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The Prometheus text a role serves on `addr`.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics endpoint")
        .text()
        .await
        .expect("metrics body")
}

/// Sums the samples of a Prometheus counter whose labels contain every
/// `label="value"` pair given.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric != name {
                return None;
            }
            let matches = labels
                .iter()
                .all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
