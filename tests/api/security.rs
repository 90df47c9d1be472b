//! Enumeration-proof logins, the audit trail, and secrets kept out of every log and table.

use std::{process::Stdio, time::Instant};

use label_studio_identity::grpc::pb;
use tonic::Code;

use crate::{
    helpers::{
        Backend, ServerProcess, TestDb, assert_refused, free_port, spawn_app_with, with_auth,
    },
    on_both_backends,
};

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// A login's time tells nothing of the account: an unknown email, a wrong password on a hash
/// with the current parameters, on one with older, cheaper parameters, and on an imported
/// Label Studio PBKDF2 hash (costlier than argon2 here) all take the same time, since every
/// check is padded to the costliest stored hash.
async fn unknown_emails_cost_the_same_as_wrong_passwords(backend: Backend) {
    use label_studio_identity::{
        config::Argon2Settings, domain::Password, password::PasswordHasher,
    };

    let production = |s: &mut label_studio_identity::config::Settings| {
        // Production parameters: the hash, as in real use, dominates each call.
        s.argon2.memory_kib = 19_456;
        s.argon2.iterations = 2;
        s.throttle.login_failures_per_email = 1_000;
        s.throttle.login_failures_per_address = 100_000;
    };
    let (app, db) = spawn_app_with(backend, production).await;
    for email in ["known", "stale", "imported"] {
        app.sign_up(&format!("{email}@example.com"), "correct-horse")
            .await;
    }
    let stale = PasswordHasher::new(&Argon2Settings {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
        max_concurrent: 1,
        max_waiting: 1,
    })
    .unwrap()
    .hash(&Password::parse("correct-horse").unwrap(), None)
    .await
    .unwrap();
    // Fewer iterations than Label Studio's million, to keep the test short; still several
    // times an argon2 check here.
    let imported = crate::helpers::django_pbkdf2("correct-horse", 150_000);
    for (email, hash) in [("stale", stale), ("imported", imported)] {
        db.execute(&format!(
            "UPDATE users SET password_hash = '{hash}' WHERE email = '{email}@example.com'"
        ))
        .await;
    }
    // A restart measures what the stored hashes cost, as a deployment does after an import.
    app.stop().await;
    let mut settings = db.settings();
    production(&mut settings);
    let app = crate::helpers::TestApp::start(settings).await;

    let login = |email: String| {
        let app = &app;
        async move {
            let started = Instant::now();
            let refused = app.login(&email, "wrong-password").await;
            assert_refused(refused, Code::Unauthenticated, "INVALID_CREDENTIALS");
            started.elapsed().as_secs_f64()
        }
    };
    // Warm up, then take the four kinds in turn and compare within each round, so that load
    // from anything else running on the machine hits all of them alike.
    for _ in 0..2 {
        login("known@example.com".into()).await;
    }

    let rounds = 25;
    let (mut unknown, mut stale, mut imported) = (Vec::new(), Vec::new(), Vec::new());
    let mut means = [0.0; 4];
    for i in 0..rounds {
        let times = [
            login(format!("nobody{i}@example.com")).await,
            login("known@example.com".into()).await,
            login("stale@example.com".into()).await,
            login("imported@example.com".into()).await,
        ];
        unknown.push(times[0] / times[1]);
        stale.push(times[2] / times[1]);
        imported.push(times[3] / times[1]);
        for (mean, time) in means.iter_mut().zip(times) {
            *mean += time / f64::from(rounds);
        }
    }

    for (kind, ratios) in [
        ("unknown email", unknown),
        ("older parameters", stale),
        ("imported PBKDF2", imported),
    ] {
        let ratio = median(ratios);
        assert!(
            (0.85..=1.15).contains(&ratio),
            "{kind}: median ratio {ratio:.3} to a wrong password on a current hash \
             (means: unknown {:.4}s, current {:.4}s, older {:.4}s, imported {:.4}s)",
            means[0],
            means[1],
            means[2],
            means[3]
        );
    }
}

