//! TLS interception through the explicit proxy, with real clients: curl
//! (`-x`, `--cacert` for the bottle CA) and a rustls client for what curl
//! will not send (a Host or SNI that differs from the CONNECT). Origins are
//! rustls servers on 127.0.0.1 whose test CA the sidecar is given as
//! `upstream-roots.pem`; the fixed test resolver maps `origin.test` and
//! `other.test` to 127.0.0.1, which the policy allows by exact address (the
//! destination guard's one exception).

mod common;

use common::*;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// One TLS origin answering to `origin.test`, `other.test` and `127.0.0.1`,
/// and a bottle whose policy is `egress(port)`.
async fn setup(egress: impl FnOnce(u16) -> Value, secrets: Option<Value>) -> (Bottle, Origin) {
    let pki = Pki::new();
    let origin = tls_origin(pki.origin_tls(&["origin.test", "other.test", "127.0.0.1"])).await;
    let mut opts = Options::new(egress(origin.port()));
    opts.hosts = vec![
        ("origin.test", vec![ip("127.0.0.1")]),
        ("other.test", vec![ip("127.0.0.1")]),
    ];
    opts.secrets = secrets;
    (Bottle::start_in(pki, opts).await, origin)
}

fn allow_both(port: u16) -> Value {
    json!({"allow": [
        format!("origin.test:{port}"),
        format!("other.test:{port}"),
        format!("127.0.0.1:{port}"),
    ]})
}

#[tokio::test]
async fn https_is_intercepted_with_the_bottle_ca_and_forwarded_verified() {
    let Some(_) = curl() else { return };
    let (bottle, origin) = setup(allow_both, None).await;
    let port = origin.port();

    let out = curl_https(
        &bottle,
        &["-w", "\n%{http_code} %{ssl_verify_result}"],
        &format!("https://origin.test:{port}/hello?token=query-secret"),
    )
    .await;
    assert_eq!(stdout(&out), format!("{ORIGIN_BODY}\n200 0"), "{out:?}");
    // An IP literal: no SNI, a leaf for the address.
    let out = curl_https(&bottle, &[], &format!("https://127.0.0.1:{port}/by-ip")).await;
    assert_eq!(stdout(&out), ORIGIN_BODY, "{out:?}");
    // Without the bottle CA the client refuses the minted leaf.
    let out = run_curl(&[
        "-x",
        &bottle.proxy_url(),
        &format!("https://origin.test:{port}/"),
    ])
    .await;
    assert_eq!(out.status.code(), Some(60), "{out:?}");

    let seen = origin.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].target, "/hello?token=query-secret");
    assert_eq!(
        seen[0].host.as_deref(),
        Some(format!("origin.test:{port}").as_str())
    );
    assert_eq!(
        seen[1].host.as_deref(),
        Some(format!("127.0.0.1:{port}").as_str())
    );

    let get = bottle.decisions_for("GET", 2).await;
    let hello = get.iter().find(|l| l["path"] == "/hello").unwrap();
    assert_eq!(hello["decision"], "allow");
    assert_eq!(hello["host"], "origin.test");
    assert_eq!(hello["port"], port);
    assert_eq!(hello["status"], 200);
    assert_eq!(hello["rule"], format!("origin.test:{port}"));
    assert_eq!(hello["bytes_down"], ORIGIN_BODY.len());
    let connect = bottle.decisions_for("CONNECT", 2).await;
    assert!(connect.iter().all(|l| l["decision"] == "allow"));
    for line in bottle.log.raw() {
        assert!(!line.contains("query-secret"), "{line}");
    }
}

