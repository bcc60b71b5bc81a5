//! `bottle-sidecar`: the one process on a bottle's sidecar that enforces its
//! policy.
//!
//! [`Sidecar::start`] loads the rendered policy, the secrets and the bottle CA
//! from the policy file's directory (refusing to start without a valid
//! policy and CA: fail closed), binds every listener (on the internal
//! address only, as `main.rs` resolves it), and
//! [`Sidecar::serve`] runs them on one tokio runtime with live reload. The
//! binary (`main.rs`) only parses arguments and calls [`run`],
//! [`health::check`] or [`netinfo::collect`].
//!
//! Module map:
//! - [`egress`]: the decision for a destination, the destination guard's
//!   use, the connection to a checked address, the refusal text; shared by
//!   every listener. [`guard`] gathers the guard's inputs (resolution,
//!   gateways, own addresses).
//! - [`proxy`]: the `:3128` explicit proxy; [`transparent`]: `:80`/`:443`;
//!   [`dns`]: `:53`.
//! - [`intercept`]: what happens inside a tunnel: TLS termination, per-request
//!   checks, upstream forwarding, WebSocket. [`tls`]: the CA, leaves and the
//!   upstream TLS client. [`secrets`]: credential injection.
//! - [`forward`], [`exchange`], [`io`], [`listen`]: the plumbing those share.
//! - [`limits`]: the policy's connection caps and idle deadline on every
//!   client socket; [`body`]: the agent's request body (gap deadline, a
//!   broken body is the agent's 400/408 and the upstream request is
//!   aborted); [`redact`]: credential values never come back in responses.
//! - [`supervise`]: proposals, decisions, grants and the connections
//!   `egress.unknown = "ask"` holds; [`mcp`]: the `:8765/mcp` MCP server the
//!   agent asks through.
//! - [`log`]: lifecycle events on stdout and the audit JSONL, rate-limited
//!   per client. [`policy_file`] and [`reload`]: the policy in force.
//! - [`gitgate`]: the `:8080` git gate (smart HTTP per `[[git.remote]]`,
//!   push rules, mirrors, the token-holding relay); [`scan`]: the secret
//!   detectors it runs over pushed commits.

#![forbid(unsafe_code)]

pub mod body;
pub mod budget;
pub mod dlp;
pub mod dns;
pub mod egress;
pub mod exchange;
pub mod forward;
pub mod gitgate;
pub mod guard;
pub mod health;
pub mod intercept;
pub mod io;
pub mod limits;
pub mod listen;
pub mod log;
pub mod mcp;
pub mod netinfo;
pub mod policy_file;
pub mod proxy;
pub mod redact;
pub mod reload;
pub mod scan;
pub mod secrets;
pub mod shared;
pub mod supervise;
pub mod tls;
pub mod transparent;
pub mod upstream_proxy;
pub mod wire;

use crate::dns::Dns;
use crate::gitgate::GitGate;
use crate::guard::{LocalNetSource, Resolver};
use crate::listen::ListenError;
use crate::log::Logger;
use crate::mcp::Mcp;
use crate::policy_file::{Live, PolicyFileError};
use crate::proxy::Proxy;
use crate::reload::{Stamp, Watch};
use crate::secrets::{Secrets, SecretsError};
use crate::shared::Shared;
use crate::supervise::{SuperviseConfig, Supervisor};
use crate::tls::{Tls, TlsSetupError};
use crate::transparent::Transparent;
use serde_json::json;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The explicit proxy's port on the internal address.
pub const PROXY_PORT: u16 = 3128;
/// DNS's port (UDP and TCP) on the internal address.
pub const DNS_PORT: u16 = 53;
/// The transparent HTTP listener's port on the internal address.
pub const HTTP_PORT: u16 = 80;
/// The transparent HTTPS listener's port on the internal address.
pub const HTTPS_PORT: u16 = 443;
/// The secrets file, next to the policy file.
pub const SECRETS_FILE: &str = "secrets.json";
/// How often the policy and secrets files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// What `bottle-sidecar run` was asked to do, already validated. A listener
/// set to `None` is off.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub policy_path: PathBuf,
    pub proxy_listen: Option<SocketAddr>,
    pub dns_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub https_listen: Option<SocketAddr>,
    /// The address DNS answers for allowed names (the sidecar's internal
    /// IPv4). Required while DNS is on.
    pub dns_answer: Option<Ipv4Addr>,
    pub reload_interval: Duration,
    /// How names are resolved for egress (tests use a fixed table).
    pub resolver: Resolver,
    /// Where the guard's gateways and own addresses come from.
    pub local_net: LocalNetSource,
    /// Destination port of the transparent HTTP listener (80).
    pub transparent_http_port: u16,
    /// Destination port of the transparent HTTPS listener (443).
    pub transparent_https_port: u16,
    /// The git gate's address; it listens only when the policy has
    /// `[[git.remote]]` entries.
    pub git_listen: Option<SocketAddr>,
    /// Where the git gate keeps its mirrors (read-write, the sidecar's own).
    pub git_state: PathBuf,
    /// The supervise queue directory (`--supervise-state`); `None` turns
    /// the supervise service off whatever the policy says.
    pub supervise_state: Option<PathBuf>,
    /// The MCP server's address; it is bound only while the policy has
    /// `supervise.enabled` at start.
    pub supervise_listen: Option<SocketAddr>,
    /// How often a waiting tool call reports progress.
    pub supervise_progress: Duration,
    /// Where the egress budget counters are kept across restarts
    /// (`budget.json` beside the audit log); `None` keeps them in memory.
    pub budget_state: Option<PathBuf>,
}

