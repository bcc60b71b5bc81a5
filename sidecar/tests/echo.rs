//! What an origin sends back: an echo origin (httpbin-style) returns the
//! credential the sidecar injected in a header, in a body, split across two
//! writes of a chunked body, and gzip-compressed; the agent must never see
//! the value; nor in a reason phrase, behind a smuggled coding or in byte
//! ranges. And method-override headers and the `_method` query parameter,
//! refused where rules restrict methods and untouched elsewhere.
//!
//! The echo origin is a raw TLS server (test upstream CA) on 127.0.0.1 that
//! reads one request head and answers per path, so the bytes on the wire are
//! exactly what each case needs; the agent side is a hyper client over TLS
//! (trusting only the bottle CA) inside a CONNECT tunnel, so chunked bodies
//! are decoded before they are searched.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper::header::HeaderMap;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const VALUE: &str = "sk-echo-SECRET-value-7f3a91";
const PLACEHOLDER: &str = "bottle-placeholder-ECHO_KEY";

/// The echo origin: answers each request by its path with the value of the
/// `x-api-key` it received, and records each request head.
async fn echo_origin(pki: &Pki) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.origin_tls(&["echo.test", "plain.test"]));
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = heads.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let head = read_head(&mut s).await;
                record.lock().unwrap().push(head.clone());
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                let key = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("x-api-key")
                            .then(|| v.trim().to_string())
                    })
                    .unwrap_or_default();
                let body = format!("{{\"x-api-key\": \"{key}\"}}");
                match path.as_str() {
                    "/header" => {
                        let resp = format!("HTTP/1.1 200 OK\r\nx-echo-key: {key}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
                        let _ = s.write_all(resp.as_bytes()).await;
                    }
                    "/body" => {
                        let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                        let _ = s.write_all(resp.as_bytes()).await;
                    }
                    "/split" => {
                        // The value split across two chunks, two writes.
                        let at = body.find(&key).unwrap_or(0) + key.len() / 2;
                        let (a, b) = body.split_at(at);
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
                            .await;
                        let _ = s
                            .write_all(format!("{:x}\r\n{a}\r\n", a.len()).as_bytes())
                            .await;
                        let _ = s.flush().await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let _ = s
                            .write_all(format!("{:x}\r\n{b}\r\n0\r\n\r\n", b.len()).as_bytes())
                            .await;
                    }
                    "/gzip" => {
                        // Compressed although the request asked for identity.
                        let gz = gzip(body.as_bytes());
                        let mut resp = format!("HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", gz.len()).into_bytes();
                        resp.extend_from_slice(&gz);
                        let _ = s.write_all(&resp).await;
                    }
                    "/reason" => {
                        // The value in a non-standard reason phrase.
                        let resp = format!("HTTP/1.1 401 invalid key {key}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                        let _ = s.write_all(resp.as_bytes()).await;
                    }
                    "/ws-reason" => {
                        let resp = format!("HTTP/1.1 101 switching for {key}\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n");
                        let _ = s.write_all(resp.as_bytes()).await;
                    }
                    "/conn-ce" => {
                        // Content-Encoding named as a connection option, so
                        // hop-by-hop stripping would remove it.
                        let gz = gzip(body.as_bytes());
                        let mut resp = format!("HTTP/1.1 200 OK\r\nconnection: close, content-encoding\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n\r\n", gz.len()).into_bytes();
                        resp.extend_from_slice(&gz);
                        let _ = s.write_all(&resp).await;
                    }
                    "/te-gzip" => {
                        // gzip as a transfer coding under the chunking.
                        let gz = gzip(body.as_bytes());
                        let mut resp = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n{:x}\r\n", gz.len()).into_bytes();
                        resp.extend_from_slice(&gz);
                        resp.extend_from_slice(b"\r\n0\r\n\r\n");
                        let _ = s.write_all(&resp).await;
                    }
                    "/range" => {
                        // A part of the echo, asked for or not.
                        let part = &body[..8];
                        let resp = format!("HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 0-7/{}\r\ncontent-length: 8\r\nconnection: close\r\n\r\n{part}", body.len());
                        let _ = s.write_all(resp.as_bytes()).await;
                    }
                    _ => {
                        let _ = s
                            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                    }
                }
                let _ = s.flush().await;
                let _ = s.shutdown().await;
                // Let the sidecar read everything before the socket goes.
                let mut rest = [0u8; 64];
                let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut rest)).await;
            });
        }
    });
    (port, heads)
}

/// One request from the agent through a CONNECT tunnel and TLS (the bottle
/// CA), answered and fully decoded: status, headers, body.
async fn agent_get(
    b: &Bottle,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let tcp = tunnel(b.addr, &format!("{host}:{port}")).await;
    let tls = tls_over(&b.pki.agent_tls(), tcp, host).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", format!("{host}:{port}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(PATIENCE, body.collect())
        .await
        .expect("body did not end")
        .unwrap()
        .to_bytes();
    (parts.status, parts.headers, body)
}

