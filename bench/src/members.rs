//! The big organization of the `list-members` scenarios: members written straight into the
//! servers' database with SQL (no signups, no hashing), so 100,000 of them take seconds.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use sqlx::Connection as _;

/// How many members `seed` wrote: the range the searches draw from.
static SEEDED: AtomicU64 = AtomicU64::new(0);

/// A search for one seeded member, as the People page's search box sends it: `person<n>`.
pub fn random_query() -> String {
    let n = rand::random_range(1..=SEEDED.load(Ordering::Relaxed).max(1));
    format!("{EMAIL_PREFIX}{n}")
}

/// The seeded members' emails are `person<n>@members.example.com`, their usernames
/// `person<n>`: a query for `person<n>` matches a handful of them, as a name typed into the
/// People page's search box does.
const EMAIL_PREFIX: &str = "person";

/// Adds `count` members to the oldest organization (the one the seeded accounts joined).
pub async fn seed(url: &str, count: u64) -> anyhow::Result<()> {
    let count = i64::try_from(count).context("--members is too large")?;
    if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .context("cannot connect to the benchmark database")?;
        sqlx::query(
            "WITH org AS (SELECT id FROM organizations ORDER BY id LIMIT 1), \
             u AS (INSERT INTO users (email, username, first_name, last_name, date_joined, \
             active_organization_id) \
             SELECT 'person' || g || '@members.example.com', 'person' || g, 'Member', \
             'Number ' || g, now(), org.id FROM generate_series(1, $1) AS g, org RETURNING id) \
             INSERT INTO memberships (organization_id, user_id, joined_at) \
             SELECT org.id, u.id, now() + u.id * interval '1 microsecond' FROM u, org",
        )
        .bind(count)
        .execute(&mut conn)
        .await
        .context("cannot seed the members")?;
        sqlx::query("VACUUM ANALYZE")
            .execute(&mut conn)
            .await
            .context("cannot analyze the seeded tables")?;
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url)
            .await
            .context("cannot open the benchmark database")?;
        let now = chrono::Utc::now().timestamp_micros();
        sqlx::query(
            "WITH RECURSIVE n(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM n WHERE g < $1) \
             INSERT INTO users (email, username, first_name, last_name, date_joined, \
             active_organization_id) \
             SELECT 'person' || g || '@members.example.com', 'person' || g, 'Member', \
             'Number ' || g, $2, (SELECT id FROM organizations ORDER BY id LIMIT 1) FROM n",
        )
        .bind(count)
        .bind(now)
        .execute(&mut conn)
        .await
        .context("cannot seed the members")?;
        sqlx::query(
            "INSERT INTO memberships (organization_id, user_id, joined_at) \
             SELECT active_organization_id, id, $1 + id FROM users \
             WHERE email LIKE 'person%@members.example.com'",
        )
        .bind(now)
        .execute(&mut conn)
        .await
        .context("cannot seed the memberships")?;
        sqlx::query("ANALYZE").execute(&mut conn).await?;
    }
    SEEDED.store(u64::try_from(count).unwrap_or(0), Ordering::Relaxed);
    Ok(())
}
