//! `import-label-studio` with Label Studio 1.23.2's default token settings (legacy tokens off,
//! PATs on): every live PAT refreshes here, every revoked or rotated-out one is refused, legacy
//! tokens answer LEGACY_TOKENS_DISABLED until the owner switches them on, and without the
//! secret key no PAT comes along and the report says so.

use serde_json::Value;
use tonic::Code;

use crate::{
    helpers::{Backend, TestApp, TestDb, assert_refused, fixtures, with_auth},
    import::{Fixture, LabelStudio, counts, import},
    on_both_backends,
    personal_tokens::{refresh, truncated, update_settings},
};
use label_studio_identity::grpc::pb;

const JWT_FIXTURE: &str = "label-studio-1.23.2-jwt";
const SECRET_KEY: &str = "ls-jwt-fixture-secret-key-7f3c9a1e5b2d8c4f6a0e9b7d1c3a5e";

fn data_dir() -> String {
    fixtures(JWT_FIXTURE)
        .join("ls-data-dir")
        .display()
        .to_string()
}

fn users(ls: &LabelStudio) -> Vec<Value> {
    ls.manifest["users"].as_array().expect("users").clone()
}

fn pats(user: &Value) -> Vec<(String, String)> {
    user["pats"]
        .as_array()
        .expect("pats")
        .iter()
        .map(|pat| {
            (
                pat["token"].as_str().unwrap().to_owned(),
                pat["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Imports with the key, then checks every PAT and legacy token over gRPC.
async fn imports_and_serves_pats(backend: Backend, fixture: Fixture) {
    let ls = LabelStudio::open_set(JWT_FIXTURE, fixture).await;
    let db = TestDb::new(backend).await;
    let dir = data_dir();

    let dry = import(
        &db,
        &ls.url,
        &["--dry-run", "--label-studio-data-dir", &dir],
    );
    assert_eq!(counts(&dry, "PATs"), (5, 0, 0), "{dry}");
    let report = import(&db, &ls.url, &["--label-studio-data-dir", &dir]);

    for (label, expected) in [
        ("users", (4, 0, 0)),
        ("api tokens", (4, 0, 0)),
        ("PATs", (5, 0, 0)),
        ("token settings", (1, 0, 0)),
    ] {
        assert_eq!(counts(&report, label), expected, "{label}: {report}");
    }
    assert!(!report.contains(SECRET_KEY), "the report shows the key");
    let app = TestApp::start(db.settings()).await;
    let mut owner_access = None;
    for user in users(&ls) {
        let email = user["email"].as_str().unwrap();
        for (token, state) in pats(&user) {
            assert!(
                !report.contains(truncated(&token)),
                "the report shows a PAT"
            );
            match state.as_str() {
                "live" => {
                    let access = refresh(&app, &token)
                        .await
                        .unwrap_or_else(|s| panic!("{email}'s live PAT: {s:?}"))
                        .access_token;
                    let who = app.token_login(&access).await.expect("authenticate");
                    assert_eq!(who.user.unwrap().email, email);
                    if user["is_org_owner"] == true {
                        owner_access = Some(access);
                    }
                }
                _ => {
                    assert_refused(
                        refresh(&app, &token).await,
                        Code::Unauthenticated,
                        "TOKEN_INVALID",
                    );
                }
            }
        }
        assert_refused(
            app.token_login(user["legacy_token_key"].as_str().unwrap())
                .await,
            Code::Unauthenticated,
            "LEGACY_TOKENS_DISABLED",
        );
    }
    let owner = format!("Bearer {}", owner_access.expect("the owner has a live PAT"));
    let settings = app
        .client
        .clone()
        .get_token_settings(with_auth(pb::GetTokenSettingsRequest {}, &owner))
        .await
        .expect("settings")
        .into_inner()
        .settings
        .unwrap();
    assert!(settings.api_tokens_enabled && !settings.legacy_api_tokens_enabled);
    update_settings(
        &app,
        &owner,
        pb::TokenSettings {
            legacy_api_tokens_enabled: true,
            ..settings
        },
        &["legacy_api_tokens_enabled"],
    )
    .await
    .expect("the owner switches legacy tokens on");
    for user in users(&ls) {
        app.token_login(user["legacy_token_key"].as_str().unwrap())
            .await
            .expect("legacy tokens work once switched on");
    }

    let again = import(&db, &ls.url, &["--label-studio-data-dir", &dir]);
    assert_eq!(counts(&again, "PATs"), (0, 5, 0), "{again}");
    assert_eq!(counts(&again, "users"), (0, 4, 0), "{again}");
    app.stop().await;
}

async fn imports_the_jwt_sqlite_fixture(backend: Backend) {
    imports_and_serves_pats(backend, Fixture::Sqlite).await;
}

async fn imports_the_jwt_postgres_fixture(backend: Backend) {
    imports_and_serves_pats(backend, Fixture::Postgres).await;
}

async fn without_the_secret_key_pats_stay_behind_until_a_run_with_it(backend: Backend) {
    let ls = LabelStudio::open_set(JWT_FIXTURE, Fixture::Sqlite).await;
    let db = TestDb::new(backend).await;

    let without = import(&db, &ls.url, &[]);

    assert_eq!(counts(&without, "PATs"), (0, 5, 0), "{without}");
    assert_eq!(counts(&without, "users"), (4, 0, 0), "{without}");
    assert!(
        without.contains("secret key was not given"),
        "the report says why: {without}"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM personal_access_tokens")
            .await,
        0
    );
    let with = import(&db, &ls.url, &["--label-studio-secret-key", SECRET_KEY]);
    assert_eq!(counts(&with, "PATs"), (5, 0, 0), "{with}");
    let app = TestApp::start(db.settings()).await;
    let live = users(&ls)
        .iter()
        .flat_map(pats)
        .filter(|(_, state)| state == "live")
        .count();
    assert_eq!(live, 3);
    for (token, state) in users(&ls).iter().flat_map(pats) {
        assert_eq!(
            refresh(&app, &token).await.is_ok(),
            state == "live",
            "{state}"
        );
    }
    app.stop().await;
}

async fn a_wrong_secret_key_imports_pats_that_never_refresh(backend: Backend) {
    let ls = LabelStudio::open_set(JWT_FIXTURE, Fixture::Sqlite).await;
    let db = TestDb::new(backend).await;

    import(&db, &ls.url, &["--label-studio-secret-key", "not-the-key"]);

    let app = TestApp::start(db.settings()).await;
    for (token, _) in users(&ls).iter().flat_map(pats) {
        assert_refused(
            refresh(&app, &token).await,
            Code::Unauthenticated,
            "TOKEN_INVALID",
        );
    }
    app.stop().await;
}

on_both_backends!(
    imports_the_jwt_sqlite_fixture,
    imports_the_jwt_postgres_fixture,
    without_the_secret_key_pats_stay_behind_until_a_run_with_it,
    a_wrong_secret_key_imports_pats_that_never_refresh,
);
