//! TLS interception and per-request enforcement inside a tunnel.
//!
//! Built on hyper + tokio-rustls + rcgen directly, not hudsucker: hudsucker
//! 0.25 pipes bytes that are neither TLS nor `GET ` straight through an
//! allowed tunnel without calling any handler, and its request handler only
//! sees plain requests after its own connector decided where to send them.
//! Here every byte of a tunnel goes through one of three doors, chosen by
//! sniffing the first bytes ([`classify`]):
//!
//! - a TLS ClientHello: its SNI must name the host the tunnel was allowed for
//!   (the CONNECT authority, or the SNI itself on the transparent :443
//!   listener); the sidecar terminates TLS with a leaf minted by the bottle CA
//!   ([`crate::tls`]) and serves HTTP/2 or HTTP/1.1, as the client chose by
//!   ALPN, on the decrypted stream ([`crate::wire`]);
//! - an HTTP/1 request line, or the HTTP/2 preface (prior knowledge): served
//!   the same way without TLS;
//! - anything else: answered with a 403 text and closed. Nothing is ever
//!   piped.
//!
//! Each request is then checked on its own (`Session::handle`): `Host` (and
//! an absolute-form URL) must name the tunnel's destination; the request is
//! decided again on the *current* policy by method and path
//! (`EgressPolicy::decide_request`); credentials are injected or a leaked
//! placeholder refused ([`crate::secrets`]); `Proxy-*` and hop-by-hop headers
//! are stripped; WebSocket upgrades are forwarded only after all of that.
//! Every HTTP/2 stream is one such request. Requests go upstream over
//! kept-alive connections of the tunnel's own (`Upstream`), opened to an
//! address the destination guard checked, with TLS verified against the
//! webpki roots (plus `upstream-roots.pem`) and the checked host as SNI; the
//! upstream's version is negotiated there, independently of the agent's.

use crate::body::AgentBody;
use crate::dlp::{self, DlpBody};
use crate::egress::{
    self, access_hint, refusal, rule_hint, Checked, ConnectError, Denied, Refusal,
};
use crate::exchange::{describe, raw_refusal, Exchange, Redaction};
use crate::forward::{self, host_header, host_header_mismatch, same_host, ForwardError, ProxyBody};
use crate::io::{Counter, MeteredIo, Prefixed};
use crate::limits::Deadlines;
use crate::log::EgressRecord;
use crate::redact::Needles;
use crate::secrets;
use crate::shared::Shared;
use crate::tls;
use crate::wire::{self, Wire};
use bottle_policy::{normalize_host, Decision, Verdict};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::{LazyConfigAcceptor, StartHandshake};

/// How long the TLS handshake with an upstream may take (the client side's
/// is `limits.handshake_timeout_secs`).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest method token accepted when sniffing an HTTP request line.
const MAX_METHOD_LEN: usize = 20;

/// What the first bytes of a tunnel are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// A TLS handshake record.
    Tls,
    /// An HTTP/1 request line (`TOKEN SP`).
    Http,
    /// The HTTP/2 connection preface in the clear (prior knowledge).
    H2,
    /// Anything else: refused.
    Other,
}

/// Classifies the first bytes of a tunnel; `None` when more are needed.
pub fn classify(prefix: &[u8]) -> Option<Payload> {
    let first = *prefix.first()?;
    if first == 0x16 {
        return Some(Payload::Tls);
    }
    match crate::wire::preface(prefix) {
        Some(true) => return Some(Payload::H2),
        None => return None,
        Some(false) => {}
    }
    for (i, b) in prefix.iter().enumerate() {
        if *b == b' ' {
            return Some(if i > 0 { Payload::Http } else { Payload::Other });
        }
        if !(b.is_ascii_alphabetic() || *b == b'-' || *b == b'_') || i >= MAX_METHOD_LEN {
            return Some(Payload::Other);
        }
    }
    None
}

/// Why [`sniff`] could not choose a door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Silent {
    /// The client closed (or failed) before sending anything.
    Nothing,
    /// The protocol was not chosen within the deadline (a slow client).
    TooSlow(Duration),
}

