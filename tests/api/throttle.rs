//! Throttling: failures slow down further attempts per email and per client address, shared
//! through the database, checked before any hashing, and never a permanent lock-out.

use std::time::Duration;

use label_studio_identity::config::Settings;
use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    helpers::{Backend, TestApp, assert_refused, join_all, login, spawn_app_with},
    on_both_backends,
};

const PASSWORD: &str = "correct-horse";

fn strict(settings: &mut Settings) {
    settings.throttle.login_failures_per_email = 3;
    settings.throttle.base_delay_ms = 60_000;
}

/// The number of argon2 computations so far, from the metrics endpoint.
async fn hashes(app: &TestApp) -> u64 {
    let text = app.metrics().await;
    text.lines()
        .find_map(|line| line.strip_prefix("identity_argon2_computations_total "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
        .unwrap_or_else(|| panic!("no hashing counter in {text}"))
}

async fn failed_logins_throttle_the_email_before_any_hashing(backend: Backend) {
    let (app, db) = spawn_app_with(backend, strict).await;
    app.sign_up("ann@example.com", PASSWORD).await;
    for _ in 0..3 {
        assert_refused(
            app.login("ann@example.com", "wrong-password").await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
    }
    let before = hashes(&app).await;

    let refused = app.login("ann@example.com", PASSWORD).await;

    let status = assert_refused(refused, Code::ResourceExhausted, "THROTTLED");
    let retry = status
        .get_details_retry_info()
        .expect("RetryInfo")
        .retry_delay
        .expect("delay");
    assert!(
        retry >= Duration::from_secs(50) && retry <= Duration::from_secs(61),
        "{retry:?}"
    );
    assert_eq!(
        hashes(&app).await,
        before,
        "a throttled attempt spends no hashing"
    );
    // Throttled refusals are written as one aggregated row per client and window, at the
    // latest when the server stops.
    assert_eq!(
        db.count("SELECT COUNT(*) FROM audit_events WHERE reason = 'THROTTLED'")
            .await,
        0
    );
    app.stop().await;
    assert_eq!(
        db.count("SELECT COUNT(*) FROM audit_events WHERE reason = 'THROTTLED' AND count = 1")
            .await,
        1
    );
}

async fn unknown_emails_are_throttled_like_known_ones(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, strict).await;

    for _ in 0..3 {
        assert_refused(
            app.login("ghost@example.com", "wrong-password").await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
    }

    assert_refused(
        app.login("ghost@example.com", "wrong-password").await,
        Code::ResourceExhausted,
        "THROTTLED",
    );
    assert_refused(
        app.login("GHOST@example.com", "wrong-password").await,
        Code::ResourceExhausted,
        "THROTTLED",
    );
}

async fn a_success_clears_the_account_count(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, strict).await;
    app.sign_up("ann@example.com", PASSWORD).await;

    for _ in 0..2 {
        app.login("ann@example.com", "wrong-password")
            .await
            .expect_err("wrong");
    }
    app.login("ann@example.com", PASSWORD).await.expect("right");
    for _ in 0..2 {
        assert_refused(
            app.login("ann@example.com", "wrong-password").await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
    }

    app.login("ann@example.com", PASSWORD)
        .await
        .expect("not throttled: the count restarted");
}

async fn a_victim_is_slowed_never_locked_out(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, |s| {
        s.throttle.login_failures_per_email = 2;
        s.throttle.base_delay_ms = 100;
        s.throttle.max_delay_seconds = 1;
    })
    .await;
    app.sign_up("victim@example.com", PASSWORD).await;
    // An attacker keeps guessing; each admitted guess doubles the wait, up to the cap.
    for _ in 0..12 {
        let _ = app.login("victim@example.com", "attacker-guess").await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    tokio::time::sleep(Duration::from_millis(1100)).await;

    app.login("victim@example.com", PASSWORD)
        .await
        .expect("the capped wait has passed");
}

async fn parallel_guesses_cannot_slip_past_the_limit(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, strict).await;
    app.sign_up("ann@example.com", PASSWORD).await;

    let guesses: Vec<_> = (0..10)
        .map(|i| {
            let mut client = app.client.clone();
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
    let throttled = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::ResourceExhausted))
        .count();
    assert_eq!((wrong, throttled), (3, 7), "{results:?}");
}

async fn failures_from_one_address_throttle_it_across_emails(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, |s| {
        s.throttle.login_failures_per_address = 4;
        s.throttle.base_delay_ms = 60_000;
    })
    .await;

    for i in 0..4 {
        let email = format!("probe{i}@example.com");
        assert_refused(
            app.login(&email, "wrong-password").await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
    }

    assert_refused(
        app.login("fresh@example.com", "wrong-password").await,
        Code::ResourceExhausted,
        "THROTTLED",
    );
}

async fn failed_token_authentications_throttle_the_address(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, |s| {
        s.throttle.token_failures_per_address = 3;
        s.throttle.base_delay_ms = 60_000;
    })
    .await;
    let created = app.sign_up("ann@example.com", PASSWORD).await;

    for i in 0..3 {
        assert_refused(
            app.token_login(&format!("guess{i:036}")).await,
            Code::Unauthenticated,
            "TOKEN_INVALID",
        );
    }

    assert_refused(
        app.token_login("another-guess-0000000000").await,
        Code::ResourceExhausted,
        "THROTTLED",
    );
    // While blocked, even a right token is refused: the answer must not tell guesses apart.
    assert_refused(
        app.token_login(&created.api_token).await,
        Code::ResourceExhausted,
        "THROTTLED",
    );
    assert_refused(
        app.invite_link(&format!("Token {}", created.api_token))
            .await,
        Code::ResourceExhausted,
        "THROTTLED",
    );
}

async fn failed_invite_tokens_throttle_the_address(backend: Backend) {
    let (app, db) = spawn_app_with(backend, |s| {
        s.throttle.invite_failures_per_address = 3;
        s.throttle.base_delay_ms = 60_000;
    })
    .await;
    let owner = app.sign_up("owner@example.com", PASSWORD).await;
    let link = app
        .invite_link(&format!("Token {}", owner.api_token))
        .await
        .expect("link");

    for i in 0..3 {
        assert_refused(
            app.register(&format!("wrongtoken{i}"), "x@example.com", PASSWORD)
                .await,
            Code::PermissionDenied,
            "INVITE_INVALID",
        );
    }

    assert_refused(
        app.register(&link.token, "x@example.com", PASSWORD).await,
        Code::ResourceExhausted,
        "THROTTLED",
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, 1);
}

/// Settings for a server behind a gateway on 127.0.0.1 that allows `limit` failed logins per
/// client address.
fn behind_a_gateway(limit: u32) -> impl FnOnce(&mut Settings) {
    move |s| {
        s.throttle.login_failures_per_address = limit;
        s.throttle.base_delay_ms = 60_000;
        s.server.trusted_proxies = vec!["127.0.0.1".into()];
    }
}

/// A wrong login as the gateway forwards it, with this `x-forwarded-for`.
async fn forwarded_login(
    app: &TestApp,
    forwarded_for: &str,
    email: &str,
) -> Result<tonic::Response<label_studio_identity::grpc::pb::AuthenticateResponse>, tonic::Status> {
    let mut request = tonic::Request::new(login(email, "wrong-password"));
    request
        .metadata_mut()
        .insert("x-forwarded-for", forwarded_for.parse().unwrap());
    app.client.clone().authenticate(request).await
}

async fn the_client_address_comes_from_a_trusted_gateway_only(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, behind_a_gateway(2)).await;

    for i in 0..2 {
        forwarded_login(&app, "203.0.113.1", &format!("a{i}@example.com"))
            .await
            .expect_err("wrong");
    }

    assert_refused(
        forwarded_login(&app, "198.51.100.9, 203.0.113.1", "b@example.com").await,
        Code::ResourceExhausted,
        "THROTTLED",
    );
    assert_refused(
        forwarded_login(&app, "203.0.113.2", "c@example.com").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
}

/// A success never re-applies or extends its address's block: once the attacker stops and the
/// backoff ends, correct logins from that address go through, one after another.
async fn an_address_whose_attackers_stopped_returns_to_normal_after_the_backoff(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, |s| {
        s.throttle.login_failures_per_address = 3;
        s.throttle.base_delay_ms = 50;
        s.throttle.max_delay_seconds = 60;
    })
    .await;
    app.sign_up("ann@example.com", PASSWORD).await;

    // Seven failures from one address (the limit is three), each after the previous block.
    let mut failures = 0;
    while failures < 7 {
        match app
            .login(&format!("probe{failures}@example.com"), "wrong-password")
            .await
        {
            Err(status) if status.code() == Code::Unauthenticated => failures += 1,
            Err(status) if status.code() == Code::ResourceExhausted => {}
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // The last block is 50 ms × 2⁴.
    tokio::time::sleep(Duration::from_millis(900)).await;

    for _ in 0..5 {
        app.login("ann@example.com", PASSWORD)
            .await
            .expect("a correct login after the backoff, and every one after it");
    }
}

/// Correct logins in flight are not failures: many people behind one address logging in at
/// once don't trip the address's limit.
async fn simultaneous_correct_logins_from_one_address_do_not_trip_its_limit(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, |s| {
        s.throttle.login_failures_per_address = 10;
        s.throttle.base_delay_ms = 60_000;
        s.argon2.max_waiting = 200;
    })
    .await;
    for i in 0..64 {
        app.sign_up(&format!("user{i}@example.com"), PASSWORD).await;
    }

    let logins: Vec<_> = (0..64)
        .map(|i| {
            let mut client = app.client.clone();
            async move {
                client
                    .authenticate(login(&format!("user{i}@example.com"), PASSWORD))
                    .await
            }
        })
        .collect();
    let results = join_all(logins).await;

    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(refused.is_empty(), "{refused:?}");
}

/// A burst of parallel guesses from one address checks at most the limit plus the checks in
/// flight; every other one, a right token among them, is refused before its answer is known.
async fn a_burst_of_token_guesses_checks_at_most_the_limit_plus_those_in_flight(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, |s| {
        s.throttle.token_failures_per_address = 3;
        s.throttle.in_flight_per_address = 1;
        s.throttle.base_delay_ms = 60_000;
    })
    .await;
    let created = app.sign_up("ann@example.com", PASSWORD).await;

    let burst: Vec<_> = (0..61)
        .map(|i| {
            let token = if i == 30 {
                created.api_token.clone()
            } else {
                format!("guess{i:035}")
            };
            let mut client = app.client.clone();
            async move {
                let request = label_studio_identity::grpc::pb::AuthenticateRequest {
                    credentials: Some(
                        label_studio_identity::grpc::pb::authenticate_request::Credentials::Token(
                            token,
                        ),
                    ),
                };
                (i, client.authenticate(request).await)
            }
        })
        .collect();
    let results = join_all(burst).await;

    let checked = results
        .iter()
        .filter(|(_, r)| !matches!(r, Err(s) if s.code() == Code::ResourceExhausted))
        .count();
    // The right token is checked only if it is among those; otherwise it is refused like
    // the guesses.
    assert!(checked <= 3 + 1, "{checked} checked: {results:?}");
}

