//! The transparent listeners on :80 and :443, for clients that ignore proxy
//! variables. They reach the sidecar because its DNS answers every allowed
//! name with the sidecar's own address ([`crate::dns`]).
//!
//! - :443 reads the SNI from the ClientHello and treats the connection
//!   exactly like `CONNECT <sni>:443`: decided on host and port, resolved once
//!   and guarded, then intercepted with every per-request check of
//!   [`crate::intercept`] (`Host` must equal the SNI). No SNI, no service. A
//!   denied name still gets a certificate (from the bottle CA, which only this
//!   bottle trusts) so the client can read the 403.
//! - :80 has no authority but `Host`, so each request is decided on its `Host`
//!   with port 80, then forwarded like an absolute-form request to the
//!   explicit proxy. A request without `Host`, or whose `Host` names another
//!   port, is refused.

use crate::egress::{self, access_hint, rule_hint, ReachError};
use crate::exchange::{describe, Exchange};
use crate::forward::{self, host_header_mismatch, ProxyBody};
use crate::intercept::{self, Canned, Session};
use crate::limits::Deadlines;
use crate::listen::{self, ClientStream, ListenError, OverCap};
use crate::log::EgressRecord;
use crate::proxy::forward_plain;
use crate::shared::Shared;
use crate::supervise::Supervisor;
use bottle_policy::normalize_host;
use hyper::body::Incoming;
use hyper::header::HOST;
use hyper::http::uri::Authority;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio_rustls::LazyConfigAcceptor;

/// A bound transparent listener.
#[derive(Debug)]
pub struct Transparent {
    listener: TcpListener,
    tls: bool,
}

impl Transparent {
    /// Binds the :80 (`tls = false`) or :443 (`tls = true`) listener.
    pub async fn bind(addr: SocketAddr, tls: bool) -> Result<Self, ListenError> {
        let name = if tls { "https" } else { "http" };
        Ok(Transparent {
            listener: listen::bind_tcp(name, addr).await?,
            tls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        listen::local_addr(&self.listener)
    }

    /// Accepts connections until the sidecar shuts down.
    pub async fn serve(self, shared: Arc<Shared>) {
        // A TLS client could not read a plain-text 503: just close.
        if self.tls {
            listen::accept_loop(self.listener, shared, "https", OverCap::Close, serve_tls).await;
        } else {
            listen::accept_loop(self.listener, shared, "http", OverCap::Http503, serve_http).await;
        }
    }
}

async fn serve_tls(stream: ClientStream, client: SocketAddr, shared: Arc<Shared>) {
    let port = shared.transparent_https_port;
    let handshake = shared.limits().handshake();
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let start = match tokio::time::timeout(handshake, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            shared.logger.client_event(
                client,
                "tls-handshake-failed",
                json!({"listener": "https", "error": e.to_string()}),
            );
            return;
        }
        Err(_) => return,
    };
    let sni = start.client_hello().server_name().map(str::to_string);
    let refuse_raw = |rule: &str, host: Option<&str>| {
        let mut record = EgressRecord::new(client, "TLS");
        if let Some(h) = host {
            record = record.host(h, Some(port));
        }
        record.rule = rule.into();
        record.status = StatusCode::FORBIDDEN.as_u16();
        record.error = Some("closed without a certificate".into());
        shared.logger.egress(client, &record);
    };
    let Some(sni) = sni else {
        // Nothing to present a certificate for, so nothing to answer with.
        refuse_raw("sni-missing", None);
        return;
    };
    let Ok(host) = normalize_host(&sni) else {
        refuse_raw("invalid-host", None);
        return;
    };
    let policy = shared.policy.current();
    let allowed = match egress::check(&policy.egress, &host, port) {
        Ok(a) => a,
        Err(denied) => {
            match Supervisor::on_denied(&shared, &policy, denied, &format!("TLS {host}:{port}"))
                .await
            {
                Ok(granted) => granted,
                Err(denied) => {
                    let hint = match denied.decision.rule.as_str() {
                        "invalid-host" => access_hint(&denied),
                        _ => shared.ask_hint(access_hint(&denied)),
                    };
                    let canned = Canned::forbid(denied.decision.clone(), hint);
                    intercept::refuse_in_tls(start, &host, port, canned, client, shared.clone())
                        .await;
                    return;
                }
            }
        }
    };
    let checked = match shared.check_destination(&policy.egress, &allowed).await {
        Ok(c) => c,
        Err(ReachError::Refused(decision)) => {
            let hint = rule_hint(&decision, &host);
            let canned = Canned::forbid(decision, hint);
            intercept::refuse_in_tls(start, &host, port, canned, client, shared.clone()).await;
            return;
        }
        Err(e) => {
            let canned = Canned {
                status: StatusCode::BAD_GATEWAY,
                decision: egress::refusal("unreachable", e.to_string()),
                hint: format!(
                    "{} is allowed (rule: {}); retry later or check that the name resolves",
                    forward::host_port(&host, port),
                    allowed.decision().rule
                ),
            };
            intercept::refuse_in_tls(start, &host, port, canned, client, shared.clone()).await;
            return;
        }
    };
    // Clients here think they talk to port 443: a `Host` without a port means
    // the port this listener forwards to.
    let session = Session::new(shared.clone(), client, checked, true, None, Some(port));
    let stream = match tokio::time::timeout(
        handshake,
        start.into_stream(match shared.tls.server_config(&host) {
            Ok(c) => c,
            Err(e) => {
                shared
                    .logger
                    .event("mint-error", json!({"error": e.to_string()}));
                return;
            }
        }),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.logger.client_event(
                client,
                "tls-handshake-failed",
                json!({"listener": "https", "host": host, "error": e.to_string()}),
            );
            return;
        }
        Err(_) => return,
    };
    let wire = crate::wire::Wire::from_alpn(stream.get_ref().1.alpn_protocol());
    intercept::serve_http(stream, wire, session).await;
}