/// Reads until [`classify`] decides, within `deadline` in total (a client
/// dribbling one byte at a time does not get a fresh timeout per read).
async fn sniff<S: AsyncRead + Unpin>(
    io: &mut S,
    deadline: Duration,
) -> Result<(Payload, Vec<u8>), Silent> {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = match io.read(&mut chunk).await {
                Ok(n) => n,
                Err(_) => return Err(Silent::Nothing),
            };
            if n == 0 {
                return if buf.is_empty() {
                    Err(Silent::Nothing)
                } else {
                    Ok((Payload::Other, std::mem::take(&mut buf)))
                };
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = classify(&buf) {
                return Ok((p, std::mem::take(&mut buf)));
            }
        }
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(result) => result,
        Err(_) => Err(Silent::TooSlow(deadline)),
    }
}

/// How a tunnel ended, for its CONNECT log line.
#[derive(Debug, Default)]
pub struct TunnelEnd {
    /// Bytes read from the client.
    pub bytes_up: u64,
    /// Bytes written to the client.
    pub bytes_down: u64,
    /// Set when the tunnel ended in a refusal or a failure.
    pub error: Option<String>,
}

/// Serves what the client sends inside an allowed CONNECT tunnel to
/// `checked`; `upstream` is the connection opened before the 200.
pub async fn serve_connect_tunnel<S>(
    io: S,
    checked: Checked,
    upstream: TcpStream,
    client: SocketAddr,
    shared: Arc<Shared>,
) -> TunnelEnd
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (read, written) = (Counter::default(), Counter::default());
    let mut io = MeteredIo::new(io, read.clone(), written.clone());
    let host = checked.allowed().host().to_string();
    let port = checked.allowed().port();
    let handshake = shared.limits().handshake();
    let error = match sniff(&mut io, handshake).await {
        Err(Silent::Nothing) => Some("the client sent nothing inside the tunnel".into()),
        Err(Silent::TooSlow(after)) => {
            let mut record = EgressRecord::new(client, "CONNECT").host(&host, Some(port));
            record.rule = "handshake-timeout".into();
            record.status = StatusCode::REQUEST_TIMEOUT.as_u16();
            record.error = Some(format!(
                "closed: the client did not start TLS or HTTP within {}s (limits.handshake_timeout_secs)",
                after.as_secs()
            ));
            shared.logger.egress(client, &record);
            Some("closed: protocol not chosen in time".into())
        }
        Ok((Payload::Tls, prefix)) => {
            match accept_hello(Prefixed::new(prefix, io), handshake).await {
                Err(e) => Some(e),
                Ok(start) => {
                    let sni = start.client_hello().server_name().map(str::to_string);
                    match sni_check(sni.as_deref(), &host, port) {
                        Ok(()) => {
                            let session =
                                Session::new(shared, client, checked, true, Some(upstream), None);
                            intercept(start, &host, session).await
                        }
                        Err(None) => Some("the TLS server name is not a valid host name".into()),
                        Err(Some((cert_host, decision))) => {
                            let hint = "send the same host name in CONNECT, TLS SNI and Host; each tunnel reaches only the host it was opened for".to_string();
                            let canned = Canned::forbid(decision, hint);
                            refuse_in_tls(start, &cert_host, port, canned, client, shared).await
                        }
                    }
                }
            }
        }
        Ok((Payload::Http, prefix)) => {
            let session = Session::new(shared, client, checked, false, Some(upstream), None);
            serve_http(Prefixed::new(prefix, io), Wire::H1, session).await
        }
        Ok((Payload::H2, prefix)) => {
            // Prior-knowledge HTTP/2 (gRPC's plaintext channels): served as
            // HTTP/2, every stream checked, and sent upstream the same way.
            let session = Session::new(shared, client, checked, false, Some(upstream), None);
            serve_http(Prefixed::new(prefix, io), Wire::H2, session).await
        }
        Ok((Payload::Other, _)) => {
            let decision = refusal(
                "tunnel-not-http",
                format!("the bytes sent inside the tunnel to {} are neither TLS nor HTTP; egress tunnels carry only those", forward::host_port(&host, port)),
            );
            let refused = Refusal {
                what: format!("CONNECT {}", forward::host_port(&host, port)),
                decision,
                hint: "speak TLS (https://) or HTTP through the tunnel; other protocols (ssh, raw TCP) are not forwarded".into(),
            };
            let _ = io.write_all(&raw_refusal(&refused)).await;
            let _ = io.shutdown().await;
            let mut record = EgressRecord::new(client, "CONNECT").host(&host, Some(port));
            record.rule = refused.decision.rule.clone();
            record.status = StatusCode::FORBIDDEN.as_u16();
            shared.logger.egress(client, &record);
            Some("refused: the tunnel carried neither TLS nor HTTP".into())
        }
    };
    TunnelEnd {
        bytes_up: read.get(),
        bytes_down: written.get(),
        error,
    }
}

