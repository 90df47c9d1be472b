//! OpenTelemetry: the server binary, started with the standard `OTEL_*` variables, exports its
//! spans to a real OTLP receiver running in the test (HTTP/protobuf or gRPC); without them it
//! builds no exporter at all.

use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Full};
use hyper::{Request as HttpRequest, Response as HttpResponse, service::service_fn};
use hyper_util::rt::TokioIo;
use label_studio_identity::grpc::pb;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span, span::SpanKind},
};
use prost::Message;
use tokio::net::TcpListener;
use tonic::{
    Code, Request,
    codec::CompressionEncoding,
    metadata::MetadataValue,
    transport::{Certificate, Identity, ServerTlsConfig},
};

use crate::{
    helpers::{
        Backend, ServerProcess, TestDb, assert_refused, command, free_port, http_request, login,
    },
    on_both_backends,
    tls::Ca,
};

const EMAIL: &str = "traced.person@example.com";
const PASSWORD: &str = "pw-traced-Zq7xK2mVn9";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const IDENTITY: &str = "labelstudio.identity.v1.IdentityService";

/// Every export request an in-process collector accepted; it refuses them while `refusing`.
#[derive(Clone, Default)]
struct Received {
    accepted: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    refusing: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    /// Requests whose body came gzip-compressed.
    gzipped: Arc<AtomicUsize>,
}

impl Received {
    fn push(&self, request: ExportTraceServiceRequest) {
        self.accepted.lock().unwrap().push(request);
    }

    fn requests(&self) -> usize {
        self.accepted.lock().unwrap().len() + self.refused.load(Ordering::SeqCst)
    }

    /// The exported spans, each with its resource's attributes.
    fn spans(&self) -> Vec<(Vec<KeyValue>, Span)> {
        let mut spans = Vec::new();
        for request in self.accepted.lock().unwrap().iter() {
            for resource_spans in &request.resource_spans {
                let resource = resource_spans
                    .resource
                    .as_ref()
                    .map(|r| r.attributes.clone())
                    .unwrap_or_default();
                for scope in &resource_spans.scope_spans {
                    for span in &scope.spans {
                        spans.push((resource.clone(), span.clone()));
                    }
                }
            }
        }
        spans
    }

