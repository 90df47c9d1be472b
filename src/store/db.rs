//! One code path for both databases: the pool of either backend, a time type both drivers
//! encode (TIMESTAMPTZ on Postgres, microseconds since the epoch on SQLite), the statement
//! counter every query goes through, and the error mapping.
//!
//! A statement written once runs on both: `with_db!` expands its body once per backend, so the
//! same SQL (with `$1` placeholders, which SQLite accepts too) and the same binds compile
//! against each driver. Where the dialects differ, a method matches on [`Db`] itself.

use std::{
    collections::HashMap,
    future::Future,
    path::PathBuf,
    sync::{
        RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use sqlx::{
    Database, Decode, Encode, PgPool, Postgres, Sqlite, SqlitePool, Transaction, Type,
    encode::IsNull,
    error::BoxDynError,
    postgres::{PgArgumentBuffer, PgPoolOptions, PgTypeInfo, PgValueRef},
    sqlite::{
        SqliteArgumentsBuffer, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions,
        SqliteSynchronous, SqliteTypeInfo, SqliteValueRef,
    },
};
use tracing::Instrument;

use super::{PoolStats, StoreError};

/// A pooled Postgres connection idle for longer than this is pinged before it is used again.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(10);

/// The pool of one of the two backends.
#[derive(Clone)]
pub(crate) enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Db {
    /// The database's name in OpenTelemetry's `db.system`.
    fn system(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgresql",
            Self::Sqlite(_) => "sqlite",
        }
    }
}

/// Runs `$body` with `$pool` bound to the backend's pool: written once, compiled per driver.
macro_rules! with_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::store::db::Db::Postgres($pool) => $body,
            $crate::store::db::Db::Sqlite($pool) => $body,
        }
    };
}
pub(crate) use with_db;

/// Starts a write transaction: `BEGIN IMMEDIATE` on SQLite takes the write lock at once, so
/// concurrent writers queue on the busy timeout instead of failing half-way.
pub(crate) trait BeginWrite {
    type Db: Database;
    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, Self::Db>, sqlx::Error>> + Send;
}

impl BeginWrite for PgPool {
    type Db = Postgres;
    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, Postgres>, sqlx::Error>> + Send {
        self.begin()
    }
}

