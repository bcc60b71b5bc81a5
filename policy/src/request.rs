//! The decision for one HTTP request inside an allowed connection:
//! `[[egress.rule]]` method and path-prefix matching, and the path checks that
//! keep prefix matching honest.
//!
//! A connection is decided on `(host, port)` by [`EgressPolicy::decide`]; once
//! the sidecar can see requests (TLS interception, plain HTTP) each one is
//! decided again by [`EgressPolicy::decide_request`] on the current policy.
//!
//! Path prefixes are matched on the path exactly as it will be forwarded, so
//! there is no second interpretation to disagree with. For that to be safe the
//! path of a request to a host whose rules name paths must be *canonical*: no
//! dot segments (also not `..;x`, which some servers strip to `..`), no empty
//! segments (`//`), no percent-encoded unreserved characters (`%2e`), no
//! encoded or raw separators (`%2f`, `%5c`, `\`), no double encoding of those
//! (`%252e`), no control bytes, no `#`. Every mainstream client sends
//! canonical paths; a path that is not canonical is refused, never rewritten.

use crate::egress::{Decision, EgressPolicy, HttpRule, Verdict};
use crate::host::normalize_host;
use std::fmt;

/// Methods that echo the request back (and so any injected credential); never
/// forwarded to any host.
pub const FORBIDDEN_METHODS: [&str; 2] = ["TRACE", "TRACK"];

/// Headers that ask an origin to treat a request as another method (many
/// frameworks honour them on `POST`). Compared case-insensitively.
///
/// The query parameter `_method` does the same in Rails, Laravel and Symfony
/// ([`method_override_param`]). The same parameter in a form body
/// (`application/x-www-form-urlencoded`, `multipart/form-data`) is NOT
/// checked: the policy decides on the request head, and the sidecar streams
/// bodies without parsing them. A host whose rules restrict methods and whose
/// framework honours a body `_method` can still be asked for another method
/// that way.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Query parameters that ask an origin to treat a request as another method
/// (Rails' `Rack::MethodOverride`, Laravel, Symfony's
/// `http_method_override`).
pub const METHOD_OVERRIDE_PARAMS: [&str; 1] = ["_method"];

/// The method-override parameter ([`METHOD_OVERRIDE_PARAMS`]) that `query`
/// (a request target's query, without the `?`) carries, if any. Names are
/// compared as an origin could read them: percent-decoded (`%5Fmethod`),
/// case-insensitively, and with PHP's renaming of ` `, `.` and `[` to `_`
/// (`.method` arrives in Laravel as `_method`); pairs are split on `&` and
/// `;`.
pub fn method_override_param(query: &str) -> Option<&'static str> {
    query
        .split(['&', ';'])
        .map(|pair| pair.split('=').next().unwrap_or(""))
        .map(|name| {
            percent_decode(name)
                .into_iter()
                .map(|b| match b {
                    b' ' | b'.' | b'[' | b'+' => b'_',
                    b => b.to_ascii_lowercase(),
                })
                .collect::<Vec<u8>>()
        })
        .find_map(|name| {
            METHOD_OVERRIDE_PARAMS
                .iter()
                .find(|p| p.as_bytes() == name.as_slice())
                .copied()
        })
}

/// `s` with every valid `%XX` decoded (others kept as they are).
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Why a request path is not canonical.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with `/`")]
    NotAbsolute,
    #[error("the path contains `{0}`, which clients never send in a path")]
    BadChar(char),
    #[error("the path has a `%` not followed by two hex digits")]
    BadPercent,
    #[error("the path percent-encodes `{0}`, which needs no encoding (e.g. `%2e` for `.`)")]
    EncodedUnreserved(char),
    #[error("the path percent-encodes a path separator (`%2f` or `%5c`)")]
    EncodedSeparator,
    #[error("the path double-encodes `.`, `/` or `\\` (`%25…`)")]
    DoubleEncoded,
    #[error("the path percent-encodes a control byte")]
    EncodedControl,
    #[error("the path has a `.` or `..` segment")]
    DotSegment,
    #[error("the path has an empty segment (`//`)")]
    EmptySegment,
}