/// A client flooding the service with bad tokens writes bounded audit rows and log lines: its
/// admitted failures (the limit plus those in flight) one by one, and every refusal once it is
/// throttled counted into one aggregated row per client and minute, written at the latest when
/// the server stops. No refusal goes unrecorded.
async fn a_flood_of_refusals_writes_bounded_rows_and_log_lines(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log_path = std::env::temp_dir().join(format!(
        "lsid-flood-{}-{}.txt",
        std::process::id(),
        free_port()
    ));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut server = ServerProcess::start_logging(
        &db,
        &["--log-format", "json"],
        &[
            ("IDENTITY_THROTTLE__TOKEN_FAILURES_PER_ADDRESS", "20"),
            ("IDENTITY_THROTTLE__LOGIN_FAILURES_PER_ADDRESS", "20"),
        ],
        Stdio::from(log),
    );
    server.wait_serving().await;
    let app = server.client().await;

    let flood: Vec<_> = (0..8)
        .map(|worker| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                let mut throttled = 0u64;
                for i in 0..250 {
                    let request = pb::AuthenticateRequest {
                        credentials: Some(pb::authenticate_request::Credentials::Token(format!(
                            "bad-token-{worker}-{i:06}"
                        ))),
                    };
                    match client.authenticate(request).await {
                        Err(status) if status.code() == Code::ResourceExhausted => throttled += 1,
                        Err(status) if status.code() == Code::Unauthenticated => {}
                        other => panic!("{other:?}"),
                    }
                }
                throttled
            })
        })
        .collect();
    let mut throttled = 0;
    for worker in flood {
        throttled += worker.await.unwrap();
    }
    // Wrong passwords for a new email each time: once the address is throttled, each refusal
    // is throttled on its own email's key too, and still counts into the client's one row.
    let mut client = app.client.clone();
    let mut logins_throttled = 0u64;
    for i in 0..300 {
        match client
            .authenticate(crate::helpers::login(
                &format!("someone-{i}@example.com"),
                "wrong-password",
            ))
            .await
        {
            Err(status) if status.code() == Code::ResourceExhausted => logins_throttled += 1,
            Err(status) if status.code() == Code::Unauthenticated => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(server.terminate().success());
    let login_rows = db
        .count("SELECT COUNT(*) FROM audit_events WHERE event = 'login' AND reason = 'THROTTLED'")
        .await;
    let login_counted = db
        .count(
            "SELECT COALESCE(SUM(count), 0) FROM audit_events \
             WHERE event = 'login' AND reason = 'THROTTLED'",
        )
        .await;
    assert!(logins_throttled >= 250, "{logins_throttled}");
    assert!(
        (1..=2).contains(&login_rows),
        "{login_rows} rows for throttled logins"
    );
    assert_eq!(u64::try_from(login_counted).unwrap(), logins_throttled);

    let per_request = db
        .count("SELECT COUNT(*) FROM audit_events WHERE reason = 'TOKEN_INVALID'")
        .await;
    let aggregated = db
        .count("SELECT COUNT(*) FROM audit_events WHERE event <> 'login' AND reason = 'THROTTLED'")
        .await;
    let counted = db
        .count(
            "SELECT COALESCE(SUM(count), 0) FROM audit_events \
             WHERE event <> 'login' AND reason = 'THROTTLED'",
        )
        .await;
    // 20 admitted failures plus at most 16 in flight; one aggregated row a minute.
    assert!(
        per_request <= 20 + 16,
        "{per_request} rows for single refusals"
    );
    assert!(
        (1..=2).contains(&aggregated),
        "{aggregated} aggregated rows"
    );
    assert_eq!(u64::try_from(counted).unwrap(), throttled);
    assert_eq!(u64::try_from(per_request).unwrap() + throttled, 2000);
    let text = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    let lines = text
        .lines()
        .filter(|l| l.contains("security event"))
        .count();
    assert!(
        lines <= 2 * (20 + 16 + 2),
        "{lines} security event lines for 2300 refusals"
    );
}

/// Strings that must never appear in a log line or the audit table.
struct Secrets {
    passwords: Vec<String>,
    tokens: Vec<String>,
}

async fn a_whole_scenario_leaves_no_secret_in_logs_or_the_audit_table(backend: Backend) {
    let db = TestDb::new(backend).await;
    let log_path = std::env::temp_dir().join(format!(
        "lsid-log-{}-{}.txt",
        std::process::id(),
        free_port()
    ));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut server = ServerProcess::start_logging(
        &db,
        &["--log-format", "json"],
        &[
            ("RUST_LOG", "debug"),
            ("LABEL_STUDIO_USERNAME", "boot@example.com"),
            ("LABEL_STUDIO_PASSWORD", "Bootstrap-Secret-Pw-7731"),
            ("LABEL_STUDIO_USER_TOKEN", "Boot-Secret-Token-5512"),
            ("IDENTITY_THROTTLE__LOGIN_FAILURES_PER_EMAIL", "2"),
        ],
        Stdio::from(log),
    );
    server.wait_serving().await;
    let app = server.client().await;
    let mut secrets = Secrets {
        passwords: vec![
            "Bootstrap-Secret-Pw-7731".into(),
            "Owner-Secret-Pw-1904".into(),
            "Wrong-Secret-Pw-6620".into(),
            "Invited-Secret-Pw-3318".into(),
        ],
        tokens: vec![
            "Boot-Secret-Token-5512".into(),
            "Guessed-Secret-Token-4471".into(),
            "Chosen-Secret-Token-2297".into(),
        ],
    };

    let owner = app
        .sign_up("owner@example.com", "Owner-Secret-Pw-1904")
        .await;
    secrets
        .tokens
        .extend([owner.api_token.clone(), owner.session_token.clone()]);
    let session = app
        .login("owner@example.com", "Owner-Secret-Pw-1904")
        .await
        .unwrap();
    secrets.tokens.push(session.session_token.clone());
    for _ in 0..3 {
        let _ = app.login("owner@example.com", "Wrong-Secret-Pw-6620").await;
    }
    let _ = app.token_login("Guessed-Secret-Token-4471").await;
    app.token_login("Boot-Secret-Token-5512").await.unwrap();
    let link = app
        .invite_link(&format!("Token {}", owner.api_token))
        .await
        .unwrap();
    let reset = app
        .reset_invite_link(&format!("Bearer {}", session.session_token))
        .await
        .unwrap();
    secrets
        .tokens
        .extend([link.token.clone(), reset.token.clone()]);
    let invited = app
        .register(
            &reset.invite_url,
            "invited@example.com",
            "Invited-Secret-Pw-3318",
        )
        .await
        .unwrap();
    secrets
        .tokens
        .extend([invited.api_token.clone(), invited.session_token.clone()]);
    let _ = app
        .register(
            &link.invite_url,
            "late@example.com",
            "Invited-Secret-Pw-3318",
        )
        .await;
    let admin_made = app
        .client
        .clone()
        .create_user(with_auth(
            pb::CreateUserRequest {
                user_token: "Chosen-Secret-Token-2297".into(),
                ..crate::helpers::sign_up("staff@example.com", "Owner-Secret-Pw-1904")
            },
            &format!("Token {}", owner.api_token),
        ))
        .await
        .unwrap();
    assert_eq!(
        admin_made.into_inner().api_token,
        "Chosen-Secret-Token-2297"
    );
    let new_token = app
        .client
        .clone()
        .reset_api_token(with_auth(
            pb::ResetApiTokenRequest {},
            &format!("Token {}", owner.api_token),
        ))
        .await
        .unwrap()
        .into_inner();
    secrets.tokens.push(new_token.api_token.clone());
    app.client
        .clone()
        .logout(with_auth(
            pb::LogoutRequest {},
            &format!("Bearer {}", session.session_token),
        ))
        .await
        .unwrap();
    assert!(server.terminate().success());

    let logs = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    assert!(
        logs.contains("security event"),
        "the audit lines are logged"
    );
    let audit = audit_rows(&db).await;
    for event in [
        "bootstrap",
        "signup",
        "login",
        "token_auth",
        "invite_reset",
        "registration",
        "admin_create",
        "api_token_reset",
        "logout",
    ] {
        assert!(
            audit
                .iter()
                .any(|row| row.starts_with(&format!("{event}|"))),
            "no {event} in {audit:#?}"
        );
    }
    assert!(
        audit
            .iter()
            .any(|row| row.starts_with("login|failure|INVALID_CREDENTIALS")),
        "{audit:#?}"
    );
    assert!(
        audit.iter().any(|row| row.contains("|THROTTLED|")),
        "{audit:#?}"
    );
    assert!(
        audit.iter().any(|row| row.starts_with("login|success")),
        "{audit:#?}"
    );
    let everything = audit.join("\n");
    for secret in secrets.passwords.iter().chain(&secrets.tokens) {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret is in the log: {secret}"
        );
        assert!(
            !everything.contains(secret.as_str()),
            "a secret is in the audit table: {secret}"
        );
    }
    let refused = db
        .fetch_string("SELECT event FROM audit_events LIMIT 1")
        .await;
    assert!(refused.is_some());
}

