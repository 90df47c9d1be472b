//! Which gateways may name the client's address: the one rule both listeners (gRPC and HTTP)
//! use to find the address the throttle counts against.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

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

    /// The client's address: the peer, or the first hop of `forwarded_for` (an
    /// `x-forwarded-for` value) when the peer is a trusted gateway.
    pub fn client(&self, peer: Option<SocketAddr>, forwarded_for: Option<&str>) -> IpAddr {
        let peer = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |addr| {
            canonical(addr.ip())
        });
        if !self.contains(peer) {
            return peer;
        }
        forwarded_for
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
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_count_only_behind_trusted_gateways() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into(), "::1".into()]).unwrap();
        let forwarded = Some("203.0.113.7, 10.0.0.2");
        let gateway = Some("10.1.2.3:5000".parse().unwrap());
        let stranger = Some("198.51.100.1:5000".parse().unwrap());
        assert_eq!(
            trusted.client(gateway, forwarded),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            trusted.client(stranger, forwarded),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            trusted.client(Some("[::1]:5000".parse().unwrap()), forwarded),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            trusted.client(gateway, Some("not an address")),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        assert!(TrustedProxies::parse(&["nonsense".into()]).is_err());
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
    }
}
