//! Outbound DLP through the real sidecar: the agent (a TLS client inside a
//! CONNECT tunnel, trusting only the bottle CA) sends secrets to an allowed
//! host; an origin that records every decrypted byte it receives shows
//! what left. A blocked value must never reach it, whole or in part:
//! plain, base64, URL-encoded, split across the chunks of a chunked body
//! with pauses between them, in a JSON body, gzip-compressed. `redact`
//! delivers the body with the value replaced; log-only detectors forward
//! and log without the value.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const VALUE: &str = "sk-dlp-SECRET-value-9c1e42";
const PLACEHOLDER: &str = "bottle-placeholder-DLP_KEY";
const LISTED: &str = "listed-db-password-77aa";

/// Every decrypted byte the origin received, over all connections.
type Wire = Arc<Mutex<Vec<u8>>>;

/// Whether `buf` holds a whole HTTP/1.1 request (Content-Length or
/// chunked).
fn complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let head = text[..end].to_ascii_lowercase();
    let body = &buf[end + 4..];
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    body.len() >= len
}

/// A TLS origin that records every byte it decrypts and answers `200 ok`
/// to each complete request.
async fn recorder(pki: &Pki) -> (u16, Wire) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.origin_tls(&["api.test"]));
    let wire: Wire = Arc::default();
    let record = wire.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                    req.extend_from_slice(&buf[..n]);
                    if complete(&req) {
                        req.clear();
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                }
            });
        }
    });
    (port, wire)
}

async fn bottle(dlp: Option<Value>) -> (Bottle, u16, Wire) {
    let pki = Pki::new();
    let (port, wire) = recorder(&pki).await;
    let mut opts = Options::new(json!({
        "allow": [format!("api.test:{port}"), format!("127.0.0.1:{port}")],
        "credentials": [{"host": "api.test", "header": "x-api-key", "from_env": "DLP_KEY"}],
    }));
    opts.hosts = vec![("api.test", vec![ip("127.0.0.1")])];
    opts.secrets = Some(json!({
        "format": 1,
        "credentials": {"DLP_KEY": {"value": VALUE, "placeholder": PLACEHOLDER}},
        "dlp_values": {"DB_PASSWORD": LISTED},
    }));
    opts.dlp = dlp;
    (Bottle::start_in(pki, opts).await, port, wire)
}

