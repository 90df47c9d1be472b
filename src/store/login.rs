//! The password login's two writes: the admission (counted on the email before any hashing,
//! refused while the email or the client's address is blocked) together with the account it
//! checks against, and the outcome. On Postgres each is a single statement.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{
    AccountRow, LoginAdmission, LoginAttempt, LoginRecord, LoginStore, LoginSuccess, RuleArgs,
    SqlStore, StoreError,
    db::{BeginWrite, Db, Ts, with_db},
    select_account,
    throttle::after_failure,
};
use crate::domain::{ThrottleKey, ThrottleRule};

/// The account columns a login reads, for `WHERE u.email = $1`.
macro_rules! login_account {
    () => {
        select_account!(
            ", u.password_hash, u.is_active, u.credential_version",
            "FROM users u",
            "WHERE u.email = $1"
        )
    };
}

fn login_record<R>(row: &R) -> Result<Option<LoginRecord>, sqlx::Error>
where
    R: Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Ts: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    if row.try_get::<Option<i64>, _>("id")?.is_none() {
        return Ok(None);
    }
    Ok(Some(LoginRecord {
        account: AccountRow::read(row)?.into(),
        password_hash: row.try_get("password_hash")?,
        is_active: row.try_get("is_active")?,
        credential_version: row.try_get("credential_version")?,
    }))
}

impl SqlStore {
    async fn login_admit_postgres(
        &self,
        pool: &sqlx::PgPool,
        attempt: &LoginAttempt<'_>,
    ) -> Result<LoginAdmission, StoreError> {
        let rule = RuleArgs::from(attempt.email_rule);
        let sql = concat!(
            "WITH addr AS (SELECT blocked_until FROM throttle WHERE key = $3 AND blocked_until > $4), \
             bump AS (INSERT INTO throttle AS th (key, failures, blocked_until, updated_at) \
             SELECT $2, 1, identity_throttle_until(1, $6, $7, $8, $4), $4 \
             WHERE NOT EXISTS (SELECT 1 FROM addr) \
             ON CONFLICT (key) DO UPDATE SET \
             failures = CASE WHEN th.updated_at < $5 THEN 1 ELSE th.failures + 1 END, \
             blocked_until = identity_throttle_until(\
             CASE WHEN th.updated_at < $5 THEN 1 ELSE th.failures + 1 END, $6, $7, $8, $4), \
             updated_at = $4 \
             WHERE th.blocked_until IS NULL OR th.blocked_until <= $4 \
             RETURNING th.failures, th.blocked_until), \
             email_block AS (SELECT blocked_until FROM throttle WHERE key = $2 AND blocked_until > $4) \
             SELECT (SELECT failures FROM bump) AS admitted, \
             (SELECT blocked_until FROM bump) AS blocking, \
             GREATEST((SELECT blocked_until FROM addr), (SELECT blocked_until FROM email_block)) \
             AS blocked, acc.* FROM (SELECT 1) AS one LEFT JOIN (",
            login_account!(),
            ") AS acc ON TRUE"
        );
        let row = self
            .conn
            .run(
                "login_admit",
                sqlx::query(sql)
                    .bind(attempt.email.as_str())
                    .bind(attempt.email_key.as_str())
                    .bind(attempt.address_key.as_str())
                    .bind(Ts(attempt.now))
                    .bind(Ts(attempt.now - attempt.email_rule.window))
                    .bind(rule.max_failures)
                    .bind(rule.base_ms)
                    .bind(rule.max_ms)
                    .fetch_one(pool),
            )
            .await?;
        if row.try_get::<Option<i32>, _>("admitted")?.is_some() {
            return Ok(LoginAdmission::Admitted {
                record: login_record(&row)?.map(Box::new),
                blocking: row.try_get::<Option<Ts>, _>("blocking")?.map(|t| t.0),
            });
        }
        let until = match row.try_get::<Option<Ts>, _>("blocked")? {
            Some(until) => until.0,
            // A block committed by a concurrent attempt after this statement's snapshot.
            None => self
                .blocked_until_any(&[attempt.email_key, attempt.address_key], attempt.now)
                .await?
                .unwrap_or(attempt.now + attempt.email_rule.base_delay),
        };
        Ok(LoginAdmission::Blocked { until })
    }

