//! Egress enforcement shared by every way traffic can leave: the decision for
//! a destination, the destination guard, the connection, and the refusal
//! text.
//!
//! The types make the order hard to get wrong: [`check`] is the only way to
//! get an [`Allowed`]; [`guarded_addrs`] turns an `Allowed` into the resolved
//! addresses the destination guard accepted ([`Checked`]); [`connect`] takes
//! nothing else. So no upstream connection is opened without a decision, and
//! it always goes to an address that was checked (never a second lookup).
//!
//! With `egress.upstream_proxy` the checks are the same and only the last hop
//! changes: [`Checked::via`] attaches the proxy's [`Route`] and [`connect`]
//! asks the proxy for a tunnel to the checked name (`CONNECT host:port`)
//! instead of dialling the checked address (see [`crate::upstream_proxy`]).

use crate::forward::host_port;
use crate::guard::{ResolveError, Resolver};
use crate::io::{Counter, MeteredIo};
use crate::upstream_proxy::{self, ProxyError, Route};
use bottle_policy::{normalize_host, Decision, EgressPolicy, LocalNet, Verdict, DEFAULT_PORTS};
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// How long one connection attempt may take before the next address is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A destination the policy allowed, with its host normalised. Only
/// [`check`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    host: String,
    port: u16,
    decision: Decision,
}

impl Allowed {
    /// The normalised host (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn decision(&self) -> &Decision {
        &self.decision
    }
}

impl Allowed {
    /// Was this destination let through by a supervise approval rather than
    /// a policy rule (see `granted`)?
    pub fn by_supervise(&self) -> bool {
        self.decision.rule.starts_with("supervise ")
    }
}

/// A destination a supervise approval let through although the policy in
/// force does not cover it: a `once` approval, or a connection held under
/// `egress.unknown = "ask"` until approved. Only
/// [`crate::supervise::Supervisor::on_denied`] makes one; the destination
/// guard still runs on it.
pub(crate) fn granted(host: &str, port: u16, id: &impl std::fmt::Display, scope: &str) -> Allowed {
    Allowed {
        host: host.to_string(),
        port,
        decision: Decision {
            verdict: Verdict::Allow,
            rule: format!("supervise {id}"),
            reason: format!("{host}:{port} was approved ({scope}) in request {id}"),
        },
    }
}

/// A destination the policy refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The host as normalised, or as the client wrote it when it is invalid.
    pub host: String,
    pub port: u16,
    pub decision: Decision,
}

/// Decides `host:port` against `policy`. `host` is what the client asked for
/// (a name or an IP literal, IPv6 with or without brackets), before any
/// resolution.
pub fn check(policy: &EgressPolicy, host: &str, port: u16) -> Result<Allowed, Denied> {
    let decision = policy.decide(host, port);
    match (decision.verdict, normalize_host(host)) {
        (Verdict::Allow, Ok(host)) => Ok(Allowed {
            host,
            port,
            decision,
        }),
        (_, normalized) => Err(Denied {
            host: normalized.unwrap_or_else(|_| host.to_string()),
            port,
            decision,
        }),
    }
}

/// A deny decision that no policy rule produced (a malformed or forbidden
/// request).
pub fn refusal(rule: &str, reason: impl Into<String>) -> Decision {
    Decision {
        verdict: Verdict::Deny,
        rule: rule.into(),
        reason: reason.into(),
    }
}

/// An allowed destination and the resolved addresses the destination guard
/// accepted for it. Only [`guarded_addrs`] makes one.
#[derive(Debug, Clone)]
pub struct Checked {
    allowed: Allowed,
    addrs: Vec<SocketAddr>,
    /// The upstream proxy to tunnel through, when the policy names one.
    via: Option<Route>,
}

impl Checked {
    pub fn allowed(&self) -> &Allowed {
        &self.allowed
    }
    /// The accepted addresses, in resolver order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
    /// Sends the connection through `route` (`None`: directly).
    pub fn via(mut self, route: Option<Route>) -> Checked {
        self.via = route;
        self
    }
    /// The upstream proxy this connection goes through, if any.
    pub fn route(&self) -> Option<&Route> {
        self.via.as_ref()
    }
}

