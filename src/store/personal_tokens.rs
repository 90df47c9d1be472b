//! Personal access tokens (their `header.payload` and state, never the signature), the keys that
//! sign them and the access tokens, and each organization's token settings.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use sqlx::Row;

use super::{
    AccountRow, SqlStore, StoreError,
    db::{BeginWrite, Db, Ts, with_db},
    select_account,
};
use crate::domain::{Account, OrganizationId, ThrottleKey, UserId};

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPurpose {
    /// Signs access tokens (Ed25519); published in the key set.
    Access,
    /// Signs the PATs made here (HMAC-SHA256).
    Personal,
    /// An imported Label Studio `SECRET_KEY`: only verifies the PATs Label Studio signed.
    LabelStudio,
}

impl KeyPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Access => "access",
            Self::Personal => "personal",
            Self::LabelStudio => "label_studio",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "access" => Ok(Self::Access),
            "personal" => Ok(Self::Personal),
            "label_studio" => Ok(Self::LabelStudio),
            other => Err(StoreError::Unexpected(anyhow::anyhow!(
                "unknown key purpose {other:?}"
            ))),
        }
    }
}

/// A key as stored; the secret half stays wrapped until the key is built from it.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub kid: String,
    pub purpose: KeyPurpose,
    pub algorithm: String,
    pub private_key: SecretString,
    pub public_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
}

/// A key to store.
#[derive(Clone, Copy)]
pub struct NewKey<'a> {
    pub kid: &'a str,
    pub purpose: KeyPurpose,
    pub algorithm: &'a str,
    pub private_key: &'a str,
    pub public_key: Option<&'a str>,
    pub now: DateTime<Utc>,
}

/// Everything but the secret half.
impl std::fmt::Debug for NewKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("kid", &self.kid)
            .field("purpose", &self.purpose)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// An organization's token settings (Label Studio's `jwt_auth_jwtsettings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSettings {
    pub api_tokens_enabled: bool,
    pub legacy_api_tokens_enabled: bool,
    pub api_token_ttl_days: i32,
}

impl Default for TokenSettings {
    /// A new organization's: both kinds of token on (a deliberate difference from Label
    /// Studio, which turns legacy tokens off), PATs living 200 years.
    fn default() -> Self {
        Self {
            api_tokens_enabled: true,
            legacy_api_tokens_enabled: true,
            api_token_ttl_days: 73_000,
        }
    }
}

/// A PAT's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonalToken {
    pub jti: String,
    pub user_id: UserId,
    /// `header.payload`.
    pub token: String,
    pub key_id: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A PAT with what a refresh needs of its owner.
#[derive(Debug, Clone)]
pub struct PersonalTokenOwner {
    pub token: PersonalToken,
    pub account: Account,
    pub is_active: bool,
    pub api_tokens_enabled: bool,
}

/// What a refresh reads in its one lookup: the PAT with its owner, and the block on the
/// client's address.
#[derive(Debug, Clone)]
pub struct PersonalTokenLookup {
    pub found: Option<PersonalTokenOwner>,
    pub blocked_until: Option<DateTime<Utc>>,
}

