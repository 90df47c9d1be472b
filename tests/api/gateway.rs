//! The gateway checks: `/authz/auth-request` (nginx), `/authz/forward-auth` (Caddy, Traefik)
//! over real HTTP, and Envoy's `ext_authz` over real gRPC.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use envoy_types::pb::envoy::{
    config::core::v3::header_value_option::HeaderAppendAction,
    service::auth::v3::{
        AttributeContext, CheckRequest, CheckResponse, attribute_context,
        check_response::HttpResponse,
    },
};
use label_studio_identity::grpc::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::{
    helpers::{
        Backend, HttpReply, TestApp, TestDb, http_request, parse_http_reply, spawn_app,
        spawn_app_with, with_auth,
    },
    on_both_backends,
};

const PASSWORD: &str = "correct-horse";
const AUTH_REQUEST: &str = "/authz/auth-request";
const FORWARD_AUTH: &str = "/authz/forward-auth";
const BROWSER: (&str, &str) = (
    "Accept",
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
);
const API_CLIENT: (&str, &str) = ("Accept", "application/json");

/// One gateway check over HTTP.
pub async fn check(app: &TestApp, endpoint: &str, headers: &[(&str, &str)]) -> HttpReply {
    http_request(
        app.http_addr.expect("http listener"),
        "GET",
        endpoint,
        headers,
    )
    .await
}

/// One ext_authz `Check` with these request headers (lowercase keys, as Envoy sends them).
pub async fn ext_authz(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> CheckResponse {
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready().await.expect("ready");
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    host: "label-studio.example.com".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    grpc.unary(
        tonic::Request::new(request),
        "/envoy.service.auth.v3.Authorization/Check"
            .parse()
            .unwrap(),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .expect("Check answers")
    .into_inner()
}

/// The `next` parameter of a login URL, percent-decoded.
fn next_of(location: &str) -> String {
    let encoded = location
        .split_once("?next=")
        .unwrap_or_else(|| panic!("no next in {location:?}"))
        .1;
    percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .expect("utf-8")
        .into_owned()
}

struct Member {
    user_id: String,
    organization_id: String,
    api_token: String,
    session: String,
}

async fn ann(app: &TestApp) -> Member {
    let created = app
        .client
        .clone()
        .create_user(pb::CreateUserRequest {
            email: "Ann@Example.com".into(),
            password: PASSWORD.into(),
            first_name: "Ann".into(),
            last_name: "Lee".into(),
            ..Default::default()
        })
        .await
        .expect("sign up")
        .into_inner();
    Member {
        user_id: created.user.expect("user").id,
        organization_id: created.organization.expect("organization").id,
        api_token: created.api_token,
        session: created.session_token,
    }
}

#[track_caller]
fn assert_identity(reply: &HttpReply, member: &Member, auth: &str) {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("remote-user"), Some(member.user_id.as_str()));
    assert_eq!(reply.header("remote-email"), Some("ann@example.com"));
    assert_eq!(reply.header("remote-name"), Some("Ann Lee"));
    assert_eq!(
        reply.header("remote-organization"),
        Some(member.organization_id.as_str())
    );
    assert_eq!(reply.header("remote-auth"), Some(auth));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
}

async fn api_tokens_and_session_cookies_name_the_caller(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let ann = ann(&app).await;
    let token = format!("Token {}", ann.api_token);
    let bearer = format!("Bearer {}", ann.session);
    let cookie = format!("csrftoken=abc123; sessionid={}; theme=dark", ann.session);
    let quoted = format!("sessionid=; sessionid=\"{}\"", ann.session);

    for endpoint in [AUTH_REQUEST, FORWARD_AUTH] {
        let reply = check(&app, endpoint, &[("Authorization", &token)]).await;
        assert_identity(&reply, &ann, "api-token");
        let lower = format!("token {}", ann.api_token);
        let reply = check(&app, endpoint, &[("authorization", &lower)]).await;
        assert_identity(&reply, &ann, "api-token");
        let reply = check(&app, endpoint, &[("X-Api-Key", &ann.api_token)]).await;
        assert_identity(&reply, &ann, "api-token");
        let reply = check(&app, endpoint, &[("Authorization", &bearer)]).await;
        assert_identity(&reply, &ann, "session");
        let reply = check(&app, endpoint, &[("Cookie", &cookie), BROWSER]).await;
        assert_identity(&reply, &ann, "session");
        let reply = check(&app, endpoint, &[("Cookie", &quoted)]).await;
        assert_identity(&reply, &ann, "session");
    }
    // An API token is no session, a session no API token.
    let crossed = format!("sessionid={}", ann.api_token);
    let reply = check(&app, FORWARD_AUTH, &[("Cookie", &crossed)]).await;
    assert_eq!(reply.status, 401, "{reply:?}");
}

async fn a_custom_cookie_name_carries_the_session(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, |settings| {
        settings.session.cookie_name = "ls_session".into();
    })
    .await;
    let ann = ann(&app).await;

    let named = format!("sessionid=stale; ls_session={}", ann.session);
    let reply = check(&app, FORWARD_AUTH, &[("Cookie", &named)]).await;
    assert_identity(&reply, &ann, "session");
    let default_name = format!("sessionid={}", ann.session);
    let reply = check(&app, FORWARD_AUTH, &[("Cookie", &default_name)]).await;
    assert_eq!(reply.status, 401, "{reply:?}");
}

