//! Failure counters shared by every replica. A key counts failures within its window and is
//! blocked past its limit; the block's length doubles with each further failure.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{
    Failure, RuleArgs, SqlStore, StoreError, ThrottleStore,
    db::{BeginWrite, Db, Ts},
};
use crate::domain::{ThrottleKey, ThrottleRule};

/// A throttle row as read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ThrottleState {
    pub failures: u32,
    pub blocked_until: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// The row after one more failure at `now`: failures older than the window are forgotten
/// first, and an existing block is never shortened.
pub(crate) fn after_failure(
    rule: &ThrottleRule,
    state: Option<ThrottleState>,
    now: DateTime<Utc>,
) -> (u32, Option<DateTime<Utc>>) {
    let (previous, blocked) = match state {
        Some(state) => (
            rule.carried_failures(state.failures, state.updated_at, now),
            state.blocked_until,
        ),
        None => (0, None),
    };
    let failures = previous.saturating_add(1);
    let until = rule.blocked_until(failures, now);
    (failures, until.max(blocked.filter(|b| *b > now)))
}

impl SqlStore {
    /// SQLite: reads a key's row inside a write transaction.
    pub(crate) async fn throttle_row(
        &self,
        operation: &'static str,
        tx: &mut sqlx::SqliteConnection,
        key: &ThrottleKey,
    ) -> Result<Option<ThrottleState>, StoreError> {
        let row = self
            .conn
            .run(
                operation,
                sqlx::query(
                    "SELECT failures, blocked_until, updated_at FROM throttle WHERE key = $1",
                )
                .bind(key.as_str())
                .fetch_optional(&mut *tx),
            )
            .await?;
        row.map(|row| {
            Ok(ThrottleState {
                failures: u32::try_from(row.try_get::<i64, _>("failures")?).unwrap_or(0),
                blocked_until: row.try_get::<Option<Ts>, _>("blocked_until")?.map(|t| t.0),
                updated_at: row.try_get::<Ts, _>("updated_at")?.0,
            })
        })
        .transpose()
        .map_err(|e: sqlx::Error| e.into())
    }

    /// SQLite: writes a key's row inside a write transaction.
    pub(crate) async fn write_throttle_row(
        &self,
        operation: &'static str,
        tx: &mut sqlx::SqliteConnection,
        key: &ThrottleKey,
        (failures, blocked_until): (u32, Option<DateTime<Utc>>),
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.conn
            .run(
                operation,
                sqlx::query(
                    "INSERT INTO throttle (key, failures, blocked_until, updated_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO UPDATE SET \
                     failures = excluded.failures, blocked_until = excluded.blocked_until, \
                     updated_at = excluded.updated_at",
                )
                .bind(key.as_str())
                .bind(i64::from(failures))
                .bind(blocked_until.map(Ts))
                .bind(Ts(now))
                .execute(&mut *tx),
            )
            .await?;
        Ok(())
    }
}

#[async_trait]
impl ThrottleStore for SqlStore {
    async fn blocked_until(
        &self,
        key: &ThrottleKey,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        super::db::with_db!(&self.conn.db, pool => {
            let until: Option<Option<Ts>> = self.conn.run("blocked_until", sqlx::query_scalar(
                "SELECT blocked_until FROM throttle WHERE key = $1")
                .bind(key.as_str())
                .fetch_optional(pool)).await?;
            Ok(until.flatten().map(|t| t.0).filter(|until| *until > now))
        })
    }

    async fn record_failure(&self, failure: &Failure<'_>) -> Result<(), StoreError> {
        let op = "record_failure";
        let now = failure.audit.at;
        let window_start = now - failure.rule.window;
        match &self.conn.db {
            Db::Postgres(pool) => {
                let rule = RuleArgs::from(failure.rule);
                // The audit insert's parameters come first ($1..$8); the counter's follow.
                let sql = concat!(
                    "WITH f AS (INSERT INTO throttle AS th (key, failures, blocked_until, updated_at) \
                     VALUES ($9, 1, identity_throttle_until(1, $10, $11, $12, $1), $1) \
                     ON CONFLICT (key) DO UPDATE SET \
                     failures = CASE WHEN th.updated_at < $13 THEN 1 ELSE th.failures + 1 END, \
                     blocked_until = GREATEST(CASE WHEN th.blocked_until > $1 THEN th.blocked_until END, \
                     identity_throttle_until(CASE WHEN th.updated_at < $13 THEN 1 ELSE th.failures + 1 END, \
                     $10, $11, $12, $1)), updated_at = $1) ",
                    "INSERT INTO audit_events (at, event, outcome, user_id, email, client_addr, reason, \
                     count) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                );
                let audit = failure.audit;
                self.conn
                    .run(
                        op,
                        sqlx::query(sql)
                            .bind(Ts(audit.at))
                            .bind(audit.event)
                            .bind(audit.outcome)
                            .bind(audit.user_id)
                            .bind(audit.email)
                            .bind(audit.client)
                            .bind(audit.reason)
                            .bind(i32::try_from(audit.count).unwrap_or(i32::MAX))
                            .bind(failure.key.as_str())
                            .bind(rule.max_failures)
                            .bind(rule.base_ms)
                            .bind(rule.max_ms)
                            .bind(Ts(window_start))
                            .execute(pool),
                    )
                    .await?;
                Ok(())
            }
            Db::Sqlite(pool) => {
                let mut tx = self.conn.run(op, pool.begin_write()).await?;
                let state = self.throttle_row(op, &mut tx, failure.key).await?;
                let next = after_failure(&failure.rule, state, now);
                self.write_throttle_row(op, &mut tx, failure.key, next, now)
                    .await?;
                self.conn
                    .run(op, super::audit::insert!(failure.audit).execute(&mut *tx))
                    .await?;
                self.conn.run(op, tx.commit()).await?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    fn rule(max_failures: u32) -> ThrottleRule {
        ThrottleRule {
            max_failures,
            base_delay: Duration::seconds(1),
            max_delay: Duration::minutes(15),
            window: Duration::hours(24),
        }
    }

    fn state(
        failures: u32,
        blocked_for: Option<i64>,
        age_hours: i64,
        now: DateTime<Utc>,
    ) -> ThrottleState {
        ThrottleState {
            failures,
            blocked_until: blocked_for.map(|s| now + Duration::seconds(s)),
            updated_at: now - Duration::hours(age_hours),
        }
    }

    #[test]
    fn a_failure_counts_and_blocks_at_the_limit() {
        let now = Utc::now();
        assert_eq!(after_failure(&rule(3), None, now), (1, None));
        assert_eq!(
            after_failure(&rule(3), Some(state(2, None, 0, now)), now),
            (3, Some(now + Duration::seconds(1)))
        );
        assert_eq!(
            after_failure(&rule(3), Some(state(5, None, 0, now)), now),
            (6, Some(now + Duration::seconds(8)))
        );
    }

    #[test]
    fn failures_outside_the_window_start_over() {
        let now = Utc::now();
        assert_eq!(
            after_failure(&rule(3), Some(state(50, None, 25, now)), now),
            (1, None)
        );
    }

    #[test]
    fn a_longer_block_in_place_is_never_shortened() {
        let now = Utc::now();
        assert_eq!(
            after_failure(&rule(3), Some(state(3, Some(600), 0, now)), now),
            (4, Some(now + Duration::seconds(600)))
        );
    }
}