/// Checks that `path` (without the query) is canonical; see the module doc.
pub fn check_path(path: &str) -> Result<(), PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if let Some(c) = path
        .chars()
        .find(|c| matches!(c, '\\' | '#' | '?') || c.is_control())
    {
        return Err(PathError::BadChar(c));
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = decode_pair(bytes.get(i + 1..i + 3)).ok_or(PathError::BadPercent)?;
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    return Err(PathError::EncodedUnreserved(char::from(byte)))
                }
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                0..=0x1f | 0x7f => return Err(PathError::EncodedControl),
                b'%' => {
                    if let Some(inner) = decode_pair(bytes.get(i + 3..i + 5)) {
                        if matches!(inner, b'.' | b'/' | b'\\') {
                            return Err(PathError::DoubleEncoded);
                        }
                    }
                }
                _ => {}
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (n, segment) in segments.iter().enumerate() {
        // `;params` is stripped by some servers before dot segments are
        // resolved, so `..;x` counts as `..`.
        let bare = segment.split(';').next().unwrap_or_default();
        if bare == "." || bare == ".." {
            return Err(PathError::DotSegment);
        }
        // A trailing slash leaves one empty last segment; `/` alone too.
        if segment.is_empty() && n != last {
            return Err(PathError::EmptySegment);
        }
    }
    Ok(())
}

fn decode_pair(pair: Option<&[u8]>) -> Option<u8> {
    let pair = pair?;
    let text = std::str::from_utf8(pair).ok()?;
    if text.len() != 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(text, 16).ok()
}

impl HttpRule {
    /// Does this rule cover `method` and `path`? `method` is compared exactly
    /// with the rule's (upper-cased) methods: `get` is not `GET`.
    pub fn covers(&self, method: &str, path: &str) -> bool {
        let method_ok =
            self.methods.is_empty() || self.methods.iter().any(|m| m.as_str() == method);
        let path_ok =
            self.paths.is_empty() || self.paths.iter().any(|p| path.starts_with(p.as_str()));
        method_ok && path_ok
    }
}

impl fmt::Display for HttpRule {
    /// `egress.rule api.github.com GET /repos/acme/` (`*` for "any").
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list<T: fmt::Display>(items: &[T]) -> String {
            if items.is_empty() {
                "*".to_string()
            } else {
                items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
            }
        }
        write!(
            f,
            "egress.rule {} {} {}",
            self.host,
            list(&self.methods),
            list(&self.paths)
        )
    }
}

impl EgressPolicy {
    /// The `[[egress.rule]]` entries that narrow `host` (normalised).
    pub fn rules_for<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a HttpRule> + 'a {
        self.rules.iter().filter(move |r| r.host.matches(host))
    }

    /// The refusal for a request to `host` that carries a method override
    /// (`header`: one of [`METHOD_OVERRIDE_HEADERS`], or a description of the
    /// query parameter found by [`method_override_param`], e.g. ``the query
    /// parameter `_method` ``), when an `[[egress.rule]]` for `host` restricts
    /// methods: the origin could run the request as a method the rule does
    /// not allow, so it is refused rather than stripped (stripping would
    /// silently run another request than the one the agent asked for). `None`
    /// when no rule for `host` names methods.
    pub fn decide_method_override(&self, host: &str, header: &str) -> Option<Decision> {
        let host = normalize_host(host).ok()?;
        let rules: Vec<String> = self
            .rules_for(&host)
            .filter(|r| !r.methods.is_empty())
            .map(|r| r.to_string())
            .collect();
        if rules.is_empty() {
            return None;
        }
        Some(deny(
            "method-override",
            format!(
                "the request carries {header}, which can make the origin treat it as another method; requests to {host} are limited to the methods of `{}`",
                rules.join(" | ")
            ),
        ))
    }

    /// Decides one request `method path` sent to `host:port`. `path` is the
    /// request target's path without the query. The connection-level decision
    /// ([`EgressPolicy::decide`]) is taken again first, so a reload that
    /// removed the host also stops requests on connections already open.
    pub fn decide_request(&self, host: &str, port: u16, method: &str, path: &str) -> Decision {
        if FORBIDDEN_METHODS
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method))
        {
            return deny(
                "method-not-allowed",
                format!("{method} echoes requests back and is never forwarded"),
            );
        }
        let connection = self.decide(host, port);
        if connection.verdict == Verdict::Deny {
            return connection;
        }
        // `decide` allowed it, so the host is valid.
        let host = normalize_host(host).unwrap_or_default();
        let rules: Vec<&HttpRule> = self.rules_for(&host).collect();
        if rules.is_empty() {
            return connection;
        }
        if rules.iter().any(|r| !r.paths.is_empty()) {
            if let Err(e) = check_path(path) {
                return deny(
                    "path-not-canonical",
                    format!("{e}; requests to {host} are narrowed to path prefixes, so their paths must be canonical"),
                );
            }
        }
        if let Some(rule) = rules.iter().find(|r| r.covers(method, path)) {
            return Decision {
                verdict: Verdict::Allow,
                rule: rule.to_string(),
                reason: format!("{method} {path} on {host} is allowed by `{rule}`"),
            };
        }
        let names: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
        deny(
            &names.join(" | "),
            format!("{method} {path} on {host} matches none of the egress.rule entries for {host}"),
        )
    }
}

