//! The printed report: the machine, the limits, each scenario as a ratio to its limit, and the
//! targets the service is held to. Markdown, so it pastes into BENCHMARKS.md as it is.

use std::time::Duration;

use crate::{
    Args,
    limits::{Argon2Params, HashLimit, StoreLimit},
    load::{MIX, Op, Stats},
};

const MIB: f64 = 1024.0 * 1024.0;

pub struct Report {
    header: Vec<String>,
    /// Hashes the server runs at once: its `argon2.max_concurrent`.
    hashing_concurrency: usize,
    memory_kib: u32,
    backend_is_postgres: bool,
    token_concurrency: usize,
    /// Members seeded for the `list-members` scenarios.
    members: u64,
    store_window: Duration,
    pub hash: Option<HashLimit>,
    pub hash_allocating: Option<HashLimit>,
    pub store: Option<StoreLimit>,
    pub idle_rss: Option<u64>,
    pub seed_rss: Option<u64>,
    rows: Vec<Stats>,
}

impl Report {
    pub fn new(args: &Args, cores: usize, argon2: &Argon2Params) -> Self {
        let server_cores = args
            .server_cpus
            .first()
            .map_or(cores, |list| cpu_count(list).unwrap_or(cores));
        let hashing_concurrency = args.max_concurrent.unwrap_or(server_cores);
        let mut header = vec![
            format!("machine: {}", machine()),
            format!("load average at start: {}", load_average()),
            format!(
                "server: {} ({}), {} replica(s){}; argon2id m={} KiB t={} p={}, {} hashing at once",
                if args.addr.is_some() {
                    "external"
                } else {
                    "started"
                },
                match (&args.addr, args.backend) {
                    (Some(addr), _) => addr.clone(),
                    (None, crate::cluster::Backend::Sqlite) => "sqlite".into(),
                    (None, crate::cluster::Backend::Postgres) => "postgres".into(),
                },
                args.replicas.max(1),
                if args.server_cpus.is_empty() {
                    String::new()
                } else {
                    format!(" pinned to CPUs {}", args.server_cpus.join(" / "))
                },
                argon2.memory_kib,
                argon2.iterations,
                argon2.parallelism,
                hashing_concurrency,
            ),
            format!(
                "load: {}s measured after {}s warm-up, {} calls in flight ({} flood, {} storm), {} seeded accounts",
                args.duration,
                args.warmup,
                args.concurrency,
                args.flood_concurrency,
                args.storm_concurrency,
                args.users
            ),
        ];
        header.push(format!(
            "command: {}",
            std::env::args().collect::<Vec<_>>().join(" ")
        ));
        Self {
            header,
            hashing_concurrency,
            memory_kib: argon2.memory_kib,
            backend_is_postgres: args.addr.is_none()
                && args.backend == crate::cluster::Backend::Postgres,
            token_concurrency: args.concurrency,
            members: args.members,
            store_window: Duration::from_secs_f64(args.duration.max(0.001)),
            hash: None,
            hash_allocating: None,
            store: None,
            idle_rss: None,
            seed_rss: None,
            rows: Vec::new(),
        }
    }

    pub fn add(&mut self, stats: Vec<Stats>) {
        self.rows.extend(stats);
    }

    /// True when no call failed with a code its scenario does not expect.
    pub fn clean(&self) -> bool {
        self.rows.iter().all(|row| row.unexpected == 0)
            && self.store.as_ref().is_none_or(|s| s.errors == 0)
    }

    /// Calls per second the limits allow for this kind of call.
    fn limit(&self, op: Op) -> Option<f64> {
        let hash = self.hash.as_ref().map(|h| h.per_second);
        let store = self.store.as_ref().map(|s| s.per_second);
        match op {
            Op::Password | Op::PasswordPolite | Op::CreateUser => hash,
            Op::ApiToken
            | Op::SessionToken
            | Op::ForwardAuth
            | Op::ForwardAuthAnonymous
            | Op::ExtAuthz
            | Op::AccessToken => store,
            // One lookup for the caller's token, one for the invite token.
            Op::InviteLink => store.map(|s| s / 2.0),
            // The caller's token, the page and the count.
            Op::ListMembers | Op::ListMembersQuery => store.map(|s| s / 3.0),
            Op::Mix => {
                // The mix shares the machine between hashing and lookups: its limit is the
                // rate at which the limits' costs, weighted by the mix, add up to one second.
                let total: u32 = MIX.iter().map(|(_, w)| w).sum();
                let mut seconds = 0.0;
                for (op, weight) in MIX {
                    seconds += f64::from(weight) / f64::from(total) / self.limit(op)?;
                }
                Some(1.0 / seconds)
            }
        }
    }

