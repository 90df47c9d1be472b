//! Access tokens and the key set: signing an access token for a refreshed PAT, checking one
//! without the database, and the keys every replica shares (generated at first start, kept in
//! the database, reloaded every few seconds, rotated by `rotate-signing-key`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::Instant,
};

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use super::{Accounts, AccountsError, Context, audit::Audit, later};
use crate::{
    domain::{
        Account, Organization, User,
        jwt::{self, AccessClaims, ClaimUserId, JwtError, Key, OrganizationClaim},
    },
    store::{KeyPurpose, NewKey, Principal, StoredKey, TokenKind},
};

/// How often every replica reads the key set again, so a rotation reaches all of them.
pub const KEY_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// An unknown `kid` reloads the key set at most this often, so forged ones can't flood the
/// database.
const UNKNOWN_KID_RELOAD: std::time::Duration = std::time::Duration::from_secs(1);

/// The issuer named when no public URL is configured.
const DEFAULT_ISSUER: &str = "label-studio-identity";

/// Access tokens remembered as verified, at most; past that the expired ones go, or all.
const MAX_VERIFIED: usize = 16_384;

/// The keys in use, as loaded from the database.
#[derive(Default)]
pub(crate) struct KeySet {
    /// Keys that verify access tokens, by kid.
    access: HashMap<String, Key>,
    /// Keys that verify PATs (this service's and Label Studio's), by kid.
    personal: HashMap<String, Key>,
    access_signer: Option<Key>,
    personal_signer: Option<Key>,
    /// The published key set (RFC 7517), public keys only.
    jwks: String,
}

impl KeySet {
    fn build(stored: Vec<StoredKey>) -> Self {
        let mut set = Self::default();
        let mut published = Vec::new();
        for row in stored {
            let secret = row.private_key.expose_secret();
            let current = row.retired_at.is_none();
            let key = match (row.purpose, row.algorithm.as_str()) {
                (KeyPurpose::Access, "EdDSA") => Key::ed25519_private(&row.kid, secret),
                (KeyPurpose::Personal, "HS256") => Key::hmac_stored(&row.kid, secret, current),
                (KeyPurpose::LabelStudio, "HS256") => Key::hmac_stored(&row.kid, secret, false),
                _ => Err(jwt::KeyError),
            };
            let Ok(key) = key else {
                tracing::warn!(kid = row.kid, "stored signing key unusable; skipped");
                continue;
            };
            match row.purpose {
                KeyPurpose::Access => {
                    if let Some(jwk) = key.jwk() {
                        published.push(jwk);
                    }
                    if current {
                        set.access_signer = Some(key.clone());
                    }
                    set.access.insert(row.kid, key);
                }
                KeyPurpose::Personal | KeyPurpose::LabelStudio => {
                    if current && row.purpose == KeyPurpose::Personal {
                        set.personal_signer = Some(key.clone());
                    }
                    set.personal.insert(row.kid, key);
                }
            }
        }
        set.jwks = serde_json::json!({ "keys": published }).to_string();
        set
    }
}

/// An access token whose signature was checked, and what it says.
struct Verified {
    kid: String,
    exp: i64,
    iat: i64,
    nbf: Option<i64>,
    principal: Principal,
}

/// The key set every check reads, replaced whole on each reload, and the access tokens already
/// verified with it: clients present one token for minutes, so a token seen again costs a hash
/// and a lookup instead of a signature check. Remembered by the SHA-256 of the whole token, so
/// only the very same bytes match.
pub(crate) struct KeyRing {
    set: RwLock<Arc<KeySet>>,
    loaded_at: Mutex<Option<Instant>>,
    verified: RwLock<HashMap<[u8; 32], Arc<Verified>>>,
}

impl Default for KeyRing {
    fn default() -> Self {
        Self {
            set: RwLock::new(Arc::new(KeySet::default())),
            loaded_at: Mutex::new(None),
            verified: RwLock::new(HashMap::new()),
        }
    }
}

