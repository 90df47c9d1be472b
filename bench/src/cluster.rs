//! The servers under test: real `label-studio-identity` processes started on free ports against a
//! fresh database (optionally pinned to CPUs with `taskset`), or a server already running. Also
//! reads their resident memory from `/proc`.

use std::{
    fs::File,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::ValueEnum;
use sqlx::{Connection as _, Executor as _, PgConnection};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::limits::Argon2Params;

/// How long a server may take to migrate and report SERVING.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The health-check name of the identity service.
const SERVICE_NAME: &str = "labelstudio.identity.v1.IdentityService";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct ServerOptions {
    pub server: PathBuf,
    pub backend: Backend,
    pub postgres_url: String,
    pub replicas: usize,
    pub cpus: Vec<String>,
    pub argon2: Argon2Params,
    pub max_concurrent: Option<usize>,
    pub max_waiting: Option<usize>,
    pub db_connections: Option<u32>,
    /// Trust this machine as a gateway, so calls can carry their users' addresses.
    pub gateway: bool,
}

/// Resident memory of the servers, in bytes: the largest replica's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rss {
    pub current: u64,
    pub peak: u64,
}

struct Server {
    child: Child,
    addr: SocketAddr,
    /// The HTTP listener of the gateway checks.
    http_addr: SocketAddr,
    /// Where the server's Prometheus metrics are.
    metrics_addr: SocketAddr,
}

/// A database made for the run.
enum Database {
    Sqlite {
        url: String,
    },
    Postgres {
        admin_url: String,
        name: String,
        url: String,
    },
}

pub struct Cluster {
    servers: Vec<Server>,
    external: Vec<SocketAddr>,
    external_http: Vec<SocketAddr>,
    database: Option<Database>,
    external_database: Option<String>,
    dir: Option<PathBuf>,
}

/// `label-studio-identity` in the folder of the running binary, as cargo builds them.
pub fn server_next_to_current_exe() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate identity-bench itself")?;
    let server = exe.with_file_name(format!(
        "label-studio-identity{}",
        std::env::consts::EXE_SUFFIX
    ));
    anyhow::ensure!(
        server.is_file(),
        "{} not found: build both binaries first (cargo build --release --bins), or pass --server",
        server.display()
    );
    if let (Ok(own), Ok(theirs)) = (
        exe.metadata().and_then(|m| m.modified()),
        server.metadata().and_then(|m| m.modified()),
    ) && theirs + Duration::from_secs(60) < own
    {
        eprintln!(
            "warning: {} is older than identity-bench; rebuild it with cargo build --release --bins",
            server.display()
        );
    }
    Ok(server)
}

impl Cluster {
    /// A server someone else started; nothing is started or stopped.
    pub fn external(
        addr: &str,
        http_addr: Option<&str>,
        database_url: Option<String>,
    ) -> anyhow::Result<Self> {
        let resolve = |flag: &str, addr: &str| {
            std::net::ToSocketAddrs::to_socket_addrs(addr)
                .with_context(|| format!("cannot resolve {flag} {addr}"))?
                .next()
                .with_context(|| format!("{flag} {addr} names no address"))
        };
        let addr = resolve("--addr", addr)?;
        let external_http = match http_addr {
            Some(http_addr) => vec![resolve("--http-addr", http_addr)?],
            None => Vec::new(),
        };
        Ok(Self {
            servers: Vec::new(),
            external: vec![addr],
            external_http,
            database: None,
            external_database: database_url,
            dir: None,
        })
    }

