//! The typed fields of `[[egress.rule]]` and `[[egress.credential]]`: the
//! methods and path prefixes a rule narrows a host to, and the header a
//! credential goes in. Each one checks itself when made, and serde makes
//! them through the same check (`try_from`), so a `policy.json` holding a
//! credential for `Host` or a rule for `TRACE` is refused at load exactly as
//! the same thing in `bottle.toml` is.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Methods an `[[egress.rule]]` may name. CONNECT and TRACE are left out on
/// purpose: the proxy handles CONNECT itself and TRACE only echoes.
pub const RULE_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Headers the proxy owns (framing, routing, hop-by-hop); a credential in
/// one of them would break the request or leak through a hop. Any
/// `proxy-*` header is refused as well.
pub const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// Why a method, header name or path prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error(
        "`{0}`: not a method a rule can name; one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    )]
    Method(String),
    #[error("`{0}`: a header name is letters, digits and any of !#$%&'*+-.^_`|~ (e.g. `x-api-key`, `authorization`)")]
    HeaderName(String),
    #[error("`{0}`: the proxy manages this header itself, so it cannot carry a credential; use the header the API expects (e.g. `authorization`, `x-api-key`)")]
    HeaderReserved(String),
    #[error("`{0}`: a path prefix starts with `/` (e.g. `/repos/acme/`)")]
    PathStart(String),
    #[error("`{0}`: a path prefix cannot hold whitespace, control characters, `?`, `#`, or `.`/`..` segments")]
    PathChars(String),
    #[error("`{0}`: an authorization scheme is one word of letters, digits and `-`, at most 32 (e.g. `Bearer`)")]
    Scheme(String),
}

/// The scheme an injected credential is sent with (`Bearer` makes the
/// header `Bearer <value>`), for APIs whose key travels in
/// `authorization`. One token of letters, digits and `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AuthScheme(String);

impl AuthScheme {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(FieldError::Scheme(s.to_owned()));
        }
        Ok(AuthScheme(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One method of an `[[egress.rule]]`, upper case, one of [`RULE_METHODS`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RuleMethod(http::Method);

impl RuleMethod {
    /// Exactly one of [`RULE_METHODS`] (`get` is not `GET`).
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        if !RULE_METHODS.contains(&s) {
            return Err(FieldError::Method(s.to_owned()));
        }
        http::Method::from_bytes(s.as_bytes())
            .map(RuleMethod)
            .map_err(|_| FieldError::Method(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The method as `http` spells it.
    pub fn method(&self) -> &http::Method {
        &self.0
    }
}

/// The header a credential is sent in: an RFC 9110 token the proxy does not
/// own. Kept in lower case (header names are case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CredentialHeader(http::HeaderName);

impl CredentialHeader {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let name = http::HeaderName::from_bytes(s.as_bytes())
            .map_err(|_| FieldError::HeaderName(s.to_owned()))?;
        let lower = name.as_str();
        if RESERVED_HEADERS.contains(&lower) || lower.starts_with("proxy-") {
            return Err(FieldError::HeaderReserved(s.to_owned()));
        }
        Ok(CredentialHeader(name))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The header as `http` names it.
    pub fn name(&self) -> &http::HeaderName {
        &self.0
    }
}

/// A path prefix of an `[[egress.rule]]`: starts with `/`, no whitespace,
/// control characters, `?`, `#`, or `.`/`..` segments (the sidecar compares
/// it with canonical request paths only).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PathPrefix(String);

impl PathPrefix {
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        if !s.starts_with('/') {
            return Err(FieldError::PathStart(s.to_owned()));
        }
        let bad_char = s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#');
        let dot_segment = s.split('/').any(|seg| seg == "." || seg == "..");
        if bad_char || dot_segment {
            return Err(FieldError::PathChars(s.to_owned()));
        }
        Ok(PathPrefix(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_form {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = FieldError;
            fn try_from(s: String) -> Result<Self, FieldError> {
                <$t>::parse(&s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.as_str().to_owned()
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
string_form!(RuleMethod);
string_form!(CredentialHeader);
string_form!(PathPrefix);
string_form!(AuthScheme);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_the_listed_ones_exactly() {
        assert_eq!(RuleMethod::parse("GET").unwrap().as_str(), "GET");
        for bad in ["get", "TRACE", "CONNECT", "", "G ET"] {
            assert_eq!(
                RuleMethod::parse(bad),
                Err(FieldError::Method(bad.into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn credential_headers_are_tokens_the_proxy_does_not_own() {
        assert_eq!(
            CredentialHeader::parse("X-Api-Key").unwrap().as_str(),
            "x-api-key"
        );
        assert!(CredentialHeader::parse("authorization").is_ok());
        for reserved in [
            "Host",
            "content-length",
            "Proxy-Authorization",
            "TE",
            "upgrade",
        ] {
            assert_eq!(
                CredentialHeader::parse(reserved),
                Err(FieldError::HeaderReserved(reserved.into()))
            );
        }
        for bad in ["x api", "", "x:y", "é"] {
            assert_eq!(
                CredentialHeader::parse(bad),
                Err(FieldError::HeaderName(bad.into()))
            );
        }
    }

    #[test]
    fn path_prefixes_are_plain() {
        assert!(PathPrefix::parse("/repos/acme/").is_ok());
        assert_eq!(
            PathPrefix::parse("repos"),
            Err(FieldError::PathStart("repos".into()))
        );
        for bad in ["/a/../b", "/a?b", "/a#b", "/a b", "/./"] {
            assert_eq!(
                PathPrefix::parse(bad),
                Err(FieldError::PathChars(bad.into()))
            );
        }
    }

    #[test]
    fn serde_runs_the_same_checks() {
        let ok: PathPrefix = serde_json::from_str("\"/v1/\"").unwrap();
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"/v1/\"");
        let e = serde_json::from_str::<CredentialHeader>("\"Host\"").unwrap_err();
        assert!(e.to_string().contains("manages this header itself"), "{e}");
        assert!(serde_json::from_str::<RuleMethod>("\"TRACE\"").is_err());
        assert!(serde_json::from_str::<PathPrefix>("\"/../etc\"").is_err());
    }
}
