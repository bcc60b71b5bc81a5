//! Agent providers: what `[agent] provider = "claude" | "codex"` adds to a
//! bottle, and how `bottle run` starts the CLI.
//!
//! A provider is policy and a command line, nothing the agent can change:
//!
//! - its API host is allowed (the default, or the host of `[agent]
//!   api_base` for a local model reached through the sidecar by name);
//! - the host credential `[agent] auth` names is injected there by the
//!   sidecar (`x-api-key`, or `authorization: Bearer`), and the agent's
//!   environment holds only a placeholder of the same variable, shaped like
//!   the real thing so the CLI starts;
//! - the CLI's non-essential traffic (telemetry, update checks) is switched
//!   off by its own variables, so the only host it needs is its API;
//! - [`command`] gives the CLI's argv for an attached session, a headless
//!   prompt or a resumed session.
//!
//! `shell` is no provider: a plain shell in the agent image.

use bottle_policy::{AllowRule, AuthScheme, CredentialHeader, CredentialRule, HostPattern};
use serde::Serialize;
use std::collections::BTreeMap;

/// The agent CLI a bottle runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Claude,
    Codex,
    Shell,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Claude => "claude",
            Provider::Codex => "codex",
            Provider::Shell => "shell",
        }
    }

    /// The API host the CLI talks to by default.
    pub fn api_host(self) -> Option<&'static str> {
        match self {
            Provider::Claude => Some("api.anthropic.com"),
            Provider::Codex => Some("api.openai.com"),
            Provider::Shell => None,
        }
    }
}

/// The host credential the provider's API gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Auth {
    AnthropicApiKey,
    ClaudeOauthToken,
    OpenaiApiKey,
}

impl Auth {
    /// The host variable read at `up` (and the agent's placeholder's name).
    pub fn var(self) -> &'static str {
        match self {
            Auth::AnthropicApiKey => "ANTHROPIC_API_KEY",
            Auth::ClaudeOauthToken => "CLAUDE_CODE_OAUTH_TOKEN",
            Auth::OpenaiApiKey => "OPENAI_API_KEY",
        }
    }

    /// The default for `provider`.
    pub fn default_for(provider: Provider) -> Option<Auth> {
        match provider {
            Provider::Claude => Some(Auth::AnthropicApiKey),
            Provider::Codex => Some(Auth::OpenaiApiKey),
            Provider::Shell => None,
        }
    }

    /// The header (and scheme) the API reads the credential from.
    fn header(self) -> (&'static str, Option<&'static str>) {
        match self {
            Auth::AnthropicApiKey => ("x-api-key", None),
            Auth::ClaudeOauthToken | Auth::OpenaiApiKey => ("authorization", Some("Bearer")),
        }
    }

    /// What the placeholder starts with, so a CLI that checks the shape of
    /// its key accepts it.
    pub fn placeholder_prefix(var: &str) -> Option<&'static str> {
        match var {
            "ANTHROPIC_API_KEY" => Some("sk-ant-api03-"),
            "CLAUDE_CODE_OAUTH_TOKEN" => Some("sk-ant-oat01-"),
            "OPENAI_API_KEY" => Some("sk-proj-"),
            _ => None,
        }
    }
}

/// Where the API is: the provider's host, or `[agent] api_base`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Api {
    /// `https://host[:port][/path]`.
    pub base: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

/// What a provider adds to a bottle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Additions {
    pub allow: AllowRule,
    pub credential: Option<CredentialRule>,
    pub env: BTreeMap<String, String>,
}

/// Why a provider cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("[agent] provider = \"{provider}\" cannot use auth = \"{auth}\"\n  fix: {fix}")]
    AuthMismatch {
        provider: &'static str,
        auth: &'static str,
        fix: &'static str,
    },
    #[error("[agent] api_base host `{0}` is not a host bottle can allow: {1}\n  fix: name the server by a host name the sidecar resolves")]
    BadApiHost(String, String),
}

