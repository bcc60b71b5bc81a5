//! The agent-facing values of `[agent]`: which agent CLI runs
//! ([`Provider`]), which host credential its API gets ([`AgentAuth`]), a
//! base URL override for local models ([`ApiBase`]), the CLI's version
//! ([`AgentVersion`]), and the three forms an `env` value can take
//! ([`EnvValue`]) with their resolution at `bottle up` ([`resolve_env`]).
//!
//! `${VAR}` values are read from the host and `?prompt` values asked on the
//! terminal only when the bottle starts; the resolved values live in memory
//! only (never in state, the pin, logs or the plan display).

use crate::host::Host;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, Write};

// ---------------------------------------------------------------------------
// provider and auth

/// `[agent] provider`: the agent CLI the provider image carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Anthropic's Claude Code.
    Claude,
    /// OpenAI's Codex CLI.
    Codex,
    /// No agent CLI: the image's shell (the default).
    #[default]
    Shell,
}

impl Provider {
    pub const NAMES: [&'static str; 3] = ["claude", "codex", "shell"];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Claude => "claude",
            Provider::Codex => "codex",
            Provider::Shell => "shell",
        }
    }

    pub fn parse(s: &str) -> Option<Provider> {
        match s {
            "claude" => Some(Provider::Claude),
            "codex" => Some(Provider::Codex),
            "shell" => Some(Provider::Shell),
            _ => None,
        }
    }

    /// The credentials this provider's API accepts (none for `shell`).
    pub fn auths(self) -> &'static [AgentAuth] {
        match self {
            Provider::Claude => &[AgentAuth::AnthropicApiKey, AgentAuth::ClaudeCodeOauthToken],
            Provider::Codex => &[AgentAuth::OpenaiApiKey, AgentAuth::CodexLogin],
            Provider::Shell => &[],
        }
    }

    /// The credential used when `auth` is absent.
    pub fn default_auth(self) -> Option<AgentAuth> {
        self.auths().first().copied()
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[agent] auth`: which host credential the provider's API gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AgentAuth {
    #[serde(rename = "ANTHROPIC_API_KEY")]
    AnthropicApiKey,
    #[serde(rename = "CLAUDE_CODE_OAUTH_TOKEN")]
    ClaudeCodeOauthToken,
    #[serde(rename = "OPENAI_API_KEY")]
    OpenaiApiKey,
    /// The codex CLI's own login (`codex login`), not a host variable.
    #[serde(rename = "codex-login")]
    CodexLogin,
}

impl AgentAuth {
    pub const NAMES: [&'static str; 4] = [
        "ANTHROPIC_API_KEY",
        "CLAUDE_CODE_OAUTH_TOKEN",
        "OPENAI_API_KEY",
        "codex-login",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentAuth::AnthropicApiKey => "ANTHROPIC_API_KEY",
            AgentAuth::ClaudeCodeOauthToken => "CLAUDE_CODE_OAUTH_TOKEN",
            AgentAuth::OpenaiApiKey => "OPENAI_API_KEY",
            AgentAuth::CodexLogin => "codex-login",
        }
    }

    pub fn parse(s: &str) -> Option<AgentAuth> {
        [
            AgentAuth::AnthropicApiKey,
            AgentAuth::ClaudeCodeOauthToken,
            AgentAuth::OpenaiApiKey,
            AgentAuth::CodexLogin,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }

    /// The host environment variable holding the credential; `None` for
    /// `codex-login`.
    pub fn host_var(self) -> Option<&'static str> {
        match self {
            AgentAuth::CodexLogin => None,
            other => Some(other.as_str()),
        }
    }
}

impl fmt::Display for AgentAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Does `auth` fit `provider`? The message names the fix.
pub fn check_auth_fits(provider: Provider, auth: AgentAuth) -> Result<(), String> {
    if provider.auths().contains(&auth) {
        return Ok(());
    }
    if provider == Provider::Shell {
        return Err(format!(
            "`{auth}` needs an agent CLI, but provider is \"shell\" (the default), which runs none; set provider = \"claude\" or \"codex\", or remove auth"
        ));
    }
    let fits: Vec<String> = provider
        .auths()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    Err(format!(
        "`{auth}` does not fit provider \"{provider}\"; {provider} takes {}",
        fits.join(" or ")
    ))
}

// ---------------------------------------------------------------------------
// api_base

/// Why an `api_base` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiBaseError {
    #[error("`{0}`: api_base starts with https:// or http://")]
    Scheme(String),
    #[error("`{0}`: api_base cannot carry a user or password; give the credential with `auth`")]
    Userinfo(String),
    #[error("`{0}`: api_base is a base URL without a query or fragment (`?`, `#`)")]
    Query(String),
    #[error("`{url}`: `{host}` is an IP address; a local model is reached through the sidecar by name, never by host address: write a host name (and allow it in [egress])")]
    Ip { url: String, host: String },
    #[error("`{url}`: {why}")]
    Host { url: String, why: String },
    #[error("`{0}`: the port is a number from 1 to 65535")]
    Port(String),
    #[error("`{0}`: the path has spaces or control characters; percent-encode them")]
    Path(String),
}