/// The audit rows as `event|outcome|reason|user|email|client` lines.
async fn audit_rows(db: &TestDb) -> Vec<String> {
    let count = db.count("SELECT COUNT(*) FROM audit_events").await;
    let mut rows = Vec::new();
    for id in 1..=count {
        let row = db
            .fetch_string(&format!(
                "SELECT event || '|' || outcome || '|' || COALESCE(reason, '') || '|' || COALESCE(CAST(user_id AS TEXT), '') \
                 || '|' || COALESCE(email, '') || '|' || client_addr FROM audit_events WHERE id = {id}"
            ))
            .await
            .unwrap_or_default();
        rows.push(row);
    }
    rows
}

async fn the_audit_table_is_append_only(backend: Backend) {
    let (app, db) = spawn_app_with(backend, |_| {}).await;
    app.sign_up("ann@example.com", "correct-horse").await;
    assert!(db.count("SELECT COUNT(*) FROM audit_events").await >= 1);

    let update = db
        .try_execute("UPDATE audit_events SET outcome = 'success'")
        .await;
    let delete = db.try_execute("DELETE FROM audit_events").await;

    assert!(update.is_err() && delete.is_err(), "{update:?} {delete:?}");
    assert!(db.count("SELECT COUNT(*) FROM audit_events").await >= 1);
}

