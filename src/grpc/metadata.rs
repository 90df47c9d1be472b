//! Caller credentials and deadlines from request metadata.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

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

/// Addresses of gateways whose `x-forwarded-for` is believed: single IPs or CIDR blocks.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    pub fn parse(entries: &[String]) -> anyhow::Result<Self> {
        entries
            .iter()
            .map(|entry| {
                let (ip, prefix) = match entry.trim().split_once('/') {
                    Some((ip, prefix)) => (ip, Some(prefix)),
                    None => (entry.trim(), None),
                };
                let ip: IpAddr = ip
                    .parse()
                    .map_err(|_| anyhow::anyhow!("trusted proxy {entry:?} is not an IP or CIDR"))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let prefix =
                    match prefix {
                        Some(prefix) => prefix
                            .parse::<u8>()
                            .ok()
                            .filter(|p| *p <= max)
                            .ok_or_else(|| {
                                anyhow::anyhow!("trusted proxy {entry:?} has a bad prefix")
                            })?,
                        None => max,
                    };
                Ok((ip, prefix))
            })
            .collect::<anyhow::Result<_>>()
            .map(Self)
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0
            .iter()
            .any(|(network, prefix)| match (canonical(*network), ip) {
                (IpAddr::V4(network), IpAddr::V4(ip)) => {
                    let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
                    u32::from(network) & mask == u32::from(ip) & mask
                }
                (IpAddr::V6(network), IpAddr::V6(ip)) => {
                    let mask = u128::MAX.checked_shl(128 - u32::from(*prefix)).unwrap_or(0);
                    u128::from(network) & mask == u128::from(ip) & mask
                }
                _ => false,
            })
    }

    /// The client's address: the peer, or the first hop of `x-forwarded-for` when the peer is
    /// a trusted gateway.
    pub fn client(&self, peer: Option<SocketAddr>, metadata: &MetadataMap) -> IpAddr {
        let peer = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |addr| {
            canonical(addr.ip())
        });
        if !self.contains(peer) {
            return peer;
        }
        metadata
            .get("x-forwarded-for")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(',').next())
            .and_then(|first| first.trim().parse::<IpAddr>().ok())
            .map_or(peer, canonical)
    }
}

/// IPv4 addresses mapped into IPv6 count as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod proxy_tests {
    use super::*;

    #[test]
    fn forwarded_addresses_count_only_behind_trusted_gateways() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into(), "::1".into()]).unwrap();
        let mut metadata = MetadataMap::new();
        metadata.insert("x-forwarded-for", "203.0.113.7, 10.0.0.2".parse().unwrap());
        let gateway = Some("10.1.2.3:5000".parse().unwrap());
        let stranger = Some("198.51.100.1:5000".parse().unwrap());
        assert_eq!(
            trusted.client(gateway, &metadata),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            trusted.client(stranger, &metadata),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            trusted.client(Some("[::1]:5000".parse().unwrap()), &metadata),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert!(TrustedProxies::parse(&["nonsense".into()]).is_err());
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
    }
}
