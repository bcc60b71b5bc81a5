//! Host names and host patterns as they appear in egress rules.
//!
//! A pattern is an exact name (`api.example.com`), a suffix wildcard
//! (`*.example.com`, which matches `a.example.com` and `a.b.example.com` but not
//! `example.com` itself), or an exact IP address in canonical form. Anything a
//! resolver might read in more than one way — octal or hex IPv4 parts, integer
//! forms, a numeric last label — is refused here, so a rule always means one
//! thing.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// Why a host name or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("host is empty")]
    Empty,
    #[error("host `{0}` is longer than 253 characters")]
    TooLong(String),
    #[error("host `{host}` has an empty label (two dots in a row, or a leading dot)")]
    EmptyLabel { host: String },
    #[error("label `{label}` in `{host}` is longer than 63 characters")]
    LabelTooLong { host: String, label: String },
    #[error("`{host}` contains `{ch}`; host names use only a-z, 0-9, `-` and `.`")]
    BadChar { host: String, ch: char },
    #[error("label `{label}` in `{host}` starts or ends with `-`")]
    Hyphen { host: String, label: String },
    #[error("`{host}` looks numeric but is not a canonical IP address; write IPv4 as four decimal parts (e.g. 10.0.0.1)")]
    AmbiguousNumeric { host: String },
    #[error("`{host}`: `*` may only appear as a leading `*.` followed by at least two labels (e.g. `*.example.com`)")]
    BadWildcard { host: String },
    #[error("`{host}`: a wildcard cannot cover an IP address")]
    WildcardIp { host: String },
}

/// A host rule target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum HostPattern {
    /// Exactly this (normalised) name.
    Exact(String),
    /// Any name strictly below this suffix (stored without the `*.`).
    Suffix(String),
    /// Exactly this address.
    Ip(IpAddr),
}

