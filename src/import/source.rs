//! Reads what the import needs from Label Studio's own tables (`htx_user`, `authtoken_token`,
//! `organization`, `organizations_organizationmember` and, where present,
//! `jwt_auth_jwtsettings`, `token_blacklist_outstandingtoken` and
//! `token_blacklist_blacklistedtoken`), from its SQLite file or its Postgres database. The source is opened
//! read-only and read in one transaction, so the rows are one consistent snapshot.

use std::{path::Path, str::FromStr};

use chrono::{DateTime, NaiveDateTime, Utc};
use secrecy::SecretString;
use sqlx::{
    ConnectOptions as _, Connection, PgConnection, Row, SqliteConnection,
    postgres::PgConnectOptions, sqlite::SqliteConnectOptions,
};

/// The tables without which a database is not Label Studio's.
const REQUIRED_TABLES: [&str; 4] = [
    "htx_user",
    "authtoken_token",
    "organization",
    "organizations_organizationmember",
];

/// Where Label Studio keeps its data.
#[derive(Clone)]
pub enum Source {
    /// `sqlite://path/to/label_studio.sqlite3` (Label Studio's default), or a bare file path.
    Sqlite(String),
    /// `postgres://…`, Label Studio's production setup. The URL may hold a password.
    Postgres(SecretString),
}

impl Source {
    pub fn parse(from: &str) -> anyhow::Result<Self> {
        let from = from.trim();
        if from.starts_with("postgres://") || from.starts_with("postgresql://") {
            Ok(Self::Postgres(SecretString::from(from)))
        } else if from.starts_with("sqlite:") {
            Ok(Self::Sqlite(from.to_owned()))
        } else if !from.contains("://") && std::path::Path::new(from).is_file() {
            Ok(Self::Sqlite(format!("sqlite://{from}")))
        } else {
            anyhow::bail!(
                "--from must be sqlite://path/to/label_studio.sqlite3, postgres://… or the path \
                 of Label Studio's SQLite file"
            )
        }
    }

    /// The source as it may be shown: a Postgres URL without user name and password.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(url) => url.clone(),
            Self::Postgres(url) => {
                use secrecy::ExposeSecret as _;
                let url = url.expose_secret();
                let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
                let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                let rest = rest.split_once('?').map_or(rest, |(path, _)| path);
                format!("{scheme}://{rest}")
            }
        }
    }
}

pub struct SourceUser {
    pub id: i64,
    pub email: String,
    pub username: String,
    pub first_name: String,
    pub last_name: String,
    /// Django's `password` column: a hash, or `''`/`!…` when no password can match.
    pub password: SecretString,
    pub is_active: bool,
    pub date_joined: DateTime<Utc>,
    pub active_organization_id: Option<i64>,
}

pub struct SourceToken {
    pub key: SecretString,
    pub user_id: i64,
    pub created: DateTime<Utc>,
}

pub struct SourceOrganization {
    pub id: i64,
    pub title: String,
    pub created_at: DateTime<Utc>,
    pub created_by_id: Option<i64>,
    /// The current invite token; links carrying an earlier one died when it was reset.
    pub invite_token: Option<SecretString>,
}

pub struct SourceMembership {
    pub user_id: i64,
    pub organization_id: i64,
    pub created_at: DateTime<Utc>,
    /// Set when the member was removed (Label Studio's soft delete).
    pub deleted_at: Option<DateTime<Utc>>,
}

/// An organization's `jwt_auth_jwtsettings` row.
#[derive(Debug, Clone, Copy)]
pub struct SourceJwtSettings {
    pub organization_id: i64,
    pub api_tokens_enabled: bool,
    /// Off: Label Studio refuses the legacy tokens of users acting in the organization.
    pub legacy_api_tokens_enabled: bool,
    pub api_token_ttl_days: i64,
}

/// A PAT Label Studio issued (`token_blacklist_outstandingtoken`), with its revocation.
pub struct SourcePersonalToken {
    pub jti: String,
    pub user_id: Option<i64>,
    /// `header.payload`: Label Studio keeps no signature.
    pub token: String,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    pub blacklisted_at: Option<DateTime<Utc>>,
}

/// Everything the import carries over, as Label Studio stores it.
#[derive(Default)]
pub struct LabelStudioData {
    pub users: Vec<SourceUser>,
    pub tokens: Vec<SourceToken>,
    pub organizations: Vec<SourceOrganization>,
    pub memberships: Vec<SourceMembership>,
    pub jwt_settings: Vec<SourceJwtSettings>,
    pub personal_tokens: Vec<SourcePersonalToken>,
    /// Label Studio's `SECRET_KEY`, when given: what signed its PATs.
    pub secret_key: Option<SecretString>,
}

