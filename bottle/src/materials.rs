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
    let secrets = Secrets::gather(&plan.policy.egress.credentials, lookup, &keep)?;
    let mut roots = Vec::new();
    for path in &plan.upstream_roots {
        let pem = std::fs::read(path).map_err(|source| MaterialError::Roots {
            path: path.clone(),
            source,
        })?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(MaterialError::NotPem { path: path.clone() });
        }
        roots.extend_from_slice(&pem);
        roots.push(b'\n');
    }
    let policy = serde_json::to_string_pretty(&plan.policy)?;

    state.create()?;
    let minted_ca = crate::ca::ensure(state, &plan.name)?;
    if secrets.credentials.is_empty() {
        state.write_sidecar_file("secrets.json", None)?;
    } else {
        let json = serde_json::to_vec_pretty(&secrets)?;
        state.write_sidecar_file("secrets.json", Some(&json))?;
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