impl HostPattern {
    /// Parses `name`, `*.suffix` or a canonical IP address (IPv6 with or without
    /// brackets).
    pub fn parse(input: &str) -> Result<Self, HostError> {
        let raw = input.trim();
        if raw.is_empty() {
            return Err(HostError::Empty);
        }
        let unbracketed = raw
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(raw);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(HostPattern::Ip(ip));
        }
        if let Some(suffix) = raw.strip_prefix("*.") {
            if suffix.contains('*') {
                return Err(HostError::BadWildcard { host: raw.into() });
            }
            let name = normalize_host(suffix)?;
            if name.parse::<IpAddr>().is_ok() {
                return Err(HostError::WildcardIp { host: raw.into() });
            }
            if name.split('.').count() < 2 {
                return Err(HostError::BadWildcard { host: raw.into() });
            }
            return Ok(HostPattern::Suffix(name));
        }
        if raw.contains('*') {
            return Err(HostError::BadWildcard { host: raw.into() });
        }
        Ok(HostPattern::Exact(normalize_host(raw)?))
    }

    /// Does this pattern cover `host`? `host` must already be normalised with
    /// [`normalize_host`] (or be a canonical IP literal).
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Suffix(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            HostPattern::Ip(ip) => {
                let h = host
                    .strip_prefix('[')
                    .and_then(|s| s.strip_suffix(']'))
                    .unwrap_or(host);
                h.parse::<IpAddr>().is_ok_and(|other| other == *ip)
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Suffix(s) => write!(f, "*.{s}"),
            HostPattern::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            HostPattern::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

impl TryFrom<String> for HostPattern {
    type Error = HostError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        HostPattern::parse(&s)
    }
}

impl From<HostPattern> for String {
    fn from(p: HostPattern) -> String {
        p.to_string()
    }
}

/// Normalises a DNS name for matching: lower case, one trailing dot removed,
/// every label checked. Canonical IP literals pass through unchanged; other
/// numeric-looking names (`0x7f.1`, `2130706433`, `127.1`) are refused because
/// resolvers disagree on what they mean.
pub fn normalize_host(input: &str) -> Result<String, HostError> {
    let host = input
        .strip_suffix('.')
        .unwrap_or(input)
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err(HostError::Empty);
    }
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(&host);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        // Canonical text of the address (IPv6 without brackets).
        return Ok(ip.to_string());
    }
    if host.len() > 253 {
        return Err(HostError::TooLong(host));
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel { host: host.clone() });
        }
        if label.len() > 63 {
            return Err(HostError::LabelTooLong {
                host: host.clone(),
                label: label.into(),
            });
        }
        if let Some(ch) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(HostError::BadChar {
                host: host.clone(),
                ch,
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(HostError::Hyphen {
                host: host.clone(),
                label: label.into(),
            });
        }
    }
    // A last label that is all digits, or a 0x-prefixed hex number, is read as
    // an IPv4 part by inet_aton-style parsers.
    let last = host.rsplit('.').next().unwrap_or_default();
    let numeric = last.chars().all(|c| c.is_ascii_digit())
        || (last.starts_with("0x") && last[2..].chars().all(|c| c.is_ascii_hexdigit()));
    if numeric {
        return Err(HostError::AmbiguousNumeric { host });
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_suffix_patterns() {
        let exact = HostPattern::parse("API.Example.com.").unwrap();
        assert_eq!(exact, HostPattern::Exact("api.example.com".into()));
        assert!(exact.matches("api.example.com"));
        assert!(!exact.matches("x.api.example.com"));

        let wild = HostPattern::parse("*.example.com").unwrap();
        assert!(wild.matches("a.example.com"));
        assert!(wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("badexample.com"));
        assert!(!wild.matches(".example.com"));
    }

    #[test]
    fn ip_patterns_are_exact_and_canonical() {
        let p = HostPattern::parse("10.1.2.3").unwrap();
        assert!(p.matches("10.1.2.3"));
        assert!(!p.matches("10.1.2.4"));
        let v6 = HostPattern::parse("[fd00::1]").unwrap();
        assert!(v6.matches("[fd00::1]"));
        assert!(v6.matches("fd00:0::1"));
        assert_eq!(v6.to_string(), "[fd00::1]");
    }

    #[test]
    fn ambiguous_spellings_are_refused() {
        for bad in ["0x7f.1", "127.1", "2130706433", "0177.0.0.1", "1.2.3.0x4"] {
            assert!(
                matches!(
                    HostPattern::parse(bad),
                    Err(HostError::AmbiguousNumeric { .. })
                ),
                "{bad} should be refused as numeric"
            );
        }
    }

    #[test]
    fn malformed_patterns_are_refused() {
        assert!(matches!(HostPattern::parse(""), Err(HostError::Empty)));
        assert!(matches!(
            HostPattern::parse("*"),
            Err(HostError::BadWildcard { .. })
        ));
        assert!(matches!(
            HostPattern::parse("*.com"),
            Err(HostError::BadWildcard { .. })
        ));
        assert!(matches!(
            HostPattern::parse("a.*.com"),
            Err(HostError::BadWildcard { .. })
        ));
        assert!(matches!(
            HostPattern::parse("*.10.0.0.1"),
            Err(HostError::WildcardIp { .. }) | Err(HostError::AmbiguousNumeric { .. })
        ));
        assert!(matches!(
            HostPattern::parse("a..b"),
            Err(HostError::EmptyLabel { .. })
        ));
        assert!(matches!(
            HostPattern::parse("ex_ample.com"),
            Err(HostError::BadChar { ch: '_', .. })
        ));
        assert!(matches!(
            HostPattern::parse("-a.com"),
            Err(HostError::Hyphen { .. })
        ));
        assert!(matches!(
            HostPattern::parse("http://a.com"),
            Err(HostError::BadChar { .. })
        ));
    }

    #[test]
    fn serde_round_trip() {
        let p: HostPattern = serde_json::from_str("\"*.cdn.example\"").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"*.cdn.example\"");
        assert!(serde_json::from_str::<HostPattern>("\"a b\"").is_err());
    }
}
