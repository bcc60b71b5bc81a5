//! Turns measurements into the markdown table of `docs/benchmarks.md` and
//! checks them against issue 3's targets. Every number printed here is
//! computed from the run; nothing is filled in.

use crate::client::LoadResult;
use crate::config::PathKind;
use std::fmt::Write as _;

/// What a proxy cost during its run.
#[derive(Debug, Clone, Copy)]
pub struct ProxyCost {
    /// VmRSS after start-up and one probe request, before the load.
    pub idle_rss_kib: u64,
    /// Highest VmRSS/VmHWM seen from start to the end of the load.
    pub peak_rss_kib: u64,
    /// CPU time over wall time during the load (1.0 = one core busy).
    pub cpu_cores: f64,
    /// CPU time per answered request (warm-up included in both), in µs.
    pub cpu_us_per_request: f64,
    /// What the proxy answered to CONNECT for a host:port the allow-list does
    /// not name.
    pub denied_status: u16,
}

/// One row.
#[derive(Debug)]
pub struct PathResult {
    pub kind: PathKind,
    pub load: LoadResult,
    /// TCP connections the origin accepted during the load: the client's
    /// own when direct; a proxy that keeps upstream connections alive opens
    /// about one per client connection.
    pub origin_connections: u64,
    /// CPU of this process (load generator + origin) over wall time.
    pub bench_cpu_cores: f64,
    /// Busy CPU of the machine not spent by this process or the proxy:
    /// other work competing with the run (and kernel threads).
    pub other_cpu_cores: f64,
    pub proxy: Option<ProxyCost>,
}

fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

fn added(us: Option<u64>, base: Option<u64>) -> String {
    match (us, base) {
        (Some(v), Some(b)) => {
            let d = v as i64 - b as i64;
            let sign = if d < 0 { "-" } else { "+" };
            format!("{sign}{:.3} ms", d.unsigned_abs() as f64 / 1000.0)
        }
        _ => "–".into(),
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub fn table(rows: &[PathResult]) -> String {
    let direct = rows.iter().find(|r| r.kind == PathKind::Direct);
    let base = |q: f64| direct.and_then(|d| d.load.latency_us(q));
    let mut out = String::new();
    out.push_str(
        "| path | requests | req/s | p50 | p99 | added p50 | added p99 | conn setup p50 | origin conns | errors | client+origin CPU | proxy CPU | proxy CPU/req | proxy RSS idle | proxy RSS peak | other CPU |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in rows {
        let p50 = r.load.latency_us(0.5);
        let p99 = r.load.latency_us(0.99);
        let (added50, added99) = if r.kind == PathKind::Direct {
            ("–".into(), "–".into())
        } else {
            (added(p50, base(0.5)), added(p99, base(0.99)))
        };
        let (cpu, per_request, idle, peak) = match r.proxy {
            Some(p) => (
                format!("{:.2} cores", p.cpu_cores),
                format!("{:.1} µs", p.cpu_us_per_request),
                mib(p.idle_rss_kib),
                mib(p.peak_rss_kib),
            ),
            None => ("–".into(), "–".into(), "–".into(), "–".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {:.2} cores | {} | {} | {} | {} | {:.2} cores |",
            r.kind.name(),
            r.load.requests(),
            r.load.per_second(),
            p50.map(ms).unwrap_or_else(|| "–".into()),
            p99.map(ms).unwrap_or_else(|| "–".into()),
            added50,
            added99,
            r.load.setup_p50_us().map(ms).unwrap_or_else(|| "–".into()),
            r.origin_connections,
            r.load.errors,
            r.bench_cpu_cores,
            cpu,
            per_request,
            idle,
            peak,
            r.other_cpu_cores.max(0.0),
        );
    }
    out
}

/// Above this much CPU used by other work during a path, its numbers are
/// flagged as contended.
const CONTENDED_CORES: f64 = 0.25;

/// A warning naming the paths that ran while other work used the CPU.
pub fn contention(rows: &[PathResult]) -> String {
    let busy: Vec<String> = rows
        .iter()
        .filter(|r| r.other_cpu_cores > CONTENDED_CORES)
        .map(|r| format!("{} ({:.2} cores)", r.kind.name(), r.other_cpu_cores))
        .collect();
    if busy.is_empty() {
        return String::new();
    }
    format!(
        "WARNING: other work used the CPU during {}; rerun on a quiet machine before trusting these numbers.",
        busy.join(", ")
    )
}

/// One line per proxy: the allow-list was in force during its run.
pub fn allow_list_checks(rows: &[PathResult]) -> String {
    let mut out = String::new();
    for r in rows {
        if let Some(p) = r.proxy {
            let _ = writeln!(
                out,
                "- {}: CONNECT to a listening but non-allowed 127.0.0.1 port answered {}",
                r.kind.name(),
                p.denied_status
            );
        }
    }
    out
}

/// Issue 3's targets, each with the measured ratio and whether it was met.
pub fn verdicts(rows: &[PathResult]) -> String {
    let find = |k: PathKind| rows.iter().find(|r| r.kind == k);
    let (direct, egress, mitm) = (
        find(PathKind::Direct),
        find(PathKind::Egress),
        find(PathKind::Mitmproxy),
    );
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut out = String::new();
    if let (Some(e), Some(m)) = (egress, mitm) {
        let ratio = e.load.per_second() / m.load.per_second().max(1e-9);
        let _ = writeln!(
            out,
            "- throughput ≥ 10× mitmproxy: {ratio:.1}× — {}",
            met(ratio >= 10.0)
        );
        if let (Some(ep), Some(mp)) = (e.proxy, m.proxy) {
            let share = ep.peak_rss_kib as f64 / (mp.peak_rss_kib as f64).max(1.0);
            let _ = writeln!(
                out,
                "- peak RSS < 1/5 of mitmproxy's: {:.1}% of it — {}",
                share * 100.0,
                met(share < 0.2)
            );
        }
    }
    if let (Some(d), Some(e)) = (direct, egress) {
        let share = e.load.per_second() / d.load.per_second().max(1e-9);
        let _ = writeln!(
            out,
            "- throughput within 25% of direct: {:.0}% of direct — {}",
            share * 100.0,
            met(share >= 0.75)
        );
    }
    out
}
