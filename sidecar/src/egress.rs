//! Egress enforcement shared by every way traffic can leave: the decision for
//! a destination, the connection to it, and the refusal text.
//!
//! The explicit proxy uses these today; TLS interception, the transparent
//! 80/443 listeners and the destination guard will reuse them. The types make
//! the order hard to get wrong: [`check`] is the only way to get an
//! [`Allowed`], and [`connect`] takes nothing else, so no upstream connection
//! is opened without a decision. The destination guard (refuse private and
//! metadata addresses after resolution) belongs between [`resolve`] and
//! [`connect_addrs`].

use bottle_policy::{normalize_host, Decision, EgressPolicy, Verdict, DEFAULT_PORTS};
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long name resolution may take before the request fails.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
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

/// Why an allowed destination could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("resolving {host} took longer than {}s", RESOLVE_TIMEOUT.as_secs())]
    ResolveTimeout { host: String },
    #[error("{host} resolved to no addresses")]
    NoAddresses { host: String },
    #[error("cannot connect to {target}: {}", attempts.join("; "))]
    Connect {
        target: String,
        /// One `addr: error` entry per address tried.
        attempts: Vec<String>,
    },
}

/// Resolves an allowed destination to socket addresses, in resolver order.
pub async fn resolve(target: &Allowed) -> Result<Vec<SocketAddr>, ConnectError> {
    let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
    let addrs = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
        .await
        .map_err(|_| ConnectError::ResolveTimeout {
            host: target.host.clone(),
        })?
        .map_err(|source| ConnectError::Resolve {
            host: target.host.clone(),
            source,
        })?
        .collect::<Vec<_>>();
    if addrs.is_empty() {
        return Err(ConnectError::NoAddresses {
            host: target.host.clone(),
        });
    }
    Ok(addrs)
}

/// Connects to the first of `addrs` that answers, trying them in order.
/// Returns the stream and the address it is connected to (the one that was
/// checked, never a fresh resolution).
pub async fn connect_addrs(
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

/// Resolves and connects to an allowed destination.
pub async fn connect(target: &Allowed) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let addrs = resolve(target).await?;
    connect_addrs(target, &addrs).await
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
    let mut counted = Counted {
        inner: upstream,
        read: 0,
        written: 0,
    };
    let result = tokio::io::copy_bidirectional(client, &mut counted).await;
    TunnelOutcome {
        bytes_up: counted.written,
        bytes_down: counted.read,
        error: result.err(),
    }
}

/// Counts the bytes read from and written to `inner`.
struct Counted<'a, T: ?Sized> {
    inner: &'a mut T,
    read: u64,
    written: u64,
}

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for Counted<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.read += (buf.filled().len() - before) as u64;
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.written += n as u64;
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

/// `host:port`, with brackets around an IPv6 address.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
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

/// What to ask for so that `denied` would be allowed.
pub fn access_hint(denied: &Denied) -> String {
    if denied.decision.rule == "invalid-host" {
        return "use a DNS name (letters, digits, '-' and '.') or a canonical IP address; this name can never be allowed".into();
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
        let err = connect_addrs(&a, &addrs).await.unwrap_err();
        match &err {
            ConnectError::Connect { attempts, .. } => assert_eq!(attempts.len(), 2),
            other => panic!("{other}"),
        }
        addrs.push(live.local_addr().unwrap());
        let (_s, used) = connect_addrs(&a, &addrs).await.unwrap();
        assert_eq!(used, live.local_addr().unwrap());
    }
}
