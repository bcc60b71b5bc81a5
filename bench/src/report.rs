//! Turns measurements into the markdown table of `docs/benchmarks.md`,
//! checks the HTTP/1.1 rows against issue 3's targets and sets the HTTP/2
//! rows beside them (issue 14), and writes every row as JSON for plots of a
//! `--concurrency` sweep (issue 15). Every number printed here is computed
//! from the run; nothing is filled in.

use crate::client::LoadResult;
use crate::config::{Http, PathKind, Via};
use crate::origin::Versions;
use serde_json::{json, Value};
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
    /// Keep-alive connections the client held open.
    pub concurrency: usize,
    /// Concurrent streams per connection: 1 on HTTP/1.1.
    pub h2_streams: usize,
    pub load: LoadResult,
    /// Requests the origin answered during the load, by HTTP version.
    pub origin_versions: Versions,
    /// TCP connections the origin accepted during the load: the client's
    /// own when direct; a proxy that keeps upstream connections alive opens
    /// about one per client connection.
    pub origin_connections: u64,
    /// CPU of this process (load generator + origin) over wall time.
    pub bench_cpu_cores: f64,
    /// CPU of the origin's threads per answered request (warm-up included in
    /// both), in µs: on the direct path, what terminating TLS and answering
    /// costs, the floor for a proxy that does it once per leg.
    pub origin_cpu_us_per_request: f64,
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

/// The row measured on `kind`, if the run measured it (the first one, when
/// a sweep measured it at several concurrencies; callers pass one group).
fn find(rows: &[PathResult], kind: PathKind) -> Option<&PathResult> {
    rows.iter().find(|r| r.kind == kind)
}

/// The direct row `r`'s `added` latencies are measured against: the same
/// HTTP version, connections and streams.
fn baseline<'a>(rows: &'a [PathResult], r: &PathResult) -> Option<&'a PathResult> {
    rows.iter().find(|d| {
        d.kind == PathKind::new(Via::Direct, r.kind.http)
            && d.concurrency == r.concurrency
            && d.h2_streams == r.h2_streams
    })
}

/// `r`'s p50 and p99 above its baseline's, in µs (negative when faster);
/// `None` on a direct row or without a baseline.
fn added_us(rows: &[PathResult], r: &PathResult, q: f64) -> Option<i64> {
    if r.kind.via == Via::Direct {
        return None;
    }
    let base = baseline(rows, r)?.load.latency_us(q)?;
    Some(r.load.latency_us(q)? as i64 - base as i64)
}

/// The table; `added` latencies are against the direct row of the same HTTP
/// version and connection count, so an h2 row's cost is measured against
/// direct h2.
pub fn table(rows: &[PathResult]) -> String {
    let mut out = String::new();
    out.push_str(
        "| path | conns | requests | req/s | p50 | p99 | added p50 | added p99 | conn setup p50 | origin conns | errors | client+origin CPU | proxy CPU | proxy CPU/req | origin CPU/req | proxy RSS idle | proxy RSS peak | other CPU |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in rows {
        let p50 = r.load.latency_us(0.5);
        let p99 = r.load.latency_us(0.99);
        let base = baseline(rows, r);
        let (added50, added99) = if r.kind.via == Via::Direct {
            ("–".into(), "–".into())
        } else {
            (
                added(p50, base.and_then(|b| b.load.latency_us(0.5))),
                added(p99, base.and_then(|b| b.load.latency_us(0.99))),
            )
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
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {:.2} cores | {} | {} | {:.1} µs | {} | {} | {:.2} cores |",
            r.kind.name(),
            conns(r),
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
            r.origin_cpu_us_per_request,
            idle,
            peak,
            r.other_cpu_cores.max(0.0),
        );
    }
    out
}

/// The `conns` cell: connections, and streams per connection on HTTP/2.
fn conns(r: &PathResult) -> String {
    match r.kind.http {
        Http::H1 => r.concurrency.to_string(),
        Http::H2 => format!("{}×{}", r.concurrency, r.h2_streams),
    }
}

