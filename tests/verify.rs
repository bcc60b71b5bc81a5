//! `bottle verify` as CI's isolation gate: two bottles with a non-trivial
//! policy (allowed hosts, an L7 rule, a credential) must pass every check,
//! and a deliberately broken bottle — its internal bridge given a host
//! address behind bottle's back — must fail, proving the checks can fail,
//! even when the agent has replaced its own `curl`, `dig`, `getent` and
//! `python3` with liars (docs/design.md §5 item 15): the verdict comes from a probe
//! container, inspect data and the host, never from the agent's tools.

use bottle_e2e::*;

const POLICY: &str = "[egress]\n\
allow = [\"origin.test\", \"api.test\", \"*.cdn.example\"]\n\
allow_private = [\"origin.test\", \"api.test\"]\n\
upstream_roots = [\"test-ca.pem\"]\n\
\n\
[[egress.rule]]\n\
host = \"api.test\"\n\
methods = [\"GET\"]\n\
paths = [\"/repos/acme/\"]\n\
\n\
[[egress.credential]]\n\
host = \"origin.test\"\n\
header = \"authorization\"\n\
from_env = \"VERIFY_TOKEN\"\n";

fn report(b: &Bottle) -> (i32, serde_json::Value, String) {
    let out = b.bottle(&["verify", &b.name, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("verify --json: {e}\n{}\n{}", stdout(&out), stderr(&out)));
    (out.status.code().unwrap_or(-1), v, stderr(&out))
}

/// Counted checks that failed (agent-view rows never count).
fn failed(v: &serde_json::Value) -> Vec<String> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["counted"] == true && c["pass"] != true)
        .map(|c| {
            format!(
                "{} (expected {}, observed {})",
                c["name"], c["expected"], c["observed"]
            )
        })
        .collect()
}

#[test]
fn two_bottles_with_a_real_policy_pass_verify() {
    if !engine_or_skip("two_bottles_with_a_real_policy_pass_verify") {
        return;
    }
    let pki = TempDir::new("verify-pki");
    test_pki(&pki.0, &["origin.test", "api.test"]);
    let ca = std::fs::read(pki.0.join("ca.pem")).unwrap();
    let files: &[(&str, &[u8])] = &[("test-ca.pem", &ca)];
    let env = &[("VERIFY_TOKEN", "token-for-verify")];
    let a = Bottle::up_with("ver-a", POLICY, files, env);
    let b = Bottle::up_with("ver-b", POLICY, files, env);
    let _origin_a = echo_origin(
        &format!("bottle-test-origin-{}", a.name),
        &format!("bottle-{}-egress", a.name),
        &["origin.test", "api.test"],
        &pki.0,
    );
    let _origin_b = echo_origin(
        &format!("bottle-test-origin-{}", b.name),
        &format!("bottle-{}-egress", b.name),
        &["origin.test", "api.test"],
        &pki.0,
    );
    for x in [&a, &b] {
        let (code, v, err) = report(x);
        assert_eq!(failed(&v), Vec::<String>::new(), "{}: {err}", x.name);
        assert_eq!(code, 0);
        let names: Vec<&str> = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        // The controls ran, including the allowed host through the proxy...
        assert!(
            names.contains(&"control: allowed host passes the proxy"),
            "{names:?}"
        );
        assert!(names.contains(&"control: sidecar dns answers"), "{names:?}");
        // ...and the other bottle was among the targets.
        let other = if x.name == a.name { &b.name } else { &a.name };
        assert!(
            names
                .iter()
                .any(|n| n.starts_with(&format!("other bottle {other}/"))),
            "{names:?}"
        );
        assert!(names.contains(&"host 172.17.0.1"), "{names:?}");
        // Each kind of check ran where it must, and only agent-view rows
        // are left out of the verdict.
        let checks = v["checks"].as_array().unwrap();
        for (name, place) in [
            ("host 172.17.0.1", "probe"),
            ("broadcast to the host", "probe"),
            ("capabilities", "inspect"),
            ("engine socket", "inspect"),
            ("pids limit", "inspect"),
            ("memory limit", "inspect"),
            ("networks", "inspect"),
            ("sidecar closed on its egress address", "host"),
            ("control: broadcast listener answers", "host"),
        ] {
            assert!(
                checks
                    .iter()
                    .any(|c| c["name"] == name && c["where"] == place && c["counted"] == true),
                "{name} in {place}: {names:?}"
            );
        }
        let counted = checks.iter().filter(|c| c["counted"] == true).count();
        assert_eq!(v["passed"].as_u64().unwrap() as usize, counted);
        assert!(checks
            .iter()
            .filter(|c| c["counted"] != true)
            .all(|c| c["where"] == "agent-view"));
        assert!(v["probe"]
            .as_str()
            .unwrap()
            .contains("in the agent's network namespace"));
    }
}

