//! Caller credentials and deadlines from request metadata.

use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::MetadataMap;

use crate::accounts::{AccountsError, Credentials};

/// Reads `authorization: Token <api token>`, `authorization: Bearer <session or access token>` (keywords
/// case-insensitive) or `x-api-key: <api token>`, as the gateway checks read HTTP headers.
/// `Ok(None)` when the caller sent none.
pub fn credentials(metadata: &MetadataMap) -> Result<Option<Credentials>, AccountsError> {
    crate::authz::credentials::from_headers(metadata)
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
