//! The breaker, for failures the classification table does not know: when
//! many distinct deliveries, each tried alone, fail with the same
//! non-payload error within a short window, the cause is not in them, and
//! the worker pauses as it would for an outage. One delivery failing again
//! and again counts once, so a payload that fails alone still walks the
//! retry tiers to the DLQ.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Signatures tracked at once; the oldest is forgotten past this.
const MAX_SIGNATURES: usize = 256;

pub(crate) struct Breaker {
    threshold: usize,
    window: Duration,
    /// Per signature, the distinct deliveries that failed with it lately,
    /// oldest first. Never longer than `threshold`: reaching it trips.
    failures: Mutex<HashMap<String, VecDeque<(Instant, u64)>>>,
}

impl Breaker {
    pub(crate) fn new(threshold: usize, window: Duration) -> Self {
        Self {
            threshold: threshold.max(2),
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records that the delivery with `fingerprint` failed alone with
    /// `signature`. True when that makes `threshold` distinct deliveries
    /// within the window: the breaker trips and counts afresh.
    pub(crate) fn record(&self, signature: &str, fingerprint: u64, now: Instant) -> bool {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let window = self.window;
        failures.retain(|_, seen| {
            while seen
                .front()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) > window)
            {
                seen.pop_front();
            }
            !seen.is_empty()
        });
        if !failures.contains_key(signature) && failures.len() >= MAX_SIGNATURES {
            let oldest = failures
                .iter()
                .min_by_key(|(_, seen)| seen.back().map(|(at, _)| *at))
                .map(|(signature, _)| signature.clone());
            if let Some(oldest) = oldest {
                failures.remove(&oldest);
            }
        }
        let seen = failures.entry(signature.to_owned()).or_default();
        seen.retain(|(_, delivery)| *delivery != fingerprint);
        seen.push_back((now, fingerprint));
        if seen.len() >= self.threshold {
            failures.remove(signature);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn trips_on_the_threshold_th_distinct_delivery() {
        let breaker = Breaker::new(3, 10 * SECOND);
        let now = Instant::now();
        assert!(!breaker.record("sqlstate XX000", 1, now));
        assert!(!breaker.record("sqlstate XX000", 2, now));
        assert!(breaker.record("sqlstate XX000", 3, now));
        // Tripping starts the count afresh.
        assert!(!breaker.record("sqlstate XX000", 4, now));
    }

    #[test]
    fn one_delivery_failing_again_and_again_counts_once() {
        let breaker = Breaker::new(3, 10 * SECOND);
        let now = Instant::now();
        for attempt in 0..10 {
            assert!(!breaker.record("sqlstate XX000", 7, now + attempt * SECOND / 10));
        }
    }

    #[test]
    fn signatures_are_counted_apart() {
        let breaker = Breaker::new(2, 10 * SECOND);
        let now = Instant::now();
        assert!(!breaker.record("sqlstate XX000", 1, now));
        assert!(!breaker.record("sqlstate 40001", 2, now));
        assert!(breaker.record("sqlstate XX000", 3, now));
    }

    #[test]
    fn failures_older_than_the_window_are_forgotten() {
        let breaker = Breaker::new(2, 10 * SECOND);
        let now = Instant::now();
        assert!(!breaker.record("sqlstate XX000", 1, now));
        assert!(!breaker.record("sqlstate XX000", 2, now + 11 * SECOND));
        assert!(breaker.record("sqlstate XX000", 3, now + 12 * SECOND));
    }

    #[test]
    fn memory_is_bounded_by_the_signatures_kept() {
        let breaker = Breaker::new(2, 10 * SECOND);
        let now = Instant::now();
        for i in 0..(MAX_SIGNATURES as u64 + 50) {
            breaker.record(&format!("sqlstate {i}"), i, now);
        }
        let failures = breaker.failures.lock().expect("not poisoned");
        assert_eq!(failures.len(), MAX_SIGNATURES);
    }
}
