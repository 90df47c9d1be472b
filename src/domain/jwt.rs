//! JSON Web Tokens as this service signs and checks them: personal access tokens (Label Studio's
//! long-lived refresh tokens, HS256) and short-lived access tokens (EdDSA, verifiable by anyone
//! holding the key set). A small JWS implementation over `ring`, so that every rule is visible
//! here: the key decides the algorithm (a token's `alg` only has to agree with it), access
//! tokens must name their key, times are checked with a small leeway, and a token over 8 KiB is
//! refused before anything of it is decoded.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    hmac,
    rand::SystemRandom,
    signature::{self, Ed25519KeyPair, KeyPair},
};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Longest token looked at; longer ones are refused unread.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Clock difference tolerated between the signer and a verifier, in seconds.
pub const LEEWAY_SECONDS: i64 = 30;

/// `token_type` of a personal access token (a refresh token, as Label Studio calls it).
pub const REFRESH: &str = "refresh";
/// `token_type` of an access token.
pub const ACCESS: &str = "access";

/// Why a token was refused. Callers see one answer for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is longer than 8 KiB")]
    TooLong,
    #[error("the token is not a compact JWS")]
    Malformed,
    #[error("the token names no key")]
    KidMissing,
    #[error("the token's key is unknown")]
    UnknownKey,
    #[error("the token's algorithm is not its key's")]
    Algorithm,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token has expired or is not valid yet")]
    Time,
    #[error("the token is of another type")]
    WrongType,
    #[error("the token was issued by someone else")]
    Issuer,
}

/// The signature algorithms this service knows; each key has exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    EdDSA,
    HS256,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::HS256 => "HS256",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "EdDSA" => Some(Self::EdDSA),
            "HS256" => Some(Self::HS256),
            _ => None,
        }
    }
}

enum Material {
    /// An Ed25519 key: the pair when this service signs with it, always the public half.
    Ed25519 {
        pair: Option<Ed25519KeyPair>,
        public: Vec<u8>,
    },
    /// An HMAC-SHA256 secret, which both signs and verifies.
    Hmac(hmac::Key),
}

/// A key of the key set, known by its `kid`. Its secret half never leaves this type except
/// through [`GeneratedKey`], once, to be stored.
#[derive(Clone)]
pub struct Key {
    kid: Arc<str>,
    material: Arc<Material>,
    can_sign: bool,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm())
            .field("can_sign", &self.can_sign)
            .finish_non_exhaustive()
    }
}

/// A key just generated, with the secret to store (base64url): PKCS#8 for Ed25519, the raw
/// secret for HMAC.
pub struct GeneratedKey {
    pub key: Key,
    pub secret: SecretString,
    /// The Ed25519 public key (base64url), `None` for HMAC keys.
    pub public: Option<String>,
}

