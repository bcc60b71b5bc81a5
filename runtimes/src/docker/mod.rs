//! The Docker engine runtime, over the engine API (bollard).
//!
//! Engine facts this module works around (reference/docker.md):
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
//! - `pids_limit` is `HostConfig.PidsLimit` (the cgroup pids controller).

mod broadcast;
mod endpoint;
mod probe;

pub use broadcast::Leak;
pub use endpoint::{resolve as resolve_endpoint, resolve_from as resolve_endpoint_from, Endpoint};

use crate::{
    BuildSpec, ContainerInfo, ContainerSpec, ContainerState, ExecOutput, ExecSpec, NetworkInfo,
    NetworkKind, NetworkSpec, Probe, Progress, ResourceKind, ResourceRef, Runtime, RuntimeError,
    RuntimeKind,
};
use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, ExecConfig, HealthConfig,
    HostConfig, Ipam, IpamConfig, NetworkConnectRequest, NetworkCreateRequest, NetworkingConfig,
    PortBinding,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, ResizeExecOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use tokio::io::AsyncWriteExt;

/// Network option that keeps the host from holding an address on a bridge.
const INHIBIT_IPV4: &str = "com.docker.network.bridge.inhibit_ipv4";
/// Engine >= 28 spelling of the same intent; older engines ignore it.
const GATEWAY_MODE_V4: &str = "com.docker.network.bridge.gateway_mode_ipv4";
const BRIDGE_NAME: &str = "com.docker.network.bridge.name";
/// Internal subnets are /24 slices of this /16 (third octet 0..=255).
const INTERNAL_POOL: [u8; 2] = [10, 213];

