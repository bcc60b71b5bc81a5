//! The input of a render: one bottle, described in this crate's own terms
//! (the `bottle` CLI maps its resolved `bottle.toml` onto it), and the facts
//! about the cluster a render needs (its address ranges, the runtime class
//! it offers, its storage).

use crate::cidr::Cidr;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

/// One bottle to render.
#[derive(Debug, Clone, PartialEq)]
pub struct BottleSpec {
    /// The bottle's name (`bottle.toml` `name`, or `--name`).
    pub name: String,
    pub agent: AgentSpec,
    pub sidecar: SidecarSpec,
    pub cluster: ClusterSpec,
    /// The agent's system git config (remotes rewritten to the git-gate),
    /// when the bottle has `[[git.remote]]` entries.
    pub git_config: Option<String>,
    /// Variables the agent gets a credential placeholder in (the names
    /// only; the placeholders are [`Materials::placeholders`]).
    pub credential_vars: Vec<String>,
    /// The per-install material (CA, secrets); `None` renders the objects
    /// that hold it out, and says how to create them.
    pub materials: Option<Materials>,
}

/// The agent Pod.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpec {
    pub image: String,
    pub command: Vec<String>,
    pub workdir: String,
    /// Literal variables from `[agent] env`.
    pub env: BTreeMap<String, String>,
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
    /// The user (and group) the agent runs as: never root.
    pub uid: i64,
    /// The agent's home (a writable emptyDir under a read-only root).
    pub home: String,
    /// Where the agent finds the bottle's CA certificate.
    pub ca_path: String,
    /// Variables toolchains read for extra trust roots; each points at
    /// [`AgentSpec::ca_path`].
    pub ca_env: Vec<String>,
}

/// The sidecar Deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarSpec {
    pub image: String,
    /// `policy.json` as the sidecar reads it.
    pub policy_json: String,
    /// The git-gate listens (the policy has `[[git.remote]]` entries).
    pub git: bool,
    /// The supervise MCP server listens.
    pub supervise: bool,
}

/// How the sidecar resolves upstream names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SidecarDns {
    /// The cluster's DNS (pods labelled `k8s-app: kube-dns` in
    /// `kube-system`), port 53 only.
    Cluster,
    /// These resolvers, port 53 only, and nothing of the cluster.
    Servers(Vec<IpAddr>),
}

/// What a render needs to know about the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    /// The Service CIDR (`--service-cluster-ip-range`); the sidecar's
    /// ClusterIP is taken from it.
    pub service_cidr: Cidr,
    /// Pod CIDRs; excluded from the sidecar's egress.
    pub pod_cidrs: Vec<Cidr>,
    /// Node CIDRs; excluded from the sidecar's egress.
    pub node_cidrs: Vec<Cidr>,
    /// The sidecar Service's ClusterIP; `None` derives one from the name
    /// ([`crate::render::sidecar_ip`]).
    pub service_ip: Option<Ipv4Addr>,
    /// `runtimeClassName` for the agent (gVisor, Kata), when the cluster
    /// offers one.
    pub runtime_class: Option<String>,
    /// `storageClassName` of the claims; `None`: the cluster's default.
    pub storage_class: Option<String>,
    /// Size of the sidecar's state claim (audit log, git mirrors, queue).
    pub state_size: String,
    /// Size of the agent's workspace claim.
    pub workspace_size: String,
    pub sidecar_dns: SidecarDns,
}

impl ClusterSpec {
    /// kubeadm's Service CIDR.
    pub const DEFAULT_SERVICE_CIDR: &'static str = "10.96.0.0/12";
    /// The pod CIDR of kind, flannel and kubeadm guides.
    pub const DEFAULT_POD_CIDR: &'static str = "10.244.0.0/16";
    pub const DEFAULT_STATE_SIZE: &'static str = "1Gi";
    pub const DEFAULT_WORKSPACE_SIZE: &'static str = "10Gi";
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            service_cidr: Self::DEFAULT_SERVICE_CIDR.parse().expect("a valid CIDR"),
            pod_cidrs: vec![Self::DEFAULT_POD_CIDR.parse().expect("a valid CIDR")],
            node_cidrs: Vec::new(),
            service_ip: None,
            runtime_class: None,
            storage_class: None,
            state_size: Self::DEFAULT_STATE_SIZE.into(),
            workspace_size: Self::DEFAULT_WORKSPACE_SIZE.into(),
            sidecar_dns: SidecarDns::Cluster,
        }
    }
}

/// What only one install of a bottle has: its CA and its credentials.
/// Rendered into objects of their own ([`crate::render::Rendered::secrets`]),
/// never into the stream `bottle render` prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Materials {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    /// `secrets.json` for the sidecar.
    pub secrets_json: String,
    /// Variable → placeholder, for the agent.
    pub placeholders: BTreeMap<String, String>,
}

impl std::fmt::Debug for Materials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a key or a credential in a log line or a panic message.
        f.debug_struct("Materials")
            .field("placeholders", &self.placeholders.keys())
            .finish_non_exhaustive()
    }
}
