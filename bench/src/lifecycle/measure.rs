//! The sequences `lifecycle-bench` times, each through the real CLIs:
//!
//! - **bottle**: `bottle up` of a one-host bottle, then `docker exec AGENT
//!   true` (the agent answers); `bottle down` until nothing is left;
//! - **raw docker**: what a user would type for the same shape: an internal
//!   and an egress network, the sidecar's image created on the egress one,
//!   connected to the internal one and started, the agent run on the
//!   internal one, then the same `docker exec AGENT true`; `docker rm -f`
//!   and `docker network rm` for down;
//! - **scale**: N bottles brought up at once (N `bottle up` processes), their
//!   memory read, then taken down at once, and a check that nothing leaked.
//!
//! Warm means images built and the runtime probed in the last minutes (the
//! state `up` meets when used repeatedly); cold means the kernel's page
//! cache dropped and no stored probe before each run (images stay built).

use super::stats::Series;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// What a run is asked to measure.
#[derive(Debug, Clone)]
pub struct Options {
    pub bottle: PathBuf,
    pub runs: usize,
    pub cold: bool,
    pub scale: Vec<usize>,
    pub agent_image: String,
}

/// One side-by-side comparison: bottle and raw docker, up and down.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pair {
    pub bottle_up: Series,
    pub raw_up: Series,
    pub bottle_down: Series,
    pub raw_down: Series,
}

/// N bottles at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleRow {
    pub bottles: usize,
    /// From starting N `bottle up` at once until every agent answered.
    pub up_wall_ms: f64,
    pub up_per_bottle_ms: f64,
    /// From starting N `bottle down` at once until all returned.
    pub down_wall_ms: f64,
    /// The sidecar process's VmRSS, median over the N bottles.
    pub sidecar_rss_kib: u64,
    /// The agent container's memory as the engine accounts it (`docker
    /// stats`), median over the N bottles.
    pub agent_mem_kib: u64,
    /// The containerd shims of the bottle's two containers (their VmRSS
    /// summed), median over the N bottles.
    pub shims_rss_kib: u64,
    /// The host's MemAvailable before the N bottles less after, over N:
    /// everything a bottle costs the host (both containers, their shims,
    /// networks, the kernel's share).
    pub host_mem_per_bottle_kib: u64,
    /// What was left after down that was not there before (must be empty).
    pub leaked: Vec<String>,
}

/// The machine and the versions a run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub mem_gib: f64,
    pub kernel: String,
    pub docker: String,
    pub bottle: String,
    pub sidecar_image: String,
    pub agent_image: String,
    pub date: String,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub machine: Machine,
    /// `bottle probe`: what an `up` pays on top when no recent probe is
    /// stored.
    pub probe: Series,
    pub warm: Pair,
    pub cold: Option<Pair>,
    pub scale: Vec<ScaleRow>,
}

const CONFIG: &str = r#"# lifecycle-bench: a one-host bottle.
[agent]
image = "AGENT_IMAGE"
command = ["sleep", "infinity"]

[egress]
allow = ["example.com"]
"#;

/// Name prefixes of everything the bench makes, so leftovers of an earlier
/// run are found and nothing else is touched.
const PREFIX: &str = "benchup";
const RAW: &str = "benchup-raw";

/// A scratch world: the bottle config and a private state root.
pub struct World {
    dir: tempfile::TempDir,
    opts: Options,
}

impl World {
    pub fn new(opts: &Options) -> anyhow::Result<World> {
        let dir = tempfile::tempdir().context("cannot make a scratch directory")?;
        std::fs::create_dir_all(dir.path().join("state"))?;
        let mut opts = opts.clone();
        // Run from the scratch directory: a relative path would not be found.
        opts.bottle = std::fs::canonicalize(&opts.bottle)
            .with_context(|| format!("no bottle binary at {}", opts.bottle.display()))?;
        Ok(World { dir, opts })
    }

    fn bottle(&self) -> Command {
        let mut c = Command::new(&self.opts.bottle);
        c.current_dir(self.dir.path())
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            .env_remove("BOTTLE_RUNTIME");
        c
    }

