//! Hostile and malformed input: every request is refused with a clear code, never `INTERNAL`,
//! the server stays up, and nothing it refused reaches the database.

use bytes::{Buf, BufMut, Bytes};
use label_studio_identity::grpc::pb;
use tonic::{
    Code, Request, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::{BinaryMetadataValue, MetadataValue},
};

use crate::{
    helpers::{Backend, TestApp, spawn_app},
    on_both_backends,
};

const PASSWORD: &str = "correct-horse";

/// Strings that have broken other services.
fn payloads() -> Vec<String> {
    let mut payloads: Vec<String> = [
        "",
        " ",
        "\0",
        "a\0b@example.com",
        "nul\0",
        "\u{202e}evil@example.com",
        "zero\u{200b}width@example.com",
        "e\u{301}\u{301}\u{301}@example.com",
        "🔑@🔑.com",
        "' OR '1'='1",
        "'; DROP TABLE users; --",
        "\"; DELETE FROM tokens WHERE ''='",
        "admin@example.com' --",
        "%s%s%s%n%n",
        "{}{:?}{0}",
        "${jndi:ldap://x/a}",
        "../../../../etc/passwd",
        "<script>alert(1)</script>",
        "\r\nSet-Cookie: x=y",
        "\u{7}\u{8}\u{1b}[2J",
        "\u{feff}bom@example.com",
        "\u{fffd}",
        "a@b",
        "@@",
        "a@-.com",
        "/user/signup/?tok",
        "/user/signup/?token=",
        "https://ls.example.com/user/signup/?token=abc%00def",
        "?token=abc&token=",
        "token=",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    payloads.push("x".repeat(300));
    payloads.push(format!("{}@example.com", "a".repeat(300)));
    payloads.push("🔑".repeat(200));
    payloads.push("p".repeat(129));
    payloads.push("\u{10ffff}".repeat(10));
    payloads
}

/// Row counts of the account tables.
async fn snapshot(db: &crate::helpers::TestDb) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in ["users", "tokens", "organizations", "memberships"] {
        counts.push(db.count(&format!("SELECT COUNT(*) FROM {table}")).await);
    }
    counts
}

/// Every case sends at least one invalid field, so none may create anything.
async fn count_rejected<T: std::fmt::Debug>(
    result: Result<T, Status>,
    tally: &mut Vec<(Code, String)>,
) {
    match result {
        Ok(ok) => panic!("a hostile request was accepted: {ok:?}"),
        Err(status) => tally.push((status.code(), status.message().to_owned())),
    }
}

