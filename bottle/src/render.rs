//! `bottle render --runtime kubernetes`: a `bottle.toml` as the manifests
//! of one bottle on a cluster. This module maps the checked config onto
//! [`bottle_kube::BottleSpec`], refuses what the Kubernetes mapping cannot
//! enforce (every such feature named at once), and writes the result:
//! YAML on stdout, or one file per concern under `-o DIR`. The per-install
//! material (a freshly minted CA, the credentials read from the host's
//! environment) is made only with `--secrets`, and only into
//! `DIR/05-secrets.yaml`, mode 0600; stdout never carries it.
//! docs/kubernetes.md has the design and the list of refusals.

use crate::config::{Config, EnvValue, Provider};
use bottle_kube::cidr::Cidr;
use bottle_kube::{AgentSpec, BottleSpec, ClusterSpec, Materials, SidecarDns, SidecarSpec};
use bottle_policy::Policy;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// The one runtime `render` knows.
pub const KUBERNETES: &str = "kubernetes";

/// What the flags of `bottle render` say, beyond the config.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub name: Option<String>,
    pub sidecar_image: String,
    pub service_cidr: Cidr,
    pub pod_cidrs: Vec<Cidr>,
    pub node_cidrs: Vec<Cidr>,
    pub service_ip: Option<Ipv4Addr>,
    pub runtime_class: Option<String>,
    pub storage_class: Option<String>,
    pub state_size: String,
    pub workspace_size: String,
    /// Resolvers of the sidecar's own; empty: the cluster's DNS.
    pub sidecar_dns: Vec<IpAddr>,
    pub agent_uid: i64,
}

impl Default for Options {
    fn default() -> Self {
        let c = ClusterSpec::default();
        Options {
            name: None,
            sidecar_image: default_sidecar_image(),
            service_cidr: c.service_cidr,
            pod_cidrs: c.pod_cidrs,
            node_cidrs: c.node_cidrs,
            service_ip: None,
            runtime_class: None,
            storage_class: None,
            state_size: c.state_size,
            workspace_size: c.workspace_size,
            sidecar_dns: Vec::new(),
            agent_uid: DEFAULT_AGENT_UID,
        }
    }
}

/// The agent's user when none is given: the first user of most images.
pub const DEFAULT_AGENT_UID: i64 = 1000;
/// The agent's home under its read-only root.
pub const AGENT_HOME: &str = "/home/agent";

/// The sidecar image a render names by default: this version of bottle's,
/// by tag (push it where the cluster pulls from, or pass --sidecar-image).
pub fn default_sidecar_image() -> String {
    format!("bottle-sidecar:{}", env!("CARGO_PKG_VERSION"))
}

/// A `bottle.toml` feature the Kubernetes mapping cannot enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The key, as written in `bottle.toml`.
    pub key: String,
    pub why: String,
}

/// Why `bottle render` stopped.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("--runtime {0}: `bottle render` writes Kubernetes manifests only\n  fix: pass --runtime kubernetes (docker, apple-container and smolvm bottles are started with `bottle up`)")]
    Runtime(String),
    #[error("{source_name} uses what the Kubernetes mapping cannot enforce:\n{}\n  fix: remove these from the config you render (docs/kubernetes.md, \"What render refuses\", says why each one is refused)", list(.refusals))]
    Refused {
        source_name: String,
        refusals: Vec<Refusal>,
    },
    #[error("--secrets writes the bottle's CA key and credentials, which never go to stdout\n  fix: add -o DIR (they go to DIR/05-secrets.yaml, mode 0600)")]
    SecretsNeedDir,
    #[error(transparent)]
    Kube(#[from] bottle_kube::RenderError),
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error(transparent)]
    Git(#[from] bottle_policy::GitFieldError),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretError),
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    #[error("cannot write {path}: {source}\n  fix: check that the directory is writable, or choose another with -o")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn list(refusals: &[Refusal]) -> String {
    refusals
        .iter()
        .map(|r| format!("  - {}: {}", r.key, r.why))
        .collect::<Vec<_>>()
        .join("\n")
}

