//! Invite links: reading, resetting, and registering through them (Label Studio's own invite
//! scenarios among them).

use tonic::Code;

use crate::{
    helpers::{
        Backend, TestApp, TestDb, assert_refused, join_all, sign_up, spawn_app, spawn_app_with,
        violated_fields,
    },
    on_both_backends,
};

const PASSWORD: &str = "correct-horse";

async fn any_member_reads_the_same_invite_link(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let owner = app.sign_up("owner@example.com", PASSWORD).await;
    let member = app.sign_up("member@example.com", PASSWORD).await;

    let by_owner = app
        .invite_link(&format!("Token {}", owner.api_token))
        .await
        .expect("owner");
    let by_member = app
        .invite_link(&format!("Token {}", member.api_token))
        .await
        .expect("member");

    assert_eq!(by_owner, by_member);
    assert_eq!(by_owner.token.len(), 40);
    assert!(by_owner.token.chars().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!(
        by_owner.invite_url,
        format!("/user/signup/?token={}", by_owner.token)
    );
}

async fn the_invite_url_starts_with_the_public_url(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, |s| {
        s.server.public_url = Some("https://ls.example.com/".into())
    })
    .await;
    let owner = app.sign_up("owner@example.com", PASSWORD).await;

    let link = app
        .invite_link(&format!("Token {}", owner.api_token))
        .await
        .expect("link");

    assert_eq!(
        link.invite_url,
        format!("https://ls.example.com/user/signup/?token={}", link.token)
    );
}

async fn registering_through_the_link_joins_the_organization(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let owner = app.sign_up("owner@example.com", PASSWORD).await;
    let link = app
        .invite_link(&format!("Token {}", owner.api_token))
        .await
        .expect("link");

    let by_token = app
        .register(&link.token, "Token@Example.com", PASSWORD)
        .await
        .expect("token");
    let by_url = app
        .register(&link.invite_url, "url@example.com", PASSWORD)
        .await
        .expect("url");
    let absolute = format!("https://ls.example.com{}", link.invite_url);
    let by_absolute = app
        .register(&absolute, "abs@example.com", PASSWORD)
        .await
        .expect("absolute url");

    for registered in [&by_token, &by_url, &by_absolute] {
        assert_eq!(registered.organization, owner.organization);
        assert_eq!(registered.api_token.len(), 40);
        app.token_login(&registered.session_token)
            .await
            .expect("registration starts a session");
    }
    assert_eq!(
        by_token.user.as_ref().expect("user").email,
        "token@example.com"
    );
    app.login("token@example.com", PASSWORD)
        .await
        .expect("logs in");
}

async fn after_a_reset_the_old_link_is_refused_and_the_new_one_works(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    let owner = app.sign_up("owner@example.com", PASSWORD).await;
    let member = app.sign_up("member@example.com", PASSWORD).await;
    let old = app
        .invite_link(&format!("Token {}", owner.api_token))
        .await
        .expect("link");

    let new = app
        .reset_invite_link(&format!("Token {}", member.api_token))
        .await
        .expect("any member resets");

    assert_ne!(new.token, old.token);
    let current = app
        .invite_link(&format!("Token {}", owner.api_token))
        .await
        .expect("link");
    assert_eq!(
        (&current.token, &current.invite_url),
        (&new.token, &new.invite_url)
    );
    assert_refused(
        app.register(&old.token, "late@example.com", PASSWORD).await,
        Code::PermissionDenied,
        "INVITE_INVALID",
    );
    assert_refused(
        app.register(&old.invite_url, "late@example.com", PASSWORD)
            .await,
        Code::PermissionDenied,
        "INVITE_INVALID",
    );
    app.register(&new.invite_url, "new@example.com", PASSWORD)
        .await
        .expect("new link works");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM users WHERE email = 'late@example.com'")
            .await,
        0
    );
}

async fn a_wrong_token_is_refused_when_the_switch_is_off(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    app.sign_up("owner@example.com", PASSWORD).await;

    let result = app
        .register(
            "abcdefghij0123456789abcdefghij0123456789",
            "x@example.com",
            PASSWORD,
        )
        .await;

    assert_refused(result, Code::PermissionDenied, "INVITE_INVALID");
    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, 1);
}

async fn signup_with_the_switch_on_works_only_through_the_link(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut settings = db.settings();
    settings.bootstrap.username = Some("admin@example.com".into());
    settings.bootstrap.password = Some(PASSWORD.into());
    settings.bootstrap.user_token = Some("admin-token".into());
    settings.signup.disable_without_link = true;
    let app = TestApp::start(settings).await;
    let link = app.invite_link("Token admin-token").await.expect("link");

    let without = app
        .client
        .clone()
        .create_user(sign_up("walkin@example.com", PASSWORD))
        .await;
    let with = app
        .register(&link.invite_url, "invited@example.com", PASSWORD)
        .await;

    assert_refused(without, Code::PermissionDenied, "SIGNUP_REQUIRES_INVITE");
    let invited = with.expect("the link works");
    assert_eq!(invited.user.expect("user").email, "invited@example.com");
    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, 2);
}

