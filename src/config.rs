//! Layered configuration: defaults, an optional TOML file, `IDENTITY_*` environment variables,
//! Label Studio's own variable names, then command-line flags. Unknown keys stop the start.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf};

use config::{Config, Environment, File};
use secrecy::SecretString;
use serde::Deserialize;

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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Bind address.
    pub host: String,
    pub port: u16,
    /// Port of the HTTP listener (gateway checks) on the same address; 0 picks a free one.
    pub http_port: u16,
    /// Public URL of Label Studio, prefixed to invite links.
    pub public_url: Option<String>,
    /// How long calls in flight may run on after a shutdown signal.
    pub shutdown_grace_seconds: u64,
    /// Largest request message accepted, in bytes.
    pub max_request_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Gateways (IPs or CIDR blocks) whose `x-forwarded-for` names the client.
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `postgres://…` or `sqlite://<file>`; the embedded SQLite file when absent.
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
    pub username: Option<String>,
    pub password: Option<SecretString>,
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
    /// Port of the Prometheus `/metrics` endpoint on the bind address; 0 picks a free one.
    pub port: u16,
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
                cookie_name: "sessionid".into(),
            },
            argon2: Argon2Settings::default(),
            bootstrap: BootstrapSettings::default(),
            log: LogSettings {
                format: LogFormat::Text,
            },
            metrics: MetricsSettings {
                enabled: true,
                port: 9464,
            },
            throttle: ThrottleSettings::default(),
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

impl ServerSettings {
    pub fn bind_addr(&self) -> anyhow::Result<SocketAddr> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let ip: std::net::IpAddr = host
            .parse()
            .map_err(|_| anyhow::anyhow!("--host must be an IP address, got {:?}", self.host))?;
        Ok(SocketAddr::new(ip, self.port))
    }

    pub fn public_url(&self) -> Option<&str> {
        self.public_url.as_deref().filter(|url| !url.is_empty())
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

impl Settings {
    /// Reads every source from the process environment.
    pub fn load(overrides: &Overrides) -> anyhow::Result<Self> {
        Self::load_from(overrides, &std::env::vars().collect())
    }

    /// Reads every source, taking environment variables from `vars`.
    pub fn load_from(
        overrides: &Overrides,
        vars: &HashMap<String, String>,
    ) -> anyhow::Result<Self> {
        let env = |name: &str| vars.get(name).cloned();
        let config_file = overrides
            .config_file
            .clone()
            .or_else(|| env("IDENTITY_CONFIG").map(PathBuf::from));
        let mut builder = Config::builder();
        if let Some(path) = &config_file {
            builder = builder.add_source(File::from(path.as_path()).required(true));
        }
        let identity_vars: HashMap<String, String> = vars
            .iter()
            .filter(|(name, _)| name.starts_with("IDENTITY_") && *name != "IDENTITY_CONFIG")
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        builder = builder.add_source(
            Environment::with_prefix("IDENTITY")
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("server.trusted_proxies")
                .try_parsing(true)
                .source(Some(identity_vars)),
        );
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
        let flags: [(&str, Option<String>); 9] = [
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
        let settings: Settings = builder
            .build()?
            .try_deserialize()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> anyhow::Result<()> {
        self.server.bind_addr()?;
        anyhow::ensure!(
            self.session.ttl_seconds > 0,
            "session.ttl_seconds must be positive"
        );
        anyhow::ensure!(
            is_cookie_name(&self.session.cookie_name),
            "session.cookie_name must be a cookie name (letters, digits and !#$%&'*+-.^_`|~), got {:?}",
            self.session.cookie_name
        );
        anyhow::ensure!(
            self.database.max_connections > 0,
            "database.max_connections must be positive"
        );
        anyhow::ensure!(
            self.argon2.max_concurrent > 0,
            "argon2.max_concurrent must be positive"
        );
        Ok(())
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

fn deserialize_switch<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Switch {
        Bool(bool),
        Text(String),
        Number(i64),
    }
    match Switch::deserialize(deserializer)? {
        Switch::Bool(value) => Ok(value),
        Switch::Text(text) => parse_switch(&text).map_err(serde::de::Error::custom),
        Switch::Number(number) => {
            parse_switch(&number.to_string()).map_err(serde::de::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::load_from(&Overrides::default(), &vars)
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
        let error = load(&[(SIGNUP_SWITCH, "maybe")]).unwrap_err().to_string();
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
    fn identity_variables_reach_nested_settings_and_typos_fail() {
        let settings = load(&[("IDENTITY_ARGON2__MEMORY_KIB", "1024")]).unwrap();
        assert_eq!(settings.argon2.memory_kib, 1024);
        assert!(load(&[("IDENTITY_ARGON2__MEMORY_KB", "1024")]).is_err());
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
        let vars = HashMap::from([(
            "LABEL_STUDIO_HOST".to_owned(),
            "https://env.example.com".to_owned(),
        )]);
        let settings = Settings::load_from(&overrides, &vars).unwrap();
        assert_eq!(settings.server.port, 6000);
        assert_eq!(
            settings.server.public_url(),
            Some("https://flag.example.com")
        );
    }
}