/// `[agent] api_base`: `http(s)://name[:port][/path]`, a host NAME only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ApiBase {
    /// `https` or `http`.
    pub scheme: String,
    /// Normalised host name (never an IP address).
    pub host: String,
    pub port: Option<u16>,
    /// `""` or a path starting with `/`, as written.
    pub path: String,
}

impl ApiBase {
    pub fn parse(s: &str) -> Result<ApiBase, ApiBaseError> {
        let lower = s.get(..8).map(str::to_ascii_lowercase).unwrap_or_default();
        let (scheme, rest) = if lower.starts_with("https://") {
            ("https", &s[8..])
        } else if lower.starts_with("http://") {
            ("http", &s[7..])
        } else {
            return Err(ApiBaseError::Scheme(s.to_owned()));
        };
        if rest.contains(['?', '#']) {
            return Err(ApiBaseError::Query(s.to_owned()));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(ApiBaseError::Userinfo(s.to_owned()));
        }
        if authority.starts_with('[') {
            let host = authority
                .split_once(']')
                .map_or(authority, |(h, _)| h)
                .trim_start_matches('[');
            return Err(ApiBaseError::Ip {
                url: s.to_owned(),
                host: host.to_owned(),
            });
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| ApiBaseError::Port(s.to_owned()))?;
                (h, Some(port))
            }
            None => (authority, None),
        };
        let host = match bottle_policy::HostPattern::parse(host) {
            Ok(bottle_policy::HostPattern::Exact(name)) => name,
            Ok(bottle_policy::HostPattern::Ip(_)) => {
                return Err(ApiBaseError::Ip {
                    url: s.to_owned(),
                    host: host.to_owned(),
                })
            }
            Ok(bottle_policy::HostPattern::Suffix(_)) => {
                return Err(ApiBaseError::Host {
                    url: s.to_owned(),
                    why: "a wildcard names no one host; write the model server's name".into(),
                })
            }
            Err(e) => {
                return Err(ApiBaseError::Host {
                    url: s.to_owned(),
                    why: e.to_string(),
                })
            }
        };
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ApiBaseError::Path(s.to_owned()));
        }
        Ok(ApiBase {
            scheme: scheme.into(),
            host,
            port,
            path: path.to_owned(),
        })
    }
}

impl fmt::Display for ApiBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        f.write_str(&self.path)
    }
}

impl TryFrom<String> for ApiBase {
    type Error = ApiBaseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ApiBase::parse(&s)
    }
}

impl From<ApiBase> for String {
    fn from(a: ApiBase) -> String {
        a.to_string()
    }
}

// ---------------------------------------------------------------------------
// version

/// `[agent] version`: the agent CLI's package version, passed to an image
/// build argument, so only `[0-9A-Za-z.+-]`, 1 to 64 characters, starting
/// with a letter or digit (a leading `-` could read as an option).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentVersion(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a version: write 1 to 64 characters of 0-9, A-Z, a-z, `.`, `+` and `-`, starting with a letter or digit (e.g. \"2.0.14\"); it goes into an image build argument")]
pub struct VersionError(String);

impl AgentVersion {
    pub fn parse(s: &str) -> Result<AgentVersion, VersionError> {
        let ok = (1..=64).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'));
        if ok {
            Ok(AgentVersion(s.to_owned()))
        } else {
            Err(VersionError(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for AgentVersion {
    type Error = VersionError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        AgentVersion::parse(&s)
    }
}

impl From<AgentVersion> for String {
    fn from(v: AgentVersion) -> String {
        v.0
    }
}

// ---------------------------------------------------------------------------
// env values

/// One `[agent] env` value, as written.
///
/// - exactly `${NAME}` (NAME = `[A-Z_][A-Z0-9_]*`): the host variable NAME,
///   read at `bottle up`;
/// - `?text`: asked on the terminal at `bottle up`, `text` being the prompt;
/// - `??text`: the literal `?text`;
/// - anything else: itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum EnvValue {
    Literal(String),
    Host(String),
    Prompt(String),
}

impl EnvValue {
    pub fn parse(s: &str) -> EnvValue {
        if let Some(name) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
            if is_host_var_name(name) {
                return EnvValue::Host(name.to_owned());
            }
        }
        if let Some(rest) = s.strip_prefix("??") {
            return EnvValue::Literal(format!("?{rest}"));
        }
        if let Some(text) = s.strip_prefix('?') {
            return EnvValue::Prompt(text.to_owned());
        }
        EnvValue::Literal(s.to_owned())
    }

    /// True for a value known from the config alone.
    pub fn is_literal(&self) -> bool {
        matches!(self, EnvValue::Literal(_))
    }
}

fn is_host_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// The form as written (so `--json` and the pin show `${VAR}`, never a
/// resolved value).
impl fmt::Display for EnvValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvValue::Literal(s) if s.starts_with('?') => write!(f, "?{s}"),
            EnvValue::Literal(s) => f.write_str(s),
            EnvValue::Host(n) => write!(f, "${{{n}}}"),
            EnvValue::Prompt(p) => write!(f, "?{p}"),
        }
    }
}

