//! Plain descriptions of what to create, and of what exists.
//!
//! The orchestrator fills these in; each runtime translates them into its own
//! API calls. Nothing here refers to a particular runtime.

use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// An image to build from an in-memory context.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// Tag to give the result, e.g. `bottle-agent:latest`.
    pub tag: String,
    /// Files of the build context: path inside the context → contents and mode.
    pub files: BTreeMap<String, (Vec<u8>, u32)>,
    /// Name of the Containerfile inside the context.
    pub containerfile: String,
    pub build_args: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// The same image as typed data, for runtimes that cannot run a
    /// Containerfile and write an image archive instead (smolvm): its files
    /// come from [`BuildSpec::files`], its base is `build_args["BASE_IMAGE"]`.
    pub recipe: crate::oci::Recipe,
}

/// The two kinds of network a bottle uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkKind {
    /// No route out and no address for the host: the agent's only network.
    Internal,
    /// An ordinary NAT network: the sidecar's way out.
    Egress,
}

#[derive(Debug, Clone)]
pub struct NetworkSpec {
    pub name: String,
    pub kind: NetworkKind,
    pub labels: BTreeMap<String, String>,
}

/// A network as created.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkInfo {
    pub id: String,
    pub name: String,
    pub kind: NetworkKind,
    /// IPv4 subnet (CIDR), when known.
    pub subnet: Option<String>,
    /// Name of the host-side interface (bridge), when the runtime has one.
    pub host_interface: Option<String>,
}

/// One bind mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// A published port, always bound to one explicit host address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Publish {
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub container_port: u16,
}

/// A network to attach a container to, optionally at a fixed address.
#[derive(Debug, Clone)]
pub struct NetworkAttachment {
    /// Network id (or name).
    pub network: String,
    pub ipv4: Option<Ipv4Addr>,
    pub aliases: Vec<String>,
}

/// A container to create.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// Replaces the image's command; empty keeps it.
    pub command: Vec<String>,
    /// Replaces the image's entrypoint when set.
    pub entrypoint: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// Attached in this order; the first one carries the default route.
    pub networks: Vec<NetworkAttachment>,
    /// Run in the host's network namespace instead (probe helpers only).
    pub host_network: bool,
    /// Join the network namespace of this container (id or name) instead of
    /// any network: its interfaces, routes, resolv.conf and hosts. `networks`,
    /// `dns` and `publish` must then be empty. Only where
    /// [`crate::Runtime::can_join_network_namespace`]; others refuse it.
    pub network_namespace_of: Option<String>,
    pub dns: Vec<IpAddr>,
    pub cap_drop: Vec<String>,
    pub cap_add: Vec<String>,
    pub no_new_privileges: bool,
    pub read_only_rootfs: bool,
    /// Paths to mount as private tmpfs (with a read-only root).
    pub tmpfs: Vec<String>,
    pub mounts: Vec<Mount>,
    pub publish: Vec<Publish>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
    /// Most processes (and threads) the container may hold at once, so a
    /// fork bomb stops there. `None`: the runtime's default (unlimited on
    /// docker). VM-per-container runtimes bound it with the VM instead (see
    /// their module docs).
    pub pids_limit: Option<i64>,
    /// Command the runtime runs to decide the container is healthy.
    pub healthcheck: Option<Vec<String>>,
    pub hostname: Option<String>,
    /// Namespaced kernel settings (e.g. `net.ipv4.ip_unprivileged_port_start`).
    pub sysctls: BTreeMap<String, String>,
}

/// Coarse container state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Other,
}

/// A container as it is now.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: ContainerState,
    /// `healthy`, `unhealthy`, `starting`, or `none` when there is no check.
    pub health: String,
    pub labels: BTreeMap<String, String>,
    /// Network name → IPv4 address.
    pub ipv4: BTreeMap<String, Ipv4Addr>,
    pub exit_code: Option<i64>,
    /// Privileges, mounts and limits as the runtime reports them, when its
    /// inspect output carries them (`None`: the runtime does not say).
    pub security: Option<SecurityInfo>,
}

/// What a runtime's inspect data says a container may do. Read from outside
/// the container, so nothing running inside can change the answer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SecurityInfo {
    pub privileged: bool,
    /// Capabilities as the runtime lists them (`NET_RAW` or `CAP_NET_RAW`).
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// The capabilities the container can ever hold, where the runtime says
    /// so (podman's `BoundingCaps`). Podman lists in `CapDrop` only what it
    /// removed from its own default set, so this, not `CapDrop`, says
    /// whether a capability is gone.
    pub bounding_caps: Option<Vec<String>>,
    pub no_new_privileges: bool,
    /// The user the main process runs as (`uid[:gid]` or a name; empty: the
    /// image's default, usually root).
    pub user: String,
    /// Maximum number of processes; `None` or a value <= 0 means unlimited.
    pub pids_limit: Option<i64>,
    /// Memory limit in bytes; `None` or 0 means unlimited.
    pub memory_bytes: Option<i64>,
    /// The runtime's network mode (docker: a network name or id, `host`,
    /// `bridge`, `none`, `container:<id>`).
    pub network_mode: String,
    /// Every network the container is attached to, with or without an address.
    pub networks: Vec<String>,
    pub mounts: Vec<MountInfo>,
}

/// One mount as the runtime reports it.
#[derive(Debug, Clone, Serialize)]
pub struct MountInfo {
    /// `bind`, `volume`, `tmpfs`, …
    pub kind: String,
    /// Host path for a bind mount (volume name or empty otherwise).
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// The image configuration [`crate::Runtime::commit`] writes: the whole of
/// it, so nothing of the container's own configuration (its environment
/// above all) is carried into the image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitSpec {
    /// `KEY=VALUE` the image gets; the container's other variables are
    /// emptied (PATH kept).
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// A command to run inside a running container.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    pub cmd: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// Forward the caller's stdin.
    pub stdin: bool,
    /// Allocate a terminal (the caller puts its own terminal in raw mode).
    pub tty: bool,
    /// Terminal size (rows, cols) when `tty`.
    pub size: Option<(u16, u16)>,
    /// Later sizes (rows, cols) of the caller's terminal, when `tty`: the
    /// runtime resizes the command's terminal to each. Runtimes whose exec
    /// is a CLI on the caller's terminal follow it themselves.
    pub resize: Option<tokio::sync::watch::Receiver<(u16, u16)>>,
}

/// Output of [`crate::Runtime::exec_capture`].
#[derive(Debug, Clone, Serialize)]
pub struct ExecOutput {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
}

/// What kind of thing a [`ResourceRef`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    Container,
    Network,
}

/// Something a runtime holds that carries bottle's labels.
#[derive(Debug, Clone, Serialize)]
pub struct ResourceRef {
    pub kind: ResourceKind,
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Container state (`None` for networks).
    pub state: Option<ContainerState>,
}
