//! The binary as operators run it: bootstrap from flags or Label Studio's variables, start-up
//! errors, `reset-password`, `migrate` and `probe`.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tonic::Code;

use crate::{
    helpers::{
        BIN, Backend, LoginsInFlight, ServerProcess, TestApp, TestDb, assert_refused, free_port,
        run,
    },
    on_both_backends,
};

async fn bootstrap_creates_the_account_once_and_leaves_it_as_is(backend: Backend) {
    let db = TestDb::new(backend).await;
    let first_env = [
        ("LABEL_STUDIO_USERNAME", "Admin@Example.com"),
        ("LABEL_STUDIO_PASSWORD", "first-password"),
        ("LABEL_STUDIO_USER_TOKEN", "admin-token-1"),
    ];
    let mut first = ServerProcess::start(&db, &[], &first_env);
    first.wait_serving().await;
    let client = first.client().await;
    let admin = client
        .login("admin@example.com", "first-password")
        .await
        .expect("bootstrapped admin");
    assert_eq!(
        admin.organization.expect("organization").title,
        "Label Studio"
    );
    assert!(
        first.terminate().success(),
        "SIGTERM ends the server with status 0"
    );

    // The same account again, from flags this time, with another password and token.
    let mut second = ServerProcess::start(
        &db,
        &[
            "--username",
            "admin@example.com",
            "--password",
            "second-password",
            "--user-token",
            "admin-token-2",
        ],
        &[],
    );
    second.wait_serving().await;
    let client = second.client().await;

    client
        .login("admin@example.com", "first-password")
        .await
        .expect("left as it is");
    assert_refused(
        client.login("admin@example.com", "second-password").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    client
        .token_login("admin-token-1")
        .await
        .expect("first token kept");
    assert_refused(
        client.token_login("admin-token-2").await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, 1);
}

async fn two_replicas_bootstrapping_at_once_give_one_account(backend: Backend) {
    let db = TestDb::new(backend).await;
    let env = [
        ("LABEL_STUDIO_USERNAME", "admin@example.com"),
        ("LABEL_STUDIO_PASSWORD", "admin-password"),
    ];

    let mut replicas = [
        ServerProcess::start(&db, &[], &env),
        ServerProcess::start(&db, &[], &env),
    ];
    for replica in &mut replicas {
        replica.wait_serving().await;
    }

    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, 1);
    assert_eq!(db.count("SELECT COUNT(*) FROM organizations").await, 1);
    for replica in &replicas {
        replica
            .client()
            .await
            .login("admin@example.com", "admin-password")
            .await
            .expect("login on each replica");
    }
}

async fn bad_bootstrap_input_stops_the_start_with_a_clear_message(backend: Backend) {
    let db = TestDb::new(backend).await;
    let cases: [(&[(&str, &str)], &str); 5] = [
        (
            &[
                ("LABEL_STUDIO_USERNAME", "a@example.com"),
                ("LABEL_STUDIO_PASSWORD", "long-enough"),
                ("LABEL_STUDIO_USER_TOKEN", "abcd"),
            ],
            "at least 5 characters",
        ),
        (
            &[
                ("LABEL_STUDIO_USERNAME", "a@example.com"),
                ("LABEL_STUDIO_PASSWORD", "short"),
            ],
            "8 to 128 characters",
        ),
        (
            &[
                ("LABEL_STUDIO_USERNAME", "not-an-email"),
                ("LABEL_STUDIO_PASSWORD", "long-enough"),
            ],
            "LABEL_STUDIO_USERNAME",
        ),
        (
            &[("LABEL_STUDIO_USERNAME", "a@example.com")],
            "LABEL_STUDIO_PASSWORD",
        ),
        (
            &[("LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK", "perhaps")],
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK",
        ),
    ];

    for (env, expected) in cases {
        let output = run(&db, &["start", "--port", &free_port().to_string()], env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{env:?} should stop the start");
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
    }
    let short_token = run(
        &db,
        &[
            "start",
            "--username",
            "a@example.com",
            "--password",
            "long-enough",
            "--user-token",
            "abc",
        ],
        &[],
    );
    assert!(!short_token.status.success());
    assert!(String::from_utf8_lossy(&short_token.stderr).contains("LABEL_STUDIO_USER_TOKEN"));
}

async fn bare_username_and_password_variables_are_never_read(backend: Backend) {
    let db = TestDb::new(backend).await;
    let env = [
        ("USERNAME", "shell@example.com"),
        ("PASSWORD", "shell-password"),
        ("HOST", "shell-host"),
    ];

    let mut server = ServerProcess::start(&db, &[], &env);
    server.wait_serving().await;

    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, 0);
}

