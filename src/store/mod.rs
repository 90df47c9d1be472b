//! The storage contract and its two backends: Postgres for production, embedded SQLite by
//! default. Both pass the same test suite; uniqueness is enforced by the database itself.

pub mod import;
mod import_postgres;
mod import_sqlite;
mod postgres;
mod sqlite;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;

use crate::{
    config::Settings,
    domain::{
        Account, Email, InviteToken, Organization, OrganizationId, PersonName, ThrottleKey,
        ThrottleRule, TokenHash, User, UserId, Username,
    },
};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Which unique value a write collided with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unique {
    Email,
    Token,
    InviteToken,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unique value already taken: {0:?}")]
    Conflict(Unique),
    #[error("no organization has that invite token")]
    InviteNotFound,
    #[error("organization not found")]
    OrganizationNotFound,
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error")]
    Unexpected(#[source] anyhow::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &error {
            E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => {
                Self::Unavailable(error)
            }
            E::Database(db) if db.is_unique_violation() => {
                let name = db.constraint().unwrap_or(db.message()).to_ascii_lowercase();
                if name.contains("email") {
                    Self::Conflict(Unique::Email)
                } else if name.contains("invite") {
                    Self::Conflict(Unique::InviteToken)
                } else if name.contains("token") {
                    Self::Conflict(Unique::Token)
                } else {
                    Self::Unexpected(error.into())
                }
            }
            // Postgres connection failures (class 08), shutdowns and recovery (57P01..57P03).
            E::Database(db)
                if db
                    .code()
                    .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")) =>
            {
                Self::Unavailable(error)
            }
            _ => Self::Unexpected(error.into()),
        }
    }
}

/// Which organization a new account joins.
#[derive(Debug, Clone)]
pub enum Joining {
    /// The first organization; created (owned by the new user) when none exists yet.
    FirstOrganization { invite_token: InviteToken },
    /// A given organization (an administrator creating an account in their own).
    Organization(OrganizationId),
    /// The organization whose current invite token this is, checked inside the transaction.
    Invite(InviteToken),
}

/// Everything a new account is made of, written in one transaction.
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub email: Email,
    pub username: Username,
    pub first_name: PersonName,
    pub last_name: PersonName,
    pub password_hash: Option<String>,
    pub api_token: TokenHash,
    pub session: Option<NewSession>,
    pub joining: Joining,
    pub now: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub token: TokenHash,
    pub expires_at: DateTime<Utc>,
}

/// What a password login needs: the account, its hash and whether it may log in.
#[derive(Debug, Clone)]
pub struct LoginRecord {
    pub account: Account,
    pub password_hash: Option<String>,
    pub is_active: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Api,
    Session,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Session => "session",
        }
    }

    fn parse(kind: &str) -> Result<Self, StoreError> {
        match kind {
            "api" => Ok(Self::Api),
            "session" => Ok(Self::Session),
            other => Err(StoreError::Unexpected(anyhow::anyhow!(
                "unknown token kind {other:?}"
            ))),
        }
    }
}

/// A security event for the append-only audit trail. Never a password or a token.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    pub at: DateTime<Utc>,
    pub event: &'static str,
    pub outcome: &'static str,
    pub user_id: Option<UserId>,
    pub email: Option<&'a str>,
    pub client: &'a str,
    pub reason: Option<&'static str>,
}

/// Whether an attempt may go ahead under the throttle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; the attempt is already counted as a failure until it succeeds.
    Admitted,
    Blocked {
        until: DateTime<Utc>,
    },
}

/// What token authentication reads in its one lookup: the token's owner, and how long the
/// client's address is blocked, if it is.
#[derive(Debug, Clone)]
pub struct TokenLookup {
    pub principal: Option<Principal>,
    pub blocked_until: Option<DateTime<Utc>>,
}

/// A throttle row as read under its lock.
#[derive(Debug, Clone)]
pub(crate) struct ThrottleState {
    pub failures: i64,
    pub blocked_until: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// A throttle row's new failure count and block.
pub(crate) type ThrottleUpdate = (i64, Option<DateTime<Utc>>);

/// Decides an admission from the locked rows: blocked while any key is (the error is until
/// when), otherwise every key counts one more failure.
pub(crate) fn admit(
    rows: &[(ThrottleRule, ThrottleState)],
    now: DateTime<Utc>,
) -> Result<Vec<ThrottleUpdate>, DateTime<Utc>> {
    if let Some(until) = rows
        .iter()
        .filter_map(|(_, state)| state.blocked_until)
        .filter(|until| *until > now)
        .max()
    {
        return Err(until);
    }
    Ok(rows
        .iter()
        .map(|(rule, state)| {
            let previous = u32::try_from(state.failures).unwrap_or(0);
            let failures = rule
                .carried_failures(previous, state.updated_at, now)
                .saturating_add(1);
            (i64::from(failures), rule.blocked_until(failures, now))
        })
        .collect())
}

/// Sorts and de-duplicates keys, so that transactions lock them in one order.
pub(crate) fn lock_order(keys: &[(ThrottleKey, ThrottleRule)]) -> Vec<(ThrottleKey, ThrottleRule)> {
    let mut keys = keys.to_vec();
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    keys.dedup_by(|a, b| a.0 == b.0);
    keys
}

/// The user a token belongs to, and what kind of token it is.
#[derive(Debug, Clone)]
pub struct Principal {
    pub account: Account,
    pub kind: TokenKind,
}

/// Connections of the store's pool, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStats {
    pub size: usize,
    pub idle: usize,
}

