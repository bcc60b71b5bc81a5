//! The credentials the sidecar injects, and what it does with them per
//! request.
//!
//! `secrets.json` sits next to the policy file (0600, mounted read-only into
//! the sidecar only), in the policy crate's wire form
//! ([`bottle_policy::SecretsFile`]): `{"format": 1, "credentials":
//! {"<FROM_ENV>": {"value": "…",
//! "placeholder": "…"}}}`. The agent holds only the placeholder (in the env
//! var of the same name). For a request to a credential's host the sidecar
//! sets the named header to the real value, replacing whatever the agent sent;
//! a request to any other host that carries a known placeholder (or value) in
//! a header or its target is refused (`placeholder-leak`), so neither ever
//! leaves for a host it was not meant for. A value is only ever sent over TLS.
//!
//! Values never appear in `Debug` output, errors or logs.

use bottle_policy::{Decision, EgressPolicy, Verdict};
use hyper::header::{HeaderName, HeaderValue, ACCEPT_ENCODING, IF_RANGE, RANGE};
use hyper::HeaderMap;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Shortest placeholder accepted: a shorter one would match ordinary header
/// text and refuse innocent requests.
pub const MIN_PLACEHOLDER_LEN: usize = 8;

/// One credential: the real value and the placeholder the agent sees.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    placeholder: String,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("value", &"[elided]")
            .field("placeholder", &"[elided]")
            .finish()
    }
}

impl Secret {
    pub fn new(value: impl Into<String>, placeholder: impl Into<String>) -> Self {
        Secret {
            value: value.into(),
            placeholder: placeholder.into(),
        }
    }
}

/// Every credential the sidecar holds, by `from_env` name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    credentials: BTreeMap<String, Secret>,
    /// `dlp.values_from_env`: never injected, only searched for
    /// ([`crate::dlp`]).
    listed: BTreeMap<String, String>,
}

/// Why `secrets.json` was refused.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read secrets file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The serde error is not quoted: it can contain part of a value.
    #[error("secrets file {path} is not valid (expected {{\"format\": 1, \"credentials\": {{\"NAME\": {{\"value\": …, \"placeholder\": …}}}}}}) at line {line}, column {column}")]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
    },
    #[error("secrets file {path}: {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: bottle_policy::FormatError,
    },
    #[error("secrets file {path}: credential {name} has an empty value")]
    EmptyValue { path: PathBuf, name: String },
    #[error("secrets file {path}: credential {name} has a placeholder shorter than {MIN_PLACEHOLDER_LEN} characters")]
    ShortPlaceholder { path: PathBuf, name: String },
    #[error("secrets file {path}: credential {name} has a value or placeholder that cannot be sent in an HTTP header (control characters)")]
    NotAHeaderValue { path: PathBuf, name: String },
}

impl Secrets {
    pub fn new(credentials: impl IntoIterator<Item = (String, Secret)>) -> Self {
        Secrets {
            credentials: credentials.into_iter().collect(),
            listed: BTreeMap::new(),
        }
    }

    /// These secrets plus `listed` (`dlp.values_from_env`, by variable).
    pub fn with_listed(mut self, listed: impl IntoIterator<Item = (String, String)>) -> Self {
        self.listed = listed.into_iter().collect();
        self
    }

