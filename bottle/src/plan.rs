//! The plan: everything `bottle up` will create, resolved from the config and
//! flags before any side effect, so `--dry-run` can print it and errors are
//! found before a single resource exists.

use crate::hardening;
use bottle_policy::Policy;
use bottle_runtimes::{Mount, Role, RuntimeKind, LABEL_NAME};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Ports of the sidecar on the internal network (docs/design.md §3).
pub const PROXY_PORT: u16 = 3128;
/// Where the sidecar sees its part of the state dir.
pub const SIDECAR_STATE_MOUNT: &str = "/etc/bottle";
/// Where the sidecar writes its audit log.
pub const SIDECAR_LOG_MOUNT: &str = "/var/log/bottle";
/// Where the sidecar keeps the git gate's mirrors (the state dir's `git/`).
pub const SIDECAR_GIT_MOUNT: &str = "/var/lib/bottle/git";
/// Where the sidecar keeps the supervise queue (the state dir's `supervise/`).
pub const SIDECAR_SUPERVISE_MOUNT: &str = "/var/lib/bottle/supervise";
/// The supervise MCP server's port and path on the sidecar.
pub const SUPERVISE_PORT: u16 = 8765;
/// Where the agent sees the bottle's CA certificate (a directory
/// `update-ca-certificates` reads).
pub const AGENT_CA_DIR: &str = "/usr/local/share/ca-certificates/bottle";
/// Variables toolchains read for their trust roots ([`crate::trust::CA_ENV`]).
pub use crate::trust::CA_ENV;

/// What runs in the agent container.
#[derive(Debug, Clone, Serialize)]
pub struct AgentPlan {
    pub image: String,
    pub command: Vec<String>,
    pub workdir: String,
    /// User-provided environment as written (`${HOST_VAR}` and `?prompt`
    /// shown as such, never their values; secrets stay in the sidecar).
    pub env: BTreeMap<String, crate::config::EnvValue>,
    /// The values the agent gets: the literals once planned, every value
    /// once `up` resolved them ([`crate::config::resolve_env_values`]).
    /// Never serialised or shown.
    #[serde(skip)]
    pub resolved_env: crate::config::ResolvedEnv,
    /// `[agent] auth = "codex-login"`: `OPENAI_API_KEY` is read from the
    /// host's Codex login, not its environment.
    pub codex_login: bool,
    /// Canonical sources (see [`crate::mounts`]), git protections included.
    pub mounts: Vec<Mount>,
    /// Empty `.git` directories to create (owned by `uid:gid`) before the
    /// agent starts, so read-only mounts can cover them.
    pub plant: Vec<(PathBuf, Option<(u32, u32)>)>,
    /// `uid:gid` the agent runs as: the owner of its read-write mounts;
    /// `None` keeps the image's user (root) when that owner is root or there
    /// is no read-write mount.
    pub user: Option<String>,
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub cap_drop: Vec<String>,
}

/// How the runtime was chosen.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeChoice {
    /// `--runtime` / `BOTTLE_RUNTIME`, `bottle.toml`, or `auto`.
    pub by: String,
    /// Under `auto`: runtimes tried first and why each was passed over.
    pub skipped: Vec<(RuntimeKind, String)>,
}

/// The images a bottle runs on, and which of them `up` builds first.
#[derive(Debug, Clone, Serialize)]
pub struct ImagePlan {
    /// What the images are built from, and why that one.
    pub base: String,
    pub base_why: String,
    /// The sidecar image of this build of bottle (a digest of the binary).
    pub sidecar: String,
    /// The runtime's architecture, which the sidecar binary was built for.
    pub sidecar_arch: bottle_runtimes::Arch,
    /// The static `bottle-sidecar` the sidecar image is built from.
    pub sidecar_binary: PathBuf,
    pub build_sidecar: bool,
    pub agent: String,
    pub build_agent: bool,
    /// The provider image `agent` names (built FROM the agent image when
    /// missing), for `[agent] provider` claude or codex.
    pub provider: Option<ProviderImage>,
}

/// A provider image to ensure ([`crate::provider_image`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderImage {
    pub provider: String,
    pub version: String,
    /// The agent image it is built FROM.
    pub from: String,
}

