//! A NetworkPolicy evaluator: "can pod A reach B on port P/protocol", over
//! typed `networking.k8s.io/v1` objects, with the standard semantics.
//!
//! What it implements (Kubernetes documentation, "Network Policies"):
//! - a pod is isolated for ingress (egress) iff some policy in its own
//!   namespace selects it (`podSelector`, empty = every pod) and lists
//!   `Ingress` (`Egress`) in `policyTypes`; when `policyTypes` is absent,
//!   `Ingress` is implied and `Egress` is implied iff the policy has egress
//!   rules (the API server's defaulting);
//! - an isolated direction allows what the union of the selecting
//!   policies' rules allows; a non-isolated one allows everything;
//! - a rule matches when one of its peers matches (no peers = every peer)
//!   and one of its ports matches (no ports = every port);
//! - a peer is `podSelector` alone (pods of the policy's namespace),
//!   `namespaceSelector` alone (every pod of the matching namespaces), both
//!   (pods matching the first in namespaces matching the second), or
//!   `ipBlock` (a CIDR minus its `except` blocks);
//! - a port is a protocol (default TCP) with an optional number or name
//!   (the destination pod's container port of that name) and `endPort`;
//! - pod to pod needs egress allowed at the source AND ingress allowed at
//!   the destination; pod to an address outside the cluster needs the
//!   source's egress only;
//! - selectors: `matchLabels` and `matchExpressions` (`In`, `NotIn`,
//!   `Exists`, `DoesNotExist`), ANDed; every namespace carries the
//!   `kubernetes.io/metadata.name` label the API server sets.
//!
//! Where the documentation leaves the CNI a choice, the evaluator takes the
//! more permissive reading, so a proof of isolation holds on every CNI:
//! an `ipBlock` is matched against pod addresses too (the documentation
//! says pod IPs "may or may not" match, as traffic to them may be NATed).
//! Destinations are pods or addresses after Service translation: a
//! ClusterIP is resolved by the caller to the pod behind it, as kube-proxy
//! does before the policy is applied on the common CNIs. Traffic from the
//! node itself (kubelet probes, `kubectl port-forward`) is not modelled.
//! A policy the evaluator cannot read (an unknown operator or protocol, an
//! empty peer, a bad CIDR) is an error, never a guess.

use crate::cidr::{Cidr, CidrError};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// The label the API server puts on every namespace, holding its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A transport protocol a NetworkPolicy port names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(text: Option<&str>) -> Result<Protocol, EvalError> {
        match text {
            None | Some("TCP") => Ok(Protocol::Tcp),
            Some("UDP") => Ok(Protocol::Udp),
            Some("SCTP") => Ok(Protocol::Sctp),
            Some(other) => Err(EvalError::Protocol(other.to_string())),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        })
    }
}

/// A policy the evaluator cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("label selector operator `{0}` is not In, NotIn, Exists or DoesNotExist\n  fix: use one of those four (they are all Kubernetes has)")]
    Operator(String),
    #[error("protocol `{0}` is not TCP, UDP or SCTP\n  fix: use one of those (case matters)")]
    Protocol(String),
    #[error("ipBlock: {0}")]
    Cidr(#[from] CidrError),
    #[error("a NetworkPolicy peer sets ipBlock together with a selector; Kubernetes refuses that\n  fix: split it into two peers")]
    MixedPeer,
    #[error("a NetworkPolicy peer sets none of podSelector, namespaceSelector and ipBlock; Kubernetes refuses that\n  fix: give the peer a selector (`podSelector: {{}}` means every pod of the policy's namespace)")]
    EmptyPeer,
    #[error("no pod `{namespace}/{name}` in the model\n  fix: add it with Cluster::pod before asking about it")]
    NoSuchPod { namespace: String, name: String },
}

/// A container port a named NetworkPolicy port can refer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod as the evaluator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ip: IpAddr,
    pub ports: Vec<NamedPort>,
}

/// Where traffic goes: a pod of the model, or an address outside the
/// cluster's pods (the internet, a node, the metadata service).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest<'a> {
    Pod(&'a str, &'a str),
    Ip(IpAddr),
}

