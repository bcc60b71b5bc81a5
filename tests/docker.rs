//! End-to-end tests of bottle on a real Docker engine, with real curl inside
//! the agent. Security tests are negative: they try the escape from inside the
//! agent and assert the exact refusal, next to a positive control that shows
//! the same probe succeeds where it should (so a dead network cannot pass).

use bottle_e2e::*;
use std::io::{Read, Write};
use std::net::TcpListener;

/// A server on the host, bound to 0.0.0.0, answering every connection with a
/// page holding `marker`.
fn host_listener(marker: &'static str) -> u16 {
    let l = TcpListener::bind("0.0.0.0:0").expect("bind host listener");
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{marker}",
                marker.len()
            );
        }
    });
    port
}

/// Every IPv4 address the host holds, and every gateway of every engine network.
fn host_ipv4_targets() -> Vec<String> {
    let mut ips: Vec<String> = Vec::new();
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .expect("ip addr");
    for line in stdout_of(&out.stdout).lines() {
        if let Some(addr) = line.split_whitespace().skip_while(|w| *w != "inet").nth(1) {
            ips.push(addr.split('/').next().unwrap().to_string());
        }
    }
    let nets = docker(&["network", "ls", "-q"]);
    for id in stdout(&nets).lines() {
        let gw = docker(&[
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Gateway}} {{end}}",
            id,
        ]);
        ips.extend(stdout(&gw).split_whitespace().map(String::from));
    }
    ips.retain(|ip| !ip.starts_with("127."));
    ips.sort();
    ips.dedup();
    ips
}

fn stdout_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn exec_propagates_exit_codes_and_down_removes_everything() {
    if !engine_or_skip("exec_propagates_exit_codes_and_down_removes_everything") {
        return;
    }
    let b = Bottle::up("codes", "");
    assert_eq!(b.exec_code(&["true"]), 0);
    assert_eq!(b.exec_code(&["false"]), 1);
    assert_eq!(b.exec_code(&["sh", "-c", "exit 7"]), 7);
    // stdin reaches the command with -i.
    let mut child = std::process::Command::new(bottle_bin())
        .args([
            "exec",
            "-i",
            &b.name,
            "--",
            "sh",
            "-c",
            "read x; echo got:$x",
        ])
        .env("XDG_STATE_HOME", &b.state.0)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout(&out).trim(), "got:hello");

    assert!(!labelled(&b.name).is_empty());
    let down = b.bottle(&["down", &b.name]);
    assert!(down.status.success(), "{}", stderr(&down));
    assert_eq!(
        labelled(&b.name),
        Vec::<String>::new(),
        "resources left after down"
    );
    let again = b.bottle(&["down", &b.name]);
    assert_eq!(
        again.status.code(),
        Some(0),
        "second down: {}",
        stderr(&again)
    );
    assert!(stderr(&again).contains("nothing to remove"));
    // exec on a bottle that is gone names the problem.
    let gone = b.bottle(&["exec", &b.name, "--", "true"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        stderr(&gone).contains("no bottle named"),
        "{}",
        stderr(&gone)
    );
}

