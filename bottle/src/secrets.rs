//! Credentials for `[[egress.credential]]` and the git-gate's upstream tokens
//! (`[[git.remote]] token_from_env`): read from the host's environment at
//! `bottle up`, written for the sidecar only (`sidecar/secrets.json`, 0600).
//! An egress credential is replaced in the agent by a placeholder of the same
//! variable name; a git token has no counterpart in the agent at all.
//!
//! The real value never reaches the agent, its environment, its files or any
//! log: the plan carries only placeholders, and `--dry-run` shows names only.

use bottle_policy::{SecretEntry, SecretValue, SecretsFile};
use std::collections::BTreeMap;

/// Shortest `dlp.values_from_env` value the sidecar searches for (the
/// sidecar's own floor: shorter values would match ordinary text).
pub const DLP_MIN_VALUE_LEN: usize = 8;

/// Problems gathering credentials.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("[[egress.credential]] for {host} reads {var} from the host environment, but {var} is not set\n  fix: export {var} before `bottle up`, or remove that credential")]
    Missing { host: String, var: String },
    #[error("[[git.remote]] `{remote}` reads its token from {var}, but {var} is not set\n  fix: export {var} before `bottle up`, or remove `token_from_env` for a public upstream")]
    MissingToken { remote: String, var: String },
    #[error("egress.upstream_proxy_auth_env reads the proxy's credential from {var}, but {var} is not set\n  fix: export {var}=user:password before `bottle up`, or remove upstream_proxy_auth_env for a proxy without authentication")]
    MissingProxyAuth { var: String },
    #[error("{var} (egress.upstream_proxy_auth_env) must hold user:password on one line\n  fix: export {var}=user:password")]
    ProxyAuthForm { var: String },
    #[error("{var} is both the upstream proxy's credential and another credential's variable; a credential for the agent's requests must not be the proxy's\n  fix: use a variable of its own for egress.upstream_proxy_auth_env")]
    ProxyAuthShared { var: String },
    #[error("dlp.values_from_env names {var}, but {var} is not set, so the sidecar could not watch for its value\n  fix: export {var} before `bottle up`, or remove it from dlp.values_from_env")]
    MissingListed { var: String },
    #[error("dlp.values_from_env names {var}, whose value is shorter than {min} characters; a value that short would match ordinary text\n  fix: remove {var} from dlp.values_from_env")]
    ShortListed { var: String, min: usize },
    #[error("cannot read random bytes for placeholders: {0}\n  fix: check that the kernel's random source (getrandom, /dev/urandom) works")]
    Random(String),
}

/// `secrets.json`, in the policy crate's wire form (its `Debug` never
/// shows a value).
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub file: SecretsFile,
    /// The variables the agent gets a placeholder for (egress credentials;
    /// git tokens stay in the sidecar alone).
    pub agent_vars: std::collections::BTreeSet<String>,
}

impl Secrets {
    /// Reads every credential's variable through `lookup` (the process
    /// environment in production). Placeholders in `keep` (from an earlier
    /// render of a running bottle) are kept, so the agent's copy stays valid
    /// across a reload; others are made fresh.
    pub fn gather(
        rules: &[bottle_policy::CredentialRule],
        git: &[bottle_policy::GitRemote],
        lookup: impl Fn(&str) -> Option<String>,
        keep: &BTreeMap<String, String>,
    ) -> Result<Secrets, SecretError> {
        let mut credentials = BTreeMap::new();
        let mut agent_vars = std::collections::BTreeSet::new();
        let wanted = rules
            .iter()
            .map(|r| {
                (
                    r.from_env.as_str(),
                    SecretError::Missing {
                        host: r.host.to_string(),
                        var: r.from_env.clone(),
                    },
                    true,
                )
            })
            .chain(git.iter().filter_map(|g| {
                let var = g.credential.as_deref()?;
                Some((
                    var,
                    SecretError::MissingToken {
                        remote: g.name.as_str().to_string(),
                        var: var.to_string(),
                    },
                    false,
                ))
            }));
        for (var, missing, for_agent) in wanted {
            if for_agent {
                agent_vars.insert(var.to_string());
            }
            if credentials.contains_key(var) {
                continue;
            }
            let value = lookup(var).filter(|v| !v.is_empty()).ok_or(missing)?;
            let placeholder = match keep.get(var) {
                Some(p) => p.clone(),
                None => placeholder(var)?,
            };
            credentials.insert(
                var.to_string(),
                SecretEntry {
                    value: SecretValue::new(value),
                    placeholder,
                },
            );
        }
        Ok(Secrets {
            file: SecretsFile {
                credentials,
                ..SecretsFile::default()
            },
            agent_vars,
        })
    }