    /// Every byte that reached the collector: protobuf keeps strings as they are, so a secret
    /// anywhere (span names, attributes, events, resource) shows up here.
    fn bytes(&self) -> Vec<u8> {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .flat_map(Message::encode_to_vec)
            .collect()
    }
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf `ExportTraceServiceRequest`.
async fn http_collector() -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let store = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: HttpRequest<hyper::body::Incoming>| {
                    let store = store.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let gzip = request
                            .headers()
                            .get("content-encoding")
                            .is_some_and(|encoding| encoding == "gzip");
                        let mut body = request.into_body().collect().await?.to_bytes().to_vec();
                        if gzip {
                            let mut plain = Vec::new();
                            std::io::Read::read_to_end(
                                &mut flate2::read::GzDecoder::new(body.as_slice()),
                                &mut plain,
                            )
                            .unwrap();
                            body = plain;
                            store.gzipped.fetch_add(1, Ordering::SeqCst);
                        }
                        let status = match ExportTraceServiceRequest::decode(body.as_slice()) {
                            Ok(_) if store.refusing.load(Ordering::SeqCst) => {
                                store.refused.fetch_add(1, Ordering::SeqCst);
                                400
                            }
                            Ok(export) if path == "/v1/traces" => {
                                store.push(export);
                                200
                            }
                            _ => 400,
                        };
                        let reply = ExportTraceServiceResponse::default().encode_to_vec();
                        Ok::<_, hyper::Error>(
                            HttpResponse::builder()
                                .status(status)
                                .header("content-type", "application/x-protobuf")
                                .body(Full::new(hyper::body::Bytes::from(reply)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received)
}

struct GrpcCollector(Received);

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`, over
/// TLS when given its configuration.
async fn grpc_collector(tls: Option<ServerTlsConfig>) -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let service = TraceServiceServer::new(GrpcCollector(received.clone()))
        .accept_compressed(CompressionEncoding::Gzip);
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls).unwrap();
    }
    tokio::spawn(
        server
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, received)
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|AnyValue { value }| value.as_ref())
}

fn text<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attribute(attributes, key) {
        Some(Value::StringValue(text)) => Some(text),
        _ => None,
    }
}

fn number(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attribute(attributes, key) {
        Some(Value::IntValue(number)) => Some(*number),
        _ => None,
    }
}

fn traceparent_request<T>(message: T, trace_id: &str, parent_id: &str) -> Request<T> {
    let mut request = Request::new(message);
    let traceparent = format!("00-{trace_id}-{parent_id}-01");
    request.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(traceparent.as_str()).unwrap(),
    );
    request
        .metadata_mut()
        .insert("tracestate", MetadataValue::from_static("caller=1"));
    request
}

/// The names of a process's threads.
fn threads_of(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|task| {
                    std::fs::read_to_string(task.ok()?.path().join("comm"))
                        .ok()
                        .map(|name| name.trim().to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the process runs the SDK's batch exporter, the thread an exporter brings along.
fn has_exporter_thread(server: &ServerProcess) -> bool {
    threads_of(server.child.id())
        .iter()
        .any(|name| name.starts_with("OpenTelemetry"))
}

/// Stops the server with SIGTERM off the runtime's workers (the collector must keep
/// answering meanwhile), and checks it exited cleanly after flushing its spans.
async fn stop(server: ServerProcess) {
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

async fn a_login_with_a_traceparent_continues_the_callers_trace_with_hash_and_database_spans(
    backend: Backend,
) {
    let (collector, received) = http_collector().await;
    let db = TestDb::new(backend).await;
    let endpoint = format!("http://{collector}");
    let http_port = free_port().to_string();
    let mut server = ServerProcess::start(
        &db,
        &["--log-format", "json", "--http-port", &http_port],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "identity-under-test"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
        ],
    );
    server.wait_serving().await;
    assert!(
        has_exporter_thread(&server),
        "{:?}",
        threads_of(server.child.id())
    );
    let app = server.client().await;

    let created = app.sign_up(EMAIL, PASSWORD).await;
    let session = app
        .client
        .clone()
        .authenticate(traceparent_request(
            login(EMAIL, PASSWORD),
            TRACE_ID,
            PARENT_ID,
        ))
        .await
        .expect("login")
        .into_inner();
    let refused_trace = "0af7651916cd43dd8448eb211c80319c";
    assert_refused(
        app.client
            .clone()
            .authenticate(traceparent_request(
                login(EMAIL, "pw-wrong-Zq7xK2mVn9"),
                refused_trace,
                "b7ad6b7169203331",
            ))
            .await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    // A gateway check continues the gateway's trace too; its query never reaches a span.
    let gateway_trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{gateway_trace}-00f067aa0ba902b7-01");
    let bearer = format!("Bearer {}", session.session_token);
    let checked = http_request(
        SocketAddr::from(([127, 0, 0, 1], http_port.parse().unwrap())),
        "GET",
        "/authz/auth-request?token=query-secret-Hq3",
        &[("traceparent", &traceparent), ("Authorization", &bearer)],
    )
    .await;
    assert_eq!(checked.status, 200, "{checked:?}");
    stop(server).await;

    let spans = received.spans();
    let (_, check) = spans
        .iter()
        .find(|(_, span)| {
            hex::encode(&span.trace_id) == gateway_trace && span.kind == SpanKind::Server as i32
        })
        .expect("the gateway check's span, in the gateway's trace");
    assert_eq!(check.name, "GET /authz/auth-request");
    assert_eq!(check.kind, SpanKind::Server as i32);
    assert_eq!(hex::encode(&check.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(
        text(&check.attributes, "http.route"),
        Some("/authz/auth-request")
    );
    assert_eq!(
        number(&check.attributes, "http.response.status_code"),
        Some(200)
    );
    assert_eq!(
        received.gzipped.load(Ordering::SeqCst),
        received.requests(),
        "every export gzip-compressed"
    );
    let (resource, rpc) = spans
        .iter()
        .find(|(_, span)| {
            hex::encode(&span.trace_id) == TRACE_ID
                && span.name == format!("{IDENTITY}/Authenticate")
        })
        .expect("the login's span, in the caller's trace");
    assert_eq!(text(resource, "service.name"), Some("identity-under-test"));
    assert_eq!(text(resource, "deployment.environment"), Some("test"));
    assert_eq!(hex::encode(&rpc.parent_span_id), PARENT_ID);
    assert_eq!(rpc.kind, SpanKind::Server as i32);
    assert_eq!(text(&rpc.attributes, "rpc.system"), Some("grpc"));
    assert_eq!(text(&rpc.attributes, "rpc.service"), Some(IDENTITY));
    assert_eq!(text(&rpc.attributes, "rpc.method"), Some("Authenticate"));
    assert_eq!(number(&rpc.attributes, "rpc.grpc.status_code"), Some(0));
    assert_eq!(text(&rpc.attributes, "error.type"), None);

    let children: Vec<&Span> = spans
        .iter()
        .map(|(_, span)| span)
        .filter(|span| span.trace_id == rpc.trace_id && span.parent_span_id == rpc.span_id)
        .collect();
    let named = |name: &str| children.iter().filter(|s| s.name == name).count();
    assert_eq!(named("password.queue"), 1, "{children:#?}");
    assert_eq!(named("password.hash"), 1, "{children:#?}");
    let statements: Vec<&&Span> = children
        .iter()
        .filter(|span| span.kind == SpanKind::Client as i32)
        .collect();
    assert!(!statements.is_empty(), "{children:#?}");
    let system = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgresql",
    };
    for statement in &statements {
        assert_eq!(text(&statement.attributes, "db.system"), Some(system));
        let operation = text(&statement.attributes, "db.operation.name").expect("an operation");
        assert_eq!(statement.name, operation);
    }
    let operations: Vec<_> = statements
        .iter()
        .filter_map(|s| text(&s.attributes, "db.operation.name"))
        .collect();
    assert!(operations.contains(&"login_admit"), "{operations:?}");

    let refused = spans
        .iter()
        .map(|(_, span)| span)
        .find(|span| {
            hex::encode(&span.trace_id) == refused_trace && span.kind == SpanKind::Server as i32
        })
        .expect("the refused login's span");
    assert_eq!(
        number(&refused.attributes, "rpc.grpc.status_code"),
        Some(Code::Unauthenticated as i64)
    );
    assert_eq!(
        text(&refused.attributes, "error.type"),
        Some("INVALID_CREDENTIALS")
    );

    // A call without a traceparent starts a trace of its own; nothing else does: migrations,
    // readiness pings and health checks run too, and none of them is exported as a root.
    let signup = spans
        .iter()
        .map(|(_, span)| span)
        .find(|span| span.name == format!("{IDENTITY}/CreateUser"))
        .expect("the signup's span");
    assert!(signup.parent_span_id.is_empty());
    for (_, span) in &spans {
        assert!(
            !span.parent_span_id.is_empty() || span.kind == SpanKind::Server as i32,
            "a root span that is no served call: {span:#?}"
        );
        assert!(!span.name.contains("Health"), "{span:#?}");
    }

    let exported = received.bytes();
    let contains = |needle: &str| {
        exported
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    };
    for secret in [
        EMAIL,
        "traced.person",
        PASSWORD,
        "pw-wrong-Zq7xK2mVn9",
        "query-secret-Hq3",
        created.api_token.as_str(),
        created.session_token.as_str(),
        session.session_token.as_str(),
    ] {
        assert!(!contains(secret), "{secret:?} was exported");
    }
}

on_both_backends!(
    a_login_with_a_traceparent_continues_the_callers_trace_with_hash_and_database_spans
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_grpc_collector_while_the_server_runs() {
    let (collector, received) = grpc_collector(None).await;
    let db = TestDb::new(Backend::Sqlite).await;
    let endpoint = format!("http://{collector}");
    let mut server = ServerProcess::start(
        &db,
        &[
            "--username",
            EMAIL,
            "--password",
            PASSWORD,
            "--user-token",
            "traced-token-123",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    server.wait_serving().await;
    let app = server.client().await;
    let request = traceparent_request(
        pb::AuthenticateRequest {
            credentials: Some(pb::authenticate_request::Credentials::Token(
                "traced-token-123".to_owned(),
            )),
        },
        TRACE_ID,
        PARENT_ID,
    );
    app.client
        .clone()
        .authenticate(request)
        .await
        .expect("token check");

    // Exported in the next batch, without waiting for the shutdown's flush.
    let started = Instant::now();
    let rpc = loop {
        let found = received.spans().into_iter().find(|(_, span)| {
            hex::encode(&span.trace_id) == TRACE_ID && span.kind == SpanKind::Server as i32
        });
        if let Some((resource, span)) = found {
            assert_eq!(
                text(&resource, "service.name"),
                Some("label-studio-identity")
            );
            break span;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no span exported within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(hex::encode(&rpc.parent_span_id), PARENT_ID);
    assert_eq!(text(&rpc.attributes, "rpc.method"), Some("Authenticate"));
    stop(server).await;
    let exported = received.bytes();
    assert!(
        !exported
            .windows("traced-token-123".len())
            .any(|w| w == b"traced-token-123"),
        "the token was exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_grpc_collector_over_mutual_tls_gzip_compressed() {
    let ca = Ca::new("collector ca");
    let collector_pair = ca.server();
    let client = ca.client("identity");
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            &collector_pair.cert,
            &collector_pair.key,
        ))
        .client_ca_root(Certificate::from_pem(&ca.pem));
    let (collector, received) = grpc_collector(Some(tls)).await;
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let ca_file = write("ca.crt", &ca.pem);
    let cert_file = write("client.crt", &client.cert);
    let key_file = write("client.key", &client.key);
    let db = TestDb::new(Backend::Sqlite).await;
    let endpoint = format!("https://127.0.0.1:{}", collector.port());
    let mut server = ServerProcess::start(
        &db,
        &["--username", EMAIL, "--password", PASSWORD],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca_file),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", &cert_file),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", &key_file),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ],
    );
    server.wait_serving().await;
    let app = server.client().await;
    app.client
        .clone()
        .authenticate(traceparent_request(
            login(EMAIL, PASSWORD),
            TRACE_ID,
            PARENT_ID,
        ))
        .await
        .expect("login");
    stop(server).await;
    let exported = received.spans();
    assert!(
        exported.iter().any(|(_, span)| {
            hex::encode(&span.trace_id) == TRACE_ID && span.kind == SpanKind::Server as i32
        }),
        "the login's span did not arrive over TLS ({} spans)",
        exported.len()
    );
}

/// Waits until `done` holds, for at most 30 seconds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(30), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_collector_fails_no_call_and_is_logged_once_until_it_recovers() {
    let (collector, received) = http_collector().await;
    received.refusing.store(true, Ordering::SeqCst);
    let db = TestDb::new(Backend::Sqlite).await;
    let log_path = std::env::temp_dir().join(format!(
        "lsid-otel-log-{}-{}.txt",
        std::process::id(),
        free_port()
    ));
    let log = std::fs::File::create(&log_path).unwrap();
    let endpoint = format!("http://{collector}");
    let mut server = ServerProcess::start_logging(
        &db,
        &["--username", EMAIL, "--password", PASSWORD],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
        Stdio::from(log),
    );
    server.wait_serving().await;
    let app = server.client().await;
    // Two exports refused, each with its own login's spans.
    for refused in 1..=2 {
        app.login(EMAIL, PASSWORD).await.expect("login");
        eventually("an export attempt", || received.requests() >= refused).await;
    }
    received.refusing.store(false, Ordering::SeqCst);
    app.client
        .clone()
        .authenticate(traceparent_request(
            login(EMAIL, PASSWORD),
            TRACE_ID,
            PARENT_ID,
        ))
        .await
        .expect("login");
    eventually("the export after the collector came back", || {
        received
            .spans()
            .iter()
            .any(|(_, span)| hex::encode(&span.trace_id) == TRACE_ID)
    })
    .await;
    stop(server).await;

    let log = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    assert_eq!(log.matches("trace export failed").count(), 1, "{log}");
    assert_eq!(log.matches("trace export works again").count(), 1, "{log}");
    // The calls' spans stay out of the log lines, as without export.
    assert!(!log.contains("rpc.method"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_otel_variables_no_exporter_is_built() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut server = ServerProcess::start(&db, &["--username", EMAIL, "--password", PASSWORD], &[]);
    server.wait_serving().await;
    let app = server.client().await;
    app.client
        .clone()
        .authenticate(traceparent_request(
            login(EMAIL, PASSWORD),
            TRACE_ID,
            PARENT_ID,
        ))
        .await
        .expect("login");
    let threads = threads_of(server.child.id());
    assert!(!threads.is_empty());
    assert!(!has_exporter_thread(&server), "{threads:?}");
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switched_off_export_sends_nothing_even_with_an_endpoint() {
    let (collector, received) = http_collector().await;
    let endpoint = format!("http://{collector}");
    for switch in [
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_TRACES_EXPORTER", "none"),
    ] {
        let db = TestDb::new(Backend::Sqlite).await;
        let mut server = ServerProcess::start(
            &db,
            &["--username", EMAIL, "--password", PASSWORD],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), switch],
        );
        server.wait_serving().await;
        let app = server.client().await;
        app.client
            .clone()
            .authenticate(traceparent_request(
                login(EMAIL, PASSWORD),
                TRACE_ID,
                PARENT_ID,
            ))
            .await
            .expect("login");
        assert!(!has_exporter_thread(&server), "{switch:?}");
        stop(server).await;
        assert_eq!(received.requests(), 0, "{switch:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_otel_variable_stops_the_start_naming_it() {
    let db = TestDb::new(Backend::Sqlite).await;
    for (variable, value) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
    ] {
        let mut child = command(
            &db,
            &["start", "--port", "0"],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                (variable, value),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        // A start that wrongly goes ahead serves until stopped: give it a bounded time.
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("{variable}={value} was accepted");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(!status.success(), "{variable}={value} was accepted");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains(variable), "{variable}: {stderr}");
    }
}
