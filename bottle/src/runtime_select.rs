//! Choosing and connecting a runtime, and deciding from its probe whether a
//! bottle may run on it.
//!
//! `auto` follows docs/design.md §4: apple-container on macOS 26+, then docker, then
//! smolvm — the first that connects and whose probe passes. A probe passes
//! when no required capability is measured `no` (except a weakness the user
//! accepted); `unknown` is left for `bottle up` to settle, since some
//! measurements need the sidecar image that only exists after connecting.
//!
//! [`check_weaknesses`] is the whole `--accept-weakness NAME` rule, as a pure
//! function: a missing required capability refuses; a named weakness refuses
//! unless accepted; an accepted name that is no weakness at all refuses too,
//! so a typo never reads as consent.

use crate::interrupt::Interrupt;
use bottle_runtimes::apple::AppleRuntime;
use bottle_runtimes::docker::DockerRuntime;
use bottle_runtimes::smolvm::SmolvmRuntime;
use bottle_runtimes::{CapabilityState, Probe, Runtime, RuntimeError, RuntimeKind, Weakness};

/// How the orchestrator reaches a runtime: [`Real`] outside tests.
#[async_trait::async_trait]
pub trait Connect: Send + Sync {
    async fn connect(&self, kind: RuntimeKind) -> Result<Box<dyn Runtime>, RuntimeError>;
}

/// The runtimes of this machine, found from the environment.
pub struct Real;

#[async_trait::async_trait]
impl Connect for Real {
    async fn connect(&self, kind: RuntimeKind) -> Result<Box<dyn Runtime>, RuntimeError> {
        connect(kind).await
    }
}

/// Connects to the runtime `kind` (environment: `DOCKER_HOST`/context,
/// `BOTTLE_CONTAINER_BIN`, `BOTTLE_SMOLVM_BIN`, `BOTTLE_SMOLVM_STATE_DIR`).
pub async fn connect(kind: RuntimeKind) -> Result<Box<dyn Runtime>, RuntimeError> {
    Ok(match kind {
        RuntimeKind::Docker => Box::new(DockerRuntime::connect().await?),
        RuntimeKind::AppleContainer => Box::new(AppleRuntime::connect().await?),
        RuntimeKind::Smolvm => Box::new(SmolvmRuntime::connect().await?),
    })
}

/// The order `auto` tries runtimes in on this machine.
pub fn auto_order() -> Vec<RuntimeKind> {
    let mut order = Vec::new();
    if macos_major().is_some_and(|m| m >= 26) {
        order.push(RuntimeKind::AppleContainer);
    }
    order.extend([RuntimeKind::Docker, RuntimeKind::Smolvm]);
    order
}