/// A connected Docker engine.
pub struct DockerRuntime {
    docker: Docker,
    endpoint: Endpoint,
    version: String,
    api_version: String,
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
        Ok(DockerRuntime {
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

    /// Is the engine's API socket on this machine (so its published ports are
    /// on this machine's loopback)?
    pub fn is_local(&self) -> bool {
        self.endpoint.host.starts_with("unix://")
    }

    async fn network_names(&self) -> Result<Vec<(String, Vec<String>)>, RuntimeError> {
        let nets = self
            .docker
            .list_networks(None)
            .await
            .map_err(call("list networks"))?;
        Ok(nets
            .into_iter()
            .map(|n| {
                let subnets = n
                    .ipam
                    .and_then(|i| i.config)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|c| c.subnet)
                    .collect();
                (n.name.unwrap_or_default(), subnets)
            })
            .collect())
    }

    /// Runs `spec` to completion and returns its exit code and output; the
    /// container is removed whatever happens.
    pub async fn run_capture(&self, spec: &ContainerSpec) -> Result<ExecOutput, RuntimeError> {
        let id = self.create_container(spec).await?;
        let result = self.run_to_end(&id).await;
        let _ = self.remove_container(&id).await;
        result
    }

    /// Starts created container `id`, waits for it to exit and returns its
    /// exit code and output (the container stays).
    async fn run_to_end(&self, id: &str) -> Result<ExecOutput, RuntimeError> {
        self.start_container(id).await?;
        let mut wait = self
            .docker
            .wait_container(id, Some(WaitContainerOptionsBuilder::default().build()));
        let mut code = -1;
        while let Some(item) = wait.next().await {
            match item {
                Ok(r) => code = r.status_code,
                // A non-zero exit is reported as an error by bollard.
                Err(bollard::errors::Error::DockerContainerWaitError { code: c, .. }) => code = c,
                Err(e) => return Err(call("wait for container")(e)),
            }
        }
        let (stdout, stderr) = self.collect_logs(id).await?;
        Ok(ExecOutput {
            code,
            stdout,
            stderr,
        })
    }

    async fn collect_logs(&self, id: &str) -> Result<(String, String), RuntimeError> {
        let opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .build();
        let mut stream = self.docker.logs(id, Some(opts));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(item) = stream.next().await {
            match item.map_err(call("read logs"))? {
                LogOutput::StdErr { message } => err.extend_from_slice(&message),
                other => out.extend_from_slice(&other.into_bytes()),
            }
        }
        Ok((
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        ))
    }

    /// Interfaces of the engine's host and their addresses, measured by
    /// running `bottle-sidecar netinfo` in a host-network container.
    async fn host_interfaces(
        &self,
        helper_image: &str,
    ) -> Result<Vec<(String, Vec<IpAddr>)>, RuntimeError> {
        let spec = ContainerSpec {
            name: format!(
                "bottle-netinfo-{}-{}",
                std::process::id(),
                &hex::encode(Sha256::digest(
                    format!("{:?}", std::time::SystemTime::now()).as_bytes()
                ))[..10]
            ),
            image: helper_image.into(),
            entrypoint: Some(vec!["bottle-sidecar".into(), "netinfo".into()]),
            labels: BTreeMap::from([crate::Role::Probe.label()]),
            host_network: true,
            cap_drop: vec!["ALL".into()],
            no_new_privileges: true,
            ..Default::default()
        };
        let out = self.run_capture(&spec).await?;
        if out.code != 0 {
            return Err(RuntimeError::Call {
                runtime: RuntimeKind::Docker,
                operation:
                    "list host interfaces (bottle-sidecar netinfo in a host-network container)"
                        .into(),
                message: format!("exit {}: {}", out.code, out.stderr.trim()),
            });
        }
        let json: serde_json::Value =
            serde_json::from_str(out.stdout.trim()).map_err(|e| RuntimeError::Call {
                runtime: RuntimeKind::Docker,
                operation: "parse netinfo output".into(),
                message: format!("{e}: {}", out.stdout.trim()),
            })?;
        Ok(json["interfaces"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|i| {
                let addrs = i["addrs"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|a| a.as_str()?.split('/').next()?.parse::<IpAddr>().ok())
                    .collect();
                (i["name"].as_str().unwrap_or_default().to_string(), addrs)
            })
            .collect())
    }

    async fn try_create_network(
        &self,
        spec: &NetworkSpec,
        subnet: Option<String>,
        bridge: &str,
    ) -> Result<String, bollard::errors::Error> {
        let mut options = HashMap::from([(BRIDGE_NAME.to_string(), bridge.to_string())]);
        if spec.kind == NetworkKind::Internal {
            options.insert(INHIBIT_IPV4.into(), "true".into());
            options.insert(GATEWAY_MODE_V4.into(), "isolated".into());
        }
        let req = NetworkCreateRequest {
            name: spec.name.clone(),
            driver: Some("bridge".into()),
            internal: Some(spec.kind == NetworkKind::Internal),
            attachable: Some(false),
            enable_ipv6: Some(false),
            ipam: subnet.map(|s| Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(s),
                    ..Default::default()
                }]),
                options: None,
            }),
            options: Some(options),
            labels: Some(spec.labels.clone().into_iter().collect()),
            ..Default::default()
        };
        let created = self.docker.create_network(req).await?;
        Ok(created.id)
    }
}

/// Bridge interface name for a network: at most 15 characters, stable for a
/// given network name so it can be found again.
fn bridge_name(network: &str) -> String {
    let digest = hex::encode(Sha256::digest(network.as_bytes()));
    format!("bt-{}", &digest[..12])
}

/// Does `a.b.c.0/24` overlap any of `subnets` (IPv4 CIDRs)?
fn overlaps(third: u8, subnets: &[String]) -> bool {
    let ours = u32::from(Ipv4Addr::new(INTERNAL_POOL[0], INTERNAL_POOL[1], third, 0));
    subnets.iter().any(|s| {
        let Some((addr, len)) = s.split_once('/') else {
            return false;
        };
        let (Ok(addr), Ok(len)) = (addr.parse::<Ipv4Addr>(), len.parse::<u32>()) else {
            return false;
        };
        let len = len.min(32);
        let common = len.min(24);
        let mask = if common == 0 {
            0
        } else {
            u32::MAX << (32 - common)
        };
        (u32::from(addr) & mask) == (ours & mask)
    })
}

