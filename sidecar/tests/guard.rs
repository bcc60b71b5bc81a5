//! The destination guard through the proxy: allowed names that resolve to
//! addresses a bottle must never reach are refused after resolution, before
//! any connection. A fixed test resolver plays the hostile DNS; the one
//! system-resolver test uses `localhost`. No test connects anywhere but
//! 127.0.0.1: every other address here is refused by the guard first.

mod common;

use common::*;
use serde_json::json;

/// `(name, address it resolves to, what the refusal must say)`.
const CLASSES: &[(&str, &str, &str)] = &[
    (
        "loopback.test",
        "127.0.0.1",
        "127.0.0.1, a loopback address",
    ),
    ("loopback6.test", "::1", "::1, a loopback address"),
    ("private.test", "10.1.2.3", "a private (RFC 1918) address"),
    (
        "private172.test",
        "172.16.5.4",
        "a private (RFC 1918) address",
    ),
    (
        "private192.test",
        "192.168.1.1",
        "a private (RFC 1918) address",
    ),
    (
        "cgnat.test",
        "100.64.0.1",
        "a shared (CGNAT, 100.64.0.0/10) address",
    ),
    ("linklocal.test", "169.254.1.1", "a link-local address"),
    ("aws.test", "169.254.169.254", "a cloud metadata address"),
    (
        "alibaba.test",
        "100.100.100.200",
        "a cloud metadata address",
    ),
    ("azure.test", "168.63.129.16", "a cloud metadata address"),
    ("aws6.test", "fd00:ec2::254", "a cloud metadata address"),
    ("multicast.test", "224.0.0.1", "a multicast address"),
    ("unspecified.test", "0.0.0.0", "an unspecified address"),
    ("broadcast.test", "255.255.255.255", "a broadcast address"),
    ("doc.test", "192.0.2.10", "a documentation address"),
    (
        "ula.test",
        "fd12:3456::1",
        "a unique-local (fc00::/7) address",
    ),
    ("linklocal6.test", "fe80::1", "a link-local address"),
    (
        "sitelocal.test",
        "fec0::1",
        "a site-local (fec0::/10) address",
    ),
    (
        "mapped.test",
        "::ffff:169.254.169.254",
        "169.254.169.254, a cloud metadata address",
    ),
    (
        "compat.test",
        "::127.0.0.1",
        "the IPv4-compatible form of 127.0.0.1, which is a loopback address",
    ),
    (
        "nat64.test",
        "64:ff9b::a9fe:a9fe",
        "the NAT64 form of 169.254.169.254, which is a cloud metadata address",
    ),
    (
        "gateway.test",
        "198.51.100.1",
        "the sidecar's gateway (the host) address",
    ),
    ("sidecar.test", "198.51.100.2", "the sidecar's own address"),
];

async fn hostile_bottle(allow_private: &[&str]) -> Bottle {
    let names: Vec<String> = CLASSES.iter().map(|(n, _, _)| n.to_string()).collect();
    let mut opts = Options::new(json!({"allow": names, "allow_private": allow_private}));
    opts.hosts = CLASSES
        .iter()
        .map(|(n, addr, _)| (*n, vec![ip(addr)]))
        .collect();
    Bottle::start(opts).await
}

