//! The transparent :443 and :80 listeners, for clients that ignore proxy
//! variables: curl without `-x`, sent to the sidecar's listeners with
//! `--connect-to` (what the sidecar's DNS answer does in a bottle). The test
//! bottle forwards them to the origins' ports instead of 443/80.

mod common;

use common::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn https_by_sni_is_intercepted_like_a_connect() {
    let Some(_) = curl() else { return };
    let pki = Pki::new();
    let origin = tls_origin(pki.origin_tls(&["origin.test", "other.test"])).await;
    let port = origin.port();
    let mut opts = Options::new(json!({
        "allow": [format!("origin.test:{port}"), format!("other.test:{port}"), format!("127.0.0.1:{port}")],
        "rules": [{"host": "origin.test", "methods": ["GET"]}],
    }));
    opts.hosts = vec![
        ("origin.test", vec![ip("127.0.0.1")]),
        ("other.test", vec![ip("127.0.0.1")]),
        ("meta.test", vec![ip("169.254.169.254")]),
    ];
    opts.transparent_https_port = port;
    let bottle = Bottle::start_in(pki, opts).await;
    let https = bottle.addrs.https.unwrap();
    let ca = bottle.pki.bottle_ca.to_str().unwrap().to_string();
    let via = |name: &str| format!("{name}:443:127.0.0.1:{}", https.port());

    let out = run_curl(&[
        "--cacert",
        &ca,
        "--connect-to",
        &via("origin.test"),
        "https://origin.test/t",
    ])
    .await;
    assert_eq!(stdout(&out), ORIGIN_BODY, "{out:?}");
    assert_eq!(origin.seen()[0].target, "/t");

    // Per-request rules apply here too.
    let out = run_curl(&[
        "--cacert",
        &ca,
        "--connect-to",
        &via("origin.test"),
        "-X",
        "DELETE",
        "-w",
        "\n%{http_code}",
        "https://origin.test/t",
    ])
    .await;
    assert!(stdout(&out).ends_with("\n403"), "{out:?}");
    assert!(
        stdout(&out).contains("rule: egress.rule origin.test GET *"),
        "{out:?}"
    );

    // Host must equal the SNI.
    let out = run_curl(&[
        "--cacert",
        &ca,
        "--connect-to",
        &via("origin.test"),
        "-H",
        "Host: other.test",
        "-w",
        "\n%{http_code}",
        "https://origin.test/fronted",
    ])
    .await;
    assert!(stdout(&out).contains("rule: host-mismatch"), "{out:?}");

    // A denied name still gets a readable 403 (the bottle CA signs for it).
    let out = run_curl(&[
        "--cacert",
        &ca,
        "--connect-to",
        &via("evil.test"),
        "-w",
        "\n%{http_code}",
        "https://evil.test/",
    ])
    .await;
    let text = stdout(&out);
    assert!(text.ends_with("\n403"), "{text}");
    assert!(
        text.starts_with(&format!(
            "bottle egress: blocked GET https://evil.test:{port}/\nrule: default-deny\n"
        )),
        "{text}"
    );

    // No SNI (an IP literal): nothing to decide on, the connection is closed.
    let out = run_curl(&[
        "--cacert",
        &ca,
        &format!("https://127.0.0.1:{}/", https.port()),
    ])
    .await;
    assert!(!out.status.success(), "{out:?}");
    let line = bottle.decision_with_rule("sni-missing").await;
    assert_eq!(line["decision"], "deny");

    assert_eq!(
        origin.seen().len(),
        1,
        "only the first request went upstream"
    );
}

#[tokio::test]
async fn transparent_https_is_guarded_after_resolution() {
    let pki = Pki::new();
    let mut opts = Options::new(json!({"allow": ["meta.test"]}));
    opts.hosts = vec![("meta.test", vec![ip("169.254.169.254")])];
    let bottle = Bottle::start_in(pki, opts).await;
    let https = bottle.addrs.https.unwrap();
    let stream = tokio::net::TcpStream::connect(https).await.unwrap();
    let tls = tls_over(&bottle.pki.agent_tls(), stream, "meta.test").await;
    let resp = exchange(
        tls,
        "GET / HTTP/1.1\r\nHost: meta.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(
        resp.body.contains("rule: destination-guard"),
        "{}",
        resp.body
    );
    assert!(
        resp.body.contains("a cloud metadata address"),
        "{}",
        resp.body
    );
}

