//! The evaluator's semantics, one rule per test, on hand-written policies:
//! each test has a case that flips if the rule it names were implemented
//! the other way.

use super::*;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(pairs)),
        match_expressions: None,
    }
}

fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
    LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }]),
    }
}

fn pod(ns: &str, name: &str, app: &str, ip: &str) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(&[("app", app)]),
        ip: ip.parse().unwrap(),
        ports: vec![NamedPort {
            name: "web".into(),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
    }
}

fn policy(ns: &str, spec: NetworkPolicySpec) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some("p".into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        spec: Some(spec),
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        ..Default::default()
    }
}

fn from_pods(s: LabelSelector) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(s),
        ..Default::default()
    }
}

fn ingress(from: Vec<NetworkPolicyPeer>, ports: Vec<NetworkPolicyPort>) -> NetworkPolicySpec {
    NetworkPolicySpec {
        pod_selector: Some(sel(&[("app", "db")])),
        ingress: Some(vec![NetworkPolicyIngressRule {
            from: Some(from),
            ports: Some(ports),
        }]),
        policy_types: Some(vec!["Ingress".into()]),
        ..Default::default()
    }
}

fn egress_only(to: Vec<NetworkPolicyPeer>, ports: Vec<NetworkPolicyPort>) -> NetworkPolicySpec {
    NetworkPolicySpec {
        pod_selector: Some(sel(&[("app", "web")])),
        egress: Some(vec![NetworkPolicyEgressRule {
            to: Some(to),
            ports: Some(ports),
        }]),
        policy_types: Some(vec!["Egress".into()]),
        ..Default::default()
    }
}

/// ns `a`: web (10.0.0.1), db (10.0.0.2), other (10.0.0.3);
/// ns `b` (team=blue): web (10.0.1.1), db (10.0.1.2).
fn world() -> Cluster {
    let mut c = Cluster::new();
    c.namespace("a", &labels(&[("team", "red")]))
        .namespace("b", &labels(&[("team", "blue")]))
        .pod(pod("a", "web", "web", "10.0.0.1"))
        .pod(pod("a", "db", "db", "10.0.0.2"))
        .pod(pod("a", "other", "other", "10.0.0.3"))
        .pod(pod("b", "web", "web", "10.0.1.1"))
        .pod(pod("b", "db", "db", "10.0.1.2"));
    c
}

const T: Protocol = Protocol::Tcp;

#[test]
fn without_policies_everything_is_allowed() {
    let c = world();
    assert!(c
        .can_reach(("a", "web"), Dest::Pod("b", "db"), 5432, T)
        .unwrap());
    assert!(c
        .can_reach(("a", "web"), Dest::Ip("1.2.3.4".parse().unwrap()), 443, T)
        .unwrap());
}

#[test]
fn a_selected_pod_is_isolated_and_others_are_not() {
    let mut c = world();
    c.policies([policy("a", ingress(vec![], vec![tcp(1)]))]);
    // The policy selects db: only port 1 remains.
    assert!(!c
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 5432, T)
        .unwrap());
    // `other` is not selected: still open.
    assert!(c
        .can_reach(("a", "web"), Dest::Pod("a", "other"), 5432, T)
        .unwrap());
    // A policy only isolates pods of its own namespace.
    assert!(c
        .can_reach(("a", "web"), Dest::Pod("b", "db"), 5432, T)
        .unwrap());
}

#[test]
fn an_empty_pod_selector_selects_every_pod_of_the_namespace() {
    let mut c = world();
    c.policies([policy(
        "a",
        NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ..Default::default()
        },
    )]);
    assert!(!c
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 1, T)
        .unwrap());
    assert!(!c
        .can_reach(("b", "web"), Dest::Pod("a", "other"), 1, T)
        .unwrap());
    assert!(!c
        .can_reach(("a", "web"), Dest::Ip("1.2.3.4".parse().unwrap()), 443, T)
        .unwrap());
    // Not namespace b.
    assert!(c
        .can_reach(("b", "web"), Dest::Pod("b", "db"), 1, T)
        .unwrap());
}

