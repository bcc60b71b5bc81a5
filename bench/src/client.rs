//! The load generator: a closed loop over keep-alive HTTPS connections.
//!
//! Each connection is opened once (TCP, then `CONNECT` when there is a proxy,
//! then TLS trusting only the CA of whoever terminates it, then HTTP/1.1 or
//! HTTP/2 as the path asks). Over HTTP/1.1 a connection sends one `GET /`
//! after another, each after the previous answer was read in full; over
//! HTTP/2 it carries `streams` such loops at once, one per stream (issue 14).
//! The client offers exactly one protocol by ALPN and fails the connection
//! if TLS did not settle on it, so an HTTP/2 row can never silently measure
//! HTTP/1.1. Latency is taken per request, from send to the last body byte.
//! Requests that start during the warm-up are not recorded.

use crate::config::Http;
use anyhow::{bail, ensure, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::{http1, http2};
use hyper::header::HOST;
use hyper::{Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

/// Longest a single step (connect, handshake, one request) may take before it
/// counts as an error; keeps a wedged proxy from hanging the run.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the client connects and whom it trusts.
pub struct Target {
    pub origin: SocketAddr,
    pub proxy: Option<SocketAddr>,
    http: Http,
    tls: TlsConnector,
    authority: String,
    /// What each request uploads (empty: a GET).
    upload: Bytes,
}

impl Target {
    /// `roots` must hold only the CA of whoever terminates TLS on this path,
    /// so a completed handshake through a proxy proves it intercepted.
    pub fn new(
        origin: SocketAddr,
        proxy: Option<SocketAddr>,
        roots: RootCertStore,
        http: Http,
    ) -> anyhow::Result<Target> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![alpn(http).to_vec()];
        Ok(Target {
            origin,
            proxy,
            http,
            tls: TlsConnector::from(Arc::new(tls)),
            authority: origin.to_string(),
            upload: Bytes::new(),
        })
    }

    /// Every request POSTs `body` (empty: GET).
    pub fn with_upload(mut self, body: Bytes) -> Target {
        self.upload = body;
        self
    }
}

/// `n` bytes of text shaped like a model API request (JSON, words, escaped
/// newlines) with nothing a DLP detector matches: what a 16 KiB agent
/// request looks like to the search.
pub fn upload_body(n: usize) -> Bytes {
    const WORDS: &[&str] = &[
        "the",
        "function",
        "returns",
        "a",
        "list",
        "of",
        "files",
        "in",
        "src/main.rs",
        "with",
        "error",
        "handling",
        "\\n",
        "and",
        "tests",
        "for",
        "each",
        "case",
        "\\\"quoted\\\"",
        "value",
        "=",
        "42;",
        "let",
        "mut",
        "buffer",
        "Vec::new()",
        "if",
        "else",
        "{",
        "}",
    ];
    let head = "{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":1024,\"messages\":[{\"role\":\"user\",\"content\":\"";
    let tail = "\"}]}";
    let mut out = String::with_capacity(n);
    out.push_str(head);
    let mut i = 0usize;
    while out.len() + tail.len() < n {
        out.push_str(WORDS[(i * 7 + i / 3) % WORDS.len()]);
        out.push(' ');
        i += 1;
    }
    out.truncate(n.saturating_sub(tail.len()).max(head.len().min(n)));
    out.push_str(tail);
    out.truncate(n);
    Bytes::from(out)
}

/// The one ALPN protocol the client offers for `http`.
fn alpn(http: Http) -> &'static [u8] {
    match http {
        Http::H1 => b"http/1.1",
        Http::H2 => b"h2",
    }
}

/// Fails unless TLS settled on `http`'s protocol: a server that ignores ALPN
/// (`None`) would be spoken to in HTTP/1.1, which an HTTP/2 row must not do.
/// HTTP/1.1 accepts `None` too, since that is what it means in TLS.
fn check_alpn(http: Http, negotiated: Option<&[u8]>) -> anyhow::Result<()> {
    let wanted = alpn(http);
    match (http, negotiated) {
        (_, Some(got)) if got == wanted => Ok(()),
        (Http::H1, None) => Ok(()),
        (_, got) => bail!(
            "TLS negotiated {} instead of {}: whoever terminates TLS on this path fell back; the row would not measure {}",
            got.map_or("no ALPN protocol".into(), |g| format!(
                "`{}`",
                String::from_utf8_lossy(g)
            )),
            String::from_utf8_lossy(wanted),
            String::from_utf8_lossy(wanted)
        ),
    }
}

