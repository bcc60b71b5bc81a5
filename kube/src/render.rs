//! One bottle as Kubernetes objects: a [`BottleSpec`] becomes typed
//! `k8s-openapi` objects ([`Rendered`]), then deterministic YAML.
//!
//! The layout (docs/kubernetes.md has the why of each line):
//! - a namespace per bottle, `bottle-<name>`, labelled `dev.bottle.name`
//!   and Pod Security `restricted`;
//! - the sidecar: a Deployment (one replica, `Recreate`) and a Service with
//!   a fixed ClusterIP, its policy in a ConfigMap, its CA key and
//!   credentials in a Secret mounted into it alone, its state on a claim;
//! - the agent: a Pod with no service-account token, DNS pinned to the
//!   sidecar's ClusterIP, the proxy variables pointing there, non-root,
//!   every capability dropped, read-only root, seccomp `RuntimeDefault`;
//! - NetworkPolicies: default deny both ways; the agent may open only the
//!   sidecar's ports; the sidecar accepts only the agent; the sidecar may
//!   go out to the internet less the private, cluster, node and metadata
//!   ranges, and to DNS;
//! - an operator ServiceAccount and Role for the host CLI (port-forward to
//!   supervise, exec in the agent), used through short-lived tokens.

use crate::cidr::Cidr;
use crate::spec::{BottleSpec, SidecarDns};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, ConfigMapProjection, ConfigMapVolumeSource,
    Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource, EnvVar, ExecAction, KeyToPath,
    Namespace, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    Pod, PodDNSConfig, PodDNSConfigOption, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, Secret, SecretProjection,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Sysctl, Volume,
    VolumeMount, VolumeProjection, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

/// Label naming the bottle (the same as on every other runtime).
pub const LABEL_NAME: &str = "dev.bottle.name";
/// Label naming a pod's role: `agent` or `sidecar`.
pub const LABEL_ROLE: &str = "dev.bottle.role";

pub const PROXY_PORT: u16 = 3128;
pub const DNS_PORT: u16 = 53;
pub const HTTP_PORT: u16 = 80;
pub const HTTPS_PORT: u16 = 443;
pub const GIT_PORT: u16 = 8080;
pub const SUPERVISE_PORT: u16 = 8765;

/// The sidecar's user: no name in the image needed, never root.
pub const SIDECAR_UID: i64 = 65532;
/// Where the sidecar reads policy.json, ca.pem, ca-key.pem, secrets.json.
pub const SIDECAR_CONFIG_DIR: &str = "/etc/bottle";
/// The sidecar's state claim: git mirrors, supervise queue.
pub const SIDECAR_STATE_DIR: &str = "/var/lib/bottle";

/// Object names inside a bottle's namespace.
pub mod names {
    pub const SIDECAR: &str = "sidecar";
    pub const AGENT: &str = "agent";
    pub const POLICY: &str = "sidecar-policy";
    pub const CA: &str = "bottle-ca";
    pub const SECRET: &str = "sidecar-secrets";
    pub const CREDENTIALS: &str = "agent-credentials";
    pub const GITCONFIG: &str = "agent-gitconfig";
    pub const STATE: &str = "sidecar-state";
    pub const WORKSPACE: &str = "workspace";
    pub const OPERATOR: &str = "bottle-operator";
    pub const DEFAULT_DENY: &str = "default-deny";
    pub const AGENT_EGRESS: &str = "agent-egress";
    pub const SIDECAR_INGRESS: &str = "sidecar-ingress";
    pub const SIDECAR_EGRESS: &str = "sidecar-egress";
}

/// Ranges the sidecar never reaches, whatever the cluster's own ranges:
/// each with the reason.
pub const NEVER: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this network"),
    ("10.0.0.0/8", "private (RFC 1918): clusters, nodes, the LAN"),
    (
        "100.64.0.0/10",
        "shared/CGNAT; 100.100.100.200 is Alibaba's metadata",
    ),
    ("127.0.0.0/8", "loopback"),
    (
        "169.254.0.0/16",
        "link-local: 169.254.169.254 is the cloud metadata service",
    ),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved, and broadcast"),
];

