//! Members of an organization and what the account page changes: the People page's listing
//! (keyset pagination in join order, counts kept by triggers), profile and password changes,
//! removal, restoration and deletion, the organization's title, and secrets every replica
//! shares. Every change writes its audit event in the same transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{
    AccountRow, AuditEvent, NewSession, SqlStore, StoreError,
    audit::insert as insert_audit,
    db::{BeginWrite, Db, Ts, with_db},
    select_account,
};
use crate::domain::{
    Account, Member, MemberRole, Organization, OrganizationId, PageCursor, ThrottleKey, User,
    UserId,
};

/// One page of a member listing: members of `organization` after `after` in join order, those
/// matching `pattern` (a `LIKE` pattern over the lowercased fields) when given.
#[derive(Debug, Clone, Copy)]
pub struct MemberListing<'a> {
    pub organization: OrganizationId,
    pub pattern: Option<&'a str>,
    pub include_removed: bool,
    pub after: Option<PageCursor>,
    pub limit: u32,
}

/// A page of members and how many members match in all.
#[derive(Debug, Clone)]
pub struct MemberPage {
    pub members: Vec<Member>,
    pub total: i64,
}

/// Names to set on an account; `None` leaves a field as it is.
#[derive(Debug, Clone, Copy)]
pub struct ProfileChange<'a> {
    pub user: UserId,
    pub first_name: Option<&'a str>,
    pub last_name: Option<&'a str>,
    pub username: Option<&'a str>,
}

/// A verified password change: lands only on the very hash and credential generation that
/// were verified, ends every session, starts `session` and clears the email's throttle.
#[derive(Debug, Clone, Copy)]
pub struct PasswordChange<'a> {
    pub user: UserId,
    pub credential_version: i64,
    pub verified_hash: &'a str,
    pub new_hash: &'a str,
    pub session: &'a NewSession,
    pub email_key: &'a ThrottleKey,
    pub now: DateTime<Utc>,
}

/// What became of a deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    Deleted,
    /// The user is no member (current or removed) of the organization.
    NotFound,
    /// The user created an organization, which keeps its creator.
    Owner,
}