/// A ready connection. An HTTP/2 one is shared by the loops of its streams
/// (clones of one `SendRequest` multiplex onto the same connection).
enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    /// Another handle on the same connection, for one more stream; `None`
    /// for HTTP/1.1, which carries one request at a time.
    fn another_stream(&self) -> Option<Sender> {
        match self {
            Sender::H1(_) => None,
            Sender::H2(s) => Some(Sender::H2(s.clone())),
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

/// Opens one connection, ready for requests.
async fn open(target: &Target) -> anyhow::Result<Sender> {
    let addr = target.proxy.unwrap_or(target.origin);
    let mut tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    if let Some(proxy) = target.proxy {
        let status = connect_tunnel(&mut tcp, &target.authority).await?;
        ensure!(
            status == 200,
            "proxy {proxy} answered CONNECT {} with {status}",
            target.authority
        );
    }
    let name = ServerName::IpAddress(target.origin.ip().into());
    let tls = target
        .tls
        .connect(name, tcp)
        .await
        .context("TLS handshake (the client trusts only the CA of this path)")?;
    check_alpn(target.http, tls.get_ref().1.alpn_protocol())?;
    let io = TokioIo::new(tls);
    Ok(match target.http {
        Http::H1 => {
            let (sender, conn) = http1::handshake(io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Sender::H1(sender)
        }
        Http::H2 => {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Sender::H2(sender)
        }
    })
}

/// Writes `CONNECT authority` and reads the answer's head; returns its status.
/// On 200 the stream is left at the first byte of the tunnel.
async fn connect_tunnel(tcp: &mut TcpStream, authority: &str) -> anyhow::Result<u16> {
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    let end = loop {
        let n = tcp.read(&mut buf).await?;
        ensure!(
            n > 0,
            "proxy closed the connection before answering CONNECT"
        );
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        ensure!(head.len() <= 16 * 1024, "CONNECT answer head over 16 KiB");
    };
    let text = String::from_utf8_lossy(&head[..end]);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("unreadable CONNECT answer: {text:?}"))?;
    if status == 200 && end != head.len() {
        bail!("proxy sent tunnel bytes before the client's TLS hello");
    }
    Ok(status)
}

/// The status a proxy answers to `CONNECT authority`; used to check that the
/// allow-list is in force.
pub async fn connect_status(proxy: SocketAddr, authority: &str) -> anyhow::Result<u16> {
    let mut tcp = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(proxy))
        .await
        .context("timed out connecting to the proxy")??;
    tokio::time::timeout(STEP_TIMEOUT, connect_tunnel(&mut tcp, authority))
        .await
        .context("timed out waiting for the CONNECT answer")?
}

/// One request (a POST of the target's upload, or a GET); returns the
/// body length.
async fn get(sender: &mut Sender, target: &Target) -> anyhow::Result<usize> {
    let authority = &target.authority;
    let method = if target.upload.is_empty() {
        hyper::Method::GET
    } else {
        hyper::Method::POST
    };
    let body = Full::new(target.upload.clone());
    let response = match sender {
        Sender::H1(s) => {
            s.ready().await?;
            let request = Request::builder()
                .method(method)
                .uri("/")
                .header(HOST, authority)
                .body(body)?;
            s.send_request(request).await?
        }
        Sender::H2(s) => {
            s.ready().await?;
            // HTTP/2 carries the authority in the `:authority` pseudo-header,
            // which hyper takes from an absolute URI.
            let uri: Uri = format!("https://{authority}/").parse()?;
            let request = Request::builder()
                .method(method)
                .uri(uri)
                .version(hyper::Version::HTTP_2)
                .body(body)?;
            s.send_request(request).await?
        }
    };
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    ensure!(status == 200, "origin path answered {status}: {body:?}");
    Ok(body.len())
}

/// Opens one connection and sends one request; returns the body length.
pub async fn probe(target: &Target) -> anyhow::Result<usize> {
    tokio::time::timeout(STEP_TIMEOUT, async {
        let mut sender = open(target).await?;
        get(&mut sender, target).await
    })
    .await
    .context("probe request timed out")?
}

/// How much load, for how long.
#[derive(Debug, Clone)]
pub struct Load {
    pub concurrency: usize,
    /// Closed loops per connection: 1 over HTTP/1.1, `--h2-streams` over
    /// HTTP/2.
    pub streams: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub max_requests: u64,
}

/// What one path measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Latency of each measured request in µs, sorted.
    pub latencies_us: Vec<u64>,
    /// Time to open each connection (CONNECT + TLS + HTTP) in µs, sorted.
    pub setup_us: Vec<u64>,
    /// From the end of the warm-up to the last measured answer.
    pub elapsed: Duration,
    /// Failed requests and reconnects.
    pub errors: u64,
    /// Answered requests including the warm-up, for CPU per request.
    pub answered: u64,
}

