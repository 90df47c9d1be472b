//! The storage contract and its two backends: Postgres for production, embedded SQLite by
//! default. One implementation serves both ([`db`]): a statement is written once unless the
//! dialects must differ. Both pass the same test suite; uniqueness is enforced by the database.
//!
//! The contract is shaped by what each call needs, so that the hot paths cost few round trips:
//! a password login is one statement to admit it and read the account, and one to record its
//! outcome; a token check is one read.

mod accounts;
mod audit;
pub(crate) mod db;
pub mod import;
mod import_postgres;
mod import_sqlite;
mod login;
mod maintenance;
mod members;
mod personal_tokens;
mod private;
mod throttle;
mod tokens;

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

use db::Conn;

pub use members::{
    Deletion, MemberListing, MemberPage, MemberStore, PasswordChange, ProfileChange,
};
pub use personal_tokens::{
    KeyPurpose, NewKey, PersonalToken, PersonalTokenLookup, PersonalTokenOwner, PersonalTokenStore,
    StoredKey, TokenSettings,
};

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

/// Everything a new account is made of, written in one transaction with its audit event.
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

/// What a password login needs: the account, its hash, whether it may log in, and the
/// generation of its credential, which must still be current when the session starts.
#[derive(Debug, Clone)]
pub struct LoginRecord {
    pub account: Account,
    pub password_hash: Option<String>,
    pub is_active: bool,
    pub credential_version: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Api,
    Session,
    /// A signed access token, checked without the database.
    Access,
}

impl TokenKind {
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
#[derive(Debug, Clone, Copy)]
pub struct AuditEvent<'a> {
    pub at: DateTime<Utc>,
    pub event: &'static str,
    pub outcome: &'static str,
    pub user_id: Option<UserId>,
    pub email: Option<&'a str>,
    pub client: &'a str,
    pub reason: Option<&'static str>,
    /// How many refusals this row stands for (aggregated rows); 1 for everything else.
    pub count: u32,
}

/// A password login about to be checked: counted on its email, refused while the email or
/// the client's address is blocked.
#[derive(Debug, Clone, Copy)]
pub struct LoginAttempt<'a> {
    pub email: &'a Email,
    pub email_key: &'a ThrottleKey,
    pub email_rule: ThrottleRule,
    pub address_key: &'a ThrottleKey,
    pub now: DateTime<Utc>,
}

/// The answer to a [`LoginAttempt`].
#[derive(Debug, Clone)]
pub enum LoginAdmission {
    /// Go ahead: the attempt counts against its email until it succeeds. The account, when
    /// one has the email.
    Admitted {
        record: Option<Box<LoginRecord>>,
        /// The block this very attempt put on the email (it reached the limit), which giving
        /// it back lifts again.
        blocking: Option<DateTime<Utc>>,
    },
    Blocked {
        until: DateTime<Utc>,
    },
}

/// A verified login: starts the session unless the credential changed since it was read.
#[derive(Debug, Clone, Copy)]
pub struct LoginSuccess<'a> {
    pub user: UserId,
    pub credential_version: i64,
    /// The hash the password was verified against, and its replacement with the current
    /// parameters if any: the replacement only lands on that very hash.
    pub verified_hash: &'a str,
    pub new_hash: Option<&'a str>,
    pub session: &'a NewSession,
    /// The email's throttle key, cleared by the success.
    pub email_key: &'a ThrottleKey,
    pub email: &'a str,
    pub client: &'a str,
    pub now: DateTime<Utc>,
}

/// A failed attempt: counted on its key, with its audit event, in one write.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    pub key: &'a ThrottleKey,
    pub rule: ThrottleRule,
    pub audit: &'a AuditEvent<'a>,
}

/// What token authentication reads in its one lookup: the token's owner, and how long the
/// client's address is blocked, if it is.
#[derive(Debug, Clone)]
pub struct TokenLookup {
    pub principal: Option<Principal>,
    pub blocked_until: Option<DateTime<Utc>>,
}

/// The user a token belongs to, and what kind of token it is.
#[derive(Debug, Clone)]
pub struct Principal {
    pub account: Account,
    pub kind: TokenKind,
    /// When a session was last seen in use (recorded about once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Whether the user's organization accepts legacy API tokens (always true for other kinds).
    pub legacy_tokens_enabled: bool,
}

/// Connections of the store's pool, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStats {
    pub size: usize,
    pub idle: usize,
}

