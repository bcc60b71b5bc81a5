//! Slow and greedy clients against the real proxy, with short limits in the
//! policy so the deadlines are seen in seconds: a client dribbling bytes
//! after CONNECT or in a request head is closed at the total deadline, a
//! stalled body is cut (408), a malformed chunked body is the agent's error
//! (400) and never reaches the origin complete, idle tunnels are closed,
//! DNS over TCP bounds its length prefix, and the per-client connection cap
//! refuses the next connection with a 503 while others are still served.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A bottle allowing `127.0.0.1:<port>` for each of `ports`, with `limits`.
async fn bottle(ports: &[u16], limits: Value) -> Bottle {
    let allow: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut opts = Options::allow(&allow);
    opts.limits = Some(limits);
    Bottle::start(opts).await
}

/// Reads until the peer closes (or fails); `None` if it is still open
/// after `within`.
async fn closed_within<S: AsyncReadExt + Unpin>(s: &mut S, within: Duration) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(all),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// Writes one byte of `bytes` every `every` until the peer stops taking them.
fn dribble(mut w: tokio::net::tcp::OwnedWriteHalf, bytes: &'static [u8], every: Duration) {
    tokio::spawn(async move {
        for b in bytes {
            tokio::time::sleep(every).await;
            if w.write_all(&[*b]).await.is_err() {
                return;
            }
        }
    });
}

#[tokio::test]
async fn a_slow_loris_after_connect_is_closed_at_the_handshake_deadline() {
    let origin = http_origin().await;
    let b = bottle(
        &[origin.port()],
        json!({"handshake_timeout_secs": 1, "idle_timeout_secs": 300}),
    )
    .await;
    let s = tunnel(b.addr, &format!("127.0.0.1:{}", origin.port())).await;
    let opened = Instant::now();
    let (mut r, w) = s.into_split();
    // A byte every 300 ms: each read is quick, the protocol never chosen
    // (a method token longer than 20 letters would be refused at byte 21,
    // after 6 s; the 1 s deadline must come first).
    dribble(
        w,
        b"GGGGGGGGGGGGGGGGGGGGGGGGGGGGG",
        Duration::from_millis(300),
    );
    let got = closed_within(&mut r, Duration::from_secs(5))
        .await
        .expect("the tunnel must be closed at the 1 s handshake deadline, not kept open");
    let elapsed = opened.elapsed();
    assert!(got.is_empty(), "nothing is answered: {got:?}");
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed before the deadline: {elapsed:?}"
    );
    let line = b.decision_with_rule("handshake-timeout").await;
    assert_eq!(line["method"], "CONNECT");
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("limits.handshake_timeout_secs"),
        "{line}"
    );
    assert!(origin.seen().is_empty());
}