/// Every row as a JSON object, for plotting a sweep. Field names are stable
/// (snake_case; new ones may be added, none renamed); times in ms, CPU per
/// request in µs, memory in KiB, CPU in cores; a value that does not apply
/// (a direct row's proxy columns, `added` without a direct row) is `null`.
pub fn json(rows: &[PathResult]) -> Value {
    let ms = |us: Option<u64>| us.map(|us| us as f64 / 1000.0);
    let added_ms = |r, q| added_us(rows, r, q).map(|us| us as f64 / 1000.0);
    Value::Array(
        rows.iter()
            .map(|r| {
                let p = r.proxy;
                json!({
                    "path": r.kind.name(),
                    "via": match r.kind.via {
                        Via::Direct => "direct",
                        Via::Egress => "egress",
                        Via::Mitmproxy => "mitmproxy",
                    },
                    "http": match r.kind.http {
                        Http::H1 => "http/1.1",
                        Http::H2 => "h2",
                    },
                    "concurrency": r.concurrency,
                    "h2_streams": r.h2_streams,
                    "requests": r.load.requests(),
                    "req_per_s": r.load.per_second(),
                    "p50_ms": ms(r.load.latency_us(0.5)),
                    "p99_ms": ms(r.load.latency_us(0.99)),
                    "added_p50_ms": added_ms(r, 0.5),
                    "added_p99_ms": added_ms(r, 0.99),
                    "conn_setup_p50_ms": ms(r.load.setup_p50_us()),
                    "origin_conns": r.origin_connections,
                    "errors": r.load.errors,
                    "client_origin_cores": r.bench_cpu_cores,
                    "proxy_cores": p.map(|p| p.cpu_cores),
                    "proxy_cpu_per_req_us": p.map(|p| p.cpu_us_per_request),
                    "origin_cpu_per_req_us": r.origin_cpu_us_per_request,
                    "proxy_rss_idle_kib": p.map(|p| p.idle_rss_kib),
                    "proxy_rss_peak_kib": p.map(|p| p.peak_rss_kib),
                    "other_cores": r.other_cpu_cores.max(0.0),
                })
            })
            .collect(),
    )
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

/// One line per row: the requests the origin answered during its load, by
/// HTTP version (the run already failed if any came in the wrong one).
pub fn version_checks(rows: &[PathResult]) -> String {
    let mut out = String::new();
    for r in rows {
        let v = r.origin_versions;
        let _ = writeln!(
            out,
            "- {}: {} HTTP/1.1, {} HTTP/2, {} other",
            r.kind.name(),
            v.h1,
            v.h2,
            v.other
        );
    }
    out
}

/// Issue 3's targets, each with the measured ratio and whether it was met.
/// They are stated for the HTTP/1.1 paths, so only those rows count.
pub fn verdicts(rows: &[PathResult]) -> String {
    let (direct, egress, mitm) = (
        find(rows, PathKind::DIRECT),
        find(rows, PathKind::EGRESS),
        find(rows, PathKind::MITMPROXY),
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

/// What HTTP/2 costs through each proxy next to HTTP/1.1 (issue 14): each
/// proxy's h2 throughput as a share of direct h2's, and its CPU per request,
/// with the HTTP/1.1 figure beside it when that row was measured too. No
/// target is set for these; they are reported.
pub fn h2_cost(rows: &[PathResult]) -> String {
    let mut out = String::new();
    let Some(direct_h2) = find(rows, PathKind::DIRECT_H2) else {
        return out;
    };
    let share = |r: &PathResult, d: &PathResult| {
        format!(
            "{:.0}%",
            100.0 * r.load.per_second() / d.load.per_second().max(1e-9)
        )
    };
    for via in [Via::Egress, Via::Mitmproxy] {
        let Some(h2) = find(rows, PathKind::new(via, Http::H2)) else {
            continue;
        };
        let h1 = find(rows, PathKind::new(via, Http::H1));
        let h1_share = h1
            .zip(find(rows, PathKind::DIRECT))
            .map(|(r, d)| format!(" (HTTP/1.1: {})", share(r, d)))
            .unwrap_or_default();
        let per_request = |r: &PathResult| r.proxy.map(|p| p.cpu_us_per_request);
        let cpu = match (per_request(h2), h1.and_then(per_request)) {
            (Some(a), Some(b)) => {
                format!(", {a:.1} µs proxy CPU per request (HTTP/1.1: {b:.1} µs)")
            }
            (Some(a), None) => format!(", {a:.1} µs proxy CPU per request"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "- {}: {} of direct h2's throughput{h1_share}{cpu}",
            h2.kind.name(),
            share(h2, direct_h2),
        );
    }
    if let (Some(e), Some(m)) = (
        find(rows, PathKind::EGRESS_H2),
        find(rows, PathKind::MITMPROXY_H2),
    ) {
        let _ = writeln!(
            out,
            "- bottle egress h2 against mitmproxy h2: {:.1}× the throughput",
            e.load.per_second() / m.load.per_second().max(1e-9)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A row that answered `requests` in one second, every one in `us` µs.
    fn row(kind: PathKind, requests: usize, us: u64, proxy_us: Option<f64>) -> PathResult {
        PathResult {
            kind,
            concurrency: 4,
            h2_streams: match kind.http {
                Http::H1 => 1,
                Http::H2 => 8,
            },
            load: LoadResult {
                latencies_us: vec![us; requests],
                setup_us: vec![1000],
                elapsed: Duration::from_secs(1),
                errors: 0,
                answered: requests as u64,
            },
            origin_versions: match kind.http {
                Http::H1 => Versions {
                    h1: requests as u64,
                    ..Versions::default()
                },
                Http::H2 => Versions {
                    h2: requests as u64,
                    ..Versions::default()
                },
            },
            origin_connections: 4,
            bench_cpu_cores: 1.0,
            origin_cpu_us_per_request: 10.0,
            other_cpu_cores: 0.0,
            proxy: proxy_us.map(|cpu_us_per_request| ProxyCost {
                idle_rss_kib: 1024,
                peak_rss_kib: 2048,
                cpu_cores: 1.0,
                cpu_us_per_request,
                denied_status: 403,
            }),
        }
    }

    fn rows() -> Vec<PathResult> {
        vec![
            row(PathKind::DIRECT, 1000, 100, None),
            row(PathKind::EGRESS, 400, 300, Some(20.0)),
            row(PathKind::MITMPROXY, 10, 9000, Some(1000.0)),
            row(PathKind::DIRECT_H2, 2000, 1000, None),
            row(PathKind::EGRESS_H2, 500, 1500, Some(15.0)),
            row(PathKind::MITMPROXY_H2, 20, 50000, Some(1500.0)),
        ]
    }

    /// The `added p50` cell of the row labelled `name`.
    fn added_p50(table: &str, name: &str) -> String {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("no row {name} in\n{table}"));
        line.split('|').nth(7).unwrap().trim().to_string()
    }

    #[test]
    fn h2_rows_are_measured_against_direct_h2() {
        let table = table(&rows());
        assert_eq!(table.lines().count(), 2 + 6);
        assert_eq!(added_p50(&table, "bottle egress"), "+0.200 ms");
        assert_eq!(added_p50(&table, "bottle egress h2"), "+0.500 ms");
        assert_eq!(added_p50(&table, "mitmproxy h2"), "+49.000 ms");
        assert_eq!(added_p50(&table, "direct h2"), "–");
        assert!(table.contains(
            "| bottle egress h2 | 4×8 | 500 | 500 | 1.500 ms | 1.500 ms | +0.500 ms | +0.500 ms | 1.000 ms | 4 | 0 | 1.00 cores | 1.00 cores | 15.0 µs | 10.0 µs | 1.0 MiB | 2.0 MiB | 0.00 cores |"
        ), "{table}");
        // Without a direct h2 row there is nothing to add to.
        let only_egress_h2 = [
            row(PathKind::DIRECT, 10, 100, None),
            row(PathKind::EGRESS_H2, 10, 900, Some(1.0)),
        ];
        assert_eq!(
            added_p50(&super::table(&only_egress_h2), "bottle egress h2"),
            "–"
        );
    }

    #[test]
    fn issue_3_targets_count_only_http1_rows() {
        assert_eq!(
            verdicts(&rows()),
            "- throughput ≥ 10× mitmproxy: 40.0× — met\n\
             - peak RSS < 1/5 of mitmproxy's: 100.0% of it — NOT met\n\
             - throughput within 25% of direct: 40% of direct — NOT met\n"
        );
        let h2_only: Vec<PathResult> = rows()
            .into_iter()
            .filter(|r| r.kind.http == Http::H2)
            .collect();
        assert_eq!(verdicts(&h2_only), "");
    }

    #[test]
    fn h2_cost_sets_each_proxy_beside_its_http1_row() {
        assert_eq!(
            h2_cost(&rows()),
            "- bottle egress h2: 25% of direct h2's throughput (HTTP/1.1: 40%), 15.0 µs proxy CPU per request (HTTP/1.1: 20.0 µs)\n\
             - mitmproxy h2: 1% of direct h2's throughput (HTTP/1.1: 1%), 1500.0 µs proxy CPU per request (HTTP/1.1: 1000.0 µs)\n\
             - bottle egress h2 against mitmproxy h2: 25.0× the throughput\n"
        );
        let h2_only: Vec<PathResult> = rows()
            .into_iter()
            .filter(|r| r.kind.http == Http::H2)
            .collect();
        assert_eq!(
            h2_cost(&h2_only).lines().next(),
            Some(
                "- bottle egress h2: 25% of direct h2's throughput, 15.0 µs proxy CPU per request"
            )
        );
        let h1_only: Vec<PathResult> = rows()
            .into_iter()
            .filter(|r| r.kind.http == Http::H1)
            .collect();
        assert_eq!(h2_cost(&h1_only), "");
    }

    #[test]
    fn version_lines_name_each_row() {
        let lines = version_checks(&rows()[2..4]);
        assert_eq!(
            lines,
            "- mitmproxy: 10 HTTP/1.1, 0 HTTP/2, 0 other\n- direct h2: 0 HTTP/1.1, 2000 HTTP/2, 0 other\n"
        );
    }

    /// A sweep: the same paths at two connection counts.
    fn sweep() -> Vec<PathResult> {
        let at = |concurrency, mut r: PathResult| {
            r.concurrency = concurrency;
            r
        };
        vec![
            at(1, row(PathKind::DIRECT, 1000, 20, None)),
            at(1, row(PathKind::EGRESS, 400, 70, Some(30.0))),
            at(16, row(PathKind::DIRECT, 1000, 150, None)),
            at(16, row(PathKind::EGRESS, 400, 330, Some(20.0))),
            at(16, row(PathKind::EGRESS_H2, 10, 900, Some(1.0))),
        ]
    }

    #[test]
    fn a_sweep_adds_against_direct_at_the_same_concurrency() {
        let table = table(&sweep());
        let cells: Vec<(String, String)> = table
            .lines()
            .skip(2)
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                (cells[2].to_string(), cells[7].to_string())
            })
            .collect();
        assert_eq!(
            cells,
            [
                ("1", "–"),
                ("1", "+0.050 ms"),
                ("16", "–"),
                ("16", "+0.180 ms"),
                ("16×8", "–"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string())),
            "{table}"
        );
    }

    #[test]
    fn json_has_every_field_of_every_row() {
        let rows = sweep();
        let Value::Array(objects) = json(&rows) else {
            panic!("not an array");
        };
        assert_eq!(objects.len(), 5);
        let names: Vec<&str> = objects[1]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for field in [
            "path",
            "concurrency",
            "h2_streams",
            "requests",
            "req_per_s",
            "p50_ms",
            "p99_ms",
            "added_p50_ms",
            "added_p99_ms",
            "conn_setup_p50_ms",
            "errors",
            "client_origin_cores",
            "proxy_cores",
            "proxy_cpu_per_req_us",
            "origin_cpu_per_req_us",
            "proxy_rss_idle_kib",
            "proxy_rss_peak_kib",
            "other_cores",
        ] {
            assert!(names.contains(&field), "no `{field}` in {names:?}");
        }
        assert_eq!(
            objects[3],
            json!({
                "path": "bottle egress",
                "via": "egress",
                "http": "http/1.1",
                "concurrency": 16,
                "h2_streams": 1,
                "requests": 400,
                "req_per_s": 400.0,
                "p50_ms": 0.33,
                "p99_ms": 0.33,
                "added_p50_ms": 0.18,
                "added_p99_ms": 0.18,
                "conn_setup_p50_ms": 1.0,
                "origin_conns": 4,
                "errors": 0,
                "client_origin_cores": 1.0,
                "proxy_cores": 1.0,
                "proxy_cpu_per_req_us": 20.0,
                "origin_cpu_per_req_us": 10.0,
                "proxy_rss_idle_kib": 1024,
                "proxy_rss_peak_kib": 2048,
                "other_cores": 0.0,
            })
        );
        // A direct row has no proxy and nothing added; an h2 row without a
        // direct h2 row at its concurrency has no baseline.
        assert_eq!(objects[0]["proxy_cores"], Value::Null);
        assert_eq!(objects[0]["added_p50_ms"], Value::Null);
        assert_eq!(objects[0]["proxy_rss_idle_kib"], Value::Null);
        assert_eq!(objects[4]["added_p99_ms"], Value::Null);
        assert_eq!(objects[4]["h2_streams"], 8);
    }
}
