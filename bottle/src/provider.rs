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

pub use crate::config::Provider;
use crate::config::{AgentAuth, ApiBase, EnvValue};
use bottle_policy::{AllowRule, AuthScheme, CredentialHeader, CredentialRule, HostPattern};
use std::collections::BTreeMap;

/// The API host `provider`'s CLI talks to by default.
pub fn api_host(provider: Provider) -> Option<&'static str> {
    match provider {
        Provider::Claude => Some("api.anthropic.com"),
        Provider::Codex => Some("api.openai.com"),
        Provider::Shell => None,
    }
}

/// The header (and scheme) the API reads `auth` from.
fn header(auth: AgentAuth) -> (&'static str, Option<&'static str>) {
    match auth {
        AgentAuth::AnthropicApiKey => ("x-api-key", None),
        _ => ("authorization", Some("Bearer")),
    }
}

/// What a placeholder for `var` starts with, so a CLI that checks the
/// shape of its key accepts it.
pub fn placeholder_prefix(var: &str) -> Option<&'static str> {
    match var {
        "ANTHROPIC_API_KEY" => Some("sk-ant-api03-"),
        "CLAUDE_CODE_OAUTH_TOKEN" => Some("sk-ant-oat01-"),
        "OPENAI_API_KEY" => Some("sk-proj-"),
        _ => None,
    }
}

/// The variable the credential of `auth` is known by: its own name, and
/// for the host's Codex login the variable Codex reads (`OPENAI_API_KEY`),
/// whose value then comes from that login ([`codex_login_key`]).
pub fn credential_var(auth: AgentAuth) -> &'static str {
    match auth {
        AgentAuth::CodexLogin => "OPENAI_API_KEY",
        other => other.as_str(),
    }
}

/// The API key of the host's Codex login: `OPENAI_API_KEY` in
/// `$CODEX_HOME/auth.json` (default `~/.codex/auth.json`), as `codex login
/// --with-api-key` writes it. A ChatGPT sign-in (tokens only) is refused:
/// its tokens are refreshed against other hosts and cannot be injected as a
/// fixed header.
pub fn codex_login_key(codex_home: &std::path::Path) -> Result<String, ProviderError> {
    let path = codex_home.join("auth.json");
    let why = |w: String| ProviderError::CodexLogin { why: w };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| why(format!("cannot read {}: {e}", path.display())))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| why(format!("{} is not JSON: {e}", path.display())))?;
    match v["OPENAI_API_KEY"].as_str().map(str::trim) {
        Some(k) if !k.is_empty() => Ok(k.to_string()),
        _ if v["tokens"].is_object() => Err(why(format!(
            "{} holds a ChatGPT sign-in, not an API key",
            path.display()
        ))),
        _ => Err(why(format!("{} holds no OPENAI_API_KEY", path.display()))),
    }
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
    #[error("[agent] auth = \"codex-login\": {why}\n  fix: on the host run `codex login --with-api-key` (bottle injects an API key, never a ChatGPT sign-in), or use auth = \"OPENAI_API_KEY\"")]
    CodexLogin { why: String },
    #[error("[agent] api_base host `{0}` is not a host bottle can allow: {1}\n  fix: name the server by a host name the sidecar resolves")]
    BadApiHost(String, String),
}