fn state_of(s: Option<&str>) -> ContainerState {
    match s {
        Some("created") => ContainerState::Created,
        Some("running") => ContainerState::Running,
        Some("exited") | Some("dead") => ContainerState::Exited,
        _ => ContainerState::Other,
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

    async fn image_exists(&self, image: &str) -> Result<bool, RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(call(format!("inspect image {image}"))(e)),
        }
    }

    async fn prune_images(&self, repo: &str, keep: &str) -> Result<usize, RuntimeError> {
        let filters: HashMap<String, Vec<String>> =
            HashMap::from([("reference".to_string(), vec![repo.to_string()])]);
        let images = self
            .docker
            .list_images(Some(
                bollard::query_parameters::ListImagesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(call("list images"))?;
        let mut removed = 0;
        for image in images {
            for tag in image
                .repo_tags
                .iter()
                .filter(|t| t.as_str() != keep && t.split_once(':').is_some_and(|(r, _)| r == repo))
            {
                // Without force: an image a container still uses stays.
                let opts = bollard::query_parameters::RemoveImageOptionsBuilder::default()
                    .force(false)
                    .build();
                if self
                    .docker
                    .remove_image(tag, Some(opts), None)
                    .await
                    .is_ok()
                {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    async fn build_image(
        &self,
        spec: &BuildSpec,
        progress: Progress<'_>,
    ) -> Result<(), RuntimeError> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, (data, mode)) in &spec.files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(*mode);
            header.set_mtime(0);
            header.set_cksum();
            tar.append_data(&mut header, path, data.as_slice())
                .map_err(|source| RuntimeError::Io {
                    doing: format!("packing the build context of {}", spec.tag),
                    source,
                })?;
        }
        let context = tar.into_inner().map_err(|source| RuntimeError::Io {
            doing: format!("packing the build context of {}", spec.tag),
            source,
        })?;
        let buildargs: HashMap<String, String> = spec.build_args.clone().into_iter().collect();
        let labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        let opts = BuildImageOptionsBuilder::default()
            .t(&spec.tag)
            .dockerfile(&spec.containerfile)
            .buildargs(&buildargs)
            .labels(&labels)
            .rm(true)
            .forcerm(true)
            .build();
        let mut stream =
            self.docker
                .build_image(opts, None, Some(bollard::body_full(context.into())));
        let mut tail: Vec<String> = Vec::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| RuntimeError::Build {
                image: spec.tag.clone(),
                message: clean_message(&e),
                log_tail: tail.join("\n"),
            })?;
            if let Some(err) = info.error_detail.and_then(|d| d.message) {
                return Err(RuntimeError::Build {
                    image: spec.tag.clone(),
                    message: err,
                    log_tail: tail.join("\n"),
                });
            }
            for text in [info.stream, info.status].into_iter().flatten() {
                for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
                    progress(line);
                    tail.push(line.to_string());
                    if tail.len() > 20 {
                        tail.remove(0);
                    }
                }
            }
        }
        if !self.image_exists(&spec.tag).await? {
            return Err(RuntimeError::Build {
                image: spec.tag.clone(),
                message: "the engine reported no error but the image does not exist".into(),
                log_tail: tail.join("\n"),
            });
        }
        Ok(())
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<NetworkInfo, RuntimeError> {
        let existing = self.network_names().await?;
        if existing.iter().any(|(n, _)| n == &spec.name) {
            return Err(RuntimeError::Call {
                runtime: RuntimeKind::Docker,
                operation: format!("create network {}", spec.name),
                message: "a network with that name already exists (left over from an earlier run? `bottle down` removes it)".into(),
            });
        }
        let bridge = bridge_name(&spec.name);
        if spec.kind == NetworkKind::Egress {
            let id = self
                .try_create_network(spec, None, &bridge)
                .await
                .map_err(call(format!("create network {}", spec.name)))?;
            let subnet = self
                .docker
                .inspect_network(&id, None)
                .await
                .ok()
                .and_then(|n| n.ipam?.config?.into_iter().find_map(|c| c.subnet));
            return Ok(NetworkInfo {
                id,
                name: spec.name.clone(),
                kind: spec.kind,
                subnet,
                host_interface: Some(bridge),
            });
        }
        let used: Vec<String> = existing.into_iter().flat_map(|(_, s)| s).collect();
        let mut last_error = String::from("every /24 of the internal pool is in use");
        for third in 0..=255u8 {
            if overlaps(third, &used) {
                continue;
            }
            let subnet = format!("{}.{}.{third}.0/24", INTERNAL_POOL[0], INTERNAL_POOL[1]);
            match self
                .try_create_network(spec, Some(subnet.clone()), &bridge)
                .await
            {
                Ok(id) => {
                    return Ok(NetworkInfo {
                        id,
                        name: spec.name.clone(),
                        kind: spec.kind,
                        subnet: Some(subnet),
                        host_interface: Some(bridge),
                    })
                }
                // Another bottle took it between our listing and our create.
                Err(e) if clean_message(&e).contains("overlap") => {
                    last_error = clean_message(&e);
                    continue;
                }
                Err(e) => return Err(call(format!("create network {}", spec.name))(e)),
            }
        }
        Err(RuntimeError::Call {
            runtime: RuntimeKind::Docker,
            operation: format!("create network {}", spec.name),
            message: format!(
                "no free subnet in {}.{}.0.0/16: {last_error}",
                INTERNAL_POOL[0], INTERNAL_POOL[1]
            ),
        })
    }

    async fn remove_network(&self, id: &str) -> Result<(), RuntimeError> {
        // Whatever else is still attached (a container the user connected by
        // hand) is disconnected first: the network is the bottle's.
        if let Ok(net) = self.docker.inspect_network(id, None).await {
            for container in net.containers.unwrap_or_default().into_keys() {
                let req = bollard::models::NetworkDisconnectRequest {
                    container,
                    force: Some(true),
                };
                let _ = self.docker.disconnect_network(id, req).await;
            }
        }
        match self.docker.remove_network(id).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(call(format!("remove network {id}"))(e)),
        }
    }

    async fn host_addresses_on(
        &self,
        network: &NetworkInfo,
        helper_image: &str,
    ) -> Result<Vec<IpAddr>, RuntimeError> {
        let Some(iface) = &network.host_interface else {
            return Err(RuntimeError::Capability {
                runtime: RuntimeKind::Docker,
                capability: "host-interface".into(),
                detail: format!("network {} has no known bridge interface", network.name),
                fix: "recreate the bottle".into(),
            });
        };
        let interfaces = self.host_interfaces(helper_image).await?;
        let Some((_, addrs)) = interfaces.iter().find(|(name, _)| name == iface) else {
            return Err(RuntimeError::Capability {
                runtime: RuntimeKind::Docker,
                capability: "host-interface".into(),
                detail: format!(
                    "bridge {iface} of network {} is not among the host's interfaces; cannot check its addresses",
                    network.name
                ),
                fix: "make sure the engine creates bridges in the host network namespace".into(),
            });
        };
        Ok(addrs.clone())
    }

    async fn isolate_host_from(
        &self,
        network: &NetworkInfo,
        helper_image: &str,
    ) -> Result<String, RuntimeError> {
        broadcast::isolate(self, network, helper_image).await
    }

    async fn host_targets(&self, helper_image: &str) -> Result<Vec<IpAddr>, RuntimeError> {
        let mut out: Vec<IpAddr> = self
            .host_interfaces(helper_image)
            .await?
            .into_iter()
            .flat_map(|(_, a)| a)
            .filter(|a| !a.is_loopback())
            .collect();
        for net in self
            .docker
            .list_networks(None)
            .await
            .map_err(call("list networks"))?
        {
            for c in net.ipam.and_then(|i| i.config).unwrap_or_default() {
                if let Some(gw) = c.gateway.and_then(|g| g.parse::<IpAddr>().ok()) {
                    out.push(gw);
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let mut endpoints = spec.networks.iter().map(|n| {
            (
                n.network.clone(),
                EndpointSettings {
                    ipam_config: n.ipv4.map(|ip| EndpointIpamConfig {
                        ipv4_address: Some(ip.to_string()),
                        ..Default::default()
                    }),
                    aliases: (!n.aliases.is_empty()).then(|| n.aliases.clone()),
                    ..Default::default()
                },
            )
        });
        let first = endpoints.next();
        let rest: Vec<_> = endpoints.collect();
        let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        let mut exposed: Vec<String> = Vec::new();
        for p in &spec.publish {
            let key = format!("{}/tcp", p.container_port);
            exposed.push(key.clone());
            port_bindings
                .entry(key)
                .or_default()
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: Some(p.host_ip.to_string()),
                    host_port: Some(p.host_port.to_string()),
                });
        }
        let mut security_opt = Vec::new();
        if spec.no_new_privileges {
            security_opt.push("no-new-privileges:true".to_string());
        }
        if let Some(of) = &spec.network_namespace_of {
            if spec.host_network
                || first.is_some()
                || !spec.dns.is_empty()
                || !spec.publish.is_empty()
            {
                return Err(RuntimeError::Capability {
                    runtime: RuntimeKind::Docker,
                    capability: "network namespace".into(),
                    detail: format!("{} joins the network namespace of {of} and cannot also ask for networks, DNS servers, published ports or the host network", spec.name),
                    fix: "leave networks, dns, publish and host_network empty when joining another container's namespace".into(),
                });
            }
        }
        // A container joining another's namespace takes its interfaces,
        // resolv.conf, hosts and sysctls as they are; the engine refuses
        // its own DNS, hostname or network sysctls.
        let joins = spec.network_namespace_of.is_some();
        let network_mode = if let Some(of) = &spec.network_namespace_of {
            Some(format!("container:{of}"))
        } else if spec.host_network {
            Some("host".to_string())
        } else if let Some((name, _)) = &first {
            Some(name.clone())
        } else {
            Some("none".to_string())
        };
        // No IPv6 inside bottle containers: the networks carry none, and a
        // link-local path to the host must not exist either.
        let sysctls = (!spec.host_network && !joins).then(|| {
            let mut s: HashMap<String, String> = spec.sysctls.clone().into_iter().collect();
            s.insert("net.ipv6.conf.all.disable_ipv6".into(), "1".into());
            s
        });
        let host_config = HostConfig {
            network_mode,
            dns: (!spec.dns.is_empty()).then(|| spec.dns.iter().map(|d| d.to_string()).collect()),
            cap_drop: (!spec.cap_drop.is_empty()).then(|| spec.cap_drop.clone()),
            cap_add: (!spec.cap_add.is_empty()).then(|| spec.cap_add.clone()),
            security_opt: (!security_opt.is_empty()).then_some(security_opt),
            readonly_rootfs: Some(spec.read_only_rootfs),
            tmpfs: (!spec.tmpfs.is_empty()).then(|| {
                spec.tmpfs
                    .iter()
                    .map(|t| (t.clone(), "rw,nosuid,nodev,size=64m".to_string()))
                    .collect()
            }),
            mounts: (!spec.mounts.is_empty()).then(|| {
                spec.mounts
                    .iter()
                    .map(|m| bollard::models::Mount {
                        typ: Some(bollard::models::MountType::BIND),
                        source: Some(m.source.display().to_string()),
                        target: Some(m.target.clone()),
                        read_only: Some(m.read_only),
                        ..Default::default()
                    })
                    .collect()
            }),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
            memory: spec.memory_bytes.map(|m| m as i64),
            pids_limit: spec.pids_limit,
            sysctls,
            init: Some(false),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            entrypoint: spec.entrypoint.clone(),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            working_dir: spec.workdir.clone(),
            user: spec.user.clone(),
            hostname: spec.hostname.clone().filter(|_| !joins),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            healthcheck: spec.healthcheck.as_ref().map(|cmd| HealthConfig {
                test: Some([vec!["CMD".to_string()], cmd.clone()].concat()),
                interval: Some(5_000_000_000),
                timeout: Some(3_000_000_000),
                retries: Some(3),
                start_period: Some(1_000_000_000),
                ..Default::default()
            }),
            host_config: Some(host_config),
            networking_config: first.map(|(name, settings)| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(name, settings)])),
            }),
            ..Default::default()
        };
        let opts = bollard::query_parameters::CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(call(format!("create container {}", spec.name)))?;
        for (network, settings) in rest {
            let req = NetworkConnectRequest {
                container: created.id.clone(),
                endpoint_config: Some(settings),
            };
            if let Err(e) = self.docker.connect_network(&network, req).await {
                let _ = self.remove_container(&created.id).await;
                return Err(call(format!("connect {} to network {network}", spec.name))(
                    e,
                ));
            }
        }
        Ok(created.id)
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(call(format!("start container {id}")))
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // Removal already under way (e.g. a concurrent `down`).
            Err(e) if clean_message(&e).contains("already in progress") => Ok(()),
            Err(e) => Err(call(format!("remove container {id}"))(e)),
        }
    }

    async fn inspect_container(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let c = match self.docker.inspect_container(id, None).await {
            Ok(c) => c,
            Err(e) if is_not_found(&e) => {
                return Err(RuntimeError::NotFound {
                    what: format!("container {id}"),
                })
            }
            Err(e) => return Err(call(format!("inspect container {id}"))(e)),
        };
        let state = c.state.as_ref();
        let status = state
            .and_then(|s| s.status)
            .map(|s| s.to_string().to_lowercase());
        let health = state
            .and_then(|s| s.health.as_ref())
            .and_then(|h| h.status)
            .map(|h| h.to_string().to_lowercase())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "none".into());
        let ipv4 = c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, ep)| Some((name, ep.ip_address?.parse::<Ipv4Addr>().ok()?)))
            .collect();
        Ok(ContainerInfo {
            id: c.id.clone().unwrap_or_default(),
            name: c
                .name
                .clone()
                .unwrap_or_default()
                .trim_start_matches('/')
                .into(),
            image: c
                .config
                .as_ref()
                .and_then(|cfg| cfg.image.clone())
                .unwrap_or_default(),
            state: state_of(status.as_deref()),
            health,
            labels: c
                .config
                .as_ref()
                .and_then(|cfg| cfg.labels.clone())
                .unwrap_or_default()
                .into_iter()
                .collect(),
            ipv4,
            exit_code: state.and_then(|s| s.exit_code),
            security: Some(security_of(&c)),
        })
    }

    async fn exec_attached(&self, id: &str, spec: &ExecSpec) -> Result<i64, RuntimeError> {
        let exec = self
            .docker
            .create_exec(id, exec_config(spec))
            .await
            .map_err(call(format!("exec in {id}")))?;
        let started = self
            .docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: spec.tty,
                    ..Default::default()
                }),
            )
            .await
            .map_err(call(format!("exec in {id}")))?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = started
        else {
            return Err(RuntimeError::Call {
                runtime: RuntimeKind::Docker,
                operation: format!("exec in {id}"),
                message: "engine started the command detached".into(),
            });
        };
        if let (true, Some((rows, cols))) = (spec.tty, spec.size) {
            let opts = ResizeExecOptionsBuilder::default()
                .h(rows as i32)
                .w(cols as i32)
                .build();
            let _ = self.docker.resize_exec(&exec.id, opts).await;
        }
        if spec.stdin {
            tokio::spawn(async move {
                let mut stdin = tokio::io::stdin();
                let _ = tokio::io::copy(&mut stdin, &mut input).await;
                let _ = input.shutdown().await;
            });
        }
        let mut stdout = std::io::stdout();
        let mut stderr = std::io::stderr();
        while let Some(chunk) = output.next().await {
            match chunk.map_err(call(format!("read exec output from {id}")))? {
                LogOutput::StdErr { message } => {
                    let _ = stderr.write_all(&message);
                    let _ = stderr.flush();
                }
                other => {
                    let _ = stdout.write_all(&other.into_bytes());
                    let _ = stdout.flush();
                }
            }
        }
        let inspected = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(call(format!("read exit code of exec in {id}")))?;
        Ok(inspected.exit_code.unwrap_or(-1))
    }

    async fn exec_capture(&self, id: &str, spec: &ExecSpec) -> Result<ExecOutput, RuntimeError> {
        let mut config = exec_config(spec);
        config.attach_stdin = Some(false);
        config.tty = Some(false);
        let exec = self
            .docker
            .create_exec(id, config)
            .await
            .map_err(call(format!("exec in {id}")))?;
        let started = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(call(format!("exec in {id}")))?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        if let StartExecResults::Attached { mut output, .. } = started {
            while let Some(chunk) = output.next().await {
                match chunk.map_err(call(format!("read exec output from {id}")))? {
                    LogOutput::StdErr { message } => err.extend_from_slice(&message),
                    other => out.extend_from_slice(&other.into_bytes()),
                }
            }
        }
        let inspected = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(call(format!("read exit code of exec in {id}")))?;
        Ok(ExecOutput {
            code: inspected.exit_code.unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
        })
    }

    async fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: Option<usize>,
        out: &mut (dyn Write + Send),
    ) -> Result<(), RuntimeError> {
        let tail = tail.map(|t| t.to_string()).unwrap_or_else(|| "all".into());
        let opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .follow(follow)
            .tail(&tail)
            .build();
        let mut stream = self.docker.logs(id, Some(opts));
        while let Some(item) = stream.next().await {
            let chunk = match item {
                Ok(c) => c,
                Err(e) if is_not_found(&e) => {
                    return Err(RuntimeError::NotFound {
                        what: format!("container {id}"),
                    })
                }
                Err(e) => return Err(call(format!("read logs of {id}"))(e)),
            };
            out.write_all(&chunk.into_bytes())
                .and_then(|_| out.flush())
                .map_err(|source| RuntimeError::Io {
                    doing: "writing logs".into(),
                    source,
                })?;
        }
        Ok(())
    }

    async fn list(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ResourceRef>, RuntimeError> {
        let filters: HashMap<String, Vec<String>> = HashMap::from([(
            "label".to_string(),
            labels
                .iter()
                .map(|(k, v)| {
                    if v.is_empty() {
                        k.clone()
                    } else {
                        format!("{k}={v}")
                    }
                })
                .collect(),
        )]);
        let containers = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(call("list containers"))?;
        let networks = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(call("list networks"))?;
        let mut out: Vec<ResourceRef> = containers
            .into_iter()
            .map(|c| ResourceRef {
                kind: ResourceKind::Container,
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .into(),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
                state: Some(state_of(
                    c.state.map(|s| s.to_string().to_lowercase()).as_deref(),
                )),
            })
            .collect();
        out.extend(networks.into_iter().map(|n| ResourceRef {
            kind: ResourceKind::Network,
            id: n.id.unwrap_or_default(),
            name: n.name.unwrap_or_default(),
            labels: n.labels.unwrap_or_default().into_iter().collect(),
            state: None,
        }));
        Ok(out)
    }
}