/// Why an allowed destination was not connected to.
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    /// The destination guard refused every address (answer 403).
    #[error("{}", .0.reason)]
    Refused(Decision),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The upstream proxy could not be used (its name, its guard, its
    /// credential).
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

/// Resolves `target` once and keeps the addresses the destination guard
/// accepts. When every address is refused, the refusal of the first is
/// returned.
pub async fn guarded_addrs(
    resolver: &Resolver,
    policy: &EgressPolicy,
    local: &LocalNet,
    target: &Allowed,
) -> Result<Checked, ReachError> {
    let resolved = resolver.resolve(&target.host, target.port).await?;
    let mut first_refusal = None;
    let mut addrs = Vec::new();
    for addr in resolved {
        match policy.check_address(&target.host, addr.ip(), target.port, local) {
            Ok(()) => addrs.push(addr),
            Err(d) => {
                first_refusal.get_or_insert(d);
            }
        }
    }
    match (addrs.is_empty(), first_refusal) {
        (true, Some(decision)) => Err(ReachError::Refused(decision)),
        _ => Ok(Checked {
            allowed: target.clone(),
            addrs,
            via: None,
        }),
    }
}

/// Why no checked address answered.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {target}: {}", attempts.join("; "))]
    Connect {
        target: String,
        /// One `addr: error` entry per address tried.
        attempts: Vec<String>,
    },
    /// The upstream proxy refused or failed the tunnel.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

/// Connects to the first checked address that answers, trying them in order,
/// or, with an upstream proxy, opens a tunnel to the checked name through
/// it. Returns the stream and the address it is connected to (the proxy's
/// when there is one).
pub async fn connect(checked: &Checked) -> Result<(TcpStream, SocketAddr), ConnectError> {
    match &checked.via {
        Some(route) => {
            let a = &checked.allowed;
            Ok(upstream_proxy::open(route, &a.host, a.port).await?)
        }
        None => connect_addrs(&checked.allowed, &checked.addrs).await,
    }
}

async fn connect_addrs(
    target: &Allowed,
    addrs: &[SocketAddr],
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let mut attempts = Vec::new();
    for &addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                // Interactive protocols (git, ssh-over-tunnel) suffer from
                // Nagle; this proxy never batches small writes itself.
                let _ = stream.set_nodelay(true);
                return Ok((stream, addr));
            }
            Ok(Err(e)) => attempts.push(format!("{addr}: {e}")),
            Err(_) => attempts.push(format!("{addr}: timed out")),
        }
    }
    Err(ConnectError::Connect {
        target: host_port(&target.host, target.port),
        attempts,
    })
}

/// What a finished tunnel moved, and how it ended.
#[derive(Debug)]
pub struct TunnelOutcome {
    /// Bytes written to the upstream.
    pub bytes_up: u64,
    /// Bytes read from the upstream.
    pub bytes_down: u64,
    /// Set when either side failed rather than closed (a reset is common and
    /// harmless, but the log should say so).
    pub error: Option<io::Error>,
}

/// Splices `client` and `upstream` until both directions are closed. The
/// counts are kept even when the tunnel ends in an error.
pub async fn tunnel<C, U>(client: &mut C, upstream: &mut U) -> TunnelOutcome
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (read, written) = (Counter::default(), Counter::default());
    let mut counted = MeteredIo::new(upstream, read.clone(), written.clone());
    let result = tokio::io::copy_bidirectional(client, &mut counted).await;
    TunnelOutcome {
        bytes_up: written.get(),
        bytes_down: read.get(),
        error: result.err(),
    }
}

/// A refusal as the client (usually an LLM agent) reads it: what was blocked,
/// by which rule, why, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `CONNECT host:port`, `GET http://host/path`, …
    pub what: String,
    pub decision: Decision,
    /// One sentence: how to get access, or how to fix the request.
    pub hint: String,
}

