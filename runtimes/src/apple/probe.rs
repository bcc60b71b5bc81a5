//! `bottle probe` for Apple `container`: creates scratch networks and (with a
//! helper image) a dual-homed container, and reads back what the CLI made.
//!
//! Scratch resources carry `dev.bottle.role=probe` and are removed before the
//! probe returns, containers first. With a helper image (the sidecar image)
//! a container on the internal network only tries raw-IP TCP to a public
//! IPv4 and IPv6 address (`internal-network-isolated`, apple/container#2062:
//! a leak refuses, with no weakness to accept) and to a listener the probe
//! opens on the host at the gateway; a dual-homed container tries the same
//! public addresses through the egress network as the control.
//!
//! `host-unreachable-from-internal` is decided by the same function as the
//! check `up` makes before creating anything (`host_addresses_of`, the
//! gateway `network inspect` names, apple/container#1320), so the probe and
//! that check never disagree; the TCP connect is the evidence shown beside it.
//!
//! The release is read too: before 1.2.0 a crafted image could read the
//! CLI's environment (`host-env-hidden-from-images`, a warning, not a
//! refusal, since bottle runs `container` from a scrubbed environment); after
//! 1.2.2 only the live measurements speak for the release.

use super::AppleRuntime;
use crate::{
    Capability, CapabilityState, ContainerSpec, ExecSpec, NetworkAttachment, NetworkKind,
    NetworkSpec, Probe, Publish, Role, Runtime, RuntimeKind, Weakness,
};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
                if rt.version > super::CHECKED_UP_TO {
                    format!("{} (>= {}); newer than {}, the last release read from source: only the measurements below speak for it", rt.version_line, super::MIN_VERSION, super::CHECKED_UP_TO)
                } else {
                    format!("{} (>= {})", rt.version_line, super::MIN_VERSION)
                },
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
            Capability::warning(
                "host-env-hidden-from-images",
                rt.version >= super::ENV_FIX_VERSION,
                "inferred",
                if rt.version >= super::ENV_FIX_VERSION {
                    format!("container {} does not fill an image's unset `ENV` keys from the CLI's environment (fixed in {})", rt.version, super::ENV_FIX_VERSION)
                } else {
                    format!(
                        "container {} fills an image's `ENV` keys that have no value from the environment of the `container` process (apple/container#2027, fixed in {}); bottle runs `container` with only {} of its environment, so a crafted image can read those and nothing else. Fix: upgrade to container {} or later",
                        rt.version,
                        super::ENV_FIX_VERSION,
                        super::ENV_KEEP.join(", "),
                        super::CHECKED_UP_TO
                    )
                },
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
    let mut internal_net: Option<super::json::Network> = None;
    match &internal {
        Ok(n) => {
            networks.push(n.name.clone());
            let inspected = rt.network_inspect(&n.name).await;
            let mode = inspected
                .as_ref()
                .map(|i| i.configuration.mode.clone())
                .unwrap_or_default();
            internal_net = inspected.ok();
            gateway = internal_net
                .as_ref()
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

    let mut measured: Option<Measured> = None;
    let mut control: Option<(Option<bool>, Option<bool>)> = None;
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
                    if started.is_ok() {
                        // The control: the same targets through the egress
                        // network, so a failure from the internal one means
                        // something.
                        control = Some((
                            connect(rt, &id, IpAddr::V4(PUBLIC_V4.0), PUBLIC_V4.1).await,
                            connect(rt, &id, IpAddr::V6(PUBLIC_V6.0), PUBLIC_V6.1).await,
                        ));
                        measured = measure_internal(
                            rt,
                            &tag,
                            int,
                            image,
                            gateway,
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

    probe
        .capabilities
        .push(isolation(measured.as_ref(), control, helper.is_some()));
    // The same source as the check `up` makes before it creates anything
    // ([`super::host_addresses_of`]): what `network inspect` says the host
    // holds. The TCP connect is evidence, not the verdict, so the two never
    // disagree; a connect that succeeds where inspect names no address
    // still counts as reachable (fail closed).
    probe.capabilities.push(match &internal_net {
        Some(net) => host_capability(&super::host_addresses_of(net), measured.as_ref()),
        None => Capability::new(
            "host-unreachable-from-internal",
            CapabilityState::Unknown,
            "measured",
            true,
            "not measured: the scratch internal network could not be created or inspected".into(),
        ),
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

/// The public addresses a container on an `--internal` network must not
/// reach (raw IP, no DNS involved): Cloudflare's resolver answers TCP 443
/// on both families.
pub(super) const PUBLIC_V4: (Ipv4Addr, u16) = (Ipv4Addr::new(1, 1, 1, 1), 443);
pub(super) const PUBLIC_V6: (Ipv6Addr, u16) = (
    Ipv6Addr::new(0x2606, 0x4700, 0x4700, 0, 0, 0, 0, 0x1111),
    443,
);

/// What the helper on the internal network only saw.
pub(super) struct Measured {
    network: String,
    /// Raw-IP TCP to [`PUBLIC_V4`] / [`PUBLIC_V6`]: connected, not, or
    /// unknown (the helper could not run the test).
    v4: Option<bool>,
    v6: Option<bool>,
    /// The host address tried and whether a listener there was reached.
    host: Option<(IpAddr, u16, Option<bool>)>,
}

/// The argv that tries one TCP connection from inside a container: bash's
/// `/dev/tcp` (the sidecar image is Debian), bounded by `timeout`.
pub(super) fn tcp_connect_cmd(ip: IpAddr, port: u16) -> Vec<String> {
    vec![
        "timeout".into(),
        "5".into(),
        "bash".into(),
        "-c".into(),
        format!("exec 3<>/dev/tcp/{ip}/{port}"),
    ]
}

/// The exit code of [`tcp_connect_cmd`] read as: connected (0), not
/// connected (1: refused or unreachable; 124: timed out), or unknown
/// (anything else, e.g. 126/127 when the image lacks `timeout` or `bash`),
/// so a helper that cannot test never reads as "isolated".
pub(super) fn connect_outcome(code: i64) -> Option<bool> {
    match code {
        0 => Some(true),
        1 | 124 => Some(false),
        _ => None,
    }
}

async fn connect(rt: &AppleRuntime, id: &str, ip: IpAddr, port: u16) -> Option<bool> {
    let exec = ExecSpec {
        cmd: tcp_connect_cmd(ip, port),
        ..Default::default()
    };
    let out = rt.exec_capture(id, &exec).await.ok()?;
    connect_outcome(out.code)
}

/// Runs a container on the internal network only and, from it, tries raw-IP
/// TCP to a public IPv4 and IPv6 address and to a listener the probe holds
/// on the host, at the network's gateway (else its `.1`).
async fn measure_internal(
    rt: &AppleRuntime,
    tag: &str,
    internal: &crate::NetworkInfo,
    image: &str,
    gateway: Option<Ipv4Addr>,
    labels: &BTreeMap<String, String>,
    containers: &mut Vec<String>,
) -> Option<Measured> {
    let spec = ContainerSpec {
        name: format!("{tag}-inner"),
        image: image.into(),
        entrypoint: Some(vec!["sleep".into(), "60".into()]),
        labels: labels.clone(),
        networks: vec![NetworkAttachment {
            network: internal.name.clone(),
            ipv4: None,
            aliases: vec![],
        }],
        cap_drop: vec!["NET_RAW".into()],
        ..Default::default()
    };
    let id = rt.create_container(&spec).await.ok()?;
    containers.push(id.clone());
    rt.start_container(&id).await.ok()?;
    let v4 = connect(rt, &id, IpAddr::V4(PUBLIC_V4.0), PUBLIC_V4.1).await;
    let v6 = connect(rt, &id, IpAddr::V6(PUBLIC_V6.0), PUBLIC_V6.1).await;
    let first_host = internal
        .subnet
        .as_deref()
        .and_then(|s| s.split('/').next()?.parse::<Ipv4Addr>().ok())
        .map(|n| Ipv4Addr::from(u32::from(n) + 1));
    let host = match (
        gateway.or(first_host),
        std::net::TcpListener::bind("0.0.0.0:0"),
    ) {
        (Some(ip), Ok(listener)) => {
            let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
            let reached = connect(rt, &id, IpAddr::V4(ip), port).await;
            drop(listener);
            Some((IpAddr::V4(ip), port, reached))
        }
        _ => None,
    };
    Some(Measured {
        network: internal.name.clone(),
        v4,
        v6,
        host,
    })
}

fn said(outcome: Option<bool>) -> &'static str {
    match outcome {
        Some(true) => "CONNECTED",
        Some(false) => "failed",
        None => "could not be tried",
    }
}

/// `internal-network-isolated`: raw-IP TCP from the internal network to the
/// internet. Required and no weakness: a leak goes past the sidecar, so no
/// `--accept-weakness` can make it a bottle, whatever the version.
pub(super) fn isolation(
    measured: Option<&Measured>,
    control: Option<(Option<bool>, Option<bool>)>,
    had_helper: bool,
) -> Capability {
    const NAME: &str = "internal-network-isolated";
    let (v4, v6) = (
        format!("{}:{}", PUBLIC_V4.0, PUBLIC_V4.1),
        format!("[{}]:{}", PUBLIC_V6.0, PUBLIC_V6.1),
    );
    let Some(m) = measured else {
        return Capability::new(
            NAME,
            CapabilityState::Unknown,
            "measured",
            true,
            if had_helper {
                "not measured: the helper container on the internal network did not run; bottle does not assume isolation (apple/container#2062)".into()
            } else {
                "not measured: needs the sidecar image to run a container on the internal network (`bottle up` always measures it)".into()
            },
        );
    };
    let control = match control {
        Some((c4, c6)) => format!(
            "; control through the egress network: {v4} {}, {v6} {}",
            said(c4),
            said(c6)
        ),
        None => String::new(),
    };
    let seen = format!(
        "from a container on {} only, raw-IP TCP to {v4} {} and to {v6} {}{control}",
        m.network,
        said(m.v4),
        said(m.v6)
    );
    if m.v4 == Some(true) || m.v6 == Some(true) {
        Capability::new(
            NAME,
            CapabilityState::No,
            "measured",
            true,
            format!("LEAK: {seen}: this --internal network passes traffic to the internet past the sidecar (apple/container#2062, unfixed up to 1.2.2); bottle refuses whatever the version. Fix: none in `container` yet (PR apple/container#2072 is unmerged): use --runtime docker or smolvm"),
        )
    } else if m.v4 == Some(false) && m.v6 == Some(false) {
        Capability::new(NAME, CapabilityState::Yes, "measured", true, seen)
    } else {
        Capability::new(
            NAME,
            CapabilityState::Unknown,
            "measured",
            true,
            format!("{seen}: the helper could not run the test (it needs `timeout` and `bash` in the sidecar image), so isolation is not assumed"),
        )
    }
}

/// `host-unreachable-from-internal`, from the host addresses `network
/// inspect` names (the check `up` makes) with the TCP connect as evidence.
pub(super) fn host_capability(host_addrs: &[IpAddr], measured: Option<&Measured>) -> Capability {
    let listed = host_addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let evidence = measured
        .and_then(|m| m.host.map(|h| (m.network.clone(), h)))
        .map(|(net, (ip, port, r))| {
            (
                r,
                format!(
                    "from a container on {net} only, a TCP connect to the host's listener at {ip}:{port} {}",
                    said(r)
                ),
            )
        });
    let how = if evidence.is_some() {
        "measured"
    } else {
        "inferred"
    };
    let connected = evidence.as_ref().is_some_and(|(r, _)| *r == Some(true));
    let evidence = evidence.map(|(_, e)| e);
    let reachable = !host_addrs.is_empty() || connected;
    let detail = match (host_addrs.is_empty(), connected, evidence) {
        (false, _, Some(e)) => format!("the host holds {listed} on the internal network (apple/container#1320); {e}"),
        (false, _, None) => format!("the host holds {listed} on the internal network (apple/container#1320, open up to 1.2.2); not measured without the sidecar image"),
        (true, true, Some(e)) => format!("`network inspect` names no gateway, yet {e}: counted as reachable"),
        (true, _, Some(e)) => format!("`network inspect` names no gateway on the internal network; {e}"),
        (true, _, None) => "`network inspect` names no gateway on the internal network".into(),
    };
    Capability {
        weakness: reachable.then_some(Weakness::HostReachableFromInternal),
        ..Capability::new(
            "host-unreachable-from-internal",
            CapabilityState::from_bool(!reachable),
            how,
            true,
            detail,
        )
    }
}
