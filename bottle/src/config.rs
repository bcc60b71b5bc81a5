//! `bottle.toml`: reading it, checking it, and the typed [`Config`] the rest of
//! the CLI plans from.
//!
//! Loading happens in three steps, so that a user sees every mistake in one
//! run instead of fixing them one at a time:
//!
//! 1. parse with `toml::de::DeTable`, which keeps the byte span of every key
//!    and value (TOML syntax errors stop here, all of them reported);
//! 2. walk that tree against the schema in `schema.rs`, collecting every
//!    unknown key, wrong type, missing key and bad value with its place;
//! 3. only when the walk found nothing, deserialise into the typed structs
//!    (`deny_unknown_fields` there is a safety net, not the primary check) and
//!    resolve relative paths against the directory holding the file.
//!
//! Host patterns and allow entries are checked by `bottle_policy`, the crate
//! the sidecar enforces with, so the CLI never accepts a rule the sidecar
//! would read differently.

mod agent;
mod error;
mod extends;
mod schema;
mod template;
mod value;

#[cfg(test)]
mod tests;

pub use agent::{
    check_auth_fits, resolve_env, resolve_env_values, AgentAuth, AgentVersion, ApiBase,
    ApiBaseError, EnvError, EnvValue, Prompter, Provider, ResolvedEnv, TtyPrompter, VersionError,
};
pub use error::{ConfigError, ConfigErrors, ErrorKind};
pub use template::INIT_TEMPLATE;
pub use value::{BottleName, Memory, Mount, RuntimeChoice, ValueError, RESERVED_ENV};

use bottle_policy::{AllowRule, CredentialRule, EgressPolicy, HttpRule, Policy, Unknown};
use error::Found;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file `bottle up` looks for in the current directory.
pub const FILE_NAME: &str = "bottle.toml";

/// Everything `bottle.toml` says, checked and resolved: names are valid, host
/// patterns parsed, mount sources absolute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// From `name`, else from the directory holding the file.
    pub name: BottleName,
    pub runtime: RuntimeChoice,
    pub agent: AgentConfig,
    /// `[egress]` with `[[egress.rule]]` and `[[egress.credential]]`.
    pub egress: EgressPolicy,
    pub git: GitConfig,
    pub supervise: SuperviseConfig,
    pub sidecar: SidecarConfig,
    /// `[dlp]`: what the sidecar does with secrets in outgoing requests.
    pub dlp: bottle_policy::DlpPolicy,
    /// `egress.upstream_roots`: extra PEM trust roots for upstream TLS
    /// (private CAs), absolute.
    pub upstream_roots: Vec<PathBuf>,
    /// The file this came from (absolute), or `None` for the built-in
    /// default.
    pub source: Option<PathBuf>,
    /// Every file read to make this config (absolute), in merge order:
    /// `extends` parents first, [`Config::source`] last. Empty for the
    /// built-in default.
    pub sources: Vec<PathBuf>,
    /// The directory relative paths were resolved against.
    pub dir: PathBuf,
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Image reference; built from `images/agent` when missing.
    pub image: String,
    /// The agent's main process, program first.
    pub command: Vec<String>,
    /// Absolute working directory inside the agent.
    pub workdir: String,
    /// Bind mounts; sources are absolute once loaded.
    pub mounts: Vec<Mount>,
    /// Extra environment (never bottle's own proxy or `BOTTLE_*` variables):
    /// literals, `${HOST_VAR}` or `?prompt` (see [`EnvValue`]).
    pub env: BTreeMap<String, EnvValue>,
    /// CPU limit; `None` takes [`AgentConfig::default_cpus`].
    pub cpus: Option<f64>,
    /// Memory limit; `None` takes bottle's default ([`AgentConfig::DEFAULT_MEMORY`]).
    pub memory: Option<Memory>,
    /// Process (and thread) limit; `None` takes [`AgentConfig::DEFAULT_PIDS`].
    pub pids: Option<u64>,
    /// The agent CLI the provider image carries (`shell`: none).
    pub provider: Provider,
    /// The host credential the provider's API gets; `None` takes
    /// [`Provider::default_auth`] (see [`AgentConfig::auth`]).
    pub auth: Option<AgentAuth>,
    /// A base URL override for the provider's API (local models).
    pub api_base: Option<ApiBase>,
    /// The agent CLI's package version for the provider image; `None`:
    /// the image's default.
    pub version: Option<AgentVersion>,
}