fn everything(headers: &HeaderMap, body: &Bytes) -> String {
    let mut text = String::new();
    for (k, v) in headers {
        text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
    }
    text.push_str(&String::from_utf8_lossy(body));
    text
}

#[tokio::test]
async fn the_injected_credential_never_comes_back_to_the_agent() {
    let pki = Pki::new();
    let (port, heads) = echo_origin(&pki).await;
    let mut opts = Options::new(json!({
        // 127.0.0.1 is refused by the destination guard unless named.
        "allow": [format!("echo.test:{port}"), format!("127.0.0.1:{port}")],
        "credentials": [{"host": "echo.test", "header": "x-api-key", "from_env": "ECHO_KEY"}],
    }));
    opts.hosts = vec![("echo.test", vec![ip("127.0.0.1")])];
    opts.secrets = Some(
        json!({"format": 1, "credentials": {"ECHO_KEY": {"value": VALUE, "placeholder": PLACEHOLDER}}}),
    );
    let b = Bottle::start_in(pki, opts).await;
    let redacted = "BOTTLE-REDACTED************"; // VALUE's length
    assert_eq!(redacted.len(), VALUE.len());

    // In a header.
    let (status, headers, body) = agent_get(
        &b,
        "echo.test",
        port,
        "/header",
        &[("x-api-key", PLACEHOLDER), ("accept-encoding", "gzip, br")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-echo-key"], redacted);
    assert!(!everything(&headers, &body).contains(VALUE));

    // In a body with a Content-Length, which stays right.
    let (status, headers, body) = agent_get(&b, "echo.test", port, "/body", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body, format!("{{\"x-api-key\": \"{redacted}\"}}"));
    assert_eq!(headers["content-length"], body.len().to_string());

    // Split across two chunks sent in two writes.
    let (status, headers, body) = agent_get(&b, "echo.test", port, "/split", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body, format!("{{\"x-api-key\": \"{redacted}\"}}"));
    assert!(!everything(&headers, &body).contains(VALUE));

    // Compressed: the value is not literally in the bytes, so the redactor
    // alone would miss it; the response is refused instead.
    let gz = gzip(format!("{{\"x-api-key\": \"{VALUE}\"}}").as_bytes());
    assert!(!String::from_utf8_lossy(&gz).contains(VALUE));
    let (status, headers, body) = agent_get(&b, "echo.test", port, "/gzip", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("credential-encoded-response"), "{text}");
    assert!(headers.get("content-encoding").is_none());
    assert!(!everything(&headers, &body).contains(VALUE));

    // The origin did get the value, and was asked for an unencoded answer
    // (the agent's own accept-encoding replaced).
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 4, "{heads:?}");
    for head in &heads {
        assert!(head.contains(&format!("x-api-key: {VALUE}")), "{head}");
        assert!(head.contains("accept-encoding: identity"), "{head}");
        assert!(!head.contains("gzip, br"), "{head}");
    }

    // Audited by name, never by value.
    let events = eventually("three credential-redacted events", || {
        let found: Vec<_> = b
            .log
            .json()
            .into_iter()
            .filter(|v| v["event"] == "credential-redacted")
            .collect();
        (found.len() >= 3).then_some(found)
    })
    .await;
    for e in &events {
        assert_eq!(e["service"], "egress");
        assert_eq!(e["credentials"], json!(["ECHO_KEY"]));
        assert_eq!(e["host"], "echo.test");
    }
    let refused = b.decision_with_rule("credential-encoded-response").await;
    assert_eq!(refused["status"], 502);
    assert!(b.log.raw().iter().all(|l| !l.contains(VALUE)));
}

#[tokio::test]
async fn method_override_is_refused_where_rules_restrict_methods() {
    let origin = http_origin().await;
    let port = origin.port();
    let mut opts = Options::new(json!({
        "allow": [format!("api.test:{port}"), format!("open.test:{port}")],
        "rules": [{"host": "api.test", "methods": ["GET", "POST"], "paths": ["/repos/acme/"]}],
    }));
    opts.hosts = vec![
        ("api.test", vec![ip("127.0.0.1")]),
        ("open.test", vec![ip("127.0.0.1")]),
    ];
    opts.system_resolver = false;
    // Both names resolve to 127.0.0.1, allowed only as an exact address.
    opts.egress["allow"]
        .as_array_mut()
        .unwrap()
        .push(json!(format!("127.0.0.1:{port}")));
    let b = Bottle::start(opts).await;
    let post = |host: &str, header: &str| {
        format!(
            "POST http://{host}:{port}/repos/acme/issues HTTP/1.1\r\nHost: {host}:{port}\r\n{header}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };

    // POST is allowed by the rule; POST that asks to be run as DELETE is not,
    // whatever the header's spelling.
    for header in [
        "X-HTTP-Method-Override",
        "x-http-method",
        "X-Method-Override",
    ] {
        let resp = raw_request(b.addr, &post("api.test", &format!("{header}: DELETE\r\n"))).await;
        assert_eq!(resp.status, 403, "{header}: {resp:?}");
        assert!(resp.body.contains("method-override"), "{}", resp.body);
        assert!(
            resp.body.contains(&header.to_ascii_lowercase()),
            "the body names the header: {}",
            resp.body
        );
        assert!(
            resp.body.contains("GET,POST /repos/acme/"),
            "the body names the rule: {}",
            resp.body
        );
    }
    assert!(origin.seen().is_empty(), "{:?}", origin.seen());
    let line = b.decision_with_rule("method-override").await;
    assert_eq!(line["status"], 403);

    // Without the header the same request goes through.
    let resp = raw_request(b.addr, &post("api.test", "")).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    // A host without method rules is unaffected: forwarded, header and all.
    let resp = raw_request(
        b.addr,
        &post("open.test", "X-HTTP-Method-Override: DELETE\r\n"),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = origin.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].header("x-http-method-override"), ["DELETE"]);
}

/// A bottle in front of the echo origin: `echo.test` gets the injected
/// credential, `plain.test` (same origin) gets none.
async fn echo_bottle() -> (Bottle, u16, Arc<Mutex<Vec<String>>>) {
    let pki = Pki::new();
    let (port, heads) = echo_origin(&pki).await;
    let mut opts = Options::new(json!({
        "allow": [
            format!("echo.test:{port}"),
            format!("plain.test:{port}"),
            format!("127.0.0.1:{port}"),
        ],
        "credentials": [{"host": "echo.test", "header": "x-api-key", "from_env": "ECHO_KEY"}],
    }));
    opts.hosts = vec![
        ("echo.test", vec![ip("127.0.0.1")]),
        ("plain.test", vec![ip("127.0.0.1")]),
    ];
    opts.secrets = Some(
        json!({"format": 1, "credentials": {"ECHO_KEY": {"value": VALUE, "placeholder": PLACEHOLDER}}}),
    );
    (Bottle::start_in(pki, opts).await, port, heads)
}

/// One request written byte for byte by the agent through a CONNECT tunnel
/// and TLS; everything the agent reads back, undecoded.
async fn agent_raw(b: &Bottle, host: &str, port: u16, path: &str, extra: &str) -> String {
    let tcp = tunnel(b.addr, &format!("{host}:{port}")).await;
    let mut tls = tls_over(&b.pki.agent_tls(), tcp, host).await;
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: {host}:{port}\r\nx-api-key: {PLACEHOLDER}\r\n{extra}connection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// The request heads the origin received for `path`.
fn heads_for(heads: &Mutex<Vec<String>>, path: &str) -> Vec<String> {
    let start = format!("GET {path} ");
    heads
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.starts_with(&start))
        .cloned()
        .collect()
}

fn has_header(head: &str, name: &str) -> bool {
    head.lines().any(|l| {
        l.split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case(name))
    })
}

#[tokio::test]
async fn the_upstreams_reason_phrase_never_reaches_the_agent() {
    let (b, port, heads) = echo_bottle().await;

    // `HTTP/1.1 401 invalid key <value>`: the agent gets the standard phrase.
    let resp = agent_raw(&b, "echo.test", port, "/reason", "").await;
    assert!(
        resp.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
        "{resp:?}"
    );
    assert!(!resp.contains(VALUE), "{resp:?}");

    // The same on the WebSocket path's 101.
    let resp = agent_raw(
        &b,
        "echo.test",
        port,
        "/ws-reason",
        "upgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n",
    )
    .await;
    assert!(
        resp.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{resp:?}"
    );
    assert!(!resp.contains(VALUE), "{resp:?}");

    // The origin did get the value both times: the phrase really carried it.
    for path in ["/reason", "/ws-reason"] {
        let got = heads_for(&heads, path);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains(&format!("x-api-key: {VALUE}")));
    }
    assert!(b.log.raw().iter().all(|l| !l.contains(VALUE)));
}