/// A fully resolved bottle.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub name: String,
    pub runtime: RuntimeKind,
    /// How [`Plan::runtime`] was chosen (`None` until a runtime answered).
    pub runtime_choice: Option<RuntimeChoice>,
    /// Filled in once the runtime is known (`None` before).
    pub images: Option<ImagePlan>,
    /// Weaknesses the user accepts (`--accept-weakness`); the probe decides
    /// which of them are present.
    pub accept_weakness: Vec<bottle_runtimes::Weakness>,
    /// Why this config needs the user's consent (see [`crate::pin::judge`]);
    /// empty when it may start silently.
    pub consent: Vec<String>,
    /// Path of bottle.toml, or `built-in default`.
    pub config_source: String,
    /// Canonical path of bottle.toml (`None` for the built-in default): half
    /// of the bottle's identity for pinning (see [`crate::pin`]).
    pub config_path: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub policy: Policy,
    pub internal_network: String,
    pub egress_network: String,
    pub sidecar_name: String,
    pub agent_name: String,
    pub agent: AgentPlan,
    /// PEM files trusted for upstream TLS besides the public roots, read.
    pub upstream_roots: Vec<crate::materials::UpstreamRoot>,
    /// Things the user should know that do not stop the bottle.
    pub notes: Vec<String>,
}

/// Problems that stop a plan from being made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Mount(#[from] crate::mounts::MountError),
    #[error(transparent)]
    Roots(#[from] crate::materials::MaterialError),
    #[error("--name `{name}`: {why}")]
    BadName { name: String, why: String },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Git(#[from] bottle_policy::GitFieldError),
}

impl Plan {
    /// Resource names derive from the bottle name only, so `down` can find
    /// them again and two bottles never clash.
    pub fn resource_name(name: &str, role: Role) -> String {
        format!("bottle-{name}-{role}")
    }

    /// Labels for a resource of this bottle in `role`.
    pub fn labels(&self, role: Role) -> BTreeMap<String, String> {
        labels_for(&self.name, role)
    }

    pub fn agent_cap_drop() -> Vec<String> {
        hardening::names(hardening::AGENT_CAP_DROP)
    }

    /// The proxy environment the agent gets once the sidecar's address is known.
    pub fn proxy_env(sidecar_ip: &str) -> BTreeMap<String, String> {
        let proxy = format!("http://{sidecar_ip}:{PROXY_PORT}");
        let no_proxy = format!("localhost,127.0.0.1,::1,{sidecar_ip}");
        let mut env = BTreeMap::new();
        for k in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
            env.insert(k.to_string(), proxy.clone());
            env.insert(k.to_lowercase(), proxy.clone());
        }
        env.insert("NO_PROXY".into(), no_proxy.clone());
        env.insert("no_proxy".into(), no_proxy);
        env.insert("BOTTLE_SIDECAR".into(), sidecar_ip.to_string());
        let ca = crate::trust::ca_path();
        for k in CA_ENV {
            env.insert(k.to_string(), ca.clone());
        }
        env
    }
}

pub fn labels_for(name: &str, role: Role) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_NAME.to_string(), name.to_string()), role.label()])
}

/// The runtime `bottle.toml` asks for, if it names one (`auto` names none).
pub fn config_runtime(cfg: &crate::config::Config) -> Option<RuntimeKind> {
    cfg.runtime.kind()
}

/// The bottle's name: `--name`, checked, else the config's.
pub fn bottle_name(
    cfg: &crate::config::Config,
    name_override: Option<&str>,
) -> Result<String, PlanError> {
    match name_override {
        Some(n) => Ok(crate::config::BottleName::parse(n)
            .map_err(|e| PlanError::BadName {
                name: n.into(),
                why: e.to_string(),
            })?
            .as_str()
            .to_string()),
        None => Ok(cfg.name().to_string()),
    }
}