impl From<String> for EnvValue {
    fn from(s: String) -> Self {
        EnvValue::parse(&s)
    }
}

impl From<&str> for EnvValue {
    fn from(s: &str) -> Self {
        EnvValue::parse(s)
    }
}

impl From<EnvValue> for String {
    fn from(v: EnvValue) -> String {
        v.to_string()
    }
}

/// Why the agent's environment could not be resolved at `bottle up`.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("agent.env.{var} = \"${{{host_var}}}\": the host variable {host_var} is not set\n  fix: export {host_var} before `bottle up`, or change agent.env.{var} in bottle.toml")]
    HostUnset { var: String, host_var: String },
    #[error("agent.env.{var} asks for its value on the terminal, and there is none\n  fix: set it in the host environment and use \"${{VAR}}\" (e.g. {var} = \"${{{var}}}\")")]
    NoTty { var: String },
    #[error("agent.env.{var}: reading the answer from the terminal failed: {source}\n  fix: run `bottle up` at a terminal, or set it in the host environment and use \"${{VAR}}\"")]
    Read {
        var: String,
        #[source]
        source: std::io::Error,
    },
}

/// Asks the user for `?prompt` values. Tests answer in-process.
pub trait Prompter: Send {
    /// The answer for variable `var`, asked with `text`.
    fn ask(&mut self, var: &str, text: &str) -> Result<String, EnvError>;
}

/// Asks on `/dev/tty` (not stdin, which may be a pipe); no terminal is
/// [`EnvError::NoTty`]. The answer is echoed: these are values such as a
/// region or a project id, not secrets (secrets go through
/// `[[egress.credential]]`).
#[derive(Debug, Default, Clone, Copy)]
pub struct TtyPrompter;

impl Prompter for TtyPrompter {
    fn ask(&mut self, var: &str, text: &str) -> Result<String, EnvError> {
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .map_err(|_| EnvError::NoTty { var: var.into() })?;
        let read = |source| EnvError::Read {
            var: var.into(),
            source,
        };
        let mut out = &tty;
        let shown = if text.trim().is_empty() { var } else { text };
        write!(out, "{shown} ({var}): ").map_err(read)?;
        out.flush().map_err(read)?;
        let mut line = String::new();
        std::io::BufReader::new(&tty)
            .read_line(&mut line)
            .map_err(read)?;
        Ok(line.trim_end_matches(['\n', '\r']).to_owned())
    }
}

/// The agent's `env` with every value resolved: `${VAR}` from `host`,
/// `?prompt` through `prompter`. Nothing here is logged; the caller must not
/// store the result either.
pub fn resolve_env(
    agent: &super::AgentConfig,
    host: &Host,
    prompter: &mut dyn Prompter,
) -> Result<BTreeMap<String, String>, EnvError> {
    resolve_env_values(&agent.env, host, prompter)
}

/// [`resolve_env`] over the values alone (as a plan carries them).
pub fn resolve_env_values(
    env: &BTreeMap<String, EnvValue>,
    host: &Host,
    prompter: &mut dyn Prompter,
) -> Result<BTreeMap<String, String>, EnvError> {
    let mut out = BTreeMap::new();
    for (k, v) in env {
        let value = match v {
            EnvValue::Literal(s) => s.clone(),
            EnvValue::Host(name) => host.var(name).ok_or_else(|| EnvError::HostUnset {
                var: k.clone(),
                host_var: name.clone(),
            })?,
            EnvValue::Prompt(text) => prompter.ask(k, text)?,
        };
        out.insert(k.clone(), value);
    }
    Ok(out)
}

/// Resolved environment values: `Debug` shows the names only, and it never
/// serialises, so a plan printed for debugging leaks nothing.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ResolvedEnv(pub BTreeMap<String, String>);

impl fmt::Debug for ResolvedEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}
