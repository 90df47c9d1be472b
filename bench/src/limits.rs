//! The two limits the service is measured against, taken in the same run on the same machine:
//! raw argon2id verifications per second on every core (no gRPC, no database), and the token
//! lookup `Authenticate` performs issued straight through the library's store (no gRPC).

use std::{
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::{PasswordHasher as _, PasswordVerifier as _, phc::PasswordHash},
};
use label_studio_identity::{
    domain::TokenHash,
    store::{SqlStore, Store},
};
use rand::Rng as _;

use crate::{cpu::CpuTimes, load::Latencies};

/// The argon2id parameters of the service under test.
#[derive(Debug, Clone)]
pub struct Argon2Params {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Argon2Params {
    fn params(&self) -> anyhow::Result<Params> {
        Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| anyhow::anyhow!("invalid argon2 parameters: {e}"))
    }
}

#[derive(Debug, Clone)]
pub struct HashLimit {
    pub threads: usize,
    /// Verifications per second, all threads together.
    pub per_second: f64,
    /// Mean time of one verification on one thread.
    pub mean: Duration,
}

#[derive(Debug)]
pub struct StoreLimit {
    pub concurrency: usize,
    pub per_second: f64,
    pub latencies: Latencies,
    pub errors: u64,
    /// CPU spent in the measured window (the server's share is none: it is not involved).
    pub cpu: CpuTimes,
}

/// How the hash limit gets argon2's working memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashMemory {
    /// One buffer per thread, reused: the fastest argon2 can verify.
    Reused,
    /// A fresh allocation per verification, as argon2's `verify_password` does.
    Allocated,
}

/// `threads` OS threads each verify a password against an argon2id PHC string with the
/// service's parameters for `duration`: parse the string, recompute, compare.
pub fn hash_limit(
    argon2: &Argon2Params,
    threads: usize,
    duration: Duration,
    memory: HashMemory,
) -> anyhow::Result<HashLimit> {
    let threads = threads.max(1);
    let params = argon2.params()?;
    let password = "correct horse battery staple";
    let stored = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot hash: {e}"))?
        .to_string();
    let start = Arc::new(Barrier::new(threads + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (start, stop, params, stored) =
                (start.clone(), stop.clone(), params.clone(), stored.clone());
            std::thread::spawn(move || -> anyhow::Result<(u64, Duration)> {
                let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
                let mut blocks = vec![Block::new(); params.block_count()];
                start.wait();
                let began = Instant::now();
                let mut done = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Parsed every time, as a login parses the stored PHC string.
                    let parsed = PasswordHash::new(&stored)
                        .map_err(|e| anyhow::anyhow!("cannot parse hash: {e}"))?;
                    let matched = match memory {
                        HashMemory::Allocated => {
                            argon2.verify_password(password.as_bytes(), &parsed).is_ok()
                        }
                        HashMemory::Reused => verify_into(&parsed, password, &mut blocks)?,
                    };
                    anyhow::ensure!(matched, "the password did not verify");
                    done += 1;
                }
                Ok((done, began.elapsed()))
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut total = 0u64;
    let mut busy = Duration::ZERO;
    for worker in workers {
        let (done, elapsed) = worker
            .join()
            .map_err(|_| anyhow::anyhow!("a hash thread panicked"))??;
        total += done;
        busy += elapsed;
    }
    // Threads finish the verification in hand after the stop: count the time they took.
    let elapsed = began.elapsed();
    Ok(HashLimit {
        threads,
        per_second: total as f64 / elapsed.as_secs_f64(),
        mean: busy / u32::try_from(total.max(1)).unwrap_or(u32::MAX),
    })
}

/// Recomputes a PHC hash over the given blocks and compares the outputs.
fn verify_into(
    stored: &PasswordHash,
    password: &str,
    blocks: &mut [Block],
) -> anyhow::Result<bool> {
    let (Some(salt), Some(expected)) = (&stored.salt, &stored.hash) else {
        anyhow::bail!("the hash has no salt or output");
    };
    let params = Params::try_from(stored).map_err(|e| anyhow::anyhow!("bad parameters: {e}"))?;
    let mut out = vec![0u8; expected.len()];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, blocks)
        .map_err(|e| anyhow::anyhow!("cannot hash: {e}"))?;
    Ok(out.as_slice() == expected.as_bytes())
}

/// The database a Postgres URL names (the path, without its query).
pub fn database_name(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let path = rest.split_once('/')?.1;
    Some(path.split('?').next().unwrap_or(path)).filter(|name| !name.is_empty())
}

/// `concurrency` tasks each run the store's token lookup (`Store::principal`, the one query
/// token authentication performs) for random seeded API tokens, through a pool of
/// `concurrency` connections.
pub async fn store_limit(
    database_url: &str,
    api_tokens: &[String],
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<StoreLimit> {
    anyhow::ensure!(!api_tokens.is_empty(), "no seeded tokens");
    let concurrency = concurrency.max(1);
    let connections = u32::try_from(concurrency).unwrap_or(u32::MAX);
    let timeout = Duration::from_secs(5);
    let store: Arc<dyn Store> = Arc::new(SqlStore::open(database_url, connections, timeout).await?);
    let tokens: Arc<Vec<String>> = Arc::new(api_tokens.to_vec());
    let began = Instant::now();
    let measure_from = began + warmup;
    let end = measure_from + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (store, tokens) = (store.clone(), tokens.clone());
            tokio::spawn(async move {
                let mut latencies = Latencies::new()?;
                let mut done = 0u64;
                let mut errors = 0u64;
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let token = &tokens[rand::rng().random_range(0..tokens.len())];
                    // Hashing the token and reading the client's throttle row are part of the
                    // lookup, as in the service.
                    let throttle =
                        label_studio_identity::domain::ThrottleKey::new("token-addr", "127.0.0.1");
                    let now = chrono::Utc::now();
                    let found = store
                        .principal(
                            &TokenHash::of(token),
                            Some(&throttle),
                            now,
                            now - chrono::Duration::days(5),
                        )
                        .await;
                    let answered = Instant::now();
                    if sent >= measure_from && answered <= end {
                        match found {
                            Ok(lookup) if lookup.principal.is_some() => {
                                done += 1;
                                latencies.record(answered - sent);
                            }
                            Ok(_) | Err(_) => errors += 1,
                        }
                    }
                }
                anyhow::Ok((done, errors, latencies))
            })
        })
        .collect();
    let database = database_url
        .starts_with("postgres")
        .then(|| database_name(database_url))
        .flatten();
    tokio::time::sleep_until(measure_from.into()).await;
    let database = database.map(str::to_owned);
    let cpu_from = CpuTimes::sample(Vec::new(), database.clone()).await;
    tokio::time::sleep_until(end.into()).await;
    let cpu = CpuTimes::sample(Vec::new(), database)
        .await
        .since(&cpu_from);
    let mut total = 0u64;
    let mut errors = 0u64;
    let mut latencies = Latencies::new()?;
    for task in tasks {
        let (done, failed, own) = task.await.context("a lookup task panicked")??;
        total += done;
        errors += failed;
        latencies.merge(&own)?;
    }
    Ok(StoreLimit {
        concurrency,
        per_second: total as f64 / duration.as_secs_f64(),
        latencies,
        errors,
        cpu,
    })
}
