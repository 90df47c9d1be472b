//! Layered configuration: defaults, an optional TOML file, `IDENTITY_<SECTION>__<KEY>`
//! environment variables, Label Studio's own variable names, then command-line flags. Values stay
//! the text they were given until a setting's own type reads them, an unknown setting stops the
//! start, and every duration and size is range-checked before anything starts.

use std::{
    cell::RefCell, collections::HashMap, fmt, net::SocketAddr, ops::RangeInclusive, path::PathBuf,
    time::Duration as StdDuration,
};

use config::{Config, File, Value};
use secrecy::SecretString;
use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor},
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    /// Where the embedded SQLite file lives when no database URL is given.
    pub data_dir: Option<PathBuf>,
    pub signup: SignupSettings,
    pub session: SessionSettings,
    pub argon2: Argon2Settings,
    pub bootstrap: BootstrapSettings,
    pub log: LogSettings,
    pub metrics: MetricsSettings,
    pub throttle: ThrottleSettings,
    pub audit: AuditSettings,
    pub tokens: TokenSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Bind address.
    #[serde(deserialize_with = "text")]
    pub host: String,
    pub port: u16,
    /// Port of the HTTP listener (gateway checks) on the same address; 0 picks a free one.
    pub http_port: u16,
    /// Public URL of Label Studio, prefixed to invite links.
    #[serde(deserialize_with = "optional_text")]
    pub public_url: Option<String>,
    /// How long calls in flight may run on after a shutdown signal.
    pub shutdown_grace_seconds: u64,
    /// Largest request message accepted, in bytes.
    pub max_request_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Gateways (IPs or CIDR blocks) whose `x-forwarded-for` entries are believed.
    pub trusted_proxies: Vec<String>,
    pub tls: TlsSettings,
}

/// PEM files for TLS on the listeners; plaintext when no certificate is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// Certificate chain, the server's own certificate first.
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// CA certificates that sign the client certificates every caller must present (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// The TLS files of a server that speaks TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl TlsSettings {
    /// The files to serve TLS with, or `None` for plaintext. An empty path counts as unset, as
    /// a chart leaves a variable empty rather than absent. Half a pair is refused.
    pub fn files(&self) -> anyhow::Result<Option<TlsFiles>> {
        let set = |path: &Option<PathBuf>| path.clone().filter(|p| !p.as_os_str().is_empty());
        match (set(&self.cert), set(&self.key), set(&self.client_ca)) {
            (Some(cert), Some(key), client_ca) => Ok(Some(TlsFiles {
                cert,
                key,
                client_ca,
            })),
            (Some(_), None, _) => anyhow::bail!(
                "--tls-cert (server.tls.cert) is set without its private key: set --tls-key \
                 (server.tls.key, IDENTITY_SERVER__TLS__KEY) too"
            ),
            (None, Some(_), _) => anyhow::bail!(
                "--tls-key (server.tls.key) is set without its certificate: set --tls-cert \
                 (server.tls.cert, IDENTITY_SERVER__TLS__CERT) too"
            ),
            (None, None, Some(_)) => anyhow::bail!(
                "--tls-client-ca (server.tls.client_ca) needs TLS: set --tls-cert and --tls-key \
                 (server.tls.cert and server.tls.key) too"
            ),
            (None, None, None) => Ok(None),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `postgres://…` or `sqlite://<file>`; the embedded SQLite file when absent.
    #[serde(deserialize_with = "optional_secret")]
    pub url: Option<SecretString>,
    pub max_connections: u32,
    /// How long a call waits for a database connection before answering `UNAVAILABLE`.
    pub acquire_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignupSettings {
    /// `LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK`: self-signup only through the invite link.
    #[serde(deserialize_with = "deserialize_switch")]
    pub disable_without_link: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSettings {
    pub ttl_seconds: u64,
    /// The cookie that carries the session token to the gateway checks (Label Studio's name).
    pub cookie_name: String,
    /// A session unused for this long has ended (Label Studio's MAX_TIME_BETWEEN_ACTIVITY).
    pub max_idle_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Audit rows older than this many days are deleted (30 at the least).
    pub retention_days: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSettings {
    /// How long an access token (from RefreshAccessToken) lives; Label Studio's is 5 minutes.
    pub access_token_ttl_seconds: u64,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            access_token_ttl_seconds: 300,
        }
    }
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            retention_days: 400,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Argon2Settings {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Hashes computed at once; defaults to the number of cores.
    pub max_concurrent: usize,
    /// Hashes allowed to wait for a slot before further ones are refused.
    pub max_waiting: usize,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootstrapSettings {
    #[serde(deserialize_with = "optional_text")]
    pub username: Option<String>,
    #[serde(deserialize_with = "optional_secret")]
    pub password: Option<SecretString>,
    #[serde(deserialize_with = "optional_secret")]
    pub user_token: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    #[serde(deserialize_with = "deserialize_switch")]
    pub enabled: bool,
    /// Bind address of the `/metrics` endpoint; the service's own `server.host` when absent.
    #[serde(deserialize_with = "optional_text")]
    pub host: Option<String>,
    /// Port of the Prometheus `/metrics` endpoint; 0 picks a free one.
    pub port: u16,
    /// How long a metrics connection may take to send a request's headers, or sit idle between
    /// requests, before it is closed.
    pub header_read_timeout_ms: u64,
}

/// Failures allowed before waits begin, per kind of key; waits double from the base delay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleSettings {
    pub login_failures_per_email: u32,
    pub login_failures_per_address: u32,
    pub token_failures_per_address: u32,
    pub invite_failures_per_address: u32,
    pub base_delay_ms: u64,
    pub max_delay_seconds: u64,
    /// Failures older than this are forgotten.
    pub window_seconds: u64,
    /// Token and invite checks one client address may have in flight on one replica.
    pub in_flight_per_address: usize,
    /// IPv6 clients are counted per network of this many leading bits, since one host
    /// commonly holds a whole /64.
    pub ipv6_prefix_length: u8,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            login_failures_per_email: 5,
            login_failures_per_address: 50,
            token_failures_per_address: 50,
            invite_failures_per_address: 10,
            base_delay_ms: 1_000,
            max_delay_seconds: 15 * 60,
            window_seconds: 24 * 60 * 60,
            in_flight_per_address: 16,
            ipv6_prefix_length: 64,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerSettings::default(),
            database: DatabaseSettings::default(),
            data_dir: None,
            signup: SignupSettings {
                disable_without_link: false,
            },
            session: SessionSettings {
                ttl_seconds: 14 * 24 * 60 * 60,
                max_idle_seconds: 5 * 24 * 60 * 60,
                cookie_name: "sessionid".into(),
            },
            argon2: Argon2Settings::default(),
            bootstrap: BootstrapSettings::default(),
            log: LogSettings {
                format: LogFormat::Text,
            },
            metrics: MetricsSettings {
                enabled: true,
                host: None,
                port: 9464,
                header_read_timeout_ms: 10_000,
            },
            throttle: ThrottleSettings::default(),
            audit: AuditSettings::default(),
            tokens: TokenSettings::default(),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 50051,
            http_port: 8080,
            public_url: None,
            shutdown_grace_seconds: 20,
            max_request_bytes: 64 * 1024,
            max_concurrent_streams: 256,
            trusted_proxies: Vec::new(),
            tls: TlsSettings::default(),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 16,
            acquire_timeout_ms: 3_000,
        }
    }
}

impl Default for Argon2Settings {
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
            max_concurrent: std::thread::available_parallelism().map_or(1, usize::from),
            max_waiting: 64,
        }
    }
}

