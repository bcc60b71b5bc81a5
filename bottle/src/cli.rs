//! The command line: flags are parsed here and turned into calls on the
//! library (config → plan → lifecycle). Nothing below this module sees a flag.

use crate::config::{self, ConfigErrors};
use crate::lifecycle::{self, LifecycleError};
use crate::plan::PlanError;
use crate::report::Reporter;
use bottle_runtimes::{CapabilityState, ExecSpec, Probe, Runtime, RuntimeError, RuntimeKind};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Parser)]
#[command(
    name = "bottle",
    version,
    about = "Run an AI coding agent in a sandbox it cannot talk its way out of."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Runtime names as flags and config spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeArg {
    Auto,
    Docker,
    AppleContainer,
    Smolvm,
}

/// Flags of `bottle up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// The bottle's config (default: ./bottle.toml, else the built-in deny-all bottle).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Name of the bottle (default: `name` in the config, else the directory's name).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, value_enum, env = "BOTTLE_RUNTIME")]
    pub runtime: Option<RuntimeArg>,
    /// Print the plan and stop before touching the runtime.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result (or the plan) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress output.
    #[arg(short, long)]
    pub quiet: bool,
    /// Run `bottle verify` right after start; remove the bottle if any check fails.
    #[arg(long)]
    pub verify: bool,
    /// Apply a config that grants more than the last one you accepted.
    #[arg(long)]
    pub accept_changes: bool,
    /// Run despite a named weakness the probe found (see `bottle probe`);
    /// stays visible in `bottle ps` for the life of the bottle.
    #[arg(long = "accept-weakness", value_name = "NAME")]
    pub accept_weakness: Vec<String>,
    /// Mount this source although it is one bottle never mounts silently
    /// (`/`, your home, ~/.ssh, /etc, /run, an engine socket, …). Name the
    /// exact path the refusal printed; asked again at every `up`.
    #[arg(long = "allow-mount", value_name = "PATH")]
    pub allow_mount: Vec<PathBuf>,
    /// Let the agent write as root in read-write mounts owned by root
    /// (setuid-root files become possible there); asked again at every `up`.
    #[arg(long)]
    pub allow_root_owner: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented bottle.toml in the current directory.
    Init {
        /// Where to write it.
        #[arg(short = 'f', long = "file", default_value = "bottle.toml")]
        file: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Create a bottle: networks, sidecar, agent.
    Up(UpArgs),
    /// Check the sandbox from where the agent sits, with probes it cannot alter: every escape tried, with controls.
    Verify {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Run a command in the bottle's agent; its exit code becomes bottle's.
    Exec {
        /// Keep stdin open.
        #[arg(short, long)]
        interactive: bool,
        /// Allocate a terminal.
        #[arg(short, long)]
        tty: bool,
        /// Working directory inside the agent.
        #[arg(short, long)]
        workdir: Option<String>,
        /// KEY=VALUE to add to the command's environment.
        #[arg(short, long = "env")]
        env: Vec<String>,
        name: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Remove everything of a bottle. Idempotent.
    Down {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List bottles.
    Ps {
        #[arg(long)]
        json: bool,
    },
    /// Show a bottle's logs.
    Logs {
        name: String,
        #[arg(long, value_enum, default_value = "agent")]
        service: Service,
        /// Raw JSON lines (sidecar services).
        #[arg(long)]
        json: bool,
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        tail: Option<usize>,
    },
    /// Apply an edited bottle.toml to a running bottle without restarting it.
    Reload {
        name: String,
        /// The config to apply (default: the one the bottle was brought up from).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Apply a config that grants more than the last one you accepted.
        #[arg(long)]
        accept_changes: bool,
    },
    /// Measure what a runtime can do.
    Probe {
        #[arg(long, value_enum, env = "BOTTLE_RUNTIME")]
        runtime: Option<RuntimeArg>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Service {
    Agent,
    Sidecar,
    Egress,
    GitGate,
    Supervise,
}

/// Everything the CLI can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Refused(#[from] crate::runtime_select::RefusalReason),
    #[error(transparent)]
    NoRuntime(#[from] crate::runtime_select::NoRuntime),
    #[error("{path} already exists; pass --force to overwrite it")]
    InitExists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`-e {0}`: write KEY=VALUE")]
    BadEnv(String),
    #[error("--tty needs a terminal on stdin; drop -t when piping")]
    NotATerminal,
    #[error(
        "the {0} service is not part of this version's sidecar; available: agent, sidecar, egress"
    )]
    NoService(&'static str),
    #[error("cannot read the current directory: {0}")]
    Cwd(std::io::Error),
    #[error("terminal: {0}")]
    Terminal(std::io::Error),
    #[error("cannot read {path}: {source}")]
    ReadLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing to start bottle `{name}` without your consent: {count} reason(s) listed above; an agent may have written them\n  fix: review them, then rerun with --accept-changes")]
    Widened { name: String, count: usize },
    #[error(
        "bottle `{name}` failed {failed} isolation check(s) and was removed; see the table above"
    )]
    VerifyFailed { name: String, failed: usize },
    #[error("bottle `{name}` has no recorded config file\n  fix: pass it with -f FILE")]
    NoConfigToReload { name: String },
}

/// Runs one command; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32, CliError> {
    match cli.command {
        Command::Init { file, force } => init(&file, force),
        Command::Up(args) => up(args).await,
        Command::Verify { name, json } => {
            let rt = connect(bottle_runtime(&name)).await?;
            let report = crate::verify::verify(rt.as_ref(), &name, "").await?;
            print_verify(&report, json);
            Ok(if report.failed == 0 { 0 } else { 1 })
        }
        Command::Exec {
            interactive,
            tty,
            workdir,
            env,
            name,
            cmd,
        } => exec(&name, cmd, interactive, tty, workdir, env).await,
        Command::Down { name, json } => {
            let rt = connect(bottle_runtime(&name)).await?;
            let mut report = Reporter::new(json);
            let removed = lifecycle::down(rt.as_ref(), &name, &mut report).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "name": name, "removed": removed })
                );
            } else if removed.is_empty() {
                eprintln!("bottle `{name}`: nothing to remove");
            } else {
                eprintln!("bottle `{name}` removed ({} resources)", removed.len());
            }
            Ok(0)
        }
        Command::Ps { json } => {
            // Every runtime that answers; one that is absent has no bottles.
            let mut list = Vec::new();
            for kind in [
                RuntimeKind::Docker,
                RuntimeKind::AppleContainer,
                RuntimeKind::Smolvm,
            ] {
                if let Ok(rt) = connect(kind).await {
                    list.extend(lifecycle::ps(rt.as_ref()).await?);
                }
            }
            if json {
                println!("{}", serde_json::to_string(&list).unwrap_or_default());
            } else {
                println!(
                    "{:<20} {:<16} {:<10} {:<10} {:<10} {:<15} {:<15} ACCEPTED WEAKNESS",
                    "NAME", "RUNTIME", "AGENT", "SIDECAR", "HEALTH", "AGENT IP", "SIDECAR IP"
                );
                for b in list {
                    let ip = |i: Option<std::net::Ipv4Addr>| {
                        i.map(|i| i.to_string()).unwrap_or_else(|| "-".into())
                    };
                    println!(
                        "{:<20} {:<16} {:<10} {:<10} {:<10} {:<15} {:<15} {}",
                        b.name,
                        b.runtime,
                        b.agent,
                        b.sidecar,
                        b.sidecar_health,
                        ip(b.agent_ip),
                        ip(b.sidecar_ip),
                        if b.accepted_weaknesses.is_empty() {
                            "-".to_string()
                        } else {
                            b.accepted_weaknesses.join(",")
                        }
                    );
                }
            }
            Ok(0)
        }
        Command::Logs {
            name,
            service,
            json,
            follow,
            tail,
        } => logs(&name, service, json, follow, tail).await,
        Command::Probe { runtime, json } => probe(runtime, json).await,
        Command::Reload {
            name,
            file,
            accept_changes,
        } => reload(&name, file, accept_changes).await,
    }
}

