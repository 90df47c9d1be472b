//! The load: seeded accounts, the calls each scenario makes, and the callers that make them for
//! a fixed time at a fixed concurrency, recording latencies and failures by gRPC code (gateway
//! checks over HTTP by the code their HTTP status stands for).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, attribute_context,
};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Empty};
use hyper::{body::Bytes, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use label_studio_identity::grpc::pb::{
    self, authenticate_request::Credentials, identity_service_client::IdentityServiceClient,
};
use rand::Rng as _;
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint},
};
use tonic_types::StatusExt as _;

use crate::{cluster::Cluster, cpu::CpuTimes};

/// The password every seeded account has.
const SEED_PASSWORD: &str = "bench-password-0123";
/// Seeding runs this many signups at once.
const SEED_CONCURRENCY: usize = 8;
/// Streams one HTTP/2 connection carries at most before the client opens another; below the
/// server's default `max_concurrent_streams` (256).
const STREAMS_PER_CONNECTION: usize = 128;
/// The realistic mix, in calls per hundred: a gateway checks a token on every page, reads the
/// invite link now and then, and sees few logins and fewer signups.
pub const MIX: [(Op, u32); 5] = [
    (Op::SessionToken, 60),
    (Op::ApiToken, 25),
    (Op::InviteLink, 8),
    (Op::Password, 5),
    (Op::CreateUser, 2),
];

/// Latencies in microseconds, up to a minute at three significant digits.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Latencies {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self(
            Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")?,
        ))
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.max(1));
    }

    pub fn merge(&mut self, other: &Self) -> anyhow::Result<()> {
        self.0.add(&other.0).context("cannot merge histograms")
    }

    /// The latency at `quantile` (0..=1).
    pub fn at(&self, quantile: f64) -> Duration {
        Duration::from_micros(self.0.value_at_quantile(quantile))
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.0.max())
    }
}

/// One call of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Password,
    /// A password login that, when refused as overloaded, waits as `RetryInfo` says.
    PasswordPolite,
    ApiToken,
    SessionToken,
    CreateUser,
    InviteLink,
    /// One of `MIX`, drawn per call.
    Mix,
    /// `/authz/forward-auth` with an API token: a gateway's check of an API call.
    ForwardAuth,
    /// `/authz/forward-auth` without credentials, answered 401.
    ForwardAuthAnonymous,
    /// ext_authz `Check` with an API token.
    ExtAuthz,
    /// `ListMembers`: the first page of 30, as a member identified by API token.
    ListMembers,
    /// `ListMembers` searching for one of the members seeded with SQL.
    ListMembersQuery,
    /// `Authenticate` with an access token.
    AccessToken,
}

impl Op {
    /// Codes that are the service working as specified for this load, not failures.
    fn expects(self, code: Code) -> bool {
        self == Self::PasswordPolite && code == Code::ResourceExhausted
    }
}

pub struct Plan {
    pub name: &'static str,
    pub op: Op,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
}

/// What one plan did in its measured window.
#[derive(Debug)]
pub struct Stats {
    pub name: &'static str,
    pub op: Op,
    pub concurrency: usize,
    pub ok: u64,
    pub window: Duration,
    pub latencies: Latencies,
    /// Failed calls by gRPC code.
    pub errors: BTreeMap<String, u64>,
    /// Failed calls whose code the scenario does not expect.
    pub unexpected: u64,
    /// The largest server's peak resident memory during the scenario.
    pub peak_rss: Option<u64>,
    /// CPU spent in the measured window by the whole run (all its plans), and the calls
    /// every plan of the run completed in it.
    pub cpu: Option<(CpuTimes, u64)>,
    /// Database statements the servers issued in the measured window (the whole run).
    pub statements: Option<u64>,
}

impl Stats {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
    }
}

/// A seeded account and its credentials.
pub struct Seed {
    email: String,
    api_token: String,
    session_token: String,
    api_auth: MetadataValue<Ascii>,
    /// The address a gateway reports for this user (`x-forwarded-for`), when calls carry one.
    address: Option<MetadataValue<Ascii>>,
}

pub struct Seeds {
    accounts: Vec<Seed>,
    /// Access tokens of the accounts, minted just before the scenario that uses them, and the
    /// personal access tokens they come from.
    access_tokens: std::sync::RwLock<Vec<String>>,
    personal_tokens: tokio::sync::Mutex<Vec<String>>,
    /// Distinguishes this run's new emails from any earlier run's on the same server.
    tag: String,
    next: AtomicU64,
}