    /// Creates the database and starts the replicas; returns once every one is SERVING.
    pub async fn start(options: ServerOptions) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "identity-bench-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros()
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut cluster = Self {
            servers: Vec::new(),
            external: Vec::new(),
            external_http: Vec::new(),
            database: None,
            external_database: None,
            dir: Some(dir.clone()),
        };
        match cluster.start_servers(&options, &dir).await {
            Ok(()) => Ok(cluster),
            Err(error) => {
                cluster.stop(false).await;
                Err(error)
            }
        }
    }

    async fn start_servers(&mut self, options: &ServerOptions, dir: &Path) -> anyhow::Result<()> {
        let database = match options.backend {
            Backend::Sqlite => Database::Sqlite {
                url: format!("sqlite://{}", dir.join("identity.sqlite3").display()),
            },
            Backend::Postgres => create_postgres_database(&options.postgres_url).await?,
        };
        let url = database.url().to_owned();
        self.database = Some(database);
        for replica in 0..options.replicas {
            let cpus = match options.cpus.as_slice() {
                [] => None,
                [all] => Some(all.as_str()),
                many => Some(
                    many.get(replica)
                        .context("give --server-cpus once, or once per replica")?
                        .as_str(),
                ),
            };
            let server = spawn_server(options, &url, dir, replica, cpus)?;
            self.servers.push(server);
        }
        for (replica, server) in self.servers.iter_mut().enumerate() {
            wait_until_serving(server, &dir.join(format!("server-{replica}.log"))).await?;
        }
        Ok(())
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        if self.servers.is_empty() {
            self.external.clone()
        } else {
            self.servers.iter().map(|s| s.addr).collect()
        }
    }

    /// The servers' HTTP listeners (the gateway checks); empty for a running server whose
    /// HTTP address was not given.
    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        if self.servers.is_empty() {
            self.external_http.clone()
        } else {
            self.servers.iter().map(|s| s.http_addr).collect()
        }
    }

    /// The database URL the servers use, for the store limit.
    pub fn database_url(&self) -> Option<String> {
        match &self.database {
            Some(database) => Some(database.url().to_owned()),
            None => self.external_database.clone(),
        }
    }

    /// The name of the Postgres database the servers use, if they use one.
    pub fn database_name(&self) -> Option<String> {
        self.database_url()
            .filter(|url| url.starts_with("postgres"))
            .and_then(|url| crate::limits::database_name(&url).map(str::to_owned))
    }

    /// Database statements the servers started have issued so far (their
    /// `identity_db_statements_total`), or None for an external server.
    pub async fn statements(&self) -> Option<u64> {
        if self.servers.is_empty() {
            return None;
        }
        let mut total = 0;
        for server in &self.servers {
            total += statements_of(server.metrics_addr).await?;
        }
        Some(total)
    }

    /// Process ids of the servers started (none for an external server).
    pub fn pids(&self) -> Vec<u32> {
        self.servers
            .iter()
            .map(|server| server.child.id())
            .collect()
    }

    /// Current and peak resident memory of the largest server; None for an external server.
    pub fn rss(&self) -> Option<Rss> {
        self.servers
            .iter()
            .filter_map(|server| read_rss(server.child.id()))
            .reduce(|a, b| Rss {
                current: a.current.max(b.current),
                peak: a.peak.max(b.peak),
            })
    }

    /// Starts a new peak-memory window (`VmHWM` is reset to the current RSS).
    pub fn reset_peak(&self) {
        for server in &self.servers {
            // Writing 5 to clear_refs resets the peak RSS (Linux 4.0 and later); sampling
            // covers kernels where it fails.
            let _ = std::fs::write(format!("/proc/{}/clear_refs", server.child.id()), "5");
        }
    }

    /// Stops the servers, drops the database and removes the temporary folder; with
    /// `show_logs`, first prints the warnings and errors the servers logged.
    pub async fn stop(mut self, show_logs: bool) {
        for server in &mut self.servers {
            stop_child(&mut server.child);
        }
        if let (true, Some(dir)) = (show_logs, &self.dir) {
            for replica in 0..self.servers.len() {
                let text = std::fs::read_to_string(dir.join(format!("server-{replica}.log")))
                    .unwrap_or_default();
                let problems: Vec<&str> = text
                    .lines()
                    .filter(|line| line.contains("WARN") || line.contains("ERROR"))
                    .collect();
                if !problems.is_empty() {
                    eprintln!(
                        "server {replica} logged {} warnings and errors; the last ones:",
                        problems.len()
                    );
                    for line in &problems[problems.len().saturating_sub(10)..] {
                        eprintln!("  {line}");
                    }
                }
            }
        }
        match self.database.take() {
            Some(Database::Postgres {
                admin_url, name, ..
            }) => {
                if let Err(error) = drop_postgres_database(&admin_url, &name).await {
                    eprintln!("warning: cannot drop database {name}: {error:#}");
                }
            }
            Some(Database::Sqlite { .. }) | None => {}
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.child.kill();
            let _ = server.child.wait();
        }
    }
}

impl Database {
    fn url(&self) -> &str {
        match self {
            Self::Sqlite { url } | Self::Postgres { url, .. } => url,
        }
    }
}

