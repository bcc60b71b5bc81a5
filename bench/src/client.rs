//! The load generator: a closed loop of keep-alive HTTPS/1.1 connections.
//!
//! Each connection is opened once (TCP, then `CONNECT` when there is a proxy,
//! then TLS trusting only the CA of whoever terminates it, then HTTP/1.1) and
//! then sends one `GET /` after another, each after the previous answer was
//! read in full. Latency is taken per request, from send to the last body
//! byte. Requests that start during the warm-up are not recorded.

use anyhow::{bail, ensure, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::HOST;
use hyper::Request;
use hyper_util::rt::TokioIo;
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
    tls: TlsConnector,
    authority: String,
}

impl Target {
    /// `roots` must hold only the CA of whoever terminates TLS on this path,
    /// so a completed handshake through a proxy proves it intercepted.
    pub fn new(
        origin: SocketAddr,
        proxy: Option<SocketAddr>,
        roots: RootCertStore,
    ) -> anyhow::Result<Target> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Target {
            origin,
            proxy,
            tls: TlsConnector::from(Arc::new(tls)),
            authority: origin.to_string(),
        })
    }
}

type Sender = SendRequest<Empty<Bytes>>;

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
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
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

/// One request; returns the body length.
async fn get(sender: &mut Sender, authority: &str) -> anyhow::Result<usize> {
    sender.ready().await?;
    let request = Request::get("/")
        .header(HOST, authority)
        .body(Empty::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    ensure!(status == 200, "origin path answered {status}: {body:?}");
    Ok(body.len())
}

/// Opens one connection and sends one request; returns the body length.
pub async fn probe(target: &Target) -> anyhow::Result<usize> {
    tokio::time::timeout(STEP_TIMEOUT, async {
        let mut sender = open(target).await?;
        get(&mut sender, &target.authority).await
    })
    .await
    .context("probe request timed out")?
}

/// How much load, for how long.
#[derive(Debug, Clone)]
pub struct Load {
    pub concurrency: usize,
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
    for sender in senders {
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
            // The last request failed: reconnect (bounded by the deadline).
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
        match tokio::time::timeout(STEP_TIMEOUT, get(s, &target.authority)).await {
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
                sender = None;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 1.0), Some(100));
        assert_eq!(quantile(&v, 0.0), Some(1));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