    async fn login_admit_sqlite(
        &self,
        pool: &sqlx::SqlitePool,
        attempt: &LoginAttempt<'_>,
    ) -> Result<LoginAdmission, StoreError> {
        let op = "login_admit";
        let now = attempt.now;
        let mut tx = self.conn.run(op, pool.begin_write()).await?;
        let address = self.throttle_row(op, &mut tx, attempt.address_key).await?;
        let email = self.throttle_row(op, &mut tx, attempt.email_key).await?;
        let blocked = [address, email]
            .iter()
            .flatten()
            .filter_map(|state| state.blocked_until)
            .filter(|until| *until > now)
            .max();
        if let Some(until) = blocked {
            return Ok(LoginAdmission::Blocked { until });
        }
        let counted = after_failure(&attempt.email_rule, email, now);
        let blocking = counted.1;
        self.write_throttle_row(op, &mut tx, attempt.email_key, counted, now)
            .await?;
        let row = self
            .conn
            .run(
                op,
                sqlx::query(login_account!())
                    .bind(attempt.email.as_str())
                    .fetch_optional(&mut *tx),
            )
            .await?;
        self.conn.run(op, tx.commit()).await?;
        Ok(LoginAdmission::Admitted {
            record: row
                .as_ref()
                .map(login_record)
                .transpose()?
                .flatten()
                .map(Box::new),
            blocking,
        })
    }

    /// The latest block among `keys`, read after the fact.
    async fn blocked_until_any(
        &self,
        keys: &[&ThrottleKey],
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let mut latest = None;
        for key in keys {
            latest = latest.max(super::ThrottleStore::blocked_until(self, key, now).await?);
        }
        Ok(latest)
    }

    async fn login_succeeded_sqlite(
        &self,
        pool: &sqlx::SqlitePool,
        success: &LoginSuccess<'_>,
    ) -> Result<bool, StoreError> {
        let op = "login_succeeded";
        let conn = &self.conn;
        let mut tx = conn.run(op, pool.begin_write()).await?;
        let current = conn
            .run(
                op,
                sqlx::query(
                    "SELECT 1 FROM users WHERE id = $1 AND credential_version = $2 AND is_active",
                )
                .bind(success.user)
                .bind(success.credential_version)
                .fetch_optional(&mut *tx),
            )
            .await?
            .is_some();
        if current {
            if let Some(new_hash) = success.new_hash {
                conn.run(
                    op,
                    sqlx::query(
                        "UPDATE users SET password_hash = $1 WHERE id = $2 AND password_hash = $3",
                    )
                    .bind(new_hash)
                    .bind(success.user)
                    .bind(success.verified_hash)
                    .execute(&mut *tx),
                )
                .await?;
            }
            conn.run(
                op,
                sqlx::query(
                    "DELETE FROM tokens WHERE user_id = $1 AND kind = 'session' AND expires_at <= $2",
                )
                .bind(success.user)
                .bind(Ts(success.now))
                .execute(&mut *tx),
            )
            .await?;
            conn.run(
                op,
                sqlx::query("DELETE FROM throttle WHERE key = $1")
                    .bind(success.email_key.as_str())
                    .execute(&mut *tx),
            )
            .await?;
            conn.run(
                op,
                sqlx::query(
                    "INSERT INTO tokens (token_hash, user_id, kind, created_at, expires_at, \
                     last_used_at) VALUES ($1, $2, 'session', $3, $4, $3)",
                )
                .bind(success.session.token.as_str())
                .bind(success.user)
                .bind(Ts(success.now))
                .bind(Ts(success.session.expires_at))
                .execute(&mut *tx),
            )
            .await?;
        }
        let audit = login_audit(success, current);
        conn.run(op, super::audit::insert!(audit).execute(&mut *tx))
            .await?;
        conn.run(op, tx.commit()).await?;
        Ok(current)
    }
}

/// The audit event of a verified login: a success, or a failure when the credential changed
/// between the check and the session.
fn login_audit<'a>(success: &LoginSuccess<'a>, current: bool) -> super::AuditEvent<'a> {
    super::AuditEvent {
        at: success.now,
        event: "login",
        outcome: if current { "success" } else { "failure" },
        user_id: Some(success.user),
        email: Some(success.email),
        client: success.client,
        reason: (!current).then_some("CREDENTIALS_CHANGED"),
        count: 1,
    }
}

#[async_trait]
impl LoginStore for SqlStore {
    async fn login_admit(&self, attempt: &LoginAttempt<'_>) -> Result<LoginAdmission, StoreError> {
        match &self.conn.db {
            Db::Postgres(pool) => self.login_admit_postgres(pool, attempt).await,
            Db::Sqlite(pool) => self.login_admit_sqlite(pool, attempt).await,
        }
    }

