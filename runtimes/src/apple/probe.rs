//! `bottle probe` for Apple `container`: creates scratch networks and (with a
//! helper image) a dual-homed container, and reads back what the CLI made.
//!
//! Scratch resources carry `dev.bottle.role=probe` and are removed before the
//! probe returns, containers first. Host reachability from the internal
//! network is measured from inside a container on it when a helper image is
//! given (a TCP connect to a listener the probe opens on the host, at the
//! network's gateway); without one it is inferred from apple/container#1320.

use super::AppleRuntime;
use crate::{
    Capability, CapabilityState, ContainerSpec, ExecSpec, NetworkAttachment, NetworkKind,
    NetworkSpec, Probe, Publish, Role, Runtime, RuntimeKind, Weakness,
};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

pub(super) async fn run(rt: &AppleRuntime, helper: Option<&str>) -> Probe {
    let mut probe = Probe {
        runtime: RuntimeKind::AppleContainer,
        endpoint: rt.tool.bin.display().to_string(),
        present: true,
        running: true,
        version: Some(rt.version.to_string()),
        capabilities: vec![
            Capability::new(
                "cli",
                CapabilityState::Yes,
                "measured",
                true,
                format!("{} (>= {})", rt.version_line, super::MIN_VERSION),
            ),
            Capability::new(
                "service-running",
                CapabilityState::Yes,
                "measured",
                true,
                format!(
                    "`system status` says running (API server {})",
                    if rt.service_version.is_empty() { "?" } else { &rt.service_version }
                ),
            ),
            Capability::new(
                "macos-26",
                match &rt.macos {
                    Some(_) => CapabilityState::Yes,
                    None => CapabilityState::Unknown,
                },
                "measured",
                false,
                match &rt.macos {
                    Some(v) => format!("macOS {v}"),
                    None => "not macOS: the `container` CLI found is a stand-in (tests); the `network` command answered".into(),
                },
            ),
        ],
    };
    let tag = format!("bottle-probe-{}", std::process::id());
    let labels = BTreeMap::from([Role::Probe.label()]);
    let mut networks: Vec<String> = Vec::new();
    let mut containers: Vec<String> = Vec::new();

    let egress = rt
        .create_network(&NetworkSpec {
            name: format!("{tag}-egress"),
            kind: NetworkKind::Egress,
            labels: labels.clone(),
        })
        .await;
    probe.capabilities.push(match &egress {
        Ok(n) => {
            networks.push(n.name.clone());
            Capability::new(
                "private-network",
                CapabilityState::Yes,
                "measured",
                true,
                format!(
                    "created NAT network {} ({})",
                    n.name,
                    n.subnet.as_deref().unwrap_or("?")
                ),
            )
        }
        Err(e) => Capability::new(
            "private-network",
            CapabilityState::No,
            "measured",
            true,
            format!("`network create` failed: {e}"),
        ),
    });

    let internal = rt
        .create_network(&NetworkSpec {
            name: format!("{tag}-internal"),
            kind: NetworkKind::Internal,
            labels: labels.clone(),
        })
        .await;
    let mut gateway: Option<Ipv4Addr> = None;
    match &internal {
        Ok(n) => {
            networks.push(n.name.clone());
            let inspected = rt.network_inspect(&n.name).await;
            let mode = inspected
                .as_ref()
                .map(|i| i.configuration.mode.clone())
                .unwrap_or_default();
            gateway = inspected
                .ok()
                .and_then(|i| i.status.ipv4_gateway.parse().ok());
            probe.capabilities.push(Capability::new(
                "internal-network",
                CapabilityState::from_bool(mode == "hostOnly"),
                "measured",
                true,
                format!(
                    "created {} with --internal: mode {mode:?}, subnet {}",
                    n.name,
                    n.subnet.as_deref().unwrap_or("?")
                ),
            ));
        }
        Err(e) => probe.capabilities.push(Capability::new(
            "internal-network",
            CapabilityState::No,
            "measured",
            true,
            format!("`network create --internal` failed: {e}"),
        )),
    }

    let mut host_reachable: Option<(bool, String)> = None;
    match (&egress, &internal, helper) {
        (Ok(eg), Ok(int), Some(image)) => {
            let host_ip = Ipv4Addr::new(127, 0, 0, 100 + (std::process::id() % 100) as u8);
            let spec = ContainerSpec {
                name: format!("{tag}-dual"),
                image: image.into(),
                entrypoint: Some(vec!["sleep".into(), "60".into()]),
                labels: labels.clone(),
                networks: vec![
                    NetworkAttachment {
                        network: eg.name.clone(),
                        ipv4: None,
                        aliases: vec![],
                    },
                    NetworkAttachment {
                        network: int.name.clone(),
                        ipv4: None,
                        aliases: vec![],
                    },
                ],
                publish: vec![Publish {
                    host_ip: IpAddr::V4(host_ip),
                    host_port: 47_123,
                    container_port: 3128,
                }],
                cap_drop: vec!["NET_RAW".into()],
                ..Default::default()
            };
            match rt.create_container(&spec).await {
                Ok(id) => {
                    containers.push(id.clone());
                    let started = rt.start_container(&id).await;
                    let raw = rt.run(&["inspect".into(), id.clone()]).await.ok();
                    let parsed: Option<Vec<super::json::Container>> =
                        raw.and_then(|o| serde_json::from_str(o.stdout.trim()).ok());
                    let c = parsed.and_then(|v| v.into_iter().next());
                    let nets: Vec<String> = c
                        .as_ref()
                        .map(|c| {
                            c.status
                                .networks
                                .iter()
                                .map(|n| format!("{}={}", n.network, n.ipv4_address))
                                .collect()
                        })
                        .unwrap_or_default();
                    let ordered = c.as_ref().is_some_and(|c| {
                        c.status.networks.len() == 2
                            && c.status.networks[0].network == eg.name
                            && c.status.networks[1].network == int.name
                            && c.status.networks.iter().all(|n| n.ipv4().is_some())
                    });
                    probe.capabilities.push(Capability::new(
                        "multi-network-attach",
                        CapabilityState::from_bool(started.is_ok() && ordered),
                        "measured",
                        true,
                        match &started {
                            Ok(()) => format!("a container created with --network {} --network {} holds [{}] after start", eg.name, int.name, nets.join(", ")),
                            Err(e) => format!("the dual-homed container did not start: {e}"),
                        },
                    ));
                    let published = c
                        .as_ref()
                        .and_then(|c| c.configuration.published_ports.first().cloned());
                    probe.capabilities.push(Capability::new(
                        "per-ip-publish",
                        CapabilityState::from_bool(
                            published
                                .as_ref()
                                .is_some_and(|p| p.host_address == host_ip.to_string()),
                        ),
                        "measured",
                        false,
                        match published {
                            Some(p) => format!(
                                "-p {host_ip}:47123:3128 is recorded as {}:{}",
                                p.host_address, p.host_port
                            ),
                            None => "the published port is not in `inspect`".into(),
                        },
                    ));
                    if let (Ok(()), Some(gw)) = (&started, gateway) {
                        host_reachable = measure_host(
                            rt,
                            &tag,
                            int.name.as_str(),
                            image,
                            gw,
                            &labels,
                            &mut containers,
                        )
                        .await;
                    }
                }
                Err(e) => probe.capabilities.push(Capability::new(
                    "multi-network-attach",
                    CapabilityState::No,
                    "measured",
                    true,
                    format!("creating a dual-homed container failed: {e}"),
                )),
            }
        }
        (_, _, None) => probe.capabilities.push(Capability::new(
            "multi-network-attach",
            CapabilityState::Unknown,
            "measured",
            true,
            "not measured: needs the sidecar image to run a container".into(),
        )),
        _ => probe.capabilities.push(Capability::new(
            "multi-network-attach",
            CapabilityState::Unknown,
            "measured",
            true,
            "not measured: a scratch network could not be created".into(),
        )),
    }

    let (reachable, how, detail) = match host_reachable {
        Some((r, d)) => (r, "measured", d),
        None => (
            true,
            "inferred",
            format!(
                "the host answers at the gateway{} of every --internal network (apple/container#1320, open in 1.0.0)",
                gateway.map(|g| format!(" {g}")).unwrap_or_default()
            ),
        ),
    };
    probe.capabilities.push(Capability {
        weakness: reachable.then_some(Weakness::HostReachableFromInternal),
        ..Capability::new(
            "host-unreachable-from-internal",
            CapabilityState::from_bool(!reachable),
            how,
            true,
            detail,
        )
    });
    // Inferred, not measured: the fake CLI has no network to send on, and
    // the CLI has nothing that would change the answer.
    probe.capabilities.push(Capability::weak("broadcast-isolated", Weakness::BroadcastReachesHost, "inferred", "an --internal network is a vmnet host-only segment whose host bridge holds the gateway address, so what the agent sends to 255.255.255.255, the subnet broadcast or a multicast group reaches host sockets bound to 0.0.0.0; container has no option to filter it".into()));
    probe.capabilities.push(Capability::new(
        "internal-dns-isolated",
        CapabilityState::Unknown,
        "inferred",
        false,
        "the agent's resolver is the sidecar (--dns); what else answers DNS on the internal network is the host at its gateway, covered by host-unreachable-from-internal".into(),
    ));
    probe.capabilities.push(Capability::new(
        "no-new-privileges",
        CapabilityState::No,
        "inferred",
        false,
        "container 1.0.0 has no such flag; every container is its own VM, and the agent keeps NET_RAW dropped".into(),
    ));

    for id in containers {
        let _ = rt.remove_container(&id).await;
    }
    for n in networks {
        let _ = rt.remove_network(&n).await;
    }
    probe
}