async fn without_credentials_api_clients_get_401_and_browsers_the_login_page(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;

    let reply = check(&app, AUTH_REQUEST, &[API_CLIENT]).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert!(reply.header("www-authenticate").is_some(), "{reply:?}");
    assert!(reply.header("location").is_none(), "{reply:?}");
    let body: serde_json::Value = serde_json::from_str(&reply.body).expect("json body");
    assert_eq!(body["reason"], "CREDENTIALS_MISSING");

    // nginx turns any 3xx of the sub-request into a 500: the way to the login page comes as a
    // header of the 401, which its configuration redirects to.
    let reply = check(
        &app,
        AUTH_REQUEST,
        &[
            BROWSER,
            ("X-Original-URL", "https://ls.example.com/projects/?page=2"),
        ],
    )
    .await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(
        reply.header("location"),
        Some("/user/login/?next=/projects/%3Fpage%3D2")
    );

    let reply = check(&app, FORWARD_AUTH, &[API_CLIENT]).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert!(reply.header("www-authenticate").is_some(), "{reply:?}");

    let reply = check(
        &app,
        FORWARD_AUTH,
        &[
            BROWSER,
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "ls.example.com"),
            ("X-Forwarded-Uri", "/projects/3/data?page=2&tab=a b"),
        ],
    )
    .await;
    assert_eq!(reply.status, 302, "{reply:?}");
    let location = reply.header("location").expect("location");
    assert_eq!(
        location,
        "/user/login/?next=/projects/3/data%3Fpage%3D2%26tab%3Da%20b"
    );
    assert_eq!(next_of(location), "/projects/3/data?page=2&tab=a b");

    // An unknown token is no better than none.
    let reply = check(
        &app,
        FORWARD_AUTH,
        &[
            BROWSER,
            ("Cookie", "sessionid=not-a-session"),
            ("X-Forwarded-Uri", "/"),
        ],
    )
    .await;
    assert_eq!(reply.status, 302, "{reply:?}");
}

async fn the_login_page_is_on_the_public_url(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, |settings| {
        settings.server.public_url = Some("https://ls.example.com/".into());
    })
    .await;

    let reply = check(
        &app,
        FORWARD_AUTH,
        &[BROWSER, ("X-Forwarded-Uri", "/tasks")],
    )
    .await;
    assert_eq!(reply.status, 302, "{reply:?}");
    assert_eq!(
        reply.header("location"),
        Some("https://ls.example.com/user/login/?next=/tasks")
    );
}

