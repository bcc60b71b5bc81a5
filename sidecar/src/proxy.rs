//! The explicit HTTP proxy on port 3128 (`HTTP_PROXY` / `HTTPS_PROXY`).
//!
//! HTTP/1 only. Three request shapes are served, everything else is refused:
//!
//! - `CONNECT host:port`: decided on the authority (host AND port), resolved
//!   once and checked by the destination guard, connected to the checked
//!   address; after the 200 the tunnel is handed to [`crate::intercept`],
//!   which terminates TLS (or serves plain HTTP) and checks every request.
//!   Bytes that are neither are refused, never piped.
//! - absolute-form `http://` requests: decided on the URI's host, port,
//!   method and path (never on `Host` alone; a disagreeing `Host` is refused),
//!   then forwarded in origin form without `Proxy-*` or hop-by-hop headers
//!   (`forward_plain`, shared with the transparent :80 listener).
//! - anything else (origin-form requests to the proxy itself, `https://` in
//!   absolute form, `TRACE`/`TRACK`) gets a 400 or 403 that says what to do.
//!
//! Each request or tunnel produces one audit line.

use crate::body::AgentBody;
use crate::dlp;
use crate::egress::{self, access_hint, rule_hint, Allowed, Denied, ReachError, Refusal};
use crate::exchange::{millis, Exchange, Redaction};
use crate::forward::{self, host_header_mismatch, ProxyBody};
use crate::intercept;
use crate::limits::Deadlines;
use crate::listen::{ClientStream, ListenError, OverCap};
use crate::log::EgressRecord;
use crate::redact::Needles;
use crate::secrets;
use crate::shared::Shared;
use crate::supervise::{self, Supervisor};
use bottle_policy::{EgressPolicy, Verdict};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::{TcpListener, TcpStream};

/// A bound, not yet serving, explicit proxy.
#[derive(Debug)]
pub struct Proxy {
    listener: TcpListener,
}

impl Proxy {
    /// Binds `addr` (port 0 picks a free port; see [`Proxy::local_addr`]).
    pub async fn bind(addr: SocketAddr) -> Result<Proxy, ListenError> {
        Ok(Proxy {
            listener: crate::listen::bind_tcp("proxy", addr).await?,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        crate::listen::local_addr(&self.listener)
    }

    /// Accepts connections until the sidecar shuts down.
    pub async fn serve(self, shared: Arc<Shared>) {
        crate::listen::accept_loop(
            self.listener,
            shared,
            "proxy",
            OverCap::Http503,
            serve_connection,
        )
        .await;
    }
}

async fn serve_connection(mut stream: ClientStream, client: SocketAddr, shared: Arc<Shared>) {
    let handshake = shared.limits().handshake();
    let (h2, prefix) = crate::wire::read_preface(&mut stream, handshake).await;
    if h2 {
        refuse_h2(&mut stream, client, &shared, "proxy").await;
        return;
    }
    let stream = crate::io::Prefixed::new(prefix, stream);
    let svc_shared = shared.clone();
    let service = service_fn(move |req| {
        let shared = svc_shared.clone();
        async move { Ok::<_, Infallible>(handle(req, client, &shared).await) }
    });
    // A total deadline for each request head (hyper's timer runs from the
    // first byte wait to the end of the head, not per read).
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
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
        () = shared.closing() => {}
    }
}

/// Turns away a client that opened a listener routing by `Host` (the
/// explicit proxy, transparent :80) with the HTTP/2 preface: a `GOAWAY`
/// (`HTTP_1_1_REQUIRED`) that says why, and a log line.
pub(crate) async fn refuse_h2<S>(io: &mut S, client: SocketAddr, shared: &Shared, listener: &str)
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let why = format!("bottle egress: the {listener} listener speaks HTTP/1.1 only; send HTTP/2 inside a CONNECT tunnel (https://, or prior knowledge after CONNECT) instead");
    crate::wire::refuse_prior_knowledge(io, &why).await;
    let mut record = EgressRecord::new(client, "PRI");
    record.rule = "h2-prior-knowledge".into();
    record.status = StatusCode::HTTP_VERSION_NOT_SUPPORTED.as_u16();
    record.error = Some(why);
    shared.logger.egress(client, &record);
}

