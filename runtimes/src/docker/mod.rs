//! The Docker engine runtime, over the engine API (bollard).
//!
//! Engine facts this module works around (docs/runtimes.md, appendix):
//! - the API version is negotiated, or 0.21 sends unversioned paths;
//! - engine 20.10 rejects two networks at create: the first is given at
//!   create, the others are connected before start;
//! - engine 20.10 allows duplicate network names: names are checked before
//!   create and everything is removed by id;
//! - an internal bridge keeps a host address unless
//!   `com.docker.network.bridge.inhibit_ipv4` is set, and engines < 28 ignore
//!   `gateway_mode_ipv4`: the result is measured by [`Runtime::host_addresses_on`];
//! - an internal bridge without an address still hands the agent's broadcast
//!   and multicast to host sockets bound to 0.0.0.0: [`Runtime::isolate_host_from`]
//!   sets strict reverse-path filtering on it from a host-network helper and
//!   reads it back (broadcast.rs);
//! - `pids_limit` is `HostConfig.PidsLimit` (the cgroup pids controller);
//! - podman's Docker-compatible API (`podman system service`) is recognised
//!   by the version endpoint's component "Podman Engine" ([`Engine`]): its
//!   version numbers are podman's, so nothing is inferred from them; it
//!   ignores `inhibit_ipv4` (netavark gives the host the gateway address of
//!   every bridge) and creates a bridge only when the first container joins,
//!   so the host's addresses on it are measured with a container attached
//!   (networks.rs; docs/runtimes.md, "Podman").
//!
//! The driver is split by what it handles: `networks` (bridges, subnets, the
//! host's addresses on them), `containers` (create, inspect, logs, list),
//! `exec`, `images`, `broadcast` (closing a bridge to the host's sockets) and
//! `probe`; this file holds the connection and the [`Runtime`] impl that
//! hands each call to its module.

mod broadcast;
mod containers;
mod endpoint;
mod exec;
mod images;
mod libpod;
mod networks;
mod probe;

pub use broadcast::Leak;
pub use endpoint::{resolve as resolve_endpoint, resolve_from as resolve_endpoint_from, Endpoint};

use crate::{
    Arch, BuildSpec, ContainerInfo, ContainerSpec, ExecOutput, ExecSpec, NetworkInfo, NetworkSpec,
    Probe, Progress, ResourceRef, Runtime, RuntimeError, RuntimeKind,
};
use async_trait::async_trait;
use bollard::Docker;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;

/// A connected Docker engine.
pub struct DockerRuntime {
    docker: Docker,
    endpoint: Endpoint,
    engine: Engine,
    version: String,
    api_version: String,
}

/// Which engine answers the Docker API: its version numbers and network
/// behaviour differ, so the probe must know which it measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The Docker engine (moby).
    Docker,
    /// Podman's Docker-compatible API (`podman system service`).
    Podman,
}

impl Engine {
    /// The engine named by the version endpoint's `Components`: podman
    /// reports "Podman Engine", docker "Engine"; anything else is taken for
    /// docker, whose behaviour the driver was written against.
    pub fn from_components<'a>(names: impl IntoIterator<Item = &'a str>) -> Engine {
        if names
            .into_iter()
            .any(|n| n.trim().eq_ignore_ascii_case("Podman Engine"))
        {
            Engine::Podman
        } else {
            Engine::Docker
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
        })
    }
}

