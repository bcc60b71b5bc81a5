//! The smolvm driver against the REAL smolvm CLI (PyPI `smolmachines`,
//! installed by scripts/setup-smolvm.sh), through the `Runtime` trait. Every
//! test keeps its machines in its own `--state-dir`. On hosts whose KVM
//! cannot boot a guest (nested/PVM), a start fails: the tests check that the
//! failure is clear and leaves no machine behind.
//!
//! The CLI is `BOTTLE_SMOLVM_BIN`, else `smolvm` on PATH, else
//! `~/.local/bin/smolvm`. Without it the tests skip (and fail under CI=true).

mod common;

use bottle_runtimes::smolvm::{SmolvmConfig, SmolvmRuntime, EGRESS_ID, LABEL_FABRIC};
use bottle_runtimes::{
    CapabilityState, ContainerSpec, ContainerState, Mount, NetworkAttachment, NetworkKind,
    NetworkSpec, Publish, Role, Runtime, RuntimeError, Version, Weakness, LABEL_NAME, LABEL_ROLE,
};
use common::{present_or_skip, write_script, Scratch};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;

fn smolvm_bin() -> Option<PathBuf> {
    let runs = |p: &PathBuf| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let candidates = [
        std::env::var_os("BOTTLE_SMOLVM_BIN").map(PathBuf::from),
        Some(PathBuf::from("smolvm")),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/bin/smolvm")),
    ];
    candidates.into_iter().flatten().find(runs)
}

/// A real CLI with a private state dir, or `None` (skipped, printed).
struct Smol {
    bin: PathBuf,
    state: Scratch,
}

impl Smol {
    fn new(test: &str) -> Option<Smol> {
        let bin = smolvm_bin();
        if !present_or_skip(
            test,
            "the smolvm CLI",
            bin.is_some(),
            "run scripts/setup-smolvm.sh, or set BOTTLE_SMOLVM_BIN",
        ) {
            return None;
        }
        Some(Smol {
            bin: bin.unwrap(),
            state: Scratch::new("smolvm"),
        })
    }

    fn config(&self) -> SmolvmConfig {
        SmolvmConfig {
            bin: self.bin.clone(),
            state_dir: Some(self.state.path().join("state")),
            image_dir: self.state.path().join("images"),
        }
    }

    async fn connect(&self) -> SmolvmRuntime {
        SmolvmRuntime::connect_with(self.config())
            .await
            .expect("connect to smolvm")
    }

    /// Runs the CLI directly (for its own error outputs).
    fn raw(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .arg("--state-dir")
            .arg(self.state.path().join("state"))
            .args(args)
            .output()
            .expect("run smolvm")
    }