async fn reset_password_sets_a_new_password_and_ends_sessions(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::start(db.settings()).await;
    let created = app.sign_up("ann@example.com", "old-password").await;

    let output = run(
        &db,
        &[
            "reset-password",
            "--username",
            "Ann@Example.com",
            "--password",
            "new-password",
        ],
        &[],
    );
    let unknown = run(
        &db,
        &[
            "reset-password",
            "--username",
            "nobody@example.com",
            "--password",
            "new-password",
        ],
        &[],
    );
    let short = run(
        &db,
        &[
            "reset-password",
            "--username",
            "ann@example.com",
            "--password",
            "short",
        ],
        &[],
    );

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!unknown.status.success());
    assert!(!short.status.success());
    app.login("ann@example.com", "new-password")
        .await
        .expect("new password");
    assert_refused(
        app.login("ann@example.com", "old-password").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    assert_refused(
        app.token_login(&created.session_token).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    app.token_login(&created.api_token)
        .await
        .expect("the API token is kept");
}

async fn migrate_prepares_the_database_and_is_repeatable(backend: Backend) {
    let db = TestDb::new(backend).await;

    let first = run(&db, &["migrate"], &[]);
    let second = run(&db, &["migrate"], &[]);

    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(second.status.success());
    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, 0);
}

