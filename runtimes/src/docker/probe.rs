//! `bottle probe` for Docker: measures, by creating throw-away resources and
//! looking at them, whether the engine can hold a bottle.
//!
//! Every scratch resource carries `dev.bottle.role=probe` and is removed before
//! the probe returns, whatever happened.

use super::{DockerRuntime, Engine};
use crate::{
    Capability, CapabilityState, ContainerSpec, NetworkAttachment, NetworkInfo, NetworkKind,
    NetworkSpec, Probe, Publish, Role, Runtime, RuntimeKind, Weakness,
};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Is this engine version fixed for CVE-2024-29018 (DNS forwarded from
/// internal networks)? Fixed in 26.0.0, 25.0.5 and 23.0.11.
pub fn dns_isolated_on_internal(version: &str) -> Option<bool> {
    let core = version.split(['+', '-', '~']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
    let (major, minor, patch) = (
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    );
    Some(match (major, minor) {
        (m, _) if m >= 26 => true,
        (25, 0) => patch >= 5,
        (m, _) if m > 23 => false,
        (23, 0) => patch >= 11,
        _ => false,
    })
}

/// Removes scratch resources of earlier probes whose process is gone (a probe
/// killed mid-way cannot clean up after itself). Only for a local engine:
/// there the pid in the name is a pid of this machine.
async fn sweep_stale(rt: &DockerRuntime) {
    if !rt.is_local() {
        return;
    }
    let labels = BTreeMap::from([Role::Probe.label()]);
    let Ok(found) = rt.list(&labels).await else {
        return;
    };
    let mut found = found;
    // Containers before networks.
    found.sort_by_key(|r| r.kind == crate::ResourceKind::Network);
    for r in found {
        let pid = r
            .name
            .strip_prefix("bottle-probe-")
            .or_else(|| r.name.strip_prefix("bottle-netinfo-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if pid.is_some() && !alive {
            let _ = match r.kind {
                crate::ResourceKind::Container => rt.remove_container(&r.id).await,
                crate::ResourceKind::Network => rt.remove_network(&r.id).await,
            };
        }
    }
}

pub(super) async fn run(rt: &DockerRuntime, helper: Option<&str>) -> Probe {
    sweep_stale(rt).await;
    let mut probe = Probe {
        runtime: RuntimeKind::Docker,
        endpoint: format!("{} ({})", rt.endpoint.host, rt.endpoint.source),
        present: true,
        running: true,
        version: Some(rt.version.clone()),
        capabilities: vec![Capability::new(
            "engine-api",
            CapabilityState::Yes,
            "measured",
            true,
            match rt.engine {
                Engine::Docker => format!(
                    "engine {} answers, API {} negotiated",
                    rt.version, rt.api_version
                ),
                Engine::Podman => format!(
                    "podman {} answers on its Docker-compatible API, API {} negotiated",
                    rt.version, rt.api_version
                ),
            },
        )],
    };
    let tag = format!(
        "bottle-probe-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    let labels = BTreeMap::from([Role::Probe.label()]);
    let mut networks: Vec<NetworkInfo> = Vec::new();
    let mut containers: Vec<String> = Vec::new();

    // Internal network with the host address inhibited.
    let internal = rt
        .create_network(&NetworkSpec {
            name: format!("{tag}-internal"),
            kind: NetworkKind::Internal,
            labels: labels.clone(),
        })
        .await;
    let internal = match internal {
        Ok(net) => {
            let inspected = rt.docker.inspect_network(&net.id, None).await.ok();
            let is_internal = inspected.as_ref().and_then(|n| n.internal).unwrap_or(false);
            let inhibited = inspected
                .as_ref()
                .and_then(|n| n.options.as_ref())
                .and_then(|o| o.get(super::networks::INHIBIT_IPV4).cloned())
                .is_some_and(|v| v == "true");
            probe.capabilities.push(match rt.engine {
                Engine::Docker => Capability::new(
                    "internal-network",
                    CapabilityState::from_bool(is_internal && inhibited),
                    "measured",
                    true,
                    format!(
                        "created {} (subnet {}): internal={is_internal}, {}={inhibited}",
                        net.name,
                        net.subnet.as_deref().unwrap_or("?"),
                        super::networks::INHIBIT_IPV4
                    ),
                ),
                // Made through libpod (libpod.rs): read back there.
                Engine::Podman => {
                    match super::libpod::network_facts(&rt.endpoint.host, &net.id).await {
                        Ok(f) => Capability::new(
                            "internal-network",
                            CapabilityState::from_bool(
                                f.internal && !f.dns_enabled && f.gateways.is_empty(),
                            ),
                            "measured",
                            true,
                            format!(
                                "created {} (subnet {}) through podman's own API: internal={}, dns_enabled={}, gateways {:?}",
                                net.name,
                                net.subnet.as_deref().unwrap_or("?"),
                                f.internal,
                                f.dns_enabled,
                                f.gateways
                            ),
                        ),
                        Err(e) => Capability::new(
                            "internal-network",
                            CapabilityState::Unknown,
                            "measured",
                            true,
                            format!("created {}, but podman's own API did not describe it: {e}", net.name),
                        ),
                    }
                }
            });
            networks.push(net.clone());
            Some(net)
        }
        Err(e) => {
            probe.capabilities.push(Capability::new(
                "internal-network",
                CapabilityState::No,
                "measured",
                true,
                format!("creating an internal network failed: {e}"),
            ));
            None
        }
    };

    // Podman makes a bridge only while a container is on it: hold one there
    // for the measurements below, as a bottle's sidecar would.
    if let (Engine::Podman, Some(net), Some(image)) = (rt.engine, &internal, helper) {
        if let Ok(id) = rt.hold_bridge(net, image).await {
            containers.push(id);
        }
    }

    // The internal network's own checks (host addresses, then broadcast
    // with the hardening `up` applies) and the egress network with its
    // dual-homed container are independent: measured at once.
    let internal_checks = async {
        match (&internal, helper) {
            (Some(net), Some(image)) => {
                let (found, isolated) = rt.check_and_isolate(net, image).await;
                let broadcast = broadcast_isolated(rt, net, image, isolated).await;
                Some((host_address(net, found), broadcast))
            }
            _ => None,
        }
    };
    let (checked, (egress, dual)) = tokio::join!(
        internal_checks,
        egress_and_dual(rt, &tag, &labels, internal.as_ref(), helper)
    );
    match checked {
        Some((host, broadcast)) => {
            probe.capabilities.push(host);
            probe.capabilities.push(broadcast);
        }
        None if helper.is_none() => {
            for name in ["no-host-address-on-internal", "broadcast-isolated"] {
                probe.capabilities.push(Capability::new(
                    name,
                    CapabilityState::Unknown,
                    "measured",
                    true,
                    "not measured: needs the sidecar image to run a host-network helper".into(),
                ));
            }
        }
        None => {}
    }
    if let Some(net) = egress {
        networks.push(net);
    }
    containers.extend(dual.containers);
    probe.capabilities.extend(dual.capabilities);

    probe.capabilities.push(internal_dns(rt));

    // On podman the isolation step holds a container on the network for
    // the network's life (`broadcast`'s `<network>-bridge`); the probe's
    // networks end here, so those go too (absent elsewhere: not an error).
    if matches!(rt.engine, Engine::Podman) {
        containers.extend(networks.iter().map(|net| format!("{}-bridge", net.name)));
    }
    futures_util::future::join_all(containers.iter().map(|id| rt.remove_container(id))).await;
    futures_util::future::join_all(networks.iter().map(|net| rt.remove_network(&net.id))).await;
    probe
}

/// The `no-host-address-on-internal` row from what was found on `net`.
fn host_address(net: &NetworkInfo, found: Result<Vec<IpAddr>, crate::RuntimeError>) -> Capability {
    match found {
        Ok(addrs) => {
            let v4: Vec<_> = addrs.iter().filter(|a| a.is_ipv4()).collect();
            Capability::new(
                "no-host-address-on-internal",
                CapabilityState::from_bool(v4.is_empty()),
                "measured",
                true,
                if v4.is_empty() {
                    format!(
                        "host bridge {} of the internal network has no IPv4 address",
                        net.host_interface.as_deref().unwrap_or("?")
                    )
                } else {
                    format!(
                        "host bridge {} holds {:?}: the agent could reach the host",
                        net.host_interface.as_deref().unwrap_or("?"),
                        v4
                    )
                },
            )
        }
        Err(e) => Capability::new(
            "no-host-address-on-internal",
            CapabilityState::Unknown,
            "measured",
            true,
            format!("could not list the host's interfaces: {e}"),
        ),
    }
}

/// What the egress half of the probe made and measured.
struct Dual {
    containers: Vec<String>,
    capabilities: Vec<Capability>,
}

/// An egress network, a container on it and on `internal`, and a per-IP
/// published port.
async fn egress_and_dual(
    rt: &DockerRuntime,
    tag: &str,
    labels: &BTreeMap<String, String>,
    internal: Option<&NetworkInfo>,
    helper: Option<&str>,
) -> (Option<NetworkInfo>, Dual) {
    let mut dual = Dual {
        containers: vec![],
        capabilities: vec![],
    };
    let egress = rt
        .create_network(&NetworkSpec {
            name: format!("{tag}-egress"),
            kind: NetworkKind::Egress,
            labels: labels.clone(),
        })
        .await;
    match (internal, &egress, helper) {
        (Some(int), Ok(eg), Some(image)) => {
            let host_ip = Ipv4Addr::new(127, 0, 0, 100 + (std::process::id() % 100) as u8);
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap_or(47_123);
            let spec = ContainerSpec {
                name: format!("{tag}-dual"),
                image: image.into(),
                entrypoint: Some(vec!["sleep".into(), "30".into()]),
                labels: labels.clone(),
                networks: vec![
                    NetworkAttachment {
                        network: eg.id.clone(),
                        ipv4: None,
                        aliases: vec![],
                    },
                    NetworkAttachment {
                        network: int.id.clone(),
                        ipv4: None,
                        aliases: vec![],
                    },
                ],
                publish: vec![Publish {
                    host_ip: IpAddr::V4(host_ip),
                    host_port: port,
                    container_port: 3128,
                }],
                cap_drop: vec!["ALL".into()],
                no_new_privileges: true,
                ..Default::default()
            };
            match rt.create_container(&spec).await {
                Ok(id) => {
                    dual.containers.push(id.clone());
                    let started = rt.start_container(&id).await;
                    let info = rt.inspect_container(&id).await;
                    let attached = info.as_ref().map(|i| i.ipv4.len()).unwrap_or(0);
                    dual.capabilities.push(Capability::new(
                        "multi-network-attach",
                        CapabilityState::from_bool(attached == 2),
                        "measured",
                        true,
                        format!("a container created on the egress network and connected to the internal one before start holds {attached} addresses"),
                    ));
                    dual.capabilities.push(match started {
                        Err(e) => Capability::new(
                            "per-ip-publish",
                            CapabilityState::Unknown,
                            "measured",
                            false,
                            format!("could not start the publishing container: {e}"),
                        ),
                        Ok(()) if rt.is_local() => {
                            let on = SocketAddr::from((host_ip, port));
                            let off = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1), port));
                            let t = Duration::from_secs(2);
                            let bound = TcpStream::connect_timeout(&on, t).is_ok();
                            let leaked = TcpStream::connect_timeout(&off, t).is_ok();
                            Capability::new(
                                "per-ip-publish",
                                CapabilityState::from_bool(bound && !leaked),
                                "measured",
                                false,
                                format!(
                                    "published {on}: connect to it {}, to {off} {}",
                                    if bound { "succeeded" } else { "failed" },
                                    if leaked { "ALSO succeeded" } else { "refused" }
                                ),
                            )
                        }
                        Ok(()) => Capability::new(
                            "per-ip-publish",
                            CapabilityState::Unknown,
                            "measured",
                            false,
                            "engine is not on this machine; its loopback is not ours to test"
                                .into(),
                        ),
                    });
                }
                Err(e) => dual.capabilities.push(Capability::new(
                    "multi-network-attach",
                    CapabilityState::No,
                    "measured",
                    true,
                    format!("creating a dual-homed container failed: {e}"),
                )),
            }
        }
        (_, Err(e), _) => dual.capabilities.push(Capability::new(
            "multi-network-attach",
            CapabilityState::Unknown,
            "measured",
            true,
            format!("creating an egress network failed: {e}"),
        )),
        _ => dual.capabilities.push(Capability::new(
            "multi-network-attach",
            CapabilityState::Unknown,
            "measured",
            true,
            "not measured: needs the sidecar image and an internal network".into(),
        )),
    }
    (egress.ok(), dual)
}

/// Whether internal networks forward DNS upstream, inferred from the docker
/// engine's version. Podman's version numbers are podman's, and its DNS
/// server (aardvark-dns) is not docker's: nothing is inferred there.
fn internal_dns(rt: &DockerRuntime) -> Capability {
    if rt.engine == Engine::Podman {
        return Capability::new(
            "internal-dns-isolated",
            CapabilityState::Yes,
            "measured",
            false,
            format!("podman {}: bottle's internal networks are made with dns_enabled=false (read back in the internal-network row), so no DNS server runs on them; the agent's DNS server is its sidecar", rt.version),
        );
    }
    let dns = dns_isolated_on_internal(&rt.version);
    Capability::new(
        "internal-dns-isolated",
        match dns {
            Some(true) => CapabilityState::Yes,
            Some(false) => CapabilityState::No,
            None => CapabilityState::Unknown,
        },
        "inferred",
        false,
        match dns {
            Some(true) => format!("engine {} does not forward DNS from internal networks", rt.version),
            _ => format!("engine {} forwards DNS from internal networks upstream (CVE-2024-29018); mitigated: the agent's DNS server is its sidecar, so forwarded queries reach only the sidecar", rt.version),
        },
    )
}

/// Given what [`Runtime::isolate_host_from`] did to `net`, sends broadcast and
/// multicast from a container on it while a host-network helper listens on
/// 0.0.0.0 (the engine's host: on Docker Desktop or a remote engine, the
/// host whose sockets are at risk is the engine's VM or machine).
async fn broadcast_isolated(
    rt: &DockerRuntime,
    net: &NetworkInfo,
    image: &str,
    isolated: Result<String, crate::RuntimeError>,
) -> Capability {
    let weak = |detail: String| {
        Capability::weak(
            "broadcast-isolated",
            Weakness::BroadcastReachesHost,
            "measured",
            detail,
        )
    };
    let set = match isolated {
        Ok(set) => set,
        Err(e) => {
            return weak(format!(
                "closing the internal bridge failed: {}",
                e.to_string().replace('\n', " ")
            ))
        }
    };
    match super::broadcast::measure(rt, net, image).await {
        Ok(leak) if leak.received.is_empty() => Capability::new(
            "broadcast-isolated",
            CapabilityState::Yes,
            "measured",
            true,
            format!(
                "with {set}: nothing sent to {} from the internal network reached a host socket on 0.0.0.0",
                leak.sent_to.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
            ),
        ),
        Ok(leak) => weak(format!(
            "with {set}, a host socket on 0.0.0.0 still received: {}",
            leak.received.join("; ")
        )),
        Err(e) => Capability::new(
            "broadcast-isolated",
            CapabilityState::Unknown,
            "measured",
            true,
            format!("with {set}, the measurement failed: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::dns_isolated_on_internal as fixed;

    #[test]
    fn cve_2024_29018_versions() {
        assert_eq!(fixed("20.10.24+dfsg1"), Some(false));
        assert_eq!(fixed("23.0.10"), Some(false));
        assert_eq!(fixed("23.0.11"), Some(true));
        assert_eq!(fixed("24.0.9"), Some(false));
        assert_eq!(fixed("25.0.4"), Some(false));
        assert_eq!(fixed("25.0.5"), Some(true));
        assert_eq!(fixed("26.0.0"), Some(true));
        assert_eq!(fixed("28.2.2"), Some(true));
        assert_eq!(fixed("garbage"), None);
    }
}