impl Key {
    /// A fresh Ed25519 signing key.
    pub fn generate_ed25519(kid: &str) -> Result<GeneratedKey, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError)?;
        let secret = URL_SAFE_NO_PAD.encode(pkcs8.as_ref());
        let key = Self::ed25519_private(kid, &secret)?;
        let public = key.public_base64();
        Ok(GeneratedKey {
            key,
            secret: SecretString::from(secret),
            public,
        })
    }

    /// A fresh HMAC-SHA256 signing key of 64 random bytes.
    pub fn generate_hmac(kid: &str) -> Result<GeneratedKey, KeyError> {
        let mut bytes = [0u8; 64];
        ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut bytes).map_err(|_| KeyError)?;
        Ok(GeneratedKey {
            key: Self::hmac(kid, &bytes, true),
            secret: SecretString::from(URL_SAFE_NO_PAD.encode(bytes)),
            public: None,
        })
    }

    /// An Ed25519 key this service signs with, from its stored PKCS#8 (base64url).
    pub fn ed25519_private(kid: &str, pkcs8: &str) -> Result<Self, KeyError> {
        let der = URL_SAFE_NO_PAD.decode(pkcs8).map_err(|_| KeyError)?;
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| KeyError)?;
        let public = pair.public_key().as_ref().to_vec();
        Ok(Self {
            kid: kid.into(),
            material: Arc::new(Material::Ed25519 {
                pair: Some(pair),
                public,
            }),
            can_sign: true,
        })
    }

    /// An Ed25519 key that only verifies, from its public half (base64url).
    pub fn ed25519_public(kid: &str, public: &str) -> Result<Self, KeyError> {
        let public = URL_SAFE_NO_PAD.decode(public).map_err(|_| KeyError)?;
        if public.len() != 32 {
            return Err(KeyError);
        }
        Ok(Self {
            kid: kid.into(),
            material: Arc::new(Material::Ed25519 { pair: None, public }),
            can_sign: false,
        })
    }

    /// An HMAC-SHA256 key; `can_sign` is false for a key kept only to verify (Label Studio's).
    pub fn hmac(kid: &str, secret: &[u8], can_sign: bool) -> Self {
        Self {
            kid: kid.into(),
            material: Arc::new(Material::Hmac(hmac::Key::new(hmac::HMAC_SHA256, secret))),
            can_sign,
        }
    }

    /// An HMAC key from its stored secret (base64url).
    pub fn hmac_stored(kid: &str, secret: &str, can_sign: bool) -> Result<Self, KeyError> {
        let bytes = SecretBox::new(
            URL_SAFE_NO_PAD
                .decode(secret)
                .map_err(|_| KeyError)?
                .into_boxed_slice(),
        );
        Ok(Self::hmac(kid, bytes.expose_secret(), can_sign))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn algorithm(&self) -> Algorithm {
        match &*self.material {
            Material::Ed25519 { .. } => Algorithm::EdDSA,
            Material::Hmac(_) => Algorithm::HS256,
        }
    }

    pub fn can_sign(&self) -> bool {
        self.can_sign
    }

    fn public_base64(&self) -> Option<String> {
        match &*self.material {
            Material::Ed25519 { public, .. } => Some(URL_SAFE_NO_PAD.encode(public)),
            Material::Hmac(_) => None,
        }
    }

    /// The key's public JWK (RFC 8037), `None` for a secret (HMAC) key, which is never
    /// published.
    pub fn jwk(&self) -> Option<serde_json::Value> {
        let x = self.public_base64()?;
        Some(serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": x,
            "kid": &*self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }))
    }

    fn sign(&self, message: &[u8]) -> Option<Vec<u8>> {
        if !self.can_sign {
            return None;
        }
        match &*self.material {
            Material::Ed25519 { pair, .. } => {
                pair.as_ref().map(|p| p.sign(message).as_ref().to_vec())
            }
            Material::Hmac(key) => Some(hmac::sign(key, message).as_ref().to_vec()),
        }
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &*self.material {
            Material::Ed25519 { public, .. } => {
                signature::UnparsedPublicKey::new(&signature::ED25519, public)
                    .verify(message, signature)
                    .is_ok()
            }
            Material::Hmac(key) => hmac::verify(key, message, signature).is_ok(),
        }
    }
}

/// A stored key that can't be read back (corrupt base64, wrong length, bad PKCS#8), or a
/// failure of the system's random source.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the signing key is unusable")]
pub struct KeyError;

/// A compact JWS split into its parts, not yet verified.
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    /// `header.payload`: what is signed, and what Label Studio stores of a PAT.
    pub signing_input: &'a str,
    header: &'a str,
    payload: &'a str,
    signature: Option<&'a str>,
}

impl<'a> Parts<'a> {
    /// Splits `header.payload.signature`; with `truncated`, `header.payload` alone is accepted
    /// too (how Label Studio lists and stores PATs). Refuses anything over 8 KiB unread.
    pub fn split(token: &'a str, truncated: bool) -> Result<Self, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLong);
        }
        let mut pieces = token.split('.');
        let (Some(header), Some(payload)) = (pieces.next(), pieces.next()) else {
            return Err(JwtError::Malformed);
        };
        let signature = pieces.next();
        if pieces.next().is_some()
            || (signature.is_none() && !truncated)
            || ![Some(header), Some(payload), signature]
                .into_iter()
                .flatten()
                .all(is_base64url)
        {
            return Err(JwtError::Malformed);
        }
        Ok(Self {
            signing_input: &token[..header.len() + 1 + payload.len()],
            header,
            payload,
            signature,
        })
    }

    /// Whether the full token (with its signature) was given.
    pub fn is_complete(&self) -> bool {
        self.signature.is_some()
    }

    pub fn header(&self) -> Result<Header, JwtError> {
        decode_json(self.header)
    }

    /// The claims, unverified: only to find which record and key to check the token against.
    pub fn claims<C: DeserializeOwned>(&self) -> Result<C, JwtError> {
        decode_json(self.payload)
    }

    /// Checks the signature with `key`, whose algorithm the header must name. A `kid` in the
    /// header, when there is one, must be the key's.
    pub fn verify(&self, key: &Key) -> Result<(), JwtError> {
        let header = self.header()?;
        if Algorithm::parse(&header.alg) != Some(key.algorithm()) {
            return Err(JwtError::Algorithm);
        }
        if header.kid.as_deref().is_some_and(|kid| kid != key.kid()) {
            return Err(JwtError::UnknownKey);
        }
        let signature = self
            .signature
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .ok_or(JwtError::Signature)?;
        if key.verify(self.signing_input.as_bytes(), &signature) {
            Ok(())
        } else {
            Err(JwtError::Signature)
        }
    }
}

