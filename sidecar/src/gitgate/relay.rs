//! The loopback relay: the only way the gate's `git` children reach an
//! upstream, and the only place the token is used.
//!
//! The relay listens on 127.0.0.1 (an ephemeral port) inside the sidecar and
//! answers only under a random per-process path secret, so nothing else in
//! the sidecar's network namespace can use it. A child fetches from or
//! pushes to `http://127.0.0.1:<port>/<secret>/<remote>`; the relay forwards
//! the three smart-HTTP requests (`info/refs?service=…`, `git-upload-pack`,
//! `git-receive-pack`) to the remote's upstream over reqwest and adds
//! `Authorization: Basic base64("x-access-token:" + token)` when the remote
//! names a credential (GitHub, GitLab and Gitea accept a token as the
//! password of any user name). The token is never in argv, the environment,
//! a config file, a URL or a log line.
//!
//! The upstream client uses the rustls config `tls.rs` builds for egress
//! (ring, webpki roots plus the bottle's `upstream-roots.pem`), never a
//! proxy, never a redirect, and resolves names through [`GuardResolve`]: the
//! destination guard of `egress.rs` with the upstream's own name counted as
//! allowed (it need not be in `egress.allow`), so `allow_private`, the
//! blocked address classes and the gateway rule apply exactly as for egress.
//!
//! With `egress.upstream_proxy` the client goes through that proxy (read
//! from the live policy per request, with the credential from the secrets):
//! reqwest then resolves only the proxy's name, which [`GuardResolve`]
//! answers through the proxy guard of [`crate::upstream_proxy`], so the
//! upstream's own name is checked by [`guarded`] before each request. An
//! https:// upstream is reached with `CONNECT`; a plain http:// one is sent
//! to the proxy in absolute form (the only way HTTP proxies carry it).

use super::Body;
use crate::egress;
use crate::shared::Shared;
use crate::upstream_proxy;
use base64::Engine as _;
use bottle_policy::{AllowRule, GitRemote, HostPattern};
use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyDataStream, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// How long connecting to an upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Request headers passed upstream; every other one is dropped.
const FORWARDED: [&str; 4] = ["content-type", "accept", "content-encoding", "git-protocol"];

/// Resolves an upstream's name for reqwest through the destination guard.
#[derive(Debug, Clone)]
pub struct GuardResolve {
    shared: Arc<Shared>,
}