/// Likewise for invite tokens: parallel wrong guesses look up at most the limit plus those in
/// flight; the others are refused before any lookup.
async fn a_burst_of_invite_guesses_looks_up_at_most_the_limit_plus_those_in_flight(
    backend: Backend,
) {
    let (app, _db) = spawn_app_with(backend, |s| {
        s.throttle.invite_failures_per_address = 3;
        s.throttle.in_flight_per_address = 2;
        s.throttle.base_delay_ms = 60_000;
    })
    .await;
    app.sign_up("owner@example.com", PASSWORD).await;
    let before = crate::costs::statements_of(&app, "organization_by_invite").await;

    let burst: Vec<_> = (0..60)
        .map(|i| {
            let mut client = app.client.clone();
            async move {
                client
                    .register_with_invite(
                        label_studio_identity::grpc::pb::RegisterWithInviteRequest {
                            invite: format!("wrongtoken{i:030}"),
                            email: format!("x{i}@example.com"),
                            password: PASSWORD.into(),
                            ..Default::default()
                        },
                    )
                    .await
            }
        })
        .collect();
    let results = join_all(burst).await;

    let lookups = crate::costs::statements_of(&app, "organization_by_invite").await - before;
    assert!(lookups <= 3 + 2, "{lookups} invite lookups");
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(s) if matches!(s.code(), Code::PermissionDenied | Code::ResourceExhausted))),
        "{results:?}"
    );
}