    fn host_dir(&self, name: &str) -> PathBuf {
        let p = self.state.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
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

const SIDECAR_IP: Ipv4Addr = Ipv4Addr::new(100, 96, 1, 2);

fn agent_spec(name: &str, fabric: &str, work: PathBuf) -> ContainerSpec {
    ContainerSpec {
        name: format!("bottle-{name}-agent"),
        command: vec!["sleep".into(), "infinity".into()],
        env: BTreeMap::from([(
            "HTTPS_PROXY".to_string(),
            format!("http://{SIDECAR_IP}:3128"),
        )]),
        labels: labels(name, Role::Agent),
        networks: vec![attach(fabric)],
        dns: vec![IpAddr::V4(SIDECAR_IP)],
        cap_drop: vec!["NET_RAW".into()],
        mounts: vec![Mount {
            source: work,
            target: "/workspace".into(),
            read_only: false,
        }],
        workdir: Some("/workspace".into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn version_gates() {
    let Some(smol) = Smol::new("version_gates") else {
        return;
    };
    let rt = smol.connect().await;
    assert!(rt.version() >= Version(1, 32, 2), "{}", rt.version());

    // Older CLIs, imitated by a stub that prints what `smolvm --version` printed then.
    for (old, why) in [("1.8.2", "1.8.3"), ("1.0.4", "1.8.3")] {
        let stub = smol.state.path().join(format!("smolvm-{old}"));
        write_script(&stub, &format!("#!/bin/sh\necho 'smolvm {old}'\n"));
        let err = SmolvmRuntime::connect_with(SmolvmConfig {
            bin: stub,
            state_dir: None,
            image_dir: smol.state.path().join("images"),
        })
        .await
        .err()
        .expect("refused");
        let msg = err.to_string();
        assert!(matches!(err, RuntimeError::Capability { .. }), "{msg}");
        assert!(
            msg.contains(&format!("smolvm {old} has no `--network`")) && msg.contains(why),
            "{msg}"
        );
    }
    let stub = smol.state.path().join("smolvm-garbage");
    write_script(&stub, "#!/bin/sh\necho 'something else'\n");
    let err = SmolvmRuntime::connect_with(SmolvmConfig {
        bin: stub,
        state_dir: None,
        image_dir: smol.state.path().join("images"),
    })
    .await
    .err()
    .unwrap();
    assert!(matches!(err, RuntimeError::Unavailable { .. }), "{err}");
}

#[tokio::test]
async fn create_list_status_update_delete_with_labels() {
    let Some(smol) = Smol::new("create_list_status_update_delete_with_labels") else {
        return;
    };
    let rt = smol.connect().await;
    let work = smol.host_dir("work");
    let fabric = rt
        .create_network(&NetworkSpec {
            name: "bottle-lab-internal".into(),
            kind: NetworkKind::Internal,
            labels: labels("lab", Role::Internal),
        })
        .await
        .unwrap();
    let egress = rt
        .create_network(&NetworkSpec {
            name: "bottle-lab-egress".into(),
            kind: NetworkKind::Egress,
            labels: labels("lab", Role::Egress),
        })
        .await
        .unwrap();
    assert_eq!(
        (fabric.id.as_str(), egress.id.as_str()),
        ("bottle-lab-internal", EGRESS_ID)
    );

    // The agent: fabric only, allow-list = the sidecar, DNS pinned; Smolfile applied.
    let agent = rt
        .create_container(&agent_spec("lab", &fabric.id, work.clone()))
        .await
        .unwrap();
    let m = rt.status(&agent).await.unwrap();
    assert_eq!(m.state, "created");
    assert!(m.network);
    assert_eq!(m.labels.get(LABEL_NAME).map(String::as_str), Some("lab"));
    assert_eq!(m.labels.get(LABEL_ROLE).map(String::as_str), Some("agent"));
    assert_eq!(
        m.labels.get(LABEL_FABRIC).map(String::as_str),
        Some("bottle-lab-internal")
    );
    // The Smolfile's never-routed placeholder plus the sidecar's /32: nothing else.
    assert_eq!(
        m.allowed_cidrs.clone().unwrap(),
        vec!["192.0.2.1/32".to_string(), format!("{SIDECAR_IP}/32")]
    );
    assert_eq!(m.dns.as_deref(), Some("100.96.1.2"));
    assert_eq!(
        (m.cpus, m.memory_mib),
        (Some(2), Some(4096)),
        "from smolfiles/agent.smolfile"
    );
    assert_eq!(m.mounts, 1, "mounts is a count");
    assert_eq!(m.cmd, vec!["sleep", "infinity"]);

    // The sidecar: fabric + its own egress, one published loopback port (a count too).
    let sidecar = rt
        .create_container(&ContainerSpec {
            name: "bottle-lab-sidecar".into(),
            command: vec![
                "run".into(),
                "--policy".into(),
                "/etc/bottle/policy.json".into(),
            ],
            labels: labels("lab", Role::Sidecar),
            networks: vec![attach(&egress.id), attach(&fabric.id)],
            mounts: vec![Mount {
                source: smol.host_dir("sidecar"),
                target: "/etc/bottle".into(),
                read_only: true,
            }],
            publish: vec![Publish {
                host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                host_port: 47_999,
                container_port: 8765,
            }],
            sysctls: BTreeMap::from([(
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "0".to_string(),
            )]),
            ..Default::default()
        })
        .await
        .unwrap();
    let s = rt.status(&sidecar).await.unwrap();
    assert!(
        s.network && s.allowed_cidrs.unwrap_or_default().is_empty(),
        "open egress for the sidecar"
    );
    assert_eq!((s.ports, s.mounts), (1, 1));
    assert_eq!(
        s.entrypoint,
        vec!["/usr/local/bin/bottle-sidecar"],
        "from smolfiles/sidecar.smolfile"
    );

    // ls --json, filtered by label client-side.
    let all = rt.machines().await.unwrap();
    assert_eq!(all.len(), 2);
    let found = rt
        .list(&BTreeMap::from([(
            LABEL_NAME.to_string(),
            "lab".to_string(),
        )]))
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    let agents = rt.list(&labels("lab", Role::Agent)).await.unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(
        (agents[0].name.as_str(), agents[0].state),
        ("bottle-lab-agent", Some(ContainerState::Created))
    );
    assert!(rt
        .list(&labels("other", Role::Agent))
        .await
        .unwrap()
        .is_empty());
    let info = rt.inspect_container(&agent).await.unwrap();
    assert_eq!(info.state, ContainerState::Created);
    assert!(info.ipv4.is_empty(), "no lease before start");

    // update: widen then narrow the allow-list.
    rt.update_allow_cidrs(&agent, &["100.96.2.2/32".into()], &[])
        .await
        .unwrap();
    assert!(rt
        .status(&agent)
        .await
        .unwrap()
        .allowed_cidrs
        .unwrap()
        .contains(&"100.96.2.2/32".to_string()));
    rt.update_allow_cidrs(&agent, &[], &["100.96.2.2/32".into()])
        .await
        .unwrap();
    assert!(!rt
        .status(&agent)
        .await
        .unwrap()
        .allowed_cidrs
        .unwrap()
        .contains(&"100.96.2.2/32".to_string()));

    // delete; a second delete and a deleted machine's status are clean.
    rt.remove_container(&agent).await.unwrap();
    rt.remove_container(&agent).await.unwrap();
    rt.remove_container(&sidecar).await.unwrap();
    let err = rt.inspect_container(&agent).await.unwrap_err();
    assert!(matches!(err, RuntimeError::NotFound { .. }), "{err}");
    assert!(rt.machines().await.unwrap().is_empty());
}

#[tokio::test]
async fn real_error_outputs() {
    let Some(smol) = Smol::new("real_error_outputs") else {
        return;
    };
    let rt = smol.connect().await;
    // No host-IP form of -p: a usage error, exit 2.
    let out = smol.raw(&[
        "machine",
        "create",
        "--name",
        "p",
        "-p",
        "127.0.0.1:8080:80",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid host port: 127.0.0.1"));
    // The driver refuses such a publish before calling the CLI.
    let err = rt
        .create_container(&ContainerSpec {
            name: "p".into(),
            publish: vec![Publish {
                host_ip: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 16)),
                host_port: 8080,
                container_port: 80,
            }],
            ..Default::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("per-ip-publish") && err.contains("127.0.0.1 only"),
        "{err}"
    );

    // A missing machine: NOT_FOUND / vm not found.
    let out = smol.raw(&[
        "--error-format",
        "json",
        "machine",
        "delete",
        "--name",
        "ghost",
        "--force",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(v["error"]["code"], "NOT_FOUND");
    assert_eq!(v["error"]["message"], "vm not found: ghost");
    let err = rt.inspect_container("ghost").await.unwrap_err();
    assert!(matches!(err, RuntimeError::NotFound { .. }), "{err}");
    rt.remove_container("ghost")
        .await
        .expect("removing a missing machine is not an error");
    let err = rt.start_container("ghost").await.unwrap_err().to_string();
    assert!(
        err.contains("vm not found: ghost") || err.contains("not found"),
        "{err}"
    );

    // A duplicate name.
    let spec = ContainerSpec {
        name: "dup".into(),
        labels: labels("e", Role::Probe),
        ..Default::default()
    };
    rt.create_container(&spec).await.unwrap();
    let err = rt.create_container(&spec).await.unwrap_err().to_string();
    assert!(
        err.contains("machine 'dup' already exists") && err.contains("exit 1"),
        "{err}"
    );
    rt.remove_container("dup").await.unwrap();

    // An agent on a fabric with no sidecar address would get open egress: refused.
    let mut open = agent_spec("e", "bottle-e-internal", smol.host_dir("w"));
    open.dns.clear();
    let err = rt.create_container(&open).await.unwrap_err().to_string();
    assert!(err.contains("open egress"), "{err}");
    assert!(rt.machines().await.unwrap().is_empty());
}

#[tokio::test]
async fn smolfiles_are_valid_and_strict() {
    let Some(smol) = Smol::new("smolfiles_are_valid_and_strict") else {
        return;
    };
    let dir = common::workspace().join("smolfiles");
    for f in ["agent.smolfile", "sidecar.smolfile"] {
        let name = f.trim_end_matches(".smolfile");
        let out = smol.raw(&[
            "machine",
            "create",
            "--name",
            name,
            "--smolfile",
            dir.join(f).to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Unknown keys and host-IP ports are rejected by the real CLI.
    let bad = smol.state.path().join("bad.smolfile");
    std::fs::write(&bad, "bogus = 1\n").unwrap();
    let out = smol.raw(&[
        "machine",
        "create",
        "--name",
        "b1",
        "--smolfile",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `bogus`"));
    std::fs::write(&bad, "ports = [\"127.0.0.1:8080:80\"]\n").unwrap();
    let out = smol.raw(&[
        "machine",
        "create",
        "--name",
        "b2",
        "--smolfile",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("smolfile ports: invalid host port: 127.0.0.1"));
}

#[tokio::test]
async fn probe_reads_back_what_it_created_and_names_the_dns_weakness() {
    let Some(smol) = Smol::new("probe_reads_back_what_it_created_and_names_the_dns_weakness")
    else {
        return;
    };
    let rt = smol.connect().await;
    let probe = rt.probe(None).await;
    let state = |n: &str| probe.capability(n).map(|c| c.state);
    assert_eq!(
        state("internal-network"),
        Some(CapabilityState::Yes),
        "{:?}",
        probe.capability("internal-network")
    );
    assert_eq!(
        state("egress-allow-list"),
        Some(CapabilityState::Yes),
        "{:?}",
        probe.capability("egress-allow-list")
    );
    assert_eq!(state("multi-network-attach"), Some(CapabilityState::Yes));
    assert_eq!(
        state("host-unreachable-from-internal"),
        Some(CapabilityState::Yes)
    );
    let publish = probe.capability("per-ip-publish").unwrap();
    assert_eq!(publish.state, CapabilityState::No);
    assert!(
        publish.detail.contains("invalid host port"),
        "{}",
        publish.detail
    );
    let dns = probe.capability("internal-dns-isolated").unwrap();
    assert_eq!(
        (dns.state, dns.weakness),
        (CapabilityState::No, Some(Weakness::DnsForwardedUnfiltered))
    );
    let bcast = probe.capability("broadcast-isolated").unwrap();
    assert_eq!(
        (bcast.state, bcast.weakness, bcast.how),
        (
            CapabilityState::No,
            Some(Weakness::BroadcastReachesHost),
            "inferred"
        )
    );
    assert_eq!(probe.unmet().len(), 2, "{:?}", probe.unmet());
    assert!(
        rt.machines().await.unwrap().is_empty(),
        "the probe removed its machines"
    );
}

/// The order `bottle up` uses: networks, sidecar, start (which fails to boot
/// here), then the rollback `bottle down` does from labels alone.
#[tokio::test]
async fn up_fails_at_boot_with_a_clear_message_and_leaves_no_machine() {
    let Some(smol) = Smol::new("up_fails_at_boot_with_a_clear_message_and_leaves_no_machine")
    else {
        return;
    };
    let rt = smol.connect().await;
    let fabric = rt
        .create_network(&NetworkSpec {
            name: "bottle-boot-internal".into(),
            kind: NetworkKind::Internal,
            labels: labels("boot", Role::Internal),
        })
        .await
        .unwrap();
    let egress = rt
        .create_network(&NetworkSpec {
            name: "bottle-boot-egress".into(),
            kind: NetworkKind::Egress,
            labels: labels("boot", Role::Egress),
        })
        .await
        .unwrap();
    // An agent machine that exists before the failure, as after a failure
    // later in `up`: the rollback must find it by label.
    let agent = rt
        .create_container(&agent_spec("boot", &fabric.id, smol.host_dir("work")))
        .await
        .unwrap();
    let sidecar = rt
        .create_container(&ContainerSpec {
            name: "bottle-boot-sidecar".into(),
            labels: labels("boot", Role::Sidecar),
            networks: vec![attach(&egress.id), attach(&fabric.id)],
            command: vec!["run".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    match rt.start_container(&sidecar).await {
        Ok(()) => {
            // A host that boots guests: nothing to check about boot failures.
            eprintln!(
                "note: this host boots smolvm guests; the boot-failure path was not exercised"
            );
            rt.remove_container(&sidecar).await.unwrap();
        }
        Err(e) => {
            let msg = e.to_string();
            eprintln!("start failed as expected on this host:\n{msg}");
            assert!(
                msg.starts_with("smolvm: start machine bottle-boot-sidecar failed:"),
                "{msg}"
            );
            assert!(
                msg.contains("the machine was deleted, nothing is left behind"),
                "{msg}"
            );
            assert!(
                msg.contains("did not boot")
                    || msg.contains("could not load libkrun")
                    || msg.contains("cannot open /dev/kvm")
                    || msg.contains("hypervisor"),
                "the message explains the failed boot: {msg}"
            );
            let err = rt.inspect_container(&sidecar).await.unwrap_err();
            assert!(matches!(err, RuntimeError::NotFound { .. }), "{err}");
        }
    }
    // The rollback: everything labelled with the bottle, then nothing.
    let left = rt
        .list(&BTreeMap::from([(
            LABEL_NAME.to_string(),
            "boot".to_string(),
        )]))
        .await
        .unwrap();
    assert_eq!(
        left.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        vec![agent.as_str()]
    );
    for r in &left {
        rt.remove_container(&r.id).await.unwrap();
    }
    for n in [&fabric, &egress] {
        rt.remove_network(&n.id).await.unwrap();
    }
    assert!(rt.machines().await.unwrap().is_empty());
}

/// As root with the VMM kept as root (`SMOLVM_VM_UID_DROP=off`, what
/// the docs/runtimes.md appendix says booting as root needs), the guest itself gets to
/// boot — and on nested/PVM KVM it never makes progress.
#[tokio::test]
async fn guest_boot_failure_is_explained() {
    let Some(smol) = Smol::new("guest_boot_failure_is_explained") else {
        return;
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP guest_boot_failure_is_explained: not root (SMOLVM_VM_UID_DROP only matters for root)");
        return;
    }
    let wrapper = smol.state.path().join("smolvm-root-vmm");
    write_script(
        &wrapper,
        &format!(
            "#!/bin/sh\nSMOLVM_VM_UID_DROP=off exec '{}' \"$@\"\n",
            smol.bin.display()
        ),
    );
    let rt = SmolvmRuntime::connect_with(SmolvmConfig {
        bin: wrapper,
        state_dir: Some(smol.state.path().join("state")),
        image_dir: smol.state.path().join("images"),
    })
    .await
    .unwrap();
    let id = rt
        .create_container(&ContainerSpec {
            name: "bottle-kvm-sidecar".into(),
            labels: labels("kvm", Role::Sidecar),
            networks: vec![attach(EGRESS_ID)],
            ..Default::default()
        })
        .await
        .unwrap();
    match rt.start_container(&id).await {
        Ok(()) => {
            eprintln!("note: this host boots smolvm guests");
            rt.remove_container(&id).await.unwrap();
        }
        Err(e) => {
            let msg = e.to_string();
            eprintln!("start failed as expected on this host:\n{msg}");
            assert!(msg.contains("nothing is left behind"), "{msg}");
            assert!(
                msg.contains("did not boot")
                    || msg.contains("cannot open /dev/kvm")
                    || msg.contains("hypervisor"),
                "{msg}"
            );
        }
    }
    assert!(rt.machines().await.unwrap().is_empty());
}

/// A rootfs tarball holding `files` (all 0644 regular files).
fn rootfs_tarball(path: &std::path::Path, files: &[&str]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for f in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(2);
        b.append_data(&mut h, f, &b"x\n"[..]).unwrap();
    }
    b.finish().unwrap();
}

/// smolvm cannot build images: the driver writes them into its image store
/// from the spec's recipe, `image_exists` then finds them, and
/// `machine create` is handed the archive (smolvm records it as
/// `local:<sha256 of the file>`). A base smolvm cannot read, or one that
/// lacks what the recipe requires, is refused with the fix, and nothing is
/// written.
#[tokio::test]
async fn images_are_written_to_the_store_and_handed_to_create() {
    let Some(smol) = Smol::new("images_are_written_to_the_store_and_handed_to_create") else {
        return;
    };
    let rt = smol.connect().await;
    let base = smol.state.path().join("base.tar");
    rootfs_tarball(&base, &["etc/ssl/certs/ca-certificates.crt", "usr/bin/git"]);
    let mut spec = bottle_runtimes::BuildSpec {
        tag: "bottle-sidecar:t1".into(),
        files: BTreeMap::from([("bottle-sidecar".to_string(), (b"bin".to_vec(), 0o755))]),
        containerfile: "Containerfile".into(),
        build_args: BTreeMap::from([("BASE_IMAGE".to_string(), base.display().to_string())]),
        labels: BTreeMap::new(),
        recipe: bottle_runtimes::oci::Recipe {
            files: BTreeMap::from([(
                "/usr/local/bin/bottle-sidecar".to_string(),
                ("bottle-sidecar".to_string(), 0o755),
            )]),
            entrypoint: Some(vec!["/usr/local/bin/bottle-sidecar".into()]),
            requires: vec!["/usr/bin/git".into()],
            ..Default::default()
        },
    };
    assert!(!rt.image_exists("bottle-sidecar:t1").await.unwrap());
    let mut lines = Vec::new();
    rt.build_image(&spec, &mut |l: &str| lines.push(l.to_string()))
        .await
        .unwrap();
    assert!(
        lines.iter().any(|l| l.contains("(rootfs tarball)")),
        "{lines:?}"
    );
    assert!(rt.image_exists("bottle-sidecar:t1").await.unwrap());
    let archive = rt.image_dir().join("bottle-sidecar%3At1.tar");
    assert!(archive.is_file());

    // The machine is created from the archive: smolvm names it by the
    // file's sha256.
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&archive).unwrap()))
    };
    let name = rt
        .create_container(&ContainerSpec {
            name: "bottle-img-sidecar".into(),
            image: "bottle-sidecar:t1".into(),
            labels: labels("img", Role::Sidecar),
            networks: vec![attach(EGRESS_ID)],
            ..Default::default()
        })
        .await
        .unwrap();
    let status = smol.raw(&["machine", "status", "--name", &name, "--json"]);
    let m: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(m["image"], format!("local:{sha}"), "{m}");
    rt.remove_container(&name).await.unwrap();

    // A newer sidecar prunes the older archive.
    spec.tag = "bottle-sidecar:t2".into();
    rt.build_image(&spec, &mut |_: &str| {}).await.unwrap();
    assert_eq!(
        rt.prune_images("bottle-sidecar", "bottle-sidecar:t2")
            .await
            .unwrap(),
        1
    );
    assert!(!archive.exists());
    assert!(rt.image_exists("bottle-sidecar:t2").await.unwrap());

    // A base without git is refused naming what is missing.
    rootfs_tarball(&base, &["etc/ssl/certs/ca-certificates.crt"]);
    spec.tag = "bottle-sidecar:t3".into();
    let err = rt
        .build_image(&spec, &mut |_: &str| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("the base lacks [\"/usr/bin/git\"]"), "{err}");
    assert!(!rt.image_exists("bottle-sidecar:t3").await.unwrap());

    // A reference the store does not hold cannot be a base.
    spec.build_args
        .insert("BASE_IMAGE".into(), "debian:bookworm-slim".into());
    let err = rt
        .build_image(&spec, &mut |_: &str| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("neither a local rootfs/archive nor in the image store"),
        "{err}"
    );
    assert!(err.contains("fix: run scripts/setup-smolvm.sh"), "{err}");
    // Images bottle does not build are pulled by smolvm at start.
    assert!(rt.pulls_missing_images());
}
