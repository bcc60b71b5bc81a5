//! HTTP/2 through the sidecar, with real clients: curl (`--http2`,
//! `--http1.1`, `--http2-prior-knowledge`), hyper's HTTP/2 client for what
//! curl will not send (an `:authority` that differs from the tunnel, many
//! streams at once, trailers), and raw frames for the denial-of-service
//! classes (rapid reset, HPACK bombs, CONTINUATION floods). Origins speak
//! HTTP/2, HTTP/1.1 or both by ALPN and record the version they were spoken
//! to in, so each test shows what each leg negotiated.

#![allow(
    clippy::disallowed_methods,
    reason = "the tests' real client: curl, as an agent would use it"
)]

mod common;

use bytes::Bytes;
use common::*;
use futures_util::stream;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

type OriginBody = BoxBody<Bytes, Infallible>;

/// What an origin saw of one request.
#[derive(Debug, Clone)]
struct Hit {
    version: String,
    path: String,
    authority: Option<String>,
    host: Option<String>,
    headers: Vec<(String, String)>,
    body_len: u64,
}

impl Hit {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// An origin recording every request; `release` lets `/sse` send its
/// second event.
#[derive(Clone)]
struct H2Origin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Hit>>>,
    release: Arc<Notify>,
    /// Connections accepted.
    conns: Arc<std::sync::atomic::AtomicUsize>,
}

impl H2Origin {
    fn port(&self) -> u16 {
        self.addr.port()
    }
    fn seen(&self) -> Vec<Hit> {
        self.seen.lock().unwrap().clone()
    }
}

fn full(body: impl Into<Bytes>) -> OriginBody {
    Full::new(body.into()).boxed()
}

/// `/trailers`: a body and gRPC-style trailers. `/sse`: one event, then a
/// second once the test releases it. `/upload`: the number of body bytes
/// received. Anything else: [`ORIGIN_BODY`].
async fn origin_handle(
    req: Request<Incoming>,
    origin: H2Origin,
) -> Result<Response<OriginBody>, hyper::Error> {
    let (parts, mut body) = req.into_parts();
    let mut body_len = 0u64;
    if parts.uri.path() != "/sse" {
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame?.data_ref() {
                body_len += d.len() as u64;
            }
        }
    }
    origin.seen.lock().unwrap().push(Hit {
        version: format!("{:?}", parts.version),
        path: parts.uri.path().to_string(),
        authority: parts.uri.authority().map(|a| a.to_string()),
        host: parts
            .headers
            .get("host")
            .map(|h| h.to_str().unwrap().to_string()),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body_len,
    });
    let resp = match parts.uri.path() {
        "/trailers" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("7"));
            trailers.insert("grpc-message", HeaderValue::from_static("denied-by-test"));
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"payload"))),
                Ok(Frame::trailers(trailers)),
            ];
            Response::builder()
                .header("content-type", "application/grpc")
                .body(StreamBody::new(stream::iter(frames)).boxed())
                .unwrap()
        }
        "/sse" => {
            let release = origin.release.clone();
            let events = stream::unfold(0u8, move |n| {
                let release = release.clone();
                async move {
                    match n {
                        0 => Some((
                            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"data: one\n\n"))),
                            1,
                        )),
                        1 => {
                            release.notified().await;
                            Some((Ok(Frame::data(Bytes::from_static(b"data: two\n\n"))), 2))
                        }
                        _ => None,
                    }
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(StreamBody::new(events).boxed())
                .unwrap()
        }
        "/upload" => Response::new(full(body_len.to_string())),
        _ => Response::new(full(ORIGIN_BODY)),
    };
    Ok(resp)
}

async fn serve_origin<S>(io: S, h2: bool, origin: H2Origin)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| origin_handle(req, origin.clone()));
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(io), svc)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), svc)
            .await;
    }
}

/// An origin on a fresh 127.0.0.1 listener; `serve` runs each accepted
/// connection.
async fn h2_origin_with<F, Fut>(serve: F) -> H2Origin
where
    F: Fn(TcpStream, H2Origin) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = H2Origin {
        addr: listener.local_addr().unwrap(),
        seen: Arc::default(),
        release: Arc::new(Notify::new()),
        conns: Arc::default(),
    };
    let o = origin.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            o.conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(serve(tcp, o.clone()));
        }
    });
    origin
}

