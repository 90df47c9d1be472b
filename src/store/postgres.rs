//! The Postgres backend: the production store.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    PgPool, Postgres, Row, Transaction,
    postgres::{PgPoolOptions, PgRow},
};

use super::{
    AccountRow, Admission, AuditEvent, Joining, LoginRecord, NewAccount, NewSession, PoolStats,
    Principal, Store, StoreError, ThrottleState, TokenKind, TokenLookup, admit, lock_order,
    migrator, select_account,
};
use crate::domain::{
    Account, DEFAULT_ORGANIZATION_TITLE, Email, InviteToken, Organization, OrganizationId,
    ThrottleKey, ThrottleRule, TokenHash, UserId,
};

/// A pooled connection idle for longer than this is pinged before it is used again.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(10);

/// Serialises the creation of the first organization across replicas.
const FIRST_ORGANIZATION_LOCK: i64 = 0x6c73_6964_6f72_6731;

#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Prepares a pool without connecting, so the service starts (not ready) while the
    /// database is still away.
    pub fn connect(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            // Pinging every connection before every use doubled the round trips of a token
            // check. A connection in steady use is known to be alive; only one idle long enough
            // for the database to have gone away meanwhile is pinged first.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > PING_IF_IDLE_FOR {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy(url)
            .map_err(|e| anyhow::anyhow!("invalid postgres DATABASE_URL: {e}"))?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn account_row(row: &PgRow) -> Result<AccountRow, sqlx::Error> {
    Ok(AccountRow {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        username: row.try_get("username")?,
        first_name: row.try_get("first_name")?,
        last_name: row.try_get("last_name")?,
        date_joined: row.try_get("date_joined")?,
        organization_id: row.try_get("organization_id")?,
        organization_title: row.try_get("organization_title")?,
        organization_created_by: row.try_get("organization_created_by")?,
    })
}

fn organization(row: &PgRow) -> Result<Organization, sqlx::Error> {
    Ok(Organization {
        id: row.try_get("id")?,
        title: row.try_get("title")?,
        created_by_user_id: row.try_get("created_by_user_id")?,
    })
}

async fn insert_token(
    tx: &mut Transaction<'_, Postgres>,
    user: UserId,
    token: &TokenHash,
    kind: TokenKind,
    now: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO tokens (token_hash, user_id, kind, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(token.as_str())
    .bind(user)
    .bind(kind.as_str())
    .bind(now)
    .bind(expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[async_trait]
impl Store for PostgresStore {
    fn pool_stats(&self) -> PoolStats {
        PoolStats {
            size: self.pool.size() as usize,
            idle: self.pool.num_idle(),
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // The migrator holds a Postgres advisory lock, so replicas starting together take turns.
        migrator(&[
            (
                1,
                "accounts",
                include_str!("../../migrations/postgres/0001_accounts.sql"),
            ),
            (
                2,
                "throttle and audit",
                include_str!("../../migrations/postgres/0002_throttle_and_audit.sql"),
            ),
            (
                3,
                "label studio import",
                include_str!("../../migrations/postgres/0003_label_studio_import.sql"),
            ),
        ])
        .run(&self.pool)
        .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn email_exists(&self, email: &Email) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM users WHERE email = $1")
            .bind(email.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    async fn organization_by_invite(
        &self,
        token: &InviteToken,
    ) -> Result<Option<Organization>, StoreError> {
        let row = sqlx::query(
            "SELECT id, title, created_by_user_id FROM organizations WHERE invite_token = $1",
        )
        .bind(token.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(organization).transpose()?)
    }

    async fn create_account(&self, new: NewAccount) -> Result<Account, StoreError> {
        let mut tx = self.pool.begin().await?;
        let existing = match &new.joining {
            Joining::FirstOrganization { .. } => {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(FIRST_ORGANIZATION_LOCK)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "SELECT id, title, created_by_user_id FROM organizations ORDER BY id LIMIT 1",
                )
                .fetch_optional(&mut *tx)
                .await?
            }
            Joining::Organization(id) => Some(
                sqlx::query(
                    "SELECT id, title, created_by_user_id FROM organizations WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::OrganizationNotFound)?,
            ),
            // FOR SHARE waits for a concurrent reset of the token and then re-reads the row,
            // so a registration never commits with a token a reset has already replaced.
            Joining::Invite(token) => Some(
                sqlx::query(
                    "SELECT id, title, created_by_user_id FROM organizations \
                     WHERE invite_token = $1 FOR SHARE",
                )
                .bind(token.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::InviteNotFound)?,
            ),
        };
        let existing = existing.as_ref().map(organization).transpose()?;

        let user_id: i64 = sqlx::query_scalar(
            "INSERT INTO users (email, username, first_name, last_name, password_hash, date_joined) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(new.email.as_str())
        .bind(new.username.as_str())
        .bind(new.first_name.as_str())
        .bind(new.last_name.as_str())
        .bind(new.password_hash.as_deref())
        .bind(new.now)
        .fetch_one(&mut *tx)
        .await?;

        let organization = match (existing, &new.joining) {
            (Some(organization), _) => organization,
            (None, Joining::FirstOrganization { invite_token }) => {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO organizations (title, created_by_user_id, invite_token, created_at) \
                     VALUES ($1, $2, $3, $4) RETURNING id",
                )
                .bind(DEFAULT_ORGANIZATION_TITLE)
                .bind(user_id)
                .bind(invite_token.as_str())
                .bind(new.now)
                .fetch_one(&mut *tx)
                .await?;
                Organization {
                    id,
                    title: DEFAULT_ORGANIZATION_TITLE.to_owned(),
                    created_by_user_id: Some(user_id),
                }
            }
            (None, _) => return Err(StoreError::OrganizationNotFound),
        };

        sqlx::query("UPDATE users SET active_organization_id = $1 WHERE id = $2")
            .bind(organization.id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO memberships (organization_id, user_id, joined_at) VALUES ($1, $2, $3)",
        )
        .bind(organization.id)
        .bind(user_id)
        .bind(new.now)
        .execute(&mut *tx)
        .await?;
        insert_token(
            &mut tx,
            user_id,
            &new.api_token,
            TokenKind::Api,
            new.now,
            None,
        )
        .await?;
        if let Some(session) = &new.session {
            insert_token(
                &mut tx,
                user_id,
                &session.token,
                TokenKind::Session,
                new.now,
                Some(session.expires_at),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(super::new_account(user_id, &new, organization))
    }

    async fn login_record(&self, email: &Email) -> Result<Option<LoginRecord>, StoreError> {
        let row = sqlx::query(select_account!(
            ", u.password_hash, u.is_active",
            "FROM users u",
            "WHERE u.email = $1"
        ))
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(LoginRecord {
            account: account_row(&row)?.into(),
            password_hash: row.try_get("password_hash")?,
            is_active: row.try_get("is_active")?,
        }))
    }

    async fn set_password_hash(&self, user: UserId, hash: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(hash)
            .bind(user)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn reset_password(&self, email: &Email, hash: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let user: Option<i64> =
            sqlx::query_scalar("UPDATE users SET password_hash = $1 WHERE email = $2 RETURNING id")
                .bind(hash)
                .bind(email.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(user) = user else { return Ok(false) };
        sqlx::query("DELETE FROM tokens WHERE user_id = $1 AND kind = 'session'")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn create_session(
        &self,
        user: UserId,
        session: &NewSession,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // One statement, so one round trip and no BEGIN/COMMIT: it is atomic by itself.
        sqlx::query(
            "WITH expired AS (DELETE FROM tokens \
             WHERE user_id = $1 AND kind = 'session' AND expires_at <= $2) \
             INSERT INTO tokens (token_hash, user_id, kind, created_at, expires_at) \
             VALUES ($3, $1, 'session', $2, $4)",
        )
        .bind(user)
        .bind(now)
        .bind(session.token.as_str())
        .bind(session.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn principal(
        &self,
        token: &TokenHash,
        throttle: Option<&ThrottleKey>,
        now: DateTime<Utc>,
    ) -> Result<TokenLookup, StoreError> {
        let row = sqlx::query(select_account!(
            ", t.kind, (SELECT th.blocked_until FROM throttle th WHERE th.key = $3) AS throttled_until",
            "FROM tokens t JOIN users u ON u.id = t.user_id",
            "WHERE t.token_hash = $1 AND (t.expires_at IS NULL OR t.expires_at > $2) AND u.is_active"
        ))
        .bind(token.as_str())
        .bind(now)
        .bind(throttle.map(ThrottleKey::as_str))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(TokenLookup {
                principal: None,
                blocked_until: None,
            });
        };
        Ok(TokenLookup {
            principal: Some(Principal {
                account: account_row(&row)?.into(),
                kind: TokenKind::parse(row.try_get("kind")?)?,
            }),
            blocked_until: row.try_get("throttled_until")?,
        })
    }

    async fn end_session(&self, token: &TokenHash) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM tokens WHERE token_hash = $1 AND kind = 'session'")
            .bind(token.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn replace_api_token(
        &self,
        user: UserId,
        token: &TokenHash,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tokens (token_hash, user_id, kind, created_at) VALUES ($1, $2, 'api', $3) \
             ON CONFLICT (user_id) WHERE kind = 'api' \
             DO UPDATE SET token_hash = EXCLUDED.token_hash, created_at = EXCLUDED.created_at",
        )
        .bind(token.as_str())
        .bind(user)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn invite_token(&self, organization: OrganizationId) -> Result<InviteToken, StoreError> {
        let token: Option<String> =
            sqlx::query_scalar("SELECT invite_token FROM organizations WHERE id = $1")
                .bind(organization)
                .fetch_optional(&self.pool)
                .await?;
        super::stored_invite(token)
    }

    async fn replace_invite_token(
        &self,
        organization: OrganizationId,
        token: &InviteToken,
    ) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE organizations SET invite_token = $1 WHERE id = $2")
            .bind(token.as_str())
            .bind(organization)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::OrganizationNotFound);
        }
        Ok(())
    }

    async fn throttle_admit(
        &self,
        keys: &[(ThrottleKey, ThrottleRule)],
        now: DateTime<Utc>,
    ) -> Result<Admission, StoreError> {
        let keys = lock_order(keys);
        let mut tx = self.pool.begin().await?;
        let mut rows = Vec::with_capacity(keys.len());
        for (key, rule) in &keys {
            // One statement creates or locks the row: a separate insert and `SELECT … FOR
            // UPDATE` find no row when a concurrent success deletes it in between.
            let row = sqlx::query(
                "INSERT INTO throttle (key, failures, updated_at) VALUES ($1, 0, $2) \
                 ON CONFLICT (key) DO UPDATE SET failures = throttle.failures \
                 RETURNING failures, blocked_until, updated_at",
            )
            .bind(key.as_str())
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            let state = ThrottleState {
                failures: i64::from(row.try_get::<i32, _>("failures")?),
                blocked_until: row.try_get("blocked_until")?,
                updated_at: row.try_get("updated_at")?,
            };
            rows.push((*rule, state));
        }
        let updates = match admit(&rows, now) {
            Ok(updates) => updates,
            Err(until) => return Ok(Admission::Blocked { until }),
        };
        for ((key, _), (failures, blocked_until)) in keys.iter().zip(updates) {
            sqlx::query(
                "UPDATE throttle SET failures = $2, blocked_until = $3, updated_at = $4 WHERE key = $1",
            )
            .bind(key.as_str())
            .bind(i32::try_from(failures).unwrap_or(i32::MAX))
            .bind(blocked_until)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Admission::Admitted)
    }

    async fn throttle_blocked_until(
        &self,
        key: &ThrottleKey,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let until: Option<Option<DateTime<Utc>>> =
            sqlx::query_scalar("SELECT blocked_until FROM throttle WHERE key = $1")
                .bind(key.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(until.flatten().filter(|until| *until > now))
    }

    async fn throttle_succeeded(
        &self,
        clear: &[ThrottleKey],
        forgive: &[(ThrottleKey, ThrottleRule)],
    ) -> Result<(), StoreError> {
        for key in clear {
            sqlx::query("DELETE FROM throttle WHERE key = $1")
                .bind(key.as_str())
                .execute(&self.pool)
                .await?;
        }
        for (key, rule) in forgive {
            sqlx::query(
                "UPDATE throttle SET failures = GREATEST(failures - 1, 0), \
                 blocked_until = CASE WHEN failures - 1 < $2 THEN NULL ELSE blocked_until END \
                 WHERE key = $1",
            )
            .bind(key.as_str())
            .bind(i32::try_from(rule.max_failures).unwrap_or(i32::MAX))
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    async fn purge(
        &self,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let sessions =
            sqlx::query("DELETE FROM tokens WHERE kind = 'session' AND expires_at <= $1")
                .bind(now)
                .execute(&self.pool)
                .await?;
        let throttle = sqlx::query(
            "DELETE FROM throttle WHERE updated_at < $1 \
             AND (blocked_until IS NULL OR blocked_until <= $2)",
        )
        .bind(stale_before)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(sessions.rows_affected() + throttle.rows_affected())
    }

    async fn audit(&self, event: &AuditEvent<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_events (at, event, outcome, user_id, email, client_addr, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(event.at)
        .bind(event.event)
        .bind(event.outcome)
        .bind(event.user_id)
        .bind(event.email)
        .bind(event.client)
        .bind(event.reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