#[tokio::test]
async fn probe_fails_when_nothing_answers() {
    let output = Command::new(BIN)
        .args([
            "probe",
            "--addr",
            &format!("127.0.0.1:{}", free_port()),
            "--timeout",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
}

#[tokio::test]
async fn without_a_database_url_the_server_runs_on_sqlite_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["start", "--host", "127.0.0.1", "--port", &port.to_string()])
        .env_clear()
        .env("LABEL_STUDIO_BASE_DATA_DIR", dir.path())
        .env("IDENTITY_METRICS__PORT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    let serving = loop {
        let probe = Command::new(BIN)
            .args(["probe", "--addr", &addr.to_string(), "--timeout", "1"])
            .output()
            .unwrap();
        if probe.status.success() || started.elapsed() > Duration::from_secs(30) {
            break probe.status.success();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(serving);
    assert!(dir.path().join("identity.sqlite3").exists());
}

/// A login racing `reset-password` can neither undo the reset nor keep a session: a login
/// verified against the old password rehashes only the hash it verified and starts a session
/// only from a credential that is still current. Once the command has returned, the old
/// password and every session made before it are refused. Run over several rounds, since a
/// race is a matter of timing.
async fn reset_password_wins_every_race_with_logins_in_flight(backend: Backend) {
    use std::sync::Arc;

    use label_studio_identity::{
        config::Argon2Settings, domain::Password, password::PasswordHasher,
    };

    let db = TestDb::new(backend).await;
    let mut settings = db.settings();
    settings.throttle.login_failures_per_email = 100_000;
    settings.throttle.login_failures_per_address = 100_000;
    settings.throttle.token_failures_per_address = 100_000;
    let app = Arc::new(TestApp::start(settings).await);
    app.sign_up("ann@example.com", "first-password").await;
    // Older, cheaper parameters: every successful login with them also rehashes.
    let stale = PasswordHasher::new(&Argon2Settings {
        memory_kib: 32,
        iterations: 1,
        parallelism: 1,
        max_concurrent: 1,
        max_waiting: 1,
    })
    .unwrap();

    let mut raced = 0;
    for round in 0..4 {
        let old = format!("old-password-{round}");
        let new = format!("new-password-{round}");
        let hash = stale
            .hash(&Password::parse(&old).unwrap(), None)
            .await
            .unwrap();
        db.execute(&format!(
            "UPDATE users SET password_hash = '{hash}' WHERE email = 'ann@example.com'"
        ))
        .await;

        let logins = LoginsInFlight::start(&app, "ann@example.com", &old);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let reset = {
            let args = [
                "reset-password".to_owned(),
                "--username".to_owned(),
                "ann@example.com".to_owned(),
                "--password".to_owned(),
                new.clone(),
            ];
            let command = crate::helpers::command(&db, &[], &[]);
            tokio::task::spawn_blocking(move || {
                let mut command = command;
                command.args(args).output().expect("run reset-password")
            })
            .await
            .unwrap()
        };
        assert!(reset.status.success(), "{reset:?}");
        // Logins still in flight finish; none of them may leave a working session behind.
        let sessions = logins.stop().await;

        assert_refused(
            app.login("ann@example.com", &old).await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
        app.login("ann@example.com", &new)
            .await
            .unwrap_or_else(|e| panic!("round {round}: the new password works: {e:?}"));
        raced += sessions.len();
        for session in sessions {
            assert_refused(
                app.token_login(&session).await,
                Code::Unauthenticated,
                "TOKEN_INVALID",
            );
        }
    }
    assert!(
        raced > 0,
        "no login got in before a reset: nothing was raced"
    );
}

/// The bootstrap account is created before the service reports ready or serves any call, so a
/// signup racing the start can never take its email.
async fn no_call_is_served_before_the_bootstrap_account_exists(backend: Backend) {
    let db = TestDb::new(backend).await;
    let port = free_port();
    // Slow hashing makes the window between migrations and the bootstrap's commit wide.
    let mut child = crate::helpers::command(
        &db,
        &["start", "--port", &port.to_string(), "--host", "127.0.0.1"],
        &[
            ("LABEL_STUDIO_USERNAME", "boot@example.com"),
            ("LABEL_STUDIO_PASSWORD", "bootstrap-password"),
            ("IDENTITY_ARGON2__MEMORY_KIB", "65536"),
            ("IDENTITY_ARGON2__ITERATIONS", "8"),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    let app = loop {
        if let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            break TestApp::with_channel(addr, channel);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never listened"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };

    let mut answers = Vec::new();
    loop {
        let signup = app
            .client
            .clone()
            .create_user(crate::helpers::sign_up(
                "boot@example.com",
                "squatter-password",
            ))
            .await;
        let serving = app
            .health(label_studio_identity::grpc::SERVICE_NAME)
            .await
            .ok()
            == Some(tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
        answers.push(signup.map(|_| ()));
        if serving {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never served");
    }
    let _ = child.kill();
    let _ = child.wait();

    for answer in &answers {
        match answer {
            Err(status) if matches!(status.code(), Code::Unavailable | Code::AlreadyExists) => {}
            other => panic!("a signup took the bootstrap email: {other:?}"),
        }
    }
    assert!(
        answers
            .iter()
            .any(|a| matches!(a, Err(s) if s.code() == Code::Unavailable)),
        "the test raced nothing: {} answers",
        answers.len()
    );
    assert_eq!(
        db.fetch_string("SELECT username FROM users WHERE email = 'boot@example.com'")
            .await
            .as_deref(),
        Some("boot")
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, 1);
}

on_both_backends!(
    reset_password_wins_every_race_with_logins_in_flight,
    no_call_is_served_before_the_bootstrap_account_exists,
    bootstrap_creates_the_account_once_and_leaves_it_as_is,
    two_replicas_bootstrapping_at_once_give_one_account,
    bad_bootstrap_input_stops_the_start_with_a_clear_message,
    bare_username_and_password_variables_are_never_read,
    reset_password_sets_a_new_password_and_ends_sessions,
    migrate_prepares_the_database_and_is_repeatable,
);