/// Choosing API tokens is no oracle: refusals of taken (or weak) tokens count as failed token
/// guesses of the client, which is then throttled, and no refusal leaves an account behind.
async fn chosen_token_refusals_count_as_token_guesses(backend: Backend) {
    let (app, db) = spawn_app_with(backend, |s| {
        s.throttle.token_failures_per_address = 3;
        s.throttle.base_delay_ms = 60_000;
    })
    .await;
    let admin = app.sign_up("admin@example.com", PASSWORD).await;
    let other = app.sign_up("other@example.com", PASSWORD).await;
    let auth = format!("Token {}", admin.api_token);
    let create = |email: String, token: String| {
        let mut client = app.client.clone();
        let auth = auth.clone();
        async move {
            client
                .create_user(crate::helpers::with_auth(
                    label_studio_identity::grpc::pb::CreateUserRequest {
                        user_token: token,
                        ..crate::helpers::sign_up(&email, PASSWORD)
                    },
                    &auth,
                ))
                .await
        }
    };

    for (i, token) in [
        other.api_token.clone(),
        "aaaaaaa".into(),
        other.api_token.clone(),
    ]
    .into_iter()
    .enumerate()
    {
        assert_refused(
            create(format!("n{i}@example.com"), token).await,
            Code::InvalidArgument,
            "USER_TOKEN_REJECTED",
        );
    }
    assert_refused(
        create("n9@example.com".into(), other.api_token.clone()).await,
        Code::ResourceExhausted,
        "THROTTLED",
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, 2);
}

