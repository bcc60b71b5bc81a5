//! Everything the sidecar reads from the state dir, rendered from a plan:
//! policy, CA, credentials, upstream trust roots. `bottle up` and
//! `bottle reload` both go through [`render`], so a reload can never produce
//! a different layout than an up.

use crate::plan::Plan;
use crate::secrets::{SecretError, Secrets};
use crate::state::{StateDir, StateError};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Failures rendering the sidecar's files.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    #[error("cannot render the policy: {0}")]
    Policy(#[from] serde_json::Error),
    #[error("egress.upstream_roots: cannot read {path}: {source}\n  fix: give a readable PEM file (relative paths are taken from the directory holding bottle.toml)")]
    Roots {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("egress.upstream_roots: {path} holds no PEM certificate")]
    NotPem { path: PathBuf },
    #[error("egress.upstream_roots: {path} is not a regular file\n  fix: name a PEM file")]
    NotAFile { path: PathBuf },
    #[error("egress.upstream_roots: {path} is larger than {max} bytes; a PEM bundle of roots is far smaller\n  fix: name the PEM file of your private CA")]
    TooLarge { path: PathBuf, max: u64 },
}

/// One `egress.upstream_roots` file as read at plan time: what is pinned and
/// shown is exactly what the sidecar gets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpstreamRoot {
    /// Canonical path (symlinks followed).
    pub path: PathBuf,
    /// SHA-256 of the contents, hex.
    pub sha256: String,
    #[serde(skip)]
    pub pem: Vec<u8>,
}

/// Largest upstream roots file read.
pub const MAX_ROOTS_BYTES: u64 = 1 << 20;

/// Reads one upstream roots file: a regular file, at most
/// [`MAX_ROOTS_BYTES`], holding a PEM certificate. `/dev/zero` and friends
/// are refused before a byte is read.
pub fn read_root(path: &std::path::Path) -> Result<UpstreamRoot, MaterialError> {
    use sha2::Digest;
    use std::io::Read;
    let io = |source| MaterialError::Roots {
        path: path.to_path_buf(),
        source,
    };
    let canonical = std::fs::canonicalize(path).map_err(io)?;
    let meta = std::fs::metadata(&canonical).map_err(io)?;
    if !meta.is_file() {
        return Err(MaterialError::NotAFile { path: canonical });
    }
    let mut pem = Vec::new();
    std::fs::File::open(&canonical)
        .map_err(io)?
        .take(MAX_ROOTS_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(io)?;
    if pem.len() as u64 > MAX_ROOTS_BYTES {
        return Err(MaterialError::TooLarge {
            path: canonical,
            max: MAX_ROOTS_BYTES,
        });
    }
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(MaterialError::NotPem { path: canonical });
    }
    Ok(UpstreamRoot {
        sha256: hex::encode(sha2::Sha256::digest(&pem)),
        path: canonical,
        pem,
    })
}

/// What the agent must be given once the sidecar's files exist.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    /// Credential variable → placeholder.
    pub placeholders: BTreeMap<String, String>,
    /// Whether a CA was minted now (first up).
    pub minted_ca: bool,
}

/// Writes policy, CA (minted when missing), secrets and upstream roots into
/// the bottle's state dir. Reads credential values from `lookup`.
pub fn render(
    state: &StateDir,
    plan: &Plan,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Rendered, MaterialError> {
    // Everything that can fail on bad input is checked before anything is
    // written, so a refused reload leaves the running policy untouched.
    let keep = crate::secrets::existing_placeholders(&state.sidecar_dir().join("secrets.json"));
    let secrets = Secrets::gather(
        &plan.policy.egress.credentials,
        &plan.policy.git.remotes,
        &lookup,
        &keep,
    )?
    .with_proxy_auth(plan.policy.egress.upstream_proxy.as_ref(), &lookup, &keep)?
    .with_dlp_values(&plan.policy.dlp.values_from_env, &lookup)?;
    let mut roots = Vec::new();
    for root in &plan.upstream_roots {
        roots.extend_from_slice(&root.pem);
        roots.push(b'\n');
    }
    let policy = serde_json::to_string_pretty(&plan.policy)?;

    state.create()?;
    let minted_ca = crate::ca::ensure(state, &plan.name)?;
    if secrets.is_empty() {
        state.write_sidecar_file("secrets.json", None)?;
    } else {
        state.write_sidecar_file("secrets.json", Some(&secrets.to_json()))?;
    }
    state.write_sidecar_file(
        "upstream-roots.pem",
        (!roots.is_empty()).then_some(roots.as_slice()),
    )?;
    // The policy goes last: the sidecar reloads when it changes, and by then
    // the files it refers to are in place.
    state.write_policy(&policy)?;
    Ok(Rendered {
        placeholders: secrets.agent_env(),
        minted_ca,
    })
}