#[tokio::test]
async fn http_by_host_header() {
    let Some(_) = curl() else { return };
    let origin = http_origin().await;
    let port = origin.port();
    let mut opts = Options::new(json!({
        "allow": [format!("plain.test:{port}"), format!("127.0.0.1:{port}"), format!("cred.test:{port}")],
        "credentials": [{"host": "cred.test", "header": "authorization", "from_env": "K"}],
    }));
    opts.hosts = vec![
        ("plain.test", vec![ip("127.0.0.1")]),
        ("cred.test", vec![ip("127.0.0.1")]),
    ];
    opts.secrets = Some(
        json!({"format": 1, "credentials": {"K": {"value": "v-secret-123", "placeholder": "placeholder-K"}}}),
    );
    opts.transparent_http_port = port;
    let bottle = Bottle::start(opts).await;
    let http = bottle.addrs.http.unwrap();
    let via = |name: &str| format!("{name}:80:127.0.0.1:{}", http.port());

    let out = run_curl(&[
        "--connect-to",
        &via("plain.test"),
        "http://plain.test/p?x=1",
    ])
    .await;
    assert_eq!(stdout(&out), ORIGIN_BODY, "{out:?}");
    let seen = origin.seen();
    assert_eq!(seen[0].target, "/p?x=1");
    assert_eq!(
        seen[0].host.as_deref(),
        Some(format!("plain.test:{port}").as_str())
    );

    let out = run_curl(&[
        "--connect-to",
        &via("evil.test"),
        "-w",
        "\n%{http_code}",
        "http://evil.test/",
    ])
    .await;
    let text = stdout(&out);
    assert!(text.ends_with("\n403"), "{text}");
    assert!(text.contains("rule: default-deny"), "{text}");

    // A credential host over plain HTTP is refused here too.
    let out = run_curl(&[
        "--connect-to",
        &via("cred.test"),
        "-w",
        "\n%{http_code}",
        "http://cred.test/",
    ])
    .await;
    assert!(
        stdout(&out).contains("rule: credential-needs-tls"),
        "{out:?}"
    );

    // No Host, or a Host naming another port: refused.
    let resp = raw_request(http, "GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(resp.body.contains("rule: host-missing"), "{}", resp.body);
    let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: plain.test:8080\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let resp = exchange(s, "").await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(resp.body.contains("rule: host-mismatch"), "{}", resp.body);
    assert_eq!(origin.seen().len(), 1);
}

/// DLP on both transparent listeners, for clients that ignore the proxy:
/// the bottle's credential in a body is refused on :443 (by SNI) and on
/// :80 (by Host), and neither origin receives the request.
#[tokio::test]
async fn dlp_applies_on_the_transparent_listeners() {
    let Some(_) = curl() else { return };
    let pki = Pki::new();
    let tls = tls_origin(pki.origin_tls(&["origin.test"])).await;
    let plain = http_origin().await;
    let mut opts = Options::new(json!({
        "allow": [
            format!("origin.test:{}", tls.port()),
            format!("127.0.0.1:{}", tls.port()),
            format!("plain.test:{}", plain.port()),
            format!("127.0.0.1:{}", plain.port()),
        ],
    }));
    opts.hosts = vec![
        ("origin.test", vec![ip("127.0.0.1")]),
        ("plain.test", vec![ip("127.0.0.1")]),
    ];
    opts.secrets = Some(json!({"format": 1, "credentials": {},
        "dlp_values": {"DB_PASSWORD": "transparent-listed-secret-77"}}));
    opts.transparent_https_port = tls.port();
    opts.transparent_http_port = plain.port();
    let bottle = Bottle::start_in(pki, opts).await;
    let ca = bottle.pki.bottle_ca.to_str().unwrap().to_string();
    let https = bottle.addrs.https.unwrap().port();
    let http = bottle.addrs.http.unwrap().port();
    for (url, via) in [
        (
            "https://origin.test/post".to_string(),
            format!("origin.test:443:127.0.0.1:{https}"),
        ),
        (
            "http://plain.test/post".to_string(),
            format!("plain.test:80:127.0.0.1:{http}"),
        ),
    ] {
        let out = run_curl(&[
            "--cacert",
            &ca,
            "--connect-to",
            &via,
            "--data",
            "dsn=postgres://u:transparent-listed-secret-77@db",
            "-w",
            "\n%{http_code}",
            &url,
        ])
        .await;
        let text = stdout(&out);
        assert!(text.ends_with("\n403"), "{url}: {text}");
        assert!(text.contains("rule: dlp:listed-value"), "{url}: {text}");
        assert!(
            !text.contains("transparent-listed-secret-77"),
            "{url}: {text}"
        );
    }
    assert!(tls.seen().is_empty() && plain.seen().is_empty());
}