async fn a_client_rotating_forged_first_hops_is_throttled_as_its_own_address(backend: Backend) {
    let (app, db) = spawn_app_with(backend, behind_a_gateway(3)).await;
    // The attacker writes any first hops it likes; the gateway appends its real address.
    let attacker = "198.51.100.7";

    let mut answers = Vec::new();
    for i in 1..=6 {
        let forged = format!("192.0.2.{i}, 192.0.2.{}", i + 100);
        answers.push(
            forwarded_login(
                &app,
                &format!("{forged}, {attacker}"),
                &format!("p{i}@example.com"),
            )
            .await,
        );
    }
    let victim = forwarded_login(&app, "192.0.2.1", "victim@example.com").await;

    let codes: Vec<Code> = answers
        .iter()
        .map(|answer| answer.as_ref().expect_err("wrong password").code())
        .collect();
    assert_eq!(
        codes,
        [
            Code::Unauthenticated,
            Code::Unauthenticated,
            Code::Unauthenticated,
            Code::ResourceExhausted,
            Code::ResourceExhausted,
            Code::ResourceExhausted,
        ]
    );
    assert_refused(victim, Code::Unauthenticated, "INVALID_CREDENTIALS");
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM audit_events \
             WHERE client_addr LIKE '192.0.2.%' AND client_addr <> '192.0.2.1'"
        )
        .await,
        0,
        "forged hops never reach the audit trail"
    );
    assert!(
        db.count(&format!(
            "SELECT COUNT(*) FROM audit_events WHERE client_addr = '{attacker}'"
        ))
        .await
            >= 1
    );
}

