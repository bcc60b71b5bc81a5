//! Egress rules and the decision the sidecar takes for each destination.
//!
//! The decision is a pure function of the policy and the requested
//! `(host, port)`: no rule, no connection. The name of the rule that allowed a
//! connection (or `default-deny`) travels with the decision so the audit log and
//! the 403 body can say why.

use crate::fields::{AuthScheme, CredentialHeader, PathPrefix, RuleMethod};
use crate::host::{normalize_host, HostError, HostPattern};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Ports an allow rule covers when it names none: HTTPS and HTTP.
pub const DEFAULT_PORTS: [u16; 2] = [443, 80];

/// What happens to a destination no rule covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unknown {
    /// Refuse it (403).
    #[default]
    Deny,
    /// Hold it and file a proposal for a human to decide (the sidecar's
    /// supervise service); where `supervise.enabled` is off, enforced exactly
    /// like `Deny`.
    Ask,
}

/// One `egress.allow` entry: a host pattern and, optionally, one port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AllowRule {
    pub host: HostPattern,
    /// `None` means [`DEFAULT_PORTS`].
    pub port: Option<u16>,
}

/// Why an `egress.allow` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowRuleError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("`{entry}`: port `{port}` is not a number from 1 to 65535")]
    Port { entry: String, port: String },
    #[error("`{entry}`: write a host pattern, not a URL (e.g. `api.example.com` or `api.example.com:8443`)")]
    Url { entry: String },
}

impl AllowRule {
    /// Parses `host`, `host:port`, `*.suffix[:port]`, `ip[:port]` or
    /// `[ipv6][:port]`.
    pub fn parse(entry: &str) -> Result<Self, AllowRuleError> {
        let entry = entry.trim();
        if entry.contains("://") || entry.contains('/') {
            return Err(AllowRuleError::Url {
                entry: entry.into(),
            });
        }
        let (host, port) = split_host_port(entry);
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    return Err(AllowRuleError::Port {
                        entry: entry.into(),
                        port: p.into(),
                    })
                }
            },
        };
        Ok(AllowRule {
            host: HostPattern::parse(host)?,
            port,
        })
    }

    /// Does this rule cover `(host, port)`? `host` must be normalised.
    pub fn covers(&self, host: &str, port: u16) -> bool {
        let port_ok = match self.port {
            Some(p) => p == port,
            None => DEFAULT_PORTS.contains(&port),
        };
        port_ok && self.host.matches(host)
    }
}

/// Splits `host:port`, leaving a bare IPv6 address (several colons, no
/// brackets) whole.
fn split_host_port(entry: &str) -> (&str, Option<&str>) {
    if let Some(rest) = entry.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            let host = &entry[..end + 2];
            let tail = &rest[end + 1..];
            return (host, tail.strip_prefix(':'));
        }
        return (entry, None);
    }
    match entry.matches(':').count() {
        1 => {
            let (h, p) = entry.split_once(':').unwrap_or((entry, ""));
            (h, Some(p))
        }
        _ => (entry, None),
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

impl TryFrom<String> for AllowRule {
    type Error = AllowRuleError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        AllowRule::parse(&s)
    }
}

impl From<AllowRule> for String {
    fn from(r: AllowRule) -> String {
        r.to_string()
    }
}

/// `[[egress.rule]]`: narrows an allowed host to some methods and path
/// prefixes. Enforcing it needs TLS interception.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRule {
    pub host: HostPattern,
    #[serde(default)]
    pub methods: Vec<RuleMethod>,
    #[serde(default)]
    pub paths: Vec<PathPrefix>,
}

/// `[[egress.credential]]`: which header the sidecar sets for which host. The
/// value itself is never part of the policy; it lives in the sidecar's secrets
/// file under `from_env`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRule {
    pub host: HostPattern,
    pub header: CredentialHeader,
    pub from_env: String,
    /// Sent as `<scheme> <value>` (e.g. `Bearer`); the bare value when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<AuthScheme>,
}