#[test]
fn missing_policy_types_imply_ingress_and_egress_only_with_egress_rules() {
    let mut only_ingress = world();
    let mut spec = ingress(vec![], vec![tcp(1)]);
    spec.policy_types = None;
    spec.pod_selector = Some(LabelSelector::default());
    only_ingress.policies([policy("a", spec)]);
    // Ingress implied: db isolated.
    assert!(!only_ingress
        .can_reach(("b", "web"), Dest::Pod("a", "db"), 5432, T)
        .unwrap());
    // Egress not implied (no egress rules): web reaches the internet.
    assert!(only_ingress
        .can_reach(("a", "web"), Dest::Ip("1.2.3.4".parse().unwrap()), 443, T)
        .unwrap());

    let mut with_egress = world();
    let mut spec = egress_only(vec![], vec![tcp(53)]);
    spec.policy_types = None;
    with_egress.policies([policy("a", spec)]);
    assert!(!with_egress
        .can_reach(("a", "web"), Dest::Ip("1.2.3.4".parse().unwrap()), 443, T)
        .unwrap());
    assert!(with_egress
        .can_reach(("a", "web"), Dest::Ip("1.2.3.4".parse().unwrap()), 53, T)
        .unwrap());
}

#[test]
fn policies_add_up() {
    let mut c = world();
    c.policies([
        policy("a", ingress(vec![], vec![tcp(1)])),
        policy("a", ingress(vec![], vec![tcp(2)])),
    ]);
    assert!(c
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 1, T)
        .unwrap());
    assert!(c
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 2, T)
        .unwrap());
    assert!(!c
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 3, T)
        .unwrap());
}

#[test]
fn pod_to_pod_needs_egress_at_the_source_and_ingress_at_the_destination() {
    let mut egress_denied = world();
    egress_denied.policies([policy("a", egress_only(vec![], vec![tcp(1)]))]);
    // db is open for ingress, but web's egress allows port 1 only.
    assert!(!egress_denied
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 5432, T)
        .unwrap());
    assert!(egress_denied
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 1, T)
        .unwrap());

    let mut ingress_denied = world();
    ingress_denied.policies([policy("a", ingress(vec![], vec![tcp(1)]))]);
    // web's egress is open, but db's ingress allows port 1 only.
    assert!(!ingress_denied
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 5432, T)
        .unwrap());
}

#[test]
fn an_address_outside_the_pods_needs_only_egress() {
    let mut c = world();
    // An ingress-isolating policy on every pod does not stop egress to an IP.
    c.policies([policy(
        "a",
        NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into()]),
            ..Default::default()
        },
    )]);
    assert!(c
        .can_reach(("a", "web"), Dest::Ip("1.2.3.4".parse().unwrap()), 443, T)
        .unwrap());
}

#[test]
fn a_pod_selector_peer_means_pods_of_the_policy_namespace_only() {
    let mut c = world();
    c.policies([policy(
        "a",
        ingress(vec![from_pods(sel(&[("app", "web")]))], vec![tcp(5432)]),
    )]);
    assert!(c
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 5432, T)
        .unwrap());
    // Same labels, other namespace: not matched.
    assert!(!c
        .can_reach(("b", "web"), Dest::Pod("a", "db"), 5432, T)
        .unwrap());
    // Other labels, same namespace: not matched.
    assert!(!c
        .can_reach(("a", "other"), Dest::Pod("a", "db"), 5432, T)
        .unwrap());
}

#[test]
fn a_namespace_selector_peer_means_every_pod_of_those_namespaces() {
    let mut c = world();
    c.policies([policy(
        "a",
        ingress(
            vec![NetworkPolicyPeer {
                namespace_selector: Some(sel(&[("team", "blue")])),
                ..Default::default()
            }],
            vec![tcp(5432)],
        ),
    )]);
    assert!(c
        .can_reach(("b", "web"), Dest::Pod("a", "db"), 5432, T)
        .unwrap());
    assert!(c
        .can_reach(("b", "db"), Dest::Pod("a", "db"), 5432, T)
        .unwrap());
    // Its own namespace is not blue.
    assert!(!c
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 5432, T)
        .unwrap());
}

#[test]
fn both_selectors_in_one_peer_must_both_match() {
    let mut c = world();
    c.policies([policy(
        "a",
        ingress(
            vec![NetworkPolicyPeer {
                namespace_selector: Some(sel(&[("team", "blue")])),
                pod_selector: Some(sel(&[("app", "web")])),
                ..Default::default()
            }],
            vec![tcp(5432)],
        ),
    )]);
    assert!(c
        .can_reach(("b", "web"), Dest::Pod("a", "db"), 5432, T)
        .unwrap());
    // Right namespace, wrong pod.
    assert!(!c
        .can_reach(("b", "db"), Dest::Pod("a", "db"), 5432, T)
        .unwrap());
    // Right pod labels, wrong namespace.
    assert!(!c
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 5432, T)
        .unwrap());
}