impl reqwest::dns::Resolve for GuardResolve {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let shared = self.shared.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let policy = shared.policy.current();
            if let Some(route) = proxy_route(&shared, &host).await? {
                let addrs: reqwest::dns::Addrs = Box::new(route.addrs().to_vec().into_iter());
                return Ok(addrs);
            }
            let port = policy
                .git
                .remotes
                .iter()
                .find(|r| r.upstream.host() == host)
                .map(|r| r.upstream.port())
                .ok_or_else(|| format!("{host} is not the upstream of any git.remote"))?;
            let addrs = guarded(&shared, &host, port).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// The upstream proxy's route when `host` is its name, `None` otherwise.
async fn proxy_route(shared: &Shared, host: &str) -> Result<Option<upstream_proxy::Route>, String> {
    let policy = shared.policy.current();
    match &policy.egress.upstream_proxy {
        Some(p) if p.url.host() == host => upstream_proxy::route(
            &shared.resolver,
            &policy.egress,
            &shared.local.current(),
            &shared.secrets.current(),
        )
        .await
        .map_err(|e| e.to_string()),
        _ => Ok(None),
    }
}

/// The URL reqwest is told to use as the proxy, from the live policy and
/// secrets: `http://user:password@host:port` (reqwest sends the userinfo as
/// `Proxy-Authorization: Basic …` and never logs it), or `None`.
fn proxy_url(shared: &Shared) -> Option<reqwest::Url> {
    let policy = shared.policy.current();
    let proxy = policy.egress.upstream_proxy.as_ref()?;
    let mut url = reqwest::Url::parse(&proxy.url.to_string()).ok()?;
    if let Some(var) = &proxy.auth_from_env {
        let secrets = shared.secrets.current();
        // A missing credential is reported by `proxy_route` before the request.
        let value = secrets
            .values()
            .find(|(n, _)| n == var)
            .map(|(_, v)| v.to_string());
        if let Some(value) = value {
            let (user, password) = value.split_once(':').unwrap_or((&value, ""));
            url.set_username(user).ok()?;
            url.set_password(Some(password)).ok()?;
        }
    }
    Some(url)
}

/// The addresses of `host:port` the destination guard accepts, as egress
/// decides them, with `host` counted as allowed when it is a name (an IP
/// address upstream must be in `egress.allow` itself: an allow entry for an
/// address lifts the guard, and only the user may write one).
pub async fn guarded(shared: &Shared, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let policy = shared.policy.current();
    let mut rules = policy.egress.clone();
    if host.parse::<IpAddr>().is_err() {
        rules.allow.push(AllowRule {
            host: HostPattern::Exact(host.to_string()),
            port: Some(port),
        });
    }
    let allowed = egress::check(&rules, host, port)
        .map_err(|d| format!("{}: {}", d.decision.rule, d.decision.reason))?;
    let checked = shared
        .check_destination(&rules, &allowed)
        .await
        .map_err(|e| match e {
            egress::ReachError::Refused(d) => format!("{}: {}", d.rule, d.reason),
            other => other.to_string(),
        })?;
    Ok(checked.addrs().to_vec())
}

/// The relay, bound and serving.
#[derive(Debug, Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    secret: String,
    shared: Arc<Shared>,
    client: reqwest::Client,
    /// The last upstream failure per remote, for the gate's messages.
    last_error: Mutex<HashMap<String, String>>,
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("git gate relay: cannot listen on 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
    #[error("git gate relay: cannot read random bytes for its path secret: {0}")]
    Random(#[source] std::io::Error),
    #[error("git gate relay: cannot build the upstream HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

impl Relay {
    /// Binds 127.0.0.1:0 and serves until the sidecar shuts down.
    pub async fn start(shared: Arc<Shared>) -> Result<Relay, RelayError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(RelayError::Bind)?;
        let addr = listener.local_addr().map_err(RelayError::Bind)?;
        let mut bytes = [0u8; 24];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(RelayError::Random)?;
        let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*shared.tls.upstream_config()).clone())
            .dns_resolver(Arc::new(GuardResolve {
                shared: shared.clone(),
            }))
            // Replaces the system proxy: only egress.upstream_proxy is used.
            .proxy(reqwest::Proxy::custom({
                let shared = shared.clone();
                move |_| proxy_url(&shared)
            }))
            .redirect(reqwest::redirect::Policy::none())
            .http1_only()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("bottle-git-gate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(RelayError::Client)?;
        let relay = Relay {
            inner: Arc::new(Inner {
                addr,
                secret,
                shared: shared.clone(),
                client,
                last_error: Mutex::default(),
            }),
        };
        let serving = relay.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shared.closing() => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let relay = serving.clone();
                        tokio::spawn(async move {
                            let svc = service_fn(move |req| {
                                let relay = relay.clone();
                                async move { Ok::<_, Infallible>(relay.forward(req).await) }
                            });
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                }
            }
        });
        Ok(relay)
    }

    /// The URL a child uses for `remote` (holds the path secret, never the
    /// token).
    pub fn url(&self, remote: &str) -> String {
        format!("http://{}/{}/{remote}", self.inner.addr, self.inner.secret)
    }

    /// Forgets `remote`'s last failure (call before an operation).
    pub fn clear_error(&self, remote: &str) {
        self.errors().remove(remote);
    }

    /// `remote`'s last upstream failure since [`Relay::clear_error`].
    pub fn last_error(&self, remote: &str) -> Option<String> {
        self.errors().get(remote).cloned()
    }

    fn errors(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.inner
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    async fn forward(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let Some(rest) = path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(self.inner.secret.as_str()))
            .and_then(|p| p.strip_prefix('/'))
        else {
            return text(StatusCode::NOT_FOUND, "not found\n");
        };
        let Some((name, tail)) = rest.split_once('/') else {
            return text(StatusCode::NOT_FOUND, "not found\n");
        };
        let policy = self.inner.shared.policy.current();
        let Some(remote) = policy.git.remote(name).cloned() else {
            return text(StatusCode::NOT_FOUND, "no such remote\n");
        };
        let query = req.uri().query().unwrap_or("");
        let target = match (tail, query) {
            ("info/refs", "service=git-upload-pack" | "service=git-receive-pack") => {
                remote.upstream.join(&format!("/info/refs?{query}"))
            }
            ("git-upload-pack" | "git-receive-pack", "") => {
                remote.upstream.join(&format!("/{tail}"))
            }
            _ => return text(StatusCode::NOT_FOUND, "not a smart-HTTP request\n"),
        };
        match self.send(&remote, req, &target).await {
            Ok(resp) => resp,
            Err(cause) => {
                self.errors().insert(name.to_string(), cause.clone());
                text(StatusCode::BAD_GATEWAY, &format!("{cause}\n"))
            }
        }
    }

    async fn send(
        &self,
        remote: &GitRemote,
        req: Request<Incoming>,
        target: &str,
    ) -> Result<Response<Body>, String> {
        let host = remote.upstream.host();
        let shared = &self.inner.shared;
        let proxied = shared.policy.current().egress.upstream_proxy.clone();
        if let Some(proxy) = proxied {
            // reqwest resolves only the proxy's name: check the upstream's
            // here, and the proxy's (its guard, its credential) too.
            guarded(shared, host, remote.upstream.port()).await?;
            proxy_route(shared, proxy.url.host()).await?;
        } else if host.parse::<IpAddr>().is_ok() {
            // reqwest does not resolve an address, so the guard runs here.
            guarded(shared, host, remote.upstream.port()).await?;
        }
        let (parts, body) = req.into_parts();
        let mut out = self.inner.client.request(parts.method.clone(), target);
        for name in FORWARDED {
            for value in parts.headers.get_all(name) {
                out = out.header(name, value);
            }
        }
        if let Some(cred) = &remote.credential {
            let secrets = self.inner.shared.secrets.current();
            let token = secrets
                .values()
                .find(|(n, _)| n == cred)
                .map(|(_, v)| v.to_string())
                .ok_or_else(|| {
                    format!("credential {cred} is not in the sidecar's secrets; set it on the host and run `bottle up` again")
                })?;
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Basic {basic}"))
                .map_err(|_| format!("credential {cred} holds characters a header cannot carry"))?;
            value.set_sensitive(true);
            out = out.header(reqwest::header::AUTHORIZATION, value);
        }
        if parts.method == hyper::Method::POST {
            out = out.body(reqwest::Body::wrap_stream(BodyDataStream::new(body)));
        }
        let resp = out.send().await.map_err(|e| chain(&e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let why = match &remote.credential {
                Some(c) => format!("the upstream refused the token in {c} ({status})"),
                None => format!(
                    "the upstream wants credentials ({status}); give the remote a token_from_env"
                ),
            };
            return Err(why);
        }
        if !status.is_success() {
            return Err(format!("the upstream answered {status}"));
        }
        let mut builder = Response::builder().status(status);
        for name in ["content-type", "cache-control"] {
            if let Some(v) = resp.headers().get(name) {
                builder = builder.header(name, v);
            }
        }
        let stream = resp
            .bytes_stream()
            .map_ok(Frame::data)
            .map_err(|e| std::io::Error::other(chain(&e)));
        Ok(builder
            .body(BodyExt::boxed_unsync(StreamBody::new(stream)))
            .unwrap_or_else(|_| text(StatusCode::BAD_GATEWAY, "bad upstream response\n")))
    }
}

/// `e` and its sources, joined, for a message.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        next = cause.source();
    }
    s
}

/// A plain-text response.
pub fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(BodyExt::boxed_unsync(
        Full::new(Bytes::from(body.to_string())).map_err(|never| match never {}),
    ));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