/// The storage contract. Every multi-row write is one transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn pool_stats(&self) -> PoolStats;
    /// Brings the schema up to date; safe when several replicas start at once.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Answers whether the database can be reached right now.
    async fn ping(&self) -> Result<(), StoreError>;
    async fn email_exists(&self, email: &Email) -> Result<bool, StoreError>;
    /// The organization holding this current invite token, if any.
    async fn organization_by_invite(
        &self,
        token: &InviteToken,
    ) -> Result<Option<Organization>, StoreError>;
    /// Creates the user with their membership, API token and optional session.
    async fn create_account(&self, account: NewAccount) -> Result<Account, StoreError>;
    async fn login_record(&self, email: &Email) -> Result<Option<LoginRecord>, StoreError>;
    async fn set_password_hash(&self, user: UserId, hash: &str) -> Result<(), StoreError>;
    /// Sets a new password and ends every session of the user; false when no such user.
    async fn reset_password(&self, email: &Email, hash: &str) -> Result<bool, StoreError>;
    /// Starts a session and clears the user's expired ones.
    async fn create_session(
        &self,
        user: UserId,
        session: &NewSession,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// The active user owning a live token, and the block on `throttle` if any. The one lookup
    /// token authentication performs.
    async fn principal(
        &self,
        token: &TokenHash,
        throttle: Option<&ThrottleKey>,
        now: DateTime<Utc>,
    ) -> Result<TokenLookup, StoreError>;
    /// Ends a session; false when it did not exist.
    async fn end_session(&self, token: &TokenHash) -> Result<bool, StoreError>;
    /// Replaces the user's API token, so the old one stops working at once.
    async fn replace_api_token(
        &self,
        user: UserId,
        token: &TokenHash,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    async fn invite_token(&self, organization: OrganizationId) -> Result<InviteToken, StoreError>;
    async fn replace_invite_token(
        &self,
        organization: OrganizationId,
        token: &InviteToken,
    ) -> Result<(), StoreError>;
    /// Counts an attempt as a failure on every key unless one of them is blocked, atomically,
    /// so parallel attempts on any replica can't slip past the limit.
    async fn throttle_admit(
        &self,
        keys: &[(ThrottleKey, ThrottleRule)],
        now: DateTime<Utc>,
    ) -> Result<Admission, StoreError>;
    /// Until when a key is blocked, if it is.
    async fn throttle_blocked_until(
        &self,
        key: &ThrottleKey,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// After a success: forgets `clear` keys and takes back the attempt counted on `forgive`.
    async fn throttle_succeeded(
        &self,
        clear: &[ThrottleKey],
        forgive: &[(ThrottleKey, ThrottleRule)],
    ) -> Result<(), StoreError>;
    async fn audit(&self, event: &AuditEvent<'_>) -> Result<(), StoreError>;
    /// Deletes expired sessions and throttle rows untouched since `stale_before` and not
    /// blocked; returns how many rows went.
    async fn purge(
        &self,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<u64, StoreError>;
}

/// Opens the store the settings name: Postgres for `postgres://`, SQLite for `sqlite://`, or the
/// embedded SQLite file in the data directory when no URL is set.
pub async fn connect(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    let acquire_timeout = Duration::from_millis(settings.database.acquire_timeout_ms);
    let max_connections = settings.database.max_connections;
    match settings
        .database
        .url
        .as_ref()
        .map(|url| url.expose_secret())
    {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Arc::new(PostgresStore::connect(
                url,
                max_connections,
                acquire_timeout,
            )?))
        }
        Some(url) if url.starts_with("sqlite:") => Ok(Arc::new(
            SqliteStore::open(url, max_connections, acquire_timeout).await?,
        )),
        Some(_) => {
            anyhow::bail!("DATABASE_URL must start with postgres://, postgresql:// or sqlite://")
        }
        None => {
            let dir = settings.data_dir();
            std::fs::create_dir_all(&dir).map_err(|e| {
                anyhow::anyhow!("cannot create data directory {}: {e}", dir.display())
            })?;
            let url = format!("sqlite://{}", dir.join("identity.sqlite3").display());
            Ok(Arc::new(
                SqliteStore::open(&url, max_connections, acquire_timeout).await?,
            ))
        }
    }
}

/// Columns both backends select for an account, decoded into domain types.
pub(crate) struct AccountRow {
    pub id: i64,
    pub email: String,
    pub username: String,
    pub first_name: String,
    pub last_name: String,
    pub date_joined: DateTime<Utc>,
    pub organization_id: Option<i64>,
    pub organization_title: Option<String>,
    pub organization_created_by: Option<i64>,
}

impl From<AccountRow> for Account {
    fn from(row: AccountRow) -> Self {
        let organization = match (row.organization_id, row.organization_title) {
            (Some(id), Some(title)) => Some(Organization {
                id,
                title,
                created_by_user_id: row.organization_created_by,
            }),
            _ => None,
        };
        Account {
            user: User {
                id: row.id,
                email: row.email,
                username: row.username,
                first_name: row.first_name,
                last_name: row.last_name,
                date_joined: row.date_joined,
                organization_id: organization.as_ref().map(|o| o.id),
            },
            organization,
        }
    }
}

/// A query for account rows, joined with the live membership of the user's active
/// organization: `extra` columns, the `from` clause (which must name the users table `u`) and
/// the rest. Both backends share it, so the columns `AccountRow` reads stay in one place.
macro_rules! select_account {
    ($extra:literal, $from:literal, $rest:literal) => {
        concat!(
            "SELECT u.id, u.email, u.username, u.first_name, u.last_name, u.date_joined, \
             o.id AS organization_id, o.title AS organization_title, \
             o.created_by_user_id AS organization_created_by",
            $extra,
            " ",
            $from,
            " LEFT JOIN memberships m ON m.user_id = u.id \
             AND m.organization_id = u.active_organization_id AND m.deleted_at IS NULL \
             LEFT JOIN organizations o ON o.id = m.organization_id ",
            $rest
        )
    };
}
pub(crate) use select_account;

/// Builds a migrator from migrations embedded in the binary, so the image needs no files.
pub(crate) fn migrator(
    migrations: &[(i64, &'static str, &'static str)],
) -> sqlx::migrate::Migrator {
    use sqlx::{
        SqlSafeStr,
        migrate::{Migration, MigrationType, Migrator},
    };
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    (*description).into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        match error {
            sqlx::migrate::MigrateError::Execute(inner) => inner.into(),
            other => Self::Unexpected(other.into()),
        }
    }
}

/// The account a successful `create_account` wrote, built from what it was given.
pub(crate) fn new_account(id: UserId, new: &NewAccount, organization: Organization) -> Account {
    Account {
        user: User {
            id,
            email: new.email.as_str().to_owned(),
            username: new.username.as_str().to_owned(),
            first_name: new.first_name.as_str().to_owned(),
            last_name: new.last_name.as_str().to_owned(),
            date_joined: new.now,
            organization_id: Some(organization.id),
        },
        organization: Some(organization),
    }
}

/// Checks an invite token read back from the database.
pub(crate) fn stored_invite(token: Option<String>) -> Result<InviteToken, StoreError> {
    let token = token.ok_or(StoreError::OrganizationNotFound)?;
    InviteToken::parse(&token).map_err(|e| StoreError::Unexpected(anyhow::anyhow!(e)))
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
        failures: i64,
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
    fn an_attempt_counts_on_every_key_and_blocks_at_the_limit() {
        let now = Utc::now();
        let updates = admit(
            &[
                (rule(3), state(1, None, 0, now)),
                (rule(2), state(1, None, 0, now)),
            ],
            now,
        )
        .unwrap();
        assert_eq!(
            updates,
            vec![(2, None), (2, Some(now + Duration::seconds(1)))]
        );
    }

    #[test]
    fn any_blocked_key_refuses_until_its_latest_block() {
        let now = Utc::now();
        let refused = admit(
            &[
                (rule(3), state(5, Some(10), 0, now)),
                (rule(3), state(9, Some(30), 0, now)),
            ],
            now,
        );
        assert_eq!(refused, Err(now + Duration::seconds(30)));
        let expired = admit(&[(rule(3), state(5, Some(-1), 0, now))], now).unwrap();
        assert_eq!(expired, vec![(6, Some(now + Duration::seconds(8)))]);
    }

    #[test]
    fn failures_outside_the_window_start_over() {
        let now = Utc::now();
        assert_eq!(
            admit(&[(rule(3), state(50, None, 25, now))], now).unwrap(),
            vec![(1, None)]
        );
    }

    #[test]
    fn keys_lock_in_one_order_without_duplicates() {
        let a = ThrottleKey::new("login-email", "a@example.com");
        let b = ThrottleKey::new("login-addr", "127.0.0.1");
        let ordered = lock_order(&[
            (a.clone(), rule(1)),
            (b.clone(), rule(1)),
            (a.clone(), rule(1)),
        ]);
        assert_eq!(
            ordered.into_iter().map(|(k, _)| k).collect::<Vec<_>>(),
            vec![b, a]
        );
    }
}
