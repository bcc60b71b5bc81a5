//! The apple-container driver against the FAKE `container` CLI in
//! tests/fake-container/ (contract 1.0.0 plus the changes up to 1.2.2,
//! shared/reference/apple-container.md; the fake is 1.2.2 unless a test sets
//! FAKE_CONTAINER_VERSION),
//! through the `Runtime` trait. Each test has its own fake state and asserts
//! the exact commands the driver ran, from the fake's argv log.

mod common;

use bottle_runtimes::apple::{AppleRuntime, ServiceState};
use bottle_runtimes::{
    CapabilityState, ContainerSpec, ContainerState, ExecSpec, Mount, NetworkAttachment,
    NetworkKind, NetworkSpec, Publish, ResourceKind, Role, Runtime, RuntimeError, Weakness,
    LABEL_NAME,
};
use common::{present_or_skip, workspace, write_script, Scratch};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// One fake `container` with its own state dir, reached through a wrapper
/// script so tests can run in parallel with different modes.
struct Fake {
    dir: Scratch,
}

impl Fake {
    fn new(test: &str) -> Option<Fake> {
        let python = std::process::Command::new("python3")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !present_or_skip(
            test,
            "python3 (runs the fake `container`)",
            python,
            "apt-get install python3",
        ) {
            return None;
        }
        let fake = Fake {
            dir: Scratch::new("apple"),
        };
        std::fs::create_dir_all(fake.dir.path().join("bin")).unwrap();
        fake.set_modes(&[]);
        Some(fake)
    }

    /// Rewrites the wrapper with these FAKE_CONTAINER_* variables.
    fn set_modes(&self, modes: &[(&str, &str)]) {
        let vars: String = modes.iter().map(|(k, v)| format!("{k}='{v}' ")).collect();
        write_script(
            &self.bin(),
            &format!(
                "#!/bin/sh\nFAKE_CONTAINER_STATE='{}' {vars}exec python3 '{}' \"$@\"\n",
                self.dir.path().join("state").display(),
                workspace().join("tests/fake-container/container").display()
            ),
        );
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin/container")
    }

    /// Every invocation so far, one argv per entry.
    fn argv(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("state/argv.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Vec<String> = serde_json::from_str(l).unwrap();
                v.join(" ")
            })
            .collect()
    }

    /// The environment of every invocation so far.
    fn envs(&self) -> Vec<BTreeMap<String, String>> {
        std::fs::read_to_string(self.dir.path().join("state/env.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn clear_log(&self) {
        let _ = std::fs::remove_file(self.dir.path().join("state/argv.jsonl"));
    }

    /// A host directory that exists (`-v` needs one).
    fn host_dir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    async fn connect(&self) -> AppleRuntime {
        AppleRuntime::connect_with(self.bin())
            .await
            .expect("connect to the fake")
    }
}

fn labels(name: &str, role: Role) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_NAME.to_string(), name.to_string()), role.label()])
}

fn attach(network: &str) -> NetworkAttachment {
    NetworkAttachment {
        network: network.into(),
        ipv4: None,
        aliases: vec![],
    }
}

/// What `bottle down` does: agent, other containers, then networks.
async fn down(rt: &dyn Runtime, name: &str) -> usize {
    let mut found = rt
        .list(&BTreeMap::from([(
            LABEL_NAME.to_string(),
            name.to_string(),
        )]))
        .await
        .unwrap();
    found.sort_by_key(|r| match (r.kind, Role::of(&r.labels)) {
        (ResourceKind::Container, Some(Role::Agent)) => 0,
        (ResourceKind::Container, _) => 1,
        (ResourceKind::Network, _) => 2,
    });
    for r in &found {
        match r.kind {
            ResourceKind::Container => rt.remove_container(&r.id).await.unwrap(),
            ResourceKind::Network => rt.remove_network(&r.id).await.unwrap(),
        }
    }
    found.len()
}