/// One request from a client, answered.
async fn handle(
    req: Request<Incoming>,
    client: SocketAddr,
    shared: &Arc<Shared>,
) -> Response<ProxyBody> {
    let ex = Exchange {
        logger: shared.logger.clone(),
        client,
        started: Instant::now(),
        record: record_for(&req, client),
        what: describe(&req),
    };
    let method = req.method().as_str();
    if bottle_policy::FORBIDDEN_METHODS
        .iter()
        .any(|m| m.eq_ignore_ascii_case(method))
    {
        let decision = egress::refusal(
            "method-not-allowed",
            format!("{method} echoes requests back and is never forwarded"),
        );
        let hint = rule_hint(&decision, "");
        return ex.forbid(decision, hint);
    }
    if req.method() == Method::CONNECT {
        return connect_request(req, ex, shared).await;
    }
    match req.uri().scheme_str() {
        Some("http") => {
            let target = req
                .uri()
                .authority()
                .filter(|a| !a.host().is_empty())
                .map(|a| (a.host().to_string(), a.port_u16().unwrap_or(80)));
            let Some((host, port)) = target else {
                let refusal = Refusal {
                    what: ex.what.clone(),
                    decision: egress::refusal("bad-request", "the URL names no host"),
                    hint: "request a full URL, e.g. GET http://host/path".into(),
                };
                return ex.refuse(StatusCode::BAD_REQUEST, &refusal);
            };
            if let Some(why) = host_header_mismatch(req.headers(), &host, port, 80, false) {
                let decision = egress::refusal("host-mismatch", why);
                return ex.forbid(
                    decision,
                    "send a Host header equal to the URL's host[:port], or none".into(),
                );
            }
            forward_plain(req, &host, port, ex, shared).await
        }
        Some("https") => {
            let refusal = Refusal {
                what: ex.what.clone(),
                decision: egress::refusal(
                    "https-needs-connect",
                    "an https:// URL was sent to the proxy in absolute form; the proxy does not open TLS for clients",
                ),
                hint: "send CONNECT host:443 and speak TLS inside the tunnel (set HTTPS_PROXY to this proxy; curl, pip, npm and git do this themselves)".into(),
            };
            ex.refuse(StatusCode::BAD_REQUEST, &refusal)
        }
        Some(other) => {
            let refusal = Refusal {
                what: ex.what.clone(),
                decision: egress::refusal(
                    "unsupported-scheme",
                    format!("the proxy forwards only http:// requests and CONNECT tunnels, not {other}://"),
                ),
                hint: "use http://, or CONNECT host:port for anything else".into(),
            };
            ex.refuse(StatusCode::BAD_REQUEST, &refusal)
        }
        None => {
            let refusal = Refusal {
                what: ex.what.clone(),
                decision: egress::refusal(
                    "not-a-proxy-request",
                    "this is bottle's egress proxy, not a web server; the request named no destination",
                ),
                hint: "set HTTP_PROXY and HTTPS_PROXY to this address and request full URLs (GET http://host/path) or CONNECT host:port".into(),
            };
            ex.refuse(StatusCode::BAD_REQUEST, &refusal)
        }
    }
}

/// The refusal for a destination the policy denied, with the matching hint.
pub(crate) fn deny_destination(
    ex: Exchange,
    denied: &Denied,
    shared: &Shared,
) -> Response<ProxyBody> {
    let hint = match denied.decision.rule.as_str() {
        "invalid-host" => access_hint(denied),
        "default-deny" | "supervise-denied" | "supervise-expired" | "supervise-busy" => {
            shared.ask_hint(access_hint(denied))
        }
        _ => rule_hint(&denied.decision, &denied.host),
    };
    ex.forbid(denied.decision.clone(), hint)
}