/// Reads the ClientHello within `deadline`.
async fn accept_hello<S>(io: S, deadline: Duration) -> Result<StartHandshake<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    match tokio::time::timeout(deadline, acceptor).await {
        Ok(Ok(start)) => Ok(start),
        Ok(Err(e)) => Err(format!("not a valid TLS ClientHello: {e}")),
        Err(_) => Err("the TLS ClientHello did not arrive in time".into()),
    }
}

/// Checks the SNI against the tunnel's host. On a mismatch returns the name
/// to present a certificate for (so the client can read the refusal) and the
/// refusal; `Err(None)` when the SNI is not even a valid name.
#[allow(clippy::type_complexity)]
fn sni_check(sni: Option<&str>, host: &str, port: u16) -> Result<(), Option<(String, Decision)>> {
    let target = forward::host_port(host, port);
    match sni {
        None if host.parse::<IpAddr>().is_ok() => Ok(()),
        None => Err(Some((
            host.to_string(),
            refusal(
                "sni-mismatch",
                format!("the TLS ClientHello named no server; the tunnel is for {target}"),
            ),
        ))),
        Some(name) => {
            let name = normalize_host(name).map_err(|_| None)?;
            if name == host {
                Ok(())
            } else {
                Err(Some((
                    name,
                    refusal(
                        "sni-mismatch",
                        format!("the TLS server name (SNI) differs from {target}, the destination this tunnel was allowed for"),
                    ),
                )))
            }
        }
    }
}

/// Finishes the handshake with a leaf for `cert_host` and serves the
/// session on it.
async fn intercept<S>(
    start: StartHandshake<S>,
    cert_host: &str,
    session: Arc<Session>,
) -> Option<String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stream = match handshake(start, cert_host, &session.shared).await {
        Ok(s) => s,
        Err(e) => {
            session.shared.logger.client_event(
                session.client,
                "tls-handshake-failed",
                json!({"host": cert_host, "error": e}),
            );
            return Some(e);
        }
    };
    let wire = Wire::from_alpn(stream.get_ref().1.alpn_protocol());
    serve_http(stream, wire, session).await
}

async fn handshake<S>(
    start: StartHandshake<S>,
    cert_host: &str,
    shared: &Shared,
) -> Result<tokio_rustls::server::TlsStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = shared
        .tls
        .server_config(cert_host)
        .map_err(|e| e.to_string())?;
    let deadline = shared.limits().handshake();
    match tokio::time::timeout(deadline, start.into_stream(config)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(format!("TLS handshake with the client failed: {e}")),
        Err(_) => Err("TLS handshake with the client timed out".into()),
    }
}

/// A fixed answer for every request on a connection that is refused as a
/// whole (SNI mismatch, denied transparent destination).
#[derive(Debug, Clone)]
pub struct Canned {
    pub status: StatusCode,
    pub decision: Decision,
    pub hint: String,
}

impl Canned {
    pub fn forbid(decision: Decision, hint: String) -> Self {
        Canned {
            status: StatusCode::FORBIDDEN,
            decision,
            hint,
        }
    }
}

