//! Shared harness for the sidecar's integration tests: the real sidecar
//! in-process (every listener on 127.0.0.1:0) with a bottle CA and a test
//! upstream CA in a temp state dir, local HTTP and TLS origins, a log
//! capture, raw-socket and TLS clients, and eventual assertions that wait
//! generously instead of timing anything.
//!
//! Every origin listens on 127.0.0.1; no test ever sends a packet anywhere
//! else (names that "resolve" to other addresses come from a fixed test
//! resolver and are refused before any connection).

#![allow(dead_code)] // each test binary uses a different part
#![allow(
    clippy::disallowed_methods,
    reason = "the tests' real clients: curl, as an agent would use it"
)]

use bottle_policy::LocalNet;
use bottle_sidecar::guard::{LocalNetSource, Resolver};
use bottle_sidecar::log::{LineSink, Logger, RateLimit};
use bottle_sidecar::{Addrs, RunConfig, Sidecar};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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

    /// DNS decision lines.
    pub fn dns(&self) -> Vec<Value> {
        self.json()
            .into_iter()
            .filter(|v| v["service"] == "dns")
            .collect()
    }

    /// Lifecycle events named `event`.
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.json()
            .into_iter()
            .filter(|v| v["service"] == "sidecar" && v["event"] == event)
            .collect()
    }
}

/// A unique, empty, private temp directory, inside this test process's
/// own directory ([`run_dir`]): kept while the process runs and after it
/// (a failed test's state and logs are left to read), removed when the
/// next test process starts.
pub fn temp_dir(what: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(&format!("{what}-"))
        .tempdir_in(run_dir())
        .unwrap()
        .keep()
}

/// `bottle-sidecar-tests-<pid>-<random>` in the temp dir (made by
/// `tempfile`: a random name, private). Made once per test process, after
/// removing the ones left by this user's test processes that are gone, so
/// test runs do not pile up directories.
fn run_dir() -> &'static Path {
    static DIR: std::sync::LazyLock<PathBuf> = std::sync::LazyLock::new(|| {
        use std::os::unix::fs::MetadataExt;
        const PREFIX: &str = "bottle-sidecar-tests-";
        let tmp = tempfile::env::temp_dir();
        let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
        for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix(PREFIX))
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            let Some(pid) = pid else { continue };
            // Only this user's own directories (never a symlink), of a test
            // process that is gone.
            let ours = std::fs::symlink_metadata(entry.path())
                .is_ok_and(|m| m.is_dir() && Some(m.uid()) == uid);
            if ours && !Path::new("/proc").join(pid.to_string()).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .tempdir_in(&tmp)
            .unwrap()
            .keep()
    });
    &DIR
}

fn ca(cn: &str) -> (String, Issuer<'static, KeyPair>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    let pem = cert.pem();
    let issuer_key = KeyPair::from_pem(&key.serialize_pem()).unwrap();
    (pem, Issuer::new(params, issuer_key), key)
}