#[tokio::test]
async fn up_and_down_run_the_documented_command_sequence() {
    let Some(fake) = Fake::new("up_and_down_run_the_documented_command_sequence") else {
        return;
    };
    let state = fake.host_dir("sidecar");
    let logs = fake.host_dir("logs");
    let work = fake.host_dir("work");
    let rt = fake.connect().await;
    assert!(rt.assigns_addresses_at_start());

    // The bottle-shaped sequence of docs/design.md §1.1 for apple-container.
    let internal = rt
        .create_network(&NetworkSpec {
            name: "bottle-demo-internal".into(),
            kind: NetworkKind::Internal,
            labels: labels("demo", Role::Internal),
        })
        .await
        .unwrap();
    assert_eq!(internal.subnet.as_deref(), Some("192.168.65.0/24"));
    let host = rt.host_addresses_on(&internal, "unused").await.unwrap();
    assert_eq!(
        host,
        vec![IpAddr::V4(Ipv4Addr::new(192, 168, 65, 1))],
        "the host holds the gateway (apple/container#1320)"
    );
    let egress = rt
        .create_network(&NetworkSpec {
            name: "bottle-demo-egress".into(),
            kind: NetworkKind::Egress,
            labels: labels("demo", Role::Egress),
        })
        .await
        .unwrap();
    let sidecar = rt
        .create_container(&ContainerSpec {
            name: "bottle-demo-sidecar".into(),
            image: "bottle-sidecar:test".into(),
            command: vec![
                "run".into(),
                "--policy".into(),
                "/etc/bottle/policy.json".into(),
            ],
            labels: labels("demo", Role::Sidecar),
            networks: vec![attach(&egress.id), attach(&internal.id)],
            cap_drop: vec!["ALL".into()],
            read_only_rootfs: true,
            tmpfs: vec!["/tmp".into()],
            mounts: vec![
                Mount {
                    source: state.clone(),
                    target: "/etc/bottle".into(),
                    read_only: true,
                },
                Mount {
                    source: logs.clone(),
                    target: "/var/log/bottle".into(),
                    read_only: false,
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    rt.start_container(&sidecar).await.unwrap();
    let info = rt.inspect_container(&sidecar).await.unwrap();
    assert_eq!(info.state, ContainerState::Running);
    // Read after start, /24 stripped from the escaped CIDR.
    let sidecar_ip = info.ipv4["bottle-demo-internal"];
    assert_eq!(sidecar_ip, Ipv4Addr::new(192, 168, 65, 2));
    assert_eq!(
        info.ipv4["bottle-demo-egress"],
        Ipv4Addr::new(192, 168, 66, 2)
    );

    let agent = rt
        .create_container(&ContainerSpec {
            name: "bottle-demo-agent".into(),
            image: "bottle-agent:test".into(),
            command: vec!["sleep".into(), "infinity".into()],
            env: BTreeMap::from([(
                "HTTPS_PROXY".to_string(),
                format!("http://{sidecar_ip}:3128"),
            )]),
            labels: labels("demo", Role::Agent),
            networks: vec![attach(&internal.id)],
            dns: vec![IpAddr::V4(sidecar_ip)],
            cap_drop: vec!["NET_RAW".into(), "NET_ADMIN".into()],
            no_new_privileges: true,
            mounts: vec![Mount {
                source: work.clone(),
                target: "/workspace".into(),
                read_only: false,
            }],
            workdir: Some("/workspace".into()),
            cpus: Some(2.0),
            memory_bytes: Some(4 << 30),
            ..Default::default()
        })
        .await
        .unwrap();
    rt.start_container(&agent).await.unwrap();
    let a = rt.inspect_container(&agent).await.unwrap();
    assert_eq!(
        a.ipv4.len(),
        1,
        "the agent is on the internal network only: {:?}",
        a.ipv4
    );
    assert_eq!(
        a.ipv4["bottle-demo-internal"],
        Ipv4Addr::new(192, 168, 65, 3)
    );

    assert_eq!(down(&rt, "demo").await, 4);
    assert_eq!(down(&rt, "demo").await, 0, "down is idempotent");

    let (s, l, w) = (state.display(), logs.display(), work.display());
    let expected = vec![
        "--version".to_string(),
        "system status --format json".into(),
        "network ls --format json".into(),
        "network create --internal --label dev.bottle.name=demo --label dev.bottle.role=internal bottle-demo-internal".into(),
        "network inspect bottle-demo-internal".into(),
        "network inspect bottle-demo-internal".into(),
        "network create --label dev.bottle.name=demo --label dev.bottle.role=egress bottle-demo-egress".into(),
        "network inspect bottle-demo-egress".into(),
        format!("create --name bottle-demo-sidecar --label dev.bottle.name=demo --label dev.bottle.role=sidecar --network bottle-demo-egress --network bottle-demo-internal --cap-drop ALL --volume {s}:/etc/bottle:ro --volume {l}:/var/log/bottle --mount type=tmpfs,target=/tmp --read-only bottle-sidecar:test run --policy /etc/bottle/policy.json"),
        "start bottle-demo-sidecar".into(),
        "inspect bottle-demo-sidecar".into(),
        format!("create --name bottle-demo-agent --label dev.bottle.name=demo --label dev.bottle.role=agent --network bottle-demo-internal --dns 192.168.65.2 --cap-drop NET_RAW --cap-drop NET_ADMIN --env HTTPS_PROXY=http://192.168.65.2:3128 --volume {w}:/workspace --cpus 2 --memory 4096M --workdir /workspace bottle-agent:test sleep infinity"),
        "start bottle-demo-agent".into(),
        "inspect bottle-demo-agent".into(),
        // down: list by label client-side, containers first, then networks.
        "ls --all --format json".into(),
        "network ls --format json".into(),
        "delete --force bottle-demo-agent".into(),
        "delete --force bottle-demo-sidecar".into(),
        "network delete bottle-demo-egress".into(),
        "network delete bottle-demo-internal".into(),
        "ls --all --format json".into(),
        "network ls --format json".into(),
    ];
    assert_eq!(fake.argv(), expected);
}

#[tokio::test]
async fn service_down_is_unavailable_with_the_start_command_as_fix() {
    let Some(fake) = Fake::new("service_down_is_unavailable_with_the_start_command_as_fix") else {
        return;
    };
    fake.set_modes(&[("FAKE_CONTAINER_SERVICE", "down")]);
    let err = AppleRuntime::connect_with(fake.bin())
        .await
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(matches!(err, RuntimeError::Unavailable { .. }), "{msg}");
    assert!(
        msg.contains("not running")
            && msg.contains("container system start --enable-kernel-install"),
        "{msg}"
    );
    assert_eq!(
        AppleRuntime::service_status_at(fake.bin()).await.unwrap(),
        ServiceState::Down {
            status: "not running".into()
        }
    );

    // Stopped through the CLI, then started the way `bottle up` offers to.
    fake.set_modes(&[]);
    let rt = fake.connect().await;
    let _ = rt; // connected while running
    std::process::Command::new(fake.bin())
        .args(["system", "stop"])
        .status()
        .unwrap();
    assert!(AppleRuntime::connect_with(fake.bin()).await.is_err());
    AppleRuntime::start_service_at(fake.bin()).await.unwrap();
    assert!(matches!(
        AppleRuntime::service_status_at(fake.bin()).await.unwrap(),
        ServiceState::Running { .. }
    ));
    assert!(fake
        .argv()
        .contains(&"system start --enable-kernel-install".to_string()));

    // The service going away under a connected runtime: XPC error → Unavailable.
    let rt = fake.connect().await;
    fake.set_modes(&[("FAKE_CONTAINER_SERVICE", "down")]);
    let err = rt.inspect_container("x").await.unwrap_err();
    assert!(matches!(err, RuntimeError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("XPC connection error"), "{err}");
}

#[tokio::test]
async fn macos_without_network_command_is_refused() {
    let Some(fake) = Fake::new("macos_without_network_command_is_refused") else {
        return;
    };
    fake.set_modes(&[("FAKE_CONTAINER_MACOS", "15")]);
    let err = AppleRuntime::connect_with(fake.bin())
        .await
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(matches!(err, RuntimeError::Capability { .. }), "{msg}");
    assert!(msg.contains("macOS 26") && msg.contains("exit 64"), "{msg}");
}

#[tokio::test]
async fn existing_network_and_referenced_network_errors() {
    let Some(fake) = Fake::new("existing_network_and_referenced_network_errors") else {
        return;
    };
    let rt = fake.connect().await;
    let spec = NetworkSpec {
        name: "bottle-x-internal".into(),
        kind: NetworkKind::Internal,
        labels: labels("x", Role::Internal),
    };
    rt.create_network(&spec).await.unwrap();
    let err = rt.create_network(&spec).await.unwrap_err().to_string();
    assert!(
        err.contains("network bottle-x-internal already exists") && err.contains("exit 1"),
        "{err}"
    );

    let id = rt
        .create_container(&ContainerSpec {
            name: "bottle-x-agent".into(),
            image: "img".into(),
            labels: labels("x", Role::Agent),
            networks: vec![attach("bottle-x-internal")],
            ..Default::default()
        })
        .await
        .unwrap();
    // Stopped, but still referenced: the network cannot go first.
    let err = rt
        .remove_network("bottle-x-internal")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(r#"delete failed for one or more networks: ["bottle-x-internal"]"#),
        "{err}"
    );
    assert!(err.contains("remove containers first"), "{err}");
    rt.remove_container(&id).await.unwrap();
    rt.remove_network("bottle-x-internal").await.unwrap();
    // Missing is not an error for removal.
    rt.remove_network("bottle-x-internal").await.unwrap();
    assert!(fake.argv().ends_with(&[
        "delete --force bottle-x-agent".to_string(),
        "network delete bottle-x-internal".into(),
        "network delete bottle-x-internal".into(),
    ]));

    let err = rt
        .create_container(&ContainerSpec {
            name: "c2".into(),
            image: "img".into(),
            networks: vec![attach("nope")],
            ..Default::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("network nope not found"), "{err}");
}

#[tokio::test]
async fn missing_and_stopped_containers() {
    let Some(fake) = Fake::new("missing_and_stopped_containers") else {
        return;
    };
    let rt = fake.connect().await;
    let err = rt.inspect_container("ghost").await.unwrap_err();
    assert!(matches!(err, RuntimeError::NotFound { .. }), "{err}");
    rt.remove_container("ghost")
        .await
        .expect("removing a missing container is not an error");
    let err = rt.start_container("ghost").await.unwrap_err().to_string();
    assert!(
        err.contains("get failed: container ghost not found"),
        "{err}"
    );
    let err = rt
        .exec_capture(
            "ghost",
            &ExecSpec {
                cmd: vec!["true".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::NotFound { .. }), "{err}");
    let mut out = Vec::new();
    let err = rt.logs("ghost", false, None, &mut out).await.unwrap_err();
    assert!(matches!(err, RuntimeError::NotFound { .. }), "{err}");

    let id = rt
        .create_container(&ContainerSpec {
            name: "c1".into(),
            image: "img".into(),
            command: vec!["sleep".into(), "1".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        rt.inspect_container(&id).await.unwrap().state,
        ContainerState::Exited,
        "created = stopped, no IPs"
    );
    assert!(rt.inspect_container(&id).await.unwrap().ipv4.is_empty());
    let err = rt
        .exec_capture(
            &id,
            &ExecSpec {
                cmd: vec!["true".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not running"), "{err}");
    rt.start_container(&id).await.unwrap();
    let out = rt
        .exec_capture(
            &id,
            &ExecSpec {
                cmd: vec!["sh".into(), "-c".into(), "exit 3".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(out.code, 3, "the command's exit code propagates");
    let out = rt
        .exec_capture(
            &id,
            &ExecSpec {
                cmd: vec!["echo".into(), "hi".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((out.code, out.stdout.as_str()), (0, "hi\n"));
    let mut logs = Vec::new();
    rt.logs(&id, false, Some(5), &mut logs).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&logs), "fake: started sleep 1\n");
}

#[tokio::test]
async fn what_the_cli_cannot_do_is_refused_before_any_call() {
    let Some(fake) = Fake::new("what_the_cli_cannot_do_is_refused_before_any_call") else {
        return;
    };
    let rt = fake.connect().await;
    fake.clear_log();
    let fixed = ContainerSpec {
        name: "c".into(),
        image: "img".into(),
        networks: vec![NetworkAttachment {
            network: "default".into(),
            ipv4: Some(Ipv4Addr::new(192, 168, 64, 9)),
            aliases: vec![],
        }],
        ..Default::default()
    };
    let err = rt.create_container(&fixed).await.unwrap_err().to_string();
    assert!(
        err.contains("fixed-address") && err.contains("assigns addresses at start"),
        "{err}"
    );
    let sysctl = ContainerSpec {
        name: "c".into(),
        image: "img".into(),
        sysctls: BTreeMap::from([(
            "net.ipv4.ip_unprivileged_port_start".to_string(),
            "0".to_string(),
        )]),
        ..Default::default()
    };
    assert!(rt
        .create_container(&sysctl)
        .await
        .unwrap_err()
        .to_string()
        .contains("sysctl"));
    // Each container is its own VM: no sharing of another's network namespace.
    assert!(!rt.can_join_network_namespace());
    let joins = ContainerSpec {
        name: "c".into(),
        image: "img".into(),
        network_namespace_of: Some("agent".into()),
        ..Default::default()
    };
    let err = rt.create_container(&joins).await.unwrap_err().to_string();
    assert!(
        err.contains("network namespace") && err.contains("own VM"),
        "{err}"
    );
    let bad_label = ContainerSpec {
        name: "c".into(),
        image: "img".into(),
        labels: BTreeMap::from([("dev.bottle_name".to_string(), "x".to_string())]),
        ..Default::default()
    };
    assert!(rt
        .create_container(&bad_label)
        .await
        .unwrap_err()
        .to_string()
        .contains("not accepted"));
    assert!(
        fake.argv().is_empty(),
        "nothing reached the CLI: {:?}",
        fake.argv()
    );

    // Published ports always carry their host address.
    let id = rt
        .create_container(&ContainerSpec {
            name: "pub".into(),
            image: "img".into(),
            publish: vec![Publish {
                host_ip: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 16)),
                host_port: 8080,
                container_port: 80,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        fake.argv(),
        vec!["create --name pub --publish 127.0.0.16:8080:80/tcp img".to_string()]
    );
    rt.remove_container(&id).await.unwrap();
}

#[tokio::test]
async fn probe_measures_and_names_the_host_weakness() {
    let Some(fake) = Fake::new("probe_measures_and_names_the_host_weakness") else {
        return;
    };
    let rt = fake.connect().await;
    let probe = rt.probe(Some("bottle-sidecar:test")).await;
    let state = |n: &str| probe.capability(n).map(|c| c.state);
    assert_eq!(state("service-running"), Some(CapabilityState::Yes));
    assert_eq!(state("private-network"), Some(CapabilityState::Yes));
    assert_eq!(state("internal-network"), Some(CapabilityState::Yes));
    assert_eq!(
        state("multi-network-attach"),
        Some(CapabilityState::Yes),
        "{:?}",
        probe.capability("multi-network-attach")
    );
    assert_eq!(state("per-ip-publish"), Some(CapabilityState::Yes));
    let host = probe.capability("host-unreachable-from-internal").unwrap();
    assert_eq!(host.state, CapabilityState::No);
    assert_eq!(host.weakness, Some(Weakness::HostReachableFromInternal));
    assert!(host.required);
    assert_eq!(host.how, "measured");
    let bcast = probe.capability("broadcast-isolated").unwrap();
    assert_eq!(
        (bcast.state, bcast.weakness, bcast.how),
        (
            CapabilityState::No,
            Some(Weakness::BroadcastReachesHost),
            "inferred"
        )
    );
    assert_eq!(
        probe.unmet().len(),
        2,
        "only the named weaknesses stand in the way: {:?}",
        probe.unmet()
    );
    // Nothing of the probe is left.
    let left = rt
        .list(&BTreeMap::from([Role::Probe.label()]))
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    // The dual-homed probe container had egress FIRST.
    assert!(fake.argv().iter().any(|a| a.contains(&format!(
        "--network bottle-probe-{0}-egress --network bottle-probe-{0}-internal",
        std::process::id()
    ))));

    // Without a helper image the weakness is inferred, never assumed away.
    let probe = rt.probe(None).await;
    let host = probe.capability("host-unreachable-from-internal").unwrap();
    assert_eq!((host.state, host.how), (CapabilityState::No, "inferred"));
    assert_eq!(
        probe.capability("multi-network-attach").unwrap().state,
        CapabilityState::Unknown
    );
}

#[tokio::test]
async fn images_build_and_exist() {
    let Some(fake) = Fake::new("images_build_and_exist") else {
        return;
    };
    let rt = fake.connect().await;
    assert!(!rt.image_exists("bottle-agent:test").await.unwrap());
    let spec = bottle_runtimes::BuildSpec {
        tag: "bottle-agent:test".into(),
        files: BTreeMap::from([(
            "Containerfile".to_string(),
            (b"FROM scratch\n".to_vec(), 0o644),
        )]),
        containerfile: "Containerfile".into(),
        build_args: BTreeMap::from([("BASE".to_string(), "debian".to_string())]),
        labels: BTreeMap::new(),
        recipe: Default::default(),
    };
    let mut lines = Vec::new();
    rt.build_image(&spec, &mut |l: &str| lines.push(l.to_string()))
        .await
        .unwrap();
    assert!(rt.image_exists("bottle-agent:test").await.unwrap());
    assert!(fake
        .argv()
        .iter()
        .any(|a| a.starts_with("build --tag bottle-agent:test --file ")
            && a.contains("--build-arg BASE=debian")));
}

/// Runs `probe` with the sidecar image against the fake in `modes`.
async fn probe_with(test: &str, modes: &[(&str, &str)]) -> Option<(Fake, bottle_runtimes::Probe)> {
    let fake = Fake::new(test)?;
    fake.set_modes(modes);
    let rt = fake.connect().await;
    let probe = rt.probe(Some("bottle-sidecar:test")).await;
    Some((fake, probe))
}

/// The control: a 1.2.2 whose internal network keeps to itself. The
/// isolation is measured (both families tried from the internal network,
/// and reached through the egress one), so nothing but the named weaknesses
/// stands in the way.
#[tokio::test]
async fn probe_measures_no_leak_on_an_isolated_internal_network() {
    let Some((fake, probe)) = probe_with(
        "probe_measures_no_leak_on_an_isolated_internal_network",
        &[],
    )
    .await
    else {
        return;
    };
    let iso = probe.capability("internal-network-isolated").unwrap();
    assert_eq!(
        (iso.state, iso.how, iso.required, iso.weakness),
        (CapabilityState::Yes, "measured", true, None),
        "{iso:?}"
    );
    assert!(
        iso.detail.contains("1.1.1.1:443 failed")
            && iso.detail.contains("[2606:4700:4700::1111]:443 failed")
            && iso
                .detail
                .contains("control through the egress network: 1.1.1.1:443 CONNECTED"),
        "{}",
        iso.detail
    );
    // Both addresses were tried, raw IP, from the container on the internal
    // network only.
    let argv = fake.argv();
    let inner = format!("bottle-probe-{}-inner", std::process::id());
    for target in ["1.1.1.1/443", "2606:4700:4700::1111/443"] {
        assert!(
            argv.contains(&format!(
                "exec {inner} timeout 5 bash -c exec 3<>/dev/tcp/{target}"
            )),
            "{target}: {argv:#?}"
        );
    }
    assert!(probe.warnings().is_empty(), "{:?}", probe.warnings());
}

/// The negative test: a 1.2.x whose internal network passes raw-IP TCP to
/// the internet (apple/container#2062), on either family. `up` refuses:
/// the capability is required and names no weakness to accept.
#[tokio::test]
async fn probe_refuses_a_leaking_internal_network_whatever_the_version() {
    for (leak, version) in [("ipv4", "1.2.0"), ("ipv6", "1.2.2"), ("both", "1.2.2")] {
        let Some((_fake, probe)) = probe_with(
            "probe_refuses_a_leaking_internal_network_whatever_the_version",
            &[
                ("FAKE_CONTAINER_LEAK", leak),
                ("FAKE_CONTAINER_VERSION", version),
            ],
        )
        .await
        else {
            return;
        };
        let iso = probe.capability("internal-network-isolated").unwrap();
        assert_eq!(
            (iso.state, iso.required, iso.weakness),
            (CapabilityState::No, true, None),
            "{leak}: {iso:?}"
        );
        assert!(
            iso.detail.starts_with("LEAK: ") && iso.detail.contains("apple/container#2062"),
            "{}",
            iso.detail
        );
        assert!(
            probe
                .unmet()
                .iter()
                .any(|c| c.name == "internal-network-isolated"),
            "{leak}"
        );
    }
}

/// A helper that cannot run the test (the fake's `exec` exits 127, as when
/// the image lacks `bash`) never reads as isolated.
#[tokio::test]
async fn probe_that_cannot_test_isolation_does_not_assume_it() {
    let Some((_fake, probe)) = probe_with(
        "probe_that_cannot_test_isolation_does_not_assume_it",
        &[("FAKE_CONTAINER_EXEC_EXIT", "127")],
    )
    .await
    else {
        return;
    };
    let iso = probe.capability("internal-network-isolated").unwrap();
    assert_eq!(iso.state, CapabilityState::Unknown, "{iso:?}");
    assert!(iso.detail.contains("could not be tried"), "{}", iso.detail);
}

/// The probe's `host-unreachable-from-internal` and the check `up` makes
/// (`host_addresses_on`) agree, with the host at the gateway (#1320, every
/// release so far) and without (what the unmerged PR #2072 would do).
#[tokio::test]
async fn probe_and_the_host_address_check_never_disagree() {
    for gateway in ["", "none"] {
        let Some(fake) = Fake::new("probe_and_the_host_address_check_never_disagree") else {
            return;
        };
        fake.set_modes(&[("FAKE_CONTAINER_HOSTONLY_GATEWAY", gateway)]);
        let rt = fake.connect().await;
        let probe = rt.probe(Some("bottle-sidecar:test")).await;
        let host = probe.capability("host-unreachable-from-internal").unwrap();
        assert_eq!(host.how, "measured");
        let net = rt
            .create_network(&NetworkSpec {
                name: "bottle-g-internal".into(),
                kind: NetworkKind::Internal,
                labels: labels("g", Role::Internal),
            })
            .await
            .unwrap();
        let addrs = rt.host_addresses_on(&net, "unused").await.unwrap();
        assert_eq!(
            host.state == CapabilityState::Yes,
            addrs.is_empty(),
            "gateway mode {gateway:?}: probe {host:?}, check {addrs:?}"
        );
        assert_eq!(
            host.weakness.is_some(),
            !addrs.is_empty(),
            "gateway mode {gateway:?}"
        );
        if gateway == "none" {
            assert_eq!(host.state, CapabilityState::Yes, "{}", host.detail);
            assert!(host.detail.contains("failed"), "{}", host.detail);
        } else {
            assert!(host.detail.contains("CONNECTED"), "{}", host.detail);
        }
    }
}

/// Before 1.2.0 the CLI fills an image's unset `ENV` keys from its own
/// environment: a warning (not a refusal) in the probe; none from 1.2.0 on.
/// After 1.2.2 the probe says only the measurements speak for the release.
#[tokio::test]
async fn releases_before_1_2_0_are_warned_about() {
    for (version, warned) in [
        ("1.0.0", true),
        ("1.1.0", true),
        ("1.2.0", false),
        ("1.4.1", false),
    ] {
        let Some((_fake, probe)) = probe_with(
            "releases_before_1_2_0_are_warned_about",
            &[("FAKE_CONTAINER_VERSION", version)],
        )
        .await
        else {
            return;
        };
        let w: Vec<&str> = probe.warnings().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            w == ["host-env-hidden-from-images"],
            warned,
            "{version}: {w:?}"
        );
        let env = probe.capability("host-env-hidden-from-images").unwrap();
        assert!(!env.required, "a warning, not a refusal");
        if warned {
            assert!(
                env.detail.contains("#2027") && env.detail.contains("upgrade to container"),
                "{}",
                env.detail
            );
        }
        let cli = &probe.capability("cli").unwrap().detail;
        assert_eq!(
            cli.contains("newer than 1.2.2"),
            version == "1.4.1",
            "{cli}"
        );
        assert_eq!(probe.version.as_deref(), Some(version));
    }
}

const SECRET: &str = "BOTTLE_TEST_FAKE_SECRET_APPLE";
const CHILD_BIN: &str = "BOTTLE_TEST_FAKE_CONTAINER_BIN";

/// Run only by [`container_never_sees_the_callers_environment`], in a child
/// process whose environment holds [`SECRET`]: connects and probes.
#[tokio::test]
#[ignore = "a child of container_never_sees_the_callers_environment"]
async fn driver_with_a_secret_in_its_environment() {
    let bin = std::env::var_os(CHILD_BIN).expect("run by the parent test");
    assert!(std::env::var_os(SECRET).is_some());
    let rt = AppleRuntime::connect_with(bin.into()).await.unwrap();
    rt.probe(Some("bottle-sidecar:test")).await;
}

/// `container` runs from an empty environment plus PATH, HOME and a few
/// more: a secret in bottle's environment never reaches it (on 1.0 and 1.1
/// an image could read it). The fake run directly, inheriting, is the control.
#[tokio::test]
async fn container_never_sees_the_callers_environment() {
    let Some(fake) = Fake::new("container_never_sees_the_callers_environment") else {
        return;
    };
    // The secret goes into the environment of a child run of this test
    // binary (changing this process's environment would race other tests),
    // which drives the driver; the fake logs what reached it.
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "driver_with_a_secret_in_its_environment",
            "--ignored",
            "--nocapture",
        ])
        .env(SECRET, "fake-secret-value")
        .env(CHILD_BIN, fake.bin())
        .output()
        .unwrap();
    assert!(
        child.status.success() && String::from_utf8_lossy(&child.stdout).contains("1 passed"),
        "{}{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
    let envs = fake.envs();
    assert!(envs.len() > 5, "{}", envs.len());
    // What the test's wrapper script, the shell and a python launcher (pyenv
    // shims) set themselves, not inherited from the caller.
    let launcher = |k: &str| {
        ["PWD", "SHLVL", "_", "OLDPWD"].contains(&k)
            || k.starts_with("FAKE_CONTAINER_")
            || k.starts_with("PYENV")
            || k.starts_with("_PYENV")
    };
    for env in &envs {
        assert!(!env.contains_key(SECRET), "{env:?}");
        for k in env.keys() {
            assert!(
                bottle_runtimes::apple::ENV_KEEP.contains(&k.as_str())
                    || launcher(k)
                    || std::env::var_os(k).is_none(),
                "{k} reached `container` from the caller: {env:?}"
            );
        }
    }
    fake.clear_log();
    let _ = std::fs::remove_file(fake.dir.path().join("state/env.jsonl"));
    let out = std::process::Command::new(fake.bin())
        .arg("--version")
        .env(SECRET, "fake-secret-value")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        fake.envs()[0].get(SECRET).map(String::as_str),
        Some("fake-secret-value"),
        "control: an inheriting call sees it"
    );
}

/// What 1.1.0 and 1.2.0 changed at the CLI, as the fake imitates it, and
/// what the driver does about it.
#[tokio::test]
async fn the_fake_follows_the_1_2_changes_and_the_driver_copes() {
    let Some(fake) = Fake::new("the_fake_follows_the_1_2_changes_and_the_driver_copes") else {
        return;
    };
    let long = "a".repeat(64);
    let call = |modes: &[(&str, &str)], args: &[&str]| {
        fake.set_modes(modes);
        // The wrapper was just rewritten: a child another test thread
        // forked meanwhile can hold its write descriptor until that child
        // execs, and exec then fails with "Text file busy". Retry briefly.
        let mut tries = 0;
        loop {
            match std::process::Command::new(fake.bin()).args(args).output() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other.unwrap(),
            }
        }
    };
    let out = call(&[], &["create", "--name", &long, "img"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("Error: container ID {long} is not a valid container ID")
    );
    let out = call(
        &[("FAKE_CONTAINER_VERSION", "1.0.0")],
        &["create", "--name", &long, "img"],
    );
    assert!(out.status.success(), "1.0.0 had no length limit");
    // `system start` progress: stderr from 1.2.0, stdout before.
    let out = call(&[], &["system", "start", "--enable-kernel-install"]);
    assert!(out.stdout.is_empty() && !out.stderr.is_empty());
    let out = call(
        &[("FAKE_CONTAINER_VERSION", "1.1.0")],
        &["system", "start", "--enable-kernel-install"],
    );
    assert!(!out.stdout.is_empty());

    fake.set_modes(&[]);
    let rt = fake.connect().await;
    // The driver refuses a 64-character id before calling.
    fake.clear_log();
    let err = rt
        .create_container(&ContainerSpec {
            name: long.clone(),
            image: "img".into(),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 to 63"), "{err}");
    assert!(fake.argv().is_empty(), "{:?}", fake.argv());

    let id = rt
        .create_container(&ContainerSpec {
            name: "c-122".into(),
            image: "img".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    rt.start_container(&id).await.unwrap();
    // `variant` (1.1+) in status.networks does not disturb the parse.
    let raw = call(&[], &["inspect", &id]);
    assert!(String::from_utf8_lossy(&raw.stdout).contains("\"variant\": \"reserved\""));
    assert_eq!(rt.inspect_container(&id).await.unwrap().ipv4.len(), 1);
    // `maskedPaths`/`readonlyPaths` (1.2.1) appear only with their flags.
    assert!(!String::from_utf8_lossy(&raw.stdout).contains("maskedPaths"));
    // exec without a command: the driver refuses; the fake (1.1+) errors too.
    fake.clear_log();
    let err = rt
        .exec_capture(&id, &ExecSpec::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no command"), "{err}");
    assert!(fake.argv().is_empty(), "{:?}", fake.argv());
    let out = call(&[], &["exec", &id]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "Error: no command specified for exec"
    );
    let out = call(
        &[],
        &["create", "--name", "m1", "--masked-path", "/proc/x", "img"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = call(&[], &["inspect", "m1"]);
    assert!(String::from_utf8_lossy(&raw.stdout).contains("maskedPaths"));
}