impl AgentConfig {
    pub const DEFAULT_IMAGE: &'static str = "bottle-agent:latest";
    pub const DEFAULT_WORKDIR: &'static str = "/workspace";
    /// 4 GiB: enough for an agent CLI and a build; a leak stops here, not
    /// at the host's OOM killer.
    pub const DEFAULT_MEMORY: u64 = 4 << 30;
    /// Processes and threads together: a fork bomb stops here.
    pub const DEFAULT_PIDS: u64 = 2048;

    /// Two CPUs, or every CPU of a smaller machine (runtimes refuse more
    /// than they have).
    /// The credential the provider's API gets: `auth`, else the
    /// provider's default (`None` for `shell`).
    pub fn auth(&self) -> Option<AgentAuth> {
        self.auth.or(self.provider.default_auth())
    }

    pub fn default_cpus() -> f64 {
        std::thread::available_parallelism()
            .map(|n| (n.get() as f64).min(2.0))
            .unwrap_or(1.0)
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            image: Self::DEFAULT_IMAGE.into(),
            command: vec!["sleep".into(), "infinity".into()],
            workdir: Self::DEFAULT_WORKDIR.into(),
            mounts: Vec::new(),
            env: BTreeMap::new(),
            cpus: None,
            memory: None,
            pids: None,
            provider: Provider::default(),
            auth: None,
            api_base: None,
            version: None,
        }
    }
}

/// `[git]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitConfig {
    /// `[[git.remote]]` entries, names unique.
    #[serde(rename = "remote")]
    pub remotes: Vec<GitRemote>,
}

/// One `[[git.remote]]`: a repository the agent reaches through the
/// git-gate, as written in `bottle.toml` (checked by the schema with the
/// policy crate's own parsers; [`GitRemote::to_policy`] makes the typed
/// form the sidecar enforces).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitRemote {
    /// The remote's name; the gate serves it at `/<name>.git`.
    pub name: String,
    /// `https://` URL of the real repository.
    pub upstream: String,
    /// Ref patterns the agent may create or update (`agent/*`).
    #[serde(default)]
    pub push: Vec<String>,
    /// Ref patterns never pushed, whatever `push` says.
    #[serde(default)]
    pub protected: Vec<String>,
    /// Host environment variable holding the upstream token, read at
    /// `bottle up`; the token never enters the agent.
    #[serde(default)]
    pub token_from_env: Option<String>,
    /// `fetch` refuses every push; `push` (the default) checks each ref.
    #[serde(default)]
    pub mode: bottle_policy::GitMode,
    /// Accept non-fast-forward pushes to refs `push` allows.
    #[serde(default)]
    pub allow_force: bool,
    /// Serve the last mirror when the upstream cannot be reached.
    #[serde(default)]
    pub stale_ok: bool,
    /// Accept pushed commits that touch CI configuration.
    #[serde(default)]
    pub allow_ci_changes: bool,
}