impl Seeds {
    pub fn api_tokens(&self) -> Vec<String> {
        self.accounts.iter().map(|a| a.api_token.clone()).collect()
    }

    fn pick(&self) -> &Seed {
        &self.accounts[rand::rng().random_range(0..self.accounts.len())]
    }

    fn new_email(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("new-{}-{n}@bench.example.com", self.tag)
    }
}

/// The servers' addresses; each scenario opens its own connections.
pub struct Target {
    addrs: Vec<SocketAddr>,
    http_addrs: Vec<SocketAddr>,
    connections: usize,
}

impl Target {
    /// Checks that every server accepts a connection.
    pub async fn connect(
        addrs: Vec<SocketAddr>,
        http_addrs: Vec<SocketAddr>,
        connections: usize,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!addrs.is_empty(), "no server to target");
        let target = Self {
            addrs,
            http_addrs,
            connections: connections.max(1),
        };
        target.clients(1).await?;
        Ok(target)
    }

    /// Clients over enough connections to every server for `concurrency` callers; callers
    /// take them in turn, so replicas share the load evenly.
    async fn clients(&self, concurrency: usize) -> anyhow::Result<Vec<Channel>> {
        let per_server = self
            .connections
            .max(concurrency.div_ceil(STREAMS_PER_CONNECTION * self.addrs.len()));
        let mut clients = Vec::with_capacity(per_server * self.addrs.len());
        for _ in 0..per_server {
            for addr in &self.addrs {
                let channel = Endpoint::from_shared(format!("http://{addr}"))?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("cannot connect to {addr}"))?;
                clients.push(channel);
            }
        }
        Ok(clients)
    }
}

/// Creates `users` accounts through self-signup and keeps their tokens.
pub async fn seed(
    target: &Target,
    users: usize,
    timeout: Duration,
    gateway: bool,
) -> anyhow::Result<Seeds> {
    let tag = format!("{:x}", chrono::Utc::now().timestamp_micros());
    let clients = target.clients(SEED_CONCURRENCY).await?;
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..SEED_CONCURRENCY)
        .map(|worker| {
            let mut client = IdentityServiceClient::new(clients[worker % clients.len()].clone());
            let (next, tag) = (next.clone(), tag.clone());
            tokio::spawn(async move {
                let mut made = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= users as u64 {
                        return anyhow::Ok(made);
                    }
                    let email = format!("seed-{tag}-{n}@bench.example.com");
                    let address = gateway.then(|| user_address(n));
                    let created = loop {
                        let message = pb::CreateUserRequest {
                            email: email.clone(),
                            password: SEED_PASSWORD.into(),
                            ..Default::default()
                        };
                        match client
                            .create_user(request(message, timeout, address.as_ref()))
                            .await
                        {
                            Ok(response) => break response.into_inner(),
                            Err(status) if status.code() == Code::ResourceExhausted => {
                                tokio::time::sleep(retry_delay(&status)).await;
                            }
                            Err(status) => anyhow::bail!("seeding {email} failed: {status}"),
                        }
                    };
                    let api_auth = format!("Token {}", created.api_token)
                        .parse()
                        .context("an API token that is no metadata value")?;
                    made.push(Seed {
                        email,
                        api_token: created.api_token,
                        session_token: created.session_token,
                        api_auth,
                        address,
                    });
                }
            })
        })
        .collect();
    let mut accounts = Vec::with_capacity(users);
    for task in tasks {
        accounts.extend(task.await.context("a seeding task panicked")??);
    }
    anyhow::ensure!(!accounts.is_empty(), "--users must be at least 1");
    Ok(Seeds {
        accounts,
        access_tokens: std::sync::RwLock::default(),
        personal_tokens: tokio::sync::Mutex::default(),
        tag,
        next: AtomicU64::new(0),
    })
}