#[allow(
    clippy::disallowed_methods,
    reason = "`sw_vers`, a fixed system tool with a fixed argument; nothing the agent writes reaches it"
)]
fn macos_major() -> Option<u32> {
    if !cfg!(target_os = "macos") {
        return None;
    }
    let out = std::process::Command::new("sw_vers")
        .arg("-productVersion")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// `auto` stopped by an interrupt; `aftermath` says what the sweep of the
/// probe's scratch left.
#[derive(Debug)]
pub struct Aborted {
    pub aftermath: String,
}

/// The runtime `auto` chose, its probe, and why the ones before it were passed over.
pub struct Selected {
    pub runtime: Box<dyn Runtime>,
    pub probe: Probe,
    pub skipped: Vec<(RuntimeKind, String)>,
}

/// No runtime could hold a bottle.
#[derive(Debug, thiserror::Error)]
#[error("no runtime can run a bottle here:{}", .tried.iter().map(|(k, why)| format!("\n  {k}: {why}")).collect::<String>())]
pub struct NoRuntime {
    pub tried: Vec<(RuntimeKind, String)>,
    /// Whether a runtime answered and its probe refused it (a weakness, a
    /// missing capability) rather than none answering at all.
    pub refused: bool,
}

/// Tries `order` ([`auto_order`] outside tests) in turn; the first runtime
/// that connects and whose probe (without a helper image) passes
/// [`passes`] wins. A fresh probe in `cache` ([`crate::probe_cache`])
/// stands in for a new one. An interrupt abandons the probe in flight and
/// removes its scratch.
pub async fn auto(
    connector: &dyn Connect,
    order: &[RuntimeKind],
    accepted: &[String],
    interrupt: &Interrupt,
    cache: Option<&crate::probe_cache::ProbeCache>,
) -> Result<Result<Selected, NoRuntime>, Aborted> {
    let mut skipped = Vec::new();
    let mut refused = false;
    for &kind in order {
        let connected = interrupt
            .unless(connector.connect(kind))
            .await
            .map_err(|_| Aborted {
                aftermath: crate::up::swept(Ok(())),
            })?;
        match connected {
            Err(e) => skipped.push((kind, first_line(&e.to_string()))),
            Ok(rt) if interrupt.count() > 0 => {
                drop(rt);
                return Err(Aborted {
                    aftermath: crate::up::swept(Ok(())),
                });
            }
            Ok(rt) => {
                let hit = match cache {
                    Some(c) => {
                        interrupt
                            .unless(crate::probe_cache::lookup(rt.as_ref(), c, false))
                            .await
                            .map_err(|_| Aborted {
                                aftermath: crate::up::swept(Ok(())),
                            })?
                            .hit
                    }
                    None => None,
                };
                let probe = match hit {
                    Some(hit) => Ok(hit.probe),
                    None => interrupt.unless(rt.probe(None)).await,
                };
                let probe = match probe {
                    Ok(p) => p,
                    Err(_) => {
                        let swept = crate::lifecycle::sweep_probe_scratch(rt.as_ref()).await;
                        return Err(Aborted {
                            aftermath: crate::up::swept(swept),
                        });
                    }
                };
                match passes(&probe, accepted) {
                    Ok(()) => {
                        return Ok(Ok(Selected {
                            runtime: rt,
                            probe,
                            skipped,
                        }))
                    }
                    Err(why) => {
                        refused = true;
                        skipped.push((kind, why.to_string()))
                    }
                }
            }
        }
    }
    Ok(Err(NoRuntime {
        tried: skipped,
        refused,
    }))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

/// Does `probe` allow a bottle, leaving `unknown` capabilities to `up`?
pub fn passes(probe: &Probe, accepted: &[String]) -> Result<(), RefusalReason> {
    let measured_only = Probe {
        capabilities: probe
            .capabilities
            .iter()
            .filter(|c| c.state != CapabilityState::Unknown)
            .cloned()
            .collect(),
        ..probe.clone()
    };
    check_weaknesses(&measured_only, accepted).map(|_| ())
}

/// Why `bottle up` refuses to run on a runtime: one line naming it, then the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusalReason {
    #[error("refusing to start: {runtime} lacks `{capability}`: {detail}\n  fix: {fix}")]
    Missing {
        runtime: RuntimeKind,
        capability: String,
        detail: String,
        fix: String,
    },
    #[error("refusing to start: {runtime} has the weakness `{weakness}`: {}\n  measured: {detail}\n  fix: use another runtime, or accept it knowingly with --accept-weakness {weakness}", .weakness.meaning())]
    Weakness {
        runtime: RuntimeKind,
        weakness: Weakness,
        detail: String,
    },
    #[error("--accept-weakness {name}: there is no such weakness\n  fix: name one of: {known}")]
    UnknownWeakness { name: String, known: String },
}

/// Decides, from `probe`, whether `bottle up` may go on. `accepted` are the
/// `--accept-weakness` names as typed; every one must name a [`Weakness`].
/// Returns the weaknesses present AND accepted (for `bottle ps` to show for
/// the life of the bottle), or the first reason to refuse.
pub fn check_weaknesses(
    probe: &Probe,
    accepted: &[String],
) -> Result<Vec<Weakness>, RefusalReason> {
    check_accepted(probe, &known_weaknesses(accepted)?)
}

/// [`check_weaknesses`] for names already parsed.
pub fn check_accepted(
    probe: &Probe,
    accepted: &[Weakness],
) -> Result<Vec<Weakness>, RefusalReason> {
    let mut used = Vec::new();
    for c in probe.unmet() {
        match c.weakness {
            // Only a capability measured or inferred as `no` is a known
            // weakness; `unknown` is never accepted away.
            Some(w) if c.state == CapabilityState::No => {
                if !accepted.contains(&w) {
                    return Err(RefusalReason::Weakness {
                        runtime: probe.runtime,
                        weakness: w,
                        detail: c.detail.clone(),
                    });
                }
                if !used.contains(&w) {
                    used.push(w);
                }
            }
            _ => {
                return Err(RefusalReason::Missing {
                    runtime: probe.runtime,
                    capability: c.name.clone(),
                    detail: c.detail.clone(),
                    fix: match c.state {
                        CapabilityState::Unknown => {
                            "make the probe able to measure it (see `bottle probe`)".into()
                        }
                        _ => "use a runtime or version that has it (see docs/runtimes.md)".into(),
                    },
                })
            }
        }
    }
    Ok(used)
}

/// The `--accept-weakness` names as typed, each parsed into a [`Weakness`];
/// a name that is no weakness at all is refused, so a typo never reads as
/// consent.
pub fn known_weaknesses(accepted: &[String]) -> Result<Vec<Weakness>, RefusalReason> {
    accepted
        .iter()
        .map(|a| a.parse::<Weakness>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RefusalReason::UnknownWeakness {
            name: e.name,
            known: Weakness::known(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bottle_runtimes::Capability;

    fn cap(name: &str, state: CapabilityState, weakness: Option<Weakness>) -> Capability {
        Capability {
            name: name.into(),
            state,
            how: "measured",
            detail: format!("{name} detail"),
            required: true,
            weakness,
            warning: false,
        }
    }

    fn probe(caps: Vec<Capability>) -> Probe {
        Probe {
            runtime: RuntimeKind::AppleContainer,
            endpoint: "container".into(),
            present: true,
            running: true,
            version: Some("1.0.0".into()),
            capabilities: caps,
        }
    }

    const HOST: Weakness = Weakness::HostReachableFromInternal;
    /// `--accept-weakness HOST`, as clap hands it over.
    fn host() -> String {
        HOST.to_string()
    }

    #[test]
    fn a_weakness_refuses_unless_accepted_by_name() {
        let p = probe(vec![
            cap("internal-network", CapabilityState::Yes, None),
            cap(
                "host-unreachable-from-internal",
                CapabilityState::No,
                Some(HOST),
            ),
        ]);
        let err = check_weaknesses(&p, &[]).unwrap_err();
        assert!(matches!(err, RefusalReason::Weakness { .. }));
        let msg = err.to_string();
        assert!(msg.starts_with("refusing to start: apple-container has the weakness `host-reachable-from-internal`"), "{msg}");
        assert!(
            msg.contains("--accept-weakness host-reachable-from-internal"),
            "{msg}"
        );
        assert_eq!(
            check_weaknesses(&p, &["host-reachable-from-internal".into()]).unwrap(),
            vec![HOST]
        );
        // Named twice, reported once.
        assert_eq!(check_weaknesses(&p, &[host(), host()]).unwrap(), vec![HOST]);
        // Accepting another (real) weakness does not cover this one.
        assert!(check_weaknesses(&p, &["dns-forwarded-unfiltered".into()]).is_err());
    }

    #[test]
    fn a_missing_capability_cannot_be_accepted() {
        let p = probe(vec![
            cap("multi-network-attach", CapabilityState::No, None),
            cap(
                "host-unreachable-from-internal",
                CapabilityState::No,
                Some(HOST),
            ),
        ]);
        let err = check_weaknesses(&p, &[host()]).unwrap_err();
        assert!(
            matches!(err, RefusalReason::Missing { ref capability, .. } if capability == "multi-network-attach"),
            "{err}"
        );
        // An unknown state is never a known weakness.
        let p = probe(vec![cap(
            "host-unreachable-from-internal",
            CapabilityState::Unknown,
            Some(HOST),
        )]);
        assert!(matches!(
            check_weaknesses(&p, &[host()]),
            Err(RefusalReason::Missing { .. })
        ));
    }

    #[test]
    fn typos_are_not_consent() {
        let p = probe(vec![cap("internal-network", CapabilityState::Yes, None)]);
        let err = check_weaknesses(&p, &["host-reachable".into()]).unwrap_err();
        assert!(matches!(err, RefusalReason::UnknownWeakness { .. }));
        assert_eq!(
            err.to_string(),
            "--accept-weakness host-reachable: there is no such weakness\n  fix: name one of: host-reachable-from-internal, dns-forwarded-unfiltered, broadcast-reaches-host"
        );
        // Names are exact: another spelling, or a typo beside a real name,
        // refuses too.
        for typed in [
            vec!["Host-Reachable-From-Internal".to_string()],
            vec![host(), "broadcast-reaches-hosts".into()],
        ] {
            assert!(
                matches!(
                    check_weaknesses(&p, &typed),
                    Err(RefusalReason::UnknownWeakness { .. })
                ),
                "{typed:?}"
            );
        }
        // A real weakness this runtime does not have is accepted and unused.
        assert!(check_weaknesses(&p, &[host()]).unwrap().is_empty());
    }

    #[test]
    fn auto_leaves_unknowns_to_up() {
        let p = probe(vec![
            cap("multi-network-attach", CapabilityState::Unknown, None),
            cap(
                "host-unreachable-from-internal",
                CapabilityState::No,
                Some(HOST),
            ),
        ]);
        assert!(passes(&p, &[]).is_err());
        assert!(passes(&p, &[host()]).is_ok());
        assert!(
            check_weaknesses(&p, &[host()]).is_err(),
            "up still measures it"
        );
    }

    #[test]
    fn auto_order_ends_with_docker_then_smolvm() {
        let order = auto_order();
        assert_eq!(
            &order[order.len() - 2..],
            &[RuntimeKind::Docker, RuntimeKind::Smolvm]
        );
    }
}