/// The policy and environment `provider` adds, for `auth` (its default when
/// `None`) and `api` (the provider's own host when `None`).
pub fn additions(
    provider: Provider,
    auth: Option<Auth>,
    api: Option<&Api>,
) -> Result<Option<Additions>, ProviderError> {
    let Some(default_host) = provider.api_host() else {
        return Ok(None);
    };
    let auth = auth.or(Auth::default_for(provider));
    if let Some(a) = auth {
        let fits = matches!(
            (provider, a),
            (
                Provider::Claude,
                Auth::AnthropicApiKey | Auth::ClaudeOauthToken
            ) | (Provider::Codex, Auth::OpenaiApiKey)
        );
        if !fits {
            return Err(ProviderError::AuthMismatch {
                provider: provider.as_str(),
                auth: a.var(),
                fix: match provider {
                    Provider::Claude => "use ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN",
                    _ => "use OPENAI_API_KEY",
                },
            });
        }
    }
    let (host, port) = match api {
        Some(a) => (a.host.as_str(), a.port),
        None => (default_host, None),
    };
    let entry = match port {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let bad = |e: String| ProviderError::BadApiHost(host.to_string(), e);
    let allow = AllowRule::parse(&entry).map_err(|e| bad(e.to_string()))?;
    let pattern = HostPattern::parse(host).map_err(|e| bad(e.to_string()))?;
    let credential = auth.map(|a| {
        let (header, scheme) = a.header();
        CredentialRule {
            host: pattern.clone(),
            header: CredentialHeader::parse(header).expect("a valid header name"),
            from_env: a.var().to_string(),
            scheme: scheme.map(|s| AuthScheme::parse(s).expect("a valid scheme")),
        }
    });
    let mut env = BTreeMap::new();
    match provider {
        Provider::Claude => {
            for (k, v) in [
                ("DISABLE_AUTOUPDATER", "1"),
                ("DISABLE_TELEMETRY", "1"),
                ("DISABLE_ERROR_REPORTING", "1"),
                ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
            ] {
                env.insert(k.to_string(), v.to_string());
            }
            if let Some(base) = api.and_then(|a| a.base.clone()) {
                env.insert("ANTHROPIC_BASE_URL".into(), base);
            }
        }
        Provider::Codex => {
            if let Some(base) = api.and_then(|a| a.base.clone()) {
                env.insert("OPENAI_BASE_URL".into(), base);
            }
        }
        Provider::Shell => {}
    }
    Ok(Some(Additions {
        allow,
        credential,
        env,
    }))
}

/// Adds `additions` to a loaded config: the allow entry and the credential
/// when the config lacks them, the variables the user did not set.
pub fn apply(cfg: &mut crate::config::Config, additions: &Additions) {
    if !cfg.egress.allow.contains(&additions.allow) {
        cfg.egress.allow.push(additions.allow.clone());
    }
    if let Some(c) = &additions.credential {
        let same_header = cfg
            .egress
            .credentials
            .iter()
            .any(|r| r.host == c.host && r.header == c.header);
        if !same_header {
            cfg.egress.credentials.push(c.clone());
        }
    }
    for (k, v) in &additions.env {
        cfg.agent.env.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

/// How `bottle run` starts the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// An interactive session, with the user's extra arguments.
    Attached { args: Vec<String> },
    /// One prompt, no terminal; `json` asks the CLI for machine output.
    Headless {
        prompt: String,
        json: bool,
        args: Vec<String>,
    },
    /// The last session again (`bottle resume`).
    Resume { args: Vec<String> },
}

/// The CLI's argv for `mode`.
pub fn command(provider: Provider, mode: &Mode) -> Vec<String> {
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let (mut argv, extra) = match (provider, mode) {
        (Provider::Shell, Mode::Attached { args } | Mode::Resume { args }) => {
            (s(&["bash", "-l"]), args)
        }
        (Provider::Shell, Mode::Headless { prompt, args, .. }) => {
            let mut v = s(&["bash", "-lc"]);
            v.push(prompt.clone());
            (v, args)
        }
        (Provider::Claude, Mode::Attached { args }) => (s(&["claude"]), args),
        (Provider::Claude, Mode::Resume { args }) => (s(&["claude", "--continue"]), args),
        (Provider::Claude, Mode::Headless { prompt, json, args }) => {
            let mut v = s(&["claude", "-p", prompt]);
            v.extend(s(&[
                "--output-format",
                if *json { "stream-json" } else { "text" },
            ]));
            if *json {
                v.push("--verbose".into());
            }
            (v, args)
        }
        (Provider::Codex, Mode::Attached { args }) => (s(&["codex"]), args),
        (Provider::Codex, Mode::Resume { args }) => (s(&["codex", "resume", "--last"]), args),
        (Provider::Codex, Mode::Headless { prompt, json, args }) => {
            let mut v = s(&["codex", "exec", "--skip-git-repo-check"]);
            if *json {
                v.push("--json".into());
            }
            v.push(prompt.clone());
            (v, args)
        }
    };
    argv.extend(extra.iter().cloned());
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claude_gets_its_host_its_key_header_and_quiet_variables() {
        let a = additions(Provider::Claude, None, None).unwrap().unwrap();
        assert_eq!(a.allow.to_string(), "api.anthropic.com");
        let c = a.credential.unwrap();
        assert_eq!(
            (c.header.as_str(), c.from_env.as_str(), c.scheme),
            ("x-api-key", "ANTHROPIC_API_KEY", None)
        );
        assert_eq!(a.env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"], "1");
        let oauth = additions(Provider::Claude, Some(Auth::ClaudeOauthToken), None)
            .unwrap()
            .unwrap()
            .credential
            .unwrap();
        assert_eq!(oauth.header.as_str(), "authorization");
        assert_eq!(oauth.scheme.unwrap().as_str(), "Bearer");
    }

    #[test]
    fn a_local_model_is_reached_by_name() {
        let api = Api {
            base: Some("https://models.lan:8443/v1".into()),
            host: "models.lan".into(),
            port: Some(8443),
        };
        let a = additions(Provider::Codex, None, Some(&api))
            .unwrap()
            .unwrap();
        assert_eq!(a.allow.to_string(), "models.lan:8443");
        assert_eq!(a.credential.unwrap().host.to_string(), "models.lan");
        assert_eq!(a.env["OPENAI_BASE_URL"], "https://models.lan:8443/v1");
    }

    #[test]
    fn auth_must_fit_the_provider() {
        let e = additions(Provider::Codex, Some(Auth::AnthropicApiKey), None).unwrap_err();
        assert!(e.to_string().contains("use OPENAI_API_KEY"), "{e}");
        assert!(additions(Provider::Shell, None, None).unwrap().is_none());
    }

    #[test]
    fn command_lines() {
        let headless = Mode::Headless {
            prompt: "fix it".into(),
            json: true,
            args: vec!["--model".into(), "x".into()],
        };
        assert_eq!(
            command(Provider::Claude, &headless),
            [
                "claude",
                "-p",
                "fix it",
                "--output-format",
                "stream-json",
                "--verbose",
                "--model",
                "x"
            ]
        );
        assert_eq!(
            command(Provider::Codex, &headless),
            [
                "codex",
                "exec",
                "--skip-git-repo-check",
                "--json",
                "fix it",
                "--model",
                "x"
            ]
        );
        assert_eq!(
            command(Provider::Codex, &Mode::Resume { args: vec![] }),
            ["codex", "resume", "--last"]
        );
        assert_eq!(
            command(Provider::Shell, &Mode::Attached { args: vec![] }),
            ["bash", "-l"]
        );
    }
}
