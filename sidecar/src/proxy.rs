//! The explicit HTTP proxy on port 3128 (`HTTP_PROXY` / `HTTPS_PROXY`).
//!
//! HTTP/1 only. Three request shapes are served, everything else is refused:
//!
//! - `CONNECT host:port`: decided on the authority; allowed tunnels are
//!   spliced byte for byte to the checked address.
//! - absolute-form `http://` requests: decided on the URI's host and port
//!   (never on `Host` alone; a disagreeing `Host` is refused), then forwarded
//!   in origin form without `Proxy-*` or hop-by-hop headers.
//! - anything else (origin-form requests to the proxy itself, `https://` in
//!   absolute form, `TRACE`/`TRACK`) gets a 400 or 403 that says what to do.
//!
//! Each request or tunnel produces one egress log line. The decision and the
//! upstream connection come from [`crate::egress`], so other listeners can
//! enforce the same way.

use crate::egress::{self, Allowed, Refusal};
use crate::forward::{self, full, Counter, Metered, ProxyBody};
use crate::log::{EgressRecord, Logger};
use crate::policy_file::PolicyHandle;
use bottle_policy::{normalize_host, Verdict};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::http::uri::Authority;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A client that has not sent a full request head by then is dropped.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

struct Shared {
    policy: PolicyHandle,
    logger: Logger,
    /// Completes (with an error) when [`Proxy::serve`] returns: connections
    /// and tunnels stop with it.
    closed: watch::Receiver<()>,
}

/// A bound, not yet serving, explicit proxy.
pub struct Proxy {
    listener: TcpListener,
    policy: PolicyHandle,
    logger: Logger,
}

impl Proxy {
    /// Binds `addr` (port 0 picks a free port; see [`Proxy::local_addr`]).
    pub async fn bind(
        addr: SocketAddr,
        policy: PolicyHandle,
        logger: Logger,
    ) -> Result<Proxy, ProxyError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ProxyError::Bind { addr, source })?;
        Ok(Proxy {
            listener,
            policy,
            logger,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has a local address; fall back to
        // unspecified rather than panic if the OS says otherwise.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Accepts connections until `shutdown` completes, then stops every
    /// connection and tunnel it started.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let (close, closed) = watch::channel(());
        let shared = Arc::new(Shared {
            policy: self.policy,
            logger: self.logger,
            closed,
        });
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, client)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(serve_connection(stream, client, shared.clone()));
                    }
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning.
                        shared.logger.event("accept-error", json!({"error": e.to_string()}));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(close);
    }
}

