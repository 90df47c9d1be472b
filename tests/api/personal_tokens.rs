//! Personal access tokens as Label Studio 1.23 has them: one live PAT per user, listed
//! truncated, revoked, rotated and refreshed into access tokens; the organization's token
//! settings, legacy tokens switched off, and the throttle on failed refreshes.

use label_studio_identity::grpc::pb;
use tonic::{Code, Request, Status};

use crate::{
    helpers::{Backend, TestApp, assert_refused, spawn_app, spawn_app_with, with_auth},
    on_both_backends,
};

const PASSWORD: &str = "correct-horse";

pub async fn create_pat(
    app: &TestApp,
    auth: &str,
) -> Result<pb::CreatePersonalAccessTokenResponse, Status> {
    app.client
        .clone()
        .create_personal_access_token(with_auth(pb::CreatePersonalAccessTokenRequest {}, auth))
        .await
        .map(tonic::Response::into_inner)
}

pub async fn refresh(app: &TestApp, pat: &str) -> Result<pb::RefreshAccessTokenResponse, Status> {
    app.client
        .clone()
        .refresh_access_token(pb::RefreshAccessTokenRequest {
            refresh: pat.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

pub async fn revoke(
    app: &TestApp,
    token: &str,
    auth: Option<&str>,
) -> Result<pb::RevokePersonalAccessTokenResponse, Status> {
    let message = pb::RevokePersonalAccessTokenRequest {
        token: token.to_owned(),
    };
    let request = match auth {
        Some(auth) => with_auth(message, auth),
        None => Request::new(message),
    };
    app.client
        .clone()
        .revoke_personal_access_token(request)
        .await
        .map(tonic::Response::into_inner)
}

async fn rotate(
    app: &TestApp,
    token: &str,
    auth: &str,
) -> Result<pb::RotatePersonalAccessTokenResponse, Status> {
    app.client
        .clone()
        .rotate_personal_access_token(with_auth(
            pb::RotatePersonalAccessTokenRequest {
                token: token.to_owned(),
            },
            auth,
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn list(app: &TestApp, auth: &str) -> Vec<pb::PersonalAccessToken> {
    app.client
        .clone()
        .list_personal_access_tokens(with_auth(pb::ListPersonalAccessTokensRequest {}, auth))
        .await
        .expect("list")
        .into_inner()
        .tokens
}

pub async fn update_settings(
    app: &TestApp,
    auth: &str,
    settings: pb::TokenSettings,
    paths: &[&str],
) -> Result<pb::TokenSettings, Status> {
    app.client
        .clone()
        .update_token_settings(with_auth(
            pb::UpdateTokenSettingsRequest {
                settings: Some(settings),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                }),
            },
            auth,
        ))
        .await
        .map(|r| r.into_inner().settings.expect("settings"))
}

async fn get_settings(app: &TestApp, auth: &str) -> Result<pb::TokenSettings, Status> {
    app.client
        .clone()
        .get_token_settings(with_auth(pb::GetTokenSettingsRequest {}, auth))
        .await
        .map(|r| r.into_inner().settings.expect("settings"))
}

/// `header.payload` of a JWT.
pub fn truncated(token: &str) -> &str {
    token.rsplit_once('.').map_or(token, |(input, _)| input)
}

fn token(api_token: &str) -> String {
    format!("Token {api_token}")
}

/// A second member of the first user's organization, through its invite link.
async fn member(app: &TestApp, owner_auth: &str, email: &str) -> pb::RegisterWithInviteResponse {
    let link = app.invite_link(owner_auth).await.expect("invite link");
    app.register(&link.token, email, PASSWORD)
        .await
        .expect("register")
}

async fn a_user_has_one_live_pat_and_a_second_is_refused(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    let ann = app.sign_up("ann@example.com", PASSWORD).await;
    let auth = token(&ann.api_token);

    let pat = create_pat(&app, &auth).await.expect("create");

    assert_eq!(pat.token.split('.').count(), 3);
    let created = pat.created_at.expect("created_at").seconds;
    let expires = pat.expires_at.expect("expires_at").seconds;
    assert_eq!((expires - created) / 86_400, 73_000);
    assert_refused(
        create_pat(&app, &auth).await,
        Code::AlreadyExists,
        "TOKEN_EXISTS",
    );
    let listed = list(&app, &auth).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].truncated_token, truncated(&pat.token));
    assert_eq!(
        db.fetch_string("SELECT token FROM personal_access_tokens")
            .await
            .as_deref(),
        Some(truncated(&pat.token)),
        "only header.payload is stored"
    );
}

async fn a_pat_refreshes_into_an_access_token_without_other_credentials(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let ann = app.sign_up("ann@example.com", PASSWORD).await;
    let pat = create_pat(&app, &token(&ann.api_token)).await.unwrap();

    let access = refresh(&app, &pat.token).await.expect("refresh");

    let expires = access.expires_at.expect("expires_at").seconds;
    let now = chrono::Utc::now().timestamp();
    assert!((295..=301).contains(&(expires - now)), "{}", expires - now);
    let who = app
        .token_login(&access.access_token)
        .await
        .expect("authenticate");
    assert_eq!(who.user, ann.user);
    assert_eq!(who.organization, ann.organization);
    app.invite_link(&format!("Bearer {}", access.access_token))
        .await
        .expect("an access token works as caller credentials");
    assert_refused(
        app.invite_link(&format!("Bearer {}", pat.token)).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
}

async fn revoking_a_pat_stops_refreshes_but_not_access_tokens_already_issued(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let ann = app.sign_up("ann@example.com", PASSWORD).await;
    let auth = token(&ann.api_token);
    let pat = create_pat(&app, &auth).await.unwrap();
    let access = refresh(&app, &pat.token).await.unwrap();

    revoke(&app, truncated(&pat.token), Some(&auth))
        .await
        .expect("revoke");

    assert_refused(
        refresh(&app, &pat.token).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    app.token_login(&access.access_token)
        .await
        .expect("the access token lives until it expires");
    assert_refused(
        revoke(&app, &pat.token, Some(&auth)).await,
        Code::NotFound,
        "TOKEN_INVALID",
    );
    assert!(list(&app, &auth).await.is_empty());
    create_pat(&app, &auth)
        .await
        .expect("a new PAT once the old one is revoked");
}

async fn a_whole_pat_revokes_itself_but_a_truncated_one_needs_its_owner(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let ann = app.sign_up("ann@example.com", PASSWORD).await;
    let bob = member(&app, &token(&ann.api_token), "bob@example.com").await;
    let pat = create_pat(&app, &token(&ann.api_token)).await.unwrap();

    assert_refused(
        revoke(&app, truncated(&pat.token), None).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    assert_refused(
        revoke(&app, truncated(&pat.token), Some(&token(&bob.api_token))).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    let forged = format!("{}.{}", truncated(&pat.token), "A".repeat(43));
    assert_refused(
        revoke(&app, &forged, None).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    refresh(&app, &pat.token).await.expect("still live");

    revoke(&app, &pat.token, None)
        .await
        .expect("the whole token proves itself");

    assert_refused(
        refresh(&app, &pat.token).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
}

async fn rotating_a_pat_revokes_it_and_issues_another(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let ann = app.sign_up("ann@example.com", PASSWORD).await;
    let bob = member(&app, &token(&ann.api_token), "bob@example.com").await;
    let auth = token(&ann.api_token);
    let old = create_pat(&app, &auth).await.unwrap();

    assert_refused(
        rotate(&app, &old.token, &token(&bob.api_token)).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    let new = rotate(&app, &old.token, &auth).await.expect("rotate");

    assert_ne!(new.token, old.token);
    assert_refused(
        refresh(&app, &old.token).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    refresh(&app, &new.token)
        .await
        .expect("the new PAT refreshes");
    assert_refused(
        rotate(&app, &old.token, &auth).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
    let listed = list(&app, &auth).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].truncated_token, truncated(&new.token));
}

async fn only_the_owner_changes_the_token_settings(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let ann = app.sign_up("ann@example.com", PASSWORD).await;
    let bob = member(&app, &token(&ann.api_token), "bob@example.com").await;

    let defaults = get_settings(&app, &token(&bob.api_token))
        .await
        .expect("a member reads the settings");

    assert_eq!(
        defaults,
        pb::TokenSettings {
            api_tokens_enabled: true,
            legacy_api_tokens_enabled: true,
            api_token_ttl_days: 73_000,
        }
    );
    assert_refused(
        update_settings(
            &app,
            &token(&bob.api_token),
            pb::TokenSettings::default(),
            &["api_tokens_enabled"],
        )
        .await,
        Code::PermissionDenied,
        "OWNER_REQUIRED",
    );
    let ttl = |days| pb::TokenSettings {
        api_token_ttl_days: days,
        ..defaults
    };
    assert_refused(
        update_settings(
            &app,
            &token(&ann.api_token),
            ttl(0),
            &["api_token_ttl_days"],
        )
        .await,
        Code::InvalidArgument,
        "TTL_DAYS_OUT_OF_RANGE",
    );
    assert_refused(
        update_settings(&app, &token(&ann.api_token), ttl(5), &["color"]).await,
        Code::InvalidArgument,
        "UPDATE_MASK_INVALID",
    );
    let updated = update_settings(
        &app,
        &token(&ann.api_token),
        pb::TokenSettings {
            api_tokens_enabled: false,
            legacy_api_tokens_enabled: false,
            api_token_ttl_days: 30,
        },
        &["api_token_ttl_days"],
    )
    .await
    .expect("the owner updates");
    assert_eq!(updated, ttl(30), "only the masked field changes");
    let pat = create_pat(&app, &token(&bob.api_token)).await.unwrap();
    let lifetime = pat.expires_at.unwrap().seconds - pat.created_at.unwrap().seconds;
    assert_eq!(lifetime, 30 * 86_400, "api_token_ttl_days is honoured");
}

async fn switching_pats_off_refuses_creating_and_refreshing_them(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let ann = app.sign_up("ann@example.com", PASSWORD).await;
    let auth = token(&ann.api_token);
    let pat = create_pat(&app, &auth).await.unwrap();
    revoke(&app, &pat.token, Some(&auth)).await.unwrap();
    let pat = create_pat(&app, &auth).await.unwrap();

    update_settings(
        &app,
        &auth,
        pb::TokenSettings::default(),
        &["api_tokens_enabled"],
    )
    .await
    .unwrap();

    assert_refused(
        create_pat(&app, &auth).await,
        Code::PermissionDenied,
        "PERSONAL_ACCESS_TOKENS_DISABLED",
    );
    assert_refused(
        refresh(&app, &pat.token).await,
        Code::PermissionDenied,
        "PERSONAL_ACCESS_TOKENS_DISABLED",
    );
}

async fn legacy_tokens_switched_off_are_refused_until_switched_on(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let ann = app.sign_up("ann@example.com", PASSWORD).await;
    let auth = format!("Bearer {}", ann.session_token);
    let off = pb::TokenSettings {
        api_tokens_enabled: true,
        legacy_api_tokens_enabled: false,
        api_token_ttl_days: 73_000,
    };

    update_settings(&app, &auth, off, &["legacy_api_tokens_enabled"])
        .await
        .unwrap();

    assert_refused(
        app.token_login(&ann.api_token).await,
        Code::Unauthenticated,
        "LEGACY_TOKENS_DISABLED",
    );
    assert_refused(
        app.invite_link(&token(&ann.api_token)).await,
        Code::Unauthenticated,
        "LEGACY_TOKENS_DISABLED",
    );
    let gateway = crate::gateway::check(
        &app,
        "/authz/forward-auth",
        &[("Authorization", &token(&ann.api_token))],
    )
    .await;
    assert_eq!(gateway.status, 401);
    assert!(
        gateway.body.contains("LEGACY_TOKENS_DISABLED"),
        "{gateway:?}"
    );
    app.token_login(&ann.session_token)
        .await
        .expect("sessions are unaffected");
    let on = pb::TokenSettings {
        legacy_api_tokens_enabled: true,
        ..off
    };
    update_settings(&app, &auth, on, &["legacy_api_tokens_enabled"])
        .await
        .unwrap();
    app.token_login(&ann.api_token)
        .await
        .expect("legacy tokens work again");
}

async fn forged_expired_and_alg_none_pats_do_not_refresh(backend: Backend) {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use label_studio_identity::domain::jwt::{self, Key, RefreshClaims};

    let (app, db) = spawn_app(backend).await;
    let ann = app.sign_up("ann@example.com", PASSWORD).await;
    let pat = create_pat(&app, &token(&ann.api_token))
        .await
        .unwrap()
        .token;
    let claims: RefreshClaims = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(pat.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let kid = db
        .fetch_string("SELECT key_id FROM personal_access_tokens")
        .await
        .unwrap();
    let b64 = |json: serde_json::Value| URL_SAFE_NO_PAD.encode(json.to_string());
    let payload = pat.split('.').nth(1).unwrap();

    let forged = [
        (
            "another key under the same kid",
            jwt::encode(&Key::hmac(&kid, b"guessed", true), &claims).unwrap(),
        ),
        (
            "alg none",
            format!(
                "{}.{payload}.",
                b64(serde_json::json!({"alg": "none", "kid": kid}))
            ),
        ),
        (
            "EdDSA header on an HMAC key",
            format!(
                "{}.{payload}.{}",
                b64(serde_json::json!({"alg": "EdDSA", "kid": kid})),
                pat.split('.').nth(2).unwrap()
            ),
        ),
        ("truncated", truncated(&pat).to_owned()),
        ("oversized", format!("{pat}{}", "A".repeat(9 * 1024))),
    ];
    for (what, token) in &forged {
        let status = refresh(&app, token).await.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    }
    refresh(&app, &pat)
        .await
        .expect("the genuine PAT refreshes");

    db.execute("UPDATE personal_access_tokens SET expires_at = created_at")
        .await;

    assert_refused(
        refresh(&app, &pat).await,
        Code::Unauthenticated,
        "TOKEN_INVALID",
    );
}

async fn failed_refreshes_count_toward_the_token_throttle(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, |s| s.throttle.token_failures_per_address = 3).await;
    let ann = app.sign_up("ann@example.com", PASSWORD).await;
    let pat = create_pat(&app, &token(&ann.api_token)).await.unwrap();
    let forged = format!("{}.{}", truncated(&pat.token), "A".repeat(43));

    for garbage in ["not-a-token", forged.as_str(), "a.b.c"] {
        assert_refused(
            refresh(&app, garbage).await,
            Code::Unauthenticated,
            "TOKEN_INVALID",
        );
    }

    assert_refused(
        refresh(&app, &pat.token).await,
        Code::ResourceExhausted,
        "THROTTLED",
    );
}

on_both_backends!(
    a_user_has_one_live_pat_and_a_second_is_refused,
    a_pat_refreshes_into_an_access_token_without_other_credentials,
    revoking_a_pat_stops_refreshes_but_not_access_tokens_already_issued,
    a_whole_pat_revokes_itself_but_a_truncated_one_needs_its_owner,
    rotating_a_pat_revokes_it_and_issues_another,
    only_the_owner_changes_the_token_settings,
    switching_pats_off_refuses_creating_and_refreshing_them,
    legacy_tokens_switched_off_are_refused_until_switched_on,
    failed_refreshes_count_toward_the_token_throttle,
    forged_expired_and_alg_none_pats_do_not_refresh,
);