/// Why a bottle cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("bottle name `{0}` does not make a Kubernetes namespace (`bottle-<name>` must be at most 63 lower-case letters, digits and `-`, ending in a letter or digit)\n  fix: choose a shorter name with --name")]
    Name(String),
    #[error("--service-ip {ip} is not inside the Service CIDR {cidr}\n  fix: pass an address of {cidr}, or the cluster's real range with --service-cidr")]
    ServiceIpOutside { ip: Ipv4Addr, cidr: Cidr },
    #[error("the Service CIDR {0} is not an IPv4 block of at least 16 addresses\n  fix: pass the cluster's IPv4 --service-cluster-ip-range with --service-cidr (IPv6-only clusters are not rendered yet)")]
    ServiceCidr(Cidr),
    #[error("--service-ip {0} is the Service CIDR's network address, the API server's (first) or the cluster DNS's (tenth) address\n  fix: pass another address of the range")]
    ServiceIpReserved(Ipv4Addr),
    #[error("{what} `{value}` is not a Kubernetes quantity\n  fix: write a number with an optional suffix, e.g. 1Gi or 500Mi")]
    Quantity { what: &'static str, value: String },
}

/// Which file of `-o DIR` an object goes to; files apply in name order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    Namespace,
    Secrets,
    Config,
    Storage,
    Sidecar,
    Agent,
    Network,
    Access,
}

impl Part {
    pub fn file_name(self) -> &'static str {
        match self {
            Part::Namespace => "00-namespace.yaml",
            Part::Secrets => "05-secrets.yaml",
            Part::Config => "10-config.yaml",
            Part::Storage => "20-storage.yaml",
            Part::Sidecar => "30-sidecar.yaml",
            Part::Agent => "40-agent.yaml",
            Part::Network => "50-network.yaml",
            Part::Access => "60-access.yaml",
        }
    }
}

/// Every object of one bottle, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub name: String,
    pub namespace: Namespace,
    /// The sidecar Service's ClusterIP: the agent's DNS server and proxy.
    pub sidecar_ip: Ipv4Addr,
    pub config_maps: Vec<ConfigMap>,
    pub claims: Vec<PersistentVolumeClaim>,
    pub sidecar: Deployment,
    pub service: Service,
    pub agent: Pod,
    pub network_policies: Vec<NetworkPolicy>,
    pub operator: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    /// The objects holding the per-install material (CA ConfigMap, Secret,
    /// the agent's placeholders), when [`BottleSpec::materials`] was given.
    pub secrets: Option<Secrets>,
    /// The sidecar's ports, as the Service and the NetworkPolicies list them.
    pub ports: Vec<(String, u16, &'static str)>,
    /// Credential placeholders the agent reads (names), for the header.
    pub credential_vars: Vec<String>,
}

/// The objects that hold what only one install has.
#[derive(Debug, Clone, PartialEq)]
pub struct Secrets {
    pub ca: ConfigMap,
    pub secret: Secret,
    pub credentials: Option<ConfigMap>,
}

/// The namespace of bottle `name`.
pub fn namespace_of(name: &str) -> String {
    format!("bottle-{name}")
}

/// The sidecar Service's ClusterIP: `explicit` when given (checked), else
/// derived from the bottle's name, so a render is the same every time and
/// two bottles rarely meet. Addresses come from past the range's static
/// band (the lowest `min(max(16, size/16), 256)` addresses, kept for
/// hand-picked IPs by Kubernetes, KEP-3070), where a collision with another
/// Service fails `kubectl apply` loudly ("provided IP is already
/// allocated"); `--service-ip` then picks another.
pub fn sidecar_ip(
    name: &str,
    cidr: &Cidr,
    explicit: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, RenderError> {
    let size = cidr.size();
    if !cidr.addr().is_ipv4() || size < 16 {
        return Err(RenderError::ServiceCidr(*cidr));
    }
    let base = match cidr.addr() {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(_) => unreachable!("checked above"),
    };
    if let Some(ip) = explicit {
        if !cidr.contains(ip.into()) {
            return Err(RenderError::ServiceIpOutside { ip, cidr: *cidr });
        }
        if matches!(u32::from(ip) - base, 0 | 1 | 10) {
            return Err(RenderError::ServiceIpReserved(ip));
        }
        return Ok(ip);
    }
    let band = (size / 16).clamp(16, 256);
    // The last address is left alone too (a broadcast on some setups).
    let span = size - band - 1;
    let offset = band + u128::from(fnv1a(namespace_of(name).as_bytes())) % span;
    Ok(Ipv4Addr::from(base + offset as u32))
}

/// FNV-1a, 64 bits: a stable hash with no dependency (not for security:
/// it only spreads names over addresses).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn quantity(what: &'static str, value: &str) -> Result<Quantity, RenderError> {
    let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &value[digits.len()..];
    let number_ok = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().filter(|b| *b == b'.').count() <= 1
        && !digits.starts_with('.');
    let suffix_ok = matches!(
        suffix,
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "m" | "k" | "M" | "G" | "T" | "P" | "E"
    );
    if number_ok && suffix_ok {
        Ok(Quantity(value.to_string()))
    } else {
        Err(RenderError::Quantity {
            what,
            value: value.to_string(),
        })
    }
}