/// Gives every seeded account a personal access token (once) and a fresh access token from it.
pub async fn mint_access_tokens(
    target: &Target,
    seeds: &Seeds,
    timeout: Duration,
) -> anyhow::Result<()> {
    let channel = target.clients(1).await?.remove(0);
    let mut client = IdentityServiceClient::new(channel);
    let mut pats = seeds.personal_tokens.lock().await;
    if pats.is_empty() {
        for seed in &seeds.accounts {
            let mut request = request(
                pb::CreatePersonalAccessTokenRequest {},
                timeout,
                seed.address.as_ref(),
            );
            request
                .metadata_mut()
                .insert("authorization", seed.api_auth.clone());
            let created = client
                .create_personal_access_token(request)
                .await
                .with_context(|| format!("creating a PAT for {}", seed.email))?;
            pats.push(created.into_inner().token);
        }
    }
    let mut minted = Vec::with_capacity(pats.len());
    for (seed, pat) in seeds.accounts.iter().zip(pats.iter()) {
        let message = pb::RefreshAccessTokenRequest {
            refresh: pat.clone(),
        };
        let access = client
            .refresh_access_token(request(message, timeout, seed.address.as_ref()))
            .await
            .with_context(|| format!("refreshing the PAT of {}", seed.email))?;
        minted.push(access.into_inner().access_token);
    }
    if let Ok(mut tokens) = seeds.access_tokens.write() {
        *tokens = minted;
    }
    Ok(())
}

