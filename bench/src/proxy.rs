//! The two proxies under test, as child processes on 127.0.0.1: how each is
//! configured for the same interception and allow-list, how we know it is up,
//! and what it costs (RSS and CPU from `/proc/PID`).

use anyhow::{bail, Context as _};
use bottle_policy::{AllowRule, EgressPolicy, Policy};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// How long a proxy may take to accept connections after it is spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A proxy child process; killed when dropped.
pub struct ProxyProcess {
    pub name: &'static str,
    pub addr: SocketAddr,
    child: Child,
    pid: u32,
    stdout_log: PathBuf,
    stderr_log: PathBuf,
}

impl ProxyProcess {
    fn spawn(
        name: &'static str,
        mut command: Command,
        addr: SocketAddr,
        dir: &Path,
    ) -> anyhow::Result<ProxyProcess> {
        let stdout_log = dir.join(format!("{name}.stdout.log"));
        let stderr_log = dir.join(format!("{name}.stderr.log"));
        command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_log)?)
            .stderr(std::fs::File::create(&stderr_log)?)
            .kill_on_drop(true);
        let program = command.as_std().get_program().to_owned();
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.to_string_lossy()))?;
        let pid = child.id().context("child has no pid")?;
        Ok(ProxyProcess {
            name,
            addr,
            child,
            pid,
            stdout_log,
            stderr_log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits until the proxy accepts TCP connections and `extra` holds (e.g.
    /// a file it writes at start); fails with its logs if it exits first.
    pub async fn wait_ready(&mut self, extra: impl Fn() -> bool) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited during start with {status}\n{}",
                    self.name,
                    self.logs()
                );
            }
            if extra() && tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "{} did not accept connections on {} within {READY_TIMEOUT:?}\n{}",
                    self.name,
                    self.addr,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails, with its logs, if the proxy has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited during the run with {status}\n{}",
                self.name,
                self.logs()
            );
        }
        Ok(())
    }

    /// The last lines of its stdout and stderr, for error messages.
    pub fn logs(&self) -> String {
        format!(
            "--- {} stderr ({}):\n{}--- stdout ({}):\n{}",
            self.name,
            self.stderr_log.display(),
            tail(&self.stderr_log),
            self.stdout_log.display(),
            tail(&self.stdout_log)
        )
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(20);
    let mut out = lines[from..].join("\n");
    out.push('\n');
    out
}

/// A free port on 127.0.0.1 (bound and released; the proxy binds it next).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `binary`, or `taskset -c CPUS binary` (taskset execs it, so the pid we
/// get is the proxy's own).
fn pinned(binary: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        None => Command::new(binary),
        Some(list) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(list).arg(binary);
            c
        }
    }
}