/// Completes the handshake with a leaf for `cert_host`, then answers every
/// request with `canned` (logged per request) and closes.
pub async fn refuse_in_tls<S>(
    start: StartHandshake<S>,
    cert_host: &str,
    port: u16,
    canned: Canned,
    client: SocketAddr,
    shared: Arc<Shared>,
) -> Option<String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let reason = canned.decision.rule.clone();
    let stream = match handshake(start, cert_host, &shared).await {
        Ok(s) => s,
        Err(e) => {
            // The client will not read a body: log the refusal itself.
            let mut record = EgressRecord::new(client, "TLS").host(cert_host, Some(port));
            record.rule = canned.decision.rule.clone();
            record.status = canned.status.as_u16();
            record.error = Some(e.clone());
            shared.logger.egress(client, &record);
            return Some(e);
        }
    };
    let host = cert_host.to_string();
    let closing = shared.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let canned = canned.clone();
        let shared = shared.clone();
        let host = host.clone();
        async move {
            let method = req.method().as_str().to_string();
            let path = req.uri().path().to_string();
            let ex = Exchange {
                logger: shared.logger.clone(),
                client,
                started: Instant::now(),
                record: EgressRecord::new(client, &method)
                    .host(&host, Some(port))
                    .path(&path),
                what: describe(&method, "https", &host, port, &path),
            };
            let refused = Refusal {
                what: ex.what.clone(),
                decision: canned.decision,
                hint: canned.hint,
            };
            let mut resp = ex.refuse(canned.status, &refused);
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            Ok::<_, Infallible>(resp)
        }
    });
    let wire = Wire::from_alpn(stream.get_ref().1.alpn_protocol());
    let limits = closing.limits();
    tokio::select! {
        _ = wire::serve(stream, wire, &limits, svc) => {}
        () = closing.closing() => {}
    }
    Some(format!("refused: {reason}"))
}

/// Serves HTTP/1.1 or HTTP/2 (`wire`) on a (decrypted or plain) tunnel
/// until either side closes. Returns an error worth logging, if any.
pub async fn serve_http<S>(stream: S, wire: Wire, session: Arc<Session>) -> Option<String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = session.shared.clone();
    session.agent_h2.store(wire == Wire::H2, Ordering::Relaxed);
    let svc = service_fn(move |req| {
        let session = session.clone();
        async move { Ok::<_, Infallible>(session.handle(req).await) }
    });
    let limits = shared.limits();
    tokio::select! {
        result = wire::serve(stream, wire, &limits, svc) => match result {
            Ok(()) => None,
            Err(e) if e.is_timeout() || e.is_incomplete_message() || e.is_canceled() => None,
            Err(e) => Some(format!("{} inside the tunnel failed: {e}", wire.name())),
        },
        () = shared.closing() => Some("sidecar shutting down".into()),
    }
}

/// The request body type sent upstream.
type UpBody = DlpBody;

/// HTTP/1.1 requests one agent connection may have in flight upstream at
/// once (each on its own upstream connection); an HTTP/2 agent's further
/// streams wait for one to finish.
pub const H1_UPSTREAM_PER_SESSION: usize = 8;

/// Keeps `guard` until `resp`'s body is finished or dropped.
fn hold<G: Send + Sync + Unpin + 'static>(
    resp: Response<ProxyBody>,
    guard: G,
) -> Response<ProxyBody> {
    resp.map(|body| forward::Metered::with_guard(body, Counter::default(), guard).boxed())
}

/// Why a request could not be sent upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("TLS with the upstream failed: {0}")]
    Tls(#[source] io::Error),
    #[error("TLS with the upstream took longer than {}s", HANDSHAKE_TIMEOUT.as_secs())]
    TlsTimeout,
    #[error("{0} cannot be used as a TLS server name")]
    Name(String),
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error("the upstream did not answer: {0}")]
    Send(#[source] hyper::Error),
}

/// The upstream side of one tunnel: kept-alive connections to a checked
/// address, opened lazily (the first may be the connection made before the
/// CONNECT was answered) and reopened to the same checked addresses. An
/// HTTP/2 upstream is one connection carrying every stream; an HTTP/1.1
/// upstream is one connection per request in flight (an HTTP/1.1 agent has
/// one at a time; an HTTP/2 agent's streams each take an idle one or open
/// another).
#[derive(Debug, Default)]
struct Upstream {
    h2: Option<http2::SendRequest<UpBody>>,
    h1: Vec<http1::SendRequest<UpBody>>,
    preconnected: Option<TcpStream>,
}

/// One upstream connection, ready for a request.
enum Conn {
    H1(http1::SendRequest<UpBody>),
    H2(http2::SendRequest<UpBody>),
}

