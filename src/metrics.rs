//! Prometheus metrics, served over HTTP on their own port at `/metrics`.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
};

use crate::{password::PasswordHasher, store::Store};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    endpoint: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The service's metrics. Gauges that mirror other components are read at scrape time.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    auth_failures: Family<ReasonLabels, Counter>,
    gateway_checks: Family<CheckLabels, Counter>,
    gateway_latency: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    hashing_running: Gauge,
    hashing_waiting: Gauge,
    hashing_computed: Counter,
    hashing_computed_seen: std::sync::atomic::AtomicU64,
    pool_in_use: Gauge,
    pool_idle: Gauge,
    statements: Family<OperationLabels, Counter>,
    password_check_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Serialises scrapes, which bring the mirrored counters up to date.
    scraping: std::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("identity");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "gRPC calls by method and status code",
            requests.clone(),
        );
        let latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "grpc_request_duration_seconds",
            "gRPC call latency by method",
            latency.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "refused authentications and registrations by reason",
            auth_failures.clone(),
        );
        let gateway_checks = Family::<CheckLabels, Counter>::default();
        registry.register(
            "gateway_checks",
            "gateway authorization checks by endpoint and outcome",
            gateway_checks.clone(),
        );
        let gateway_latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "gateway_check_duration_seconds",
            "gateway authorization check latency by endpoint",
            gateway_latency.clone(),
        );
        let hashing_running = Gauge::default();
        registry.register(
            "argon2_in_flight",
            "argon2 computations running",
            hashing_running.clone(),
        );
        let hashing_waiting = Gauge::default();
        registry.register(
            "argon2_waiting",
            "argon2 computations waiting for a slot",
            hashing_waiting.clone(),
        );
        let hashing_computed = Counter::default();
        registry.register(
            "argon2_computations",
            "argon2 hashes and verifications computed",
            hashing_computed.clone(),
        );
        let pool_in_use = Gauge::default();
        registry.register(
            "db_pool_connections_in_use",
            "database connections in use",
            pool_in_use.clone(),
        );
        let pool_idle = Gauge::default();
        registry.register(
            "db_pool_connections_idle",
            "database connections idle in the pool",
            pool_idle.clone(),
        );
        let statements = Family::<OperationLabels, Counter>::default();
        registry.register(
            "db_statements",
            "database round trips (statements, BEGIN and COMMIT) by store operation",
            statements.clone(),
        );
        let password_check_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "password_check_seconds",
            "the time every password check is padded to: the current parameters' cost or the \
             costliest stored hash's",
            password_check_seconds.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            auth_failures,
            gateway_checks,
            gateway_latency,
            hashing_running,
            hashing_waiting,
            hashing_computed,
            hashing_computed_seen: std::sync::atomic::AtomicU64::new(0),
            pool_in_use,
            pool_idle,
            statements,
            password_check_seconds,
            scraping: std::sync::Mutex::new(()),
        }
    }

    /// Records one finished call.
    pub fn observe(&self, method: &'static str, code: tonic::Code, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                method,
                code: code_name(code),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels { method })
            .observe(elapsed.as_secs_f64());
    }

    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Records one gateway check (`auth-request`, `forward-auth`, `ext-authz`) and its outcome.
    pub fn gateway_check(&self, endpoint: &'static str, outcome: &'static str, elapsed: Duration) {
        self.gateway_checks
            .get_or_create(&CheckLabels { endpoint, outcome })
            .inc();
        self.gateway_latency
            .get_or_create(&EndpointLabels { endpoint })
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition, with the mirrored gauges read now.
    pub fn render(&self, hasher: &PasswordHasher, store: &dyn Store) -> String {
        let _scraping = self.scraping.lock();
        for (operation, count) in store.statement_counts() {
            let counter = self
                .statements
                .get_or_create(&OperationLabels { operation });
            counter.inc_by(count.saturating_sub(counter.get()));
        }
        self.password_check_seconds
            .set(hasher.padded_cost().as_secs_f64());
        let load = hasher.load();
        self.hashing_running.set(gauge(load.running));
        self.hashing_waiting.set(gauge(load.waiting));
        let seen = self
            .hashing_computed_seen
            .fetch_max(load.computed, std::sync::atomic::Ordering::Relaxed);
        self.hashing_computed
            .inc_by(load.computed.saturating_sub(seen));
        let pool = store.pool_stats();
        self.pool_in_use
            .set(gauge(pool.size.saturating_sub(pool.idle)));
        self.pool_idle.set(gauge(pool.idle));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

fn gauge(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Connections served at once; further ones wait in the listen backlog until one ends.
const MAX_CONNECTIONS: usize = 32;
/// Headers a scrape may send, and their total size.
const MAX_HEADERS: usize = 32;
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// The first and the longest pause after a failed `accept` (out of file descriptors, say),
/// so a persistent failure doesn't spin a core.
const ACCEPT_BACKOFF_START: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves `GET /metrics` until `stopped` turns true. A connection that takes longer than
/// `header_read_timeout` to send a request's headers, or idles that long between requests, is
/// closed.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    hasher: PasswordHasher,
    store: Arc<dyn Store>,
    mut stopped: watch::Receiver<bool>,
    header_read_timeout: Duration,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = ACCEPT_BACKOFF_START;
    loop {
        let accepted = tokio::select! {
            accepted = accept(&listener, &slots) => accepted,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let (stream, slot) = match accepted {
            Ok(connection) => {
                backoff = ACCEPT_BACKOFF_START;
                connection
            }
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "metrics listener failed to accept");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {},
                    _ = stopped.wait_for(|stop| *stop) => return,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let (metrics, hasher, store) = (metrics.clone(), hasher.clone(), store.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = if request.uri().path() == "/metrics" {
                    Response::builder()
                        .header(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )
                        .body(Full::new(Bytes::from(
                            metrics.render(&hasher, store.as_ref()),
                        )))
                } else {
                    Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::new(Bytes::from_static(b"not found; try /metrics\n")))
                };
                async move {
                    Ok::<_, Infallible>(
                        response
                            .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"")))),
                    )
                }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .max_headers(MAX_HEADERS)
                .max_header_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Waits for a free connection slot, then for a connection.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> std::io::Result<(TcpStream, OwnedSemaphorePermit)> {
    let slot = slots
        .clone()
        .acquire_owned()
        .await
        .map_err(std::io::Error::other)?;
    let (stream, _) = listener.accept().await?;
    Ok((stream, slot))
}
