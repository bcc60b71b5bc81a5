//! The sidecar's DNS over real UDP and TCP sockets: allowed names answer the
//! sidecar's address, everything else is REFUSED, and the log is
//! rate-limited in its own budget, which a flood cannot spend for the egress
//! lines. (That no query ever leaves is checked on the binary in
//! `cli.rs`, by the sockets the process holds.)

mod common;

use bottle_sidecar::log::RateLimit;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

async fn ask_udp(bottle: &Bottle, id: u16, name: &str, qtype: u16) -> Vec<u8> {
    dns_udp(bottle.addrs.dns_udp.unwrap(), id, name, qtype).await
}

async fn dns_bottle(limit: RateLimit) -> Bottle {
    let mut opts = Options::new(json!({"allow": ["api.example.com", "*.cdn.example:443"]}));
    opts.limit = limit;
    Bottle::start(opts).await
}

#[tokio::test]
async fn allowed_names_get_the_sidecar_and_the_rest_is_refused() {
    let bottle = dns_bottle(RateLimit::default()).await;
    let a = ask_udp(&bottle, 1, "api.example.com", 1).await;
    assert_eq!((rcode(&a), ancount(&a)), (0, 1));
    assert_eq!(
        &a[a.len() - 4..],
        &[10, 99, 0, 2],
        "the --dns-answer address"
    );
    assert_eq!(&a[a.len() - 10..a.len() - 6], &[0, 0, 0, 5], "TTL 5");
    let a = ask_udp(&bottle, 2, "files.cdn.example", 1).await;
    assert_eq!((rcode(&a), ancount(&a)), (0, 1));
    let aaaa = ask_udp(&bottle, 3, "api.example.com", 28).await;
    assert_eq!((rcode(&aaaa), ancount(&aaaa)), (0, 0));
    for (id, name, qtype) in [
        (4, "evil.example", 1),
        (5, "cdn.example", 1),
        (6, "c2VjcmV0LXZhbHVl.exfil.example", 1),
        (7, "api.example.com", 16),
        (8, "random-4f9c.example.org", 28),
    ] {
        let r = ask_udp(&bottle, id, name, qtype).await;
        assert_eq!((rcode(&r), ancount(&r)), (5, 0), "{name} type {qtype}");
    }

    // The same over TCP, two queries on one connection.
    let mut s = TcpStream::connect(bottle.addrs.dns_tcp.unwrap())
        .await
        .unwrap();
    for (id, name, want) in [(9u16, "api.example.com", 0u8), (10, "evil.example", 5)] {
        let q = dns_query(id, name, 1);
        s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
        s.write_all(&q).await.unwrap();
        let len = s.read_u16().await.unwrap();
        let mut r = vec![0u8; usize::from(len)];
        s.read_exact(&mut r).await.unwrap();
        assert_eq!(rcode(&r), want, "{name}");
    }

    let lines = eventually("10 dns lines", || {
        let l = bottle.log.dns();
        (l.len() >= 10).then_some(l)
    })
    .await;
    let refused = lines.iter().find(|l| l["name"] == "evil.example").unwrap();
    assert_eq!(refused["decision"], "deny");
    assert_eq!(refused["rcode"], "REFUSED");
    assert_eq!(refused["rule"], "default-deny");
    let answered = lines
        .iter()
        .find(|l| l["transport"] == "tcp" && l["answers"] == 1)
        .unwrap();
    assert_eq!(answered["rule"], "api.example.com");
    assert_eq!(answered["qtype"], "A");
}

#[tokio::test]
async fn dns_log_lines_are_rate_limited() {
    let bottle = dns_bottle(RateLimit {
        per_second: 0.0,
        burst: 3.0,
    })
    .await;
    for id in 0..7 {
        let r = ask_udp(&bottle, id, &format!("n{id}.exfil.example"), 1).await;
        assert_eq!(rcode(&r), 5);
    }
    // Lines are written before answers are sent, so the counts are final.
    bottle.logger.flush_suppressed();
    assert_eq!(bottle.log.dns().len(), 3, "{:?}", bottle.log.raw());
    let summary: Vec<_> = bottle
        .log
        .json()
        .into_iter()
        .filter(|v| v["event"] == "suppressed")
        .collect();
    assert_eq!(summary[0]["count"], 4);
}

/// The agent floods UDP DNS (no connection cap applies) to exhaust its log
/// budget, then sends allowed requests: every one of them is still in the
/// audit log, and the flood is summarised by kind and name.
#[tokio::test]
async fn a_dns_flood_never_hides_forwarded_requests_from_the_audit_log() {
    let origin = http_origin().await;
    let port = origin.port();
    let mut opts = Options::new(json!({
        "allow": [format!("api.test:{port}"), format!("127.0.0.1:{port}")],
    }));
    opts.hosts = vec![("api.test", vec![ip("127.0.0.1")])];
    // The default budget: 50 lines/s, 100 at once.
    let b = Bottle::start(opts).await;
    let dns = b.addrs.dns_udp.unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let q = dns_query(0x1234, "x.invalid", 1);
    let flood = tokio::spawn(async move {
        let mut sent = 0u64;
        loop {
            for _ in 0..20 {
                if sock.send_to(&q, dns).await.is_ok() {
                    sent += 1;
                }
            }
            if sent > 100_000 {
                return;
            }
            tokio::task::yield_now().await;
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    const N: usize = 20;
    for i in 0..N {
        let req = format!(
            "GET http://api.test:{port}/exfil-{i} HTTP/1.1\r\nHost: api.test:{port}\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(raw_request(b.addr, &req).await.status, 200);
    }
    flood.abort();
    assert_eq!(origin.seen().len(), N);
    let logged = eventually("a line for every forwarded request", || {
        let found: Vec<Value> = b
            .log
            .decisions()
            .into_iter()
            .filter(|v| v["path"].as_str().is_some_and(|p| p.starts_with("/exfil-")))
            .collect();
        (found.len() >= N).then_some(found)
    })
    .await;
    for i in 0..N {
        let path = format!("/exfil-{i}");
        let line = logged.iter().find(|v| v["path"] == path.as_str());
        let line = line.unwrap_or_else(|| panic!("no audit line for {path}"));
        assert_eq!(line["decision"], "allow");
        assert_eq!(line["status"], 200);
    }
    // The flood did exceed the DNS budget, and what was dropped is named.
    b.logger.flush_suppressed();
    let summaries: Vec<Value> = b
        .log
        .json()
        .into_iter()
        .filter(|v| v["event"] == "suppressed" && v["budget"] == "dns")
        .collect();
    assert!(!summaries.is_empty(), "the flood was never rate-limited");
    let dropped: u64 = summaries.iter().map(|s| s["count"].as_u64().unwrap()).sum();
    assert!(dropped > 0);
    for s in &summaries {
        assert_eq!(s["client"], "127.0.0.1");
        assert_eq!(s["kinds"], json!({"dns/deny": s["count"]}));
        assert_eq!(s["top_hosts"][0]["host"], "x.invalid");
        assert_eq!(s["top_hosts"][0]["count"], s["count"]);
    }
    assert!(
        b.log.json().iter().all(|v| v["budget"] != "refused"),
        "no refusal was dropped"
    );
}
