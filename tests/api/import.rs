//! `import-label-studio` with the databases Label Studio 1.23.2 itself made (its SQLite file and
//! a dump of its Postgres database), into either store, checked over gRPC: every user logs in
//! with their Label Studio password and every current API token works, while reset tokens and
//! the reset invite link stay dead; a re-run writes nothing and a dry run nothing at all.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
};

use serde_json::Value;
use sqlx::{Connection, Executor};
use tonic::Code;

use crate::{
    helpers::{Backend, TestApp, TestDb, assert_refused},
    on_both_backends,
};

const BIN: &str = env!("CARGO_BIN_EXE_label-studio-identity");
/// The Label Studio fixture with legacy tokens on.
pub const LEGACY_FIXTURE: &str = "label-studio-1.23.2";

/// Which of the fixture's Label Studio databases a test imports.
#[derive(Debug, Clone, Copy)]
pub enum Fixture {
    Sqlite,
    Postgres,
}

/// A Label Studio database ready to import from.
pub struct LabelStudio {
    pub url: String,
    /// The manifest's account of this database: users, passwords, tokens, invite tokens.
    pub manifest: Value,
    /// Keeps the loaded Postgres database (or the copied SQLite file) until the test ends.
    _keep: Option<TestDb>,
    _dir: Option<tempfile::TempDir>,
}

impl LabelStudio {
    async fn open(fixture: Fixture) -> Self {
        Self::open_set(LEGACY_FIXTURE, fixture).await
    }

    /// A database of the fixture set `name` (a folder of `shared/fixtures/`).
    pub async fn open_set(name: &str, fixture: Fixture) -> Self {
        let dir = crate::helpers::fixtures(name);
        let manifest: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("manifest.json"))
                .expect("the fixture's manifest.json (shared/ beside the clone)"),
        )
        .expect("manifest.json is JSON");
        match fixture {
            Fixture::Sqlite => Self {
                url: format!("sqlite://{}", dir.join("label_studio.sqlite3").display()),
                manifest: manifest["databases"]["sqlite"].clone(),
                _keep: None,
                _dir: None,
            },
            Fixture::Postgres => {
                // A database of its own on the test server, dropped with it.
                let db = TestDb::new(Backend::Postgres).await;
                db.execute("CREATE EXTENSION IF NOT EXISTS btree_gin").await;
                db.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm").await;
                let status = Command::new("psql")
                    .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &db.url, "-f"])
                    .arg(dir.join("label_studio.pg.sql"))
                    .stdout(Stdio::null())
                    .status()
                    .expect("psql (PostgreSQL's client) loads the fixture's dump");
                assert!(status.success(), "loading label_studio.pg.sql failed");
                Self {
                    url: db.url.clone(),
                    manifest: manifest["databases"]["postgres"].clone(),
                    _keep: Some(db),
                    _dir: None,
                }
            }
        }
    }

    /// A writable copy of the SQLite fixture, for tests that change Label Studio's data.
    async fn sqlite_copy() -> Self {
        let original = Self::open(Fixture::Sqlite).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("label_studio.sqlite3");
        // Written anew rather than copied, so it doesn't keep the fixture's read-only mode.
        let bytes =
            std::fs::read(crate::helpers::fixtures(LEGACY_FIXTURE).join("label_studio.sqlite3"))
                .expect("read the fixture");
        std::fs::write(&path, bytes).expect("copy the fixture");
        Self {
            url: format!("sqlite://{}", path.display()),
            manifest: original.manifest,
            _keep: None,
            _dir: Some(dir),
        }
    }

    fn users(&self) -> &Vec<Value> {
        self.manifest["users"].as_array().expect("users")
    }

    fn user(&self, email_stored: &str) -> &Value {
        self.users()
            .iter()
            .find(|user| user["email_stored"] == email_stored)
            .unwrap_or_else(|| panic!("{email_stored} in the manifest"))
    }

    fn token_of(&self, email_stored: &str) -> String {
        text(&self.user(email_stored)["legacy_api_token_key"])
    }
}

fn text(value: &Value) -> String {
    value.as_str().expect("a string").to_owned()
}

/// Runs the binary with the target database and nothing else from the environment.
pub fn run(db: &TestDb, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the binary")
}

pub fn import(db: &TestDb, from: &str, extra: &[&str]) -> String {
    let mut args = vec!["import-label-studio", "--from", from];
    args.extend_from_slice(extra);
    let output = run(db, &args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "import failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// (imported, skipped, conflicts) from the report's line for `label`.
pub fn counts(report: &str, label: &str) -> (usize, usize, usize) {
    let line = report
        .lines()
        .find(|line| {
            line.strip_prefix(label)
                .is_some_and(|rest| rest.starts_with("  "))
        })
        .unwrap_or_else(|| panic!("no {label:?} line in the report:\n{report}"));
    let numbers: Vec<usize> = line[label.len()..]
        .split_whitespace()
        .map(|n| n.parse().expect("a count"))
        .collect();
    (numbers[0], numbers[1], numbers[2])
}

/// Rows of every table the import writes.
async fn row_counts(db: &TestDb) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "users",
        "organizations",
        "memberships",
        "tokens",
        "label_studio_users",
        "label_studio_organizations",
    ] {
        counts.push(db.count(&format!("SELECT COUNT(*) FROM {table}")).await);
    }
    counts
}

