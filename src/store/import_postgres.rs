//! The Label Studio import into the Postgres store.
//!
//! A writing import takes an advisory lock for its transaction, so two imports never interleave;
//! the server keeps serving meanwhile, and should a signup take an imported email first, the
//! unique constraints abort the whole import. A dry run is a `READ ONLY` transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::{
    Maintenance, NewKey, PersonalToken, SqlStore, StoreError, TokenSettings,
    import::{
        Access, Existing, ImportTransaction, ImportedMembership, ImportedOrganization,
        ImportedToken, ImportedUser, LabelStudioImport, LabelStudioKey, Lookup, in_row_order,
        insert_token_rows,
    },
};
use crate::domain::{OrganizationId, UserId};

/// Keeps two imports into one database apart.
const IMPORT_LOCK: i64 = 0x6c73_6964_696d_7074;

pub struct PostgresImport {
    store: SqlStore,
    pool: PgPool,
    access: Access,
}

impl PostgresImport {
    pub(crate) fn new(store: SqlStore, access: Access) -> anyhow::Result<Self> {
        let pool = store
            .postgres_pool()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("not a Postgres store"))?;
        Ok(Self {
            store,
            pool,
            access,
        })
    }

    fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait]
impl LabelStudioImport for PostgresImport {
    async fn migrate(&self) -> Result<(), StoreError> {
        match self.access {
            Access::Write => self.store.migrate().await,
            Access::ReadOnly => Ok(()),
        }
    }

    async fn begin(&self) -> Result<Box<dyn ImportTransaction>, StoreError> {
        let tx = match self.access {
            Access::Write => {
                let mut tx = self.pool().begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(IMPORT_LOCK)
                    .execute(&mut *tx)
                    .await?;
                tx
            }
            Access::ReadOnly => self.pool().begin_with("BEGIN READ ONLY").await?,
        };
        Ok(Box::new(PostgresImportTransaction { tx }))
    }
}

struct PostgresImportTransaction {
    tx: Transaction<'static, Postgres>,
}

impl PostgresImportTransaction {
    async fn has_table(&mut self, name: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(name)
            .fetch_one(&mut *self.tx)
            .await?)
    }

    async fn keys(
        &mut self,
        sql: &'static str,
    ) -> Result<std::collections::HashMap<LabelStudioKey, i64>, StoreError> {
        let rows = sqlx::query(sql).fetch_all(&mut *self.tx).await?;
        Ok(rows
            .iter()
            .map(|row| {
                Ok::<_, sqlx::Error>((
                    LabelStudioKey {
                        id: row.try_get(0)?,
                        created_at: row.try_get(1)?,
                    },
                    row.try_get(2)?,
                ))
            })
            .collect::<Result<_, _>>()?)
    }
}

#[async_trait]
impl ImportTransaction for PostgresImportTransaction {
    async fn existing(&mut self, lookup: &Lookup) -> Result<Existing, StoreError> {
        if !self.has_table("users").await? {
            return Ok(Existing::default());
        }
        let emails: Vec<String> =
            sqlx::query_scalar("SELECT email FROM users WHERE email = ANY($1)")
                .bind(&lookup.emails)
                .fetch_all(&mut *self.tx)
                .await?;
        let token_hashes: Vec<String> =
            sqlx::query_scalar("SELECT token_hash FROM tokens WHERE token_hash = ANY($1)")
                .bind(&lookup.token_hashes)
                .fetch_all(&mut *self.tx)
                .await?;
        let invite_tokens: Vec<String> = sqlx::query_scalar(
            "SELECT invite_token FROM organizations WHERE invite_token = ANY($1)",
        )
        .bind(&lookup.invite_tokens)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut existing = Existing {
            emails: emails.into_iter().collect(),
            token_hashes: token_hashes.into_iter().collect(),
            invite_tokens: invite_tokens.into_iter().collect(),
            ..Existing::default()
        };
        if self.has_table("personal_access_tokens").await? {
            let jtis: Vec<String> =
                sqlx::query_scalar("SELECT jti FROM personal_access_tokens WHERE jti = ANY($1)")
                    .bind(&lookup.jtis)
                    .fetch_all(&mut *self.tx)
                    .await?;
            existing.jtis = jtis.into_iter().collect();
        }
        if self.has_table("label_studio_users").await? {
            existing.users = self
                .keys(
                    "SELECT label_studio_id, label_studio_date_joined, user_id \
                     FROM label_studio_users",
                )
                .await?;
            existing.organizations = self
                .keys(
                    "SELECT label_studio_id, label_studio_created_at, organization_id \
                     FROM label_studio_organizations",
                )
                .await?;
            let rows = sqlx::query(
                "SELECT m.organization_id, m.user_id FROM memberships m \
                 JOIN label_studio_users l ON l.user_id = m.user_id",
            )
            .fetch_all(&mut *self.tx)
            .await?;
            for row in rows {
                existing
                    .memberships
                    .insert((row.try_get(0)?, row.try_get(1)?));
            }
        }
        Ok(existing)
    }