    /// Adds the upstream proxy's credential (`egress.upstream_proxy_auth_env`,
    /// `user:password`), read through `lookup`. Like a git token it has no
    /// counterpart in the agent: the sidecar alone sends it, on CONNECT.
    pub fn with_proxy_auth(
        mut self,
        proxy: Option<&bottle_policy::UpstreamProxy>,
        lookup: impl Fn(&str) -> Option<String>,
        keep: &BTreeMap<String, String>,
    ) -> Result<Secrets, SecretError> {
        let Some(var) = proxy.and_then(|p| p.auth_from_env.as_deref()) else {
            return Ok(self);
        };
        let value = lookup(var)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| SecretError::MissingProxyAuth { var: var.into() })?;
        if !value.contains(':') || value.chars().any(char::is_control) {
            return Err(SecretError::ProxyAuthForm { var: var.into() });
        }
        if self.file.credentials.contains_key(var) {
            return Err(SecretError::ProxyAuthShared { var: var.into() });
        }
        let placeholder = match keep.get(var) {
            Some(p) => p.clone(),
            None => placeholder(var)?,
        };
        self.file.credentials.insert(
            var.to_string(),
            SecretEntry {
                value: SecretValue::new(value),
                placeholder,
            },
        );
        Ok(self)
    }

    /// Adds the values of `dlp.values_from_env`, read through `lookup`: the
    /// sidecar blocks them wherever they go out and never sends them itself.
    /// A variable that is not set is refused: the user asked for it to be
    /// watched.
    pub fn with_dlp_values(
        mut self,
        vars: &[String],
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Secrets, SecretError> {
        for var in vars {
            let value = lookup(var)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| SecretError::MissingListed { var: var.clone() })?;
            if value.len() < DLP_MIN_VALUE_LEN {
                return Err(SecretError::ShortListed {
                    var: var.clone(),
                    min: DLP_MIN_VALUE_LEN,
                });
            }
            self.file
                .dlp_values
                .insert(var.clone(), SecretValue::new(value));
        }
        Ok(self)
    }

    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.file.credentials.is_empty() && self.file.dlp_values.is_empty()
    }

    /// The file's bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.file).unwrap_or_default()
    }

    /// What the agent sees: variable name → placeholder, for egress
    /// credentials only.
    pub fn agent_env(&self) -> BTreeMap<String, String> {
        self.file
            .credentials
            .iter()
            .filter(|(k, _)| self.agent_vars.contains(*k))
            .map(|(k, s)| (k.clone(), s.placeholder.clone()))
            .collect()
    }
}

