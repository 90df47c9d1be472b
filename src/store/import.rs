//! The storage side of `import-label-studio`: one transaction that reads what the target
//! already holds and writes the imported rows in batches. It stands apart from
//! [`super::Store`], which serves the API, because only the import command writes this way.
//!
//! Imported users and organizations are recorded with their Label Studio key, so that a later
//! run recognises them; everything is written in one transaction, so an interrupted run leaves
//! nothing behind.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    NewKey, PersonalToken, SqlStore, StoreError, TokenSettings, import_postgres::PostgresImport,
    import_sqlite::SqliteImport,
};
use crate::{
    config::Settings,
    domain::{Email, InviteToken, OrganizationId, PersonName, TokenHash, UserId, Username},
};

/// Rows handed to one insert call at most. Postgres takes them in one statement (each column
/// is one array): every statement costs a round trip.
pub const BATCH_ROWS: usize = 10_000;
/// Rows in one SQLite statement at most: it binds at most 32,766 values per statement.
const SQLITE_STATEMENT_ROWS: usize = 1_000;

/// A Label Studio row: its id with the time it was created there, since ids alone repeat
/// between Label Studio databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LabelStudioKey {
    pub id: i64,
    pub created_at: DateTime<Utc>,
}

/// What the target holds already, as far as the rows about to be imported are concerned.
#[derive(Debug, Default)]
pub struct Existing {
    /// Label Studio users imported by an earlier run, and who they are here.
    pub users: HashMap<LabelStudioKey, UserId>,
    pub organizations: HashMap<LabelStudioKey, OrganizationId>,
    /// Of the emails asked about, those an account here has.
    pub emails: HashSet<String>,
    /// Of the token hashes asked about, those a token here has.
    pub token_hashes: HashSet<String>,
    /// Of the invite tokens asked about, those an organization here has.
    pub invite_tokens: HashSet<String>,
    /// Memberships (organization, user) of the users imported earlier.
    pub memberships: HashSet<(OrganizationId, UserId)>,
    /// Of the PAT ids (`jti`) asked about, those recorded here.
    pub jtis: HashSet<String>,
}