fn init(file: &Path, force: bool) -> Result<i32, CliError> {
    if file.exists() && !force {
        return Err(CliError::InitExists {
            path: file.to_path_buf(),
        });
    }
    std::fs::write(file, config::INIT_TEMPLATE).map_err(|source| CliError::Write {
        path: file.to_path_buf(),
        source,
    })?;
    eprintln!(
        "wrote {} (deny-all egress; edit it, then `bottle up`)",
        file.display()
    );
    Ok(0)
}

/// Flag, else `BOTTLE_RUNTIME` (clap reads it), else the config; `None`
/// means auto.
fn choose_runtime(flag: Option<RuntimeArg>, config: Option<RuntimeKind>) -> Option<RuntimeKind> {
    match flag {
        Some(RuntimeArg::Docker) => Some(RuntimeKind::Docker),
        Some(RuntimeArg::AppleContainer) => Some(RuntimeKind::AppleContainer),
        Some(RuntimeArg::Smolvm) => Some(RuntimeKind::Smolvm),
        Some(RuntimeArg::Auto) => None,
        None => config,
    }
}

async fn connect(kind: RuntimeKind) -> Result<Box<dyn Runtime>, CliError> {
    match crate::runtime_select::connect(kind).await {
        Err(RuntimeError::Unavailable { .. })
            if kind == RuntimeKind::AppleContainer && offer_apple_start().await =>
        {
            Ok(crate::runtime_select::connect(kind).await?)
        }
        other => Ok(other?),
    }
}