/// The whole egress section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressPolicy {
    #[serde(default)]
    pub allow: Vec<AllowRule>,
    #[serde(default)]
    pub unknown: Unknown,
    #[serde(default)]
    pub rules: Vec<HttpRule>,
    #[serde(default)]
    pub credentials: Vec<CredentialRule>,
    /// Allowed names that may resolve to private (RFC 1918, ULA, CGNAT)
    /// addresses: internal services the user means to reach. Loopback,
    /// link-local and metadata addresses stay refused unless an allow entry
    /// names that exact address.
    #[serde(default)]
    pub allow_private: Vec<HostPattern>,
    /// `egress.upstream_proxy`: tunnel every upstream connection through
    /// this HTTP proxy (`CONNECT`); none connects directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_proxy: Option<crate::proxy::UpstreamProxy>,
    /// `[egress.budget]`: bytes, request-rate and LLM-spend limits; none
    /// when absent (left out when empty, so older files read the same).
    #[serde(default, skip_serializing_if = "crate::budget::BudgetPolicy::is_empty")]
    pub budget: crate::budget::BudgetPolicy,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

/// The outcome of [`EgressPolicy::decide`], with the rule that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// The allow entry that matched, or `default-deny` / `invalid-host`.
    pub rule: String,
    /// One sentence for the agent (and the human reading the audit log).
    pub reason: String,
}

impl EgressPolicy {
    /// Decides a connection to `host:port`. `host` is the name or address the
    /// client asked for, before any resolution.
    pub fn decide(&self, host: &str, port: u16) -> Decision {
        let host = match normalize_host(host) {
            Ok(h) => h,
            Err(e) => {
                return Decision {
                    verdict: Verdict::Deny,
                    rule: "invalid-host".into(),
                    reason: e.to_string(),
                }
            }
        };
        if let Some(rule) = self.allow.iter().find(|r| r.covers(&host, port)) {
            if let Some(refused) = self.encrypted_dns_endpoint(&host, port) {
                return refused;
            }
            return Decision {
                verdict: Verdict::Allow,
                rule: rule.to_string(),
                reason: format!("{host}:{port} is allowed by egress.allow entry `{rule}`"),
            };
        }
        let other_port = self.allow.iter().find(|r| r.host.matches(&host));
        let reason = match (other_port, self.unknown) {
            (Some(rule), _) => format!(
                "{host} is allowed only on port {} (egress.allow entry `{rule}`), not {port}",
                rule.port
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "443 or 80".into())
            ),
            (None, Unknown::Deny) => format!("{host}:{port} is not in egress.allow"),
            (None, Unknown::Ask) => {
                format!("{host}:{port} is not in egress.allow (egress.unknown = \"ask\")")
            }
        };
        Decision {
            verdict: Verdict::Deny,
            rule: "default-deny".into(),
            reason,
        }
    }
}

impl EgressPolicy {
    /// The allow entry that lets the sidecar's DNS answer `name` (exact, or
    /// under a `*.suffix` entry), on any port. IP entries never match a name,
    /// and invalid names match nothing.
    pub fn allows_name(&self, name: &str) -> Option<&AllowRule> {
        let name = normalize_host(name).ok()?;
        if name.parse::<std::net::IpAddr>().is_ok() {
            return None;
        }
        if crate::resolver::is_encrypted_dns_host(&name) && !self.allows_exactly(&name, None) {
            return None;
        }
        self.allow.iter().find(|r| match &r.host {
            HostPattern::Exact(_) | HostPattern::Suffix(_) => r.host.matches(&name),
            HostPattern::Ip(_) => false,
        })
    }

