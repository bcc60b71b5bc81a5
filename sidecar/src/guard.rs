//! What the destination guard needs from the machine: name resolution and
//! the sidecar's surroundings (its route gateways and its own addresses).
//!
//! The rules themselves are pure and live in `bottle_policy::address`; this
//! module only gathers their inputs. Resolution happens once per connection
//! and the addresses it returns are the ones checked and connected to; there
//! is no second lookup anywhere.

use bottle_policy::LocalNet;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// How long name resolution may take before the request fails.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where names are resolved.
#[derive(Debug, Clone, Default)]
pub enum Resolver {
    /// The system resolver (getaddrinfo): in a bottle, the runtime's DNS on
    /// the egress network.
    #[default]
    System,
    /// A fixed table, for tests: a name not in it does not resolve.
    Fixed(Arc<HashMap<String, Vec<IpAddr>>>),
}

/// Why a name did not resolve.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot resolve {host}: {source}")]
    Lookup {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("resolving {host} took longer than {}s", RESOLVE_TIMEOUT.as_secs())]
    Timeout { host: String },
    #[error("{host} resolved to no addresses")]
    NoAddresses { host: String },
}

impl Resolver {
    /// A fixed table from `(name, addresses)` pairs.
    pub fn fixed<'a>(entries: impl IntoIterator<Item = (&'a str, Vec<IpAddr>)>) -> Self {
        Resolver::Fixed(Arc::new(
            entries
                .into_iter()
                .map(|(n, a)| (n.to_string(), a))
                .collect(),
        ))
    }

    /// The addresses of `host` (normalised; an IP literal is its own answer),
    /// with `port`, in resolver order.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let addrs: Vec<SocketAddr> = match self {
            Resolver::Fixed(table) => table
                .get(host)
                .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
                .unwrap_or_default(),
            Resolver::System => {
                let lookup = tokio::net::lookup_host((host, port));
                tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
                    .await
                    .map_err(|_| ResolveError::Timeout { host: host.into() })?
                    .map_err(|source| ResolveError::Lookup {
                        host: host.into(),
                        source,
                    })?
                    .collect()
            }
        };
        if addrs.is_empty() {
            return Err(ResolveError::NoAddresses { host: host.into() });
        }
        Ok(addrs)
    }
}

/// Where [`LocalNet`] comes from.
#[derive(Debug, Clone, Default)]
pub enum LocalNetSource {
    /// Read `/proc/net/route`, `/proc/net/ipv6_route` and the interfaces
    /// (refreshed by the reload loop).
    #[default]
    System,
    /// Given, for tests.
    Fixed(LocalNet),
}

impl LocalNetSource {
    pub fn read(&self) -> LocalNet {
        match self {
            LocalNetSource::Fixed(net) => net.clone(),
            LocalNetSource::System => LocalNet {
                gateways: system_gateways(),
                own: own_addresses(),
            },
        }
    }
}

/// The gateways of this namespace's routes (IPv4 and IPv6). Unreadable files
/// give none: the other guard classes still apply.
pub fn system_gateways() -> Vec<IpAddr> {
    let mut out = std::fs::read_to_string("/proc/net/route")
        .map(|t| parse_route_v4(&t))
        .unwrap_or_default();
    out.extend(
        std::fs::read_to_string("/proc/net/ipv6_route")
            .map(|t| parse_route_v6(&t))
            .unwrap_or_default(),
    );
    out.sort();
    out.dedup();
    out
}

/// Every address on this namespace's interfaces.
pub fn own_addresses() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|ifs| ifs.iter().map(|i| i.ip()).collect())
        .unwrap_or_default()
}

/// Gateways in `/proc/net/route` text: the `Gateway` column (hex, host byte
/// order, little-endian on every platform the sidecar ships for) of each
/// route with the `RTF_GATEWAY` flag.
pub fn parse_route_v4(text: &str) -> Vec<IpAddr> {
    const RTF_GATEWAY: u32 = 0x2;
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let gateway = u32::from_str_radix(cols.get(2)?, 16).ok()?;
            let flags = u32::from_str_radix(cols.get(3)?, 16).ok()?;
            (flags & RTF_GATEWAY != 0 && gateway != 0)
                .then(|| IpAddr::V4(Ipv4Addr::from(gateway.to_le_bytes())))
        })
        .collect()
}

/// Next hops in `/proc/net/ipv6_route` text (column 5, 32 hex digits).
pub fn parse_route_v6(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let hop = line.split_whitespace().nth(4)?;
            let bits = u128::from_str_radix(hop, 16).ok()?;
            (hop.len() == 32 && bits != 0).then(|| IpAddr::V6(Ipv6Addr::from(bits)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_gateways_from_route_tables() {
        let v4 =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t00000000\t010012AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                  eth0\t000012AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(
            parse_route_v4(v4),
            vec!["172.18.0.1".parse::<IpAddr>().unwrap()]
        );
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n\
                  fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n";
        assert_eq!(
            parse_route_v6(v6),
            vec!["fe80::1".parse::<IpAddr>().unwrap()]
        );
        assert!(parse_route_v4("garbage\nmore garbage").is_empty());
    }

    #[tokio::test]
    async fn fixed_resolver_answers_only_its_table() {
        let r = Resolver::fixed([("origin.test", vec!["127.0.0.1".parse().unwrap()])]);
        let a = r.resolve("origin.test", 8443).await.unwrap();
        assert_eq!(a, vec!["127.0.0.1:8443".parse().unwrap()]);
        assert!(matches!(
            r.resolve("other.test", 1).await,
            Err(ResolveError::NoAddresses { .. })
        ));
        let ip = r.resolve("fd00::1", 80).await.unwrap();
        assert_eq!(ip, vec!["[fd00::1]:80".parse().unwrap()]);
    }
}