impl Default for SignupSettings {
    fn default() -> Self {
        Settings::default().signup
    }
}

impl Default for SessionSettings {
    fn default() -> Self {
        Settings::default().session
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Settings::default().log
    }
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Settings::default().metrics
    }
}

fn parse_host(setting: &str, host: &str) -> anyhow::Result<std::net::IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| anyhow::anyhow!("{setting} must be an IP address, got {host:?}"))
}

impl ServerSettings {
    pub fn bind_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(SocketAddr::new(
            parse_host("server.host (--host, IDENTITY_SERVER__HOST)", &self.host)?,
            self.port,
        ))
    }

    pub fn public_url(&self) -> Option<&str> {
        self.public_url.as_deref().filter(|url| !url.is_empty())
    }
}

impl Settings {
    /// Where `/metrics` listens: `metrics.host`, or else the service's own host.
    pub fn metrics_addr(&self) -> anyhow::Result<SocketAddr> {
        let ip = match &self.metrics.host {
            Some(host) => parse_host("metrics.host (IDENTITY_METRICS__HOST)", host)?,
            None => self.server.bind_addr()?.ip(),
        };
        Ok(SocketAddr::new(ip, self.metrics.port))
    }
}

/// Values given on the command line; they win over every other source.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub http_port: Option<u16>,
    pub public_url: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub user_token: Option<String>,
    pub log_format: Option<LogFormat>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
}

/// Label Studio's variable names and the settings they feed. Bare `USERNAME`, `PASSWORD` and
/// `HOST` are deliberately absent: they belong to the shell, not to us.
const LABEL_STUDIO_VARIABLES: &[(&str, &str)] = &[
    ("DATABASE_URL", "database.url"),
    ("LABEL_STUDIO_HOST", "server.public_url"),
    ("LABEL_STUDIO_BASE_DATA_DIR", "data_dir"),
    ("LABEL_STUDIO_USERNAME", "bootstrap.username"),
    ("LABEL_STUDIO_PASSWORD", "bootstrap.password"),
    ("LABEL_STUDIO_USER_TOKEN", "bootstrap.user_token"),
];
const SIGNUP_SWITCH: &str = "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK";
const PREFIX: &str = "IDENTITY_";
const CONFIG_VARIABLE: &str = "IDENTITY_CONFIG";

/// Something in the environment the configuration left aside, for the caller to log once
/// logging is set up. It names the variable, never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub variable: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is not a setting of this service and is ignored \
             (settings are IDENTITY_<SECTION>__<KEY>)",
            self.variable
        )
    }
}

/// Settings as loaded, with what the loader chose to ignore.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub settings: Settings,
    pub warnings: Vec<Warning>,
}

/// What an `IDENTITY_*` variable is to this service.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Variable {
    /// One of our settings, under this key path.
    Setting { key: String, list: bool },
    /// A variable Kubernetes injects for a Service whose name starts with `identity`.
    ServiceLink,
    /// Shaped like a setting (`__`) but naming none: most likely a typo.
    UnknownSetting,
    /// Something else that happens to share our prefix.
    Foreign,
}

impl Settings {
    /// Reads every source from the process environment.
    pub fn load(overrides: &Overrides) -> anyhow::Result<Loaded> {
        let mut vars = HashMap::new();
        for (name, value) in std::env::vars_os() {
            // Only names we might read matter; others may hold anything.
            let Some(name) = name.to_str().map(str::to_owned) else {
                continue;
            };
            let ours = name.starts_with(PREFIX)
                || name == SIGNUP_SWITCH
                || LABEL_STUDIO_VARIABLES.iter().any(|(v, _)| *v == name);
            match value.into_string() {
                Ok(value) => {
                    vars.insert(name, value);
                }
                Err(_) if ours => anyhow::bail!("{name} is not valid UTF-8"),
                Err(_) => {}
            }
        }
        Self::load_from(overrides, &vars)
    }

    /// Reads every source, taking environment variables from `vars`.
    pub fn load_from(
        overrides: &Overrides,
        vars: &HashMap<String, String>,
    ) -> anyhow::Result<Loaded> {
        let env = |name: &str| vars.get(name).cloned();
        let config_file = overrides
            .config_file
            .clone()
            .or_else(|| env(CONFIG_VARIABLE).map(PathBuf::from));
        let mut builder = Config::builder();
        if let Some(path) = &config_file {
            builder = builder.add_source(File::from(path.as_path()).required(true));
        }
        let (environment, warnings) = identity_variables(vars)?;
        let mut env_source = Config::builder();
        for setting in &environment {
            env_source = env_source.set_override(setting.key.as_str(), setting.value.clone())?;
        }
        builder = builder.add_source(env_source.build()?);
        for (variable, key) in LABEL_STUDIO_VARIABLES {
            if let Some(value) = env(variable).filter(|value| !value.is_empty()) {
                builder = builder.set_override(*key, value)?;
            }
        }
        if let Some(value) = env(SIGNUP_SWITCH) {
            let switch =
                parse_switch(&value).map_err(|e| anyhow::anyhow!("{SIGNUP_SWITCH}: {e}"))?;
            builder = builder.set_override("signup.disable_without_link", switch)?;
        }
        let path = |path: &Option<PathBuf>| path.as_ref().map(|p| p.display().to_string());
        let flags: [(&str, Option<String>); 12] = [
            ("server.host", overrides.host.clone()),
            ("server.port", overrides.port.map(|p| p.to_string())),
            (
                "server.http_port",
                overrides.http_port.map(|p| p.to_string()),
            ),
            ("server.public_url", overrides.public_url.clone()),
            (
                "data_dir",
                overrides.data_dir.as_ref().map(|d| d.display().to_string()),
            ),
            ("server.tls.cert", path(&overrides.tls_cert)),
            ("server.tls.key", path(&overrides.tls_key)),
            ("server.tls.client_ca", path(&overrides.tls_client_ca)),
            ("bootstrap.username", overrides.username.clone()),
            ("bootstrap.password", overrides.password.clone()),
            ("bootstrap.user_token", overrides.user_token.clone()),
            (
                "log.format",
                overrides.log_format.map(|f| match f {
                    LogFormat::Text => "text".to_owned(),
                    LogFormat::Json => "json".to_owned(),
                }),
            ),
        ];
        for (key, value) in flags {
            if let Some(value) = value {
                builder = builder.set_override(key, value)?;
            }
        }
        let settings: Settings = match builder.build()?.try_deserialize() {
            Ok(settings) => settings,
            Err(error) => return Err(name_the_variable(&environment, error)),
        };
        settings.check()?;
        Ok(Loaded { settings, warnings })
    }

