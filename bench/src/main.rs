//! `identity-bench`: drives the identity service with gRPC load and measures, in the same run on
//! the same machine, the two limits it can at best reach: raw argon2id verifications per second
//! (the hash limit) and the token lookup issued straight through sqlx (the store limit). Every
//! scenario is printed as a ratio to its limit, so a result means the same on any machine.
//!
//! It starts the real server binary (found next to its own) as child processes against a fresh
//! SQLite file or a fresh Postgres database, seeds users through the API, runs the scenarios,
//! samples the server's resident memory, then stops the servers and drops the database.

mod cluster;
mod cpu;
mod limits;
mod load;
mod members;
mod report;

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};

use crate::{
    cluster::{Backend, Cluster, ServerOptions},
    limits::{HashMemory, hash_limit, store_limit},
    load::{Op, Plan, Target},
    report::Report,
};

/// Production Postgres server of this machine; a fresh database is created on it per run.
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug, Parser)]
#[command(
    name = "identity-bench",
    about = "Load generator and limit meter for label-studio-identity"
)]
struct Args {
    /// Storage backend of the servers the tool starts.
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: Backend,
    /// Postgres server on which a fresh database is created for the run and dropped after
    /// (default: DATABASE_URL when it names Postgres, else the local server).
    #[arg(long, value_name = "URL")]
    postgres_url: Option<String>,
    /// Target a running server instead of starting one (no RSS; the store limit needs
    /// --database-url, the database that server uses).
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,
    /// With --addr: that server's HTTP listener, for the gateway check scenarios.
    #[arg(long, value_name = "HOST:PORT", requires = "addr")]
    http_addr: Option<String>,
    /// With --addr: the database of that server, for the store limit.
    #[arg(long, value_name = "URL", requires = "addr")]
    database_url: Option<String>,
    /// The server binary (default: `label-studio-identity` next to this one).
    #[arg(long, value_name = "PATH")]
    server: Option<PathBuf>,
    /// Scenarios to run, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenario: Vec<Scenario>,
    /// Measured seconds per scenario.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds run before each measurement starts (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Calls in flight per scenario, and lookups in flight for the store limit.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Password logins in flight during `token-under-flood`.
    #[arg(long, default_value_t = 16)]
    flood_concurrency: usize,
    /// Password logins in flight during `login-storm`.
    #[arg(long, default_value_t = 1000)]
    storm_concurrency: usize,
    /// HTTP/2 connections the client opens (per server), spread over the callers.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Accounts created before the scenarios run.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Members written straight into the database (SQL, no signups) before the first
    /// `list-members` scenario: the big organization they page through.
    #[arg(long, default_value_t = 100_000)]
    members: u64,
    /// Deadline of each call, in milliseconds (sent as grpc-timeout).
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// argon2 memory in KiB (the service's production default).
    #[arg(long, default_value_t = 19_456)]
    memory_kib: u32,
    /// argon2 iterations.
    #[arg(long, default_value_t = 2)]
    iterations: u32,
    /// argon2 lanes.
    #[arg(long, default_value_t = 1)]
    parallelism: u32,
    /// The server's argon2.max_concurrent (default: its own default, the number of cores).
    #[arg(long)]
    max_concurrent: Option<usize>,
    /// The server's argon2.max_waiting (default: its own default).
    #[arg(long)]
    max_waiting: Option<usize>,
    /// The server's database.max_connections (default: its own default).
    #[arg(long)]
    db_connections: Option<u32>,
    /// Server processes to start, all on the same database; the load is split between them.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// CPU list (taskset syntax, e.g. `0` or `0,1`) for each replica in turn; repeat the flag
    /// per replica, or give it once for all.
    #[arg(long, value_name = "LIST")]
    server_cpus: Vec<String>,
    /// Threads of the hash limit (default: all cores).
    #[arg(long)]
    hash_threads: Option<usize>,
    /// Also measure argon2 verifications that allocate their memory each time, as argon2's
    /// `verify_password` does, to show what reusing it gains.
    #[arg(long)]
    hash_allocating: bool,
    /// Send every call from this machine's address, as clients reaching the server without a
    /// gateway. By default the servers trust 127.0.0.1 as a gateway and each seeded user's
    /// calls carry their own `x-forwarded-for` address, as behind a real gateway, so the
    /// per-address throttle sees many users rather than one.
    #[arg(long)]
    one_address: bool,
    /// Skip measuring the limits (ratios are then not printed).
    #[arg(long)]
    no_limits: bool,
    /// Exit non-zero when a call fails with a code its scenario does not expect.
    #[arg(long)]
    fail_on_error: bool,
}

