//! The `bottle-sidecar` binary itself: it refuses bad policies, serves and
//! stops on SIGTERM, and its `health` and `netinfo` subcommands.

mod common;

use common::PATIENCE;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bottle-sidecar");

fn temp_policy(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bottle-sidecar-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn sidecar(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn a_policy_of_another_format_is_refused() {
    let path = temp_policy(
        "format2.json",
        r#"{"format":2,"bottle":"demo","egress":{"allow":["example.com"]}}"#,
    );
    let out = sidecar(&[
        "run",
        "--policy",
        path.to_str().unwrap(),
        "--proxy-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("has format 2, but this bottle-sidecar understands only format 1"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fatal: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(fatal["service"], "sidecar");
    assert_eq!(fatal["event"], "fatal");
    assert!(
        !stdout.contains("listening"),
        "no proxy without a policy: {stdout}"
    );
}

#[test]
fn unparseable_and_missing_policies_are_refused() {
    let path = temp_policy("broken.json", "{\"format\":1,");
    let out = sidecar(&["run", "--policy", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));

    let out = sidecar(&["run", "--policy", "/nonexistent/policy.json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read policy file"));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["run"][..],
        &["run", "--policy"][..],
        &["run", "--policy", "p", "--bogus", "x"][..],
        &["run", "--policy", "p", "--proxy-listen", "not-an-addr"][..],
        &["frobnicate"][..],
    ] {
        let out = sidecar(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
    }
}

/// Reads the child's stdout lines on a thread.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for_line(rx: &mpsc::Receiver<String>, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the sidecar did not log the expected line");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if want(&v) {
            return v;
        }
    }
}

#[test]
fn serves_answers_health_and_stops_on_sigterm() {
    let path = temp_policy(
        "ok.json",
        r#"{"format":1,"bottle":"demo","egress":{"allow":["example.com"]}}"#,
    );
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--policy",
            path.to_str().unwrap(),
            "--proxy-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut child);
    let loaded = wait_for_line(&rx, |v| v["event"] == "policy-loaded");
    assert_eq!(loaded["bottle"], "demo");
    let listening = wait_for_line(&rx, |v| v["event"] == "listening");
    let addr = listening["addr"].as_str().unwrap().to_string();

    let out = sidecar(&["health", "--addr", &addr]);
    assert!(out.status.success(), "{out:?}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let stop = wait_for_line(&rx, |v| v["event"] == "shutdown");
    assert_eq!(stop["signal"], "SIGTERM");
    let deadline = Instant::now() + PATIENCE;
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the sidecar did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn health_fails_when_nothing_listens() {
    let port = common::closed_port();
    let out = sidecar(&["health", "--addr", &format!("127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));
}

#[test]
fn netinfo_prints_interfaces_as_json() {
    let out = sidecar(&["netinfo"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ifaces = v["interfaces"].as_array().unwrap();
    for iface in ifaces {
        assert!(iface["name"].is_string());
        assert!(iface["addrs"].is_array());
    }
    // Where loopback is up, its IPv4 address is reported with its prefix.
    if let Some(lo) = ifaces.iter().find(|i| i["name"] == "lo") {
        let addrs: Vec<&str> = lo["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        if !addrs.is_empty() {
            assert!(addrs.contains(&"127.0.0.1/8"), "{addrs:?}");
        }
    }
}
