//! bottle against podman's Docker-compatible API, end to end: probe, up,
//! exec, verify, the host unreachable from the agent, down. Podman's
//! compatible API would give the host an address on internal networks
//! (netavark puts aardvark-dns at the gateway); the driver makes them
//! through podman's own API with DNS off, so they have no gateway.
//! `BOTTLE_PODMAN_HOST` is the API socket `scripts/setup-podman.sh` prints;
//! without it the test skips, and under `CI=true` it fails instead.

use bottle_e2e::*;
use std::process::{Command, Output};

fn podman_host(test: &str) -> Option<String> {
    match std::env::var("BOTTLE_PODMAN_HOST") {
        Ok(h) if !h.is_empty() => Some(h),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test}: BOTTLE_PODMAN_HOST is not set and CI=true: run scripts/setup-podman.sh (scripts/test.sh does)")
        }
        _ => {
            eprintln!(
                "SKIP {test}: BOTTLE_PODMAN_HOST not set (scripts/setup-podman.sh prints it)"
            );
            None
        }
    }
}

/// `bottle ARGS` talking to podman.
fn on_podman(host: &str, state: &std::path::Path, dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(bottle_bin())
        .args(args)
        .current_dir(dir)
        .env("XDG_STATE_HOME", state)
        .env("DOCKER_HOST", host)
        .env("BOTTLE_BASE_IMAGE", "localhost/bottle-base:bookworm")
        .env_remove("BOTTLE_RUNTIME")
        .output()
        .expect("run bottle")
}

fn podman_labelled(name: &str) -> Vec<String> {
    let filter = format!("label=dev.bottle.name={name}");
    let mut found = Vec::new();
    for what in [&["ps", "-a"][..], &["network", "ls"][..]] {
        let out = Command::new("podman")
            .args(what)
            .args(["-q", "--filter", &filter])
            .output()
            .expect("run podman");
        found.extend(stdout(&out).lines().map(String::from));
    }
    found
}

/// Every IPv4 address of this host (the engine's host), loopback aside.
fn host_addresses() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .expect("run ip");
    stdout(&out)
        .lines()
        .filter_map(|l| {
            let addr = l.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
            Some(addr.split('/').next()?.to_string())
        })
        .filter(|a| !a.starts_with("127."))
        .collect()
}

/// From inside a container (`run` gives the argv prefix), which of `addrs`
/// accept a TCP connection on `port`.
fn open_from(run: &[&str], addrs: &[String], port: u16) -> Vec<String> {
    let script = format!(
        "for a in {}; do if timeout 3 bash -c \"</dev/tcp/$a/{port}\" 2>/dev/null; then echo \"$a\"; fi; done",
        addrs.join(" ")
    );
    let out = Command::new(run[0])
        .args(&run[1..])
        .args(["bash", "-c", &script])
        .output()
        .expect("run a connection attempt");
    stdout(&out).lines().map(String::from).collect()
}

#[test]
fn a_bottle_runs_on_podman_and_the_agent_cannot_reach_the_host() {
    let Some(host) = podman_host("a_bottle_runs_on_podman_and_the_agent_cannot_reach_the_host")
    else {
        return;
    };
    let state = TempDir::new("podman-state");
    let dir = TempDir::new("podman-proj");
    let name = unique_name("podman");
    std::fs::write(
        dir.0.join("bottle.toml"),
        format!("name = \"{name}\"\n[egress]\nallow = [\"api.anthropic.com\"]\n"),
    )
    .unwrap();

    // The probe measures podman as it measures docker, and passes.
    let probe = on_podman(&host, &state.0, &dir.0, &["probe", "--runtime", "docker"]);
    let text = stdout(&probe);
    assert_eq!(probe.status.code(), Some(0), "{text}{}", stderr(&probe));
    assert!(text.contains("podman 4."), "{text}");
    for (row, says) in [
        ("internal-network ", "dns_enabled=false, gateways []"),
        ("no-host-address-on-internal", "has no IPv4 address"),
        ("broadcast-isolated", "rp_filter=1 (strict)"),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no {row} row: {text}"));
        assert!(line.contains(" yes ") && line.contains(says), "{line}");
    }

    let up = on_podman(&host, &state.0, &dir.0, &["up", "--runtime", "docker"]);
    assert_eq!(up.status.code(), Some(0), "{}", stderr(&up));
    let result = std::panic::catch_unwind(|| {
        // The agent's egress goes through its sidecar: a host not allowed
        // gets the sidecar's 403.
        let out = on_podman(
            &host,
            &state.0,
            &dir.0,
            &[
                "exec",
                &name,
                "--",
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_connect}",
                "https://example.com/",
            ],
        );
        assert_eq!(stdout(&out).trim(), "403", "{}", stderr(&out));

        // A listener on every host address: a container on podman's
        // default network reaches it (the control), the agent reaches none.
        let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let addrs = host_addresses();
        let control = open_from(
            &[
                "podman",
                "run",
                "--rm",
                "--network",
                "podman",
                "localhost/bottle-base:bookworm",
            ],
            &addrs,
            port,
        );
        assert!(
            !control.is_empty(),
            "control: no host address reachable from a plain container: {addrs:?}"
        );
        let agent = format!("bottle-{name}-agent");
        let from_agent = open_from(&["podman", "exec", &agent], &addrs, port);
        assert_eq!(
            from_agent,
            Vec::<String>::new(),
            "the agent reached the host (tried {addrs:?})"
        );

        // verify, from inside and outside, finds nothing open.
        let out = on_podman(&host, &state.0, &dir.0, &["verify", &name]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(stdout(&out).contains(" 0 failed"), "{}", stdout(&out));
    });
    let down = on_podman(&host, &state.0, &dir.0, &["down", &name]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(down.status.success(), "{}", stderr(&down));
    assert_eq!(
        podman_labelled(&name),
        Vec::<String>::new(),
        "left in podman"
    );
}