    /// The `[[egress.credential]]` entries for `host` (normalised).
    pub fn credentials_for<'a>(
        &'a self,
        host: &'a str,
    ) -> impl Iterator<Item = &'a CredentialRule> + 'a {
        self.credentials
            .iter()
            .filter(move |c| c.host.matches(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> EgressPolicy {
        EgressPolicy {
            allow: allow.iter().map(|a| AllowRule::parse(a).unwrap()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn empty_policy_denies_everything() {
        let p = EgressPolicy::default();
        for (h, port) in [("example.com", 443), ("127.0.0.1", 80), ("", 443)] {
            assert_eq!(p.decide(h, port).verdict, Verdict::Deny, "{h}:{port}");
        }
    }

    #[test]
    fn default_ports_and_explicit_port() {
        let p = policy(&["api.example.com", "mirror.example:8443"]);
        assert_eq!(p.decide("api.example.com", 443).verdict, Verdict::Allow);
        assert_eq!(p.decide("API.example.com.", 80).verdict, Verdict::Allow);
        let d = p.decide("api.example.com", 22);
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(d.reason.contains("only on port 443 or 80"), "{}", d.reason);
        assert_eq!(p.decide("mirror.example", 8443).verdict, Verdict::Allow);
        assert_eq!(p.decide("mirror.example", 443).verdict, Verdict::Deny);
    }

    #[test]
    fn suffix_and_ip_rules() {
        let p = policy(&["*.cdn.example", "10.0.0.5:9000", "[fd00::5]:9000"]);
        assert_eq!(p.decide("files.cdn.example", 443).verdict, Verdict::Allow);
        assert_eq!(p.decide("cdn.example", 443).verdict, Verdict::Deny);
        assert_eq!(p.decide("10.0.0.5", 9000).verdict, Verdict::Allow);
        assert_eq!(p.decide("10.0.0.6", 9000).verdict, Verdict::Deny);
        assert_eq!(p.decide("[fd00::5]", 9000).verdict, Verdict::Allow);
        // Odd spellings of an allowed address never match.
        assert_eq!(p.decide("0x0a.0.0.5", 9000).verdict, Verdict::Deny);
        assert_eq!(p.decide("167772165", 9000).verdict, Verdict::Deny);
    }

    #[test]
    fn allow_entries_parse_and_refuse() {
        assert!(AllowRule::parse("https://a.com").is_err());
        assert!(AllowRule::parse("a.com:0").is_err());
        assert!(AllowRule::parse("a.com:70000").is_err());
        assert!(AllowRule::parse("a.com:").is_err());
        let r = AllowRule::parse("[fd00::1]:443").unwrap();
        assert_eq!(r.port, Some(443));
        assert_eq!(r.to_string(), "[fd00::1]:443");
        let bare6 = AllowRule::parse("fd00::1").unwrap();
        assert_eq!(bare6.port, None);
    }

    #[test]
    fn dns_names_follow_allow_entries() {
        let p = policy(&["api.example.com:8443", "*.cdn.example", "10.0.0.5"]);
        assert!(p.allows_name("API.example.com.").is_some());
        assert!(p.allows_name("files.cdn.example").is_some());
        assert!(p.allows_name("cdn.example").is_none());
        assert!(p.allows_name("evil.example").is_none());
        assert!(p.allows_name("10.0.0.5").is_none());
        assert!(p.allows_name("0x0a.0.0.5").is_none());
        assert!(p.allows_name("").is_none());
    }

    #[test]
    fn credentials_are_found_by_host() {
        let p = EgressPolicy {
            credentials: vec![CredentialRule {
                host: HostPattern::parse("api.anthropic.com").unwrap(),
                header: crate::CredentialHeader::parse("x-api-key").unwrap(),
                from_env: "ANTHROPIC_API_KEY".into(),
                scheme: None,
            }],
            ..Default::default()
        };
        assert_eq!(p.credentials_for("api.anthropic.com").count(), 1);
        assert_eq!(p.credentials_for("evil.example").count(), 0);
    }

    #[test]
    fn ask_is_denied_with_a_reason() {
        let p = EgressPolicy {
            unknown: Unknown::Ask,
            ..Default::default()
        };
        let d = p.decide("example.com", 443);
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(
            d.reason.contains("egress.unknown = \"ask\""),
            "{}",
            d.reason
        );
    }
}
