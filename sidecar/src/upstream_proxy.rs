//! `egress.upstream_proxy`: the sidecar's upstream connections tunnelled
//! through an existing HTTP proxy with `CONNECT host:port`.
//!
//! Only the last hop changes. Before a [`Route`] is used the destination was
//! allowed by the policy and its name resolved and accepted by the
//! destination guard ([`crate::egress::guarded_addrs`]), exactly as without a
//! proxy; a denied destination never reaches the proxy. The CONNECT line
//! carries the *name* the policy allowed (the proxy resolves it again; the
//! sidecar's own check is what keeps a name that resolves to a private or
//! metadata address out). The proxy's own address is checked by
//! [`bottle_policy::check_proxy_address`]: private is fine, loopback,
//! metadata and the sidecar's own addresses are not.
//!
//! The credential (`user:password` in the secrets file under
//! `auth_from_env`) is sent as `Proxy-Authorization: Basic …` on the CONNECT
//! only; it never appears in `Debug` output, errors or logs. Whatever the
//! proxy answers other than 2xx becomes a [`ProxyError::Refused`] that names
//! the proxy's status line, which the caller turns into a 502 for the agent
//! and a log line.

use crate::guard::{ResolveError, Resolver};
use crate::secrets::Secrets;
use base64::Engine as _;
use bottle_policy::{check_proxy_address, EgressPolicy, LocalNet, ProxyUrl};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long connecting to the proxy, or its answer to CONNECT, may take.
pub const PROXY_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest CONNECT answer head read before giving up.
const MAX_ANSWER: usize = 8 * 1024;

/// The proxy to tunnel through: its URL, its addresses the proxy guard
/// accepted, and the `Proxy-Authorization` value when it needs one.
#[derive(Clone)]
pub struct Route {
    url: ProxyUrl,
    addrs: Vec<SocketAddr>,
    authorization: Option<String>,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("url", &self.url)
            .field("addrs", &self.addrs)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "[elided]"),
            )
            .finish()
    }
}

impl Route {
    pub fn url(&self) -> &ProxyUrl {
        &self.url
    }
    /// The proxy's addresses, in resolver order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
    /// `Basic base64(user:password)`, for clients that build their own
    /// CONNECT (the git gate's). Never log it.
    pub fn authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
    }
}

/// Why the proxy was not used.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the upstream proxy {proxy}: {source}")]
    Resolve {
        proxy: ProxyUrl,
        #[source]
        source: ResolveError,
    },
    /// The proxy guard refused every address (the first refusal).
    #[error("{0}")]
    Guard(String),
    #[error("the upstream proxy's credential {var} is not in the sidecar's secrets; ask the user to set {var} (user:password) on the host and run `bottle up` again")]
    MissingAuth { var: String },
    #[error("cannot connect to the upstream proxy {proxy}: {}", attempts.join("; "))]
    Connect {
        proxy: ProxyUrl,
        attempts: Vec<String>,
    },
    #[error("the upstream proxy {proxy} refused CONNECT {target}: it answered `{status}`{}", refused_hint(*code))]
    Refused {
        proxy: ProxyUrl,
        target: String,
        code: u16,
        /// The proxy's status line, control characters replaced.
        status: String,
    },
    #[error("the upstream proxy {proxy} did not answer CONNECT {target}: {why}")]
    Answer {
        proxy: ProxyUrl,
        target: String,
        why: String,
    },
}

fn refused_hint(code: u16) -> &'static str {
    match code {
        407 => " (ask the user to check the credential named by egress.upstream_proxy_auth_env)",
        403 => " (the proxy's own policy refuses this destination; ask the proxy's administrators)",
        _ => "",
    }
}