async fn next_never_leads_to_another_host(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;

    for hostile in [
        "//evil.com/x",
        "/\\evil.com",
        "\\/evil.com",
        "https://evil.com/a?b=1",
        "//evil.com",
        "https:evil.com",
        // Browsers drop tabs inside URLs: `/<tab>/evil.com` is `//evil.com` to them.
        "/\t/evil.com",
        "/\t\\evil.com",
        "https:/\t/evil.com/a",
    ] {
        for (endpoint, header) in [
            (FORWARD_AUTH, "X-Forwarded-Uri"),
            (AUTH_REQUEST, "X-Original-URL"),
        ] {
            let reply = check(&app, endpoint, &[BROWSER, (header, hostile)]).await;
            let location = reply.header("location").expect("location");
            assert!(location.starts_with("/user/login/"), "{location}");
            let next = next_of(location);
            assert!(next.starts_with('/'), "{hostile:?} gave {next:?}");
            assert!(
                !next.starts_with("//") && !next.starts_with("/\\"),
                "{hostile:?} gave {next:?}"
            );
        }
    }
    let reply = check(
        &app,
        FORWARD_AUTH,
        &[BROWSER, ("X-Forwarded-Uri", "https://evil.com/a?b=1")],
    )
    .await;
    assert_eq!(next_of(reply.header("location").unwrap()), "/a?b=1");
}

async fn reset_tokens_and_ended_sessions_are_refused_at_once(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let ann = ann(&app).await;
    let old_token = format!("Token {}", ann.api_token);
    let cookie = format!("sessionid={}", ann.session);

    let reset = app
        .client
        .clone()
        .reset_api_token(with_auth(pb::ResetApiTokenRequest {}, &old_token))
        .await
        .expect("reset")
        .into_inner();
    app.client
        .clone()
        .logout(with_auth(
            pb::LogoutRequest {},
            &format!("Bearer {}", ann.session),
        ))
        .await
        .expect("logout");

    for endpoint in [AUTH_REQUEST, FORWARD_AUTH] {
        let reply = check(&app, endpoint, &[API_CLIENT, ("Authorization", &old_token)]).await;
        assert_eq!(reply.status, 401, "{endpoint} old token: {reply:?}");
        assert!(reply.header("www-authenticate").is_some());
        let reply = check(&app, endpoint, &[API_CLIENT, ("Cookie", &cookie)]).await;
        assert_eq!(reply.status, 401, "{endpoint} ended session: {reply:?}");
        let new_token = format!("Token {}", reset.api_token);
        let reply = check(&app, endpoint, &[("Authorization", &new_token)]).await;
        assert_identity(&reply, &ann, "api-token");
    }
}

async fn a_removed_member_is_forbidden_not_sent_to_log_in(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    let ann = ann(&app).await;
    db.execute(&format!(
        "UPDATE memberships SET deleted_at = joined_at WHERE user_id = {}",
        ann.user_id
    ))
    .await;
    let token = format!("Token {}", ann.api_token);
    let cookie = format!("sessionid={}", ann.session);

    for endpoint in [AUTH_REQUEST, FORWARD_AUTH] {
        let reply = check(&app, endpoint, &[("Authorization", &token)]).await;
        assert_eq!(reply.status, 403, "{reply:?}");
        let reply = check(&app, endpoint, &[BROWSER, ("Cookie", &cookie)]).await;
        assert_eq!(reply.status, 403, "{reply:?}");
        assert!(reply.header("location").is_none(), "{reply:?}");
        assert!(reply.header("remote-user").is_none(), "{reply:?}");
    }
}