/// Members and the changes of the account and People pages.
#[async_trait]
pub trait MemberStore {
    async fn list_members(&self, listing: &MemberListing<'_>) -> Result<MemberPage, StoreError>;
    /// A member of the organization, current or removed.
    async fn member(
        &self,
        organization: OrganizationId,
        user: UserId,
    ) -> Result<Option<Member>, StoreError>;
    /// Changes the names and writes `audit`; the account as it now is.
    async fn update_profile(
        &self,
        change: &ProfileChange<'_>,
        audit: &AuditEvent<'_>,
    ) -> Result<Account, StoreError>;
    /// False when the credential changed since it was verified.
    async fn change_password(
        &self,
        change: &PasswordChange<'_>,
        audit: &AuditEvent<'_>,
    ) -> Result<bool, StoreError>;
    /// Marks a current member removed and ends their sessions; false when no current member.
    async fn remove_member(
        &self,
        organization: OrganizationId,
        user: UserId,
        audit: &AuditEvent<'_>,
    ) -> Result<bool, StoreError>;
    /// Brings a removed member back; false when no removed member.
    async fn restore_member(
        &self,
        organization: OrganizationId,
        user: UserId,
        audit: &AuditEvent<'_>,
    ) -> Result<bool, StoreError>;
    /// Deletes a member's account with its tokens, sessions and memberships.
    async fn delete_user(
        &self,
        organization: OrganizationId,
        user: UserId,
        audit: &AuditEvent<'_>,
    ) -> Result<Deletion, StoreError>;
    async fn update_organization(
        &self,
        organization: OrganizationId,
        title: &str,
        audit: &AuditEvent<'_>,
    ) -> Result<Organization, StoreError>;
    /// The secret stored under `name`, storing `candidate` first when there is none: every
    /// replica ends up with the same one.
    async fn server_secret(
        &self,
        name: &str,
        candidate: &str,
        now: DateTime<Utc>,
    ) -> Result<String, StoreError>;
}

/// The text the search matches, per dialect: the same expression the Postgres trigram index
/// is built on (migrations/postgres/0005_members.sql).
macro_rules! search_text {
    (postgres) => {
        "lower(u.email || chr(1) || u.username || chr(1) || u.first_name || chr(1) || u.last_name)"
    };
    (sqlite) => {
        "lower(u.email || char(1) || u.username || char(1) || u.first_name || char(1) || u.last_name)"
    };
}

/// Member columns joined from a membership `m`.
macro_rules! select_member {
    ($rest:expr) => {
        concat!(
            "SELECT u.id, u.email, u.username, u.first_name, u.last_name, u.date_joined, \
             m.organization_id, m.joined_at, m.deleted_at, o.created_by_user_id \
             FROM memberships m JOIN users u ON u.id = m.user_id \
             JOIN organizations o ON o.id = m.organization_id ",
            $rest
        )
    };
}

/// A page: `$1` organization, `$2` include removed, `$3`/`$4` the cursor, `$5` the limit and,
/// with a query, `$6` the pattern. Without a query, every row also carries the organization's
/// count, so a page costs one statement.
macro_rules! page {
    () => {
        concat!(
            "SELECT p.*, (SELECT CASE WHEN $2 THEN members + removed ELSE members END \
             FROM membership_counts WHERE organization_id = $1) AS total FROM (",
            select_member!(
                "WHERE m.organization_id = $1 AND ($2 OR m.deleted_at IS NULL) \
                 AND (m.joined_at, m.user_id) > ($3, $4) \
                 ORDER BY m.joined_at, m.user_id LIMIT $5"
            ),
            ") AS p ORDER BY p.joined_at, p.id"
        )
    };
    ($dialect:tt) => {
        select_member!(concat!(
            "WHERE m.organization_id = $1 AND ($2 OR m.deleted_at IS NULL) \
             AND (m.joined_at, m.user_id) > ($3, $4) AND ",
            search_text!($dialect),
            " LIKE $6 ESCAPE '\\' ORDER BY m.joined_at, m.user_id LIMIT $5"
        ))
    };
}

macro_rules! matching {
    ($dialect:tt) => {
        concat!(
            "SELECT COUNT(*) FROM memberships m JOIN users u ON u.id = m.user_id \
             WHERE m.organization_id = $1 AND ($2 OR m.deleted_at IS NULL) AND ",
            search_text!($dialect),
            " LIKE $3 ESCAPE '\\'"
        )
    };
}

const COUNTED: &str = "SELECT COALESCE((SELECT CASE WHEN $2 THEN members + removed ELSE members END \
     FROM membership_counts WHERE organization_id = $1), 0)";

/// Before any membership: where a walk starts. Year 1 is within both stores' time range.
fn start() -> PageCursor {
    PageCursor {
        joined_at: DateTime::from_timestamp_micros(-62_135_596_800_000_000)
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
        user_id: i64::MIN,
    }
}

fn member<R>(row: &R) -> Result<Member, sqlx::Error>
where
    R: Row,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Ts: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let id: i64 = row.try_get("id")?;
    let removed_at = row.try_get::<Option<Ts>, _>("deleted_at")?.map(|t| t.0);
    let created_by: Option<i64> = row.try_get("created_by_user_id")?;
    let organization: i64 = row.try_get("organization_id")?;
    Ok(Member {
        user: User {
            id,
            email: row.try_get("email")?,
            username: row.try_get("username")?,
            first_name: row.try_get("first_name")?,
            last_name: row.try_get("last_name")?,
            date_joined: row.try_get::<Ts, _>("date_joined")?.0,
            organization_id: removed_at.is_none().then_some(organization),
        },
        role: MemberRole::of(id, created_by),
        joined_at: row.try_get::<Ts, _>("joined_at")?.0,
        removed_at,
    })
}