    /// The directory of bottle `name`: its own bottle.toml naming it (one
    /// config accepted under one name, as a user's would be).
    fn config_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.dir.path().join("bottles").join(name);
        if !dir.exists() {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(
                dir.join("bottle.toml"),
                format!(
                    "name = \"{name}\"\n{}",
                    CONFIG.replace("AGENT_IMAGE", &self.opts.agent_image)
                ),
            )?;
        }
        Ok(dir)
    }

    fn probe_cache(&self) -> PathBuf {
        self.dir.path().join("state/bottle/probe-docker.json")
    }

    fn up(&self, name: &str) -> anyhow::Result<()> {
        let dir = self.config_dir(name)?;
        run(self
            .bottle()
            .current_dir(dir)
            .args(["up", "--runtime", "docker", "-q"]))?;
        run(Command::new("docker").args(["exec", &format!("bottle-{name}-agent"), "true"]))
    }

    fn down(&self, name: &str) -> anyhow::Result<()> {
        run(self.bottle().args(["down", name]))
    }

    fn probe(&self) -> anyhow::Result<()> {
        run(self.bottle().args(["probe", "--runtime", "docker"]))
    }
}

/// Runs `cmd` to the end; an exit other than 0 is an error quoting stderr.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    output(cmd).map(drop)
}

/// stdout of `cmd`, which must succeed.
fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn docker(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("docker").args(args))
}

fn timed(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// The raw docker sequence for the same shape as a bottle.
fn raw_up(sidecar_image: &str, agent_image: &str) -> anyhow::Result<()> {
    let (internal, egress) = (format!("{RAW}-internal"), format!("{RAW}-egress"));
    let (sidecar, agent) = (format!("{RAW}-sidecar"), format!("{RAW}-agent"));
    docker(&["network", "create", "--internal", &internal])?;
    docker(&["network", "create", &egress])?;
    docker(&[
        "create",
        "--name",
        &sidecar,
        "--network",
        &egress,
        "--entrypoint",
        "sleep",
        sidecar_image,
        "infinity",
    ])?;
    docker(&["network", "connect", &internal, &sidecar])?;
    docker(&["start", &sidecar])?;
    docker(&[
        "run",
        "-d",
        "--name",
        &agent,
        "--network",
        &internal,
        agent_image,
        "sleep",
        "infinity",
    ])?;
    docker(&["exec", &agent, "true"])
}

fn raw_down() -> anyhow::Result<()> {
    docker(&[
        "rm",
        "-f",
        &format!("{RAW}-agent"),
        &format!("{RAW}-sidecar"),
    ])?;
    docker(&[
        "network",
        "rm",
        &format!("{RAW}-internal"),
        &format!("{RAW}-egress"),
    ])
}

/// Whatever of ours the engine and the host hold: containers and networks
/// named with [`PREFIX`] (bottle's are `bottle-<name>-…`), probe scratch,
/// and the bridges bottle names `bt-…`.
pub fn footprint() -> anyhow::Result<BTreeSet<String>> {
    let mut found = BTreeSet::new();
    let ours = |n: &str| n.contains(PREFIX) || n.starts_with("bottle-probe-");
    for n in output(Command::new("docker").args(["ps", "-a", "--format", "{{.Names}}"]))?.lines() {
        if ours(n) {
            found.insert(format!("container {n}"));
        }
    }
    for n in
        output(Command::new("docker").args(["network", "ls", "--format", "{{.Name}}"]))?.lines()
    {
        if ours(n) {
            found.insert(format!("network {n}"));
        }
    }
    if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
        for e in dir.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("bt-") {
                found.insert(format!("interface {n}"));
            }
        }
    }
    Ok(found)
}

/// Removes leftovers of an earlier, interrupted run (only names of ours).
pub fn clean(world: &World) {
    let names = output(Command::new("docker").args(["ps", "-a", "--format", "{{.Names}}"]))
        .unwrap_or_default();
    for n in names
        .lines()
        .filter(|n| n.starts_with(&format!("bottle-{PREFIX}")))
    {
        if let Some(name) = n
            .strip_prefix("bottle-")
            .and_then(|r| r.rsplit_once('-'))
            .map(|(b, _)| b.to_string())
        {
            let _ = world.down(&name);
        }
    }
    let _ = Command::new("docker")
        .args([
            "rm",
            "-f",
            &format!("{RAW}-agent"),
            &format!("{RAW}-sidecar"),
        ])
        .output();
    let _ = Command::new("docker")
        .args([
            "network",
            "rm",
            &format!("{RAW}-internal"),
            &format!("{RAW}-egress"),
        ])
        .output();
}

