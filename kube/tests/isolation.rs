//! Proof by analysis: the NetworkPolicies `bottle render` writes, evaluated
//! with the standard semantics (`bottle_kube::netpol`) in a model cluster
//! holding two bottles, a pod in the default namespace, a stray pod inside
//! the first bottle's namespace, and the cluster DNS. Each claim of
//! docs/kubernetes.md ("What the NetworkPolicies guarantee") is a test here;
//! the last test is the control: with the default-deny policy removed, the
//! same questions get the other answer, so the suite can fail.

mod common;

use bottle_kube::netpol::{Cluster, Dest, NamedPort, Pod, Protocol};
use bottle_kube::{BottleSpec, Rendered};
use std::collections::BTreeMap;
use std::net::IpAddr;

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
/// A public address (example.com's old one).
const PUBLIC: &str = "93.184.216.34";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pod_labels(r: &Rendered, role: &str) -> BTreeMap<String, String> {
    match role {
        "agent" => r.agent.metadata.labels.clone().unwrap(),
        "sidecar" => r
            .sidecar
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .clone()
            .unwrap(),
        _ => unreachable!(),
    }
}

fn sidecar_ports(r: &Rendered) -> Vec<NamedPort> {
    r.ports
        .iter()
        .map(|(name, port, proto)| NamedPort {
            name: name.clone(),
            port: *port,
            protocol: if *proto == "UDP" { UDP } else { TCP },
        })
        .collect()
}

/// Adds bottle `r`'s namespace, its two pods at `10.244.<subnet>.2/.3`, and
/// its NetworkPolicies.
fn add_bottle(c: &mut Cluster, r: &Rendered, subnet: u8) {
    let ns = r.namespace.metadata.name.clone().unwrap();
    c.namespace(&ns, r.namespace.metadata.labels.as_ref().unwrap());
    c.pod(Pod {
        namespace: ns.clone(),
        name: "agent".into(),
        labels: pod_labels(r, "agent"),
        ip: ip(&format!("10.244.{subnet}.2")),
        ports: vec![],
    });
    c.pod(Pod {
        namespace: ns.clone(),
        name: "sidecar".into(),
        labels: pod_labels(r, "sidecar"),
        ip: ip(&format!("10.244.{subnet}.3")),
        ports: sidecar_ports(r),
    });
    c.policies(r.network_policies.clone());
}

struct World {
    cluster: Cluster,
    one: Rendered,
    two: Rendered,
}

fn world_of(one: &BottleSpec, two: &BottleSpec) -> World {
    let one = bottle_kube::render(one).unwrap();
    let two = bottle_kube::render(two).unwrap();
    let mut c = Cluster::new();
    add_bottle(&mut c, &one, 1);
    add_bottle(&mut c, &two, 2);
    let plain = |ns: &str, name: &str, labels: &[(&str, &str)], addr: &str| Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ip: ip(addr),
        ports: vec![],
    };
    c.pod(plain("default", "web", &[("app", "web")], "10.244.9.9"));
    // A pod someone started in the first bottle's namespace, labelled as
    // the bottle but with no role.
    c.pod(plain(
        "bottle-one",
        "debug",
        &[("dev.bottle.name", "one")],
        "10.244.1.9",
    ));
    c.pod(plain(
        "kube-system",
        "coredns",
        &[("k8s-app", "kube-dns")],
        "10.244.0.10",
    ));
    c.pod(plain(
        "kube-system",
        "metrics",
        &[("k8s-app", "metrics-server")],
        "10.244.0.11",
    ));
    World {
        cluster: c,
        one,
        two,
    }
}

fn world() -> World {
    world_of(&common::deny_all("one"), &common::egress_git("two"))
}

fn reach(w: &World, from: (&str, &str), to: Dest<'_>, port: u16, proto: Protocol) -> bool {
    w.cluster.can_reach(from, to, port, proto).unwrap()
}

const A1: (&str, &str) = ("bottle-one", "agent");
const S1: (&str, &str) = ("bottle-one", "sidecar");