    /// Range-checks every duration, size and limit, naming the setting that is out of bounds,
    /// and returns the durations in the types the service computes with.
    pub fn check(&self) -> anyhow::Result<Durations> {
        self.server.bind_addr()?;
        self.server.tls.files()?;
        self.metrics_addr()?;
        anyhow::ensure!(
            is_cookie_name(&self.session.cookie_name),
            "session.cookie_name must be a cookie name (letters, digits and !#$%&'*+-.^_`|~), got {:?}",
            self.session.cookie_name
        );
        let server = &self.server;
        let database = &self.database;
        let argon2 = &self.argon2;
        let throttle = &self.throttle;
        within(
            "server.shutdown_grace_seconds",
            server.shutdown_grace_seconds,
            0..=MAX_SHUTDOWN_GRACE_SECONDS,
        )?;
        within(
            "server.max_request_bytes",
            as_u64(server.max_request_bytes),
            MIN_REQUEST_BYTES..=MAX_REQUEST_BYTES,
        )?;
        within(
            "server.max_concurrent_streams",
            u64::from(server.max_concurrent_streams),
            1..=MAX_CONCURRENT_STREAMS,
        )?;
        within(
            "database.max_connections",
            u64::from(database.max_connections),
            1..=MAX_DATABASE_CONNECTIONS,
        )?;
        within(
            "database.acquire_timeout_ms",
            database.acquire_timeout_ms,
            1..=MAX_ACQUIRE_TIMEOUT_MS,
        )?;
        within(
            "argon2.parallelism",
            u64::from(argon2.parallelism),
            1..=u64::from(crate::password::MAX_STORED_PARALLELISM),
        )?;
        within(
            "argon2.memory_kib",
            u64::from(argon2.memory_kib),
            u64::from(argon2.parallelism) * 8..=u64::from(crate::password::MAX_STORED_MEMORY_KIB),
        )?;
        within(
            "argon2.iterations",
            u64::from(argon2.iterations),
            1..=u64::from(crate::password::MAX_STORED_ITERATIONS),
        )?;
        argon2::Params::new(
            argon2.memory_kib,
            argon2.iterations,
            argon2.parallelism,
            None,
        )
        .map_err(|e| anyhow::anyhow!("argon2 parameters refused: {e}"))?;
        within(
            "argon2.max_concurrent",
            as_u64(argon2.max_concurrent),
            1..=MAX_HASHING_CONCURRENT,
        )?;
        within(
            "argon2.max_waiting",
            as_u64(argon2.max_waiting),
            0..=MAX_HASHING_WAITING,
        )?;
        within(
            "throttle.in_flight_per_address",
            as_u64(throttle.in_flight_per_address),
            1..=MAX_IN_FLIGHT_PER_ADDRESS,
        )?;
        within(
            "audit.retention_days",
            u64::from(self.audit.retention_days),
            MIN_AUDIT_RETENTION_DAYS..=TEN_YEARS_SECONDS / 86_400,
        )?;
        within(
            "throttle.ipv6_prefix_length",
            u64::from(throttle.ipv6_prefix_length),
            32..=128,
        )?;
        within(
            "metrics.header_read_timeout_ms",
            self.metrics.header_read_timeout_ms,
            1..=MAX_HEADER_READ_TIMEOUT_MS,
        )?;
        let window = seconds(
            "throttle.window_seconds",
            throttle.window_seconds,
            1..=TEN_YEARS_SECONDS,
        )?;
        let max_delay = seconds(
            "throttle.max_delay_seconds",
            throttle.max_delay_seconds,
            1..=throttle.window_seconds,
        )
        .map_err(|e| e.context("the longest wait can't outlast the window"))?;
        let base_delay = milliseconds(
            "throttle.base_delay_ms",
            throttle.base_delay_ms,
            1..=throttle.max_delay_seconds.saturating_mul(1_000),
        )
        .map_err(|e| e.context("the first wait can't exceed the longest one"))?;
        Ok(Durations {
            session_ttl: seconds(
                "session.ttl_seconds",
                self.session.ttl_seconds,
                1..=TEN_YEARS_SECONDS,
            )?,
            session_max_idle: seconds(
                "session.max_idle_seconds",
                self.session.max_idle_seconds,
                1..=TEN_YEARS_SECONDS,
            )?,
            audit_retention: chrono::Duration::days(i64::from(self.audit.retention_days)),
            access_token_ttl: seconds(
                "tokens.access_token_ttl_seconds",
                self.tokens.access_token_ttl_seconds,
                1..=MAX_ACCESS_TOKEN_TTL_SECONDS,
            )?,
            throttle_base_delay: base_delay,
            throttle_max_delay: max_delay,
            throttle_window: window,
            acquire_timeout: StdDuration::from_millis(database.acquire_timeout_ms),
            shutdown_grace: StdDuration::from_secs(server.shutdown_grace_seconds),
            metrics_header_read_timeout: StdDuration::from_millis(
                self.metrics.header_read_timeout_ms,
            ),
        })
    }

    /// Where the embedded SQLite database lives when no URL is configured.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| {
            dirs::data_dir()
                .unwrap_or_else(std::env::temp_dir)
                .join("label-studio-identity")
        })
    }
}

const TEN_YEARS_SECONDS: u64 = 10 * 365 * 24 * 60 * 60;
const MAX_SHUTDOWN_GRACE_SECONDS: u64 = 60 * 60;
const MIN_REQUEST_BYTES: u64 = 1024;
const MAX_REQUEST_BYTES: u64 = 4 * 1024 * 1024;
const MAX_CONCURRENT_STREAMS: u64 = 10_000;
const MAX_DATABASE_CONNECTIONS: u64 = 1_000;
const MAX_ACQUIRE_TIMEOUT_MS: u64 = 10 * 60 * 1_000;
const MAX_HASHING_CONCURRENT: u64 = 1_024;
const MAX_HASHING_WAITING: u64 = 100_000;
const MAX_HEADER_READ_TIMEOUT_MS: u64 = 10 * 60 * 1_000;
const MAX_IN_FLIGHT_PER_ADDRESS: u64 = 10_000;
/// Access tokens can't be revoked, so they stay short-lived: a day at the most.
const MAX_ACCESS_TOKEN_TTL_SECONDS: u64 = 24 * 60 * 60;
/// The audit trail refuses to delete younger rows.
const MIN_AUDIT_RETENTION_DAYS: u64 = 30;