/// What [`Maintenance::purge`] deletes.
#[derive(Debug, Clone, Copy)]
pub struct PurgeBefore {
    pub now: DateTime<Utc>,
    /// Sessions unused since then.
    pub idle_since: DateTime<Utc>,
    /// Throttle rows untouched since then (and not blocked).
    pub throttle_since: DateTime<Utc>,
    /// Audit rows older than that.
    pub audit_since: DateTime<Utc>,
}

/// Accounts and the organization they join.
#[async_trait]
pub trait AccountStore {
    async fn email_exists(&self, email: &Email) -> Result<bool, StoreError>;
    /// The organization holding this current invite token, if any.
    async fn organization_by_invite(
        &self,
        token: &InviteToken,
    ) -> Result<Option<Organization>, StoreError>;
    /// Creates the user with their membership, API token and optional session, and writes
    /// `audit` (its user filled in) in the same transaction.
    async fn create_account(
        &self,
        account: NewAccount,
        audit: &AuditEvent<'_>,
    ) -> Result<Account, StoreError>;
    /// Sets a new password, starts a new credential generation and ends every session of
    /// the user; the user, or `None` when no account has the email.
    async fn reset_password(&self, email: &Email, hash: &str)
    -> Result<Option<UserId>, StoreError>;
    async fn invite_token(&self, organization: OrganizationId) -> Result<InviteToken, StoreError>;
    async fn replace_invite_token(
        &self,
        organization: OrganizationId,
        token: &InviteToken,
    ) -> Result<(), StoreError>;
}