/// Resolves a config (and an optional `--name`) into a plan. Reads the file
/// system (mount sources, git config, upstream roots); changes nothing.
/// `grants` are what the user allowed on the command line for this run
/// (`--allow-mount`, `--allow-root-owner`).
pub fn build(
    host: &crate::host::Host,
    cfg: &crate::config::Config,
    source: &str,
    name_override: Option<&str>,
    runtime: RuntimeKind,
    grants: &crate::mounts::Grants,
) -> Result<Plan, PlanError> {
    let name = bottle_name(cfg, name_override)?;
    let exposure = crate::mounts::resolve(cfg.mounts(), source, grants, &host.facts)?;
    let upstream_roots = cfg
        .upstream_roots
        .iter()
        .map(|p| crate::materials::read_root(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut notes = exposure.notes.clone();
    if cfg.egress.unknown == bottle_policy::Unknown::Ask && !cfg.supervise.enabled {
        notes.push(
            "egress.unknown = \"ask\" needs [supervise] enabled = true; with supervise off it is enforced as deny"
                .into(),
        );
    }
    let config_path = cfg
        .source
        .as_deref()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()));
    // Both sides canonical: a symlink on the way does not hide it.
    if let Some(file) = &config_path {
        if let Some(m) = crate::mounts::exposing(file, &exposure.mounts) {
            notes.push(format!(
                "WARNING: the read-write mount of {} exposes {} to the agent: it can edit the policy your next `bottle up` reads",
                m.source.display(),
                file.display()
            ));
        }
    }
    let state = host.state.bottle(&name);
    Ok(Plan {
        // Everything the config says the sidecar enforces (its
        // `[supervise]` limits and `[dlp]` included), under the plan's name.
        policy: Policy {
            bottle: name.clone(),
            ..cfg.policy()?
        },
        runtime,
        runtime_choice: None,
        images: None,
        accept_weakness: Vec::new(),
        consent: Vec::new(),
        config_source: source.into(),
        config_path,
        state_dir: state.root().to_path_buf(),
        internal_network: Plan::resource_name(&name, Role::Internal),
        egress_network: Plan::resource_name(&name, Role::Egress),
        sidecar_name: Plan::resource_name(&name, Role::Sidecar),
        agent_name: Plan::resource_name(&name, Role::Agent),
        agent: AgentPlan {
            image: cfg.agent.image.clone(),
            command: cfg.agent.command.clone(),
            workdir: cfg.agent.workdir.clone(),
            env: cfg.agent.env.clone(),
            resolved_env: crate::config::ResolvedEnv(
                cfg.agent
                    .env
                    .iter()
                    .filter_map(|(k, v)| match v {
                        crate::config::EnvValue::Literal(s) => Some((k.clone(), s.clone())),
                        _ => None,
                    })
                    .collect(),
            ),
            codex_login: false,
            mounts: exposure.mounts,
            plant: exposure.plant,
            user: exposure.user.map(|(u, g)| format!("{u}:{g}")),
            cpus: Some(
                cfg.agent
                    .cpus
                    .unwrap_or_else(crate::config::AgentConfig::default_cpus),
            ),
            memory_bytes: Some(
                cfg.agent
                    .memory
                    .map(|m| m.bytes())
                    .unwrap_or(crate::config::AgentConfig::DEFAULT_MEMORY),
            ),
            pids: Some(
                cfg.agent
                    .pids
                    .unwrap_or(crate::config::AgentConfig::DEFAULT_PIDS),
            ),
            cap_drop: Plan::agent_cap_drop(),
        },
        upstream_roots,
        name,
        notes,
    })
}

/// The items as strings, for `{:?}` lists in messages.
pub fn strings<T: std::fmt::Display>(items: &[T]) -> Vec<String> {
    items.iter().map(T::to_string).collect()
}

