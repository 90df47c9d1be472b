//! Django's stock password hashers, so that accounts imported from Label Studio log in with the
//! passwords they had there: `pbkdf2_sha256` (what Label Studio writes), `pbkdf2_sha1`, `argon2`
//! and `bcrypt_sha256`. A match asks for a re-hash, so each such hash is replaced by argon2id at
//! the account's first login.
//!
//! Costs read from a stored hash are bounded: a row planted in the database, or brought along
//! by an import, cannot make one login run for minutes.

use argon2::{
    Argon2, Params,
    password_hash::{PasswordVerifier as _, phc::PasswordHash},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use pbkdf2::{hmac::Hmac, sha2::Sha256};
use sha1::Sha1;
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;

use super::{MAX_STORED_ITERATIONS, MAX_STORED_MEMORY_KIB, MAX_STORED_PARALLELISM};

/// Label Studio 1.23 (Django 5.2) writes 1,000,000; Django raises the default by about a fifth
/// each year. One million iterations cost about half a second of one core here.
pub const MAX_PBKDF2_ITERATIONS: u32 = 5_000_000;
/// Django's default is 12; every step doubles the work.
pub const MAX_BCRYPT_COST: u32 = 14;

/// The Django hashers this service verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Pbkdf2Sha256,
    Pbkdf2Sha1,
    Argon2,
    BcryptSha256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pbkdf2Sha256 => "pbkdf2_sha256",
            Self::Pbkdf2Sha1 => "pbkdf2_sha1",
            Self::Argon2 => "argon2",
            Self::BcryptSha256 => "bcrypt_sha256",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [
            Self::Pbkdf2Sha256,
            Self::Pbkdf2Sha1,
            Self::Argon2,
            Self::BcryptSha256,
        ]
        .into_iter()
        .find(|algorithm| algorithm.name() == name)
    }
}

/// What a value of Django's `password` column holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Empty, or Django's `!` marker: no password can ever match it.
    Unusable,
    /// A well-formed hash of a supported hasher, with costs within bounds.
    Supported(Algorithm),
    /// A supported hasher whose cost is beyond the bounds above.
    TooCostly(Algorithm),
    /// Another hasher (`scrypt`, `md5`, …) or a malformed value; carries the hasher's name as
    /// Django spells it, which is never secret.
    Unsupported(String),
}

/// Tells what a Django `password` value is, without checking any password against it.
pub fn classify(encoded: &str) -> Stored {
    if encoded.is_empty() || encoded.starts_with('!') {
        return Stored::Unusable;
    }
    let name = encoded.split_once('$').map_or("", |(name, _)| name);
    let Some(algorithm) = Algorithm::from_name(name) else {
        // A name is letters, digits and underscores; anything else is shown as "unknown".
        let shown = if !name.is_empty()
            && name.len() <= 32
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            name.to_owned()
        } else {
            "unknown".to_owned()
        };
        return Stored::Unsupported(shown);
    };
    match parse(algorithm, encoded) {
        Ok(_) => Stored::Supported(algorithm),
        Err(Refused::TooCostly) => Stored::TooCostly(algorithm),
        Err(Refused::Malformed) => Stored::Unsupported(algorithm.name().to_owned()),
    }
}

/// Checks a password against a Django hash. `None` when `encoded` is not a Django hash of a
/// supported hasher (an argon2 PHC string of this service, say); `Some(false)` for a mismatch,
/// a malformed hash or one whose cost is out of bounds.
pub fn verify(encoded: &str, password: &str) -> Option<bool> {
    let algorithm = Algorithm::from_name(encoded.split_once('$')?.0)?;
    let Ok(parsed) = parse(algorithm, encoded) else {
        return Some(false);
    };
    Some(match parsed {
        Parsed::Pbkdf2 {
            sha1,
            iterations,
            salt,
            expected,
        } => {
            let mut derived = vec![0u8; expected.len()];
            let password = password.as_bytes();
            let derived_ok = match pbkdf2::Params::new(iterations) {
                // Compiled inside the pbkdf2 crate, so it runs optimised even in test builds.
                Ok(params) if !sha1 => {
                    pbkdf2::pbkdf2_hmac_with_params(
                        password,
                        salt,
                        pbkdf2::Algorithm::Pbkdf2Sha256,
                        params,
                        &mut derived,
                    );
                    true
                }
                _ if sha1 => {
                    pbkdf2::pbkdf2::<Hmac<Sha1>>(password, salt, iterations, &mut derived).is_ok()
                }
                _ => {
                    pbkdf2::pbkdf2::<Hmac<Sha256>>(password, salt, iterations, &mut derived).is_ok()
                }
            };
            derived_ok && bool::from(derived.ct_eq(&expected))
        }
        Parsed::Argon2(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &*hash)
            .is_ok(),
        Parsed::BcryptSha256(bcrypt_hash) => {
            // Django hashes the SHA-256 of the password, hex-encoded, so that bcrypt's 72-byte
            // limit doesn't truncate long passwords.
            let prehashed = hex::encode(sha2::Sha256::digest(password.as_bytes()));
            bcrypt::verify(prehashed, bcrypt_hash).unwrap_or(false)
        }
    })
}

