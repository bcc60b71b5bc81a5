//! `bottle verify`: the sandbox checked from inside, not trusted.
//!
//! Every threat of DESIGN §5 that applies to the runtime becomes one or more
//! checks run in the agent with the agent image's own tools (sh, curl, getent,
//! dig, python3). Next to them run positive controls — the sidecar's services
//! answer, an allowed host passes the proxy, the host listener answers where
//! the host can see it — so that a dead network cannot make the negative
//! checks pass. Targets are discovered on the host: every host address and
//! network gateway, other bottles' addresses, and a listener `verify` opens
//! on 0.0.0.0 itself so a port is known to be open.

use crate::lifecycle::{self, LifecycleError};
use bottle_runtimes::{ExecOutput, ExecSpec, ResourceKind, Runtime, LABEL_NAME, LABEL_ROLE};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// Positive control or negative (attack) check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Control,
    Attack,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub kind: Kind,
    /// What was tried.
    pub tried: String,
    pub expected: String,
    pub observed: String,
    pub pass: bool,
}

/// Everything `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub bottle: String,
    pub runtime: String,
    pub passed: usize,
    pub failed: usize,
    pub checks: Vec<CheckResult>,
}

type Judge = Box<dyn Fn(&ExecOutput) -> (bool, String) + Send + Sync>;

struct Check {
    name: String,
    kind: Kind,
    tried: String,
    expected: String,
    script: String,
    judge: Judge,
}

fn check(
    name: impl Into<String>,
    kind: Kind,
    tried: impl Into<String>,
    expected: impl Into<String>,
    script: impl Into<String>,
    judge: impl Fn(&ExecOutput) -> (bool, String) + Send + Sync + 'static,
) -> Check {
    Check {
        name: name.into(),
        kind,
        tried: tried.into(),
        expected: expected.into(),
        script: script.into(),
        judge: Box::new(judge),
    }
}

/// The first line of output, for the table.
fn brief(o: &ExecOutput) -> String {
    let text = format!("{}{}", o.stdout, o.stderr);
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let line: String = line.chars().take(100).collect();
    format!(
        "exit {}{}",
        o.code,
        if line.is_empty() {
            String::new()
        } else {
            format!(": {line}")
        }
    )
}

/// A TCP connection attempt that must fail: curl's exit code 7 (refused / no
/// route) or 28 (timed out), and never the host marker.
fn must_not_connect(marker: &'static str) -> impl Fn(&ExecOutput) -> (bool, String) {
    move |o| {
        let reached = o.stdout.contains(marker);
        let code = o.stdout.lines().last().unwrap_or("").trim().to_string();
        (
            !reached && (code == "7" || code == "28"),
            if reached {
                "REACHED the host listener".into()
            } else {
                format!("curl exit {code}")
            },
        )
    }
}

fn random_label() -> String {
    use std::io::Read;
    let mut b = [0u8; 6];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    hex::encode(b)
}

/// A listener on 0.0.0.0 of the host, answering every connection with a marker.
async fn host_listener(marker: &'static str) -> std::io::Result<u16> {
    let l = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{marker}",
                        marker.len()
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    Ok(port)
}

const MARKER: &str = "BOTTLE-VERIFY-HOST-LISTENER";