impl GitRemote {
    /// The remote as the sidecar enforces it.
    pub fn to_policy(&self) -> Result<bottle_policy::GitRemote, bottle_policy::GitFieldError> {
        let patterns = |v: &[String]| {
            v.iter()
                .map(|p| bottle_policy::RefPattern::parse(p))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(bottle_policy::GitRemote {
            name: bottle_policy::RemoteName::parse(&self.name)?,
            upstream: bottle_policy::UpstreamUrl::parse(&self.upstream)?,
            push: patterns(&self.push)?,
            protected: patterns(&self.protected)?,
            mode: self.mode,
            allow_force: self.allow_force,
            stale_ok: self.stale_ok,
            allow_ci_changes: self.allow_ci_changes,
            credential: self.token_from_env.clone(),
        })
    }
}

/// `[supervise]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SuperviseConfig {
    /// Run the MCP supervise service (approvals, `request_egress`).
    pub enabled: bool,
    /// Seconds a request waits for a decision (the tool call, a held
    /// connection); `None`: the sidecar's default, 300.
    pub timeout_secs: Option<u64>,
    /// Requests pending at once per bottle; `None`: 8.
    pub max_pending: Option<u32>,
    /// Requests filed per minute per bottle; `None`: 12.
    pub rate_per_minute: Option<u32>,
}

/// `[sidecar]`: the sidecar's connection limits and deadlines; `None` takes
/// the sidecar's default (`bottle_policy::Limits`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SidecarConfig {
    pub max_connections: Option<u32>,
    pub max_connections_per_client: Option<u32>,
    /// Seconds.
    pub handshake_timeout: Option<u64>,
    /// Seconds.
    pub idle_timeout: Option<u64>,
    /// Seconds.
    pub body_timeout: Option<u64>,
    /// Bytes.
    pub audit_max_bytes: Option<u64>,
    pub h2_max_streams: Option<u32>,
    /// Bytes.
    pub h2_max_header_list_bytes: Option<u32>,
    /// Bytes.
    pub h2_stream_window_bytes: Option<u32>,
    /// Bytes.
    pub h2_connection_window_bytes: Option<u32>,
}

impl Default for SuperviseConfig {
    fn default() -> Self {
        SuperviseConfig {
            enabled: true,
            timeout_secs: None,
            max_pending: None,
            rate_per_minute: None,
        }
    }
}

/// The file as written, before paths are resolved and the name defaulted.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    name: Option<BottleName>,
    #[serde(default)]
    runtime: RuntimeChoice,
    #[serde(default)]
    agent: AgentConfig,
    #[serde(default)]
    egress: EgressSection,
    #[serde(default)]
    git: GitConfig,
    #[serde(default)]
    supervise: SuperviseConfig,
    #[serde(default)]
    sidecar: SidecarConfig,
    #[serde(default)]
    dlp: DlpSection,
}

/// `[dlp]` as written (`[[dlp.host]]` singular, sizes as strings).
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DlpSection {
    enabled: Option<bool>,
    values_from_env: Vec<String>,
    max_body: Option<bottle_policy::ByteSize>,
    oversize: Option<bottle_policy::Oversize>,
    inbound: bool,
    action: BTreeMap<bottle_policy::Detector, bottle_policy::DlpAction>,
    host: Vec<bottle_policy::DlpHost>,
}

impl DlpSection {
    fn policy(self) -> bottle_policy::DlpPolicy {
        let d = bottle_policy::DlpPolicy::default();
        let mut values: Vec<String> = Vec::new();
        for v in self.values_from_env {
            if !values.contains(&v) {
                values.push(v);
            }
        }
        bottle_policy::DlpPolicy {
            enabled: self.enabled.unwrap_or(d.enabled),
            values_from_env: values,
            max_body: self.max_body.map(|s| s.bytes()).unwrap_or(d.max_body),
            oversize: self.oversize.unwrap_or(d.oversize),
            inbound: self.inbound,
            action: self.action,
            host: self.host,
        }
    }
}

/// `[egress]` as written: singular array names, as in `[[egress.rule]]`.
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct EgressSection {
    allow: Vec<AllowRule>,
    unknown: Unknown,
    rule: Vec<HttpRule>,
    credential: Vec<CredentialRule>,
    allow_private: Vec<bottle_policy::HostPattern>,
    upstream_roots: Vec<PathBuf>,
    upstream_proxy: Option<bottle_policy::ProxyUrl>,
    upstream_proxy_auth_env: Option<String>,
    budget: bottle_policy::BudgetPolicy,
}