/// The Apple container service is installed but stopped (it does not start
/// again after a reboot): offer to start it, at a terminal only.
async fn offer_apple_start() -> bool {
    use bottle_runtimes::apple::{AppleRuntime, ServiceState};
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return false;
    }
    if !matches!(
        AppleRuntime::service_status().await,
        Ok(ServiceState::Down { .. })
    ) {
        return false;
    }
    eprint!("the Apple container service is not running; start it now (container system start --enable-kernel-install)? [y/N] ");
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        return false;
    }
    match AppleRuntime::start_service().await {
        Ok(()) => true,
        Err(e) => {
            eprintln!("bottle: could not start it: {e}");
            false
        }
    }
}

/// The runtime bottle `name` was brought up on (docker when unrecorded).
fn bottle_runtime(name: &str) -> RuntimeKind {
    lifecycle::recorded(name)
        .map(|r| r.runtime)
        .unwrap_or(RuntimeKind::Docker)
}

fn load_config(file: Option<PathBuf>) -> Result<(config::Config, String), CliError> {
    let cwd = std::env::current_dir().map_err(CliError::Cwd)?;
    let path = file.or_else(|| {
        let p = cwd.join("bottle.toml");
        p.exists().then_some(p)
    });
    match path {
        Some(p) => {
            let cfg = config::load(&p)?;
            Ok((cfg, p.display().to_string()))
        }
        None => Ok((
            config::default_for_dir(&cwd),
            "built-in default (deny all egress)".into(),
        )),
    }
}

