//! The container runtimes bottle drives, behind one [`Runtime`] trait.
//!
//! A runtime knows how to make networks and containers and to run commands in
//! them; it knows nothing of egress policy, secrets or what a bottle is for.
//! The orchestrator in the `bottle` crate composes these primitives into the
//! topology of docs/design.md §1 and decides, from [`Probe`] results, whether a runtime
//! is strong enough to run a bottle at all.
//!
//! Runtime quirks (engine 20.10 refusing two networks at create, IPs assigned
//! only at start on Apple `container`, …) stay inside each implementation.

#![forbid(unsafe_code)]

pub mod apple;
mod arch;
mod cli_shared;
pub mod docker;
mod error;
#[cfg(feature = "test-util")]
pub mod fake;
pub mod oci;
mod probe;
mod process;
mod role;
pub mod smolvm;
mod spec;

pub use arch::{Arch, UnknownArch};
pub use error::RuntimeError;
pub use probe::{Capability, CapabilityState, Probe, UnknownWeakness, Weakness};
pub use process::Version;
pub use role::{Role, UnknownRole};
pub use spec::{
    BuildSpec, CommitSpec, ContainerInfo, ContainerSpec, ContainerState, ExecOutput, ExecSpec,
    Mount, MountInfo, NetworkAttachment, NetworkInfo, NetworkKind, NetworkSpec, Publish,
    ResourceKind, ResourceRef, SecurityInfo,
};

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::io::Write;

/// Label every resource bottle creates carries: the bottle's name.
pub const LABEL_NAME: &str = "dev.bottle.name";
/// Label naming the resource's role: a [`Role`] (`agent`, `sidecar`, …).
pub const LABEL_ROLE: &str = "dev.bottle.role";

/// Which implementation a [`Runtime`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    Docker,
    AppleContainer,
    Smolvm,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::AppleContainer => "apple-container",
            RuntimeKind::Smolvm => "smolvm",
        }
    }
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Called with one human-readable line per step of long work (image builds).
pub type Progress<'a> = &'a mut (dyn FnMut(&str) + Send);

/// What the orchestrator needs from a container runtime.
#[async_trait]
pub trait Runtime: Send + Sync {
    fn kind(&self) -> RuntimeKind;

    /// Measures what this runtime can do. `helper_image` is an image the probe
    /// may run short-lived containers from (it must contain `bottle-sidecar`).
    async fn probe(&self, helper_image: Option<&str>) -> Probe;

    /// What identifies the engine a probe measured, and the settings of it
    /// a probe's result depends on (version, kernel, storage, security
    /// options, runtimes, warnings): `bottle up` reuses a recent probe only
    /// while this is unchanged. `None` (the default) means nothing stable
    /// to key on, and every `up` probes.
    async fn identity(&self) -> Option<String> {
        None
    }

    /// The CPU architecture the runtime's containers run on (the sidecar
    /// image must carry the `bottle-sidecar` built for it). The default is
    /// this host's: right for runtimes whose guests run on this machine's
    /// CPU without emulation (smolvm's libkrun VMs).
    async fn architecture(&self) -> Result<Arch, RuntimeError> {
        Arch::host().ok_or_else(|| RuntimeError::Capability {
            runtime: self.kind(),
            capability: "architecture".into(),
            detail: format!(
                "this host is {}; bottle ships sidecars for x86_64 and aarch64 only",
                std::env::consts::ARCH
            ),
            fix: "run bottle on an x86_64 or aarch64 machine".into(),
        })
    }

    async fn image_exists(&self, image: &str) -> Result<bool, RuntimeError>;
    /// Does the runtime fetch an image that [`Runtime::image_exists`] says
    /// is missing by itself when a container first starts (smolvm pulls
    /// registry references in the guest)? Then a missing image that bottle
    /// cannot build is left to it instead of refused.
    fn pulls_missing_images(&self) -> bool {
        false
    }
    /// Removes every tag of repository `repo` but `keep` that no container
    /// uses (older sidecar images after an upgrade). Returns how many went.
    /// Runtimes that cannot list images remove nothing.
    async fn prune_images(&self, repo: &str, keep: &str) -> Result<usize, RuntimeError> {
        let _ = (repo, keep);
        Ok(0)
    }
    async fn build_image(
        &self,
        spec: &BuildSpec,
        progress: Progress<'_>,
    ) -> Result<(), RuntimeError>;

    /// Creates a network. Internal networks get a subnet the runtime chose
    /// (free of clashes with every network it knows), reported in the result.
    async fn create_network(&self, spec: &NetworkSpec) -> Result<NetworkInfo, RuntimeError>;
    /// Removes a network by id; a missing network is not an error.
    async fn remove_network(&self, id: &str) -> Result<(), RuntimeError>;
    /// Every address the host itself holds on `network`, measured (not read
    /// from configuration). An internal network for an agent must have none.
    async fn host_addresses_on(
        &self,
        network: &NetworkInfo,
        helper_image: &str,
    ) -> Result<Vec<std::net::IpAddr>, RuntimeError>;

