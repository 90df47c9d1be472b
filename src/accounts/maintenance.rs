//! Housekeeping the service does on its own: purging what expired, writing the aggregated
//! audit rows, and measuring what the costliest stored password hash takes to check.

use std::collections::HashMap;

use super::{Accounts, Context, earlier, now};
use crate::{
    password,
    store::{AuditEvent, PurgeBefore},
};

/// Distinct kinds of stored hashes measured at most (each costs one verification).
const MAX_HASH_KINDS: usize = 32;

impl Accounts {
    /// Deletes expired and idle sessions, throttle rows older than the longest throttle
    /// window, and audit rows past their retention.
    pub async fn purge(&self) {
        let throttle = self.policy.throttle;
        let window = [
            throttle.login_per_email,
            throttle.login_per_address,
            throttle.token_per_address,
            throttle.invite_per_address,
        ]
        .iter()
        .map(|rule| rule.window)
        .max()
        .unwrap_or_default();
        let now = now();
        let before = PurgeBefore {
            now,
            idle_since: earlier(now, self.policy.session_max_idle),
            throttle_since: earlier(now, window),
            audit_since: earlier(now, self.policy.audit_retention),
        };
        match self.store.purge(&before).await {
            Ok(rows) => tracing::debug!(rows, "purged expired sessions, throttle and audit rows"),
            Err(error) => tracing::warn!(%error, "purge failed"),
        }
    }

    /// Writes the refusals of throttled clients counted since the last call: one audit row and
    /// one log line per client and event.
    pub async fn flush_refusals(&self) {
        let ctx = Context::internal();
        for refused in self.refusals.take() {
            let event = AuditEvent {
                at: ctx.now,
                event: refused.event,
                outcome: "failure",
                user_id: None,
                email: None,
                client: &refused.client,
                reason: Some("THROTTLED"),
                count: refused.count,
            };
            super::audit::log(&event);
            if let Err(error) = self.store.audit(&event).await {
                tracing::warn!(%error, "audit write failed");
            }
        }
    }

    /// Pads every password check to what the costliest stored hash takes (the current
    /// parameters' at least), so that a login's time tells nothing of the account's hash:
    /// whether it was imported, made with older parameters, or doesn't exist.
    pub async fn calibrate_password_checks(&self) -> anyhow::Result<()> {
        let current = self.hasher.current_prefix();
        let mut kinds: HashMap<String, String> = HashMap::new();
        self.store
            .other_password_hashes(&current, &mut |hash| {
                if kinds.len() < MAX_HASH_KINDS {
                    kinds.entry(password::cost_kind(&hash)).or_insert(hash);
                }
            })
            .await?;
        let samples: Vec<String> = kinds.into_values().collect();
        let kinds = samples.len();
        let ratio = self.hasher.measure(samples).await?;
        self.hasher.set_cost_ratio(ratio);
        tracing::info!(
            kinds,
            ratio = format!("{ratio:.2}"),
            "password checks padded to the costliest stored hash"
        );
        Ok(())
    }
}