#[tokio::test]
async fn hop_by_hop_headers_cannot_smuggle_an_encoded_body() {
    let (b, port, heads) = echo_bottle().await;

    // `Connection: content-encoding` would have the stripping remove the
    // header the encoded-answer check reads.
    let (status, headers, body) = agent_get(&b, "echo.test", port, "/conn-ce", &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("credential-hidden-header"), "{text}");
    assert!(text.contains("content-encoding"), "{text}");
    assert!(headers.get("content-encoding").is_none());
    let line = b.decision_with_rule("credential-hidden-header").await;
    assert_eq!(line["status"], 502);
    assert_eq!(line["decision"], "deny");

    // `Transfer-Encoding: gzip, chunked`: refused with or without a
    // credential.
    for host in ["echo.test", "plain.test"] {
        let (status, _, body) = agent_get(&b, host, port, "/te-gzip", &[]).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{host}");
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("unsupported-transfer-coding"),
            "{host}: {text}"
        );
        assert!(text.contains("gzip"), "{host}: {text}");
    }
    let lines: Vec<Value> = b
        .log
        .decisions()
        .into_iter()
        .filter(|v| v["rule"] == "unsupported-transfer-coding")
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| l["status"] == 502));

    assert_eq!(heads_for(&heads, "/conn-ce").len(), 1);
    assert_eq!(heads_for(&heads, "/te-gzip").len(), 2);
    assert!(b.log.raw().iter().all(|l| !l.contains(VALUE)));
}