/// The value of one sample line of the metrics text, 0 when absent.
fn sample(metrics: &str, line_start: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(line_start))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn requests_without_credentials_touch_neither_the_database_nor_the_throttle(
    backend: Backend,
) {
    let (app, db) = spawn_app_with(backend, |settings| {
        settings.throttle.token_failures_per_address = 2;
        settings.throttle.base_delay_ms = 60_000;
    })
    .await;
    let ann = ann(&app).await;
    let audit_before = db.count("SELECT COUNT(*) FROM audit_events").await;

    for _ in 0..10 {
        for endpoint in [AUTH_REQUEST, FORWARD_AUTH] {
            let reply = check(&app, endpoint, &[API_CLIENT]).await;
            assert_eq!(reply.status, 401, "{reply:?}");
        }
        let denied = ext_authz(&app, "/", &[("accept", "application/json")]).await;
        assert_eq!(denied.status.unwrap().code, Code::Unauthenticated as i32);
    }

    assert_eq!(db.count("SELECT COUNT(*) FROM throttle").await, 0);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM audit_events").await,
        audit_before
    );
    let metrics = app.metrics().await;
    for endpoint in ["auth-request", "forward-auth", "ext-authz"] {
        assert_eq!(
            sample(
                &metrics,
                &format!(
                    "identity_gateway_checks_total{{endpoint=\"{endpoint}\",outcome=\"no_credentials\"}}"
                )
            ),
            10.0,
            "{metrics}"
        );
    }
    assert!(
        !metrics.contains("identity_auth_failures_total{"),
        "{metrics}"
    );
    let token = format!("Token {}", ann.api_token);
    let reply = check(&app, FORWARD_AUTH, &[("Authorization", &token)]).await;
    assert_identity(&reply, &ann, "api-token");
}

/// No database at all (nothing listens where it should be): checks without credentials still
/// answer at once, because they never ask it; checks with a token say it is away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_without_credentials_answer_with_the_database_away() {
    let mut settings = TestDb::new(Backend::Sqlite).await.settings();
    settings.database.url = Some("postgres://postgres@127.0.0.1:1/none".into());
    settings.database.acquire_timeout_ms = 300;
    let app = label_studio_identity::startup::Application::build(settings)
        .await
        .expect("build");
    let http = app.http_addr().expect("http address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));

    let anonymous = http_request(http, "GET", FORWARD_AUTH, &[API_CLIENT]).await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    let browser = http_request(http, "GET", FORWARD_AUTH, &[BROWSER]).await;
    assert_eq!(browser.status, 302, "{browser:?}");
    let with_token = http_request(
        http,
        "GET",
        FORWARD_AUTH,
        &[("Authorization", "Token 0123456789abcdef")],
    )
    .await;
    assert_eq!(with_token.status, 503, "{with_token:?}");
    assert!(with_token.header("retry-after").is_some());
    // nginx accepts only 200, 401 and 403 from auth_request.
    let with_token = http_request(
        http,
        "GET",
        AUTH_REQUEST,
        &[("Authorization", "Token 0123456789abcdef")],
    )
    .await;
    assert_eq!(with_token.status, 401, "{with_token:?}");
    assert!(with_token.header("retry-after").is_some());
    let body: serde_json::Value = serde_json::from_str(&with_token.body).unwrap();
    assert_eq!(body["reason"], "UNAVAILABLE");

    let _ = stop.send(());
    server.await.expect("server task").expect("clean stop");
}

