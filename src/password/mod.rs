//! Password hashing with argon2id on a bounded pool of blocking threads.
//!
//! At most `max_concurrent` hashes run at once; at most `max_waiting` more wait for a slot.
//! Past that, or when a caller's deadline would pass while waiting, the work is refused at once
//! so a flood of logins costs bounded memory and never stalls the async workers.

pub mod django;

use std::{sync::Arc, time::Duration};

use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{PasswordHasher as _, PasswordVerifier as _, phc::PasswordHash},
};
use tokio::{sync::Semaphore, time::Instant};

use crate::{config::Argon2Settings, domain::Password};

/// Upper bounds for parameters read from stored hashes, so that a planted row cannot make a
/// login cost minutes or gigabytes.
const MAX_STORED_MEMORY_KIB: u32 = 1024 * 1024;
const MAX_STORED_ITERATIONS: u32 = 64;
const MAX_STORED_PARALLELISM: u32 = 16;

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

#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    params: Params,
    running: Semaphore,
    admitted: Semaphore,
    max_concurrent: usize,
    max_waiting: usize,
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
        let dummy_hash = hash_blocking(
            &params,
            &crate::domain::SessionToken::generate().expose()[..32],
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                params,
                running: Semaphore::new(max_concurrent),
                admitted: Semaphore::new(max_concurrent + settings.max_waiting),
                max_concurrent,
                max_waiting: settings.max_waiting,
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
        let params = self.inner.params.clone();
        let password = password.clone();
        self.run(deadline, move || {
            hash_blocking(&params, password.expose()).map_err(HashError::Unexpected)
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
        let known = stored.is_some();
        let stored = stored.unwrap_or(&self.inner.dummy_hash).to_owned();
        let current = self.inner.params.clone();
        let password = password.clone();
        let verdict = self
            .run(deadline, move || {
                Ok(verify_blocking(&current, &stored, password.expose()))
            })
            .await?;
        Ok(if known { verdict } else { Verdict::Mismatch })
    }

    /// Hashes currently running and waiting, for metrics.
    pub fn load(&self) -> (usize, usize) {
        let inner = &self.inner;
        let running = inner.max_concurrent - inner.running.available_permits();
        let admitted =
            inner.max_concurrent + inner.max_waiting - inner.admitted.available_permits();
        (running, admitted.saturating_sub(running))
    }

    async fn run<T, F>(&self, deadline: Option<Instant>, work: F) -> Result<T, HashError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, HashError> + Send + 'static,
    {
        let _admitted = self
            .inner
            .admitted
            .try_acquire()
            .map_err(|_| HashError::Overloaded)?;
        let acquire = self.inner.running.acquire();
        let _running = match deadline {
            // Leave room for the hash itself: waiting until the very deadline helps nobody.
            Some(deadline) => {
                tokio::time::timeout_at(deadline - Duration::from_millis(50), acquire)
                    .await
                    .map_err(|_| HashError::Overloaded)?
            }
            None => acquire.await,
        }
        .map_err(|_| HashError::Overloaded)?;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(work))
            .await
            .map_err(|e| HashError::Unexpected(e.to_string()))?
    }
}

fn argon2(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash_blocking(params: &Params, password: &str) -> Result<String, String> {
    argon2(params)
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

fn verify_blocking(current: &Params, stored: &str, password: &str) -> Verdict {
    // Hashes imported from Label Studio: replaced by argon2id once they match.
    match django::verify(stored, password) {
        Some(true) => return Verdict::MatchNeedsRehash,
        Some(false) => return Verdict::Mismatch,
        None => {}
    }
    let Ok(parsed) = PasswordHash::new(stored) else {
        return Verdict::Mismatch;
    };
    let Ok(stored_params) = Params::try_from(&parsed) else {
        return Verdict::Mismatch;
    };
    if stored_params.m_cost() > MAX_STORED_MEMORY_KIB
        || stored_params.t_cost() > MAX_STORED_ITERATIONS
        || stored_params.p_cost() > MAX_STORED_PARALLELISM
    {
        return Verdict::Mismatch;
    }
    if argon2(current)
        .verify_password(password.as_bytes(), &parsed)
        .is_err()
    {
        return Verdict::Mismatch;
    }
    let same = parsed.algorithm.as_str() == "argon2id"
        && parsed.version == Some(Version::V0x13.into())
        && stored_params.m_cost() == current.m_cost()
        && stored_params.t_cost() == current.t_cost()
        && stored_params.p_cost() == current.p_cost();
    if same {
        Verdict::Match
    } else {
        Verdict::MatchNeedsRehash
    }
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