    /// Every `(variable, value)` of `dlp.values_from_env`. Never log what
    /// this returns.
    pub fn listed(&self) -> impl Iterator<Item = (&str, &str)> {
        self.listed.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Reads `path`; a missing file means "no credentials".
    pub fn load(path: &Path) -> Result<Self, SecretsError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Secrets::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Secrets::default()),
            Err(source) => Err(SecretsError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    /// Validates `text`; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, SecretsError> {
        let file: bottle_policy::SecretsFile =
            serde_json::from_str(text).map_err(|e| SecretsError::Json {
                path: path.into(),
                line: e.line(),
                column: e.column(),
            })?;
        file.check_format().map_err(|source| SecretsError::Format {
            path: path.into(),
            source,
        })?;
        let secrets = Secrets::new(
            file.credentials
                .into_iter()
                .map(|(name, e)| (name, Secret::new(e.value.expose(), e.placeholder))),
        )
        .with_listed(
            file.dlp_values
                .into_iter()
                .map(|(name, v)| (name, v.expose().to_string())),
        );
        if let Some((name, _)) = secrets.listed.iter().find(|(_, v)| v.is_empty()) {
            return Err(SecretsError::EmptyValue {
                path: path.into(),
                name: name.clone(),
            });
        }
        for (name, s) in &secrets.credentials {
            let err = |f: fn(PathBuf, String) -> SecretsError| Err(f(path.into(), name.clone()));
            if s.value.is_empty() {
                return err(|path, name| SecretsError::EmptyValue { path, name });
            }
            if s.placeholder.chars().count() < MIN_PLACEHOLDER_LEN {
                return err(|path, name| SecretsError::ShortPlaceholder { path, name });
            }
            if HeaderValue::from_str(&s.value).is_err()
                || HeaderValue::from_str(&s.placeholder).is_err()
            {
                return err(|path, name| SecretsError::NotAHeaderValue { path, name });
            }
        }
        Ok(secrets)
    }

    pub fn is_empty(&self) -> bool {
        self.credentials.is_empty() && self.listed.is_empty()
    }

    /// Every `(from_env name, real value)`, for redaction
    /// ([`crate::redact`]). Never log what this returns.
    pub fn values(&self) -> impl Iterator<Item = (&str, &str)> {
        self.credentials
            .iter()
            .map(|(name, s)| (name.as_str(), s.value.as_str()))
    }

