//! Faults: Postgres going away and coming back, a server killed mid-write, and two replicas
//! sharing one database.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use label_studio_identity::grpc::{SERVICE_NAME, pb};
use sqlx::{Connection, Executor, PgConnection};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    helpers::{Backend, PrivateCluster, ServerProcess, TestApp, TestDb, join_all, login, sign_up},
    on_both_backends,
};

const PASSWORD: &str = "correct-horse";

/// Postgres stopped under load: calls fail fast with UNAVAILABLE and health turns NOT_SERVING;
/// Postgres back: the same process serves again within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_going_away_and_back_needs_no_restart() {
    let cluster = PrivateCluster::start();
    let mut admin = PgConnection::connect(&format!("{}/postgres", cluster.base_url()))
        .await
        .unwrap();
    admin.execute("CREATE DATABASE identity").await.unwrap();
    drop(admin);
    let db_url = format!("{}/identity", cluster.base_url());
    let mut settings = TestDb::new(Backend::Sqlite).await.settings();
    settings.database.url = Some(db_url.into());
    settings.database.acquire_timeout_ms = 1_000;
    let app = TestApp::start(settings).await;
    let created = app.sign_up("ann@example.com", PASSWORD).await;

    // Token checks keep running the whole time, each with a 3 s deadline.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let client = app.client.clone();
        let token = created.api_token.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let mut request = tonic::Request::new(pb::AuthenticateRequest {
                    credentials: Some(pb::authenticate_request::Credentials::Token(token.clone())),
                });
                request.set_timeout(Duration::from_secs(3));
                let started = Instant::now();
                let result = client.clone().authenticate(request).await;
                outcomes.push((result.map(drop).map_err(|s| s.code()), started.elapsed()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outcomes
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    cluster.pause();
    let went_away = Instant::now();
    let mut not_serving = false;
    while went_away.elapsed() < Duration::from_secs(15) {
        if app.health(SERVICE_NAME).await.ok() == Some(ServingStatus::NotServing as i32) {
            not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(not_serving, "health did not turn NOT_SERVING");
    let refused = app
        .client
        .clone()
        .create_user(sign_up("bob@example.com", PASSWORD))
        .await
        .expect_err("no database");
    assert_eq!(refused.code(), Code::Unavailable);
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.resume();
    let came_back = Instant::now();
    while app.health(SERVICE_NAME).await.ok() != Some(ServingStatus::Serving as i32) {
        assert!(
            came_back.elapsed() < Duration::from_secs(10),
            "not SERVING again within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.token_login(&created.api_token)
        .await
        .expect("serves again");
    app.sign_up("bob@example.com", PASSWORD).await;
    stop.store(true, Ordering::Relaxed);
    let outcomes = load.await.unwrap();

    let failures: Vec<_> = outcomes.iter().filter(|(r, _)| r.is_err()).collect();
    assert!(!failures.is_empty(), "the outage was seen");
    for (result, took) in &outcomes {
        if let Err(code) = result {
            assert_eq!(*code, Code::Unavailable, "{outcomes:?}");
        }
        assert!(
            *took < Duration::from_millis(2_900),
            "a call hung for {took:?}"
        );
    }
    app.stop().await;
}

/// Killed in the middle of a flood of signups, a server leaves no half-made account.
async fn a_server_killed_mid_write_leaves_nothing_half_made(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut server = ServerProcess::start(&db, &[], &[]);
    server.wait_serving().await;
    let app = server.client().await;
    let signups: Vec<_> = (0..60)
        .map(|i| {
            let mut client = app.client.clone();
            async move {
                client
                    .create_user(sign_up(&format!("user{i}@example.com"), PASSWORD))
                    .await
            }
        })
        .collect();
    let flood = tokio::spawn(join_all(signups));

    tokio::time::sleep(Duration::from_millis(40)).await;
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
    let _ = flood.await;

    let users = db.count("SELECT COUNT(*) FROM users").await;
    assert!(
        users < 60,
        "the kill came too late to test anything ({users} users)"
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM memberships").await, users);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tokens WHERE kind = 'api'")
            .await,
        users
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tokens WHERE kind = 'session'")
            .await,
        users
    );
    assert!(db.count("SELECT COUNT(*) FROM organizations").await <= 1);
    let mut again = ServerProcess::start(&db, &[], &[]);
    again.wait_serving().await;
}

/// Failures counted on one replica slow the account down on the other, and parallel guesses
/// spread over both replicas get no more tries than the limit.
async fn two_replicas_share_one_throttle(backend: Backend) {
    let db = TestDb::new(backend).await;
    let env = [
        ("IDENTITY_THROTTLE__LOGIN_FAILURES_PER_EMAIL", "4"),
        ("IDENTITY_THROTTLE__BASE_DELAY_MS", "60000"),
    ];
    let mut a = ServerProcess::start(&db, &[], &env);
    let mut b = ServerProcess::start(&db, &[], &env);
    a.wait_serving().await;
    b.wait_serving().await;
    let (a, b) = (a.client().await, b.client().await);
    a.sign_up("ann@example.com", PASSWORD).await;

    let guesses: Vec<_> = (0..12)
        .map(|i| {
            let mut client = if i % 2 == 0 {
                a.client.clone()
            } else {
                b.client.clone()
            };
            async move {
                client
                    .authenticate(login("ann@example.com", &format!("guess-{i:04}")))
                    .await
            }
        })
        .collect();
    let results = join_all(guesses).await;

    let wrong = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::Unauthenticated))
        .count();
    assert_eq!(wrong, 4, "{results:?}");
    for replica in [&a, &b] {
        let status = replica
            .login("ann@example.com", PASSWORD)
            .await
            .expect_err("throttled everywhere");
        assert_eq!(status.code(), Code::ResourceExhausted);
    }
}

/// Another writer holding SQLite's lock makes calls wait, then answer UNAVAILABLE with
/// RetryInfo, never INTERNAL, and within the caller's deadline when it sets one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_sqlite_database_answers_unavailable_in_time() {
    use sqlx::SqliteConnection;
    let (app, db) = crate::helpers::spawn_app_with(Backend::Sqlite, |s| {
        s.database.acquire_timeout_ms = 500;
    })
    .await;
    app.sign_up("ann@example.com", PASSWORD).await;
    let mut writer = SqliteConnection::connect(&db.url).await.unwrap();
    writer.execute("BEGIN IMMEDIATE").await.unwrap();
    writer
        .execute("UPDATE users SET first_name = 'held'")
        .await
        .unwrap();

    let mut within_deadline = tonic::Request::new(sign_up("bob@example.com", PASSWORD));
    within_deadline.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let signup = app.client.clone().create_user(within_deadline).await;
    let signup_took = started.elapsed();
    let started = Instant::now();
    let login = app.login("ann@example.com", PASSWORD).await;
    let login_took = started.elapsed();

    for (call, took, limit) in [
        (signup.map(drop), signup_took, Duration::from_millis(700)),
        (login.map(drop), login_took, Duration::from_millis(1500)),
    ] {
        let status = call.expect_err("the database is locked");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            tonic_types::StatusExt::get_details_retry_info(&status).is_some(),
            "{status:?}"
        );
        assert!(took < limit, "answered after {took:?}");
    }

    writer.execute("ROLLBACK").await.unwrap();
    app.login("ann@example.com", PASSWORD)
        .await
        .expect("the lock is gone");
    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, 1);
}

on_both_backends!(
    a_server_killed_mid_write_leaves_nothing_half_made,
    two_replicas_share_one_throttle
);
