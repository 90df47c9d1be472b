//! Password hashing with argon2id on a bounded pool of blocking threads.
//!
//! At most `max_concurrent` hashes run at once; at most `max_waiting` more wait for a slot.
//! Past that, or when a caller's deadline would pass while waiting, the work is refused at once
//! so a flood of logins costs bounded memory and never stalls the async workers.

pub mod django;
mod memory;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use argon2::{Params, Version, password_hash::phc::PasswordHash};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tracing::Instrument;

use crate::{config::Argon2Settings, domain::Password};

/// Upper bounds for parameters read from stored hashes, so that a planted row cannot make a
/// login cost minutes or gigabytes.
pub const MAX_STORED_MEMORY_KIB: u32 = 1024 * 1024;
pub const MAX_STORED_ITERATIONS: u32 = 64;
pub const MAX_STORED_PARALLELISM: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// No hashing slot could be had in time; the caller should retry later.
    #[error("password hashing is at capacity")]
    Overloaded,
    #[error("password hashing failed: {0}")]
    Unexpected(String),
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Mismatch,
    Match,
    /// The password matches but the hash was made with other parameters: store a new one.
    MatchNeedsRehash,
}

/// The hashing pool's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashLoad {
    pub running: usize,
    pub waiting: usize,
    pub computed: u64,
}

/// A place in the hashing queue (see [`PasswordHasher::ticket`]); freed when dropped.
#[derive(Debug)]
pub struct HashTicket {
    _permit: OwnedSemaphorePermit,
}

#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    params: Params,
    /// argon2 working memory, kept between hashes so resident memory stays bounded.
    memory: memory::Memory,
    running: Semaphore,
    admitted: Arc<Semaphore>,
    max_concurrent: usize,
    max_waiting: usize,
    /// Hashes computed so far, for metrics.
    computed: AtomicU64,
    /// Running average of one hash's duration, to refuse work that can't meet its deadline.
    average_nanos: AtomicU64,
    /// Running average of one computation with the current parameters: every password check
    /// takes at least this long, whatever the stored hash.
    current_nanos: AtomicU64,
    /// How many times a check with the current parameters the costliest stored hash of another
    /// kind takes, in thousandths (see [`PasswordHasher::set_cost_ratio`]): every check is
    /// padded to that multiple of the current cost, which follows the machine's load as the
    /// current cost does.
    ratio_permille: AtomicU64,
    /// A hash of a random password with the current parameters: unknown emails are verified
    /// against it so they spend the same work as known ones.
    dummy_hash: String,
}