/// Whether a credential has the shape of a JWT (three non-empty base64url parts): how access
/// tokens are told from session tokens, which are hex.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = 0;
    for part in token.split('.') {
        if part.is_empty() || !is_base64url(part) {
            return false;
        }
        parts += 1;
    }
    parts == 3
}

fn is_base64url(part: &str) -> bool {
    part.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn decode_json<T: DeserializeOwned>(part: &str) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

/// The JOSE header fields this service reads.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Header {
    pub alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
}

/// Signs `claims` with `key`, naming the key in the header.
pub fn encode<C: Serialize>(key: &Key, claims: &C) -> Result<String, KeyError> {
    let header = Header {
        alg: key.algorithm().as_str().to_owned(),
        kid: Some(key.kid().to_owned()),
        typ: Some("JWT".to_owned()),
    };
    let header = serde_json::to_vec(&header).map_err(|_| KeyError)?;
    let claims = serde_json::to_vec(claims).map_err(|_| KeyError)?;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = key.sign(input.as_bytes()).ok_or(KeyError)?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// Label Studio's signature of a stored `header.payload`: how its PATs are made whole again.
pub fn hs256_signature(secret: &[u8], signing_input: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    URL_SAFE_NO_PAD.encode(hmac::sign(&key, signing_input.as_bytes()))
}

/// A user id as Label Studio writes it (a JSON string) or as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimUserId(pub i64);

impl Serialize for ClaimUserId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for ClaimUserId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(i64),
            Text(String),
        }
        match Either::deserialize(deserializer)? {
            Either::Number(id) => Ok(Self(id)),
            Either::Text(text) => text
                .parse()
                .map(Self)
                .map_err(|_| serde::de::Error::custom("user_id is not an integer")),
        }
    }
}

/// A personal access token's claims, as Label Studio's `LSAPIToken` has them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshClaims {
    pub token_type: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub user_id: ClaimUserId,
}

/// The organization an access token's user acts in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrganizationClaim {
    pub id: i64,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by_user_id: Option<i64>,
}

/// An access token's claims: Label Studio's (`token_type`, `exp`, `iat`, `jti`, `user_id`),
/// the standard `iss`, `sub` and `nbf`, and the account as it was at the refresh, so that a
/// check needs no lookup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub token_type: String,
    pub exp: i64,
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub jti: String,
    pub user_id: ClaimUserId,
    #[serde(default)]
    pub iss: String,
    #[serde(default)]
    pub sub: String,
    pub email: String,
    pub username: String,
    #[serde(default)]
    pub first_name: String,
    #[serde(default)]
    pub last_name: String,
    /// When the account was created, in microseconds since the epoch.
    pub date_joined_us: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<OrganizationClaim>,
}

/// Verifies an access token against the key set: the header must name a known key (`kid`),
/// whose algorithm it must name too; then type, issuer and times.
pub fn verify_access<'k>(
    token: &str,
    key: impl FnOnce(&str) -> Option<&'k Key>,
    issuer: &str,
    now: i64,
) -> Result<AccessClaims, JwtError> {
    let parts = Parts::split(token, false)?;
    let header = parts.header()?;
    let kid = header.kid.ok_or(JwtError::KidMissing)?;
    let key = key(&kid).ok_or(JwtError::UnknownKey)?;
    parts.verify(key)?;
    let claims: AccessClaims = parts.claims()?;
    if claims.token_type != ACCESS {
        return Err(JwtError::WrongType);
    }
    if claims.iss != issuer {
        return Err(JwtError::Issuer);
    }
    check_times(claims.exp, claims.iat, claims.nbf, now)?;
    Ok(claims)
}