async fn up(args: UpArgs) -> Result<i32, CliError> {
    let UpArgs {
        file,
        name,
        runtime,
        dry_run,
        json,
        quiet,
        verify,
        accept_changes,
        accept_weakness,
        allow_mount,
        allow_root_owner,
    } = args;
    let (cfg, source) = load_config(file)?;
    let chosen = choose_runtime(runtime, crate::plan::config_runtime(&cfg));
    let kind = chosen.unwrap_or(RuntimeKind::Docker);
    let grants = crate::mounts::Grants {
        mounts: allow_mount,
        root_owner: allow_root_owner,
    };
    let plan = crate::plan::build(&cfg, &source, name.as_deref(), kind, &grants)?;
    if dry_run {
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&plan).unwrap_or_default()
            );
        } else {
            print!("{}", crate::plan::render(&plan));
        }
        return Ok(0);
    }
    let pinned = crate::pin::Pinned::of(&plan);
    consent(&plan, &pinned, accept_changes)?;
    let mut report = Reporter::new(quiet || json);
    for note in &plan.notes {
        report.detail(&format!("note: {note}"));
    }
    let rt = match chosen {
        Some(kind) => {
            report.step(&format!("connecting to {kind}"));
            connect(kind).await?
        }
        None => {
            report.step("choosing a runtime (auto)");
            let sel = crate::runtime_select::auto(&accept_weakness).await?;
            for (k, why) in &sel.skipped {
                report.detail(&format!("skipped {k}: {why}"));
            }
            sel.runtime
        }
    };
    let plan = crate::plan::Plan {
        runtime: rt.kind(),
        ..plan
    };
    report.step("preparing images");
    let images = lifecycle::prepare_images(rt.as_ref(), &plan.agent.image, &mut report).await?;
    report.step("probing the runtime");
    let probe = rt.probe(Some(&images.sidecar)).await;
    let accepted: Vec<String> = crate::runtime_select::check_weaknesses(&probe, &accept_weakness)?
        .iter()
        .map(ToString::to_string)
        .collect();
    report.detail(&format!(
        "{} {}: every required capability present{}",
        probe.runtime,
        probe.version.as_deref().unwrap_or("?"),
        if accepted.is_empty() {
            String::new()
        } else {
            format!("; ACCEPTED WEAKNESS: {}", accepted.join(", "))
        }
    ));
    let summary = lifecycle::up(rt.as_ref(), &plan, &images, &accepted, &mut report).await?;
    crate::pin::accept(
        &crate::state::StateDir::for_bottle(&plan.name).map_err(LifecycleError::from)?,
        &pinned,
    )
    .map_err(LifecycleError::from)?;
    if verify {
        report.step("verifying the sandbox (a probe in the agent's network, the runtime's inspect data, the host)");
        let checked = crate::verify::verify(rt.as_ref(), &plan.name, &images.sidecar).await;
        let failed = match &checked {
            Ok(r) => {
                if !json {
                    eprint!("{}", crate::verify::render(r));
                }
                r.failed
            }
            Err(e) => {
                report.detail(&format!("verify could not run: {e}"));
                1
            }
        };
        if failed > 0 {
            report.step("verify failed; removing the bottle");
            lifecycle::down(rt.as_ref(), &plan.name, &mut report).await?;
            if json {
                if let Ok(r) = &checked {
                    print_verify(r, true);
                }
            }
            return Err(CliError::VerifyFailed {
                name: plan.name.clone(),
                failed,
            });
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    } else {
        let mut out = std::io::stdout().lock();
        let ip = |m: &std::collections::BTreeMap<String, std::net::Ipv4Addr>, k: &str| {
            m.get(k)
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(out, "bottle `{}` is up ({})", summary.name, summary.runtime);
        let _ = writeln!(
            out,
            "  agent    {} ({}) at {} on {} only",
            summary.agent.name,
            summary.agent.image,
            ip(&summary.agent.ipv4, &summary.internal_network.name),
            summary.internal_network.name
        );
        let _ = writeln!(
            out,
            "  sidecar  {} at {} (internal), proxy {}",
            summary.sidecar.name,
            ip(&summary.sidecar.ipv4, &summary.internal_network.name),
            summary.proxy
        );
        let _ = writeln!(
            out,
            "  networks {} ({}, internal, no host address), {} ({}, egress)",
            summary.internal_network.name,
            summary.internal_network.subnet.as_deref().unwrap_or("?"),
            summary.egress_network.name,
            summary.egress_network.subnet.as_deref().unwrap_or("?")
        );
        let _ = writeln!(
            out,
            "  egress   {}",
            if summary.allow.is_empty() {
                "deny all".to_string()
            } else {
                format!(
                    "allow {} (everything else denied)",
                    summary.allow.join(", ")
                )
            }
        );
        let l = &summary.limits;
        let _ = writeln!(
            out,
            "  limits   agent: cpus {}, memory {} MiB, pids {}, runs as {}; sidecar: {} connections ({} per client), deadlines {}s handshake / {}s body / {}s idle",
            l.cpus.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            l.memory_bytes.map(|m| m >> 20).unwrap_or_default(),
            l.pids.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            summary.agent_user.as_deref().unwrap_or("the image's user"),
            l.sidecar.max_connections,
            l.sidecar.max_connections_per_client,
            l.sidecar.handshake_timeout_secs,
            l.sidecar.body_timeout_secs,
            l.sidecar.idle_timeout_secs,
        );
        let _ = writeln!(
            out,
            "  next     bottle exec {} -- bash   |   bottle down {}",
            summary.name, summary.name
        );
    }
    Ok(0)
}

fn print_verify(report: &crate::verify::Report, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        );
    } else {
        print!("{}", crate::verify::render(report));
    }
}