/// The policy and environment `provider` adds, for `auth` (the config's,
/// its default filled in) and `api` (`[agent] api_base`; the provider's
/// own host when `None`). Over plain `http` no credential is injected (the
/// sidecar sends credentials over TLS only): the CLI's variable then holds
/// a fixed dummy so it starts, for a local server that needs no key.
pub fn additions(
    provider: Provider,
    auth: Option<AgentAuth>,
    api: Option<&ApiBase>,
) -> Result<Option<Additions>, ProviderError> {
    let Some(default_host) = api_host(provider) else {
        return Ok(None);
    };
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
    let plain = api.is_some_and(|a| a.scheme == "http");
    let mut env = BTreeMap::new();
    let credential = match auth {
        Some(a) if !plain => {
            let (header, scheme) = header(a);
            Some(CredentialRule {
                host: pattern.clone(),
                header: CredentialHeader::parse(header).expect("a valid header name"),
                from_env: credential_var(a).to_string(),
                scheme: scheme.map(|s| AuthScheme::parse(s).expect("a valid scheme")),
            })
        }
        Some(a) => {
            env.insert(credential_var(a).to_string(), "bottle-no-key".to_string());
            None
        }
        None => None,
    };
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
            if let Some(base) = api {
                env.insert("ANTHROPIC_BASE_URL".into(), base.to_string());
            }
        }
        Provider::Codex => {
            if let Some(base) = api {
                env.insert("OPENAI_BASE_URL".into(), base.to_string());
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
        cfg.agent
            .env
            .entry(k.clone())
            .or_insert_with(|| EnvValue::Literal(v.clone()));
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
        // The bottle is the sandbox: Codex's own (bubblewrap) cannot run in
        // an unprivileged container and would leave the agent read-only.
        (Provider::Codex, Mode::Attached { args }) => {
            (s(&["codex", "-s", "danger-full-access"]), args)
        }
        (Provider::Codex, Mode::Resume { args }) => (
            s(&["codex", "resume", "--last", "-s", "danger-full-access"]),
            args,
        ),
        (Provider::Codex, Mode::Headless { prompt, json, args }) => {
            let mut v = s(&[
                "codex",
                "exec",
                "--skip-git-repo-check",
                "-s",
                "danger-full-access",
            ]);
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
        let a = additions(Provider::Claude, Provider::Claude.default_auth(), None)
            .unwrap()
            .unwrap();
        assert_eq!(a.allow.to_string(), "api.anthropic.com");
        let c = a.credential.unwrap();
        assert_eq!(
            (c.header.as_str(), c.from_env.as_str(), c.scheme),
            ("x-api-key", "ANTHROPIC_API_KEY", None)
        );
        assert_eq!(a.env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"], "1");
        let oauth = additions(
            Provider::Claude,
            Some(AgentAuth::ClaudeCodeOauthToken),
            None,
        )
        .unwrap()
        .unwrap()
        .credential
        .unwrap();
        assert_eq!(oauth.header.as_str(), "authorization");
        assert_eq!(oauth.scheme.unwrap().as_str(), "Bearer");
    }

    #[test]
    fn a_local_model_is_reached_by_name() {
        let api = ApiBase::parse("https://models.lan:8443/v1").unwrap();
        let a = additions(Provider::Codex, Provider::Codex.default_auth(), Some(&api))
            .unwrap()
            .unwrap();
        assert_eq!(a.allow.to_string(), "models.lan:8443");
        assert_eq!(a.credential.unwrap().host.to_string(), "models.lan");
        assert_eq!(a.env["OPENAI_BASE_URL"], "https://models.lan:8443/v1");
        // Plain http: no credential, a dummy key so the CLI starts.
        let api = ApiBase::parse("http://models.lan:8080").unwrap();
        let a = additions(Provider::Codex, Provider::Codex.default_auth(), Some(&api))
            .unwrap()
            .unwrap();
        assert!(a.credential.is_none());
        assert_eq!(a.env["OPENAI_API_KEY"], "bottle-no-key");
    }

    #[test]
    fn the_codex_login_gives_its_api_key_only() {
        let a = additions(Provider::Codex, Some(AgentAuth::CodexLogin), None)
            .unwrap()
            .unwrap();
        let c = a.credential.unwrap();
        assert_eq!(
            (c.from_env.as_str(), c.header.as_str()),
            ("OPENAI_API_KEY", "authorization")
        );
        let dir = tempfile::tempdir().unwrap();
        let e = codex_login_key(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("cannot read") && e.contains("codex login --with-api-key"),
            "{e}"
        );
        std::fs::write(
            dir.path().join("auth.json"),
            r#"{"OPENAI_API_KEY":"sk-x","tokens":null}"#,
        )
        .unwrap();
        assert_eq!(codex_login_key(dir.path()).unwrap(), "sk-x");
        std::fs::write(
            dir.path().join("auth.json"),
            r#"{"OPENAI_API_KEY":null,"tokens":{"access_token":"t"}}"#,
        )
        .unwrap();
        let e = codex_login_key(dir.path()).unwrap_err().to_string();
        assert!(e.contains("ChatGPT sign-in"), "{e}");
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
                "-s",
                "danger-full-access",
                "--json",
                "fix it",
                "--model",
                "x"
            ]
        );
        assert_eq!(
            command(Provider::Codex, &Mode::Resume { args: vec![] }),
            ["codex", "resume", "--last", "-s", "danger-full-access"]
        );
        assert_eq!(
            command(Provider::Shell, &Mode::Attached { args: vec![] }),
            ["bash", "-l"]
        );
    }
}