    fn limit_name(op: Op) -> &'static str {
        match op {
            Op::Password | Op::PasswordPolite | Op::CreateUser => "hash",
            Op::ApiToken
            | Op::SessionToken
            | Op::ForwardAuth
            | Op::ForwardAuthAnonymous
            | Op::ExtAuthz
            | Op::AccessToken => "store",
            Op::InviteLink => "store/2",
            Op::ListMembers | Op::ListMembersQuery => "store/3",
            Op::Mix => "mixed",
        }
    }

    pub fn print(&self) {
        println!("## identity-bench\n");
        for line in &self.header {
            println!("- {line}");
        }
        if let (Some(idle), Some(seeded)) = (self.idle_rss, self.seed_rss) {
            println!(
                "- server RSS: {:.1} MiB idle, {:.1} MiB after seeding",
                idle as f64 / MIB,
                seeded as f64 / MIB
            );
        }
        println!("\n### Limits\n");
        println!("| limit | what | per second | detail |");
        println!("|---|---|---:|---|");
        if let Some(hash) = &self.hash {
            println!(
                "| hash | argon2id verifications, {} threads, no gRPC, no database | {:.1} | {:.1} ms each, {:.1}/s per thread |",
                hash.threads,
                hash.per_second,
                ms(hash.mean),
                hash.per_second / hash.threads as f64
            );
        }
        if let Some(hash) = &self.hash_allocating {
            println!(
                "| (hash, allocating) | the same, memory allocated per verification | {:.1} | {:.1} ms each |",
                hash.per_second,
                ms(hash.mean)
            );
        }
        if let Some(store) = &self.store {
            println!(
                "| store | `Store::principal` through sqlx, {} in flight, no gRPC | {:.0} | p50 {:.2} ms, p99 {:.2} ms, {} errors |",
                store.concurrency,
                store.per_second,
                ms(store.latencies.at(0.5)),
                ms(store.latencies.at(0.99)),
                store.errors
            );
        }
        println!("\n### Scenarios\n");
        println!(
            "| scenario | in flight | calls/s | limit | ratio | p50 ms | p95 ms | p99 ms | max ms | errors | peak RSS MiB |"
        );
        println!("|---|---:|---:|---|---:|---:|---:|---:|---:|---|---:|");
        for row in &self.rows {
            let limit = self.limit(row.op);
            println!(
                "| {} | {} | {:.1} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
                row.name,
                row.concurrency,
                row.per_second(),
                limit.map_or("-".into(), |l| format!(
                    "{} {l:.0}",
                    Self::limit_name(row.op)
                )),
                limit.map_or("-".into(), |l| format!("{:.2}", row.per_second() / l)),
                ms(row.latencies.at(0.5)),
                ms(row.latencies.at(0.95)),
                ms(row.latencies.at(0.99)),
                ms(row.latencies.max()),
                errors(row),
                row.peak_rss
                    .map_or("-".into(), |rss| format!("{:.1}", rss as f64 / MIB)),
            );
        }
        self.print_cpu();
        let targets = self.targets();
        if !targets.is_empty() {
            println!("\n### Targets\n");
            println!("| target | measured | met |");
            println!("|---|---|---|");
            for (target, measured, met) in targets {
                println!(
                    "| {target} | {measured} | {} |",
                    if met { "yes" } else { "**no**" }
                );
            }
        }
    }

    /// CPU time per call by process, in the measured window: the profile of each scenario.
    fn print_cpu(&self) {
        let per_call = |spent: Duration, calls: u64| {
            if calls == 0 {
                "-".to_owned()
            } else {
                format!("{:.0}", spent.as_secs_f64() * 1e6 / calls as f64)
            }
        };
        let mut lines = Vec::new();
        if let Some(store) = &self.store {
            let calls = (store.per_second * self.window_of_store()).round() as u64;
            lines.push(format!(
                "| store limit | {calls} | - | {} | {} | 1 |",
                per_call(store.cpu.client, calls),
                per_call(store.cpu.postgres, calls)
            ));
        }
        let mut seen = Vec::new();
        for row in &self.rows {
            let Some((cpu, calls)) = row.cpu else {
                continue;
            };
            // A run of several plans (the flood) shares one window: print it once.
            if seen.contains(&(calls, cpu.server)) {
                continue;
            }
            seen.push((calls, cpu.server));
            let round_trips = match row.statements {
                Some(statements) if calls > 0 => {
                    format!("{:.2}", statements as f64 / calls as f64)
                }
                _ => "-".to_owned(),
            };
            lines.push(format!(
                "| {} | {calls} | {} | {} | {} | {round_trips} |",
                row.name,
                per_call(cpu.server, calls),
                per_call(cpu.client, calls),
                per_call(cpu.postgres, calls)
            ));
        }
        if lines.is_empty() {
            return;
        }
        println!(
            "\n### CPU per call (µs) and database round trips per call (measured window; all \
             plans of a run together)\n"
        );
        println!("| run | calls | server | client | postgres | round trips |");
        println!("|---|---:|---:|---:|---:|---:|");
        for line in lines {
            println!("{line}");
        }
    }

    fn window_of_store(&self) -> f64 {
        self.store_window.as_secs_f64()
    }

    fn row(&self, name: &str) -> Option<&Stats> {
        self.rows.iter().find(|row| row.name == name)
    }

    /// The targets that this run has the numbers for.
    fn targets(&self) -> Vec<(String, String, bool)> {
        let mut out = Vec::new();
        if let (Some(password), Some(hash)) = (self.row("password"), &self.hash) {
            let ratio = password.per_second() / hash.per_second;
            out.push((
                "password `Authenticate` ≥ 0.92 × hash limit".into(),
                format!("{ratio:.2}"),
                ratio >= 0.92,
            ));
            if let Some(trips) = round_trips(password) {
                out.push((
                    "password login: at most 3 database round trips".into(),
                    format!("{trips:.2}"),
                    trips <= 3.0,
                ));
            }
            if let Some((cpu, calls)) = password.cpu
                && calls > 0
            {
                let server = cpu.server.as_secs_f64() * 1e3 / calls as f64;
                let postgres = cpu.postgres.as_secs_f64() * 1e3 / calls as f64;
                let hash_ms = 1e3 / (hash.per_second / self.hashing_concurrency as f64);
                out.push((
                    format!(
                        "password login: server CPU ≤ hash ({hash_ms:.1} ms) + 0.5 ms{}",
                        if self.backend_is_postgres {
                            ", Postgres CPU ≤ 0.4 ms"
                        } else {
                            ""
                        }
                    ),
                    format!("server {server:.2} ms, Postgres {postgres:.2} ms"),
                    server <= hash_ms + 0.5 && (!self.backend_is_postgres || postgres <= 0.4),
                ));
            }
        }
        if let (Some(signup), Some(hash)) = (self.row("create-user"), &self.hash) {
            let ratio = signup.per_second() / hash.per_second;
            out.push((
                "self-signup `CreateUser` ≥ 0.9 × hash limit".into(),
                format!("{ratio:.2}"),
                ratio >= 0.9,
            ));
        }
        if let Some(store) = &self.store {
            let wanted = if self.backend_is_postgres { 0.65 } else { 0.6 };
            for name in ["api-token", "session-token"] {
                let Some(row) = self.row(name) else { continue };
                let ratio = row.per_second() / store.per_second;
                let p99 = ms(row.latencies.at(0.99));
                let server = row
                    .cpu
                    .filter(|(_, calls)| *calls > 0)
                    .map(|(cpu, calls)| cpu.server.as_secs_f64() * 1e6 / calls as f64);
                let trips = round_trips(row);
                out.push((
                    format!(
                        "{name} ≥ {wanted} × store limit, p99 < 3 ms at {}, one round trip, \
                         server CPU ≤ 40 µs",
                        self.token_concurrency
                    ),
                    format!(
                        "{ratio:.2}, p99 {p99:.2} ms, {} round trips, {} µs",
                        trips.map_or("-".into(), |t| format!("{t:.2}")),
                        server.map_or("-".into(), |s| format!("{s:.0}"))
                    ),
                    ratio >= wanted
                        && p99 < 3.0
                        && trips.is_none_or(|t| t <= 1.05)
                        && server.is_none_or(|s| s <= 40.0),
                ));
            }
            for name in ["forward-auth", "ext-authz"] {
                let Some(row) = self.row(name) else { continue };
                let ratio = row.per_second() / store.per_second;
                let p99 = ms(row.latencies.at(0.99));
                let place = if self.backend_is_postgres {
                    "Postgres"
                } else {
                    "this backend"
                };
                out.push((
                    format!(
                        "{name} ≥ 0.5 × store limit on {place}, p99 < 5 ms at {}",
                        self.token_concurrency
                    ),
                    format!("{ratio:.2}, p99 {p99:.2} ms"),
                    ratio >= 0.5 && p99 < 5.0,
                ));
            }
        }
        if let (Some(access), Some(store)) = (self.row("access-token"), &self.store) {
            let ratio = access.per_second() / store.per_second;
            let p99 = ms(access.latencies.at(0.99));
            let trips = round_trips(access);
            out.push((
                format!(
                    "access-token ≥ 1.0 × store limit, p99 < 2 ms at {}, no database",
                    self.token_concurrency
                ),
                format!(
                    "{ratio:.2}, p99 {p99:.2} ms, {} round trips",
                    trips.map_or("-".into(), |t| format!("{t:.2}"))
                ),
                ratio >= 1.0 && p99 < 2.0 && trips.is_none_or(|t| t < 0.01),
            ));
        }
        if let (Some(anonymous), Some(store)) =
            (self.row("forward-auth without credentials"), &self.store)
        {
            let ratio = anonymous.per_second() / store.per_second;
            out.push((
                "forward-auth without credentials ≥ 5 × store limit (no database)".into(),
                format!("{ratio:.2}"),
                ratio >= 5.0,
            ));
        }
        for name in ["list-members", "list-members-query"] {
            let Some(row) = self.row(name) else { continue };
            let p99 = ms(row.latencies.at(0.99));
            let place = if self.backend_is_postgres {
                "Postgres"
            } else {
                "this backend"
            };
            out.push((
                format!(
                    "{name}: a page of 30 among {} members, p99 < 20 ms at {} on {place}",
                    self.members, self.token_concurrency
                ),
                format!("p99 {p99:.2} ms"),
                p99 < 20.0 && row.unexpected == 0,
            ));
        }
        if let (Some(alone), Some(flooded)) =
            (self.row("api-token"), self.row("api-token under flood"))
        {
            let factor = flooded.latencies.at(0.99).as_secs_f64()
                / alone.latencies.at(0.99).as_secs_f64().max(1e-6);
            out.push((
                "token p99 under a password flood ≤ 3 × without".into(),
                format!(
                    "{:.2} ms vs {:.2} ms: {factor:.2}×",
                    ms(flooded.latencies.at(0.99)),
                    ms(alone.latencies.at(0.99))
                ),
                factor <= 3.0,
            ));
        }
        if let Some(storm) = self.row("login storm")
            && let Some(peak) = storm.peak_rss
        {
            let bound =
                self.hashing_concurrency as f64 * f64::from(self.memory_kib) * 1024.0 + 64.0 * MIB;
            out.push((
                format!(
                    "peak RSS in {} concurrent logins ≤ {} × {} KiB + 64 MiB ({:.1} MiB)",
                    storm.concurrency,
                    self.hashing_concurrency,
                    self.memory_kib,
                    bound / MIB
                ),
                format!("{:.1} MiB", peak as f64 / MIB),
                peak as f64 <= bound,
            ));
        }
        out
    }
}

