//! Where the Docker engine is: `DOCKER_HOST`, else the active docker context
//! (`DOCKER_CONTEXT`, else `currentContext` in the CLI's config.json), else the
//! platform default socket.
//!
//! This mirrors what the `docker` CLI does, so Colima, Docker Desktop and
//! rootless engines work without extra setup, and bottle never assumes
//! `/var/run/docker.sock`.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The engine endpoint and how it was chosen (for `bottle probe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub source: String,
}

/// Resolves the endpoint from the process environment and the docker CLI's
/// configuration directory.
pub fn resolve() -> Endpoint {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let config_dir = env("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".docker")));
    resolve_from(
        env("DOCKER_HOST"),
        env("DOCKER_CONTEXT"),
        config_dir.as_deref(),
        env("XDG_RUNTIME_DIR").map(PathBuf::from).as_deref(),
    )
}

/// [`resolve`] with every input explicit, for tests.
pub fn resolve_from(
    docker_host: Option<String>,
    docker_context: Option<String>,
    config_dir: Option<&Path>,
    runtime_dir: Option<&Path>,
) -> Endpoint {
    if let Some(host) = docker_host {
        return Endpoint {
            host,
            source: "DOCKER_HOST".into(),
        };
    }
    let context = docker_context
        .map(|c| (c, "DOCKER_CONTEXT"))
        .or_else(|| current_context(config_dir?).map(|c| (c, "docker config currentContext")));
    if let Some((name, how)) = context {
        if name != "default" {
            if let Some(host) = config_dir.and_then(|d| context_host(d, &name)) {
                return Endpoint {
                    host,
                    source: format!("docker context `{name}` ({how})"),
                };
            }
        }
    }
    let system = Path::new("/var/run/docker.sock");
    if !system.exists() {
        if let Some(sock) = runtime_dir.map(|d| d.join("docker.sock")) {
            if sock.exists() {
                return Endpoint {
                    host: format!("unix://{}", sock.display()),
                    source: "rootless socket in XDG_RUNTIME_DIR".into(),
                };
            }
        }
    }
    Endpoint {
        host: format!("unix://{}", system.display()),
        source: "default socket".into(),
    }
}

fn current_context(config_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config_dir.join("config.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("currentContext")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(String::from)
}

/// Contexts live in `contexts/meta/<sha256(name)>/meta.json`.
fn context_host(config_dir: &Path, name: &str) -> Option<String> {
    let digest = hex::encode(Sha256::digest(name.as_bytes()));
    let path = config_dir
        .join("contexts")
        .join("meta")
        .join(digest)
        .join("meta.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json.pointer("/Endpoints/docker/Host")?
        .as_str()
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_host_wins() {
        let e = resolve_from(
            Some("tcp://1.2.3.4:2375".into()),
            Some("x".into()),
            None,
            None,
        );
        assert_eq!(e.host, "tcp://1.2.3.4:2375");
        assert_eq!(e.source, "DOCKER_HOST");
    }

    #[test]
    fn current_context_is_read_from_the_cli_config() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let digest = hex::encode(Sha256::digest(b"colima"));
        let meta = dir.join("contexts/meta").join(&digest);
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(dir.join("config.json"), r#"{"currentContext":"colima"}"#).unwrap();
        std::fs::write(
            meta.join("meta.json"),
            r#"{"Name":"colima","Endpoints":{"docker":{"Host":"unix:///home/u/.colima/default/docker.sock"}}}"#,
        )
        .unwrap();
        let e = resolve_from(None, None, Some(dir), None);
        assert_eq!(e.host, "unix:///home/u/.colima/default/docker.sock");
        assert!(e.source.contains("colima"));
        // DOCKER_CONTEXT=default overrides the config file's context.
        let e = resolve_from(None, Some("default".into()), Some(dir), None);
        assert!(e.host.starts_with("unix://"));
        assert_eq!(e.source, "default socket");
    }
}
