//! Nothing the agent broadcasts or multicasts reaches a host socket
//! (docs/design.md §1.3, threat model: "use what only the sidecar should …
//! broadcast/multicast to host sockets").
//!
//! The test listens on this host on 0.0.0.0 (joined to 224.0.0.251 on the
//! bottle's bridge, as an mDNS daemon would be), and the agent sends to
//! 255.255.255.255, 224.0.0.251 and its subnet broadcast. Two controls keep
//! the negative honest: the same socket receives what the host sends to
//! 127.0.0.1, and what a container sends from a throwaway internal network
//! made like a bottle's but NOT closed by bottle (the attack is real on this
//! engine). Needs a local engine: the bridges must be this host's.

use bottle_e2e::{bottle, docker, engine_or_skip, stderr, stdout, Bottle, TempDir};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const MDNS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);

/// A UDP socket on 0.0.0.0:<free port>, joined to 224.0.0.251 on each bridge.
fn listener(bridges: &[&str]) -> (UdpSocket, u16) {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())
        .expect("bind 0.0.0.0");
    for b in bridges {
        let idx: u32 = std::fs::read_to_string(format!("/sys/class/net/{b}/ifindex"))
            .unwrap_or_else(|e| panic!("bridge {b} is not on this host: {e}"))
            .trim()
            .parse()
            .expect("ifindex");
        s.join_multicast_v4_n(&MDNS, &InterfaceIndexOrAddress::Index(idx))
            .unwrap_or_else(|e| panic!("join {MDNS} on {b}: {e}"));
    }
    let u: UdpSocket = s.into();
    u.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let port = u.local_addr().expect("addr").port();
    (u, port)
}

/// Every datagram that arrives within `d`: (source, payload).
fn drain(u: &UdpSocket, d: Duration) -> Vec<(SocketAddr, String)> {
    let end = Instant::now() + d;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < end {
        if let Ok((n, from)) = u.recv_from(&mut buf) {
            got.push((from, String::from_utf8_lossy(&buf[..n]).into_owned()));
        }
    }
    got
}

/// Python that sends `<tag> <dest>` to each destination, three times.
fn sender(port: u16, tag: &str, dests: &[String]) -> String {
    let list = dests
        .iter()
        .map(|d| format!("'{d}'"))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "import socket,time\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1)\n\
         for i in range(3):\n  \
           for d in [{list}]:\n    \
             try: s.sendto(('{tag} '+d).encode(),(d,{port}))\n    \
             except OSError as e: print('send',d,e)\n  \
           time.sleep(0.05)\n\
         print('sent')\n"
    )
}

fn inspect_network(net: &str, format: &str) -> String {
    let out = docker(&["network", "inspect", "-f", format, net]);
    assert!(out.status.success(), "inspect {net}: {}", stderr(&out));
    stdout(&out).trim().to_string()
}

/// A throwaway internal network like a bottle's, removed on drop.
struct Network(String);

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.0]);
    }
}

fn local_engine_or_skip(test: &str) -> bool {
    if !engine_or_skip(test) {
        return false;
    }
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    if !(host.is_empty() || host.starts_with("unix://")) {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: DOCKER_HOST={host} is not local and CI=true: this test listens on the engine's host");
        }
        eprintln!("SKIP {test}: DOCKER_HOST={host} is not local; the bridges are not this host's");
        return false;
    }
    true
}