/// What the load does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// `Authenticate` with email and password.
    Password,
    /// `Authenticate` with an API token.
    ApiToken,
    /// `Authenticate` with a session token.
    SessionToken,
    /// Self-signup `CreateUser` with new emails.
    CreateUser,
    /// `GetInviteLink` as a member identified by API token.
    InviteLink,
    /// A gateway's day: mostly token checks, some invite reads, a few logins and signups.
    Mix,
    /// API-token checks while a saturating password flood runs.
    TokenUnderFlood,
    /// Many concurrent password logins, for the server's peak memory.
    LoginStorm,
    /// `/authz/forward-auth` with an API token, over keep-alive HTTP/1.1 connections.
    ForwardAuth,
    /// `/authz/forward-auth` without credentials (answered 401 without the database).
    ForwardAuthAnonymous,
    /// Envoy's `ext_authz` `Check` with an API token, over gRPC.
    ExtAuthz,
    /// `ListMembers`, the first page of 30, in an organization of --members members.
    ListMembers,
    /// `ListMembers` with a search for one member's name, pages of 30, in the same
    /// organization.
    ListMembersQuery,
    /// `Authenticate` with an access token (from `RefreshAccessToken`), checked without the
    /// database.
    AccessToken,
}

const ALL_SCENARIOS: [Scenario; 14] = [
    Scenario::Password,
    Scenario::ApiToken,
    Scenario::SessionToken,
    Scenario::CreateUser,
    Scenario::InviteLink,
    Scenario::Mix,
    Scenario::TokenUnderFlood,
    Scenario::LoginStorm,
    Scenario::ForwardAuth,
    Scenario::ForwardAuthAnonymous,
    Scenario::ExtAuthz,
    Scenario::ListMembers,
    Scenario::ListMembersQuery,
    Scenario::AccessToken,
];

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("identity-bench: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("identity-bench: calls failed with unexpected codes");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("identity-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs everything; true when no call failed unexpectedly (or failures are tolerated).
async fn run(args: Args) -> anyhow::Result<bool> {
    let scenarios: Vec<Scenario> = if args.scenario.is_empty() {
        ALL_SCENARIOS.to_vec()
    } else {
        args.scenario.clone()
    };
    let argon2 = limits::Argon2Params {
        memory_kib: args.memory_kib,
        iterations: args.iterations,
        parallelism: args.parallelism,
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let postgres_url = args.postgres_url.clone().unwrap_or_else(|| {
        std::env::var("DATABASE_URL")
            .ok()
            .filter(|url| url.starts_with("postgres://") || url.starts_with("postgresql://"))
            .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_owned())
    });

    let mut report = Report::new(&args, cores, &argon2);

    // The hash limit first, on an idle machine: no server is running yet.
    if !args.no_limits {
        let threads = args.hash_threads.unwrap_or(cores);
        eprintln!(
            "measuring the hash limit: {threads} threads, {}s",
            args.duration
        );
        report.hash = Some(hash_limit(
            &argon2,
            threads,
            secs(args.duration),
            HashMemory::Reused,
        )?);
        if args.hash_allocating {
            report.hash_allocating = Some(hash_limit(
                &argon2,
                threads,
                secs(args.duration),
                HashMemory::Allocated,
            )?);
        }
    }

    let cluster = match &args.addr {
        Some(addr) => {
            Cluster::external(addr, args.http_addr.as_deref(), args.database_url.clone())?
        }
        None => {
            let server = match &args.server {
                Some(path) => path.clone(),
                None => cluster::server_next_to_current_exe()?,
            };
            Cluster::start(ServerOptions {
                server,
                backend: args.backend,
                postgres_url,
                replicas: args.replicas.max(1),
                cpus: args.server_cpus.clone(),
                argon2: argon2.clone(),
                max_concurrent: args.max_concurrent,
                max_waiting: args.max_waiting,
                db_connections: args.db_connections,
                gateway: !args.one_address,
            })
            .await?
        }
    };
    let outcome = drive(&args, &scenarios, &cluster, &mut report).await;
    cluster.stop(outcome.is_err() || !report.clean()).await;
    outcome?;
    report.print();
    Ok(report.clean() || !args.fail_on_error)
}

async fn drive(
    args: &Args,
    scenarios: &[Scenario],
    cluster: &Cluster,
    report: &mut Report,
) -> anyhow::Result<()> {
    let target = Target::connect(cluster.addrs(), cluster.http_addrs(), args.connections).await?;
    report.idle_rss = cluster.rss().map(|rss| rss.current);
    eprintln!("seeding {} accounts", args.users);
    let seeds = Arc::new(
        load::seed(
            &target,
            args.users,
            secs_ms(args.timeout_ms),
            !args.one_address,
        )
        .await?,
    );
    report.seed_rss = cluster.rss().map(|rss| rss.current);

    if !args.no_limits {
        match cluster.database_url() {
            Some(url) => {
                eprintln!(
                    "measuring the store limit: {} in flight, {}s",
                    args.concurrency, args.duration
                );
                report.store = Some(
                    store_limit(
                        &url,
                        &seeds.api_tokens(),
                        args.concurrency,
                        secs(args.warmup),
                        secs(args.duration),
                    )
                    .await?,
                );
            }
            None => eprintln!("no database URL: the store limit is skipped"),
        }
    }

    let plan = |name: &'static str, op: Op, concurrency: usize| Plan {
        name,
        op,
        concurrency,
        warmup: secs(args.warmup),
        duration: secs(args.duration),
        timeout: secs_ms(args.timeout_ms),
    };
    let mut members_seeded = false;
    for scenario in scenarios {
        eprintln!("scenario {scenario:?}");
        if matches!(scenario, Scenario::ListMembers | Scenario::ListMembersQuery) && !members_seeded
        {
            let url = cluster
                .database_url()
                .context("the list-members scenarios need the servers' database URL")?;
            eprintln!("seeding {} members with SQL", args.members);
            members::seed(&url, args.members).await?;
            members_seeded = true;
        }
        match scenario {
            Scenario::Password => {
                let plans = [plan("password", Op::Password, args.concurrency)];
                report.add(load::run(&target, &seeds, cluster, &plans).await?);
            }
            Scenario::ApiToken => {
                let plans = [plan("api-token", Op::ApiToken, args.concurrency)];
                report.add(load::run(&target, &seeds, cluster, &plans).await?);
            }
            Scenario::SessionToken => {
                let plans = [plan("session-token", Op::SessionToken, args.concurrency)];
                report.add(load::run(&target, &seeds, cluster, &plans).await?);
            }
            Scenario::CreateUser => {
                let plans = [plan("create-user", Op::CreateUser, args.concurrency)];
                report.add(load::run(&target, &seeds, cluster, &plans).await?);
            }
            Scenario::InviteLink => {
                let plans = [plan("invite-link", Op::InviteLink, args.concurrency)];
                report.add(load::run(&target, &seeds, cluster, &plans).await?);
            }
            Scenario::Mix => {
                let plans = [plan("mix", Op::Mix, args.concurrency)];
                report.add(load::run(&target, &seeds, cluster, &plans).await?);
            }
            Scenario::TokenUnderFlood => {
                let plans = [
                    plan("api-token under flood", Op::ApiToken, args.concurrency),
                    plan("password flood", Op::Password, args.flood_concurrency),
                ];
                report.add(load::run(&target, &seeds, cluster, &plans).await?);
            }
            Scenario::LoginStorm => {
                let plans = [plan(
                    "login storm",
                    Op::PasswordPolite,
                    args.storm_concurrency,
                )];
                report.add(load::run(&target, &seeds, cluster, &plans).await?);
            }
            Scenario::ForwardAuth => {
                let plans = [plan("forward-auth", Op::ForwardAuth, args.concurrency)];
                report.add(load::run(&target, &seeds, cluster, &plans).await?);
            }
            Scenario::ForwardAuthAnonymous => {
                let plans = [plan(
                    "forward-auth without credentials",
                    Op::ForwardAuthAnonymous,
                    args.concurrency,
                )];
                report.add(load::run(&target, &seeds, cluster, &plans).await?);
            }
            Scenario::ExtAuthz => {
                let plans = [plan("ext-authz", Op::ExtAuthz, args.concurrency)];
                report.add(load::run(&target, &seeds, cluster, &plans).await?);
            }
            Scenario::ListMembers => {
                let plans = [plan("list-members", Op::ListMembers, args.concurrency)];
                report.add(load::run(&target, &seeds, cluster, &plans).await?);
            }
            Scenario::ListMembersQuery => {
                let plans = [plan(
                    "list-members-query",
                    Op::ListMembersQuery,
                    args.concurrency,
                )];
                report.add(load::run(&target, &seeds, cluster, &plans).await?);
            }
            Scenario::AccessToken => {
                // Minted now: they live minutes, and earlier scenarios may take longer.
                load::mint_access_tokens(&target, &seeds, secs_ms(args.timeout_ms)).await?;
                let plans = [plan("access-token", Op::AccessToken, args.concurrency)];
                report.add(load::run(&target, &seeds, cluster, &plans).await?);
            }
        }
    }
    Ok(())
}

fn secs(value: f64) -> Duration {
    Duration::from_secs_f64(value.max(0.0))
}

fn secs_ms(value: u64) -> Duration {
    Duration::from_millis(value)
}
