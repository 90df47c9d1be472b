//! `CreateUser`: self-signup, administrators creating accounts, and the rules on every field.

use label_studio_identity::grpc::pb;
use tonic::Code;

use crate::{
    helpers::{
        Backend, assert_refused, join_all, sign_up, spawn_app, spawn_app_with, violated_fields,
        with_auth,
    },
    on_both_backends,
};

const PASSWORD: &str = "correct-horse";

async fn the_first_account_creates_the_organization_and_later_ones_join_it(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;

    let first = app.sign_up("owner@example.com", PASSWORD).await;
    let second = app.sign_up("member@example.com", PASSWORD).await;

    let organization = first.organization.expect("organization");
    assert_eq!(organization.title, "Label Studio");
    let owner = first.user.expect("user");
    assert_eq!(organization.created_by_user_id, owner.id);
    assert_eq!(owner.organization_id, organization.id);
    assert_eq!(second.organization.expect("organization"), organization);
    assert_eq!(second.user.expect("user").organization_id, organization.id);
}

async fn a_signup_returns_a_forty_hex_api_token_and_a_session(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;

    let created = app.sign_up("ann@example.com", PASSWORD).await;

    assert_eq!(created.api_token.len(), 40);
    assert!(
        created
            .api_token
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    );
    assert!(!created.session_token.is_empty());
    let expires = created.session_expires_at.expect("expiry").seconds;
    let now = chrono::Utc::now().timestamp();
    assert!(
        (expires - now - 14 * 24 * 3600).abs() < 60,
        "sessions last 14 days"
    );
    let by_api = app
        .token_login(&created.api_token)
        .await
        .expect("api token works");
    let by_session = app
        .token_login(&created.session_token)
        .await
        .expect("session works");
    assert_eq!(by_api.user, created.user);
    assert_eq!(by_session.user, created.user);
}

async fn mixed_case_emails_sign_up_and_log_in_lowercased(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;

    let created = app.sign_up("Mixed@Example.com", PASSWORD).await;

    assert_eq!(created.user.expect("user").email, "mixed@example.com");
    for spelling in [
        "mixed@example.com",
        "MIXED@EXAMPLE.COM",
        "Mixed@Example.com",
    ] {
        let logged_in = app.login(spelling, PASSWORD).await.expect(spelling);
        assert_eq!(logged_in.user.expect("user").email, "mixed@example.com");
    }
}

async fn emails_are_unique_whatever_their_case(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    app.sign_up("taken@example.com", PASSWORD).await;

    let again = app
        .client
        .clone()
        .create_user(sign_up("Taken@EXAMPLE.com", PASSWORD))
        .await;

    assert_refused(again, Code::AlreadyExists, "EMAIL_TAKEN");
    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, 1);
}

async fn passwords_must_be_8_to_128_characters(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    let mut client = app.client.clone();

    for (n, accepted) in [(7, false), (8, true), (128, true), (129, false)] {
        let email = format!("len{n}@example.com");
        let result = client.create_user(sign_up(&email, &"p".repeat(n))).await;
        if accepted {
            result.unwrap_or_else(|s| panic!("{n} characters should be accepted: {s:?}"));
            app.login(&email, &"p".repeat(n)).await.expect("logs in");
        } else {
            let status = assert_refused(result, Code::InvalidArgument, "PASSWORD_LENGTH");
            assert_eq!(violated_fields(&status), ["password"]);
        }
    }
    // Characters, not bytes: 128 four-byte characters are fine, 7 are not.
    client
        .create_user(sign_up("emoji@example.com", &"🔑".repeat(128)))
        .await
        .expect("128 characters of 4 bytes");
    let short = client
        .create_user(sign_up("emoji7@example.com", &"🔑".repeat(7)))
        .await;
    assert_refused(short, Code::InvalidArgument, "PASSWORD_LENGTH");
    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, 3);
}

async fn malformed_emails_are_refused_with_a_field_violation(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    let mut client = app.client.clone();

    for email in [
        "",
        "plain",
        "a@b",
        "two@@example.com",
        "nul\0@example.com",
        "ctl\n@example.com",
    ] {
        let status = client
            .create_user(sign_up(email, PASSWORD))
            .await
            .expect_err(email);
        assert_eq!(status.code(), Code::InvalidArgument, "{email:?}");
        assert_eq!(violated_fields(&status), ["email"], "{email:?}");
    }
    let long = format!("{}@example.com", "a".repeat(250));
    let status = client
        .create_user(sign_up(&long, PASSWORD))
        .await
        .expect_err("too long");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, 0);
}

async fn an_empty_username_defaults_to_the_email_local_part(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;

    let defaulted = app.sign_up("Ann+Label@Example.org", PASSWORD).await;
    let chosen = app
        .client
        .clone()
        .create_user(pb::CreateUserRequest {
            username: "bobby".into(),
            first_name: "Bob".into(),
            last_name: "Builder".into(),
            ..sign_up("bob@example.org", PASSWORD)
        })
        .await
        .expect("signup")
        .into_inner();

    assert_eq!(defaulted.user.expect("user").username, "ann+label");
    let bob = chosen.user.expect("user");
    assert_eq!(
        (
            bob.username.as_str(),
            bob.first_name.as_str(),
            bob.last_name.as_str()
        ),
        ("bobby", "Bob", "Builder")
    );
}

async fn a_self_signup_may_not_choose_its_api_token(backend: Backend) {
    let (app, db) = spawn_app(backend).await;

    let result = app
        .client
        .clone()
        .create_user(pb::CreateUserRequest {
            user_token: "chosen-token".into(),
            ..sign_up("self@example.com", PASSWORD)
        })
        .await;

    assert_refused(result, Code::PermissionDenied, "USER_TOKEN_NOT_ALLOWED");
    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, 0);
}