impl BeginWrite for SqlitePool {
    type Db = Sqlite;
    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, Sqlite>, sqlx::Error>> + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

/// A point in time as both stores keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ts(pub DateTime<Utc>);

impl From<DateTime<Utc>> for Ts {
    fn from(time: DateTime<Utc>) -> Self {
        Self(time)
    }
}

impl Type<Postgres> for Ts {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        <DateTime<Utc> as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for Ts {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Ts {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Self(<DateTime<Utc> as Decode<Postgres>>::decode(value)?))
    }
}

impl Type<Sqlite> for Ts {
    fn type_info() -> SqliteTypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <i64 as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for Ts {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<Sqlite>>::encode(self.0.timestamp_micros(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Ts {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let micros = <i64 as Decode<Sqlite>>::decode(value)?;
        DateTime::from_timestamp_micros(micros)
            .map(Self)
            .ok_or_else(|| format!("timestamp out of range: {micros}").into())
    }
}

/// Statements issued, by operation: the round trips each call costs, exported as a metric.
#[derive(Default)]
pub(crate) struct Statements(RwLock<HashMap<&'static str, AtomicU64>>);

impl Statements {
    fn count(&self, operation: &'static str) {
        if let Ok(counts) = self.0.read()
            && let Some(count) = counts.get(operation)
        {
            count.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Ok(mut counts) = self.0.write() {
            counts
                .entry(operation)
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let mut counts: Vec<_> = self
            .0
            .read()
            .map(|counts| {
                counts
                    .iter()
                    .map(|(operation, count)| (*operation, count.load(Ordering::Relaxed)))
                    .collect()
            })
            .unwrap_or_default();
        counts.sort_unstable();
        counts
    }
}

/// The store's connection to its database.
pub(crate) struct Conn {
    pub(crate) db: Db,
    statements: Statements,
    /// A file next to a SQLite database that serialises migrations between processes, since
    /// SQLite has no advisory locks.
    pub(crate) migration_lock: Option<PathBuf>,
}

impl Conn {
    /// Prepares a Postgres pool without connecting, so the service starts (not ready) while the
    /// database is still away.
    pub(crate) fn postgres(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            // Pinging every connection before every use doubled the round trips of a token
            // check. A connection in steady use is known to be alive; only one idle long enough
            // for the database to have gone away meanwhile is pinged first.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > PING_IF_IDLE_FOR {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy(url)
            .map_err(|e| anyhow::anyhow!("invalid postgres DATABASE_URL: {e}"))?;
        Ok(Self::new(Db::Postgres(pool), None))
    }

    /// Opens (creating it if needed) a SQLite database in WAL mode.
    pub(crate) async fn sqlite(
        url: &str,
        max_connections: u32,
        busy_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let options: SqliteConnectOptions = url
            .parse()
            .map_err(|e| anyhow::anyhow!("invalid sqlite DATABASE_URL: {e}"))?;
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(busy_timeout);
        let filename = options.get_filename().to_owned();
        let on_disk =
            !filename.as_os_str().is_empty() && filename != std::path::Path::new(":memory:");
        if on_disk {
            super::private::prepare_sqlite_file(&filename)?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(busy_timeout)
            .connect_with(options)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open sqlite database {url}: {e}"))?;
        let migration_lock = on_disk.then(|| {
            let mut lock = filename.as_os_str().to_owned();
            lock.push(".migrate-lock");
            PathBuf::from(lock)
        });
        Ok(Self::new(Db::Sqlite(pool), migration_lock))
    }

    fn new(db: Db, migration_lock: Option<PathBuf>) -> Self {
        Self {
            db,
            statements: Statements::default(),
            migration_lock,
        }
    }

    /// Runs one statement (or BEGIN, or COMMIT): counted as a round trip of `operation` and
    /// traced as a client span of its own, named and tagged as OpenTelemetry's database
    /// conventions say. A debug span: its fields are not even computed unless logging at debug
    /// level or exporting spans.
    pub(crate) async fn run<T>(
        &self,
        operation: &'static str,
        statement: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        self.statements.count(operation);
        Ok(statement
            .instrument(tracing::debug_span!(
                "db.statement",
                otel.name = operation,
                otel.kind = "client",
                db.system = self.db.system(),
                db.operation.name = operation,
            ))
            .await?)
    }

    pub(crate) fn statement_counts(&self) -> Vec<(&'static str, u64)> {
        self.statements.snapshot()
    }

    pub(crate) fn pool_stats(&self) -> PoolStats {
        with_db!(&self.db, pool => PoolStats {
            size: pool.size() as usize,
            idle: pool.num_idle(),
        })
    }
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
                    Self::Conflict(super::Unique::Email)
                } else if name.contains("invite") {
                    Self::Conflict(super::Unique::InviteToken)
                } else if name.contains("token") {
                    Self::Conflict(super::Unique::Token)
                } else {
                    Self::Unexpected(error.into())
                }
            }
            E::Database(db) if db.code().as_deref().is_some_and(is_transient) => {
                Self::Unavailable(error)
            }
            _ => Self::Unexpected(error.into()),
        }
    }
}

/// Error codes that mean "not now" rather than "never": Postgres connection failures (class
/// 08), shutdowns and recovery (57P01..57P03), transactions aborted to resolve a conflict with
/// another (class 40: deadlock, serialization failure); SQLite's busy and locked database
/// (primary codes 5 and 6, with any extended code), which another writer holding the lock
/// causes.
fn is_transient(code: &str) -> bool {
    if code.starts_with("08") || code.starts_with("57P") || code.starts_with("40") {
        return true;
    }
    code.parse::<i64>()
        .is_ok_and(|code| matches!(code & 0xff, 5 | 6))
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        match error {
            sqlx::migrate::MigrateError::Execute(inner) => inner.into(),
            other => Self::Unexpected(other.into()),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_and_disconnected_databases_are_transient() {
        for code in ["5", "6", "517", "261", "262", "08006", "57P01"] {
            assert!(is_transient(code), "{code}");
        }
        for code in ["19", "2067", "23505", "42P01"] {
            assert!(!is_transient(code), "{code}");
        }
    }
}