impl LabelStudioData {
    /// Organizations whose settings turn legacy API tokens off.
    pub fn legacy_tokens_disabled(&self, organization: i64) -> bool {
        self.jwt_settings
            .iter()
            .any(|s| s.organization_id == organization && !s.legacy_api_tokens_enabled)
    }
}

/// Label Studio's `SECRET_KEY` from its data directory's `.env` (where Label Studio writes the
/// one it generates), read as Label Studio reads it: the last `SECRET_KEY=` line, surrounding
/// quotes removed.
pub fn secret_key_from_data_dir(dir: &Path) -> anyhow::Result<SecretString> {
    let path = dir.join(".env");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    secret_key_from_env_file(&text)
        .ok_or_else(|| anyhow::anyhow!("{} holds no SECRET_KEY", path.display()))
}

fn secret_key_from_env_file(text: &str) -> Option<SecretString> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (name, value) = line.split_once('=')?;
            (name.trim() == "SECRET_KEY").then_some(value.trim())
        })
        .next_back()
        .map(|value| {
            let unquoted = ['"', '\'']
                .iter()
                .find_map(|q| value.strip_prefix(*q)?.strip_suffix(*q))
                .unwrap_or(value);
            SecretString::from(unquoted.to_owned())
        })
        .filter(|key| !secrecy::ExposeSecret::expose_secret(key).is_empty())
}

/// Reads the source database, read-only.
pub async fn read(source: &Source) -> anyhow::Result<LabelStudioData> {
    match source {
        Source::Sqlite(url) => read_sqlite(url).await,
        Source::Postgres(url) => {
            use secrecy::ExposeSecret as _;
            read_postgres(url.expose_secret()).await
        }
    }
    .map_err(|e| {
        e.context(format!(
            "cannot read Label Studio's database {}",
            source.describe()
        ))
    })
}

async fn read_sqlite(url: &str) -> anyhow::Result<LabelStudioData> {
    // Reading 100,000 rows takes seconds; that is no slow statement worth a warning.
    let options = SqliteConnectOptions::from_str(url)?
        .read_only(true)
        .create_if_missing(false)
        .disable_statement_logging();
    let mut conn = SqliteConnection::connect_with(&options).await?;
    let mut tx = conn.begin().await?;
    for table in REQUIRED_TABLES {
        ensure_table(sqlite_has_table(&mut tx, table).await?, table)?;
    }
    let mut data = LabelStudioData::default();
    for row in sqlx::query(
        "SELECT id, email, username, first_name, last_name, password, \
         CAST(is_active AS INTEGER), CAST(date_joined AS TEXT), active_organization_id \
         FROM htx_user ORDER BY id",
    )
    .fetch_all(&mut *tx)
    .await?
    {
        data.users.push(SourceUser {
            id: row.try_get(0)?,
            email: row.try_get(1)?,
            username: row.try_get(2)?,
            first_name: row.try_get(3)?,
            last_name: row.try_get(4)?,
            password: SecretString::from(row.try_get::<String, _>(5)?),
            is_active: row.try_get::<i64, _>(6)? != 0,
            date_joined: sqlite_time(&row.try_get::<String, _>(7)?)?,
            active_organization_id: row.try_get(8)?,
        });
    }
    for row in sqlx::query("SELECT key, user_id, CAST(created AS TEXT) FROM authtoken_token")
        .fetch_all(&mut *tx)
        .await?
    {
        data.tokens.push(SourceToken {
            key: SecretString::from(row.try_get::<String, _>(0)?),
            user_id: row.try_get(1)?,
            created: sqlite_time(&row.try_get::<String, _>(2)?)?,
        });
    }
    for row in sqlx::query(
        "SELECT id, title, CAST(created_at AS TEXT), created_by_id, token \
         FROM organization ORDER BY id",
    )
    .fetch_all(&mut *tx)
    .await?
    {
        data.organizations.push(SourceOrganization {
            id: row.try_get(0)?,
            title: row.try_get(1)?,
            created_at: sqlite_time(&row.try_get::<String, _>(2)?)?,
            created_by_id: row.try_get(3)?,
            invite_token: row.try_get::<Option<String>, _>(4)?.map(SecretString::from),
        });
    }
    for row in sqlx::query(
        "SELECT user_id, organization_id, CAST(created_at AS TEXT), CAST(deleted_at AS TEXT) \
         FROM organizations_organizationmember ORDER BY id",
    )
    .fetch_all(&mut *tx)
    .await?
    {
        data.memberships.push(SourceMembership {
            user_id: row.try_get(0)?,
            organization_id: row.try_get(1)?,
            created_at: sqlite_time(&row.try_get::<String, _>(2)?)?,
            deleted_at: row
                .try_get::<Option<String>, _>(3)?
                .as_deref()
                .map(sqlite_time)
                .transpose()?,
        });
    }
    if sqlite_has_table(&mut tx, "jwt_auth_jwtsettings").await? {
        for row in sqlx::query(
            "SELECT organization_id, CAST(api_tokens_enabled AS INTEGER), \
             CAST(legacy_api_tokens_enabled AS INTEGER), api_token_ttl_days \
             FROM jwt_auth_jwtsettings ORDER BY organization_id",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            data.jwt_settings.push(SourceJwtSettings {
                organization_id: row.try_get(0)?,
                api_tokens_enabled: row.try_get::<i64, _>(1)? != 0,
                legacy_api_tokens_enabled: row.try_get::<i64, _>(2)? != 0,
                api_token_ttl_days: row.try_get(3)?,
            });
        }
    }
    if sqlite_has_table(&mut tx, "token_blacklist_outstandingtoken").await?
        && sqlite_has_table(&mut tx, "token_blacklist_blacklistedtoken").await?
    {
        for row in sqlx::query(
            "SELECT o.jti, o.user_id, o.token, CAST(o.created_at AS TEXT), \
             CAST(o.expires_at AS TEXT), CAST(b.blacklisted_at AS TEXT) \
             FROM token_blacklist_outstandingtoken o \
             LEFT JOIN token_blacklist_blacklistedtoken b ON b.token_id = o.id ORDER BY o.id",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            let time = |index: usize| -> anyhow::Result<Option<DateTime<Utc>>> {
                row.try_get::<Option<String>, _>(index)?
                    .as_deref()
                    .map(sqlite_time)
                    .transpose()
            };
            data.personal_tokens.push(SourcePersonalToken {
                jti: row.try_get(0)?,
                user_id: row.try_get(1)?,
                token: row.try_get(2)?,
                created_at: time(3)?,
                expires_at: time(4)?.ok_or_else(|| anyhow::anyhow!("a PAT without expiry"))?,
                blacklisted_at: time(5)?,
            });
        }
    }
    tx.rollback().await?;
    Ok(data)
}