async fn invalid_credentials_are_throttled_per_client_address(backend: Backend) {
    let (app, _db) = spawn_app_with(backend, |settings| {
        settings.throttle.token_failures_per_address = 3;
        settings.throttle.base_delay_ms = 60_000;
        settings.server.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let ann = ann(&app).await;
    let token = format!("Token {}", ann.api_token);
    let attacker = ("X-Forwarded-For", "203.0.113.9");

    for n in 0..3 {
        let guess = format!("Token guess-{n}");
        let endpoint = if n % 2 == 0 {
            FORWARD_AUTH
        } else {
            AUTH_REQUEST
        };
        let reply = check(&app, endpoint, &[attacker, ("Authorization", &guess)]).await;
        assert_eq!(reply.status, 401, "{reply:?}");
    }

    // Blocked: even a right token from that address is refused, so guesses can't be told apart.
    let reply = check(&app, FORWARD_AUTH, &[attacker, ("Authorization", &token)]).await;
    assert_eq!(reply.status, 429, "{reply:?}");
    let wait: u64 = reply
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let reply = check(
        &app,
        FORWARD_AUTH,
        &[BROWSER, attacker, ("Cookie", "sessionid=x")],
    )
    .await;
    assert_eq!(reply.status, 429, "browsers are throttled too: {reply:?}");
    let reply = check(&app, AUTH_REQUEST, &[attacker, ("Authorization", &token)]).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert!(reply.header("retry-after").is_some(), "{reply:?}");
    let denied = ext_authz(
        &app,
        "/",
        &[
            ("authorization", &token),
            ("x-forwarded-for", "203.0.113.9"),
        ],
    )
    .await;
    let Some(HttpResponse::DeniedResponse(response)) = denied.http_response else {
        panic!("not denied: {denied:?}");
    };
    assert_eq!(response.status.unwrap().code, 429);

    // Another client behind the same gateway is not slowed down.
    let reply = check(
        &app,
        FORWARD_AUTH,
        &[
            ("X-Forwarded-For", "198.51.100.4"),
            ("Authorization", &token),
        ],
    )
    .await;
    assert_identity(&reply, &ann, "api-token");
}

async fn identity_headers_never_carry_control_characters(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    let ann = ann(&app).await;
    // Names imported from elsewhere may hold anything; the API itself refuses these.
    let newline = match backend {
        Backend::Sqlite => "char(13) || char(10)",
        Backend::Postgres => "chr(13) || chr(10)",
    };
    db.execute(&format!(
        "UPDATE users SET first_name = 'Ann' || {newline} || 'Remote-User: 1', \
         last_name = 'Lee' || {newline} WHERE id = {}",
        ann.user_id
    ))
    .await;

    let token = format!("Token {}", ann.api_token);
    let reply = check(&app, FORWARD_AUTH, &[("Authorization", &token)]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("remote-name"), Some("AnnRemote-User: 1 Lee"));
    let users: Vec<_> = reply
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("remote-user"))
        .collect();
    assert_eq!(users.len(), 1, "{reply:?}");
    assert_eq!(users[0].1, ann.user_id);
}

async fn the_http_listener_is_plain_http_1_1_with_keep_alive(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let ann = ann(&app).await;
    let addr = app.http_addr.unwrap();

    // Two checks on one connection, the first with a body that is ignored.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let first = format!(
        "POST {FORWARD_AUTH} HTTP/1.1\r\nHost: identity\r\nX-Api-Key: {}\r\n\
         Content-Length: 5\r\n\r\nhello",
        ann.api_token
    );
    stream.write_all(first.as_bytes()).await.unwrap();
    let reply = read_one_reply(&mut stream).await;
    assert_identity(&reply, &ann, "api-token");
    let second = format!(
        "DELETE {AUTH_REQUEST} HTTP/1.1\r\nHost: identity\r\nX-Api-Key: {}\r\n\r\n",
        ann.api_token
    );
    stream.write_all(second.as_bytes()).await.unwrap();
    let reply = read_one_reply(&mut stream).await;
    assert_identity(&reply, &ann, "api-token");

    let reply = http_request(addr, "GET", "/authz/nothing-here", &[]).await;
    assert_eq!(reply.status, 404, "{reply:?}");
    let reply = http_request(addr, "GET", "/", &[]).await;
    assert_eq!(reply.status, 404, "{reply:?}");

    let huge = "a".repeat(20 * 1024);
    let reply = http_request(addr, "GET", FORWARD_AUTH, &[("Cookie", &huge)]).await;
    assert_eq!(reply.status, 431, "{reply:?}");
    let reply = check(&app, FORWARD_AUTH, &[("X-Api-Key", &ann.api_token)]).await;
    assert_identity(&reply, &ann, "api-token");
}

/// Reads one response with a `Content-Length` body off a kept-alive connection.
async fn read_one_reply(stream: &mut tokio::net::TcpStream) -> HttpReply {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("a reply in time")
            .expect("read");
        assert!(n > 0, "connection closed after {raw:?}");
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = parse_http_reply(&raw[..end + 4]);
            let length: usize = head
                .header("content-length")
                .map_or(0, |value| value.parse().unwrap());
            if raw.len() >= end + 4 + length {
                return parse_http_reply(&raw[..end + 4 + length]);
            }
        }
    }
}

