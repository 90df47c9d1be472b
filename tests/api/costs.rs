//! What a call costs the database: the round trips of a password login and of a token check,
//! read from the store's statement counter, so that a regression fails here.

use crate::{
    helpers::{Backend, TestApp, spawn_app},
    on_both_backends,
};

const PASSWORD: &str = "correct-horse";

/// Statements issued so far, summed over every store operation.
pub async fn statements(app: &TestApp) -> u64 {
    app.metrics()
        .await
        .lines()
        .filter(|line| line.starts_with("identity_db_statements_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|value| value as u64)
        .sum()
}

/// Statements of one operation issued so far.
pub async fn statements_of(app: &TestApp, operation: &str) -> u64 {
    let label = format!("identity_db_statements_total{{operation=\"{operation}\"}}");
    app.metrics()
        .await
        .lines()
        .find(|line| line.starts_with(&label))
        .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

async fn a_password_login_and_a_token_check_keep_their_round_trip_budget(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let created = app.sign_up("ann@example.com", PASSWORD).await;
    // Warm: the first statements of a connection may prepare more.
    app.login("ann@example.com", PASSWORD).await.unwrap();
    app.token_login(&created.api_token).await.unwrap();

    let before = statements(&app).await;
    app.login("ann@example.com", PASSWORD).await.unwrap();
    let login = statements(&app).await - before;

    let before = statements(&app).await;
    app.token_login(&created.api_token).await.unwrap();
    let api_token = statements(&app).await - before;

    let before = statements(&app).await;
    app.token_login(&created.session_token).await.unwrap();
    let session = statements(&app).await - before;

    let before = statements(&app).await;
    let _ = app.login("ann@example.com", "wrong-password").await;
    let failed_login = statements(&app).await - before;

    // Postgres: admission with the account in one statement, the outcome in another. SQLite
    // runs the same steps as short transactions of in-process statements.
    let (login_budget, failed_budget) = match backend {
        Backend::Postgres => (2, 2),
        Backend::Sqlite => (13, 11),
    };
    assert_eq!(login, login_budget, "round trips of a password login");
    assert_eq!(failed_login, failed_budget, "round trips of a failed login");
    assert_eq!(api_token, 1, "round trips of an API token check");
    assert_eq!(session, 1, "round trips of a session check");
}

on_both_backends!(a_password_login_and_a_token_check_keep_their_round_trip_budget);