async fn assert_nothing_written(db: &TestDb) {
    match db.backend {
        Backend::Sqlite => {
            let path = db.url.trim_start_matches("sqlite://");
            assert!(!Path::new(path).exists(), "the dry run created {path}");
        }
        Backend::Postgres => assert_eq!(
            db.count(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'"
            )
            .await,
            0,
            "the dry run created tables"
        ),
    }
}

async fn imports_and_serves(backend: Backend, fixture: Fixture) {
    let ls = LabelStudio::open(fixture).await;
    let db = TestDb::new(backend).await;

    // A dry run reports everything it would do, and writes nothing, not even the schema.
    let dry = import(&db, &ls.url, &["--dry-run"]);
    assert!(dry.contains("dry run: nothing was written"), "{dry}");
    assert_eq!(counts(&dry, "users"), (7, 0, 0), "{dry}");
    assert_nothing_written(&db).await;

    let first = import(&db, &ls.url, &[]);
    for (label, expected) in [
        ("organizations", (2, 0, 0)),
        ("users", (7, 0, 0)),
        ("api tokens", (7, 0, 0)),
        ("memberships", (7, 0, 0)),
        ("invite links", (2, 0, 0)),
    ] {
        assert_eq!(counts(&first, label), expected, "{label}: {first}");
    }
    for secret in ["admintoken12345", "pbkdf2_sha256$", "admin-pass-123"] {
        assert!(
            !first.contains(secret),
            "the report shows a secret: {first}"
        );
    }

    let app = TestApp::start(db.settings()).await;

    // Every user logs in with their Label Studio password, the address in any case; every
    // current token authenticates as its user.
    for user in ls.users() {
        let stored = text(&user["email_stored"]);
        let email = stored.to_lowercase();
        let by_token = app
            .token_login(&text(&user["legacy_api_token_key"]))
            .await
            .unwrap_or_else(|status| panic!("token of {stored}: {status:?}"));
        assert_eq!(by_token.user.unwrap().email, email);
        match user["password"].as_str() {
            Some(password) => {
                for typed in [text(&user["email_typed"]), stored.clone()] {
                    let session = app
                        .login(&typed, password)
                        .await
                        .unwrap_or_else(|status| panic!("login {typed}: {status:?}"));
                    assert_eq!(session.user.unwrap().email, email);
                    assert!(!session.session_token.is_empty());
                }
            }
            None => {
                // Label Studio's API made this user with an empty password column: no password
                // opens the account, the empty one least of all.
                for guess in ["", "nopassword", &email] {
                    assert_refused(
                        app.login(&stored, guess).await,
                        Code::Unauthenticated,
                        "INVALID_CREDENTIALS",
                    );
                }
                assert_eq!(
                    db.count(&format!(
                        "SELECT COUNT(*) FROM users \
                         WHERE email = '{email}' AND password_hash IS NULL"
                    ))
                    .await,
                    1
                );
            }
        }
        if let Some(old) = user["legacy_api_token_key_before_reset"].as_str() {
            assert_refused(
                app.token_login(old).await,
                Code::Unauthenticated,
                "TOKEN_INVALID",
            );
        }
    }

    // The admin Label Studio locks out (stored as Admin@example.com) logs in, and the first
    // login replaced the Django hash with argon2id; the password keeps working.
    let admin_hash = db
        .fetch_string("SELECT password_hash FROM users WHERE email = 'admin@example.com'")
        .await
        .expect("the admin has a password");
    assert!(admin_hash.starts_with("$argon2id$"), "{admin_hash}");
    let admin = app
        .login("Admin@Example.com", "admin-pass-123")
        .await
        .expect("the admin logs in again");
    let organization = admin.organization.expect("the admin's organization");
    assert_eq!(organization.title, "Label Studio");
    assert_eq!(organization.created_by_user_id, admin.user.unwrap().id);
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM organizations \
             WHERE title = 'Second Org' AND created_by_user_id IS NULL"
        )
        .await,
        1
    );

    // The current invite link keeps working; the one Label Studio reset stays dead.
    let admin_token = format!("Token {}", ls.token_of("Admin@example.com"));
    let current = text(&ls.manifest["invite"]["current_token"]);
    let reset_away = text(&ls.manifest["invite"]["original_token_reset_away"]);
    let link = app
        .invite_link(&admin_token)
        .await
        .expect("the admin's link");
    assert_eq!(link.token, current);
    assert_refused(
        app.register(&reset_away, "stale@example.com", "stale-password")
            .await,
        Code::PermissionDenied,
        "INVITE_INVALID",
    );
    let newcomer = app
        .register(
            &format!("/user/signup/?token={current}"),
            "newcomer@example.com",
            "newcomer-password",
        )
        .await
        .expect("registering through the current link");
    assert_eq!(newcomer.organization.unwrap().id, organization.id);

    // The removed member logs in but acts in no organization; the passwordless user, whom Label
    // Studio left without an active organization, is a member.
    assert_refused(
        app.invite_link(&format!("Token {}", ls.token_of("leaver@example.com")))
            .await,
        Code::PermissionDenied,
        "NOT_A_MEMBER",
    );
    let by_passwordless = app
        .invite_link(&format!("Token {}", ls.token_of("nopassword@example.com")))
        .await
        .expect("the passwordless user is a member");
    assert_eq!(by_passwordless.token, current);

    // Resetting the imported link kills it, as any link.
    let renewed = app
        .reset_invite_link(&admin_token)
        .await
        .expect("reset the link");
    assert_ne!(renewed.token, current);
    assert_refused(
        app.register(&current, "late@example.com", "late-password")
            .await,
        Code::PermissionDenied,
        "INVITE_INVALID",
    );

    // A second run imports nothing and revives nothing: the reset link stays dead.
    let before = row_counts(&db).await;
    let second = import(&db, &ls.url, &[]);
    for (label, expected) in [
        ("organizations", (0, 2, 0)),
        ("users", (0, 7, 0)),
        ("api tokens", (0, 7, 0)),
        ("memberships", (0, 7, 0)),
        ("invite links", (0, 2, 0)),
    ] {
        assert_eq!(counts(&second, label), expected, "{label}: {second}");
    }
    assert!(second.contains("imported by an earlier run"), "{second}");
    assert_eq!(row_counts(&db).await, before);
    assert_refused(
        app.register(&current, "later@example.com", "later-password")
            .await,
        Code::PermissionDenied,
        "INVITE_INVALID",
    );
    app.stop().await;
}