impl Refusal {
    /// A refusal for a destination the policy denied, with the standard hint.
    pub fn denied(what: String, denied: &Denied) -> Self {
        Refusal {
            what,
            hint: access_hint(denied),
            decision: denied.decision.clone(),
        }
    }

    /// The `text/plain` body. Client-supplied text is stripped of control
    /// characters so it cannot forge lines.
    pub fn body(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "bottle egress: blocked {}", clean(&self.what));
        let _ = writeln!(s, "rule: {}", clean(&self.decision.rule));
        let _ = writeln!(s, "why: {}", clean(&self.decision.reason));
        let _ = writeln!(s, "to get access: {}", clean(&self.hint));
        s
    }
}

/// The hint for a refusal that a policy rule (not the destination's absence
/// from `egress.allow`) produced, for a request to `host`.
pub fn rule_hint(decision: &Decision, host: &str) -> String {
    match decision.rule.as_str() {
        "destination-guard" => {
            if ["private (RFC 1918)", "unique-local", "shared (CGNAT"]
                .iter()
                .any(|c| decision.reason.contains(c))
                && !decision.reason.contains(" form of ")
            {
                format!("if {host} is an internal service the user means to reach, ask them to add it to egress.allow_private in bottle.toml")
            } else {
                "none: this address is never reachable from a bottle".into()
            }
        }
        "path-not-canonical" => "send the path without `.`/`..` segments, `//`, or percent-encoded `.`, `/` or `\\` (curl: drop --path-as-is)".into(),
        "placeholder-leak" => "send a credential's placeholder only to the host it belongs to; the sidecar puts the real value in for that host".into(),
        "credential-needs-tls" => format!("use https://{host}/ instead; the credential is added only over TLS"),
        "credential-missing" => "ask the user to set the credential's environment variable on the host and run `bottle up` again".into(),
        "credential-invalid" => "ask the user to fix the egress.credential entry in bottle.toml".into(),
        "method-not-allowed" => "use another method; TRACE and TRACK are refused for every host".into(),
        "encrypted-dns" => bottle_policy::ENCRYPTED_DNS_HINT.into(),
        rule if rule.starts_with("egress.rule ") => format!(
            "ask the user to widen the [[egress.rule]] entries for {host} in bottle.toml"
        ),
        _ => "fix the request as described above".into(),
    }
}

