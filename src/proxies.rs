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

    /// The client's address. Gateways append the address they received a request from to
    /// `x-forwarded-for`, so only the entries on the right were written by someone we trust:
    /// starting from the peer, the walk goes right to left while the hop is a trusted gateway,
    /// and the first untrusted hop is the client. When every hop is trusted the leftmost one is;
    /// an entry that is no address stops the walk at the last trusted hop. Several
    /// `x-forwarded-for` headers count as one list, in order.
    ///
    /// `forwarded_for` holds the values of the `x-forwarded-for` headers in order, `None` for
    /// one that is not text.
    pub fn client<'a>(
        &self,
        peer: Option<SocketAddr>,
        forwarded_for: impl IntoIterator<Item = Option<&'a str>>,
    ) -> IpAddr {
        let mut client = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |addr| {
            canonical(addr.ip())
        });
        if !self.contains(client) {
            return client;
        }
        let hops: Vec<Option<IpAddr>> = forwarded_for
            .into_iter()
            .flat_map(|value| match value {
                Some(text) => text.split(',').map(parse_hop).collect(),
                None => vec![None],
            })
            .collect();
        for hop in hops.into_iter().rev() {
            let Some(hop) = hop else {
                break;
            };
            client = canonical(hop);
            if !self.contains(client) {
                break;
            }
        }
        client
    }
}

/// One `x-forwarded-for` entry: an address, bracketed IPv6, or either with a port (some
/// gateways add one). Anything else (`unknown`, an empty entry, garbage) is `None`.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inner| inner.parse::<std::net::Ipv6Addr>().ok())
                .map(IpAddr::V6)
        })
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

    fn trusted() -> TrustedProxies {
        TrustedProxies::parse(&["10.0.0.0/8".into(), "::1".into(), "2001:db8:ff::/48".into()])
            .unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The client as seen from `peer` with these `x-forwarded-for` headers.
    fn client(peer: &str, headers: &[&str]) -> IpAddr {
        trusted().client(
            Some(peer.parse().unwrap()),
            headers.iter().map(|header| Some(*header)),
        )
    }

    const GATEWAY: &str = "10.1.2.3:5000";

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        assert_eq!(
            client("198.51.100.1:5000", &["203.0.113.7"]),
            ip("198.51.100.1")
        );
        assert_eq!(client("198.51.100.1:5000", &[]), ip("198.51.100.1"));
    }

    #[test]
    fn behind_a_gateway_the_rightmost_untrusted_hop_is_the_client() {
        assert_eq!(client(GATEWAY, &["203.0.113.7"]), ip("203.0.113.7"));
        assert_eq!(
            client(GATEWAY, &["203.0.113.7, 10.0.0.2"]),
            ip("203.0.113.7")
        );
        assert_eq!(client(GATEWAY, &[]), ip("10.1.2.3"));
    }

    #[test]
    fn forged_first_hops_are_never_believed() {
        for forged in ["192.0.2.1", "192.0.2.99, 192.0.2.98", "10.9.9.9", "::1"] {
            let header = format!("{forged}, 198.51.100.7");
            assert_eq!(client(GATEWAY, &[&header]), ip("198.51.100.7"), "{forged}");
        }
    }

    #[test]
    fn chains_of_trusted_gateways_are_skipped() {
        assert_eq!(
            client(GATEWAY, &["192.0.2.1, 198.51.100.7, 10.0.0.5, 10.0.0.6"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            client("[::1]:5000", &["198.51.100.7, 2001:db8:ff::1"]),
            ip("198.51.100.7")
        );
        // Every hop trusted: the leftmost is as close to the client as anyone knows.
        assert_eq!(client(GATEWAY, &["10.0.0.1, 10.0.0.2"]), ip("10.0.0.1"));
    }

    #[test]
    fn several_headers_form_one_list_in_order() {
        assert_eq!(
            client(GATEWAY, &["192.0.2.1", "198.51.100.7, 10.0.0.5"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            client(GATEWAY, &["198.51.100.7, 10.0.0.5", "10.0.0.6"]),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn ipv6_hops_and_mapped_ipv4_are_read() {
        assert_eq!(client(GATEWAY, &["2001:db8:1:2::7"]), ip("2001:db8:1:2::7"));
        assert_eq!(
            client(GATEWAY, &["[2001:db8:1:2::7]:443"]),
            ip("2001:db8:1:2::7")
        );
        assert_eq!(
            client(GATEWAY, &["[2001:db8:1:2::7]"]),
            ip("2001:db8:1:2::7")
        );
        assert_eq!(client(GATEWAY, &["198.51.100.7:8080"]), ip("198.51.100.7"));
        assert_eq!(
            client(GATEWAY, &["::ffff:198.51.100.7"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            client("[::ffff:10.0.0.1]:5000", &["198.51.100.7"]),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_trusted_hop() {
        assert_eq!(client(GATEWAY, &["unknown"]), ip("10.1.2.3"));
        assert_eq!(
            client(GATEWAY, &["198.51.100.7, garbage, 10.0.0.5"]),
            ip("10.0.0.5")
        );
        assert_eq!(client(GATEWAY, &["198.51.100.7,,10.0.0.5"]), ip("10.0.0.5"));
        assert_eq!(
            client(GATEWAY, &["198.51.100.7, fe80::1%eth0"]),
            ip("10.1.2.3")
        );
        // Garbage left of the client doesn't matter: the walk stopped before it.
        assert_eq!(
            client(GATEWAY, &["garbage, 198.51.100.7"]),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn trusted_proxies_parse_ips_and_blocks() {
        assert!(TrustedProxies::parse(&["nonsense".into()]).is_err());
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["2001:db8::/129".into()]).is_err());
        assert!(TrustedProxies::parse(&[" 10.0.0.0/8 ".into(), "::1".into()]).is_ok());
    }
}