/// Runs every check in bottle `name`'s agent.
pub async fn verify(
    rt: &dyn Runtime,
    name: &str,
    helper_image: &str,
) -> Result<Report, LifecycleError> {
    let agent = lifecycle::find_container(rt, name, "agent").await?;
    let sidecar = lifecycle::find_container(rt, name, "sidecar").await?;
    let helper_image = if helper_image.is_empty() {
        sidecar.image.clone()
    } else {
        helper_image.to_string()
    };
    let helper_image = helper_image.as_str();
    let internal = crate::plan::Plan::resource_name(name, "internal");
    let sidecar_ip =
        sidecar
            .ipv4
            .get(&internal)
            .copied()
            .ok_or(LifecycleError::NoSidecarAddress {
                network: internal.clone(),
            })?;
    let state = crate::state::StateDir::for_bottle(name)?;
    let policy: Option<bottle_policy::Policy> = std::fs::read_to_string(state.policy_path())
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let allowed_exact = policy.as_ref().and_then(|p| {
        p.egress.allow.iter().find_map(|a| match (&a.host, a.port) {
            (bottle_policy::HostPattern::Exact(h), None | Some(443)) => Some(h.clone()),
            _ => None,
        })
    });

    let port = host_listener(MARKER)
        .await
        .map_err(|source| crate::state::StateError::Read {
            path: "0.0.0.0:0 (verify's host listener)".into(),
            source,
        })?;
    let mut targets: Vec<IpAddr> = rt.host_targets(helper_image).await?;
    targets.retain(|a| a.is_ipv4());
    // Other bottles: every address of every other bottle's containers.
    let mut others: Vec<(String, IpAddr)> = Vec::new();
    for r in rt
        .list(&BTreeMap::from([(LABEL_NAME.to_string(), String::new())]))
        .await?
    {
        let other = r.labels.get(LABEL_NAME).cloned().unwrap_or_default();
        if other == name || r.kind != ResourceKind::Container {
            continue;
        }
        if let Ok(info) = rt.inspect_container(&r.id).await {
            let role = r.labels.get(LABEL_ROLE).cloned().unwrap_or_default();
            for ip in info.ipv4.values() {
                others.push((format!("{other}/{role}"), IpAddr::V4(*ip)));
            }
        }
    }

    let mut checks: Vec<Check> = Vec::new();
    let sc = sidecar_ip.to_string();

    // ---- positive controls
    checks.push(check(
        "control: sidecar proxy answers",
        Kind::Control,
        format!("GET http://{sc}:3128/ without a proxy"),
        "the proxy's own refusal (not-a-proxy-request)",
        format!("curl -s --noproxy '*' --max-time 5 http://{sc}:3128/"),
        |o| (o.stdout.contains("not-a-proxy-request"), brief(o)),
    ));
    checks.push(check(
        "control: sidecar dns answers",
        Kind::Control,
        format!(
            "dig @{sc} for {}",
            allowed_exact.as_deref().unwrap_or("an unknown name")
        ),
        if allowed_exact.is_some() {
            "NOERROR with the sidecar's address"
        } else {
            "an answer (REFUSED)"
        },
        match &allowed_exact {
            Some(h) => format!("dig +tries=1 +time=3 @{sc} {h} A"),
            None => format!("dig +tries=1 +time=3 @{sc} control.bottle-verify.invalid A"),
        },
        {
            let sc = sc.clone();
            let allowed = allowed_exact.is_some();
            move |o| {
                let ok = if allowed {
                    o.stdout.contains("status: NOERROR") && o.stdout.contains(&sc)
                } else {
                    o.stdout.contains("status: REFUSED")
                };
                (
                    ok,
                    o.stdout
                        .lines()
                        .find(|l| l.contains("status:"))
                        .unwrap_or("no answer")
                        .trim()
                        .to_string(),
                )
            }
        },
    ));
    for p in [80, 443] {
        checks.push(check(
            format!("control: sidecar port {p} answers"),
            Kind::Control,
            format!("TCP connect to {sc}:{p}"),
            "connected",
            format!("timeout 5 bash -c '</dev/tcp/{sc}/{p}' && echo connected"),
            |o| (o.stdout.contains("connected"), brief(o)),
        ));
    }
    if let Some(h) = &allowed_exact {
        checks.push(check(
            "control: allowed host passes the proxy",
            Kind::Control,
            format!("HTTPS to {h} through the proxy"),
            "any answer but the proxy's 403",
            format!("curl -s -o /dev/null --max-time 15 -w '%{{http_connect}} %{{http_code}}' https://{h}/; echo"),
            |o| {
                let t = o.stdout.trim().to_string();
                (!t.starts_with("403") && !t.starts_with("000"), format!("CONNECT/HTTP status {t}"))
            },
        ));
    }

    // ---- threat 1: the host
    for ip in &targets {
        checks.push(check(
            format!("host {ip}"),
            Kind::Attack,
            format!("GET http://{ip}:{port}/ (verify's listener on 0.0.0.0) without the proxy"),
            "no connection",
            format!("curl -s --noproxy '*' --max-time 3 http://{ip}:{port}/; c=$?; echo; echo $c"),
            must_not_connect(MARKER),
        ));
    }
    checks.push(check(
        "host by name",
        Kind::Attack,
        "resolve host.docker.internal and gateway.docker.internal",
        "no address",
        "timeout 10 getent hosts host.docker.internal gateway.docker.internal host.containers.internal; echo \"exit=$?\"",
        |o| (o.stdout.contains("exit=2"), brief(o)),
    ));

    // ---- threat 2: direct internet / LAN, UDP, ICMP, IPv6
    for ip in ["1.1.1.1", "8.8.8.8"] {
        checks.push(check(
            format!("direct tcp {ip}:443"),
            Kind::Attack,
            format!("HTTPS to {ip} without the proxy"),
            "no connection",
            format!("curl -s --noproxy '*' --max-time 3 https://{ip}/; c=$?; echo; echo $c"),
            must_not_connect(MARKER),
        ));
    }
    checks.push(check(
        "direct udp dns",
        Kind::Attack,
        "DNS query to 8.8.8.8 and 1.1.1.1 over UDP",
        "no answer",
        "dig +tries=1 +time=2 @8.8.8.8 example.com; dig +tries=1 +time=2 @1.1.1.1 example.com",
        |o| {
            (
                !o.stdout.contains("status:"),
                if o.stdout.contains("status:") {
                    "an answer came back".into()
                } else {
                    "no answer".into()
                },
            )
        },
    ));
    checks.push(check(
        "raw sockets",
        Kind::Attack,
        "open a raw ICMP socket",
        "permission denied",
        "python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)' 2>&1; echo \"exit=$?\"",
        |o| (o.stdout.contains("PermissionError") || o.stdout.contains("Operation not permitted"), brief(o)),
    ));
    checks.push(check(
        "ipv6",
        Kind::Attack,
        "IPv6 enabled in the agent, or a connection to [2606:4700:4700::1111]",
        "IPv6 disabled and no connection",
        "cat /proc/sys/net/ipv6/conf/all/disable_ipv6; curl -s -6 --noproxy '*' --max-time 3 'http://[2606:4700:4700::1111]/' >/dev/null; echo $?",
        |o| {
            let lines: Vec<&str> = o.stdout.lines().collect();
            let disabled = lines.first().is_some_and(|l| l.trim() == "1");
            let failed = lines.last().is_some_and(|l| l.trim() != "0");
            (disabled && failed, format!("disable_ipv6={} curl exit {}", lines.first().unwrap_or(&"?"), lines.last().unwrap_or(&"?")))
        },
    ));

    // ---- threat 3: metadata
    for ip in ["169.254.169.254", "100.100.100.200", "168.63.129.16"] {
        checks.push(check(
            format!("metadata {ip} direct"),
            Kind::Attack,
            format!("GET http://{ip}/ without the proxy"),
            "no connection",
            format!("curl -s --noproxy '*' --max-time 3 http://{ip}/; c=$?; echo; echo $c"),
            must_not_connect(MARKER),
        ));
    }
    for target in [
        "169.254.169.254/latest/meta-data/",
        "metadata.google.internal/computeMetadata/v1/",
        "[fd00:ec2::254]/",
    ] {
        checks.push(check(
            format!(
                "metadata via proxy {}",
                target.split('/').next().unwrap_or(target)
            ),
            Kind::Attack,
            format!("GET http://{target} through the proxy"),
            "403 from the sidecar",
            format!("curl -s --max-time 5 -o /dev/null -w '%{{http_code}}' http://{target}"),
            |o| {
                (
                    o.stdout.trim() == "403",
                    format!("status {}", o.stdout.trim()),
                )
            },
        ));
    }

    // ---- threat 4: DNS exfiltration
    let label = random_label();
    checks.push(check(
        "dns exfiltration via the sidecar",
        Kind::Attack,
        format!("dig @{sc} {label}.exfil.bottle-verify.invalid"),
        "REFUSED, no answer",
        format!("dig +tries=1 +time=3 @{sc} {label}.exfil.bottle-verify.invalid"),
        |o| {
            (
                o.stdout.contains("status: REFUSED") && !o.stdout.contains("ANSWER SECTION"),
                o.stdout
                    .lines()
                    .find(|l| l.contains("status:"))
                    .unwrap_or("no answer")
                    .trim()
                    .to_string(),
            )
        },
    ));
    checks.push(check(
        "dns exfiltration via the system resolver",
        Kind::Attack,
        format!("getent hosts {label}.exfil2.bottle-verify.invalid (resolv.conf)"),
        "no address",
        format!("timeout 10 getent hosts {label}.exfil2.bottle-verify.invalid; echo \"exit=$?\""),
        |o| (o.stdout.contains("exit=2"), brief(o)),
    ));

    // ---- threats 5-7: the proxy
    checks.push(check(
        "proxy: host not allowed",
        Kind::Attack,
        format!("GET http://{label}.bottle-verify.example/ through the proxy"),
        "403",
        format!("curl -s --max-time 5 -o /dev/null -w '%{{http_code}}' http://{label}.bottle-verify.example/"),
        |o| (o.stdout.trim() == "403", format!("status {}", o.stdout.trim())),
    ));
    for lit in ["0x7f.0.0.1", "2130706433", "0177.0.0.1", "127.1"] {
        checks.push(check(
            format!("proxy: IP literal {lit}"),
            Kind::Attack,
            format!("GET http://{lit}/ through the proxy"),
            "403",
            format!("curl -s --max-time 5 -o /dev/null -w '%{{http_code}}' --noproxy '' -x \"$HTTP_PROXY\" http://{lit}/"),
            |o| (o.stdout.trim() == "403", format!("status {}", o.stdout.trim())),
        ));
    }

    // ---- threat 10: other bottles
    for (who, ip) in &others {
        checks.push(check(
            format!("other bottle {who} {ip}"),
            Kind::Attack,
            format!("TCP to {ip} on 22, 53, 80, 443, 3128, 8080, 8765"),
            "no port open",
            format!("for p in 22 53 80 443 3128 8080 8765; do (timeout 3 bash -c \"</dev/tcp/{ip}/$p\" 2>/dev/null && echo open:$p) & done; wait; echo done"),
            |o| {
                let open: Vec<&str> = o.stdout.lines().filter(|l| l.starts_with("open:")).collect();
                (
                    open.is_empty() && o.stdout.contains("done"),
                    if open.is_empty() { "none open".into() } else { open.join(" ") },
                )
            },
        ));
    }

    // ---- threat 11: escalation
    checks.push(check(
        "capabilities",
        Kind::Attack,
        "read CapEff and NoNewPrivs of a process in the agent",
        "no NET_RAW, NET_ADMIN, SYS_ADMIN; no-new-privileges",
        "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status",
        |o| {
            let eff = o
                .stdout
                .lines()
                .find(|l| l.starts_with("CapEff:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|h| u64::from_str_radix(h, 16).ok());
            let nnp = o.stdout.contains("NoNewPrivs:\t1");
            let ok = eff.is_some_and(|c| c & ((1 << 13) | (1 << 12) | (1 << 21)) == 0) && nnp;
            (
                ok,
                format!("CapEff={:x?} NoNewPrivs={}", eff, if nnp { 1 } else { 0 }),
            )
        },
    ));
    checks.push(check(
        "engine socket",
        Kind::Attack,
        "look for a container engine socket in the agent",
        "none",
        "ls -l /var/run/docker.sock /run/docker.sock /run/containerd/containerd.sock /run/podman/podman.sock 2>/dev/null; echo done",
        |o| (o.stdout.trim() == "done", brief(o)),
    ));
    checks.push(check(
        "sidecar secrets",
        Kind::Attack,
        "look for the sidecar's policy, CA key and secrets in the agent",
        "absent",
        "ls /etc/bottle 2>/dev/null; find / -xdev \\( -name ca-key.pem -o -name secrets.json \\) 2>/dev/null | head -3; echo done",
        |o| (o.stdout.trim() == "done", brief(o)),
    ));

    let futures = checks.iter().map(|c| {
        let spec = ExecSpec {
            cmd: vec!["bash".into(), "-c".into(), c.script.clone()],
            ..Default::default()
        };
        let id = agent.id.clone();
        async move { rt.exec_capture(&id, &spec).await }
    });
    let outputs = futures_util::future::join_all(futures).await;
    let mut results: Vec<CheckResult> = Vec::new();
    for (c, out) in checks.iter().zip(outputs) {
        let (pass, observed) = match out {
            Ok(o) => (c.judge)(&o),
            Err(e) => (false, format!("could not run: {e}")),
        };
        results.push(CheckResult {
            name: c.name.clone(),
            kind: c.kind,
            tried: c.tried.clone(),
            expected: c.expected.clone(),
            observed,
            pass,
        });
    }
    // Host-side control: the listener answers where the host can see it, so a
    // refusal from inside the agent means isolation, not a dead listener.
    for ip in &targets {
        let addr = std::net::SocketAddr::new(*ip, port);
        let ok = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
            .is_ok_and(|r| r.is_ok());
        results.push(CheckResult {
            name: format!("control: host listener on {ip}"),
            kind: Kind::Control,
            tried: format!("connect to {addr} from the host"),
            expected: "connected (only meaningful when the engine runs on this machine)".into(),
            observed: if ok {
                "connected".into()
            } else {
                "no connection".into()
            },
            // A remote engine's addresses are not ours to reach; only a
            // local engine makes this a control that must pass.
            pass: ok || !ip_is_local(ip),
        });
    }
    let failed = results.iter().filter(|r| !r.pass).count();
    Ok(Report {
        bottle: name.into(),
        runtime: rt.kind().to_string(),
        passed: results.len() - failed,
        failed,
        checks: results,
    })
}

/// Is `ip` one of this machine's addresses (so the host-side control applies)?
fn ip_is_local(ip: &IpAddr) -> bool {
    std::net::UdpSocket::bind(std::net::SocketAddr::new(*ip, 0)).is_ok()
}

/// The report as a table.
pub fn render(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<6} {:<8} {:<44} {:<34} OBSERVED",
        "RESULT", "KIND", "CHECK", "EXPECTED"
    );
    for c in &report.checks {
        let _ = writeln!(
            s,
            "{:<6} {:<8} {:<44} {:<34} {}",
            if c.pass { "pass" } else { "FAIL" },
            match c.kind {
                Kind::Control => "control",
                Kind::Attack => "attack",
            },
            c.name,
            c.expected.chars().take(34).collect::<String>(),
            c.observed
        );
    }
    let _ = writeln!(
        s,
        "\nverify {}: {} passed, {} failed",
        report.bottle, report.passed, report.failed
    );
    s
}