/// The values whose presence in the target the plan needs to know.
#[derive(Debug, Default)]
pub struct Lookup {
    pub emails: Vec<String>,
    pub token_hashes: Vec<String>,
    pub invite_tokens: Vec<String>,
    pub jtis: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ImportedOrganization {
    pub key: LabelStudioKey,
    pub title: String,
    pub invite_token: InviteToken,
}

#[derive(Clone)]
pub struct ImportedUser {
    pub key: LabelStudioKey,
    pub email: Email,
    pub username: Username,
    pub first_name: PersonName,
    pub last_name: PersonName,
    /// A Django hash verified at login and then replaced; `None` when there is no usable one.
    pub password_hash: Option<String>,
    pub is_active: bool,
    pub active_organization_id: Option<OrganizationId>,
}

impl std::fmt::Debug for ImportedUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportedUser")
            .field("key", &self.key)
            .field("email", &self.email)
            .field("has_password", &self.password_hash.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct ImportedToken {
    pub user_id: UserId,
    pub token: TokenHash,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct ImportedMembership {
    pub organization_id: OrganizationId,
    pub user_id: UserId,
    pub joined_at: DateTime<Utc>,
    /// Set for a member Label Studio removed: such a user does not act in the organization.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// A target the import writes into.
#[async_trait]
pub trait LabelStudioImport: Send + Sync {
    /// Brings the schema up to date, as the server does at start.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Starts the import's one transaction. Writing, it keeps other imports out (and, on
    /// SQLite, every other writer); opened for a dry run, it can write nothing.
    async fn begin(&self) -> Result<Box<dyn ImportTransaction>, StoreError>;
}

/// The import's transaction; dropping it without `commit` rolls everything back.
#[async_trait]
pub trait ImportTransaction: Send {
    /// What the target holds of what is about to be imported. A target whose schema is not
    /// there yet holds nothing.
    async fn existing(&mut self, lookup: &Lookup) -> Result<Existing, StoreError>;
    /// Inserts organizations (without owners yet) and records their keys; returns their new
    /// ids in the order given.
    async fn insert_organizations(
        &mut self,
        rows: &[ImportedOrganization],
        now: DateTime<Utc>,
    ) -> Result<Vec<OrganizationId>, StoreError>;
    /// Inserts users and records their keys; returns their new ids in the order given.
    async fn insert_users(
        &mut self,
        rows: &[ImportedUser],
        now: DateTime<Utc>,
    ) -> Result<Vec<UserId>, StoreError>;
    async fn set_owners(&mut self, owners: &[(OrganizationId, UserId)]) -> Result<(), StoreError>;
    async fn insert_tokens(&mut self, rows: &[ImportedToken]) -> Result<(), StoreError>;
    async fn insert_memberships(&mut self, rows: &[ImportedMembership]) -> Result<(), StoreError>;
    /// Organizations' token settings (Label Studio's JWT settings).
    async fn insert_token_settings(
        &mut self,
        rows: &[(OrganizationId, TokenSettings)],
    ) -> Result<(), StoreError>;
    /// A key that verifies imported PATs; nothing when it is there already.
    async fn insert_signing_key(&mut self, key: &NewKey<'_>) -> Result<(), StoreError>;
    /// PAT records; one already there is left as it is.
    async fn insert_personal_tokens(&mut self, rows: &[PersonalToken]) -> Result<(), StoreError>;
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// Whether the target is opened to write, or only to read for a dry run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Write,
    /// Nothing is created or written; a database that does not exist yet reads as empty.
    ReadOnly,
}

/// Opens the import target the settings name, as [`super::connect`] opens the store.
pub async fn connect(
    settings: &Settings,
    access: Access,
) -> anyhow::Result<Arc<dyn LabelStudioImport>> {
    let acquire_timeout = Duration::from_millis(settings.database.acquire_timeout_ms);
    let max_connections = settings.database.max_connections;
    let url = super::database_url(settings, access == Access::Write)?;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = SqlStore::open(&url, max_connections, acquire_timeout).await?;
        Ok(Arc::new(PostgresImport::new(store, access)?))
    } else if url.starts_with("sqlite:") {
        let import = match access {
            Access::Write => SqliteImport::writing(
                SqlStore::open(&url, max_connections, acquire_timeout).await?,
            )?,
            Access::ReadOnly => SqliteImport::reading(&url, acquire_timeout).await?,
        };
        Ok(Arc::new(import))
    } else {
        anyhow::bail!("DATABASE_URL must start with postgres://, postgresql:// or sqlite://")
    }
}

/// Rows of `rows` in chunks small enough for one SQLite statement.
pub(crate) fn sqlite_statements<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    rows.chunks(SQLITE_STATEMENT_ROWS)
}

/// Matches ids returned by a batch insert (in any order, with the email they were given) back
/// to the rows, so that callers get them in the order they passed.
pub(crate) fn in_row_order(
    rows: &[ImportedUser],
    returned: Vec<(i64, String)>,
) -> Result<Vec<UserId>, StoreError> {
    let by_email: HashMap<String, i64> = returned
        .into_iter()
        .map(|(id, email)| (email, id))
        .collect();
    rows.iter()
        .map(|row| {
            by_email.get(row.email.as_str()).copied().ok_or_else(|| {
                StoreError::Unexpected(anyhow::anyhow!("an inserted user was not returned"))
            })
        })
        .collect()
}

/// Whether a SQLite path names a database that exists; `:memory:` and empty names do not.
pub(crate) fn sqlite_file_exists(path: &Path) -> bool {
    !path.as_os_str().is_empty() && path != Path::new(":memory:") && path.exists()
}

/// Writes the PAT side of an import (token settings, Label Studio's key, PAT records) on
/// either backend's transaction: one row a statement, as there are few (one PAT a user, about).
macro_rules! insert_token_rows {
    (settings, $tx:expr, $rows:expr) => {
        for (organization, settings) in $rows {
            sqlx::query(
                "INSERT INTO token_settings (organization_id, api_tokens_enabled, \
                 legacy_api_tokens_enabled, api_token_ttl_days) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (organization_id) DO NOTHING",
            )
            .bind(*organization)
            .bind(settings.api_tokens_enabled)
            .bind(settings.legacy_api_tokens_enabled)
            .bind(settings.api_token_ttl_days)
            .execute(&mut *$tx)
            .await?;
        }
    };
    (key, $tx:expr, $key:expr) => {
        sqlx::query(
            "INSERT INTO signing_keys (kid, purpose, algorithm, private_key, public_key, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind($key.kid)
        .bind($key.purpose.as_str())
        .bind($key.algorithm)
        .bind($key.private_key)
        .bind($key.public_key)
        .bind($crate::store::db::Ts($key.now))
        .execute(&mut *$tx)
        .await?;
    };
    (tokens, $tx:expr, $rows:expr) => {
        for token in $rows {
            sqlx::query(
                "INSERT INTO personal_access_tokens \
                 (jti, user_id, token, key_id, created_at, expires_at, revoked_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (jti) DO NOTHING",
            )
            .bind(token.jti.as_str())
            .bind(token.user_id)
            .bind(token.token.as_str())
            .bind(token.key_id.as_str())
            .bind($crate::store::db::Ts(token.created_at))
            .bind($crate::store::db::Ts(token.expires_at))
            .bind(token.revoked_at.map($crate::store::db::Ts))
            .execute(&mut *$tx)
            .await?;
        }
    };
}
pub(crate) use insert_token_rows;