async fn exec(
    name: &str,
    cmd: Vec<String>,
    interactive: bool,
    tty: bool,
    workdir: Option<String>,
    env: Vec<String>,
) -> Result<i32, CliError> {
    let env = env
        .into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CliError::BadEnv(kv)),
        })
        .collect::<Result<_, _>>()?;
    if tty && !std::io::stdin().is_terminal() {
        return Err(CliError::NotATerminal);
    }
    let rt = connect(bottle_runtime(name)).await?;
    let agent = lifecycle::find_container(rt.as_ref(), name, bottle_runtimes::Role::Agent).await?;
    if agent.state != bottle_runtimes::ContainerState::Running {
        return Err(LifecycleError::AgentNotRunning {
            name: name.into(),
            state: format!("{:?}", agent.state).to_lowercase(),
        }
        .into());
    }
    let size = if tty {
        crossterm::terminal::size().ok().map(|(c, r)| (r, c))
    } else {
        None
    };
    let spec = ExecSpec {
        cmd,
        env,
        workdir,
        user: None,
        stdin: interactive,
        tty,
        size,
    };
    if tty {
        crossterm::terminal::enable_raw_mode().map_err(CliError::Terminal)?;
    }
    let result = rt.exec_attached(&agent.id, &spec).await;
    if tty {
        let _ = crossterm::terminal::disable_raw_mode();
    }
    let code = result?;
    Ok(i32::try_from(code).unwrap_or(1))
}

async fn logs(
    name: &str,
    service: Service,
    json: bool,
    follow: bool,
    tail: Option<usize>,
) -> Result<i32, CliError> {
    let (role, filter) = match service {
        Service::Agent => (bottle_runtimes::Role::Agent, None),
        Service::Sidecar => (bottle_runtimes::Role::Sidecar, None),
        Service::Egress => (bottle_runtimes::Role::Sidecar, Some("egress")),
        Service::GitGate => return Err(CliError::NoService("git-gate")),
        Service::Supervise => return Err(CliError::NoService("supervise")),
    };
    if filter == Some("egress") {
        // The audit log lives in the state dir, so it outlives the sidecar.
        let path = crate::state::StateDir::for_bottle(name)
            .map_err(LifecycleError::from)?
            .audit_path();
        let mut sink = crate::logview::LogSink::new(None, json, std::io::stdout());
        crate::logview::follow_file(&path, follow, tail, &mut sink)
            .await
            .map_err(|source| CliError::ReadLog { path, source })?;
        sink.finish();
        return Ok(0);
    }
    let rt = connect(bottle_runtime(name)).await?;
    let c = lifecycle::find_container(rt.as_ref(), name, role).await?;
    let mut sink = crate::logview::LogSink::new(filter, json, std::io::stdout());
    rt.logs(&c.id, follow, tail, &mut sink).await?;
    sink.finish();
    Ok(0)
}

/// Refuses a plan that the user has not accepted for this bottle's identity
/// (see [`crate::pin::judge`]) unless they say so (flag, or y at a terminal
/// prompt). Prints every reason.
fn consent(
    plan: &crate::plan::Plan,
    pinned: &crate::pin::Pinned,
    accept_changes: bool,
) -> Result<(), CliError> {
    let pins = crate::pin::load_all();
    let widened = crate::pin::judge(&plan.name, pinned, &pins);
    if widened.is_empty() {
        return Ok(());
    }
    eprintln!(
        "bottle `{}`: {} asks for more than you accepted:",
        plan.name, plan.config_source
    );
    for w in &widened {
        eprintln!("  + {w}");
    }
    if accept_changes {
        eprintln!("  accepted (--accept-changes)");
        return Ok(());
    }
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        eprint!("apply these changes? [y/N] ");
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if matches!(answer.trim(), "y" | "Y" | "yes") {
            return Ok(());
        }
    }
    Err(CliError::Widened {
        name: plan.name.clone(),
        count: widened.len(),
    })
}

