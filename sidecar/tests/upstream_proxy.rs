//! `egress.upstream_proxy` against a real (tiny) CONNECT proxy: the sidecar
//! asks it for a tunnel to the allowed *name*, with `Proxy-Authorization`
//! when a credential is configured; a proxy refusal reaches the agent as a
//! 502 naming the proxy's answer; a denied destination never reaches the
//! proxy.
//!
//! The fixed test resolver maps the origins' names to 93.184.216.34, a
//! public address nothing here listens on: the only way a request can
//! succeed is through the proxy, which connects every tunnel to 127.0.0.1 at
//! the requested port. The proxy itself listens on 127.0.0.1, which the
//! proxy guard accepts only as the sidecar's gateway (a proxy on the host),
//! so the test's `LocalNet` names 127.0.0.1 as the gateway.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// The test's upstream proxy: every request head it received, in order.
struct UpProxy {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl UpProxy {
    /// Starts a proxy that answers `refuse` (a whole status line) to every
    /// CONNECT, or, when `None`, tunnels it to 127.0.0.1 at the asked port.
    async fn start(refuse: Option<&'static str>) -> UpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let head = read_head(&mut client).await;
                    record.lock().unwrap().push(head.clone());
                    if let Some(status) = refuse {
                        let answer = format!("{status}\r\nContent-Length: 0\r\n\r\n");
                        let _ = client.write_all(answer.as_bytes()).await;
                        return;
                    }
                    let Some(port) = head
                        .strip_prefix("CONNECT ")
                        .and_then(|r| r.split(' ').next())
                        .and_then(|t| t.rsplit_once(':'))
                        .and_then(|(_, p)| p.parse::<u16>().ok())
                    else {
                        let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                        return;
                    };
                    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", port)).await else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    let _ = client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        UpProxy { addr, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

const SECRET: &str = "corp-user:s3cret-proxy-pw";

/// A bottle allowing `allow`, tunnelling through `proxy`, with the proxy
/// credential when `auth`.
async fn bottle(pki: Pki, allow: Vec<String>, proxy: &UpProxy, auth: bool) -> Bottle {
    let mut upstream = json!({"url": format!("http://proxy.test:{}", proxy.addr.port())});
    if auth {
        upstream["auth_from_env"] = json!("CORP_PROXY_AUTH");
    }
    let mut opts = Options::new(json!({"allow": allow, "upstream_proxy": upstream}));
    if auth {
        opts.secrets = Some(json!({"format": 1, "credentials": {"CORP_PROXY_AUTH": {
            "value": SECRET,
            "placeholder": "bottle-placeholder-corp-proxy-auth-0123456789abcdef",
        }}}));
    }
    opts.hosts = vec![
        ("origin.test", vec![ip("93.184.216.34")]),
        ("proxy.test", vec![ip("127.0.0.1")]),
        ("inside.test", vec![ip("10.0.0.9")]),
    ];
    opts.local.gateways.push(ip("127.0.0.1"));
    Bottle::start_in(pki, opts).await
}

fn all_log_text(b: &Bottle) -> String {
    b.log.raw().join("\n")
}

#[tokio::test]
async fn plain_http_goes_through_connect_with_the_credential() {
    let origin = http_origin().await;
    let proxy = UpProxy::start(None).await;
    let port = origin.port();
    let b = bottle(
        Pki::new(),
        vec![format!("origin.test:{port}")],
        &proxy,
        true,
    )
    .await;

    let resp = raw_request(
        b.addr,
        &format!("GET http://origin.test:{port}/hello HTTP/1.1\r\nHost: origin.test:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, ORIGIN_BODY);

    let heads = proxy.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let basic = base64::engine::general_purpose::STANDARD.encode(SECRET);
    assert_eq!(
        heads[0],
        format!(
            "CONNECT origin.test:{port} HTTP/1.1\r\nHost: origin.test:{port}\r\nProxy-Authorization: Basic {basic}\r\n\r\n"
        )
    );
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/hello");
    assert!(
        !seen[0].header_names.iter().any(|n| n.starts_with("proxy-")),
        "the proxy credential must stay on the CONNECT: {:?}",
        seen[0].header_names
    );
    let line = b.decisions_for("GET", 1).await;
    assert_eq!(line[0]["status"], 200);
    let text = all_log_text(&b);
    assert!(!text.contains("s3cret") && !text.contains(&basic), "{text}");
}

#[tokio::test]
async fn tls_tunnels_are_intercepted_then_sent_through_the_proxy() {
    let pki = Pki::new();
    let origin = tls_origin(pki.origin_tls(&["origin.test"])).await;
    let proxy = UpProxy::start(None).await;
    let port = origin.port();
    let b = bottle(pki, vec![format!("origin.test:{port}")], &proxy, false).await;

    let target = format!("origin.test:{port}");
    let stream = tunnel(b.addr, &target).await;
    let tls = tls_over(&b.pki.agent_tls(), stream, "origin.test").await;
    let resp = exchange(
        tls,
        &format!("GET /secure HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, ORIGIN_BODY);
    let heads = proxy.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert_eq!(
        heads[0],
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"),
        "no credential configured, none sent"
    );
    assert_eq!(origin.seen()[0].target, "/secure");
}

#[tokio::test]
async fn a_proxy_refusal_is_a_502_naming_its_answer() {
    let proxy = UpProxy::start(Some("HTTP/1.1 407 Proxy Authentication Required")).await;
    let b = bottle(Pki::new(), vec!["origin.test:8080".into()], &proxy, true).await;

    let resp = raw_request(
        b.addr,
        "GET http://origin.test:8080/x HTTP/1.1\r\nHost: origin.test:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert!(
        resp.body.contains(&format!(
            "the upstream proxy http://proxy.test:{} refused CONNECT origin.test:8080: it answered `407 Proxy Authentication Required`",
            proxy.addr.port()
        )),
        "{}",
        resp.body
    );
    assert!(
        resp.body.contains("egress.upstream_proxy_auth_env"),
        "{}",
        resp.body
    );
    let line: Value = b.decisions_for("GET", 1).await.remove(0);
    assert_eq!(line["status"], 502);
    assert!(
        line["error"].as_str().unwrap().contains("407"),
        "the log line names the proxy's answer: {line}"
    );
    assert_eq!(proxy.heads().len(), 1);
    assert!(!all_log_text(&b).contains("s3cret"));
}

#[tokio::test]
async fn denied_and_guarded_destinations_never_reach_the_proxy() {
    let proxy = UpProxy::start(None).await;
    let b = bottle(
        Pki::new(),
        vec!["origin.test:8080".into(), "inside.test:8080".into()],
        &proxy,
        true,
    )
    .await;

    let resp = raw_request(
        b.addr,
        "GET http://evil.test:8080/x HTTP/1.1\r\nHost: evil.test:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(resp.body.contains("rule: default-deny"), "{}", resp.body);

    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(b"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 403"));

    // Allowed by name, but it resolves (for the sidecar) to a private address
    // not in allow_private: the guard refuses it before any proxy is asked.
    let resp = raw_request(
        b.addr,
        "GET http://inside.test:8080/x HTTP/1.1\r\nHost: inside.test:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(
        resp.body.contains("rule: destination-guard"),
        "{}",
        resp.body
    );

    assert!(proxy.heads().is_empty(), "{:?}", proxy.heads());
}

#[tokio::test]
async fn a_proxy_on_loopback_is_refused() {
    let proxy = UpProxy::start(None).await;
    let mut opts = Options::new(json!({
        "allow": ["origin.test:8080"],
        "upstream_proxy": {"url": format!("http://127.0.0.1:{}", proxy.addr.port())},
    }));
    opts.hosts = vec![("origin.test", vec![ip("93.184.216.34")])];
    let b = Bottle::start(opts).await;
    let resp = raw_request(
        b.addr,
        "GET http://origin.test:8080/x HTTP/1.1\r\nHost: origin.test:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert!(
        resp.body
            .contains("a loopback address; the sidecar never connects there"),
        "{}",
        resp.body
    );
    assert!(proxy.heads().is_empty());
}