/// Database round trips per call in the row's measured window.
fn round_trips(row: &Stats) -> Option<f64> {
    let (_, calls) = row.cpu?;
    let statements = row.statements?;
    (calls > 0).then(|| statements as f64 / calls as f64)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn errors(row: &Stats) -> String {
    if row.errors.is_empty() {
        return "0".into();
    }
    row.errors
        .iter()
        .map(|(code, count)| format!("{code} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// CPUs in a taskset list such as `0`, `0,1` or `0-3`.
fn cpu_count(list: &str) -> Option<usize> {
    let mut count = 0;
    for part in list.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to): (usize, usize) =
                    (from.trim().parse().ok()?, to.trim().parse().ok()?);
                count += to.checked_sub(from)? + 1;
            }
            None => {
                part.trim().parse::<usize>().ok()?;
                count += 1;
            }
        }
    }
    Some(count)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown CPU", |(_, model)| model.trim())
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or("?".into(), |kib| {
            format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} cores, {memory} memory, Linux {}",
        kernel.trim()
    )
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|avg| avg.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::cpu_count;

    #[test]
    fn taskset_lists_count_their_cpus() {
        assert_eq!(cpu_count("0"), Some(1));
        assert_eq!(cpu_count("0,1"), Some(2));
        assert_eq!(cpu_count("0-3,6"), Some(5));
        assert_eq!(cpu_count("x"), None);
    }
}