async fn sqlite_has_table(conn: &mut SqliteConnection, table: &str) -> anyhow::Result<bool> {
    let found: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1")
            .bind(table)
            .fetch_optional(conn)
            .await?;
    Ok(found.is_some())
}

async fn read_postgres(url: &str) -> anyhow::Result<LabelStudioData> {
    let options = PgConnectOptions::from_str(url)?.disable_statement_logging();
    let mut conn = PgConnection::connect_with(&options).await?;
    let mut tx = conn
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    for table in REQUIRED_TABLES {
        ensure_table(postgres_has_table(&mut tx, table).await?, table)?;
    }
    let mut data = LabelStudioData::default();
    for row in sqlx::query(
        "SELECT id::int8, email, username, first_name, last_name, password, is_active, \
         date_joined, active_organization_id::int8 FROM htx_user ORDER BY id",
    )
    .fetch_all(&mut *tx)
    .await?
    {
        data.users.push(SourceUser {
            id: row.try_get(0)?,
            email: row.try_get(1)?,
            username: row.try_get(2)?,
            first_name: row.try_get(3)?,
            last_name: row.try_get(4)?,
            password: SecretString::from(row.try_get::<String, _>(5)?),
            is_active: row.try_get(6)?,
            date_joined: row.try_get(7)?,
            active_organization_id: row.try_get(8)?,
        });
    }
    for row in sqlx::query("SELECT key, user_id::int8, created FROM authtoken_token")
        .fetch_all(&mut *tx)
        .await?
    {
        data.tokens.push(SourceToken {
            key: SecretString::from(row.try_get::<String, _>(0)?),
            user_id: row.try_get(1)?,
            created: row.try_get(2)?,
        });
    }
    for row in sqlx::query(
        "SELECT id::int8, title, created_at, created_by_id::int8, token \
         FROM organization ORDER BY id",
    )
    .fetch_all(&mut *tx)
    .await?
    {
        data.organizations.push(SourceOrganization {
            id: row.try_get(0)?,
            title: row.try_get(1)?,
            created_at: row.try_get(2)?,
            created_by_id: row.try_get(3)?,
            invite_token: row.try_get::<Option<String>, _>(4)?.map(SecretString::from),
        });
    }
    for row in sqlx::query(
        "SELECT user_id::int8, organization_id::int8, created_at, deleted_at \
         FROM organizations_organizationmember ORDER BY id",
    )
    .fetch_all(&mut *tx)
    .await?
    {
        data.memberships.push(SourceMembership {
            user_id: row.try_get(0)?,
            organization_id: row.try_get(1)?,
            created_at: row.try_get(2)?,
            deleted_at: row.try_get(3)?,
        });
    }
    if postgres_has_table(&mut tx, "jwt_auth_jwtsettings").await? {
        for row in sqlx::query(
            "SELECT organization_id::int8, api_tokens_enabled, legacy_api_tokens_enabled, \
             api_token_ttl_days::int8 FROM jwt_auth_jwtsettings ORDER BY organization_id",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            data.jwt_settings.push(SourceJwtSettings {
                organization_id: row.try_get(0)?,
                api_tokens_enabled: row.try_get(1)?,
                legacy_api_tokens_enabled: row.try_get(2)?,
                api_token_ttl_days: row.try_get(3)?,
            });
        }
    }
    if postgres_has_table(&mut tx, "token_blacklist_outstandingtoken").await?
        && postgres_has_table(&mut tx, "token_blacklist_blacklistedtoken").await?
    {
        for row in sqlx::query(
            "SELECT o.jti::text, o.user_id::int8, o.token, o.created_at, o.expires_at, \
             b.blacklisted_at FROM token_blacklist_outstandingtoken o \
             LEFT JOIN token_blacklist_blacklistedtoken b ON b.token_id = o.id ORDER BY o.id",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            data.personal_tokens.push(SourcePersonalToken {
                jti: row.try_get(0)?,
                user_id: row.try_get(1)?,
                token: row.try_get(2)?,
                created_at: row.try_get(3)?,
                expires_at: row.try_get(4)?,
                blacklisted_at: row.try_get(5)?,
            });
        }
    }
    tx.rollback().await?;
    Ok(data)
}