/// One intercepted (or plain) connection to one checked destination.
#[derive(Debug)]
pub struct Session {
    shared: Arc<Shared>,
    client: SocketAddr,
    checked: Checked,
    tls: bool,
    /// The port a `Host` without one means.
    default_port: u16,
    /// The agent speaks HTTP/2 on this connection (set when serving starts);
    /// in the clear, the upstream is then spoken to with prior knowledge too.
    agent_h2: AtomicBool,
    /// Slots for HTTP/1.1 requests in flight upstream.
    h1_slots: Arc<Semaphore>,
    upstream: tokio::sync::Mutex<Upstream>,
}

impl Session {
    /// `default_port` is the port a `Host` without one means: by default
    /// that of the scheme (443 with TLS, 80 without).
    pub fn new(
        shared: Arc<Shared>,
        client: SocketAddr,
        checked: Checked,
        tls: bool,
        preconnected: Option<TcpStream>,
        default_port: Option<u16>,
    ) -> Arc<Self> {
        Arc::new(Session {
            shared,
            client,
            checked,
            tls,
            default_port: default_port.unwrap_or(if tls { 443 } else { 80 }),
            agent_h2: AtomicBool::new(false),
            h1_slots: Arc::new(Semaphore::new(H1_UPSTREAM_PER_SESSION)),
            upstream: tokio::sync::Mutex::new(Upstream {
                preconnected,
                ..Upstream::default()
            }),
        })
    }

    fn host(&self) -> &str {
        self.checked.allowed().host()
    }

    fn port(&self) -> u16 {
        self.checked.allowed().port()
    }

    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    fn default_port(&self) -> u16 {
        self.default_port
    }