#[tokio::test]
async fn a_request_head_dribbled_to_the_proxy_is_cut_at_the_total_deadline() {
    let b = bottle(&[], json!({"handshake_timeout_secs": 1})).await;
    let s = TcpStream::connect(b.addr).await.unwrap();
    let opened = Instant::now();
    let (mut r, w) = s.into_split();
    dribble(
        w,
        b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n",
        Duration::from_millis(200),
    );
    let got = closed_within(&mut r, Duration::from_secs(5))
        .await
        .expect("a head still arriving after the deadline must be cut");
    let elapsed = opened.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    // hyper answers 408 to a head that timed out, or just closes.
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[tokio::test]
async fn a_stalled_request_body_is_cut_and_never_reaches_the_origin_whole() {
    let origin = http_origin().await;
    let port = origin.port();
    let b = bottle(&[port], json!({"body_timeout_secs": 1})).await;
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(
        format!(
            "POST http://127.0.0.1:{port}/upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 100\r\n\r\n0123456789"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let resp = read_response(&mut s).await;
    assert_eq!(resp.status, 408, "{resp:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(resp.body.contains("request-body-timeout"), "{}", resp.body);
    assert!(
        resp.body.contains("limits.body_timeout_secs"),
        "{}",
        resp.body
    );
    let line = b.decision_with_rule("request-body-timeout").await;
    assert_eq!(line["status"], 408);
    // The origin only records complete requests: it got none.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(origin.seen().is_empty(), "{:?}", origin.seen());
}

#[tokio::test]
async fn a_malformed_chunked_body_is_a_400_and_the_origin_never_sees_it_complete() {
    // The origin records raw bytes and never answers.
    let (sink, got) = sink_server().await;
    let b = bottle(&[sink.port()], json!({})).await;
    let target = format!("127.0.0.1:{}", sink.port());
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(
        format!(
            "POST http://{target}/upload HTTP/1.1\r\nHost: {target}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // The head and the first chunk are forwarded as they come...
    eventually("the first chunk at the origin", || {
        let g = got.lock().unwrap();
        String::from_utf8_lossy(&g).contains("hello").then_some(())
    })
    .await;
    // ...then the chunk framing breaks.
    s.write_all(b"zz-not-a-size\r\nmore\r\n0\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut s).await;
    assert_eq!(resp.status, 400, "{resp:?}");
    assert!(resp.body.contains("bad-request-body"), "{}", resp.body);
    assert!(!resp.body.contains("could not be reached"), "{}", resp.body);
    let line = b.decision_with_rule("bad-request-body").await;
    assert_eq!(line["status"], 400);
    // The upstream request was aborted: no terminating chunk, nothing after
    // the break.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = String::from_utf8_lossy(&got.lock().unwrap()).to_string();
    assert!(seen.starts_with("POST /upload HTTP/1.1\r\n"), "{seen:?}");
    assert!(
        !seen.contains("0\r\n\r\n"),
        "the origin got a complete body: {seen:?}"
    );
    assert!(!seen.contains("more"), "{seen:?}");
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_the_idle_deadline() {
    let origin = http_origin().await;
    let port = origin.port();
    let b = bottle(
        &[port],
        json!({"idle_timeout_secs": 1, "handshake_timeout_secs": 30}),
    )
    .await;
    let mut s = tunnel(b.addr, &format!("127.0.0.1:{port}")).await;
    // Traffic keeps it open: three requests 600 ms apart (1.8 s in all).
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        s.write_all(format!("GET /x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(read_response(&mut s).await.status, 200);
    }
    let idle_from = Instant::now();
    let got = closed_within(&mut s, Duration::from_secs(5))
        .await
        .expect("an idle tunnel must be closed");
    assert!(got.is_empty(), "{got:?}");
    let idle = idle_from.elapsed();
    assert!(idle >= Duration::from_millis(900), "{idle:?}");
}

#[tokio::test]
async fn dns_over_tcp_bounds_the_length_and_the_wait() {
    let b = bottle(&[], json!({"handshake_timeout_secs": 1})).await;
    let dns: SocketAddr = b.addrs.dns_tcp.unwrap();
    // A length prefix far beyond any query: closed before reading on.
    let mut s = TcpStream::connect(dns).await.unwrap();
    s.write_all(&[0xFF, 0xFF, 0, 0]).await.unwrap();
    let got = closed_within(&mut s, Duration::from_secs(5))
        .await
        .expect("an oversized DNS message must close the connection");
    assert!(got.is_empty());
    // Half a message, then silence: closed at the deadline.
    let mut s = TcpStream::connect(dns).await.unwrap();
    s.write_all(&[0, 40, 1, 2]).await.unwrap();
    let started = Instant::now();
    closed_within(&mut s, Duration::from_secs(5))
        .await
        .expect("a stalled DNS message must close the connection");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

/// A TCP connection to `to` from the local address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

#[tokio::test]
async fn the_per_client_cap_refuses_the_next_connection_and_others_are_served() {
    let origin = http_origin().await;
    let port = origin.port();
    let b = bottle(
        &[port],
        json!({"max_connections_per_client": 3, "handshake_timeout_secs": 30}),
    )
    .await;
    // Three idle connections from 127.0.0.1 hold all of its slots (each
    // proven accepted by a served request, kept alive).
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from("127.0.0.1", b.addr).await;
        s.write_all(
            format!("GET http://127.0.0.1:{port}/held HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(read_response(&mut s).await.status, 200);
        held.push(s);
    }
    // The fourth is refused at once with a 503 naming the limit.
    let mut fourth = connect_from("127.0.0.1", b.addr).await;
    let refused = closed_within(&mut fourth, Duration::from_secs(5))
        .await
        .expect("the connection over the cap must be closed at once");
    let text = String::from_utf8_lossy(&refused);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("max_connections_per_client"), "{text}");
    let event = eventually("a connection-refused event", || {
        b.log.events("connection-refused").into_iter().next()
    })
    .await;
    assert_eq!(event["limit"], "max_connections_per_client");
    assert_eq!(event["max"], 3);

    // Another client is still served.
    let mut other = connect_from("127.0.0.2", b.addr).await;
    other
        .write_all(
            format!("GET http://127.0.0.1:{port}/other HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let resp = read_response(&mut other).await;
    assert_eq!((resp.status, resp.body.as_str()), (200, ORIGIN_BODY));

    // A slot comes back when a connection closes.
    drop(held.pop());
    let mut again = eventually_connected(&b, "127.0.0.1", port).await;
    again.shutdown().await.unwrap();
}

/// Retries a request from `from` until it is served (slots are returned
/// when the sidecar notices the close).
async fn eventually_connected(b: &Bottle, from: &str, port: u16) -> TcpStream {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut s = connect_from(from, b.addr).await;
        s.write_all(
            format!("GET http://127.0.0.1:{port}/again HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut first = [0u8; 12];
        if s.read_exact(&mut first).await.is_ok() && &first == b"HTTP/1.1 200" {
            return s;
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