/// Runs a container on the internal network only and tries a TCP connect to
/// a listener the probe holds on the host, at the network's gateway.
async fn measure_host(
    rt: &AppleRuntime,
    tag: &str,
    internal: &str,
    image: &str,
    gateway: Ipv4Addr,
    labels: &BTreeMap<String, String>,
    containers: &mut Vec<String>,
) -> Option<(bool, String)> {
    let listener = std::net::TcpListener::bind("0.0.0.0:0").ok()?;
    let port = listener.local_addr().ok()?.port();
    let spec = ContainerSpec {
        name: format!("{tag}-inner"),
        image: image.into(),
        entrypoint: Some(vec!["sleep".into(), "60".into()]),
        labels: labels.clone(),
        networks: vec![NetworkAttachment {
            network: internal.into(),
            ipv4: None,
            aliases: vec![],
        }],
        cap_drop: vec!["NET_RAW".into()],
        ..Default::default()
    };
    let id = rt.create_container(&spec).await.ok()?;
    containers.push(id.clone());
    rt.start_container(&id).await.ok()?;
    let exec = ExecSpec {
        cmd: vec![
            "timeout".into(),
            "5".into(),
            "bash".into(),
            "-c".into(),
            format!("exec 3<>/dev/tcp/{gateway}/{port}"),
        ],
        ..Default::default()
    };
    let out = rt.exec_capture(&id, &exec).await.ok()?;
    drop(listener);
    let reachable = out.code == 0;
    Some((
        reachable,
        format!(
            "from a container on {internal} only, a TCP connect to the host's listener at {gateway}:{port} {}",
            if reachable { "SUCCEEDED (apple/container#1320)" } else { "failed" }
        ),
    ))
}
