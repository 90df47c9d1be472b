//! Command-line interface: `start` (the default), `migrate`, `reset-password`, `probe` and
//! `import-label-studio`.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    config::{LogFormat, Overrides, Settings},
    startup::{Application, build_accounts, migrate},
    telemetry,
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
    match runtime.block_on(execute(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            tracing::error!(error = format!("{error:#}"), "stopped");
            ExitCode::FAILURE
        }
    }
}

async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
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
        }
        Command::Migrate(data)
        | Command::ResetPassword(ResetPasswordArgs { data, .. })
        | Command::ImportLabelStudio(ImportLabelStudioArgs { data, .. }) => {
            overrides.data_dir = data.data_dir.clone();
        }
        Command::Probe(args) => return probe(args).await,
    }
    let settings = Settings::load(&overrides)?;
    telemetry::init(settings.log.format);
    match command {
        Command::Start(_) => {
            let app = Application::build(settings).await?;
            tracing::info!(addr = %app.local_addr()?, http = %app.http_addr()?, "listening");
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
            let options = crate::import::Options {
                from: args.from,
                dry_run: args.dry_run,
            };
            print!("{}", crate::import::run(&settings, &options).await?);
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

/// One `grpc.health.v1.Health/Check`: exit 0 on SERVING, 1 otherwise.
async fn probe(args: &ProbeArgs) -> anyhow::Result<ExitCode> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let timeout = Duration::from_secs(args.timeout);
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", args.addr))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let outcome = async {
        let channel = endpoint.connect().await?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await?;
        anyhow::Ok(response.into_inner().status)
    };
    match tokio::time::timeout(timeout, outcome).await {
        Ok(Ok(status))
            if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
        {
            println!("SERVING");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Ok(status)) => {
            let name = tonic_health::pb::health_check_response::ServingStatus::try_from(status)
                .map_or("UNKNOWN", |s| s.as_str_name());
            println!("{name}");
            Ok(ExitCode::FAILURE)
        }
        Ok(Err(error)) => {
            println!("NOT_REACHABLE: {error}");
            Ok(ExitCode::FAILURE)
        }
        Err(_) => {
            println!("TIMEOUT");
            Ok(ExitCode::FAILURE)
        }
    }
}