/// Namespaces, pods and the NetworkPolicies in force: the world the
/// questions are asked about.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pods: Vec<Pod>,
    policies: Vec<NetworkPolicy>,
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster::default()
    }

    /// Adds (or relabels) a namespace; [`NAMESPACE_NAME_LABEL`] is added
    /// as the API server would.
    pub fn namespace(&mut self, name: &str, labels: &BTreeMap<String, String>) -> &mut Self {
        let mut labels = labels.clone();
        labels.insert(NAMESPACE_NAME_LABEL.into(), name.into());
        self.namespaces.insert(name.into(), labels);
        self
    }

    /// Adds a pod (its namespace too, unlabelled, when unknown).
    pub fn pod(&mut self, pod: Pod) -> &mut Self {
        if !self.namespaces.contains_key(&pod.namespace) {
            let ns = pod.namespace.clone();
            self.namespace(&ns, &BTreeMap::new());
        }
        self.pods.push(pod);
        self
    }

    /// Adds NetworkPolicies (their `metadata.namespace` places them; none
    /// means `default`).
    pub fn policies(&mut self, policies: impl IntoIterator<Item = NetworkPolicy>) -> &mut Self {
        self.policies.extend(policies);
        self
    }

    fn find(&self, namespace: &str, name: &str) -> Result<&Pod, EvalError> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
            .ok_or_else(|| EvalError::NoSuchPod {
                namespace: namespace.into(),
                name: name.into(),
            })
    }

    /// Whether the pod `from` (namespace, name) can open `port`/`protocol`
    /// at `to`.
    pub fn can_reach(
        &self,
        from: (&str, &str),
        to: Dest<'_>,
        port: u16,
        protocol: Protocol,
    ) -> Result<bool, EvalError> {
        let src = self.find(from.0, from.1)?;
        match to {
            Dest::Ip(ip) => {
                let peer = Peer::Ip(ip);
                self.allowed(src, Direction::Egress, &peer, port, protocol, None)
            }
            Dest::Pod(ns, name) => {
                let dst = self.find(ns, name)?;
                let out = self.allowed(
                    src,
                    Direction::Egress,
                    &Peer::Pod(dst),
                    port,
                    protocol,
                    Some(dst),
                )?;
                let inn = self.allowed(
                    dst,
                    Direction::Ingress,
                    &Peer::Pod(src),
                    port,
                    protocol,
                    Some(dst),
                )?;
                Ok(out && inn)
            }
        }
    }

    /// Whether `pod`'s `direction` allows traffic with `peer` on `port`
    /// (named ports resolve against `target`, the destination pod).
    fn allowed(
        &self,
        pod: &Pod,
        direction: Direction,
        peer: &Peer<'_>,
        port: u16,
        protocol: Protocol,
        target: Option<&Pod>,
    ) -> Result<bool, EvalError> {
        let mut isolated = false;
        for policy in &self.policies {
            let ns = policy.metadata.namespace.as_deref().unwrap_or("default");
            if ns != pod.namespace {
                continue;
            }
            let Some(spec) = &policy.spec else { continue };
            let empty = LabelSelector::default();
            let selector = spec.pod_selector.as_ref().unwrap_or(&empty);
            if !selects(selector, &pod.labels)? {
                continue;
            }
            let types: Vec<&str> = match &spec.policy_types {
                Some(t) => t.iter().map(String::as_str).collect(),
                None => {
                    let mut t = vec!["Ingress"];
                    if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                        t.push("Egress");
                    }
                    t
                }
            };
            if !types.contains(&direction.name()) {
                continue;
            }
            isolated = true;
            let rules: Vec<Rule<'_>> = match direction {
                Direction::Ingress => spec
                    .ingress
                    .iter()
                    .flatten()
                    .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                    .collect(),
                Direction::Egress => spec
                    .egress
                    .iter()
                    .flatten()
                    .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                    .collect(),
            };
            for (peers, ports) in rules {
                if self.peers_match(ns, peers, peer)? && ports_match(ports, port, protocol, target)?
                {
                    return Ok(true);
                }
            }
        }
        Ok(!isolated)
    }

    fn peers_match(
        &self,
        policy_ns: &str,
        peers: Option<&Vec<NetworkPolicyPeer>>,
        peer: &Peer<'_>,
    ) -> Result<bool, EvalError> {
        let Some(peers) = peers.filter(|p| !p.is_empty()) else {
            return Ok(true);
        };
        for p in peers {
            if self.peer_matches(policy_ns, p, peer)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn peer_matches(
        &self,
        policy_ns: &str,
        rule: &NetworkPolicyPeer,
        peer: &Peer<'_>,
    ) -> Result<bool, EvalError> {
        if let Some(block) = &rule.ip_block {
            if rule.pod_selector.is_some() || rule.namespace_selector.is_some() {
                return Err(EvalError::MixedPeer);
            }
            let ip = match peer {
                Peer::Ip(ip) => *ip,
                Peer::Pod(p) => p.ip,
            };
            let cidr: Cidr = block.cidr.parse()?;
            if !cidr.contains(ip) {
                return Ok(false);
            }
            for ex in block.except.iter().flatten() {
                if ex.parse::<Cidr>()?.contains(ip) {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        if rule.pod_selector.is_none() && rule.namespace_selector.is_none() {
            return Err(EvalError::EmptyPeer);
        }
        let Peer::Pod(pod) = peer else {
            // Selectors name pods; an address outside the pods matches none.
            return Ok(false);
        };
        let ns_ok = match &rule.namespace_selector {
            None => pod.namespace == policy_ns,
            Some(sel) => {
                let labels = self
                    .namespaces
                    .get(&pod.namespace)
                    .cloned()
                    .unwrap_or_default();
                selects(sel, &labels)?
            }
        };
        // namespaceSelector alone: every pod of those namespaces.
        let pod_ok = match &rule.pod_selector {
            None => true,
            Some(sel) => selects(sel, &pod.labels)?,
        };
        Ok(ns_ok && pod_ok)
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        }
    }
}

/// A rule's peers and ports, ingress or egress alike.
type Rule<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

/// The other end of the traffic, as a rule sees it.
enum Peer<'a> {
    Pod(&'a Pod),
    Ip(IpAddr),
}

fn ports_match(
    ports: Option<&Vec<NetworkPolicyPort>>,
    port: u16,
    protocol: Protocol,
    target: Option<&Pod>,
) -> Result<bool, EvalError> {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return Ok(true);
    };
    for p in ports {
        if Protocol::parse(p.protocol.as_deref())? != protocol {
            continue;
        }
        let hit = match &p.port {
            None => true,
            Some(IntOrString::Int(n)) => {
                let end = p.end_port.unwrap_or(*n);
                (*n..=end).contains(&i32::from(port))
            }
            Some(IntOrString::String(name)) => target.is_some_and(|t| {
                t.ports
                    .iter()
                    .any(|np| &np.name == name && np.port == port && np.protocol == protocol)
            }),
        };
        if hit {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `selector` selects `labels` (an empty selector selects all).
pub fn selects(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, EvalError> {
    for (k, v) in selector.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return Ok(false);
        }
    }
    for req in selector.match_expressions.iter().flatten() {
        let values = req.values.as_deref().unwrap_or_default();
        let have = labels.get(&req.key);
        let ok = match req.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            other => return Err(EvalError::Operator(other.to_string())),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests;