/// Placeholders of an existing `secrets.json` (empty when there is none).
pub fn existing_placeholders(path: &std::path::Path) -> BTreeMap<String, String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeMap::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return BTreeMap::new();
    };
    v["credentials"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, s)| Some((k.clone(), s["placeholder"].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// `bottle-placeholder-<var>-<32 hex>`: recognisable in logs and to the
/// sidecar, worthless anywhere else. A provider's key variable gets its
/// API's key prefix first (`sk-ant-api03-…`), so the CLI accepts it.
fn placeholder(var: &str) -> Result<String, SecretError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| SecretError::Random(e.to_string()))?;
    Ok(format!(
        "{}bottle-placeholder-{}-{}",
        crate::provider::placeholder_prefix(var).unwrap_or(""),
        var.to_ascii_lowercase().replace('_', "-"),
        hex::encode(bytes)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bottle_policy::{CredentialRule, HostPattern};

    fn rule(var: &str) -> CredentialRule {
        CredentialRule {
            host: HostPattern::parse("api.example.com").unwrap(),
            header: bottle_policy::CredentialHeader::parse("x-api-key").unwrap(),
            from_env: var.into(),
            scheme: None,
        }
    }

    #[test]
    fn placeholders_replace_values_for_the_agent() {
        let none = BTreeMap::new();
        let s = Secrets::gather(
            &[rule("API_KEY")],
            &[],
            |k| (k == "API_KEY").then(|| "sk-real-value".to_string()),
            &none,
        )
        .unwrap();
        let env = s.agent_env();
        assert!(env["API_KEY"].starts_with("bottle-placeholder-api-key-"));
        assert!(!env["API_KEY"].contains("sk-real-value"));
        assert_eq!(
            s.file.credentials["API_KEY"].value.expose(),
            "sk-real-value"
        );
        assert!(
            !format!("{s:?}").contains("sk-real-value"),
            "Debug hides it"
        );
        assert!(String::from_utf8(s.to_json())
            .unwrap()
            .contains("\"format\": 1"));
        let again = Secrets::gather(&[rule("API_KEY")], &[], |_| Some("v".into()), &none).unwrap();
        assert_ne!(
            again.agent_env()["API_KEY"],
            env["API_KEY"],
            "placeholders are fresh"
        );
        let kept = Secrets::gather(&[rule("API_KEY")], &[], |_| Some("v2".into()), &env).unwrap();
        assert_eq!(
            kept.agent_env()["API_KEY"],
            env["API_KEY"],
            "a reload keeps them"
        );
        assert_eq!(kept.file.credentials["API_KEY"].value.expose(), "v2");
    }

    #[test]
    fn dlp_values_go_to_the_sidecar_only_and_must_be_set() {
        let env = |k: &str| match k {
            "DB_PASSWORD" => Some("a-long-database-password".to_string()),
            "SHORT" => Some("abc".to_string()),
            _ => None,
        };
        let s = Secrets::gather(&[], &[], env, &BTreeMap::new())
            .unwrap()
            .with_dlp_values(&["DB_PASSWORD".into()], env)
            .unwrap();
        assert!(!s.is_empty());
        assert!(s.agent_env().is_empty());
        let json = String::from_utf8(s.to_json()).unwrap();
        assert!(json.contains("\"dlp_values\"") && json.contains("a-long-database-password"));
        assert!(!format!("{s:?}").contains("a-long-database-password"));
        let e = Secrets::default()
            .with_dlp_values(&["NOPE".into()], env)
            .unwrap_err();
        assert!(e.to_string().contains("NOPE is not set"), "{e}");
        let e = Secrets::default()
            .with_dlp_values(&["SHORT".into()], env)
            .unwrap_err();
        assert!(e.to_string().contains("shorter than 8"), "{e}");
    }

    #[test]
    fn a_missing_variable_is_refused_naming_it() {
        let e = Secrets::gather(&[rule("NOPE")], &[], |_| None, &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("NOPE is not set"), "{e}");
    }

    /// A git token reaches the sidecar's file and nothing the agent sees;
    /// a missing one is refused naming the remote.
    #[test]
    fn git_tokens_stay_in_the_sidecar() {
        let remote: bottle_policy::GitRemote = serde_json::from_value(serde_json::json!({
            "name": "app", "upstream": "https://git.example/acme/app.git", "credential": "GH_TOKEN"
        }))
        .unwrap();
        let s = Secrets::gather(
            &[rule("API_KEY")],
            std::slice::from_ref(&remote),
            |k| Some(format!("value-of-{k}")),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(
            s.file.credentials["GH_TOKEN"].value.expose(),
            "value-of-GH_TOKEN"
        );
        assert_eq!(s.agent_env().keys().collect::<Vec<_>>(), ["API_KEY"]);
        let e = Secrets::gather(&[], &[remote], |_| None, &BTreeMap::new()).unwrap_err();
        assert!(
            e.to_string()
                .contains("`app` reads its token from GH_TOKEN"),
            "{e}"
        );
    }

    #[test]
    fn the_proxy_credential_stays_in_the_sidecar() {
        let proxy = bottle_policy::UpstreamProxy {
            url: bottle_policy::ProxyUrl::parse("http://p.example:3128").unwrap(),
            auth_from_env: Some("CORP_PROXY_AUTH".into()),
        };
        let none = BTreeMap::new();
        let env = |v: &'static str| move |k: &str| (k == "CORP_PROXY_AUTH").then(|| v.to_string());
        let s = Secrets::default()
            .with_proxy_auth(Some(&proxy), env("u:pw"), &none)
            .unwrap();
        assert_eq!(s.file.credentials["CORP_PROXY_AUTH"].value.expose(), "u:pw");
        assert!(s.agent_env().is_empty(), "the agent gets no placeholder");
        assert!(!format!("{s:?}").contains("u:pw"));
        let e = Secrets::default()
            .with_proxy_auth(Some(&proxy), |_| None, &none)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("export CORP_PROXY_AUTH=user:password"),
            "{e}"
        );
        let e = Secrets::default()
            .with_proxy_auth(Some(&proxy), env("nocolon"), &none)
            .unwrap_err();
        assert!(matches!(e, SecretError::ProxyAuthForm { .. }), "{e}");
        let shared = Secrets::gather(&[rule("CORP_PROXY_AUTH")], &[], env("u:pw"), &none).unwrap();
        let e = shared
            .with_proxy_auth(Some(&proxy), env("u:pw"), &none)
            .unwrap_err();
        assert!(matches!(e, SecretError::ProxyAuthShared { .. }), "{e}");
        let plain = Secrets::default()
            .with_proxy_auth(None, |_| None, &none)
            .unwrap();
        assert!(plain.file.credentials.is_empty());
    }
}
