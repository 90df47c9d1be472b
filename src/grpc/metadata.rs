//! Caller credentials and deadlines from request metadata.

use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::MetadataMap;

use crate::accounts::{AccountsError, Credentials};

/// Longest token worth looking up; longer ones are refused without touching the database.
const MAX_TOKEN_LEN: usize = 512;

/// Reads `authorization: Token <api token>`, `authorization: Bearer <session token>` (keywords
/// case-insensitive) or `x-api-key: <api token>`. `Ok(None)` when the caller sent none.
pub fn credentials(metadata: &MetadataMap) -> Result<Option<Credentials>, AccountsError> {
    if let Some(value) = metadata.get("authorization") {
        let value = value.to_str().map_err(|_| {
            AccountsError::CredentialsMalformed("authorization metadata must be ASCII")
        })?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(
            AccountsError::CredentialsMalformed(
                "authorization metadata must be `Token <api token>` or `Bearer <session token>`",
            ),
        )?;
        let token = checked_token(token.trim())?;
        return if scheme.eq_ignore_ascii_case("token") {
            Ok(Some(Credentials::ApiToken(token)))
        } else if scheme.eq_ignore_ascii_case("bearer") {
            Ok(Some(Credentials::Session(token)))
        } else {
            Err(AccountsError::CredentialsMalformed(
                "authorization scheme must be Token or Bearer",
            ))
        };
    }
    if let Some(value) = metadata.get("x-api-key") {
        let token = value
            .to_str()
            .map_err(|_| AccountsError::CredentialsMalformed("x-api-key metadata must be ASCII"))?;
        return Ok(Some(Credentials::ApiToken(checked_token(token.trim())?)));
    }
    Ok(None)
}

fn checked_token(token: &str) -> Result<String, AccountsError> {
    if token.is_empty() {
        return Err(AccountsError::CredentialsMalformed(
            "the credentials carry an empty token",
        ));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(AccountsError::TokenInvalid);
    }
    Ok(token.to_owned())
}

/// The caller's deadline from the `grpc-timeout` header, if it sent one.
pub fn deadline(metadata: &MetadataMap) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Instant::now().checked_add(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(key: &'static str, value: &str) -> MetadataMap {
        let mut map = MetadataMap::new();
        map.insert(key, value.parse().unwrap());
        map
    }

    #[test]
    fn authorization_keywords_are_case_insensitive() {
        for value in ["Token abc123", "token abc123", "TOKEN  abc123"] {
            assert!(matches!(
                credentials(&with("authorization", value)),
                Ok(Some(Credentials::ApiToken(t))) if t == "abc123"
            ));
        }
        assert!(matches!(
            credentials(&with("authorization", "bearer s3ss")),
            Ok(Some(Credentials::Session(t))) if t == "s3ss"
        ));
        assert!(matches!(
            credentials(&with("x-api-key", "abc123")),
            Ok(Some(Credentials::ApiToken(t))) if t == "abc123"
        ));
    }

    #[test]
    fn malformed_authorization_is_refused_not_ignored() {
        for value in ["Basic dXNlcg==", "Token", "Token ", "abc123"] {
            assert!(
                credentials(&with("authorization", value)).is_err(),
                "{value}"
            );
        }
        assert!(matches!(credentials(&MetadataMap::new()), Ok(None)));
    }

    #[test]
    fn grpc_timeouts_become_deadlines() {
        assert!(deadline(&with("grpc-timeout", "5S")).is_some());
        assert!(deadline(&with("grpc-timeout", "100m")).is_some());
        assert!(deadline(&with("grpc-timeout", "x")).is_none());
        assert!(deadline(&MetadataMap::new()).is_none());
    }
}
