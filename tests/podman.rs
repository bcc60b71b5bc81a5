//! bottle against podman's Docker-compatible API, end to end. Podman here
//! (4.3.1 with netavark, rootful) gives the host an address on every
//! network, internal ones too, so an agent could reach the host: bottle must
//! refuse it at the probe, name the measurement, and leave nothing in podman.
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

#[test]
fn podman_is_refused_because_the_host_holds_an_address_on_internal_networks() {
    let Some(host) =
        podman_host("podman_is_refused_because_the_host_holds_an_address_on_internal_networks")
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

    // The probe measures it: a row the user can read, exit 4.
    let probe = on_podman(&host, &state.0, &dir.0, &["probe", "--runtime", "docker"]);
    let text = stdout(&probe);
    assert_eq!(probe.status.code(), Some(4), "{text}{}", stderr(&probe));
    assert!(text.contains("podman 4."), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("no-host-address-on-internal"))
        .unwrap_or_else(|| panic!("no row: {text}"));
    assert!(row.contains(" NO ") && row.contains("holds ["), "{row}");

    // `up` refuses before any part of the bottle exists.
    let up = on_podman(&host, &state.0, &dir.0, &["up", "--runtime", "docker"]);
    let err = stderr(&up);
    assert_eq!(up.status.code(), Some(4), "{err}");
    assert!(
        err.contains("refusing to start") && err.contains("no-host-address-on-internal"),
        "{err}"
    );
    assert_eq!(podman_labelled(&name), Vec::<String>::new(), "{err}");
}