#[test]
fn agent_cannot_reach_the_host_on_any_address() {
    if !engine_or_skip("agent_cannot_reach_the_host_on_any_address") {
        return;
    }
    let port = host_listener("HOST-SERVICE-REACHED");
    let targets = host_ipv4_targets();
    assert!(
        targets.iter().any(|t| t == "172.17.0.1"),
        "docker0 gateway missing from targets: {targets:?}"
    );

    // Positive control: a plain container on the default bridge reaches the
    // listener through the docker0 gateway, so the listener does answer.
    let control = docker(&[
        "run",
        "--rm",
        "--network",
        "bridge",
        "bottle-agent:latest",
        "curl",
        "-s",
        "--max-time",
        "5",
        &format!("http://172.17.0.1:{port}/"),
    ]);
    assert_eq!(
        stdout(&control),
        "HOST-SERVICE-REACHED",
        "control failed: {}",
        stderr(&control)
    );

    let b = Bottle::up("hostreach", "");
    let mut script = String::new();
    for ip in &targets {
        script.push_str(&format!(
            "out=$(curl -s --noproxy '*' --max-time 3 http://{ip}:{port}/); echo \"{ip} $? $out\"\n"
        ));
    }
    script.push_str("getent hosts host.docker.internal; echo \"host.docker.internal $?\"\n");
    let out = b.sh(&script);
    let text = stdout(&out);
    assert!(
        !text.contains("HOST-SERVICE-REACHED"),
        "host reached:\n{text}"
    );
    for ip in &targets {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{ip} ")))
            .unwrap_or_else(|| panic!("no result for {ip}:\n{text}"));
        let code: i32 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        // 7: could not connect (no route / refused); 28: timed out.
        assert!(
            code == 7 || code == 28,
            "{ip}: curl exit {code}, expected 7 or 28:\n{text}"
        );
    }
    assert!(
        text.lines().any(|l| l == "host.docker.internal 2"),
        "host.docker.internal resolved:\n{text}"
    );
}

#[test]
fn egress_goes_through_the_proxy_and_only_to_allowed_names() {
    if !engine_or_skip("egress_goes_through_the_proxy_and_only_to_allowed_names") {
        return;
    }
    let b = Bottle::up(
        "egress",
        "[egress]\nallow = [\"origin.test\"]\nallow_private = [\"origin.test\"]\n",
    );
    let origin = format!("bottle-test-origin-{}", b.name);
    let net = format!("bottle-{}-egress", b.name);
    let run = docker(&[
        "run",
        "-d",
        "--name",
        &origin,
        "--network",
        &net,
        "--network-alias",
        "origin.test",
        "--network-alias",
        "denied.test",
        "bottle-agent:latest",
        "sh",
        "-c",
        "mkdir -p /srv && echo ORIGIN-PAGE > /srv/index.html && cd /srv && exec python3 -m http.server 80",
    ]);
    assert!(run.status.success(), "origin: {}", stderr(&run));
    struct Rm(String);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = docker(&["rm", "-f", &self.0]);
        }
    }
    let _rm = Rm(origin.clone());
    let origin_ip = stdout(&docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &origin,
    ]))
    .trim()
    .to_string();

    // Allowed name through the proxy (the agent's environment points at it);
    // retried while the origin starts.
    let out = b.sh(
        "for i in $(seq 1 50); do r=$(curl -s --max-time 3 http://origin.test/) && [ \"$r\" = ORIGIN-PAGE ] && { echo $r; exit 0; }; sleep 0.2; done; exit 1",
    );
    assert_eq!(
        stdout(&out).trim(),
        "ORIGIN-PAGE",
        "allowed host: {}",
        stderr(&out)
    );

    // The same allowed name through a CONNECT tunnel.
    let out = b.sh("curl -s --max-time 5 -p http://origin.test/");
    assert_eq!(
        stdout(&out).trim(),
        "ORIGIN-PAGE",
        "CONNECT: {}",
        stderr(&out)
    );

    // The origin's address directly, without the proxy: no route.
    let out = b.sh(&format!(
        "curl -s --noproxy '*' --max-time 3 http://{origin_ip}/; echo \" exit=$?\""
    ));
    let text = stdout(&out);
    assert!(!text.contains("ORIGIN-PAGE"), "direct path open: {text}");
    assert!(
        text.contains("exit=7") || text.contains("exit=28"),
        "{text}"
    );

    // A name that is not allowed (it resolves at the sidecar) gets 403 naming the rule.
    let out = b.sh("curl -s --max-time 5 -w '\\nstatus=%{http_code}' http://denied.test/");
    let text = stdout(&out);
    assert!(text.contains("status=403"), "denied host: {text}");
    assert!(
        text.contains("default-deny"),
        "403 body names the rule: {text}"
    );
    assert!(
        text.contains("denied.test"),
        "403 body names the host: {text}"
    );
    assert!(!text.contains("ORIGIN-PAGE"));

    // CONNECT to the denied name is refused at CONNECT time.
    let out = b.sh("curl -s --max-time 5 -p -o /dev/null -w '%{http_connect}' http://denied.test/");
    assert_eq!(
        stdout(&out).trim(),
        "403",
        "denied CONNECT: {}",
        stderr(&out)
    );

    // An allowed name on a port the rule does not cover.
    let out =
        b.sh("curl -s --max-time 5 -p -o /dev/null -w '%{http_connect}' http://origin.test:8080/");
    assert_eq!(stdout(&out).trim(), "403", "wrong port: {}", stderr(&out));

    // The origin's raw IP through the proxy is not an allowed name either.
    let out = b.sh(&format!(
        "curl -s --max-time 5 -o /dev/null -w '%{{http_code}}' http://{origin_ip}/"
    ));
    assert_eq!(
        stdout(&out).trim(),
        "403",
        "IP through proxy: {}",
        stderr(&out)
    );

    // The decisions are in the egress log.
    let logs = b.bottle(&["logs", &b.name, "--service", "egress", "--json"]);
    let text = stdout(&logs);
    assert!(
        text.contains("\"host\":\"denied.test\""),
        "egress log: {text}"
    );
    assert!(
        text.contains("\"decision\":\"allow\""),
        "egress log: {text}"
    );
}