#[tokio::test]
async fn denied_host_and_allowed_host_on_a_wrong_port() {
    let Some(_) = curl() else { return };
    let (bottle, origin) = setup(allow_both, None).await;
    let out = curl_https(
        &bottle,
        &["-w", "connect=%{http_connect}"],
        "https://evil.test/",
    )
    .await;
    assert_eq!(stdout(&out), "connect=403", "{out:?}");
    let other = closed_port();
    let resp = raw_request(
        bottle.addr,
        &format!("CONNECT origin.test:{other} HTTP/1.1\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 403);
    assert!(
        resp.body.contains(&format!(
            "why: origin.test is allowed only on port {} (egress.allow entry `origin.test:{}`), not {other}",
            origin.port(),
            origin.port()
        )),
        "{}",
        resp.body
    );
    assert!(origin.seen().is_empty());
}

#[tokio::test]
async fn method_and_path_rules_narrow_a_host() {
    let Some(_) = curl() else { return };
    let (bottle, origin) = setup(
        |port| {
            let mut egress = allow_both(port);
            egress["rules"] = json!([
                {"host": "origin.test", "methods": ["GET"], "paths": ["/repos/acme/"]}
            ]);
            egress
        },
        None,
    )
    .await;
    let port = origin.port();
    let base = format!("https://origin.test:{port}");
    let status = ["-w", "\n%{http_code}"];

    let out = curl_https(&bottle, &status, &format!("{base}/repos/acme/app")).await;
    assert_eq!(stdout(&out), format!("{ORIGIN_BODY}\n200"));

    let out = curl_https(
        &bottle,
        &["-X", "POST", "-w", "\n%{http_code}"],
        &format!("{base}/repos/acme/app"),
    )
    .await;
    let text = stdout(&out);
    assert!(text.ends_with("\n403"), "{text}");
    assert!(
        text.contains(&format!(
            "bottle egress: blocked POST https://origin.test:{port}/repos/acme/app\n\
             rule: egress.rule origin.test GET /repos/acme/\n\
             why: POST /repos/acme/app on origin.test matches none of the egress.rule entries for origin.test\n\
             to get access: ask the user to widen the [[egress.rule]] entries for origin.test in bottle.toml\n"
        )),
        "{text}"
    );

    let out = curl_https(&bottle, &status, &format!("{base}/repos/other/x")).await;
    assert!(stdout(&out).ends_with("\n403"), "{out:?}");

    // Traversal tricks: sent verbatim, refused before any upstream sees them.
    for path in [
        "/repos/acme/../evil",
        "/repos/acme/%2e%2e/evil",
        "/repos/acme/%2E%2e/evil",
        "/repos/acme/..%2fevil",
        "/repos/acme//../evil",
        "/repos/acme/..;/evil",
    ] {
        let out = curl_https(
            &bottle,
            &["--path-as-is", "-w", "\n%{http_code}"],
            &format!("{base}{path}"),
        )
        .await;
        let text = stdout(&out);
        assert!(text.ends_with("\n403"), "{path}: {text}");
        assert!(text.contains("rule: path-not-canonical"), "{path}: {text}");
    }
    // Another host without rules is not narrowed.
    let out = curl_https(
        &bottle,
        &["-X", "POST", "-w", "\n%{http_code}"],
        &format!("https://other.test:{port}/anything"),
    )
    .await;
    assert_eq!(stdout(&out), format!("{ORIGIN_BODY}\n200"));

    let targets: Vec<String> = origin.seen().iter().map(|s| s.target.clone()).collect();
    assert_eq!(targets, ["/repos/acme/app", "/anything"]);
    let refused = bottle.decision_with_rule("path-not-canonical").await;
    assert_eq!(refused["status"], 403);
}

#[tokio::test]
async fn host_header_must_name_the_connect_host() {
    let (bottle, origin) = setup(allow_both, None).await;
    let port = origin.port();
    let target = format!("origin.test:{port}");
    let stream = tunnel(bottle.addr, &target).await;
    let tls = tls_over(&bottle.pki.agent_tls(), stream, "origin.test").await;
    // Both names are allowed: fronting through an allowed tunnel is still refused.
    let resp = exchange(
        tls,
        &format!("GET /fronted HTTP/1.1\r\nHost: other.test:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(resp.body.contains("rule: host-mismatch"), "{}", resp.body);
    assert!(origin.seen().is_empty());

    // A request without Host is refused too.
    let stream = tunnel(bottle.addr, &target).await;
    let tls = tls_over(&bottle.pki.agent_tls(), stream, "origin.test").await;
    let resp = exchange(tls, "GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(resp.body.contains("no Host header"), "{}", resp.body);
    assert!(origin.seen().is_empty());
}

#[tokio::test]
async fn sni_must_name_the_connect_host() {
    let (bottle, origin) = setup(allow_both, None).await;
    let port = origin.port();
    let stream = tunnel(bottle.addr, &format!("origin.test:{port}")).await;
    // The handshake completes (the bottle CA signs for the SNI) so the
    // client can read why it is refused; nothing goes upstream.
    let tls = tls_over(&bottle.pki.agent_tls(), stream, "other.test").await;
    let resp = exchange(
        tls,
        &format!("GET / HTTP/1.1\r\nHost: other.test:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(
        resp.body,
        format!(
            "bottle egress: blocked GET https://other.test:{port}/\n\
             rule: sni-mismatch\n\
             why: the TLS server name (SNI) differs from origin.test:{port}, the destination this tunnel was allowed for\n\
             to get access: send the same host name in CONNECT, TLS SNI and Host; each tunnel reaches only the host it was opened for\n"
        )
    );
    assert!(origin.seen().is_empty());
    let line = bottle.decision_with_rule("sni-mismatch").await;
    assert_eq!(line["decision"], "deny");
}

#[tokio::test]
async fn upstream_certificates_are_verified() {
    let Some(_) = curl() else { return };
    let rogue = tls_origin(Pki::rogue_tls(&["origin.test"])).await;
    let port = rogue.port();
    let mut opts = Options::new(
        json!({"allow": [format!("origin.test:{port}"), format!("127.0.0.1:{port}")]}),
    );
    opts.hosts = vec![("origin.test", vec![ip("127.0.0.1")])];
    let bottle = Bottle::start(opts).await;
    let out = curl_https(
        &bottle,
        &["-w", "\n%{http_code}"],
        &format!("https://origin.test:{port}/"),
    )
    .await;
    let text = stdout(&out);
    assert!(text.ends_with("\n502"), "{text}");
    assert!(text.contains("could not be reached"), "{text}");
    assert!(text.contains("invalid peer certificate"), "{text}");
    assert!(rogue.seen().is_empty());
}

const VALUE: &str = "real-secret-value-7f3a91";
const PLACEHOLDER: &str = "bottle-placeholder-TEST_KEY";

#[tokio::test]
async fn credentials_are_injected_and_placeholders_never_leave() {
    let Some(_) = curl() else { return };
    let plain = http_origin().await;
    let plain_port = plain.port();
    let (bottle, origin) = {
        let pki = Pki::new();
        let origin = tls_origin(pki.origin_tls(&["origin.test", "other.test"])).await;
        let port = origin.port();
        let mut opts = Options::new(json!({
            "allow": [
                format!("origin.test:{port}"),
                format!("other.test:{port}"),
                format!("127.0.0.1:{port}"),
                format!("plain.test:{plain_port}"),
                format!("127.0.0.1:{plain_port}"),
            ],
            "credentials": [
                {"host": "origin.test", "header": "x-api-key", "from_env": "TEST_KEY"},
                {"host": "plain.test", "header": "authorization", "from_env": "TEST_KEY"},
            ],
        }));
        opts.hosts = vec![
            ("origin.test", vec![ip("127.0.0.1")]),
            ("other.test", vec![ip("127.0.0.1")]),
            ("plain.test", vec![ip("127.0.0.1")]),
        ];
        opts.secrets = Some(
            json!({"format": 1, "credentials": {"TEST_KEY": {"value": VALUE, "placeholder": PLACEHOLDER}}}),
        );
        (Bottle::start_in(pki, opts).await, origin)
    };
    let port = origin.port();

    // The agent sends the placeholder (or nothing): the origin gets the value.
    let out = curl_https(
        &bottle,
        &["-H", &format!("x-api-key: {PLACEHOLDER}")],
        &format!("https://origin.test:{port}/v1/messages"),
    )
    .await;
    assert_eq!(stdout(&out), ORIGIN_BODY, "{out:?}");
    let out = curl_https(&bottle, &[], &format!("https://origin.test:{port}/v1/none")).await;
    assert_eq!(stdout(&out), ORIGIN_BODY, "{out:?}");
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.header("x-api-key"), [VALUE], "{s:?}");
    }

    // The placeholder sent to another (allowed) host: refused, not replaced.
    for header in [
        format!("authorization: Bearer {PLACEHOLDER}"),
        format!("x-api-key: {PLACEHOLDER}"),
    ] {
        let out = curl_https(
            &bottle,
            &["-H", &header, "-w", "\n%{http_code}"],
            &format!("https://other.test:{port}/steal"),
        )
        .await;
        let text = stdout(&out);
        assert!(text.ends_with("\n403"), "{text}");
        assert!(text.contains("rule: placeholder-leak"), "{text}");
        assert!(
            !text.contains(PLACEHOLDER) && !text.contains(VALUE),
            "{text}"
        );
    }
    let out = curl_https(
        &bottle,
        &["-w", "\n%{http_code}"],
        &format!("https://other.test:{port}/steal?k={PLACEHOLDER}"),
    )
    .await;
    assert!(stdout(&out).contains("rule: placeholder-leak"), "{out:?}");
    assert_eq!(origin.seen().len(), 2, "other.test never saw a request");

    // A credential host over plain HTTP: refused, the value never goes in clear.
    let out = run_curl(&[
        "-x",
        &bottle.proxy_url(),
        "-w",
        "\n%{http_code}",
        &format!("http://plain.test:{plain_port}/"),
    ])
    .await;
    let text = stdout(&out);
    assert!(text.contains("rule: credential-needs-tls"), "{text}");
    assert!(plain.seen().is_empty());

    // Neither the value nor the placeholder is ever logged.
    bottle.decision_with_rule("credential-needs-tls").await;
    for line in bottle.log.raw() {
        assert!(!line.contains(VALUE), "{line}");
        assert!(!line.contains(PLACEHOLDER), "{line}");
    }
}

#[tokio::test]
async fn websocket_upgrades_are_forwarded_only_after_the_checks() {
    let (bottle, origin) = setup(
        |port| {
            let mut egress = allow_both(port);
            egress["rules"] = json!([{"host": "origin.test", "paths": ["/ws"]}]);
            egress
        },
        None,
    )
    .await;
    let port = origin.port();
    let connector = bottle.pki.agent_tls();
    let upgrade = |path: &str, proto: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: origin.test:{port}\r\nUpgrade: {proto}\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    };

    let stream = tunnel(bottle.addr, &format!("origin.test:{port}")).await;
    let mut tls = tls_over(&connector, stream, "origin.test").await;
    tls.write_all(upgrade("/ws", "websocket").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    tls.write_all(b"frame through the upgrade").await.unwrap();
    let mut echo = [0u8; 25];
    tokio::time::timeout(
        PATIENCE,
        tokio::io::AsyncReadExt::read_exact(&mut tls, &mut echo),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(&echo, b"frame through the upgrade");

    // A path the rule does not cover, and a non-WebSocket upgrade.
    for (path, proto, rule) in [
        ("/socket", "websocket", "egress.rule origin.test * /ws"),
        ("/ws", "h2c", "upgrade-not-allowed"),
    ] {
        let stream = tunnel(bottle.addr, &format!("origin.test:{port}")).await;
        let tls = tls_over(&connector, stream, "origin.test").await;
        let resp = exchange(
            tls,
            &upgrade(path, proto).replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(resp.status, 403, "{path} {proto}: {resp:?}");
        assert!(
            resp.body.contains(&format!("rule: {rule}")),
            "{}",
            resp.body
        );
    }
    assert_eq!(origin.seen().len(), 1);
    // The upgraded exchange is logged when it ends.
    drop(tls);
    let line = eventually("the websocket line", || {
        bottle
            .log
            .decisions()
            .into_iter()
            .find(|v| v["status"] == 101)
    })
    .await;
    assert_eq!(line["path"], "/ws");
    assert_eq!(line["bytes_up"], 25);
}

#[tokio::test]
async fn reload_changes_decisions_without_dropping_open_tunnels() {
    let (bottle, origin) = setup(
        |port| json!({"allow": [format!("origin.test:{port}"), format!("127.0.0.1:{port}")]}),
        None,
    )
    .await;
    let port = origin.port();
    let request = format!("GET /kept HTTP/1.1\r\nHost: origin.test:{port}\r\n\r\n");
    let stream = tunnel(bottle.addr, &format!("origin.test:{port}")).await;
    let mut open = tls_over(&bottle.pki.agent_tls(), stream, "origin.test").await;
    open.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut open).await.status, 200);

    let connect_other = format!("CONNECT other.test:{port} HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(raw_request(bottle.addr, &connect_other).await.status, 403);

    // Allow other.test too: new tunnels see it, the open one keeps working.
    bottle.write_policy(&json!({"allow": [
        format!("origin.test:{port}"),
        format!("other.test:{port}"),
        format!("127.0.0.1:{port}"),
    ]}));
    let mut allowed = false;
    for _ in 0..1500 {
        let mut s = tokio::net::TcpStream::connect(bottle.addr).await.unwrap();
        s.write_all(format!("CONNECT other.test:{port} HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        if read_head(&mut s).await.starts_with("HTTP/1.1 200") {
            allowed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(allowed, "the reloaded policy never allowed other.test");
    let reloaded = bottle.log.events("policy-reloaded");
    assert_eq!(reloaded[0]["what"], "policy");
    open.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut open).await.status, 200);

    // A broken file keeps the policy in force and says why.
    std::fs::write(bottle.policy_path(), "{\"format\":1,").unwrap();
    let failed = eventually("policy-reload-failed", || {
        bottle.log.events("policy-reload-failed").into_iter().next()
    })
    .await;
    assert!(failed["error"].as_str().unwrap().contains("not valid JSON"));
    open.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut open).await.status, 200);

    // Removing the host stops the next request even on the open tunnel.
    bottle.write_policy(&json!({"allow": [format!("127.0.0.1:{port}")]}));
    let mut refused = None;
    for _ in 0..1500 {
        open.write_all(request.as_bytes()).await.unwrap();
        let resp = read_response(&mut open).await;
        if resp.status == 403 {
            refused = Some(resp);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let refused = refused.expect("the removal never applied");
    assert!(
        refused.body.contains("rule: default-deny"),
        "{}",
        refused.body
    );
}
