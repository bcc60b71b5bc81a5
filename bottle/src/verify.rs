//! `bottle verify`: the sandbox checked from positions the agent cannot alter.
//!
//! The agent controls everything it can write, its own tools included: a
//! `curl` that exits 7 for every host address would make checks run with it
//! pass on a broken bottle (docs/design.md §5 item 15). So the verdict comes from
//! three places the agent cannot touch:
//!
//! - **probe**: the network checks of docs/design.md §5 run in a throwaway container
//!   from the stock agent image bottle builds ([`images::DEFAULT_AGENT_IMAGE`],
//!   never the agent's configured image or container), with the proxy
//!   environment and CA the agent gets. Where the runtime can
//!   ([`Runtime::can_join_network_namespace`], docker) it joins the agent's
//!   network namespace, so it sees exactly the agent's interfaces, routes,
//!   resolv.conf and hosts; elsewhere (Apple `container`, smolvm) it is a
//!   fresh container on the bottle's internal network with the sidecar as DNS.
//!   It carries the bottle's labels with role `probe` (so `bottle down`
//!   removes a leftover) and is removed at the end, error or not.
//! - **inspect**: the agent's privileges, mounts, limits and networks as the
//!   runtime reports them ([`bottle_runtimes::SecurityInfo`]).
//! - **host**: positive controls on the host side (verify's listeners answer,
//!   so a refusal means isolation rather than a dead listener) and what only
//!   the host can see: broadcast and multicast the probe sends must not
//!   reach a host socket, and the sidecar's proxy must not answer on its
//!   egress address.
//!
//! The same network scripts, plus a look at its own capabilities and files,
//! also run inside the agent with the agent's own tools. Those rows are
//! reported as `agent-view` and never counted: where they disagree with the
//! probe, the agent's tools are lying or its view differs, and the report
//! says so. Targets are discovered on the host: every host address and
//! network gateway, other bottles' addresses, and listeners `verify` opens on
//! 0.0.0.0 itself so a port is known to be open.

use crate::images;
use crate::lifecycle::{self, LifecycleError};
use crate::plan::{labels_for, Plan, AGENT_CA_DIR};
use bottle_runtimes::{
    ContainerInfo, ContainerSpec, ContainerState, ExecOutput, ExecSpec, Mount, NetworkAttachment,
    ResourceKind, ResourceRef, Role, Runtime, LABEL_NAME, LABEL_ROLE,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Positive control or negative (attack) check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Control,
    Attack,
    /// A toolchain in the agent trusts the bottle CA (usability, shown and
    /// never counted: it runs with the agent's own tools).
    Trust,
}

/// Where a check ran, which decides whether the agent could have altered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Where {
    /// The throwaway probe container from the stock agent image.
    Probe,
    /// The runtime's inspect data for the agent.
    Inspect,
    /// bottle itself, on the host.
    Host,
    /// Inside the agent with its own tools: shown, never counted.
    AgentView,
}