#[test]
fn two_bottles_cannot_reach_each_other() {
    if !engine_or_skip("two_bottles_cannot_reach_each_other") {
        return;
    }
    let a = Bottle::up("pair-a", "");
    let b = Bottle::up("pair-b", "");
    let own_sidecar = a.ip("sidecar", "internal");
    let targets = [
        b.ip("agent", "internal"),
        b.ip("sidecar", "internal"),
        b.ip("sidecar", "egress"),
    ];
    let ports = [22, 53, 80, 443, 3128, 8080, 8765];
    let mut script =
        format!("timeout 3 bash -c '</dev/tcp/{own_sidecar}/3128' && echo CONTROL-OPEN\n");
    for ip in &targets {
        for port in ports {
            script.push_str(&format!(
                "timeout 3 bash -c '</dev/tcp/{ip}/{port}' 2>/dev/null && echo OPEN {ip}:{port}\n"
            ));
        }
        // Through A's own proxy, B's addresses are not allowed destinations.
        script.push_str(&format!(
            "echo PROXY {ip} $(curl -s --max-time 5 -o /dev/null -w '%{{http_code}}' http://{ip}:3128/)\n"
        ));
    }
    let out = a.sh(&script);
    let text = stdout(&out);
    assert!(
        text.contains("CONTROL-OPEN"),
        "control: own sidecar unreachable:\n{text}\n{}",
        stderr(&out)
    );
    assert!(!text.contains("OPEN "), "A reached B:\n{text}");
    for ip in &targets {
        assert!(
            text.contains(&format!("PROXY {ip} 403")),
            "proxy let A reach {ip}:\n{text}"
        );
    }
    // The two bottles got different internal subnets.
    assert_ne!(
        own_sidecar.rsplit_once('.').unwrap().0,
        targets[1].rsplit_once('.').unwrap().0
    );
}