async fn the_http_listener_stops_with_the_server(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let addr: SocketAddr = app.http_addr.unwrap();
    let reply = http_request(addr, "GET", FORWARD_AUTH, &[]).await;
    assert_eq!(reply.status, 401);

    app.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the http listener still accepts"
    );
}

async fn ext_authz_allows_with_identity_headers_that_replace_the_clients(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let ann = ann(&app).await;
    let token = format!("Token {}", ann.api_token);
    let cookie = format!("csrftoken=abc; sessionid={}; theme=dark", ann.session);

    for (headers, auth) in [
        (vec![("authorization", token.as_str())], "api-token"),
        (vec![("x-api-key", ann.api_token.as_str())], "api-token"),
        (vec![("cookie", cookie.as_str())], "session"),
    ] {
        let mut headers = headers;
        headers.extend([
            ("remote-user", "1"),
            ("remote-email", "boss@example.com"),
            ("remote-groups", "admins"),
            ("Remote-Admin", "yes"),
        ]);
        let response = ext_authz(&app, "/projects/", &headers).await;
        assert_eq!(response.status.as_ref().unwrap().code, Code::Ok as i32);
        let Some(HttpResponse::OkResponse(ok)) = response.http_response else {
            panic!("not allowed: {response:?}");
        };
        let set: HashMap<_, _> = ok
            .headers
            .iter()
            .map(|option| {
                assert_eq!(
                    option.append_action,
                    HeaderAppendAction::OverwriteIfExistsOrAdd as i32
                );
                assert!(option.keep_empty_value);
                let header = option.header.as_ref().unwrap();
                (header.key.as_str(), header.value.as_str())
            })
            .collect();
        assert_eq!(set["remote-user"], ann.user_id);
        assert_eq!(set["remote-email"], "ann@example.com");
        assert_eq!(set["remote-name"], "Ann Lee");
        assert_eq!(set["remote-organization"], ann.organization_id);
        assert_eq!(set["remote-auth"], auth);
        // Envoy removes after it sets: only client headers the service doesn't set go.
        assert_eq!(ok.headers_to_remove, ["remote-admin", "remote-groups"]);
    }
}

async fn ext_authz_denies_like_forward_auth(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    let ann = ann(&app).await;
    let removed = app.sign_up("removed@example.com", PASSWORD).await;
    let removed_id = removed.user.expect("user").id;
    db.execute(&format!(
        "UPDATE memberships SET deleted_at = joined_at WHERE user_id = {removed_id}"
    ))
    .await;

    let denied = |response: CheckResponse| {
        let code = response.status.as_ref().unwrap().code;
        let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else {
            panic!("not denied: {response:?}");
        };
        let headers: HashMap<String, String> = denied
            .headers
            .into_iter()
            .filter_map(|option| option.header)
            .map(|header| (header.key, header.value))
            .collect();
        (code, denied.status.unwrap().code, headers)
    };

    let (code, status, headers) =
        denied(ext_authz(&app, "/api/projects", &[("accept", "application/json")]).await);
    assert_eq!((code, status), (Code::Unauthenticated as i32, 401));
    assert!(headers.contains_key("www-authenticate"), "{headers:?}");

    let (code, status, headers) = denied(
        ext_authz(
            &app,
            "/projects/?page=2",
            &[("accept", "text/html,*/*;q=0.8")],
        )
        .await,
    );
    assert_eq!((code, status), (Code::Unauthenticated as i32, 302));
    assert_eq!(
        headers["location"],
        "/user/login/?next=/projects/%3Fpage%3D2"
    );
    let (_, status, headers) =
        denied(ext_authz(&app, "//evil.com/x", &[("accept", "text/html")]).await);
    assert_eq!(status, 302);
    assert_eq!(next_of(&headers["location"]), "/evil.com/x");
    for hostile in [
        "/\t/evil.com",
        "/\u{0}/evil.com",
        "/\u{b}/evil.com",
        "/\r\n/evil.com",
        "/\u{7f}/evil.com",
    ] {
        let (_, status, headers) =
            denied(ext_authz(&app, hostile, &[("accept", "text/html")]).await);
        assert_eq!(status, 302);
        assert_eq!(next_of(&headers["location"]), "/evil.com", "{hostile:?}");
    }

    let old_token = format!("Token {}", ann.api_token);
    app.client
        .clone()
        .reset_api_token(with_auth(pb::ResetApiTokenRequest {}, &old_token))
        .await
        .expect("reset");
    app.client
        .clone()
        .logout(with_auth(
            pb::LogoutRequest {},
            &format!("Bearer {}", ann.session),
        ))
        .await
        .expect("logout");
    let (code, status, _) = denied(ext_authz(&app, "/", &[("authorization", &old_token)]).await);
    assert_eq!((code, status), (Code::Unauthenticated as i32, 401));
    let cookie = format!("sessionid={}", ann.session);
    let (code, status, _) = denied(ext_authz(&app, "/", &[("cookie", &cookie)]).await);
    assert_eq!((code, status), (Code::Unauthenticated as i32, 401));

    let removed_token = format!("Token {}", removed.api_token);
    let (code, status, _) = denied(
        ext_authz(
            &app,
            "/",
            &[("authorization", &removed_token), ("accept", "text/html")],
        )
        .await,
    );
    assert_eq!((code, status), (Code::PermissionDenied as i32, 403));
}