/// A TLS origin on 127.0.0.1 offering `alpn` (in order of preference).
async fn tls_h2_origin(pki: &Pki, alpn: &[&[u8]]) -> H2Origin {
    let names = [
        "origin.test",
        "other.test",
        "api.example.test",
        "dns.nextdns.io",
        "127.0.0.1",
    ];
    let mut config = (*pki.origin_tls(&names)).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    h2_origin_with(move |tcp, o| {
        let acceptor = acceptor.clone();
        async move {
            if let Ok(tls) = acceptor.accept(tcp).await {
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                serve_origin(tls, h2, o).await;
            }
        }
    })
    .await
}

/// A cleartext HTTP/2 origin (prior knowledge only).
async fn h2c_origin() -> H2Origin {
    h2_origin_with(|tcp, o| serve_origin(tcp, true, o)).await
}

async fn bottle_for(pki: Pki, egress: Value, limits: Option<Value>) -> Bottle {
    let mut opts = Options::new(egress);
    opts.hosts = vec![
        ("origin.test", vec![ip("127.0.0.1")]),
        ("other.test", vec![ip("127.0.0.1")]),
    ];
    opts.limits = limits;
    opts.secrets = Some(
        json!({"format": 1, "credentials": {"TEST_KEY": {"value": "sk-real-h2-value", "placeholder": "bottle-placeholder-h2"}}}),
    );
    Bottle::start_in(pki, opts).await
}

fn allow(port: u16) -> Value {
    json!({
        "allow": [format!("origin.test:{port}"), format!("other.test:{port}"), format!("127.0.0.1:{port}")],
        "rules": [{"host": "origin.test", "methods": [], "paths": ["/hello", "/trailers", "/sse", "/upload", "/ok/"]}],
        "credentials": [{"host": "origin.test", "header": "x-api-key", "from_env": "TEST_KEY"}],
    })
}

#[tokio::test]
async fn each_leg_negotiates_its_own_http_version() {
    let Some(_) = curl() else { return };
    for (agent, origin_alpn, agent_saw, origin_saw) in [
        ("--http2", &[&b"h2"[..], b"http/1.1"][..], "2", "HTTP/2.0"),
        ("--http1.1", &[&b"h2"[..]][..], "1.1", "HTTP/2.0"),
        ("--http2", &[&b"http/1.1"[..]][..], "2", "HTTP/1.1"),
    ] {
        let pki = Pki::new();
        let origin = tls_h2_origin(&pki, origin_alpn).await;
        let port = origin.port();
        let bottle = bottle_for(pki, allow(port), None).await;
        let out = curl_https(
            &bottle,
            &[agent, "-w", "\n%{http_version}"],
            &format!("https://origin.test:{port}/hello"),
        )
        .await;
        assert_eq!(
            stdout(&out),
            format!("{ORIGIN_BODY}\n{agent_saw}"),
            "{agent} to {origin_alpn:?}: {out:?}"
        );
        let seen = origin.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].version, origin_saw);
        // The checked authority reaches the origin as :authority or Host,
        // and the credential is injected whichever version carries it.
        let named = match origin_saw {
            "HTTP/2.0" => seen[0].authority.clone(),
            _ => seen[0].host.clone(),
        };
        assert_eq!(named, Some(format!("origin.test:{port}")), "{seen:?}");
        assert_eq!(seen[0].header("x-api-key"), ["sk-real-h2-value"]);
        let line = bottle.decisions_for("GET", 1).await;
        assert_eq!(line[0]["status"], 200, "{line:?}");
        assert_eq!(line[0]["path"], "/hello");
    }
}

#[tokio::test]
async fn an_http2_request_to_a_denied_path_gets_the_403() {
    let Some(_) = curl() else { return };
    let pki = Pki::new();
    let origin = tls_h2_origin(&pki, &[b"h2"]).await;
    let port = origin.port();
    let bottle = bottle_for(pki, allow(port), None).await;
    let out = curl_https(
        &bottle,
        &["--http2", "-w", "\n%{http_code} %{http_version}"],
        &format!("https://origin.test:{port}/admin/keys"),
    )
    .await;
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "bottle egress: blocked GET https://origin.test:{port}/admin/keys\nrule: "
        )),
        "{text}"
    );
    assert!(text.ends_with("\n403 2"), "{text}");
    assert!(origin.seen().is_empty(), "the origin must see nothing");
}