/// Drops the kernel's page cache (root only); false when it cannot.
fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// Times `runs` rounds of both sequences, alternating which goes first.
fn pair(world: &World, sidecar_image: &str, cold: bool) -> anyhow::Result<Pair> {
    let (mut bu, mut ru, mut bd, mut rd) = (vec![], vec![], vec![], vec![]);
    let name = format!("{PREFIX}-w");
    for i in 0..world.opts.runs {
        let bottle_round = |bu: &mut Vec<f64>, bd: &mut Vec<f64>| -> anyhow::Result<()> {
            if cold {
                let _ = std::fs::remove_file(world.probe_cache());
                drop_caches();
            }
            bu.push(timed(|| world.up(&name))?);
            bd.push(timed(|| world.down(&name))?);
            Ok(())
        };
        let raw_round = |ru: &mut Vec<f64>, rd: &mut Vec<f64>| -> anyhow::Result<()> {
            if cold {
                drop_caches();
            }
            ru.push(timed(|| raw_up(sidecar_image, &world.opts.agent_image))?);
            rd.push(timed(raw_down)?);
            Ok(())
        };
        if i % 2 == 0 {
            raw_round(&mut ru, &mut rd)?;
            bottle_round(&mut bu, &mut bd)?;
        } else {
            bottle_round(&mut bu, &mut bd)?;
            raw_round(&mut ru, &mut rd)?;
        }
        eprintln!(
            "lifecycle-bench: {} round {}/{}: bottle up {:.0} ms, raw up {:.0} ms",
            if cold { "cold" } else { "warm" },
            i + 1,
            world.opts.runs,
            bu.last().unwrap_or(&0.0),
            ru.last().unwrap_or(&0.0)
        );
    }
    let tag = if cold { "cold" } else { "warm" };
    Ok(Pair {
        bottle_up: Series::of(&format!("bottle up ({tag})"), bu),
        raw_up: Series::of(&format!("raw docker up ({tag})"), ru),
        bottle_down: Series::of(&format!("bottle down ({tag})"), bd),
        raw_down: Series::of(&format!("raw docker down ({tag})"), rd),
    })
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn vm_rss_kib(pid: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Every containerd shim on this host: its pid and its command line (which
/// names the container it serves).
fn shim_processes() -> Vec<(String, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().into_owned();
            pid.parse::<u32>().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains("containerd-shim").then_some((pid, cmd))
        })
        .collect()
}

/// `12.5MiB` / `800KiB` / `1.2GiB` (docker stats' units) in KiB.
pub fn parse_mem(text: &str) -> Option<u64> {
    let text = text.trim();
    let (num, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.trim().parse().ok()?;
    let factor = match unit {
        "B" => 1.0 / 1024.0,
        "KiB" | "kB" => 1.0,
        "MiB" | "MB" => 1024.0,
        "GiB" | "GB" => 1024.0 * 1024.0,
        _ => return None,
    };
    Some((n * factor).round() as u64)
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// `f` of every name, each on a thread of its own, all at once.
fn at_once(
    names: &[String],
    f: impl Fn(&str) -> anyhow::Result<()> + Sync,
) -> Vec<anyhow::Result<()>> {
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = names.iter().map(|name| s.spawn(move || f(name))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")))
            })
            .collect()
    })
}