async fn reload(name: &str, file: Option<PathBuf>, accept_changes: bool) -> Result<i32, CliError> {
    let file = file
        .or_else(|| lifecycle::recorded_source(name))
        .ok_or_else(|| CliError::NoConfigToReload { name: name.into() })?;
    let cfg = config::load(&file)?;
    let state = crate::state::StateDir::for_bottle(name).map_err(LifecycleError::from)?;
    let old = crate::pin::load(&state);
    // Mounts, image and the agent's limits do not change on reload: the
    // running agent keeps what it was started with, so those stay as pinned
    // (and the sources it already has are not refused again).
    let grants = crate::mounts::Grants {
        mounts: old
            .iter()
            .flat_map(|p| p.mounts.iter().map(|m| m.source.clone()))
            .collect(),
        root_owner: true,
    };
    let plan = crate::plan::build(
        &cfg,
        &file.display().to_string(),
        Some(name),
        bottle_runtime(name),
        &grants,
    )?;
    let pinned = crate::pin::Pinned::for_reload(&plan, old.as_ref());
    consent(&plan, &pinned, accept_changes)?;
    let rt = connect(bottle_runtime(name)).await?;
    let sidecar =
        lifecycle::find_container(rt.as_ref(), name, bottle_runtimes::Role::Sidecar).await?;
    let summary = lifecycle::reload(rt.as_ref(), &plan, &sidecar).await?;
    crate::pin::accept(&state, &pinned).map_err(LifecycleError::from)?;
    eprintln!("{summary}");
    Ok(0)
}

async fn probe(runtime: Option<RuntimeArg>, json: bool) -> Result<i32, CliError> {
    let kind = choose_runtime(runtime, None).unwrap_or(RuntimeKind::Docker);
    let probe = match connect(kind).await {
        Ok(rt) => {
            let mut report = Reporter::new(json);
            report.step("preparing the sidecar image the probe runs its helpers from");
            let helper = match lifecycle::prepare_images(
                rt.as_ref(),
                crate::images::DEFAULT_AGENT_IMAGE,
                &mut report,
            )
            .await
            {
                Ok(images) => Some(images.sidecar),
                Err(e) => {
                    report.detail(&format!("cannot prepare the sidecar image: {e}"));
                    None
                }
            };
            report.step(&format!("probing {kind}"));
            rt.probe(helper.as_deref()).await
        }
        Err(CliError::Runtime(RuntimeError::Unavailable { reason, fix, .. })) => {
            Probe::absent(kind, "-".into(), format!("{reason} (fix: {fix})"))
        }
        Err(e) => return Err(e),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&probe).unwrap_or_default()
        );
    } else {
        println!("runtime   {}", probe.runtime);
        println!("endpoint  {}", probe.endpoint);
        println!(
            "version   {}",
            probe.version.as_deref().unwrap_or("(not reachable)")
        );
        println!();
        println!(
            "{:<30} {:<8} {:<9} {:<9} DETAIL",
            "CAPABILITY", "STATE", "HOW", "REQUIRED"
        );
        for c in &probe.capabilities {
            let state = match c.state {
                CapabilityState::Yes => "yes",
                CapabilityState::No => "NO",
                CapabilityState::Unknown => "unknown",
            };
            println!(
                "{:<30} {:<8} {:<9} {:<9} {}",
                c.name,
                state,
                c.how,
                if c.required { "yes" } else { "no" },
                c.detail
            );
        }
        match probe.first_missing() {
            None => println!("\nresult    bottles can run on {}", probe.runtime),
            Some(c) => println!(
                "\nresult    `bottle up` would refuse: {} is not available",
                c.name
            ),
        }
    }
    Ok(if probe.first_missing().is_none() {
        0
    } else {
        1
    })
}