fn labels(name: &str, role: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([(LABEL_NAME.to_string(), name.to_string())]);
    if let Some(r) = role {
        l.insert(LABEL_ROLE.to_string(), r.to_string());
    }
    l
}

fn meta(name: &str, ns: &str, bottle: &str, role: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(ns.to_string()),
        labels: Some(labels(bottle, role)),
        ..Default::default()
    }
}

fn role_selector(bottle: &str, role: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(bottle, Some(role))),
        match_expressions: None,
    }
}

fn drop_all() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        ..Default::default()
    }
}

fn pod_security(uid: i64, sysctls: Option<Vec<Sysctl>>) -> PodSecurityContext {
    PodSecurityContext {
        fs_group: Some(uid),
        run_as_group: Some(uid),
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        sysctls,
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("1Gi".into())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn claim_volume(name: &str, claim: &str) -> Volume {
    Volume {
        name: name.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.into(),
            read_only: None,
        }),
        ..Default::default()
    }
}

fn key(key: &str, path: &str) -> KeyToPath {
    KeyToPath {
        key: key.into(),
        path: path.into(),
        mode: None,
    }
}

fn np_port(port: u16, protocol: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some(protocol.into()),
        end_port: None,
    }
}

/// Renders `spec` into typed objects.
pub fn render(spec: &BottleSpec) -> Result<Rendered, RenderError> {
    let name = spec.name.as_str();
    let ns = namespace_of(name);
    if !is_dns_label(&ns) {
        return Err(RenderError::Name(name.to_string()));
    }
    let cluster = &spec.cluster;
    let ip = sidecar_ip(name, &cluster.service_cidr, cluster.service_ip)?;
    let state_size = quantity("--state-size", &cluster.state_size)?;
    let workspace_size = quantity("--workspace-size", &cluster.workspace_size)?;

    let mut ports: Vec<(String, u16, &'static str)> = vec![
        ("proxy".into(), PROXY_PORT, "TCP"),
        ("dns".into(), DNS_PORT, "UDP"),
        ("dns-tcp".into(), DNS_PORT, "TCP"),
        ("http".into(), HTTP_PORT, "TCP"),
        ("https".into(), HTTPS_PORT, "TCP"),
    ];
    if spec.sidecar.git {
        ports.push(("git".into(), GIT_PORT, "TCP"));
    }
    if spec.sidecar.supervise {
        ports.push(("supervise".into(), SUPERVISE_PORT, "TCP"));
    }

    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.clone()),
            labels: Some(BTreeMap::from([
                (LABEL_NAME.to_string(), name.to_string()),
                // The API server refuses any pod of this namespace that is
                // not non-root, capability-free, seccomp-confined.
                (
                    "pod-security.kubernetes.io/enforce".to_string(),
                    "restricted".to_string(),
                ),
                (
                    "pod-security.kubernetes.io/enforce-version".to_string(),
                    "v1.33".to_string(),
                ),
            ])),
            ..Default::default()
        },
        ..Default::default()
    };

    let mut config_maps = vec![ConfigMap {
        metadata: meta(names::POLICY, &ns, name, None),
        data: Some(BTreeMap::from([(
            "policy.json".to_string(),
            spec.sidecar.policy_json.clone(),
        )])),
        ..Default::default()
    }];
    if let Some(git) = &spec.git_config {
        config_maps.push(ConfigMap {
            metadata: meta(names::GITCONFIG, &ns, name, None),
            data: Some(BTreeMap::from([("gitconfig".to_string(), git.clone())])),
            ..Default::default()
        });
    }

    let claim = |claim_name: &str, size: &Quantity| PersistentVolumeClaim {
        metadata: meta(claim_name, &ns, name, None),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), size.clone())])),
                limits: None,
            }),
            storage_class_name: cluster.storage_class.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let claims = vec![
        claim(names::STATE, &state_size),
        claim(names::WORKSPACE, &workspace_size),
    ];

    let sidecar = sidecar_deployment(spec, &ns, ip, &ports);
    let service = Service {
        metadata: meta(names::SIDECAR, &ns, name, Some("sidecar")),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(ip.to_string()),
            cluster_ips: Some(vec![ip.to_string()]),
            ip_families: Some(vec!["IPv4".into()]),
            ip_family_policy: Some("SingleStack".into()),
            selector: Some(labels(name, Some("sidecar"))),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, proto)| ServicePort {
                        name: Some(n.clone()),
                        port: i32::from(*p),
                        protocol: Some((*proto).into()),
                        target_port: Some(IntOrString::Int(i32::from(*p))),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let agent = agent_pod(spec, &ns, ip);
    let network_policies = network_policies(spec, &ns, &ports);

    let operator = ServiceAccount {
        metadata: meta(names::OPERATOR, &ns, name, None),
        automount_service_account_token: Some(false),
        ..Default::default()
    };
    let rule = |resources: &[&str], verbs: &[&str], only: Option<&str>| PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        resource_names: only.map(|n| vec![n.to_string()]),
        ..Default::default()
    };
    let role = Role {
        metadata: meta(names::OPERATOR, &ns, name, None),
        rules: Some(vec![
            rule(&["pods"], &["get", "list", "watch"], None),
            rule(&["pods/log"], &["get"], None),
            // Supervise (8765) through the API server; the sidecar's pod
            // name is the Deployment's, not known here.
            rule(&["pods/portforward"], &["create", "get"], None),
            // `bottle exec`: the agent only, never the sidecar (its
            // secrets).
            rule(
                &["pods/exec", "pods/attach"],
                &["create", "get"],
                Some(names::AGENT),
            ),
        ]),
    };
    let role_binding = RoleBinding {
        metadata: meta(names::OPERATOR, &ns, name, None),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: names::OPERATOR.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: names::OPERATOR.into(),
            namespace: Some(ns.clone()),
            api_group: None,
        }]),
    };

    let secrets = spec.materials.as_ref().map(|m| Secrets {
        ca: ConfigMap {
            metadata: meta(names::CA, &ns, name, None),
            data: Some(BTreeMap::from([(
                "ca.pem".to_string(),
                m.ca_cert_pem.clone(),
            )])),
            ..Default::default()
        },
        secret: Secret {
            metadata: meta(names::SECRET, &ns, name, None),
            type_: Some("Opaque".into()),
            string_data: Some(BTreeMap::from([
                ("ca-key.pem".to_string(), m.ca_key_pem.clone()),
                ("secrets.json".to_string(), m.secrets_json.clone()),
            ])),
            ..Default::default()
        },
        credentials: (!spec.credential_vars.is_empty()).then(|| ConfigMap {
            metadata: meta(names::CREDENTIALS, &ns, name, None),
            data: Some(
                m.placeholders
                    .iter()
                    .filter(|(k, _)| spec.credential_vars.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            ..Default::default()
        }),
    });

    Ok(Rendered {
        name: name.to_string(),
        namespace,
        sidecar_ip: ip,
        config_maps,
        claims,
        sidecar,
        service,
        agent,
        network_policies,
        operator,
        role,
        role_binding,
        secrets,
        ports,
        credential_vars: spec.credential_vars.clone(),
    })
}

fn sidecar_deployment(
    spec: &BottleSpec,
    ns: &str,
    ip: Ipv4Addr,
    ports: &[(String, u16, &'static str)],
) -> Deployment {
    let name = spec.name.as_str();
    let any = |port: u16| format!("0.0.0.0:{port}");
    // The pod has one interface, and the NetworkPolicies below admit only
    // the agent: listening on every address of the pod is listening on its
    // internal address. Allowed names resolve to the Service's ClusterIP.
    // No --audit: decisions go to stdout, where `kubectl logs` (pods/log,
    // which the operator Role grants) and the cluster's log collection read
    // them; they never hold a secret.
    let mut args: Vec<String> = [
        "run",
        "--policy",
        &format!("{SIDECAR_CONFIG_DIR}/policy.json"),
        "--dns-answer",
        &ip.to_string(),
        "--proxy-listen",
        &any(PROXY_PORT),
        "--dns-listen",
        &any(DNS_PORT),
        "--http-listen",
        &any(HTTP_PORT),
        "--https-listen",
        &any(HTTPS_PORT),
        "--health-file",
        "/tmp/bottle-sidecar.proxy-addr",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if spec.sidecar.git {
        args.extend([
            "--git-listen".into(),
            any(GIT_PORT),
            "--git-state".into(),
            format!("{SIDECAR_STATE_DIR}/git"),
        ]);
    } else {
        args.extend(["--git-listen".into(), "off".into()]);
    }
    if spec.sidecar.supervise {
        args.extend([
            "--supervise-state".into(),
            format!("{SIDECAR_STATE_DIR}/supervise"),
            "--supervise-listen".into(),
            any(SUPERVISE_PORT),
        ]);
    }
    let config_sources = vec![
        VolumeProjection {
            config_map: Some(ConfigMapProjection {
                name: names::POLICY.into(),
                items: Some(vec![key("policy.json", "policy.json")]),
                optional: Some(false),
            }),
            ..Default::default()
        },
        VolumeProjection {
            config_map: Some(ConfigMapProjection {
                name: names::CA.into(),
                items: Some(vec![key("ca.pem", "ca.pem")]),
                optional: Some(false),
            }),
            ..Default::default()
        },
        VolumeProjection {
            secret: Some(SecretProjection {
                name: names::SECRET.into(),
                items: Some(vec![
                    key("ca-key.pem", "ca-key.pem"),
                    key("secrets.json", "secrets.json"),
                ]),
                optional: Some(false),
            }),
            ..Default::default()
        },
    ];
    let container = Container {
        name: names::SIDECAR.into(),
        image: Some(spec.sidecar.image.clone()),
        args: Some(args),
        ports: Some(
            ports
                .iter()
                .map(|(n, p, proto)| ContainerPort {
                    name: Some(n.clone()),
                    container_port: i32::from(*p),
                    protocol: Some((*proto).into()),
                    ..Default::default()
                })
                .collect(),
        ),
        // exec, not tcpSocket: a kubelet probe from the node would need a
        // hole in the NetworkPolicies on some CNIs.
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![
                    "/usr/local/bin/bottle-sidecar".into(),
                    "health".into(),
                ]),
            }),
            period_seconds: Some(5),
            ..Default::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("10m".into())),
                ("memory".to_string(), Quantity("32Mi".into())),
            ])),
            limits: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("1".into())),
                ("memory".to_string(), Quantity("256Mi".into())),
            ])),
            ..Default::default()
        }),
        security_context: Some(drop_all()),
        volume_mounts: Some(vec![
            mount("config", SIDECAR_CONFIG_DIR, true),
            mount("state", SIDECAR_STATE_DIR, false),
            mount("tmp", "/tmp", false),
        ]),
        ..Default::default()
    };
    // With resolvers of its own, the sidecar asks them and nothing of the
    // cluster; otherwise the cluster's DNS (the egress rules match).
    let (dns_policy, dns_config) = match &spec.cluster.sidecar_dns {
        SidecarDns::Cluster => (None, None),
        SidecarDns::Servers(servers) => (
            Some("None".to_string()),
            Some(PodDNSConfig {
                nameservers: Some(servers.iter().map(IpAddr::to_string).collect()),
                options: None,
                searches: None,
            }),
        ),
    };
    let pod = PodSpec {
        automount_service_account_token: Some(false),
        dns_config,
        dns_policy,
        enable_service_links: Some(false),
        host_ipc: Some(false),
        host_network: Some(false),
        host_pid: Some(false),
        // Ports 53, 80 and 443 without any capability: a namespaced sysctl
        // that Pod Security `restricted` admits.
        security_context: Some(pod_security(
            SIDECAR_UID,
            Some(vec![Sysctl {
                name: "net.ipv4.ip_unprivileged_port_start".into(),
                value: "0".into(),
            }]),
        )),
        containers: vec![container],
        volumes: Some(vec![
            Volume {
                name: "config".into(),
                projected: Some(ProjectedVolumeSource {
                    // Group-readable: the sidecar reads through fsGroup.
                    default_mode: Some(0o440),
                    sources: Some(config_sources),
                }),
                ..Default::default()
            },
            claim_volume("state", names::STATE),
            empty_dir("tmp"),
        ]),
        ..Default::default()
    };
    Deployment {
        metadata: meta(names::SIDECAR, ns, name, Some("sidecar")),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: role_selector(name, "sidecar"),
            // One writer of the state claim at a time.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(name, Some("sidecar"))),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Bytes as Kubernetes writes them: the largest binary suffix that divides.
fn memory_quantity(bytes: u64) -> String {
    for (shift, suffix) in [(40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

fn agent_pod(spec: &BottleSpec, ns: &str, ip: Ipv4Addr) -> Pod {
    let name = spec.name.as_str();
    let a = &spec.agent;
    let proxy = format!("http://{ip}:{PROXY_PORT}");
    let no_proxy = format!("localhost,127.0.0.1,::1,{ip}");
    let mut env: BTreeMap<String, String> = a.env.clone();
    for k in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        env.insert(k.into(), proxy.clone());
        env.insert(k.to_lowercase(), proxy.clone());
    }
    env.insert("NO_PROXY".into(), no_proxy.clone());
    env.insert("no_proxy".into(), no_proxy);
    env.insert("BOTTLE_SIDECAR".into(), ip.to_string());
    env.insert("HOME".into(), a.home.clone());
    for k in &a.ca_env {
        env.insert(k.clone(), a.ca_path.clone());
    }
    let (ca_dir, ca_file) = a
        .ca_path
        .rsplit_once('/')
        .map(|(d, f)| (d.to_string(), f.to_string()))
        .unwrap_or_else(|| ("/".into(), a.ca_path.clone()));
    let mut limits = BTreeMap::new();
    if let Some(cpus) = a.cpus {
        let milli = (cpus * 1000.0).round() as u64;
        let text = if milli.is_multiple_of(1000) {
            (milli / 1000).to_string()
        } else {
            format!("{milli}m")
        };
        limits.insert("cpu".to_string(), Quantity(text));
    }
    if let Some(bytes) = a.memory_bytes {
        limits.insert("memory".to_string(), Quantity(memory_quantity(bytes)));
    }
    let mut mounts = vec![
        mount("workspace", &a.workdir, false),
        mount("home", &a.home, false),
        mount("tmp", "/tmp", false),
        mount("ca", &ca_dir, true),
    ];
    let mut volumes = vec![
        claim_volume("workspace", names::WORKSPACE),
        empty_dir("home"),
        empty_dir("tmp"),
        Volume {
            name: "ca".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names::CA.into(),
                items: Some(vec![key("ca.pem", &ca_file)]),
                default_mode: Some(0o444),
                optional: Some(false),
            }),
            ..Default::default()
        },
    ];
    if spec.git_config.is_some() {
        mounts.push(VolumeMount {
            sub_path: Some("gitconfig".into()),
            ..mount("gitconfig", "/etc/gitconfig", true)
        });
        volumes.push(Volume {
            name: "gitconfig".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names::GITCONFIG.into(),
                default_mode: Some(0o444),
                optional: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let container = Container {
        name: names::AGENT.into(),
        image: Some(a.image.clone()),
        command: Some(a.command.clone()),
        working_dir: Some(a.workdir.clone()),
        env: Some(
            env.into_iter()
                .map(|(name, value)| EnvVar {
                    name,
                    value: Some(value),
                    value_from: None,
                })
                .collect(),
        ),
        env_from: (!spec.credential_vars.is_empty()).then(|| {
            vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: names::CREDENTIALS.into(),
                    optional: Some(false),
                }),
                ..Default::default()
            }]
        }),
        resources: (!limits.is_empty()).then(|| ResourceRequirements {
            // Requests equal limits: the agent's share is reserved, and
            // the cost model counts it.
            requests: Some(limits.clone()),
            limits: Some(limits),
            ..Default::default()
        }),
        security_context: Some(drop_all()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    Pod {
        metadata: meta(names::AGENT, ns, name, Some("agent")),
        spec: Some(PodSpec {
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            host_ipc: Some(false),
            host_network: Some(false),
            host_pid: Some(false),
            // The sidecar is the agent's only resolver: it answers allowed
            // names with its own address and refuses the rest.
            dns_policy: Some("None".into()),
            dns_config: Some(PodDNSConfig {
                nameservers: Some(vec![ip.to_string()]),
                options: Some(vec![PodDNSConfigOption {
                    name: Some("ndots".into()),
                    value: Some("1".into()),
                }]),
                searches: None,
            }),
            runtime_class_name: spec.cluster.runtime_class.clone(),
            restart_policy: Some("Always".into()),
            security_context: Some(pod_security(a.uid, None)),
            containers: vec![container],
            volumes: Some(volumes),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn network_policies(
    spec: &BottleSpec,
    ns: &str,
    ports: &[(String, u16, &'static str)],
) -> Vec<NetworkPolicy> {
    let name = spec.name.as_str();
    let policy = |pname: &str, np: NetworkPolicySpec| NetworkPolicy {
        metadata: meta(pname, ns, name, None),
        spec: Some(np),
    };
    let sidecar_ports: Vec<NetworkPolicyPort> = ports
        .iter()
        .map(|(_, p, proto)| np_port(*p, proto))
        .collect();
    let pods = |role: &str| NetworkPolicyPeer {
        pod_selector: Some(role_selector(name, role)),
        ..Default::default()
    };
    let dns_ports = vec![np_port(DNS_PORT, "UDP"), np_port(DNS_PORT, "TCP")];
    let dns_peers: Vec<NetworkPolicyPeer> = match &spec.cluster.sidecar_dns {
        SidecarDns::Cluster => vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    crate::netpol::NAMESPACE_NAME_LABEL.to_string(),
                    "kube-system".to_string(),
                )])),
                match_expressions: None,
            }),
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "k8s-app".to_string(),
                    "kube-dns".to_string(),
                )])),
                match_expressions: None,
            }),
            ip_block: None,
        }],
        SidecarDns::Servers(servers) => servers
            .iter()
            .map(|ip| NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: match ip {
                        IpAddr::V4(_) => format!("{ip}/32"),
                        IpAddr::V6(_) => format!("{ip}/128"),
                    },
                    except: None,
                }),
                ..Default::default()
            })
            .collect(),
    };
    vec![
        policy(
            names::DEFAULT_DENY,
            NetworkPolicySpec {
                pod_selector: Some(LabelSelector::default()),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ..Default::default()
            },
        ),
        policy(
            names::AGENT_EGRESS,
            NetworkPolicySpec {
                pod_selector: Some(role_selector(name, "agent")),
                policy_types: Some(vec!["Egress".into()]),
                egress: Some(vec![NetworkPolicyEgressRule {
                    to: Some(vec![pods("sidecar")]),
                    ports: Some(sidecar_ports.clone()),
                }]),
                ..Default::default()
            },
        ),
        policy(
            names::SIDECAR_INGRESS,
            NetworkPolicySpec {
                pod_selector: Some(role_selector(name, "sidecar")),
                policy_types: Some(vec!["Ingress".into()]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(vec![pods("agent")]),
                    ports: Some(sidecar_ports),
                }]),
                ..Default::default()
            },
        ),
        policy(
            names::SIDECAR_EGRESS,
            NetworkPolicySpec {
                pod_selector: Some(role_selector(name, "sidecar")),
                policy_types: Some(vec!["Egress".into()]),
                egress: Some(vec![
                    NetworkPolicyEgressRule {
                        to: Some(vec![NetworkPolicyPeer {
                            ip_block: Some(IPBlock {
                                cidr: "0.0.0.0/0".into(),
                                except: Some(
                                    excluded(&spec.cluster)
                                        .iter()
                                        .map(Cidr::to_string)
                                        .collect(),
                                ),
                            }),
                            ..Default::default()
                        }]),
                        // TCP only: the sidecar's upstream traffic is HTTP(S)
                        // and git over HTTPS; its DNS has the rule below.
                        ports: Some(vec![NetworkPolicyPort {
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        }]),
                    },
                    NetworkPolicyEgressRule {
                        to: Some(dns_peers),
                        ports: Some(dns_ports),
                    },
                ]),
                ..Default::default()
            },
        ),
    ]
}

