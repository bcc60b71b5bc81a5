//! The `bottle-sidecar` binary itself: it refuses bad policies and a missing
//! CA, serves (proxy, DNS, audit file) and stops on SIGTERM, and its `health`
//! and `netinfo` subcommands.

#![allow(
    clippy::disallowed_methods,
    reason = "these tests run the bottle-sidecar binary itself, and `kill` to signal it"
)]

mod common;

use common::PATIENCE;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bottle-sidecar");

fn temp_policy(name: &str, text: &str) -> PathBuf {
    let dir = common::temp_dir("cli");
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A policy in a state dir that also holds a bottle CA.
fn state_with_ca(text: &str) -> (PathBuf, common::Pki) {
    let pki = common::Pki::new();
    let path = pki.dir.join("policy.json");
    std::fs::write(&path, text).unwrap();
    (path, pki)
}

/// The listeners tests do not use, off, and no health file in the host's
/// /tmp.
const QUIET: [&str; 6] = [
    "--http-listen",
    "off",
    "--https-listen",
    "off",
    "--health-file",
    "off",
];

fn sidecar(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// Sends SIGTERM to `child` (what a runtime's `stop` does), with nix rather
/// than a `kill` process.
fn sigterm(child: &Child) -> nix::Result<()> {
    let pid = i32::try_from(child.id()).expect("pid fits in pid_t");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
}

/// `run` on the policy at `path`, proxy on an ephemeral loopback port, no DNS.
fn run_on(path: &std::path::Path) -> Output {
    sidecar(&[
        "run",
        "--policy",
        path.to_str().unwrap(),
        "--proxy-listen",
        "127.0.0.1:0",
        "--dns-listen",
        "off",
        "--dns-answer",
        "127.0.0.1",
    ])
}

#[test]
fn a_policy_of_another_format_is_refused() {
    let path = temp_policy(
        "format2.json",
        r#"{"format":2,"bottle":"demo","egress":{"allow":["example.com"]}}"#,
    );
    let out = run_on(&path);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("has format 2, but this bottle-sidecar understands only format 1"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fatal: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(fatal["service"], "sidecar");
    assert_eq!(fatal["event"], "fatal");
    assert!(
        !stdout.contains("listening"),
        "no proxy without a policy: {stdout}"
    );
}

/// A `policy.json` written by hand (or by anything but bottle) gets the
/// same checks as `bottle.toml`: a credential in a header the proxy owns, a
/// rule naming TRACE, a path prefix with `..` never load.
#[test]
fn a_policy_the_config_would_refuse_is_refused_at_load() {
    for (name, egress, needle) in [
        (
            "host-header.json",
            r#"{"allow":["example.com"],"credentials":[{"host":"example.com","header":"Host","from_env":"K"}]}"#,
            "`Host`: the proxy manages this header itself",
        ),
        (
            "trace.json",
            r#"{"allow":["example.com"],"rules":[{"host":"example.com","methods":["TRACE"]}]}"#,
            "`TRACE`: not a method a rule can name",
        ),
        (
            "dotdot.json",
            r#"{"allow":["example.com"],"rules":[{"host":"example.com","paths":["/a/../admin"]}]}"#,
            "`/a/../admin`: a path prefix cannot hold",
        ),
    ] {
        let path = temp_policy(
            name,
            &format!(r#"{{"format":1,"bottle":"demo","egress":{egress}}}"#),
        );
        let out = run_on(&path);
        assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{name}: {stderr}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("listening"),
            "{name}: no proxy for a refused policy"
        );
    }
}

#[test]
fn unparseable_and_missing_policies_are_refused() {
    let path = temp_policy("broken.json", "{\"format\":1,");
    let out = sidecar(&[
        "run",
        "--policy",
        path.to_str().unwrap(),
        "--dns-listen",
        "off",
        "--dns-answer",
        "127.0.0.1",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));

    let out = sidecar(&[
        "run",
        "--policy",
        "/nonexistent/policy.json",
        "--dns-listen",
        "off",
        "--dns-answer",
        "127.0.0.1",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read policy file"));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["run"][..],
        &["run", "--policy"][..],
        &["run", "--policy", "p", "--bogus", "x"][..],
        &["run", "--policy", "p", "--proxy-listen", "not-an-addr"][..],
        &["run", "--policy", "p", "--https-listen", "443"][..],
        &["run", "--policy", "p", "--dns-answer", "fd00::2"][..],
        // DNS is on by default and needs the address to answer with.
        &["run", "--policy", "p"][..],
        // Without the internal address there is nothing to bind to by
        // default (never 0.0.0.0).
        &["run", "--policy", "p", "--dns-listen", "off"][..],
        &["frobnicate"][..],
    ] {
        let out = sidecar(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
    }
}

/// Reads the child's stdout lines on a thread.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for_line(rx: &mpsc::Receiver<String>, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the sidecar did not log the expected line");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if want(&v) {
            return v;
        }
    }
}

#[test]
fn a_missing_ca_is_refused() {
    let (path, pki) = state_with_ca(r#"{"format":1,"bottle":"demo","egress":{}}"#);
    std::fs::remove_file(pki.dir.join("ca-key.pem")).unwrap();
    let out = sidecar(&[
        "run",
        "--policy",
        path.to_str().unwrap(),
        "--dns-listen",
        "off",
        "--dns-answer",
        "127.0.0.1",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("refusing to start without TLS interception: cannot read the bottle CA key"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
}

/// The inodes of the UDP sockets process `pid` holds.
fn udp_sockets_of(pid: u32) -> Vec<String> {
    let mut udp = Vec::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        udp.extend(
            text.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(9).map(String::from)),
        );
    }
    let mut held = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(link) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let link = link.to_string_lossy().to_string();
        if let Some(inode) = link
            .strip_prefix("socket:[")
            .and_then(|l| l.strip_suffix(']'))
        {
            if udp.iter().any(|u| u == inode) {
                held.push(inode.to_string());
            }
        }
    }
    held
}

/// A DNS query for `name`, type A, as a stub resolver sends it.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

#[test]
fn serves_answers_health_and_stops_on_sigterm() {
    let (path, pki) =
        state_with_ca(r#"{"format":1,"bottle":"demo","egress":{"allow":["example.com"]}}"#);
    let audit = pki.dir.join("egress.jsonl");
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--policy",
            path.to_str().unwrap(),
            "--audit",
            audit.to_str().unwrap(),
            "--proxy-listen",
            "127.0.0.1:0",
            "--dns-listen",
            "127.0.0.1:0",
            "--dns-answer",
            "10.99.0.2",
        ])
        .args(QUIET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut child);
    let loaded = wait_for_line(&rx, |v| v["event"] == "policy-loaded");
    assert_eq!(loaded["bottle"], "demo");
    let proxy = wait_for_line(&rx, |v| {
        v["event"] == "listening" && v["listener"] == "proxy"
    });
    let addr = proxy["addr"].as_str().unwrap().to_string();
    let dns = wait_for_line(&rx, |v| {
        v["event"] == "listening" && v["listener"] == "dns-udp"
    });
    let dns: std::net::SocketAddr = dns["addr"].as_str().unwrap().parse().unwrap();

    let out = sidecar(&["health", "--addr", &addr]);
    assert!(out.status.success(), "{out:?}");

    // DNS: an allowed name gets the sidecar's address, a random one REFUSED,
    // and the sidecar holds no UDP socket but its listener: no upstream.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 512];
    udp.send_to(&dns_query(1, "example.com"), dns).unwrap();
    let (n, _) = udp.recv_from(&mut buf).unwrap();
    assert_eq!(buf[3] & 0xF, 0, "NOERROR");
    assert_eq!(&buf[n - 4..n], &[10, 99, 0, 2]);
    for (i, name) in ["c2VjcmV0.exfil.example", "random-7f3a.example.net"]
        .iter()
        .enumerate()
    {
        udp.send_to(&dns_query(2 + i as u16, name), dns).unwrap();
        let (n, _) = udp.recv_from(&mut buf).unwrap();
        assert_eq!(buf[3] & 0xF, 5, "{name}: REFUSED");
        assert_eq!(&buf[6..8], &[0, 0], "{name}: no answer");
        assert!(n < 100);
    }
    assert_eq!(
        udp_sockets_of(child.id()).len(),
        1,
        "the sidecar must hold exactly one UDP socket (its DNS listener)"
    );

    // A refused CONNECT lands in the audit file, without any header value.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"CONNECT evil.example:443 HTTP/1.1\r\nProxy-Authorization: Basic c2VjcmV0LWhlYWRlcg==\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    let deadline = Instant::now() + PATIENCE;
    let audit_text = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        if text.contains("evil.example") {
            break text;
        }
        assert!(Instant::now() < deadline, "no audit line: {text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    for line in audit_text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(v["service"] == "egress" || v["service"] == "dns", "{line}");
    }
    let connect: Value = audit_text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["method"] == "CONNECT")
        .unwrap();
    for field in [
        "ts",
        "client",
        "method",
        "host",
        "port",
        "rule",
        "decision",
        "status",
        "bytes_up",
        "bytes_down",
        "duration_ms",
    ] {
        assert!(connect.get(field).is_some(), "{field} missing: {connect}");
    }
    assert!(!audit_text.contains("c2VjcmV0LWhlYWRlcg"), "{audit_text}");
    assert!(audit_text.contains("\"service\":\"dns\""), "{audit_text}");

    sigterm(&child).unwrap();
    let stop = wait_for_line(&rx, |v| v["event"] == "shutdown");
    assert_eq!(stop["signal"], "SIGTERM");
    let deadline = Instant::now() + PATIENCE;
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the sidecar did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn health_fails_when_nothing_listens() {
    let port = common::closed_port();
    let out = sidecar(&["health", "--addr", &format!("127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
}

#[test]
fn netinfo_prints_interfaces_as_json() {
    let out = sidecar(&["netinfo"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ifaces = v["interfaces"].as_array().unwrap();
    for iface in ifaces {
        assert!(iface["name"].is_string());
        assert!(iface["addrs"].is_array());
    }
    // Where loopback is up, its IPv4 address is reported with its prefix.
    if let Some(lo) = ifaces.iter().find(|i| i["name"] == "lo") {
        let addrs: Vec<&str> = lo["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        if !addrs.is_empty() {
            assert!(addrs.contains(&"127.0.0.1/8"), "{addrs:?}");
        }
    }
}

/// A loopback address of its own for one test run: `127.77.x.y` (all of
/// 127/8 is local on Linux), with its neighbour `127.77.x.(y+1)` standing in
/// for another address of the same host, e.g. the sidecar's egress side.
fn own_loopback_pair() -> (std::net::Ipv4Addr, std::net::Ipv4Addr) {
    let n = std::process::id();
    let (x, y) = ((n >> 8) as u8, (n as u8) & 0xFE | 2);
    (
        std::net::Ipv4Addr::new(127, 77, x, y),
        std::net::Ipv4Addr::new(127, 77, x, y.wrapping_add(1)),
    )
}

/// The attack: every listener is bound by default, with only `--dns-answer`
/// as `bottle up` passes it; a client of another address of the same host
/// (the egress side, the host, a neighbour container) connects to each port
/// and must be refused, while the internal address serves. Needs ports 53,
/// 80 and 443 (root, or CAP_NET_BIND_SERVICE).
#[test]
fn every_listener_binds_the_internal_address_only() {
    let (internal, other) = own_loopback_pair();
    if std::net::TcpListener::bind((internal, 53)).is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "binding port 53 is required under CI=true"
        );
        eprintln!("skipping: cannot bind privileged ports here");
        return;
    }
    let (path, pki) =
        state_with_ca(r#"{"format":1,"bottle":"demo","egress":{"allow":["example.com"]}}"#);
    let health_file = pki.dir.join("proxy-addr");
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--policy",
            path.to_str().unwrap(),
            "--dns-answer",
            &internal.to_string(),
            "--health-file",
            health_file.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut child);
    let mut bound = Vec::new();
    for listener in ["proxy", "dns-udp", "dns-tcp", "http", "https"] {
        let line = wait_for_line(&rx, |v| {
            v["event"] == "listening" && v["listener"] == listener
        });
        bound.push((listener, line["addr"].as_str().unwrap().to_string()));
    }
    let want = [
        ("proxy", 3128),
        ("dns-udp", 53),
        ("dns-tcp", 53),
        ("http", 80),
        ("https", 443),
    ];
    for ((listener, addr), (_, port)) in bound.iter().zip(want) {
        assert_eq!(*addr, format!("{internal}:{port}"), "{listener}");
    }
    // From another address: nothing answers on any port.
    for port in [3128u16, 53, 80, 443] {
        let err = std::net::TcpStream::connect((other, port)).unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{other}:{port}"
        );
        std::net::TcpStream::connect((internal, port))
            .unwrap_or_else(|e| panic!("{internal}:{port} must serve: {e}"));
    }
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 512];
    udp.send_to(&dns_query(9, "example.com"), (other, 53))
        .unwrap();
    assert!(
        udp.recv_from(&mut buf).is_err(),
        "DNS answered on {other}:53"
    );
    udp.set_read_timeout(Some(PATIENCE)).unwrap();
    udp.send_to(&dns_query(10, "example.com"), (internal, 53))
        .unwrap();
    let (n, _) = udp.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[n - 4..n], &internal.octets());

    // `health` finds the proxy through the recorded address.
    let out = sidecar(&["health", "--file", health_file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let missing = pki.dir.join("no-such-file");
    let out = sidecar(&["health", "--file", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read the proxy's address"),
        "{out:?}"
    );

    let _ = sigterm(&child);
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the sidecar did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