/// The configured durations, range-checked, as the service computes with them. Their bounds
/// keep every timestamp arithmetic on them far from overflowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durations {
    pub session_ttl: chrono::Duration,
    pub access_token_ttl: chrono::Duration,
    pub session_max_idle: chrono::Duration,
    pub audit_retention: chrono::Duration,
    pub throttle_base_delay: chrono::Duration,
    pub throttle_max_delay: chrono::Duration,
    pub throttle_window: chrono::Duration,
    pub acquire_timeout: StdDuration,
    pub shutdown_grace: StdDuration,
    pub metrics_header_read_timeout: StdDuration,
}

/// The environment variable that sets `key`.
fn variable_of(key: &str) -> String {
    format!("{PREFIX}{}", key.to_ascii_uppercase().replace('.', "__"))
}

fn as_u64(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

fn within(key: &str, value: u64, range: RangeInclusive<u64>) -> anyhow::Result<()> {
    anyhow::ensure!(
        range.contains(&value),
        "{key} ({}) must be between {} and {}, got {value}",
        variable_of(key),
        range.start(),
        range.end()
    );
    Ok(())
}

fn seconds(key: &str, value: u64, range: RangeInclusive<u64>) -> anyhow::Result<chrono::Duration> {
    within(key, value, range)?;
    i64::try_from(value)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .ok_or_else(|| anyhow::anyhow!("{key} is too large, got {value}"))
}

fn milliseconds(
    key: &str,
    value: u64,
    range: RangeInclusive<u64>,
) -> anyhow::Result<chrono::Duration> {
    within(key, value, range)?;
    i64::try_from(value)
        .ok()
        .and_then(chrono::Duration::try_milliseconds)
        .ok_or_else(|| anyhow::anyhow!("{key} is too large, got {value}"))
}

/// A setting read from an `IDENTITY_<SECTION>__<KEY>` variable.
struct EnvSetting {
    variable: String,
    key: String,
    value: Value,
}

/// Sorts the `IDENTITY_*` variables into settings, warnings, and variables that are silently
/// not ours; an unknown setting is an error naming it.
fn identity_variables(
    vars: &HashMap<String, String>,
) -> anyhow::Result<(Vec<EnvSetting>, Vec<Warning>)> {
    let keys = setting_keys();
    let mut names: Vec<&String> = vars
        .keys()
        .filter(|name| name.starts_with(PREFIX) && *name != CONFIG_VARIABLE)
        .collect();
    names.sort();
    let mut settings = Vec::new();
    let mut warnings = Vec::new();
    for name in names {
        let value = vars.get(name).cloned().unwrap_or_default();
        match classify(name, &keys) {
            Variable::Setting { key, list: true } => {
                let items: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(str::to_owned)
                    .collect();
                settings.push(EnvSetting {
                    variable: name.clone(),
                    key,
                    value: Value::from(items),
                });
            }
            Variable::Setting { key, list: false } => {
                settings.push(EnvSetting {
                    variable: name.clone(),
                    key,
                    value: Value::from(value),
                });
            }
            Variable::ServiceLink => {}
            Variable::Foreign => warnings.push(Warning {
                variable: name.clone(),
            }),
            Variable::UnknownSetting => {
                return Err(unknown_setting(name, &keys));
            }
        }
    }
    Ok((settings, warnings))
}

fn classify(name: &str, keys: &[SettingKey]) -> Variable {
    let rest = name.strip_prefix(PREFIX).unwrap_or(name);
    let key = rest.to_ascii_lowercase().replace("__", ".");
    if let Some(known) = keys.iter().find(|known| known.path == key) {
        return Variable::Setting {
            key,
            list: known.list,
        };
    }
    if is_service_link(name) {
        Variable::ServiceLink
    } else if rest.contains("__") {
        Variable::UnknownSetting
    } else {
        Variable::Foreign
    }
}

fn unknown_setting(name: &str, keys: &[SettingKey]) -> anyhow::Error {
    let rest = name
        .strip_prefix(PREFIX)
        .unwrap_or(name)
        .to_ascii_lowercase();
    let section = rest.split("__").next().unwrap_or_default();
    let siblings: Vec<String> = keys
        .iter()
        .filter(|key| key.path.split_once('.').map(|(s, _)| s) == Some(section))
        .map(|key| variable_of(&key.path))
        .collect();
    if siblings.is_empty() {
        anyhow::anyhow!(
            "{name} is not a setting: there is no section {section:?} \
             (see the configuration table in the README)"
        )
    } else {
        anyhow::anyhow!(
            "{name} is not a setting; the {section} settings are {}",
            siblings.join(", ")
        )
    }
}

/// Whether `name` is a variable Kubernetes injects for a Service: `<SVC>_SERVICE_HOST`,
/// `<SVC>_SERVICE_PORT`, `<SVC>_SERVICE_PORT_<PORT NAME>`, `<SVC>_PORT` or
/// `<SVC>_PORT_<n>_<TCP|UDP|SCTP>[_PROTO|_PORT|_ADDR]`, where `<SVC>` is a Service name
/// upper-cased with `-` turned into `_`, so it neither starts nor ends with `_`.
fn is_service_link(name: &str) -> bool {
    name.match_indices('_').any(|(at, _)| {
        let (service, suffix) = name.split_at(at);
        dns_name(service) && service_link_suffix(suffix)
    })
}

/// An upper-cased DNS label or port name with `-` as `_`.
fn dns_name(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric())
        && text
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn service_link_suffix(suffix: &str) -> bool {
    if matches!(suffix, "_SERVICE_HOST" | "_SERVICE_PORT" | "_PORT") {
        return true;
    }
    if let Some(port_name) = suffix.strip_prefix("_SERVICE_PORT_") {
        return dns_name(port_name);
    }
    let Some(rest) = suffix.strip_prefix("_PORT_") else {
        return false;
    };
    let Some((number, rest)) = rest.split_once('_') else {
        return false;
    };
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit()) {
        return false;
    }
    ["TCP", "UDP", "SCTP"].iter().any(|protocol| {
        rest.strip_prefix(protocol)
            .is_some_and(|field| matches!(field, "" | "_PROTO" | "_PORT" | "_ADDR"))
    })
}

