//! Command-line interface: `start` (the default), `migrate`, `reset-password`, `probe`,
//! `import-label-studio` and `rotate-signing-key`.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    config::{LogFormat, Overrides, Settings},
    startup::{Application, build_accounts, migrate},
    telemetry::{self, Telemetry, TraceExport},
};

#[derive(Debug, Parser)]
#[command(name = "label-studio-identity", version, about)]
pub struct Cli {
    /// TOML configuration file (also `IDENTITY_CONFIG`).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC and the HTTP gateway checks (the default command).
    Start(StartArgs),
    /// Run the database migrations and exit.
    Migrate(DataArgs),
    /// Set a new password for an existing account and end its sessions.
    ResetPassword(ResetPasswordArgs),
    /// Check a running server's health; exits 0 when it is SERVING.
    Probe(ProbeArgs),
    /// Import users, API tokens, organizations and invite links from a Label Studio database.
    ImportLabelStudio(ImportLabelStudioArgs),
    /// Start signing access tokens with a new key; the old one keeps verifying until the tokens
    /// it signed have expired. Running servers pick the new key up within seconds.
    RotateSigningKey(DataArgs),
}

#[derive(Debug, Default, Args)]
pub struct DataArgs {
    /// Folder of the embedded SQLite database (also `LABEL_STUDIO_BASE_DATA_DIR`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Args)]
pub struct StartArgs {
    /// Bind address.
    #[arg(long)]
    pub host: Option<String>,
    /// gRPC port.
    #[arg(long)]
    pub port: Option<u16>,
    /// HTTP port of the gateway checks (`/authz/…`); 0 picks a free one.
    #[arg(long)]
    pub http_port: Option<u16>,
    /// Public URL of Label Studio used in invite links (also `LABEL_STUDIO_HOST`).
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Email of the account to create at start if missing (also `LABEL_STUDIO_USERNAME`).
    #[arg(long)]
    pub username: Option<String>,
    /// Its password (also `LABEL_STUDIO_PASSWORD`).
    #[arg(long)]
    pub password: Option<String>,
    /// Its API token, at least 5 characters (also `LABEL_STUDIO_USER_TOKEN`).
    #[arg(long)]
    pub user_token: Option<String>,
    /// Serve TLS with this PEM certificate chain (also `IDENTITY_SERVER__TLS__CERT`).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key (also `IDENTITY_SERVER__TLS__KEY`).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by these PEM CAs (also
    /// `IDENTITY_SERVER__TLS__CLIENT_CA`).
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ResetPasswordArgs {
    #[arg(long)]
    pub username: String,
    #[arg(long)]
    pub password: String,
    #[command(flatten)]
    pub data: DataArgs,
}

#[derive(Debug, Args)]
pub struct ImportLabelStudioArgs {
    /// Label Studio's database: `sqlite://path/to/label_studio.sqlite3` or `postgres://…`.
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// Print the report of what would be imported, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Label Studio's SECRET_KEY, which signed its personal access tokens (PATs); without it
    /// (or --label-studio-data-dir) no PAT is imported.
    #[arg(long, value_name = "KEY", conflicts_with = "label_studio_data_dir")]
    pub label_studio_secret_key: Option<String>,
    /// Label Studio's data directory (LABEL_STUDIO_BASE_DATA_DIR), whose `.env` holds its
    /// SECRET_KEY.
    #[arg(long, value_name = "DIR")]
    pub label_studio_data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// Health-check service name ("" for the whole server).
    #[arg(long, default_value = crate::grpc::SERVICE_NAME)]
    pub service: String,
    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
    /// Speak TLS, trusting the PEM CA certificates in this file.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry [default: the host of --addr, or
    /// `localhost` when it is an IP address].
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
    /// Present this PEM client certificate (for servers that require one).
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's PEM private key.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Runs a parsed command line and turns the outcome into an exit code.
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut telemetry = None;
    let code = match runtime.block_on(execute(cli, &mut telemetry)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            tracing::error!(error = format!("{error:#}"), "stopped");
            ExitCode::FAILURE
        }
    };
    // Out of the async context, while the runtime's workers still carry the last exports.
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    code
}

async fn execute(cli: Cli, telemetry: &mut Option<Telemetry>) -> anyhow::Result<ExitCode> {
    let mut overrides = Overrides {
        config_file: cli.config,
        log_format: cli.log_format,
        ..Overrides::default()
    };
    let command = cli.command.unwrap_or(Command::Start(StartArgs::default()));
    match &command {
        Command::Start(args) => {
            overrides.host = args.host.clone();
            overrides.port = args.port;
            overrides.http_port = args.http_port;
            overrides.public_url = args.public_url.clone();
            overrides.data_dir = args.data.data_dir.clone();
            overrides.username = args.username.clone();
            overrides.password = args.password.clone();
            overrides.user_token = args.user_token.clone();
            overrides.tls_cert = args.tls_cert.clone();
            overrides.tls_key = args.tls_key.clone();
            overrides.tls_client_ca = args.tls_client_ca.clone();
        }
        Command::Migrate(data)
        | Command::RotateSigningKey(data)
        | Command::ResetPassword(ResetPasswordArgs { data, .. })
        | Command::ImportLabelStudio(ImportLabelStudioArgs { data, .. }) => {
            overrides.data_dir = data.data_dir.clone();
        }
        Command::Probe(args) => return probe(args).await,
    }
    let loaded = Settings::load(&overrides)?;
    let settings = loaded.settings;
    if let Command::Start(_) = command {
        // Only the server exports spans: the other commands serve no calls to trace.
        let traces = TraceExport::from_env()?;
        *telemetry = Some(telemetry::init_with_traces(
            settings.log.format,
            traces.as_ref(),
        )?);
    } else {
        telemetry::init(settings.log.format);
    }
    for warning in &loaded.warnings {
        tracing::warn!(
            variable = %warning.variable,
            "environment variable ignored: not a setting of this service (settings are IDENTITY_<SECTION>__<KEY>)"
        );
    }
    match command {
        Command::Start(_) => {
            let app = Application::build(settings).await?;
            tracing::info!(addr = %app.local_addr()?, http = %app.http_addr()?, tls = app.tls_mode(), "listening");
            app.run_until_stopped(shutdown_signal()).await?;
            tracing::info!("stopped");
        }
        Command::Migrate(_) => {
            let accounts = build_accounts(&settings).await?;
            migrate(accounts.store()).await?;
            println!("migrations are up to date");
        }
        Command::ResetPassword(args) => {
            let accounts = build_accounts(&settings).await?;
            migrate(accounts.store()).await?;
            accounts.mark_ready();
            if !accounts
                .reset_password(&args.username, &args.password)
                .await?
            {
                anyhow::bail!("no account has the email {:?}", args.username);
            }
            println!("password reset; the account's sessions have ended");
        }
        Command::ImportLabelStudio(args) => {
            let secret_key = match (args.label_studio_secret_key, &args.label_studio_data_dir) {
                (Some(key), _) => Some(secrecy::SecretString::from(key)),
                (None, Some(dir)) => Some(crate::import::secret_key_from_data_dir(dir)?),
                (None, None) => None,
            };
            let options = crate::import::Options {
                from: args.from,
                dry_run: args.dry_run,
                secret_key,
            };
            print!("{}", crate::import::run(&settings, &options).await?);
        }
        Command::RotateSigningKey(_) => {
            let accounts = build_accounts(&settings).await?;
            migrate(accounts.store()).await?;
            accounts.mark_ready();
            let kid = accounts.rotate_signing_key().await?;
            println!("access tokens are now signed with key {kid}");
        }
        Command::Probe(_) => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// One `grpc.health.v1.Health/Check`: exit 0 on SERVING, 1 otherwise, with a one-line reason
/// on standard output.
async fn probe(args: &ProbeArgs) -> anyhow::Result<ExitCode> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let timeout = Duration::from_secs(args.timeout);
    let tls = match &args.tls_ca {
        Some(ca) => {
            let identity = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
            let server_name = args
                .tls_server_name
                .clone()
                .unwrap_or_else(|| default_server_name(&args.addr));
            Some(crate::tls::ClientTls::load(ca, identity, &server_name)?)
        }
        None => None,
    };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", args.addr))
        .map_err(|e| anyhow::anyhow!("--addr {:?} is no HOST:PORT: {e}", args.addr))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let outcome = async {
        let channel = match &tls {
            Some(tls) => tls.connect(endpoint, args.addr.clone()).await?,
            None => endpoint.connect().await?,
        };
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await?;
        anyhow::Ok(response.into_inner().status)
    };
    match tokio::time::timeout(timeout, outcome).await {
        Ok(Ok(status)) if status == ServingStatus::Serving as i32 => {
            println!("SERVING");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Ok(status)) => {
            let name = ServingStatus::try_from(status).map_or("UNKNOWN", |s| s.as_str_name());
            println!("{name}");
            Ok(ExitCode::FAILURE)
        }
        Ok(Err(error)) => {
            println!("NOT_REACHABLE: {}", one_line(&error));
            Ok(ExitCode::FAILURE)
        }
        Err(_) => {
            println!("TIMEOUT");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The name a server certificate is checked against when `--tls-server-name` is not given:
/// the host of `addr`, or `localhost` for an IP address, which certificates rarely carry.
fn default_server_name(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
        "localhost".to_owned()
    } else {
        host.to_owned()
    }
}

/// An error and its causes on one line: transport errors say what went wrong only in their
/// sources (e.g. which certificate check failed).
fn one_line(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        // tonic repeats its source in its own message at times.
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_defaults_to_the_host_or_localhost_for_an_ip() {
        assert_eq!(
            default_server_name("identity.example.com:50051"),
            "identity.example.com"
        );
        assert_eq!(default_server_name("127.0.0.1:50051"), "localhost");
        assert_eq!(default_server_name("[::1]:50051"), "localhost");
        assert_eq!(default_server_name("identity"), "identity");
    }

    #[test]
    fn probe_tls_flags_come_in_the_right_company() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(
                ["label-studio-identity", "probe", "--addr", "h:1"]
                    .iter()
                    .chain(args),
            )
        };
        assert!(parse(&["--tls-ca", "ca.crt", "--tls-server-name", "h"]).is_ok());
        assert!(parse(&["--tls-ca", "ca", "--tls-cert", "c", "--tls-key", "k"]).is_ok());
        assert!(parse(&["--tls-server-name", "h"]).is_err());
        assert!(parse(&["--tls-ca", "ca", "--tls-cert", "c"]).is_err());
        assert!(parse(&["--tls-ca", "ca", "--tls-key", "k"]).is_err());
        assert!(parse(&["--tls-cert", "c", "--tls-key", "k"]).is_err());
    }
}