async fn signup_without_the_link_is_refused_when_the_switch_is_on(backend: Backend) {
    let (app, db) = spawn_app_with(backend, |s| s.signup.disable_without_link = true).await;

    let result = app
        .client
        .clone()
        .create_user(sign_up("nolink@example.com", PASSWORD))
        .await;

    assert_refused(result, Code::PermissionDenied, "SIGNUP_REQUIRES_INVITE");
    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, 0);
}

async fn an_administrator_creates_accounts_whatever_the_switch_says(backend: Backend) {
    let db = crate::helpers::TestDb::new(backend).await;
    let open = crate::helpers::TestApp::start(db.settings()).await;
    let admin = open.sign_up("admin@example.com", PASSWORD).await;
    open.stop().await;
    let mut settings = db.settings();
    settings.signup.disable_without_link = true;
    let app = crate::helpers::TestApp::start(settings).await;

    let created = app
        .client
        .clone()
        .create_user(with_auth(
            pb::CreateUserRequest {
                user_token: "chosen-token-1".into(),
                ..sign_up("Staff@Example.com", PASSWORD)
            },
            &format!("Token {}", admin.api_token),
        ))
        .await
        .expect("administrator create")
        .into_inner();

    assert_eq!(created.api_token, "chosen-token-1");
    assert!(
        created.session_token.is_empty(),
        "no session is started for someone else"
    );
    assert!(created.session_expires_at.is_none());
    assert_eq!(created.organization, admin.organization);
    let staff = app
        .token_login("chosen-token-1")
        .await
        .expect("chosen token works");
    assert_eq!(staff.user.expect("user").email, "staff@example.com");
    app.login("staff@example.com", PASSWORD)
        .await
        .expect("password works");
}

async fn an_administrator_chosen_token_needs_five_characters(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    let admin = app.sign_up("admin@example.com", PASSWORD).await;
    let auth = format!("Token {}", admin.api_token);

    let short = app
        .client
        .clone()
        .create_user(with_auth(
            pb::CreateUserRequest {
                user_token: "abcd".into(),
                ..sign_up("s@example.com", PASSWORD)
            },
            &auth,
        ))
        .await;
    let taken = app
        .client
        .clone()
        .create_user(with_auth(
            pb::CreateUserRequest {
                user_token: admin.api_token.clone(),
                ..sign_up("t@example.com", PASSWORD)
            },
            &auth,
        ))
        .await;

    let status = assert_refused(short, Code::InvalidArgument, "USER_TOKEN_TOO_SHORT");
    assert_eq!(violated_fields(&status), ["user_token"]);
    // A taken token gets the answer a weak one gets: the refusal never tells whether a token
    // is someone's.
    let status = assert_refused(taken, Code::InvalidArgument, "USER_TOKEN_REJECTED");
    assert_eq!(violated_fields(&status), ["user_token"]);
    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, 1);
}

async fn invalid_caller_credentials_never_fall_back_to_self_signup(backend: Backend) {
    let (app, db) = spawn_app(backend).await;

    let result = app
        .client
        .clone()
        .create_user(with_auth(
            sign_up("x@example.com", PASSWORD),
            "Token not-a-real-token",
        ))
        .await;

    assert_refused(result, Code::Unauthenticated, "TOKEN_INVALID");
    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, 0);
}

async fn concurrent_signups_with_one_email_give_one_account(backend: Backend) {
    let (app, db) = spawn_app(backend).await;

    let attempts = (0..8).map(|i| {
        let mut client = app.client.clone();
        let email = if i % 2 == 0 {
            "race@example.com"
        } else {
            "RACE@example.com"
        };
        async move { client.create_user(sign_up(email, PASSWORD)).await }
    });
    let results = join_all(attempts).await;

    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    for result in results.into_iter().filter(Result::is_err) {
        assert_refused(result, Code::AlreadyExists, "EMAIL_TAKEN");
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, 1);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM tokens WHERE kind = 'api'")
            .await,
        1
    );
}

async fn concurrent_first_signups_share_one_organization(backend: Backend) {
    let (app, db) = spawn_app(backend).await;

    let attempts = (0..6).map(|i| {
        let mut client = app.client.clone();
        async move {
            client
                .create_user(sign_up(&format!("u{i}@example.com"), PASSWORD))
                .await
        }
    });
    let results = join_all(attempts).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(db.count("SELECT COUNT(*) FROM organizations").await, 1);
    assert_eq!(db.count("SELECT COUNT(*) FROM memberships").await, 6);
}

on_both_backends!(
    the_first_account_creates_the_organization_and_later_ones_join_it,
    a_signup_returns_a_forty_hex_api_token_and_a_session,
    mixed_case_emails_sign_up_and_log_in_lowercased,
    emails_are_unique_whatever_their_case,
    passwords_must_be_8_to_128_characters,
    malformed_emails_are_refused_with_a_field_violation,
    an_empty_username_defaults_to_the_email_local_part,
    a_self_signup_may_not_choose_its_api_token,
    signup_without_the_link_is_refused_when_the_switch_is_on,
    an_administrator_creates_accounts_whatever_the_switch_says,
    an_administrator_chosen_token_needs_five_characters,
    invalid_caller_credentials_never_fall_back_to_self_signup,
    concurrent_signups_with_one_email_give_one_account,
    concurrent_first_signups_share_one_organization,
);