impl PasswordHasher {
    pub fn new(settings: &Argon2Settings) -> anyhow::Result<Self> {
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )
        .map_err(|e| anyhow::anyhow!("invalid argon2 parameters: {e}"))?;
        let max_concurrent = settings.max_concurrent.max(1);
        let memory = memory::Memory::new(params.clone());
        let dummy_hash = memory
            .hash(&crate::domain::SessionToken::generate().expose()[..32])
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                params,
                memory,
                running: Semaphore::new(max_concurrent),
                admitted: Arc::new(Semaphore::new(max_concurrent + settings.max_waiting)),
                max_concurrent,
                max_waiting: settings.max_waiting,
                computed: AtomicU64::new(0),
                average_nanos: AtomicU64::new(0),
                current_nanos: AtomicU64::new(0),
                ratio_permille: AtomicU64::new(1000),
                dummy_hash,
            }),
        })
    }

    /// Hashes a new password with the current parameters into a PHC string.
    pub async fn hash(
        &self,
        password: &Password,
        deadline: Option<Instant>,
    ) -> Result<String, HashError> {
        let inner = self.inner.clone();
        let password = password.clone();
        self.run(deadline, move || {
            let started = std::time::Instant::now();
            let hash = inner
                .memory
                .hash(password.expose())
                .map_err(HashError::Unexpected);
            record_average(&inner.current_nanos, started.elapsed());
            hash
        })
        .await
    }

    /// Checks a password against a stored PHC string, or against the dummy hash when there is
    /// none, so that both cost the same.
    pub async fn verify(
        &self,
        stored: Option<&str>,
        password: &Password,
        deadline: Option<Instant>,
    ) -> Result<Verdict, HashError> {
        self.verify_admitted(None, stored, password, deadline).await
    }

    /// A place in the hashing queue, taken before a login spends anything else, so that a
    /// login the pool can't take is refused before it costs a database write.
    pub fn ticket(&self) -> Result<HashTicket, HashError> {
        self.inner
            .admitted
            .clone()
            .try_acquire_owned()
            .map(|permit| HashTicket { _permit: permit })
            .map_err(|_| HashError::Overloaded)
    }

    /// `verify` in the place `ticket` holds.
    pub async fn verify_with_ticket(
        &self,
        ticket: HashTicket,
        stored: Option<&str>,
        password: &Password,
        deadline: Option<Instant>,
    ) -> Result<Verdict, HashError> {
        self.verify_admitted(Some(ticket), stored, password, deadline)
            .await
    }

    /// Checks the password, then waits until the check has taken as long as one with the
    /// current parameters and as long as the costliest stored hash: a hash with older, cheaper
    /// parameters, an imported one and a missing one all answer after the same time. The wait
    /// holds no hashing slot.
    async fn verify_admitted(
        &self,
        ticket: Option<HashTicket>,
        stored: Option<&str>,
        password: &Password,
        deadline: Option<Instant>,
    ) -> Result<Verdict, HashError> {
        let known = stored.is_some();
        let stored = stored.unwrap_or(&self.inner.dummy_hash).to_owned();
        let inner = self.inner.clone();
        let password = password.clone();
        let (verdict, started) = self
            .run_admitted(ticket, deadline, move || {
                let started = Instant::now();
                let (verdict, current) =
                    verify_blocking(&inner.memory, &inner.params, &stored, password.expose());
                if current {
                    record_average(&inner.current_nanos, started.elapsed());
                }
                Ok((verdict, started))
            })
            .await?;
        tokio::time::sleep_until(started + self.padded_cost())
            .instrument(tracing::debug_span!("password.padding"))
            .await;
        Ok(if known { verdict } else { Verdict::Mismatch })
    }

    /// How long every password check takes at least: the current parameters' cost, times the
    /// ratio of the costliest stored hash.
    pub fn padded_cost(&self) -> Duration {
        let inner = &self.inner;
        let current = inner.current_nanos.load(Ordering::Relaxed);
        let permille = inner.ratio_permille.load(Ordering::Relaxed).max(1000);
        Duration::from_nanos(
            u64::try_from(u128::from(current) * u128::from(permille) / 1000).unwrap_or(u64::MAX),
        )
    }

    /// Pads every check to `ratio` times the current cost (what
    /// [`PasswordHasher::measure`] found for the costliest stored hash), with a tenth more
    /// for the variation between one check and the next when it is above one.
    pub fn set_cost_ratio(&self, ratio: f64) {
        let permille = if ratio > 1.0 {
            (ratio * 1100.0).min(1e9) as u64
        } else {
            1000
        };
        self.inner.ratio_permille.store(permille, Ordering::Relaxed);
    }

    /// The start of every hash made with the current parameters.
    pub fn current_prefix(&self) -> String {
        let params = &self.inner.params;
        format!(
            "$argon2id$v=19$m={},t={},p={}$",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        )
    }

    /// How many times a check with the current parameters the costliest of these stored hashes
    /// takes to check: each is timed against a current one right after it, on a blocking
    /// thread, so that both see the same load. Also seeds the current cost.
    pub async fn measure(&self, samples: Vec<String>) -> Result<f64, HashError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let time = |stored: &str| {
                let started = std::time::Instant::now();
                let _ = verify_blocking(
                    &inner.memory,
                    &inner.params,
                    stored,
                    "a password no account has",
                );
                started.elapsed()
            };
            // The quickest of a few alternating runs of each: one timing of a cheap hash is
            // mostly noise (a preemption, a cold cache), and a noisy ratio would pad logins
            // too little or far too much.
            const RUNS: usize = 3;
            let mut ratio: f64 = 1.0;
            let current = time(&inner.dummy_hash);
            record_average(&inner.current_nanos, current);
            for stored in &samples {
                let (mut other, mut current) = (Duration::MAX, Duration::MAX);
                for _ in 0..RUNS {
                    other = other.min(time(stored));
                    current = current.min(time(&inner.dummy_hash));
                }
                record_average(&inner.current_nanos, current);
                ratio = ratio.max(other.as_secs_f64() / current.as_secs_f64().max(1e-9));
            }
            ratio
        })
        .await
        .map_err(|e| HashError::Unexpected(e.to_string()))
    }

    /// Hashes running and waiting right now, and computed so far, for metrics.
    pub fn load(&self) -> HashLoad {
        let inner = &self.inner;
        let running = inner.max_concurrent - inner.running.available_permits();
        let admitted =
            inner.max_concurrent + inner.max_waiting - inner.admitted.available_permits();
        HashLoad {
            running,
            waiting: admitted.saturating_sub(running),
            computed: inner.computed.load(Ordering::Relaxed),
        }
    }

    async fn run<T, F>(&self, deadline: Option<Instant>, work: F) -> Result<T, HashError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, HashError> + Send + 'static,
    {
        self.run_admitted(None, deadline, work).await
    }

    async fn run_admitted<T, F>(
        &self,
        ticket: Option<HashTicket>,
        deadline: Option<Instant>,
        work: F,
    ) -> Result<T, HashError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, HashError> + Send + 'static,
    {
        let _admitted = match ticket {
            Some(ticket) => ticket,
            None => self.ticket()?,
        };
        if let Some(deadline) = deadline {
            // Refuse at once when the expected wait plus the hash would overrun the deadline.
            let inner = &self.inner;
            let queued = (inner.max_concurrent + inner.max_waiting
                - inner.admitted.available_permits()) as u32;
            let rounds = queued.div_ceil(inner.max_concurrent as u32).max(1);
            let expected =
                Duration::from_nanos(inner.average_nanos.load(Ordering::Relaxed)) * rounds;
            if Instant::now() + expected > deadline {
                return Err(HashError::Overloaded);
            }
        }
        let acquire = self.inner.running.acquire();
        // The wait for a hashing slot is a span of its own, apart from the hash, so a trace
        // tells a full pool from a slow hash.
        let _running = async {
            match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, acquire)
                    .await
                    .map_err(|_| HashError::Overloaded)?,
                None => acquire.await,
            }
            .map_err(|_| HashError::Overloaded)
        }
        .instrument(tracing::debug_span!("password.queue"))
        .await?;
        let span = tracing::Span::current();
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            lower_thread_priority();
            let started = std::time::Instant::now();
            let outcome = span.in_scope(|| tracing::debug_span!("password.hash").in_scope(work));
            inner.record(started.elapsed());
            outcome
        })
        .await
        .map_err(|e| HashError::Unexpected(e.to_string()))?
    }
}