/// The plan as text for `--dry-run`.
pub fn render(plan: &Plan) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "bottle `{}` on {} (config: {})",
        plan.name, plan.runtime, plan.config_source
    );
    if let Some(c) = &plan.runtime_choice {
        let _ = writeln!(s, "  runtime     {} (chosen by {})", plan.runtime, c.by);
        for (k, why) in &c.skipped {
            let _ = writeln!(s, "              skipped {k}: {why}");
        }
    }
    if let Some(i) = &plan.images {
        let how = |build: bool| if build { "built first" } else { "present" };
        let _ = writeln!(
            s,
            "  images      sidecar {} ({}, {} from {}), agent {} ({}), base {} ({})",
            i.sidecar,
            how(i.build_sidecar),
            i.sidecar_arch,
            i.sidecar_binary.display(),
            i.agent,
            how(i.build_agent),
            i.base,
            i.base_why
        );
    }
    for w in &plan.accept_weakness {
        let _ = writeln!(s, "  accepts     weakness {w} (if the probe finds it)");
    }
    let _ = writeln!(s, "  state dir   {}", plan.state_dir.display());
    let _ = writeln!(
        s,
        "  networks    {} (internal, no host address), {} (egress)",
        plan.internal_network, plan.egress_network
    );
    let _ = writeln!(
        s,
        "  sidecar     {} (egress first, internal second; no capabilities, runs as the state dir owner)",
        plan.sidecar_name
    );
    let _ = writeln!(
        s,
        "  agent       {} image {} command {:?}",
        plan.agent_name, plan.agent.image, plan.agent.command
    );
    let _ = writeln!(
        s,
        "              workdir {}, caps dropped {}, no-new-privileges",
        plan.agent.workdir,
        plan.agent.cap_drop.join(",")
    );
    let _ = writeln!(
        s,
        "              runs as {}",
        plan.agent
            .user
            .as_deref()
            .unwrap_or("the image's user (root: no read-write mount owned by another user)")
    );
    let _ = writeln!(
        s,
        "              limits: cpus {}, memory {}, pids {}",
        plan.agent
            .cpus
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into()),
        plan.agent
            .memory_bytes
            .map(|m| format!("{} MiB", m / (1024 * 1024)))
            .unwrap_or_else(|| "-".into()),
        plan.agent
            .pids
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into()),
    );
    let l = &plan.policy.limits;
    let _ = writeln!(
        s,
        "  sidecar     limits: {} connections ({} per client), {}s handshake, {}s body gap, {}s idle, audit rotated at {} MiB",
        l.max_connections,
        l.max_connections_per_client,
        l.handshake_timeout_secs,
        l.body_timeout_secs,
        l.idle_timeout_secs,
        l.audit_max_bytes >> 20
    );
    for m in &plan.agent.mounts {
        let _ = writeln!(
            s,
            "  mount       {} -> {} ({})",
            m.source.display(),
            m.target,
            if m.read_only { "ro" } else { "rw" }
        );
    }
    for k in plan.agent.env.keys() {
        let _ = writeln!(s, "  env         {k}");
    }
    for c in &plan.policy.egress.credentials {
        let _ = writeln!(
            s,
            "  credential  {} header {} for {} (the agent sees a placeholder)",
            c.from_env, c.header, c.host
        );
    }
    for r in &plan.policy.egress.rules {
        let _ = writeln!(
            s,
            "  rule        {} methods {:?} paths {:?}",
            r.host,
            strings(&r.methods),
            strings(&r.paths)
        );
    }
    for r in &plan.upstream_roots {
        let _ = writeln!(
            s,
            "  upstream ca {} (sha256 {})",
            r.path.display(),
            &r.sha256[..16]
        );
    }
    for p in &plan.policy.egress.allow_private {
        let _ = writeln!(s, "  private ok  {p}");
    }
    if let Some(p) = &plan.policy.egress.upstream_proxy {
        // The URL holds no credential (config load refuses one); only the
        // variable's name is shown.
        let auth = match &p.auth_from_env {
            Some(var) => format!(", credential from {var}"),
            None => String::new(),
        };
        let _ = writeln!(s, "  via proxy   {} (CONNECT{auth})", p.url);
    }
    if plan.policy.egress.allow.is_empty() {
        let _ = writeln!(s, "  egress      deny all");
    } else {
        for a in &plan.policy.egress.allow {
            let _ = writeln!(s, "  egress      allow {a}");
        }
        let _ = writeln!(s, "  egress      deny everything else");
    }
    for r in &plan.policy.git.remotes {
        let _ = writeln!(
            s,
            "  git         {} = {} ({}; push {:?}, protected {:?}{}{}{})",
            r.name.as_str(),
            r.upstream,
            r.mode.as_str(),
            r.push.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            r.protected.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            if r.allow_force { ", force allowed" } else { "" },
            if r.stale_ok { ", stale mirror ok" } else { "" },
            r.credential
                .as_deref()
                .map(|c| format!(", token from {c} (sidecar only)"))
                .unwrap_or_default()
        );
    }
    for n in &plan.notes {
        let _ = writeln!(s, "  note        {n}");
    }
    for c in &plan.consent {
        let _ = writeln!(s, "  consent     + {c}");
    }
    s
}
