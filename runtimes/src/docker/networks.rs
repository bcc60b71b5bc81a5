//! Docker networks: creating the bridges of a bottle (internal ones on a
//! free /24 of [`INTERNAL_POOL`], with no host address), removing them, and
//! measuring what the engine's host holds on them by running
//! `bottle-sidecar netinfo` in a host-network container.
//!
//! On podman (netavark) a bridge exists only while a container is attached
//! to it, and the host then holds the network's gateway address on it
//! whatever the options say; [`DockerRuntime::hold_bridge`] attaches a
//! sleeping container so that what a bottle's containers would meet can be
//! measured.

use super::{call, clean_message, is_not_found, DockerRuntime, Engine};
use crate::{
    ContainerSpec, NetworkInfo, NetworkKind, NetworkSpec, Role, Runtime, RuntimeError, RuntimeKind,
};
use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};

/// Network option that keeps the host from holding an address on a bridge.
pub(super) const INHIBIT_IPV4: &str = "com.docker.network.bridge.inhibit_ipv4";
/// Engine >= 28 spelling of the same intent; older engines ignore it.
const GATEWAY_MODE_V4: &str = "com.docker.network.bridge.gateway_mode_ipv4";
const BRIDGE_NAME: &str = "com.docker.network.bridge.name";
/// Internal subnets are /24 slices of this /16 (third octet 0..=255).
const INTERNAL_POOL: [u8; 2] = [10, 213];

impl DockerRuntime {
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
            labels: BTreeMap::from([Role::Probe.label()]),
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
        parse_netinfo(&out.stdout)
    }

    /// Starts a sleeping, unprivileged container on `network` so that an
    /// engine which makes bridges on demand (podman) has made this one; the
    /// caller removes it. Labelled `dev.bottle.role=probe`, named
    /// `bottle-netinfo-<pid>-…`, so a probe's sweep finds it if we die.
    pub(super) async fn hold_bridge(
        &self,
        network: &NetworkInfo,
        helper_image: &str,
    ) -> Result<String, RuntimeError> {
        let spec = ContainerSpec {
            name: format!(
                "bottle-netinfo-{}-hold-{}",
                std::process::id(),
                &hex::encode(Sha256::digest(
                    format!("{}{:?}", network.id, std::time::SystemTime::now()).as_bytes()
                ))[..10]
            ),
            image: helper_image.into(),
            entrypoint: Some(vec!["sleep".into(), "120".into()]),
            labels: BTreeMap::from([Role::Probe.label()]),
            networks: vec![crate::NetworkAttachment {
                network: network.id.clone(),
                // Clear of the sidecar's .2 and the agent's .3, which `up`
                // may be starting at this moment, and of the bridge
                // holder's .254.
                ipv4: network
                    .subnet
                    .as_deref()
                    .and_then(|s| s.split('/').next()?.parse::<std::net::Ipv4Addr>().ok())
                    .map(|base| {
                        let o = base.octets();
                        std::net::Ipv4Addr::new(o[0], o[1], o[2], 253)
                    }),
                aliases: vec![],
            }],
            cap_drop: vec!["ALL".into()],
            no_new_privileges: true,
            ..Default::default()
        };
        let id = self.create_container(&spec).await?;
        if let Err(e) = self.start_container(&id).await {
            let _ = self.remove_container(&id).await;
            return Err(e);
        }
        Ok(id)
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

    /// An internal network on podman, through libpod: no DNS, so no gateway
    /// and no address for the host on its bridge ([`super::libpod`]).
    async fn try_create_podman_internal(
        &self,
        spec: &NetworkSpec,
        subnet: &str,
        bridge: &str,
    ) -> Result<Result<String, String>, RuntimeError> {
        let net = super::libpod::InternalNetwork {
            name: &spec.name,
            driver: "bridge",
            network_interface: bridge,
            subnets: vec![super::libpod::Subnet {
                subnet: subnet.to_string(),
            }],
            internal: true,
            dns_enabled: false,
            ipv6_enabled: false,
            labels: &spec.labels,
        };
        Ok(
            super::libpod::create_internal_network(&self.endpoint.host, &net)
                .await?
                .map_err(|f| f.0),
        )
    }
}

