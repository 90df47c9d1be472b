//! Bounded hashing under floods: excess work is refused fast, memory stays bounded, and token
//! checks don't queue behind password hashing.

use std::time::{Duration, Instant};

use tonic::{Code, Request};

use crate::{
    helpers::{Backend, ServerProcess, TestDb, join_all, login, spawn_app_with},
    on_both_backends,
};

const PASSWORD: &str = "correct-horse";

/// Work beyond the queue is refused at once with RESOURCE_EXHAUSTED and RetryInfo, and so is
/// work whose deadline the queue would overrun.
async fn a_full_hashing_queue_refuses_fast(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, |s| {
        // About a tenth of a second per hash, so the flood arrives while the queue is full.
        s.argon2.memory_kib = 32 * 1024;
        s.argon2.iterations = 6;
        s.argon2.max_concurrent = 1;
        s.argon2.max_waiting = 2;
        s.throttle.login_failures_per_email = 10_000;
        s.throttle.login_failures_per_address = 10_000;
    })
    .await;
    app.sign_up("ann@example.com", PASSWORD).await;

    let flood: Vec<_> = (0..20)
        .map(|_| {
            let mut client = app.client.clone();
            async move {
                let started = Instant::now();
                let result = client
                    .authenticate(login("ann@example.com", "wrong-password"))
                    .await;
                (result, started.elapsed())
            }
        })
        .collect();
    let results = join_all(flood).await;

    let overloaded: Vec<_> = results
        .iter()
        .filter(|(r, _)| matches!(r, Err(s) if s.code() == Code::ResourceExhausted))
        .collect();
    // One runs and two wait; nearly all the rest arrive while they do.
    assert!(overloaded.len() >= 12, "{} refused of 20", overloaded.len());
    for (result, took) in &overloaded {
        let status = result.as_ref().unwrap_err();
        assert_eq!(crate::helpers::reason(status), "OVERLOADED");
        assert!(tonic_types::StatusExt::get_details_retry_info(status).is_some());
        assert!(
            *took < Duration::from_millis(500),
            "refused only after {took:?}"
        );
    }

    // A deadline the queue can't meet is refused at once instead of waiting for it to pass.
    let busy: Vec<_> = (0..3)
        .map(|_| {
            let mut client = app.client.clone();
            async move {
                client
                    .authenticate(login("ann@example.com", "wrong-password"))
                    .await
            }
        })
        .collect();
    let busy = tokio::spawn(join_all(busy));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut hurried = Request::new(login("ann@example.com", PASSWORD));
    hurried.set_timeout(Duration::from_millis(30));
    let started = Instant::now();
    let refused = app
        .client
        .clone()
        .authenticate(hurried)
        .await
        .expect_err("no time to hash");
    assert!(
        matches!(
            refused.code(),
            Code::ResourceExhausted | Code::DeadlineExceeded
        ),
        "{refused:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    let _ = busy.await;
}

/// Token checks, invite links and health answer promptly while password logins saturate the
/// hashing pool.
async fn token_checks_do_not_queue_behind_hashing(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, |s| {
        s.argon2.memory_kib = 32 * 1024;
        s.argon2.iterations = 4;
        s.argon2.max_concurrent = 2;
        s.argon2.max_waiting = 1_000;
        s.throttle.login_failures_per_email = 100_000;
        s.throttle.login_failures_per_address = 100_000;
    })
    .await;
    let created = app.sign_up("ann@example.com", PASSWORD).await;
    // One hash's duration, to compare with.
    let started = Instant::now();
    let _ = app.login("ann@example.com", "wrong-password").await;
    let one_hash = started.elapsed();

    let flood: Vec<_> = (0..60)
        .map(|_| {
            let mut client = app.client.clone();
            async move {
                client
                    .authenticate(login("ann@example.com", "wrong-password"))
                    .await
            }
        })
        .collect();
    let flood = tokio::spawn(join_all(flood));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut during = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        app.token_login(&created.api_token)
            .await
            .expect("token check");
        app.invite_link(&format!("Token {}", created.api_token))
            .await
            .expect("invite link");
        assert_eq!(app.health("").await.ok(), Some(1));
        during.push(started.elapsed());
    }
    let still_flooding = !flood.is_finished();
    let _ = flood.await;

    during.sort();
    let median = during[during.len() / 2];
    assert!(still_flooding, "the flood ended before the checks");
    // Queued behind 60 hashes on 2 slots, a check would wait many hashes; not queued, it takes
    // a small fraction of one.
    assert!(
        median < one_hash / 2,
        "median token check {median:?} vs one hash {one_hash:?}"
    );
}

/// 300 concurrent password logins keep the server's memory under hashing concurrency ×
/// argon2 memory plus a constant.
async fn a_login_flood_keeps_memory_bounded(backend: Backend) {
    let db = TestDb::new(backend).await;
    let memory_kib = 32 * 1024;
    let mut server = ServerProcess::start(
        &db,
        &[],
        &[
            ("IDENTITY_ARGON2__MEMORY_KIB", &memory_kib.to_string()),
            ("IDENTITY_ARGON2__ITERATIONS", "1"),
            ("IDENTITY_ARGON2__MAX_CONCURRENT", "2"),
            ("IDENTITY_ARGON2__MAX_WAITING", "1000"),
            ("IDENTITY_THROTTLE__LOGIN_FAILURES_PER_EMAIL", "100000"),
            ("IDENTITY_THROTTLE__LOGIN_FAILURES_PER_ADDRESS", "100000"),
        ],
    );
    server.wait_serving().await;
    let app = server.client().await;
    app.sign_up("ann@example.com", PASSWORD).await;

    let flood: Vec<_> = (0..300)
        .map(|i| {
            let mut client = app.client.clone();
            async move {
                let email = if i % 2 == 0 {
                    "ann@example.com".to_owned()
                } else {
                    format!("nobody{i}@example.com")
                };
                client.authenticate(login(&email, "wrong-password")).await
            }
        })
        .collect();
    let results = join_all(flood).await;

    let unexpected: Vec<_> = results
        .iter()
        .filter(|r| !matches!(r, Err(s) if s.code() == Code::Unauthenticated))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let bound_kib = 2 * memory_kib + 64 * 1024;
    assert!(
        peak_kib <= bound_kib,
        "peak RSS {peak_kib} KiB over {bound_kib} KiB"
    );
}

on_both_backends!(
    a_full_hashing_queue_refuses_fast,
    token_checks_do_not_queue_behind_hashing,
    a_login_flood_keeps_memory_bounded,
);
