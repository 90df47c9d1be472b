//! Running it: Prometheus metrics and a graceful stop on SIGTERM.

use std::time::Duration;

use label_studio_identity::grpc::SERVICE_NAME;
use tokio_stream::StreamExt;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    helpers::{
        Backend, ServerProcess, TestDb, http_get, join_all, sign_up, spawn_app, spawn_app_with,
    },
    on_both_backends,
};

async fn metrics_show_requests_failures_hashing_and_the_pool(backend: Backend) {
    let (app, _db) = spawn_app(backend).await;
    app.sign_up("ann@example.com", "correct-horse").await;
    let _ = app.login("ann@example.com", "wrong-password").await;
    let _ = app.token_login("not-a-token").await;

    let text = app.metrics().await;

    for series in [
        "identity_grpc_requests_total{method=\"CreateUser\",code=\"OK\"} 1",
        "identity_grpc_requests_total{method=\"Authenticate\",code=\"UNAUTHENTICATED\"} 2",
        "identity_grpc_request_duration_seconds_bucket{le=",
        "identity_grpc_request_duration_seconds_count{method=\"Authenticate\"} 2",
        "identity_auth_failures_total{reason=\"INVALID_CREDENTIALS\"} 1",
        "identity_auth_failures_total{reason=\"TOKEN_INVALID\"} 1",
        "identity_argon2_in_flight ",
        "identity_argon2_waiting ",
        "identity_argon2_computations_total ",
        "identity_db_pool_connections_in_use ",
        "identity_db_pool_connections_idle ",
    ] {
        assert!(text.contains(series), "no {series} in\n{text}");
    }
    let missing = http_get_status(app.metrics_addr.unwrap(), "/nothing").await;
    assert!(
        missing.lines().next().is_some_and(|l| l.contains(" 404 ")),
        "{missing}"
    );
}

async fn http_get_status(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// SIGTERM in the middle of calls: health turns NOT_SERVING at once, every call in flight
/// finishes, nothing is half-written, and the process exits 0.
async fn sigterm_lets_calls_in_flight_finish(backend: Backend) {
    let db = TestDb::new(backend).await;
    let metrics_port = crate::helpers::free_port().to_string();
    let mut server = ServerProcess::start(
        &db,
        &[],
        &[
            // Slow hashing, one at a time, so calls are still queued when the signal comes.
            ("IDENTITY_ARGON2__MEMORY_KIB", "16384"),
            ("IDENTITY_ARGON2__ITERATIONS", "3"),
            ("IDENTITY_ARGON2__MAX_CONCURRENT", "1"),
            ("IDENTITY_METRICS__PORT", &metrics_port),
        ],
    );
    server.wait_serving().await;
    let app = server.client().await;
    let mut watch = HealthClient::new(app.channel.clone())
        .watch(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let mut client = app.client.clone();
            async move {
                client
                    .create_user(sign_up(&format!("user{i}@example.com"), "correct-horse"))
                    .await
            }
        })
        .collect();
    let in_flight = tokio::spawn(join_all(calls));
    // Wait until the server holds all of them.
    let metrics_addr = ([127, 0, 0, 1], metrics_port.parse::<u16>().unwrap()).into();
    for _ in 0..200 {
        let text = http_get(metrics_addr, "/metrics").await;
        let queued: f64 = ["identity_argon2_in_flight ", "identity_argon2_waiting "]
            .iter()
            .filter_map(|name| text.lines().find_map(|l| l.strip_prefix(name)))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .sum();
        if queued >= 8.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let pid = server.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();

    let update = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("a health update");
    assert_eq!(
        update.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    drop(watch);
    let results = in_flight.await.unwrap();
    for result in &results {
        assert!(result.is_ok(), "a call in flight was cut: {result:?}");
    }
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert_eq!(db.count("SELECT COUNT(*) FROM users").await, 8);
    assert_eq!(db.count("SELECT COUNT(*) FROM memberships").await, 8);
    assert_eq!(db.count("SELECT COUNT(*) FROM tokens").await, 16);
}

/// Reads from `stream` until the server closes it; `false` if it is still open after `wait`.
async fn closed_within(stream: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut sink = Vec::new();
    tokio::time::timeout(wait, stream.read_to_end(&mut sink))
        .await
        .is_ok()
}

/// The metrics listener doesn't touch the store; SQLite is enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_clients_that_send_nothing_are_disconnected_while_scrapes_go_on() {
    use tokio::io::AsyncWriteExt;
    let (app, _db) = spawn_app_with(Backend::Sqlite, |s| {
        s.metrics.header_read_timeout_ms = 300;
    })
    .await;
    let addr = app.metrics_addr.expect("metrics are served");
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();

    let scraped = app.metrics().await;

    assert!(scraped.contains("identity_argon2_in_flight"), "{scraped}");
    // Generous: the timeout is 300 ms, but the machine may be busy.
    assert!(
        closed_within(&mut silent, Duration::from_secs(20)).await,
        "a silent connection stays open"
    );
    assert!(
        closed_within(&mut slow, Duration::from_secs(20)).await,
        "a connection that never finishes its headers stays open"
    );
    assert!(app.metrics().await.contains("identity_argon2_in_flight"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_on_their_own_host_when_one_is_set() {
    let (app, _db) = spawn_app_with(Backend::Sqlite, |s| {
        s.server.host = "0.0.0.0".into();
        s.metrics.host = Some("127.0.0.1".into());
    })
    .await;

    let addr = app.metrics_addr.expect("metrics are served");

    assert_eq!(addr.ip(), std::net::Ipv4Addr::LOCALHOST);
    assert!(app.metrics().await.contains("identity_argon2_in_flight"));
}

on_both_backends!(
    metrics_show_requests_failures_hashing_and_the_pool,
    sigterm_lets_calls_in_flight_finish
);