fn deny(rule: &str, reason: String) -> Decision {
    Decision {
        verdict: Verdict::Deny,
        rule: rule.into(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AllowRule, HostPattern, PathPrefix, RuleMethod};

    fn m(s: &str) -> RuleMethod {
        RuleMethod::parse(s).unwrap()
    }

    fn p(s: &str) -> PathPrefix {
        PathPrefix::parse(s).unwrap()
    }

    fn policy() -> EgressPolicy {
        EgressPolicy {
            allow: ["api.github.com", "*.example.com", "open.example.org"]
                .iter()
                .map(|a| AllowRule::parse(a).unwrap())
                .collect(),
            rules: vec![
                HttpRule {
                    host: HostPattern::parse("api.github.com").unwrap(),
                    methods: vec![m("GET")],
                    paths: vec![p("/repos/acme/")],
                },
                HttpRule {
                    host: HostPattern::parse("api.github.com").unwrap(),
                    methods: vec![m("POST")],
                    paths: vec![p("/repos/acme/app/issues")],
                },
                HttpRule {
                    host: HostPattern::parse("*.example.com").unwrap(),
                    methods: vec![m("GET"), m("HEAD")],
                    paths: vec![],
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn method_override_is_refused_only_where_methods_are_restricted() {
        let d = policy()
            .decide_method_override("API.github.com", "X-HTTP-Method-Override")
            .unwrap();
        assert_eq!(
            (d.verdict, d.rule.as_str()),
            (Verdict::Deny, "method-override")
        );
        assert!(d.reason.contains("X-HTTP-Method-Override"), "{}", d.reason);
        assert!(d.reason.contains("GET /repos/acme/"), "{}", d.reason);
        assert!(policy()
            .decide_method_override("a.example.com", "x-http-method")
            .is_some());
        // No rule, or a rule that names only paths: nothing to bypass.
        assert_eq!(
            policy().decide_method_override("open.example.org", "x-http-method"),
            None
        );
        let mut paths_only = policy();
        paths_only.rules = vec![HttpRule {
            host: HostPattern::parse("open.example.org").unwrap(),
            methods: vec![],
            paths: vec![p("/x/")],
        }];
        assert_eq!(
            paths_only.decide_method_override("open.example.org", "x-method-override"),
            None
        );
    }

    #[test]
    fn the_method_query_parameter_is_found_however_it_is_spelled() {
        for query in [
            "_method=DELETE",
            "a=1&_method=delete",
            "a=1;_METHOD=PUT",
            "%5Fmethod=DELETE",
            "_%6Dethod=DELETE",
            ".method=DELETE",
            "%20method=DELETE",
            "[method=DELETE",
            "_method",
        ] {
            assert_eq!(method_override_param(query), Some("_method"), "{query}");
        }
        for query in ["", "method=DELETE", "x_method=DELETE", "a=_method", "%5"] {
            assert_eq!(method_override_param(query), None, "{query}");
        }
        let d = policy()
            .decide_method_override("api.github.com", "the query parameter `_method`")
            .unwrap();
        assert_eq!(d.rule, "method-override");
        assert!(d.reason.contains("`_method`"), "{}", d.reason);
        assert_eq!(
            policy().decide_method_override("open.example.org", "the query parameter `_method`"),
            None
        );
    }

    fn verdict(host: &str, method: &str, path: &str) -> Decision {
        policy().decide_request(host, 443, method, path)
    }

    #[test]
    fn rules_narrow_methods_and_paths() {
        let ok = verdict("api.github.com", "GET", "/repos/acme/app");
        assert_eq!(ok.verdict, Verdict::Allow, "{ok:?}");
        assert_eq!(ok.rule, "egress.rule api.github.com GET /repos/acme/");
        let post = verdict("api.github.com", "POST", "/repos/acme/app/issues/1");
        assert_eq!(post.verdict, Verdict::Allow);
        assert!(post.rule.contains("POST"));

        let d = verdict("api.github.com", "DELETE", "/repos/acme/app");
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(
            d.rule,
            "egress.rule api.github.com GET /repos/acme/ | egress.rule api.github.com POST /repos/acme/app/issues"
        );
        assert_eq!(
            d.reason,
            "DELETE /repos/acme/app on api.github.com matches none of the egress.rule entries for api.github.com"
        );
        assert_eq!(
            verdict("api.github.com", "GET", "/repos/other/x").verdict,
            Verdict::Deny
        );
        // Methods are case-sensitive on the wire.
        assert_eq!(
            verdict("api.github.com", "get", "/repos/acme/x").verdict,
            Verdict::Deny
        );
    }

    #[test]
    fn method_only_rules_and_hosts_without_rules() {
        assert_eq!(
            verdict("a.example.com", "GET", "/anything//odd/../x").verdict,
            Verdict::Allow,
            "no path rule, so the path is not inspected"
        );
        assert_eq!(verdict("a.example.com", "POST", "/").verdict, Verdict::Deny);
        let d = verdict("open.example.org", "PATCH", "/x");
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(d.rule, "open.example.org");
    }

    #[test]
    fn connection_decision_and_trace_come_first() {
        let d = verdict("evil.example", "GET", "/repos/acme/");
        assert_eq!(
            (d.verdict, d.rule.as_str()),
            (Verdict::Deny, "default-deny")
        );
        let d = policy().decide_request("api.github.com", 8443, "GET", "/repos/acme/");
        assert_eq!(d.verdict, Verdict::Deny);
        for m in ["TRACE", "TRACK", "trace"] {
            let d = verdict("open.example.org", m, "/");
            assert_eq!(d.rule, "method-not-allowed", "{m}");
        }
    }

    #[test]
    fn traversal_and_encoding_tricks_are_refused() {
        for (path, why) in [
            ("/repos/acme/../evil", PathError::DotSegment),
            ("/repos/acme/./x", PathError::DotSegment),
            ("/repos/acme/..", PathError::DotSegment),
            ("/repos/acme/..;x/evil", PathError::DotSegment),
            ("/repos/acme/%2e%2e/evil", PathError::EncodedUnreserved('.')),
            ("/repos/acme/%2E%2E/evil", PathError::EncodedUnreserved('.')),
            ("/repos/acme/.%2e/evil", PathError::EncodedUnreserved('.')),
            ("/repos/%61cme/x", PathError::EncodedUnreserved('a')),
            ("/repos/acme/..%2fevil", PathError::EncodedSeparator),
            ("/repos/acme/..%5Cevil", PathError::EncodedSeparator),
            ("/repos/acme/%252e%252e/evil", PathError::DoubleEncoded),
            ("/repos/acme/%00", PathError::EncodedControl),
            ("/repos/acme/%zz", PathError::BadPercent),
            ("/repos/acme/%2", PathError::BadPercent),
            ("/repos/acme//../evil", PathError::EmptySegment),
            ("/repos/acme//x", PathError::EmptySegment),
            ("/repos/acme/..\\evil", PathError::BadChar('\\')),
            ("/repos/acme/x#frag", PathError::BadChar('#')),
            ("/repos/acme/x?q=1", PathError::BadChar('?')),
            ("*", PathError::NotAbsolute),
            ("repos/acme/", PathError::NotAbsolute),
        ] {
            assert_eq!(check_path(path), Err(why.clone()), "{path}");
            let d = verdict("api.github.com", "GET", path);
            assert_eq!(d.verdict, Verdict::Deny, "{path}");
            assert_eq!(d.rule, "path-not-canonical", "{path}");
            assert!(
                d.reason.starts_with(&why.to_string()),
                "{path}: {}",
                d.reason
            );
        }
    }

    #[test]
    fn canonical_paths_pass() {
        for path in [
            "/",
            "/repos/acme/",
            "/repos/acme/app",
            "/repos/acme/a%20b",
            "/repos/acme/a%2Bb",
            "/repos/acme/x;v=1",
            "/repos/acme/.well-known/x",
            "/repos/acme/...",
            "/repos/acme/%25",
        ] {
            assert_eq!(check_path(path), Ok(()), "{path}");
        }
    }
}
