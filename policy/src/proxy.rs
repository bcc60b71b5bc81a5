//! `egress.upstream_proxy`: an existing HTTP proxy (a corporate network's)
//! that the sidecar tunnels every upstream connection through with
//! `CONNECT host:port`.
//!
//! Only the route changes. Every decision stays on the sidecar's side: the
//! destination is allowed (or not) by [`crate::EgressPolicy::decide`], its
//! name is resolved and checked by the destination guard as without a proxy,
//! and the *name* (never a resolved address) goes into the CONNECT line. The
//! proxy's own address is the user's explicit choice, so it may be private
//! or the sidecar's gateway; [`check_proxy_address`] still refuses the
//! classes that can never be a proxy the user meant (loopback, metadata,
//! link-local, the sidecar's own addresses, …).

use crate::address::{classify, AddressClass, LocalNet};
use crate::host::normalize_host;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// `http://host:port` of an upstream proxy: a scheme, a host and a port,
/// nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProxyUrl {
    /// Normalised (IPv6 without brackets).
    host: String,
    port: u16,
}

/// Why an `egress.upstream_proxy` URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyUrlError {
    #[error("`{0}`: https:// proxies are not supported yet; write the proxy's plain http://host:port (the tunnelled traffic is TLS end to end either way)")]
    Https(String),
    #[error("`{0}`: write the proxy as http://host:port (e.g. `http://proxy.corp.example:3128`)")]
    Scheme(String),
    #[error("`{0}`: put the proxy's credentials in an environment variable named by egress.upstream_proxy_auth_env, not in the URL")]
    Credentials(String),
    #[error("`{0}`: a proxy URL has no path, query or fragment; write http://host:port")]
    Path(String),
    #[error("`{0}`: the port is required (e.g. `:3128`) and must be a number from 1 to 65535")]
    Port(String),
    #[error("`{url}`: {why}")]
    Host { url: String, why: String },
}

impl ProxyUrl {
    /// Parses `http://host:port` (an IPv6 host in brackets; a trailing `/` is
    /// accepted).
    pub fn parse(url: &str) -> Result<Self, ProxyUrlError> {
        let url = url.trim();
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err(ProxyUrlError::Https(url.into()));
        }
        if !lower.starts_with("http://") {
            return Err(ProxyUrlError::Scheme(url.into()));
        }
        let rest = &url["http://".len()..];
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('@') {
            return Err(ProxyUrlError::Credentials(url.into()));
        }
        if authority.contains(['/', '?', '#']) {
            return Err(ProxyUrlError::Path(url.into()));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => (h, p),
            _ => return Err(ProxyUrlError::Port(url.into())),
        };
        let port = match port.parse::<u16>() {
            Ok(n) if n > 0 && port.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(ProxyUrlError::Port(url.into())),
        };
        if host.contains(':') && !host.starts_with('[') {
            return Err(ProxyUrlError::Port(url.into()));
        }
        let host = normalize_host(host).map_err(|e| ProxyUrlError::Host {
            url: url.into(),
            why: e.to_string(),
        })?;
        Ok(ProxyUrl { host, port })
    }

    /// The normalised host (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` as a connection target (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority())
    }
}

impl TryFrom<String> for ProxyUrl {
    type Error = ProxyUrlError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ProxyUrl::parse(&s)
    }
}

impl From<ProxyUrl> for String {
    fn from(u: ProxyUrl) -> String {
        u.to_string()
    }
}

/// The upstream proxy and where its credential comes from. The credential
/// itself is never part of the policy: the sidecar's secrets file holds it
/// under `auth_from_env`, as `user:password`, and the sidecar sends it as
/// `Proxy-Authorization: Basic …` on each CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamProxy {
    pub url: ProxyUrl,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_from_env: Option<String>,
}