async fn imports_the_sqlite_fixture(backend: Backend) {
    imports_and_serves(backend, Fixture::Sqlite).await;
}

async fn imports_the_postgres_fixture(backend: Backend) {
    imports_and_serves(backend, Fixture::Postgres).await;
}

async fn users_whose_emails_differ_only_in_case_are_conflicts(backend: Backend) {
    let ls = LabelStudio::sqlite_copy().await;
    // Label Studio's email column is unique only as written.
    let mut conn = sqlx::SqliteConnection::connect(&ls.url).await.unwrap();
    conn.execute(
        "INSERT INTO htx_user (id, password, is_superuser, username, email, first_name, \
         last_name, is_staff, is_active, date_joined, last_activity, activity_at, phone, avatar, \
         active_organization_id) VALUES (8, '', 0, 'admin', 'ADMIN@example.com', '', '', 0, 1, \
         '2026-11-28 03:00:00', '2026-11-28 03:00:00', '2026-11-28 03:00:00', '', '', 1)",
    )
    .await
    .unwrap();
    conn.execute(
        "INSERT INTO authtoken_token (key, created, user_id) \
         VALUES ('second-admin-token', '2026-11-28 03:00:00', 8)",
    )
    .await
    .unwrap();
    conn.close().await.unwrap();
    let db = TestDb::new(backend).await;

    let report = import(&db, &ls.url, &[]);

    assert_eq!(counts(&report, "users"), (6, 0, 2), "{report}");
    assert_eq!(counts(&report, "api tokens"), (6, 2, 0), "{report}");
    assert!(report.contains("differs only in case"), "{report}");
    let app = TestApp::start(db.settings()).await;
    assert_refused(
        app.login("Admin@example.com", "admin-pass-123").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    assert_refused(
        app.token_login("second-admin-token").await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    app.login("bob@example.com", "bob-secret-99")
        .await
        .expect("the others are imported");
    app.stop().await;
}

async fn a_failed_import_leaves_nothing_behind(backend: Backend) {
    let ls = LabelStudio::open(Fixture::Sqlite).await;
    let db = TestDb::new(backend).await;
    assert!(run(&db, &["migrate"]).status.success());
    // The last rows the import writes are refused.
    match backend {
        Backend::Sqlite => {
            db.execute(
                "CREATE TRIGGER refuse_memberships BEFORE INSERT ON memberships \
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END",
            )
            .await;
        }
        Backend::Postgres => {
            db.execute(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql \
                 AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
            )
            .await;
            db.execute(
                "CREATE TRIGGER refuse_memberships BEFORE INSERT ON memberships \
                 FOR EACH ROW EXECUTE FUNCTION refuse()",
            )
            .await;
        }
    }

    let output = run(&db, &["import-label-studio", "--from", &ls.url]);

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    assert_eq!(row_counts(&db).await, vec![0; 6]);
}

on_both_backends!(
    imports_the_sqlite_fixture,
    imports_the_postgres_fixture,
    users_whose_emails_differ_only_in_case_are_conflicts,
    a_failed_import_leaves_nothing_behind,
);
