//! Encrypted DNS: DNS-over-HTTPS, DNS-over-TLS and DNS-over-QUIC resolvers.
//!
//! Inside a bottle every name goes through the sidecar's DNS, which answers
//! only allowed names. A public encrypted resolver would undo that: through
//! it the agent could look up any name (and tunnel data in the names it
//! asks for) on a host a broad wildcard happens to allow (`*.google`,
//! `*.cloudflare-dns.com`). So the well-known resolver endpoints are refused
//! by default, with their own rule (`encrypted-dns`), even when a pattern
//! covers them; only an `egress.allow` entry naming the endpoint *exactly*
//! opens one, on its port. Requests that carry DNS messages by media type
//! (`application/dns-message`, `application/dns-json`) are refused on any
//! host under the same rule and the same exception, which catches
//! well-behaved clients of resolvers missing from the list; a client that
//! sends neither header to an unlisted resolver is not recognised, so this
//! is a default that narrows the common paths, not a guarantee.
//!
//! The list is the endpoints browsers, operating systems and common tools
//! ship as presets; `ENCRYPTED_DNS_SUFFIXES` covers the providers whose
//! per-user endpoints live under one domain.

use crate::egress::EgressPolicy;
use crate::host::{normalize_host, HostPattern};
use crate::{Decision, Verdict};

/// Well-known encrypted DNS endpoints, refused unless allowed exactly.
pub const ENCRYPTED_DNS_HOSTS: &[&str] = &[
    "dns.google",
    "dns.google.com",
    "8888.google",
    "cloudflare-dns.com",
    "one.one.one.one",
    "1dot1dot1dot1.cloudflare-dns.com",
    "dns.quad9.net",
    "dns9.quad9.net",
    "dns10.quad9.net",
    "dns11.quad9.net",
    "doh.opendns.com",
    "doh.familyshield.opendns.com",
    "dns.nextdns.io",
    "doh.cleanbrowsing.org",
    "dns.adguard.com",
    "dns.adguard-dns.com",
    "unfiltered.adguard-dns.com",
    "family.adguard-dns.com",
    "doh.mullvad.net",
    "dns.mullvad.net",
    "doh.dns.sb",
    "dns.alidns.com",
    "doh.pub",
    "dns.controld.com",
    "freedns.controld.com",
    "doh.libredns.gr",
    "dns.switch.ch",
    "ordns.he.net",
    "doh.xfinity.com",
    "doh.applied-privacy.net",
    "dns0.eu",
    "doh.sandbox.opendns.com",
    "resolver1.dns.watch",
    "dns.digitale-gesellschaft.ch",
    "doh.dns.apple.com",
];

/// Domains every name under which is an encrypted DNS endpoint.
pub const ENCRYPTED_DNS_SUFFIXES: &[&str] = &[
    "cloudflare-dns.com",
    "dns.nextdns.io",
    "dns.adguard-dns.com",
    "dns.controld.com",
    "quad9.net",
    "dns.google",
];

/// Media types that carry DNS messages over HTTP (RFC 8484 and the JSON
/// API several resolvers offer).
pub const DNS_MEDIA_TYPES: &[&str] = &["application/dns-message", "application/dns-json"];

/// Is `host` (normalised) a well-known encrypted DNS endpoint?
pub fn is_encrypted_dns_host(host: &str) -> bool {
    ENCRYPTED_DNS_HOSTS.contains(&host)
        || ENCRYPTED_DNS_SUFFIXES.iter().any(|s| {
            host.len() > s.len() + 1
                && host.ends_with(s)
                && host[..host.len() - s.len()].ends_with('.')
        })
}

/// Does a `Content-Type` or `Accept` value name a DNS media type?
pub fn is_dns_media_type(value: &str) -> bool {
    value.split(',').any(|item| {
        let media = item.split(';').next().unwrap_or("").trim();
        DNS_MEDIA_TYPES
            .iter()
            .any(|t| media.eq_ignore_ascii_case(t))
    })
}

impl EgressPolicy {
    /// Does an `egress.allow` entry name `host` (normalised) exactly (an
    /// exact name or IP) on `port` (`None`: on any port)? Only such an entry
    /// opens an encrypted DNS endpoint.
    pub fn allows_exactly(&self, host: &str, port: Option<u16>) -> bool {
        self.allow.iter().any(|r| {
            let exact = match &r.host {
                HostPattern::Exact(_) | HostPattern::Ip(_) => r.host.matches(host),
                HostPattern::Suffix(_) => false,
            };
            exact && port.is_none_or(|p| r.covers(host, p))
        })
    }

