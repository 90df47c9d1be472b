//! Accounts, the organization they join and its invite token.

use async_trait::async_trait;
use sqlx::Row;

use super::{
    AccountStore, AuditEvent, Joining, NewAccount, SqlStore, StoreError,
    db::{BeginWrite, Db, Ts, with_db},
};
use crate::domain::{
    Account, DEFAULT_ORGANIZATION_TITLE, Email, InviteToken, Organization, OrganizationId, UserId,
};

/// Serialises the creation of the first organization across Postgres replicas.
const FIRST_ORGANIZATION_LOCK: i64 = 0x6c73_6964_6f72_6731;

/// The organization an account joins, as a query: `$15` is the organization id or the invite
/// token where the way of joining names one.
macro_rules! joined_organization {
    (first) => {
        "SELECT id, title, created_by_user_id FROM organizations ORDER BY id LIMIT 1"
    };
    (by_id) => {
        "SELECT id, title, created_by_user_id FROM organizations WHERE id = $15"
    };
    // FOR SHARE waits for a concurrent reset of the token and then re-reads the row, so a
    // registration never commits with a token a reset has already replaced.
    (by_invite) => {
        "SELECT id, title, created_by_user_id FROM organizations WHERE invite_token = $15 FOR SHARE"
    };
}

/// The whole account in one Postgres statement: the organization, the user, the membership,
/// the API token, the session and the audit event. No row comes back when the organization
/// isn't there.
macro_rules! create_account_in_one_statement {
    ($organization:tt) => {
        concat!(
            "WITH org AS (",
            joined_organization!($organization),
            "), u AS (INSERT INTO users (email, username, first_name, last_name, password_hash, \
             date_joined, active_organization_id) \
             SELECT $1, $2, $3, $4, $5, $6, org.id FROM org RETURNING id), \
             m AS (INSERT INTO memberships (organization_id, user_id, joined_at) \
             SELECT org.id, u.id, $6 FROM org, u), \
             api AS (INSERT INTO tokens (token_hash, user_id, kind, created_at) \
             SELECT $7, u.id, 'api', $6 FROM u), \
             s AS (INSERT INTO tokens (token_hash, user_id, kind, created_at, expires_at, \
             last_used_at) SELECT $8, u.id, 'session', $6, $9, $6 FROM u WHERE $8::text IS NOT NULL), \
             a AS (INSERT INTO audit_events (at, event, outcome, user_id, email, client_addr, \
             reason, count) SELECT $6, $10, $11, u.id, $12, $13, $14, 1 FROM u) \
             SELECT u.id AS user_id, org.id, org.title, org.created_by_user_id FROM u, org"
        )
    };
}

fn organization<R>(row: &R) -> Result<Organization, sqlx::Error>
where
    R: Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Organization {
        id: row.try_get("id")?,
        title: row.try_get("title")?,
        created_by_user_id: row.try_get("created_by_user_id")?,
    })
}

impl SqlStore {
    /// Postgres: the account in one statement when the organization exists already.
    async fn create_account_at_once(
        &self,
        pool: &sqlx::PgPool,
        new: &NewAccount,
        audit: &AuditEvent<'_>,
    ) -> Result<Option<Account>, StoreError> {
        let sql = match &new.joining {
            Joining::FirstOrganization { .. } => create_account_in_one_statement!(first),
            Joining::Organization(_) => create_account_in_one_statement!(by_id),
            Joining::Invite(_) => create_account_in_one_statement!(by_invite),
        };
        let query = sqlx::query(sql)
            .bind(new.email.as_str())
            .bind(new.username.as_str())
            .bind(new.first_name.as_str())
            .bind(new.last_name.as_str())
            .bind(new.password_hash.as_deref())
            .bind(Ts(new.now))
            .bind(new.api_token.as_str())
            .bind(new.session.as_ref().map(|s| s.token.as_str()))
            .bind(new.session.as_ref().map(|s| Ts(s.expires_at)))
            .bind(audit.event)
            .bind(audit.outcome)
            .bind(audit.email)
            .bind(audit.client)
            .bind(audit.reason);
        let query = match &new.joining {
            Joining::FirstOrganization { .. } => query,
            Joining::Organization(id) => query.bind(id),
            Joining::Invite(token) => query.bind(token.as_str()),
        };
        let row = self
            .conn
            .run("create_account", query.fetch_optional(pool))
            .await?;
        let Some(row) = row else { return Ok(None) };
        let user_id: i64 = row.try_get("user_id")?;
        Ok(Some(super::new_account(user_id, new, organization(&row)?)))
    }