#[async_trait]
impl MemberStore for SqlStore {
    async fn list_members(&self, listing: &MemberListing<'_>) -> Result<MemberPage, StoreError> {
        let postgres = matches!(self.conn.db, Db::Postgres(_));
        let (page_sql, count_sql) = match (listing.pattern.is_some(), postgres) {
            (false, _) => (page!(), COUNTED),
            (true, true) => (page!(postgres), matching!(postgres)),
            (true, false) => (page!(sqlite), matching!(sqlite)),
        };
        let after = listing.after.unwrap_or_else(start);
        let op = "list_members";
        with_db!(&self.conn.db, pool => {
            // A search is planned for its pattern each time (an unnamed statement): a plan
            // made without it would walk every membership instead of using the trigram index.
            let searching = listing.pattern.is_some();
            let mut page = sqlx::query(page_sql)
                .persistent(!searching)
                .bind(listing.organization)
                .bind(listing.include_removed)
                .bind(Ts(after.joined_at))
                .bind(after.user_id)
                .bind(i64::from(listing.limit));
            if let Some(pattern) = listing.pattern {
                page = page.bind(pattern);
            }
            let rows = self.conn.run(op, page.fetch_all(pool)).await?;
            let members: Vec<Member> = rows.iter().map(member).collect::<Result<_, _>>()?;
            let counted = match (searching, rows.first()) {
                (false, Some(row)) => Some(row.try_get::<Option<i64>, _>("total")?.unwrap_or(0)),
                _ => None,
            };
            // A first page that is not full holds every match: nothing left to count.
            let total = if let Some(total) = counted {
                total
            } else if listing.after.is_none() && members.len() < listing.limit as usize {
                i64::try_from(members.len()).unwrap_or(i64::MAX)
            } else {
                let mut count = sqlx::query_scalar::<_, i64>(count_sql)
                    .persistent(!searching)
                    .bind(listing.organization)
                    .bind(listing.include_removed);
                if let Some(pattern) = listing.pattern {
                    count = count.bind(pattern);
                }
                self.conn.run(op, count.fetch_one(pool)).await?
            };
            Ok(MemberPage { members, total })
        })
    }

    async fn member(
        &self,
        organization: OrganizationId,
        user: UserId,
    ) -> Result<Option<Member>, StoreError> {
        with_db!(&self.conn.db, pool => {
            let row = self.conn.run("member", sqlx::query(select_member!(
                "WHERE m.organization_id = $1 AND m.user_id = $2"))
                .bind(organization)
                .bind(user)
                .fetch_optional(pool)).await?;
            Ok(row.as_ref().map(member).transpose()?)
        })
    }

    async fn update_profile(
        &self,
        change: &ProfileChange<'_>,
        audit: &AuditEvent<'_>,
    ) -> Result<Account, StoreError> {
        let op = "update_profile";
        with_db!(&self.conn.db, pool => {
            let conn = &self.conn;
            let mut tx = conn.run(op, pool.begin_write()).await?;
            conn.run(op, sqlx::query(
                "UPDATE users SET first_name = COALESCE($2, first_name), \
                 last_name = COALESCE($3, last_name), username = COALESCE($4, username) \
                 WHERE id = $1")
                .bind(change.user)
                .bind(change.first_name)
                .bind(change.last_name)
                .bind(change.username)
                .execute(&mut *tx)).await?;
            let row = conn.run(op, sqlx::query(select_account!("", "FROM users u", "WHERE u.id = $1"))
                .bind(change.user)
                .fetch_optional(&mut *tx)).await?;
            let Some(row) = row else {
                return Err(StoreError::Unexpected(anyhow::anyhow!("the account has gone")));
            };
            let account = AccountRow::read(&row)?.into();
            conn.run(op, insert_audit!(*audit).execute(&mut *tx)).await?;
            conn.run(op, tx.commit()).await?;
            Ok(account)
        })
    }