async fn postgres_has_table(conn: &mut PgConnection, table: &str) -> anyhow::Result<bool> {
    Ok(sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(conn)
        .await?)
}

fn ensure_table(present: bool, table: &str) -> anyhow::Result<()> {
    if present {
        Ok(())
    } else {
        anyhow::bail!("not a Label Studio database: it has no table {table}")
    }
}

/// Django keeps times in SQLite as naive UTC text, `YYYY-MM-DD HH:MM:SS[.ffffff]`.
fn sqlite_time(text: &str) -> anyhow::Result<DateTime<Utc>> {
    let text = text.trim();
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(naive.and_utc());
        }
    }
    DateTime::parse_from_rfc3339(&text.replacen(' ', "T", 1))
        .map(|time| time.with_timezone(&Utc))
        .map_err(|_| anyhow::anyhow!("unreadable time {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn django_sqlite_times_parse_as_utc() {
        let expected = DateTime::parse_from_rfc3339("2026-11-28T02:41:16.836667Z").unwrap();
        for text in [
            "2026-11-28 02:41:16.836667",
            "2026-11-28T02:41:16.836667",
            "2026-11-28 02:41:16.836667+00:00",
            "2026-11-28 04:41:16.836667+02:00",
        ] {
            assert_eq!(sqlite_time(text).unwrap(), expected, "{text}");
        }
        // Django leaves the fraction out when it is zero.
        assert_eq!(
            sqlite_time("2026-11-28 02:41:16").unwrap(),
            DateTime::parse_from_rfc3339("2026-11-28T02:41:16Z").unwrap()
        );
        assert!(sqlite_time("yesterday").is_err());
    }

    #[test]
    fn the_secret_key_is_read_from_a_dotenv_as_label_studio_writes_it() {
        use secrecy::ExposeSecret as _;
        let read =
            |text: &str| secret_key_from_env_file(text).map(|k| k.expose_secret().to_owned());
        assert_eq!(
            read("\nSECRET_KEY=abc$%^&*(-_=+)\n").as_deref(),
            Some("abc$%^&*(-_=+)")
        );
        assert_eq!(
            read("A=1\nexport SECRET_KEY=\"quoted\"\n").as_deref(),
            Some("quoted")
        );
        assert_eq!(
            read("SECRET_KEY=old\nSECRET_KEY=new\n").as_deref(),
            Some("new")
        );
        assert_eq!(read("OTHER_SECRET_KEY=x\nSECRET_KEY=\n"), None);
    }

    #[test]
    fn sources_are_told_apart_and_shown_without_credentials() {
        assert!(matches!(
            Source::parse("sqlite://data/label_studio.sqlite3").unwrap(),
            Source::Sqlite(_)
        ));
        let postgres = Source::parse("postgres://ls:secret@db.internal:5432/labelstudio").unwrap();
        assert_eq!(
            postgres.describe(),
            "postgres://db.internal:5432/labelstudio"
        );
        assert_eq!(
            Source::parse("postgresql://db/ls?password=secret")
                .unwrap()
                .describe(),
            "postgresql://db/ls"
        );
        assert!(Source::parse("mysql://db/ls").is_err());
        assert!(Source::parse("/no/such/file.sqlite3").is_err());
    }
}
