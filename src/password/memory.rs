//! argon2id over working memory that is kept between hashes.
//!
//! Each argon2id computation needs `memory_kib` of blocks. Allocating them per hash costs a
//! zeroing pass over them, and glibc serves such large blocks from per-thread arenas that keep
//! them after they are freed, so a login flood would leave the process holding many times
//! `max_concurrent × memory_kib`. Buffers are instead taken from a small free list and
//! returned after each hash: at most one per hash running at once ever exists, and resident
//! memory stays at `max_concurrent × memory_kib` however many logins arrive.

use std::sync::Mutex;

use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::phc::{Output, ParamsString, PasswordHash, Salt},
};
use rand::Rng as _;

/// Salt length of new hashes, as argon2's own `hash_password` uses.
const SALT_LEN: usize = 16;

/// Buffers sized for the current parameters, free for the next hash to take.
pub(crate) struct Memory {
    params: Params,
    free: Mutex<Vec<Vec<Block>>>,
}

impl Memory {
    pub(crate) fn new(params: Params) -> Self {
        Self {
            params,
            free: Mutex::new(Vec::new()),
        }
    }

    /// Hashes a new password with the current parameters into a PHC string.
    pub(crate) fn hash(&self, password: &str) -> Result<String, String> {
        let mut salt = [0u8; SALT_LEN];
        rand::rng().fill(&mut salt);
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        self.compute(
            &self.params,
            Algorithm::Argon2id,
            Version::V0x13,
            password.as_bytes(),
            &salt,
            &mut out,
        )
        .map_err(|e| e.to_string())?;
        let hash = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&self.params).map_err(|e| e.to_string())?,
            salt: Some(Salt::new(&salt).map_err(|e| e.to_string())?),
            hash: Some(Output::new(&out).map_err(|e| e.to_string())?),
        };
        Ok(hash.to_string())
    }

    /// Whether `password` matches a parsed argon2 hash, computed with the hash's own
    /// parameters and compared in constant time.
    pub(crate) fn verify(&self, stored: &PasswordHash, password: &str) -> bool {
        let (Some(salt), Some(expected)) = (&stored.salt, &stored.hash) else {
            return false;
        };
        let Ok(algorithm) = Algorithm::try_from(stored.algorithm.as_str()) else {
            return false;
        };
        let Ok(version) = stored.version.map(Version::try_from).transpose() else {
            return false;
        };
        let Ok(params) = Params::try_from(stored) else {
            return false;
        };
        let mut buffer = [0u8; Output::MAX_LENGTH];
        let Some(out) = buffer.get_mut(..expected.len()) else {
            return false;
        };
        if self
            .compute(
                &params,
                algorithm,
                version.unwrap_or_default(),
                password.as_bytes(),
                salt,
                out,
            )
            .is_err()
        {
            return false;
        }
        // `Output` compares in constant time.
        Output::new(out).is_ok_and(|computed| computed == *expected)
    }

    fn compute(
        &self,
        params: &Params,
        algorithm: Algorithm,
        version: Version,
        password: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> argon2::Result<()> {
        let argon2 = Argon2::new(algorithm, version, params.clone());
        let needed = params.block_count();
        let mut blocks = self.take(needed);
        let used = needed.min(blocks.len());
        let outcome =
            argon2.hash_password_into_with_memory(password, salt, out, &mut blocks[..used]);
        self.give_back(blocks);
        outcome
    }

    /// A buffer of at least `needed` blocks: a kept one when the current parameters need no
    /// more, else a new one (only hashes stored with other parameters need that).
    fn take(&self, needed: usize) -> Vec<Block> {
        if needed <= self.params.block_count()
            && let Some(blocks) = self.free_list().pop()
        {
            return blocks;
        }
        vec![Block::new(); needed.max(self.params.block_count())]
    }

    /// Keeps buffers of the current size for the next hash; others are freed.
    fn give_back(&self, blocks: Vec<Block>) {
        if blocks.len() == self.params.block_count() {
            self.free_list().push(blocks);
        }
    }

    fn free_list(&self) -> std::sync::MutexGuard<'_, Vec<Vec<Block>>> {
        // A panic while the lock was held cannot leave the list inconsistent.
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.free_list().len()
    }
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};

    use super::*;

    fn params(memory_kib: u32) -> Params {
        Params::new(memory_kib, 1, 1, None).unwrap()
    }

    #[test]
    fn a_hash_verifies_its_password_only_and_agrees_with_argon2() {
        let memory = Memory::new(params(64));
        let hash = memory.hash("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        let parsed = PasswordHash::new(&hash).unwrap();
        assert!(memory.verify(&parsed, "correct horse"));
        assert!(!memory.verify(&parsed, "wrong horse"));
        let reference = Argon2::new(Algorithm::Argon2id, Version::V0x13, params(64));
        assert!(reference.verify_password(b"correct horse", &parsed).is_ok());
        let theirs = reference.hash_password(b"correct horse").unwrap();
        assert!(memory.verify(&theirs, "correct horse"));
    }

    #[test]
    fn hashes_with_other_parameters_verify_without_keeping_their_memory() {
        let memory = Memory::new(params(64));
        for (memory_kib, algorithm) in [(256, Algorithm::Argon2id), (32, Algorithm::Argon2i)] {
            let other = Argon2::new(algorithm, Version::V0x13, params(memory_kib))
                .hash_password(b"correct horse")
                .unwrap();
            assert!(memory.verify(&other, "correct horse"));
            assert!(!memory.verify(&other, "wrong horse"));
        }
        assert_eq!(memory.kept(), 1);
    }

    #[test]
    fn one_buffer_is_kept_per_hash_running_at_once() {
        let memory = std::sync::Arc::new(Memory::new(params(64)));
        std::thread::scope(|scope| {
            for _ in 0..3 {
                let memory = memory.clone();
                scope.spawn(move || {
                    for _ in 0..5 {
                        memory.hash("correct horse").unwrap();
                    }
                });
            }
        });
        assert!((1..=3).contains(&memory.kept()));
    }
}
