//! `Authenticate` and `Logout`: passwords start sessions, tokens start none, failures look alike.

use label_studio_identity::grpc::pb;
use tonic::{Code, Request, metadata::MetadataValue};

use crate::{
    helpers::{
        Backend, TestApp, TestDb, assert_refused, login, spawn_app, spawn_app_with, with_auth,
    },
    on_both_backends,
};

const PASSWORD: &str = "correct-horse";

async fn a_password_login_starts_a_session(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    let created = app.sign_up("ann@example.com", PASSWORD).await;

    let logged_in = app.login("ann@example.com", PASSWORD).await.expect("login");

    assert_eq!(logged_in.user, created.user);
    assert_eq!(logged_in.organization, created.organization);
    assert_eq!(logged_in.session_token.len(), 64);
    assert_ne!(logged_in.session_token, created.session_token);
    assert!(logged_in.session_expires_at.is_some());
    let link = app
        .invite_link(&format!("Bearer {}", logged_in.session_token))
        .await
        .expect("the session identifies the caller");
    assert!(!link.token.is_empty());
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tokens WHERE kind = 'session'")
            .await,
        2
    );
}

async fn unknown_emails_wrong_passwords_and_inactive_users_fail_alike(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    app.sign_up("ann@example.com", PASSWORD).await;
    app.sign_up("gone@example.com", PASSWORD).await;
    db.execute("UPDATE users SET is_active = FALSE WHERE email = 'gone@example.com'")
        .await;

    let failures = [
        app.login("nobody@example.com", PASSWORD).await,
        app.login("ann@example.com", "wrong-password").await,
        app.login("gone@example.com", PASSWORD).await,
        app.login("not-an-email", PASSWORD).await,
        app.login("ann@example.com", "short").await,
    ];

    let statuses: Vec<_> = failures
        .into_iter()
        .map(|r| assert_refused(r, Code::Unauthenticated, "INVALID_CREDENTIALS"))
        .collect();
    assert!(
        statuses
            .iter()
            .all(|s| s.message() == statuses[0].message())
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tokens WHERE kind = 'session'")
            .await,
        2
    );
}

async fn a_token_login_accepts_api_and_session_tokens_and_starts_nothing(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    let created = app.sign_up("ann@example.com", PASSWORD).await;
    let sessions = db
        .count("SELECT COUNT(*) FROM tokens WHERE kind = 'session'")
        .await;

    let by_api = app
        .token_login(&created.api_token)
        .await
        .expect("api token");
    let by_session = app
        .token_login(&created.session_token)
        .await
        .expect("session");
    let unknown = app
        .token_login("0123456789abcdef0123456789abcdef01234567")
        .await;
    let empty = app.token_login("").await;

    for response in [&by_api, &by_session] {
        assert_eq!(response.user, created.user);
        assert!(response.session_token.is_empty());
        assert!(response.session_expires_at.is_none());
    }
    assert_refused(unknown, Code::Unauthenticated, "TOKEN_INVALID");
    assert_refused(empty, Code::Unauthenticated, "TOKEN_INVALID");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tokens WHERE kind = 'session'")
            .await,
        sessions
    );
}

