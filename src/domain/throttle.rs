//! Throttling arithmetic: how long a key waits after repeated failures.

use chrono::{DateTime, Duration, Utc};

/// When failures start to slow a key down, and how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleRule {
    /// Failures allowed before waits begin.
    pub max_failures: u32,
    /// The first wait; each further failure doubles it.
    pub base_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
    /// Failures older than this are forgotten.
    pub window: Duration,
}

impl ThrottleRule {
    /// The wait imposed after `failures` failures: none below the limit, then doubling from
    /// `base_delay` up to `max_delay`.
    pub fn delay_after(&self, failures: u32) -> Option<Duration> {
        let over = failures.checked_sub(self.max_failures)?;
        let factor = 1i64.checked_shl(over.min(40)).unwrap_or(i64::MAX);
        let millis = self
            .base_delay
            .num_milliseconds()
            .saturating_mul(factor)
            .min(self.max_delay.num_milliseconds());
        Some(Duration::milliseconds(millis))
    }

    /// Until when a key that just reached `failures` failures at `now` is blocked.
    pub fn blocked_until(&self, failures: u32, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.delay_after(failures).map(|delay| now + delay)
    }

    /// The failure count to continue from, forgetting failures older than the window.
    pub fn carried_failures(&self, failures: u32, last: DateTime<Utc>, now: DateTime<Utc>) -> u32 {
        if now - last > self.window {
            0
        } else {
            failures
        }
    }
}

/// A named counter of failures: per email, or per client address and action.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ThrottleKey(String);

impl ThrottleKey {
    pub fn new(scope: &str, subject: &str) -> Self {
        Self(format!("{scope}:{subject}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> ThrottleRule {
        ThrottleRule {
            max_failures: 3,
            base_delay: Duration::seconds(1),
            max_delay: Duration::minutes(15),
            window: Duration::hours(24),
        }
    }

    #[test]
    fn waits_start_at_the_limit_and_double_up_to_the_cap() {
        let rule = rule();
        assert_eq!(rule.delay_after(2), None);
        assert_eq!(rule.delay_after(3), Some(Duration::seconds(1)));
        assert_eq!(rule.delay_after(4), Some(Duration::seconds(2)));
        assert_eq!(rule.delay_after(8), Some(Duration::seconds(32)));
        assert_eq!(rule.delay_after(30), Some(Duration::minutes(15)));
        assert_eq!(rule.delay_after(u32::MAX), Some(Duration::minutes(15)));
    }

    #[test]
    fn old_failures_are_forgotten() {
        let rule = rule();
        let now = Utc::now();
        assert_eq!(rule.carried_failures(7, now - Duration::hours(1), now), 7);
        assert_eq!(rule.carried_failures(7, now - Duration::hours(25), now), 0);
    }
}