async fn serve_connection(stream: TcpStream, client: SocketAddr, shared: Arc<Shared>) {
    let svc_shared = shared.clone();
    let service = service_fn(move |req| {
        let shared = svc_shared.clone();
        async move { Ok::<_, Infallible>(handle(req, client, &shared).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut closed = shared.closed.clone();
    tokio::select! {
        result = conn => {
            if let Err(e) = result {
                // Idle timeouts and clients that hang up are normal.
                if !(e.is_timeout() || e.is_incomplete_message() || e.is_canceled()) {
                    shared.logger.client_event(
                        client,
                        "connection-error",
                        json!({"error": e.to_string()}),
                    );
                }
            }
        }
        _ = closed.changed() => {}
    }
}

/// One request from a client, answered.
async fn handle(
    req: Request<Incoming>,
    client: SocketAddr,
    shared: &Arc<Shared>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let ctx = Ctx {
        client,
        started,
        shared,
        record: record_for(&req, client),
        what: describe(&req),
    };
    let method = req.method().as_str();
    if method == "TRACE" || method == "TRACK" {
        let refusal = Refusal {
            what: ctx.what.clone(),
            decision: egress::refusal(
                "method-not-allowed",
                format!("{method} echoes requests back and is never forwarded"),
            ),
            hint: "use another method; TRACE and TRACK are refused for every host".into(),
        };
        return ctx.refuse(StatusCode::FORBIDDEN, &refusal);
    }
    if req.method() == Method::CONNECT {
        return connect_request(req, ctx).await;
    }
    match req.uri().scheme_str() {
        Some("http") => forward_request(req, ctx).await,
        Some("https") => {
            let refusal = Refusal {
                what: ctx.what.clone(),
                decision: egress::refusal(
                    "https-needs-connect",
                    "an https:// URL was sent to the proxy in absolute form; the proxy does not open TLS for clients",
                ),
                hint: "send CONNECT host:443 and speak TLS inside the tunnel (set HTTPS_PROXY to this proxy; curl, pip, npm and git do this themselves)".into(),
            };
            ctx.refuse(StatusCode::BAD_REQUEST, &refusal)
        }
        Some(other) => {
            let refusal = Refusal {
                what: ctx.what.clone(),
                decision: egress::refusal(
                    "unsupported-scheme",
                    format!("the proxy forwards only http:// requests and CONNECT tunnels, not {other}://"),
                ),
                hint: "use http://, or CONNECT host:port for anything else".into(),
            };
            ctx.refuse(StatusCode::BAD_REQUEST, &refusal)
        }
        None => {
            let refusal = Refusal {
                what: ctx.what.clone(),
                decision: egress::refusal(
                    "not-a-proxy-request",
                    "this is bottle's egress proxy, not a web server; the request named no destination",
                ),
                hint: "set HTTP_PROXY and HTTPS_PROXY to this address and request full URLs (GET http://host/path) or CONNECT host:port".into(),
            };
            ctx.refuse(StatusCode::BAD_REQUEST, &refusal)
        }
    }
}

/// What every handler needs to answer and log one request.
struct Ctx<'a> {
    client: SocketAddr,
    started: Instant,
    shared: &'a Arc<Shared>,
    record: EgressRecord,
    /// `CONNECT host:port` / `GET http://host/path`, for refusal bodies.
    what: String,
}

impl Ctx<'_> {
    fn log(&self, mut record: EgressRecord) {
        record.duration_ms = millis(self.started);
        self.shared.logger.egress(self.client, &record);
    }

    /// Logs a denial and answers it.
    fn refuse(self, status: StatusCode, refusal: &Refusal) -> Response<ProxyBody> {
        let mut record = self.record.clone();
        record.rule = refusal.decision.rule.clone();
        record.decision = Verdict::Deny;
        record.status = status.as_u16();
        self.log(record);
        text(status, refusal.body())
    }

    /// Logs an allowed destination that could not be reached and answers 502.
    fn unreachable(self, allowed: &Allowed, error: String) -> Response<ProxyBody> {
        let mut record = self.record.clone();
        record.rule = allowed.decision().rule.clone();
        record.decision = Verdict::Allow;
        record.status = StatusCode::BAD_GATEWAY.as_u16();
        record.error = Some(error.clone());
        self.log(record);
        text(
            StatusCode::BAD_GATEWAY,
            format!(
                "bottle egress: {} is allowed (rule: {}) but could not be reached\nwhy: {error}\n",
                egress::host_port(allowed.host(), allowed.port()),
                allowed.decision().rule,
            ),
        )
    }
}

async fn connect_request(mut req: Request<Incoming>, ctx: Ctx<'_>) -> Response<ProxyBody> {
    let target = req
        .uri()
        .authority()
        .filter(|_| req.uri().scheme().is_none())
        .and_then(|a| Some((a.host().to_string(), a.port_u16()?)));
    let Some((host, port)) = target else {
        let refusal = Refusal {
            what: ctx.what.clone(),
            decision: egress::refusal(
                "bad-request",
                "CONNECT needs a host and a port (CONNECT host:port)",
            ),
            hint: "send CONNECT host:port, e.g. CONNECT api.example.com:443".into(),
        };
        return ctx.refuse(StatusCode::BAD_REQUEST, &refusal);
    };
    let policy = ctx.shared.policy.current();
    let allowed = match egress::check(&policy.egress, &host, port) {
        Ok(allowed) => allowed,
        Err(denied) => {
            let mut ctx = ctx;
            ctx.record = ctx.record.host(&denied.host, Some(port));
            let refusal = Refusal::denied(ctx.what.clone(), &denied);
            return ctx.refuse(StatusCode::FORBIDDEN, &refusal);
        }
    };
    let mut ctx = ctx;
    ctx.record = ctx.record.host(allowed.host(), Some(port));
    let mut upstream = match egress::connect(&allowed).await {
        Ok((stream, _addr)) => stream,
        Err(e) => return ctx.unreachable(&allowed, e.to_string()),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let mut record = ctx.record.clone();
    record.rule = allowed.decision().rule.clone();
    record.decision = Verdict::Allow;
    record.status = StatusCode::OK.as_u16();
    let logger = ctx.shared.logger.clone();
    let mut closed = ctx.shared.closed.clone();
    let (client, started) = (ctx.client, ctx.started);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut io = TokioIo::new(upgraded);
                tokio::select! {
                    outcome = egress::tunnel(&mut io, &mut upstream) => {
                        record.bytes_up = outcome.bytes_up;
                        record.bytes_down = outcome.bytes_down;
                        record.error = outcome.error.map(|e| e.to_string());
                    }
                    _ = closed.changed() => {
                        record.error = Some("sidecar shutting down".into());
                    }
                }
            }
            Err(e) => record.error = Some(format!("client left before the tunnel opened: {e}")),
        }
        record.duration_ms = millis(started);
        logger.egress(client, &record);
    });
    Response::new(full(""))
}