enum Parsed<'a> {
    Pbkdf2 {
        sha1: bool,
        iterations: u32,
        salt: &'a [u8],
        expected: Vec<u8>,
    },
    Argon2(Box<PasswordHash>),
    BcryptSha256(&'a str),
}

enum Refused {
    Malformed,
    TooCostly,
}

fn parse(algorithm: Algorithm, encoded: &str) -> Result<Parsed<'_>, Refused> {
    let (_, rest) = encoded.split_once('$').ok_or(Refused::Malformed)?;
    match algorithm {
        Algorithm::Pbkdf2Sha256 | Algorithm::Pbkdf2Sha1 => {
            // <algorithm>$<iterations>$<salt>$<base64 of the derived key>
            let mut fields = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(Refused::Malformed);
            };
            let iterations: u32 = iterations.parse().map_err(|_| Refused::Malformed)?;
            if iterations == 0 {
                return Err(Refused::Malformed);
            }
            if iterations > MAX_PBKDF2_ITERATIONS {
                return Err(Refused::TooCostly);
            }
            let sha1 = algorithm == Algorithm::Pbkdf2Sha1;
            let expected = STANDARD.decode(hash).map_err(|_| Refused::Malformed)?;
            // Django derives a key as long as the digest.
            if expected.len() != if sha1 { 20 } else { 32 } {
                return Err(Refused::Malformed);
            }
            Ok(Parsed::Pbkdf2 {
                sha1,
                iterations,
                salt: salt.as_bytes(),
                expected,
            })
        }
        Algorithm::Argon2 => {
            // argon2$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>: the PHC string without its `$`.
            let phc = &encoded["argon2".len()..];
            let hash = PasswordHash::new(phc).map_err(|_| Refused::Malformed)?;
            if !hash.algorithm.as_str().starts_with("argon2") {
                return Err(Refused::Malformed);
            }
            let params = Params::try_from(&hash).map_err(|_| Refused::Malformed)?;
            if params.m_cost() > MAX_STORED_MEMORY_KIB
                || params.t_cost() > MAX_STORED_ITERATIONS
                || params.p_cost() > MAX_STORED_PARALLELISM
            {
                return Err(Refused::TooCostly);
            }
            Ok(Parsed::Argon2(Box::new(hash)))
        }
        Algorithm::BcryptSha256 => {
            // bcrypt_sha256$$2b$<cost>$<salt and hash>: the bcrypt string follows the name.
            let bcrypt_hash = rest;
            if !bcrypt_hash.starts_with('$') {
                return Err(Refused::Malformed);
            }
            let parts: bcrypt::HashParts = bcrypt_hash.parse().map_err(|_| Refused::Malformed)?;
            if parts.get_cost() > MAX_BCRYPT_COST {
                return Err(Refused::TooCostly);
            }
            Ok(Parsed::BcryptSha256(bcrypt_hash))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made by Django 5.2's own hashers (`make_password` with cheap parameters) for this password.
    const PASSWORD: &str = "lètmein-Ünïcode";
    const VECTORS: [&str; 4] = [
        "pbkdf2_sha256$1000$DccAP1e2ZgXVF2NQLlEiQN$xC67BvutkXG0wkJIQEhpHacLNznCP8ZSImmAb4CnkIA=",
        "pbkdf2_sha1$1000$CApNErclQsYCISHBHPuwah$E9AmLPTnYeZvR1c7jquGaoPgNnU=",
        "argon2$argon2id$v=19$m=64,t=1,p=2$M2pyUE4wZUZycnBOZm9BdE15dFNmdQ$/QFfGvwDtLe+AoRoB4BK9qeElDvBhkeIs2IUu1BP7BY",
        "bcrypt_sha256$$2b$05$iinb4MJan4dzwEMzXbU5gOgawguHOyr9ayCvL7UP4aZ7/OAzk8/LK",
    ];

    #[test]
    fn each_supported_hasher_verifies_its_password_only() {
        for encoded in VECTORS {
            assert_eq!(verify(encoded, PASSWORD), Some(true), "{encoded}");
            assert_eq!(verify(encoded, "lètmein-Ünïcodf"), Some(false), "{encoded}");
            assert_eq!(verify(encoded, ""), Some(false), "{encoded}");
            assert!(
                matches!(classify(encoded), Stored::Supported(_)),
                "{encoded}"
            );
        }
    }

    #[test]
    fn older_hashes_still_verify() {
        // Django 1.4's PBKDF2 hashers (10,000 iterations, 12-character salts).
        assert_eq!(
            verify(
                "pbkdf2_sha256$10000$kjVJaVz6qsnJ$5yPHw3rwJGECpUf70daLGhOrQ5+AMxIJdz1c3bqK1Rs=",
                "not a password"
            ),
            Some(true)
        );
        assert_eq!(
            verify(
                "pbkdf2_sha1$10000$wz5B6WkasRoF$atJmJ1o+XfJxKq1+Nu1f1i57Z5I=",
                "not a password"
            ),
            Some(true)
        );
        // argon2i, as Django wrote before it moved to argon2id, in both argon2 versions.
        for encoded in [
            "argon2$argon2i$v=19$m=32,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$4tp5wCSQKebe+js0fLvN0Q",
            "argon2$argon2i$v=16$m=32,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$d2ZTVmKGS/oGmnvnyXrYsw",
        ] {
            assert_eq!(verify(encoded, "lètmein"), Some(true), "{encoded}");
            assert_eq!(verify(encoded, "letmein"), Some(false), "{encoded}");
        }
        // bcrypt_sha256 as Django 1.6 wrote it ($2a$).
        assert_eq!(
            verify(
                "bcrypt_sha256$$2a$08$NDjSAIcas.EcoxCRiArvT.MkNiPYVhrsrnJsRkLueZOoV1bsQqlmC",
                "lètmein"
            ),
            Some(true)
        );
    }

    #[test]
    fn label_studio_hashes_verify() {
        // From the Label Studio 1.23.2 fixture: 1,000,000 iterations.
        let encoded = "pbkdf2_sha256$1000000$l3xC87eJf4S82Dtb7B0uaX$+B4yVa4IKMNwcbBc4V6IF5hutexR4ndADb6UpaBGlcA=";
        assert_eq!(verify(encoded, "admin-pass-123"), Some(true));
        assert_eq!(verify(encoded, "admin-pass-124"), Some(false));
    }

    #[test]
    fn unusable_and_unknown_values_never_match() {
        for encoded in ["", "!", "!XyZ123abc"] {
            assert_eq!(classify(encoded), Stored::Unusable);
            assert_eq!(verify(encoded, ""), None);
        }
        assert_eq!(
            classify("scrypt$abc$16384$8$1$aGFzaA=="),
            Stored::Unsupported("scrypt".into())
        );
        assert_eq!(
            classify("md5$salt$0123456789abcdef"),
            Stored::Unsupported("md5".into())
        );
        assert_eq!(
            classify("plain text password"),
            Stored::Unsupported("unknown".into())
        );
        // This service's own hashes are not Django's.
        assert_eq!(
            verify("$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA", "x"),
            None
        );
    }

    #[test]
    fn malformed_hashes_of_known_hashers_never_match() {
        for encoded in [
            "pbkdf2_sha256$",
            "pbkdf2_sha256$1000$salt",
            "pbkdf2_sha256$0$salt$xC67BvutkXG0wkJIQEhpHacLNznCP8ZSImmAb4CnkIA=",
            "pbkdf2_sha256$many$salt$xC67BvutkXG0wkJIQEhpHacLNznCP8ZSImmAb4CnkIA=",
            "pbkdf2_sha256$1000$salt$not base64",
            "pbkdf2_sha256$1000$salt$E9AmLPTnYeZvR1c7jquGaoPgNnU=",
            "pbkdf2_sha256$1000$salt$hash$extra",
            "argon2$garbage",
            "argon2$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA",
            "bcrypt_sha256$2b$05$iinb4MJan4dzwEMzXbU5gOgawguHOyr9ayCvL7UP4aZ7/OAzk8/LK",
            "bcrypt_sha256$$2b$05$short",
        ] {
            assert_eq!(verify(encoded, PASSWORD), Some(false), "{encoded}");
            assert!(
                matches!(classify(encoded), Stored::Unsupported(_)),
                "{encoded}"
            );
        }
    }

    #[test]
    fn costs_beyond_the_bounds_are_refused_without_hashing() {
        for (encoded, algorithm) in [
            (
                "pbkdf2_sha256$4000000000$salt$xC67BvutkXG0wkJIQEhpHacLNznCP8ZSImmAb4CnkIA=",
                Algorithm::Pbkdf2Sha256,
            ),
            (
                "pbkdf2_sha1$5000001$salt$E9AmLPTnYeZvR1c7jquGaoPgNnU=",
                Algorithm::Pbkdf2Sha1,
            ),
            (
                "argon2$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
                Algorithm::Argon2,
            ),
            (
                "argon2$argon2id$v=19$m=64,t=1000,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
                Algorithm::Argon2,
            ),
            (
                "bcrypt_sha256$$2b$31$iinb4MJan4dzwEMzXbU5gOgawguHOyr9ayCvL7UP4aZ7/OAzk8/LK",
                Algorithm::BcryptSha256,
            ),
        ] {
            assert_eq!(classify(encoded), Stored::TooCostly(algorithm), "{encoded}");
            // Were these hashed, the test would run for hours.
            assert_eq!(verify(encoded, PASSWORD), Some(false), "{encoded}");
        }
    }
}
