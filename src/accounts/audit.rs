//! The audit trail as the use cases write it: one row and one `security event` log line per
//! event, except refusals of throttled clients, which are counted in memory and written as one
//! row (and one line) per client, event and window, so a flood costs bounded rows.

use std::{collections::HashMap, net::IpAddr, sync::Mutex};

use chrono::{DateTime, Utc};

use crate::{
    domain::{Email, ThrottleKey, UserId},
    store::AuditEvent,
};

/// Distinct (event, key) pairs held between two flushes; further ones are counted together.
const MAX_PENDING_KEYS: usize = 10_000;

/// One event as a use case reports it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Audit<'a> {
    pub event: &'static str,
    pub user_id: Option<UserId>,
    pub email: Option<&'a Email>,
    pub outcome: Result<(), &'static str>,
}

impl<'a> Audit<'a> {
    pub(crate) fn success(event: &'static str, user_id: Option<UserId>) -> Self {
        Self {
            event,
            user_id,
            email: None,
            outcome: Ok(()),
        }
    }

    pub(crate) fn failure(event: &'static str, reason: &'static str) -> Self {
        Self {
            event,
            user_id: None,
            email: None,
            outcome: Err(reason),
        }
    }

    pub(crate) fn email(self, email: &'a Email) -> Self {
        Self {
            email: Some(email),
            ..self
        }
    }

    pub(crate) fn user(self, user_id: Option<UserId>) -> Self {
        Self { user_id, ..self }
    }

    /// The row this event becomes.
    pub(crate) fn event<'b>(&self, at: DateTime<Utc>, client: &'b str) -> AuditEvent<'b>
    where
        'a: 'b,
    {
        let (outcome, reason) = match self.outcome {
            Ok(()) => ("success", None),
            Err(reason) => ("failure", Some(reason)),
        };
        AuditEvent {
            at,
            event: self.event,
            outcome,
            user_id: self.user_id,
            email: self.email.map(Email::as_str),
            client,
            reason,
            count: 1,
        }
    }
}

/// The structured log line of an audit row (never the email: it is personal data, and the
/// table has it).
pub(crate) fn log(event: &AuditEvent<'_>) {
    tracing::info!(
        target: "audit",
        event = event.event,
        outcome = event.outcome,
        reason = event.reason,
        user = event.user_id,
        client = event.client,
        count = event.count,
        "security event"
    );
}

/// Refusals of throttled clients since the last flush.
#[derive(Default)]
pub(crate) struct Refusals {
    pending: Mutex<HashMap<(&'static str, String), Pending>>,
}

struct Pending {
    client: IpAddr,
    count: u32,
}

/// One aggregated row: an event refused `count` times for one throttle key.
pub(crate) struct Aggregated {
    pub event: &'static str,
    pub client: String,
    pub count: u32,
}

impl Refusals {
    pub(crate) fn count(&self, event: &'static str, key: &ThrottleKey, client: IpAddr) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        let overflow = pending.len() >= MAX_PENDING_KEYS;
        let slot = if overflow && !pending.contains_key(&(event, key.as_str().to_owned())) {
            (event, "*".to_owned())
        } else {
            (event, key.as_str().to_owned())
        };
        let entry = pending.entry(slot).or_insert(Pending { client, count: 0 });
        entry.count = entry.count.saturating_add(1);
    }

    /// Takes what was counted since the last call.
    pub(crate) fn take(&self) -> Vec<Aggregated> {
        let Ok(mut pending) = self.pending.lock() else {
            return Vec::new();
        };
        pending
            .drain()
            .map(|((event, key), pending)| Aggregated {
                event,
                client: if key == "*" {
                    "*".to_owned()
                } else {
                    pending.client.to_string()
                },
                count: pending.count,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_of_one_key_become_one_row_with_their_count() {
        let refusals = Refusals::default();
        let client: IpAddr = "203.0.113.9".parse().unwrap();
        let key = ThrottleKey::new("token-addr", "203.0.113.9");
        for _ in 0..1000 {
            refusals.count("token_auth", &key, client);
        }
        refusals.count("login", &key, client);
        let mut rows = refusals.take();
        rows.sort_by_key(|row| row.event);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].event, rows[0].count), ("login", 1));
        assert_eq!((rows[1].event, rows[1].count), ("token_auth", 1000));
        assert_eq!(rows[1].client, "203.0.113.9");
        assert!(refusals.take().is_empty());
    }

    #[test]
    fn beyond_the_key_limit_refusals_are_counted_together() {
        let refusals = Refusals::default();
        for i in 0..(MAX_PENDING_KEYS + 50) {
            let client = IpAddr::V6(std::net::Ipv6Addr::from(i as u128));
            refusals.count(
                "token_auth",
                &ThrottleKey::new("token-addr", &client.to_string()),
                client,
            );
        }
        let rows = refusals.take();
        assert_eq!(rows.len(), MAX_PENDING_KEYS + 1);
        let other = rows.iter().find(|row| row.client == "*").unwrap();
        assert_eq!(other.count, 50);
    }
}
