//! Where a delivery goes when it is not acked: the next retry tier (a TTL
//! queue that dead-letters back to `{ns}.inbound`), or the DLQ with the
//! reason. Headers carry the history, so any worker can continue it.

use std::time::Duration;

use chrono::Utc;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use wa_broker::Topology;
use wa_broker::headers::{
    self, ATTEMPTS, DEAD_LETTERED_BY, DEFERRALS, ERROR, ERROR_CLASS, FIRST_FAILURE_AT,
    LAST_FAILURE_AT, ORIGINAL_EXCHANGE, ORIGINAL_ROUTING_KEY, text_value as text,
};

use crate::failure::Failure;

/// Error texts are cut to this many bytes in headers.
const MAX_ERROR_LEN: usize = 1024;

/// Where to publish (a queue through the default exchange, or an exchange)
/// and the properties to publish with.
pub struct Hop {
    /// Empty for the default exchange, which routes by queue name.
    pub exchange: String,
    pub queue: String,
    pub properties: BasicProperties,
}

impl Hop {
    /// The queue or exchange it goes to, for logs.
    pub fn destination(&self) -> &str {
        if self.exchange.is_empty() {
            &self.queue
        } else {
            &self.exchange
        }
    }
}

/// Where the deliveries of one delivery's failure go.
pub struct RetryPolicy {
    topology: Topology,
    worker_id: String,
}

/// What we know of a delivery when it leaves the main queue.
pub struct Origin<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub properties: &'a BasicProperties,
}

impl RetryPolicy {
    pub fn new(topology: Topology, worker_id: String) -> Self {
        Self {
            topology,
            worker_id,
        }
    }

    /// A transient failure: the next tier, or the DLQ once every tier was tried.
    pub fn retry(&self, origin: &Origin<'_>, failure: &Failure) -> Hop {
        let attempts = headers::int(origin.properties, ATTEMPTS) + 1;
        let tier = usize::try_from(attempts - 1).ok();
        match tier.and_then(|t| self.topology.retry_tiers().get(t)) {
            Some(&delay) => Hop {
                exchange: String::new(),
                queue: self.topology.retry_queue(delay),
                properties: self.failed(origin, failure, attempts),
            },
            None => self.dead_letter_after(origin, failure, attempts),
        }
    }

    /// A permanent failure: the DLQ at once.
    pub fn dead_letter(&self, origin: &Origin<'_>, failure: &Failure) -> Hop {
        let attempts = headers::int(origin.properties, ATTEMPTS) + 1;
        self.dead_letter_after(origin, failure, attempts)
    }

    /// Another worker holds a claim: come back after the first tier's delay.
    /// Not a failure, so no attempt is spent.
    pub fn defer(&self, origin: &Origin<'_>) -> Hop {
        let delay = self
            .topology
            .retry_tiers()
            .first()
            .copied()
            .unwrap_or(Duration::from_secs(5));
        let mut headers = carried_headers(origin);
        let deferrals = headers::int(origin.properties, DEFERRALS) + 1;
        headers.insert(DEFERRALS.into(), AMQPValue::LongLongInt(deferrals));
        Hop {
            exchange: String::new(),
            queue: self.topology.retry_queue(delay),
            properties: origin.properties.clone().with_headers(headers),
        }
    }

    fn dead_letter_after(&self, origin: &Origin<'_>, failure: &Failure, attempts: i64) -> Hop {
        let properties = self.failed(origin, failure, attempts);
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(DEAD_LETTERED_BY.into(), text(&self.worker_id));
        Hop {
            exchange: String::new(),
            queue: self.topology.dlq(),
            properties: properties.with_headers(headers),
        }
    }

    fn failed(&self, origin: &Origin<'_>, failure: &Failure, attempts: i64) -> BasicProperties {
        let now = Utc::now().to_rfc3339();
        let mut headers = carried_headers(origin);
        headers.insert(ATTEMPTS.into(), AMQPValue::LongLongInt(attempts));
        headers.insert(ERROR_CLASS.into(), text(failure.class.as_str()));
        headers.insert(ERROR.into(), text(truncate(&failure.reason, MAX_ERROR_LEN)));
        if !headers.inner().contains_key(FIRST_FAILURE_AT) {
            headers.insert(FIRST_FAILURE_AT.into(), text(&now));
        }
        headers.insert(LAST_FAILURE_AT.into(), text(&now));
        origin.properties.clone().with_headers(headers)
    }
}