async fn ext_authz_is_listed_and_described_by_reflection(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    let mut reflection = ServerReflectionClient::new(app.channel.clone());
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("envoy.service.auth.v3.Authorization".into()),
        MessageRequest::FileContainingSymbol("envoy.service.auth.v3.CheckRequest".into()),
    ]
    .map(|message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    });
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("reflection")
        .into_inner();

    let Some(Ok(list)) = responses.next().await else {
        panic!("no reflection answer");
    };
    let Some(MessageResponse::ListServicesResponse(list)) = list.message_response else {
        panic!("unexpected answer {list:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"envoy.service.auth.v3.Authorization".to_owned()),
        "{names:?}"
    );
    for _ in 0..2 {
        let Some(Ok(answer)) = responses.next().await else {
            panic!("no reflection answer");
        };
        let Some(MessageResponse::FileDescriptorResponse(files)) = answer.message_response else {
            panic!("symbol not found: {answer:?}");
        };
        assert!(!files.file_descriptor_proto.is_empty());
    }
}

async fn ext_authz_refuses_undecodable_bytes_as_invalid_argument(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    for body in [&[0xff_u8; 16][..], &[0x0a, 0x7f, b'a'][..]] {
        let status = crate::hostile::raw_call(
            &app,
            "/envoy.service.auth.v3.Authorization/Check",
            bytes::Bytes::copy_from_slice(body),
        )
        .await
        .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
}

on_both_backends!(
    api_tokens_and_session_cookies_name_the_caller,
    a_custom_cookie_name_carries_the_session,
    without_credentials_api_clients_get_401_and_browsers_the_login_page,
    the_login_page_is_on_the_public_url,
    next_never_leads_to_another_host,
    reset_tokens_and_ended_sessions_are_refused_at_once,
    a_removed_member_is_forbidden_not_sent_to_log_in,
    requests_without_credentials_touch_neither_the_database_nor_the_throttle,
    invalid_credentials_are_throttled_per_client_address,
    identity_headers_never_carry_control_characters,
    the_http_listener_is_plain_http_1_1_with_keep_alive,
    the_http_listener_stops_with_the_server,
    ext_authz_allows_with_identity_headers_that_replace_the_clients,
    ext_authz_denies_like_forward_auth,
    ext_authz_is_listed_and_described_by_reflection,
    ext_authz_refuses_undecodable_bytes_as_invalid_argument,
);
