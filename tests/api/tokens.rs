//! `ResetApiToken`: a new token shown once, the old one dead at once.

use label_studio_identity::grpc::pb;
use tonic::Code;

use crate::{
    helpers::{Backend, assert_refused, spawn_app, with_auth},
    on_both_backends,
};

const PASSWORD: &str = "correct-horse";

async fn resetting_the_api_token_kills_the_old_one_at_once(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    let created = app.sign_up("ann@example.com", PASSWORD).await;

    let reset = app
        .client
        .clone()
        .reset_api_token(with_auth(
            pb::ResetApiTokenRequest {},
            &format!("Token {}", created.api_token),
        ))
        .await
        .expect("reset")
        .into_inner();

    assert_eq!(reset.api_token.len(), 40);
    assert_ne!(reset.api_token, created.api_token);
    assert_refused(
        app.token_login(&created.api_token).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    let who = app
        .token_login(&reset.api_token)
        .await
        .expect("new token works");
    assert_eq!(who.user, created.user);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tokens WHERE kind = 'api'")
            .await,
        1
    );
}

async fn a_session_may_reset_the_api_token(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let created = app.sign_up("ann@example.com", PASSWORD).await;

    let reset = app
        .client
        .clone()
        .reset_api_token(with_auth(
            pb::ResetApiTokenRequest {},
            &format!("Bearer {}", created.session_token),
        ))
        .await
        .expect("reset")
        .into_inner();

    app.token_login(&reset.api_token)
        .await
        .expect("new token works");
    app.token_login(&created.session_token)
        .await
        .expect("the session lives on");
}

async fn tokens_are_stored_only_as_hashes(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    let created = app.sign_up("ann@example.com", PASSWORD).await;

    let stored = db
        .count(&format!(
            "SELECT COUNT(*) FROM tokens WHERE token_hash IN ('{}', '{}')",
            created.api_token, created.session_token
        ))
        .await;

    assert_eq!(stored, 0);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tokens WHERE length(token_hash) = 64")
            .await,
        2
    );
    let hash = db
        .fetch_string("SELECT password_hash FROM users")
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$") && !hash.contains(PASSWORD));
}

async fn expired_sessions_and_stale_throttle_rows_are_purged(backend: Backend) {
    let (app, db) = crate::helpers::spawn_app_with(backend, |s| s.session.ttl_seconds = 1).await;
    let created = app.sign_up("ann@example.com", PASSWORD).await;
    let _ = app.login("ann@example.com", "wrong-password").await;
    let store = label_studio_identity::store::connect(&db.settings())
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let now = chrono::Utc::now();

    let removed = store
        .purge(&label_studio_identity::store::PurgeBefore {
            now,
            idle_since: now - chrono::Duration::days(5),
            throttle_since: now + chrono::Duration::days(1),
            audit_since: now - chrono::Duration::days(400),
        })
        .await
        .unwrap();

    assert!(removed >= 3, "{removed}");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tokens WHERE kind = 'session'")
            .await,
        0
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM throttle").await, 0);
    app.token_login(&created.api_token)
        .await
        .expect("API tokens stay");
}

on_both_backends!(
    expired_sessions_and_stale_throttle_rows_are_purged,
    resetting_the_api_token_kills_the_old_one_at_once,
    a_session_may_reset_the_api_token,
    tokens_are_stored_only_as_hashes,
);
