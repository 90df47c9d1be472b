//! The account page: `UpdateProfile` and `ChangePassword`.

use label_studio_identity::grpc::pb;
use prost_types::FieldMask;
use tonic::Code;

use crate::{
    helpers::{
        Backend, LoginsInFlight, assert_refused, spawn_app, spawn_app_with, violated_fields,
    },
    members::{PASSWORD, call, organization},
    on_both_backends,
};

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

async fn the_mask_names_the_fields_that_change(backend: Backend) {
    let org = organization(backend).await;
    let me = call(&org.app, &org.member.session);
    me.update_profile(pb::UpdateProfileRequest {
        first_name: "Mia".into(),
        last_name: "Wong".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    let user = me
        .update_profile(pb::UpdateProfileRequest {
            first_name: "Ignored".into(),
            last_name: String::new(),
            username: "mia.w".into(),
            update_mask: mask(&["last_name", "username"]),
        })
        .await
        .unwrap();

    assert_eq!(user.first_name, "Mia");
    assert_eq!(user.last_name, "", "a named empty field is cleared");
    assert_eq!(user.username, "mia.w");
    assert_eq!(user.email, "member@example.com");
    let seen = call(&org.app, &org.owner.api)
        .get_user(&org.member.id)
        .await
        .unwrap();
    assert_eq!(seen.user.unwrap(), user);
}

async fn an_empty_mask_changes_every_field_given(backend: Backend) {
    let org = organization(backend).await;
    let me = call(&org.app, &org.member.api);

    let user = me
        .update_profile(pb::UpdateProfileRequest {
            first_name: "  Mia ".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let unchanged = me
        .update_profile(pb::UpdateProfileRequest::default())
        .await
        .unwrap();

    assert_eq!(user.first_name, "Mia");
    assert_eq!(user.username, "member");
    assert_eq!(unchanged, user);
}

async fn the_email_cannot_change(backend: Backend) {
    let org = organization(backend).await;
    let me = call(&org.app, &org.member.api);

    let email = me
        .update_profile(pb::UpdateProfileRequest {
            first_name: "Mia".into(),
            update_mask: mask(&["first_name", "email"]),
            ..Default::default()
        })
        .await;
    let unknown = me
        .update_profile(pb::UpdateProfileRequest {
            update_mask: mask(&["password"]),
            ..Default::default()
        })
        .await;

    let status = assert_refused(email, Code::InvalidArgument, "EMAIL_READ_ONLY");
    assert_eq!(violated_fields(&status), ["update_mask"]);
    assert_refused(unknown, Code::InvalidArgument, "UPDATE_MASK_INVALID");
    assert_eq!(
        org.db
            .count("SELECT COUNT(*) FROM users WHERE first_name = 'Mia'")
            .await,
        0,
        "nothing was written"
    );
}

async fn profile_fields_follow_the_signup_rules(backend: Backend) {
    let org = organization(backend).await;
    let me = call(&org.app, &org.member.api);

    for (request, field, reason) in [
        (
            pb::UpdateProfileRequest {
                first_name: "a\u{0}b".into(),
                ..Default::default()
            },
            "first_name",
            "NAME_INVALID",
        ),
        (
            pb::UpdateProfileRequest {
                last_name: "n".repeat(257),
                ..Default::default()
            },
            "last_name",
            "NAME_INVALID",
        ),
        (
            pb::UpdateProfileRequest {
                username: "  ".into(),
                update_mask: mask(&["username"]),
                ..Default::default()
            },
            "username",
            "USERNAME_INVALID",
        ),
        (
            pb::UpdateProfileRequest {
                username: "x\ty".into(),
                ..Default::default()
            },
            "username",
            "USERNAME_INVALID",
        ),
    ] {
        let status = assert_refused(
            me.update_profile(request).await,
            Code::InvalidArgument,
            reason,
        );
        assert_eq!(violated_fields(&status), [field]);
    }
}

async fn changing_the_password_ends_every_session_and_starts_a_new_one(backend: Backend) {
    let org = organization(backend).await;
    let other_login = org.app.login("member@example.com", PASSWORD).await.unwrap();

    let changed = call(&org.app, &org.member.session)
        .change_password(PASSWORD, "a-brand-new-secret")
        .await
        .expect("changed");

    assert_eq!(changed.session_token.len(), 64);
    assert!(changed.session_expires_at.is_some());
    for session in [
        org.member.session.trim_start_matches("Bearer "),
        &other_login.session_token,
    ] {
        assert_refused(
            org.app.token_login(session).await,
            Code::Unauthenticated,
            "TOKEN_INVALID",
        );
    }
    org.app
        .token_login(&changed.session_token)
        .await
        .expect("the new session works");
    org.app
        .token_login(org.member.api.trim_start_matches("Token "))
        .await
        .expect("the API token stays");
    assert_refused(
        org.app.login("member@example.com", PASSWORD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    org.app
        .login("member@example.com", "a-brand-new-secret")
        .await
        .expect("the new password logs in");
    assert_eq!(
        org.db
            .count(&format!(
                "SELECT COUNT(*) FROM users WHERE id = {} AND credential_version = 1",
                org.member.id
            ))
            .await,
        1
    );
}

async fn a_wrong_current_password_is_refused_and_counts_toward_the_login_throttle(
    backend: Backend,
) {
    let (app, db) = spawn_app_with(backend, |s| s.throttle.login_failures_per_email = 3).await;
    let created = app.sign_up("ann@example.com", PASSWORD).await;
    let auth = format!("Token {}", created.api_token);
    let me = call(&app, &auth);

    for _ in 0..3 {
        assert_refused(
            me.change_password("not-my-password", "a-brand-new-secret")
                .await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
    }

    assert_refused(
        me.change_password(PASSWORD, "a-brand-new-secret").await,
        Code::ResourceExhausted,
        "THROTTLED",
    );
    assert_refused(
        app.login("ann@example.com", PASSWORD).await,
        Code::ResourceExhausted,
        "THROTTLED",
    );
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM audit_events WHERE event = 'password.change' \
             AND reason = 'INVALID_CREDENTIALS'"
        )
        .await,
        3
    );
}

async fn a_right_current_password_clears_the_failures_on_the_email(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    let created = app.sign_up("ann@example.com", PASSWORD).await;
    let me = format!("Token {}", created.api_token);
    let me = call(&app, &me);
    let _ = me
        .change_password("not-my-password", "a-brand-new-secret")
        .await;

    me.change_password(PASSWORD, "a-brand-new-secret")
        .await
        .unwrap();

    assert_eq!(
        db.count("SELECT COUNT(*) FROM throttle WHERE key LIKE 'login-email%'")
            .await,
        0
    );
}

async fn the_new_password_follows_the_rules_and_must_differ(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    let created = app.sign_up("ann@example.com", PASSWORD).await;
    let auth = format!("Token {}", created.api_token);
    let me = call(&app, &auth);

    let same = me.change_password(PASSWORD, PASSWORD).await;
    let short = me.change_password(PASSWORD, "short").await;
    let empty_current = me.change_password("", "a-brand-new-secret").await;

    let status = assert_refused(same, Code::InvalidArgument, "PASSWORD_UNCHANGED");
    assert_eq!(violated_fields(&status), ["new_password"]);
    let status = assert_refused(short, Code::InvalidArgument, "PASSWORD_LENGTH");
    assert_eq!(violated_fields(&status), ["new_password"]);
    let status = assert_refused(empty_current, Code::InvalidArgument, "PASSWORD_LENGTH");
    assert_eq!(violated_fields(&status), ["current_password"]);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM users WHERE credential_version = 0")
            .await,
        1
    );
    app.login("ann@example.com", PASSWORD)
        .await
        .expect("the password stayed");
}

async fn reset_password_ends_sessions_and_a_change_after_it_needs_the_new_password(
    backend: Backend,
) {
    let (app, db) = spawn_app(backend).await;
    let created = app.sign_up("ann@example.com", PASSWORD).await;
    let output = crate::helpers::run(
        &db,
        &[
            "reset-password",
            "--username",
            "ann@example.com",
            "--password",
            "reset-by-admin",
        ],
        &[],
    );
    assert!(output.status.success(), "{output:?}");

    assert_refused(
        app.token_login(&created.session_token).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    let me = format!("Token {}", created.api_token);
    assert_refused(
        call(&app, &me)
            .change_password(PASSWORD, "a-brand-new-secret")
            .await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    call(&app, &me)
        .change_password("reset-by-admin", "a-brand-new-secret")
        .await
        .expect("the reset password is the current one");
}

async fn a_password_change_leaves_no_secret_in_logs_or_the_audit_table(backend: Backend) {
    let db = crate::helpers::TestDb::new(backend).await;
    let log_path = std::env::temp_dir().join(format!(
        "lsid-profile-log-{}-{}.txt",
        std::process::id(),
        crate::helpers::free_port()
    ));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut server = crate::helpers::ServerProcess::start_logging(
        &db,
        &["--log-format", "json"],
        &[("RUST_LOG", "debug")],
        std::process::Stdio::from(log),
    );
    server.wait_serving().await;
    let app = server.client().await;
    let created = app.sign_up("ann@example.com", "Old-Secret-Pw-5150").await;
    let auth = format!("Token {}", created.api_token);
    let me = call(&app, &auth);

    let _ = me
        .change_password("Wrong-Secret-Pw-1212", "New-Secret-Pw-8080")
        .await;
    let changed = me
        .change_password("Old-Secret-Pw-5150", "New-Secret-Pw-8080")
        .await
        .unwrap();
    assert!(server.terminate().success());

    let logs = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    assert!(logs.contains("password.change"), "the events are logged");
    for secret in [
        "Old-Secret-Pw-5150",
        "Wrong-Secret-Pw-1212",
        "New-Secret-Pw-8080",
        created.api_token.as_str(),
        changed.session_token.as_str(),
    ] {
        assert!(!logs.contains(secret), "a secret is in the log: {secret}");
    }
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM audit_events WHERE coalesce(email, '') || coalesce(reason, '') \
             || client_addr || event LIKE '%Secret%'"
        )
        .await,
        0
    );
}

/// Logins with the old password racing a change can keep no session: every session made
/// before the change ends with it, and a login verified against the old password but finishing
/// after it starts none. Several rounds, since a race is a matter of timing.
async fn a_password_change_wins_every_race_with_logins_in_flight(backend: Backend) {
    use std::sync::Arc;

    let (app, _db) = spawn_app_with(backend, |s| {
        s.throttle.login_failures_per_email = 100_000;
        s.throttle.login_failures_per_address = 100_000;
        s.throttle.token_failures_per_address = 100_000;
    })
    .await;
    let app = Arc::new(app);
    let created = app.sign_up("ann@example.com", "password-round-0").await;
    let auth = format!("Token {}", created.api_token);

    let mut raced = 0;
    for round in 0..4 {
        let old = format!("password-round-{round}");
        let new = format!("password-round-{}", round + 1);
        let logins = LoginsInFlight::start(&app, "ann@example.com", &old);
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;

        let changed = call(&app, &auth).change_password(&old, &new).await;

        let sessions = logins.stop().await;
        let changed = changed.unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        raced += sessions.len();
        for session in sessions {
            assert_refused(
                app.token_login(&session).await,
                Code::Unauthenticated,
                "TOKEN_INVALID",
            );
        }
        app.token_login(&changed.session_token)
            .await
            .expect("the change's own session lives");
        assert_refused(
            app.login("ann@example.com", &old).await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
    }
    assert!(raced > 0, "some logins ran alongside the changes");
}

on_both_backends!(
    the_mask_names_the_fields_that_change,
    an_empty_mask_changes_every_field_given,
    the_email_cannot_change,
    profile_fields_follow_the_signup_rules,
    changing_the_password_ends_every_session_and_starts_a_new_one,
    a_wrong_current_password_is_refused_and_counts_toward_the_login_throttle,
    a_right_current_password_clears_the_failures_on_the_email,
    the_new_password_follows_the_rules_and_must_differ,
    reset_password_ends_sessions_and_a_change_after_it_needs_the_new_password,
    a_password_change_leaves_no_secret_in_logs_or_the_audit_table,
    a_password_change_wins_every_race_with_logins_in_flight,
);