#[test]
fn config_errors_are_all_reported_and_nothing_is_created() {
    let dir = TempDir::new("badcfg");
    let state = TempDir::new("badcfg-state");
    let name = unique_name("badcfg");
    let cfg = format!(
        "name = \"{name}\"\n\
         [agent]\n\
         imagee = \"x\"\n\
         cpus = \"two\"\n\
         [egress]\n\
         allow = [\"ok.example.com\", \"http://bad.example.com\"]\n"
    );
    std::fs::write(dir.0.join("bad.toml"), cfg).unwrap();
    let out = bottle(&state.0, &dir.0, &["up", "-f", "bad.toml"]);
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("bad.toml:3:1"),
        "unknown key with line:col:\n{err}"
    );
    assert!(err.contains("imagee"), "{err}");
    assert!(
        err.contains("bad.toml:4:8"),
        "wrong type with line:col:\n{err}"
    );
    assert!(err.contains("agent.cpus"), "{err}");
    assert!(
        err.contains("bad.toml:6:28"),
        "bad host with line:col:\n{err}"
    );
    assert!(err.contains("egress.allow[1]"), "{err}");
    if engine_or_skip("config_errors_are_all_reported_and_nothing_is_created (engine part)") {
        assert!(
            labelled(&name).is_empty(),
            "resources created for a bad config"
        );
    }
}