    /// The `from_env` name whose placeholder or value occurs in `text`.
    fn found_in(&self, text: &[u8]) -> Option<&str> {
        self.credentials.iter().find_map(|(name, s)| {
            let hit =
                contains(text, s.placeholder.as_bytes()) || contains(text, s.value.as_bytes());
            hit.then_some(name.as_str())
        })
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack.len() >= needle.len()
        && haystack.windows(needle.len()).any(|w| w == needle)
}

/// What [`apply`] refused.
fn refusal(rule: &str, reason: String) -> Decision {
    Decision {
        verdict: Verdict::Deny,
        rule: rule.into(),
        reason,
    }
}

/// Applies the credential rules to one request bound for `host` (normalised).
/// `target` is the request target as sent (path and query); `tls` says whether
/// the upstream hop is encrypted. On success the named headers carry the real
/// values; the agent's own copies of those headers are gone. Returns whether
/// a value was injected; if so the request also asks for an unencoded
/// response (`accept-encoding: identity`) and loses `Range` and `If-Range`
/// (it asks for the whole resource), so the response can be searched for the
/// value in one piece ([`crate::redact`]).
pub fn apply(
    policy: &EgressPolicy,
    secrets: &Secrets,
    host: &str,
    target: &str,
    tls: bool,
    headers: &mut HeaderMap,
) -> Result<bool, Decision> {
    let rules: Vec<_> = policy.credentials_for(host).collect();
    // Headers this host's rules will overwrite are not inspected: replacing
    // the placeholder there is the point.
    let replaced: Vec<HeaderName> = rules.iter().map(|r| r.header.name().clone()).collect();
    let own: Vec<&str> = rules.iter().map(|r| r.from_env.as_str()).collect();
    let leak = |name: &str| {
        refusal(
            "placeholder-leak",
            format!("the request to {host} carries the placeholder for {name}, which belongs to another host; it is never forwarded there"),
        )
    };
    if let Some(name) = secrets.found_in(target.as_bytes()) {
        if !own.contains(&name) {
            return Err(leak(name));
        }
    }
    for (header, value) in headers.iter() {
        if replaced.contains(header) {
            continue;
        }
        if let Some(name) = secrets.found_in(value.as_bytes()) {
            if !own.contains(&name) {
                return Err(leak(name));
            }
        }
    }
    if rules.is_empty() {
        return Ok(false);
    }
    if !tls {
        return Err(refusal(
            "credential-needs-tls",
            format!("{host} gets an injected credential, and credentials are only ever sent over TLS; this request would go upstream in plain HTTP"),
        ));
    }
    for rule in rules {
        // The policy crate checked the name when the policy was loaded.
        let name = rule.header.name().clone();
        let Some(secret) = secrets.credentials.get(&rule.from_env) else {
            return Err(refusal(
                "credential-missing",
                format!("egress.credential for {host} uses {}, but the sidecar holds no value for it (it was not set on the host at `bottle up`)", rule.from_env),
            ));
        };
        let sent = match &rule.scheme {
            Some(scheme) => format!("{} {}", scheme.as_str(), secret.value),
            None => secret.value.clone(),
        };
        let Ok(value) = HeaderValue::from_str(&sent) else {
            return Err(refusal(
                "credential-invalid",
                format!(
                    "the value of {} cannot be sent in an HTTP header",
                    rule.from_env
                ),
            ));
        };
        let mut value = value;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    // A byte range would let the agent fetch an echoed value in pieces, each
    // searched alone by the redactor; ask for the whole answer (a partial
    // one is refused, `crate::exchange::unfilterable`).
    headers.remove(RANGE);
    headers.remove(IF_RANGE);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bottle_policy::{AllowRule, CredentialRule, HostPattern};

    const VALUE: &str = "sk-real-secret-value-123";
    const PLACEHOLDER: &str = "bottle-placeholder-ANTHROPIC";

    fn setup() -> (EgressPolicy, Secrets) {
        let policy = EgressPolicy {
            allow: vec![AllowRule::parse("api.anthropic.com").unwrap()],
            credentials: vec![CredentialRule {
                host: HostPattern::parse("api.anthropic.com").unwrap(),
                header: bottle_policy::CredentialHeader::parse("x-api-key").unwrap(),
                from_env: "ANTHROPIC_API_KEY".into(),
                scheme: None,
            }],
            ..Default::default()
        };
        let secrets = Secrets::new([(
            "ANTHROPIC_API_KEY".to_string(),
            Secret::new(VALUE, PLACEHOLDER),
        )]);
        (policy, secrets)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_named_header_gets_the_value_for_its_host() {
        let (p, s) = setup();
        let mut h = headers(&[
            ("x-api-key", PLACEHOLDER),
            ("x-api-key", "second"),
            ("accept-encoding", "gzip, br"),
            ("range", "bytes=0-7"),
            ("if-range", "\"etag\""),
        ]);
        assert!(apply(&p, &s, "api.anthropic.com", "/v1/messages", true, &mut h).unwrap());
        let all: Vec<_> = h.get_all("x-api-key").iter().collect();
        assert_eq!(all, [VALUE]);
        // The response must come back searchable for the value, whole.
        assert_eq!(h["accept-encoding"], "identity");
        assert!(h.get("range").is_none());
        assert!(h.get("if-range").is_none());
        // Also set when the agent sent none.
        let mut h = HeaderMap::new();
        apply(&p, &s, "api.anthropic.com", "/", true, &mut h).unwrap();
        assert_eq!(h["x-api-key"], VALUE);
    }

    #[test]
    fn a_scheme_prefixes_the_value() {
        let (mut p, s) = setup();
        p.credentials[0].header = bottle_policy::CredentialHeader::parse("authorization").unwrap();
        p.credentials[0].scheme = Some(bottle_policy::AuthScheme::parse("Bearer").unwrap());
        let mut h = headers(&[("authorization", &format!("Bearer {PLACEHOLDER}"))]);
        apply(&p, &s, "api.anthropic.com", "/v1/messages", true, &mut h).unwrap();
        let all: Vec<_> = h.get_all("authorization").iter().collect();
        assert_eq!(all, [format!("Bearer {VALUE}").as_str()]);
        assert!(bottle_policy::AuthScheme::parse("Bearer x").is_err());
        assert!(bottle_policy::AuthScheme::parse("").is_err());
    }

    #[test]
    fn placeholders_for_other_hosts_are_refused() {
        let (p, s) = setup();
        for (name, value) in [
            ("authorization", format!("Bearer {PLACEHOLDER}")),
            ("x-api-key", PLACEHOLDER.to_string()),
            ("cookie", format!("k={VALUE}")),
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_static(name),
                HeaderValue::from_str(&value).unwrap(),
            );
            let d = apply(&p, &s, "evil.example", "/", true, &mut h).unwrap_err();
            assert_eq!(d.rule, "placeholder-leak", "{name}");
            assert!(!d.reason.contains(PLACEHOLDER) && !d.reason.contains(VALUE));
            assert!(d.reason.contains("ANTHROPIC_API_KEY"));
        }
        let mut h = HeaderMap::new();
        let d = apply(
            &p,
            &s,
            "evil.example",
            &format!("/x?k={PLACEHOLDER}"),
            true,
            &mut h,
        )
        .unwrap_err();
        assert_eq!(d.rule, "placeholder-leak");
        let mut h = headers(&[("x-other", "fine")]);
        apply(&p, &s, "evil.example", "/", false, &mut h).unwrap();
    }

    #[test]
    fn values_never_go_out_in_plain_http_or_missing() {
        let (p, s) = setup();
        let mut h = HeaderMap::new();
        let d = apply(&p, &s, "api.anthropic.com", "/", false, &mut h).unwrap_err();
        assert_eq!(d.rule, "credential-needs-tls");
        assert!(h.is_empty());
        let d = apply(
            &p,
            &Secrets::default(),
            "api.anthropic.com",
            "/",
            true,
            &mut h,
        )
        .unwrap_err();
        assert_eq!(d.rule, "credential-missing");
    }

    #[test]
    fn parse_validates_and_never_quotes_values() {
        let path = Path::new("/state/secrets.json");
        let ok = Secrets::parse(
            path,
            r#"{"format":1,"credentials":{"A":{"value":"v","placeholder":"placeholder-a"}}}"#,
        )
        .unwrap();
        assert!(!format!("{ok:?}").contains("placeholder-a"));
        let err = Secrets::parse(
            path,
            r#"{"format":1,"credentials":{"A":{"value":"s3cr3t-leak"}}}"#,
        )
        .unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        let err = Secrets::parse(
            path,
            r#"{"format":1,"credentials":{"A":{"value":"v","placeholder":"short"}}}"#,
        )
        .unwrap_err();
        assert!(
            matches!(err, SecretsError::ShortPlaceholder { .. }),
            "{err}"
        );
        let err = Secrets::parse(
            path,
            r#"{"format":1,"credentials":{"A":{"value":"a\nb","placeholder":"placeholder"}}}"#,
        )
        .unwrap_err();
        assert!(matches!(err, SecretsError::NotAHeaderValue { .. }), "{err}");
        // Another format, or none (an older bottle's file), is refused, and
        // the refusal quotes no value.
        let err = Secrets::parse(
            path,
            r#"{"format":2,"credentials":{"A":{"value":"s3cr3t-leak","placeholder":"placeholder"}}}"#,
        )
        .unwrap_err();
        assert!(matches!(err, SecretsError::Format { .. }), "{err}");
        assert!(err.to_string().contains("format 2"), "{err}");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        assert!(Secrets::parse(path, r#"{"credentials":{}}"#).is_err());
        assert!(Secrets::load(Path::new("/nonexistent/secrets.json"))
            .unwrap()
            .is_empty());
    }
}
