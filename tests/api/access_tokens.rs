//! Access tokens: accepted on every RPC, in `Authenticate` and by the gateway checks without a
//! database read; forged, expired, `alg: none`, wrong-`kid` and oversized ones refused; the key
//! set over gRPC and HTTP; and key rotation across two server processes.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use label_studio_identity::{
    domain::jwt::{self, AccessClaims, Key},
    grpc::pb,
};
use tonic::Code;

use crate::{
    costs::{statements, statements_of},
    gateway::{check, ext_authz},
    helpers::{
        Backend, ServerProcess, TestApp, TestDb, assert_refused, http_request, run, spawn_app,
        spawn_app_with,
    },
    on_both_backends,
    personal_tokens::{create_pat, refresh},
};

const PASSWORD: &str = "correct-horse";

/// An account with an access token.
async fn ann_with_access(app: &TestApp) -> (pb::CreateUserResponse, String) {
    let ann = app.sign_up("ann@example.com", PASSWORD).await;
    let pat = create_pat(app, &format!("Token {}", ann.api_token))
        .await
        .expect("create PAT");
    let access = refresh(app, &pat.token).await.expect("refresh");
    (ann, access.access_token)
}

fn part(token: &str, index: usize) -> serde_json::Value {
    let part = token.split('.').nth(index).expect("part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("json")
}

fn kid(token: &str) -> String {
    part(token, 0)["kid"].as_str().expect("kid").to_owned()
}

/// The current access-token key, read from the database as only the service itself may.
async fn signing_key(db: &TestDb) -> Key {
    let kid = db
        .fetch_string(
            "SELECT kid FROM signing_keys WHERE purpose = 'access' AND retired_at IS NULL",
        )
        .await
        .expect("a current key");
    let secret = db
        .fetch_string(&format!(
            "SELECT private_key FROM signing_keys WHERE kid = '{kid}'"
        ))
        .await
        .unwrap();
    Key::ed25519_private(&kid, &secret).expect("stored key")
}

fn claims(token: &str) -> AccessClaims {
    serde_json::from_value(part(token, 1)).expect("claims")
}

async fn an_access_token_passes_every_gateway_check(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let (ann, access) = ann_with_access(&app).await;
    let bearer = format!("Bearer {access}");
    let user_id = ann.user.as_ref().unwrap().id.clone();

    for endpoint in ["/authz/forward-auth", "/authz/auth-request"] {
        let reply = check(&app, endpoint, &[("Authorization", &bearer)]).await;
        assert_eq!(reply.status, 200, "{endpoint}: {reply:?}");
        assert_eq!(reply.header("remote-auth"), Some("access-token"));
        assert_eq!(reply.header("remote-user"), Some(user_id.as_str()));
        assert_eq!(reply.header("remote-email"), Some("ann@example.com"));
    }
    let response = ext_authz(&app, "/projects/", &[("authorization", &bearer)]).await;
    let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
        panic!("not allowed: {response:?}");
    };
    assert!(ok.headers.iter().any(|option| {
        let header = option.header.as_ref().unwrap();
        header.key == "remote-auth" && header.value == "access-token"
    }));
}

async fn checking_an_access_token_reads_no_database(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let (_ann, access) = ann_with_access(&app).await;
    let bearer = format!("Bearer {access}");
    let reads = || async { statements(&app).await - statements_of(&app, "signing_keys").await };

    let before = reads().await;
    for _ in 0..5 {
        app.token_login(&access).await.expect("authenticate");
        let reply = check(&app, "/authz/forward-auth", &[("Authorization", &bearer)]).await;
        assert_eq!(reply.status, 200);
    }

    assert_eq!(
        reads().await - before,
        0,
        "statements for access token checks"
    );
}

async fn a_refresh_costs_one_read(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let ann = app.sign_up("ann@example.com", PASSWORD).await;
    let pat = create_pat(&app, &format!("Token {}", ann.api_token))
        .await
        .unwrap();
    refresh(&app, &pat.token).await.unwrap();

    let before = statements(&app).await - statements_of(&app, "signing_keys").await;
    refresh(&app, &pat.token).await.unwrap();
    let after = statements(&app).await - statements_of(&app, "signing_keys").await;

    assert_eq!(after - before, 1, "round trips of a refresh");
}

