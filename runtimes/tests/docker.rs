//! The docker driver against the real engine, through the `Runtime` trait:
//! what the agent broadcasts on an internal network reaches host sockets
//! until [`Runtime::isolate_host_from`] closes the bridge, and the probe says
//! so; a pids limit reaches the engine and stops a fork loop.
//!
//! Needs a Docker engine and a Debian-based image (the sidecar image, else
//! `bottle-base:bookworm` from scripts/setup-engine.sh). Without them the
//! tests skip (and fail under CI=true).

mod common;

use bottle_runtimes::docker::DockerRuntime;
use bottle_runtimes::{
    CapabilityState, ContainerSpec, NetworkKind, NetworkSpec, Runtime, LABEL_ROLE,
};
use common::present_or_skip;
use std::collections::BTreeMap;
use std::process::Command;

/// The engine and an image to run helpers from, or `None` (skipped, printed).
async fn engine(test: &str) -> Option<(DockerRuntime, String)> {
    let rt = DockerRuntime::connect().await;
    if !present_or_skip(
        test,
        "a Docker engine",
        rt.is_ok(),
        "scripts/setup-engine.sh starts one",
    ) {
        return None;
    }
    let images = Command::new("docker")
        .args([
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            "--filter",
            "label=dev.bottle.image=sidecar",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut candidates: Vec<String> = images.lines().map(str::to_string).collect();
    candidates.push("bottle-base:bookworm".into());
    let rt = rt.unwrap();
    let mut image = None;
    for c in candidates {
        if rt.image_exists(&c).await.unwrap_or(false) {
            image = Some(c);
            break;
        }
    }
    if !present_or_skip(
        test,
        "a Debian-based helper image",
        image.is_some(),
        "scripts/setup-engine.sh builds bottle-base:bookworm",
    ) {
        return None;
    }
    Some((rt, image.unwrap()))
}

fn scratch_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_ROLE.to_string(), "test".to_string())])
}

fn docker_inspect(format: &str, what: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, what])
        .output()
        .expect("run docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn broadcast_reaches_the_host_until_the_bridge_is_isolated() {
    let Some((rt, image)) = engine("broadcast_reaches_the_host_until_the_bridge_is_isolated").await
    else {
        return;
    };
    let net = rt
        .create_network(&NetworkSpec {
            name: format!("bottle-test-bcast-{}", std::process::id()),
            kind: NetworkKind::Internal,
            labels: scratch_labels(),
        })
        .await
        .expect("create internal network");
    let result = async {
        // The attack is real: an internal network without an address on the
        // host still hands broadcast and joined multicast to host sockets.
        let before = rt.broadcast_reaching_host(&net, &image).await?;
        let set = rt.isolate_host_from(&net, &image).await?;
        let after = rt.broadcast_reaching_host(&net, &image).await?;
        Ok::<_, bottle_runtimes::RuntimeError>((before, set, after))
    }
    .await;
    let bridge = net.host_interface.clone().unwrap_or_default();
    let _ = rt.remove_network(&net.id).await;
    let (before, set, after) = result.expect("measure, isolate, measure");
    assert!(
        before.received.iter().any(|r| r.ends_with("to 255.255.255.255")),
        "before isolation the host should have received the limited broadcast (the attack this closes); got {:?}",
        before.received
    );
    assert!(
        before.received.iter().any(|r| r.ends_with("to 224.0.0.251")),
        "before isolation a socket that joined 224.0.0.251 on {bridge} should have received it; got {:?}",
        before.received
    );
    assert!(set.contains("rp_filter=1 (strict)"), "{set}");
    assert!(
        after.received.is_empty(),
        "after isolation ({set}) the host still received {:?}",
        after.received
    );
    assert_eq!(after.sent_to.len(), 3, "{:?}", after.sent_to);
}

#[tokio::test]
async fn probe_measures_broadcast_isolated() {
    let Some((rt, image)) = engine("probe_measures_broadcast_isolated").await else {
        return;
    };
    let probe = rt.probe(Some(&image)).await;
    let cap = probe
        .capability("broadcast-isolated")
        .unwrap_or_else(|| panic!("no broadcast-isolated in {:#?}", probe.capabilities));
    assert_eq!(cap.state, CapabilityState::Yes, "{}", cap.detail);
    assert_eq!(cap.how, "measured");
    assert!(cap.required);
    assert!(cap.detail.contains("rp_filter=1"), "{}", cap.detail);
    assert!(cap.detail.contains("255.255.255.255"), "{}", cap.detail);
    assert!(cap.detail.contains("224.0.0.251"), "{}", cap.detail);
    // Without a helper image it is not measured, and says so.
    let blind = rt.probe(None).await;
    let cap = blind.capability("broadcast-isolated").expect("listed");
    assert_eq!(cap.state, CapabilityState::Unknown, "{}", cap.detail);
}

#[tokio::test]
async fn pids_limit_reaches_the_engine_and_stops_a_fork_loop() {
    let Some((rt, image)) = engine("pids_limit_reaches_the_engine_and_stops_a_fork_loop").await
    else {
        return;
    };
    let spec = |name: &str, limit: Option<i64>| ContainerSpec {
        name: format!("bottle-test-pids-{name}-{}", std::process::id()),
        image: image.clone(),
        entrypoint: Some(vec!["sleep".into(), "60".into()]),
        labels: scratch_labels(),
        cap_drop: vec!["ALL".into()],
        no_new_privileges: true,
        pids_limit: limit,
        ..Default::default()
    };
    let limited = rt
        .create_container(&spec("limited", Some(32)))
        .await
        .expect("create");
    let open = rt
        .create_container(&spec("open", None))
        .await
        .expect("create");
    let result = async {
        rt.start_container(&limited).await?;
        // 100 two-second sleepers against a limit of 32: the shell runs out
        // of pids and says so; what it started is counted before it fails.
        let exec = |script: &str| bottle_runtimes::ExecSpec {
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        };
        // The kernel's own word, from the container's cgroup (v2, else v1),
        // read first: the exited sleepers stay as zombies (PID 1 is `sleep`).
        let max = rt
            .exec_capture(
                &limited,
                &exec(
                    "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max",
                ),
            )
            .await?;
        let forks = rt
            .exec_capture(
                &limited,
                &exec(
                    "for i in $(seq 1 100); do sleep 2 & echo started $i; done; echo all-started",
                ),
            )
            .await?;
        Ok::<_, bottle_runtimes::RuntimeError>((forks, max))
    }
    .await;
    let limit_seen = docker_inspect("{{.HostConfig.PidsLimit}}", &limited);
    let open_seen = docker_inspect("{{.HostConfig.PidsLimit}}", &open);
    let _ = rt.remove_container(&limited).await;
    let _ = rt.remove_container(&open).await;
    let (forks, max) = result.expect("start and exec");
    assert_eq!(limit_seen, "32");
    assert!(
        open_seen == "<nil>" || open_seen == "0",
        "no limit asked, engine shows {open_seen}"
    );
    assert_eq!(max.stdout.trim(), "32", "{}", max.stderr);
    let all = format!("{}{}", forks.stdout, forks.stderr);
    assert!(
        all.contains("Cannot fork") && !all.contains("all-started"),
        "the fork loop should have hit the limit: {all}"
    );
    let started = forks.stdout.matches("started ").count();
    assert!(
        (1..32).contains(&started),
        "{started} sleepers under a limit of 32: {all}"
    );
}