/// The delivery's own headers, less the broker's dead-letter history (our
/// headers say the same, without growing), plus where it first came from.
fn carried_headers(origin: &Origin<'_>) -> FieldTable {
    let mut headers = FieldTable::default();
    if let Some(existing) = origin.properties.headers() {
        for (key, value) in existing.inner() {
            let broker_history = key.as_str() == "x-death"
                || key.as_str().starts_with("x-first-death")
                || key.as_str().starts_with("x-last-death");
            if !broker_history {
                headers.insert(key.clone(), value.clone());
            }
        }
    }
    if !headers.inner().contains_key(ORIGINAL_EXCHANGE) {
        headers.insert(ORIGINAL_EXCHANGE.into(), text(origin.exchange));
        headers.insert(ORIGINAL_ROUTING_KEY.into(), text(origin.routing_key));
    }
    headers
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use wa_core::Namespace;

    fn policy() -> RetryPolicy {
        let namespace: Namespace = "t".parse().expect("namespace");
        let tiers = [Duration::from_secs(5), Duration::from_secs(30)];
        RetryPolicy::new(
            Topology::new(namespace).with_retry_tiers(&tiers),
            "worker-1".into(),
        )
    }

    fn header(properties: &BasicProperties, name: &str) -> Option<String> {
        headers::text(properties, name)
    }

    /// Follows a delivery through `steps` failures, each hop's properties
    /// becoming the next delivery's.
    fn walk(policy: &RetryPolicy, failure: &Failure, steps: usize) -> Vec<Hop> {
        let mut properties = BasicProperties::default();
        let mut hops = Vec::new();
        for _ in 0..steps {
            let origin = Origin {
                exchange: "t.inbound",
                routing_key: "",
                properties: &properties,
            };
            let hop = policy.retry(&origin, failure);
            properties = hop.properties.clone();
            hops.push(hop);
        }
        hops
    }

    #[test]
    fn transient_failures_walk_the_tiers_in_order_then_the_dlq() {
        let policy = policy();
        let hops = walk(&policy, &Failure::transient("connection reset"), 3);
        let queues: Vec<&str> = hops.iter().map(|hop| hop.queue.as_str()).collect();
        assert_eq!(queues, ["t.retry.5s", "t.retry.30s", "t.dlq"]);
        let attempts: Vec<i64> = hops
            .iter()
            .map(|hop| headers::int(&hop.properties, ATTEMPTS))
            .collect();
        assert_eq!(attempts, [1, 2, 3]);
        let last = &hops[2].properties;
        assert_eq!(header(last, ERROR_CLASS).as_deref(), Some("transient"));
        assert_eq!(header(last, ERROR).as_deref(), Some("connection reset"));
        assert_eq!(header(last, DEAD_LETTERED_BY).as_deref(), Some("worker-1"));
        assert_eq!(
            header(last, ORIGINAL_EXCHANGE).as_deref(),
            Some("t.inbound")
        );
        // The first failure's time is kept; only the last one moves.
        assert_eq!(
            header(last, FIRST_FAILURE_AT),
            header(&hops[0].properties, FIRST_FAILURE_AT)
        );
        assert!(header(&hops[0].properties, DEAD_LETTERED_BY).is_none());
    }

    #[test]
    fn a_permanent_failure_goes_to_the_dlq_at_once() {
        let properties = BasicProperties::default();
        let origin = Origin {
            exchange: "t.inbound",
            routing_key: "",
            properties: &properties,
        };
        let hop = policy().dead_letter(&origin, &Failure::permanent("not JSON"));
        assert_eq!(hop.queue, "t.dlq");
        assert_eq!(hop.destination(), "t.dlq");
        assert_eq!(headers::int(&hop.properties, ATTEMPTS), 1);
        assert_eq!(
            header(&hop.properties, ERROR_CLASS).as_deref(),
            Some("permanent")
        );
    }

    #[test]
    fn a_deferral_waits_out_the_first_tier_without_spending_an_attempt() {
        let policy = policy();
        let mut properties = BasicProperties::default();
        for deferrals in 1..=2 {
            let origin = Origin {
                exchange: "t.inbound",
                routing_key: "",
                properties: &properties,
            };
            let hop = policy.defer(&origin);
            assert_eq!(hop.queue, "t.retry.5s");
            assert_eq!(headers::int(&hop.properties, DEFERRALS), deferrals);
            assert_eq!(headers::int(&hop.properties, ATTEMPTS), 0);
            properties = hop.properties;
        }
    }

    #[test]
    fn the_brokers_dead_letter_history_is_not_carried_and_long_errors_are_cut() {
        let mut table = FieldTable::default();
        table.insert("x-death".into(), text("[...]"));
        table.insert("x-first-death-queue".into(), text("t.retry.5s"));
        table.insert("x-wa-received-at".into(), AMQPValue::LongLongInt(1));
        let properties = BasicProperties::default().with_headers(table);
        let origin = Origin {
            exchange: "t.inbound",
            routing_key: "",
            properties: &properties,
        };
        let long = "é".repeat(MAX_ERROR_LEN);
        let hop = policy().retry(&origin, &Failure::transient(long));
        let carried = hop.properties.headers().clone().unwrap_or_default();
        assert!(!carried.inner().contains_key("x-death"));
        assert!(!carried.inner().contains_key("x-first-death-queue"));
        assert_eq!(headers::int(&hop.properties, "x-wa-received-at"), 1);
        let error = header(&hop.properties, ERROR).unwrap_or_default();
        assert!(error.len() <= MAX_ERROR_LEN && error.chars().all(|c| c == 'é'));
    }
}