    /// Every check for one request, then forwarding.
    async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let (host, port) = (self.host().to_string(), self.port());
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        let ex = Exchange {
            logger: self.shared.logger.clone(),
            client: self.client,
            started: Instant::now(),
            record: EgressRecord::new(self.client, &method)
                .host(&host, Some(port))
                .path(&path),
            what: describe(&method, self.scheme(), &host, port, &path),
        };
        let authority_hint = format!(
            "send requests for {} only; open a new connection for another host",
            forward::host_port(&host, port)
        );
        if req.method() == hyper::Method::CONNECT {
            return ex.forbid(
                refusal(
                    "connect-in-tunnel",
                    "a CONNECT inside an intercepted connection is not forwarded",
                ),
                "open tunnels at the proxy (CONNECT host:port to it); inside one, send ordinary requests".into(),
            );
        }
        if let Some(why) = self.uri_mismatch(&req) {
            return ex.forbid(refusal("host-mismatch", why), authority_hint);
        }
        let required = req.uri().authority().is_none();
        if let Some(why) =
            host_header_mismatch(req.headers(), &host, port, self.default_port(), required)
        {
            return ex.forbid(refusal("host-mismatch", why), authority_hint);
        }
        let policy = self.shared.policy.current();
        // A tunnel a supervise approval opened covers its own host and port
        // although the policy may not (a `once` or held approval).
        let widened = self
            .checked
            .allowed()
            .by_supervise()
            .then(|| crate::supervise::widened(&policy.egress, self.checked.allowed()));
        let decision = widened
            .as_ref()
            .unwrap_or(&policy.egress)
            .decide_request(&host, port, &method, &path);
        if decision.verdict == Verdict::Deny {
            let hint = if decision.rule == "invalid-host" {
                access_hint(&Denied {
                    host: host.clone(),
                    port,
                    decision: decision.clone(),
                })
            } else if decision.rule == "default-deny" {
                self.shared.ask_hint(access_hint(&Denied {
                    host: host.clone(),
                    port,
                    decision: decision.clone(),
                }))
            } else {
                rule_hint(&decision, &host)
            };
            return ex.forbid(decision, hint);
        }
        if let Some(d) =
            forward::method_override(&policy.egress, &host, req.headers(), req.uri().query())
        {
            return ex.forbid(d, forward::METHOD_OVERRIDE_HINT.into());
        }
        if let Some(d) = forward::encrypted_dns(&policy.egress, &host, port, req.headers()) {
            return ex.forbid(d, bottle_policy::ENCRYPTED_DNS_HINT.into());
        }
        let upgrade = match upgrade_kind(&req) {
            Upgrade::None => false,
            Upgrade::WebSocket => true,
            Upgrade::Other(why) => {
                return ex.forbid(
                    refusal("upgrade-not-allowed", why),
                    "only WebSocket upgrades (GET with Upgrade: websocket) are forwarded".into(),
                )
            }
        };
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let target = req
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str().to_string())
            .unwrap_or_else(|| path.clone());
        let Some(host_value) = host_header(&host, port, self.default_port()) else {
            return ex.forbid(
                refusal(
                    "invalid-host",
                    "the destination cannot be written as a Host header",
                ),
                "use a DNS name or a canonical IP address".into(),
            );
        };
        if upgrade {
            if let Some((d, hint)) = crate::budget::websocket_refusal(&policy.egress.budget, &host)
            {
                return ex.forbid(d, hint);
            }
        }
        let mut ticket = match self.shared.budget.admit(
            &policy.egress.budget,
            &host,
            (&method, &path),
            &self.shared.logger,
            self.client,
        ) {
            Ok(t) => t,
            Err(exhausted) => return crate::budget::refuse(ex, &exhausted, &self.shared),
        };
        let up = ticket.up();
        let (parts, incoming) = req.into_parts();
        let (body, watch) = AgentBody::new(incoming, up.clone(), self.shared.limits().body_gap());
        let mut upreq = forward::upstream_request(Request::from_parts(parts, body), host_value);
        ticket.prepare(upreq.headers_mut());
        let secrets = self.shared.secrets.current();
        let injected = match secrets::apply(
            &policy.egress,
            &secrets,
            &host,
            &target,
            self.tls,
            upreq.headers_mut(),
        ) {
            Ok(injected) => injected,
            Err(d) => {
                let hint = rule_hint(&d, &host);
                return ex.forbid(d, hint);
            }
        };
        let (ex, upreq, scope) = match dlp::gate(
            ex,
            &self.shared,
            &host,
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
        let rule = decision.rule;
        if let Some(client_upgrade) = client_upgrade {
            return self
                .websocket(ex, rule, upreq, client_upgrade, up, redaction)
                .await;
        }
        ticket.sent();
        match self.send(upreq).await {
            Ok((resp, slot)) => hold(
                ticket.finish(ex.forwarded(&rule, up, resp, redaction)),
                slot,
            ),
            Err(e) => match (ticket.unsent(), watch.failure()).1 {
                // The agent's body broke: its error, and the upstream
                // connection was closed mid-message (never reused).
                Some(failure) => ex.bad_body(&failure),
                None => ex.unreachable(&forward::host_port(&host, port), &rule, e.to_string()),
            },
        }
    }

    /// `Some(reason)` when an absolute-form URL names another destination.
    fn uri_mismatch(&self, req: &Request<Incoming>) -> Option<String> {
        let uri = req.uri();
        let authority = uri.authority()?;
        let scheme_port = match uri.scheme_str() {
            Some(s) if s == self.scheme() => self.default_port,
            Some("https") => 443,
            Some("http") => 80,
            _ => return Some("the request URL has an unsupported scheme".into()),
        };
        let same = uri.scheme_str() == Some(self.scheme())
            && same_host(authority.host(), self.host())
            && authority.port_u16().unwrap_or(scheme_port) == self.port();
        (!same).then(|| {
            format!(
                "the request URL names a different destination than {}, the one this connection was allowed for",
                forward::host_port(self.host(), self.port())
            )
        })
    }

    /// Sends `req` upstream on a kept-alive connection, opening one to a
    /// checked address when none is free, in the version that connection
    /// negotiated. Over HTTP/1.1 the request holds one of the session's
    /// [`H1_UPSTREAM_PER_SESSION`] slots until its answer is done (returned
    /// with the response, for the caller to keep with the body), so an
    /// HTTP/2 agent's streams share a few upstream connections instead of
    /// opening one each.
    async fn send(
        &self,
        req: Request<UpBody>,
    ) -> Result<(Response<Incoming>, Option<OwnedSemaphorePermit>), UpstreamError> {
        let known_h2 = self.upstream.lock().await.h2.is_some();
        let slot = if known_h2 {
            None
        } else {
            self.h1_slots.clone().acquire_owned().await.ok()
        };
        match self.checkout().await? {
            Conn::H2(mut sender) => {
                drop(slot);
                let req = forward::to_h2(req, self.scheme())?;
                let resp = sender
                    .send_request(req)
                    .await
                    .map_err(UpstreamError::Send)?;
                Ok((resp, None))
            }
            Conn::H1(mut sender) => {
                // Hop-by-hop headers are stripped by `Exchange::forwarded`,
                // after it checked them.
                let sent = sender.send_request(forward::to_h1(req)).await;
                let mut pool = self.upstream.lock().await;
                if !sender.is_closed() && pool.h1.len() < H1_UPSTREAM_PER_SESSION {
                    pool.h1.push(sender);
                }
                drop(pool);
                Ok((sent.map_err(UpstreamError::Send)?, slot))
            }
        }
    }

    /// A connection for the next request: the HTTP/2 one, an idle HTTP/1.1
    /// one, or a new one.
    async fn checkout(&self) -> Result<Conn, UpstreamError> {
        let mut slot = self.upstream.lock().await;
        if let Some(h2) = &slot.h2 {
            if !h2.is_closed() {
                return Ok(Conn::H2(h2.clone()));
            }
            slot.h2 = None;
        }
        slot.h1.retain(|s| !s.is_closed());
        if let Some(i) = slot.h1.iter().position(|s| s.is_ready()) {
            return Ok(Conn::H1(slot.h1.swap_remove(i)));
        }
        // An HTTP/1.1 agent sends one request at a time: wait for the last
        // answer to finish rather than open a second connection.
        if !self.agent_h2.load(Ordering::Relaxed) {
            if let Some(mut sender) = slot.h1.pop() {
                if sender.ready().await.is_ok() {
                    return Ok(Conn::H1(sender));
                }
            }
        }
        let pre = slot.preconnected.take();
        let conn = self.open(pre, false).await?;
        if let Conn::H2(sender) = &conn {
            slot.h2 = Some(sender.clone());
        }
        Ok(conn)
    }

    /// A new upstream connection (TLS verified when the tunnel is TLS). With
    /// TLS the upstream chooses HTTP/2 or HTTP/1.1 by ALPN (`h1_only` offers
    /// HTTP/1.1 alone, for upgrades); in the clear it is HTTP/2 with prior
    /// knowledge when the agent spoke that way, HTTP/1.1 otherwise.
    async fn open(&self, pre: Option<TcpStream>, h1_only: bool) -> Result<Conn, UpstreamError> {
        let tcp = match pre {
            Some(tcp) => tcp,
            None => egress::connect(&self.checked).await?.0,
        };
        let limits = self.shared.limits();
        if !self.tls {
            return Ok(if self.agent_h2.load(Ordering::Relaxed) && !h1_only {
                Conn::H2(
                    wire::client_h2(tcp, &limits)
                        .await
                        .map_err(ForwardError::Handshake)?,
                )
            } else {
                Conn::H1(forward::client(tcp).await?)
            });
        }
        let name =
            tls::server_name(self.host()).ok_or_else(|| UpstreamError::Name(self.host().into()))?;
        let connector = if h1_only {
            self.shared.tls.connector()
        } else {
            self.shared.tls.connector_h2()
        };
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| UpstreamError::TlsTimeout)?
            .map_err(UpstreamError::Tls)?;
        Ok(match Wire::from_alpn(stream.get_ref().1.alpn_protocol()) {
            Wire::H2 => Conn::H2(
                wire::client_h2(stream, &limits)
                    .await
                    .map_err(ForwardError::Handshake)?,
            ),
            Wire::H1 => Conn::H1(forward::client(stream).await?),
        })
    }

    /// Forwards a WebSocket upgrade that passed every check, on its own
    /// upstream connection, and splices the two upgraded streams.
    async fn websocket(
        &self,
        ex: Exchange,
        rule: String,
        mut upreq: Request<UpBody>,
        client_upgrade: hyper::upgrade::OnUpgrade,
        up: Counter,
        redaction: Redaction,
    ) -> Response<ProxyBody> {
        let target = forward::host_port(self.host(), self.port());
        upreq
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        upreq
            .headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        let pre = self.upstream.lock().await.preconnected.take();
        let mut sender = match self.open(pre, true).await {
            Ok(Conn::H1(s)) => s,
            Ok(Conn::H2(_)) => {
                return ex.unreachable(
                    &target,
                    &rule,
                    "the upstream answered a WebSocket upgrade in HTTP/2".into(),
                )
            }
            Err(e) => return ex.unreachable(&target, &rule, e.to_string()),
        };
        let mut resp = match sender.send_request(upreq).await {
            Ok(r) => r,
            Err(e) => return ex.unreachable(&target, &rule, UpstreamError::Send(e).to_string()),
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return ex.forwarded(&rule, up, resp, redaction);
        }
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        // Rebuilt from status and headers only: the upstream's reason phrase
        // (a hyper extension) is not written back out.
        parts.extensions = hyper::http::Extensions::new();
        // The 101's headers go to the agent too (the frames after it are
        // spliced unfiltered; see `crate::redact`).
        let mut found = std::collections::BTreeSet::new();
        redaction
            .needles
            .redact_headers(&mut parts.headers, &mut found);
        if !found.is_empty() {
            self.shared.logger.audit_event(
                self.client,
                "credential-redacted",
                json!({"host": self.host(), "port": self.port(), "credentials": found}),
            );
        }
        let mut record = ex.record.clone();
        record.rule = rule;
        record.decision = Verdict::Allow;
        record.status = StatusCode::SWITCHING_PROTOCOLS.as_u16();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            match tokio::join!(client_upgrade, upstream_upgrade) {
                (Ok(c), Ok(u)) => {
                    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                    tokio::select! {
                        out = egress::tunnel(&mut c, &mut u) => {
                            record.bytes_up = out.bytes_up;
                            record.bytes_down = out.bytes_down;
                            record.error = out.error.map(|e| e.to_string());
                        }
                        () = shared.closing() => record.error = Some("sidecar shutting down".into()),
                    }
                }
                (c, u) => {
                    record.error = Some(format!(
                        "upgrade did not complete (client: {}, upstream: {})",
                        c.err()
                            .map(|e| e.to_string())
                            .unwrap_or_else(|| "ok".into()),
                        u.err()
                            .map(|e| e.to_string())
                            .unwrap_or_else(|| "ok".into()),
                    ));
                }
            }
            record.duration_ms = crate::exchange::millis(ex.started);
            ex.logger.egress(ex.client, &record);
        });
        Response::from_parts(parts, forward::full(""))
    }
}

