//! Reading a request body from an unauthenticated client: as a stream, under
//! a deadline that only a steady sender keeps pushing back, charging the
//! shared body budget for the memory really taken as bytes arrive, and
//! feeding the signature check on the way.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::signature::BodySignature;

/// The first allocation for a body, whatever Content-Length announces: the
/// header is not authenticated, so it buys no memory up front.
const INITIAL_CAPACITY: usize = 16 * 1024;

/// When a body must be complete (`mod_reqtimeout`'s `body=T-MAX,MinRate=R`):
/// `T` after the head, pushed back by `1/R` s per byte received, never past
/// `MAX` after the head. A sender that stalls, or trickles below `R`, runs
/// out of time; a burst earns at most `MAX`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateDeadline {
    current: Instant,
    hard: Instant,
    seconds_per_byte: f64,
}

/// The configured rules of a body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyRules {
    pub limit: usize,
    pub initial: Duration,
    pub min_rate: u32,
    pub max_duration: Duration,
}

impl RateDeadline {
    pub(crate) fn new(start: Instant, rules: &BodyRules) -> Self {
        Self {
            current: start + rules.initial,
            hard: start + rules.max_duration,
            seconds_per_byte: 1.0 / f64::from(rules.min_rate),
        }
    }

    pub(crate) fn received(&mut self, bytes: usize) {
        let earned = Duration::from_secs_f64(bytes as f64 * self.seconds_per_byte);
        self.current = (self.current + earned).min(self.hard);
    }

    pub(crate) fn at(&self) -> Instant {
        self.current
    }
}

/// Memory for bodies, shared by every connection, in KiB. Taken as a body's
/// buffer grows, given back when the request is answered.
pub(crate) struct BodyBudget {
    shared: Arc<SharedBudget>,
}

struct SharedBudget {
    kib: Arc<Semaphore>,
    /// `wa_receiver_body_buffer_bytes`, looked up once.
    taken: metrics::Gauge,
}

impl BodyBudget {
    pub(crate) fn new(bytes: u64) -> Self {
        let kib = usize::try_from(bytes / 1024)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        // The recorder must be installed before a handle is taken from it.
        let _ = wa_core::ops::metrics_handle();
        Self {
            shared: Arc::new(SharedBudget {
                kib: Arc::new(Semaphore::new(kib)),
                taken: metrics::gauge!("wa_receiver_body_buffer_bytes"),
            }),
        }
    }

    fn empty_hold(&self) -> BudgetHold {
        BudgetHold {
            budget: self.shared.clone(),
            permit: None,
        }
    }
}

/// What one body holds of the budget; given back on drop.
pub(crate) struct BudgetHold {
    budget: Arc<SharedBudget>,
    permit: Option<OwnedSemaphorePermit>,
}

impl BudgetHold {
    fn held_bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits() * 1024)
    }

    /// Grows the hold to cover `bytes`; false when the budget cannot.
    fn cover(&mut self, bytes: usize) -> bool {
        let wanted_kib = bytes.div_ceil(1024);
        let held_kib = self.held_bytes() / 1024;
        if wanted_kib <= held_kib {
            return true;
        }
        let Ok(more) = u32::try_from(wanted_kib - held_kib) else {
            return false;
        };
        let Ok(granted) = self.budget.kib.clone().try_acquire_many_owned(more) else {
            return false;
        };
        self.budget.taken.increment(f64::from(more) * 1024.0);
        match &mut self.permit {
            Some(permit) => permit.merge(granted),
            None => self.permit = Some(granted),
        }
        true
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        let held = self.held_bytes();
        if held > 0 {
            self.budget.taken.decrement(held as f64);
        }
    }
}

/// Why a body was not read to its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("body over the limit of {0} bytes")]
    TooLarge(usize),
    #[error("body too slow: deadline passed after {0} bytes")]
    TooSlow(usize),
    #[error("body buffer budget exhausted")]
    BudgetExhausted,
    #[error("reading the body failed: {0}")]
    Read(axum::Error),
}

/// A body read to its end, and the budget it holds until dropped.
pub(crate) struct ReadBody {
    pub bytes: Bytes,
    pub _hold: BudgetHold,
}