/// The certificates of one test: the bottle CA (as the CLI mints it) and a
/// test CA for origins, given to the sidecar as `upstream-roots.pem`.
pub struct Pki {
    /// The state dir: policy.json, ca.pem, ca-key.pem, upstream-roots.pem.
    pub dir: PathBuf,
    /// The bottle CA certificate, as the agent has it (for `--cacert`).
    pub bottle_ca: PathBuf,
    upstream: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = temp_dir("state");
        let (bottle_pem, _, bottle_key) = ca("bottle test egress CA");
        std::fs::write(dir.join("ca.pem"), &bottle_pem).unwrap();
        std::fs::write(dir.join("ca-key.pem"), bottle_key.serialize_pem()).unwrap();
        let (upstream_pem, upstream, _) = ca("test upstream CA");
        std::fs::write(dir.join("upstream-roots.pem"), upstream_pem).unwrap();
        Pki {
            bottle_ca: dir.join("ca.pem"),
            dir,
            upstream,
        }
    }

    /// A server config for an origin answering to `names`, signed by the test
    /// upstream CA (trusted by the sidecar).
    pub fn origin_tls(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        leaf_config(names, &self.upstream)
    }

    /// A server config signed by a CA nobody trusts.
    pub fn rogue_tls(names: &[&str]) -> Arc<rustls::ServerConfig> {
        let (_, rogue, _) = ca("rogue CA");
        leaf_config(names, &rogue)
    }

    /// A TLS client trusting only the bottle CA (what the agent trusts).
    pub fn agent_tls(&self) -> tokio_rustls::TlsConnector {
        self.agent_tls_alpn(&[])
    }

    /// [`Pki::agent_tls`] offering `alpn` (e.g. `h2`).
    pub fn agent_tls_alpn(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let pem = std::fs::read(&self.bottle_ca).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let cert: CertificateDer<'static> = cert.unwrap();
            roots.add(cert).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut config = config;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

fn leaf_config(names: &[&str], issuer: &Issuer<'static, KeyPair>) -> Arc<rustls::ServerConfig> {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    Arc::new(config)
}

/// How to start a test bottle.
pub struct Options {
    /// The `egress` section of the policy, as JSON.
    pub egress: Value,
    /// `secrets.json` content, if any.
    pub secrets: Option<Value>,
    /// Fixed resolver table; names not listed do not resolve.
    pub hosts: Vec<(&'static str, Vec<IpAddr>)>,
    /// Use the system resolver instead of `hosts`.
    pub system_resolver: bool,
    pub local: LocalNet,
    pub limit: RateLimit,
    pub transparent_http_port: u16,
    pub transparent_https_port: u16,
    /// The policy's `limits` section, if any (defaults otherwise).
    pub limits: Option<Value>,
    /// The policy's `dlp` section, if any (defaults otherwise).
    pub dlp: Option<Value>,
    /// Where the budget counters persist (in memory when `None`).
    pub budget_state: Option<PathBuf>,
}

impl Options {
    pub fn new(egress: Value) -> Self {
        Options {
            egress,
            secrets: None,
            hosts: Vec::new(),
            system_resolver: false,
            local: LocalNet {
                gateways: vec!["198.51.100.1".parse().unwrap()],
                own: vec!["198.51.100.2".parse().unwrap()],
            },
            limit: RateLimit::default(),
            transparent_http_port: 80,
            transparent_https_port: 443,
            limits: None,
            dlp: None,
            budget_state: None,
        }
    }

    pub fn allow(allow: &[String]) -> Self {
        Options::new(json!({ "allow": allow }))
    }
}

/// The sidecar, running in-process.
pub struct Bottle {
    /// The explicit proxy.
    pub addr: SocketAddr,
    pub addrs: Addrs,
    pub log: Arc<Capture>,
    pub logger: Logger,
    pub pki: Pki,
    stop: Option<oneshot::Sender<()>>,
}

/// The existing proxy tests' name for it.
pub type TestProxy = Bottle;

impl Drop for Bottle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn policy_json(egress: &Value) -> String {
    json!({"format": 1, "bottle": "test", "egress": egress}).to_string()
}

/// Replaces `path` with `text` the way the CLI does: write aside, rename.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl Bottle {
    pub async fn start(opts: Options) -> Bottle {
        Bottle::start_in(Pki::new(), opts).await
    }

    /// Starts with the certificates of `pki` (origins may already use its
    /// upstream CA).
    pub async fn start_in(pki: Pki, opts: Options) -> Bottle {
        let policy_path = pki.dir.join("policy.json");
        let mut policy = json!({"format": 1, "bottle": "test", "egress": opts.egress});
        if let Some(limits) = &opts.limits {
            policy["limits"] = limits.clone();
        }
        if let Some(dlp) = &opts.dlp {
            policy["dlp"] = dlp.clone();
        }
        let policy = policy.to_string();
        std::fs::write(&policy_path, policy).unwrap();
        if let Some(secrets) = &opts.secrets {
            std::fs::write(pki.dir.join("secrets.json"), secrets.to_string()).unwrap();
        }
        let log = Arc::new(Capture::default());
        let logger = Logger::new(log.clone(), log.clone(), opts.limit);
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut config = RunConfig::new(&policy_path);
        config.proxy_listen = Some(local);
        config.dns_listen = Some(local);
        config.http_listen = Some(local);
        config.https_listen = Some(local);
        config.dns_answer = Some("10.99.0.2".parse().unwrap());
        config.reload_interval = Duration::from_millis(50);
        config.resolver = if opts.system_resolver {
            Resolver::System
        } else {
            Resolver::fixed(opts.hosts.clone())
        };
        config.local_net = LocalNetSource::Fixed(opts.local.clone());
        config.transparent_http_port = opts.transparent_http_port;
        config.transparent_https_port = opts.transparent_https_port;
        config.budget_state = opts.budget_state.clone();
        let sidecar = Sidecar::start(&config, logger.clone()).await.unwrap();
        let addrs = sidecar.addrs().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(sidecar.serve(async {
            let _ = stopped.await;
        }));
        Bottle {
            addr: addrs.proxy.unwrap(),
            addrs,
            log,
            logger,
            pki,
            stop: Some(stop),
        }
    }

    pub fn policy_path(&self) -> PathBuf {
        self.pki.dir.join("policy.json")
    }

    /// Replaces the policy's egress section (atomic rename, as the CLI does).
    pub fn write_policy(&self, egress: &Value) {
        replace_file(&self.policy_path(), &policy_json(egress));
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Decision lines for `method`, once there are at least `n`.
    pub async fn decisions_for(&self, method: &str, n: usize) -> Vec<Value> {
        eventually(&format!("{n} {method} log line(s)"), || {
            let found: Vec<Value> = self
                .log
                .decisions()
                .into_iter()
                .filter(|v| v["method"] == method)
                .collect();
            (found.len() >= n).then_some(found)
        })
        .await
    }

    /// The first decision line with `rule`.
    pub async fn decision_with_rule(&self, rule: &str) -> Value {
        eventually(&format!("a decision with rule {rule}"), || {
            self.log.decisions().into_iter().find(|v| v["rule"] == rule)
        })
        .await
    }
}

pub async fn start_proxy(allow: &[String]) -> TestProxy {
    Bottle::start(Options::allow(allow)).await
}

pub async fn start_proxy_with(allow: &[String], limit: RateLimit) -> TestProxy {
    let mut opts = Options::allow(allow);
    opts.limit = limit;
    Bottle::start(opts).await
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

/// A TCP server that records every byte it receives and never answers.
pub async fn sink_server() -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Arc<Mutex<Vec<u8>>> = Arc::default();
    let record = got.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (addr, got)
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
    /// Every header, for the tests that check what was injected.
    pub headers: Vec<(String, String)>,
    pub host: Option<String>,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
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

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// The origins' handler: records each request and answers [`ORIGIN_BODY`]
/// (500 when a `proxy-*` header reached it). `GET /ws` with `Upgrade:
/// websocket` is answered 101 and then echoes raw bytes.
async fn origin_handle(
    mut req: Request<Incoming>,
    record: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let wants_ws = req.uri().path() == "/ws"
        && req
            .headers()
            .get("upgrade")
            .is_some_and(|v| v == "websocket");
    let on_upgrade = wants_ws.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let body = if wants_ws {
        Bytes::new()
    } else {
        body.collect().await?.to_bytes()
    };
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).to_string(),
            )
        })
        .collect();
    let header_names: Vec<String> = parts.headers.keys().map(|k| k.to_string()).collect();
    let leaked = header_names.iter().any(|n| n.starts_with("proxy-"));
    record.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        target: parts.uri.to_string(),
        host: parts
            .headers
            .get("host")
            .map(|h| h.to_str().unwrap().to_string()),
        header_names,
        headers,
        body,
    });
    if let Some(on_upgrade) = on_upgrade {
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", "test-accept")
            .body(Full::new(Bytes::new()))
            .unwrap();
        return Ok(resp);
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(ORIGIN_BODY.as_bytes())));
    if leaked {
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    }
    Ok(resp)
}