impl Inner {
    /// Counts a finished hash and folds its duration into the running average.
    fn record(&self, took: Duration) {
        self.computed.fetch_add(1, Ordering::Relaxed);
        record_average(&self.average_nanos, took);
    }
}

/// Folds a duration into a running average (1/8 weight).
fn record_average(average: &AtomicU64, took: Duration) {
    let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
    let _ = average.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |average| {
        Some(if average == 0 {
            took
        } else {
            average - average / 8 + took / 8
        })
    });
}

/// What a stored hash's cost depends on, without its salt and digest: `pbkdf2_sha256$1000000`,
/// `$argon2id$v=19$m=19456,t=2,p=1`, `bcrypt_sha256$$2b$12`. Hashes of one kind cost the same
/// to check.
pub fn cost_kind(stored: &str) -> String {
    let fields: Vec<&str> = stored.split('$').collect();
    // bcrypt keeps its salt and digest in one field; the others in two.
    let keep = if stored.starts_with("bcrypt") {
        fields.len().saturating_sub(1)
    } else {
        fields.len().saturating_sub(2)
    };
    fields[..keep].join("$")
}

/// Runs hashing threads at a lower CPU priority, so that under a flood of logins the async
/// workers (token checks, health, invite links) still get the cores when they need them.
fn lower_thread_priority() {
    thread_local! {
        static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    LOWERED.with(|lowered| {
        if !lowered.replace(true) {
            #[cfg(target_os = "linux")]
            // SAFETY: plain system calls on the current thread with valid arguments; a failure
            // only leaves the priority as it was.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid);
                if let Ok(tid) = libc::id_t::try_from(tid) {
                    libc::setpriority(libc::PRIO_PROCESS, tid, 10);
                }
            }
        }
    });
}