impl Config {
    /// The bottle's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The egress policy the sidecar enforces.
    pub fn egress_policy(&self) -> EgressPolicy {
        self.egress.clone()
    }

    /// The whole policy, ready to render for the sidecar.
    pub fn policy(&self) -> Result<Policy, bottle_policy::GitFieldError> {
        Ok(Policy {
            limits: self.sidecar_limits(),
            git: self.git_policy()?,
            supervise: {
                let d = bottle_policy::SupervisePolicy::default();
                bottle_policy::SupervisePolicy {
                    enabled: self.supervise.enabled,
                    timeout_secs: self.supervise.timeout_secs.unwrap_or(d.timeout_secs),
                    max_pending: self.supervise.max_pending.unwrap_or(d.max_pending),
                    rate_per_minute: self.supervise.rate_per_minute.unwrap_or(d.rate_per_minute),
                }
            },
            dlp: self.dlp.clone(),
            ..Policy::new(self.name.as_str(), self.egress_policy())
        })
    }

    /// `[[git.remote]]` as the sidecar enforces it.
    pub fn git_policy(&self) -> Result<bottle_policy::GitPolicy, bottle_policy::GitFieldError> {
        bottle_policy::GitPolicy::new(
            self.git
                .remotes
                .iter()
                .map(GitRemote::to_policy)
                .collect::<Result<Vec<_>, _>>()?,
        )
    }

    /// `[sidecar]` over the sidecar's defaults.
    pub fn sidecar_limits(&self) -> bottle_policy::Limits {
        let d = bottle_policy::Limits::default();
        let s = &self.sidecar;
        bottle_policy::Limits {
            max_connections: s.max_connections.unwrap_or(d.max_connections),
            max_connections_per_client: s
                .max_connections_per_client
                .unwrap_or(d.max_connections_per_client),
            handshake_timeout_secs: s.handshake_timeout.unwrap_or(d.handshake_timeout_secs),
            idle_timeout_secs: s.idle_timeout.unwrap_or(d.idle_timeout_secs),
            body_timeout_secs: s.body_timeout.unwrap_or(d.body_timeout_secs),
            audit_max_bytes: s.audit_max_bytes.unwrap_or(d.audit_max_bytes),
            h2_max_streams: s.h2_max_streams.unwrap_or(d.h2_max_streams),
            h2_max_header_list_bytes: s
                .h2_max_header_list_bytes
                .unwrap_or(d.h2_max_header_list_bytes),
            h2_stream_window_bytes: s.h2_stream_window_bytes.unwrap_or(d.h2_stream_window_bytes),
            h2_connection_window_bytes: s
                .h2_connection_window_bytes
                .unwrap_or(d.h2_connection_window_bytes),
        }
    }

    /// The agent's mounts, with absolute host paths.
    pub fn mounts(&self) -> &[Mount] {
        &self.agent.mounts
    }
}

/// Reads and checks `path` (and every file it `extends`). A missing or
/// unreadable file is an error naming the path; use [`load_dir`] to fall
/// back to the default.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let src = std::fs::read_to_string(path).map_err(|e| ConfigErrors::io(path, e))?;
    parse(&src, path)
}

/// Loads `dir/bottle.toml`, or returns [`default_for_dir`] when there is no
/// such file.
pub fn load_dir(dir: &Path) -> Result<Config, ConfigErrors> {
    let path = dir.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(src) => parse(&src, &path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(default_for_dir(dir)),
        Err(e) => Err(ConfigErrors::io(&path, e)),
    }
}

