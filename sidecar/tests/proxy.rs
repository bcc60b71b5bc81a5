//! The explicit proxy against real sockets: raw CONNECT lines, a hyper
//! client, and the real `curl`. Each test tries an allowed thing and asserts
//! it works, or a forbidden thing and asserts the exact refusal. (TLS
//! interception is in `intercept.rs`.)

mod common;

use bottle_sidecar::log::RateLimit;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn allow(entries: &[String]) -> Vec<String> {
    entries.to_vec()
}

/// The decision lines for a given method, once there are `n` of them.
async fn decisions_for(proxy: &TestProxy, method: &str, n: usize) -> Vec<Value> {
    proxy.decisions_for(method, n).await
}

#[tokio::test]
async fn raw_bytes_inside_an_allowed_tunnel_are_refused_never_piped() {
    let (sink, received) = sink_server().await;
    let target = format!("127.0.0.1:{}", sink.port());
    let proxy = start_proxy(&allow(std::slice::from_ref(&target))).await;

    let mut s = tunnel(proxy.addr, &target).await;
    s.write_all(b"SSH-2.0-OpenSSH_9.2p1\r\nping through the tunnel")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf))
        .await
        .expect("the sidecar must close the tunnel")
        .unwrap();
    let resp = parse_response(&buf);
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(
        resp.body,
        format!(
            "bottle egress: blocked CONNECT {target}\n\
             rule: tunnel-not-http\n\
             why: the bytes sent inside the tunnel to {target} are neither TLS nor HTTP; egress tunnels carry only those\n\
             to get access: speak TLS (https://) or HTTP through the tunnel; other protocols (ssh, raw TCP) are not forwarded\n"
        )
    );
    let refused = proxy.decision_with_rule("tunnel-not-http").await;
    assert_eq!(refused["decision"], "deny");
    assert_eq!(refused["status"], 403);
    let line = eventually("the CONNECT line", || {
        proxy
            .log
            .decisions()
            .into_iter()
            .find(|v| v["method"] == "CONNECT" && v["decision"] == "allow")
    })
    .await;
    assert_eq!(line["status"], 200);
    assert_eq!(line["rule"], target);
    assert!(line["error"]
        .as_str()
        .unwrap()
        .contains("neither TLS nor HTTP"));
    assert!(line["bytes_up"].as_u64().unwrap() > 0);
    assert!(line.get("path").is_none(), "CONNECT has no path: {line}");
    assert!(line["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(line["ts"].as_str().unwrap().ends_with('Z'));
    // Not one byte reached the upstream.
    assert!(received.lock().unwrap().is_empty());
}

#[tokio::test]
async fn plain_http_inside_a_tunnel_is_checked_per_request() {
    let origin = http_origin().await;
    let target = format!("127.0.0.1:{}", origin.port());
    let proxy = start_proxy(&allow(std::slice::from_ref(&target))).await;

    let mut s = tunnel(proxy.addr, &target).await;
    s.write_all(format!("GET /in/tunnel?q=1 HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let resp = read_response(&mut s).await;
    assert_eq!((resp.status, resp.body.as_str()), (200, ORIGIN_BODY));
    // Same tunnel, another Host: refused, and the origin never sees it.
    let resp = exchange(
        s,
        "GET /other HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(resp.body.contains("rule: host-mismatch"), "{}", resp.body);
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/in/tunnel?q=1");
    let get = decisions_for(&proxy, "GET", 2).await;
    assert!(get
        .iter()
        .any(|l| l["decision"] == "allow" && l["path"] == "/in/tunnel" && l["status"] == 200));
}

#[tokio::test]
async fn ipv6_connect_is_decided_on_the_bracketed_literal() {
    let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
        eprintln!("skipping: no IPv6 loopback here");
        return;
    };
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let proxy = start_proxy(&allow(&[format!("[::1]:{port}")])).await;
    // Allowed, but nothing listens: the decision is allow, the answer 502.
    let resp = raw_request(
        proxy.addr,
        &format!("CONNECT [::1]:{port} HTTP/1.1\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 502, "{resp:?}");
    let resp = raw_request(
        proxy.addr,
        "CONNECT [::2]:443 HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(
        resp.body.contains("add \"[::2]\" to egress.allow"),
        "{}",
        resp.body
    );
}

#[tokio::test]
async fn denied_connect_gets_403_naming_the_rule() {
    let proxy = start_proxy(&allow(&["api.example.com".into()])).await;
    let resp = raw_request(
        proxy.addr,
        "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(
        resp.head
            .to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{}",
        resp.head
    );
    assert_eq!(
        resp.body,
        "bottle egress: blocked CONNECT evil.example:443\n\
         rule: default-deny\n\
         why: evil.example:443 is not in egress.allow\n\
         to get access: ask the user to add \"evil.example\" to egress.allow in bottle.toml\n"
    );
    let line = decisions_for(&proxy, "CONNECT", 1).await.remove(0);
    assert_eq!(line["decision"], "deny");
    assert_eq!(line["rule"], "default-deny");
    assert_eq!(line["status"], 403);
    assert_eq!(line["host"], "evil.example");
    assert_eq!(line["port"], 443);
}

#[tokio::test]
async fn allowed_host_on_another_port_gets_403_naming_the_port() {
    let (echo, _) = sink_server().await;
    let proxy = start_proxy(&allow(&[format!("127.0.0.1:{}", echo.port())])).await;
    let other = closed_port();
    let resp = raw_request(
        proxy.addr,
        &format!("CONNECT 127.0.0.1:{other} HTTP/1.1\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(
        resp.body.contains(&format!(
            "why: 127.0.0.1 is allowed only on port {} (egress.allow entry `127.0.0.1:{}`), not {other}",
            echo.port(),
            echo.port()
        )),
        "{}",
        resp.body
    );
    assert!(resp.body.contains(&format!("\"127.0.0.1:{other}\"")));
}

#[tokio::test]
async fn odd_ip_spellings_are_refused_as_invalid() {
    let proxy = start_proxy(&allow(&["127.0.0.1:443".into()])).await;
    for spelling in ["2130706433", "0x7f.0.0.1", "127.1"] {
        let resp = raw_request(
            proxy.addr,
            &format!("CONNECT {spelling}:443 HTTP/1.1\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(resp.status, 403, "{spelling}: {resp:?}");
        assert!(resp.body.contains("rule: invalid-host"), "{}", resp.body);
    }
}

#[tokio::test]
async fn allowed_but_unreachable_gets_502() {
    let port = closed_port();
    let proxy = start_proxy(&allow(&[format!("127.0.0.1:{port}")])).await;
    let resp = raw_request(
        proxy.addr,
        &format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert!(resp.body.contains("could not be reached"), "{}", resp.body);
    let line = decisions_for(&proxy, "CONNECT", 1).await.remove(0);
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["status"], 502);
    assert!(line["error"].as_str().unwrap().contains("cannot connect"));
}

#[tokio::test]
async fn absolute_form_get_is_forwarded_clean_in_origin_form() {
    let origin = http_origin().await;
    let proxy = start_proxy(&allow(&[format!("127.0.0.1:{}", origin.addr.port())])).await;
    let authority = format!("127.0.0.1:{}", origin.addr.port());

    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let payload = Bytes::from_static(b"a request body of 29 bytes..");
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{authority}/upload/here?token=query-secret"))
        .header("host", &authority)
        .header("proxy-authorization", "Basic cHJveHktc2VjcmV0LXZhbHVl")
        .header("proxy-connection", "keep-alive")
        .header("connection", "x-hop")
        .header("x-hop", "hop-only")
        .header("x-custom", "custom-header-value")
        .body(Full::new(payload.clone()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "origin saw a proxy-* header");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, ORIGIN_BODY);

    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/upload/here?token=query-secret");
    assert_eq!(seen.host.as_deref(), Some(authority.as_str()));
    assert_eq!(seen.body, payload);
    assert!(
        !seen.header_names.iter().any(|n| n.starts_with("proxy-")),
        "{:?}",
        seen.header_names
    );
    assert!(!seen.header_names.iter().any(|n| n == "x-hop"));
    assert!(seen.header_names.iter().any(|n| n == "x-custom"));

    let line = decisions_for(&proxy, "POST", 1).await.remove(0);
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["status"], 200);
    assert_eq!(line["path"], "/upload/here");
    assert_eq!(line["port"], origin.addr.port());
    assert_eq!(line["bytes_up"], payload.len());
    assert_eq!(line["bytes_down"], ORIGIN_BODY.len());
    // No header value, and not the query, ever reaches the log.
    for raw in proxy.log.raw() {
        for secret in [
            "cHJveHktc2VjcmV0LXZhbHVl",
            "custom-header-value",
            "hop-only",
            "query-secret",
        ] {
            assert!(!raw.contains(secret), "log leaks {secret}: {raw}");
        }
    }
}

#[tokio::test]
async fn host_header_that_disagrees_with_the_uri_is_refused() {
    let origin = http_origin().await;
    let proxy = start_proxy(&allow(&[
        format!("127.0.0.1:{}", origin.addr.port()),
        "evil.example".into(),
    ]))
    .await;
    let resp = raw_request(
        proxy.addr,
        &format!(
            "GET http://127.0.0.1:{}/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
            origin.addr.port()
        ),
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(resp.body.contains("rule: host-mismatch"), "{}", resp.body);
    assert!(!resp.body.contains("evil.example"), "{}", resp.body);
    assert!(origin.seen().is_empty(), "the origin must not be contacted");
    let line = decisions_for(&proxy, "GET", 1).await.remove(0);
    assert_eq!(line["rule"], "host-mismatch");
    assert_eq!(line["host"], "127.0.0.1");
}

#[tokio::test]
async fn decision_uses_the_uri_not_the_host_header() {
    let origin = http_origin().await;
    // Host names the allowed origin; the URI names a denied host.
    let proxy = start_proxy(&allow(&[format!("127.0.0.1:{}", origin.addr.port())])).await;
    let resp = raw_request(
        proxy.addr,
        &format!(
            "GET http://evil.example/ HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            origin.addr.port()
        ),
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(origin.seen().is_empty());
}

#[tokio::test]
async fn trace_and_track_are_refused() {
    let origin = http_origin().await;
    let proxy = start_proxy(&allow(&[format!("127.0.0.1:{}", origin.addr.port())])).await;
    for method in ["TRACE", "TRACK"] {
        let resp = raw_request(
            proxy.addr,
            &format!(
                "{method} http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n",
                port = origin.addr.port()
            ),
        )
        .await;
        assert_eq!(resp.status, 403, "{method}: {resp:?}");
        assert!(
            resp.body.contains("rule: method-not-allowed"),
            "{}",
            resp.body
        );
    }
    assert!(origin.seen().is_empty());
}

#[tokio::test]
async fn requests_to_the_proxy_itself_get_400() {
    let proxy = start_proxy(&[]).await;
    let resp = raw_request(
        proxy.addr,
        "GET /index.html HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 400, "{resp:?}");
    assert!(
        resp.body.contains("rule: not-a-proxy-request"),
        "{}",
        resp.body
    );
    assert!(resp.body.contains("HTTP_PROXY"), "{}", resp.body);
    let line = decisions_for(&proxy, "GET", 1).await.remove(0);
    assert_eq!(line["path"], "/index.html");
    assert!(line.get("host").is_none());
}

#[tokio::test]
async fn https_in_absolute_form_is_told_to_use_connect() {
    let proxy = start_proxy(&allow(&["api.example.com".into()])).await;
    let resp = raw_request(
        proxy.addr,
        "GET https://api.example.com/ HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 400, "{resp:?}");
    assert!(resp.body.contains("CONNECT"), "{}", resp.body);
}

#[tokio::test]
async fn client_log_lines_are_rate_limited_and_summarised() {
    let limit = RateLimit {
        per_second: 0.0,
        burst: 3.0,
    };
    let proxy = start_proxy_with(&[], limit).await;
    for _ in 0..7 {
        let resp = raw_request(
            proxy.addr,
            "CONNECT evil.example:443 HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(resp.status, 403);
    }
    // Refusals are logged before they are answered, so the count is final.
    assert_eq!(proxy.log.decisions().len(), 3, "{:?}", proxy.log.raw());
    proxy.logger.flush_suppressed();
    let summary: Vec<Value> = proxy
        .log
        .json()
        .into_iter()
        .filter(|v| v["event"] == "suppressed")
        .collect();
    assert_eq!(summary.len(), 1, "{:?}", proxy.log.raw());
    assert_eq!(summary[0]["service"], "egress");
    assert_eq!(summary[0]["client"], "127.0.0.1");
    assert_eq!(summary[0]["count"], 4);
}

#[tokio::test]
async fn curl_through_the_proxy() {
    let Some(_) = curl() else { return };
    let origin = http_origin().await;
    let port = origin.addr.port();
    let proxy = start_proxy(&allow(&[format!("127.0.0.1:{port}")])).await;
    let proxy_url = format!("http://{}", proxy.addr);

    // Plain HTTP, absolute form, with proxy credentials that must not leak.
    let out = run_curl(&[
        "-x",
        &proxy_url,
        "--proxy-user",
        "agent:curl-proxy-password",
        &format!("http://127.0.0.1:{port}/curl/plain?q=1"),
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), ORIGIN_BODY);

    // The same origin through a CONNECT tunnel (-p).
    let out = run_curl(&[
        "-p",
        "-x",
        &proxy_url,
        &format!("http://127.0.0.1:{port}/curl/tunnel"),
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), ORIGIN_BODY);

    let seen = origin.seen();
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(targets, ["/curl/plain?q=1", "/curl/tunnel"]);
    for s in &seen {
        assert!(
            !s.header_names.iter().any(|n| n.starts_with("proxy-")),
            "{:?}",
            s.header_names
        );
    }

    // A denied plain request: curl prints the 403 body.
    let out = run_curl(&[
        "-x",
        &proxy_url,
        "-w",
        "\nstatus=%{http_code}",
        "http://evil.example/x",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .starts_with("bottle egress: blocked GET http://evil.example/x\nrule: default-deny\n"),
        "{stdout}"
    );
    assert!(stdout.ends_with("status=403"), "{stdout}");

    // A denied https:// request: the CONNECT is refused with 403.
    let out = run_curl(&[
        "-x",
        &proxy_url,
        "-w",
        "connect=%{http_connect}",
        "https://evil.example/",
    ])
    .await;
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "connect=403");

    for raw in proxy.log.raw() {
        assert!(!raw.contains("curl-proxy-password"), "{raw}");
        assert!(!raw.contains("YWdlbnQ6"), "{raw}"); // base64 of "agent:"
    }
    let lines = decisions_for(&proxy, "GET", 2).await;
    assert!(lines
        .iter()
        .any(|l| l["decision"] == "allow" && l["path"] == "/curl/plain"));
    assert!(lines
        .iter()
        .any(|l| l["decision"] == "deny" && l["host"] == "evil.example"));
}
