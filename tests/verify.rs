//! `bottle verify` as CI's isolation gate: two bottles with a non-trivial
//! policy (allowed hosts, an L7 rule, a credential) must pass every check,
//! and a deliberately broken bottle — its internal bridge given a host
//! address behind bottle's back — must fail, proving the checks can fail.

use bottle_e2e::*;

const POLICY: &str = "[egress]\n\
allow = [\"origin.test\", \"api.test\", \"*.pythonhosted.org\"]\n\
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

fn failed(v: &serde_json::Value) -> Vec<String> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["pass"] != true)
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
    }
}

#[test]
fn verify_fails_on_a_deliberately_broken_bottle() {
    if !engine_or_skip("verify_fails_on_a_deliberately_broken_bottle") {
        return;
    }
    let b = Bottle::up("ver-broken", "");
    let (code, v, err) = report(&b);
    assert_eq!(code, 0, "healthy bottle first: {:?} {err}", failed(&v));

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
    assert_eq!(code, 1, "verify must fail on a broken bottle");
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
        err.contains("verifying the sandbox from inside the agent"),
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