#[test]
fn probe_measures_the_engine() {
    if !engine_or_skip("probe_measures_the_engine") {
        return;
    }
    let state = TempDir::new("probe-state");
    let child = std::process::Command::new(bottle_bin())
        .args(["probe", "--runtime", "docker", "--json"])
        .env("XDG_STATE_HOME", &state.0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run bottle probe");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("probe json");
    assert_eq!(v["runtime"], "docker");
    assert!(v["version"].as_str().is_some_and(|s| !s.is_empty()));
    let cap = |n: &str| {
        v["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .unwrap_or_else(|| panic!("no capability {n} in {v}"))
            .clone()
    };
    for n in [
        "internal-network",
        "no-host-address-on-internal",
        "multi-network-attach",
        "per-ip-publish",
    ] {
        let c = cap(n);
        assert_eq!(c["state"], "yes", "{n}: {c}");
        assert_eq!(c["how"], "measured", "{n}: {c}");
    }
    // The probe leaves nothing behind (its scratch names carry its pid).
    let prefix = format!("name=bottle-probe-{pid}-");
    let left = docker(&["ps", "-aq", "--filter", &prefix]);
    assert_eq!(stdout(&left).trim(), "", "containers left by the probe");
    let left = docker(&["network", "ls", "-q", "--filter", &prefix]);
    assert_eq!(stdout(&left).trim(), "", "networks left by the probe");
}

#[test]
fn an_up_killed_half_way_is_removed_by_down() {
    if !engine_or_skip("an_up_killed_half_way_is_removed_by_down") {
        return;
    }
    let dir = TempDir::new("killed");
    let state = TempDir::new("killed-state");
    let name = unique_name("killed");
    std::fs::write(dir.0.join("bottle.toml"), format!("name = \"{name}\"\n")).unwrap();
    let mut child = std::process::Command::new(bottle_bin())
        .args(["up", "-q"])
        .current_dir(&dir.0)
        .env("XDG_STATE_HOME", &state.0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it (SIGKILL: no chance to clean up) as soon as its first resource exists.
    let mut seen = false;
    for _ in 0..300 {
        if !labelled(&name).is_empty() {
            seen = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert!(seen, "bottle up created nothing within 6 s");
    let down = bottle(&state.0, &dir.0, &["down", &name]);
    assert!(down.status.success(), "{}", stderr(&down));
    assert_eq!(labelled(&name), Vec::<String>::new(), "left after down");
}

#[test]
fn agent_is_hardened_and_tty_works() {
    if !engine_or_skip("agent_is_hardened_and_tty_works") {
        return;
    }
    let b = Bottle::up("harden", "");
    // Effective capabilities: NET_RAW (13), NET_ADMIN (12), MKNOD (27),
    // AUDIT_WRITE (29), SETFCAP (31), SYS_ADMIN (21) are all absent, and
    // no-new-privileges is set.
    let out = b.sh("grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status");
    let text = stdout(&out);
    let hex = |key: &str| {
        let line = text
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("{key} missing:\n{text}"));
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    for key in ["CapEff:", "CapBnd:"] {
        let caps = hex(key);
        for (bit, name) in [
            (13, "NET_RAW"),
            (12, "NET_ADMIN"),
            (27, "MKNOD"),
            (29, "AUDIT_WRITE"),
            (31, "SETFCAP"),
            (21, "SYS_ADMIN"),
        ] {
            assert_eq!(caps & (1 << bit), 0, "{key} still has {name}: {caps:x}");
        }
    }
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    // The attack itself: a raw socket is refused.
    let out = b.sh("python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)'");
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("PermissionError"), "{}", stderr(&out));
    // Nor can the agent give itself an address on the internal network.
    let out = b.sh("ip addr add 10.213.255.1/32 dev eth0");
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("Operation not permitted"),
        "{}",
        stderr(&out)
    );
    // No IPv6 in the agent at all.
    let out = b.sh("cat /proc/sys/net/ipv6/conf/all/disable_ipv6");
    assert_eq!(stdout(&out).trim(), "1");

    // -t gives the command a terminal (run under `script` for a pty).
    let cmd = format!("{} exec -t {} -- tty", bottle_bin().display(), b.name);
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("XDG_STATE_HOME", &b.state.0)
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("/dev/pts/"),
        "tty: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    // The agent holds the bottle CA's certificate and nothing else of the
    // state dir (the key and secrets stay with the sidecar).
    let out = b.sh("ls -A /usr/local/share/ca-certificates/bottle; ls /etc/bottle 2>&1; find / -xdev -name ca-key.pem 2>/dev/null");
    let text = stdout(&out);
    assert_eq!(text.lines().next(), Some("bottle-ca.crt"), "{text}");
    assert!(
        !text.contains("ca-key.pem") && !text.contains("secrets.json"),
        "{text}"
    );

    // The sidecar itself: no capability at all, the state dir's owner, a
    // read-only root file system.
    let sidecar = format!("bottle-{}-sidecar", b.name);
    let out = docker(&["exec", &sidecar, "cat", "/proc/1/status"]);
    let status = stdout(&out);
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap_or_else(|| panic!("{k} missing: {status}"))
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
    assert_eq!(field("CapPrm:"), "0000000000000000", "{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(b.state.0.join("bottle").join(&b.name))
        .unwrap()
        .uid();
    assert_eq!(field("Uid:"), owner.to_string(), "{status}");
    let out = docker(&[
        "exec",
        &sidecar,
        "sh",
        "-c",
        "touch /usr/local/bin/x; echo exit=$?",
    ]);
    assert!(
        stdout(&out).contains("exit=1") && stderr(&out).contains("Read-only file system"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );

    // Without a terminal, -t is refused with a clear message.
    let out = b.bottle(&["exec", "-t", &b.name, "--", "tty"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(
        stderr(&out).contains("--tty needs a terminal"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_dead_sidecar_means_no_egress() {
    if !engine_or_skip("a_dead_sidecar_means_no_egress") {
        return;
    }
    let b = Bottle::up(
        "deadcar",
        "[egress]\nallow = [\"origin.test\"]\nallow_private = [\"origin.test\"]\n",
    );
    let origin = format!("bottle-test-origin-{}", b.name);
    let net = format!("bottle-{}-egress", b.name);
    let run = docker(&[
        "run", "-d", "--name", &origin, "--network", &net, "--network-alias", "origin.test",
        "bottle-agent:latest", "sh", "-c",
        "mkdir -p /srv && echo ORIGIN-PAGE > /srv/index.html && cd /srv && exec python3 -m http.server 80",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    struct Rm(String);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = docker(&["rm", "-f", &self.0]);
        }
    }
    let _rm = Rm(origin);
    // Control: with the sidecar alive the origin is reachable.
    let out = b.sh("for i in $(seq 1 50); do curl -sf --max-time 3 http://origin.test/ && exit 0; sleep 0.2; done; exit 1");
    assert_eq!(stdout(&out).trim(), "ORIGIN-PAGE");
    let kill = docker(&["kill", &format!("bottle-{}-sidecar", b.name)]);
    assert!(kill.status.success(), "{}", stderr(&kill));
    let out = b.sh("curl -s --max-time 5 http://origin.test/; echo \" exit=$?\"");
    let text = stdout(&out);
    assert!(
        !text.contains("ORIGIN-PAGE"),
        "egress without a sidecar: {text}"
    );
    // 7: nothing listens where the proxy was, and there is no other route.
    assert!(
        text.contains("exit=7") || text.contains("exit=28"),
        "{text}"
    );
    let ps = b.bottle(&["ps", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&ps)).unwrap();
    let me = v
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == b.name.as_str())
        .unwrap()
        .clone();
    assert_eq!(me["sidecar"], "exited", "{me}");
}

#[test]
fn an_agent_cannot_widen_its_own_next_run() {
    if !engine_or_skip("an_agent_cannot_widen_its_own_next_run") {
        return;
    }
    // The project directory (holding bottle.toml) is mounted read-write.
    let b = Bottle::up_owned(
        "selfwiden",
        "[agent]\nmounts = [\"./:/workspace:rw\"]\n",
        4242,
    );
    // The attack, from inside: rewrite the policy of the next run.
    let out = b.sh(&format!(
        "printf 'name = \"{}\"\\n[agent]\\nmounts = [\"./:/workspace:rw\"]\\n[egress]\\nallow = [\"evil.example\"]\\n' > /workspace/bottle.toml",
        b.name
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    let down = b.bottle(&["down", &b.name]);
    assert!(down.status.success());
    let up = b.bottle(&["up"]);
    assert_eq!(
        up.status.code(),
        Some(4),
        "widened run started (exit 4: refused): {}",
        stderr(&up)
    );
    let err = stderr(&up);
    assert!(err.contains("+ egress.allow gains `evil.example`"), "{err}");
    assert!(err.contains("--accept-changes"), "{err}");
    assert!(
        labelled(&b.name).is_empty(),
        "resources created before consent"
    );
    // With explicit consent the user can take the change.
    let up = b.bottle(&["up", "--accept-changes"]);
    assert!(up.status.success(), "{}", stderr(&up));
    assert!(
        stderr(&up).contains("WARNING: the read-write mount"),
        "{}",
        stderr(&up)
    );
}

/// A reader that stops early (`| head`, `| true`) ends bottle quietly with
/// 0, not a panic about a broken pipe.
#[test]
fn a_closed_stdout_ends_bottle_quietly() {
    if !engine_or_skip("a_closed_stdout_ends_bottle_quietly") {
        return;
    }
    // `probe` measures for seconds before it prints: `true` is long gone.
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; {} probe --runtime docker | true",
            bottle_bin().display()
        ))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
}

/// The sidecar image carries the static musl build (issue 10): the very
/// bytes scripts/build-sidecar.sh made, and the running proxy maps no shared
/// library (no loader, no libc), so it needs nothing from the image.
#[test]
fn the_sidecar_runs_the_static_musl_build() {
    if !engine_or_skip("the_sidecar_runs_the_static_musl_build") {
        return;
    }
    let b = Bottle::up("musl", "");
    let sidecar = format!("bottle-{}-sidecar", b.name);
    let inside = docker(&["exec", &sidecar, "cat", "/usr/local/bin/bottle-sidecar"]);
    assert!(inside.status.success(), "{}", stderr(&inside));
    let built = std::fs::read(static_sidecar_bin()).unwrap();
    assert!(
        inside.stdout == built,
        "the image's bottle-sidecar ({} bytes) is not {} ({} bytes)",
        inside.stdout.len(),
        static_sidecar_bin().display(),
        built.len()
    );
    let maps = docker(&["exec", &sidecar, "cat", "/proc/1/maps"]);
    let maps = stdout(&maps);
    assert!(maps.contains("/usr/local/bin/bottle-sidecar"), "{maps}");
    assert!(!maps.contains(".so"), "a shared library is mapped:\n{maps}");
}