async fn connect_request(
    mut req: Request<Incoming>,
    ex: Exchange,
    shared: &Arc<Shared>,
) -> Response<ProxyBody> {
    let target = req
        .uri()
        .authority()
        .filter(|_| req.uri().scheme().is_none())
        .and_then(|a| Some((a.host().to_string(), a.port_u16()?)));
    let Some((host, port)) = target else {
        let refusal = Refusal {
            what: ex.what.clone(),
            decision: egress::refusal(
                "bad-request",
                "CONNECT needs a host and a port (CONNECT host:port)",
            ),
            hint: "send CONNECT host:port, e.g. CONNECT api.example.com:443".into(),
        };
        return ex.refuse(StatusCode::BAD_REQUEST, &refusal);
    };
    let mut ex = ex;
    let policy = shared.policy.current();
    let allowed = match egress::check(&policy.egress, &host, port) {
        Ok(allowed) => allowed,
        Err(denied) => match Supervisor::on_denied(shared, &policy, denied, &ex.what).await {
            Ok(granted) => granted,
            Err(denied) => {
                ex.record = ex.record.host(&denied.host, Some(port));
                return deny_destination(ex, &denied, shared);
            }
        },
    };
    ex.record = ex.record.host(allowed.host(), Some(port));
    let (checked, upstream) = match reach(&policy.egress, &allowed, shared).await {
        Ok(reached) => reached,
        Err(resp) => return resp(ex),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let mut record = ex.record.clone();
    record.rule = allowed.decision().rule.clone();
    record.decision = Verdict::Allow;
    record.status = StatusCode::OK.as_u16();
    let shared = shared.clone();
    let (client, started) = (ex.client, ex.started);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let end = intercept::serve_connect_tunnel(
                    TokioIo::new(upgraded),
                    checked,
                    upstream,
                    client,
                    shared.clone(),
                )
                .await;
                record.bytes_up = end.bytes_up;
                record.bytes_down = end.bytes_down;
                record.error = end.error;
            }
            Err(e) => record.error = Some(format!("client left before the tunnel opened: {e}")),
        }
        record.duration_ms = millis(started);
        shared.logger.egress(client, &record);
    });
    Response::new(forward::full(""))
}

/// An answer for a destination that was allowed but not reached: built
/// lazily because it consumes the exchange.
type Failed = Box<dyn FnOnce(Exchange) -> Response<ProxyBody> + Send>;

/// Resolves, guards and connects an allowed destination.
async fn reach(
    policy: &EgressPolicy,
    allowed: &Allowed,
    shared: &Shared,
) -> Result<(egress::Checked, TcpStream), Failed> {
    let target = forward::host_port(allowed.host(), allowed.port());
    let rule = allowed.decision().rule.clone();
    let host = allowed.host().to_string();
    let checked = match shared.check_destination(policy, allowed).await {
        Ok(c) => c,
        Err(ReachError::Refused(decision)) => {
            return Err(Box::new(move |ex: Exchange| {
                let hint = rule_hint(&decision, &host);
                ex.forbid(decision, hint)
            }))
        }
        Err(e) => {
            let e = e.to_string();
            return Err(Box::new(move |ex: Exchange| {
                ex.unreachable(&target, &rule, e)
            }));
        }
    };
    match egress::connect(&checked).await {
        Ok((stream, _addr)) => Ok((checked, stream)),
        Err(e) => {
            let e = e.to_string();
            Err(Box::new(move |ex: Exchange| {
                ex.unreachable(&target, &rule, e)
            }))
        }
    }
}

