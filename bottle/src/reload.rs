//! `bottle reload` as two library calls, like `up`: [`prepare`] reads the
//! edited config into a plan for the running bottle and says what needs
//! consent; [`execute`] re-renders the sidecar's files, waits for the
//! sidecar to report the new policy, and records the pin.
//!
//! Mounts, image and the agent's limits do not change on reload (the
//! running agent keeps what it started with), so they stay as pinned and
//! the sources the agent already has are not refused again.

use crate::config::{self, ConfigErrors};
use crate::host::Host;
use crate::lifecycle::{self, LifecycleError};
use crate::pin::{self, Pinned};
use crate::plan::{self, Plan, PlanError};
use crate::state::StateError;
use bottle_runtimes::{Runtime, RuntimeKind};
use std::path::PathBuf;

/// Why a reload stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("bottle `{name}` has no recorded config file\n  fix: pass it with -f FILE")]
    NoConfig { name: String },
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("refusing to reload bottle `{name}` without your consent: {count} reason(s) listed above; an agent may have written them\n  fix: review them, then rerun with --accept-changes")]
    Widened { name: String, count: usize },
}

/// A reload, planned.
pub struct Prepared {
    pub plan: Plan,
    pinned: Pinned,
    /// Why this needs consent; empty when it may apply silently.
    pub consent: Vec<String>,
    /// Set by the caller once the user agreed to `consent`.
    pub consented: bool,
}

/// The runtime bottle `name` was brought up on (docker when unrecorded).
pub fn runtime_of(host: &Host, name: &str) -> RuntimeKind {
    lifecycle::recorded(&host.state.bottle(name))
        .map(|r| r.runtime)
        .unwrap_or(RuntimeKind::Docker)
}

/// Plans the reload of bottle `name` from `file` (default: the config it
/// was brought up from). Touches no runtime.
pub fn prepare(host: &Host, name: &str, file: Option<PathBuf>) -> Result<Prepared, ReloadError> {
    let state = host.state.bottle(name);
    let file = file
        .or_else(|| lifecycle::recorded_source(&state))
        .ok_or_else(|| ReloadError::NoConfig { name: name.into() })?;
    let cfg = config::load(&file)?;
    let old = pin::load(&state);
    let grants = crate::mounts::Grants {
        mounts: old
            .iter()
            .flat_map(|p| p.mounts.iter().map(|m| m.source.clone()))
            .collect(),
        root_owner: true,
    };
    let plan = plan::build(
        host,
        &cfg,
        &file.display().to_string(),
        Some(name),
        runtime_of(host, name),
        &grants,
    )?;
    let pinned = Pinned::for_reload(&plan, old.as_ref());
    let consent = pin::judge(&plan.name, &pinned, &pin::load_all(&host.state));
    Ok(Prepared {
        plan,
        pinned,
        consent,
        consented: false,
    })
}

/// Applies a prepared reload to the running bottle; returns the summary.
pub async fn execute(
    host: &Host,
    rt: &dyn Runtime,
    prepared: Prepared,
) -> Result<String, ReloadError> {
    let Prepared {
        plan,
        pinned,
        consent,
        consented,
    } = prepared;
    if !consent.is_empty() && !consented {
        return Err(ReloadError::Widened {
            name: plan.name.clone(),
            count: consent.len(),
        });
    }
    let sidecar = lifecycle::find_container(rt, &plan.name, bottle_runtimes::Role::Sidecar).await?;
    let summary = lifecycle::reload(rt, host, &plan, &sidecar).await?;
    pin::accept(&host.state.bottle(&plan.name), &pinned)?;
    Ok(summary)
}
