//! One benchmark run: mint the certificates, start the origins, then measure
//! each path in turn (only one proxy is alive at a time, so they never compete
//! for the CPU) and print the table.
//!
//! There are two origins, identical but for ALPN: the HTTP/1.1 paths end at
//! one that offers only `http/1.1`, as in issue 3's runs, because the sidecar
//! negotiates its upstream leg on its own and would otherwise speak HTTP/2 to
//! the origin under an HTTP/1.1 client; the HTTP/2 paths end at one that
//! offers `h2` too. Before and after loading a path the bench checks that its
//! origin answered in that path's HTTP version only, so a proxy that speaks
//! HTTP/2 to the client but HTTP/1.1 upstream fails the run (issue 14).
//!
//! With several `--concurrency` counts, every path is measured at the first
//! count, then every path at the next, and so on (issue 15's sweep); each
//! row's `added` latencies are against direct at its own count.

use crate::client::{self, Load, Target};
use crate::config::{Config, Http, PathKind, Via};
use crate::origin::{self, Origin, OriginRuntime, ORIGIN_THREAD};
use crate::pki::{self, Ca};
use crate::proxy::{self, ProxyProcess, RssSampler};
use crate::report::{self, PathResult, ProxyCost};
use anyhow::{ensure, Context as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;

/// Scratch directory for policy, CAs and proxy logs; removed at the end
/// unless `--keep-dir` or the run failed (then its logs explain why).
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    fn create(keep: bool) -> anyhow::Result<WorkDir> {
        // A random name, private to this user: the directory holds CA keys.
        let path = tempfile::Builder::new()
            .prefix("egress-bench-")
            .tempdir()
            .context("creating a scratch directory")?
            .keep();
        Ok(WorkDir { path, keep })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep || std::thread::panicking() {
            eprintln!(
                "egress-bench: scratch files kept in {}",
                self.path.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// What every path shares.
struct Bench<'a> {
    config: &'a Config,
    dir: &'a Path,
    /// Offers only `http/1.1` by ALPN; the end of the HTTP/1.1 paths.
    origin_h1: &'a Origin,
    /// Offers `h2` and `http/1.1`; the end of the HTTP/2 paths.
    origin_h2: &'a Origin,
    origin_ca: Ca,
    origin_ca_path: PathBuf,
    /// Keep-alive connections of the paths being measured now.
    concurrency: usize,
    /// A listener the allow-list does not name: CONNECT to it must be refused
    /// by policy (it is reachable, so a refusal is not a connection error).
    decoy: SocketAddr,
    /// What each request uploads (`--upload-bytes`).
    upload: bytes::Bytes,
}

pub async fn run(config: &Config) -> anyhow::Result<()> {
    let mut work = WorkDir::create(config.keep_dir)?;
    let result = run_in(config, &work.path).await;
    if result.is_err() {
        work.keep = true;
    }
    result
}

async fn run_in(config: &Config, dir: &Path) -> anyhow::Result<()> {
    let origin_ca = Ca::new("egress-bench origin CA")?;
    let origin_ca_path = dir.join("origin-ca.pem");
    std::fs::write(&origin_ca_path, origin_ca.cert_pem())?;
    let (leaf, key) = origin_ca.leaf("127.0.0.1")?;
    let origins = OriginRuntime::start()?;
    let origin_h1 = origin::start(
        origins.handle(),
        leaf.clone(),
        key.clone_key(),
        config.body_bytes,
        false,
    )?;
    let origin_h2 = origin::start(origins.handle(), leaf, key, config.body_bytes, true)?;

    let decoy = TcpListener::bind("127.0.0.1:0").await?;
    let decoy_addr = decoy.local_addr()?;
    let decoy_task = tokio::spawn(async move {
        while let Ok((tcp, _)) = decoy.accept().await {
            drop(tcp);
        }
    });

    let mut bench = Bench {
        config,
        dir,
        origin_h1: &origin_h1,
        origin_h2: &origin_h2,
        origin_ca,
        origin_ca_path,
        concurrency: config.concurrency[0],
        decoy: decoy_addr,
        upload: client::upload_body(config.upload_bytes),
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "egress-bench: {} connections, {}s warm-up + {}s measured per path (at most {} requests), {}-byte body, {}, sidecar DLP {}, origins https://{} (HTTP/1.1) and https://{} (HTTP/2) on threads of their own",
        counts(&config.concurrency),
        config.warmup.as_secs(),
        config.duration.as_secs(),
        config.max_requests,
        config.body_bytes,
        match config.upload_bytes {
            0 => "GET requests".to_string(),
            n => format!("POST requests of {n} bytes"),
        },
        if config.no_dlp { "off" } else { "on" },
        origin_h1.addr,
        origin_h2.addr,
    );
    if config.paths.iter().any(|p| p.http == Http::H2) {
        println!(
            "h2 paths: {} connections × {} streams each",
            counts(&config.concurrency),
            config.h2_streams,
        );
    }
    println!(
        "CPUs: {cores} usable by this process (client + origin: {}), proxies on {}",
        proxy::cpus_allowed(std::process::id()),
        config
            .proxy_cpus
            .as_deref()
            .unwrap_or("the same (not pinned)"),
    );
    if config.paths.iter().any(|p| p.via == Via::Egress) {
        println!("bottle-sidecar: {}", config.sidecar.display());
    }
    if config.paths.iter().any(|p| p.via == Via::Mitmproxy) {
        println!(
            "mitmdump: {} ({})",
            config.mitmdump.display(),
            proxy::mitmdump_version(&config.mitmdump).await
        );
    }

    let mut rows = Vec::new();
    let mut groups = Vec::new();
    for &concurrency in &config.concurrency {
        bench.concurrency = concurrency;
        let first = rows.len();
        for &kind in &config.paths {
            eprintln!(
                "egress-bench: measuring {} with {concurrency} connections ...",
                kind.name()
            );
            let row = match kind.via {
                Via::Direct => bench.direct(kind).await,
                Via::Egress => bench.egress(kind).await,
                Via::Mitmproxy => bench.mitmproxy(kind).await,
            }
            .with_context(|| format!("path `{}` with {concurrency} connections", kind.name()))?;
            rows.push(row);
        }
        groups.push((concurrency, first..rows.len()));
    }
    decoy_task.abort();

    if let Some(path) = &config.json {
        let text = serde_json::to_string_pretty(&report::json(&rows))?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("writing --json {}", path.display()))?;
    }
    println!();
    print!("{}", report::table(&rows));
    let checks = report::allow_list_checks(&rows);
    if !checks.is_empty() {
        println!("\nAllow-list in force (checked before each proxy's load):");
        print!("{checks}");
    }
    println!("\nRequests the origin answered, by HTTP version (checked per path):");
    print!("{}", report::version_checks(&rows));
    let contended = report::contention(&rows);
    if !contended.is_empty() {
        println!("\n{contended}");
    }
    for (concurrency, range) in groups {
        let group = &rows[range];
        let at = if config.concurrency.len() > 1 {
            let s = if concurrency == 1 { "" } else { "s" };
            format!(", {concurrency} connection{s}")
        } else {
            String::new()
        };
        let verdicts = report::verdicts(group);
        if !verdicts.is_empty() {
            println!("\nIssue 3 targets (HTTP/1.1 rows{at}):");
            print!("{verdicts}");
        }
        let h2 = report::h2_cost(group);
        if !h2.is_empty() {
            println!("\nHTTP/2 (issue 14), each against direct h2{at}:");
            print!("{h2}");
        }
    }
    if let Some(path) = &config.json {
        println!("\nRows written to {}", path.display());
    }
    Ok(())
}

/// `16`, or `1, 4, 16 and 64` for a sweep.
fn counts(list: &[usize]) -> String {
    match list {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => {
            let init: Vec<String> = init.iter().map(usize::to_string).collect();
            format!("{} and {last}", init.join(", "))
        }
    }
}

impl Bench<'_> {
    /// Where the paths of `http` end.
    fn origin(&self, http: Http) -> &Origin {
        match http {
            Http::H1 => self.origin_h1,
            Http::H2 => self.origin_h2,
        }
    }

    fn load(&self, http: Http) -> Load {
        Load {
            concurrency: self.concurrency,
            streams: match http {
                Http::H1 => 1,
                Http::H2 => self.config.h2_streams,
            },
            warmup: self.config.warmup,
            duration: self.config.duration,
            max_requests: self.config.max_requests,
        }
    }

    /// One request through `target`, which must reach the origin in `http`.
    async fn probe(&self, target: &Target, http: Http) -> anyhow::Result<()> {
        let origin = self.origin(http);
        let before = origin.versions();
        let body = client::probe(target).await?;
        ensure!(body == self.config.body_bytes, "origin sent {body} bytes");
        origin::check_versions(http, origin.versions().since(before), 1)
    }

    async fn direct(&self, kind: PathKind) -> anyhow::Result<PathResult> {
        let target = Arc::new(
            Target::new(
                self.origin(kind.http).addr,
                None,
                self.origin_ca.roots()?,
                kind.http,
            )?
            .with_upload(self.upload.clone()),
        );
        self.probe(&target, kind.http).await?;
        let me = proxy::read_proc(std::process::id())?;
        let machine = proxy::machine_busy()?;
        let origin_cpu = origin::threads_cpu(ORIGIN_THREAD)?;
        let accepted = self.origin(kind.http).accepted();
        let versions = self.origin(kind.http).versions();
        let started = Instant::now();
        let load = client::drive(target, &self.load(kind.http)).await?;
        let origin_cpu = origin::threads_cpu(ORIGIN_THREAD)?.saturating_sub(origin_cpu);
        let bench_cpu_cores = cores(me, started)?;
        let machine_cpu_cores = machine_cores(machine, started)?;
        let origin_versions = self.origin(kind.http).versions().since(versions);
        origin::check_versions(kind.http, origin_versions, load.answered)?;
        Ok(PathResult {
            kind,
            concurrency: self.concurrency,
            h2_streams: self.load(kind.http).streams,
            origin_cpu_us_per_request: per_request_us(origin_cpu, load.answered),
            load,
            origin_versions,
            origin_connections: self.origin(kind.http).accepted() - accepted,
            bench_cpu_cores,
            other_cpu_cores: machine_cpu_cores - bench_cpu_cores,
            proxy: None,
        })
    }

    async fn egress(&self, kind: PathKind) -> anyhow::Result<PathResult> {
        let bottle_ca = Ca::new("egress-bench bottle CA")?;
        let mut sidecar = proxy::spawn_sidecar(
            &self.config.sidecar,
            self.config.proxy_cpus.as_deref(),
            self.dir,
            self.origin(kind.http).addr,
            &bottle_ca,
            self.origin_ca.cert_pem(),
            !self.config.no_dlp,
        )?;
        sidecar.wait_ready(|| true).await?;
        // The client trusts only the bottle CA: a handshake that succeeds was
        // terminated by the sidecar, i.e. intercepted.
        let target = Arc::new(
            Target::new(
                self.origin(kind.http).addr,
                Some(sidecar.addr),
                bottle_ca.roots()?,
                kind.http,
            )?
            .with_upload(self.upload.clone()),
        );
        self.through(kind, sidecar, target).await
    }

    async fn mitmproxy(&self, kind: PathKind) -> anyhow::Result<PathResult> {
        let ca_path = proxy::mitm_ca_path(self.dir);
        let mut mitm = proxy::spawn_mitmdump(
            &self.config.mitmdump,
            self.config.proxy_cpus.as_deref(),
            self.dir,
            self.origin(kind.http).addr,
            &self.origin_ca_path,
        )?;
        mitm.wait_ready(|| ca_path.is_file()).await?;
        let target = Arc::new(
            Target::new(
                self.origin(kind.http).addr,
                Some(mitm.addr),
                pki::roots_from_pem_file(&ca_path)?,
                kind.http,
            )?
            .with_upload(self.upload.clone()),
        );
        self.through(kind, mitm, target).await
    }

    /// Checks the proxy enforces the allow-list and intercepts, then loads it
    /// while watching its memory and CPU.
    async fn through(
        &self,
        kind: PathKind,
        mut process: ProxyProcess,
        target: Arc<Target>,
    ) -> anyhow::Result<PathResult> {
        let denied = client::connect_status(process.addr, &self.decoy.to_string())
            .await
            .with_context(|| format!("CONNECT to the non-allowed {}", self.decoy))?;
        ensure!(
            denied != 200,
            "{} let CONNECT to the non-allowed {} through: the allow-list is not in force",
            process.name,
            self.decoy
        );
        self.probe(&target, kind.http).await.with_context(|| {
            format!("first request through {}\n{}", process.name, process.logs())
        })?;

        let pid = process.pid();
        let idle = proxy::read_proc(pid)?;
        let sampler = RssSampler::start(pid);
        let me = proxy::read_proc(std::process::id())?;
        let machine = proxy::machine_busy()?;
        let origin_cpu = origin::threads_cpu(ORIGIN_THREAD)?;
        let accepted = self.origin(kind.http).accepted();
        let versions = self.origin(kind.http).versions();
        let started = Instant::now();
        let load = client::drive(target, &self.load(kind.http)).await;
        let wall = started.elapsed();
        let after = proxy::read_proc(pid);
        let origin_cpu = origin::threads_cpu(ORIGIN_THREAD)?.saturating_sub(origin_cpu);
        let bench_cpu_cores = cores(me, started)?;
        let machine_cpu_cores = machine_cores(machine, started)?;
        let peak = sampler.finish().await;
        process.check_alive()?;
        let load = load.with_context(|| process.logs())?;
        let after = after?;
        let name = process.name;
        process.stop().await;
        let origin_versions = self.origin(kind.http).versions().since(versions);
        origin::check_versions(kind.http, origin_versions, load.answered)
            .with_context(|| format!("through {name}"))?;
        let cpu = after.cpu.saturating_sub(idle.cpu);
        let cpu_cores = cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9);
        let answered = load.answered;
        Ok(PathResult {
            kind,
            concurrency: self.concurrency,
            h2_streams: self.load(kind.http).streams,
            origin_cpu_us_per_request: per_request_us(origin_cpu, load.answered),
            origin_versions,
            origin_connections: self.origin(kind.http).accepted() - accepted,
            bench_cpu_cores,
            other_cpu_cores: machine_cpu_cores - bench_cpu_cores - cpu_cores,
            load,
            proxy: Some(ProxyCost {
                idle_rss_kib: idle.rss_kib,
                peak_rss_kib: peak.max(after.hwm_kib),
                cpu_cores,
                cpu_us_per_request: per_request_us(cpu, answered),
                denied_status: denied,
            }),
        })
    }
}

/// `cpu` spread over `answered` requests, in µs.
fn per_request_us(cpu: std::time::Duration, answered: u64) -> f64 {
    cpu.as_secs_f64() * 1e6 / answered.max(1) as f64
}

/// This process's CPU time since `before` was read at `started`, in cores.
fn cores(before: proxy::ProcStats, started: Instant) -> anyhow::Result<f64> {
    let now = proxy::read_proc(std::process::id())?;
    let cpu = now.cpu.saturating_sub(before.cpu);
    Ok(cpu.as_secs_f64() / started.elapsed().as_secs_f64().max(1e-9))
}

/// The whole machine's busy CPU since `before` was read at `started`, in cores.
fn machine_cores(before: std::time::Duration, started: Instant) -> anyhow::Result<f64> {
    let cpu = proxy::machine_busy()?.saturating_sub(before);
    Ok(cpu.as_secs_f64() / started.elapsed().as_secs_f64().max(1e-9))
}