async fn an_expired_session_is_refused(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, |s| s.session.ttl_seconds = 1).await;
    let created = app.sign_up("ann@example.com", PASSWORD).await;
    app.token_login(&created.session_token)
        .await
        .expect("live session");

    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    assert_refused(
        app.token_login(&created.session_token).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    assert_refused(
        app.invite_link(&format!("Bearer {}", created.session_token))
            .await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    app.token_login(&created.api_token)
        .await
        .expect("API tokens do not expire");
}

async fn logout_ends_the_session_in_the_metadata(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let created = app.sign_up("ann@example.com", PASSWORD).await;
    let other = app.login("ann@example.com", PASSWORD).await.expect("login");
    let bearer = format!("Bearer {}", created.session_token);

    app.client
        .clone()
        .logout(with_auth(pb::LogoutRequest {}, &bearer))
        .await
        .expect("logout");

    assert_refused(
        app.token_login(&created.session_token).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    assert_refused(
        app.client
            .clone()
            .logout(with_auth(pb::LogoutRequest {}, &bearer))
            .await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    app.token_login(&other.session_token)
        .await
        .expect("other sessions live on");
    app.token_login(&created.api_token)
        .await
        .expect("the API token lives on");
}

async fn logout_needs_a_session_token(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let created = app.sign_up("ann@example.com", PASSWORD).await;

    let without = app.client.clone().logout(pb::LogoutRequest {}).await;
    let with_api_token = app
        .client
        .clone()
        .logout(with_auth(
            pb::LogoutRequest {},
            &format!("Token {}", created.api_token),
        ))
        .await;

    assert_refused(without, Code::Unauthenticated, "CREDENTIALS_MISSING");
    assert_refused(with_api_token, Code::FailedPrecondition, "SESSION_REQUIRED");
}

async fn credentials_travel_in_any_accepted_metadata_form(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let created = app.sign_up("ann@example.com", PASSWORD).await;
    let token = &created.api_token;

    for authorization in [
        format!("Token {token}"),
        format!("token {token}"),
        format!("TOKEN {token}"),
    ] {
        app.invite_link(&authorization).await.expect(&authorization);
    }
    app.invite_link(&format!("bearer {}", created.session_token))
        .await
        .expect("bearer");
    let mut request = Request::new(pb::GetInviteLinkRequest {});
    request.metadata_mut().insert(
        "x-api-key",
        MetadataValue::try_from(token.as_str()).unwrap(),
    );
    app.client
        .clone()
        .get_invite_link(request)
        .await
        .expect("x-api-key");

    // A session token is not an API token, and the other way round.
    assert_refused(
        app.invite_link(&format!("Token {}", created.session_token))
            .await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    assert_refused(
        app.invite_link(&format!("Bearer {token}")).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    assert_refused(
        app.invite_link(&format!("Basic {token}")).await,
        Code::Unauthenticated,
        "CREDENTIALS_MALFORMED",
    );
    assert_refused(
        app.client
            .clone()
            .get_invite_link(pb::GetInviteLinkRequest {})
            .await,
        Code::Unauthenticated,
        "CREDENTIALS_MISSING",
    );
}

async fn a_login_rehashes_a_password_made_with_other_parameters(backend: Backend) {
    let db = TestDb::new(backend).await;
    let old = TestApp::start(db.settings()).await;
    old.sign_up("ann@example.com", PASSWORD).await;
    old.stop().await;
    let before = db
        .fetch_string("SELECT password_hash FROM users")
        .await
        .unwrap();
    assert!(before.contains("m=64,t=1,p=1"), "{before}");
    let mut settings = db.settings();
    settings.argon2.memory_kib = 128;
    settings.argon2.iterations = 2;
    let app = TestApp::start(settings).await;

    app.login("ann@example.com", PASSWORD)
        .await
        .expect("login with the old hash");

    let after = db
        .fetch_string("SELECT password_hash FROM users")
        .await
        .unwrap();
    assert!(
        after.starts_with("$argon2id$v=19$m=128,t=2,p=1$"),
        "{after}"
    );
    app.login("ann@example.com", PASSWORD)
        .await
        .expect("login with the new hash");
    assert_refused(
        app.login("ann@example.com", "wrong-password").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
}

/// Concurrent logins to one account whose hash is stale all rehash at once: on Postgres, two
/// shared row locks both upgrading to rewrite the hash used to deadlock, and one login was
/// answered INTERNAL. Every correct login succeeds.
async fn concurrent_logins_that_rehash_one_account_all_succeed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let old = TestApp::start(db.settings()).await;
    let emails: Vec<String> = (0..8).map(|i| format!("user{i}@example.com")).collect();
    for email in &emails {
        old.sign_up(email, PASSWORD).await;
    }
    old.stop().await;
    let mut settings = db.settings();
    settings.argon2.memory_kib = 128;
    settings.argon2.iterations = 2;
    // Logins in flight count toward the email's limit until they succeed: room for eight.
    settings.throttle.login_failures_per_email = 20;
    let app = TestApp::start(settings).await;

    for email in &emails {
        let logins = (0..8).map(|_| {
            let mut client = app.client.clone();
            let email = email.clone();
            async move {
                for _ in 0..4 {
                    client
                        .authenticate(login(&email, PASSWORD))
                        .await
                        .expect("a correct login");
                }
            }
        });
        crate::helpers::join_all(logins).await;
    }
}

async fn an_authenticate_without_credentials_is_an_invalid_argument(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;

    let result = app
        .client
        .clone()
        .authenticate(pb::AuthenticateRequest { credentials: None })
        .await;

    assert_refused(result, Code::InvalidArgument, "CREDENTIALS_REQUIRED");
}

/// Label Studio's CLI and its reset set passwords of any length: an imported account whose
/// password is shorter than the signup rules allow still logs in with it (the 8 to 128 rule
/// applies when a password is set), and its hash is replaced like any imported one.
async fn an_imported_password_shorter_than_the_rules_still_logs_in(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    app.sign_up("ann@example.com", PASSWORD).await;
    let hash = crate::helpers::django_pbkdf2("abc", 1_000);
    db.execute(&format!(
        "UPDATE users SET password_hash = '{hash}' WHERE email = 'ann@example.com'"
    ))
    .await;

    app.login("ann@example.com", "abc")
        .await
        .expect("the short imported password");

    let after = db
        .fetch_string("SELECT password_hash FROM users")
        .await
        .unwrap();
    assert!(after.starts_with("$argon2id$"), "{after}");
    app.login("ann@example.com", "abc")
        .await
        .expect("the short password against its new hash");
    assert_refused(
        app.login("ann@example.com", "abd").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    assert_refused(
        app.login("ann@example.com", "").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
}

/// A session ends after a stretch without use (Label Studio's MAX_TIME_BETWEEN_ACTIVITY), while
/// one in use lives on: its last use is recorded now and then, not on every check.
async fn a_session_unused_for_too_long_has_ended(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, |s| s.session.max_idle_seconds = 2).await;
    app.sign_up("ann@example.com", PASSWORD).await;
    let session = app
        .login("ann@example.com", PASSWORD)
        .await
        .unwrap()
        .session_token;

    let started = std::time::Instant::now();
    let mut checks = 0;
    while started.elapsed() < std::time::Duration::from_millis(3500) {
        app.token_login(&session)
            .await
            .expect("a session in use lives past the idle limit");
        checks += 1;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(2300)).await;

    assert_refused(
        app.token_login(&session).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    // The last use was written far fewer times than the session was checked.
    let writes = crate::costs::statements_of(&app, "touch_session").await;
    assert!(
        writes >= 2 && writes * 2 < checks,
        "{writes} writes for {checks} checks"
    );
}

on_both_backends!(
    a_session_unused_for_too_long_has_ended,
    an_imported_password_shorter_than_the_rules_still_logs_in,
    a_password_login_starts_a_session,
    unknown_emails_wrong_passwords_and_inactive_users_fail_alike,
    a_token_login_accepts_api_and_session_tokens_and_starts_nothing,
    an_expired_session_is_refused,
    logout_ends_the_session_in_the_metadata,
    logout_needs_a_session_token,
    credentials_travel_in_any_accepted_metadata_form,
    a_login_rehashes_a_password_made_with_other_parameters,
    concurrent_logins_that_rehash_one_account_all_succeed,
    an_authenticate_without_credentials_is_an_invalid_argument,
);
