//! When a failed delivery is tried again. Each attempt's delay comes from
//! the schedule (the last step repeats for as long as the endpoint stays
//! enabled: a delivery is never given up), spread by ±20 % jitter so that
//! the conversations of an endpoint that failed together do not retry
//! together. `Retry-After` of a 429 or 503 replaces the step.

use std::str::FromStr;
use std::time::Duration;

/// The default: 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 2 h, 4 h, 8 h, then
/// every 12 h. The first nine retries span about 16 h; after them a
/// receiver that is down for five days sees one every 12 h (18 retries of a
/// conversation's head in all). (Svix: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, then gives up.)
pub const DEFAULT_SCHEDULE: &str = "5s,30s,2m,10m,30m,1h,2h,4h,8h,12h";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

impl RetrySchedule {
    /// The delay after the `failures`-th failure in a row (1-based), with jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        let step = self.step(failures);
        let jitter = rand::random_range(0.8..=1.2);
        step.mul_f64(jitter)
    }

    /// The delay without jitter.
    pub fn step(&self, failures: u32) -> Duration {
        let index = usize::try_from(failures.max(1) - 1).unwrap_or(usize::MAX);
        self.0
            .get(index)
            .or(self.0.last())
            .copied()
            .unwrap_or(Duration::from_secs(5))
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        DEFAULT_SCHEDULE
            .parse()
            .expect("the default schedule parses")
    }
}

impl FromStr for RetrySchedule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let steps = text
            .split(',')
            .map(|step| wa_core::config::parse_duration(step.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        if steps.is_empty() || steps.iter().any(Duration::is_zero) {
            return Err(format!(
                "{text:?}: give one or more delays above zero, such as 5s,30s,2m"
            ));
        }
        Ok(Self(steps))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_step_repeats_forever() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.step(1), Duration::from_secs(5));
        assert_eq!(schedule.step(3), Duration::from_secs(120));
        assert_eq!(schedule.step(10), Duration::from_secs(12 * 3600));
        assert_eq!(schedule.step(1000), Duration::from_secs(12 * 3600));
        let total: Duration = (1..=10).map(|n| schedule.step(n)).sum();
        assert_eq!(
            total.as_secs(),
            5 + 30 + 120 + 600 + 1800 + 3600 + 7200 + 14_400 + 28_800 + 43_200
        );
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        let schedule: RetrySchedule = "10s".parse().unwrap();
        for _ in 0..100 {
            let delay = schedule.delay(1).as_secs_f64();
            assert!((8.0..=12.0).contains(&delay), "{delay}");
        }
        assert!("0s".parse::<RetrySchedule>().is_err());
        assert!("5s,soon".parse::<RetrySchedule>().is_err());
    }
}