/// The guard for the proxy's own address: may the sidecar connect to `ip`,
/// which the proxy's host resolved to? Private, CGNAT, unique-local and the
/// sidecar's gateway are accepted (the user named this proxy); every other
/// non-public class is refused. The error is one sentence.
pub fn check_proxy_address(proxy: &ProxyUrl, ip: IpAddr, local: &LocalNet) -> Result<(), String> {
    let ip = ip.to_canonical();
    if local.gateways.iter().any(|g| g.to_canonical() == ip) {
        return Ok(());
    }
    let class = if local.own.iter().any(|o| o.to_canonical() == ip) {
        AddressClass::Sidecar
    } else {
        match classify(ip) {
            None => return Ok(()),
            Some(c) if c.embedded.is_none() && c.class.relaxable() => return Ok(()),
            Some(c) => c.class,
        }
    };
    Err(format!(
        "the upstream proxy {proxy} is at {ip}, {class} address; the sidecar never connects there (name a proxy on the network instead)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_and_port_only() {
        let u = ProxyUrl::parse("http://Proxy.Corp.example:3128/").unwrap();
        assert_eq!((u.host(), u.port()), ("proxy.corp.example", 3128));
        assert_eq!(u.to_string(), "http://proxy.corp.example:3128");
        let v6 = ProxyUrl::parse("http://[fd00::3]:8080").unwrap();
        assert_eq!(v6.host(), "fd00::3");
        assert_eq!(v6.authority(), "[fd00::3]:8080");
        let v4 = ProxyUrl::parse("http://10.0.0.7:3128").unwrap();
        assert_eq!(v4.authority(), "10.0.0.7:3128");
    }

    #[test]
    fn refuses_what_is_not_host_and_port() {
        let err = |s: &str| ProxyUrl::parse(s).unwrap_err();
        assert!(matches!(
            err("https://p.example:443"),
            ProxyUrlError::Https(_)
        ));
        assert!(matches!(err("p.example:3128"), ProxyUrlError::Scheme(_)));
        assert!(matches!(
            err("socks5://p.example:1080"),
            ProxyUrlError::Scheme(_)
        ));
        assert!(matches!(
            err("http://u:pw@p.example:3128"),
            ProxyUrlError::Credentials(_)
        ));
        assert!(matches!(
            err("http://p.example:3128/x"),
            ProxyUrlError::Path(_)
        ));
        assert!(matches!(
            err("http://p.example:3128?a"),
            ProxyUrlError::Path(_)
        ));
        for bad in [
            "http://p.example",
            "http://p.example:",
            "http://p.example:0",
            "http://p.example:99999",
            "http://p.example:+80",
            "http://fd00::3",
            "http://:3128",
        ] {
            assert!(matches!(err(bad), ProxyUrlError::Port(_)), "{bad}");
        }
        assert!(matches!(
            err("http://bad_name!:3128"),
            ProxyUrlError::Host { .. }
        ));
        assert!(err("https://p.example:443")
            .to_string()
            .contains("not supported yet"));
    }

    #[test]
    fn the_proxy_may_be_private_but_never_loopback_or_metadata() {
        let url = ProxyUrl::parse("http://proxy.corp:3128").unwrap();
        let local = LocalNet {
            gateways: vec!["172.18.0.1".parse().unwrap()],
            own: vec!["172.18.0.2".parse().unwrap()],
        };
        for ok in [
            "10.1.2.3",
            "192.168.1.5",
            "172.18.0.1",
            "fd00::1",
            "8.8.8.8",
        ] {
            assert!(
                check_proxy_address(&url, ok.parse().unwrap(), &local).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "127.0.0.1",
            "::1",
            "169.254.169.254",
            "0.0.0.0",
            "172.18.0.2",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            let e = check_proxy_address(&url, bad.parse().unwrap(), &local).unwrap_err();
            assert!(e.contains("never connects there"), "{bad}: {e}");
        }
    }

    #[test]
    fn round_trips_through_json() {
        let p = UpstreamProxy {
            url: ProxyUrl::parse("http://p.example:3128").unwrap(),
            auth_from_env: Some("CORP_PROXY_AUTH".into()),
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"url":"http://p.example:3128","auth_from_env":"CORP_PROXY_AUTH"}"#
        );
        assert_eq!(serde_json::from_str::<UpstreamProxy>(&json).unwrap(), p);
        assert!(serde_json::from_str::<UpstreamProxy>(r#"{"url":"https://p:1"}"#).is_err());
    }
}