#[test]
fn the_agent_reaches_exactly_the_sidecars_ports() {
    let w = world();
    for r in [&w.one, &w.two] {
        let ns = r.namespace.metadata.name.clone().unwrap();
        let want: Vec<(u16, Protocol)> = sidecar_ports(r)
            .iter()
            .map(|p| (p.port, p.protocol))
            .collect();
        let mut got = Vec::new();
        for proto in [TCP, UDP] {
            for port in 1..=u16::MAX {
                if reach(&w, (&ns, "agent"), Dest::Pod(&ns, "sidecar"), port, proto) {
                    got.push((port, proto));
                }
            }
        }
        let mut want = want;
        want.sort();
        got.sort();
        assert_eq!(got, want, "{ns}");
    }
    // deny-all has supervise but no git: 8080 is not open.
    assert!(!reach(
        &w,
        A1,
        Dest::Pod("bottle-one", "sidecar"),
        8080,
        TCP
    ));
    assert!(reach(&w, A1, Dest::Pod("bottle-one", "sidecar"), 8765, TCP));
}

#[test]
fn the_agent_reaches_nothing_but_its_sidecar() {
    let w = world();
    let pods = [
        ("bottle-one", "debug"),
        ("bottle-two", "agent"),
        ("bottle-two", "sidecar"),
        ("default", "web"),
        ("kube-system", "coredns"),
        ("kube-system", "metrics"),
    ];
    for (ns, name) in pods {
        for (port, proto) in [
            (53, UDP),
            (53, TCP),
            (80, TCP),
            (443, TCP),
            (3128, TCP),
            (8080, TCP),
        ] {
            assert!(
                !reach(&w, A1, Dest::Pod(ns, name), port, proto),
                "agent -> {ns}/{name}:{port}/{proto}"
            );
        }
    }
    for addr in [
        PUBLIC,
        "169.254.169.254",
        "10.96.0.1",
        "10.0.0.5",
        "1.1.1.1",
        "100.100.100.200",
    ] {
        for (port, proto) in [(53, UDP), (80, TCP), (443, TCP)] {
            assert!(
                !reach(&w, A1, Dest::Ip(ip(addr)), port, proto),
                "agent -> {addr}:{port}/{proto}"
            );
        }
    }
}

#[test]
fn nothing_but_the_agent_reaches_the_sidecar() {
    let w = world();
    let others = [
        ("bottle-one", "debug"),
        ("bottle-two", "agent"),
        ("bottle-two", "sidecar"),
        ("default", "web"),
        ("kube-system", "coredns"),
        ("kube-system", "metrics"),
    ];
    for from in others {
        for p in sidecar_ports(&w.one) {
            assert!(
                !reach(
                    &w,
                    from,
                    Dest::Pod("bottle-one", "sidecar"),
                    p.port,
                    p.protocol
                ),
                "{from:?} -> sidecar:{}/{}",
                p.port,
                p.protocol
            );
        }
    }
    // Nor does the sidecar reach its own agent: the agent accepts nothing.
    for port in [22, 80, 443, 8080] {
        assert!(!reach(&w, S1, Dest::Pod("bottle-one", "agent"), port, TCP));
    }
}

#[test]
fn the_sidecar_reaches_the_internet_over_tcp() {
    let w = world();
    for port in [443, 80, 8443, 22] {
        assert!(reach(&w, S1, Dest::Ip(ip(PUBLIC)), port, TCP), "{port}");
    }
    // Not over UDP (QUIC, or a resolver of the agent's choosing).
    assert!(!reach(&w, S1, Dest::Ip(ip(PUBLIC)), 443, UDP));
    assert!(!reach(&w, S1, Dest::Ip(ip("8.8.8.8")), 53, UDP));
    // Nor over IPv6: nothing allows it.
    assert!(!reach(&w, S1, Dest::Ip(ip("2606:2800:220:1::1")), 443, TCP));
}

#[test]
fn the_sidecar_reaches_no_cluster_node_or_metadata_address() {
    let w = world();
    let never = [
        ("10.244.9.9", "a pod (pod CIDR)"),
        ("10.244.255.1", "the pod CIDR"),
        ("10.96.0.1", "the API server's Service (service CIDR)"),
        ("10.111.0.7", "the service CIDR"),
        ("10.0.0.5", "a node on a private range"),
        ("192.168.1.1", "the LAN"),
        ("172.17.0.1", "a docker bridge"),
        ("169.254.169.254", "cloud metadata"),
        ("100.100.100.200", "Alibaba's metadata"),
        ("127.0.0.1", "loopback"),
    ];
    for (addr, what) in never {
        for port in [80, 443, 6443, 10250] {
            assert!(
                !reach(&w, S1, Dest::Ip(ip(addr)), port, TCP),
                "{what} {addr}:{port}"
            );
        }
    }
    // A node range outside the private blocks, given with --node-cidr.
    let s2 = ("bottle-two", "sidecar");
    assert!(!reach(&w, s2, Dest::Ip(ip("203.0.113.5")), 10250, TCP));
    assert!(reach(&w, s2, Dest::Ip(ip("203.0.114.5")), 443, TCP));
    // Pods by address or by name, whatever the namespace.
    for (ns, name) in [
        ("default", "web"),
        ("bottle-two", "agent"),
        ("bottle-two", "sidecar"),
        ("kube-system", "metrics"),
    ] {
        for port in [80, 443, 3128, 8080] {
            assert!(
                !reach(&w, S1, Dest::Pod(ns, name), port, TCP),
                "{ns}/{name}:{port}"
            );
        }
    }
}

