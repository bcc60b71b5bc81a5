//! `bottle` end to end on the other runtimes: Apple `container` against the
//! FAKE CLI in `tests/fake-container/` (the real one is macOS-only), and
//! smolvm against the real CLI, where VMs cannot boot on CI: `up` writes its
//! images without docker, must fail at boot with a clear message and leave no
//! machine behind.

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

/// The Debian base rootfs tarball scripts/setup-smolvm.sh makes (lib.sh:
/// `~/.cache/bottle/base-<suite>-<arch>.tar`).
fn base_rootfs() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    std::fs::read_dir(cache.join("bottle"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.starts_with("base-bookworm-") && n.ends_with(".tar")
        })
}

fn sha256_of(path: &std::path::Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut h).unwrap();
    hex::encode(h.finalize())
}

/// Loads the archive at `path` into docker under `tag` (a copy whose
/// manifest names `tag`, so the engine's own bottle images stay as they
/// are): docker is the independent reader that checks every digest.
fn docker_load_as(path: &std::path::Path, tag: &str, scratch: &TempDir) {
    use std::io::Read;
    let copy = scratch.0.join("retagged.tar");
    let mut input = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut out = tar::Builder::new(std::fs::File::create(&copy).unwrap());
    for entry in input.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let mut header = entry.header().clone();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if name == "manifest.json" {
            let mut m: serde_json::Value = serde_json::from_slice(&data).unwrap();
            m[0]["RepoTags"] = serde_json::json!([tag]);
            data = serde_json::to_vec(&m).unwrap();
            header.set_size(data.len() as u64);
            header.set_cksum();
        }
        out.append_data(&mut header, &name, &data[..]).unwrap();
    }
    out.finish().unwrap();
    let load = Command::new("docker")
        .args(["load", "-i"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(load.status.success(), "docker load: {}", stderr(&load));
    std::fs::remove_file(&copy).unwrap();
}

/// smolvm on a machine without docker: bottle writes the agent and sidecar
/// images itself as archives in smolvm's image store, smolvm takes them at
/// `machine create`, and `up` goes as far as this host allows (the first
/// boot fails on nested KVM) and leaves no machine. Docker is never called
/// (a `docker` that records its calls comes first on PATH); afterwards the
/// real docker engine loads both archives and runs them, as an independent
/// check that they are images.
#[test]
fn smolvm_up_without_docker_writes_its_images_and_leaves_nothing() {
    let Some(bin) = smolvm_bin() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("smolvm CLI missing and CI=true (scripts/setup-smolvm.sh installs it)");
        }
        eprintln!("SKIP smolvm_up_without_docker_writes_its_images_and_leaves_nothing: no smolvm CLI (scripts/setup-smolvm.sh)");
        return;
    };
    let Some(base) = base_rootfs() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("no base rootfs and CI=true (scripts/setup-smolvm.sh makes ~/.cache/bottle/base-bookworm-<arch>.tar)");
        }
        eprintln!("SKIP smolvm_up_without_docker_writes_its_images_and_leaves_nothing: no base rootfs (scripts/setup-smolvm.sh)");
        return;
    };
    let state = TempDir::new("smol-state");
    let dir = TempDir::new("smol");
    let smol_state = TempDir::new("smol-machines");
    let store = TempDir::new("smol-images");
    let fake_bin = TempDir::new("smol-bin");
    let name = unique_name("smol");
    // The base, under the name bottle looks for in the store.
    std::fs::hard_link(&base, store.0.join("bottle-base%3Abookworm.tar"))
        .or_else(|_| std::fs::copy(&base, store.0.join("bottle-base%3Abookworm.tar")).map(|_| ()))
        .unwrap();
    let calls = fake_bin.0.join("docker-calls");
    {
        use std::os::unix::fs::PermissionsExt;
        let docker = fake_bin.0.join("docker");
        std::fs::write(
            &docker,
            format!("#!/bin/sh\necho \"$*\" >> '{}'\nexit 97\n", calls.display()),
        )
        .unwrap();
        std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        fake_bin.0.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = [
        ("BOTTLE_SMOLVM_BIN", bin.as_str()),
        ("BOTTLE_SMOLVM_STATE_DIR", smol_state.0.to_str().unwrap()),
        ("BOTTLE_SMOLVM_IMAGE_DIR", store.0.to_str().unwrap()),
        ("BOTTLE_BASE_IMAGE", ""),
        ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
        ("PATH", path.as_str()),
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
    // The weakness is refused by name first (the images are written before
    // the probe, which runs its helpers on them).
    let out = run(
        &state,
        &dir,
        &env,
        &["up", "--runtime", "smolvm", "--name", &name],
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "refused by the probe: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("dns-forwarded-unfiltered"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("(rootfs tarball)") && stderr(&out).contains("wrote "),
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
    assert!(
        !calls.exists(),
        "docker was called: {:?}",
        std::fs::read_to_string(&calls)
    );

    // The store holds both images bottle wrote...
    let stored: Vec<PathBuf> = std::fs::read_dir(&store.0)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let find = |prefix: &str| {
        stored
            .iter()
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} archive in {stored:?}"))
            .clone()
    };
    let sidecar = find("bottle-sidecar%3A");
    let agent = find("bottle-agent%3Alatest");
    // ... and smolvm took the sidecar's archive byte for byte (its archive
    // cache is named by the file's sha256).
    let digest = sha256_of(&sidecar);
    let cached = smol_state
        .0
        .join(".cache/smolvm-image-archives")
        .join(&digest);
    assert!(
        cached.join("archive.tar").is_file(),
        "smolvm did not take {} (sha256 {digest})",
        sidecar.display()
    );

    // Docker reads both as images: every layer digest checked on load.
    let scratch = TempDir::new("smol-load");
    let sidecar_tag = format!("bottle-e2e-{name}:sidecar");
    let agent_tag = format!("bottle-e2e-{name}:agent");
    docker_load_as(&sidecar, &sidecar_tag, &scratch);
    docker_load_as(&agent, &agent_tag, &scratch);
    let version = Command::new("docker")
        .args(["run", "--rm", &sidecar_tag, "--version"])
        .output()
        .unwrap();
    let agent_run = Command::new("docker")
        .args(["run", "--rm", &agent_tag, "sh", "-c", "pwd; git --version"])
        .output()
        .unwrap();
    let inspect = Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            "{{json .Config.Cmd}} {{json .Config.Labels}}",
            &agent_tag,
        ])
        .output()
        .unwrap();
    let _ = Command::new("docker")
        .args(["rmi", &sidecar_tag, &agent_tag])
        .output();
    assert!(
        stdout(&version).starts_with("bottle-sidecar "),
        "{} {}",
        stdout(&version),
        stderr(&version)
    );
    assert_eq!(
        stdout(&agent_run).lines().collect::<Vec<_>>()[..2].first(),
        Some(&"/workspace"),
        "{}",
        stderr(&agent_run)
    );
    assert!(
        stdout(&agent_run).contains("git version"),
        "{}",
        stdout(&agent_run)
    );
    assert_eq!(
        stdout(&inspect).trim(),
        r#"["sleep","infinity"] {"dev.bottle.image":"agent"}"#
    );
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