/// The password login: admission with the account, then its outcome.
#[async_trait]
pub trait LoginStore {
    /// Counts the attempt on its email unless the email or the address is blocked, and
    /// reads the account: one statement on Postgres.
    async fn login_admit(&self, attempt: &LoginAttempt<'_>) -> Result<LoginAdmission, StoreError>;
    /// Starts the session, stores the new hash if the verified one is still there, clears the
    /// email's throttle and writes the audit event, all only if the credential generation is
    /// still the one read at admission; false when it changed (a reset won the race), in which
    /// case only a failure is audited. One statement on Postgres.
    async fn login_succeeded(&self, success: &LoginSuccess<'_>) -> Result<bool, StoreError>;
    /// Takes back an admission that was never checked (the login failed for another reason
    /// than its credentials): one failure less on the key, and no block below the limit.
    /// `blocking` is the block the attempt's admission set, if any: lifted unless a later
    /// attempt replaced it.
    async fn give_back(
        &self,
        key: &ThrottleKey,
        rule: ThrottleRule,
        blocking: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError>;
}

/// Counters of failures shared by every replica.
#[async_trait]
pub trait ThrottleStore {
    /// Until when a key is blocked, if it is.
    async fn blocked_until(
        &self,
        key: &ThrottleKey,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// Counts a failure on the key (blocking it past the limit) and writes its audit event,
    /// in one statement on Postgres and one transaction on SQLite.
    async fn record_failure(&self, failure: &Failure<'_>) -> Result<(), StoreError>;
}

/// API tokens and sessions.
#[async_trait]
pub trait TokenStore {
    /// The active user owning a live token (a session also unused since `idle_since` at the
    /// latest), and the block on `throttle` if any: the one lookup token authentication does.
    async fn principal(
        &self,
        token: &TokenHash,
        throttle: Option<&ThrottleKey>,
        now: DateTime<Utc>,
        idle_since: DateTime<Utc>,
    ) -> Result<TokenLookup, StoreError>;
    /// Records that a session is in use.
    async fn touch_session(&self, token: &TokenHash, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// Ends a session; false when it did not exist.
    async fn end_session(&self, token: &TokenHash) -> Result<bool, StoreError>;
    /// Replaces the user's API token, so the old one stops working at once.
    async fn replace_api_token(
        &self,
        user: UserId,
        token: &TokenHash,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}

/// The append-only audit trail.
#[async_trait]
pub trait AuditStore {
    async fn audit(&self, event: &AuditEvent<'_>) -> Result<(), StoreError>;
}

/// Schema, health and housekeeping.
#[async_trait]
pub trait Maintenance {
    fn pool_stats(&self) -> PoolStats;
    /// Statements issued so far, by operation.
    fn statement_counts(&self) -> Vec<(&'static str, u64)>;
    /// Brings the schema up to date; safe when several replicas start at once.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Answers whether the database can be reached right now.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Deletes expired and idle sessions, stale throttle rows and audit rows past retention;
    /// returns how many rows went.
    async fn purge(&self, before: &PurgeBefore) -> Result<u64, StoreError>;
    /// Calls `each` with every stored password hash that does not start with `current`.
    async fn other_password_hashes(
        &self,
        current: &str,
        each: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), StoreError>;
}

/// The whole storage contract.
pub trait Store:
    AccountStore
    + LoginStore
    + ThrottleStore
    + TokenStore
    + PersonalTokenStore
    + AuditStore
    + Maintenance
    + MemberStore
    + Send
    + Sync
    + 'static
{
}

impl<T> Store for T where
    T: AccountStore
        + LoginStore
        + ThrottleStore
        + TokenStore
        + PersonalTokenStore
        + AuditStore
        + Maintenance
        + MemberStore
        + Send
        + Sync
        + 'static
{
}

/// The store over either database.
pub struct SqlStore {
    conn: Conn,
}

impl SqlStore {
    /// Opens the store a database URL names: `postgres://…` (prepared without connecting) or
    /// `sqlite://…` (created if missing).
    pub async fn open(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let conn = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Conn::postgres(url, max_connections, acquire_timeout)?
        } else if url.starts_with("sqlite:") {
            Conn::sqlite(url, max_connections, acquire_timeout).await?
        } else {
            anyhow::bail!("DATABASE_URL must start with postgres://, postgresql:// or sqlite://")
        };
        Ok(Self { conn })
    }

    pub(crate) fn postgres_pool(&self) -> Option<&sqlx::PgPool> {
        match &self.conn.db {
            db::Db::Postgres(pool) => Some(pool),
            db::Db::Sqlite(_) => None,
        }
    }

    pub(crate) fn sqlite_pool(&self) -> Option<&sqlx::SqlitePool> {
        match &self.conn.db {
            db::Db::Sqlite(pool) => Some(pool),
            db::Db::Postgres(_) => None,
        }
    }
}

/// The URL of the database the settings name: theirs, or the embedded SQLite file in the data
/// directory (created, private to the service's user, when `create` is set).
pub fn database_url(settings: &Settings, create: bool) -> anyhow::Result<String> {
    if let Some(url) = &settings.database.url {
        return Ok(url.expose_secret().to_owned());
    }
    let dir = settings.data_dir();
    if create {
        private::create_private_dir(&dir)?;
    }
    Ok(format!(
        "sqlite://{}",
        dir.join("identity.sqlite3").display()
    ))
}

/// Opens the store the settings name.
pub async fn connect(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    let url = database_url(settings, true)?;
    Ok(Arc::new(
        SqlStore::open(
            &url,
            settings.database.max_connections,
            Duration::from_millis(settings.database.acquire_timeout_ms),
        )
        .await?,
    ))
}

/// Columns every account query selects, decoded into domain types.
pub(crate) struct AccountRow {
    pub id: i64,
    pub email: String,
    pub username: String,
    pub first_name: String,
    pub last_name: String,
    pub date_joined: db::Ts,
    pub organization_id: Option<i64>,
    pub organization_title: Option<String>,
    pub organization_created_by: Option<i64>,
}

impl AccountRow {
    /// Reads the columns of [`select_account!`] from a row of either backend.
    pub(crate) fn read<'r, R>(row: &'r R) -> Result<Self, sqlx::Error>
    where
        R: sqlx::Row,
        &'static str: sqlx::ColumnIndex<R>,
        i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        db::Ts: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(Self {
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
                date_joined: row.date_joined.0,
                organization_id: organization.as_ref().map(|o| o.id),
            },
            organization,
        }
    }
}

/// A query for account rows, joined with the live membership of the user's active
/// organization: `extra` columns, the `from` clause (which must name the users table `u`) and
/// the rest.
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

/// A throttle rule's numbers as the Postgres statements take them.
pub(crate) struct RuleArgs {
    pub max_failures: i32,
    pub base_ms: f64,
    pub max_ms: f64,
}

impl From<ThrottleRule> for RuleArgs {
    fn from(rule: ThrottleRule) -> Self {
        Self {
            max_failures: i32::try_from(rule.max_failures).unwrap_or(i32::MAX),
            base_ms: rule.base_delay.num_milliseconds() as f64,
            max_ms: rule.max_delay.num_milliseconds() as f64,
        }
    }
}
