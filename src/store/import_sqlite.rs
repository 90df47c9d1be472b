//! The Label Studio import into the embedded SQLite store.
//!
//! A writing import holds `BEGIN IMMEDIATE` from its first read to its commit, so nothing else
//! writes in between; a dry run reads through a read-only connection.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    QueryBuilder, Row, Sqlite, SqlitePool, Transaction,
    sqlite::{SqliteConnectOptions, SqlitePoolOptions},
};

use super::{
    Maintenance, NewKey, PersonalToken, SqlStore, StoreError, TokenSettings,
    import::{
        Existing, ImportTransaction, ImportedMembership, ImportedOrganization, ImportedToken,
        ImportedUser, LabelStudioImport, LabelStudioKey, Lookup, in_row_order, insert_token_rows,
        sqlite_file_exists, sqlite_statements,
    },
};
use crate::domain::{OrganizationId, UserId};

pub struct SqliteImport {
    pool: SqlitePool,
    /// The store, when the import writes; `None` for a dry run.
    store: Option<SqlStore>,
}

impl SqliteImport {
    pub(crate) fn writing(store: SqlStore) -> anyhow::Result<Self> {
        let pool = store
            .sqlite_pool()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("not a SQLite store"))?;
        Ok(Self {
            pool,
            store: Some(store),
        })
    }

    /// Opens the database read-only, or an empty one in memory when the file does not exist,
    /// so that a dry run creates nothing.
    pub(crate) async fn reading(url: &str, busy_timeout: Duration) -> anyhow::Result<Self> {
        let options: SqliteConnectOptions = url
            .parse()
            .map_err(|e| anyhow::anyhow!("invalid sqlite DATABASE_URL: {e}"))?;
        let options = if sqlite_file_exists(options.get_filename()) {
            options
                .read_only(true)
                .create_if_missing(false)
                .busy_timeout(busy_timeout)
        } else {
            SqliteConnectOptions::from_str("sqlite::memory:")?
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open sqlite database {url}: {e}"))?;
        Ok(Self { pool, store: None })
    }
}

#[async_trait]
impl LabelStudioImport for SqliteImport {
    async fn migrate(&self) -> Result<(), StoreError> {
        match &self.store {
            Some(store) => store.migrate().await,
            None => Ok(()),
        }
    }

    async fn begin(&self) -> Result<Box<dyn ImportTransaction>, StoreError> {
        let tx = if self.store.is_some() {
            self.pool.begin_with("BEGIN IMMEDIATE").await?
        } else {
            self.pool.begin().await?
        };
        Ok(Box::new(SqliteImportTransaction { tx }))
    }
}

struct SqliteImportTransaction {
    tx: Transaction<'static, Sqlite>,
}

fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

fn from_micros(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| StoreError::Unexpected(anyhow::anyhow!("timestamp out of range: {micros}")))
}

impl SqliteImportTransaction {
    async fn has_table(&mut self, name: &str) -> Result<bool, StoreError> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1")
                .bind(name)
                .fetch_optional(&mut *self.tx)
                .await?;
        Ok(found.is_some())
    }

    /// The values of `column` in `table` that are among `values`.
    async fn present(
        &mut self,
        table: &str,
        column: &str,
        values: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let mut found = Vec::new();
        for chunk in sqlite_statements(values) {
            let mut query = QueryBuilder::<Sqlite>::new(format!(
                "SELECT {column} FROM {table} WHERE {column} IN ("
            ));
            let mut list = query.separated(", ");
            for value in chunk {
                list.push_bind(value);
            }
            list.push_unseparated(")");
            let rows: Vec<String> = query.build_query_scalar().fetch_all(&mut *self.tx).await?;
            found.extend(rows);
        }
        Ok(found)
    }

    async fn keys(
        &mut self,
        sql: &'static str,
    ) -> Result<std::collections::HashMap<LabelStudioKey, i64>, StoreError> {
        let rows = sqlx::query(sql).fetch_all(&mut *self.tx).await?;
        rows.iter()
            .map(|row| {
                Ok((
                    LabelStudioKey {
                        id: row.try_get(0)?,
                        created_at: from_micros(row.try_get(1)?)?,
                    },
                    row.try_get(2)?,
                ))
            })
            .collect()
    }
}

#[async_trait]
impl ImportTransaction for SqliteImportTransaction {
    async fn existing(&mut self, lookup: &Lookup) -> Result<Existing, StoreError> {
        if !self.has_table("users").await? {
            return Ok(Existing::default());
        }
        let mut existing = Existing {
            emails: self
                .present("users", "email", &lookup.emails)
                .await?
                .into_iter()
                .collect(),
            token_hashes: self
                .present("tokens", "token_hash", &lookup.token_hashes)
                .await?
                .into_iter()
                .collect(),
            invite_tokens: self
                .present("organizations", "invite_token", &lookup.invite_tokens)
                .await?
                .into_iter()
                .collect(),
            ..Existing::default()
        };
        if self.has_table("personal_access_tokens").await? {
            existing.jtis = self
                .present("personal_access_tokens", "jti", &lookup.jtis)
                .await?
                .into_iter()
                .collect();
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
            .bind(micros(row.key.created_at))
            .fetch_one(&mut *self.tx)
            .await?;
            sqlx::query(
                "INSERT INTO label_studio_organizations \
                 (label_studio_id, label_studio_created_at, organization_id, imported_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(row.key.id)
            .bind(micros(row.key.created_at))
            .bind(id)
            .bind(micros(now))
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
        for chunk in sqlite_statements(rows) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO users (email, username, first_name, last_name, password_hash, \
                 is_active, date_joined, active_organization_id) ",
            );
            query.push_values(chunk, |mut row, user| {
                row.push_bind(user.email.as_str())
                    .push_bind(user.username.as_str())
                    .push_bind(user.first_name.as_str())
                    .push_bind(user.last_name.as_str())
                    .push_bind(user.password_hash.as_deref())
                    .push_bind(user.is_active)
                    .push_bind(micros(user.key.created_at))
                    .push_bind(user.active_organization_id);
            });
            query.push(" RETURNING id, email");
            let returned: Vec<(i64, String)> =
                query.build_query_as().fetch_all(&mut *self.tx).await?;
            let chunk_ids = in_row_order(chunk, returned)?;

            let mut keys = QueryBuilder::<Sqlite>::new(
                "INSERT INTO label_studio_users \
                 (label_studio_id, label_studio_date_joined, user_id, imported_at) ",
            );
            keys.push_values(chunk.iter().zip(&chunk_ids), |mut row, (user, id)| {
                row.push_bind(user.key.id)
                    .push_bind(micros(user.key.created_at))
                    .push_bind(*id)
                    .push_bind(micros(now));
            });
            keys.build().execute(&mut *self.tx).await?;
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
        for chunk in sqlite_statements(rows) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO tokens (token_hash, user_id, kind, created_at) ",
            );
            query.push_values(chunk, |mut row, token| {
                row.push_bind(token.token.as_str())
                    .push_bind(token.user_id)
                    .push("'api'")
                    .push_bind(micros(token.created_at));
            });
            query.build().execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    async fn insert_memberships(&mut self, rows: &[ImportedMembership]) -> Result<(), StoreError> {
        for chunk in sqlite_statements(rows) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO memberships (organization_id, user_id, joined_at, deleted_at) ",
            );
            query.push_values(chunk, |mut row, membership| {
                row.push_bind(membership.organization_id)
                    .push_bind(membership.user_id)
                    .push_bind(micros(membership.joined_at))
                    .push_bind(membership.deleted_at.map(micros));
            });
            query.build().execute(&mut *self.tx).await?;
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