/// What to ask for so that `denied` would be allowed.
pub fn access_hint(denied: &Denied) -> String {
    if denied.decision.rule == "invalid-host" {
        return "use a DNS name (letters, digits, '-' and '.') or a canonical IP address; this name can never be allowed".into();
    }
    if denied.decision.rule == "encrypted-dns" {
        return bottle_policy::ENCRYPTED_DNS_HINT.into();
    }
    let entry = if DEFAULT_PORTS.contains(&denied.port) {
        if denied.host.contains(':') {
            format!("[{}]", denied.host)
        } else {
            denied.host.clone()
        }
    } else {
        host_port(&denied.host, denied.port)
    };
    format!("ask the user to add \"{entry}\" to egress.allow in bottle.toml")
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bottle_policy::AllowRule;

    fn policy(allow: &[&str]) -> EgressPolicy {
        EgressPolicy {
            allow: allow.iter().map(|a| AllowRule::parse(a).unwrap()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn check_normalises_allowed_hosts() {
        let p = policy(&["api.example.com", "[fd00::5]:9000"]);
        let a = check(&p, "API.Example.com.", 443).unwrap();
        assert_eq!(a.host(), "api.example.com");
        assert_eq!(a.decision().rule, "api.example.com");
        let v6 = check(&p, "[fd00::5]", 9000).unwrap();
        assert_eq!(v6.host(), "fd00::5");
    }

    #[test]
    fn denial_body_names_rule_reason_and_fix() {
        let p = policy(&["api.example.com"]);
        let d = check(&p, "evil.example", 443).unwrap_err();
        let body = Refusal::denied("CONNECT evil.example:443".into(), &d).body();
        assert_eq!(
            body,
            "bottle egress: blocked CONNECT evil.example:443\n\
             rule: default-deny\n\
             why: evil.example:443 is not in egress.allow\n\
             to get access: ask the user to add \"evil.example\" to egress.allow in bottle.toml\n"
        );
        let d = check(&p, "api.example.com", 22).unwrap_err();
        let body = Refusal::denied("CONNECT api.example.com:22".into(), &d).body();
        assert!(body.contains("allowed only on port 443 or 80"), "{body}");
        assert!(body.contains("\"api.example.com:22\""), "{body}");
    }

    #[test]
    fn hints_bracket_ipv6_and_refuse_invalid_names() {
        let p = EgressPolicy::default();
        let d = check(&p, "[fd00::9]", 8443).unwrap_err();
        assert!(access_hint(&d).contains("\"[fd00::9]:8443\""));
        let d = check(&p, "fd00::9", 443).unwrap_err();
        assert!(access_hint(&d).contains("\"[fd00::9]\""));
        let d = check(&p, "0x7f.1", 443).unwrap_err();
        assert_eq!(d.decision.rule, "invalid-host");
        assert!(access_hint(&d).contains("never be allowed"));
    }

    #[test]
    fn bodies_cannot_forge_lines() {
        let r = Refusal {
            what: "GET x\nrule: allow".into(),
            decision: refusal("r", "a\r\nb"),
            hint: "h".into(),
        };
        assert_eq!(r.body().lines().count(), 4);
    }

    #[tokio::test]
    async fn tunnel_counts_both_directions() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, mut client_far) = tokio::io::duplex(64);
        let (mut upstream, mut upstream_far) = tokio::io::duplex(64);
        let splice = tokio::spawn(async move { tunnel(&mut client_far, &mut upstream).await });
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        upstream_far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        upstream_far.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        drop(client);
        drop(upstream_far);
        let out = splice.await.unwrap();
        assert_eq!((out.bytes_up, out.bytes_down), (5, 2));
    }

    #[tokio::test]
    async fn connect_tries_each_address_and_reports_all() {
        let p = policy(&["127.0.0.1:9"]);
        let a = check(&p, "127.0.0.1", 9).unwrap();
        // Two closed ports: bind, note the port, drop.
        let mut addrs = Vec::new();
        for _ in 0..2 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            addrs.push(l.local_addr().unwrap());
        }
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ConnectError::Connect { attempts, .. } = connect_addrs(&a, &addrs).await.unwrap_err()
        else {
            panic!("a direct connection fails as Connect");
        };
        assert_eq!(attempts.len(), 2);
        addrs.push(live.local_addr().unwrap());
        let (_s, used) = connect_addrs(&a, &addrs).await.unwrap();
        assert_eq!(used, live.local_addr().unwrap());
    }

    #[tokio::test]
    async fn the_guard_keeps_only_accepted_addresses() {
        let resolver = Resolver::fixed([
            (
                "mixed.test",
                vec!["10.1.2.3".parse().unwrap(), "127.0.0.1".parse().unwrap()],
            ),
            ("meta.test", vec!["169.254.169.254".parse().unwrap()]),
        ]);
        let p = policy(&["mixed.test:8443", "meta.test", "127.0.0.1:8443"]);
        let local = LocalNet::default();
        let a = check(&p, "mixed.test", 8443).unwrap();
        let checked = guarded_addrs(&resolver, &p, &local, &a).await.unwrap();
        assert_eq!(checked.addrs(), ["127.0.0.1:8443".parse().unwrap()]);
        let a = check(&p, "meta.test", 443).unwrap();
        let ReachError::Refused(d) = guarded_addrs(&resolver, &p, &local, &a).await.unwrap_err()
        else {
            panic!("metadata must be refused");
        };
        assert_eq!(d.rule, "destination-guard");
        assert!(d.reason.contains("cloud metadata"), "{}", d.reason);
        assert_eq!(
            rule_hint(&d, "meta.test"),
            "none: this address is never reachable from a bottle"
        );
    }
}