#[tokio::test]
async fn byte_ranges_never_split_an_injected_value() {
    let (b, port, heads) = echo_bottle().await;
    let redacted = "BOTTLE-REDACTED************";
    let range = [("range", "bytes=16-23"), ("if-range", "\"v1\"")];

    // Asked in pieces, the answer comes whole (and redacted): the origin
    // never saw the Range.
    let (status, _, body) = agent_get(&b, "echo.test", port, "/body", &range).await;
    assert_eq!(status, 200);
    assert_eq!(body, format!("{{\"x-api-key\": \"{redacted}\"}}"));
    let got = heads_for(&heads, "/body");
    assert_eq!(got.len(), 1);
    assert!(!has_header(&got[0], "range"), "{}", got[0]);
    assert!(!has_header(&got[0], "if-range"), "{}", got[0]);

    // An origin that answers with a part anyway is refused.
    let (status, headers, body) = agent_get(&b, "echo.test", port, "/range", &range).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("credential-partial-response"), "{text}");
    assert!(headers.get("content-range").is_none());
    let got = heads_for(&heads, "/range");
    assert!(!has_header(&got[0], "range"), "{}", got[0]);
    let line = b.decision_with_rule("credential-partial-response").await;
    assert_eq!(line["status"], 502);

    // Without a credential, ranges are the origin's business.
    let (status, headers, body) = agent_get(&b, "plain.test", port, "/range", &range).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert!(headers.get("content-range").is_some());
    assert_eq!(body.len(), 8);
    let got = heads_for(&heads, "/range");
    assert_eq!(got.len(), 2);
    assert!(has_header(&got[1], "range"), "{}", got[1]);
}

#[tokio::test]
async fn the_method_query_parameter_is_refused_where_rules_restrict_methods() {
    let origin = http_origin().await;
    let port = origin.port();
    let mut opts = Options::new(json!({
        "allow": [
            format!("api.test:{port}"),
            format!("open.test:{port}"),
            format!("127.0.0.1:{port}"),
        ],
        "rules": [{"host": "api.test", "methods": ["GET", "POST"], "paths": ["/repos/acme/"]}],
    }));
    opts.hosts = vec![
        ("api.test", vec![ip("127.0.0.1")]),
        ("open.test", vec![ip("127.0.0.1")]),
    ];
    let b = Bottle::start(opts).await;
    let post = |host: &str, target: &str| {
        format!(
            "POST http://{host}:{port}{target} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    // Rails, Laravel and Symfony would run these as DELETE.
    for target in [
        "/repos/acme/issues?_method=DELETE",
        "/repos/acme/issues?page=2&_METHOD=delete",
        "/repos/acme/issues?%5Fmethod=DELETE",
        "/repos/acme/issues?.method=DELETE",
    ] {
        let resp = raw_request(b.addr, &post("api.test", target)).await;
        assert_eq!(resp.status, 403, "{target}: {resp:?}");
        assert!(resp.body.contains("method-override"), "{}", resp.body);
        assert!(
            resp.body.contains("the query parameter `_method`"),
            "{}",
            resp.body
        );
    }
    assert!(origin.seen().is_empty(), "{:?}", origin.seen());
    let line = b.decision_with_rule("method-override").await;
    assert_eq!(line["status"], 403);
    assert_eq!(line["path"], "/repos/acme/issues");

    // Another parameter, or a host without method rules: forwarded as sent.
    let resp = raw_request(b.addr, &post("api.test", "/repos/acme/issues?method=x")).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let resp = raw_request(b.addr, &post("open.test", "/x?_method=DELETE")).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = origin.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].target, "/x?_method=DELETE");
}