impl RunConfig {
    /// Production defaults for the policy at `policy_path`, with every
    /// listener off (`main.rs` puts each on the internal address).
    pub fn new(policy_path: impl Into<PathBuf>) -> Self {
        RunConfig {
            policy_path: policy_path.into(),
            proxy_listen: None,
            dns_listen: None,
            http_listen: None,
            https_listen: None,
            dns_answer: None,
            reload_interval: RELOAD_INTERVAL,
            resolver: Resolver::System,
            local_net: LocalNetSource::System,
            transparent_http_port: 80,
            transparent_https_port: 443,
            git_listen: None,
            git_state: PathBuf::from(gitgate::DEFAULT_GIT_STATE),
            supervise_state: None,
            supervise_listen: None,
            supervise_progress: supervise::PROGRESS_EVERY,
            budget_state: None,
        }
    }

    /// The directory holding the policy and, next to it, the CA and secrets.
    pub fn state_dir(&self) -> &Path {
        self.policy_path.parent().unwrap_or(Path::new("."))
    }
}

/// Why the sidecar did not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("refusing to start without a valid policy: {0}")]
    Policy(#[from] PolicyFileError),
    #[error("refusing to start without valid secrets: {0}")]
    Secrets(#[from] SecretsError),
    #[error("refusing to start without TLS interception: {0}")]
    Tls(#[from] TlsSetupError),
    #[error("--dns-answer is required while the DNS listener is on: it is the address allowed names resolve to (the sidecar's internal IPv4)")]
    NoDnsAnswer,
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("refusing to start without the supervise queue: {0}")]
    Supervise(#[from] bottle_policy::QueueError),
}

/// The addresses the listeners actually bound (`None` when off).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addrs {
    pub proxy: Option<SocketAddr>,
    pub dns_udp: Option<SocketAddr>,
    pub dns_tcp: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    /// The git gate (only when the policy has remotes).
    pub git: Option<SocketAddr>,
    /// The supervise MCP server.
    pub supervise: Option<SocketAddr>,
}

/// A started sidecar: everything loaded and bound, nothing served yet.
pub struct Sidecar {
    shared: Arc<Shared>,
    close: watch::Sender<()>,
    proxy: Option<Proxy>,
    dns: Option<Dns>,
    http: Option<Transparent>,
    https: Option<Transparent>,
    git: Option<GitGate>,
    mcp: Option<Mcp>,
    watch: Watch,
    stamps: (Stamp, Stamp),
    addrs: Addrs,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl Sidecar {
    /// Loads the policy, secrets and CA (refusing to start without them) and
    /// binds every listener that is on.
    pub async fn start(config: &RunConfig, logger: Logger) -> Result<Sidecar, RunError> {
        let dir = config.state_dir().to_path_buf();
        let secrets_path = dir.join(SECRETS_FILE);
        let stamps = (Stamp::of(&config.policy_path), Stamp::of(&secrets_path));
        let policy = policy_file::load(&config.policy_path)?;
        logger.limit_audit(policy.limits.audit_max_bytes);
        let secrets = Secrets::load(&secrets_path)?;
        let tls = Tls::load(&dir)?;
        let dns_answer = match (config.dns_listen, config.dns_answer) {
            (Some(_), None) => return Err(RunError::NoDnsAnswer),
            (_, ip) => ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
        };
        logger.event(
            "policy-loaded",
            json!({
                "path": config.policy_path.display().to_string(),
                "bottle": policy.bottle,
                "allow": policy.egress.allow.len(),
                "rules": policy.egress.rules.len(),
                "credentials": policy.egress.credentials.len(),
                "git_remotes": policy.git.remotes.len(),
                "secrets": !secrets.is_empty(),
            }),
        );
        let mut addrs = Addrs::default();
        let proxy = match config.proxy_listen {
            Some(addr) => {
                let p = Proxy::bind(addr).await?;
                addrs.proxy = Some(p.local_addr());
                Some(p)
            }
            None => None,
        };
        let dns = match config.dns_listen {
            Some(addr) => {
                let d = Dns::bind(addr, dns_answer).await?;
                addrs.dns_udp = Some(d.udp_addr());
                addrs.dns_tcp = Some(d.tcp_addr());
                Some(d)
            }
            None => None,
        };
        let http = match config.http_listen {
            Some(addr) => {
                let t = Transparent::bind(addr, false).await?;
                addrs.http = Some(t.local_addr());
                Some(t)
            }
            None => None,
        };
        let https = match config.https_listen {
            Some(addr) => {
                let t = Transparent::bind(addr, true).await?;
                addrs.https = Some(t.local_addr());
                Some(t)
            }
            None => None,
        };
        let git = match config.git_listen {
            Some(addr) if !policy.git.remotes.is_empty() => {
                let g = GitGate::bind(addr, &config.git_state).await?;
                addrs.git = Some(g.local_addr());
                Some(g)
            }
            _ => None,
        };
        let mcp = match (&config.supervise_state, config.supervise_listen) {
            (Some(_), Some(addr)) if policy.supervise.enabled => {
                let m = Mcp::bind(addr).await?;
                addrs.supervise = Some(m.local_addr());
                Some(m)
            }
            _ => None,
        };
        let supervisor = match &config.supervise_state {
            Some(dir) => {
                let url = match addrs.supervise.or(config.supervise_listen) {
                    Some(a) => format!("http://{a}{}", mcp::MCP_PATH),
                    None => "the sidecar's port 8765".to_string(),
                };
                Some(Arc::new(Supervisor::open(&SuperviseConfig {
                    queue_dir: dir.clone(),
                    url,
                    progress_every: config.supervise_progress,
                })?))
            }
            None => None,
        };
        let policy = match &supervisor {
            Some(s) => s.overlay(policy),
            None => policy,
        };
        let (close, closed) = watch::channel(());
        let shared = Arc::new(Shared {
            policy: Live::new(policy),
            secrets: Live::new(secrets),
            local: Live::new(config.local_net.read()),
            logger: logger.clone(),
            tls,
            resolver: config.resolver.clone(),
            transparent_http_port: config.transparent_http_port,
            transparent_https_port: config.transparent_https_port,
            closed,
            conns: crate::limits::Conns::default(),
            budget: budget::Meter::open(config.budget_state.clone(), &logger),
            supervisor,
            dlp: crate::dlp::Engines::default(),
        });
        Ok(Sidecar {
            shared,
            close,
            proxy,
            dns,
            http,
            https,
            git,
            mcp,
            watch: Watch {
                policy: config.policy_path.clone(),
                secrets: secrets_path,
                interval: config.reload_interval,
                local: config.local_net.clone(),
            },
            stamps,
            addrs,
        })
    }

    /// The addresses bound.
    pub fn addrs(&self) -> &Addrs {
        &self.addrs
    }

    /// The git gate's `git` spawner, when the gate is on (tests read the
    /// children it ran).
    pub fn git_children(&self) -> Option<gitgate::git::Git> {
        self.git.as_ref().map(GitGate::git)
    }

    /// Serves until `shutdown` completes, then stops every listener,
    /// connection and tunnel.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let shared = self.shared;
        let logger = shared.logger.clone();
        let mut tasks = tokio::task::JoinSet::new();
        let listening = |name: &str, addr: SocketAddr| {
            logger.event(
                "listening",
                json!({"listener": name, "addr": addr.to_string()}),
            );
        };
        if let Some(p) = self.proxy {
            listening("proxy", p.local_addr());
            tasks.spawn(p.serve(shared.clone()));
        }
        if let Some(d) = self.dns {
            listening("dns-udp", d.udp_addr());
            listening("dns-tcp", d.tcp_addr());
            tasks.spawn(d.serve(shared.clone()));
        }
        if let Some(t) = self.http {
            listening("http", t.local_addr());
            tasks.spawn(t.serve(shared.clone()));
        }
        if let Some(t) = self.https {
            listening("https", t.local_addr());
            tasks.spawn(t.serve(shared.clone()));
        }
        if let Some(g) = self.git {
            listening("git-gate", g.local_addr());
            tasks.spawn(g.serve(shared.clone()));
        }
        if let Some(m) = self.mcp {
            listening("supervise", m.local_addr());
            tasks.spawn(m.serve(shared.clone()));
        }
        if shared.supervisor.is_some() {
            tasks.spawn(supervise::poll(shared.clone()));
        }
        {
            let closing = shared.clone();
            tasks.spawn(budget::persist_loop(
                shared.budget.clone(),
                logger.clone(),
                Duration::from_secs(1),
                async move { closing.closing().await },
            ));
        }
        let (policy_stamp, secrets_stamp) = self.stamps;
        tasks.spawn(reload::watch(
            self.watch,
            shared.clone(),
            policy_stamp,
            secrets_stamp,
        ));
        shutdown.await;
        drop(self.close);
        while tasks.join_next().await.is_some() {}
        logger.flush_suppressed();
        logger.event("stopped", json!({}));
    }
}

/// Starts the sidecar and serves until `shutdown` completes.
pub async fn run(
    config: &RunConfig,
    logger: Logger,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let sidecar = Sidecar::start(config, logger).await?;
    sidecar.serve(shutdown).await;
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT, logging which. The handlers are
/// installed when this is called (the sidecar is PID 1 in its container, where
/// an unhandled SIGTERM is ignored), so call it before serving.
pub fn shutdown_signal(logger: Logger) -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        logger.event("shutdown", json!({"signal": name}));
    })
}
