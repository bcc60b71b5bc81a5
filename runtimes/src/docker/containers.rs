//! Docker containers: creating one attached to its networks in order (engine
//! 20.10 takes one network at create; the others are connected before
//! start), starting, removing, inspecting (with the privileges and mounts the
//! engine reports), logs, listing by label, and running a helper to the end.

use super::{call, clean_message, is_not_found, DockerRuntime};
use crate::{
    ContainerInfo, ContainerSpec, ContainerState, ExecOutput, ResourceKind, ResourceRef, Runtime,
    RuntimeError, RuntimeKind,
};
use bollard::container::LogOutput;
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HealthConfig, HostConfig,
    NetworkConnectRequest, NetworkingConfig, PortBinding,
};
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::Ipv4Addr;

impl DockerRuntime {
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
    pub(super) async fn run_to_end(&self, id: &str) -> Result<ExecOutput, RuntimeError> {
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

    pub(super) async fn collect_logs(&self, id: &str) -> Result<(String, String), RuntimeError> {
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
}

pub(super) async fn create(
    rt: &DockerRuntime,
    spec: &ContainerSpec,
) -> Result<String, RuntimeError> {
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
        if spec.host_network || first.is_some() || !spec.dns.is_empty() || !spec.publish.is_empty()
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
    let created = rt
        .docker
        .create_container(Some(opts), body)
        .await
        .map_err(call(format!("create container {}", spec.name)))?;
    for (network, settings) in rest {
        let req = NetworkConnectRequest {
            container: created.id.clone(),
            endpoint_config: Some(settings),
        };
        if let Err(e) = rt.docker.connect_network(&network, req).await {
            let _ = rt.remove_container(&created.id).await;
            return Err(call(format!("connect {} to network {network}", spec.name))(
                e,
            ));
        }
    }
    Ok(created.id)
}

pub(super) async fn start(rt: &DockerRuntime, id: &str) -> Result<(), RuntimeError> {
    rt.docker
        .start_container(id, None)
        .await
        .map_err(call(format!("start container {id}")))
}

pub(super) async fn remove(rt: &DockerRuntime, id: &str) -> Result<(), RuntimeError> {
    let opts = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match rt.docker.remove_container(id, Some(opts)).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        // Removal already under way (e.g. a concurrent `down`).
        Err(e) if clean_message(&e).contains("already in progress") => Ok(()),
        Err(e) => Err(call(format!("remove container {id}"))(e)),
    }
}

pub(super) async fn inspect(rt: &DockerRuntime, id: &str) -> Result<ContainerInfo, RuntimeError> {
    let c = match rt.docker.inspect_container(id, None).await {
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
        security: Some({
            let mut sec = security_of(&c);
            if rt.engine == super::Engine::Podman {
                if let Some(id) = &c.id {
                    sec.bounding_caps = super::libpod::bounding_caps(&rt.endpoint.host, id).await;
                }
            }
            sec
        }),
    })
}

pub(super) async fn logs(
    rt: &DockerRuntime,
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
    let mut stream = rt.docker.logs(id, Some(opts));
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

pub(super) async fn list(
    rt: &DockerRuntime,
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
    let containers = rt
        .docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(call("list containers"))?;
    let networks = rt
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

fn state_of(s: Option<&str>) -> ContainerState {
    match s {
        Some("created") => ContainerState::Created,
        Some("running") => ContainerState::Running,
        Some("exited") | Some("dead") => ContainerState::Exited,
        _ => ContainerState::Other,
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
        bounding_caps: None,
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