impl KeyRing {
    fn current(&self) -> Arc<KeySet> {
        self.set
            .read()
            .map(|set| set.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn replace(&self, set: KeySet) {
        match self.set.write() {
            Ok(mut current) => *current = Arc::new(set),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(set),
        }
        if let Ok(mut loaded) = self.loaded_at.lock() {
            *loaded = Some(Instant::now());
        }
    }

    /// A token verified before, still within its lifetime and its key still in the set.
    fn remembered(&self, digest: &[u8; 32], set: &KeySet, now: i64) -> Option<Principal> {
        let verified = self.verified.read().ok()?.get(digest)?.clone();
        (set.access.contains_key(&verified.kid)
            && jwt::check_times(verified.exp, verified.iat, verified.nbf, now).is_ok())
        .then(|| verified.principal.clone())
    }

    fn remember(&self, digest: [u8; 32], verified: Verified, now: i64) {
        let Ok(mut map) = self.verified.write() else {
            return;
        };
        if map.len() >= MAX_VERIFIED {
            map.retain(|_, v| jwt::check_times(v.exp, v.iat, v.nbf, now).is_ok());
            if map.len() >= MAX_VERIFIED {
                map.clear();
            }
        }
        map.insert(digest, Arc::new(verified));
    }

    fn loaded_within(&self, window: std::time::Duration) -> bool {
        self.loaded_at
            .lock()
            .ok()
            .and_then(|loaded| *loaded)
            .is_some_and(|at| at.elapsed() < window)
    }
}

/// A random key id: 16 hex characters.
fn new_kid() -> String {
    let bytes: [u8; 8] = rand::random();
    hex::encode(bytes)
}

/// An access token just signed.
#[derive(Debug, Clone)]
pub struct IssuedAccess {
    pub token: secrecy::SecretString,
    pub expires_at: DateTime<Utc>,
}

impl Accounts {
    /// The `iss` of access tokens: the public URL, or the service's name without one.
    pub fn issuer(&self) -> &str {
        self.policy.public_url.as_deref().unwrap_or(DEFAULT_ISSUER)
    }

    /// Creates the signing keys when there are none yet (replicas starting together agree on
    /// one), then loads the key set.
    pub async fn load_signing_keys(&self) -> Result<(), AccountsError> {
        let now = super::now();
        let stored = self.store.signing_keys(now).await?;
        for purpose in [KeyPurpose::Access, KeyPurpose::Personal] {
            if stored
                .iter()
                .any(|key| key.purpose == purpose && key.retired_at.is_none())
            {
                continue;
            }
            let kid = new_kid();
            let generated = match purpose {
                KeyPurpose::Access => Key::generate_ed25519(&kid),
                _ => Key::generate_hmac(&kid),
            }
            .map_err(|e| AccountsError::Unexpected(e.into()))?;
            let created = self
                .store
                .add_signing_key(&NewKey {
                    kid: &kid,
                    purpose,
                    algorithm: generated.key.algorithm().as_str(),
                    private_key: generated.secret.expose_secret(),
                    public_key: generated.public.as_deref(),
                    now,
                })
                .await?;
            if created {
                tracing::info!(kid, purpose = purpose.as_str(), "signing key created");
            }
        }
        self.reload_signing_keys().await
    }

    /// Reads the key set again.
    pub async fn reload_signing_keys(&self) -> Result<(), AccountsError> {
        let stored = self.store.signing_keys(super::now()).await?;
        self.keys.replace(KeySet::build(stored));
        Ok(())
    }

    /// Starts signing access tokens with a new key; the old one stays in the key set until
    /// every token it may have signed has expired (replicas notice within the reload interval).
    /// Returns the new key's id.
    pub async fn rotate_signing_key(&self) -> Result<String, AccountsError> {
        let now = super::now();
        let kid = new_kid();
        let generated =
            Key::generate_ed25519(&kid).map_err(|e| AccountsError::Unexpected(e.into()))?;
        let grace = self.policy.access_token_ttl
            + chrono::Duration::from_std(KEY_RELOAD_INTERVAL * 2).unwrap_or_default()
            + chrono::Duration::seconds(jwt::LEEWAY_SECONDS);
        self.store
            .rotate_signing_key(
                &NewKey {
                    kid: &kid,
                    purpose: KeyPurpose::Access,
                    algorithm: generated.key.algorithm().as_str(),
                    private_key: generated.secret.expose_secret(),
                    public_key: generated.public.as_deref(),
                    now,
                },
                later(now, grace),
            )
            .await?;
        self.audit(
            &Context::internal(),
            Audit::success("signing_key_rotated", None),
        )
        .await;
        self.reload_signing_keys().await?;
        Ok(kid)
    }

    /// The published key set as JSON (RFC 7517): the public keys that verify access tokens.
    pub fn jwks(&self) -> String {
        self.keys.current().jwks.clone()
    }

    pub(crate) fn personal_key(&self, kid: &str) -> Option<Key> {
        self.keys.current().personal.get(kid).cloned()
    }

    pub(crate) fn personal_signer(&self) -> Result<Key, AccountsError> {
        self.keys
            .current()
            .personal_signer
            .clone()
            .ok_or(AccountsError::Unavailable(None))
    }

    /// Signs an access token for the account, valid for the configured lifetime.
    pub(crate) fn sign_access(
        &self,
        account: &Account,
        ctx: &Context,
    ) -> Result<IssuedAccess, AccountsError> {
        let key = self
            .keys
            .current()
            .access_signer
            .clone()
            .ok_or(AccountsError::Unavailable(None))?;
        let iat = ctx.now.timestamp();
        let expires_at = later(ctx.now, self.policy.access_token_ttl);
        let user = &account.user;
        let claims = AccessClaims {
            token_type: jwt::ACCESS.to_owned(),
            exp: expires_at.timestamp(),
            iat,
            nbf: Some(iat),
            jti: hex::encode(rand::random::<[u8; 16]>()),
            user_id: ClaimUserId(user.id),
            iss: self.issuer().to_owned(),
            sub: user.id.to_string(),
            email: user.email.clone(),
            username: user.username.clone(),
            first_name: user.first_name.clone(),
            last_name: user.last_name.clone(),
            date_joined_us: user.date_joined.timestamp_micros(),
            organization: account.organization.as_ref().map(|o| OrganizationClaim {
                id: o.id,
                title: o.title.clone(),
                created_by_user_id: o.created_by_user_id,
            }),
        };
        let token = jwt::encode(&key, &claims).map_err(|e| AccountsError::Unexpected(e.into()))?;
        Ok(IssuedAccess {
            token: token.into(),
            expires_at: DateTime::from_timestamp(claims.exp, 0).unwrap_or(expires_at),
        })
    }

    /// Checks an access token against the key set: no database read, except one reload of the
    /// key set for a key not seen yet (at most once a second). A refused token counts toward
    /// the client's token throttle.
    pub(crate) async fn access_principal(
        &self,
        token: &str,
        ctx: &Context,
    ) -> Result<Principal, AccountsError> {
        let now = ctx.now.timestamp();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let set = self.keys.current();
        if let Some(principal) = self.keys.remembered(&digest, &set, now) {
            return Ok(principal);
        }
        let check =
            |set: &KeySet| jwt::verify_access(token, |kid| set.access.get(kid), self.issuer(), now);
        let mut outcome = check(&set);
        if matches!(outcome, Err(JwtError::UnknownKey))
            && !self.keys.loaded_within(UNKNOWN_KID_RELOAD)
        {
            if let Err(error) = self.reload_signing_keys().await {
                tracing::warn!(%error, "reloading the key set failed");
            }
            outcome = check(&self.keys.current());
        }
        match outcome {
            Ok(claims) => {
                let verified = Verified {
                    kid: jwt::Parts::split(token, false)
                        .and_then(|parts| parts.header())
                        .ok()
                        .and_then(|header| header.kid)
                        .unwrap_or_default(),
                    exp: claims.exp,
                    iat: claims.iat,
                    nbf: claims.nbf,
                    principal: principal(claims),
                };
                let principal = verified.principal.clone();
                self.keys.remember(digest, verified, now);
                Ok(principal)
            }
            Err(error) => {
                tracing::debug!(%error, "access token refused");
                self.ensure_ready()?;
                Err(self.token_refused(ctx, "token_auth").await)
            }
        }
    }
}

/// The caller an access token names, as it was when the token was signed.
fn principal(claims: AccessClaims) -> Principal {
    let organization = claims.organization.map(|o| Organization {
        id: o.id,
        title: o.title,
        created_by_user_id: o.created_by_user_id,
    });
    Principal {
        account: Account {
            user: User {
                id: claims.user_id.0,
                email: claims.email,
                username: claims.username,
                first_name: claims.first_name,
                last_name: claims.last_name,
                date_joined: DateTime::from_timestamp_micros(claims.date_joined_us)
                    .unwrap_or_default(),
                organization_id: organization.as_ref().map(|o| o.id),
            },
            organization,
        },
        kind: TokenKind::Access,
        last_used_at: None,
        legacy_tokens_enabled: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored_access_key(kid: &str) -> StoredKey {
        let generated = Key::generate_ed25519(kid).unwrap();
        StoredKey {
            kid: kid.into(),
            purpose: KeyPurpose::Access,
            algorithm: "EdDSA".into(),
            private_key: generated.secret,
            public_key: generated.public,
            created_at: Utc::now(),
            retired_at: None,
        }
    }

    fn verified(kid: &str, exp: i64) -> Verified {
        Verified {
            kid: kid.into(),
            exp,
            iat: exp - 300,
            nbf: None,
            principal: Principal {
                account: Account {
                    user: User {
                        id: 1,
                        email: "ann@example.com".into(),
                        username: "ann".into(),
                        first_name: String::new(),
                        last_name: String::new(),
                        date_joined: Utc::now(),
                        organization_id: None,
                    },
                    organization: None,
                },
                kind: TokenKind::Access,
                last_used_at: None,
                legacy_tokens_enabled: true,
            },
        }
    }

    #[test]
    fn a_remembered_token_counts_only_while_live_and_its_key_is_in_the_set() {
        let ring = KeyRing::default();
        ring.replace(KeySet::build(vec![stored_access_key("k1")]));
        let set = ring.current();
        let now = 10_000;
        ring.remember([1; 32], verified("k1", now + 60), now);
        ring.remember([2; 32], verified("k1", now - jwt::LEEWAY_SECONDS - 1), now);
        ring.remember([3; 32], verified("gone", now + 60), now);

        assert!(ring.remembered(&[1; 32], &set, now).is_some());
        assert!(ring.remembered(&[2; 32], &set, now).is_none(), "expired");
        assert!(
            ring.remembered(&[3; 32], &set, now).is_none(),
            "key left the set"
        );
        assert!(ring.remembered(&[4; 32], &set, now).is_none(), "never seen");
    }

    #[test]
    fn the_published_key_set_holds_public_access_keys_only() {
        let mut personal = stored_access_key("p1");
        personal.purpose = KeyPurpose::Personal;
        personal.algorithm = "HS256".into();
        personal.private_key = Key::generate_hmac("p1").unwrap().secret;
        let set = KeySet::build(vec![stored_access_key("k1"), personal]);

        let jwks: serde_json::Value = serde_json::from_str(&set.jwks).unwrap();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0]["kid"], "k1");
        assert!(keys[0].get("d").is_none());
        assert!(set.access_signer.is_some() && set.personal_signer.is_some());
    }
}
