//! The command line: flags are parsed here and turned into calls on the
//! library (config → plan → lifecycle). Nothing below this module sees a flag.

use crate::config::{self, ConfigErrors};
use crate::exit::{Classify, Exit};
use crate::host::Host;
use crate::interrupt::Interrupt;
use crate::lifecycle::{self, LifecycleError};
use crate::plan::PlanError;
use crate::report::Reporter;
use crate::state::StateError;
use crate::up::{self, RuntimeRequest, UpError};
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
    /// Measure the runtime even when it was probed in the last 10 minutes
    /// and has not changed since (`bottle probe` always measures).
    #[arg(long)]
    pub reprobe: bool,
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

/// Flags of `bottle render`.
#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// The runtime to render for: `kubernetes` (the only one).
    #[arg(long)]
    pub runtime: String,
    /// The bottle's config (default: ./bottle.toml, else the built-in deny-all bottle).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Name of the bottle (default: `name` in the config, else the directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Write one file per concern into DIR instead of YAML on stdout.
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Also mint the bottle's CA and read its credentials from this
    /// environment, into DIR/05-secrets.yaml (mode 0600); needs -o.
    #[arg(long)]
    pub secrets: bool,
    /// The sidecar image the cluster pulls (default: `bottle-sidecar:<version>`).
    #[arg(long, value_name = "REF")]
    pub sidecar_image: Option<String>,
    /// The cluster's Service CIDR; the sidecar's ClusterIP is taken from it.
    #[arg(long, value_name = "CIDR", default_value = bottle_kube::ClusterSpec::DEFAULT_SERVICE_CIDR)]
    pub service_cidr: bottle_kube::cidr::Cidr,
    /// The cluster's pod CIDR (repeatable); cut out of the sidecar's egress.
    #[arg(long = "pod-cidr", value_name = "CIDR", default_value = bottle_kube::ClusterSpec::DEFAULT_POD_CIDR)]
    pub pod_cidr: Vec<bottle_kube::cidr::Cidr>,
    /// The nodes' CIDR (repeatable); cut out of the sidecar's egress.
    #[arg(long = "node-cidr", value_name = "CIDR")]
    pub node_cidr: Vec<bottle_kube::cidr::Cidr>,
    /// The sidecar Service's ClusterIP (default: derived from the name).
    #[arg(long, value_name = "IP")]
    pub service_ip: Option<std::net::Ipv4Addr>,
    /// runtimeClassName for the agent (e.g. gvisor, kata), when the cluster has it.
    #[arg(long, value_name = "NAME")]
    pub runtime_class: Option<String>,
    /// storageClassName of the claims (default: the cluster's default).
    #[arg(long, value_name = "NAME")]
    pub storage_class: Option<String>,
    /// Size of the sidecar's state claim.
    #[arg(long, value_name = "SIZE", default_value = bottle_kube::ClusterSpec::DEFAULT_STATE_SIZE)]
    pub state_size: String,
    /// Size of the agent's workspace claim.
    #[arg(long, value_name = "SIZE", default_value = bottle_kube::ClusterSpec::DEFAULT_WORKSPACE_SIZE)]
    pub workspace_size: String,
    /// A resolver for the sidecar instead of the cluster's DNS (repeatable).
    #[arg(long = "sidecar-dns", value_name = "IP")]
    pub sidecar_dns: Vec<std::net::IpAddr>,
    /// The agent's user and group id (never 0).
    #[arg(long, value_name = "UID", default_value_t = crate::render::DEFAULT_AGENT_UID, value_parser = clap::value_parser!(i64).range(1..))]
    pub agent_uid: i64,
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
    /// Start an agent CLI in a bottle, attached to this terminal (`up`
    /// first, unless the bottle runs already); the bottle is removed when
    /// the CLI ends, unless --keep.
    Run {
        /// claude, codex or shell (default: `[agent] provider` of the
        /// config, else shell).
        #[arg(value_enum)]
        agent: Option<AgentArg>,
        #[command(flatten)]
        up: UpArgs,
        /// Keep the bottle when the CLI ends (`bottle resume NAME` returns).
        #[arg(long)]
        keep: bool,
        /// No terminal: run one prompt and exit with the CLI's exit code
        /// (with --json, the CLI's JSON event stream on stdout).
        #[arg(long, requires = "prompt")]
        headless: bool,
        /// The prompt for --headless.
        #[arg(long, requires = "headless")]
        prompt: Option<String>,
        /// Start from a snapshot (`bottle snapshot NAME --tag TAG`) instead
        /// of the config's agent image.
        #[arg(long, value_name = "TAG")]
        from: Option<String>,
        /// Extra arguments for the agent CLI.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Re-attach to the agent CLI of a bottle `run --keep` left running.
    Resume {
        name: String,
        /// Extra arguments for the agent CLI.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Save a running bottle's agent (its filesystem, not its mounts) as
    /// an image `bottle run --from TAG` starts from.
    Snapshot {
        name: String,
        /// The snapshot's tag (default: the bottle's name).
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        json: bool,
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
    /// Show a bottle's egress budgets and counters, or raise one.
    Budget {
        name: String,
        /// Set a limit in the running bottle (and its pin): BUDGET=VALUE
        /// or HOST:BUDGET=VALUE, e.g. `llm_usd=40`,
        /// `api.github.com:bytes_up=100MiB`. Repeatable.
        #[arg(long, value_name = "BUDGET=VALUE")]
        raise: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// List the requests the agents filed through supervise (pending first).
    Requests {
        /// Only this bottle's (default: every bottle's).
        name: Option<String>,
        #[arg(long)]
        json: bool,
        /// A live terminal UI: new requests appear as they are filed; keys
        /// approve (with a scope and note), deny, edit the rule in $EDITOR,
        /// show the egress log around a request.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
    /// Approve a request: the sidecar applies it at once.
    Approve {
        /// The request's id, as `bottle requests` lists it.
        id: String,
        /// once: the one request that asked; session: until the bottle
        /// stops; always: also pinned, so the next `up` asks nothing more.
        #[arg(long, value_enum, default_value = "once")]
        scope: ScopeArg,
        /// A note the agent reads with the decision.
        #[arg(long)]
        note: Option<String>,
        /// With `--scope always`: also write the rule into the bottle.toml
        /// the bottle was brought up from.
        #[arg(long)]
        save: bool,
        /// Edit the rule (and scope and note) in $EDITOR before approving.
        #[arg(long, conflicts_with = "save")]
        edit: bool,
    },
    /// Deny a request.
    Deny {
        id: String,
        /// A note the agent reads with the decision.
        #[arg(long)]
        note: Option<String>,
    },
    /// Write the manifests of one bottle for another runtime (Kubernetes):
    /// YAML on stdout, or one file per concern with -o DIR.
    Render(RenderArgs),
    /// Measure what a runtime can do.
    Probe {
        #[arg(long, value_enum, env = "BOTTLE_RUNTIME")]
        runtime: Option<RuntimeArg>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScopeArg {
    Once,
    Session,
    Always,
}

impl From<ScopeArg> for bottle_policy::Scope {
    fn from(s: ScopeArg) -> Self {
        match s {
            ScopeArg::Once => bottle_policy::Scope::Once,
            ScopeArg::Session => bottle_policy::Scope::Session,
            ScopeArg::Always => bottle_policy::Scope::Always,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Service {
    Agent,
    Sidecar,
    Egress,
    GitGate,
    Supervise,
}

/// The agent CLIs `bottle run` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentArg {
    Claude,
    Codex,
    Shell,
}

impl From<AgentArg> for crate::provider::Provider {
    fn from(a: AgentArg) -> Self {
        match a {
            AgentArg::Claude => crate::provider::Provider::Claude,
            AgentArg::Codex => crate::provider::Provider::Codex,
            AgentArg::Shell => crate::provider::Provider::Shell,
        }
    }
}

/// Everything the CLI can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Up(#[from] UpError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    State(#[from] StateError),
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
    #[error(transparent)]
    Reload(#[from] crate::reload::ReloadError),
    #[error(transparent)]
    Budget(#[from] crate::budget::BudgetError),
    #[error(transparent)]
    Request(#[from] crate::requests::RequestError),
    #[error(transparent)]
    Attach(#[from] crate::attach::AttachError),
    #[error(transparent)]
    Run(#[from] crate::run::RunError),
    #[error(transparent)]
    Watch(#[from] crate::watch::WatchError),
    #[error(transparent)]
    Edit(#[from] crate::edit::EditError),
    #[error(transparent)]
    Render(#[from] crate::render::RenderError),
    #[error("interrupted; nothing was left behind")]
    Interrupted,
    /// Writing the result failed; a closed pipe (`bottle ps | head`) is not
    /// an error and ends bottle quietly.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    /// True when stdout was closed by the reader (`| head`): exit quietly.
    pub fn is_closed_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

impl Classify for CliError {
    fn exit(&self) -> Exit {
        match self {
            CliError::Config(_) => Exit::Usage,
            CliError::Plan(e) => e.exit(),
            CliError::Up(e) => e.exit(),
            CliError::Lifecycle(e) => e.exit(),
            CliError::Runtime(e) => e.exit(),
            CliError::InitExists { .. } | CliError::BadEnv(_) | CliError::NotATerminal => {
                Exit::Usage
            }
            CliError::Reload(e) => e.exit(),
            CliError::Budget(e) => e.exit(),
            CliError::Request(e) => e.exit(),
            CliError::Attach(e) => e.exit(),
            CliError::Run(e) => e.exit(),
            CliError::Watch(e) => e.exit(),
            CliError::Edit(e) => e.exit(),
            CliError::Render(e) => e.exit(),
            CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Exit::Done,
            CliError::Interrupted => Exit::Interrupted,
            CliError::State(_)
            | CliError::Write { .. }
            | CliError::Cwd(_)
            | CliError::Terminal(_)
            | CliError::ReadLog { .. }
            | CliError::Output(_) => Exit::Failed,
        }
    }
}

/// Runs one command; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32, CliError> {
    match cli.command {
        Command::Init { file, force } => init(&file, force),
        Command::Up(args) => up(args).await,
        Command::Run {
            agent,
            up,
            keep,
            headless,
            prompt,
            from,
            args,
        } => {
            let mode = match (headless, prompt) {
                (true, Some(prompt)) => crate::provider::Mode::Headless {
                    prompt,
                    json: up.json,
                    args,
                },
                _ => crate::provider::Mode::Attached { args },
            };
            let image = from
                .as_deref()
                .map(crate::run::snapshot_image)
                .transpose()?;
            run_agent(up, agent.map(Into::into), mode, keep, image).await
        }
        Command::Snapshot { name, tag, json } => {
            let host = Host::from_env()?;
            let rt = connect(crate::reload::runtime_of(&host, &name)).await?;
            let tag = tag.unwrap_or_else(|| name.clone());
            let session = crate::run::load(&host.state.bottle(&name));
            let image = crate::run::snapshot(rt.as_ref(), &name, &tag, session.as_ref()).await?;
            if json {
                writeln!(
                    std::io::stdout().lock(),
                    "{}",
                    serde_json::json!({"name": name, "tag": tag, "image": image})
                )?;
            } else {
                eprintln!("bottle `{name}`: agent saved as {image}; `bottle run --from {tag}` starts from it");
            }
            Ok(0)
        }
        Command::Resume { name, args } => resume(&name, args).await,
        Command::Verify { name, json } => {
            let host = Host::from_env()?;
            let rt = connect(crate::reload::runtime_of(&host, &name)).await?;
            let interrupt = Interrupt::install();
            let report = match interrupt
                .unless(crate::verify::verify(rt.as_ref(), &host, &name, ""))
                .await
            {
                Ok(r) => r?,
                Err(_) => {
                    // The probe container carries the bottle's labels.
                    crate::verify::remove_probes(rt.as_ref(), &name).await?;
                    return Err(CliError::Interrupted);
                }
            };
            // A reader that stops early (`| grep -q FAIL`) keeps the verdict.
            shown(print_verify(&report, json))?;
            Ok(if report.failed == 0 {
                Exit::Done
            } else {
                Exit::Hole
            }
            .code())
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
            let host = Host::from_env()?;
            let rt = connect(crate::reload::runtime_of(&host, &name)).await?;
            let mut report = Reporter::new(json);
            let removed = lifecycle::down(rt.as_ref(), &host.state, &name, &mut report).await?;
            if json {
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "name": name, "removed": removed })
                )?;
            } else if removed.is_empty() {
                eprintln!("bottle `{name}`: nothing to remove");
            } else {
                eprintln!("bottle `{name}` removed ({} resources)", removed.len());
            }
            Ok(0)
        }
        Command::Ps { json } => {
            let host = Host::from_env()?;
            // Every runtime that answers; one that is absent has no bottles.
            let mut list = Vec::new();
            for kind in [
                RuntimeKind::Docker,
                RuntimeKind::AppleContainer,
                RuntimeKind::Smolvm,
            ] {
                if let Ok(rt) = crate::runtime_select::connect(kind).await {
                    list.extend(lifecycle::ps(rt.as_ref(), &host.state).await?);
                }
            }
            // Each bottle's egress budgets (issue 16), from its policy and
            // the counters its sidecar persisted.
            let budgets: Vec<Vec<bottle_policy::budget::Status>> = list
                .iter()
                .map(|b| {
                    crate::budget::report(&b.name, &host.state.bottle(&b.name))
                        .map(|r| r.budgets)
                        .unwrap_or_default()
                })
                .collect();
            let mut out = std::io::stdout().lock();
            if json {
                let rows: Vec<serde_json::Value> = list
                    .iter()
                    .zip(&budgets)
                    .map(|(b, budget)| {
                        let mut v = serde_json::to_value(b).unwrap_or_default();
                        if let Some(o) = v.as_object_mut() {
                            o.insert(
                                "budgets".into(),
                                serde_json::to_value(budget).unwrap_or_default(),
                            );
                        }
                        v
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string(&rows).unwrap_or_default())?;
            } else {
                render_ps(&mut out, &list)?;
                for (b, budget) in list.iter().zip(&budgets) {
                    if !budget.is_empty() {
                        writeln!(
                            out,
                            "  {}: budget {}",
                            b.name,
                            crate::budget::summary(budget)
                        )?;
                    }
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
        Command::Requests {
            name,
            json: _,
            watch: true,
        } => {
            let host = Host::from_env()?;
            crate::watch::run(&host, name)?;
            Ok(0)
        }
        Command::Requests {
            name,
            json,
            watch: false,
        } => {
            let host = Host::from_env()?;
            let now = crate::requests::now();
            let (rows, unreadable) = crate::requests::list(&host.state, name.as_deref(), now);
            for u in &unreadable {
                eprintln!("bottle: skipped an unreadable request: {u}");
            }
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string(&rows).unwrap_or_default())?;
            } else {
                render_requests(&mut out, &rows, now)?;
            }
            Ok(0)
        }
        Command::Approve {
            id,
            scope,
            note,
            save,
            edit,
        } => {
            let host = Host::from_env()?;
            let now = crate::requests::now();
            if edit {
                let (bottle, proposal) = crate::requests::proposal(&host.state, &id)?;
                let form = crate::edit::form(&bottle, &proposal, scope.into(), note.as_deref());
                let text = crate::edit::run_editor(&crate::edit::editor(&host), &form)?;
                let edited = crate::edit::parse(&proposal, &text)?;
                let (bottle, entry) = crate::requests::approve(
                    &host.state,
                    &id,
                    edited.scope,
                    edited.note.as_deref(),
                    Some(edited.ask),
                    crate::requests::now(),
                )?;
                eprintln!("{}", decided_line(&bottle, &entry));
                return Ok(0);
            }
            if save {
                if !matches!(scope, ScopeArg::Always) {
                    eprintln!("bottle: --save keeps a rule for good, so it needs --scope always\n  fix: bottle approve {id} --scope always --save");
                    return Ok(crate::exit::Exit::Usage.code());
                }
                let (bottle, entry, saved) = crate::requests::approve_and_save(
                    &host.state,
                    &id,
                    note.as_deref(),
                    None,
                    now,
                )?;
                eprintln!("{}", decided_line(&bottle, &entry));
                match saved {
                    Some(path) => eprintln!("bottle: saved the rule into {}", path.display()),
                    None => eprintln!("bottle: the bottle.toml already has the rule"),
                }
                return Ok(0);
            }
            let (bottle, entry) = crate::requests::approve(
                &host.state,
                &id,
                scope.into(),
                note.as_deref(),
                None,
                now,
            )?;
            eprintln!("{}", decided_line(&bottle, &entry));
            Ok(0)
        }
        Command::Deny { id, note } => {
            let host = Host::from_env()?;
            let (bottle, entry) =
                crate::requests::deny(&host.state, &id, note.as_deref(), crate::requests::now())?;
            eprintln!("{}", decided_line(&bottle, &entry));
            Ok(0)
        }
        Command::Probe { runtime, json } => probe(runtime, json).await,
        Command::Render(args) => render(args),
        Command::Budget { name, raise, json } => budget(&name, &raise, json),
        Command::Reload {
            name,
            file,
            accept_changes,
        } => reload(&name, file, accept_changes).await,
    }
}

/// `bottle render`: the config as Kubernetes manifests, on stdout or in a
/// directory. Nothing is created on a cluster.
fn render(args: RenderArgs) -> Result<i32, CliError> {
    use crate::render::{self as r, RenderError};
    r::check_runtime(&args.runtime)?;
    if args.secrets && args.output.is_none() {
        return Err(RenderError::SecretsNeedDir.into());
    }
    let cwd = std::env::current_dir().map_err(CliError::Cwd)?;
    let (cfg, source) = up::load_config(args.file.as_deref(), &cwd)?;
    let opts = r::Options {
        name: args.name,
        sidecar_image: args.sidecar_image.unwrap_or_else(r::default_sidecar_image),
        service_cidr: args.service_cidr,
        pod_cidrs: args.pod_cidr,
        node_cidrs: args.node_cidr,
        service_ip: args.service_ip,
        runtime_class: args.runtime_class,
        storage_class: args.storage_class,
        state_size: args.state_size,
        workspace_size: args.workspace_size,
        sidecar_dns: args.sidecar_dns,
        agent_uid: args.agent_uid,
    };
    let spec = r::spec(&cfg, &source, &opts, args.secrets, |v| {
        std::env::var(v).ok()
    })?;
    let rendered = bottle_kube::render(&spec).map_err(RenderError::from)?;
    match args.output {
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(rendered.to_yaml().as_bytes())?;
            out.flush()?;
        }
        Some(dir) => {
            for path in r::write_dir(&rendered, &dir)? {
                println!("{}", path.display());
            }
            if !args.secrets {
                eprintln!("not written: the bottle's CA and credentials; create them as the header of each file says, or render again with --secrets");
            }
        }
    }
    Ok(0)
}

/// What `approve` and `deny` print: the bottle, the request and where it stands.
fn decided_line(bottle: &str, entry: &bottle_policy::Entry) -> String {
    format!(
        "bottle `{bottle}`: {} {} — {}",
        entry.proposal.id.as_str(),
        entry.status.label(),
        entry.proposal.ask.summary()
    )
}

/// `bottle requests` as a table: pending first, then the rest, newest last.
pub fn render_requests(
    out: &mut dyn Write,
    rows: &[crate::requests::Row],
    now: u64,
) -> std::io::Result<()> {
    if rows.is_empty() {
        return writeln!(out, "no requests");
    }
    writeln!(
        out,
        "{:<10} {:<16} {:<20} {:<40} REASON",
        "ID", "BOTTLE", "STATUS", "ASKS"
    )?;
    let pending = rows.iter().filter(|r| r.status == "pending");
    let rest = rows.iter().filter(|r| r.status != "pending");
    for r in pending.chain(rest) {
        let status = if r.status == "pending" {
            format!("pending ({}s left)", r.expires.saturating_sub(now))
        } else {
            r.status.clone()
        };
        writeln!(
            out,
            "{:<10} {:<16} {:<20} {:<40} {}{}",
            r.id,
            r.bottle,
            status,
            r.ask,
            r.reason,
            r.note
                .as_deref()
                .map(|n| format!(" (note: {n})"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}

/// `bottle ps` as a table.
pub fn render_ps(out: &mut dyn Write, list: &[lifecycle::BottleStatus]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<20} {:<16} {:<10} {:<10} {:<10} {:<15} {:<15} {:<20} ACCEPTED WEAKNESS",
        "NAME", "RUNTIME", "AGENT", "SIDECAR", "HEALTH", "AGENT IP", "SIDECAR IP", "SESSION"
    )?;
    for b in list {
        let ip =
            |i: Option<std::net::Ipv4Addr>| i.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<20} {:<16} {:<10} {:<10} {:<10} {:<15} {:<15} {:<20} {}",
            b.name,
            b.runtime,
            b.agent,
            b.sidecar,
            b.sidecar_health,
            ip(b.agent_ip),
            ip(b.sidecar_ip),
            b.session
                .as_ref()
                .map_or("-".to_string(), |s| format!("{} {}", s.provider, s.state)),
            if b.accepted_weaknesses.is_empty() {
                "-".to_string()
            } else {
                b.accepted_weaknesses
                    .iter()
                    .map(|w| w.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            }
        )?;
    }
    for b in list {
        if let Some(r) = &b.resume {
            writeln!(
                out,
                "  {}: `{r}` returns to its {} session",
                b.name,
                b.session.as_ref().map_or("agent", |s| s.provider.as_str())
            )?;
        }
    }
    Ok(())
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

/// What `--runtime` asks for.
fn runtime_request(flag: Option<RuntimeArg>) -> Option<RuntimeRequest> {
    Some(match flag? {
        RuntimeArg::Docker => RuntimeRequest::Named(RuntimeKind::Docker),
        RuntimeArg::AppleContainer => RuntimeRequest::Named(RuntimeKind::AppleContainer),
        RuntimeArg::Smolvm => RuntimeRequest::Named(RuntimeKind::Smolvm),
        RuntimeArg::Auto => RuntimeRequest::Auto,
    })
}

/// The real runtimes, offering to start a stopped Apple container service.
struct Terminal;

#[async_trait::async_trait]
impl crate::runtime_select::Connect for Terminal {
    async fn connect(&self, kind: RuntimeKind) -> Result<Box<dyn Runtime>, RuntimeError> {
        match crate::runtime_select::connect(kind).await {
            Err(RuntimeError::Unavailable { .. })
                if kind == RuntimeKind::AppleContainer && offer_apple_start().await =>
            {
                crate::runtime_select::connect(kind).await
            }
            other => other,
        }
    }
}

async fn connect(kind: RuntimeKind) -> Result<Box<dyn Runtime>, CliError> {
    use crate::runtime_select::Connect;
    Ok(Terminal.connect(kind).await?)
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
    // Read off the async threads, so Ctrl-C at the prompt is a no.
    let answer = tokio::task::spawn_blocking(|| {
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        answer
    });
    let answer = tokio::select! {
        a = answer => a.unwrap_or_default(),
        _ = tokio::signal::ctrl_c() => String::new(),
    };
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

async fn up(args: UpArgs) -> Result<i32, CliError> {
    let json = args.json;
    let host = Host::from_env()?;
    // From here on Ctrl-C removes what `up` made instead of killing bottle.
    let interrupt = Interrupt::install();
    let mut report = Reporter::new(args.quiet || json);
    let Some(outcome) = bring_up(args, None, None, &host, &interrupt, &mut report).await? else {
        return Ok(0);
    };
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&outcome.summary).unwrap_or_default()
        )?;
    } else {
        render_summary(&mut out, &outcome.summary)?;
    }
    Ok(0)
}

/// `up`'s plan, consent and creation, for `up` and `run`: `None` when
/// `--dry-run` printed the plan instead.
async fn bring_up(
    args: UpArgs,
    provider: Option<crate::provider::Provider>,
    image: Option<String>,
    host: &Host,
    interrupt: &Interrupt,
    report: &mut Reporter,
) -> Result<Option<up::Outcome>, CliError> {
    let UpArgs {
        file,
        name,
        runtime,
        dry_run,
        json,
        quiet: _,
        verify,
        reprobe,
        accept_changes,
        accept_weakness,
        allow_mount,
        allow_root_owner,
    } = args;
    let request = up::Request {
        file,
        cwd: std::env::current_dir().map_err(CliError::Cwd)?,
        name,
        runtime: runtime_request(runtime),
        accept_weakness,
        grants: crate::mounts::Grants {
            mounts: allow_mount,
            root_owner: allow_root_owner,
        },
        verify,
        reprobe,
        provider,
        image,
    };
    let mut prepared = up::prepare(
        host,
        &request,
        &Terminal,
        &crate::runtime_select::auto_order(),
        interrupt,
        report,
    )
    .await?;
    if dry_run {
        let mut out = std::io::stdout().lock();
        if json {
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&prepared.plan).unwrap_or_default()
            )?;
        } else {
            write!(out, "{}", crate::plan::render(&prepared.plan))?;
        }
        return Ok(None);
    }
    let plan = &prepared.plan;
    prepared.consented = ask_consent(
        &plan.name,
        &plan.config_source,
        &plan.consent,
        accept_changes,
        interrupt,
    )
    .await?;
    let outcome = match up::execute(host, prepared, interrupt, report).await {
        Ok(o) => o,
        Err(UpError::VerifyFailed {
            name,
            failed,
            report: Some(checked),
        }) => {
            // As before: the table on stderr, JSON on stdout.
            if json {
                shown(print_verify(&checked, true))?;
            } else {
                eprint!("{}", crate::verify::render(&checked));
            }
            return Err(UpError::VerifyFailed {
                name,
                failed,
                report: None,
            }
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    if let (Some(checked), false) = (&outcome.verified, json) {
        eprint!("{}", crate::verify::render(checked));
    }
    Ok(Some(outcome))
}

/// `bottle run`: the bottle up (or reused), the CLI started, the bottle
/// removed at the end when `run` made it and `keep` is off.
async fn run_agent(
    args: UpArgs,
    provider: Option<crate::provider::Provider>,
    mode: crate::provider::Mode,
    keep: bool,
    image: Option<String>,
) -> Result<i32, CliError> {
    let host = Host::from_env()?;
    let interrupt = Interrupt::install();
    let mut report = Reporter::new(args.quiet || args.json);
    let dry_run = args.dry_run;
    // A running bottle of that name is reused as it is.
    let (name, cfg) = up::bottle_name(args.file.as_deref(), args.name.as_deref())?;
    let provider = provider.unwrap_or(cfg.agent.provider);
    let needs = up::provider_additions(&cfg, provider)
        .map_err(UpError::from)?
        .map(|a| a.allow);
    let existing = match connect(crate::reload::runtime_of(&host, &name)).await {
        Ok(rt) => crate::run::running_agent(rt.as_ref(), &name)
            .await
            .ok()
            .map(|_| rt),
        Err(_) => None,
    };
    let (rt, made) = match existing {
        Some(rt) if !dry_run => {
            if image.is_some() {
                return Err(crate::run::RunError::FromRunning { name }.into());
            }
            crate::run::check_reuse(&host.state.bottle(&name), &name, provider, needs.as_ref())?;
            report.step(&format!(
                "bottle `{name}` is running; starting {} in it",
                provider.as_str()
            ));
            (rt, false)
        }
        _ => {
            let Some(outcome) =
                bring_up(args, Some(provider), image, &host, &interrupt, &mut report).await?
            else {
                return Ok(0);
            };
            report.step(&format!(
                "bottle `{}` is up; starting {}",
                outcome.summary.name,
                provider.as_str()
            ));
            let rt = connect(crate::reload::runtime_of(&host, &outcome.summary.name)).await?;
            (rt, true)
        }
    };
    let state = host.state.bottle(&name);
    let kept = keep || !made;
    let mut session = crate::run::Session {
        provider: provider.as_str().into(),
        mode: match mode {
            crate::provider::Mode::Headless { .. } => "headless".into(),
            _ => "attached".into(),
        },
        started: crate::run::now(),
        state: "running".into(),
        kept,
    };
    crate::run::save(&state, &session)?;
    let result = interrupt
        .unless(crate::run::start(rt.as_ref(), &name, provider, &mode))
        .await;
    let code = match &result {
        Ok(Ok(c)) => Some(*c),
        _ => None,
    };
    session.state = code.map_or("ended".into(), |c| format!("exited {c}"));
    if kept {
        crate::run::save(&state, &session)?;
        report.step(&format!(
            "bottle `{name}` kept; `bottle resume {name}` returns to it, `bottle down {name}` removes it"
        ));
    } else {
        report.step(&format!("removing bottle `{name}`"));
        lifecycle::down(rt.as_ref(), &host.state, &name, &mut report).await?;
    }
    match result {
        Err(_) => Err(CliError::Interrupted),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(c)) => Ok(i32::try_from(c).unwrap_or(1)),
    }
}

/// `bottle resume`: the kept bottle's CLI, attached again.
async fn resume(name: &str, args: Vec<String>) -> Result<i32, CliError> {
    let host = Host::from_env()?;
    let state = host.state.bottle(name);
    let session = crate::run::load(&state)
        .ok_or_else(|| crate::run::RunError::NoSession { name: name.into() })?;
    let provider = crate::provider::Provider::parse(&session.provider)
        .unwrap_or(crate::provider::Provider::Shell);
    let rt = connect(crate::reload::runtime_of(&host, name)).await?;
    let mode = crate::provider::Mode::Resume { args };
    let code = crate::run::start(rt.as_ref(), name, provider, &mode).await?;
    let session = crate::run::Session {
        state: format!("exited {code}"),
        ..session
    };
    crate::run::save(&state, &session)?;
    Ok(i32::try_from(code).unwrap_or(1))
}

/// The summary `up` prints.
pub fn render_summary(out: &mut dyn Write, summary: &lifecycle::UpSummary) -> std::io::Result<()> {
    let ip = |m: &std::collections::BTreeMap<String, std::net::Ipv4Addr>, k: &str| {
        m.get(k)
            .map(|i| i.to_string())
            .unwrap_or_else(|| "-".into())
    };
    writeln!(out, "bottle `{}` is up ({})", summary.name, summary.runtime)?;
    writeln!(
        out,
        "  agent    {} ({}) at {} on {} only",
        summary.agent.name,
        summary.agent.image,
        ip(&summary.agent.ipv4, &summary.internal_network.name),
        summary.internal_network.name
    )?;
    writeln!(
        out,
        "  sidecar  {} at {} (internal), proxy {}",
        summary.sidecar.name,
        ip(&summary.sidecar.ipv4, &summary.internal_network.name),
        summary.proxy
    )?;
    writeln!(
        out,
        "  networks {} ({}, internal, no host address), {} ({}, egress)",
        summary.internal_network.name,
        summary.internal_network.subnet.as_deref().unwrap_or("?"),
        summary.egress_network.name,
        summary.egress_network.subnet.as_deref().unwrap_or("?")
    )?;
    writeln!(
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
    )?;
    for g in &summary.git {
        writeln!(
            out,
            "  git      {} = {} (gate {}, {})",
            g.name, g.upstream, g.gate, g.mode
        )?;
    }
    let l = &summary.limits;
    writeln!(
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
    )?;
    writeln!(
        out,
        "  next     bottle exec {} -- bash   |   bottle down {}",
        summary.name, summary.name
    )
}

/// Output whose reader went away (`| head`, `| grep -q`) is not an error:
/// the command's own exit code stands.
fn closed_pipe_is_fine(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(e)
    }
}

fn shown(r: std::io::Result<()>) -> Result<(), CliError> {
    Ok(r.or_else(closed_pipe_is_fine)?)
}

fn print_verify(report: &crate::verify::Report, json: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        )
    } else {
        write!(out, "{}", crate::verify::render(report))
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
    let host = Host::from_env()?;
    let rt = connect(crate::reload::runtime_of(&host, name)).await?;
    let agent = lifecycle::find_container(rt.as_ref(), name, bottle_runtimes::Role::Agent).await?;
    if agent.state != bottle_runtimes::ContainerState::Running {
        return Err(LifecycleError::AgentNotRunning {
            name: name.into(),
            state: format!("{:?}", agent.state).to_lowercase(),
        }
        .into());
    }
    let spec = ExecSpec {
        cmd,
        env,
        workdir,
        user: None,
        stdin: interactive,
        tty,
        ..ExecSpec::default()
    };
    let result = crate::attach::run(rt.as_ref(), &agent.id, spec).await;
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
        Service::GitGate => (bottle_runtimes::Role::Sidecar, Some("git-gate")),
        Service::Supervise => (bottle_runtimes::Role::Sidecar, Some("supervise")),
    };
    let host = Host::from_env()?;
    if let Some(service @ ("egress" | "git-gate" | "supervise")) = filter {
        // The audit log lives in the state dir, so it outlives the sidecar.
        // Egress, DNS and the git gate write to it, each line naming its
        // service: `egress` shows the whole stream, the others their own.
        let path = host.state.bottle(name).audit_path();
        let only = (service != "egress").then_some(service);
        let mut sink = crate::logview::LogSink::new(only, json, std::io::stdout());
        crate::logview::follow_file(&path, follow, tail, &mut sink)
            .await
            .map_err(|source| CliError::ReadLog { path, source })?;
        sink.finish();
        return Ok(0);
    }
    let rt = connect(crate::reload::runtime_of(&host, name)).await?;
    let c = lifecycle::find_container(rt.as_ref(), name, role).await?;
    let mut sink = crate::logview::LogSink::new(filter, json, std::io::stdout());
    rt.logs(&c.id, follow, tail, &mut sink).await?;
    sink.finish();
    Ok(0)
}

/// Asks for consent to `reasons` (see [`crate::pin::judge`]): none needed,
/// `--accept-changes`, or y at a terminal prompt. Prints every reason.
/// An interrupt at the prompt ends `up` (nothing of the bottle exists yet).
async fn ask_consent(
    name: &str,
    source: &str,
    reasons: &[String],
    accept_changes: bool,
    interrupt: &Interrupt,
) -> Result<bool, CliError> {
    if reasons.is_empty() {
        return Ok(true);
    }
    eprintln!("bottle `{name}`: {source} asks for more than you accepted:");
    for w in reasons {
        eprintln!("  + {w}");
    }
    if accept_changes {
        eprintln!("  accepted (--accept-changes)");
        return Ok(true);
    }
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        eprint!("apply these changes? [y/N] ");
        let answer = tokio::task::spawn_blocking(|| {
            let mut answer = String::new();
            let _ = std::io::stdin().read_line(&mut answer);
            answer
        });
        match interrupt.unless(answer).await {
            Ok(Ok(a)) if matches!(a.trim(), "y" | "Y" | "yes") => return Ok(true),
            Ok(_) => {}
            Err(_) => {
                eprintln!();
                return Err(UpError::Interrupted {
                    name: name.into(),
                    aftermath: "nothing was created".into(),
                }
                .into());
            }
        }
    }
    Err(UpError::Widened {
        name: name.into(),
        count: reasons.len(),
    }
    .into())
}

async fn reload(name: &str, file: Option<PathBuf>, accept_changes: bool) -> Result<i32, CliError> {
    let host = Host::from_env()?;
    let mut prepared = crate::reload::prepare(&host, name, file)?;
    let plan = &prepared.plan;
    prepared.consented = ask_consent(
        &plan.name,
        &plan.config_source,
        &prepared.consent,
        accept_changes,
        &Interrupt::new(),
    )
    .await?;
    let rt = connect(crate::reload::runtime_of(&host, name)).await?;
    let summary = crate::reload::execute(&host, rt.as_ref(), prepared).await?;
    eprintln!("{summary}");
    Ok(0)
}

/// `bottle budget NAME [--raise …] [--json]`.
fn budget(name: &str, raise: &[String], json: bool) -> Result<i32, CliError> {
    let host = Host::from_env()?;
    let state = host.state.bottle(name);
    if !raise.is_empty() {
        let raises = raise
            .iter()
            .map(|r| crate::budget::Raise::parse(r))
            .collect::<Result<Vec<_>, _>>()?;
        let lines = crate::budget::raise(name, &state, &raises)?;
        for l in &lines {
            eprintln!("bottle `{name}`: {l}");
        }
        eprintln!("bottle `{name}`: the sidecar applies the new budget within a second (policy-reloaded in `bottle logs {name} --service sidecar`); the pin records it");
    }
    let report = crate::budget::report(name, &state)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&report).unwrap_or_default()
        )?;
    } else {
        crate::budget::render(&mut out, &report)?;
    }
    Ok(0)
}

async fn probe(runtime: Option<RuntimeArg>, json: bool) -> Result<i32, CliError> {
    let kind = match runtime_request(runtime) {
        Some(RuntimeRequest::Named(kind)) => kind,
        _ => RuntimeKind::Docker,
    };
    let host = Host::from_env()?;
    let interrupt = Interrupt::install();
    let probe = match connect(kind).await {
        Ok(rt) => {
            let mut report = Reporter::new(json);
            report.step("preparing the sidecar image the probe runs its helpers from");
            let images = interrupt
                .unless(lifecycle::ensure_images(
                    rt.as_ref(),
                    &host,
                    crate::images::DEFAULT_AGENT_IMAGE,
                    &mut report,
                ))
                .await
                .map_err(|_| CliError::Interrupted)?;
            let helper = match images {
                Ok(images) => Some(images.sidecar),
                Err(e) => {
                    report.detail(&format!("cannot prepare the sidecar image: {e}"));
                    None
                }
            };
            report.step(&format!("probing {kind}"));
            // Always measured; what passes is what the next `up` reuses.
            let cache = crate::probe_cache::ProbeCache::at(host.state.path());
            let key = interrupt
                .unless(crate::probe_cache::lookup(rt.as_ref(), &cache, true))
                .await
                .map_err(|_| CliError::Interrupted)?
                .key;
            match interrupt.unless(rt.probe(helper.as_deref())).await {
                Ok(probe) => {
                    crate::probe_cache::record(&cache, key.as_deref(), &probe);
                    probe
                }
                Err(_) => {
                    lifecycle::sweep_probe_scratch(rt.as_ref()).await?;
                    return Err(CliError::Interrupted);
                }
            }
        }
        Err(CliError::Runtime(RuntimeError::Unavailable { reason, fix, .. })) => {
            Probe::absent(kind, "-".into(), format!("{reason} (fix: {fix})"))
        }
        Err(e) => return Err(e),
    };
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&probe).unwrap_or_default()
        )
        .or_else(closed_pipe_is_fine)?;
    } else {
        shown(render_probe(&mut out, &probe))?;
    }
    Ok(if !probe.present || !probe.running {
        Exit::Unavailable
    } else if probe.first_missing().is_some() {
        Exit::Refused
    } else {
        Exit::Done
    }
    .code())
}

/// `bottle probe` as a table.
pub fn render_probe(out: &mut dyn Write, probe: &Probe) -> std::io::Result<()> {
    writeln!(out, "runtime   {}", probe.runtime)?;
    writeln!(out, "endpoint  {}", probe.endpoint)?;
    writeln!(
        out,
        "version   {}",
        probe.version.as_deref().unwrap_or("(not reachable)")
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<30} {:<8} {:<9} {:<9} DETAIL",
        "CAPABILITY", "STATE", "HOW", "REQUIRED"
    )?;
    for c in &probe.capabilities {
        let state = match c.state {
            CapabilityState::Yes => "yes",
            CapabilityState::No => "NO",
            CapabilityState::Unknown => "unknown",
        };
        writeln!(
            out,
            "{:<30} {:<8} {:<9} {:<9} {}",
            c.name,
            state,
            c.how,
            if c.required { "yes" } else { "no" },
            c.detail
        )?;
    }
    for w in probe.warnings() {
        writeln!(out, "\nWARNING   {}: {}", w.name, w.detail)?;
    }
    match probe.first_missing() {
        None => writeln!(out, "\nresult    bottles can run on {}", probe.runtime),
        Some(c) => writeln!(
            out,
            "\nresult    `bottle up` would refuse: {} is not available",
            c.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("bottle").chain(args.iter().copied()))
    }

    #[test]
    fn up_flags_become_a_request() {
        let Command::Up(args) = parse(&[
            "up",
            "--runtime",
            "auto",
            "--accept-weakness",
            "broadcast-reaches-host",
            "--allow-mount",
            "/srv/x",
            "--dry-run",
        ])
        .unwrap()
        .command
        else {
            panic!("not up");
        };
        assert_eq!(runtime_request(args.runtime), Some(RuntimeRequest::Auto));
        assert_eq!(args.accept_weakness, ["broadcast-reaches-host"]);
        assert_eq!(args.allow_mount, [PathBuf::from("/srv/x")]);
        assert!(args.dry_run);
        assert_eq!(
            runtime_request(Some(RuntimeArg::AppleContainer)),
            Some(RuntimeRequest::Named(RuntimeKind::AppleContainer))
        );
        assert_eq!(runtime_request(None), None);
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for args in [
            &["up", "--runtime", "podman"][..],
            &["exec", "b"][..],
            &["frobnicate"][..],
        ] {
            let err = parse(args).expect_err("refused");
            assert_eq!(err.exit_code(), Exit::Usage.code(), "{args:?}");
        }
        assert_eq!(CliError::BadEnv("X".into()).exit(), Exit::Usage);
        assert!(CliError::BadEnv("X".into())
            .to_string()
            .contains("KEY=VALUE"));
    }

    /// A reader that went away, as `| head` leaves stdout.
    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_ends_quietly() {
        let err: CliError = render_ps(&mut Closed, &[]).unwrap_err().into();
        assert!(err.is_closed_pipe());
        assert_eq!(err.exit(), Exit::Done);
        // Where the exit code carries the verdict, a closed pipe keeps it.
        assert!(shown(render_ps(&mut Closed, &[])).is_ok());
        let other: CliError = std::io::Error::other("disk full").into();
        assert!(!other.is_closed_pipe());
        assert_eq!(other.exit(), Exit::Failed);
    }

    #[test]
    fn probe_table_says_what_up_would_do() {
        let mut probe = Probe::absent(RuntimeKind::Smolvm, "smolvm".into(), "not found".into());
        let mut out = Vec::new();
        render_probe(&mut out, &probe).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("`bottle up` would refuse: reachable is not available"),
            "{text}"
        );
        probe.capabilities.clear();
        let mut out = Vec::new();
        render_probe(&mut out, &probe).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("bottles can run on smolvm"));
        // A warning does not refuse, but is shown below the table.
        probe
            .capabilities
            .push(bottle_runtimes::Capability::warning(
                "host-env-hidden-from-images",
                false,
                "inferred",
                "upgrade".into(),
            ));
        let mut out = Vec::new();
        render_probe(&mut out, &probe).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("WARNING   host-env-hidden-from-images: upgrade")
                && text.contains("bottles can run on smolvm"),
            "{text}"
        );
    }
}