async fn malformed_invites_are_invalid_arguments(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    app.sign_up("owner@example.com", PASSWORD).await;

    for invite in [
        "",
        "/user/signup/?tok",
        "/user/signup/?token=",
        "https://ls.example.com/user/signup/",
        "x'; DROP TABLE users; --",
    ] {
        let status = app
            .register(invite, "x@example.com", PASSWORD)
            .await
            .expect_err(invite);
        assert_eq!(status.code(), Code::InvalidArgument, "{invite:?}");
        assert_eq!(violated_fields(&status), ["invite"], "{invite:?}");
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, 1);
}

async fn a_removed_member_cannot_use_the_organization(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    app.sign_up("owner@example.com", PASSWORD).await;
    let removed = app.sign_up("removed@example.com", PASSWORD).await;
    let removed_id = removed.user.expect("user").id;
    db.execute(&format!(
        "UPDATE memberships SET deleted_at = joined_at WHERE user_id = {removed_id}"
    ))
    .await;

    let auth = format!("Token {}", removed.api_token);
    assert_refused(
        app.invite_link(&auth).await,
        Code::PermissionDenied,
        "NOT_A_MEMBER",
    );
    assert_refused(
        app.reset_invite_link(&auth).await,
        Code::PermissionDenied,
        "NOT_A_MEMBER",
    );
    let who = app
        .token_login(&removed.api_token)
        .await
        .expect("still authenticates");
    assert!(who.organization.is_none());
    assert!(who.user.expect("user").organization_id.is_empty());
}

async fn registrations_racing_a_reset_never_pass_with_the_old_token(backend: Backend) {
    let (app, db) =
        spawn_app_with(backend, |s| s.throttle.invite_failures_per_address = 1_000).await;
    let owner = app.sign_up("owner@example.com", PASSWORD).await;
    let auth = format!("Token {}", owner.api_token);
    let old = app.invite_link(&auth).await.expect("link");

    let registrations: Vec<_> = (0..12)
        .map(|i| {
            let mut client = app.client.clone();
            let invite = old.token.clone();
            async move {
                client
                    .register_with_invite(
                        label_studio_identity::grpc::pb::RegisterWithInviteRequest {
                            invite,
                            email: format!("racer{i}@example.com"),
                            password: PASSWORD.into(),
                            ..Default::default()
                        },
                    )
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .collect();
    let racing = tokio::spawn(join_all(registrations));
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    app.reset_invite_link(&auth).await.expect("reset");
    let reset_done = db.count("SELECT COUNT(*) FROM users").await;
    let results = racing.await.expect("registrations");

    for result in &results {
        if let Err(status) = result {
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        }
    }
    // Nothing registered with the old token once the reset had committed.
    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, reset_done);
    let registered = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(reset_done, 1 + i64::try_from(registered).unwrap());
    assert_refused(
        app.register(&old.token, "after@example.com", PASSWORD)
            .await,
        Code::PermissionDenied,
        "INVITE_INVALID",
    );
}

async fn a_repeated_token_parameter_means_the_last_one_as_in_django(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let owner = app.sign_up("owner@example.com", PASSWORD).await;
    let link = app
        .invite_link(&format!("Token {}", owner.api_token))
        .await
        .expect("link");
    let stale = "StaleToken0000000000000000000000000000000";

    let last_is_current = app
        .register(
            &format!("/user/signup/?token={stale}&token={}", link.token),
            "last@example.com",
            PASSWORD,
        )
        .await;
    let first_is_current = app
        .register(
            &format!("/user/signup/?token={}&token={stale}", link.token),
            "first@example.com",
            PASSWORD,
        )
        .await;

    assert_eq!(
        last_is_current.expect("the last token counts").organization,
        owner.organization
    );
    assert_refused(first_is_current, Code::PermissionDenied, "INVITE_INVALID");
}

on_both_backends!(
    any_member_reads_the_same_invite_link,
    the_invite_url_starts_with_the_public_url,
    registering_through_the_link_joins_the_organization,
    after_a_reset_the_old_link_is_refused_and_the_new_one_works,
    a_wrong_token_is_refused_when_the_switch_is_off,
    signup_with_the_switch_on_works_only_through_the_link,
    malformed_invites_are_invalid_arguments,
    a_removed_member_cannot_use_the_organization,
    registrations_racing_a_reset_never_pass_with_the_old_token,
    a_repeated_token_parameter_means_the_last_one_as_in_django,
);