    async fn login_succeeded(&self, success: &LoginSuccess<'_>) -> Result<bool, StoreError> {
        let pool = match &self.conn.db {
            Db::Postgres(pool) => pool,
            Db::Sqlite(pool) => return self.login_succeeded_sqlite(pool, success).await,
        };
        // FOR SHARE holds the user row against a concurrent reset until this statement
        // commits, and waits for one in progress: the session starts only from a credential
        // that is still current, and a reset that follows ends it. A login that also rehashes
        // takes the row for update at once: two shared holders both upgrading to rewrite the
        // hash would deadlock each other.
        let sql = if success.new_hash.is_some() {
            SUCCEEDED_REHASHING
        } else {
            SUCCEEDED
        };
        // One statement, so one transaction: when Postgres breaks a deadlock with another
        // writer (the throttle rows a concurrent admission holds) by aborting it, nothing of
        // it was written and it runs again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let outcome = self
                .conn
                .run(
                    "login_succeeded",
                    sqlx::query_scalar(sql)
                        .bind(success.user)
                        .bind(success.credential_version)
                        .bind(success.verified_hash)
                        .bind(success.new_hash)
                        .bind(success.session.token.as_str())
                        .bind(Ts(success.now))
                        .bind(Ts(success.session.expires_at))
                        .bind(success.email_key.as_str())
                        .bind(success.email)
                        .bind(success.client)
                        .fetch_one(pool),
                )
                .await;
            match outcome {
                Err(StoreError::Unavailable(error)) if attempts < 3 && is_conflict(&error) => {
                    tracing::debug!(%error, attempts, "login write aborted by a conflict; retrying");
                }
                other => return other,
            }
        }
    }

    async fn give_back(
        &self,
        key: &ThrottleKey,
        rule: ThrottleRule,
        blocking: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        // The attempt was admitted only while no block was in force, so lifting the block it
        // set restores exactly what it found.
        with_db!(&self.conn.db, pool => {
            self.conn.run("give_back", sqlx::query(
                "UPDATE throttle SET failures = failures - 1, \
                 blocked_until = CASE WHEN failures - 1 < $2 OR blocked_until = $3 THEN NULL \
                 ELSE blocked_until END \
                 WHERE key = $1 AND failures > 0")
                .bind(key.as_str())
                .bind(i64::from(rule.max_failures))
                .bind(blocking.map(Ts))
                .execute(pool)).await?;
            Ok(())
        })
    }
}

/// Whether Postgres aborted the statement to resolve a conflict with another transaction
/// (deadlock, serialization failure): running it again is safe and will likely succeed.
fn is_conflict(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref().is_some_and(|code| code == "40P01" || code == "40001"))
}

/// A password login's success on Postgres in one statement, the user row locked with `$lock`.
macro_rules! succeeded {
    ($lock:literal) => {
        concat!(
            "WITH u AS (SELECT id FROM users \
                         WHERE id = $1 AND credential_version = $2 AND is_active ", $lock, "), \
                         rehash AS (UPDATE users SET password_hash = $4 \
                         WHERE id = $1 AND password_hash = $3 AND $4::text IS NOT NULL \
                         AND EXISTS (SELECT 1 FROM u)), \
                         expired AS (DELETE FROM tokens WHERE user_id = $1 AND kind = 'session' \
                         AND expires_at <= $6 AND EXISTS (SELECT 1 FROM u)), \
                         cleared AS (DELETE FROM throttle WHERE key = $8 AND EXISTS (SELECT 1 FROM u)), \
                         session AS (INSERT INTO tokens (token_hash, user_id, kind, created_at, expires_at, \
                         last_used_at) SELECT $5, id, 'session', $6, $7, $6 FROM u RETURNING user_id), \
                         audit AS (INSERT INTO audit_events (at, event, outcome, user_id, email, \
                         client_addr, reason, count) SELECT $6, 'login', \
                         CASE WHEN EXISTS (SELECT 1 FROM u) THEN 'success' ELSE 'failure' END, $1, $9, $10, \
                         CASE WHEN EXISTS (SELECT 1 FROM u) THEN NULL ELSE 'CREDENTIALS_CHANGED' END, 1) \
                         SELECT EXISTS (SELECT 1 FROM session) AS started"
        )
    };
}

const SUCCEEDED: &str = succeeded!("FOR SHARE");
const SUCCEEDED_REHASHING: &str = succeeded!("FOR NO KEY UPDATE");
