//! `bottle-sidecar netinfo`: the interfaces of the current network namespace
//! and their addresses, as JSON.
//!
//! `bottle probe` runs this in a host-network container to measure (not
//! assume) whether an internal bridge kept an IPv4 address on the host. An
//! interface with no address is still listed (with `"addrs": []`) on Linux,
//! so "no address" and "no such interface" can be told apart.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Every interface, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetInfo {
    pub interfaces: Vec<InterfaceInfo>,
}

/// One interface and its addresses as `ip/prefix`, IPv4 first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterfaceInfo {
    pub name: String,
    pub addrs: Vec<String>,
}

/// Why the interfaces could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum NetInfoError {
    #[error("cannot list network interface addresses: {0}")]
    List(#[source] std::io::Error),
    #[error("{0}")]
    NoAddress(String),
}

/// Where Linux lists every interface, addressed or not.
const SYS_CLASS_NET: &str = "/sys/class/net";

/// Lists the current namespace's interfaces.
pub fn collect() -> Result<NetInfo, NetInfoError> {
    let mut by_name: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for iface in if_addrs::get_if_addrs().map_err(NetInfoError::List)? {
        let entry = by_name.entry(iface.name.clone()).or_default();
        match &iface.addr {
            if_addrs::IfAddr::V4(a) => entry.0.push(format!("{}/{}", a.ip, a.prefixlen)),
            if_addrs::IfAddr::V6(a) => entry.1.push(format!("{}/{}", a.ip, a.prefixlen)),
        }
    }
    // Interfaces without any address do not appear above.
    if let Ok(dir) = std::fs::read_dir(Path::new(SYS_CLASS_NET)) {
        for entry in dir.flatten() {
            if let Some(name) = entry.file_name().to_str() {
                by_name.entry(name.to_string()).or_default();
            }
        }
    }
    let interfaces = by_name
        .into_iter()
        .map(|(name, (mut v4, mut v6))| {
            v4.dedup();
            v6.dedup();
            v4.extend(v6);
            InterfaceInfo { name, addrs: v4 }
        })
        .collect();
    Ok(NetInfo { interfaces })
}

/// This namespace's own IPv4 address inside `cidr` (`a.b.c.d/len`).
///
/// ```
/// // 127.0.0.1 is on every host's loopback.
/// assert_eq!(
///     bottle_sidecar::netinfo::own_address_in("127.0.0.0/8").unwrap(),
///     std::net::Ipv4Addr::LOCALHOST
/// );
/// assert!(bottle_sidecar::netinfo::own_address_in("192.0.2.128/25").is_err());
/// assert!(bottle_sidecar::netinfo::own_address_in("nonsense").is_err());
/// ```
pub fn own_address_in(cidr: &str) -> Result<std::net::Ipv4Addr, NetInfoError> {
    let (base, len) = cidr
        .split_once('/')
        .and_then(|(a, l)| {
            Some((
                a.parse::<std::net::Ipv4Addr>().ok()?,
                l.parse::<u32>().ok()?,
            ))
        })
        .filter(|(_, l)| *l <= 32)
        .ok_or_else(|| NetInfoError::NoAddress(format!("`{cidr}` is not an IPv4 subnet")))?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    for iface in if_addrs::get_if_addrs().map_err(NetInfoError::List)? {
        if let if_addrs::IfAddr::V4(a) = &iface.addr {
            if u32::from(a.ip) & mask == u32::from(base) & mask {
                return Ok(a.ip);
            }
        }
    }
    Err(NetInfoError::NoAddress(format!(
        "no interface has an address in {cidr}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn addresses_are_ip_slash_prefix() {
        let info = collect().unwrap();
        for iface in &info.interfaces {
            assert!(!iface.name.is_empty());
            for a in &iface.addrs {
                let (ip, prefix) = a.split_once('/').unwrap();
                let ip: IpAddr = ip.parse().unwrap();
                let prefix: u8 = prefix.parse().unwrap();
                assert!(prefix <= if ip.is_ipv4() { 32 } else { 128 }, "{a}");
            }
        }
        let json = serde_json::to_value(&info).unwrap();
        assert!(json["interfaces"].is_array());
    }
}