/// Writes `pieces` (with `pause` between them) as one request through a
/// tunnel and TLS; returns the response as text.
async fn send(b: &Bottle, port: u16, pieces: &[Vec<u8>], pause: Duration) -> String {
    let tcp = tunnel(b.addr, &format!("api.test:{port}")).await;
    let mut tls = tls_over(&b.pki.agent_tls(), tcp, "api.test").await;
    for (i, p) in pieces.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        if tls.write_all(p).await.is_err() {
            break;
        }
        let _ = tls.flush().await;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// A POST with a Content-Length body.
fn post(port: u16, ctype: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /v1/issues HTTP/1.1\r\nhost: api.test:{port}\r\nx-api-key: {PLACEHOLDER}\r\ncontent-type: {ctype}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// The head of a chunked POST, and the body as chunks.
fn chunked(port: u16, parts: &[&str]) -> Vec<Vec<u8>> {
    let mut out = vec![format!(
        "POST /v1/issues HTTP/1.1\r\nhost: api.test:{port}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes()];
    for p in parts {
        out.push(format!("{:x}\r\n{p}\r\n", p.len()).into_bytes());
    }
    out.push(b"0\r\n\r\n".to_vec());
    out
}

/// Asserts the origin never received `value` nor its first 8 bytes, but
/// in the header the sidecar injects it into.
fn never_reached(wire: &Wire, value: &str) {
    let got = String::from_utf8_lossy(&wire.lock().unwrap())
        .replace(&format!("x-api-key: {VALUE}\r\n"), "");
    assert!(
        !got.contains(&value[..8]),
        "the origin received (part of) the value:\n{got}"
    );
}

/// The `dlp` audit lines.
fn dlp_lines(b: &Bottle) -> Vec<Value> {
    b.log
        .json()
        .into_iter()
        .filter(|v| v["event"] == "dlp")
        .collect()
}

fn assert_refused(resp: &str, rule: &str, says: &str) {
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains(&format!("rule: {rule}")), "{resp}");
    assert!(resp.contains(says), "{resp}");
    assert!(!resp.contains(VALUE) && !resp.contains(LISTED), "{resp}");
}

#[tokio::test]
async fn the_bottles_own_credential_is_blocked_in_every_form() {
    let (b, port, wire) = bottle(None).await;
    // Plain, in a form body.
    let resp = send(
        &b,
        port,
        &[post(
            port,
            "application/x-www-form-urlencoded",
            "",
            format!("title=x&body={VALUE}").as_bytes(),
        )],
        Duration::ZERO,
    )
    .await;
    assert_refused(
        &resp,
        "dlp:bottle-credential",
        "the value of the bottle's credential DLP_KEY is in the body at byte 13",
    );
    // base64, in JSON.
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("token={VALUE}"));
    let resp = send(
        &b,
        port,
        &[post(
            port,
            "application/json",
            "",
            format!("{{\"body\":\"{b64}\"}}").as_bytes(),
        )],
        Duration::ZERO,
    )
    .await;
    assert_refused(&resp, "dlp:bottle-credential", "(base64) is in the body");
    // URL-encoded, in the query.
    let pct: String = VALUE.bytes().map(|c| format!("%{c:02X}")).collect();
    let req = format!(
        "GET /search?q={pct} HTTP/1.1\r\nhost: api.test:{port}\r\nconnection: close\r\n\r\n"
    );
    let resp = send(&b, port, &[req.into_bytes()], Duration::ZERO).await;
    assert_refused(
        &resp,
        "dlp:bottle-credential",
        "(URL-encoded) is in the request URL",
    );
    // In another header than the one it is injected into.
    let req = format!(
        "GET / HTTP/1.1\r\nhost: api.test:{port}\r\nx-debug: {VALUE}\r\nconnection: close\r\n\r\n"
    );
    let resp = send(&b, port, &[req.into_bytes()], Duration::ZERO).await;
    assert_refused(&resp, "dlp:bottle-credential", "is in header x-debug");
    // Split across the chunks of a chunked body, with pauses between them
    // (the request is already upstream when the value arrives).
    let (a, rest) = VALUE.split_at(9);
    let (m, z) = rest.split_at(7);
    let pieces = chunked(port, &["{\"note\": \"padding ", a, m, z, "\"}"]);
    let resp = send(&b, port, &pieces, Duration::from_millis(40)).await;
    assert_refused(&resp, "dlp:bottle-credential", "DLP_KEY");
    // A listed value, gzip-compressed.
    let body = gzip(format!("{{\"dsn\":\"postgres://u:{LISTED}@db\"}}").as_bytes());
    let resp = send(
        &b,
        port,
        &[post(
            port,
            "application/json",
            "content-encoding: gzip\r\n",
            &body,
        )],
        Duration::ZERO,
    )
    .await;
    assert_refused(
        &resp,
        "dlp:listed-value",
        "the value of DB_PASSWORD (dlp.values_from_env)",
    );
    never_reached(&wire, VALUE);
    never_reached(&wire, LISTED);
    // The injected header itself is the one place the value goes.
    let req = format!(
        "GET /ok HTTP/1.1\r\nhost: api.test:{port}\r\nx-api-key: {PLACEHOLDER}\r\nconnection: close\r\n\r\n"
    );
    let resp = send(&b, port, &[req.into_bytes()], Duration::ZERO).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let got = String::from_utf8_lossy(&wire.lock().unwrap()).into_owned();
    assert!(got.contains(&format!("x-api-key: {VALUE}")), "{got}");
    // Every refusal was logged by detector, never with the value.
    let lines = dlp_lines(&b);
    assert!(lines.len() >= 6, "{lines:?}");
    assert!(lines.iter().all(|l| l["action"] == "blocked"), "{lines:?}");
    let raw = b.log.raw().join("\n");
    assert!(!raw.contains(VALUE) && !raw.contains(LISTED), "{raw}");
}

#[tokio::test]
async fn a_private_key_in_a_json_body_is_blocked() {
    let (b, port, wire) = bottle(None).await;
    let key = [
        "-----BEGIN OPENSSH ",
        "PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH ",
        "PRIVATE KEY-----\n",
    ]
    .concat();
    let body =
        serde_json::to_vec(&json!({"gist": {"files": {"id_ed25519": {"content": key}}}})).unwrap();
    let resp = send(
        &b,
        port,
        &[post(port, "application/json", "", &body)],
        Duration::ZERO,
    )
    .await;
    assert_refused(
        &resp,
        "dlp:private-key",
        "a private-key (JSON-escaped) is in the body at byte",
    );
    let got = String::from_utf8_lossy(&wire.lock().unwrap()).into_owned();
    assert!(!got.contains("b3BlbnNzaC1rZXktdjEAAAAABG5vbmUA"), "{got}");
}

#[tokio::test]
async fn redact_delivers_the_body_with_the_value_replaced() {
    let (b, port, wire) = bottle(Some(json!({"action": {"bottle-credential": "redact"}}))).await;
    let body = format!("{{\"text\":\"key is {VALUE} ok\"}}");
    let resp = send(
        &b,
        port,
        &[post(port, "application/json", "", body.as_bytes())],
        Duration::ZERO,
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let got = String::from_utf8_lossy(&wire.lock().unwrap()).into_owned();
    let marker: String = "BOTTLE-REDACTED"
        .chars()
        .chain(std::iter::repeat('*'))
        .take(VALUE.len())
        .collect();
    assert!(
        got.contains(&format!("{{\"text\":\"key is {marker} ok\"}}")),
        "{got}"
    );
    assert!(
        got.contains(&format!("content-length: {}", body.len())),
        "{got}"
    );
    never_reached(&wire, VALUE);
    let lines = dlp_lines(&b);
    assert_eq!(lines[0]["action"], "redacted", "{lines:?}");
}

#[tokio::test]
async fn log_only_detectors_forward_and_log_without_the_value() {
    let (b, port, wire) = bottle(None).await;
    let token = ["gh", "p_", &"Zx9k".repeat(9)].concat();
    let body = format!("{{\"body\":\"try {token}\"}}");
    let resp = send(
        &b,
        port,
        &[post(port, "application/json", "", body.as_bytes())],
        Duration::ZERO,
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(String::from_utf8_lossy(&wire.lock().unwrap()).contains(&token));
    let lines = dlp_lines(&b);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["detector"], "github-token");
    assert_eq!(lines[0]["action"], "logged");
    assert_eq!(lines[0]["host"], "api.test");
    assert!(!b.log.raw().join("\n").contains(&token));
}

#[tokio::test]
async fn an_unsearchable_body_is_refused() {
    let (b, port, wire) = bottle(None).await;
    let resp = send(
        &b,
        port,
        &[post(
            port,
            "application/octet-stream",
            "content-encoding: zstd\r\n",
            b"(zstd bytes)",
        )],
        Duration::ZERO,
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 415"), "{resp}");
    assert!(resp.contains("rule: dlp-unsearchable-body"), "{resp}");
    assert!(wire.lock().unwrap().is_empty());
}