    async fn change_password(
        &self,
        change: &PasswordChange<'_>,
        audit: &AuditEvent<'_>,
    ) -> Result<bool, StoreError> {
        let op = "change_password";
        with_db!(&self.conn.db, pool => {
            let conn = &self.conn;
            let mut tx = conn.run(op, pool.begin_write()).await?;
            // Compare-and-swap on what was verified: a reset or another change in between
            // wins, and this one starts nothing.
            let changed = conn.run(op, sqlx::query(
                "UPDATE users SET password_hash = $1, credential_version = credential_version + 1 \
                 WHERE id = $2 AND credential_version = $3 AND password_hash = $4 AND is_active")
                .bind(change.new_hash)
                .bind(change.user)
                .bind(change.credential_version)
                .bind(change.verified_hash)
                .execute(&mut *tx)).await?;
            if changed.rows_affected() == 0 {
                return Ok(false);
            }
            conn.run(op, sqlx::query("DELETE FROM tokens WHERE user_id = $1 AND kind = 'session'")
                .bind(change.user)
                .execute(&mut *tx)).await?;
            conn.run(op, sqlx::query(
                "INSERT INTO tokens (token_hash, user_id, kind, created_at, expires_at, \
                 last_used_at) VALUES ($1, $2, 'session', $3, $4, $3)")
                .bind(change.session.token.as_str())
                .bind(change.user)
                .bind(Ts(change.now))
                .bind(Ts(change.session.expires_at))
                .execute(&mut *tx)).await?;
            conn.run(op, sqlx::query("DELETE FROM throttle WHERE key = $1")
                .bind(change.email_key.as_str())
                .execute(&mut *tx)).await?;
            conn.run(op, insert_audit!(*audit).execute(&mut *tx)).await?;
            conn.run(op, tx.commit()).await?;
            Ok(true)
        })
    }

    async fn remove_member(
        &self,
        organization: OrganizationId,
        user: UserId,
        audit: &AuditEvent<'_>,
    ) -> Result<bool, StoreError> {
        let op = "remove_member";
        with_db!(&self.conn.db, pool => {
            let conn = &self.conn;
            let mut tx = conn.run(op, pool.begin_write()).await?;
            let removed = conn.run(op, sqlx::query(
                "UPDATE memberships SET deleted_at = $3 \
                 WHERE organization_id = $1 AND user_id = $2 AND deleted_at IS NULL")
                .bind(organization)
                .bind(user)
                .bind(Ts(audit.at))
                .execute(&mut *tx)).await?;
            if removed.rows_affected() == 0 {
                return Ok(false);
            }
            conn.run(op, sqlx::query("DELETE FROM tokens WHERE user_id = $1 AND kind = 'session'")
                .bind(user)
                .execute(&mut *tx)).await?;
            conn.run(op, insert_audit!(*audit).execute(&mut *tx)).await?;
            conn.run(op, tx.commit()).await?;
            Ok(true)
        })
    }

    async fn restore_member(
        &self,
        organization: OrganizationId,
        user: UserId,
        audit: &AuditEvent<'_>,
    ) -> Result<bool, StoreError> {
        let op = "restore_member";
        with_db!(&self.conn.db, pool => {
            let conn = &self.conn;
            let mut tx = conn.run(op, pool.begin_write()).await?;
            let restored = conn.run(op, sqlx::query(
                "UPDATE memberships SET deleted_at = NULL \
                 WHERE organization_id = $1 AND user_id = $2 AND deleted_at IS NOT NULL")
                .bind(organization)
                .bind(user)
                .execute(&mut *tx)).await?;
            if restored.rows_affected() == 0 {
                return Ok(false);
            }
            // An imported member may have been left acting in no organization.
            conn.run(op, sqlx::query(
                "UPDATE users SET active_organization_id = $1 \
                 WHERE id = $2 AND active_organization_id IS NULL")
                .bind(organization)
                .bind(user)
                .execute(&mut *tx)).await?;
            conn.run(op, insert_audit!(*audit).execute(&mut *tx)).await?;
            conn.run(op, tx.commit()).await?;
            Ok(true)
        })
    }