/// Keys, PATs and token settings.
#[async_trait]
pub trait PersonalTokenStore {
    /// Every key still verifying at `now`.
    async fn signing_keys(&self, now: DateTime<Utc>) -> Result<Vec<StoredKey>, StoreError>;
    /// Stores a key unless one of its purpose is already current (or it exists); false then.
    async fn add_signing_key(&self, key: &NewKey<'_>) -> Result<bool, StoreError>;
    /// Retires the current key of the new key's purpose (it verifies until `old_not_after`) and
    /// makes the new one current, in one transaction.
    async fn rotate_signing_key(
        &self,
        key: &NewKey<'_>,
        old_not_after: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    async fn token_settings(
        &self,
        organization: OrganizationId,
    ) -> Result<TokenSettings, StoreError>;
    async fn put_token_settings(
        &self,
        organization: OrganizationId,
        settings: &TokenSettings,
    ) -> Result<(), StoreError>;
    /// Records a new PAT unless its owner has a live one at its `created_at`; false then.
    async fn create_personal_token(&self, token: &PersonalToken) -> Result<bool, StoreError>;
    /// The user's live PATs, oldest first.
    async fn live_personal_tokens(
        &self,
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<PersonalToken>, StoreError>;
    /// A PAT by `jti` with its owner, and the block on `throttle`.
    async fn personal_token(
        &self,
        jti: &str,
        throttle: Option<&ThrottleKey>,
    ) -> Result<PersonalTokenLookup, StoreError>;
    /// Revokes a PAT that is not revoked yet; false when there was none.
    async fn revoke_personal_token(
        &self,
        jti: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Revokes `old` (still unrevoked) and records `new`, in one transaction; false (and nothing
    /// written) when `old` was already revoked.
    async fn rotate_personal_token(
        &self,
        old: &str,
        new: &PersonalToken,
    ) -> Result<bool, StoreError>;
}

const KEY_COLUMNS: &str = "SELECT kid, purpose, algorithm, private_key, public_key, created_at, retired_at \
     FROM signing_keys WHERE not_after IS NULL OR not_after > $1 ORDER BY created_at, kid";

const INSERT_KEY: &str = "INSERT INTO signing_keys \
     (kid, purpose, algorithm, private_key, public_key, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";

const INSERT_TOKEN: &str = "INSERT INTO personal_access_tokens \
     (jti, user_id, token, key_id, created_at, expires_at, revoked_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

const LIVE_EXISTS: &str = "SELECT 1 FROM personal_access_tokens \
     WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 LIMIT 1";

/// The one lookup of a refresh: the block on the client's address (`$2`), and the PAT (`$1`)
/// with its owner and the owner's organization's switch.
const LOOKUP: &str = concat!(
    "SELECT (SELECT th.blocked_until FROM throttle th WHERE th.key = $2) AS throttled_until, \
     acc.* FROM (SELECT 1) AS one LEFT JOIN (",
    select_account!(
        ", p.jti, p.user_id AS pat_user_id, p.token, p.key_id, p.created_at AS pat_created_at, \
         p.expires_at AS pat_expires_at, p.revoked_at, u.is_active, s.api_tokens_enabled",
        "FROM personal_access_tokens p JOIN users u ON u.id = p.user_id",
        "LEFT JOIN token_settings s ON s.organization_id = o.id WHERE p.jti = $1"
    ),
    ") AS acc ON TRUE"
);

/// Writes a PAT's record within a transaction of either backend.
macro_rules! insert_token {
    ($conn:expr, $op:expr, $token:expr, $executor:expr) => {
        $conn
            .run(
                $op,
                sqlx::query(INSERT_TOKEN)
                    .bind($token.jti.as_str())
                    .bind($token.user_id)
                    .bind($token.token.as_str())
                    .bind($token.key_id.as_str())
                    .bind(Ts($token.created_at))
                    .bind(Ts($token.expires_at))
                    .bind($token.revoked_at.map(Ts))
                    .execute($executor),
            )
            .await?
    };
}

fn token_row<R>(row: &R, prefix: bool) -> Result<PersonalToken, sqlx::Error>
where
    R: Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Ts: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let (user, created, expires) = if prefix {
        ("pat_user_id", "pat_created_at", "pat_expires_at")
    } else {
        ("user_id", "created_at", "expires_at")
    };
    Ok(PersonalToken {
        jti: row.try_get("jti")?,
        user_id: row.try_get(user)?,
        token: row.try_get("token")?,
        key_id: row.try_get("key_id")?,
        created_at: row.try_get::<Ts, _>(created)?.0,
        expires_at: row.try_get::<Ts, _>(expires)?.0,
        revoked_at: row.try_get::<Option<Ts>, _>("revoked_at")?.map(|t| t.0),
    })
}

#[async_trait]
impl PersonalTokenStore for SqlStore {
    async fn signing_keys(&self, now: DateTime<Utc>) -> Result<Vec<StoredKey>, StoreError> {
        with_db!(&self.conn.db, pool => {
            let rows = self.conn.run("signing_keys", sqlx::query(KEY_COLUMNS)
                .bind(Ts(now))
                .fetch_all(pool)).await?;
            rows.iter().map(|row| {
                Ok(StoredKey {
                    kid: row.try_get("kid")?,
                    purpose: KeyPurpose::parse(&row.try_get::<String, _>("purpose")?)?,
                    algorithm: row.try_get("algorithm")?,
                    private_key: SecretString::from(row.try_get::<String, _>("private_key")?),
                    public_key: row.try_get("public_key")?,
                    created_at: row.try_get::<Ts, _>("created_at")?.0,
                    retired_at: row.try_get::<Option<Ts>, _>("retired_at")?.map(|t| t.0),
                })
            }).collect()
        })
    }

    async fn add_signing_key(&self, key: &NewKey<'_>) -> Result<bool, StoreError> {
        with_db!(&self.conn.db, pool => {
            let done = self.conn.run("add_signing_key", sqlx::query(INSERT_KEY)
                .bind(key.kid)
                .bind(key.purpose.as_str())
                .bind(key.algorithm)
                .bind(key.private_key)
                .bind(key.public_key)
                .bind(Ts(key.now))
                .execute(pool)).await?;
            Ok(done.rows_affected() > 0)
        })
    }

    async fn rotate_signing_key(
        &self,
        key: &NewKey<'_>,
        old_not_after: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let op = "rotate_signing_key";
        with_db!(&self.conn.db, pool => {
            let mut tx = self.conn.run(op, pool.begin_write()).await?;
            self.conn.run(op, sqlx::query(
                "UPDATE signing_keys SET retired_at = $2, not_after = $3 \
                 WHERE purpose = $1 AND retired_at IS NULL")
                .bind(key.purpose.as_str())
                .bind(Ts(key.now))
                .bind(Ts(old_not_after))
                .execute(&mut *tx)).await?;
            self.conn.run(op, sqlx::query(INSERT_KEY)
                .bind(key.kid)
                .bind(key.purpose.as_str())
                .bind(key.algorithm)
                .bind(key.private_key)
                .bind(key.public_key)
                .bind(Ts(key.now))
                .execute(&mut *tx)).await?;
            self.conn.run(op, tx.commit()).await?;
            Ok(())
        })
    }

    async fn token_settings(
        &self,
        organization: OrganizationId,
    ) -> Result<TokenSettings, StoreError> {
        with_db!(&self.conn.db, pool => {
            let row = self.conn.run("token_settings", sqlx::query(
                "SELECT api_tokens_enabled, legacy_api_tokens_enabled, api_token_ttl_days \
                 FROM token_settings WHERE organization_id = $1")
                .bind(organization)
                .fetch_optional(pool)).await?;
            match row {
                Some(row) => Ok(TokenSettings {
                    api_tokens_enabled: row.try_get("api_tokens_enabled")?,
                    legacy_api_tokens_enabled: row.try_get("legacy_api_tokens_enabled")?,
                    api_token_ttl_days: row.try_get("api_token_ttl_days")?,
                }),
                None => Ok(TokenSettings::default()),
            }
        })
    }

    async fn put_token_settings(
        &self,
        organization: OrganizationId,
        settings: &TokenSettings,
    ) -> Result<(), StoreError> {
        with_db!(&self.conn.db, pool => {
            self.conn.run("put_token_settings", sqlx::query(
                "INSERT INTO token_settings (organization_id, api_tokens_enabled, \
                 legacy_api_tokens_enabled, api_token_ttl_days) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (organization_id) DO UPDATE SET \
                 api_tokens_enabled = excluded.api_tokens_enabled, \
                 legacy_api_tokens_enabled = excluded.legacy_api_tokens_enabled, \
                 api_token_ttl_days = excluded.api_token_ttl_days")
                .bind(organization)
                .bind(settings.api_tokens_enabled)
                .bind(settings.legacy_api_tokens_enabled)
                .bind(settings.api_token_ttl_days)
                .execute(pool)).await?;
            Ok(())
        })
    }

    async fn create_personal_token(&self, token: &PersonalToken) -> Result<bool, StoreError> {
        let op = "create_personal_token";
        with_db!(&self.conn.db, pool => {
            let mut tx = self.conn.run(op, pool.begin_write()).await?;
            // Two creations for one user take turns (SQLite's write lock does the same).
            if matches!(&self.conn.db, Db::Postgres(_)) {
                self.conn.run(op, sqlx::query("SELECT id FROM users WHERE id = $1 FOR UPDATE")
                    .bind(token.user_id)
                    .execute(&mut *tx)).await?;
            }
            let live = self.conn.run(op, sqlx::query(LIVE_EXISTS)
                .bind(token.user_id)
                .bind(Ts(token.created_at))
                .fetch_optional(&mut *tx)).await?;
            if live.is_some() {
                return Ok(false);
            }
            insert_token!(self.conn, op, token, &mut *tx);
            self.conn.run(op, tx.commit()).await?;
            Ok(true)
        })
    }

    async fn live_personal_tokens(
        &self,
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<PersonalToken>, StoreError> {
        with_db!(&self.conn.db, pool => {
            let rows = self.conn.run("live_personal_tokens", sqlx::query(
                "SELECT jti, user_id, token, key_id, created_at, expires_at, revoked_at \
                 FROM personal_access_tokens \
                 WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 \
                 ORDER BY created_at, jti")
                .bind(user)
                .bind(Ts(now))
                .fetch_all(pool)).await?;
            Ok(rows.iter().map(|row| token_row(row, false)).collect::<Result<_, _>>()?)
        })
    }

    async fn personal_token(
        &self,
        jti: &str,
        throttle: Option<&ThrottleKey>,
    ) -> Result<PersonalTokenLookup, StoreError> {
        with_db!(&self.conn.db, pool => {
            let row = self.conn.run("personal_token", sqlx::query(LOOKUP)
                .bind(jti)
                .bind(throttle.map(ThrottleKey::as_str))
                .fetch_one(pool)).await?;
            let blocked_until = row.try_get::<Option<Ts>, _>("throttled_until")?.map(|t| t.0);
            let found = match row.try_get::<Option<String>, _>("jti")? {
                Some(_) => Some(PersonalTokenOwner {
                    token: token_row(&row, true)?,
                    account: AccountRow::read(&row)?.into(),
                    is_active: row.try_get("is_active")?,
                    api_tokens_enabled: row
                        .try_get::<Option<bool>, _>("api_tokens_enabled")?
                        .unwrap_or(true),
                }),
                None => None,
            };
            Ok(PersonalTokenLookup { found, blocked_until })
        })
    }

    async fn revoke_personal_token(
        &self,
        jti: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        with_db!(&self.conn.db, pool => {
            let done = self.conn.run("revoke_personal_token", sqlx::query(
                "UPDATE personal_access_tokens SET revoked_at = $2 \
                 WHERE jti = $1 AND revoked_at IS NULL")
                .bind(jti)
                .bind(Ts(now))
                .execute(pool)).await?;
            Ok(done.rows_affected() > 0)
        })
    }

    async fn rotate_personal_token(
        &self,
        old: &str,
        new: &PersonalToken,
    ) -> Result<bool, StoreError> {
        let op = "rotate_personal_token";
        with_db!(&self.conn.db, pool => {
            let mut tx = self.conn.run(op, pool.begin_write()).await?;
            let revoked = self.conn.run(op, sqlx::query(
                "UPDATE personal_access_tokens SET revoked_at = $2 \
                 WHERE jti = $1 AND user_id = $3 AND revoked_at IS NULL")
                .bind(old)
                .bind(Ts(new.created_at))
                .bind(new.user_id)
                .execute(&mut *tx)).await?;
            if revoked.rows_affected() == 0 {
                return Ok(false);
            }
            insert_token!(self.conn, op, new, &mut *tx);
            self.conn.run(op, tx.commit()).await?;
            Ok(true)
        })
    }
}