async fn forward_request(req: Request<Incoming>, ctx: Ctx<'_>) -> Response<ProxyBody> {
    let uri = req.uri().clone();
    let (host, port) = match uri.authority() {
        Some(a) if !a.host().is_empty() => (a.host().to_string(), a.port_u16().unwrap_or(80)),
        _ => {
            let refusal = Refusal {
                what: ctx.what.clone(),
                decision: egress::refusal("bad-request", "the URL names no host"),
                hint: "request a full URL, e.g. GET http://host/path".into(),
            };
            return ctx.refuse(StatusCode::BAD_REQUEST, &refusal);
        }
    };
    if let Some(why) = host_header_mismatch(req.headers(), &host, port) {
        let refusal = Refusal {
            what: ctx.what.clone(),
            decision: egress::refusal("host-mismatch", why),
            hint: "send a Host header equal to the URL's host[:port], or none".into(),
        };
        return ctx.refuse(StatusCode::FORBIDDEN, &refusal);
    }
    let policy = ctx.shared.policy.current();
    let allowed = match egress::check(&policy.egress, &host, port) {
        Ok(allowed) => allowed,
        Err(denied) => {
            let mut ctx = ctx;
            ctx.record.host = Some(denied.host.clone());
            let refusal = Refusal::denied(ctx.what.clone(), &denied);
            return ctx.refuse(StatusCode::FORBIDDEN, &refusal);
        }
    };
    let mut ctx = ctx;
    ctx.record.host = Some(allowed.host().to_string());
    let stream = match egress::connect(&allowed).await {
        Ok((stream, _addr)) => stream,
        Err(e) => return ctx.unreachable(&allowed, e.to_string()),
    };
    // Host for the origin: the URL's authority without userinfo, exactly as
    // checked above.
    let host_header = match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let Ok(host_header) = HeaderValue::from_str(&host_header) else {
        return ctx.unreachable(&allowed, "the URL's host is not a valid Host header".into());
    };
    let up = Counter::default();
    let down = Counter::default();
    let req = forward::upstream_request(req.map(|b| Metered::new(b, up.clone())), host_header);
    match forward::send(stream, req).await {
        Err(e) => ctx.unreachable(&allowed, e.to_string()),
        Ok(resp) => {
            let mut record = ctx.record.clone();
            record.rule = allowed.decision().rule.clone();
            record.decision = Verdict::Allow;
            record.status = resp.status().as_u16();
            let guard = LogOnDrop {
                logger: ctx.shared.logger.clone(),
                client: ctx.client,
                started: ctx.started,
                record,
                up,
                down: down.clone(),
            };
            resp.map(|body| Metered::with_guard(body, down, guard).boxed())
        }
    }
}

