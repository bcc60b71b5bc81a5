//! Shared harness for the sidecar's integration tests: the real proxy
//! in-process on 127.0.0.1:0, local origin servers, a log capture, and
//! eventual assertions that wait generously instead of timing anything.

#![allow(dead_code)] // each test binary uses a different part

use bottle_policy::{AllowRule, EgressPolicy, Policy};
use bottle_sidecar::log::{LineSink, Logger, RateLimit};
use bottle_sidecar::policy_file::PolicyHandle;
use bottle_sidecar::proxy::Proxy;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// How long an eventual assertion waits before failing. Long on purpose:
/// slow CI must not fail a correct proxy.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Log lines collected in memory.
#[derive(Default)]
pub struct Capture(Mutex<Vec<String>>);

impl LineSink for Capture {
    fn write_line(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }
}

impl Capture {
    pub fn raw(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn json(&self) -> Vec<Value> {
        self.raw()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// Egress decision lines (not summaries).
    pub fn decisions(&self) -> Vec<Value> {
        self.json()
            .into_iter()
            .filter(|v| v["service"] == "egress" && v.get("decision").is_some())
            .collect()
    }
}

pub struct TestProxy {
    pub addr: SocketAddr,
    pub log: Arc<Capture>,
    pub logger: Logger,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn policy(allow: &[String]) -> Policy {
    Policy::new(
        "test",
        EgressPolicy {
            allow: allow.iter().map(|a| AllowRule::parse(a).unwrap()).collect(),
            ..Default::default()
        },
    )
}

pub async fn start_proxy(allow: &[String]) -> TestProxy {
    start_proxy_with(allow, RateLimit::default()).await
}

pub async fn start_proxy_with(allow: &[String], limit: RateLimit) -> TestProxy {
    let log = Arc::new(Capture::default());
    let logger = Logger::new(log.clone(), limit);
    let proxy = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        PolicyHandle::new(policy(allow)),
        logger.clone(),
    )
    .await
    .unwrap();
    let addr = proxy.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(proxy.serve(async {
        let _ = stopped.await;
    }));
    TestProxy {
        addr,
        log,
        logger,
        stop: Some(stop),
    }
}

/// Polls `f` until it returns `Some`, failing after [`PATIENCE`].
pub async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP echo server; returns its address.
pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// What the origin server saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The request target as received (origin form expected).
    pub target: String,
    pub header_names: Vec<String>,
    pub host: Option<String>,
    pub body: Bytes,
}

pub const ORIGIN_BODY: &str = "hello from origin";

pub struct Origin {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Origin {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// An HTTP/1 origin that records each request and answers [`ORIGIN_BODY`]. It
/// answers 500 instead when a `proxy-*` header reached it.
pub async fn http_origin() -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let record = record.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await?.to_bytes();
                    let header_names: Vec<String> =
                        parts.headers.keys().map(|k| k.to_string()).collect();
                    let leaked = header_names.iter().any(|n| n.starts_with("proxy-"));
                    record.lock().unwrap().push(Seen {
                        method: parts.method.to_string(),
                        target: parts.uri.to_string(),
                        host: parts
                            .headers
                            .get("host")
                            .map(|h| h.to_str().unwrap().to_string()),
                        header_names,
                        body,
                    });
                    let mut resp =
                        Response::new(Full::new(Bytes::from_static(ORIGIN_BODY.as_bytes())));
                    if leaked {
                        *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    Ok::<_, hyper::Error>(resp)
                }
            });
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Origin { addr, seen }
}

/// A raw HTTP response: status code, head text, body text.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends `request` verbatim (it should ask for `Connection: close`) and reads
/// the whole answer.
pub async fn raw_request(proxy: SocketAddr, request: &str) -> RawResponse {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf))
        .await
        .expect("proxy did not close the connection")
        .unwrap();
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> RawResponse {
    let text = String::from_utf8_lossy(buf).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    RawResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Reads a response head (through the blank line) and no further.
pub async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut byte))
            .await
            .expect("no response head")
            .unwrap();
        assert!(n == 1, "connection closed mid-head: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// The `curl` binary, or `None` (with the reason printed) when it is missing.
/// Under `CI=true` a missing curl fails the test instead.
pub fn curl() -> Option<&'static str> {
    let ok = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Some("curl");
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "curl is required under CI=true"
    );
    eprintln!("skipping: no working `curl` on PATH");
    None
}

/// Runs curl with proxy environment variables removed, so only `-x` counts.
pub async fn run_curl(args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new("curl");
    for var in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(["-sS", "--max-time", "60"]).args(args);
    cmd.output().await.unwrap()
}