impl crate::exit::Classify for RenderError {
    fn exit(&self) -> crate::exit::Exit {
        use crate::exit::Exit;
        match self {
            RenderError::Runtime(_)
            | RenderError::Refused { .. }
            | RenderError::SecretsNeedDir
            | RenderError::Kube(_)
            | RenderError::Git(_)
            | RenderError::Secrets(_) => Exit::Usage,
            RenderError::Plan(e) => e.exit(),
            RenderError::Ca(_) | RenderError::Write { .. } => Exit::Failed,
        }
    }
}

/// Checks the `--runtime` value.
pub fn check_runtime(runtime: &str) -> Result<(), RenderError> {
    if runtime == KUBERNETES {
        Ok(())
    } else {
        Err(RenderError::Runtime(runtime.to_string()))
    }
}

/// Every feature of `cfg` the Kubernetes mapping cannot enforce, in the
/// order of `bottle.toml`'s sections.
pub fn refusals(cfg: &Config) -> Vec<Refusal> {
    let mut out = Vec::new();
    let mut refuse = |key: String, why: &str| {
        out.push(Refusal {
            key,
            why: why.to_string(),
        })
    };
    let a = &cfg.agent;
    if !a.mounts.is_empty() {
        refuse(
            "agent.mounts".into(),
            "a host directory on a cluster is a hostPath volume, which hands the agent a node's file system; the workspace is a PersistentVolumeClaim, filled through [[git.remote]]",
        );
    }
    for (k, v) in &a.env {
        match v {
            EnvValue::Literal(_) => {}
            EnvValue::Host(_) => refuse(
                format!("agent.env.{k}"),
                "`${VAR}` reads this host at `bottle up`; a manifest is a file you keep and share, so its values are written in it (use a literal, or [[egress.credential]] for a secret)",
            ),
            EnvValue::Prompt(_) => refuse(
                format!("agent.env.{k}"),
                "`?prompt` asks at `bottle up`; nothing asks when `kubectl apply` runs (use a literal)",
            ),
        }
    }
    if a.pids.is_some() {
        refuse(
            "agent.pids".into(),
            "a pod's process limit is the kubelet's podPidsLimit, set per node, not in a manifest (remove it; set podPidsLimit on the nodes)",
        );
    }
    if a.provider != Provider::Shell {
        refuse(
            "agent.provider".into(),
            "provider images are built on the host by `bottle up`; build and push one, and name it in agent.image with provider = \"shell\"",
        );
    }
    for (key, set) in [
        ("agent.auth", a.auth.is_some()),
        ("agent.api_base", a.api_base.is_some()),
        ("agent.version", a.version.is_some()),
    ] {
        if set {
            refuse(
                key.into(),
                "belongs to a provider image, which `bottle render` does not build",
            );
        }
    }
    if !cfg.egress.allow_private.is_empty() {
        refuse(
            "egress.allow_private".into(),
            "the sidecar's NetworkPolicy cuts every private range out of its egress, so such a host could never be reached",
        );
    }
    if cfg.egress.upstream_proxy.is_some() {
        refuse(
            "egress.upstream_proxy".into(),
            "an upstream proxy needs an egress rule of its own to its (usually private) address; not mapped yet",
        );
    }
    if !cfg.upstream_roots.is_empty() {
        refuse(
            "egress.upstream_roots".into(),
            "extra trust roots are files on this host; not mapped yet",
        );
    }
    out
}

/// The policy the sidecar enforces, named after the bottle.
pub fn policy(cfg: &Config, name: &str) -> Result<Policy, RenderError> {
    let mut p = cfg.policy()?;
    p.bottle = name.to_string();
    Ok(p)
}