/// Audit rows past the retention are pruned, through the one path the append-only rule
/// allows: rows older than 30 days may be deleted, younger ones never.
async fn audit_rows_past_their_retention_are_pruned(backend: Backend) {
    let (app, db) = spawn_app_with(backend, |s| s.audit.retention_days = 60).await;
    app.sign_up("ann@example.com", "correct-horse").await;
    let now = chrono::Utc::now();
    let insert = |age_days: i64, event: &str| {
        let at = now - chrono::Duration::days(age_days);
        let at = match backend {
            Backend::Sqlite => at.timestamp_micros().to_string(),
            Backend::Postgres => format!("'{}'", at.to_rfc3339()),
        };
        format!(
            "INSERT INTO audit_events (at, event, outcome, client_addr, count) \
             VALUES ({at}, '{event}', 'success', '127.0.0.1', 1)"
        )
    };
    for (age, event) in [(90, "old"), (45, "middle"), (10, "recent")] {
        db.execute(&insert(age, event)).await;
    }

    let young = db
        .try_execute("DELETE FROM audit_events WHERE event = 'recent'")
        .await;
    let store = label_studio_identity::store::connect(&db.settings())
        .await
        .unwrap();
    store
        .purge(&label_studio_identity::store::PurgeBefore {
            now,
            idle_since: now - chrono::Duration::days(5),
            throttle_since: now - chrono::Duration::days(1),
            audit_since: now - chrono::Duration::days(60),
        })
        .await
        .unwrap();

    assert!(young.is_err(), "a 10-day-old row was deleted");
    let left = |event: &'static str| {
        let db = &db;
        async move {
            db.count(&format!(
                "SELECT COUNT(*) FROM audit_events WHERE event = '{event}'"
            ))
            .await
        }
    };
    assert_eq!(
        (
            left("old").await,
            left("middle").await,
            left("recent").await
        ),
        (0, 1, 1)
    );
    db.try_execute("DELETE FROM audit_events WHERE event = 'middle'")
        .await
        .expect("rows older than 30 days may be deleted");
}

on_both_backends!(
    a_flood_of_refusals_writes_bounded_rows_and_log_lines,
    unknown_emails_cost_the_same_as_wrong_passwords,
    a_whole_scenario_leaves_no_secret_in_logs_or_the_audit_table,
    the_audit_table_is_append_only,
    audit_rows_past_their_retention_are_pruned,
);
