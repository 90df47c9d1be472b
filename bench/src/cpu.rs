//! Where the CPU goes: user and system time of the servers, of this load generator and of every
//! Postgres process, read from `/proc` before and after a measured window. Divided by the calls
//! made, it is the profile that says what stands between a scenario and its limit.

use std::time::Duration;

/// CPU time spent so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    pub server: Duration,
    pub client: Duration,
    pub postgres: Duration,
}

impl CpuTimes {
    /// Reads the CPU time of `servers`, of this process and of Postgres: its background
    /// processes and the backends serving `database` (all backends when it is None), so that
    /// other clients of the same Postgres server are not counted.
    pub fn now(servers: &[u32], database: Option<&str>) -> Self {
        let tick = clock_tick();
        let server = servers
            .iter()
            .filter_map(|pid| process_ticks(&format!("/proc/{pid}/stat")))
            .sum::<u64>();
        let client = process_ticks("/proc/self/stat").unwrap_or(0);
        let postgres = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .filter_map(|entry| {
                let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                if command_name(&stat)? != "postgres" {
                    return None;
                }
                let title =
                    std::fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default();
                counts(&title, database).then(|| ticks(&stat)).flatten()
            })
            .sum::<u64>();
        Self {
            server: tick * u32::try_from(server).unwrap_or(u32::MAX),
            client: tick * u32::try_from(client).unwrap_or(u32::MAX),
            postgres: tick * u32::try_from(postgres).unwrap_or(u32::MAX),
        }
    }

    /// `now` on a blocking thread: scanning `/proc` must not stall the callers sharing the
    /// runtime's workers, or the benchmark would add latency of its own.
    pub async fn sample(servers: Vec<u32>, database: Option<String>) -> Self {
        tokio::task::spawn_blocking(move || Self::now(&servers, database.as_deref()))
            .await
            .unwrap_or_default()
    }

    /// What was spent between `earlier` and `self`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            server: self.server.saturating_sub(earlier.server),
            client: self.client.saturating_sub(earlier.client),
            postgres: self.postgres.saturating_sub(earlier.postgres),
        }
    }
}

/// Whether a Postgres process with this title works for `database`: a backend names its
/// database and client address (`postgres: 15/main: user db 127.0.0.1(5000) idle`), background
/// processes (WAL writer, checkpointer) name no client and serve every database.
fn counts(title: &str, database: Option<&str>) -> bool {
    match database {
        None => true,
        Some(database) => {
            let words: Vec<&str> = title
                .split(|c: char| c.is_whitespace() || c == '\0')
                .collect();
            words.contains(&database) || !title.contains('(')
        }
    }
}

fn process_ticks(path: &str) -> Option<u64> {
    ticks(&std::fs::read_to_string(path).ok()?)
}

/// The `comm` field of a `/proc/<pid>/stat` line.
fn command_name(stat: &str) -> Option<&str> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    stat.get(open + 1..close)
}

/// `utime + stime` of a `/proc/<pid>/stat` line, in clock ticks.
fn ticks(stat: &str) -> Option<u64> {
    // Fields after the command name: state is field 3, utime 14 and stime 15.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The length of a clock tick (`getconf CLK_TCK`; 100 Hz when it can't be asked).
fn clock_tick() -> Duration {
    static TICK: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *TICK.get_or_init(|| {
        let hz = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse::<u32>().ok())
            .filter(|hz| *hz > 0)
            .unwrap_or(100);
        Duration::from_secs(1) / hz
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_their_command_and_cpu_ticks() {
        let stat = "42 (postgres: x (y)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(command_name(stat), Some("postgres: x (y)"));
        assert_eq!(ticks(stat), Some(300));
    }

    #[test]
    fn postgres_backends_count_for_their_own_database_and_background_processes_for_all() {
        let backend = "postgres: 15/main: postgres bench_1 127.0.0.1(5000) idle";
        assert!(counts(backend, Some("bench_1")));
        assert!(!counts(backend, Some("other")));
        assert!(counts("postgres: 15/main: walwriter ", Some("bench_1")));
        assert!(counts(backend, None));
    }
}