fn call(operation: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> RuntimeError {
    let operation = operation.into();
    move |e| RuntimeError::Call {
        runtime: RuntimeKind::Docker,
        operation,
        message: clean_message(&e),
    }
}

/// The engine's own message without bollard's wrapping.
fn clean_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => format!("{message} (HTTP {status_code})"),
        other => other.to_string(),
    }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl DockerRuntime {
    /// Connects to the engine the docker CLI would use and negotiates the API
    /// version. Fails with [`RuntimeError::Unavailable`] naming the endpoint and
    /// the fix when nothing answers.
    pub async fn connect() -> Result<Self, RuntimeError> {
        Self::connect_to(endpoint::resolve()).await
    }

    pub async fn connect_to(endpoint: Endpoint) -> Result<Self, RuntimeError> {
        let unavailable = |reason: String| {
            RuntimeError::Unavailable {
            runtime: RuntimeKind::Docker,
            reason,
            fix: "start the Docker engine (on a fresh Debian machine: scripts/setup-engine.sh), or point DOCKER_HOST / the docker context at a running one".into(),
        }
        };
        let docker = Docker::connect_with_host(&endpoint.host).map_err(|e| {
            unavailable(format!(
                "cannot use engine endpoint {} (from {}): {e}",
                endpoint.host, endpoint.source
            ))
        })?;
        let docker = docker.negotiate_version().await.map_err(|e| {
            unavailable(format!(
                "no engine answers at {} (from {}): {}",
                endpoint.host,
                endpoint.source,
                clean_message(&e)
            ))
        })?;
        let v = docker.version().await.map_err(|e| {
            unavailable(format!(
                "engine at {} did not report its version: {}",
                endpoint.host,
                clean_message(&e)
            ))
        })?;
        let engine =
            Engine::from_components(v.components.iter().flatten().map(|c| c.name.as_str()));
        Ok(DockerRuntime {
            engine,
            version: v.version.unwrap_or_else(|| "unknown".into()),
            api_version: v.api_version.unwrap_or_else(|| "unknown".into()),
            docker,
            endpoint,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Engine version, e.g. `20.10.24+dfsg1`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Which engine answers: docker, or podman's Docker-compatible API.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Is the engine's API socket on this machine (so its published ports are
    /// on this machine's loopback)?
    pub fn is_local(&self) -> bool {
        self.endpoint.host.starts_with("unix://")
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Docker
    }

    fn supports_sysctls(&self) -> bool {
        true
    }

    fn can_join_network_namespace(&self) -> bool {
        true
    }

    async fn probe(&self, helper_image: Option<&str>) -> Probe {
        probe::run(self, helper_image).await
    }

    /// The endpoint, the engine and API versions, and `info`'s engine ID,
    /// kernel, OS, storage and cgroup drivers, security options, OCI
    /// runtimes and warnings: what changes when the engine is replaced,
    /// upgraded or reconfigured in a way `info` shows; for a local socket,
    /// its inode and change time, which a restart renews.
    async fn identity(&self) -> Option<String> {
        let info = self.docker.info().await.ok()?;
        let mut runtimes: Vec<String> = info
            .runtimes
            .as_ref()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default();
        runtimes.sort();
        // A local engine re-creates its socket when it starts: a restart
        // (perhaps with another daemon.json, which `info` may not show)
        // changes the identity.
        let socket = self
            .endpoint
            .host
            .strip_prefix("unix://")
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                format!("{}:{}:{}", m.ino(), m.ctime(), m.ctime_nsec())
            });
        let facts = serde_json::json!({
            "socket": socket,
            "endpoint": self.endpoint.host,
            "engine": format!("{:?}", self.engine),
            "version": self.version,
            "api": self.api_version,
            "id": info.id,
            "name": info.name,
            "kernel": info.kernel_version,
            "os": info.operating_system,
            "arch": info.architecture,
            "driver": info.driver,
            "cgroup_driver": info.cgroup_driver.map(|d| format!("{d:?}")),
            "cgroup_version": info.cgroup_version.map(|v| format!("{v:?}")),
            "security": info.security_options,
            "runtimes": runtimes,
            "default_runtime": info.default_runtime,
            "isolation": info.isolation.map(|i| format!("{i:?}")),
            "warnings": info.warnings,
            "root": info.docker_root_dir,
        });
        Some(facts.to_string())
    }

    /// The engine's `Architecture` from `info` (`x86_64`/`aarch64` from a
    /// Linux engine and Docker Desktop's VM; `amd64`/`arm64` are accepted
    /// too, as Docker-compatible engines may spell them).
    async fn architecture(&self) -> Result<Arch, RuntimeError> {
        let info = self.docker.info().await.map_err(call("read engine info"))?;
        let reported = info.architecture.unwrap_or_default();
        reported
            .parse()
            .map_err(|e: crate::UnknownArch| RuntimeError::Capability {
                runtime: RuntimeKind::Docker,
                capability: "architecture".into(),
                detail: format!("the engine at {} reports {e}", self.endpoint.host),
                fix: "use an x86_64 or aarch64 engine".into(),
            })
    }

    async fn image_exists(&self, image: &str) -> Result<bool, RuntimeError> {
        images::exists(self, image).await
    }

    async fn commit(
        &self,
        id: &str,
        image: &str,
        config: &crate::CommitSpec,
    ) -> Result<String, RuntimeError> {
        images::commit(self, id, image, config).await
    }

    async fn prune_images(&self, repo: &str, keep: &str) -> Result<usize, RuntimeError> {
        images::prune(self, repo, keep).await
    }

    async fn build_image(
        &self,
        spec: &BuildSpec,
        progress: Progress<'_>,
    ) -> Result<(), RuntimeError> {
        images::build(self, spec, progress).await
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<NetworkInfo, RuntimeError> {
        networks::create(self, spec).await
    }

    async fn remove_network(&self, id: &str) -> Result<(), RuntimeError> {
        networks::remove(self, id).await
    }

    async fn host_addresses_on(
        &self,
        network: &NetworkInfo,
        helper_image: &str,
    ) -> Result<Vec<IpAddr>, RuntimeError> {
        networks::host_addresses_on(self, network, helper_image).await
    }

    async fn isolate_host_from(
        &self,
        network: &NetworkInfo,
        helper_image: &str,
    ) -> Result<String, RuntimeError> {
        broadcast::isolate(self, network, helper_image).await
    }

    async fn check_and_isolate(
        &self,
        network: &NetworkInfo,
        helper_image: &str,
    ) -> (
        Result<Vec<IpAddr>, RuntimeError>,
        Result<String, RuntimeError>,
    ) {
        broadcast::isolate_and_list(self, network, helper_image).await
    }

    async fn host_targets(&self, helper_image: &str) -> Result<Vec<IpAddr>, RuntimeError> {
        networks::host_targets(self, helper_image).await
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        containers::create(self, spec).await
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        containers::start(self, id).await
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        containers::remove(self, id).await
    }

    async fn inspect_container(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        containers::inspect(self, id).await
    }

    async fn exec_attached(&self, id: &str, spec: &ExecSpec) -> Result<i64, RuntimeError> {
        exec::attached(self, id, spec).await
    }

    async fn exec_capture(&self, id: &str, spec: &ExecSpec) -> Result<ExecOutput, RuntimeError> {
        exec::capture(self, id, spec).await
    }

    async fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: Option<usize>,
        out: &mut (dyn Write + Send),
    ) -> Result<(), RuntimeError> {
        containers::logs(self, id, follow, tail, out).await
    }

    async fn list(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ResourceRef>, RuntimeError> {
        containers::list(self, labels).await
    }
}

#[cfg(test)]
mod tests {
    use super::Engine;

    #[test]
    fn podman_is_recognised_by_its_component_name() {
        // Component names as the version endpoints report them.
        assert_eq!(
            Engine::from_components(["Podman Engine", "Conmon", "OCI Runtime (runc)"]),
            Engine::Podman
        );
        assert_eq!(
            Engine::from_components(["Engine", "containerd", "runc", "docker-init"]),
            Engine::Docker
        );
        assert_eq!(Engine::from_components([]), Engine::Docker);
    }
}
