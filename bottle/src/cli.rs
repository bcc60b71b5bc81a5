//! The command line: flags are parsed here and turned into calls on the
//! library (config → plan → lifecycle). Nothing below this module sees a flag.

use crate::config::{self, ConfigErrors};
use crate::lifecycle::{self, LifecycleError};
use crate::plan::PlanError;
use crate::report::Reporter;
use bottle_runtimes::docker::DockerRuntime;
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
    Up {
        /// The bottle's config (default: ./bottle.toml, else the built-in deny-all bottle).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Name of the bottle (default: `name` in the config, else the directory's name).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_enum, env = "BOTTLE_RUNTIME")]
        runtime: Option<RuntimeArg>,
        /// Print the plan and stop before touching the runtime.
        #[arg(long)]
        dry_run: bool,
        /// Print the result (or the plan) as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// No progress output.
        #[arg(short, long)]
        quiet: bool,
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
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("runtime `{0}` is not available in this version of bottle yet; use --runtime docker")]
    RuntimeNotBuilt(RuntimeKind),
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
}

/// Runs one command; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32, CliError> {
    match cli.command {
        Command::Init { file, force } => init(&file, force),
        Command::Up {
            file,
            name,
            runtime,
            dry_run,
            json,
            quiet,
        } => up(file, name, runtime, dry_run, json, quiet).await,
        Command::Exec {
            interactive,
            tty,
            workdir,
            env,
            name,
            cmd,
        } => exec(&name, cmd, interactive, tty, workdir, env).await,
        Command::Down { name, json } => {
            let rt = connect(RuntimeKind::Docker).await?;
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
            let rt = connect(RuntimeKind::Docker).await?;
            let list = lifecycle::ps(rt.as_ref()).await?;
            if json {
                println!("{}", serde_json::to_string(&list).unwrap_or_default());
            } else {
                println!(
                    "{:<20} {:<10} {:<10} {:<10} {:<10} {:<15} {:<15}",
                    "NAME", "RUNTIME", "AGENT", "SIDECAR", "HEALTH", "AGENT IP", "SIDECAR IP"
                );
                for b in list {
                    let ip = |i: Option<std::net::Ipv4Addr>| {
                        i.map(|i| i.to_string()).unwrap_or_else(|| "-".into())
                    };
                    println!(
                        "{:<20} {:<10} {:<10} {:<10} {:<10} {:<15} {:<15}",
                        b.name,
                        b.runtime,
                        b.agent,
                        b.sidecar,
                        b.sidecar_health,
                        ip(b.agent_ip),
                        ip(b.sidecar_ip)
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

/// Flag, else `BOTTLE_RUNTIME` (clap reads it), else the config, else auto.
fn choose_runtime(flag: Option<RuntimeArg>, config: Option<RuntimeKind>) -> RuntimeKind {
    match flag {
        Some(RuntimeArg::Docker) => RuntimeKind::Docker,
        Some(RuntimeArg::AppleContainer) => RuntimeKind::AppleContainer,
        Some(RuntimeArg::Smolvm) => RuntimeKind::Smolvm,
        // auto: docker is the only runtime this version drives.
        Some(RuntimeArg::Auto) | None => config.unwrap_or(RuntimeKind::Docker),
    }
}

async fn connect(kind: RuntimeKind) -> Result<Box<dyn Runtime>, CliError> {
    match kind {
        RuntimeKind::Docker => Ok(Box::new(DockerRuntime::connect().await?)),
        other => Err(CliError::RuntimeNotBuilt(other)),
    }
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

async fn up(
    file: Option<PathBuf>,
    name: Option<String>,
    runtime: Option<RuntimeArg>,
    dry_run: bool,
    json: bool,
    quiet: bool,
) -> Result<i32, CliError> {
    let (cfg, source) = load_config(file)?;
    let kind = choose_runtime(runtime, crate::plan::config_runtime(&cfg));
    let plan = crate::plan::build(&cfg, &source, name.as_deref(), kind)?;
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
    let mut report = Reporter::new(quiet || json);
    for note in &plan.notes {
        report.detail(&format!("note: {note}"));
    }
    report.step(&format!("connecting to {kind}"));
    let rt = connect(kind).await?;
    report.step("preparing images");
    let images = lifecycle::prepare_images(rt.as_ref(), &plan.agent.image, &mut report).await?;
    report.step("probing the runtime");
    let probe = rt.probe(Some(&images.sidecar)).await;
    lifecycle::check_probe(&probe)?;
    report.detail(&format!(
        "{} {}: every required capability present",
        probe.runtime,
        probe.version.as_deref().unwrap_or("?")
    ));
    let summary = lifecycle::up(rt.as_ref(), &plan, &images, &mut report).await?;
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
        let _ = writeln!(
            out,
            "  next     bottle exec {} -- bash   |   bottle down {}",
            summary.name, summary.name
        );
    }
    Ok(0)
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
    let rt = connect(RuntimeKind::Docker).await?;
    let agent = lifecycle::find_container(rt.as_ref(), name, "agent").await?;
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
        Service::Agent => ("agent", None),
        Service::Sidecar => ("sidecar", None),
        Service::Egress => ("sidecar", Some("egress")),
        Service::GitGate => return Err(CliError::NoService("git-gate")),
        Service::Supervise => return Err(CliError::NoService("supervise")),
    };
    let rt = connect(RuntimeKind::Docker).await?;
    let c = lifecycle::find_container(rt.as_ref(), name, role).await?;
    let mut sink = crate::logview::LogSink::new(filter, json, std::io::stdout());
    rt.logs(&c.id, follow, tail, &mut sink).await?;
    sink.finish();
    Ok(0)
}

async fn probe(runtime: Option<RuntimeArg>, json: bool) -> Result<i32, CliError> {
    let kind = choose_runtime(runtime, None);
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