async fn serve_origin<S>(stream: S, record: Arc<Mutex<Vec<Seen>>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| origin_handle(req, record.clone()));
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades()
        .await;
}

/// A plain HTTP/1 origin on 127.0.0.1.
pub async fn http_origin() -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_origin(stream, record.clone()));
        }
    });
    Origin { addr, seen }
}

/// A TLS origin on 127.0.0.1 presenting `config`'s certificate.
pub async fn tls_origin(config: Arc<rustls::ServerConfig>) -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let record = record.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    serve_origin(tls, record).await;
                }
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
    let s = TcpStream::connect(proxy).await.unwrap();
    exchange(s, request).await
}

/// Writes `request` on `s` and reads until the peer closes.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &str) -> RawResponse {
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf))
        .await
        .expect("the peer did not close the connection");
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
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
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

/// Opens a CONNECT tunnel to `target` and returns the stream after the 200.
pub async fn tunnel(proxy: SocketAddr, target: &str) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "CONNECT {target}: {head}");
    s
}

/// TLS over `stream` with `sni`, trusting `connector`'s roots.
pub async fn tls_over(
    connector: &tokio_rustls::TlsConnector,
    stream: TcpStream,
    sni: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio::time::timeout(PATIENCE, connector.connect(name, stream))
        .await
        .expect("TLS handshake timed out")
        .unwrap_or_else(|e| panic!("TLS handshake as {sni} failed: {e}"))
}

/// Reads one response with a `content-length` body from a kept-alive stream.
pub async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> RawResponse {
    let head = read_head(s).await;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    let mut body = vec![0u8; len];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut body))
        .await
        .expect("body did not arrive")
        .unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    RawResponse {
        status,
        head,
        body: String::from_utf8_lossy(&body).to_string(),
    }
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

/// curl through `bottle`'s explicit proxy, trusting only the bottle CA.
pub async fn curl_https(bottle: &Bottle, extra: &[&str], url: &str) -> std::process::Output {
    let ca = bottle.pki.bottle_ca.to_str().unwrap().to_string();
    let proxy = bottle.proxy_url();
    let mut args = vec!["-x", proxy.as_str(), "--cacert", ca.as_str()];
    args.extend_from_slice(extra);
    args.push(url);
    run_curl(&args).await
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

pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// An IP address literal.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A DNS query for `name` of type `qtype` (class IN, recursion desired).
pub fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

/// A DNS reply's RCODE.
pub fn rcode(reply: &[u8]) -> u8 {
    reply[3] & 0xF
}

/// A DNS reply's answer count.
pub fn ancount(reply: &[u8]) -> u16 {
    u16::from_be_bytes([reply[6], reply[7]])
}

/// Asks the DNS server at `server` over UDP; the reply (its id checked).
pub async fn dns_udp(server: SocketAddr, id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&dns_query(id, name, qtype), server)
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(PATIENCE, sock.recv(&mut buf))
        .await
        .expect("no DNS answer")
        .unwrap();
    buf.truncate(n);
    assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), id);
    buf
}

/// `data` compressed by the system's `gzip` (the real tool, so the tests do
/// not judge gzip by the decoder under test).
#[allow(clippy::disallowed_methods, reason = "gzip, the real tool")]
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip is needed to build compressed bodies");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}