/// Forwards one plain-HTTP request to `host:port` (from an absolute-form URL
/// or, on the transparent listener, from `Host`): decided on method and path
/// too, credentials checked (never injected in plain HTTP), guarded, sent on
/// a fresh connection to the checked address.
pub(crate) async fn forward_plain(
    req: Request<Incoming>,
    host: &str,
    port: u16,
    ex: Exchange,
    shared: &Arc<Shared>,
) -> Response<ProxyBody> {
    let mut ex = ex;
    let policy = shared.policy.current();
    let path = req.uri().path().to_string();
    let allowed = match egress::check(&policy.egress, host, port) {
        Ok(allowed) => allowed,
        Err(denied) => match Supervisor::on_denied(shared, &policy, denied, &ex.what).await {
            Ok(granted) => granted,
            Err(denied) => {
                ex.record.host = Some(denied.host.clone());
                return deny_destination(ex, &denied, shared);
            }
        },
    };
    ex.record.host = Some(allowed.host().to_string());
    // A supervise approval the policy does not hold covers this request's
    // host and port (never the guard, which runs on `policy` below).
    let widened = allowed
        .by_supervise()
        .then(|| supervise::widened(&policy.egress, &allowed));
    let decision = widened.as_ref().unwrap_or(&policy.egress).decide_request(
        allowed.host(),
        port,
        req.method().as_str(),
        &path,
    );
    if decision.verdict == Verdict::Deny {
        let denied = Denied {
            host: allowed.host().to_string(),
            port,
            decision,
        };
        return deny_destination(ex, &denied, shared);
    }
    if let Some(d) = forward::method_override(
        &policy.egress,
        allowed.host(),
        req.headers(),
        req.uri().query(),
    ) {
        return ex.forbid(d, forward::METHOD_OVERRIDE_HINT.into());
    }
    if let Some(d) = forward::encrypted_dns(&policy.egress, allowed.host(), port, req.headers()) {
        return ex.forbid(d, bottle_policy::ENCRYPTED_DNS_HINT.into());
    }
    let target = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let Some(host_value) = forward::host_header(allowed.host(), port, 80) else {
        return ex.unreachable(
            &forward::host_port(allowed.host(), port),
            &decision.rule,
            "the host is not a valid Host header".into(),
        );
    };
    let mut ticket = match shared.budget.admit(
        &policy.egress.budget,
        allowed.host(),
        (req.method().as_str(), &path),
        &shared.logger,
        ex.client,
    ) {
        Ok(t) => t,
        Err(exhausted) => return crate::budget::refuse(ex, &exhausted, shared),
    };
    let up = ticket.up();
    let (parts, incoming) = req.into_parts();
    let (body, watch) = AgentBody::new(incoming, up.clone(), shared.limits().body_gap());
    let mut upreq = forward::upstream_request(Request::from_parts(parts, body), host_value);
    ticket.prepare(upreq.headers_mut());
    let secrets = shared.secrets.current();
    let injected = match secrets::apply(
        &policy.egress,
        &secrets,
        allowed.host(),
        &target,
        false,
        upreq.headers_mut(),
    ) {
        Ok(injected) => injected,
        Err(d) => {
            let hint = rule_hint(&d, allowed.host());
            return ex.forbid(d, hint);
        }
    };
    let method = upreq.method().as_str().to_string();
    let (ex, upreq, scope) = match dlp::gate(
        ex,
        shared,
        allowed.host(),
        port,
        &method,
        &path,
        &secrets,
        upreq,
        watch.clone(),
    )
    .await
    {
        Ok(gated) => gated,
        Err(answer) => return answer,
    };
    let redaction = Redaction {
        needles: Needles::new(&secrets),
        injected,
        inbound: scope.filter(|s| s.inbound),
    };
    let (_, stream) = match reach(&policy.egress, &allowed, shared).await {
        Ok(reached) => reached,
        Err(resp) => return resp(ex),
    };
    ticket.sent();
    match forward::send(stream, upreq).await {
        Ok(resp) => ticket.finish(ex.forwarded(&decision.rule, up, resp, redaction)),
        Err(e) => match (ticket.unsent(), watch.failure()).1 {
            Some(failure) => ex.bad_body(&failure),
            None => ex.unreachable(
                &forward::host_port(allowed.host(), port),
                &decision.rule,
                e.to_string(),
            ),
        },
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