#[tokio::test]
async fn every_forbidden_address_class_is_refused_after_resolution() {
    let bottle = hostile_bottle(&[]).await;
    for (name, addr, says) in CLASSES {
        let resp = raw_request(
            bottle.addr,
            &format!("CONNECT {name}:443 HTTP/1.1\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(resp.status, 403, "{name} -> {addr}: {resp:?}");
        assert!(
            resp.body.contains("rule: destination-guard\n"),
            "{name}: {}",
            resp.body
        );
        assert!(
            resp.body.contains(&format!("why: {name} resolved to ")) && resp.body.contains(says),
            "{name} -> {addr}: {}",
            resp.body
        );
    }
    // Plain HTTP is guarded the same way.
    let resp = raw_request(
        bottle.addr,
        "GET http://aws.test/latest/meta-data/ HTTP/1.1\r\nHost: aws.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(
        resp.body.contains("rule: destination-guard"),
        "{}",
        resp.body
    );
    assert!(
        resp.body
            .contains("to get access: none: this address is never reachable from a bottle"),
        "{}",
        resp.body
    );
    let line = bottle.decision_with_rule("destination-guard").await;
    assert_eq!(line["decision"], "deny");
    assert_eq!(line["status"], 403);
}

#[tokio::test]
async fn allow_private_never_opens_loopback_metadata_or_the_gateway() {
    let bottle = hostile_bottle(&[
        "loopback.test",
        "aws.test",
        "alibaba.test",
        "gateway.test",
        "linklocal.test",
        "compat.test",
    ])
    .await;
    for name in [
        "loopback.test",
        "aws.test",
        "alibaba.test",
        "gateway.test",
        "linklocal.test",
        "compat.test",
    ] {
        let resp = raw_request(
            bottle.addr,
            &format!("CONNECT {name}:443 HTTP/1.1\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(resp.status, 403, "{name}: {resp:?}");
        assert!(
            resp.body.contains("rule: destination-guard"),
            "{}",
            resp.body
        );
    }
    // A private name not listed gets the hint to list it.
    let resp = raw_request(
        bottle.addr,
        "CONNECT private.test:443 HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        resp.body.contains(
            "to get access: if private.test is an internal service the user means to reach, ask them to add it to egress.allow_private in bottle.toml"
        ),
        "{}",
        resp.body
    );
}

#[tokio::test]
async fn only_checked_addresses_are_connected_and_exact_ips_are_the_exception() {
    let origin = http_origin().await;
    let port = origin.port();
    // `mixed.test` answers a private address first and loopback second; the
    // policy names 127.0.0.1:port exactly, so only that one is used.
    let mut opts = Options::new(json!({"allow": [
        format!("mixed.test:{port}"),
        format!("127.0.0.1:{port}"),
        format!("loopname.test:{port}"),
    ]}));
    opts.hosts = vec![
        ("mixed.test", vec![ip("10.1.2.3"), ip("127.0.0.1")]),
        ("loopname.test", vec![ip("127.0.0.2")]),
    ];
    let bottle = Bottle::start(opts).await;
    let resp = raw_request(
        bottle.addr,
        &format!("GET http://mixed.test:{port}/mixed HTTP/1.1\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (200, ORIGIN_BODY),
        "{resp:?}"
    );
    // The exact-address exception is per address: 127.0.0.2 is not named.
    let resp = raw_request(
        bottle.addr,
        &format!("CONNECT loopname.test:{port} HTTP/1.1\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(origin.seen().len(), 1);
}

#[tokio::test]
async fn localhost_resolves_to_loopback_and_is_refused() {
    let origin = http_origin().await;
    let port = origin.port();
    let mut opts = Options::new(json!({"allow": [format!("localhost:{port}")]}));
    opts.system_resolver = true;
    let bottle = Bottle::start(opts).await;
    let resp = raw_request(
        bottle.addr,
        &format!("CONNECT localhost:{port} HTTP/1.1\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(
        resp.body.contains("why: localhost resolved to "),
        "{}",
        resp.body
    );
    assert!(resp.body.contains("a loopback address"), "{}", resp.body);
    assert!(origin.seen().is_empty());
}

#[tokio::test]
async fn odd_ip_literal_spellings_never_match_an_allowed_address() {
    let origin = http_origin().await;
    let port = origin.port();
    let bottle = start_proxy(&[format!("127.0.0.1:{port}")]).await;
    for spelling in [
        "2130706433",
        "0x7f.0.0.1",
        "0177.0.0.1",
        "127.1",
        "0x7f000001",
    ] {
        let resp = raw_request(
            bottle.addr,
            &format!("CONNECT {spelling}:{port} HTTP/1.1\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(resp.status, 403, "{spelling}: {resp:?}");
        assert!(
            resp.body.contains("rule: invalid-host"),
            "{spelling}: {}",
            resp.body
        );
    }
    // Mapped and compatible IPv6 forms are other addresses, not the allowed one.
    for spelling in ["[::ffff:127.0.0.1]", "[::127.0.0.1]", "[64:ff9b::7f00:1]"] {
        let resp = raw_request(
            bottle.addr,
            &format!("CONNECT {spelling}:{port} HTTP/1.1\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(resp.status, 403, "{spelling}: {resp:?}");
        assert!(
            resp.body.contains("rule: default-deny"),
            "{spelling}: {}",
            resp.body
        );
    }
    // The canonical spelling is the exact-address exception at work.
    let resp = raw_request(
        bottle.addr,
        &format!("GET http://127.0.0.1:{port}/ok HTTP/1.1\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(origin.seen().len(), 1);
}