/// Writes the log line for a forwarded request when its response body is
/// finished or abandoned, so the byte counts are final.
struct LogOnDrop {
    logger: Logger,
    client: SocketAddr,
    started: Instant,
    record: EgressRecord,
    up: Counter,
    down: Counter,
}

impl Drop for LogOnDrop {
    fn drop(&mut self) {
        self.record.bytes_up = self.up.get();
        self.record.bytes_down = self.down.get();
        self.record.duration_ms = millis(self.started);
        self.logger.egress(self.client, &self.record);
    }
}

/// `Some(reason)` when a `Host` header is present and names another
/// destination than the URI. The reason never quotes the header.
fn host_header_mismatch(headers: &HeaderMap, uri_host: &str, uri_port: u16) -> Option<String> {
    let mut values = headers.get_all(HOST).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return Some("the request carries more than one Host header".into());
    }
    let target = egress::host_port(uri_host, uri_port);
    let parsed = first
        .to_str()
        .ok()
        .and_then(|s| s.parse::<Authority>().ok())
        .filter(|a| !a.as_str().contains('@'));
    let Some(auth) = parsed else {
        return Some(format!(
            "the Host header is not a valid host[:port]; the URL names {target}"
        ));
    };
    let same_host = match (normalize_host(auth.host()), normalize_host(uri_host)) {
        (Ok(a), Ok(b)) => a == b,
        _ => auth.host().eq_ignore_ascii_case(uri_host),
    };
    if same_host && auth.port_u16().unwrap_or(80) == uri_port {
        None
    } else {
        Some(format!(
            "the Host header names a different destination than the URL ({target}); the URL is what the policy checked"
        ))
    }
}

/// The log record's identity fields for `req`.
fn record_for(req: &Request<Incoming>, client: SocketAddr) -> EgressRecord {
    let uri = req.uri();
    let mut record = EgressRecord::new(client, req.method().as_str());
    if let Some(a) = uri.authority() {
        let default = match uri.scheme_str() {
            Some("https") => Some(443),
            Some(_) => Some(80),
            None => None,
        };
        record = record.host(a.host(), a.port_u16().or(default));
    }
    if req.method() != Method::CONNECT {
        record = record.path(uri.path());
    }
    record
}

/// `METHOD target` for messages: the query is left out.
fn describe(req: &Request<Incoming>) -> String {
    let uri = req.uri();
    let target = if req.method() == Method::CONNECT {
        uri.authority().map(|a| a.to_string()).unwrap_or_default()
    } else {
        match (uri.scheme_str(), uri.authority()) {
            (Some(s), Some(a)) => format!("{s}://{}{}", a.as_str(), uri.path()),
            _ => uri.path().to_string(),
        }
    };
    format!("{} {target}", req.method())
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn host_header_must_match_the_uri() {
        assert_eq!(host_header_mismatch(&headers(&[]), "a.example", 80), None);
        for ok in ["a.example", "A.Example.", "a.example:80"] {
            let h = headers(&[("host", ok)]);
            assert_eq!(host_header_mismatch(&h, "a.example", 80), None, "{ok}");
        }
        let h = headers(&[("host", "127.0.0.1:8080")]);
        assert_eq!(host_header_mismatch(&h, "127.0.0.1", 8080), None);
        for bad in ["b.example", "a.example:81", "x@a.example", "a example"] {
            let h = headers(&[("host", bad)]);
            assert!(host_header_mismatch(&h, "a.example", 80).is_some(), "{bad}");
        }
        let h = headers(&[("host", "a.example"), ("host", "a.example")]);
        assert!(host_header_mismatch(&h, "a.example", 80).is_some());
        let h = headers(&[("host", "[::1]:8080")]);
        assert_eq!(host_header_mismatch(&h, "[::1]", 8080), None);
    }
}