/// Every check named `name` that ran in `place`.
fn rows<'a>(v: &'a serde_json::Value, name: &str, place: &str) -> Vec<&'a serde_json::Value> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == name && c["where"] == place)
        .collect()
}

/// Replaces the agent's network tools, as root, with scripts that print a
/// refusal and exit 7 (curl's "could not connect").
fn replace_agent_tools(b: &Bottle) {
    let agent = format!("bottle-{}-agent", b.name);
    let script = "for t in curl dig getent python3; do \
        p=$(command -v $t) || exit 1; rm -f \"$p\"; \
        printf '#!/bin/sh\\necho \"%s: connection refused\" >&2\\nexit 7\\n' $t > \"$p\"; \
        chmod 755 \"$p\"; done; curl http://192.0.2.1/; echo \"curl=$?\"";
    let out = docker(&["exec", "-u", "0", &agent, "sh", "-c", script]);
    assert!(
        stdout(&out).contains("curl=7") && stderr(&out).contains("curl: connection refused"),
        "the agent's tools were not replaced: {} {}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn verify_fails_on_a_deliberately_broken_bottle() {
    if !engine_or_skip("verify_fails_on_a_deliberately_broken_bottle") {
        return;
    }
    let b = Bottle::up("ver-broken", "");
    let (code, v, err) = report(&b);
    assert_eq!(code, 0, "healthy bottle first: {:?} {err}", failed(&v));
    // The probe is gone once verify is done.
    let probes = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=dev.bottle.name={}", b.name),
        "--filter",
        "label=dev.bottle.role=probe",
    ]);
    assert_eq!(stdout(&probes).trim(), "", "a probe container was left");

    // The agent lies: every network tool it has exits 7. The verdict does
    // not move (the lying agent-view rows are shown, not counted)...
    replace_agent_tools(&b);
    let (code, v, err) = report(&b);
    assert_eq!(
        code,
        0,
        "lying tools change nothing: {:?} {err}",
        failed(&v)
    );
    let view = rows(&v, "control: sidecar proxy answers", "agent-view");
    assert_eq!(view.len(), 1, "the agent's own view is shown");
    assert_eq!(view[0]["pass"], false, "its fake curl fails the control");
    assert_eq!(view[0]["counted"], false);
    assert_eq!(
        rows(&v, "control: sidecar proxy answers", "probe")[0]["pass"],
        true
    );

    // ...and a limit removed behind bottle's back is read from inspect, not
    // from inside the agent.
    let agent = format!("bottle-{}-agent", b.name);
    let update = docker(&["update", "--pids-limit", "-1", &agent]);
    assert!(
        update.status.success(),
        "docker update: {}",
        stderr(&update)
    );
    let (code, v, _) = report(&b);
    assert_eq!(
        code, 3,
        "an agent without a pids limit must fail verify (exit 3: a hole)"
    );
    let pids = rows(&v, "pids limit", "inspect");
    assert_eq!(pids[0]["pass"], false, "{pids:?}");
    assert_eq!(pids[0]["observed"], "unlimited");
    let update = docker(&["update", "--pids-limit", "2048", &agent]);
    assert!(
        update.status.success(),
        "docker update: {}",
        stderr(&update)
    );

    // Break it: give the host an address on the bottle's internal bridge,
    // the very thing `up` refuses to start with.
    let net = format!("bottle-{}-internal", b.name);
    let subnet = stdout(&docker(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
        &net,
    ]));
    let gw = format!("{}.1/24", subnet.trim().rsplit_once('.').unwrap().0);
    let bridge = stdout(&docker(&[
        "network",
        "inspect",
        "-f",
        "{{index .Options \"com.docker.network.bridge.name\"}}",
        &net,
    ]))
    .trim()
    .to_string();
    let add = std::process::Command::new("ip")
        .args(["addr", "add", &gw, "dev", &bridge])
        .output()
        .unwrap();
    assert!(
        add.status.success(),
        "ip addr add {gw} dev {bridge}: {}",
        stderr(&add)
    );
    struct Undo(String, String);
    impl Drop for Undo {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["addr", "del", &self.0, "dev", &self.1])
                .output();
        }
    }
    let _undo = Undo(gw.clone(), bridge);

    let (code, v, _) = report(&b);
    assert_eq!(
        code, 3,
        "verify must fail on a broken bottle, lying tools or not"
    );
    // With a host address on its only network the agent reaches the host's
    // listener — through the bridge address itself or, routed via it, on
    // the host's other addresses (which of them answers first depends on
    // when the agent's neighbour entry for the gateway recovers).
    let fails = failed(&v);
    let reached: Vec<&String> = fails
        .iter()
        .filter(|f| f.starts_with("\"host ") && f.contains("REACHED the host listener"))
        .collect();
    assert!(
        !reached.is_empty(),
        "the host address on the bridge ({gw}) was not caught: {fails:?}"
    );
    // Those failures came from the probe; the agent's own curl claimed
    // "no connection" for the same targets, and that claim did not count.
    let caught: Vec<&serde_json::Value> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["where"] == "probe"
                && c["pass"] == false
                && c["observed"] == "REACHED the host listener"
        })
        .collect();
    assert!(!caught.is_empty(), "{fails:?}");
    let lied = &v["agent_view_disagrees"];
    for c in &caught {
        let name = c["name"].as_str().unwrap();
        let view = rows(&v, name, "agent-view");
        assert_eq!(view[0]["pass"], true, "the fake curl says no: {view:?}");
        assert_eq!(view[0]["counted"], false);
        assert!(
            lied.as_array().unwrap().iter().any(|l| l == name),
            "{name} not among the disagreements: {lied}"
        );
    }
    assert_eq!(v["failed"].as_u64().unwrap() as usize, fails.len());
    // The table says where each row ran.
    let table = stdout(&b.bottle(&["verify", &b.name]));
    let line = table
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains("REACHED the host listener"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(line.contains(" probe "), "{line}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("(pass) agent-view") && l.contains("host ")),
        "{table}"
    );
}

#[test]
fn up_with_verify_checks_before_handing_over() {
    if !engine_or_skip("up_with_verify_checks_before_handing_over") {
        return;
    }
    let dir = TempDir::new("upverify");
    let state = TempDir::new("upverify-state");
    let name = unique_name("upverify");
    std::fs::write(dir.0.join("bottle.toml"), format!("name = \"{name}\"\n")).unwrap();
    let out = bottle(&state.0, &dir.0, &["up", "--verify"]);
    let _down = DownOnDrop(name.clone(), state.0.clone(), dir.0.clone());
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("verifying the sandbox (a probe in the agent's network"),
        "{err}"
    );
    assert!(
        err.contains(&format!("verify {name}: ")) && err.contains(" 0 failed"),
        "{err}"
    );
    assert!(!labelled(&name).is_empty(), "a verified bottle stays up");
}

struct DownOnDrop(String, std::path::PathBuf, std::path::PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = bottle(&self.1, &self.2, &["down", &self.0]);
    }
}