/// Turns a deserialization error into one naming the environment variable that caused it,
/// when one did: each is tried alone on the defaults.
fn name_the_variable(environment: &[EnvSetting], error: config::ConfigError) -> anyhow::Error {
    for EnvSetting {
        variable,
        key,
        value,
    } in environment
    {
        let alone = Config::builder()
            .set_override(key.as_str(), value.clone())
            .and_then(|builder| builder.build())
            .and_then(|config| config.try_deserialize::<Settings>());
        if let Err(own) = alone {
            return anyhow::anyhow!("{variable}: {own}");
        }
    }
    anyhow::anyhow!("configuration: {error}")
}

/// A setting's key path (`server.port`) and whether its variable holds a comma-separated list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SettingKey {
    path: String,
    list: bool,
}

/// Every setting's key path, read off `Settings`' own `Deserialize`, so the environment
/// knows exactly the keys a TOML file may hold.
fn setting_keys() -> Vec<SettingKey> {
    let keys = RefCell::new(Vec::new());
    // Walking fails only if a setting's type refused the placeholder values; a unit test checks
    // that every key is found.
    let _ = Settings::deserialize(KeyLister {
        path: String::new(),
        keys: &keys,
    });
    keys.into_inner()
}

/// A deserializer that records the path of every leaf it is asked for and answers with a
/// placeholder each setting type accepts.
struct KeyLister<'a> {
    path: String,
    keys: &'a RefCell<Vec<SettingKey>>,
}

impl KeyLister<'_> {
    fn record(&self, list: bool) {
        self.keys.borrow_mut().push(SettingKey {
            path: self.path.clone(),
            list,
        });
    }
}

impl<'de> Deserializer<'de> for KeyLister<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.record(false);
        // Text that both text settings and switches accept.
        visitor.visit_str("true")
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.record(false);
        visitor.visit_bool(false)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.record(false);
        visitor.visit_u64(0)
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.record(false);
        visitor.visit_f64(0.0)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.record(false);
        visitor.visit_none()
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.record(true);
        visitor.visit_seq(de::value::SeqDeserializer::<_, Self::Error>::new(
            std::iter::empty::<()>(),
        ))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.record(false);
        let first = variants.first().copied().unwrap_or_default();
        visitor.visit_enum(IntoDeserializer::<Self::Error>::into_deserializer(first))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_map(FieldLister {
            fields: fields.iter(),
            current: None,
            path: self.path,
            keys: self.keys,
        })
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char str string bytes byte_buf unit unit_struct tuple tuple_struct map
        identifier ignored_any
    }
}

/// Hands a struct's fields to its visitor one by one, each value walked by a [`KeyLister`].
struct FieldLister<'a> {
    fields: std::slice::Iter<'static, &'static str>,
    current: Option<&'static str>,
    path: String,
    keys: &'a RefCell<Vec<SettingKey>>,
}

impl<'de> MapAccess<'de> for FieldLister<'_> {
    type Error = de::value::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some(field) = self.fields.next() else {
            return Ok(None);
        };
        self.current = Some(field);
        seed.deserialize(IntoDeserializer::<Self::Error>::into_deserializer(*field))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let field = self.current.take().unwrap_or_default();
        let path = if self.path.is_empty() {
            field.to_owned()
        } else {
            format!("{}.{field}", self.path)
        };
        seed.deserialize(KeyLister {
            path,
            keys: self.keys,
        })
    }
}

/// An RFC 6265 cookie name: an HTTP token.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

/// Reads a switch the way Label Studio does: `true/yes/on/1` or `false/no/not/off/0`, any case.
pub fn parse_switch(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "not" | "off" | "0" => Ok(false),
        _ => Err(format!(
            "expected true/yes/on/1 or false/no/not/off/0, got {value:?}"
        )),
    }
}

fn deserialize_switch<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Switch {
        Bool(bool),
        Text(String),
        Number(i64),
    }
    match Switch::deserialize(deserializer)? {
        Switch::Bool(value) => Ok(value),
        Switch::Text(text) => parse_switch(&text).map_err(de::Error::custom),
        Switch::Number(number) => parse_switch(&number.to_string()).map_err(de::Error::custom),
    }
}

/// Text exactly as written. A number or boolean where text belongs (`password = 1e5` in TOML)
/// is refused rather than turned into other text; the message leaves the value out, as it may
/// be a secret.
struct Text;