/// The IPv4 ranges cut out of the sidecar's `0.0.0.0/0`: [`NEVER`], then
/// each cluster range that they do not already cover (a public pod CIDR
/// exists), in the order given.
pub fn excluded(cluster: &crate::spec::ClusterSpec) -> Vec<Cidr> {
    let mut out: Vec<Cidr> = NEVER
        .iter()
        .map(|(c, _)| c.parse().expect("a valid CIDR"))
        .collect();
    let extra = std::iter::once(&cluster.service_cidr)
        .chain(&cluster.pod_cidrs)
        .chain(&cluster.node_cidrs);
    for c in extra {
        if c.addr().is_ipv4() && !out.iter().any(|o| o.covers(c)) {
            out.push(*c);
        }
    }
    out
}

/// One object of the output, with the file it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub part: Part,
    pub kind: &'static str,
    pub name: String,
    pub value: serde_json::Value,
}

fn doc<T: Serialize + k8s_openapi::Metadata<Ty = ObjectMeta> + k8s_openapi::Resource>(
    part: Part,
    object: &T,
) -> Document {
    Document {
        part,
        kind: T::KIND,
        name: object.metadata().name.clone().unwrap_or_default(),
        value: serde_json::to_value(object).expect("Kubernetes objects serialise to JSON"),
    }
}