/// Privileges, limits, networks and mounts from `docker inspect`.
fn security_of(c: &bollard::models::ContainerInspectResponse) -> crate::SecurityInfo {
    let hc = c.host_config.clone().unwrap_or_default();
    let no_new_privileges = hc.security_opt.iter().flatten().any(|o| {
        let o = o.replace('=', ":");
        o == "no-new-privileges" || o == "no-new-privileges:true"
    });
    let mut networks: Vec<String> = c
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .map(|n| n.keys().cloned().collect())
        .unwrap_or_default();
    networks.sort();
    crate::SecurityInfo {
        privileged: hc.privileged.unwrap_or(false),
        cap_add: hc.cap_add.clone().unwrap_or_default(),
        cap_drop: hc.cap_drop.clone().unwrap_or_default(),
        no_new_privileges,
        user: c
            .config
            .as_ref()
            .and_then(|cfg| cfg.user.clone())
            .unwrap_or_default(),
        pids_limit: hc.pids_limit,
        memory_bytes: hc.memory,
        network_mode: hc.network_mode.clone().unwrap_or_default(),
        networks,
        mounts: c
            .mounts
            .iter()
            .flatten()
            .map(|m| crate::MountInfo {
                kind: m.typ.as_ref().map(|t| t.to_string()).unwrap_or_default(),
                source: m.source.clone().unwrap_or_default(),
                target: m.destination.clone().unwrap_or_default(),
                read_only: !m.rw.unwrap_or(true),
            })
            .collect(),
    }
}

fn exec_config(spec: &ExecSpec) -> ExecConfig {
    ExecConfig {
        attach_stdin: Some(spec.stdin),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(spec.tty),
        env: (!spec.env.is_empty())
            .then(|| spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        cmd: Some(spec.cmd.clone()),
        user: spec.user.clone(),
        working_dir: spec.workdir.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_fit_the_kernel_limit() {
        let n = bridge_name("bottle-a-very-long-bottle-name-internal");
        assert!(n.len() <= 15, "{n}");
        assert_eq!(n, bridge_name("bottle-a-very-long-bottle-name-internal"));
        assert_ne!(n, bridge_name("bottle-other-internal"));
    }

    #[test]
    fn subnet_overlap() {
        let used = vec!["10.213.0.0/24".to_string(), "172.17.0.0/16".to_string()];
        assert!(overlaps(0, &used));
        assert!(!overlaps(1, &used));
        assert!(overlaps(7, &["10.0.0.0/8".to_string()]));
        assert!(overlaps(7, &["10.213.7.128/25".to_string()]));
        assert!(!overlaps(7, &["10.213.8.0/25".to_string()]));
    }
}