pub(super) async fn create(
    rt: &DockerRuntime,
    spec: &NetworkSpec,
) -> Result<NetworkInfo, RuntimeError> {
    let existing = rt.network_names().await?;
    if existing.iter().any(|(n, _)| n == &spec.name) {
        return Err(RuntimeError::Call {
            runtime: RuntimeKind::Docker,
            operation: format!("create network {}", spec.name),
            message: "a network with that name already exists (left over from an earlier run? `bottle down` removes it)".into(),
        });
    }
    let bridge = bridge_name(&spec.name);
    if spec.kind == NetworkKind::Egress {
        let id = rt
            .try_create_network(spec, None, &bridge)
            .await
            .map_err(call(format!("create network {}", spec.name)))?;
        let subnet = rt
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
        let created = if rt.engine == Engine::Podman {
            // The compatible API would give the bridge a host address.
            rt.try_create_podman_internal(spec, &subnet, &bridge)
                .await?
        } else {
            rt.try_create_network(spec, Some(subnet.clone()), &bridge)
                .await
                .map_err(|e| clean_message(&e))
        };
        match created {
            Ok(id) => {
                return Ok(NetworkInfo {
                    id,
                    name: spec.name.clone(),
                    kind: spec.kind,
                    subnet: Some(subnet),
                    host_interface: Some(bridge),
                })
            }
            // Another bottle (or, on podman, another tool) took it between
            // our listing and our create.
            Err(e) if e.contains("overlap") || e.contains("already used") => {
                last_error = e;
                continue;
            }
            Err(e) => {
                return Err(RuntimeError::Call {
                    runtime: RuntimeKind::Docker,
                    operation: format!("create network {}", spec.name),
                    message: e,
                })
            }
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

pub(super) async fn remove(rt: &DockerRuntime, id: &str) -> Result<(), RuntimeError> {
    // Whatever else is still attached (a container the user connected by
    // hand) is disconnected first: the network is the bottle's.
    if let Ok(net) = rt.docker.inspect_network(id, None).await {
        for container in net.containers.unwrap_or_default().into_keys() {
            let req = bollard::models::NetworkDisconnectRequest {
                container,
                force: Some(true),
            };
            let _ = rt.docker.disconnect_network(id, req).await;
        }
    }
    match rt.docker.remove_network(id).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(call(format!("remove network {id}"))(e)),
    }
}

/// The interfaces `bottle-sidecar netinfo` printed: names and addresses.
pub(super) fn parse_netinfo(stdout: &str) -> Result<Vec<(String, Vec<IpAddr>)>, RuntimeError> {
    let json: serde_json::Value =
        serde_json::from_str(stdout.trim()).map_err(|e| RuntimeError::Call {
            runtime: RuntimeKind::Docker,
            operation: "parse netinfo output".into(),
            message: format!("{e}: {}", stdout.trim()),
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

/// The bridge of `network` in `interfaces`, which must be there.
pub(super) fn addresses_of(
    network: &NetworkInfo,
    interfaces: &[(String, Vec<IpAddr>)],
) -> Result<Vec<IpAddr>, RuntimeError> {
    let Some(iface) = &network.host_interface else {
        return Err(RuntimeError::Capability {
            runtime: RuntimeKind::Docker,
            capability: "host-interface".into(),
            detail: format!("network {} has no known bridge interface", network.name),
            fix: "recreate the bottle".into(),
        });
    };
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

pub(super) async fn host_addresses_on(
    rt: &DockerRuntime,
    network: &NetworkInfo,
    helper_image: &str,
) -> Result<Vec<IpAddr>, RuntimeError> {
    let Some(iface) = &network.host_interface else {
        return addresses_of(network, &[]);
    };
    let mut interfaces = rt.host_interfaces(helper_image).await?;
    if rt.engine == Engine::Podman && !interfaces.iter().any(|(name, _)| name == iface) {
        // Podman makes the bridge when the first container joins: measure
        // what the bottle's own containers would meet.
        let holder = rt.hold_bridge(network, helper_image).await?;
        let measured = rt.host_interfaces(helper_image).await;
        let _ = rt.remove_container(&holder).await;
        interfaces = measured?;
    }
    addresses_of(network, &interfaces)
}

pub(super) async fn host_targets(
    rt: &DockerRuntime,
    helper_image: &str,
) -> Result<Vec<IpAddr>, RuntimeError> {
    let mut out: Vec<IpAddr> = rt
        .host_interfaces(helper_image)
        .await?
        .into_iter()
        .flat_map(|(_, a)| a)
        .filter(|a| !a.is_loopback())
        .collect();
    for net in rt
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