    async fn delete_user(
        &self,
        organization: OrganizationId,
        user: UserId,
        audit: &AuditEvent<'_>,
    ) -> Result<Deletion, StoreError> {
        let op = "delete_user";
        let postgres = matches!(self.conn.db, Db::Postgres(_));
        with_db!(&self.conn.db, pool => {
            let conn = &self.conn;
            let mut tx = conn.run(op, pool.begin_write()).await?;
            // FOR UPDATE on Postgres: a concurrent signup of a new organization by this user
            // or a restore can't slip in between the checks and the delete. SQLite's
            // BEGIN IMMEDIATE already holds the write lock.
            let lock = if postgres {
                "SELECT 1 FROM users WHERE id = $1 FOR UPDATE"
            } else {
                "SELECT 1 FROM users WHERE id = $1"
            };
            conn.run(op, sqlx::query(lock).bind(user).execute(&mut *tx)).await?;
            let member = conn.run(op, sqlx::query(
                "SELECT 1 FROM memberships WHERE organization_id = $1 AND user_id = $2")
                .bind(organization)
                .bind(user)
                .fetch_optional(&mut *tx)).await?;
            if member.is_none() {
                return Ok(Deletion::NotFound);
            }
            let owns = conn.run(op, sqlx::query(
                "SELECT 1 FROM organizations WHERE created_by_user_id = $1 LIMIT 1")
                .bind(user)
                .fetch_optional(&mut *tx)).await?;
            if owns.is_some() {
                return Ok(Deletion::Owner);
            }
            for statement in [
                "DELETE FROM tokens WHERE user_id = $1",
                "DELETE FROM memberships WHERE user_id = $1",
                "DELETE FROM label_studio_users WHERE user_id = $1",
                "DELETE FROM users WHERE id = $1",
            ] {
                conn.run(op, sqlx::query(statement).bind(user).execute(&mut *tx)).await?;
            }
            conn.run(op, insert_audit!(*audit).execute(&mut *tx)).await?;
            conn.run(op, tx.commit()).await?;
            Ok(Deletion::Deleted)
        })
    }

    async fn update_organization(
        &self,
        organization: OrganizationId,
        title: &str,
        audit: &AuditEvent<'_>,
    ) -> Result<Organization, StoreError> {
        let op = "update_organization";
        with_db!(&self.conn.db, pool => {
            let conn = &self.conn;
            let mut tx = conn.run(op, pool.begin_write()).await?;
            let row = conn.run(op, sqlx::query(
                "UPDATE organizations SET title = $2 WHERE id = $1 \
                 RETURNING id, title, created_by_user_id")
                .bind(organization)
                .bind(title)
                .fetch_optional(&mut *tx)).await?;
            let Some(row) = row else {
                return Err(StoreError::OrganizationNotFound);
            };
            let updated = Organization {
                id: row.try_get("id")?,
                title: row.try_get("title")?,
                created_by_user_id: row.try_get("created_by_user_id")?,
            };
            conn.run(op, insert_audit!(*audit).execute(&mut *tx)).await?;
            conn.run(op, tx.commit()).await?;
            Ok(updated)
        })
    }

    async fn server_secret(
        &self,
        name: &str,
        candidate: &str,
        now: DateTime<Utc>,
    ) -> Result<String, StoreError> {
        let op = "server_secret";
        with_db!(&self.conn.db, pool => {
            self.conn.run(op, sqlx::query(
                "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .bind(candidate)
                .bind(Ts(now))
                .execute(pool)).await?;
            let value: String = self.conn.run(op, sqlx::query_scalar(
                "SELECT value FROM server_secrets WHERE name = $1")
                .bind(name)
                .fetch_one(pool)).await?;
            Ok(value)
        })
    }
}