/// The CPUs a process may run on (`Cpus_allowed_list`), for the report.
pub fn cpus_allowed(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Writes the sidecar's inputs into `dir` (policy.json allowing exactly the
/// origin, the bottle CA, the origin's CA as an upstream root) and starts
/// `bottle-sidecar run` with only the explicit proxy listening.
pub fn spawn_sidecar(
    binary: &Path,
    cpus: Option<&str>,
    dir: &Path,
    origin: SocketAddr,
    bottle_ca: &crate::pki::Ca,
    origin_ca_pem: &str,
    dlp: bool,
) -> anyhow::Result<ProxyProcess> {
    use std::os::unix::fs::PermissionsExt as _;
    anyhow::ensure!(
        binary.is_file(),
        "bottle-sidecar not found at {} (build it with `cargo build --release -p bottle-sidecar`, or pass --sidecar)",
        binary.display()
    );
    let dir = dir.join("sidecar");
    std::fs::create_dir_all(&dir)?;
    // The loopback guard lets 127.0.0.1 through only when an allow entry
    // names that exact address, which is what this entry does.
    let mut policy = Policy::new(
        "bench",
        EgressPolicy {
            allow: vec![AllowRule::parse(&origin.to_string())?],
            ..Default::default()
        },
    );
    policy.dlp.enabled = dlp;
    let policy_path = dir.join("policy.json");
    std::fs::write(&policy_path, serde_json::to_vec_pretty(&policy)?)?;
    std::fs::write(dir.join("ca.pem"), bottle_ca.cert_pem())?;
    let key_path = dir.join("ca-key.pem");
    std::fs::write(&key_path, bottle_ca.key_pem())?;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    std::fs::write(dir.join("upstream-roots.pem"), origin_ca_pem)?;

    let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let mut command = pinned(binary, cpus);
    command
        .arg("run")
        .arg("--policy")
        .arg(&policy_path)
        .arg("--audit")
        .arg(dir.join("audit.jsonl"))
        .args(["--dns-answer", "127.0.0.1"])
        .arg("--proxy-listen")
        .arg(addr.to_string())
        .args(["--dns-listen", "off", "--http-listen", "off"])
        .args(["--https-listen", "off"]);
    ProxyProcess::spawn("bottle-sidecar", command, addr, &dir)
}

/// The mitmproxy addon: the same decision the sidecar takes (exactly the
/// origin's host and port), at CONNECT time and again per request.
fn allowlist_script(origin: SocketAddr) -> String {
    format!(
        r#""""egress-bench allow-list: only {origin} may be reached, like the sidecar's policy."""
from mitmproxy import http

ALLOWED = {{("{ip}", {port})}}


def _allowed(host, port):
    return (host, port) in ALLOWED


def http_connect(flow: http.HTTPFlow) -> None:
    if not _allowed(flow.request.host, flow.request.port):
        flow.response = http.Response.make(
            403, b"blocked by the allow-list\n", {{"content-type": "text/plain"}}
        )


def request(flow: http.HTTPFlow) -> None:
    if not _allowed(flow.request.host, flow.request.port):
        flow.kill()
"#,
        ip = origin.ip(),
        port = origin.port()
    )
}

/// Where mitmproxy writes its CA certificate inside `confdir` at first start.
pub fn mitm_ca_path(dir: &Path) -> PathBuf {
    dir.join("mitmproxy").join("mitmproxy-ca-cert.pem")
}

/// Starts `mitmdump` on 127.0.0.1 with a fresh confdir (so it mints its own
/// CA there), trusting the origin's CA upstream, quiet, with the allow-list.
pub fn spawn_mitmdump(
    binary: &Path,
    cpus: Option<&str>,
    dir: &Path,
    origin: SocketAddr,
    origin_ca_path: &Path,
) -> anyhow::Result<ProxyProcess> {
    let confdir = dir.join("mitmproxy");
    std::fs::create_dir_all(&confdir)?;
    let script = confdir.join("allowlist.py");
    std::fs::write(&script, allowlist_script(origin))?;
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let mut command = pinned(binary, cpus);
    command
        .args(["--listen-host", "127.0.0.1"])
        .arg("--listen-port")
        .arg(addr.port().to_string())
        .arg("--set")
        .arg(format!("confdir={}", confdir.display()))
        .arg("--set")
        .arg(format!(
            "ssl_verify_upstream_trusted_ca={}",
            origin_ca_path.display()
        ))
        // Printing every flow would tax mitmproxy for nothing we measure.
        .arg("--quiet")
        .arg("-s")
        .arg(&script);
    ProxyProcess::spawn("mitmdump", command, addr, &confdir)
}

/// `mitmdump --version`, first line.
pub async fn mitmdump_version(binary: &Path) -> String {
    match Command::new(binary).arg("--version").output().await {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("unknown")
            .trim()
            .to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Memory and CPU of a process, from `/proc/PID`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    pub rss_kib: u64,
    /// High-water mark of RSS since the process started.
    pub hwm_kib: u64,
    /// User + system CPU time.
    pub cpu: Duration,
}

/// Clock ticks per second of `/proc/PID/stat`'s times: USER_HZ, which Linux
/// fixes at 100 for user space on every architecture bottle runs on.
const USER_HZ: u64 = 100;

pub fn read_proc(pid: u32) -> anyhow::Result<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    Ok(ProcStats {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        cpu: stat_cpu(&stat)?,
    })
}

/// User + system CPU time from the text of a `/proc/PID/stat` or
/// `/proc/PID/task/TID/stat`.
pub fn stat_cpu(stat: &str) -> anyhow::Result<Duration> {
    // Fields after the `(comm)`, which may itself hold spaces and `)`: state
    // is field 3, utime 14, stime 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unreadable /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> u64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0) };
    let cpu_ticks = ticks(11) + ticks(12);
    Ok(Duration::from_millis(cpu_ticks * 1000 / USER_HZ))
}

/// Busy CPU time of the whole machine (all processes, all cores) from
/// `/proc/stat`, to tell how much of it the run did not account for.
pub fn machine_busy() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...: all but idle and
    // iowait are busy.
    let busy: u64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, n)| n)
        .sum();
    Ok(Duration::from_millis(busy * 1000 / USER_HZ))
}

/// Samples a process's RSS every 100 ms until stopped; returns the highest
/// VmRSS or VmHWM seen.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<u64>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = 0;
            loop {
                if let Ok(s) = read_proc(pid) {
                    peak = peak.max(s.rss_kib).max(s.hwm_kib);
                }
                if flag.load(Ordering::Relaxed) {
                    return peak;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        RssSampler { stop, task }
    }

    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_sums_utime_and_stime_after_the_comm() {
        // A comm with a space and a `)` must not shift the fields.
        let stat =
            "4242 (bench) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 99 1 2";
        assert_eq!(stat_cpu(stat).unwrap(), Duration::from_millis(3250));
        assert!(stat_cpu("no parenthesis").is_err());
    }
}