async fn ipv6_clients_share_a_throttle_per_network_not_per_address(backend: Backend) {
    let (app, db) = spawn_app_with(backend, behind_a_gateway(2)).await;

    for (host, email) in [
        ("2001:db8:1:2::a", "a@example.com"),
        ("2001:db8:1:2::b", "b@example.com"),
    ] {
        assert_refused(
            forwarded_login(&app, host, email).await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
    }
    let same_network = forwarded_login(&app, "2001:db8:1:2:ffff::1", "c@example.com").await;
    let next_network = forwarded_login(&app, "2001:db8:1:3::a", "d@example.com").await;

    assert_refused(same_network, Code::ResourceExhausted, "THROTTLED");
    assert_refused(next_network, Code::Unauthenticated, "INVALID_CREDENTIALS");
    assert!(
        db.count("SELECT COUNT(*) FROM audit_events WHERE client_addr = '2001:db8:1:2::b'")
            .await
            >= 1,
        "the audit trail keeps the whole address"
    );
}

/// Whether a password check is running right now, from the metrics endpoint.
async fn hashing(app: &TestApp) -> bool {
    app.metrics().await.lines().any(|line| {
        line.strip_prefix("identity_argon2_in_flight ")
            .and_then(|value| value.trim().parse::<f64>().ok())
            .is_some_and(|running| running >= 1.0)
    })
}

/// A client that cancels its correct login while the password is being checked (a closed
/// browser tab, a client deadline) never had its password judged: the attempt is given back,
/// so cancelled logins can neither lock the account nor bring a block back.
async fn cancelled_correct_logins_never_count_against_the_email(backend: Backend) {
    let (app, db) = spawn_app_with(backend, |s| {
        s.throttle.login_failures_per_email = 3;
        s.throttle.base_delay_ms = 1_000;
        // A check that takes long enough to be cancelled in the middle of it.
        s.argon2.memory_kib = 19_456;
        s.argon2.iterations = 3;
    })
    .await;
    app.sign_up("ann@example.com", PASSWORD).await;
    let email_failures = || async {
        db.count("SELECT COALESCE(SUM(failures), 0) FROM throttle WHERE key LIKE 'login-email%'")
            .await
    };

    // More cancelled logins than the limit, no wrong password: nothing stays counted.
    for _ in 0..4 {
        cancel_mid_check(&app, "ann@example.com").await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while email_failures().await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cancelled logins still counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.login("ann@example.com", PASSWORD)
        .await
        .expect("not throttled: no password was ever wrong");

    // After a lockout has run out, a cancelled login neither brings the block back nor
    // lengthens it.
    app.sign_up("bob@example.com", PASSWORD).await;
    for _ in 0..3 {
        let _ = app.login("bob@example.com", "wrong-password").await;
    }
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    cancel_mid_check(&app, "bob@example.com").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while email_failures().await != 3 {
        assert!(tokio::time::Instant::now() < deadline, "not given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.login("bob@example.com", PASSWORD)
        .await
        .expect("the block ran out and the cancelled login put none back");
}

/// Starts a correct login and cancels it once its password is being checked.
async fn cancel_mid_check(app: &TestApp, email: &'static str) {
    let mut client = app.client.clone();
    let call = tokio::spawn(async move { client.authenticate(login(email, PASSWORD)).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !hashing(app).await {
        if call.is_finished() {
            panic!("answered before its check: {:?}", call.await);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the check never started"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Admitted and being checked: the client goes away.
    call.abort();
    let _ = call.await;
    while hashing(app).await {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

on_both_backends!(
    failed_logins_throttle_the_email_before_any_hashing,
    unknown_emails_are_throttled_like_known_ones,
    a_success_clears_the_account_count,
    a_victim_is_slowed_never_locked_out,
    parallel_guesses_cannot_slip_past_the_limit,
    failures_from_one_address_throttle_it_across_emails,
    failed_token_authentications_throttle_the_address,
    failed_invite_tokens_throttle_the_address,
    the_client_address_comes_from_a_trusted_gateway_only,
    an_address_whose_attackers_stopped_returns_to_normal_after_the_backoff,
    simultaneous_correct_logins_from_one_address_do_not_trip_its_limit,
    a_burst_of_token_guesses_checks_at_most_the_limit_plus_those_in_flight,
    a_burst_of_invite_guesses_looks_up_at_most_the_limit_plus_those_in_flight,
    chosen_token_refusals_count_as_token_guesses,
    a_client_rotating_forged_first_hops_is_throttled_as_its_own_address,
    ipv6_clients_share_a_throttle_per_network_not_per_address,
    cancelled_correct_logins_never_count_against_the_email,
);