/// What kind of protocol switch a request asks for.
enum Upgrade {
    None,
    WebSocket,
    /// Refused, with the reason.
    Other(String),
}

fn upgrade_kind(req: &Request<Incoming>) -> Upgrade {
    let Some(value) = req.headers().get(UPGRADE) else {
        return Upgrade::None;
    };
    let websocket = value
        .to_str()
        .map(|v| v.trim().eq_ignore_ascii_case("websocket"))
        .unwrap_or(false);
    if websocket
        && req.method() == hyper::Method::GET
        && req.headers().get_all(UPGRADE).iter().count() == 1
    {
        Upgrade::WebSocket
    } else {
        Upgrade::Other(
            "the request asks to switch protocols to something other than WebSocket (e.g. h2c)"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_decide_the_door() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"\x16\x03\x01"), Some(Payload::Tls));
        assert_eq!(classify(b"GET / HTTP/1.1"), Some(Payload::Http));
        assert_eq!(classify(b"M-SEARCH * HTTP/1.1"), Some(Payload::Http));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2\r\n"), Some(Payload::Other));
        assert_eq!(classify(b"\x00\x01"), Some(Payload::Other));
        assert_eq!(classify(b" GET"), Some(Payload::Other));
        assert_eq!(classify(b"EHLO\r\n"), Some(Payload::Other));
        assert_eq!(classify(&[b'A'; 30]), Some(Payload::Other));
    }

    #[test]
    fn sni_must_name_the_tunnel_host() {
        assert_eq!(
            sni_check(Some("API.example.com"), "api.example.com", 443),
            Ok(())
        );
        assert_eq!(sni_check(None, "10.0.0.1", 443), Ok(()));
        let Err(Some((name, d))) = sni_check(Some("evil.example"), "api.example.com", 443) else {
            panic!("mismatch must be refused");
        };
        assert_eq!(name, "evil.example");
        assert_eq!(d.rule, "sni-mismatch");
        assert!(matches!(
            sni_check(None, "api.example.com", 443),
            Err(Some(_))
        ));
        assert_eq!(
            sni_check(Some("bad name"), "api.example.com", 443),
            Err(None)
        );
    }
}