/// Maps a checked config onto the render's input. `lookup` reads the host
/// environment, and is asked only when `secrets` is set.
pub fn spec(
    cfg: &Config,
    source_name: &str,
    opts: &Options,
    secrets: bool,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<BottleSpec, RenderError> {
    let refused = refusals(cfg);
    if !refused.is_empty() {
        return Err(RenderError::Refused {
            source_name: source_name.to_string(),
            refusals: refused,
        });
    }
    let name = crate::plan::bottle_name(cfg, opts.name.as_deref())?;
    let policy = policy(cfg, &name)?;
    let cluster = ClusterSpec {
        service_cidr: opts.service_cidr,
        pod_cidrs: opts.pod_cidrs.clone(),
        node_cidrs: opts.node_cidrs.clone(),
        service_ip: opts.service_ip,
        runtime_class: opts.runtime_class.clone(),
        storage_class: opts.storage_class.clone(),
        state_size: opts.state_size.clone(),
        workspace_size: opts.workspace_size.clone(),
        sidecar_dns: if opts.sidecar_dns.is_empty() {
            SidecarDns::Cluster
        } else {
            SidecarDns::Servers(opts.sidecar_dns.clone())
        },
    };
    let ip = bottle_kube::render::sidecar_ip(&name, &cluster.service_cidr, cluster.service_ip)?;
    let git_config = (!policy.git.remotes.is_empty())
        .then(|| crate::gitconfig::render(&ip.to_string(), &policy.git.remotes, None));
    let credential_vars: Vec<String> = {
        let mut v: Vec<String> = policy
            .egress
            .credentials
            .iter()
            .map(|c| c.from_env.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let materials = if secrets {
        let gathered = crate::secrets::Secrets::gather(
            &policy.egress.credentials,
            &policy.git.remotes,
            &lookup,
            &BTreeMap::new(),
        )?
        .with_dlp_values(&policy.dlp.values_from_env, &lookup)?;
        let ca = crate::ca::mint(&name)?;
        Some(Materials {
            ca_cert_pem: ca.cert_pem,
            ca_key_pem: ca.key_pem,
            secrets_json: String::from_utf8(gathered.to_json()).unwrap_or_default(),
            placeholders: gathered.agent_env(),
        })
    } else {
        None
    };
    let a = &cfg.agent;
    let env = a
        .env
        .iter()
        .filter_map(|(k, v)| match v {
            EnvValue::Literal(s) => Some((k.clone(), s.clone())),
            _ => None,
        })
        .collect();
    Ok(BottleSpec {
        name: name.clone(),
        agent: AgentSpec {
            image: a.image.clone(),
            command: a.command.clone(),
            workdir: a.workdir.clone(),
            env,
            cpus: Some(a.cpus.unwrap_or(2.0)),
            memory_bytes: Some(
                a.memory
                    .map(|m| m.bytes())
                    .unwrap_or(crate::config::AgentConfig::DEFAULT_MEMORY),
            ),
            uid: opts.agent_uid,
            home: AGENT_HOME.into(),
            ca_path: crate::trust::ca_path(),
            ca_env: crate::trust::CA_ENV.iter().map(|s| s.to_string()).collect(),
        },
        sidecar: SidecarSpec {
            image: opts.sidecar_image.clone(),
            policy_json: serde_json::to_string_pretty(&policy).unwrap_or_default() + "\n",
            git: !policy.git.remotes.is_empty(),
            supervise: policy.supervise.enabled,
        },
        cluster,
        git_config,
        credential_vars,
        materials,
    })
}

/// Writes the files of `rendered` under `dir` (created when missing): the
/// secrets file 0600, the others 0644. Returns the paths written.
pub fn write_dir(
    rendered: &bottle_kube::Rendered,
    dir: &Path,
) -> Result<Vec<PathBuf>, RenderError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RenderError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    let mut written = Vec::new();
    for f in rendered.files() {
        let path = dir.join(f.name);
        if f.secret {
            crate::state::write_private(&path, f.contents.as_bytes()).map_err(|e| {
                RenderError::Write {
                    path: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                }
            })?;
        } else {
            std::fs::write(&path, &f.contents).map_err(err(&path))?;
        }
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml: &str) -> Config {
        // Nothing is read from the directory: the config has no `extends`.
        crate::config::parse(toml, Path::new("/nonexistent/bottle.toml")).unwrap()
    }

    #[test]
    fn only_kubernetes_is_a_runtime_here() {
        assert!(check_runtime("kubernetes").is_ok());
        let e = check_runtime("docker").unwrap_err();
        assert!(e.to_string().contains("--runtime kubernetes"), "{e}");
        assert_eq!(crate::exit::Classify::exit(&e), crate::exit::Exit::Usage);
    }

    #[test]
    fn every_unenforceable_feature_is_named_at_once() {
        let c = cfg(
            "name = \"x\"\n[agent]\nmounts = [\"/tmp:/data\"]\npids = 100\nenv = { A = \"${HOME}\", B = \"?what\", C = \"ok\" }\n[egress]\nallow_private = [\"db.internal\"]\n",
        );
        let keys: Vec<String> = refusals(&c).into_iter().map(|r| r.key).collect();
        assert_eq!(
            keys,
            [
                "agent.mounts",
                "agent.env.A",
                "agent.env.B",
                "agent.pids",
                "egress.allow_private"
            ]
        );
        let e = spec(&c, "bottle.toml", &Options::default(), false, |_| None).unwrap_err();
        assert_eq!(crate::exit::Classify::exit(&e), crate::exit::Exit::Usage);
        let text = e.to_string();
        assert!(text.starts_with("bottle.toml uses what"), "{text}");
        assert!(text.contains("  - agent.mounts: "), "{text}");
        assert!(text.contains("fix: "), "{text}");
    }

    #[test]
    fn the_default_config_renders_without_reading_the_host() {
        let c = cfg("name = \"demo\"\n");
        assert!(refusals(&c).is_empty());
        let s = spec(&c, "bottle.toml", &Options::default(), false, |v| {
            panic!("read {v} from the host")
        })
        .unwrap();
        assert_eq!(s.name, "demo");
        assert!(s.materials.is_none());
        assert!(s.sidecar.policy_json.contains("\"demo\""));
        let r = bottle_kube::render(&s).unwrap();
        assert!(r.to_yaml().contains("namespace: bottle-demo"));
    }

    #[test]
    fn secrets_read_credentials_and_mint_a_ca_only_when_asked() {
        let c = cfg(
            "name = \"demo\"\n[egress]\nallow = [\"api.example.com\"]\n[[egress.credential]]\nhost = \"api.example.com\"\nheader = \"x-api-key\"\nfrom_env = \"EXAMPLE_KEY\"\n",
        );
        let s = spec(&c, "bottle.toml", &Options::default(), true, |v| {
            (v == "EXAMPLE_KEY").then(|| "real-value".to_string())
        })
        .unwrap();
        let m = s.materials.as_ref().unwrap();
        assert!(m.secrets_json.contains("real-value"));
        assert!(m.ca_key_pem.contains("PRIVATE KEY"));
        let placeholder = &m.placeholders["EXAMPLE_KEY"];
        assert_ne!(placeholder, "real-value");
        let r = bottle_kube::render(&s).unwrap();
        let stream = r.to_yaml();
        assert!(!stream.contains("real-value") && !stream.contains("PRIVATE KEY"));
        assert!(!stream.contains(placeholder.as_str()));
        // Missing from the environment: a config error naming the variable.
        let e = spec(&c, "bottle.toml", &Options::default(), true, |_| None).unwrap_err();
        assert!(e.to_string().contains("EXAMPLE_KEY"), "{e}");
        assert_eq!(crate::exit::Classify::exit(&e), crate::exit::Exit::Usage);
    }

    #[test]
    fn the_secrets_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let c = cfg("name = \"demo\"\n");
        let s = spec(&c, "bottle.toml", &Options::default(), true, |_| None).unwrap();
        let r = bottle_kube::render(&s).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let paths = write_dir(&r, dir.path()).unwrap();
        assert_eq!(paths.len(), 8);
        for p in paths {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            let secret = p.ends_with("05-secrets.yaml");
            assert_eq!(mode == 0o600, secret, "{} {mode:o}", p.display());
        }
    }
}