/// An HTTP/2 client over a CONNECT tunnel to `origin.test:port`, trusting
/// the bottle CA.
async fn h2_client(
    bottle: &Bottle,
    port: u16,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = tunnel(bottle.addr, &format!("origin.test:{port}")).await;
    let tls = tls_over(&bottle.pki.agent_tls_alpn(&[b"h2"]), tcp, "origin.test").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn every_stream_is_checked_on_its_own() {
    let pki = Pki::new();
    let origin = tls_h2_origin(&pki, &[b"h2"]).await;
    let port = origin.port();
    let bottle = bottle_for(pki, allow(port), None).await;
    let sender = h2_client(&bottle, port).await;

    // One request first, so the client has the sidecar's SETTINGS (and its
    // stream limit) before the burst.
    let resp = sender
        .clone()
        .send_request(get(&format!("https://origin.test:{port}/ok/first")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // 40 streams at once on one connection, each checked, injected, logged.
    let mut streams = Vec::new();
    for i in 0..40 {
        let mut s = sender.clone();
        let url = format!("https://origin.test:{port}/ok/{i}");
        streams.push(tokio::spawn(async move {
            let resp = s.send_request(get(&url)).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }));
    }
    for s in streams {
        let (status, body) = s.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, ORIGIN_BODY);
    }
    let seen = origin.seen();
    assert_eq!(seen.len(), 41);
    assert!(seen
        .iter()
        .all(|h| h.header("x-api-key") == ["sk-real-h2-value"]));
    bottle.decisions_for("GET", 41).await;

    // Another authority on the same connection: that stream alone is refused.
    let mut s = sender.clone();
    let resp = s
        .send_request(get(&format!("https://other.test:{port}/ok/x")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("rule: host-mismatch"),
        "{body:?}"
    );
    // A CONNECT on a stream: never forwarded.
    let connect = Request::connect(format!("origin.test:{port}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = s.send_request(connect).await.unwrap();
    assert_eq!(resp.status(), 403);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("rule: connect-in-tunnel"),
        "{body:?}"
    );
    // A path outside the host's rules: refused per stream too.
    let resp = s
        .send_request(get(&format!("https://origin.test:{port}/admin")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // The connection still serves allowed streams.
    let resp = s
        .send_request(get(&format!("https://origin.test:{port}/hello")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(origin.seen().len(), 42, "refused streams never reach it");
}

#[tokio::test]
async fn http2_streams_share_a_few_http1_upstream_connections() {
    let pki = Pki::new();
    let origin = tls_h2_origin(&pki, &[b"http/1.1"]).await;
    let port = origin.port();
    let bottle = bottle_for(pki, allow(port), None).await;
    let sender = h2_client(&bottle, port).await;
    // 20 streams whose answers the origin holds open.
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut s = sender.clone();
        let url = format!("https://origin.test:{port}/sse");
        streams.push(tokio::spawn(async move {
            let resp = s.send_request(get(&url)).await.unwrap();
            resp.into_body().collect().await.unwrap().to_bytes()
        }));
    }
    eventually("8 requests at the origin", || {
        (origin.seen().len() >= 8).then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(origin.seen().len(), 8, "at most 8 in flight upstream");
    assert_eq!(
        origin.conns.load(std::sync::atomic::Ordering::SeqCst),
        8,
        "one upstream connection per request in flight"
    );
    // Released, every stream completes on those connections.
    let done = async {
        for s in streams {
            loop {
                if s.is_finished() {
                    assert_eq!(s.await.unwrap(), "data: one\n\ndata: two\n\n");
                    break;
                }
                origin.release.notify_waiters();
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    };
    tokio::time::timeout(PATIENCE, done)
        .await
        .expect("all streams finish");
    assert_eq!(origin.seen().len(), 20);
}

#[tokio::test]
async fn trailers_and_grpc_status_pass_intact() {
    let pki = Pki::new();
    let origin = tls_h2_origin(&pki, &[b"h2"]).await;
    let port = origin.port();
    let bottle = bottle_for(pki, allow(port), None).await;
    let mut sender = h2_client(&bottle, port).await;
    let req = Request::post(format!("https://origin.test:{port}/trailers"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x02hi")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers must arrive");
    assert_eq!(trailers["grpc-status"], "7");
    assert_eq!(trailers["grpc-message"], "denied-by-test");
    assert_eq!(collected.to_bytes(), "payload");
    let seen = origin.seen();
    assert_eq!(seen[0].path, "/trailers");
    assert_eq!(seen[0].header("te"), ["trailers"], "gRPC needs TE upstream");
    assert_eq!(seen[0].body_len, 7);
}

#[tokio::test]
async fn server_sent_events_are_not_held_back() {
    let Some(_) = curl() else { return };
    for version in ["--http2", "--http1.1"] {
        let pki = Pki::new();
        let origin = tls_h2_origin(&pki, &[b"h2", b"http/1.1"]).await;
        let port = origin.port();
        let bottle = bottle_for(pki, allow(port), None).await;
        let ca = bottle.pki.bottle_ca.to_str().unwrap().to_string();
        let mut child = tokio::process::Command::new("curl")
            .args(["-sSN", version, "-x", &bottle.proxy_url(), "--cacert", &ca])
            .arg(format!("https://origin.test:{port}/sse"))
            .env_remove("https_proxy")
            .env_remove("HTTPS_PROXY")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        // The first event arrives while the origin still holds the stream
        // open: nothing on the way waits for the end of the body.
        let first = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("the first event must arrive before the stream ends")
            .unwrap();
        assert_eq!(first.as_deref(), Some("data: one"), "{version}");
        origin.release.notify_one();
        let mut rest = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            rest.push(l);
        }
        assert_eq!(rest, ["", "data: two", ""], "{version}");
    }
}

#[tokio::test]
async fn prior_knowledge_inside_a_tunnel_is_served_and_forwarded_as_http2() {
    let Some(_) = curl() else { return };
    let origin = h2c_origin().await;
    let port = origin.port();
    let bottle = bottle_for(Pki::new(), allow(port), None).await;
    let out = run_curl(&[
        "-x",
        &bottle.proxy_url(),
        "-p",
        "--http2-prior-knowledge",
        "-w",
        "\n%{http_version}",
        &format!("http://127.0.0.1:{port}/plain"),
    ])
    .await;
    assert_eq!(stdout(&out), format!("{ORIGIN_BODY}\n2"), "{out:?}");
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, "HTTP/2.0");
    assert_eq!(
        seen[0].authority.as_deref(),
        Some(&*format!("127.0.0.1:{port}"))
    );
}

/// Reads HTTP/2 frames until one matches `want` or the connection ends.
async fn frames_until<S: AsyncRead + Unpin>(
    s: &mut S,
    mut want: impl FnMut(u8, u8, u32, &[u8]) -> bool,
) -> Option<(u8, u32, Vec<u8>)> {
    let read = async {
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                return None;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return None;
            }
            if want(head[3], head[4], stream, &payload) {
                return Some((head[3], stream, payload));
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the sidecar neither answered nor closed")
}

#[tokio::test]
async fn prior_knowledge_to_the_proxy_port_gets_http_1_1_required() {
    let bottle = bottle_for(Pki::new(), allow(1), None).await;
    let mut s = TcpStream::connect(bottle.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let (_, _, payload) = frames_until(&mut s, |ty, _, _, _| ty == 7)
        .await
        .expect("a GOAWAY");
    assert_eq!(&payload[4..8], &[0, 0, 0, 0xd], "HTTP_1_1_REQUIRED");
    let why = String::from_utf8_lossy(&payload[8..]).to_string();
    assert!(why.contains("speaks HTTP/1.1 only"), "{why}");
    bottle.decision_with_rule("h2-prior-knowledge").await;
}

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix, the high bits set to `flags`.
fn hpack_int(n: u8, flags: u8, mut v: usize) -> Vec<u8> {
    let max = (1usize << n) - 1;
    if v < max {
        return vec![flags | v as u8];
    }
    let mut out = vec![flags | max as u8];
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
    out
}

/// A literal header field without indexing, new name.
fn literal(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend(hpack_int(7, 0, name.len()));
    out.extend_from_slice(name.as_bytes());
    out.extend(hpack_int(7, 0, value.len()));
    out.extend_from_slice(value);
    out
}

/// `GET https://{authority}/` as an HPACK block (static table entries).
fn get_block(authority: &str) -> Vec<u8> {
    let mut out = vec![0x82, 0x87, 0x84];
    out.extend(hpack_int(4, 0, 1));
    out.extend(hpack_int(7, 0, authority.len()));
    out.extend_from_slice(authority.as_bytes());
    out
}

/// A raw TLS connection speaking HTTP/2 through a tunnel to origin.test,
/// after the client preface and an empty SETTINGS.
async fn raw_h2(bottle: &Bottle, port: u16) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = tunnel(bottle.addr, &format!("origin.test:{port}")).await;
    let mut tls = tls_over(&bottle.pki.agent_tls_alpn(&[b"h2"]), tcp, "origin.test").await;
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(4, 0, 0, &[]));
    tls.write_all(&hello).await.unwrap();
    tls
}

#[tokio::test]
async fn limits_are_advertised_and_header_bombs_refused() {
    let pki = Pki::new();
    let origin = tls_h2_origin(&pki, &[b"h2"]).await;
    let port = origin.port();
    let limits = json!({"h2_max_streams": 7, "h2_max_header_list_bytes": 8192, "h2_stream_window_bytes": 131072});
    let bottle = bottle_for(pki, allow(port), Some(limits)).await;
    let mut s = raw_h2(&bottle, port).await;
    let (_, _, settings) = frames_until(&mut s, |ty, flags, _, _| ty == 4 && flags & 1 == 0)
        .await
        .expect("the server's SETTINGS");
    let params: Vec<(u16, u32)> = settings
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    assert!(
        params.contains(&(3, 7)),
        "MAX_CONCURRENT_STREAMS: {params:?}"
    );
    assert!(
        params.contains(&(4, 131072)),
        "INITIAL_WINDOW_SIZE: {params:?}"
    );
    assert!(
        params.contains(&(6, 8192)),
        "MAX_HEADER_LIST_SIZE: {params:?}"
    );

    // An HPACK bomb: one 4 KiB value in the dynamic table, referenced 64
    // times (256 KiB decoded from about 4 KiB on the wire).
    let authority = format!("origin.test:{port}");
    let mut block = get_block(&authority);
    block.push(0x40);
    block.extend(hpack_int(7, 0, 6));
    block.extend_from_slice(b"x-bomb");
    block.extend(hpack_int(7, 0, 4096));
    block.extend(std::iter::repeat_n(b'a', 4096));
    block.extend(std::iter::repeat_n(0xbe, 64));
    s.write_all(&frame(1, 0x5, 1, &block)).await.unwrap();
    let refused = frames_until(&mut s, |ty, _, stream, payload| {
        (stream == 1 && (ty == 3 || (ty == 1 && payload.windows(3).any(|w| w == b"431"))))
            || ty == 7
    })
    .await;
    assert!(
        refused.is_some(),
        "the oversized header list must be refused"
    );
    assert!(origin.seen().is_empty(), "nothing may reach the origin");
}

#[tokio::test]
async fn rapid_reset_closes_the_connection() {
    let pki = Pki::new();
    let origin = tls_h2_origin(&pki, &[b"h2"]).await;
    let port = origin.port();
    let bottle = bottle_for(pki, allow(port), None).await;
    let mut s = raw_h2(&bottle, port).await;
    let block = get_block(&format!("origin.test:{port}"));
    let mut burst = Vec::new();
    for i in 0..500u32 {
        let id = 2 * i + 1;
        burst.extend(frame(1, 0x5, id, &block));
        burst.extend(frame(3, 0, id, &8u32.to_be_bytes()));
    }
    let _ = s.write_all(&burst).await;
    let goaway = frames_until(&mut s, |ty, _, _, _| ty == 7)
        .await
        .expect("a GOAWAY");
    assert_eq!(&goaway.2[4..8], &[0, 0, 0, 0xb], "ENHANCE_YOUR_CALM");
    assert!(origin.seen().len() < 500, "the burst was cut short");
}

#[tokio::test]
async fn a_continuation_flood_is_cut_before_it_reaches_the_origin() {
    let pki = Pki::new();
    let origin = tls_h2_origin(&pki, &[b"h2"]).await;
    let port = origin.port();
    let limits = json!({"h2_max_header_list_bytes": 16384});
    let bottle = bottle_for(pki, allow(port), Some(limits)).await;
    let mut s = raw_h2(&bottle, port).await;
    // HEADERS without END_HEADERS, then CONTINUATION frames that never end.
    let mut flood = frame(1, 0x1, 1, &get_block(&format!("origin.test:{port}")));
    for i in 0..2000 {
        flood.extend(frame(
            9,
            0,
            1,
            &literal(&format!("x-flood-{i}"), &[b'v'; 1000]),
        ));
    }
    let _ = s.write_all(&flood).await;
    let cut = frames_until(&mut s, |ty, _, stream, payload| {
        ty == 7
            || (stream == 1 && (ty == 3 || (ty == 1 && payload.windows(3).any(|w| w == b"431"))))
    })
    .await;
    // Either a refusal frame or the connection closed: never served.
    drop(cut);
    assert!(origin.seen().is_empty(), "nothing may reach the origin");
    // The sidecar still serves a fresh connection.
    let mut fresh = h2_client(&bottle, port).await;
    let resp = fresh
        .send_request(get(&format!("https://origin.test:{port}/hello")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn encrypted_dns_is_refused_even_under_a_wildcard() {
    let Some(_) = curl() else { return };
    let pki = Pki::new();
    let origin = tls_h2_origin(&pki, &[b"h2", b"http/1.1"]).await;
    let port = origin.port();
    let egress = json!({"allow": [format!("*.nextdns.io:{port}"), format!("*.example.test:{port}"), format!("127.0.0.1:{port}")]});
    let mut opts = Options::new(egress);
    opts.hosts = vec![
        ("dns.nextdns.io", vec![ip("127.0.0.1")]),
        ("api.example.test", vec![ip("127.0.0.1")]),
    ];
    let bottle = Bottle::start_in(pki, opts).await;

    // The resolver's host: refused at CONNECT with its own rule and hint.
    let resp = raw_request(
        bottle.addr,
        &format!("CONNECT dns.nextdns.io:{port} HTTP/1.1\r\nHost: dns.nextdns.io:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(resp.body.contains("rule: encrypted-dns\n"), "{}", resp.body);
    assert!(
        resp.body
            .contains("dns.nextdns.io is a public encrypted DNS (DoH/DoT) resolver"),
        "{}",
        resp.body
    );
    assert!(
        resp.body.contains("a wildcard does not open it"),
        "{}",
        resp.body
    );

    // DNS messages by media type, to any host a pattern allows: refused.
    for header in [
        "accept: application/dns-message",
        "content-type: application/dns-json",
    ] {
        let out = curl_https(
            &bottle,
            &["-H", header, "-w", "\n%{http_code}"],
            &format!("https://api.example.test:{port}/dns-query?dns=AAABAAAB"),
        )
        .await;
        let text = stdout(&out);
        assert!(text.contains("rule: encrypted-dns\n"), "{header}: {text}");
        assert!(text.ends_with("\n403"), "{header}: {text}");
    }
    assert!(origin.seen().is_empty());
    let out = curl_https(
        &bottle,
        &[],
        &format!("https://api.example.test:{port}/plain"),
    )
    .await;
    assert_eq!(stdout(&out), ORIGIN_BODY);

    // An entry naming the resolver exactly opens it.
    bottle.write_policy(
        &json!({"allow": [format!("dns.nextdns.io:{port}"), format!("127.0.0.1:{port}")]}),
    );
    let mut status = String::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(bottle.addr).await.unwrap();
        let connect = format!(
            "CONNECT dns.nextdns.io:{port} HTTP/1.1\r\nHost: dns.nextdns.io:{port}\r\n\r\n"
        );
        s.write_all(connect.as_bytes()).await.unwrap();
        status = read_head(&mut s).await;
        if status.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "an exact entry opens the resolver: {status}"
    );
}