/// The route `policy` asks for: `None` without `egress.upstream_proxy`.
/// Resolves the proxy's name and keeps the addresses the proxy guard
/// accepts.
pub async fn route(
    resolver: &Resolver,
    policy: &EgressPolicy,
    local: &LocalNet,
    secrets: &Secrets,
) -> Result<Option<Route>, ProxyError> {
    let Some(proxy) = &policy.upstream_proxy else {
        return Ok(None);
    };
    let url = proxy.url.clone();
    let authorization = match &proxy.auth_from_env {
        None => None,
        Some(var) => {
            let (_, value) = secrets
                .values()
                .find(|(n, _)| n == var)
                .ok_or_else(|| ProxyError::MissingAuth { var: var.clone() })?;
            let encoded = base64::engine::general_purpose::STANDARD.encode(value);
            Some(format!("Basic {encoded}"))
        }
    };
    let resolved = resolver
        .resolve(url.host(), url.port())
        .await
        .map_err(|source| ProxyError::Resolve {
            proxy: url.clone(),
            source,
        })?;
    let mut first_refusal = None;
    let mut addrs = Vec::new();
    for addr in resolved {
        match check_proxy_address(&url, addr.ip(), local) {
            Ok(()) => addrs.push(addr),
            Err(why) => {
                first_refusal.get_or_insert(why);
            }
        }
    }
    match (addrs.is_empty(), first_refusal) {
        (true, Some(why)) => Err(ProxyError::Guard(why)),
        _ => Ok(Some(Route {
            url,
            addrs,
            authorization,
        })),
    }
}

/// `host:port` as a CONNECT target (IPv6 in brackets).
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Connects to the proxy and asks it for a tunnel to `host:port` (the
/// normalised name the policy allowed). Returns the tunnel, ready for the
/// caller's TLS or plain HTTP, and the proxy address it is connected to.
pub async fn open(
    route: &Route,
    host: &str,
    port: u16,
) -> Result<(TcpStream, SocketAddr), ProxyError> {
    let target = authority(host, port);
    let (mut stream, addr) = connect(route).await?;
    let answer_err = |why: String| ProxyError::Answer {
        proxy: route.url.clone(),
        target: target.clone(),
        why,
    };
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &route.authorization {
        head.push_str("Proxy-Authorization: ");
        head.push_str(auth);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let exchange = async {
        stream.write_all(head.as_bytes()).await?;
        read_head(&mut stream).await
    };
    let answer = match tokio::time::timeout(PROXY_TIMEOUT, exchange).await {
        Err(_) => {
            return Err(answer_err(format!(
                "no answer within {}s",
                PROXY_TIMEOUT.as_secs()
            )))
        }
        Ok(Err(e)) => return Err(answer_err(e.to_string())),
        Ok(Ok(answer)) => answer,
    };
    let status_line = answer.lines().next().unwrap_or("").trim_end();
    let code = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| answer_err(format!("not an HTTP answer: `{}`", clean(status_line))))?;
    if !(200..300).contains(&code) {
        return Err(ProxyError::Refused {
            proxy: route.url.clone(),
            target,
            code,
            status: clean(status_line.get(9..).unwrap_or(status_line)),
        });
    }
    Ok((stream, addr))
}

/// Reads the answer's head up to its blank line, one byte at a time so not
/// a byte of the tunnel's own data is consumed.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") && !buf.ends_with(b"\n\n") {
        if buf.len() >= MAX_ANSWER {
            return Err(std::io::Error::other(format!(
                "its answer's head is longer than {MAX_ANSWER} bytes"
            )));
        }
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "it closed the connection before answering",
            ));
        }
        buf.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

async fn connect(route: &Route) -> Result<(TcpStream, SocketAddr), ProxyError> {
    let mut attempts = Vec::new();
    for &addr in &route.addrs {
        match tokio::time::timeout(PROXY_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok((stream, addr));
            }
            Ok(Err(e)) => attempts.push(format!("{addr}: {e}")),
            Err(_) => attempts.push(format!("{addr}: timed out")),
        }
    }
    Err(ProxyError::Connect {
        proxy: route.url.clone(),
        attempts,
    })
}

/// At most 200 characters, control characters replaced: the proxy's text
/// reaches the agent and the log.
fn clean(s: &str) -> String {
    s.chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_targets_bracket_ipv6() {
        assert_eq!(authority("api.example.com", 443), "api.example.com:443");
        assert_eq!(authority("fd00::1", 8443), "[fd00::1]:8443");
    }

    #[test]
    fn debug_never_shows_the_credential() {
        let r = Route {
            url: ProxyUrl::parse("http://p.example:3128").unwrap(),
            addrs: vec![],
            authorization: Some("Basic dTpzZWNyZXQ=".into()),
        };
        assert!(!format!("{r:?}").contains("dTpzZWNyZXQ"));
    }
}
