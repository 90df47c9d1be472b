//! Throttling arithmetic: how long a key waits after repeated failures, and which client
//! addresses count as one.

use std::net::{IpAddr, Ipv6Addr};

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

/// The subject a client address is throttled under. An IPv4 address (also one mapped into
/// IPv6) stands for itself; an IPv6 address stands for its network of `ipv6_prefix_length`
/// leading bits (at most 128), written as `2001:db8:1:2::/64`, since one host commonly holds a
/// whole /64 and could otherwise take a fresh address for every guess.
pub fn throttle_subject(client: IpAddr, ipv6_prefix_length: u8) -> String {
    let v6 = match client {
        IpAddr::V4(v4) => return v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => return v4.to_string(),
            None => v6,
        },
    };
    let length = ipv6_prefix_length.min(128);
    let mask = u128::MAX.checked_shl(128 - u32::from(length)).unwrap_or(0);
    let network = Ipv6Addr::from(u128::from(v6) & mask);
    format!("{network}/{length}")
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

    fn subject(ip: &str, length: u8) -> String {
        throttle_subject(ip.parse().unwrap(), length)
    }

    #[test]
    fn ipv4_clients_are_throttled_per_address() {
        assert_eq!(subject("203.0.113.7", 64), "203.0.113.7");
        assert_eq!(subject("::ffff:203.0.113.7", 64), "203.0.113.7");
    }

    #[test]
    fn ipv6_clients_are_throttled_per_network() {
        assert_eq!(subject("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::/64");
        assert_eq!(
            subject("2001:db8:1:2:ffff:ffff:ffff:ffff", 64),
            "2001:db8:1:2::/64"
        );
        assert_ne!(
            subject("2001:db8:1:3::1", 64),
            subject("2001:db8:1:2::1", 64)
        );
        assert_eq!(subject("2001:db8:1:2ff::1", 56), "2001:db8:1:200::/56");
        assert_eq!(subject("2001:db8::1", 128), "2001:db8::1/128");
        assert_eq!(subject("2001:db8::1", 200), "2001:db8::1/128");
        assert_eq!(subject("2001:db8::1", 0), "::/0");
        assert_eq!(subject("::1", 64), "::/64");
    }

    #[test]
    fn old_failures_are_forgotten() {
        let rule = rule();
        let now = Utc::now();
        assert_eq!(rule.carried_failures(7, now - Duration::hours(1), now), 7);
        assert_eq!(rule.carried_failures(7, now - Duration::hours(25), now), 0);
    }
}