    /// The refusal for a well-known encrypted DNS endpoint at `host:port`
    /// that only a pattern (not an exact entry) allows; `None` otherwise.
    pub fn encrypted_dns_endpoint(&self, host: &str, port: u16) -> Option<Decision> {
        let host = normalize_host(host).ok()?;
        (is_encrypted_dns_host(&host) && !self.allows_exactly(&host, Some(port))).then(|| {
            refusal(format!(
                "{host} is a public encrypted DNS (DoH/DoT) resolver; the bottle's DNS answers only allowed names, and an encrypted resolver would let the agent resolve any name and tunnel data through the names it asks for"
            ))
        })
    }

    /// The refusal for a request that carries DNS messages (`what` names
    /// the header, e.g. `content-type: application/dns-message`) to a host
    /// not allowed exactly; `None` when it may go.
    pub fn encrypted_dns_request(&self, host: &str, port: u16, what: &str) -> Option<Decision> {
        let host = normalize_host(host).ok()?;
        (!self.allows_exactly(&host, Some(port))).then(|| {
            refusal(format!(
                "the request carries DNS messages ({what}): DNS-over-HTTPS to {host} would let the agent resolve any name past the bottle's DNS"
            ))
        })
    }
}

fn refusal(reason: String) -> Decision {
    Decision {
        verdict: Verdict::Deny,
        rule: "encrypted-dns".into(),
        reason,
    }
}

/// The hint every `encrypted-dns` refusal carries.
pub const ENCRYPTED_DNS_HINT: &str = "names resolve through the bottle's own DNS; if you really need this resolver, ask the user to add an egress.allow entry naming it exactly (a wildcard does not open it)";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::AllowRule;

    fn policy(allow: &[&str]) -> EgressPolicy {
        EgressPolicy {
            allow: allow.iter().map(|a| AllowRule::parse(a).unwrap()).collect(),
            ..EgressPolicy::default()
        }
    }

    #[test]
    fn resolvers_under_a_wildcard_are_refused_and_open_only_exactly() {
        let p = policy(&[
            "*.nextdns.io",
            "*.example.google",
            "*.cloudflare-dns.com",
            "cloudflare-dns.com",
            "api.test",
        ]);
        let d = p.encrypted_dns_endpoint("DNS.Google.", 443).unwrap();
        assert_eq!(d.rule, "encrypted-dns");
        assert!(d.reason.contains("dns.google is a public encrypted DNS"));
        assert!(p
            .encrypted_dns_endpoint("mozilla.cloudflare-dns.com", 443)
            .is_some());
        assert!(p
            .encrypted_dns_endpoint("abc123.dns.nextdns.io", 443)
            .is_some());
        assert!(
            p.encrypted_dns_endpoint("cloudflare-dns.com", 443)
                .is_none(),
            "exact entry"
        );
        assert!(p.encrypted_dns_endpoint("api.test", 443).is_none());
        // An exact entry opens its own port only.
        let p = policy(&["*.nextdns.io", "dns.nextdns.io:853"]);
        assert!(p.encrypted_dns_endpoint("dns.nextdns.io", 853).is_none());
        assert!(p.encrypted_dns_endpoint("dns.nextdns.io", 443).is_some());
        assert!(p
            .encrypted_dns_endpoint("www.example.google", 443)
            .is_none());
        assert!(p.encrypted_dns_endpoint("notquad9.net", 443).is_none());
    }

    #[test]
    fn dns_media_types_are_recognised() {
        assert!(is_dns_media_type("application/dns-message"));
        assert!(is_dns_media_type("text/html, Application/DNS-JSON;q=0.9"));
        assert!(!is_dns_media_type("application/json"));
        let p = policy(&["*.example.com", "doh.example.org"]);
        assert!(p
            .encrypted_dns_request("x.example.com", 443, "accept: application/dns-message")
            .is_some());
        assert!(p
            .encrypted_dns_request("doh.example.org", 443, "accept: application/dns-message")
            .is_none());
    }
}