impl Visitor<'_> for Text {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("text")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
        Ok(value.to_owned())
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<String, E> {
        Ok(value)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<String, E> {
        Err(E::custom("expected text in quotes, found a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<String, E> {
        Err(E::custom("expected text in quotes, found a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<String, E> {
        Err(E::custom("expected text in quotes, found a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<String, E> {
        Err(E::custom("expected text in quotes, found a number"))
    }
}

fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    deserializer.deserialize_any(Text)
}

fn optional_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    struct OptionalText;

    impl<'de> Visitor<'de> for OptionalText {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("text")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<Self::Value, D::Error> {
            text(inner).map(Some)
        }
    }

    deserializer.deserialize_option(OptionalText)
}

fn optional_secret<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SecretString>, D::Error> {
    optional_text(deserializer).map(|text| text.map(SecretString::from))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn vars(vars: &[(&str, &str)]) -> HashMap<String, String> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load_all(list: &[(&str, &str)]) -> anyhow::Result<Loaded> {
        Settings::load_from(&Overrides::default(), &vars(list))
    }

    fn load(list: &[(&str, &str)]) -> anyhow::Result<Settings> {
        load_all(list).map(|loaded| loaded.settings)
    }

    fn error(list: &[(&str, &str)]) -> String {
        format!("{:#}", load(list).expect_err("should be refused"))
    }

    fn secret(value: Option<&SecretString>) -> Option<&str> {
        value.map(ExposeSecret::expose_secret)
    }

    /// What Kubernetes injects for a Service named `service` with one port named `grpc`.
    fn service_links(service: &str) -> Vec<(String, String)> {
        let svc = service.to_ascii_uppercase().replace('-', "_");
        [
            ("_SERVICE_HOST", "10.96.0.12"),
            ("_SERVICE_PORT", "50051"),
            ("_SERVICE_PORT_GRPC", "50051"),
            ("_PORT", "tcp://10.96.0.12:50051"),
            ("_PORT_50051_TCP", "tcp://10.96.0.12:50051"),
            ("_PORT_50051_TCP_PROTO", "tcp"),
            ("_PORT_50051_TCP_PORT", "50051"),
            ("_PORT_50051_TCP_ADDR", "10.96.0.12"),
        ]
        .iter()
        .map(|(suffix, value)| (format!("{svc}{suffix}"), (*value).to_owned()))
        .collect()
    }

    #[test]
    fn switches_read_like_label_studio() {
        for yes in ["true", "YES", "On", "1"] {
            assert_eq!(parse_switch(yes), Ok(true));
        }
        for no in ["false", "No", "NOT", "off", "0"] {
            assert_eq!(parse_switch(no), Ok(false));
        }
        assert!(parse_switch("maybe").is_err());
    }

    #[test]
    fn a_bad_signup_switch_names_the_variable() {
        let error = error(&[(SIGNUP_SWITCH, "maybe")]);
        assert!(error.contains(SIGNUP_SWITCH), "{error}");
        assert!(
            load(&[(SIGNUP_SWITCH, "Yes")])
                .unwrap()
                .signup
                .disable_without_link
        );
    }

    #[test]
    fn label_studio_variables_are_honoured_and_bare_ones_ignored() {
        let settings = load(&[
            ("LABEL_STUDIO_HOST", "https://ls.example.com"),
            ("LABEL_STUDIO_USERNAME", "admin@example.com"),
            ("USERNAME", "shell-user"),
            ("HOST", "shell-host"),
        ])
        .unwrap();
        assert_eq!(settings.server.public_url(), Some("https://ls.example.com"));
        assert_eq!(
            settings.bootstrap.username.as_deref(),
            Some("admin@example.com")
        );
        assert_eq!(settings.server.host, "0.0.0.0");
        assert_eq!(settings.server.port, 50051);
    }

    #[test]
    fn identity_variables_reach_nested_and_top_level_settings() {
        let settings = load(&[
            ("IDENTITY_ARGON2__MEMORY_KIB", "1024"),
            ("IDENTITY_DATA_DIR", "/var/lib/identity"),
            ("IDENTITY_THROTTLE__IPV6_PREFIX_LENGTH", "56"),
        ])
        .unwrap();
        assert_eq!(settings.argon2.memory_kib, 1024);
        assert_eq!(settings.data_dir, Some(PathBuf::from("/var/lib/identity")));
        assert_eq!(settings.throttle.ipv6_prefix_length, 56);
    }

    #[test]
    fn tls_files_come_from_the_environment_in_pairs() {
        let settings = load(&[
            ("IDENTITY_SERVER__TLS__CERT", "/tls/tls.crt"),
            ("IDENTITY_SERVER__TLS__KEY", "/tls/tls.key"),
            ("IDENTITY_SERVER__TLS__CLIENT_CA", "/tls/ca.crt"),
        ])
        .unwrap();
        assert_eq!(
            settings.server.tls.files().unwrap(),
            Some(TlsFiles {
                cert: "/tls/tls.crt".into(),
                key: "/tls/tls.key".into(),
                client_ca: Some("/tls/ca.crt".into()),
            })
        );
        let empty = load(&[("IDENTITY_SERVER__TLS__CERT", "")]).unwrap();
        assert_eq!(empty.server.tls.files().unwrap(), None);

        let cases: [(&[(&str, &str)], &str); 3] = [
            (
                &[("IDENTITY_SERVER__TLS__CERT", "/tls/tls.crt")],
                "--tls-key",
            ),
            (
                &[("IDENTITY_SERVER__TLS__KEY", "/tls/tls.key")],
                "--tls-cert",
            ),
            (
                &[("IDENTITY_SERVER__TLS__CLIENT_CA", "/tls/ca.crt")],
                "needs TLS",
            ),
        ];
        for (vars, expected) in cases {
            let error = load(vars).unwrap_err().to_string();
            assert!(error.contains(expected), "{vars:?}: {error}");
        }
        assert!(load(&[("IDENTITY_SERVER__TLS__CA", "/tls/ca.crt")]).is_err());
    }

    #[test]
    fn tls_flags_win_over_the_environment() {
        let overrides = Overrides {
            tls_cert: Some("/flag/tls.crt".into()),
            tls_key: Some("/flag/tls.key".into()),
            ..Overrides::default()
        };
        let vars = HashMap::from([
            (
                "IDENTITY_SERVER__TLS__CERT".to_owned(),
                "/env/tls.crt".to_owned(),
            ),
            (
                "IDENTITY_SERVER__TLS__CLIENT_CA".to_owned(),
                "/env/ca.crt".to_owned(),
            ),
        ]);
        let files = Settings::load_from(&overrides, &vars)
            .unwrap()
            .settings
            .server
            .tls
            .files()
            .unwrap()
            .unwrap();
        assert_eq!(files.cert, PathBuf::from("/flag/tls.crt"));
        assert_eq!(files.key, PathBuf::from("/flag/tls.key"));
        assert_eq!(files.client_ca, Some(PathBuf::from("/env/ca.crt")));
    }

    #[test]
    fn the_http_port_and_cookie_name_have_defaults_and_overrides() {
        let settings = load(&[]).unwrap();
        assert_eq!(settings.server.http_port, 8080);
        assert_eq!(settings.session.cookie_name, "sessionid");
        let settings = load(&[
            ("IDENTITY_SERVER__HTTP_PORT", "9090"),
            ("IDENTITY_SESSION__COOKIE_NAME", "ls_session"),
        ])
        .unwrap();
        assert_eq!(settings.server.http_port, 9090);
        assert_eq!(settings.session.cookie_name, "ls_session");
        let overrides = Overrides {
            http_port: Some(0),
            ..Overrides::default()
        };
        let vars = HashMap::from([("IDENTITY_SERVER__HTTP_PORT".to_owned(), "9090".to_owned())]);
        assert_eq!(
            Settings::load_from(&overrides, &vars)
                .unwrap()
                .settings
                .server
                .http_port,
            0
        );
        for bad in ["", "session id", "a;b", "a=b"] {
            assert!(
                load(&[("IDENTITY_SESSION__COOKIE_NAME", bad)]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn flags_win_over_the_environment() {
        let overrides = Overrides {
            port: Some(6000),
            public_url: Some("https://flag.example.com".into()),
            ..Overrides::default()
        };
        let vars = vars(&[
            ("LABEL_STUDIO_HOST", "https://env.example.com"),
            ("IDENTITY_SERVER__PORT", "7000"),
        ]);
        let settings = Settings::load_from(&overrides, &vars).unwrap().settings;
        assert_eq!(settings.server.port, 6000);
        assert_eq!(
            settings.server.public_url(),
            Some("https://flag.example.com")
        );
    }

    #[test]
    fn every_setting_is_known_to_the_environment_and_only_lists_split() {
        let keys = setting_keys();
        let paths: Vec<&str> = keys.iter().map(|key| key.path.as_str()).collect();
        for expected in [
            "data_dir",
            "server.host",
            "server.trusted_proxies",
            "database.url",
            "signup.disable_without_link",
            "session.ttl_seconds",
            "argon2.max_waiting",
            "bootstrap.password",
            "bootstrap.user_token",
            "log.format",
            "metrics.enabled",
            "metrics.host",
            "metrics.header_read_timeout_ms",
            "throttle.window_seconds",
            "throttle.ipv6_prefix_length",
            "tokens.access_token_ttl_seconds",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {paths:?}"
            );
        }
        assert_eq!(paths.len(), 43, "{paths:?}");
        assert!(!paths.contains(&"server"), "sections are not settings");
        let lists: Vec<&str> = keys
            .iter()
            .filter(|key| key.list)
            .map(|key| key.path.as_str())
            .collect();
        assert_eq!(lists, ["server.trusted_proxies"]);
    }

    #[test]
    fn kubernetes_service_links_are_ignored_without_a_word() {
        for service in ["identity-label-studio-identity", "identity", "identity--x"] {
            let links = service_links(service);
            let list: Vec<(&str, &str)> = links
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();

            let loaded = load_all(&list).unwrap_or_else(|e| panic!("{service}: {e:#}"));

            assert_eq!(loaded.warnings, [], "{service}");
            assert_eq!(loaded.settings.server.port, 50051);
        }
    }

    #[test]
    fn service_link_shapes_are_recognised_precisely() {
        for link in [
            "IDENTITY_SERVICE_HOST",
            "IDENTITY_PORT",
            "IDENTITY_SERVICE_PORT_HTTP_METRICS",
            "IDENTITY_LABEL_STUDIO_IDENTITY_PORT_9464_TCP_ADDR",
            "IDENTITY_X_PORT_53_UDP",
            "IDENTITY_X_PORT_9_SCTP_PROTO",
            "IDENTITY__X_SERVICE_HOST",
        ] {
            assert!(is_service_link(link), "{link}");
        }
        for other in [
            "IDENTITY_SERVER__PORT",
            "IDENTITY_METRIC__PORT",
            "IDENTITY_SERVICE_HOSTS",
            "IDENTITY_PORT_X_TCP",
            "IDENTITY_PORT_50051_HTTP",
            "IDENTITY_PORT_50051_TCP_NAME",
            "IDENTITY_SERVICE_PORT_",
            "IDENTITY_FOO",
        ] {
            assert!(!is_service_link(other), "{other}");
        }
    }

    #[test]
    fn other_identity_variables_are_ignored_with_one_warning_each() {
        let loaded = load_all(&[
            ("IDENTITY_DEBUG", "secret-value-1"),
            ("IDENTITY_SERVER", "secret-value-2"),
            ("IDENTITY_SERVICE_HOST", "10.0.0.1"),
        ])
        .unwrap();

        let names: Vec<&str> = loaded
            .warnings
            .iter()
            .map(|w| w.variable.as_str())
            .collect();
        assert_eq!(names, ["IDENTITY_DEBUG", "IDENTITY_SERVER"]);
        for warning in &loaded.warnings {
            assert!(!warning.to_string().contains("secret-value"), "{warning}");
        }
    }

    #[test]
    fn an_unknown_setting_stops_the_start_naming_it() {
        let typo = error(&[("IDENTITY_THROTTLE__WINDOW_SECOND", "5")]);
        assert!(typo.contains("IDENTITY_THROTTLE__WINDOW_SECOND "), "{typo}");
        assert!(typo.contains("IDENTITY_THROTTLE__WINDOW_SECONDS"), "{typo}");
        for name in [
            "IDENTITY_ARGON2__MEMORY_KB",
            "IDENTITY_METRIC__PORT",
            "IDENTITY_SERVR__PORT",
            "IDENTITY_SERVER__PORT__X",
        ] {
            let error = error(&[(name, "1")]);
            assert!(error.contains(name), "{error}");
        }
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for (name, value) in [
            ("IDENTITY_SERVER__PORT", "abc"),
            ("IDENTITY_SERVER__PORT", "70000"),
            ("IDENTITY_SESSION__TTL_SECONDS", "18446744073709551616"),
            ("IDENTITY_METRICS__ENABLED", "maybe"),
        ] {
            let error = error(&[(name, value)]);
            assert!(error.contains(name), "{name}={value}: {error}");
        }
    }

    #[test]
    fn numeric_looking_secrets_stay_exactly_as_written() {
        for value in [
            "0123456789",
            "0000012345",
            "1e5",
            "1e500000",
            "true",
            "FALSE",
            "null",
            "00000000",
            "-0",
            " 12 ",
        ] {
            let from_identity = load(&[
                ("IDENTITY_BOOTSTRAP__USERNAME", value),
                ("IDENTITY_BOOTSTRAP__PASSWORD", value),
                ("IDENTITY_BOOTSTRAP__USER_TOKEN", value),
                ("IDENTITY_SERVER__PUBLIC_URL", value),
            ])
            .unwrap();
            let from_label_studio = load(&[
                ("LABEL_STUDIO_USERNAME", value),
                ("LABEL_STUDIO_PASSWORD", value),
                ("LABEL_STUDIO_USER_TOKEN", value),
            ])
            .unwrap();
            let from_flags = Settings::load_from(
                &Overrides {
                    username: Some(value.into()),
                    password: Some(value.into()),
                    user_token: Some(value.into()),
                    ..Overrides::default()
                },
                &HashMap::new(),
            )
            .unwrap()
            .settings;

            for settings in [&from_identity, &from_label_studio, &from_flags] {
                let bootstrap = &settings.bootstrap;
                assert_eq!(bootstrap.username.as_deref(), Some(value));
                assert_eq!(secret(bootstrap.password.as_ref()), Some(value));
                assert_eq!(secret(bootstrap.user_token.as_ref()), Some(value));
            }
            assert_eq!(from_identity.server.public_url.as_deref(), Some(value));
        }
    }

    #[test]
    fn numbers_switches_and_lists_still_parse_from_text() {
        let settings = load(&[
            ("IDENTITY_SERVER__PORT", "6000"),
            ("IDENTITY_METRICS__ENABLED", "off"),
            ("IDENTITY_SERVER__TRUSTED_PROXIES", "10.0.0.0/8, ::1,"),
            ("IDENTITY_LOG__FORMAT", "json"),
        ])
        .unwrap();
        assert_eq!(settings.server.port, 6000);
        assert!(!settings.metrics.enabled);
        assert_eq!(settings.server.trusted_proxies, ["10.0.0.0/8", "::1"]);
        assert_eq!(settings.log.format, LogFormat::Json);
    }

    #[test]
    fn a_toml_file_keeps_quoted_text_and_refuses_bare_numbers_for_text() {
        let dir = tempfile::tempdir().unwrap();
        let quoted = dir.path().join("quoted.toml");
        std::fs::write(
            &quoted,
            "[bootstrap]\nusername = \"a@example.com\"\npassword = \"0123456789\"\n\
             user_token = \"1e5\"\n[server]\nport = 6001\n",
        )
        .unwrap();
        let bare = dir.path().join("bare.toml");
        std::fs::write(&bare, "[bootstrap]\npassword = 1e5\n").unwrap();

        let settings = load(&[(CONFIG_VARIABLE, quoted.to_str().unwrap())]).unwrap();
        let refused = error(&[(CONFIG_VARIABLE, bare.to_str().unwrap())]);

        assert_eq!(
            secret(settings.bootstrap.password.as_ref()),
            Some("0123456789")
        );
        assert_eq!(secret(settings.bootstrap.user_token.as_ref()), Some("1e5"));
        assert_eq!(settings.server.port, 6001);
        assert!(refused.contains("bootstrap.password"), "{refused}");
        assert!(!refused.contains("100000"), "{refused}");
    }

    #[test]
    fn durations_and_sizes_out_of_range_stop_the_start_naming_the_setting() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("IDENTITY_THROTTLE__WINDOW_SECONDS", "9000000000000")],
                "IDENTITY_THROTTLE__WINDOW_SECONDS",
            ),
            (
                &[("IDENTITY_SESSION__TTL_SECONDS", "18446744073709551615")],
                "IDENTITY_SESSION__TTL_SECONDS",
            ),
            (
                &[("IDENTITY_SESSION__TTL_SECONDS", "0")],
                "session.ttl_seconds",
            ),
            (
                &[
                    ("IDENTITY_THROTTLE__WINDOW_SECONDS", "60"),
                    ("IDENTITY_THROTTLE__MAX_DELAY_SECONDS", "61"),
                ],
                "throttle.max_delay_seconds",
            ),
            (
                &[("IDENTITY_THROTTLE__BASE_DELAY_MS", "900001")],
                "throttle.base_delay_ms",
            ),
            (
                &[("IDENTITY_THROTTLE__BASE_DELAY_MS", "0")],
                "throttle.base_delay_ms",
            ),
            (
                &[("IDENTITY_DATABASE__ACQUIRE_TIMEOUT_MS", "0")],
                "database.acquire_timeout_ms",
            ),
            (
                &[("IDENTITY_DATABASE__ACQUIRE_TIMEOUT_MS", "600001")],
                "database.acquire_timeout_ms",
            ),
            (
                &[("IDENTITY_DATABASE__MAX_CONNECTIONS", "0")],
                "database.max_connections",
            ),
            (
                &[("IDENTITY_SERVER__SHUTDOWN_GRACE_SECONDS", "3601")],
                "server.shutdown_grace_seconds",
            ),
            (
                &[("IDENTITY_SERVER__MAX_REQUEST_BYTES", "100")],
                "server.max_request_bytes",
            ),
            (
                &[("IDENTITY_SERVER__MAX_REQUEST_BYTES", "18446744073709551615")],
                "server.max_request_bytes",
            ),
            (
                &[("IDENTITY_SERVER__MAX_CONCURRENT_STREAMS", "0")],
                "server.max_concurrent_streams",
            ),
            (
                &[("IDENTITY_THROTTLE__IPV6_PREFIX_LENGTH", "31")],
                "throttle.ipv6_prefix_length",
            ),
            (
                &[("IDENTITY_THROTTLE__IPV6_PREFIX_LENGTH", "129")],
                "throttle.ipv6_prefix_length",
            ),
            (
                &[("IDENTITY_ARGON2__MEMORY_KIB", "1048577")],
                "argon2.memory_kib",
            ),
            (&[("IDENTITY_ARGON2__MEMORY_KIB", "7")], "argon2.memory_kib"),
            (&[("IDENTITY_ARGON2__ITERATIONS", "0")], "argon2.iterations"),
            (
                &[("IDENTITY_ARGON2__ITERATIONS", "65")],
                "argon2.iterations",
            ),
            (
                &[("IDENTITY_ARGON2__PARALLELISM", "17")],
                "argon2.parallelism",
            ),
            (
                &[("IDENTITY_ARGON2__MAX_CONCURRENT", "0")],
                "argon2.max_concurrent",
            ),
            (
                &[("IDENTITY_ARGON2__MAX_WAITING", "18446744073709551615")],
                "argon2.max_waiting",
            ),
            (
                &[("IDENTITY_METRICS__HEADER_READ_TIMEOUT_MS", "0")],
                "metrics.header_read_timeout_ms",
            ),
            (&[("IDENTITY_METRICS__HOST", "localhost")], "metrics.host"),
        ];
        for (vars, expected) in cases {
            let error = error(vars);
            assert!(error.contains(expected), "{vars:?}: {error}");
        }
    }

    #[test]
    fn the_bounds_themselves_are_accepted() {
        let ten_years = TEN_YEARS_SECONDS.to_string();
        let longest_first_wait = (TEN_YEARS_SECONDS * 1_000).to_string();
        let settings = load(&[
            ("IDENTITY_SESSION__TTL_SECONDS", &ten_years),
            ("IDENTITY_THROTTLE__WINDOW_SECONDS", &ten_years),
            ("IDENTITY_THROTTLE__MAX_DELAY_SECONDS", &ten_years),
            ("IDENTITY_THROTTLE__BASE_DELAY_MS", &longest_first_wait),
            ("IDENTITY_SERVER__SHUTDOWN_GRACE_SECONDS", "3600"),
            ("IDENTITY_DATABASE__ACQUIRE_TIMEOUT_MS", "600000"),
            ("IDENTITY_ARGON2__MEMORY_KIB", "1048576"),
            ("IDENTITY_THROTTLE__IPV6_PREFIX_LENGTH", "128"),
        ])
        .unwrap();

        let durations = settings.check().unwrap();

        assert_eq!(durations.session_ttl, chrono::Duration::days(3650));
        assert_eq!(durations.throttle_window, chrono::Duration::days(3650));
        assert_eq!(durations.throttle_base_delay, chrono::Duration::days(3650));
        assert_eq!(durations.shutdown_grace, StdDuration::from_secs(3600));
        assert_eq!(durations.acquire_timeout, StdDuration::from_secs(600));
        assert_eq!(
            Settings::default().check().unwrap().session_ttl,
            chrono::Duration::days(14)
        );
    }

    #[test]
    fn metrics_listen_on_the_service_host_unless_told_otherwise() {
        let default = load(&[("IDENTITY_SERVER__HOST", "10.1.2.3")]).unwrap();
        let own = load(&[
            ("IDENTITY_SERVER__HOST", "0.0.0.0"),
            ("IDENTITY_METRICS__HOST", "127.0.0.1"),
        ])
        .unwrap();

        assert_eq!(
            default.metrics_addr().unwrap(),
            "10.1.2.3:9464".parse().unwrap()
        );
        assert_eq!(
            own.metrics_addr().unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
    }
}