/// Checks `src` as the contents of `path`. `path` names the file in error
/// messages (as given) and locates relative mount paths and `extends`
/// parents (its directory, made absolute against the current directory
/// when needed). Parents are read from disk.
pub fn parse(src: &str, path: &Path) -> Result<Config, ConfigErrors> {
    let layers = extends::load_layers(src, path)?;
    let merged = extends::merge(&layers);
    // The safety net: anything the walks let through that the typed
    // structs refuse is still reported (without a place: the tree is
    // merged from several files).
    let file: ConfigFile = toml::Value::Table(merged).try_into().map_err(|e| {
        let found = Found::new(None, None, ErrorKind::InvalidValue, e.message().to_owned());
        ConfigErrors::from_found(src, path, vec![found])
    })?;
    extends::check_merged(&layers, &file.agent)?;
    if file.egress.upstream_proxy.is_none() && file.egress.upstream_proxy_auth_env.is_some() {
        let found = Found::new(
            None,
            Some("egress.upstream_proxy_auth_env".into()),
            ErrorKind::InvalidValue,
            "names the upstream proxy's credential, but egress.upstream_proxy is not set; add `upstream_proxy = \"http://host:port\"` or remove it".into(),
        );
        return Err(ConfigErrors::from_found(src, path, vec![found]));
    }

    let top = layers.last().expect("the top file is always a layer");
    let source = top.abs.clone();
    let dir = source
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut agent = file.agent;
    for mount in &mut agent.mounts {
        mount.resolve(&dir);
    }
    // A parent and its child may both allow a host: keep the first.
    let mut allow: Vec<AllowRule> = Vec::new();
    for a in file.egress.allow {
        if !allow.contains(&a) {
            allow.push(a);
        }
    }
    let egress = EgressPolicy {
        allow,
        unknown: file.egress.unknown,
        rules: file.egress.rule,
        credentials: file.egress.credential,
        allow_private: file.egress.allow_private,
        upstream_proxy: file
            .egress
            .upstream_proxy
            .map(|url| bottle_policy::UpstreamProxy {
                url,
                auth_from_env: file.egress.upstream_proxy_auth_env,
            }),
        budget: file.egress.budget,
    };
    let upstream_roots = file
        .egress
        .upstream_roots
        .iter()
        .map(|p| dir.join(p))
        .collect();
    Ok(Config {
        name: file.name.unwrap_or_else(|| BottleName::from_dir(&dir)),
        runtime: file.runtime,
        agent,
        egress,
        git: file.git,
        supervise: file.supervise,
        sidecar: file.sidecar,
        dlp: file.dlp.policy(),
        upstream_roots,
        sources: layers.iter().map(|l| l.abs.clone()).collect(),
        source: Some(source),
        dir,
    })
}

/// The configuration of a directory without a `bottle.toml`: named after the
/// directory, default agent, no mounts, all egress denied.
pub fn default_for_dir(dir: &Path) -> Config {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    Config {
        name: BottleName::from_dir(&dir),
        runtime: RuntimeChoice::default(),
        agent: AgentConfig::default(),
        egress: EgressPolicy::default(),
        git: GitConfig::default(),
        supervise: SuperviseConfig::default(),
        sidecar: SidecarConfig::default(),
        dlp: bottle_policy::DlpPolicy::default(),
        upstream_roots: Vec::new(),
        source: None,
        sources: Vec::new(),
        dir,
    }
}

/// TOML syntax errors, one per line: after the first error on a line the
/// parser's recovery tends to report echoes of it.
fn syntax_problems(src: &str, errors: Vec<toml::de::Error>) -> Vec<Found> {
    let mut errors: Vec<(usize, toml::de::Error)> = errors
        .into_iter()
        .map(|e| (e.span().map_or(0, |s| s.start), e))
        .collect();
    errors.sort_by_key(|(at, _)| *at);
    let mut seen_lines = Vec::new();
    let mut out = Vec::new();
    for (at, e) in errors {
        let line = src.as_bytes()[..at.min(src.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        if seen_lines.contains(&line) {
            continue;
        }
        seen_lines.push(line);
        out.push(Found::new(
            e.span(),
            None,
            ErrorKind::Syntax,
            format!("invalid TOML: {}", e.message()),
        ));
    }
    out
}