#[test]
fn agent_broadcast_and_multicast_reach_no_host_socket() {
    if !local_engine_or_skip("agent_broadcast_and_multicast_reach_no_host_socket") {
        return;
    }
    let b = Bottle::up("bcast", "");
    let internal = format!("bottle-{}-internal", b.name);
    let bridge = inspect_network(
        &internal,
        "{{index .Options \"com.docker.network.bridge.name\"}}",
    );
    let subnet = inspect_network(&internal, "{{(index .IPAM.Config 0).Subnet}}");
    let third: Vec<&str> = subnet.split('/').next().unwrap().split('.').collect();
    assert!(
        subnet.ends_with("/24"),
        "bottle's internal subnets are /24: {subnet}"
    );
    let subnet_bcast = format!("{}.{}.{}.255", third[0], third[1], third[2]);
    // What `up` set, in the host's own words.
    let rp = std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{bridge}/rp_filter"))
        .expect("read rp_filter");
    assert_eq!(rp.trim(), "1", "rp_filter on {bridge}");

    // The control network: made like a bottle's internal one, not closed.
    let ctl = Network(format!("bottle-test-bcast-{}", std::process::id()));
    let ctl_bridge = format!("bt-tc{}", std::process::id() % 1_000_000);
    let bridge_opt = format!("com.docker.network.bridge.name={ctl_bridge}");
    let made = docker(&[
        "network",
        "create",
        "--internal",
        "-o",
        "com.docker.network.bridge.inhibit_ipv4=true",
        "-o",
        &bridge_opt,
        "--label",
        "dev.bottle.role=test",
        &ctl.0,
    ]);
    assert!(made.status.success(), "{}", stderr(&made));

    let (sock, port) = listener(&[&bridge, &ctl_bridge]);
    let dests = vec![
        Ipv4Addr::BROADCAST.to_string(),
        MDNS.to_string(),
        subnet_bcast.clone(),
    ];

    // The attack, from inside the agent.
    let out = b.bottle(&[
        "exec",
        &b.name,
        "--",
        "python3",
        "-c",
        &sender(port, "agent", &dests),
    ]);
    assert!(
        stdout(&out).contains("sent"),
        "the agent could not send: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let got = drain(&sock, Duration::from_secs(1));
    let leaked: Vec<_> = got
        .iter()
        .filter(|(_, p)| p.starts_with("agent "))
        .collect();
    assert!(
        leaked.is_empty(),
        "host socket on 0.0.0.0:{port} received from the agent: {leaked:?}"
    );

    // Control 1: the listener works.
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"loopback", ("127.0.0.1", port))
        .unwrap();
    let got = drain(&sock, Duration::from_millis(500));
    assert!(
        got.iter().any(|(_, p)| p == "loopback"),
        "the listener missed a datagram sent to 127.0.0.1: {got:?}"
    );

    // Control 2: the same send from an internal network bottle did not close.
    let agent_image = stdout(&docker(&[
        "inspect",
        "-f",
        "{{.Config.Image}}",
        &format!("bottle-{}-agent", b.name),
    ]))
    .trim()
    .to_string();
    let ctl_subnet = inspect_network(&ctl.0, "{{(index .IPAM.Config 0).Subnet}}");
    let out = docker(&[
        "run",
        "--rm",
        "--network",
        &ctl.0,
        "--cap-drop",
        "ALL",
        &agent_image,
        "python3",
        "-c",
        &sender(
            port,
            "control",
            &[Ipv4Addr::BROADCAST.to_string(), MDNS.to_string()],
        ),
    ]);
    assert!(stdout(&out).contains("sent"), "{}", stderr(&out));
    let got = drain(&sock, Duration::from_secs(1));
    for d in [Ipv4Addr::BROADCAST, MDNS] {
        assert!(
            got.iter().any(|(_, p)| p == &format!("control {d}")),
            "without bottle's hardening, {d} from {ctl_subnet} should reach the host on this engine (the attack the negative test stands for); got {got:?}"
        );
    }
}

#[test]
fn probe_reports_broadcast_isolated() {
    if !engine_or_skip("probe_reports_broadcast_isolated") {
        return;
    }
    let dir = TempDir::new("bcast-probe");
    let state = TempDir::new("bcast-probe-state");
    let out = bottle(
        &state.0,
        &dir.0,
        &["probe", "--runtime", "docker", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("probe json: {e}\n{}\n{}", stdout(&out), stderr(&out)));
    let cap = v["capabilities"]
        .as_array()
        .expect("capabilities")
        .iter()
        .find(|c| c["name"] == "broadcast-isolated")
        .unwrap_or_else(|| panic!("no broadcast-isolated: {v}"))
        .clone();
    assert_eq!(cap["state"], "yes", "{cap}");
    assert_eq!(cap["how"], "measured", "{cap}");
    assert_eq!(cap["required"], true, "{cap}");
    let detail = cap["detail"].as_str().unwrap_or_default();
    for want in ["rp_filter=1", "255.255.255.255", "224.0.0.251"] {
        assert!(detail.contains(want), "{want} missing: {detail}");
    }
}