/// Runs the plans at the same time over one window and returns what each did, with the
/// servers' peak memory over the whole run.
pub async fn run(
    target: &Target,
    seeds: &Arc<Seeds>,
    cluster: &Cluster,
    plans: &[Plan],
) -> anyhow::Result<Vec<Stats>> {
    let total: usize = plans.iter().map(|p| p.concurrency).sum();
    let clients = target.clients(total).await?;
    cluster.reset_peak();
    let began = Instant::now();
    let mut handles = Vec::new();
    let mut caller = 0usize;
    for plan in plans {
        let measure_from = began + plan.warmup;
        let end = measure_from + plan.duration;
        let mut workers = Vec::with_capacity(plan.concurrency);
        for _ in 0..plan.concurrency {
            let channel = clients[caller % clients.len()].clone();
            let http_addr = (!target.http_addrs.is_empty())
                .then(|| target.http_addrs[caller % target.http_addrs.len()]);
            caller += 1;
            let caller = Caller {
                client: IdentityServiceClient::new(channel.clone()),
                channel,
                http_addr,
                http: None,
            };
            let seeds = seeds.clone();
            let (op, timeout) = (plan.op, plan.timeout);
            workers.push(tokio::spawn(async move {
                worker(caller, &seeds, op, timeout, measure_from, end).await
            }));
        }
        handles.push(workers);
    }
    let end = plans
        .iter()
        .map(|p| began + p.warmup + p.duration)
        .max()
        .unwrap_or(began);
    let measure_from = began + plans.iter().map(|p| p.warmup).max().unwrap_or_default();
    let database = cluster.database_name();
    let mut sampled = 0u64;
    let mut cpu_from = None;
    let mut statements_from = None;
    let mut statements = None;
    let cpu_spent = loop {
        let now = Instant::now();
        if cpu_from.is_none() && now >= measure_from {
            statements_from = cluster.statements().await;
            cpu_from = Some(CpuTimes::sample(cluster.pids(), database.clone()).await);
        }
        if now >= end {
            if let (Some(from), Some(to)) = (statements_from, cluster.statements().await) {
                statements = Some(to.saturating_sub(from));
            }
            break match cpu_from {
                Some(from) => Some(
                    CpuTimes::sample(cluster.pids(), database.clone())
                        .await
                        .since(&from),
                ),
                None => None,
            };
        }
        if let Some(rss) = cluster.rss() {
            sampled = sampled.max(rss.current);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut all = Vec::with_capacity(plans.len());
    for (plan, workers) in plans.iter().zip(handles) {
        let mut stats = Stats {
            name: plan.name,
            op: plan.op,
            concurrency: plan.concurrency,
            ok: 0,
            window: plan.duration,
            latencies: Latencies::new()?,
            errors: BTreeMap::new(),
            unexpected: 0,
            peak_rss: None,
            cpu: None,
            statements: None,
        };
        for worker in workers {
            let own = worker.await.context("a caller panicked")??;
            stats.ok += own.ok;
            stats.latencies.merge(&own.latencies)?;
            for ((code, reason), count) in own.errors {
                if !plan.op.expects(code) {
                    stats.unexpected += count;
                }
                let name = match reason {
                    Some(reason) => format!("{code:?} {reason}"),
                    None => format!("{code:?}"),
                };
                *stats.errors.entry(name).or_default() += count;
            }
        }
        all.push(stats);
    }
    // Peak RSS is read after the callers finished, so it covers the whole run.
    let peak = cluster.rss().map(|rss| rss.peak.max(sampled));
    let calls: u64 = all.iter().map(|stats| stats.ok).sum();
    for stats in &mut all {
        stats.peak_rss = peak;
        stats.cpu = cpu_spent.map(|spent| (spent, calls));
        stats.statements = statements;
    }
    Ok(all)
}

struct Own {
    ok: u64,
    latencies: Latencies,
    errors: std::collections::HashMap<(Code, Option<String>), u64>,
}

/// One caller's connections: gRPC over a channel it shares with others, and a keep-alive HTTP/1.1
/// connection of its own for the gateway checks, opened on first use, as a gateway pools them.
struct Caller {
    client: IdentityServiceClient<Channel>,
    channel: Channel,
    http_addr: Option<SocketAddr>,
    http: Option<SendRequest<Empty<Bytes>>>,
}

async fn worker(
    mut caller: Caller,
    seeds: &Seeds,
    op: Op,
    timeout: Duration,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<Own> {
    let mut own = Own {
        ok: 0,
        latencies: Latencies::new()?,
        errors: std::collections::HashMap::new(),
    };
    loop {
        let sent = Instant::now();
        if sent >= end {
            return Ok(own);
        }
        let op = match op {
            Op::Mix => draw_from_mix(),
            op => op,
        };
        let answer = call(&mut caller, seeds, op, timeout).await;
        let answered = Instant::now();
        let counted = sent >= measure_from && answered <= end;
        match answer {
            Ok(()) if counted => {
                own.ok += 1;
                own.latencies.record(answered - sent);
            }
            Ok(()) => {}
            Err(status) => {
                if counted {
                    let reason = status.get_details_error_info().map(|info| info.reason);
                    *own.errors.entry((status.code(), reason)).or_default() += 1;
                }
                if op == Op::PasswordPolite && status.code() == Code::ResourceExhausted {
                    let wake = Instant::now() + retry_delay(&status);
                    tokio::time::sleep_until(wake.min(end).into()).await;
                }
            }
        }
    }
}

fn draw_from_mix() -> Op {
    let total: u32 = MIX.iter().map(|(_, weight)| weight).sum();
    let mut pick = rand::rng().random_range(0..total);
    for (op, weight) in MIX {
        if pick < weight {
            return op;
        }
        pick -= weight;
    }
    Op::ApiToken
}

/// The address of the `n`th simulated user, in the range set aside for benchmarks
/// (198.18.0.0/15): carried only as `x-forwarded-for` text, never connected to.
fn user_address(n: u64) -> MetadataValue<Ascii> {
    let (high, mid, low) = ((n >> 16) & 1, (n >> 8) & 255, n & 255);
    let text = format!("198.{}.{mid}.{low}", 18 + high);
    MetadataValue::try_from(text.as_str())
        .unwrap_or_else(|_| MetadataValue::from_static("198.18.0.1"))
}

/// A request with a deadline, and the user's address as a trusted gateway reports it.
fn request<T>(message: T, timeout: Duration, address: Option<&MetadataValue<Ascii>>) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    if let Some(address) = address {
        request
            .metadata_mut()
            .insert("x-forwarded-for", address.clone());
    }
    request
}

/// How long an overloaded server asked callers to wait (`google.rpc.RetryInfo`).
fn retry_delay(status: &Status) -> Duration {
    status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .unwrap_or(Duration::from_millis(100))
}

async fn call(caller: &mut Caller, seeds: &Seeds, op: Op, timeout: Duration) -> Result<(), Status> {
    let client = &mut caller.client;
    let seed = seeds.pick();
    let address = seed.address.as_ref();
    let authenticate = |credentials| pb::AuthenticateRequest {
        credentials: Some(credentials),
    };
    match op {
        Op::Password | Op::PasswordPolite => {
            let credentials = Credentials::Password(pb::PasswordCredentials {
                email: seed.email.clone(),
                password: SEED_PASSWORD.into(),
            });
            client
                .authenticate(request(authenticate(credentials), timeout, address))
                .await?;
        }
        Op::ApiToken => {
            let credentials = Credentials::Token(seed.api_token.clone());
            client
                .authenticate(request(authenticate(credentials), timeout, address))
                .await?;
        }
        Op::SessionToken => {
            let credentials = Credentials::Token(seed.session_token.clone());
            client
                .authenticate(request(authenticate(credentials), timeout, address))
                .await?;
        }
        Op::CreateUser => {
            let message = pb::CreateUserRequest {
                email: seeds.new_email(),
                password: SEED_PASSWORD.into(),
                ..Default::default()
            };
            client
                .create_user(request(message, timeout, address))
                .await?;
        }
        Op::InviteLink => {
            let mut request = request(pb::GetInviteLinkRequest {}, timeout, address);
            request
                .metadata_mut()
                .insert("authorization", seed.api_auth.clone());
            client.get_invite_link(request).await?;
        }
        Op::ListMembers | Op::ListMembersQuery => {
            let query = if op == Op::ListMembersQuery {
                crate::members::random_query()
            } else {
                String::new()
            };
            let message = pb::ListMembersRequest {
                page_size: 30,
                query,
                ..Default::default()
            };
            let mut request = request(message, timeout, address);
            request
                .metadata_mut()
                .insert("authorization", seed.api_auth.clone());
            client.list_members(request).await?;
        }
        Op::ForwardAuth => forward_auth(caller, Some(seed), timeout).await?,
        Op::ForwardAuthAnonymous => forward_auth(caller, None, timeout).await?,
        Op::ExtAuthz => ext_authz(&caller.channel, seed, timeout).await?,
        Op::AccessToken => {
            let token = seeds
                .access_tokens
                .read()
                .ok()
                .and_then(|tokens| {
                    let n = tokens.len();
                    (n > 0).then(|| tokens[rand::rng().random_range(0..n)].clone())
                })
                .ok_or_else(|| Status::failed_precondition("no access tokens minted"))?;
            client
                .authenticate(request(
                    authenticate(Credentials::Token(token)),
                    timeout,
                    address,
                ))
                .await?;
        }
        Op::Mix => unreachable!("a mix is drawn into one call before calling"),
    }
    Ok(())
}

/// A gateway's `forward_auth` sub-request for an API call, on the caller's kept-alive connection
/// (opened again when the server closed it). With a seed, its API token must pass (200);
/// without, the answer must be 401.
async fn forward_auth(
    caller: &mut Caller,
    seed: Option<&Seed>,
    timeout: Duration,
) -> Result<(), Status> {
    let addr = caller.http_addr.ok_or_else(|| {
        Status::failed_precondition("no HTTP address (give --http-addr with --addr)")
    })?;
    let sender = match caller.http.take() {
        Some(sender) if !sender.is_closed() => sender,
        _ => {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| Status::unavailable(format!("cannot connect to {addr}: {e}")))?;
            let _ = stream.set_nodelay(true);
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| Status::unavailable(format!("HTTP handshake: {e}")))?;
            tokio::spawn(connection);
            sender
        }
    };
    let mut request = hyper::Request::get("/authz/forward-auth")
        .header("host", "identity")
        .header("accept", "application/json")
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/api/projects/");
    if let Some(seed) = seed {
        request = request.header("authorization", seed.api_auth.as_bytes());
        if let Some(address) = &seed.address {
            request = request.header("x-forwarded-for", address.as_bytes());
        }
    }
    let request = request
        .body(Empty::new())
        .map_err(|e| Status::internal(format!("request: {e}")))?;
    let mut sender = sender;
    let exchange = async {
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        Ok::<_, hyper::Error>(status)
    };
    let status = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Status::deadline_exceeded("forward-auth timed out"))?
        .map_err(|e| Status::unavailable(format!("HTTP: {e}")))?;
    caller.http = Some(sender);
    let expected = if seed.is_some() { 200 } else { 401 };
    if status == expected {
        return Ok(());
    }
    let code = match status {
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Err(Status::new(code, format!("HTTP {status}")))
}

/// Envoy's `Check` for an API call carrying the seed's API token.
async fn ext_authz(channel: &Channel, seed: &Seed, timeout: Duration) -> Result<(), Status> {
    let mut headers = std::collections::HashMap::from([(
        "authorization".to_owned(),
        seed.api_auth.to_str().unwrap_or_default().to_owned(),
    )]);
    if let Some(address) = &seed.address {
        headers.insert(
            "x-forwarded-for".to_owned(),
            address.to_str().unwrap_or_default().to_owned(),
        );
    }
    let check = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/api/projects/".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.auth.v3.Authorization/Check",
    );
    let response: CheckResponse = grpc
        .unary(
            request(check, timeout, None),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await?
        .into_inner();
    match response.status.map_or(Code::Unknown as i32, |s| s.code) {
        0 => Ok(()),
        code => Err(Status::new(Code::from(code), "denied by ext_authz")),
    }
}
