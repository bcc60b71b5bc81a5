//! `bottle probe` for smolvm: creates scratch machines (never boots them, a
//! boot costs seconds and fails on nested KVM) and reads back what the CLI
//! recorded; the rest is inferred from the version, and says so.
//!
//! Scratch machines carry `dev.bottle.role=probe` and are deleted before the
//! probe returns.

use super::{SmolvmRuntime, FABRIC_SINCE, LOOPBACK_BLOCKED_SINCE};
use crate::{Capability, CapabilityState, Probe, Role, RuntimeKind, Weakness, LABEL_ROLE};

pub(super) async fn run(rt: &SmolvmRuntime, _helper: Option<&str>) -> Probe {
    let v = rt.version;
    let mut probe = Probe {
        runtime: RuntimeKind::Smolvm,
        endpoint: rt.tool.bin.display().to_string(),
        present: true,
        running: true,
        version: Some(v.to_string()),
        capabilities: vec![
            Capability::new(
                "cli",
                CapabilityState::Yes,
                "measured",
                true,
                format!("`smolvm --version` says {v} (>= {FABRIC_SINCE} for the fabric)"),
            ),
            Capability::new(
                "service-running",
                CapabilityState::Yes,
                "inferred",
                true,
                "smolvm has no daemon: each machine is a process of its own".into(),
            ),
        ],
    };
    let tag = format!("bottle-probe-{}", std::process::id());
    let role = format!("{LABEL_ROLE}={}", Role::Probe);
    let fabric = format!("{tag}-fabric");
    let mut made: Vec<String> = Vec::new();

    // The agent's shape: fabric only, allow-list = one /32, DNS pinned.
    let agent = format!("{tag}-agent");
    let mut args = rt.machine("create", &agent);
    args.extend([
        "--label".into(),
        role.clone(),
        "--network".into(),
        fabric.clone(),
        "--allow-cidr".into(),
        "192.0.2.1/32".into(),
        "--dns".into(),
        "192.0.2.1".into(),
    ]);
    let created = rt.tool.run(&args).await;
    let status = match created {
        Ok(o) if o.ok() => {
            made.push(agent.clone());
            rt.status(&agent).await.map_err(|e| e.to_string())
        }
        Ok(o) => Err(o.message()),
        Err(e) => Err(e.to_string()),
    };
    match &status {
        Ok(m) => {
            let cidrs = m.allowed_cidrs.clone().unwrap_or_default();
            probe.capabilities.push(Capability::new(
                "internal-network",
                CapabilityState::from_bool(m.network),
                "measured",
                true,
                format!("a machine created with --network {fabric} records network={} (the fabric is private to its members; addresses are leased at start)", m.network),
            ));
            probe.capabilities.push(Capability::new(
                "egress-allow-list",
                CapabilityState::from_bool(cidrs == ["192.0.2.1/32"] && m.dns.as_deref() == Some("192.0.2.1")),
                "measured",
                true,
                format!("--allow-cidr 192.0.2.1/32 --dns 192.0.2.1 recorded as allowed_cidrs={cidrs:?}, dns={:?}", m.dns),
            ));
        }
        Err(e) => {
            probe.capabilities.push(Capability::new(
                "internal-network",
                CapabilityState::No,
                "measured",
                true,
                format!("`machine create --network` failed: {e}"),
            ));
        }
    }

    // The sidecar's shape: fabric plus its own egress.
    let sidecar = format!("{tag}-sidecar");
    let mut args = rt.machine("create", &sidecar);
    args.extend([
        "--label".into(),
        role.clone(),
        "--network".into(),
        fabric.clone(),
        "--net".into(),
    ]);
    let dual = match rt.tool.run(&args).await {
        Ok(o) if o.ok() => {
            made.push(sidecar.clone());
            rt.status(&sidecar)
                .await
                .map(|m| m.network && m.allowed_cidrs.unwrap_or_default().is_empty())
                .map_err(|e| e.to_string())
        }
        Ok(o) => Err(o.message()),
        Err(e) => Err(e.to_string()),
    };
    probe.capabilities.push(match dual {
        Ok(ok) => Capability::new("multi-network-attach", CapabilityState::from_bool(ok), "measured", true, format!("a machine created with --network {fabric} --net records open egress besides the fabric: {ok}")),
        Err(e) => Capability::new("multi-network-attach", CapabilityState::No, "measured", true, format!("`machine create --network --net` failed: {e}")),
    });

    // Per-IP publish: the CLI has no host-IP form.
    let publish = format!("{tag}-publish");
    let mut args = rt.machine("create", &publish);
    args.extend([
        "--label".into(),
        role.clone(),
        "--port".into(),
        "127.0.0.2:47123:80".into(),
    ]);
    probe.capabilities.push(match rt.tool.run(&args).await {
        Ok(o) if o.ok() => {
            made.push(publish.clone());
            Capability::new("per-ip-publish", CapabilityState::Yes, "measured", false, "-p 127.0.0.2:47123:80 was accepted".into())
        }
        Ok(o) => Capability::new("per-ip-publish", CapabilityState::No, "measured", false, format!("-p 127.0.0.2:47123:80 refused: {}; published ports bind 127.0.0.1 only (bottle publishes nothing of a bottle)", o.message())),
        Err(e) => Capability::new("per-ip-publish", CapabilityState::Unknown, "measured", false, e.to_string()),
    });

    let loopback_blocked = v >= LOOPBACK_BLOCKED_SINCE;
    probe.capabilities.push(Capability {
        weakness: (!loopback_blocked).then_some(Weakness::HostReachableFromInternal),
        ..Capability::new(
            "host-unreachable-from-internal",
            CapabilityState::from_bool(loopback_blocked),
            "inferred",
            true,
            if loopback_blocked {
                format!("the host has no address on a fabric; the gateway relays to host loopback only, blocked by default since {LOOPBACK_BLOCKED_SINCE} (bottle never passes --allow-host-loopback), and the agent's allow-list is the sidecar's /32")
            } else {
                format!("smolvm {v} relays guest traffic for the gateway to the host's loopback unless blocked; blocked by default only from {LOOPBACK_BLOCKED_SINCE}")
            },
        )
    });
    probe.capabilities.push(Capability::weak("internal-dns-isolated", Weakness::DnsForwardedUnfiltered, "inferred", "the agent's resolver is pinned to the sidecar (--dns), but smolvm's own resolver on the gateway forwards any name upstream unless a host allow-list (--allow-host) is active, and bottle's agent has none".into()));
    probe.capabilities.push(Capability::weak("broadcast-isolated", Weakness::BroadcastReachesHost, "inferred", "not measurable without a boot: the fabric is a virtio-net segment served by smolvm's host-side relay, which bottle cannot configure, and nothing in the CLI says broadcast or multicast stays off host sockets; counted as open".into()));
    probe.capabilities.push(Capability::new(
        "fabric-filtered",
        CapabilityState::No,
        "inferred",
        false,
        "traffic between fabric members bypasses the egress policy; each bottle has its own fabric holding only its agent and sidecar".into(),
    ));
    probe.capabilities.push(Capability::new(
        "boot",
        CapabilityState::Unknown,
        "inferred",
        false,
        "not measured (a boot takes seconds); `bottle up` reports a failed boot with smolvm's reason and deletes the machine".into(),
    ));

    for name in made {
        let mut args = rt.machine("delete", &name);
        args.push("--force".into());
        let _ = rt.tool.run(&args).await;
    }
    probe
}
