//! `bottle-sidecar`: the one process on a bottle's sidecar that enforces its
//! policy.
//!
//! Today it runs the explicit egress proxy ([`proxy`]) from a rendered policy
//! file ([`policy_file`]); DNS, transparent listeners, TLS interception,
//! git-gate and supervise will join it in the same tokio runtime. The binary
//! (`main.rs`) only parses arguments and calls [`run`], [`health::check`] or
//! [`netinfo::collect`].
//!
//! Module map:
//! - [`egress`]: the decision for a destination, the connection to it, the
//!   refusal text; shared by every listener.
//! - [`forward`]: what a forwarding hop does to an HTTP message.
//! - [`proxy`]: the `:3128` explicit proxy.
//! - [`log`]: JSON lines on stdout, rate-limited per client.

#![forbid(unsafe_code)]

pub mod egress;
pub mod forward;
pub mod health;
pub mod log;
pub mod netinfo;
pub mod policy_file;
pub mod proxy;

use crate::log::Logger;
use crate::policy_file::{PolicyFileError, PolicyHandle};
use crate::proxy::{Proxy, ProxyError};
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where the explicit proxy listens unless told otherwise.
pub const DEFAULT_PROXY_LISTEN: &str = "0.0.0.0:3128";

/// What `bottle-sidecar run` was asked to do, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    pub policy_path: PathBuf,
    pub proxy_listen: SocketAddr,
}

/// Why `run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("refusing to start without a valid policy: {0}")]
    Policy(#[from] PolicyFileError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

/// Loads the policy (refusing to start without a valid one), serves until
/// `shutdown` completes, and logs the lifecycle.
pub async fn run(
    config: &RunConfig,
    logger: Logger,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let policy = policy_file::load(&config.policy_path)?;
    logger.event(
        "policy-loaded",
        json!({
            "path": config.policy_path.display().to_string(),
            "bottle": policy.bottle,
            "allow": policy.egress.allow.len(),
        }),
    );
    let proxy = Proxy::bind(
        config.proxy_listen,
        PolicyHandle::new(policy),
        logger.clone(),
    )
    .await?;
    logger.event(
        "listening",
        json!({"listener": "proxy", "addr": proxy.local_addr().to_string()}),
    );
    proxy.serve(shutdown).await;
    logger.flush_suppressed();
    logger.event("stopped", json!({}));
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT, logging which. The handlers are
/// installed when this is called (the sidecar is PID 1 in its container, where
/// an unhandled SIGTERM is ignored), so call it before serving.
pub fn shutdown_signal(logger: Logger) -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        logger.event("shutdown", json!({"signal": name}));
    })
}