#[test]
fn two_peers_are_either_or() {
    let mut c = world();
    c.policies([policy(
        "a",
        ingress(
            vec![
                NetworkPolicyPeer {
                    namespace_selector: Some(sel(&[("team", "blue")])),
                    ..Default::default()
                },
                from_pods(sel(&[("app", "web")])),
            ],
            vec![tcp(5432)],
        ),
    )]);
    assert!(c
        .can_reach(("b", "db"), Dest::Pod("a", "db"), 5432, T)
        .unwrap());
    assert!(c
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 5432, T)
        .unwrap());
    assert!(!c
        .can_reach(("a", "other"), Dest::Pod("a", "db"), 5432, T)
        .unwrap());
}

#[test]
fn the_namespace_name_label_is_always_there() {
    let mut c = world();
    c.policies([policy(
        "a",
        ingress(
            vec![NetworkPolicyPeer {
                namespace_selector: Some(sel(&[(NAMESPACE_NAME_LABEL, "b")])),
                ..Default::default()
            }],
            vec![tcp(5432)],
        ),
    )]);
    assert!(c
        .can_reach(("b", "web"), Dest::Pod("a", "db"), 5432, T)
        .unwrap());
    assert!(!c
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 5432, T)
        .unwrap());
}

#[test]
fn an_ip_block_allows_its_cidr_minus_the_exceptions() {
    let mut c = world();
    c.policies([policy(
        "a",
        egress_only(
            vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: "0.0.0.0/0".into(),
                    except: Some(vec!["10.0.0.0/8".into(), "169.254.169.254/32".into()]),
                }),
                ..Default::default()
            }],
            vec![],
        ),
    )]);
    let ip = |s: &str| Dest::Ip(s.parse().unwrap());
    assert!(c
        .can_reach(("a", "web"), ip("93.184.216.34"), 443, T)
        .unwrap());
    assert!(!c.can_reach(("a", "web"), ip("10.1.2.3"), 443, T).unwrap());
    assert!(!c
        .can_reach(("a", "web"), ip("169.254.169.254"), 80, T)
        .unwrap());
    assert!(c
        .can_reach(("a", "web"), ip("169.254.169.253"), 80, T)
        .unwrap());
    // IPv6 is outside an IPv4 block.
    assert!(!c
        .can_reach(("a", "web"), ip("2001:db8::1"), 443, T)
        .unwrap());
    // Pod addresses are matched too: db (10.0.0.2) is in an exception.
    assert!(!c
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 443, T)
        .unwrap());
}

#[test]
fn an_ip_block_is_matched_against_pod_addresses() {
    let mut c = world();
    c.policies([policy(
        "a",
        egress_only(
            vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: "10.0.1.0/24".into(),
                    except: None,
                }),
                ..Default::default()
            }],
            vec![],
        ),
    )]);
    // The permissive reading: b/db's address is inside the block.
    assert!(c
        .can_reach(("a", "web"), Dest::Pod("b", "db"), 5432, T)
        .unwrap());
    assert!(!c
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 5432, T)
        .unwrap());
}

#[test]
fn selectors_never_match_an_address_outside_the_pods() {
    let mut c = world();
    c.policies([policy(
        "a",
        egress_only(
            vec![NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector::default()),
                ..Default::default()
            }],
            vec![],
        ),
    )]);
    // Every pod of every namespace, but not the internet.
    assert!(c
        .can_reach(("a", "web"), Dest::Pod("b", "db"), 1, T)
        .unwrap());
    assert!(!c
        .can_reach(("a", "web"), Dest::Ip("1.2.3.4".parse().unwrap()), 1, T)
        .unwrap());
}

#[test]
fn ports_default_to_tcp_and_match_the_protocol() {
    let mut c = world();
    c.policies([policy(
        "a",
        ingress(
            vec![],
            vec![
                tcp(53),
                NetworkPolicyPort {
                    port: Some(IntOrString::Int(5353)),
                    protocol: Some("UDP".into()),
                    ..Default::default()
                },
            ],
        ),
    )]);
    let u = Protocol::Udp;
    assert!(c
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 53, T)
        .unwrap());
    assert!(!c
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 53, u)
        .unwrap());
    assert!(c
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 5353, u)
        .unwrap());
    assert!(!c
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 5353, T)
        .unwrap());
}

#[test]
fn a_port_without_a_number_is_every_port_of_its_protocol() {
    let mut c = world();
    c.policies([policy(
        "a",
        ingress(
            vec![],
            vec![NetworkPolicyPort {
                protocol: Some("UDP".into()),
                ..Default::default()
            }],
        ),
    )]);
    assert!(c
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 9999, Protocol::Udp)
        .unwrap());
    assert!(!c
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 9999, T)
        .unwrap());
}