async fn forged_expired_and_oversized_access_tokens_are_refused(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    let (_ann, access) = ann_with_access(&app).await;
    let key = signing_key(&db).await;
    let good = claims(&access);
    let signed = |claims: &AccessClaims| jwt::encode(&key, claims).unwrap();
    let (header, payload, signature) = {
        let mut parts = access.split('.');
        (
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().to_owned(),
        )
    };
    let b64 = |json: serde_json::Value| URL_SAFE_NO_PAD.encode(json.to_string());
    let mut escalated = part(&access, 1);
    escalated["user_id"] = "999".into();
    let other_key = Key::generate_ed25519(key.kid()).unwrap().key;
    let public_key =
        URL_SAFE_NO_PAD
            .decode(
                serde_json::from_str::<serde_json::Value>(&app_jwks(&app).await).unwrap()["keys"]
                    [0]["x"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
    let confused = Key::hmac(key.kid(), &public_key, true);

    let forged = [
        (
            "payload changed",
            format!("{header}.{}.{signature}", b64(escalated)),
        ),
        (
            "alg none",
            format!(
                "{}.{payload}.",
                b64(serde_json::json!({"alg": "none", "kid": key.kid()}))
            ),
        ),
        (
            "alg none without signature",
            format!(
                "{}.{payload}.e30",
                b64(serde_json::json!({"alg": "none", "kid": key.kid()}))
            ),
        ),
        (
            "unknown kid",
            jwt::encode(&Key::generate_ed25519("not-a-key").unwrap().key, &good).unwrap(),
        ),
        (
            "another key under the same kid",
            jwt::encode(&other_key, &good).unwrap(),
        ),
        (
            "HS256 keyed with the public key",
            jwt::encode(&confused, &good).unwrap(),
        ),
        ("no kid", {
            let input = format!("{}.{payload}", b64(serde_json::json!({"alg": "EdDSA"})));
            format!("{input}.{signature}")
        }),
        (
            "expired",
            signed(&AccessClaims {
                exp: good.iat - 600,
                iat: good.iat - 900,
                nbf: Some(good.iat - 900),
                ..good.clone()
            }),
        ),
        (
            "not yet valid",
            signed(&AccessClaims {
                nbf: Some(good.iat + 600),
                ..good.clone()
            }),
        ),
        (
            "a refresh token",
            signed(&AccessClaims {
                token_type: "refresh".into(),
                ..good.clone()
            }),
        ),
        (
            "another issuer",
            signed(&AccessClaims {
                iss: "https://evil.example".into(),
                ..good.clone()
            }),
        ),
        (
            "oversized",
            signed(&AccessClaims {
                first_name: "a".repeat(9 * 1024),
                ..good.clone()
            }),
        ),
    ];

    for (what, token) in &forged {
        let status = app.token_login(token).await.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert_refused(
            app.invite_link(&format!("Bearer {token}")).await,
            Code::Unauthenticated,
            "TOKEN_INVALID",
        );
    }
    app.token_login(&access)
        .await
        .expect("the genuine token still works");
}

async fn app_jwks(app: &TestApp) -> String {
    app.client
        .clone()
        .get_jwks(pb::GetJwksRequest {})
        .await
        .expect("GetJwks")
        .into_inner()
        .jwks_json
}

async fn the_key_set_is_served_over_grpc_and_http_without_secrets(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let (_ann, access) = ann_with_access(&app).await;

    let grpc = app_jwks(&app).await;
    let http = http_request(app.http_addr.unwrap(), "GET", "/.well-known/jwks.json", &[]).await;

    assert_eq!(http.status, 200);
    assert_eq!(
        http.header("content-type"),
        Some("application/jwk-set+json")
    );
    assert_eq!(http.body, grpc);
    let set: serde_json::Value = serde_json::from_str(&grpc).unwrap();
    let keys = set["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kty"], "OKP");
    assert_eq!(keys[0]["crv"], "Ed25519");
    assert_eq!(keys[0]["alg"], "EdDSA");
    assert_eq!(keys[0]["kid"], kid(&access));
    assert!(keys[0].get("d").is_none(), "no private part");
    let key = Key::ed25519_public(&kid(&access), keys[0]["x"].as_str().unwrap()).unwrap();
    let now = chrono::Utc::now().timestamp();
    let checked = jwt::verify_access(&access, |_| Some(&key), "label-studio-identity", now)
        .expect("verifies offline with the published key");
    assert_eq!(checked.email, "ann@example.com");
}

async fn access_tokens_live_as_long_as_configured(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, |s| {
        s.tokens.access_token_ttl_seconds = 60;
        s.server.public_url = Some("https://ls.example.com".into());
    })
    .await;

    let (_ann, access) = ann_with_access(&app).await;

    let claims = claims(&access);
    assert_eq!(claims.exp - claims.iat, 60);
    assert_eq!(claims.iss, "https://ls.example.com");
    assert_eq!(claims.token_type, "access");
    assert_eq!(part(&access, 1)["user_id"], serde_json::json!(claims.sub));
}

async fn a_rotated_key_signs_at_one_replica_and_verifies_at_the_other(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut a = ServerProcess::start(&db, &[], &[]);
    let mut b = ServerProcess::start(&db, &[], &[]);
    a.wait_serving().await;
    b.wait_serving().await;
    let (a, b) = (a.client().await, b.client().await);
    let ann = a.sign_up("ann@example.com", PASSWORD).await;
    let pat = create_pat(&a, &format!("Token {}", ann.api_token))
        .await
        .unwrap()
        .token;
    let before = refresh(&a, &pat).await.unwrap().access_token;

    let rotated = run(&db, &["rotate-signing-key"], &[]);
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );

    let started = std::time::Instant::now();
    let after = loop {
        let token = refresh(&a, &pat).await.unwrap().access_token;
        if kid(&token) != kid(&before) {
            break token;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the new key never reached the replica"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for replica in [&a, &b] {
        replica
            .token_login(&after)
            .await
            .expect("a new-key token verifies everywhere");
        replica
            .token_login(&before)
            .await
            .expect("an old-key token verifies until it expires");
    }
    let set: serde_json::Value = serde_json::from_str(&app_jwks(&b).await).unwrap();
    assert_eq!(set["keys"].as_array().unwrap().len(), 2);
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM signing_keys WHERE purpose = 'access' AND retired_at IS NULL"
        )
        .await,
        1
    );
}

on_both_backends!(
    an_access_token_passes_every_gateway_check,
    checking_an_access_token_reads_no_database,
    a_refresh_costs_one_read,
    forged_expired_and_oversized_access_tokens_are_refused,
    the_key_set_is_served_over_grpc_and_http_without_secrets,
    access_tokens_live_as_long_as_configured,
    a_rotated_key_signs_at_one_replica_and_verifies_at_the_other,
);