    /// The account in one transaction, creating the first organization if there is none.
    async fn create_account_in_transaction(
        &self,
        new: &NewAccount,
        audit: &AuditEvent<'_>,
    ) -> Result<Account, StoreError> {
        let postgres = matches!(self.conn.db, Db::Postgres(_));
        with_db!(&self.conn.db, pool => {
            let conn = &self.conn;
            let op = "create_account";
            let mut tx = conn.run(op, pool.begin_write()).await?;
            if postgres && matches!(new.joining, Joining::FirstOrganization { .. }) {
                conn.run(op, sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(FIRST_ORGANIZATION_LOCK)
                    .execute(&mut *tx))
                    .await?;
            }
            // On SQLite, BEGIN IMMEDIATE already holds the write lock: no reset or other
            // signup can commit between these reads and the commit.
            let existing = match &new.joining {
                Joining::FirstOrganization { .. } => conn.run(op, sqlx::query(
                    joined_organization!(first)).fetch_optional(&mut *tx)).await?,
                Joining::Organization(id) => Some(conn.run(op, sqlx::query(
                    "SELECT id, title, created_by_user_id FROM organizations WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)).await?
                    .ok_or(StoreError::OrganizationNotFound)?),
                Joining::Invite(token) => {
                    let sql = if postgres {
                        "SELECT id, title, created_by_user_id FROM organizations \
                         WHERE invite_token = $1 FOR SHARE"
                    } else {
                        "SELECT id, title, created_by_user_id FROM organizations \
                         WHERE invite_token = $1"
                    };
                    Some(conn.run(op, sqlx::query(sql)
                        .bind(token.as_str())
                        .fetch_optional(&mut *tx)).await?
                        .ok_or(StoreError::InviteNotFound)?)
                }
            };
            let existing = existing.as_ref().map(organization).transpose()?;
            let user_id: i64 = conn.run(op, sqlx::query_scalar(
                "INSERT INTO users (email, username, first_name, last_name, password_hash, \
                 date_joined) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id")
                .bind(new.email.as_str())
                .bind(new.username.as_str())
                .bind(new.first_name.as_str())
                .bind(new.last_name.as_str())
                .bind(new.password_hash.as_deref())
                .bind(Ts(new.now))
                .fetch_one(&mut *tx)).await?;
            let organization = match (existing, &new.joining) {
                (Some(organization), _) => organization,
                (None, Joining::FirstOrganization { invite_token }) => {
                    let id: i64 = conn.run(op, sqlx::query_scalar(
                        "INSERT INTO organizations (title, created_by_user_id, invite_token, \
                         created_at) VALUES ($1, $2, $3, $4) RETURNING id")
                        .bind(DEFAULT_ORGANIZATION_TITLE)
                        .bind(user_id)
                        .bind(invite_token.as_str())
                        .bind(Ts(new.now))
                        .fetch_one(&mut *tx)).await?;
                    Organization {
                        id,
                        title: DEFAULT_ORGANIZATION_TITLE.to_owned(),
                        created_by_user_id: Some(user_id),
                    }
                }
                (None, _) => return Err(StoreError::OrganizationNotFound),
            };
            conn.run(op, sqlx::query("UPDATE users SET active_organization_id = $1 WHERE id = $2")
                .bind(organization.id)
                .bind(user_id)
                .execute(&mut *tx)).await?;
            conn.run(op, sqlx::query(
                "INSERT INTO memberships (organization_id, user_id, joined_at) VALUES ($1, $2, $3)")
                .bind(organization.id)
                .bind(user_id)
                .bind(Ts(new.now))
                .execute(&mut *tx)).await?;
            conn.run(op, sqlx::query(
                "INSERT INTO tokens (token_hash, user_id, kind, created_at) VALUES ($1, $2, 'api', $3)")
                .bind(new.api_token.as_str())
                .bind(user_id)
                .bind(Ts(new.now))
                .execute(&mut *tx)).await?;
            if let Some(session) = &new.session {
                conn.run(op, sqlx::query(
                    "INSERT INTO tokens (token_hash, user_id, kind, created_at, expires_at, \
                     last_used_at) VALUES ($1, $2, 'session', $3, $4, $3)")
                    .bind(session.token.as_str())
                    .bind(user_id)
                    .bind(Ts(new.now))
                    .bind(Ts(session.expires_at))
                    .execute(&mut *tx)).await?;
            }
            let audit = AuditEvent { user_id: Some(user_id), ..*audit };
            conn.run(op, super::audit::insert!(audit).execute(&mut *tx)).await?;
            conn.run(op, tx.commit()).await?;
            Ok(super::new_account(user_id, new, organization))
        })
    }
}

#[async_trait]
impl AccountStore for SqlStore {
    async fn email_exists(&self, email: &Email) -> Result<bool, StoreError> {
        with_db!(&self.conn.db, pool => {
            let row = self.conn.run("email_exists", sqlx::query("SELECT 1 FROM users WHERE email = $1")
                .bind(email.as_str())
                .fetch_optional(pool)).await?;
            Ok(row.is_some())
        })
    }

    async fn organization_by_invite(
        &self,
        token: &InviteToken,
    ) -> Result<Option<Organization>, StoreError> {
        with_db!(&self.conn.db, pool => {
            let row = self.conn.run("organization_by_invite",
                sqlx::query(
                "SELECT id, title, created_by_user_id FROM organizations WHERE invite_token = $1")
                .bind(token.as_str())
                .fetch_optional(pool)).await?;
            Ok(row.as_ref().map(organization).transpose()?)
        })
    }

    async fn create_account(
        &self,
        new: NewAccount,
        audit: &AuditEvent<'_>,
    ) -> Result<Account, StoreError> {
        if let Db::Postgres(pool) = &self.conn.db
            && let Some(account) = self.create_account_at_once(pool, &new, audit).await?
        {
            return Ok(account);
        }
        self.create_account_in_transaction(&new, audit).await
    }

    async fn reset_password(
        &self,
        email: &Email,
        hash: &str,
    ) -> Result<Option<UserId>, StoreError> {
        with_db!(&self.conn.db, pool => {
            let conn = &self.conn;
            let op = "reset_password";
            let mut tx = conn.run(op, pool.begin_write()).await?;
            // The new generation makes every login verified against the old password fail
            // to start its session, even one already past its check.
            let user: Option<i64> = conn.run(op, sqlx::query_scalar(
                "UPDATE users SET password_hash = $1, credential_version = credential_version + 1 \
                 WHERE email = $2 RETURNING id")
                .bind(hash)
                .bind(email.as_str())
                .fetch_optional(&mut *tx)).await?;
            let Some(user) = user else { return Ok(None) };
            conn.run(op, sqlx::query("DELETE FROM tokens WHERE user_id = $1 AND kind = 'session'")
                .bind(user)
                .execute(&mut *tx)).await?;
            conn.run(op, tx.commit()).await?;
            Ok(Some(user))
        })
    }

    async fn invite_token(&self, organization: OrganizationId) -> Result<InviteToken, StoreError> {
        with_db!(&self.conn.db, pool => {
            let token: Option<String> = self.conn.run("invite_token", sqlx::query_scalar(
                "SELECT invite_token FROM organizations WHERE id = $1")
                .bind(organization)
                .fetch_optional(pool)).await?;
            super::stored_invite(token)
        })
    }

    async fn replace_invite_token(
        &self,
        organization: OrganizationId,
        token: &InviteToken,
    ) -> Result<(), StoreError> {
        with_db!(&self.conn.db, pool => {
            let done = self.conn.run("replace_invite_token", sqlx::query(
                "UPDATE organizations SET invite_token = $1 WHERE id = $2")
                .bind(token.as_str())
                .bind(organization)
                .execute(pool)).await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::OrganizationNotFound);
            }
            Ok(())
        })
    }
}
