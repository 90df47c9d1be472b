//! The audit trail as the use cases write it: one row and one `security event` log line per
//! event, except refusals of throttled clients, which are counted in memory and written as one
//! row (and one line) per client, event and window, whatever key (email or address) throttled
//! them, so a flood costs bounded rows.

use std::{collections::HashMap, net::IpAddr, sync::Mutex};

use chrono::{DateTime, Utc};

use crate::{
    domain::{Email, UserId},
    store::AuditEvent,
};

/// Distinct (event, client) pairs held between two flushes; refusals of further clients are
/// counted together in one row, so even a flood from many addresses writes bounded rows.
const MAX_PENDING_CLIENTS: usize = 1_000;

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
    pending: Mutex<HashMap<(&'static str, Option<IpAddr>), u32>>,
}

/// One aggregated row: an event refused `count` times for one client.
pub(crate) struct Aggregated {
    pub event: &'static str,
    pub client: String,
    pub count: u32,
}

impl Refusals {
    /// Counts one refusal of `client`. The key that throttled it (one email of many a client
    /// tries, say) doesn't split the count: rows stay one per client and event.
    pub(crate) fn count(&self, event: &'static str, client: IpAddr) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        let slot = if pending.len() >= MAX_PENDING_CLIENTS
            && !pending.contains_key(&(event, Some(client)))
        {
            (event, None)
        } else {
            (event, Some(client))
        };
        let count = pending.entry(slot).or_insert(0);
        *count = count.saturating_add(1);
    }

    /// Takes what was counted since the last call.
    pub(crate) fn take(&self) -> Vec<Aggregated> {
        let Ok(mut pending) = self.pending.lock() else {
            return Vec::new();
        };
        pending
            .drain()
            .map(|((event, client), count)| Aggregated {
                event,
                client: client.map_or_else(|| "*".to_owned(), |client| client.to_string()),
                count,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_of_one_client_become_one_row_per_event_whatever_the_key() {
        let refusals = Refusals::default();
        let client: IpAddr = "203.0.113.9".parse().unwrap();
        for _ in 0..1000 {
            refusals.count("token_auth", client);
        }
        // A client trying a new email each time is throttled on each email's key: still one row.
        for _ in 0..500 {
            refusals.count("login", client);
        }
        let mut rows = refusals.take();
        rows.sort_by_key(|row| row.event);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].event, rows[0].count), ("login", 500));
        assert_eq!((rows[1].event, rows[1].count), ("token_auth", 1000));
        assert_eq!(rows[1].client, "203.0.113.9");
        assert!(refusals.take().is_empty());
    }

    #[test]
    fn beyond_the_client_limit_refusals_are_counted_together() {
        let refusals = Refusals::default();
        for i in 0..(MAX_PENDING_CLIENTS + 50) {
            refusals.count(
                "token_auth",
                IpAddr::V6(std::net::Ipv6Addr::from(i as u128)),
            );
        }
        let rows = refusals.take();
        assert_eq!(rows.len(), MAX_PENDING_CLIENTS + 1);
        let other = rows.iter().find(|row| row.client == "*").unwrap();
        assert_eq!(other.count, 50);
    }
}