fn scale_row(world: &World, n: usize) -> anyhow::Result<ScaleRow> {
    let before = footprint()?;
    let names: Vec<String> = (0..n).map(|i| format!("{PREFIX}-s{n}-{i}")).collect();
    let avail_before = mem_available_kib();
    let t = Instant::now();
    let ups = at_once(&names, |name| world.up(name));
    let up_wall_ms = t.elapsed().as_secs_f64() * 1000.0;
    let failed: Vec<String> = ups
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
        .collect();
    // Let short-lived work of `up` (execs, helpers) finish before reading.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let avail_after = mem_available_kib();
    let mut sidecar = Vec::new();
    let mut shims = Vec::new();
    let procs = shim_processes();
    for name in &names {
        let ids = output(Command::new("docker").args([
            "inspect",
            "-f",
            "{{.Id}}",
            &format!("bottle-{name}-sidecar"),
            &format!("bottle-{name}-agent"),
        ]))
        .unwrap_or_default();
        let sum: u64 = ids
            .lines()
            .filter(|id| !id.trim().is_empty())
            .filter_map(|id| procs.iter().find(|(_, cmd)| cmd.contains(id.trim())))
            .filter_map(|(pid, _)| vm_rss_kib(pid))
            .sum();
        shims.push(sum);
        let pid = output(Command::new("docker").args([
            "inspect",
            "-f",
            "{{.State.Pid}}",
            &format!("bottle-{name}-sidecar"),
        ]));
        if let Some(kib) = pid.ok().as_deref().and_then(vm_rss_kib) {
            sidecar.push(kib);
        }
    }
    let stats = output(Command::new("docker").args([
        "stats",
        "--no-stream",
        "--format",
        "{{.Name}}\t{{.MemUsage}}",
    ]))
    .unwrap_or_default();
    let agent: Vec<u64> = stats
        .lines()
        .filter_map(|l| {
            let (name, usage) = l.split_once('\t')?;
            let ours = names.iter().any(|n| name == format!("bottle-{n}-agent"));
            ours.then(|| parse_mem(usage.split('/').next()?))?
        })
        .collect();
    let t = Instant::now();
    let downs = at_once(&names, |name| world.down(name));
    let down_wall_ms = t.elapsed().as_secs_f64() * 1000.0;
    let after = footprint()?;
    let leaked: Vec<String> = after.difference(&before).cloned().collect();
    if let Some(e) = failed.first() {
        bail!(
            "{} of {n} bottles did not come up; the first: {e}",
            failed.len()
        );
    }
    if let Some(Err(e)) = downs.iter().find(|r| r.is_err()) {
        bail!("a `bottle down` of the {n} failed: {e:#}");
    }
    eprintln!("lifecycle-bench: scale {n}: up {up_wall_ms:.0} ms, down {down_wall_ms:.0} ms");
    Ok(ScaleRow {
        bottles: n,
        up_wall_ms,
        up_per_bottle_ms: up_wall_ms / n as f64,
        down_wall_ms,
        sidecar_rss_kib: median_u64(sidecar),
        shims_rss_kib: median_u64(shims),
        agent_mem_kib: median_u64(agent),
        host_mem_per_bottle_kib: avail_before.saturating_sub(avail_after) / n as u64,
        leaked,
    })
}

fn machine(opts: &Options, sidecar_image: &str) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0.0);
    let text = |c: &mut Command| output(c).map(|s| s.trim().to_string()).unwrap_or_default();
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu,
        mem_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        kernel: text(Command::new("uname").arg("-r")),
        docker: text(Command::new("docker").args(["version", "-f", "{{.Server.Version}}"])),
        bottle: text(Command::new(&opts.bottle).arg("--version")),
        sidecar_image: sidecar_image.into(),
        agent_image: opts.agent_image.clone(),
        date: text(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
    }
}

/// Measures everything `opts` asks for, removing what it made.
pub fn measure(opts: &Options) -> anyhow::Result<Results> {
    let world = World::new(opts)?;
    clean(&world);
    let before = footprint()?;
    // One untimed round: builds missing images, finds the sidecar image,
    // stores a probe.
    eprintln!("lifecycle-bench: a first, untimed up (builds missing images)");
    let name = format!("{PREFIX}-w");
    world.up(&name)?;
    let sidecar_image = output(Command::new("docker").args([
        "inspect",
        "-f",
        "{{.Config.Image}}",
        &format!("bottle-{name}-sidecar"),
    ]))?
    .trim()
    .to_string();
    world.down(&name)?;
    let mut probes = Vec::new();
    for _ in 0..opts.runs.min(3) {
        probes.push(timed(|| world.probe())?);
    }
    let probe = Series::of("bottle probe", probes);
    eprintln!("lifecycle-bench: probe {}", probe.cell());
    let warm = pair(&world, &sidecar_image, false)?;
    let cold = if opts.cold {
        if !drop_caches() {
            eprintln!("lifecycle-bench: cannot drop the page cache (needs root): cold runs only lack a stored probe");
        }
        Some(pair(&world, &sidecar_image, true)?)
    } else {
        None
    };
    let mut scale = Vec::new();
    for &n in &opts.scale {
        scale.push(scale_row(&world, n)?);
    }
    let leaked: Vec<String> = footprint()?.difference(&before).cloned().collect();
    if !leaked.is_empty() {
        bail!("left behind after the run: {}", leaked.join(", "));
    }
    Ok(Results {
        machine: machine(opts, &sidecar_image),
        probe,
        warm,
        cold,
        scale,
    })
}