impl Rendered {
    /// Every object that carries no secret, in apply order.
    pub fn documents(&self) -> Vec<Document> {
        let mut out = vec![doc(Part::Namespace, &self.namespace)];
        out.extend(self.config_maps.iter().map(|c| doc(Part::Config, c)));
        out.extend(self.claims.iter().map(|c| doc(Part::Storage, c)));
        out.push(doc(Part::Sidecar, &self.service));
        out.push(doc(Part::Sidecar, &self.sidecar));
        out.push(doc(Part::Agent, &self.agent));
        out.extend(self.network_policies.iter().map(|p| doc(Part::Network, p)));
        out.push(doc(Part::Access, &self.operator));
        out.push(doc(Part::Access, &self.role));
        out.push(doc(Part::Access, &self.role_binding));
        out
    }

    /// The objects holding the per-install material, when rendered.
    pub fn secret_documents(&self) -> Vec<Document> {
        let Some(s) = &self.secrets else {
            return Vec::new();
        };
        let mut out = vec![doc(Part::Secrets, &s.ca), doc(Part::Secrets, &s.secret)];
        if let Some(c) = &s.credentials {
            out.push(doc(Part::Secrets, c));
        }
        out
    }

    /// What the user must create by hand when the per-install material was
    /// not rendered: the objects and the commands.
    pub fn missing_material(&self) -> Vec<String> {
        if self.secrets.is_some() {
            return Vec::new();
        }
        let ns = self.namespace.metadata.name.clone().unwrap_or_default();
        let mut out = vec![
            format!(
                "kubectl -n {ns} create configmap {} --from-file=ca.pem=CA_CERT.pem",
                names::CA
            ),
            format!(
                "kubectl -n {ns} create secret generic {} --from-file=ca-key.pem=CA_KEY.pem --from-file=secrets.json=SECRETS.json",
                names::SECRET
            ),
        ];
        if !self.credential_vars.is_empty() {
            out.push(format!(
                "kubectl -n {ns} create configmap {} {}",
                names::CREDENTIALS,
                self.credential_vars
                    .iter()
                    .map(|v| format!("--from-literal={v}=PLACEHOLDER"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        out
    }

    /// The comment every output starts with: what this is, how to apply
    /// it, and what it leaves out.
    pub fn header(&self) -> String {
        let ns = self.namespace.metadata.name.clone().unwrap_or_default();
        let mut h = format!(
            "# bottle `{}` for Kubernetes, rendered by `bottle render --runtime kubernetes`.\n\
             # Namespace {ns}; the sidecar's Service is {} (the agent's DNS server and proxy).\n\
             # Apply with: kubectl apply -f <this file or directory>\n\
             # Design, and what to check on the cluster first: docs/kubernetes.md\n",
            self.name, self.sidecar_ip
        );
        let missing = self.missing_material();
        if !missing.is_empty() {
            h.push_str(
                "#\n# Not rendered here: the bottle's CA and credentials. `bottle render -o DIR --secrets`\n\
                 # writes them to DIR/05-secrets.yaml (mode 0600); or create them yourself:\n",
            );
            for m in missing {
                h.push_str("#   ");
                h.push_str(&m);
                h.push('\n');
            }
        }
        h
    }

    /// Every object that carries no secret, as one multi-document YAML
    /// stream with the header: what `bottle render` prints.
    pub fn to_yaml(&self) -> String {
        stream(&self.header(), &self.documents())
    }

    /// The files of `-o DIR`: name and contents, in apply order; the
    /// secrets file (when rendered) is flagged so it is written 0600.
    pub fn files(&self) -> Vec<OutputFile> {
        let mut docs = self.documents();
        docs.extend(self.secret_documents());
        let mut parts: Vec<Part> = docs.iter().map(|d| d.part).collect();
        parts.sort();
        parts.dedup();
        parts
            .into_iter()
            .map(|part| {
                let these: Vec<Document> =
                    docs.iter().filter(|d| d.part == part).cloned().collect();
                OutputFile {
                    name: part.file_name(),
                    contents: stream(&self.header(), &these),
                    secret: part == Part::Secrets,
                }
            })
            .collect()
    }
}

/// One file of `-o DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    pub name: &'static str,
    pub contents: String,
    /// Holds the CA key or credentials: write it 0600.
    pub secret: bool,
}

fn stream(header: &str, docs: &[Document]) -> String {
    let mut out = String::from(header);
    for d in docs {
        out.push_str("---\n");
        out.push_str(&crate::yaml::to_string(&d.value));
    }
    out
}