/// Reads `body` to its end, or fails as soon as it is over the limit, too
/// slow for `deadline`, or would take more than the budget has left.
/// `declared` (Content-Length) only caps how far the buffer grows at a time.
pub(crate) async fn read_body(
    mut body: Body,
    declared: Option<usize>,
    rules: &BodyRules,
    mut deadline: RateDeadline,
    budget: &BodyBudget,
    signature: &mut BodySignature,
) -> Result<ReadBody, BodyError> {
    let ceiling = declared.unwrap_or(rules.limit).min(rules.limit);
    let mut hold = budget.empty_hold();
    // A body that arrives in one chunk (most do: a whole webhook fits in a
    // read) is kept as that chunk, without a copy; a second chunk starts
    // the buffer.
    let mut whole: Option<Bytes> = None;
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let received = whole.as_ref().map_or(buffer.len(), Bytes::len);
        let frame = match tokio::time::timeout_at(deadline.at(), body.frame()).await {
            Err(_) => return Err(BodyError::TooSlow(received)),
            Ok(None) => break,
            Ok(Some(Err(error))) => return Err(BodyError::Read(error)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(chunk) = frame.into_data() else {
            continue; // trailers: nothing to keep
        };
        let needed = received + chunk.len();
        if needed > rules.limit {
            return Err(BodyError::TooLarge(rules.limit));
        }
        signature.update(&chunk);
        deadline.received(chunk.len());
        if received == 0 && whole.is_none() {
            if !hold.cover(chunk.len()) {
                return Err(BodyError::BudgetExhausted);
            }
            whole = Some(chunk);
            continue;
        }
        if let Some(first) = whole.take() {
            buffer = Vec::new();
            grow(&mut buffer, &mut hold, first.len(), ceiling)?;
            buffer.extend_from_slice(&first);
        }
        grow(&mut buffer, &mut hold, needed, ceiling)?;
        buffer.extend_from_slice(&chunk);
    }
    Ok(ReadBody {
        bytes: whole.unwrap_or_else(|| Bytes::from(buffer)),
        _hold: hold,
    })
}

/// Makes room in `buffer` for `needed` bytes, charging the budget for it.
fn grow(
    buffer: &mut Vec<u8>,
    hold: &mut BudgetHold,
    needed: usize,
    ceiling: usize,
) -> Result<(), BodyError> {
    if needed > buffer.capacity() {
        let capacity = grown_capacity(buffer.capacity(), needed, ceiling);
        if !hold.cover(capacity) {
            return Err(BodyError::BudgetExhausted);
        }
        buffer.reserve_exact(capacity - buffer.len());
    }
    Ok(())
}

/// Doubles (from [`INITIAL_CAPACITY`]) up to the announced length or the
/// limit, and always to at least `needed`: at most twice what arrived.
fn grown_capacity(current: usize, needed: usize, ceiling: usize) -> usize {
    current
        .saturating_mul(2)
        .max(INITIAL_CAPACITY)
        .min(ceiling)
        .max(needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> BodyRules {
        BodyRules {
            limit: 4 << 20,
            initial: Duration::from_secs(20),
            min_rate: 500,
            max_duration: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_trickle_earns_little_and_a_burst_no_more_than_the_maximum() {
        let start = Instant::now();
        let mut trickle = RateDeadline::new(start, &rules());
        assert_eq!(trickle.at(), start + Duration::from_secs(20));
        for _ in 0..30 {
            trickle.received(2);
        }
        // 60 bytes at 500 B/s earn 120 ms.
        assert_eq!(trickle.at(), start + Duration::from_millis(20_120));

        let mut burst = RateDeadline::new(start, &rules());
        burst.received(4 << 20);
        assert_eq!(burst.at(), start + Duration::from_secs(60));
    }

    #[test]
    fn the_buffer_grows_by_doubling_within_what_was_announced() {
        assert_eq!(grown_capacity(0, 10, 4 << 20), INITIAL_CAPACITY);
        assert_eq!(grown_capacity(0, 10, 100), 100);
        assert_eq!(grown_capacity(16_384, 16_385, 4 << 20), 32_768);
        assert_eq!(grown_capacity(2 << 20, (2 << 20) + 1, 3_000_000), 3_000_000);
        // A wrong announcement never stops the bytes that did arrive.
        assert_eq!(grown_capacity(100, 150, 100), 150);
    }

    #[test]
    fn the_budget_is_taken_as_the_buffer_grows_and_given_back() {
        let budget = BodyBudget::new(64 * 1024);
        let mut first = budget.empty_hold();
        assert!(first.cover(40 * 1024));
        assert!(first.cover(40 * 1024 + 1));
        let mut second = budget.empty_hold();
        assert!(!second.cover(30 * 1024), "only 23 KiB are left");
        assert!(second.cover(20 * 1024));
        drop(first);
        assert!(second.cover(60 * 1024));
    }
}