/// Checks a password against a stored hash; also tells whether the hash has the current
/// parameters (so its cost is the current cost).
fn verify_blocking(
    memory: &memory::Memory,
    current: &Params,
    stored: &str,
    password: &str,
) -> (Verdict, bool) {
    // Hashes imported from Label Studio: replaced by argon2id once they match.
    match django::verify(stored, password) {
        Some(true) => return (Verdict::MatchNeedsRehash, false),
        Some(false) => return (Verdict::Mismatch, false),
        None => {}
    }
    let Ok(parsed) = PasswordHash::new(stored) else {
        return (Verdict::Mismatch, false);
    };
    let Ok(stored_params) = Params::try_from(&parsed) else {
        return (Verdict::Mismatch, false);
    };
    if stored_params.m_cost() > MAX_STORED_MEMORY_KIB
        || stored_params.t_cost() > MAX_STORED_ITERATIONS
        || stored_params.p_cost() > MAX_STORED_PARALLELISM
    {
        return (Verdict::Mismatch, false);
    }
    let same = parsed.algorithm.as_str() == "argon2id"
        && parsed.version == Some(Version::V0x13.into())
        && stored_params.m_cost() == current.m_cost()
        && stored_params.t_cost() == current.t_cost()
        && stored_params.p_cost() == current.p_cost();
    if !memory.verify(&parsed, password) {
        return (Verdict::Mismatch, same);
    }
    (
        if same {
            Verdict::Match
        } else {
            Verdict::MatchNeedsRehash
        },
        same,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(memory_kib: u32) -> Argon2Settings {
        Argon2Settings {
            memory_kib,
            iterations: 1,
            parallelism: 1,
            max_concurrent: 1,
            max_waiting: 4,
        }
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let hasher = PasswordHasher::new(&settings(64)).unwrap();
        let password = Password::parse("correct horse").unwrap();
        let hash = hasher.hash(&password, None).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert_eq!(
            hasher.verify(Some(&hash), &password, None).await.unwrap(),
            Verdict::Match
        );
        let wrong = Password::parse("wrong horse").unwrap();
        assert_eq!(
            hasher.verify(Some(&hash), &wrong, None).await.unwrap(),
            Verdict::Mismatch
        );
    }

    #[tokio::test]
    async fn a_hash_with_other_parameters_asks_for_a_rehash() {
        let old = PasswordHasher::new(&settings(64)).unwrap();
        let new = PasswordHasher::new(&settings(128)).unwrap();
        let password = Password::parse("correct horse").unwrap();
        let hash = old.hash(&password, None).await.unwrap();
        assert_eq!(
            new.verify(Some(&hash), &password, None).await.unwrap(),
            Verdict::MatchNeedsRehash
        );
    }

    #[tokio::test]
    async fn a_missing_or_garbled_hash_never_matches() {
        let hasher = PasswordHasher::new(&settings(64)).unwrap();
        let password = Password::parse("correct horse").unwrap();
        for stored in [None, Some(""), Some("$argon2id$garbage"), Some("plain")] {
            assert_eq!(
                hasher.verify(stored, &password, None).await.unwrap(),
                Verdict::Mismatch
            );
        }
        let huge = "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
        assert_eq!(
            hasher.verify(Some(huge), &password, None).await.unwrap(),
            Verdict::Mismatch
        );
    }

    #[tokio::test]
    async fn a_ticket_holds_its_place_in_the_queue_until_its_hash_is_done() {
        let hasher = PasswordHasher::new(&Argon2Settings {
            max_waiting: 0,
            ..settings(64)
        })
        .unwrap();
        let ticket = hasher.ticket().unwrap();
        assert!(matches!(hasher.ticket(), Err(HashError::Overloaded)));
        let password = Password::parse("correct horse").unwrap();
        assert_eq!(
            hasher
                .verify_with_ticket(ticket, None, &password, None)
                .await
                .unwrap(),
            Verdict::Mismatch
        );
        assert!(hasher.ticket().is_ok());
    }

    #[tokio::test]
    async fn work_beyond_the_queue_is_refused_at_once() {
        let hasher = PasswordHasher::new(&Argon2Settings {
            max_waiting: 0,
            ..settings(64)
        })
        .unwrap();
        let _held = hasher.inner.admitted.try_acquire().unwrap();
        let password = Password::parse("correct horse").unwrap();
        assert!(matches!(
            hasher.hash(&password, None).await,
            Err(HashError::Overloaded)
        ));
    }
}