/// The results as Markdown tables for docs/benchmarks.md.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let m = &r.machine;
    s.push_str(&format!(
        "Machine: {} cores ({}), {} GiB, Linux {}; docker {}; {}; measured {}.\n\n",
        m.cores, m.cpu, m.mem_gib, m.kernel, m.docker, m.bottle, m.date
    ));
    s.push_str("| sequence | bottle | raw docker | ratio |\n|---|--:|--:|--:|\n");
    let mut pair_rows = |p: &Pair, tag: &str| {
        for (what, b, raw) in [
            ("up", &p.bottle_up, &p.raw_up),
            ("down", &p.bottle_down, &p.raw_down),
        ] {
            s.push_str(&format!(
                "| {what} ({tag}) | {} | {} | {:.2}× |\n",
                b.cell(),
                raw.cell(),
                super::stats::ratio(b, raw)
            ));
        }
    };
    pair_rows(&r.warm, "warm");
    if let Some(c) = &r.cold {
        pair_rows(c, "cold");
    }
    s.push_str(&format!(
        "\n`bottle probe` (what a cold `up` adds): {}\n",
        r.probe.cell()
    ));
    if !r.scale.is_empty() {
        s.push_str("\n| bottles at once | up, all | up per bottle | down, all | sidecar RSS | agent memory | shims RSS | host MemAvailable drop per bottle | left behind |\n|--:|--:|--:|--:|--:|--:|--:|--:|--|\n");
        for row in &r.scale {
            s.push_str(&format!(
                "| {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {} |\n",
                row.bottles,
                row.up_wall_ms,
                row.up_per_bottle_ms,
                row.down_wall_ms,
                row.sidecar_rss_kib as f64 / 1024.0,
                row.agent_mem_kib as f64 / 1024.0,
                row.shims_rss_kib as f64 / 1024.0,
                row.host_mem_per_bottle_kib as f64 / 1024.0,
                if row.leaked.is_empty() {
                    "nothing".to_string()
                } else {
                    row.leaked.join(", ")
                }
            ));
        }
    }
    s
}

/// Reads results written by an earlier run.
pub fn load(path: &Path) -> anyhow::Result<Results> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text)
        .with_context(|| format!("{} is not lifecycle results", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_stats_memory_units() {
        assert_eq!(parse_mem("800KiB"), Some(800));
        assert_eq!(parse_mem("12.5MiB "), Some(12800));
        assert_eq!(parse_mem("1.5GiB"), Some(1572864));
        assert_eq!(parse_mem("2048B"), Some(2));
        assert_eq!(parse_mem("12 parsecs"), None);
        assert_eq!(parse_mem(""), None);
    }

    #[test]
    fn the_markdown_names_every_measurement() {
        let s = |n: &str, v: f64| Series::of(n, vec![v]);
        let pair = Pair {
            bottle_up: s("b", 1100.0),
            raw_up: s("r", 1000.0),
            bottle_down: s("bd", 500.0),
            raw_down: s("rd", 500.0),
        };
        let r = Results {
            machine: Machine {
                cores: 2,
                cpu: "cpu".into(),
                mem_gib: 24.0,
                kernel: "6.1".into(),
                docker: "20.10".into(),
                bottle: "bottle 0.1.0".into(),
                sidecar_image: "s".into(),
                agent_image: "a".into(),
                date: "d".into(),
            },
            probe: s("probe", 2900.0),
            warm: pair.clone(),
            cold: Some(pair),
            scale: vec![ScaleRow {
                bottles: 5,
                up_wall_ms: 5000.0,
                up_per_bottle_ms: 1000.0,
                down_wall_ms: 2000.0,
                sidecar_rss_kib: 8192,
                shims_rss_kib: 10240,
                agent_mem_kib: 1024,
                host_mem_per_bottle_kib: 30720,
                leaked: vec![],
            }],
        };
        let md = markdown(&r);
        assert!(
            md.contains("| up (warm) | 1100 ms (1100–1100) | 1000 ms (1000–1000) | 1.10× |"),
            "{md}"
        );
        assert!(md.contains("| down (cold) |"), "{md}");
        assert!(
            md.contains(
                "| 5 | 5000 ms | 1000 ms | 2000 ms | 8.0 MiB | 1.0 MiB | 10.0 MiB | 30.0 MiB | nothing |"
            ),
            "{md}"
        );
        let back: Results = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.warm.bottle_up, r.warm.bottle_up);
    }
}