async fn hostile_requests_are_refused_cleanly_and_change_nothing(backend: Backend) {
    let (app, db) = spawn_app(backend).await;
    let owner = app.sign_up("owner@example.com", PASSWORD).await;
    let before = snapshot(&db).await;
    let invite_before = db
        .fetch_string("SELECT invite_token FROM organizations")
        .await;
    let mut tally = Vec::new();
    let mut client = app.client.clone();

    for payload in payloads() {
        // Each field in turn, with the others valid where that alone would succeed.
        count_rejected(
            client
                .create_user(pb::CreateUserRequest {
                    email: payload.clone(),
                    password: PASSWORD.into(),
                    ..Default::default()
                })
                .await,
            &mut tally,
        )
        .await;
        if !(8..=128).contains(&payload.chars().count()) {
            count_rejected(
                client
                    .create_user(pb::CreateUserRequest {
                        email: "new@example.com".into(),
                        password: payload.clone(),
                        ..Default::default()
                    })
                    .await,
                &mut tally,
            )
            .await;
        }
        count_rejected(
            client
                .create_user(pb::CreateUserRequest {
                    email: payload.clone(),
                    password: payload.clone(),
                    first_name: payload.clone(),
                    last_name: payload.clone(),
                    username: payload.clone(),
                    user_token: payload.clone(),
                })
                .await,
            &mut tally,
        )
        .await;
        count_rejected(
            client
                .authenticate(crate::helpers::login(&payload, &payload))
                .await,
            &mut tally,
        )
        .await;
        count_rejected(
            client
                .authenticate(pb::AuthenticateRequest {
                    credentials: Some(pb::authenticate_request::Credentials::Token(
                        payload.clone(),
                    )),
                })
                .await,
            &mut tally,
        )
        .await;
        count_rejected(
            client
                .register_with_invite(pb::RegisterWithInviteRequest {
                    invite: payload.clone(),
                    email: "new@example.com".into(),
                    password: PASSWORD.into(),
                    ..Default::default()
                })
                .await,
            &mut tally,
        )
        .await;
        if let Ok(value) = MetadataValue::try_from(format!("Token {payload}")) {
            let mut request = Request::new(pb::ResetInviteLinkRequest {});
            request.metadata_mut().insert("authorization", value);
            count_rejected(client.reset_invite_link(request).await, &mut tally).await;
        }
    }
    // Names alone: valid email and password, one hostile name field over the limit or with
    // control characters.
    for name in ["\0", "\u{1b}[31m", &"n".repeat(257)] {
        count_rejected(
            client
                .create_user(pb::CreateUserRequest {
                    email: "named@example.com".into(),
                    password: PASSWORD.into(),
                    first_name: name.into(),
                    ..Default::default()
                })
                .await,
            &mut tally,
        )
        .await;
        count_rejected(
            client
                .create_user(pb::CreateUserRequest {
                    email: "named@example.com".into(),
                    password: PASSWORD.into(),
                    username: name.into(),
                    ..Default::default()
                })
                .await,
            &mut tally,
        )
        .await;
    }
    // Wrong metadata.
    for authorization in [
        "Token",
        "Bearer ",
        "Basic abc",
        "Token a b c",
        "tokenabc",
        &format!("Token {}", "x".repeat(4000)),
    ] {
        let mut request = Request::new(pb::GetInviteLinkRequest {});
        request.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(authorization).unwrap(),
        );
        count_rejected(client.get_invite_link(request).await, &mut tally).await;
    }
    let mut request = Request::new(pb::GetInviteLinkRequest {});
    request.metadata_mut().insert_bin(
        "authorization-bin",
        BinaryMetadataValue::from_bytes(&[0xff, 0x00]),
    );
    count_rejected(client.get_invite_link(request).await, &mut tally).await;
    let mut request = Request::new(pb::LogoutRequest {});
    request.metadata_mut().insert(
        "x-api-key",
        MetadataValue::try_from(owner.api_token.as_str()).unwrap(),
    );
    count_rejected(client.logout(request).await, &mut tally).await;
    // A self-signup choosing its token, and a 1 MB password refused before hashing.
    count_rejected(
        client
            .create_user(pb::CreateUserRequest {
                email: "self@example.com".into(),
                password: PASSWORD.into(),
                user_token: "chosen".into(),
                ..Default::default()
            })
            .await,
        &mut tally,
    )
    .await;
    count_rejected(
        client
            .create_user(crate::helpers::sign_up(
                "big@example.com",
                &"p".repeat(1 << 20),
            ))
            .await,
        &mut tally,
    )
    .await;
    // Bytes that are no protobuf message at all.
    for body in raw_bodies() {
        count_rejected(
            raw_call(
                &app,
                "/labelstudio.identity.v1.IdentityService/CreateUser",
                body.clone(),
            )
            .await,
            &mut tally,
        )
        .await;
        count_rejected(
            raw_call(
                &app,
                "/labelstudio.identity.v1.IdentityService/Authenticate",
                body.clone(),
            )
            .await,
            &mut tally,
        )
        .await;
        // Health checks decode as strictly as the service they report on.
        for path in [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
        ] {
            let answer = raw_call(&app, path, body.clone()).await;
            if body.len() < 1000 {
                let status = answer.as_ref().expect_err("undecodable");
                assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
            }
            count_rejected(answer, &mut tally).await;
        }
    }

    assert!(tally.len() >= 200, "only {} hostile requests", tally.len());
    let internal: Vec<_> = tally
        .iter()
        .filter(|(code, _)| matches!(code, Code::Internal | Code::Unknown))
        .collect();
    assert!(
        internal.is_empty(),
        "INTERNAL or UNKNOWN answers: {internal:?}"
    );
    for (_, message) in &tally {
        for leak in [
            "SELECT",
            "INSERT",
            "sqlx",
            "panicked",
            "$argon2",
            "constraint",
        ] {
            assert!(!message.contains(leak), "internal detail in {message:?}");
        }
    }
    assert_eq!(
        snapshot(&db).await,
        before,
        "refused requests changed the database"
    );
    assert_eq!(
        db.fetch_string("SELECT invite_token FROM organizations")
            .await,
        invite_before
    );
    assert_eq!(app.health("").await.ok(), Some(1), "still serving");
    app.login("owner@example.com", PASSWORD)
        .await
        .expect("the server still works");
}

fn raw_bodies() -> Vec<Bytes> {
    let mut bodies = vec![
        Bytes::from_static(&[0xff; 16]),
        // Field 1 (email) as a string of invalid UTF-8.
        Bytes::from_static(&[0x0a, 0x03, 0xff, 0xfe, 0xfd]),
        // A length running past the end.
        Bytes::from_static(&[0x0a, 0x7f, b'a']),
        // A varint that never ends.
        Bytes::from_static(&[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ]),
        // Group wire types.
        Bytes::from_static(&[0x0b, 0x0c]),
    ];
    // Over the request size limit.
    let mut huge = vec![0x0a];
    let len = 200_000usize;
    let mut varint = len;
    while varint >= 0x80 {
        huge.push((varint as u8) | 0x80);
        varint >>= 7;
    }
    huge.push(varint as u8);
    huge.extend(std::iter::repeat_n(b'a', len));
    bodies.push(Bytes::from(huge));
    bodies
}

/// Sends raw bytes as a unary call's message.
pub(crate) async fn raw_call(
    app: &TestApp,
    path: &'static str,
    body: Bytes,
) -> Result<Bytes, Status> {
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary(Request::new(body), path.parse().unwrap(), RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

#[derive(Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

on_both_backends!(hostile_requests_are_refused_cleanly_and_change_nothing);
