//! Exponential backoff with full jitter: each delay is drawn uniformly from
//! zero to the exponential bound, so that many clients that failed together
//! do not retry together.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Delays growing from `min` to `max`; `times: None` never runs out.
pub fn full_jitter(
    min: Duration,
    max: Duration,
    times: Option<usize>,
) -> impl Iterator<Item = Duration> {
    let builder = ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max);
    let builder = match times {
        Some(times) => builder.with_max_times(times),
        None => builder.without_max_times(),
    };
    builder.build().map(|bound| {
        let bound = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::random_range(0..=bound))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_a_growing_bound() {
        let delays: Vec<Duration> =
            full_jitter(Duration::from_millis(100), Duration::from_secs(1), Some(6)).collect();
        assert_eq!(delays.len(), 6);
        let bounds = [100, 200, 400, 800, 1000, 1000];
        for (delay, bound) in delays.iter().zip(bounds) {
            assert!(delay.as_millis() <= bound, "{delay:?} > {bound} ms");
        }
    }
}