async fn serve_http(mut stream: ClientStream, client: SocketAddr, shared: Arc<Shared>) {
    let (h2, prefix) = crate::wire::read_preface(&mut stream, shared.limits().handshake()).await;
    if h2 {
        crate::proxy::refuse_h2(&mut stream, client, &shared, "transparent HTTP").await;
        return;
    }
    let stream = crate::io::Prefixed::new(prefix, stream);
    let svc_shared = shared.clone();
    let service = service_fn(move |req| {
        let shared = svc_shared.clone();
        async move { Ok::<_, Infallible>(handle_http(req, client, &shared).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits().handshake())
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        () = shared.closing() => {}
    }
}

/// One request on :80, decided on its `Host`.
async fn handle_http(
    req: Request<Incoming>,
    client: SocketAddr,
    shared: &Arc<Shared>,
) -> Response<ProxyBody> {
    let port = shared.transparent_http_port;
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<Authority>().ok())
        .map(|a| a.host().to_string());
    let mut record = EgressRecord::new(client, &method).path(&path);
    if let Some(h) = &host {
        record = record.host(h, Some(port));
    }
    let ex = Exchange {
        logger: shared.logger.clone(),
        client,
        started: Instant::now(),
        record,
        what: describe(&method, "http", host.as_deref().unwrap_or("?"), port, &path),
    };
    let Some(host) = host else {
        return ex.forbid(
            egress::refusal(
                "host-missing",
                "a request to the transparent HTTP listener needs a valid Host header: it is the only thing naming the destination",
            ),
            "send Host: <the name you are requesting>".into(),
        );
    };
    // The Host's port (if any) must be the one this listener serves, and an
    // absolute-form URL, if sent, must agree.
    if let Some(why) = host_header_mismatch(req.headers(), &host, port, port, true) {
        return ex.forbid(
            egress::refusal("host-mismatch", why),
            format!("the transparent listener serves port {port} only"),
        );
    }
    if let Some(a) = req.uri().authority() {
        let same = crate::forward::same_host(a.host(), &host)
            && a.port_u16().unwrap_or(80) == port
            && req.uri().scheme_str() == Some("http");
        if !same {
            return ex.forbid(
                egress::refusal(
                    "host-mismatch",
                    "the request URL names a different destination than its Host header",
                ),
                "send the same host in the URL and in Host".into(),
            );
        }
    }
    forward_plain(req, &host, port, ex, shared).await
}