    /// Makes the host drop what arrives on `network`'s host side for its own
    /// sockets (broadcast, multicast, anything not routed back the way it
    /// came), then reads the setting back: on docker, strict reverse-path
    /// filtering on the bridge of a network where the host holds no address.
    /// Returns what was read back. Runtimes that cannot do it return
    /// [`RuntimeError::Capability`] naming the weakness
    /// [`Weakness::BroadcastReachesHost`], so the orchestrator refuses unless the user
    /// accepted it.
    async fn isolate_host_from(
        &self,
        network: &NetworkInfo,
        helper_image: &str,
    ) -> Result<String, RuntimeError> {
        let _ = helper_image;
        Err(RuntimeError::Capability {
            runtime: self.kind(),
            capability: "broadcast-isolated".into(),
            detail: format!(
                "{} cannot stop what the agent broadcasts on {} from reaching the host's sockets",
                self.kind(),
                network.name
            ),
            fix: format!(
                "use the docker runtime, or accept it knowingly with --accept-weakness {}",
                Weakness::BroadcastReachesHost
            ),
        })
    }

    /// [`Runtime::host_addresses_on`] and [`Runtime::isolate_host_from`] of
    /// one network, at once (`up` runs both on the agent's network before
    /// the agent starts). Runtimes that can do both with one helper do.
    async fn check_and_isolate(
        &self,
        network: &NetworkInfo,
        helper_image: &str,
    ) -> (
        Result<Vec<std::net::IpAddr>, RuntimeError>,
        Result<String, RuntimeError>,
    ) {
        tokio::join!(
            self.host_addresses_on(network, helper_image),
            self.isolate_host_from(network, helper_image)
        )
    }

    /// Addresses at which the host (the machine the runtime's networks live
    /// on) answers: its interface addresses and the gateway of every network
    /// the runtime knows. `bottle verify` tries each from inside the agent.
    /// Runtimes that cannot list them return what they can.
    async fn host_targets(
        &self,
        helper_image: &str,
    ) -> Result<Vec<std::net::IpAddr>, RuntimeError> {
        let _ = helper_image;
        Ok(Vec::new())
    }

    /// True when addresses are leased at start and cannot be fixed
    /// (Apple `container`, smolvm): a [`NetworkAttachment`] must then leave
    /// `ipv4` empty, and addresses are read with
    /// [`Runtime::inspect_container`] after [`Runtime::start_container`].
    fn assigns_addresses_at_start(&self) -> bool {
        false
    }

    /// Whether [`ContainerSpec::sysctls`] is honoured (namespaced kernel
    /// settings per container). Runtimes without it refuse a spec that asks.
    fn supports_sysctls(&self) -> bool {
        false
    }

    /// Whether [`ContainerSpec::network_namespace_of`] is honoured: a new
    /// container can share a running one's network namespace (docker's
    /// `container:<id>` mode). VM-per-container runtimes (Apple `container`,
    /// smolvm) cannot, and refuse a spec that asks.
    fn can_join_network_namespace(&self) -> bool {
        false
    }

    /// Creates (does not start) a container attached to every network in
    /// `spec.networks`, in order.
    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, RuntimeError>;
    async fn start_container(&self, id: &str) -> Result<(), RuntimeError>;
    /// Stops and removes; a missing container is not an error.
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError>;
    async fn inspect_container(&self, id: &str) -> Result<ContainerInfo, RuntimeError>;

    /// Saves a container's filesystem as image `image` (`repo:tag`) with
    /// `config`'s environment, command, working directory, user and labels,
    /// and returns the image id. None of the container's own variables keep
    /// a value in the image (PATH excepted): they may hold what its config
    /// gave that bottle alone. Runtimes that cannot refuse with what to do instead.
    async fn commit(
        &self,
        id: &str,
        image: &str,
        config: &CommitSpec,
    ) -> Result<String, RuntimeError> {
        let _ = (id, image, config);
        Err(RuntimeError::Capability {
            runtime: self.kind(),
            capability: "commit".into(),
            detail: format!("{} cannot save a running agent as an image", self.kind()),
            fix: "snapshot a bottle on the docker or podman runtime".into(),
        })
    }

    /// Runs a command with the caller's stdin/stdout/stderr; returns its exit code.
    async fn exec_attached(&self, id: &str, spec: &ExecSpec) -> Result<i64, RuntimeError>;
    /// Runs a command and collects its output.
    async fn exec_capture(&self, id: &str, spec: &ExecSpec) -> Result<ExecOutput, RuntimeError>;

    /// Writes a container's logs (stdout and stderr) to `out`.
    async fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: Option<usize>,
        out: &mut (dyn Write + Send),
    ) -> Result<(), RuntimeError>;

    /// Every container and network carrying all of `labels` (an empty value
    /// matches any value of that key).
    async fn list(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ResourceRef>, RuntimeError>;
}
