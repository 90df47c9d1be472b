//! Schema, health and housekeeping.

use async_trait::async_trait;
use tokio_stream::StreamExt;

use super::{
    Maintenance, PoolStats, PurgeBefore, SqlStore, StoreError,
    db::{Db, Ts, migrator, with_db},
};

/// The migrations of each backend, embedded in the binary so the image needs no files.
macro_rules! migrations {
    ($dialect:literal) => {
        [
            (
                1,
                "accounts",
                include_str!(concat!("../../migrations/", $dialect, "/0001_accounts.sql")),
            ),
            (
                2,
                "throttle and audit",
                include_str!(concat!(
                    "../../migrations/",
                    $dialect,
                    "/0002_throttle_and_audit.sql"
                )),
            ),
            (
                3,
                "label studio import",
                include_str!(concat!(
                    "../../migrations/",
                    $dialect,
                    "/0003_label_studio_import.sql"
                )),
            ),
            (
                4,
                "credentials and activity",
                include_str!(concat!(
                    "../../migrations/",
                    $dialect,
                    "/0004_credentials_and_activity.sql"
                )),
            ),
            (
                5,
                "members",
                include_str!(concat!("../../migrations/", $dialect, "/0005_members.sql")),
            ),
            (
                6,
                "personal access tokens",
                include_str!(concat!(
                    "../../migrations/",
                    $dialect,
                    "/0006_personal_access_tokens.sql"
                )),
            ),
        ]
    };
}

#[async_trait]
impl Maintenance for SqlStore {
    fn pool_stats(&self) -> PoolStats {
        self.conn.pool_stats()
    }

    fn statement_counts(&self) -> Vec<(&'static str, u64)> {
        self.conn.statement_counts()
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match &self.conn.db {
            // The migrator holds a Postgres advisory lock, so replicas starting together take
            // turns.
            Db::Postgres(pool) => migrator(&migrations!("postgres")).run(pool).await?,
            Db::Sqlite(pool) => {
                let _lock = match &self.conn.migration_lock {
                    Some(path) => Some(lock_file(path.clone()).await?),
                    None => None,
                };
                migrator(&migrations!("sqlite")).run(pool).await?;
            }
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        with_db!(&self.conn.db, pool => {
            self.conn.run("ping", sqlx::query("SELECT 1").execute(pool)).await?;
            Ok(())
        })
    }

    async fn purge(&self, before: &PurgeBefore) -> Result<u64, StoreError> {
        with_db!(&self.conn.db, pool => {
            let op = "purge";
            let sessions = self.conn.run(op, sqlx::query(
                "DELETE FROM tokens WHERE kind = 'session' \
                 AND (expires_at <= $1 OR last_used_at <= $2)")
                .bind(Ts(before.now))
                .bind(Ts(before.idle_since))
                .execute(pool)).await?;
            let throttle = self.conn.run(op, sqlx::query(
                "DELETE FROM throttle WHERE updated_at < $1 \
                 AND (blocked_until IS NULL OR blocked_until <= $2)")
                .bind(Ts(before.throttle_since))
                .bind(Ts(before.now))
                .execute(pool)).await?;
            let audit = self.conn.run(op, sqlx::query("DELETE FROM audit_events WHERE at < $1")
                .bind(Ts(before.audit_since))
                .execute(pool)).await?;
            Ok(sessions.rows_affected() + throttle.rows_affected() + audit.rows_affected())
        })
    }

    async fn other_password_hashes(
        &self,
        current: &str,
        each: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), StoreError> {
        // Escapes LIKE's wildcards, so that the prefix matches as written.
        let pattern = format!(
            "{}%",
            current
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        with_db!(&self.conn.db, pool => {
            let mut rows = sqlx::query_scalar::<_, String>(
                "SELECT password_hash FROM users WHERE password_hash IS NOT NULL \
                 AND password_hash NOT LIKE $1 ESCAPE '\\'")
                .bind(&pattern)
                .fetch(pool);
            while let Some(hash) = rows.next().await.transpose()? {
                each(hash);
            }
            Ok(())
        })
    }
}

/// Takes an exclusive lock on `path`, held until the returned file is dropped.
async fn lock_file(path: std::path::PathBuf) -> Result<std::fs::File, StoreError> {
    tokio::task::spawn_blocking(move || {
        let file = super::private::open_lock_file(&path)?;
        file.lock()?;
        Ok(file)
    })
    .await
    .map_err(|e| StoreError::Unexpected(e.into()))?
    .map_err(|e: std::io::Error| StoreError::Unexpected(e.into()))
}
