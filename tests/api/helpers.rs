//! Starts the real server on a random port against a fresh database, and talks to it over gRPC.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use label_studio_identity::{
    config::Settings,
    grpc::pb::{self, identity_service_client::IdentityServiceClient},
    startup::Application,
};
use rand::{Rng, distr::Alphanumeric};
use secrecy::SecretString;
use sqlx::{Connection, Executor, PgConnection};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    transport::{Channel, ClientTlsConfig},
};
use tonic_types::StatusExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each listed case once on SQLite and once on Postgres.
#[macro_export]
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::helpers::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($crate::helpers::Backend::Postgres).await;
                }
            )*
        }
    };
}

/// A database of its own for one test, dropped at the end.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        let name = format!(
            "lsid_test_{}",
            rand::rng()
                .sample_iter(Alphanumeric)
                .take(12)
                .map(char::from)
                .collect::<String>()
                .to_lowercase()
        );
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("identity.sqlite3").display());
                Self {
                    backend,
                    url,
                    name,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let server = postgres_server();
                let mut admin = PgConnection::connect(&server.admin_url())
                    .await
                    .expect("connect to the test Postgres server");
                admin
                    .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .await
                    .expect("create test database");
                Self {
                    backend,
                    url: server.database_url(&name),
                    name,
                    _dir: None,
                }
            }
        }
    }

    /// Runs one statement directly against the database, for arranging what no RPC can.
    pub async fn execute(&self, sql: &str) {
        match self.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                conn.execute(sqlx::AssertSqlSafe(sql.to_owned()))
                    .await
                    .unwrap();
            }
            Backend::Postgres => {
                let mut conn = PgConnection::connect(&self.url).await.unwrap();
                conn.execute(sqlx::AssertSqlSafe(sql.to_owned()))
                    .await
                    .unwrap();
            }
        }
    }

    /// Runs one statement, returning the database's refusal instead of panicking.
    pub async fn try_execute(&self, sql: &str) -> Result<(), String> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        let outcome = match self.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                conn.execute(sql).await.map(drop)
            }
            Backend::Postgres => {
                let mut conn = PgConnection::connect(&self.url).await.unwrap();
                conn.execute(sql).await.map(drop)
            }
        };
        outcome.map_err(|e| e.to_string())
    }

    /// Reads one text value directly from the database.
    pub async fn fetch_string(&self, sql: &str) -> Option<String> {
        match self.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_optional(&mut conn)
                    .await
                    .unwrap()
            }
            Backend::Postgres => {
                let mut conn = PgConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_optional(&mut conn)
                    .await
                    .unwrap()
            }
        }
    }

    /// Counts rows with a `SELECT COUNT(*) …` query.
    pub async fn count(&self, sql: &str) -> i64 {
        match self.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
            }
            Backend::Postgres => {
                let mut conn = PgConnection::connect(&self.url).await.unwrap();
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
            }
        }
    }

    /// Settings for a server on this database: random port, cheap argon2.
    pub fn settings(&self) -> Settings {
        let mut settings = Settings::default();
        settings.server.host = "127.0.0.1".into();
        settings.server.port = 0;
        settings.server.http_port = 0;
        settings.server.shutdown_grace_seconds = 5;
        settings.database.url = Some(SecretString::from(self.url.clone()));
        settings.database.max_connections = 8;
        settings.argon2.memory_kib = 64;
        settings.argon2.iterations = 1;
        settings.argon2.parallelism = 1;
        settings.argon2.max_concurrent = 2;
        settings.metrics.port = 0;
        settings
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.backend != Backend::Postgres {
            return;
        }
        let admin_url = postgres_server().admin_url();
        let name = self.name.clone();
        // Drop runs inside the test's runtime, so the cleanup gets a runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = admin
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A running server and a client connected to it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    /// Where the HTTP endpoints (the gateway checks) listen, when this process serves them.
    pub http_addr: Option<SocketAddr>,
    pub client: IdentityServiceClient<Channel>,
    pub channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Starts a server on `db` with the given settings and waits until it is SERVING.
    pub async fn start(settings: Settings) -> Self {
        Self::start_with(settings, None).await
    }

    /// Starts a TLS server, with a client that connects with `tls` and waits until it is SERVING.
    pub async fn start_tls(settings: Settings, tls: ClientTlsConfig) -> Self {
        Self::start_with(settings, Some(tls)).await
    }

    async fn start_with(settings: Settings, tls: Option<ClientTlsConfig>) -> Self {
        let app = Application::build(settings)
            .await
            .expect("build the server");
        let addr = app.local_addr().expect("local address");
        let metrics_addr = app.metrics_addr();
        let http_addr = app.http_addr().expect("http address");
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        let mut app = match tls {
            None => Self::connect(addr).await,
            Some(tls) => Self::connect_tls(addr, tls)
                .await
                .expect("connect to the server over TLS"),
        };
        app.metrics_addr = metrics_addr;
        app.http_addr = Some(http_addr);
        app.stop = Some(stop);
        app.handle = Some(handle);
        app.wait_until_serving().await;
        app
    }

    /// A client of a server running elsewhere (another process).
    pub async fn connect(addr: SocketAddr) -> Self {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("connect to the server");
        Self::with_channel(addr, channel)
    }

    /// A TLS client of a server: trusting, presenting and expecting what `tls` says.
    pub async fn connect_tls(
        addr: SocketAddr,
        tls: ClientTlsConfig,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(Self::with_channel(addr, channel))
    }

    pub fn with_channel(addr: SocketAddr, channel: Channel) -> Self {
        Self {
            addr,
            metrics_addr: None,
            http_addr: None,
            client: IdentityServiceClient::new(channel.clone()),
            channel,
            stop: None,
            handle: None,
        }
    }

    pub async fn health(&self, service: &str) -> Result<i32, Status> {
        let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map(|r| r.into_inner().status)
    }

    async fn wait_until_serving(&self) {
        let started = Instant::now();
        loop {
            if self
                .health(label_studio_identity::grpc::SERVICE_NAME)
                .await
                .ok()
                == Some(tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "server did not become SERVING"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let addr = self.metrics_addr.expect("metrics are served");
        http_get(addr, "/metrics").await
    }

    /// Stops the server the way SIGTERM does and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("server task")
                .expect("server ran cleanly");
        }
    }

    pub async fn sign_up(&self, email: &str, password: &str) -> pb::CreateUserResponse {
        self.client
            .clone()
            .create_user(sign_up(email, password))
            .await
            .unwrap_or_else(|status| panic!("sign up {email}: {status:?}"))
            .into_inner()
    }

    pub async fn login(
        &self,
        email: &str,
        password: &str,
    ) -> Result<pb::AuthenticateResponse, Status> {
        self.client
            .clone()
            .authenticate(login(email, password))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn token_login(&self, token: &str) -> Result<pb::AuthenticateResponse, Status> {
        self.client
            .clone()
            .authenticate(pb::AuthenticateRequest {
                credentials: Some(pb::authenticate_request::Credentials::Token(
                    token.to_owned(),
                )),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn invite_link(
        &self,
        credentials: &str,
    ) -> Result<pb::GetInviteLinkResponse, Status> {
        self.client
            .clone()
            .get_invite_link(with_auth(pb::GetInviteLinkRequest {}, credentials))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn reset_invite_link(
        &self,
        credentials: &str,
    ) -> Result<pb::ResetInviteLinkResponse, Status> {
        self.client
            .clone()
            .reset_invite_link(with_auth(pb::ResetInviteLinkRequest {}, credentials))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn register(
        &self,
        invite: &str,
        email: &str,
        password: &str,
    ) -> Result<pb::RegisterWithInviteResponse, Status> {
        self.client
            .clone()
            .register_with_invite(pb::RegisterWithInviteRequest {
                invite: invite.to_owned(),
                email: email.to_owned(),
                password: password.to_owned(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub const BIN: &str = env!("CARGO_BIN_EXE_label-studio-identity");

/// The fixture set `name` of `shared/fixtures/`, found beside the clone or a folder further up
/// (a worktree sits deeper than the clone).
pub fn fixtures(name: &str) -> PathBuf {
    let manifest_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .ancestors()
        .map(|dir| dir.join("shared/fixtures").join(name))
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| panic!("shared/fixtures/{name} beside the clone"))
}

/// A server process on a free port, stopped with SIGTERM when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The environment a process gets: the test database and cheap hashing, nothing inherited
/// that could change the outcome.
pub fn command(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("IDENTITY_ARGON2__MEMORY_KIB", "64")
        .env("IDENTITY_ARGON2__ITERATIONS", "1")
        .env("IDENTITY_METRICS__PORT", "0")
        .env("IDENTITY_SERVER__HTTP_PORT", "0")
        .env("RUST_LOG", "info");
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

pub fn run(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> Output {
    command(db, args, env).output().expect("run the binary")
}

impl ServerProcess {
    pub fn start(db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_logging(db, args, env, Stdio::null())
    }

    /// Starts a server whose log lines (stderr) go to `log`.
    pub fn start_logging(db: &TestDb, args: &[&str], env: &[(&str, &str)], log: Stdio) -> Self {
        let port = free_port();
        let port_text = port.to_string();
        let mut all = vec!["start", "--host", "127.0.0.1", "--port", &port_text];
        all.extend_from_slice(args);
        let child = command(db, &all, env)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the server");
        Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    pub fn probe(&self) -> bool {
        Command::new(BIN)
            .args(["probe", "--addr", &self.addr.to_string(), "--timeout", "1"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    pub async fn wait_serving(&mut self) {
        let started = Instant::now();
        while !self.probe() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("server exited early: {status}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "not serving in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn client(&self) -> TestApp {
        TestApp::connect(self.addr).await
    }

    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("wait for the server")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a fresh database and a server on it with the default test settings.
pub async fn spawn_app(backend: Backend) -> (TestApp, TestDb) {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(
    backend: Backend,
    tweak: impl FnOnce(&mut Settings),
) -> (TestApp, TestDb) {
    let db = TestDb::new(backend).await;
    let mut settings = db.settings();
    tweak(&mut settings);
    (TestApp::start(settings).await, db)
}

pub fn sign_up(email: &str, password: &str) -> pb::CreateUserRequest {
    pb::CreateUserRequest {
        email: email.to_owned(),
        password: password.to_owned(),
        ..Default::default()
    }
}

pub fn login(email: &str, password: &str) -> pb::AuthenticateRequest {
    pb::AuthenticateRequest {
        credentials: Some(pb::authenticate_request::Credentials::Password(
            pb::PasswordCredentials {
                email: email.to_owned(),
                password: password.to_owned(),
            },
        )),
    }
}

/// Wraps a message with `authorization` metadata, e.g. `Token abc` or `Bearer xyz`.
pub fn with_auth<T>(message: T, authorization: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(authorization).expect("ascii metadata"),
    );
    request
}

/// The `google.rpc.ErrorInfo` reason of a status, checking its domain.
pub fn reason(status: &Status) -> String {
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("status without ErrorInfo: {status:?}"));
    assert_eq!(info.domain, "identity.labelstudio");
    info.reason
}

/// The fields named by a status's `google.rpc.BadRequest`.
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Asserts a call failed with this code and reason.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: tonic::Code,
    expected: &str,
) -> Status {
    let status = result.expect_err("the call should have been refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason(&status), expected, "{status:?}");
    status
}

/// The Postgres server the tests use: the one `DATABASE_URL` names, or else a private cluster
/// started once for this test process with `initdb` and `pg_ctl`.
pub struct PostgresServer {
    base: String,
}

impl PostgresServer {
    pub fn admin_url(&self) -> String {
        self.database_url("postgres")
    }

    pub fn database_url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }
}

pub fn postgres_server() -> &'static PostgresServer {
    static SERVER: OnceLock<PostgresServer> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => {
            // Keep scheme, credentials, host and port; tests choose the database name.
            let (scheme, rest) = url.split_once("://").expect("DATABASE_URL has a scheme");
            let authority = rest.split(['/', '?']).next().unwrap_or(rest);
            PostgresServer {
                base: format!("{scheme}://{authority}"),
            }
        }
        _ => start_private_cluster(),
    })
}

fn postgres_bin(name: &str) -> PathBuf {
    let on_path = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    on_path
        .or_else(|| {
            let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path().join("bin").join(name)))
                .filter(|p| p.exists())
                .collect();
            versions.sort();
            versions.pop()
        })
        .unwrap_or_else(|| {
            panic!("{name} not found: install PostgreSQL's server package or set DATABASE_URL")
        })
}

/// A PostgreSQL cluster of the test's own, made with `initdb` and driven with `pg_ctl`.
/// `initdb` refuses to run as root, so as root the cluster belongs to the `postgres` user.
pub struct PrivateCluster {
    dir: PathBuf,
    port: u16,
    as_root: bool,
}

impl PrivateCluster {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "lsid-pg-{}-{}",
            std::process::id(),
            rand::rng()
                .sample_iter(Alphanumeric)
                .take(6)
                .map(char::from)
                .collect::<String>()
        ));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if as_root {
            let status = Command::new("chown")
                .args(["postgres:postgres", &dir.display().to_string()])
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let cluster = Self {
            port: free_port(),
            dir,
            as_root,
        };
        cluster.tool(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        cluster.resume();
        cluster
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn tool(&self, name: &str, args: &[&str]) {
        let program = postgres_bin(name);
        let mut command = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        let output = command.args(args).output().expect("run a PostgreSQL tool");
        assert!(
            output.status.success(),
            "{name} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts (again) the server on the same port and data.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log").display().to_string();
        self.tool(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server, ending its connections.
    pub fn pause(&self) {
        self.tool("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    pub fn base_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Stops the cluster and removes it when this test process ends, however it ends.
    fn stop_at_exit(&self) {
        let watchdog = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {prefix}{pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            prefix = if self.as_root {
                "runuser -u postgres -- "
            } else {
                ""
            },
            pg_ctl = postgres_bin("pg_ctl").display(),
            data = self.data(),
            dir = self.dir.display(),
        );
        // The watchdog outlives this process on purpose; nobody waits for it.
        #[allow(clippy::zombie_processes)]
        Command::new("sh")
            .args(["-c", &watchdog])
            .spawn()
            .expect("start the cluster watchdog");
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = std::panic::catch_unwind(|| {
            self.tool("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]);
        });
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_private_cluster() -> PostgresServer {
    let cluster = PrivateCluster::start();
    cluster.stop_at_exit();
    let base = cluster.base_url();
    // Lives as long as the process; the watchdog cleans up.
    std::mem::forget(cluster);
    PostgresServer { base }
}

/// A plain HTTP/1.0 GET, returning the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// An HTTP response as read off the wire.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Sends one HTTP/1.1 request (closing the connection after it) and reads the whole response.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: identity\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    // A server refusing a request may reset the connection after its answer; keep what came.
    if let Err(error) = stream.read_to_end(&mut response).await {
        assert!(!response.is_empty(), "read: {error}");
    }
    parse_http_reply(&response)
}

/// Parses one HTTP/1.1 response (head and body) from raw bytes.
pub fn parse_http_reply(raw: &[u8]) -> HttpReply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("a complete response head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    HttpReply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Runs futures concurrently on the runtime and collects their outputs in order.
pub async fn join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.expect("task"));
    }
    outputs
}

/// A Django `pbkdf2_sha256` hash of `password`, as Label Studio stores one (it uses 1,000,000
/// iterations; tests choose fewer).
pub fn django_pbkdf2(password: &str, iterations: u32) -> String {
    use base64::Engine as _;
    let salt: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(22)
        .map(char::from)
        .collect();
    let mut derived = [0u8; 32];
    // Not generic, so it runs as compiled (optimised) inside the pbkdf2 crate.
    pbkdf2::pbkdf2_hmac_with_params(
        password.as_bytes(),
        salt.as_bytes(),
        pbkdf2::Algorithm::Pbkdf2Sha256,
        pbkdf2::Params::new(iterations).expect("iterations"),
        &mut derived,
    );
    format!(
        "pbkdf2_sha256${iterations}${salt}${}",
        base64::engine::general_purpose::STANDARD.encode(derived)
    )
}

/// Correct logins with one password, six at a time, until stopped: what runs alongside a
/// password change or reset to race it.
pub struct LoginsInFlight {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<JoinHandle<Vec<String>>>,
}

impl LoginsInFlight {
    pub fn start(app: &std::sync::Arc<TestApp>, email: &'static str, password: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers = (0..6)
            .map(|_| {
                let (app, stop, password) = (app.clone(), stop.clone(), password.to_owned());
                tokio::spawn(async move {
                    let mut sessions = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if let Ok(login) = app.login(email, &password).await {
                            sessions.push(login.session_token);
                        }
                    }
                    sessions
                })
            })
            .collect();
        Self { stop, workers }
    }

    /// Stops them once the logins in flight finish; the sessions they started.
    pub async fn stop(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut sessions = Vec::new();
        for worker in self.workers {
            sessions.extend(worker.await.expect("login worker"));
        }
        sessions
    }
}