impl LoadResult {
    pub fn requests(&self) -> u64 {
        self.latencies_us.len() as u64
    }

    pub fn per_second(&self) -> f64 {
        self.requests() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q`-quantile (0..=1) of the measured latencies, in µs.
    pub fn latency_us(&self, q: f64) -> Option<u64> {
        quantile(&self.latencies_us, q)
    }

    pub fn setup_p50_us(&self) -> Option<u64> {
        quantile(&self.setup_us, 0.5)
    }
}

/// Nearest-rank quantile of sorted samples.
fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// What one worker brings back.
struct WorkerResult {
    latencies_us: Vec<u64>,
    errors: u64,
    answered: u64,
    last_end: Option<Instant>,
}

/// Runs the closed loop against `target`.
pub async fn drive(target: Arc<Target>, load: &Load) -> anyhow::Result<LoadResult> {
    // Open every connection first: the handshakes are not part of the request
    // latencies (they are reported separately as setup time).
    let mut opening = JoinSet::new();
    for _ in 0..load.concurrency {
        let target = target.clone();
        opening.spawn(async move {
            let t0 = Instant::now();
            let sender = tokio::time::timeout(STEP_TIMEOUT, open(&target))
                .await
                .context("opening a connection timed out")??;
            anyhow::Ok((sender, t0.elapsed()))
        });
    }
    let mut senders = Vec::with_capacity(load.concurrency);
    let mut setup_us = Vec::with_capacity(load.concurrency);
    while let Some(joined) = opening.join_next().await {
        let (sender, took) = joined??;
        senders.push(sender);
        setup_us.push(took.as_micros() as u64);
    }
    setup_us.sort_unstable();

    let measure_start = Instant::now() + load.warmup;
    let deadline = measure_start + load.duration;
    let measured = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    let mut loops = Vec::with_capacity(load.concurrency * load.streams);
    for sender in senders {
        for _ in 1..load.streams {
            loops.push(
                sender
                    .another_stream()
                    .context("more than one stream per connection needs HTTP/2")?,
            );
        }
        loops.push(sender);
    }
    for sender in loops {
        let target = target.clone();
        let measured = measured.clone();
        let max = load.max_requests;
        workers.spawn(worker(
            target,
            sender,
            measure_start,
            deadline,
            measured,
            max,
        ));
    }
    let mut result = LoadResult {
        setup_us,
        ..LoadResult::default()
    };
    let mut last_end: Option<Instant> = None;
    while let Some(joined) = workers.join_next().await {
        let w = joined?;
        result.latencies_us.extend(w.latencies_us);
        result.errors += w.errors;
        result.answered += w.answered;
        last_end = last_end.max(w.last_end);
    }
    result.latencies_us.sort_unstable();
    result.elapsed = last_end
        .map(|end| end.saturating_duration_since(measure_start))
        .unwrap_or(load.duration);
    Ok(result)
}

async fn worker(
    target: Arc<Target>,
    sender: Sender,
    measure_start: Instant,
    deadline: Instant,
    measured: Arc<AtomicU64>,
    max_requests: u64,
) -> WorkerResult {
    let mut out = WorkerResult {
        latencies_us: Vec::new(),
        errors: 0,
        answered: 0,
        last_end: None,
    };
    let mut sender = Some(sender);
    while Instant::now() < deadline && measured.load(Ordering::Relaxed) < max_requests {
        let Some(s) = sender.as_mut() else {
            // The last request failed and took its connection down: open one
            // of its own (bounded by the deadline).
            match tokio::time::timeout(STEP_TIMEOUT, open(&target)).await {
                Ok(Ok(s)) => sender = Some(s),
                _ => {
                    out.errors += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            continue;
        };
        let start = Instant::now();
        match tokio::time::timeout(STEP_TIMEOUT, get(s, &target)).await {
            Ok(Ok(_)) => {
                let end = Instant::now();
                out.answered += 1;
                if start >= measure_start {
                    out.latencies_us.push((end - start).as_micros() as u64);
                    out.last_end = Some(end);
                    measured.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {
                out.errors += 1;
                // An HTTP/1.1 connection is unusable after a failed request;
                // an HTTP/2 stream can fail alone, so its siblings' connection
                // is kept while it is open.
                if matches!(s, Sender::H1(_)) || s.is_closed() {
                    sender = None;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_have_the_asked_size_and_look_like_a_model_request() {
        for n in [0, 10, 100, 1000, 16 * 1024, 65_536] {
            let b = upload_body(n);
            assert_eq!(b.len(), n, "{n}");
        }
        let b = String::from_utf8(upload_body(16 * 1024).to_vec()).unwrap();
        assert!(b.starts_with("{\"model\":") && b.ends_with("\"}]}"), "{b}");
        assert!(b.contains("\\n"));
    }

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 1.0), Some(100));
        assert_eq!(quantile(&v, 0.0), Some(1));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn alpn_must_settle_on_the_rows_protocol() {
        assert!(check_alpn(Http::H2, Some(b"h2")).is_ok());
        assert!(check_alpn(Http::H1, Some(b"http/1.1")).is_ok());
        assert!(check_alpn(Http::H1, None).is_ok(), "no ALPN means HTTP/1.1");
        let err = |http, got| format!("{:#}", check_alpn(http, got).unwrap_err());
        assert_eq!(
            err(Http::H2, None),
            "TLS negotiated no ALPN protocol instead of h2: whoever terminates TLS on this path fell back; the row would not measure h2"
        );
        assert!(
            err(Http::H2, Some(b"http/1.1")).starts_with("TLS negotiated `http/1.1` instead of h2")
        );
        assert!(err(Http::H1, Some(b"h2")).starts_with("TLS negotiated `h2` instead of http/1.1"));
    }

    /// A real origin and client in-process: HTTP/2 streams share one
    /// connection and reach the origin as HTTP/2, and an origin that cannot
    /// speak HTTP/2 fails the h2 client instead of serving it HTTP/1.1.
    #[tokio::test]
    async fn h2_reaches_the_origin_as_h2_and_a_fallback_fails() {
        let ca = crate::pki::Ca::new("test CA").unwrap();
        let (leaf, key) = ca.leaf("127.0.0.1").unwrap();
        let origins = crate::origin::OriginRuntime::start().unwrap();
        let h2_origin =
            crate::origin::start(origins.handle(), leaf.clone(), key.clone_key(), 7, true).unwrap();
        let h1_origin = crate::origin::start(origins.handle(), leaf, key, 7, false).unwrap();

        let target =
            Arc::new(Target::new(h2_origin.addr, None, ca.roots().unwrap(), Http::H2).unwrap());
        let load = Load {
            concurrency: 2,
            streams: 3,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(10),
            max_requests: 60,
        };
        let result = drive(target, &load).await.unwrap();
        assert_eq!(result.errors, 0);
        assert!(
            result.requests() >= 60,
            "stopped after {} requests",
            result.requests()
        );
        assert_eq!(result.setup_us.len(), 2, "one setup per connection");
        assert_eq!(
            h2_origin.accepted(),
            2,
            "3 streams on each of 2 connections"
        );
        let seen = h2_origin.versions();
        assert_eq!((seen.h1, seen.other), (0, 0));
        assert!(seen.h2 >= result.answered);

        let target = Target::new(h1_origin.addr, None, ca.roots().unwrap(), Http::H2).unwrap();
        let err = format!("{:#}", probe(&target).await.unwrap_err());
        assert!(err.contains("TLS handshake"), "{err}");
        assert_eq!(h1_origin.versions(), crate::origin::Versions::default());

        // HTTP/1.1 cannot carry two loops on one connection.
        let target =
            Arc::new(Target::new(h1_origin.addr, None, ca.roots().unwrap(), Http::H1).unwrap());
        let err = drive(
            target,
            &Load {
                concurrency: 1,
                ..load
            },
        )
        .await
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "more than one stream per connection needs HTTP/2"
        );
    }
}