#[test]
fn the_sidecar_reaches_the_cluster_dns_on_port_53_only() {
    let w = world();
    let dns = Dest::Pod("kube-system", "coredns");
    assert!(reach(&w, S1, dns, 53, UDP));
    assert!(reach(&w, S1, dns, 53, TCP));
    assert!(!reach(&w, S1, dns, 80, TCP));
    assert!(!reach(&w, S1, dns, 9153, TCP));
    // Another pod of kube-system on 53: no.
    assert!(!reach(&w, S1, Dest::Pod("kube-system", "metrics"), 53, UDP));
}

#[test]
fn with_resolvers_of_its_own_the_sidecar_has_no_cluster_dns() {
    let mut one = common::deny_all("one");
    one.cluster.sidecar_dns = bottle_kube::SidecarDns::Servers(vec![ip("9.9.9.9")]);
    let w = world_of(&one, &common::egress_git("two"));
    assert!(reach(&w, S1, Dest::Ip(ip("9.9.9.9")), 53, UDP));
    assert!(!reach(&w, S1, Dest::Ip(ip("8.8.8.8")), 53, UDP));
    assert!(!reach(&w, S1, Dest::Pod("kube-system", "coredns"), 53, UDP));
}

#[test]
fn a_second_bottle_cannot_reach_the_first_nor_the_reverse() {
    let w = world();
    let pods = |ns: &'static str| [(ns, "agent"), (ns, "sidecar")];
    let ports = [
        (53, UDP),
        (53, TCP),
        (80, TCP),
        (443, TCP),
        (3128, TCP),
        (8080, TCP),
        (8765, TCP),
        (22, TCP),
    ];
    for (a, b) in [("bottle-one", "bottle-two"), ("bottle-two", "bottle-one")] {
        for from in pods(a) {
            for (ns, name) in pods(b) {
                for (port, proto) in ports {
                    assert!(
                        !reach(&w, from, Dest::Pod(ns, name), port, proto),
                        "{from:?} -> {ns}/{name}:{port}/{proto}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_pod_cidr_in_public_space_is_cut_out_too() {
    let mut one = common::deny_all("one");
    one.cluster.pod_cidrs = vec!["198.51.100.0/24".parse().unwrap()];
    let r = bottle_kube::render(&one).unwrap();
    let mut c = Cluster::new();
    add_bottle(&mut c, &r, 1);
    assert!(!c
        .can_reach(S1, Dest::Ip(ip("198.51.100.7")), 443, TCP)
        .unwrap());
    assert!(c.can_reach(S1, Dest::Ip(ip(PUBLIC)), 443, TCP).unwrap());
}

#[test]
fn control_without_default_deny_the_same_questions_flip() {
    // The suite above can fail: drop the namespace's default-deny policy
    // and a pod of another namespace reaches the agent (nothing isolates
    // the agent's ingress any more).
    let mut w = world();
    let mut c = Cluster::new();
    let strip = |r: &mut Rendered| {
        r.network_policies
            .retain(|p| p.metadata.name.as_deref() != Some("default-deny"));
    };
    strip(&mut w.one);
    add_bottle(&mut c, &w.one, 1);
    c.pod(Pod {
        namespace: "default".into(),
        name: "web".into(),
        labels: BTreeMap::new(),
        ip: ip("10.244.9.9"),
        ports: vec![],
    });
    assert!(c
        .can_reach(
            ("default", "web"),
            Dest::Pod("bottle-one", "agent"),
            22,
            TCP
        )
        .unwrap());
    // The sidecar's own egress policy still cuts out private addresses.
    assert!(!c
        .can_reach(S1, Dest::Pod("bottle-one", "agent"), 22, TCP)
        .unwrap());
    // The agent-egress policy still holds the agent in.
    assert!(!c.can_reach(A1, Dest::Ip(ip(PUBLIC)), 443, TCP).unwrap());
}
