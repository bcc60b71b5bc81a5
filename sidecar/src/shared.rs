//! The state every listener shares: the live policy and secrets, the TLS
//! material, the resolver and the guard's view of the network, the logger,
//! the open-connection counts, and the shutdown signal.

use crate::egress::{self, Allowed, Checked, ReachError};
use crate::guard::Resolver;
use crate::limits::Conns;
use crate::log::Logger;
use crate::policy_file::{Live, PolicyHandle};
use crate::secrets::Secrets;
use crate::supervise::Supervisor;
use crate::tls::Tls;
use crate::upstream_proxy;
use bottle_policy::{EgressPolicy, Limits, LocalNet};
use std::sync::Arc;
use tokio::sync::watch;

/// Shared by every connection of every listener (behind an `Arc`).
#[derive(Debug)]
pub struct Shared {
    pub policy: PolicyHandle,
    pub secrets: Live<Secrets>,
    /// The sidecar's gateways and own addresses, refreshed by the reload loop.
    pub local: Live<LocalNet>,
    pub logger: Logger,
    pub tls: Tls,
    pub resolver: Resolver,
    /// Port the transparent HTTP listener forwards to (80 in production).
    pub transparent_http_port: u16,
    /// Port the transparent HTTPS listener forwards to (443 in production).
    pub transparent_https_port: u16,
    /// Completes (with an error) at shutdown: connections and tunnels stop
    /// with it.
    pub closed: watch::Receiver<()>,
    /// Client connections open now, against `limits.max_connections*`.
    pub conns: Conns,
    /// The egress budgets' counters (`[egress.budget]`).
    pub budget: Arc<crate::budget::Meter>,
    /// The supervise service, when the sidecar was given a queue directory.
    pub supervisor: Option<Arc<Supervisor>>,
    /// The DLP search for the secrets in force ([`crate::dlp`]).
    pub dlp: crate::dlp::Engines,
}

impl Shared {
    /// Resolves `target` and keeps the addresses the destination guard
    /// accepts under `policy`.
    pub async fn check_destination(
        &self,
        policy: &EgressPolicy,
        target: &Allowed,
    ) -> Result<Checked, ReachError> {
        let local = self.local.current();
        let checked = egress::guarded_addrs(&self.resolver, policy, &local, target).await?;
        // Only a destination that passed every check gets a route through
        // the upstream proxy: a denied one never reaches it.
        let route =
            upstream_proxy::route(&self.resolver, policy, &local, &self.secrets.current()).await?;
        Ok(checked.via(route))
    }

    /// How a denied client learns to ask: the supervise hint when the
    /// service runs, else `hint` alone.
    pub fn ask_hint(&self, hint: String) -> String {
        match &self.supervisor {
            Some(s) if self.policy.current().supervise.enabled => format!(
                "{hint}, or ask with the request_egress tool of the supervise MCP server at {}",
                s.url()
            ),
            _ => hint,
        }
    }

    /// The limits in force now (they reload with the policy).
    pub fn limits(&self) -> Limits {
        self.policy.current().limits
    }

    /// Completes at shutdown.
    pub async fn closing(&self) {
        let mut closed = self.closed.clone();
        let _ = closed.changed().await;
    }
}
