//! API tokens and sessions, stored only as SHA-256 hashes.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{
    AccountRow, Principal, SqlStore, StoreError, TokenKind, TokenLookup, TokenStore,
    db::{Ts, with_db},
    select_account,
};
use crate::domain::{ThrottleKey, TokenHash, UserId};

/// The one lookup of a token check: the block on the client's address (`$3`) whether or not
/// the token (`$1`) is live at `$2`, with the token's owner when it is. A session unused since
/// `$4` has ended.
const PRINCIPAL: &str = concat!(
    "SELECT (SELECT th.blocked_until FROM throttle th WHERE th.key = $3) AS throttled_until, \
     acc.* FROM (SELECT 1) AS one LEFT JOIN (",
    select_account!(
        ", t.kind, t.last_used_at, ts.legacy_api_tokens_enabled",
        "FROM tokens t JOIN users u ON u.id = t.user_id",
        "LEFT JOIN token_settings ts ON ts.organization_id = o.id \
         WHERE t.token_hash = $1 AND (t.expires_at IS NULL OR t.expires_at > $2) AND u.is_active \
         AND (t.kind <> 'session' OR t.last_used_at > $4)"
    ),
    ") AS acc ON TRUE"
);

fn lookup<R>(row: &R) -> Result<TokenLookup, StoreError>
where
    R: Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Ts: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let blocked_until = row
        .try_get::<Option<Ts>, _>("throttled_until")?
        .map(|t| t.0);
    let principal = match row.try_get::<Option<String>, _>("kind")? {
        Some(kind) => Some(Principal {
            account: AccountRow::read(row)?.into(),
            kind: TokenKind::parse(&kind)?,
            last_used_at: row.try_get::<Option<Ts>, _>("last_used_at")?.map(|t| t.0),
            legacy_tokens_enabled: row
                .try_get::<Option<bool>, _>("legacy_api_tokens_enabled")?
                .unwrap_or(true),
        }),
        None => None,
    };
    Ok(TokenLookup {
        principal,
        blocked_until,
    })
}

#[async_trait]
impl TokenStore for SqlStore {
    async fn principal(
        &self,
        token: &TokenHash,
        throttle: Option<&ThrottleKey>,
        now: DateTime<Utc>,
        idle_since: DateTime<Utc>,
    ) -> Result<TokenLookup, StoreError> {
        with_db!(&self.conn.db, pool => {
            let row = self.conn.run("principal", sqlx::query(PRINCIPAL)
                .bind(token.as_str())
                .bind(Ts(now))
                .bind(throttle.map(ThrottleKey::as_str))
                .bind(Ts(idle_since))
                .fetch_one(pool)).await?;
            lookup(&row)
        })
    }

    async fn touch_session(&self, token: &TokenHash, now: DateTime<Utc>) -> Result<(), StoreError> {
        with_db!(&self.conn.db, pool => {
            self.conn.run("touch_session", sqlx::query(
                "UPDATE tokens SET last_used_at = $2 \
                 WHERE token_hash = $1 AND kind = 'session' AND last_used_at < $2")
                .bind(token.as_str())
                .bind(Ts(now))
                .execute(pool)).await?;
            Ok(())
        })
    }

    async fn end_session(&self, token: &TokenHash) -> Result<bool, StoreError> {
        with_db!(&self.conn.db, pool => {
            let done = self.conn.run("end_session", sqlx::query(
                "DELETE FROM tokens WHERE token_hash = $1 AND kind = 'session'")
                .bind(token.as_str())
                .execute(pool)).await?;
            Ok(done.rows_affected() > 0)
        })
    }

    async fn replace_api_token(
        &self,
        user: UserId,
        token: &TokenHash,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        with_db!(&self.conn.db, pool => {
            self.conn.run("replace_api_token", sqlx::query(
                "INSERT INTO tokens (token_hash, user_id, kind, created_at) VALUES ($1, $2, 'api', $3) \
                 ON CONFLICT (user_id) WHERE kind = 'api' \
                 DO UPDATE SET token_hash = excluded.token_hash, created_at = excluded.created_at")
                .bind(token.as_str())
                .bind(user)
                .bind(Ts(now))
                .execute(pool)).await?;
            Ok(())
        })
    }
}