impl Where {
    pub fn as_str(self) -> &'static str {
        match self {
            Where::Probe => "probe",
            Where::Inspect => "inspect",
            Where::Host => "host",
            Where::AgentView => "agent-view",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub kind: Kind,
    /// Where it ran.
    #[serde(rename = "where")]
    pub ran: Where,
    /// Whether it counts toward the verdict (every row but `agent-view`).
    pub counted: bool,
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
    /// How the probe container reached the agent's network position.
    pub probe: String,
    /// Counted checks that passed / failed: the verdict.
    pub passed: usize,
    pub failed: usize,
    /// Agent-view rows (shown, not counted).
    pub not_counted: usize,
    /// Checks whose agent-view result differs from the probe's.
    pub agent_view_disagrees: Vec<String>,
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

/// A shell script that POSTs one receive-pack command to the gate at `url`:
/// update `refname` from a stale old id to an object that does not exist,
/// with an empty pack. The gate must refuse it by its rules; were it ever to
/// let it through, the upstream would refuse it too (the old id does not
/// match, the object is missing), so verify never moves a real ref.
/// `refname` is single-quoted for the shell.
pub fn receive_pack_probe(url: &str, refname: &str) -> String {
    let quoted = format!("'{}'", refname.replace('\'', r"'\''"));
    format!(
        "old=1111111111111111111111111111111111111111; new=2222222222222222222222222222222222222222; \
         ref={quoted}; caps='report-status side-band-64k'; body=\"$old $new $ref\"; \
         n=$(( ${{#body}} + 1 + ${{#caps}} + 1 + 4 )); \
         {{ printf '%04x%s\\0%s\\n' \"$n\" \"$body\" \"$caps\"; printf '0000'; \
            printf 'PACK\\0\\0\\0\\2\\0\\0\\0\\0'; \
            printf '\\x02\\x9d\\x08\\x82\\x3b\\xd8\\xa8\\xea\\xb5\\x10\\xad\\x6a\\xc7\\x5c\\x82\\x3c\\xfd\\x3e\\xd3\\x1e'; }} \
         | timeout 60 curl -s --noproxy '*' -X POST -H 'Content-Type: application/x-git-receive-pack-request' \
             --data-binary @- {url}/git-receive-pack | tr -c '[:print:]\\n' ' '; echo"
    )
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

/// One trust row per toolchain `present` in the agent
/// ([`crate::trust::present`]). With `host` (an allowed host), a tool that
/// has a plain fetch opens `https://{host}/` through its own TLS client;
/// otherwise the row checks that the tool's trust setting names the bottle
/// CA, and its text says that no connection was made.
fn trust_checks(present: &[&'static crate::trust::Toolchain], host: Option<&str>) -> Vec<Check> {
    present
        .iter()
        .map(|t| {
            let (script, live) = crate::trust::check_script(t, host);
            let tried = match (live, host) {
                (true, Some(h)) => format!("fetch https://{h}/ with {}'s own TLS client", t.name),
                _ => format!(
                    "read {}'s trust setting: {} (no connection made)",
                    t.name, t.how
                ),
            };
            let expected = if live {
                "TLS verified against the bottle CA"
            } else {
                "the setting names the bottle CA"
            };
            check(
                format!("trust: {}", t.name),
                Kind::Trust,
                tried,
                expected,
                script,
                move |o| {
                    (
                        o.code == 0,
                        match (o.code, live) {
                            (0, true) => "TLS verified".to_string(),
                            (0, false) => "names the bottle CA".to_string(),
                            _ => brief(o),
                        },
                    )
                },
            )
        })
        .collect()
}

/// Twelve hex digits from the system's random source; no fallback: labels
/// an agent could predict would let it forge a probe's answers.
fn random_label() -> Result<String, LifecycleError> {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).map_err(|e| LifecycleError::Random(e.to_string()))?;
    Ok(hex::encode(b))
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

/// Engine sockets that must never be reachable from the agent.
const ENGINE_SOCKETS: &[&str] = &[
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/podman/podman.sock",
    "/var/run/podman/podman.sock",
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
];

/// How long datagrams the probe sent may take to arrive at the host.
const DATAGRAM_GRACE: Duration = Duration::from_secs(2);

/// The probe sends every kind of broadcast and multicast an attacker would:
/// limited broadcast, mDNS multicast and the subnet's directed broadcast,
/// each unbound and bound to every address of the namespace.
const BROADCAST_SCRIPT: &str = r#"
import socket, subprocess, sys
port, tok = int(sys.argv[1]), sys.argv[2]
words = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                       capture_output=True, text=True).stdout.split()
local = [words[i + 1].split("/")[0] for i, w in enumerate(words) if w == "inet"]
dests = ["255.255.255.255", "224.0.0.251"] + [words[i + 1] for i, w in enumerate(words) if w == "brd"]
for d in dests:
    for src in [None] + local:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 4)
        how = "unbound" if src is None else "bound to " + src
        try:
            if src is not None:
                s.bind((src, 0))
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
            for _ in range(3):
                s.sendto(("%s %s %s" % (tok, d, how)).encode(), (d, port))
            print("sent", d, how)
        except OSError as e:
            print("not-sent", d, how, e.strerror)
        s.close()
"#;

/// A UDP socket on 0.0.0.0 of the host that keeps every datagram it gets.
struct UdpTrap {
    port: u16,
    got: Arc<Mutex<Vec<(SocketAddr, String)>>>,
}

impl UdpTrap {
    async fn bind() -> std::io::Result<UdpTrap> {
        let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
        let port = sock.local_addr()?.port();
        let got: Arc<Mutex<Vec<(SocketAddr, String)>>> = Arc::default();
        let keep = got.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                if let Ok(mut g) = keep.lock() {
                    // Bounded: an agent flooding the port cannot grow it.
                    if g.len() < 256 {
                        g.push((from, String::from_utf8_lossy(&buf[..n]).into_owned()));
                    }
                }
            }
        });
        Ok(UdpTrap { port, got })
    }

    /// Datagrams received so far that carry `token`.
    fn with(&self, token: &str) -> Vec<(SocketAddr, String)> {
        self.got
            .lock()
            .map(|g| {
                g.iter()
                    .filter(|(_, t)| t.contains(token))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> LifecycleError + '_ {
    move |source| {
        crate::state::StateError::Read {
            path: what.into(),
            source,
        }
        .into()
    }
}

/// Builds the stock agent image the probe runs from, if the engine lacks it.
async fn ensure_probe_image(
    rt: &dyn Runtime,
    host: &crate::host::Host,
) -> Result<String, LifecycleError> {
    let tag = images::DEFAULT_AGENT_IMAGE;
    if !rt.image_exists(tag).await? {
        let (base, why) = images::base_image(rt, host).await?;
        eprintln!("verify: building the probe image {tag} from base {base} ({why})");
        let spec = images::agent_build(tag, &base);
        let mut progress = |line: &str| eprintln!("  {line}");
        images::ensure(rt, &spec, &base, &mut progress).await?;
    }
    Ok(tag.to_string())
}

/// Removes bottle `name`'s verify probe containers (after an interrupted
/// verify; a finished one removes its own).
pub async fn remove_probes(
    rt: &dyn Runtime,
    name: &str,
) -> Result<(), bottle_runtimes::RuntimeError> {
    for r in rt.list(&labels_for(name, Role::Probe)).await? {
        if r.kind == bottle_runtimes::ResourceKind::Container {
            rt.remove_container(&r.id).await?;
        }
    }
    Ok(())
}

/// Runs every check of bottle `name`: network checks in a probe container at
/// the agent's network position, the agent's privileges from inspect, and
/// host-side controls; the agent's own view beside them, not counted.
/// `helper_image` is an image containing `bottle-sidecar` for measuring the
/// host's addresses (empty: the bottle's sidecar image).
pub async fn verify(
    rt: &dyn Runtime,
    host: &crate::host::Host,
    name: &str,
    helper_image: &str,
) -> Result<Report, LifecycleError> {
    let agent = lifecycle::find_container(rt, name, Role::Agent).await?;
    if agent.state != ContainerState::Running {
        return Err(LifecycleError::AgentNotRunning {
            name: name.into(),
            state: format!("{:?}", agent.state),
        });
    }
    let sidecar = lifecycle::find_container(rt, name, Role::Sidecar).await?;
    let helper_image = if helper_image.is_empty() {
        sidecar.image.clone()
    } else {
        helper_image.to_string()
    };
    let helper_image = helper_image.as_str();
    let probe_image = ensure_probe_image(rt, host).await?;
    let internal = Plan::resource_name(name, Role::Internal);
    let sidecar_ip =
        sidecar
            .ipv4
            .get(&internal)
            .copied()
            .ok_or(LifecycleError::NoSidecarAddress {
                network: internal.clone(),
            })?;
    let state = host.state.bottle(name);
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
        .map_err(io_err("0.0.0.0:0 (verify's host listener)"))?;
    let trap = UdpTrap::bind()
        .await
        .map_err(io_err("udp 0.0.0.0:0 (verify's broadcast listener)"))?;
    let mut targets: Vec<IpAddr> = rt.host_targets(helper_image).await?;
    targets.retain(|a| a.is_ipv4());
    // Other bottles: every address of every other bottle's containers.
    let mut others: Vec<(String, IpAddr)> = Vec::new();
    for r in rt
        .list(&BTreeMap::from([(LABEL_NAME.to_string(), String::new())]))
        .await?
    {
        let other = r.labels.get(LABEL_NAME).cloned().unwrap_or_default();
        let role = r.labels.get(LABEL_ROLE).cloned().unwrap_or_default();
        // Another verify's probe shares its agent's addresses: skip it.
        if other == name
            || r.kind != ResourceKind::Container
            || Role::of(&r.labels) == Some(Role::Probe)
        {
            continue;
        }
        if let Ok(info) = rt.inspect_container(&r.id).await {
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
    let label = random_label()?;
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

    // ---- threat 11 as the agent sees it: its own tools read its own state.
    let mut agent_only: Vec<Check> = Vec::new();
    agent_only.push(check(
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
    agent_only.push(check(
        "engine socket",
        Kind::Attack,
        "look for a container engine socket in the agent",
        "none",
        "ls -l /var/run/docker.sock /run/docker.sock /run/containerd/containerd.sock /run/podman/podman.sock 2>/dev/null; echo done",
        |o| (o.stdout.trim() == "done", brief(o)),
    ));
    agent_only.push(check(
        "sidecar secrets",
        Kind::Attack,
        "look for the sidecar's policy, CA key and secrets in the agent",
        "absent",
        "ls /etc/bottle 2>/dev/null; find / -xdev \\( -name ca-key.pem -o -name secrets.json \\) 2>/dev/null | head -3; echo done",
        |o| (o.stdout.trim() == "done", brief(o)),
    ));

    // ---- the git gate, when the bottle has remotes. What the gate enforces
    // is checked with trusted tools (counted); what the agent's own git and
    // environment show is its view (reported).
    let remotes = policy
        .as_ref()
        .map(|p| p.git.remotes.clone())
        .unwrap_or_default();
    if let Some(first) = remotes.first() {
        let upstream_host = first.upstream.host().to_string();
        checks.push(check(
            format!("git over ssh to {upstream_host}"),
            Kind::Attack,
            format!("TCP to {upstream_host}:22, the way git over ssh would go"),
            "no connection",
            format!("timeout 5 bash -c '</dev/tcp/{upstream_host}/22' 2>&1; echo \"exit=$?\""),
            |o| (!o.stdout.contains("exit=0"), brief(o)),
        ));
        if let Some((remote, protected)) = remotes
            .iter()
            .find_map(|r| r.protected.first().map(|p| (r, p)))
        {
            let target = protected.as_str().trim_end_matches('*');
            let target = if target.is_empty() || target.ends_with('/') {
                format!("{target}bottle-verify")
            } else {
                target.to_string()
            };
            let refname = if target.starts_with("refs/") {
                target
            } else {
                format!("refs/heads/{target}")
            };
            let url = format!(
                "http://{sc}:{}/{}.git",
                crate::gitconfig::GATE_PORT,
                remote.name.as_str()
            );
            checks.push(check(
                format!("git push to protected {}", protected.as_str()),
                Kind::Attack,
                format!(
                    "send the gate a receive-pack update of {refname} of remote {} (a stale old id and a missing new one: even a gate that let it through would have it refused upstream)",
                    remote.name.as_str()
                ),
                "refused by the gate, naming the rule",
                receive_pack_probe(&url, &refname),
                |o| {
                    (
                        o.stdout.contains("protected") && !o.stdout.contains(" ok refs/"),
                        o.stdout
                            .lines()
                            .find(|l| l.contains("protected"))
                            .unwrap_or_else(|| o.stdout.lines().next().unwrap_or(""))
                            .trim()
                            .to_string(),
                    )
                },
            ));
        }
        // The tokens' values, read from the sidecar's own file on the host,
        // to look for in what the agent can see.
        let tokens: Vec<String> = std::fs::read_to_string(state.sidecar_dir().join("secrets.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<bottle_policy::SecretsFile>(&t).ok())
            .map(|f| {
                remotes
                    .iter()
                    .filter_map(|r| r.credential.as_ref())
                    .filter_map(|c| f.credentials.get(c))
                    .map(|e| e.value.expose().to_string())
                    .collect()
            })
            .unwrap_or_default();
        agent_only.push(check(
            "git over ssh",
            Kind::Attack,
            "git ls-remote of an ssh URL that is no remote of the gate",
            "refused, naming https",
            "git ls-remote git@bottle-verify.invalid:x/y.git 2>&1; echo \"exit=$?\"",
            |o| {
                (
                    o.stdout.contains("ssh has no route") && !o.stdout.contains("exit=0"),
                    brief(o),
                )
            },
        ));
        agent_only.push(check(
            "git token absent",
            Kind::Attack,
            "look for the git gate's upstream tokens in the agent's environment, git config, processes and credential helpers",
            "absent",
            "env; git config --list --show-origin 2>&1; cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n'; printf 'protocol=https\\nhost=bottle-verify.invalid\\n\\n' | GIT_TERMINAL_PROMPT=0 timeout 5 git credential fill 2>&1; echo done",
            move |o| {
                let text = format!("{}{}", o.stdout, o.stderr);
                let found = tokens
                    .iter()
                    .filter(|t| !t.is_empty() && text.contains(t.as_str()))
                    .count();
                (
                    found == 0 && text.contains("done"),
                    if found == 0 {
                        format!("none of {} token(s) found", tokens.len())
                    } else {
                        format!("{found} token(s) visible")
                    },
                )
            },
        ));
    }

    agent_only.push(check(
        "raw sockets",
        Kind::Attack,
        "open a raw ICMP socket",
        "permission denied",
        "python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)' 2>&1; echo \"exit=$?\"",
        |o| (o.stdout.contains("PermissionError") || o.stdout.contains("Operation not permitted"), brief(o)),
    ));

    // ---- the probe: network checks from the agent's position, trusted tools
    let joins = rt.can_join_network_namespace();
    let probe_name = format!(
        "{}-{}",
        Plan::resource_name(name, Role::Probe),
        random_label()?
    );
    let probe_spec = ContainerSpec {
        name: probe_name.clone(),
        image: probe_image.clone(),
        entrypoint: Some(vec!["sleep".into()]),
        // Long enough for every check; a leftover stops by itself.
        command: vec!["900".into()],
        env: Plan::proxy_env(&sc),
        labels: labels_for(name, Role::Probe),
        network_namespace_of: joins.then(|| agent.id.clone()),
        networks: if joins {
            vec![]
        } else {
            vec![NetworkAttachment {
                network: internal.clone(),
                ipv4: None,
                aliases: vec![],
            }]
        },
        dns: if joins {
            vec![]
        } else {
            vec![IpAddr::V4(sidecar_ip)]
        },
        cap_drop: Plan::agent_cap_drop(),
        no_new_privileges: true,
        mounts: vec![Mount {
            source: state.agent_dir(),
            target: AGENT_CA_DIR.into(),
            read_only: true,
        }],
        ..Default::default()
    };
    let probe_how = if joins {
        format!(
            "{probe_image} in the agent's network namespace (container:{})",
            agent.name
        )
    } else {
        format!("{probe_image} on {internal} beside the agent (this runtime cannot share a network namespace)")
    };
    let probe_id = rt.create_container(&probe_spec).await?;
    let probed = async {
        rt.start_container(&probe_id).await?;
        let mut rows = run_checks(rt, &probe_id, checks.iter(), Where::Probe).await;
        rows.push(broadcast_check(rt, &probe_id, &trap, &random_label()?).await);
        Ok::<_, LifecycleError>(rows)
    }
    .await;
    let _ = rt.remove_container(&probe_id).await;
    let mut results = probed?;

    // ---- inspect: the agent's privileges as the runtime reports them
    let internal_ref = rt
        .list(&labels_for(name, Role::Internal))
        .await?
        .into_iter()
        .find(|r| r.kind == ResourceKind::Network);
    results.extend(inspect_checks(
        &agent,
        &internal,
        internal_ref.as_ref(),
        &state,
    ));

    // ---- host: controls, and what only the host sees
    results.push(loopback_datagram_control(&trap, &random_label()?).await);
    results.push(proxy_binding_check(&sidecar, &Plan::resource_name(name, Role::Egress)).await);
    // The listener answers where the host can see it, so a refusal from
    // the probe means isolation, not a dead listener.
    for ip in &targets {
        let addr = SocketAddr::new(*ip, port);
        let ok = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
            .is_ok_and(|r| r.is_ok());
        results.push(CheckResult {
            name: format!("control: host listener on {ip}"),
            kind: Kind::Control,
            ran: Where::Host,
            counted: true,
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

    // ---- the agent's own view: shown, never counted
    let view = run_checks(
        rt,
        &agent.id,
        checks.iter().chain(agent_only.iter()),
        Where::AgentView,
    )
    .await;
    let agent_view_disagrees: Vec<String> = view
        .iter()
        .filter(|v| {
            results
                .iter()
                .any(|r| r.ran == Where::Probe && r.name == v.name && r.pass != v.pass)
        })
        .map(|v| v.name.clone())
        .collect();
    results.extend(view);

    // ---- toolchain trust of the bottle CA, with the agent's own tools
    let detect = ExecSpec {
        cmd: vec!["sh".into(), "-c".into(), crate::trust::detect_script()],
        ..Default::default()
    };
    let detected = rt
        .exec_capture(&agent.id, &detect)
        .await
        .map(|o| o.stdout)
        .unwrap_or_default();
    let trust = trust_checks(&crate::trust::present(&detected), allowed_exact.as_deref());
    results.extend(run_checks(rt, &agent.id, trust.iter(), Where::AgentView).await);

    let counted = results.iter().filter(|r| r.counted).count();
    let failed = results.iter().filter(|r| r.counted && !r.pass).count();
    Ok(Report {
        bottle: name.into(),
        runtime: rt.kind().to_string(),
        probe: probe_how,
        passed: counted - failed,
        failed,
        not_counted: results.len() - counted,
        agent_view_disagrees,
        checks: results,
    })
}

/// Runs `checks` in container `id`, all at once; rows for `ran`.
async fn run_checks<'a>(
    rt: &dyn Runtime,
    id: &str,
    checks: impl Iterator<Item = &'a Check>,
    ran: Where,
) -> Vec<CheckResult> {
    let checks: Vec<&Check> = checks.collect();
    let outputs = futures_util::future::join_all(checks.iter().map(|c| {
        let spec = ExecSpec {
            cmd: vec!["bash".into(), "-c".into(), c.script.clone()],
            ..Default::default()
        };
        async move { rt.exec_capture(id, &spec).await }
    }))
    .await;
    checks
        .iter()
        .zip(outputs)
        .map(|(c, out)| {
            let (pass, observed) = match out {
                Ok(o) => (c.judge)(&o),
                Err(e) => (false, format!("could not run: {e}")),
            };
            CheckResult {
                name: c.name.clone(),
                kind: c.kind,
                ran,
                counted: ran != Where::AgentView,
                tried: c.tried.clone(),
                expected: c.expected.clone(),
                observed,
                pass,
            }
        })
        .collect()
}

/// Threat 13: broadcast and multicast from the agent's position must not
/// reach a socket on the host.
async fn broadcast_check(
    rt: &dyn Runtime,
    probe: &str,
    trap: &UdpTrap,
    nonce: &str,
) -> CheckResult {
    let token = format!("bottle-verify-bcast-{nonce}");
    let spec = ExecSpec {
        cmd: vec![
            "python3".into(),
            "-c".into(),
            BROADCAST_SCRIPT.into(),
            trap.port.to_string(),
            token.clone(),
        ],
        ..Default::default()
    };
    let out = rt.exec_capture(probe, &spec).await;
    tokio::time::sleep(DATAGRAM_GRACE).await;
    let arrived = trap.with(&token);
    let (pass, observed) = match &out {
        Err(e) => (false, format!("could not run: {e}")),
        Ok(o) if o.code != 0 => (false, format!("sender failed: {}", brief(o))),
        Ok(o) => {
            let sent: Vec<&str> = o
                .stdout
                .lines()
                .filter(|l| l.starts_with("sent "))
                .collect();
            if arrived.is_empty() {
                (
                    true,
                    format!(
                        "nothing arrived; {} of {} sends left the probe",
                        sent.len(),
                        o.stdout.lines().count()
                    ),
                )
            } else {
                let mut what: Vec<String> = arrived
                    .iter()
                    .map(|(from, t)| {
                        format!("{} (from {from})", t.trim_start_matches(&token).trim())
                    })
                    .collect();
                what.sort();
                what.dedup();
                (false, format!("ARRIVED at the host: {}", what.join("; ")))
            }
        }
    };
    CheckResult {
        name: "broadcast to the host".into(),
        kind: Kind::Attack,
        ran: Where::Probe,
        counted: true,
        tried: format!(
            "UDP to 255.255.255.255, 224.0.0.251 and the subnet broadcast, port {} (verify's socket on 0.0.0.0)",
            trap.port
        ),
        expected: "nothing arrives".into(),
        observed,
        pass,
    }
}

/// The broadcast listener answers: a datagram the host sends itself arrives,
/// so a silent listener cannot pass [`broadcast_check`].
async fn loopback_datagram_control(trap: &UdpTrap, nonce: &str) -> CheckResult {
    let token = format!("bottle-verify-ctl-{nonce}");
    let sent = async {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        s.send_to(token.as_bytes(), ("127.0.0.1", trap.port)).await
    }
    .await;
    let deadline = tokio::time::Instant::now() + DATAGRAM_GRACE;
    while trap.with(&token).is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ok = !trap.with(&token).is_empty();
    CheckResult {
        name: "control: broadcast listener answers".into(),
        kind: Kind::Control,
        ran: Where::Host,
        counted: true,
        tried: format!("UDP from the host to 127.0.0.1:{}", trap.port),
        expected: "arrives".into(),
        observed: match (sent, ok) {
            (Err(e), _) => format!("could not send: {e}"),
            (_, true) => "arrived".into(),
            (_, false) => "nothing arrived".into(),
        },
        pass: ok,
    }
}

/// Threat 13: the sidecar's services must not answer on its egress address
/// (the host and the egress network's neighbours are there).
async fn proxy_binding_check(sidecar: &ContainerInfo, egress: &str) -> CheckResult {
    let mut row = CheckResult {
        name: "sidecar closed on its egress address".into(),
        kind: Kind::Attack,
        ran: Where::Host,
        counted: true,
        tried: format!(
            "TCP from the host to the sidecar's address on {egress}, ports 3128, 53, 80, 443"
        ),
        expected: "no port open".into(),
        observed: String::new(),
        pass: false,
    };
    let Some(ip) = sidecar.ipv4.get(egress) else {
        row.observed = format!("the runtime reports no sidecar address on {egress}; cannot check");
        return row;
    };
    let tries = [3128u16, 53, 80, 443].map(|p| async move {
        let addr = SocketAddr::new(IpAddr::V4(*ip), p);
        let r = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await;
        (
            p,
            match r {
                Ok(Ok(_)) => "OPEN".to_string(),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused".into(),
                Ok(Err(e)) => e.kind().to_string(),
                Err(_) => "timed out".into(),
            },
        )
    });
    let seen = futures_util::future::join_all(tries).await;
    row.pass = seen.iter().all(|(_, s)| s != "OPEN");
    row.observed = format!(
        "{ip}: {}",
        seen.iter()
            .map(|(p, s)| format!("{p} {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    row
}

fn inspect_row(
    name: &str,
    tried: &str,
    expected: &str,
    pass: bool,
    observed: String,
) -> CheckResult {
    CheckResult {
        name: name.into(),
        kind: Kind::Attack,
        ran: Where::Inspect,
        counted: true,
        tried: tried.into(),
        expected: expected.into(),
        observed,
        pass,
    }
}

/// `NET_RAW`, `cap_net_raw` and `CAP_NET_RAW` are one capability.
fn cap_name(c: &str) -> String {
    let c = c.to_ascii_uppercase();
    c.strip_prefix("CAP_").unwrap_or(&c).to_string()
}

/// `path` with symlinks resolved when it exists on this machine.
fn real(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Threat 11 and 14 from outside: the agent's privileges, mounts, limits and
/// networks as the runtime reports them.
fn inspect_checks(
    agent: &ContainerInfo,
    internal: &str,
    internal_ref: Option<&ResourceRef>,
    state: &crate::state::StateDir,
) -> Vec<CheckResult> {
    let Some(sec) = &agent.security else {
        return vec![inspect_row(
            "privileges from inspect",
            "read the agent's capabilities, mounts and limits from the runtime",
            "reported",
            false,
            "the runtime's inspect output does not report them; they cannot be checked from outside".into(),
        )];
    };
    let mut rows = Vec::new();
    rows.push(inspect_row(
        "privileged",
        "HostConfig.Privileged of the agent",
        "false",
        !sec.privileged,
        format!("privileged={}", sec.privileged),
    ));
    let added: Vec<String> = sec.cap_add.iter().map(|c| cap_name(c)).collect();
    let dropped: Vec<String> = sec.cap_drop.iter().map(|c| cap_name(c)).collect();
    // Where the runtime gives the bounding set (podman, whose CapDrop lists
    // only what it took from its own defaults), a capability is gone when
    // it is not in that set; elsewhere when CapDrop names it.
    let bounding: Option<Vec<String>> = sec
        .bounding_caps
        .as_ref()
        .map(|b| b.iter().map(|c| cap_name(c)).collect());
    let missing: Vec<String> = Plan::agent_cap_drop()
        .into_iter()
        .map(|c| cap_name(&c))
        .filter(|c| match &bounding {
            Some(b) => b.contains(c),
            None => !dropped.contains(c) && !dropped.iter().any(|d| d == "ALL"),
        })
        .collect();
    rows.push(inspect_row(
        "capabilities",
        "CapAdd and CapDrop of the agent",
        "none added; NET_RAW, NET_ADMIN, SYS_ADMIN, ... dropped",
        added.is_empty() && missing.is_empty(),
        format!(
            "added [{}], not dropped [{}]",
            added.join(" "),
            missing.join(" ")
        ),
    ));
    rows.push(inspect_row(
        "no-new-privileges",
        "SecurityOpt of the agent",
        "no-new-privileges",
        sec.no_new_privileges,
        format!("no-new-privileges={}", sec.no_new_privileges),
    ));

    // Engine sockets: the socket itself, a directory holding one, or any
    // unix socket on this machine.
    let mut engine: Vec<String> = Vec::new();
    for m in &sec.mounts {
        let src = real(Path::new(&m.source));
        let socket_dirs = ENGINE_SOCKETS.iter().any(|s| {
            let s = real(Path::new(s));
            !m.source.is_empty() && (s == src || s.starts_with(&src))
        });
        let is_socket = {
            use std::os::unix::fs::FileTypeExt;
            std::fs::metadata(&src).is_ok_and(|md| md.file_type().is_socket())
        };
        if socket_dirs || is_socket || ENGINE_SOCKETS.contains(&m.target.as_str()) {
            engine.push(format!("{} -> {}", m.source, m.target));
        }
    }
    rows.push(inspect_row(
        "engine socket",
        "mounts of the agent: engine sockets, directories holding them, unix sockets",
        "none",
        engine.is_empty(),
        if engine.is_empty() {
            format!("{} mount(s), none a socket", sec.mounts.len())
        } else {
            format!("MOUNTED {}", engine.join(", "))
        },
    ));

    // The sidecar's state (policy, CA key, secrets): only the agent's own
    // read-only directory of it may be mounted.
    let root = real(state.root());
    let agent_dir = real(&state.agent_dir());
    let mut exposed: Vec<String> = Vec::new();
    for m in sec.mounts.iter().filter(|m| !m.source.is_empty()) {
        let src = real(Path::new(&m.source));
        let inside = src.starts_with(&root) && !(src == agent_dir && m.read_only);
        let holds = root.starts_with(&src);
        if inside || holds {
            exposed.push(format!(
                "{} -> {}{}",
                m.source,
                m.target,
                if m.read_only { " (ro)" } else { "" }
            ));
        }
    }
    rows.push(inspect_row(
        "sidecar state not mounted",
        "mounts of the agent against the bottle's state directory",
        "only its read-only agent/ directory",
        exposed.is_empty(),
        if exposed.is_empty() {
            format!("state dir {} not mounted", root.display())
        } else {
            format!("MOUNTED {}", exposed.join(", "))
        },
    ));

    // Files the agent writes on a mount must belong to the mount's owner.
    let uid: Option<u32> = match sec.user.split(':').next().unwrap_or("") {
        "" | "root" => Some(0),
        u => u.parse().ok(),
    };
    let mut wrong: Vec<String> = Vec::new();
    let mut writable = 0;
    for m in sec
        .mounts
        .iter()
        .filter(|m| m.kind == "bind" && !m.read_only)
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(md) = std::fs::metadata(&m.source) else {
            continue;
        };
        writable += 1;
        if uid != Some(md.uid()) {
            wrong.push(format!("{} owned by uid {}", m.source, md.uid()));
        }
    }
    let user = if sec.user.is_empty() {
        "the image's default (root)"
    } else {
        sec.user.as_str()
    };
    rows.push(inspect_row(
        "user owns its writable mounts",
        "the agent's user against the owners of its writable bind mounts",
        "same uid",
        wrong.is_empty(),
        if wrong.is_empty() {
            format!("user {user}; {writable} writable bind mount(s) owned by it")
        } else if uid.is_none() {
            format!(
                "user {user} is a name, not a uid: cannot compare with {}",
                wrong.join(", ")
            )
        } else {
            format!("user {user} but {}", wrong.join(", "))
        },
    ));

    let pids = sec.pids_limit.filter(|p| *p > 0);
    rows.push(inspect_row(
        "pids limit",
        "PidsLimit of the agent (fork bombs)",
        "set",
        pids.is_some(),
        pids.map(|p| format!("{p}"))
            .unwrap_or_else(|| "unlimited".into()),
    ));
    let mem = sec.memory_bytes.filter(|m| *m > 0);
    rows.push(inspect_row(
        "memory limit",
        "Memory limit of the agent",
        "set",
        mem.is_some(),
        mem.map(|m| format!("{} MiB", m / (1 << 20)))
            .unwrap_or_else(|| "unlimited".into()),
    ));

    // Networks: the internal network, nothing else.
    // Podman reports `bridge` for any container on its own networks; the
    // list of networks below is what decides there.
    let mode_ok = sec.network_mode == internal
        || sec.network_mode == "bridge"
        || internal_ref.is_some_and(|r| {
            !sec.network_mode.is_empty()
                && (r.id.starts_with(&sec.network_mode) || sec.network_mode.starts_with(&r.id))
        });
    let only_internal = sec.networks.iter().all(|n| n == internal)
        && agent.ipv4.keys().all(|n| n == internal)
        && !sec.networks.is_empty();
    rows.push(inspect_row(
        "networks",
        "NetworkMode and networks of the agent",
        "the internal network only",
        mode_ok && only_internal && internal_ref.is_some(),
        format!(
            "mode {}, networks [{}]{}",
            sec.network_mode,
            sec.networks.join(" "),
            if internal_ref.is_none() {
                format!(", {internal} not found")
            } else {
                String::new()
            }
        ),
    ));
    rows
}

/// Is `ip` one of this machine's addresses (so the host-side control applies)?
fn ip_is_local(ip: &IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(*ip, 0)).is_ok()
}

/// The report as a table. Agent-view rows show their result in brackets:
/// they ran with the agent's tools and do not count.
pub fn render(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<6} {:<10} {:<8} {:<44} {:<34} OBSERVED",
        "RESULT", "WHERE", "KIND", "CHECK", "EXPECTED"
    );
    for c in &report.checks {
        let result = match (c.counted, c.pass) {
            (true, true) => "pass",
            (true, false) => "FAIL",
            (false, true) => "(pass)",
            (false, false) => "(fail)",
        };
        let _ = writeln!(
            s,
            "{:<6} {:<10} {:<8} {:<44} {:<34} {}",
            result,
            c.ran.as_str(),
            match c.kind {
                Kind::Control => "control",
                Kind::Trust => "trust",
                Kind::Attack => "attack",
            },
            c.name,
            c.expected.chars().take(34).collect::<String>(),
            c.observed
        );
    }
    let _ = writeln!(s, "\nprobe: {}", report.probe);
    if !report.agent_view_disagrees.is_empty() {
        let _ = writeln!(
            s,
            "the agent's own tools disagree with the probe on: {}",
            report.agent_view_disagrees.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "verify {}: {} passed, {} failed ({} agent-view and trust rows not counted)",
        report.bottle, report.passed, report.failed, report.not_counted
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use bottle_runtimes::{MountInfo, SecurityInfo};

    const INTERNAL: &str = "bottle-t-internal";

    fn agent(security: Option<SecurityInfo>) -> ContainerInfo {
        ContainerInfo {
            id: "a".into(),
            name: "bottle-t-agent".into(),
            image: "bottle-agent:latest".into(),
            state: ContainerState::Running,
            health: "none".into(),
            labels: BTreeMap::new(),
            ipv4: BTreeMap::from([(INTERNAL.to_string(), "10.213.0.3".parse().unwrap())]),
            exit_code: None,
            security,
        }
    }

    fn bind(source: &Path, target: &str, read_only: bool) -> MountInfo {
        MountInfo {
            kind: "bind".into(),
            source: source.display().to_string(),
            target: target.into(),
            read_only,
        }
    }

    fn internal_ref() -> ResourceRef {
        ResourceRef {
            kind: ResourceKind::Network,
            id: "31535c4e7bd4".into(),
            name: INTERNAL.into(),
            labels: BTreeMap::new(),
            state: None,
        }
    }

    fn out(code: i64, stdout: &str) -> ExecOutput {
        ExecOutput {
            code,
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    #[test]
    fn one_trust_row_per_toolchain_present() {
        let present = crate::trust::present("curl\ngit\njvm\n");
        let rows = trust_checks(&present, Some("api.example.org"));
        let names: Vec<&str> = rows.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["trust: curl", "trust: git", "trust: jvm"]);
        assert!(rows.iter().all(|c| c.kind == Kind::Trust));
        // curl has a fetch of its own: it opens the allowed host.
        assert!(
            rows[0].tried.contains("https://api.example.org/"),
            "{}",
            rows[0].tried
        );
        assert!(rows[0].script.contains("curl "), "{}", rows[0].script);
        // git has none: its setting is read, and the row says so.
        assert!(
            rows[1].tried.contains("no connection made"),
            "{}",
            rows[1].tried
        );
        assert!(
            rows[1].script.contains("GIT_SSL_CAINFO"),
            "{}",
            rows[1].script
        );
        assert!(
            rows[2].script.contains("keytool -list -cacerts"),
            "{}",
            rows[2].script
        );
        // Without an allowed host nothing is fetched.
        let rows = trust_checks(&present, None);
        assert!(rows.iter().all(|c| c.tried.contains("no connection made")));
        assert!(trust_checks(&[], Some("h")).is_empty());
    }

    #[test]
    fn a_trust_row_passes_only_on_exit_zero() {
        let rows = trust_checks(&crate::trust::present("curl"), Some("h.example"));
        let (pass, seen) = (rows[0].judge)(&out(0, ""));
        assert!(pass);
        assert_eq!(seen, "TLS verified");
        let (pass, seen) = (rows[0].judge)(&out(60, "curl: (60) SSL certificate problem"));
        assert!(!pass);
        assert!(
            seen.contains("exit 60: curl: (60) SSL certificate problem"),
            "{seen}"
        );
    }

    fn verdicts(rows: &[CheckResult]) -> BTreeMap<String, bool> {
        rows.iter().map(|r| (r.name.clone(), r.pass)).collect()
    }

    #[test]
    fn a_hardened_agent_passes_every_inspect_check() {
        let state = crate::state::StateDir::for_bottle("t").unwrap();
        let sec = SecurityInfo {
            cap_drop: Plan::agent_cap_drop()
                .iter()
                .map(|c| format!("CAP_{c}"))
                .collect(),
            no_new_privileges: true,
            pids_limit: Some(2048),
            memory_bytes: Some(4 << 30),
            network_mode: "31535c4e7bd44472e348f54d".into(),
            networks: vec![INTERNAL.into()],
            mounts: vec![bind(&state.agent_dir(), AGENT_CA_DIR, true)],
            ..Default::default()
        };
        let rows = inspect_checks(&agent(Some(sec)), INTERNAL, Some(&internal_ref()), &state);
        assert!(rows.len() >= 9, "{rows:?}");
        assert!(
            rows.iter().all(|r| r.pass && r.ran == Where::Inspect),
            "{rows:?}"
        );
    }

    /// Podman: CapDrop lists only what podman took from its own defaults,
    /// NetworkMode says `bridge`; the bounding set and the network list
    /// decide, and a dangerous capability in the bounding set fails.
    #[test]
    fn podman_inspect_is_read_by_its_bounding_set_and_networks() {
        let state = crate::state::StateDir::for_bottle("t").unwrap();
        let podman = |bounding: &[&str]| SecurityInfo {
            cap_drop: vec!["AUDIT_WRITE".into(), "MKNOD".into(), "NET_RAW".into()],
            bounding_caps: Some(bounding.iter().map(|c| c.to_string()).collect()),
            no_new_privileges: true,
            pids_limit: Some(2048),
            memory_bytes: Some(4 << 30),
            network_mode: "bridge".into(),
            networks: vec![INTERNAL.into()],
            mounts: vec![bind(&state.agent_dir(), AGENT_CA_DIR, true)],
            ..Default::default()
        };
        let good = podman(&["CAP_CHOWN", "CAP_KILL", "CAP_SETUID"]);
        let v = verdicts(&inspect_checks(
            &agent(Some(good)),
            INTERNAL,
            Some(&internal_ref()),
            &state,
        ));
        assert_eq!(v.get("capabilities"), Some(&true), "{v:?}");
        assert_eq!(v.get("networks"), Some(&true), "{v:?}");
        let bad = podman(&["CAP_CHOWN", "CAP_SYS_ADMIN"]);
        let rows = inspect_checks(&agent(Some(bad)), INTERNAL, Some(&internal_ref()), &state);
        let caps = rows.iter().find(|r| r.name == "capabilities").unwrap();
        assert!(
            !caps.pass && caps.observed.contains("SYS_ADMIN"),
            "{caps:?}"
        );
        // `bridge` with any other network attached is not the internal only.
        let mut wide = podman(&["CAP_CHOWN"]);
        wide.networks.push("podman".into());
        let v = verdicts(&inspect_checks(
            &agent(Some(wide)),
            INTERNAL,
            Some(&internal_ref()),
            &state,
        ));
        assert_eq!(v.get("networks"), Some(&false), "{v:?}");
    }

    #[test]
    fn each_widening_fails_its_own_inspect_check() {
        let state = crate::state::StateDir::for_bottle("t").unwrap();
        let sec = SecurityInfo {
            privileged: true,
            cap_add: vec!["net_admin".into()],
            cap_drop: vec!["MKNOD".into()],
            no_new_privileges: false,
            pids_limit: Some(0),
            memory_bytes: None,
            network_mode: "host".into(),
            networks: vec!["bridge".into()],
            mounts: vec![
                // A directory holding the engine socket is as good as the socket.
                bind(Path::new("/var/run"), "/host-run", true),
                bind(&state.sidecar_dir(), "/mnt/s", true),
                // The agent's own directory, but writable.
                bind(&state.agent_dir(), AGENT_CA_DIR, false),
            ],
            ..Default::default()
        };
        let v = verdicts(&inspect_checks(
            &agent(Some(sec)),
            INTERNAL,
            Some(&internal_ref()),
            &state,
        ));
        for name in [
            "privileged",
            "capabilities",
            "no-new-privileges",
            "engine socket",
            "sidecar state not mounted",
            "pids limit",
            "memory limit",
            "networks",
        ] {
            assert_eq!(v.get(name), Some(&false), "{name}: {v:?}");
        }
        // A mount of a directory that holds the state dir exposes it too.
        let sec = SecurityInfo {
            mounts: vec![bind(state.root().parent().unwrap(), "/work", true)],
            ..Default::default()
        };
        let rows = inspect_checks(&agent(Some(sec)), INTERNAL, None, &state);
        let v = verdicts(&rows);
        assert_eq!(v.get("sidecar state not mounted"), Some(&false), "{rows:?}");
        assert_eq!(
            v.get("networks"),
            Some(&false),
            "no internal network: {rows:?}"
        );
    }

    #[test]
    fn a_runtime_without_inspect_data_fails_closed() {
        let state = crate::state::StateDir::for_bottle("t").unwrap();
        let rows = inspect_checks(&agent(None), INTERNAL, None, &state);
        assert_eq!(rows.len(), 1);
        assert!(!rows[0].pass && rows[0].counted, "{rows:?}");
    }

    #[test]
    fn capability_spellings_are_one_name() {
        assert_eq!(cap_name("cap_net_raw"), "NET_RAW");
        assert_eq!(cap_name("NET_RAW"), "NET_RAW");
    }
}