    async fn insert_organizations(
        &mut self,
        rows: &[ImportedOrganization],
        now: DateTime<Utc>,
    ) -> Result<Vec<OrganizationId>, StoreError> {
        let mut ids = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO organizations (title, invite_token, created_at) \
                 VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(&row.title)
            .bind(row.invite_token.as_str())
            .bind(row.key.created_at)
            .fetch_one(&mut *self.tx)
            .await?;
            sqlx::query(
                "INSERT INTO label_studio_organizations \
                 (label_studio_id, label_studio_created_at, organization_id, imported_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(row.key.id)
            .bind(row.key.created_at)
            .bind(id)
            .bind(now)
            .execute(&mut *self.tx)
            .await?;
            ids.push(id);
        }
        Ok(ids)
    }

    async fn insert_users(
        &mut self,
        rows: &[ImportedUser],
        now: DateTime<Utc>,
    ) -> Result<Vec<UserId>, StoreError> {
        let mut ids = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(super::import::BATCH_ROWS) {
            let returned: Vec<(i64, String)> = sqlx::query_as(
                "INSERT INTO users (email, username, first_name, last_name, password_hash, \
                 is_active, date_joined, active_organization_id) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], \
                 $5::text[], $6::bool[], $7::timestamptz[], $8::int8[]) \
                 RETURNING id, email",
            )
            .bind(column(chunk, |u| u.email.as_str().to_owned()))
            .bind(column(chunk, |u| u.username.as_str().to_owned()))
            .bind(column(chunk, |u| u.first_name.as_str().to_owned()))
            .bind(column(chunk, |u| u.last_name.as_str().to_owned()))
            .bind(column(chunk, |u| u.password_hash.clone()))
            .bind(column(chunk, |u| u.is_active))
            .bind(column(chunk, |u| u.key.created_at))
            .bind(column(chunk, |u| u.active_organization_id))
            .fetch_all(&mut *self.tx)
            .await?;
            let chunk_ids = in_row_order(chunk, returned)?;
            sqlx::query(
                "INSERT INTO label_studio_users \
                 (label_studio_id, label_studio_date_joined, user_id, imported_at) \
                 SELECT l.id, l.joined, l.user_id, $4 \
                 FROM UNNEST($1::int8[], $2::timestamptz[], $3::int8[]) AS l (id, joined, user_id)",
            )
            .bind(column(chunk, |u| u.key.id))
            .bind(column(chunk, |u| u.key.created_at))
            .bind(&chunk_ids)
            .bind(now)
            .execute(&mut *self.tx)
            .await?;
            ids.extend(chunk_ids);
        }
        Ok(ids)
    }

    async fn set_owners(&mut self, owners: &[(OrganizationId, UserId)]) -> Result<(), StoreError> {
        for (organization, user) in owners {
            sqlx::query("UPDATE organizations SET created_by_user_id = $1 WHERE id = $2")
                .bind(user)
                .bind(organization)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    async fn insert_tokens(&mut self, rows: &[ImportedToken]) -> Result<(), StoreError> {
        for chunk in rows.chunks(super::import::BATCH_ROWS) {
            sqlx::query(
                "INSERT INTO tokens (token_hash, user_id, kind, created_at) \
                 SELECT t.hash, t.user_id, 'api', t.created_at \
                 FROM UNNEST($1::text[], $2::int8[], $3::timestamptz[]) \
                 AS t (hash, user_id, created_at)",
            )
            .bind(column(chunk, |t| t.token.as_str().to_owned()))
            .bind(column(chunk, |t| t.user_id))
            .bind(column(chunk, |t| t.created_at))
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    async fn insert_memberships(&mut self, rows: &[ImportedMembership]) -> Result<(), StoreError> {
        for chunk in rows.chunks(super::import::BATCH_ROWS) {
            sqlx::query(
                "INSERT INTO memberships (organization_id, user_id, joined_at, deleted_at) \
                 SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::timestamptz[], \
                 $4::timestamptz[])",
            )
            .bind(column(chunk, |m| m.organization_id))
            .bind(column(chunk, |m| m.user_id))
            .bind(column(chunk, |m| m.joined_at))
            .bind(column(chunk, |m| m.deleted_at))
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    async fn insert_token_settings(
        &mut self,
        rows: &[(OrganizationId, TokenSettings)],
    ) -> Result<(), StoreError> {
        insert_token_rows!(settings, self.tx, rows);
        Ok(())
    }

    async fn insert_signing_key(&mut self, key: &NewKey<'_>) -> Result<(), StoreError> {
        insert_token_rows!(key, self.tx, key);
        Ok(())
    }

    async fn insert_personal_tokens(&mut self, rows: &[PersonalToken]) -> Result<(), StoreError> {
        insert_token_rows!(tokens, self.tx, rows);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// One column of a batch, bound as a Postgres array.
fn column<T, V>(rows: &[T], value: impl Fn(&T) -> V) -> Vec<V> {
    rows.iter().map(value).collect()
}