fn spawn_server(
    options: &ServerOptions,
    database_url: &str,
    dir: &Path,
    replica: usize,
    cpus: Option<&str>,
) -> anyhow::Result<Server> {
    let port = free_port()?;
    let http_port = free_port()?;
    let metrics_port = free_port()?;
    let log = dir.join(format!("server-{replica}.log"));
    let log_file =
        File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut command = match cpus {
        Some(cpus) => {
            let mut taskset = Command::new("taskset");
            taskset.arg("-c").arg(cpus).arg(&options.server);
            taskset
        }
        None => Command::new(&options.server),
    };
    command
        .arg("start")
        .arg("--host")
        .arg("127.0.0.1")
        .arg("--port")
        .arg(port.to_string())
        .arg("--http-port")
        .arg(http_port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file.try_clone()?))
        .stderr(Stdio::from(log_file));
    // Only the settings given here: an inherited IDENTITY_* or LABEL_STUDIO_* variable would
    // change what is measured.
    for (name, _) in std::env::vars_os() {
        let name_str = name.to_string_lossy();
        if name_str.starts_with("IDENTITY_")
            || name_str.starts_with("LABEL_STUDIO_")
            || name_str == "DATABASE_URL"
        {
            command.env_remove(&name);
        }
    }
    command
        .env("DATABASE_URL", database_url)
        .env("LABEL_STUDIO_BASE_DATA_DIR", dir)
        .env("IDENTITY_METRICS__PORT", metrics_port.to_string())
        .env(
            "IDENTITY_ARGON2__MEMORY_KIB",
            options.argon2.memory_kib.to_string(),
        )
        .env(
            "IDENTITY_ARGON2__ITERATIONS",
            options.argon2.iterations.to_string(),
        )
        .env(
            "IDENTITY_ARGON2__PARALLELISM",
            options.argon2.parallelism.to_string(),
        );
    if let Some(value) = options.max_concurrent {
        command.env("IDENTITY_ARGON2__MAX_CONCURRENT", value.to_string());
    }
    if let Some(value) = options.max_waiting {
        command.env("IDENTITY_ARGON2__MAX_WAITING", value.to_string());
    }
    if options.gateway {
        command.env("IDENTITY_SERVER__TRUSTED_PROXIES", "127.0.0.1");
    }
    if let Some(value) = options.db_connections {
        command.env("IDENTITY_DATABASE__MAX_CONNECTIONS", value.to_string());
    }
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", options.server.display()))?;
    Ok(Server {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        http_addr: SocketAddr::from(([127, 0, 0, 1], http_port)),
        metrics_addr: SocketAddr::from(([127, 0, 0, 1], metrics_port)),
    })
}

/// The sum of one server's `identity_db_statements_total` series, read over plain HTTP.
async fn statements_of(addr: SocketAddr) -> Option<u64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: metrics\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    Some(
        text.lines()
            .filter(|line| line.starts_with("identity_db_statements_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|value| value as u64)
            .sum(),
    )
}

/// A port nobody listens on right now.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

async fn wait_until_serving(server: &mut Server, log: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let endpoint = format!("http://{}", server.addr);
    loop {
        if let Some(status) = server.child.try_wait()? {
            anyhow::bail!(
                "the server exited ({status}) before serving; its log:\n{}",
                log_tail(log)
            );
        }
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(endpoint.clone())?
            .connect()
            .await
        {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            let answer = health
                .check(HealthCheckRequest {
                    service: SERVICE_NAME.into(),
                })
                .await;
            if answer.is_ok_and(|a| a.get_ref().status == ServingStatus::Serving as i32) {
                return Ok(());
            }
        }
        anyhow::ensure!(
            started.elapsed() < READY_TIMEOUT,
            "the server on {} did not report SERVING within {}s; its log:\n{}",
            server.addr,
            READY_TIMEOUT.as_secs(),
            log_tail(log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Asks the server to stop (SIGTERM), and kills it if it has not within a few seconds.
fn stop_child(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `VmRSS` and `VmHWM` of a process, in bytes.
fn read_rss(pid: u32) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
    };
    Some(Rss {
        current: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

/// Creates a database of its own on the Postgres server `admin_url` names.
async fn create_postgres_database(admin_url: &str) -> anyhow::Result<Database> {
    let name = format!(
        "identity_bench_{}_{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    );
    let mut admin = PgConnection::connect(admin_url)
        .await
        .with_context(|| "cannot connect to the Postgres server (--postgres-url)")?;
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .with_context(|| format!("cannot create database {name}"))?;
    let _ = admin.close().await;
    let url = with_database(admin_url, &name)?;
    Ok(Database::Postgres {
        admin_url: admin_url.to_owned(),
        name,
        url,
    })
}

async fn drop_postgres_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(admin_url).await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .await?;
    let _ = admin.close().await;
    Ok(())
}

/// The same Postgres URL naming another database.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base
        .find("://")
        .map(|i| i + 3)
        .context("the Postgres URL has no scheme")?;
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_of_a_postgres_url_is_replaced_and_the_rest_kept() {
        let cases = [
            ("postgres://u@h:5432/postgres", "postgres://u@h:5432/x"),
            (
                "postgres://u:p@h/db?sslmode=disable",
                "postgres://u:p@h/x?sslmode=disable",
            ),
            ("postgresql://h", "postgresql://h/x"),
        ];
        for (given, expected) in cases {
            assert_eq!(with_database(given, "x").unwrap(), expected);
        }
    }
}
