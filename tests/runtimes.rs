//! `bottle` end to end on the other runtimes: Apple `container` against the
//! FAKE CLI in `tests/fake-container/` (the real one is macOS-only), and
//! smolvm against the real CLI, where VMs cannot boot on CI: `up` must fail
//! at boot with a clear message and leave no machine behind.

use bottle_e2e::*;
use std::path::PathBuf;
use std::process::Command;

fn fake_container() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fake-container/container")
}

fn run(
    state: &TempDir,
    dir: &TempDir,
    env: &[(&str, &str)],
    args: &[&str],
) -> std::process::Output {
    Command::new(bottle_bin())
        .args(args)
        .current_dir(&dir.0)
        .env("XDG_STATE_HOME", &state.0)
        .env_remove("BOTTLE_RUNTIME")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run bottle")
}

/// A wrapper that runs the fake with its state dir and `modes`: `bottle`
/// runs `container` from a scrubbed environment, so the fake's settings
/// cannot come from bottle's.
fn fake_wrapper(dir: &TempDir, fake_state: &TempDir, modes: &[(&str, &str)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let vars: String = modes.iter().map(|(k, v)| format!("{k}='{v}' ")).collect();
    let path = dir.0.join("container");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nFAKE_CONTAINER_STATE='{}' {vars}exec '{}' \"$@\"\n",
            fake_state.0.display(),
            fake_container().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A 1.2.x whose internal network passes raw-IP TCP to the internet
/// (apple/container#2062): `up` refuses before creating the bottle, and no
/// `--accept-weakness` changes that.
#[test]
fn apple_container_up_refuses_a_leaking_internal_network() {
    let state = TempDir::new("apple-leak-state");
    let dir = TempDir::new("apple-leak");
    let bin_dir = TempDir::new("apple-leak-bin");
    let fake_state = TempDir::new("apple-leak-fake");
    let name = unique_name("fkl");
    // 1.1.0: also before the environment fix, which `up` warns about.
    let bin = fake_wrapper(
        &bin_dir,
        &fake_state,
        &[
            ("FAKE_CONTAINER_LEAK", "ipv4"),
            ("FAKE_CONTAINER_VERSION", "1.1.0"),
        ],
    );
    let env = [("BOTTLE_CONTAINER_BIN", bin.to_str().unwrap())];
    let out = apple_up_accepting_both(&state, &dir, &env, &name);
    assert_eq!(out.status.code(), Some(4), "refused: {}", stderr(&out));
    assert!(
        stderr(&out).contains("internal-network-isolated")
            && stderr(&out).contains("apple/container#2062"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("WARNING: host-env-hidden-from-images: container 1.1.0"),
        "{}",
        stderr(&out)
    );
    let argv = std::fs::read_to_string(fake_state.0.join("argv.jsonl")).unwrap();
    assert!(
        !argv.contains(&format!("bottle-{name}-agent")),
        "the agent was created: {argv}"
    );
}

#[test]
fn apple_container_up_exec_down_against_the_fake() {
    let state = TempDir::new("apple-state");
    let dir = TempDir::new("apple");
    let bin_dir = TempDir::new("apple-bin");
    let fake_state = TempDir::new("apple-fake");
    let name = unique_name("fk");
    let bin = fake_wrapper(&bin_dir, &fake_state, &[]);
    // A secret in bottle's environment must never reach `container` (before
    // 1.2.0 an image could read it).
    let env = [
        ("BOTTLE_CONTAINER_BIN", bin.to_str().unwrap()),
        ("AWS_SECRET_ACCESS_KEY", "fake-secret-for-the-scrub-test"),
    ];
    let fake = |args: &[&str]| {
        let out = Command::new(&bin).args(args).output().unwrap();
        stdout(&out)
    };

    // The fake's internal networks let containers reach the host gateway, as
    // the real runtime does: up refuses, naming the weakness and the fix.
    let out = run(
        &state,
        &dir,
        &env,
        &["up", "--runtime", "apple-container", "--name", &name],
    );
    assert_eq!(out.status.code(), Some(4), "refused: {}", stderr(&out));
    assert!(
        stderr(&out).contains("host-reachable-from-internal"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("--accept-weakness host-reachable-from-internal"),
        "{}",
        stderr(&out)
    );
    assert!(
        !fake(&["ls", "-a", "--format", "json"]).contains(&name),
        "created before refusing"
    );

    let out = apple_up_accepting_both(&state, &dir, &env, &name);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("WEAKNESS ACCEPTED"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("WARNING"), "1.2.2: {}", stderr(&out));

    // The command sequence: sidecar egress network FIRST, internal second;
    // agent internal only, DNS at the sidecar's inspected address, NET_RAW dropped.
    let argv = std::fs::read_to_string(fake_state.0.join("argv.jsonl")).unwrap();
    let runs: Vec<serde_json::Value> = argv
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            if v.get("argv").is_some() {
                v["argv"].clone()
            } else {
                v
            }
        })
        .filter(|a| a[0] == "create" || a[0] == "run")
        .collect();
    let args_of = |role: &str| -> Vec<String> {
        runs.iter()
            .find(|a| {
                a.as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == format!("bottle-{name}-{role}").as_str())
            })
            .unwrap_or_else(|| panic!("no create for {role}: {argv}"))
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap_or("").to_string())
            .collect()
    };
    let sidecar = args_of("sidecar");
    let pos = |v: &Vec<String>, s: &str| v.iter().position(|a| a == s);
    let eg = pos(&sidecar, &format!("bottle-{name}-egress")).expect("sidecar on egress");
    let int = pos(&sidecar, &format!("bottle-{name}-internal")).expect("sidecar on internal");
    assert!(eg < int, "egress must come first: {sidecar:?}");
    let agent = args_of("agent");
    assert!(
        pos(&agent, &format!("bottle-{name}-egress")).is_none(),
        "agent on egress: {agent:?}"
    );
    assert!(
        pos(&agent, &format!("bottle-{name}-internal")).is_some(),
        "{agent:?}"
    );
    // The sidecar runs before the agent joins the internal network.
    let order: Vec<String> = argv.lines().map(str::to_string).collect();
    let at = |needle: &str| {
        order
            .iter()
            .position(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle}: {argv}"))
    };
    assert!(
        at(&format!("[\"start\", \"bottle-{name}-sidecar\"]"))
            < at(&format!("[\"create\", \"--name\", \"bottle-{name}-agent\""))
    );
    let envs = std::fs::read_to_string(fake_state.0.join("env.jsonl")).unwrap();
    assert!(envs.lines().count() > 10, "{envs}");
    assert!(
        !envs.contains("AWS_SECRET_ACCESS_KEY") && !envs.contains("fake-secret-for-the-scrub-test"),
        "bottle's environment reached `container`"
    );
    let dns = pos(&agent, "--dns")
        .map(|i| agent[i + 1].clone())
        .expect("agent --dns");
    assert!(dns.parse::<std::net::Ipv4Addr>().is_ok(), "{dns}");
    assert!(
        agent
            .windows(2)
            .any(|w| w[0] == "--cap-drop" && w[1].contains("NET_RAW")),
        "{agent:?}"
    );

    // ps shows the accepted weakness for the life of the bottle.
    let ps = run(&state, &dir, &env, &["ps", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&ps)).expect("ps json");
    let me = v
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(me["runtime"], "apple-container");
    assert_eq!(me["accepted_weaknesses"][0], "host-reachable-from-internal");

    // exec goes to the recorded runtime and propagates exit codes.
    let out = run(&state, &dir, &env, &["exec", &name, "--", "echo", "hi"]);
    assert_eq!(stdout(&out).trim(), "hi", "{}", stderr(&out));

    let out = run(&state, &dir, &env, &["down", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!fake(&["ls", "-a", "--format", "json"]).contains(&name));
    assert!(!fake(&["network", "ls", "--format", "json"]).contains(&name));
}

fn smolvm_bin() -> Option<String> {
    if let Ok(b) = std::env::var("BOTTLE_SMOLVM_BIN") {
        if !b.is_empty() {
            return Some(b);
        }
    }
    let found = Command::new("smolvm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    found.then(|| "smolvm".to_string())
}

#[test]
fn smolvm_up_fails_at_boot_and_leaves_nothing() {
    let Some(bin) = smolvm_bin() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("smolvm CLI missing and CI=true (scripts/setup-smolvm.sh installs it)");
        }
        eprintln!("SKIP smolvm_up_fails_at_boot_and_leaves_nothing: no smolvm CLI (scripts/setup-smolvm.sh)");
        return;
    };
    let state = TempDir::new("smol-state");
    let dir = TempDir::new("smol");
    let smol_state = TempDir::new("smol-machines");
    let name = unique_name("smol");
    let env = [
        ("BOTTLE_SMOLVM_BIN", bin.as_str()),
        ("BOTTLE_SMOLVM_STATE_DIR", smol_state.0.to_str().unwrap()),
    ];
    let ls = || {
        let out = Command::new(&bin)
            .args([
                "--state-dir",
                smol_state.0.to_str().unwrap(),
                "machine",
                "ls",
                "--json",
            ])
            .output()
            .unwrap();
        stdout(&out).trim().to_string()
    };
    // The weakness is refused by name first.
    let out = run(
        &state,
        &dir,
        &env,
        &["up", "--runtime", "smolvm", "--name", &name],
    );
    assert_eq!(out.status.code(), Some(4), "refused by the probe");
    assert!(
        stderr(&out).contains("dns-forwarded-unfiltered"),
        "{}",
        stderr(&out)
    );
    // Accepted, it goes as far as this host allows: the first boot.
    let out = run(
        &state,
        &dir,
        &env,
        &[
            "up",
            "--runtime",
            "smolvm",
            "--name",
            &name,
            "--accept-weakness",
            "dns-forwarded-unfiltered",
            "--accept-weakness",
            "broadcast-reaches-host",
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("start machine"), "{err}");
    assert!(err.contains("nothing is left behind"), "{err}");
    assert_eq!(ls(), "[]", "machines left after a failed up");
}

/// `bottle up` on the fake Apple runtime, accepting both weaknesses it has
/// (so only what cannot be accepted can refuse).
fn apple_up_accepting_both(
    state: &TempDir,
    dir: &TempDir,
    env: &[(&str, &str)],
    name: &str,
) -> std::process::Output {
    run(
        state,
        dir,
        env,
        &[
            "up",
            "--runtime",
            "apple-container",
            "--name",
            name,
            "--accept-weakness",
            "host-reachable-from-internal",
            "--accept-weakness",
            "broadcast-reaches-host",
        ],
    )
}