/// Whether a token is within its lifetime at `now` (seconds), with the leeway either side.
pub fn check_times(exp: i64, iat: i64, nbf: Option<i64>, now: i64) -> Result<(), JwtError> {
    let live = exp.saturating_add(LEEWAY_SECONDS) > now
        && iat <= now.saturating_add(LEEWAY_SECONDS)
        && nbf.is_none_or(|nbf| nbf <= now.saturating_add(LEEWAY_SECONDS));
    if live { Ok(()) } else { Err(JwtError::Time) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(now: i64) -> AccessClaims {
        AccessClaims {
            token_type: ACCESS.into(),
            exp: now + 300,
            iat: now,
            nbf: Some(now),
            jti: "j".into(),
            user_id: ClaimUserId(7),
            iss: "https://ls.example".into(),
            sub: "7".into(),
            email: "ann@example.com".into(),
            username: "ann".into(),
            first_name: String::new(),
            last_name: String::new(),
            date_joined_us: 0,
            organization: None,
        }
    }

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn an_access_token_verifies_with_its_key_only() {
        let key = Key::generate_ed25519("k1").unwrap().key;
        let other = Key::generate_ed25519("k1").unwrap().key;
        let token = encode(&key, &access(1_000)).unwrap();
        assert!(looks_like_jwt(&token));
        let claims = verify_access(&token, |_| Some(&key), "https://ls.example", 1_000).unwrap();
        assert_eq!(claims.user_id, ClaimUserId(7));
        assert_eq!(
            verify_access(&token, |_| Some(&other), "https://ls.example", 1_000).unwrap_err(),
            JwtError::Signature
        );
        assert_eq!(
            verify_access(&token, |_| None, "https://ls.example", 1_000).unwrap_err(),
            JwtError::UnknownKey
        );
        assert_eq!(
            verify_access(&token, |_| Some(&key), "https://evil.example", 1_000).unwrap_err(),
            JwtError::Issuer
        );
    }

    #[test]
    fn times_are_checked_with_the_leeway() {
        let key = Key::generate_ed25519("k1").unwrap().key;
        let token = encode(&key, &access(1_000)).unwrap();
        let at = |now| verify_access(&token, |_| Some(&key), "https://ls.example", now);
        assert!(at(1_300 + LEEWAY_SECONDS - 1).is_ok());
        assert_eq!(at(1_300 + LEEWAY_SECONDS).unwrap_err(), JwtError::Time);
        assert!(at(1_000 - LEEWAY_SECONDS).is_ok());
        assert_eq!(at(1_000 - LEEWAY_SECONDS - 1).unwrap_err(), JwtError::Time);
    }

    #[test]
    fn alg_none_and_algorithm_confusion_are_refused() {
        let key = Key::generate_ed25519("k1").unwrap().key;
        let payload = b64(&serde_json::to_string(&access(1_000)).unwrap());
        let none = format!("{}.{payload}.", b64(r#"{"alg":"none","kid":"k1"}"#));
        assert!(verify_access(&none, |_| Some(&key), "https://ls.example", 1_000).is_err());
        // HS256 keyed with the public key, the classic confusion.
        let public = key.public_base64().unwrap();
        let hs = Key::hmac("k1", public.as_bytes(), true);
        let confused = encode(&hs, &access(1_000)).unwrap();
        assert_eq!(
            verify_access(&confused, |_| Some(&key), "https://ls.example", 1_000).unwrap_err(),
            JwtError::Algorithm
        );
    }

    #[test]
    fn a_token_without_kid_or_over_8_kib_is_refused() {
        let key = Key::hmac("k1", b"secret", true);
        let input = format!(
            "{}.{}",
            b64(r#"{"alg":"HS256"}"#),
            b64(&serde_json::to_string(&access(1_000)).unwrap())
        );
        let token = format!("{input}.{}", hs256_signature(b"secret", &input));
        assert_eq!(
            verify_access(&token, |_| Some(&key), "https://ls.example", 1_000).unwrap_err(),
            JwtError::KidMissing
        );
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(Parts::split(&long, true).unwrap_err(), JwtError::TooLong);
    }

    #[test]
    fn label_studio_user_ids_are_strings_or_numbers() {
        let claims: RefreshClaims = serde_json::from_str(
            r#"{"token_type":"refresh","exp":2,"iat":1,"jti":"a","user_id":"12"}"#,
        )
        .unwrap();
        assert_eq!(claims.user_id, ClaimUserId(12));
        assert_eq!(serde_json::to_string(&claims.user_id).unwrap(), "\"12\"");
        let number: RefreshClaims = serde_json::from_str(
            r#"{"token_type":"refresh","exp":2,"iat":1,"jti":"a","user_id":12}"#,
        )
        .unwrap();
        assert_eq!(number.user_id, ClaimUserId(12));
    }

    #[test]
    fn shapes_tell_jwts_from_other_tokens() {
        assert!(!looks_like_jwt(&"ab".repeat(32)));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a..c"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a.b+.c"));
        assert!(looks_like_jwt("a.b.c"));
        assert!(Parts::split("a.b", true).is_ok());
        assert!(Parts::split("a.b", false).is_err());
    }
}