#[test]
fn end_port_makes_a_range_inclusive() {
    let mut c = world();
    c.policies([policy(
        "a",
        ingress(
            vec![],
            vec![NetworkPolicyPort {
                port: Some(IntOrString::Int(8000)),
                end_port: Some(8010),
                ..Default::default()
            }],
        ),
    )]);
    for (port, want) in [(7999, false), (8000, true), (8010, true), (8011, false)] {
        assert_eq!(
            c.can_reach(("a", "web"), Dest::Pod("a", "db"), port, T)
                .unwrap(),
            want,
            "{port}"
        );
    }
}

#[test]
fn a_named_port_is_the_destination_pods_port_of_that_name() {
    let mut c = world();
    c.policies([policy(
        "a",
        ingress(
            vec![],
            vec![NetworkPolicyPort {
                port: Some(IntOrString::String("web".into())),
                ..Default::default()
            }],
        ),
    )]);
    assert!(c
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 8080, T)
        .unwrap());
    assert!(!c
        .can_reach(("a", "web"), Dest::Pod("a", "db"), 8081, T)
        .unwrap());
    // An address has no named ports.
    let mut e = world();
    e.policies([policy(
        "a",
        egress_only(
            vec![],
            vec![NetworkPolicyPort {
                port: Some(IntOrString::String("web".into())),
                ..Default::default()
            }],
        ),
    )]);
    assert!(!e
        .can_reach(("a", "web"), Dest::Ip("1.2.3.4".parse().unwrap()), 8080, T)
        .unwrap());
}

#[test]
fn match_expressions_have_the_four_operators() {
    let l = labels(&[("app", "web"), ("tier", "front")]);
    assert!(selects(&expr("app", "In", &["web", "db"]), &l).unwrap());
    assert!(!selects(&expr("app", "In", &["db"]), &l).unwrap());
    assert!(!selects(&expr("app", "NotIn", &["web"]), &l).unwrap());
    assert!(selects(&expr("app", "NotIn", &["db"]), &l).unwrap());
    // NotIn matches a pod without the key.
    assert!(selects(&expr("missing", "NotIn", &["x"]), &l).unwrap());
    assert!(!selects(&expr("missing", "In", &["x"]), &l).unwrap());
    assert!(selects(&expr("tier", "Exists", &[]), &l).unwrap());
    assert!(!selects(&expr("missing", "Exists", &[]), &l).unwrap());
    assert!(selects(&expr("missing", "DoesNotExist", &[]), &l).unwrap());
    assert!(!selects(&expr("tier", "DoesNotExist", &[]), &l).unwrap());
    assert_eq!(
        selects(&expr("app", "in", &["web"]), &l).unwrap_err(),
        EvalError::Operator("in".into())
    );
}

#[test]
fn match_labels_and_expressions_are_anded() {
    let l = labels(&[("app", "web"), ("tier", "front")]);
    let mut s = expr("tier", "Exists", &[]);
    s.match_labels = Some(labels(&[("app", "web")]));
    assert!(selects(&s, &l).unwrap());
    s.match_labels = Some(labels(&[("app", "db")]));
    assert!(!selects(&s, &l).unwrap());
    assert!(selects(&LabelSelector::default(), &l).unwrap());
}

#[test]
fn unreadable_policies_are_errors_not_guesses() {
    let mut c = world();
    c.policies([policy(
        "a",
        ingress(
            vec![],
            vec![NetworkPolicyPort {
                protocol: Some("ICMP".into()),
                ..Default::default()
            }],
        ),
    )]);
    assert_eq!(
        c.can_reach(("a", "web"), Dest::Pod("a", "db"), 1, T)
            .unwrap_err(),
        EvalError::Protocol("ICMP".into())
    );
    let mut bad = world();
    bad.policies([policy(
        "a",
        egress_only(
            vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: "10.0.0.1/8".into(),
                    except: None,
                }),
                ..Default::default()
            }],
            vec![],
        ),
    )]);
    assert!(matches!(
        bad.can_reach(("a", "web"), Dest::Ip("10.0.0.9".parse().unwrap()), 1, T),
        Err(EvalError::Cidr(_))
    ));
    let mut empty = world();
    empty.policies([policy(
        "a",
        ingress(vec![NetworkPolicyPeer::default()], vec![tcp(1)]),
    )]);
    assert_eq!(
        empty
            .can_reach(("a", "web"), Dest::Pod("a", "db"), 1, T)
            .unwrap_err(),
        EvalError::EmptyPeer
    );
    assert!(matches!(
        c.can_reach(("a", "nope"), Dest::Pod("a", "db"), 1, T),
        Err(EvalError::NoSuchPod { .. })
    ));
}
