//! Measured capabilities of a runtime, as `bottle probe` prints them.
//!
//! Each capability says whether it was measured (by creating something and
//! looking) or inferred (from a version number), so nobody mistakes an
//! inference for a measurement.
//!
//! A capability that a runtime is known to lack, and that a user may
//! knowingly give up, names a *weakness* ([`Weakness`]): `bottle up`
//! refuses while it is present, unless `--accept-weakness NAME` names it.

use crate::RuntimeKind;
use serde::{Deserialize, Serialize};

/// The state of one capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CapabilityState {
    /// Present and working as bottle needs.
    Yes,
    /// Absent, or present but unsafe.
    No,
    /// Could not be determined (the reason is in `detail`).
    Unknown,
}

/// One measured or inferred property.
#[derive(Debug, Clone, Serialize)]
pub struct Capability {
    /// Stable identifier, e.g. `internal-network`.
    pub name: String,
    pub state: CapabilityState,
    /// `measured` or `inferred`.
    pub how: &'static str,
    /// What was done and seen.
    pub detail: String,
    /// Whether `bottle up` refuses when this is not `yes`.
    pub required: bool,
    /// When this is not `yes`: the weakness a user may accept with
    /// `--accept-weakness NAME` instead of refusing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weakness: Option<Weakness>,
    /// Not required, but when not `yes` `bottle up` and `bottle probe` show
    /// the detail as a warning (see [`Probe::warnings`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub warning: bool,
}

/// A [`Capability`] as read back (a cached probe), `how` still a string.
#[derive(Deserialize)]
struct CapabilityRecord {
    name: String,
    state: CapabilityState,
    how: String,
    detail: String,
    required: bool,
    #[serde(default)]
    weakness: Option<Weakness>,
    #[serde(default)]
    warning: bool,
}

impl<'de> Deserialize<'de> for Capability {
    /// Only the two words a probe writes are taken for `how`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = CapabilityRecord::deserialize(d)?;
        let how = match r.how.as_str() {
            "measured" => "measured",
            "inferred" => "inferred",
            other => {
                return Err(serde::de::Error::unknown_variant(
                    other,
                    &["measured", "inferred"],
                ))
            }
        };
        Ok(Capability {
            name: r.name,
            state: r.state,
            how,
            detail: r.detail,
            required: r.required,
            weakness: r.weakness,
            warning: r.warning,
        })
    }
}

impl Capability {
    /// A capability with no weakness name.
    pub fn new(
        name: &str,
        state: CapabilityState,
        how: &'static str,
        required: bool,
        detail: String,
    ) -> Capability {
        Capability {
            name: name.into(),
            state,
            how,
            detail,
            required,
            weakness: None,
            warning: false,
        }
    }

    /// A capability that does not refuse but, when `ok` is false, is shown
    /// as a warning by `bottle up` and `bottle probe`.
    pub fn warning(name: &str, ok: bool, how: &'static str, detail: String) -> Capability {
        Capability {
            warning: true,
            ..Capability::new(name, CapabilityState::from_bool(ok), how, false, detail)
        }
    }

    /// A required capability found missing, whose absence is the named
    /// weakness (`up` refuses unless `--accept-weakness NAME`).
    pub fn weak(name: &str, weakness: Weakness, how: &'static str, detail: String) -> Capability {
        Capability {
            weakness: Some(weakness),
            ..Capability::new(name, CapabilityState::No, how, true, detail)
        }
    }
}

impl CapabilityState {
    /// `Yes` when `ok`, else `No`.
    pub fn from_bool(ok: bool) -> Self {
        if ok {
            CapabilityState::Yes
        } else {
            CapabilityState::No
        }
    }
}

/// A capability a runtime is known to lack that a user may knowingly give
/// up: `bottle up` refuses while one is present unless
/// `--accept-weakness NAME` names it. `docs/runtimes.md` explains each one at
/// length; serialised (in `bottle probe --json`) as its kebab-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Weakness {
    /// The host answers on the agent's internal network.
    HostReachableFromInternal,
    /// DNS from the agent's network is forwarded upstream unfiltered.
    DnsForwardedUnfiltered,
    /// The agent's broadcast and multicast reach host sockets.
    BroadcastReachesHost,
}

impl Weakness {
    /// Every weakness a probe can report, in the order errors list them.
    pub const ALL: [Weakness; 3] = [
        Weakness::HostReachableFromInternal,
        Weakness::DnsForwardedUnfiltered,
        Weakness::BroadcastReachesHost,
    ];

    /// The name `--accept-weakness` takes and `bottle probe` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Weakness::HostReachableFromInternal => "host-reachable-from-internal",
            Weakness::DnsForwardedUnfiltered => "dns-forwarded-unfiltered",
            Weakness::BroadcastReachesHost => "broadcast-reaches-host",
        }
    }

    /// What accepting this weakness means for the user.
    pub fn meaning(self) -> &'static str {
        match self {
            Weakness::HostReachableFromInternal => "the agent can open connections to services on your machine (Apple container: the host answers at <subnet>.1 of the internal network, apple/container#1320)",
            Weakness::DnsForwardedUnfiltered => "the agent can send DNS queries for any name past the sidecar to the runtime's resolver, a channel for leaking data (smolvm forwards DNS unfiltered unless a host allow-list is active)",
            Weakness::BroadcastReachesHost => "what the agent broadcasts or multicasts (255.255.255.255, 224.0.0.0/4, the subnet broadcast) reaches programs on your machine listening on all addresses (mDNS, DHCP, SSDP, NetBIOS), which may answer or misbehave",
        }
    }

    /// Every name, comma-separated, for an error's fix line.
    pub fn known() -> String {
        Weakness::ALL.map(Weakness::as_str).join(", ")
    }
}

impl std::fmt::Display for Weakness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no weakness bottle knows (a typo in `--accept-weakness`
/// must never read as consent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{name}` is no weakness bottle knows\n  fix: name one of: {}",
    Weakness::known()
)]
pub struct UnknownWeakness {
    pub name: String,
}

impl std::str::FromStr for Weakness {
    type Err = UnknownWeakness;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Weakness::ALL
            .into_iter()
            .find(|w| w.as_str() == s)
            .ok_or_else(|| UnknownWeakness { name: s.into() })
    }
}

/// Everything a probe found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    pub runtime: RuntimeKind,
    /// Where the runtime was looked for (socket, binary path).
    pub endpoint: String,
    pub present: bool,
    pub running: bool,
    pub version: Option<String>,
    pub capabilities: Vec<Capability>,
}

impl Probe {
    /// A probe of a runtime that is not there at all.
    pub fn absent(runtime: RuntimeKind, endpoint: String, detail: String) -> Self {
        Probe {
            runtime,
            endpoint,
            present: false,
            running: false,
            version: None,
            capabilities: vec![Capability {
                name: "reachable".into(),
                state: CapabilityState::No,
                how: "measured",
                detail,
                required: true,
                weakness: None,
                warning: false,
            }],
        }
    }

    /// The first required capability that is not `yes`.
    pub fn first_missing(&self) -> Option<&Capability> {
        self.capabilities
            .iter()
            .find(|c| c.required && c.state != CapabilityState::Yes)
    }

    /// Every required capability that is not `yes`, in probe order.
    pub fn unmet(&self) -> Vec<&Capability> {
        self.capabilities
            .iter()
            .filter(|c| c.required && c.state != CapabilityState::Yes)
            .collect()
    }

    /// Capabilities flagged as warnings that are not `yes`, in probe order.
    pub fn warnings(&self) -> Vec<&Capability> {
        self.capabilities
            .iter()
            .filter(|c| c.warning && c.state != CapabilityState::Yes)
            .collect()
    }

    pub fn capability(&self, name: &str) -> Option<&Capability> {
        self.capabilities.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_weakness_round_trips_through_its_name_and_serde() {
        for w in Weakness::ALL {
            assert_eq!(w.as_str().parse::<Weakness>(), Ok(w));
            assert_eq!(w.to_string(), w.as_str());
            assert_eq!(
                serde_json::to_value(w).unwrap(),
                serde_json::Value::String(w.as_str().into())
            );
            assert!(!w.meaning().is_empty());
        }
    }

    #[test]
    fn an_unknown_weakness_names_the_known_ones() {
        let err = "host-reachable".parse::<Weakness>().unwrap_err();
        assert_eq!(err.name, "host-reachable");
        assert_eq!(
            err.to_string(),
            "`host-reachable` is no weakness bottle knows\n  fix: name one of: host-reachable-from-internal, dns-forwarded-unfiltered, broadcast-reaches-host"
        );
    }

    /// `bottle probe --json` prints the weakness as the name users type.
    #[test]
    fn probe_json_spells_the_weakness_as_before() {
        let c = Capability::weak(
            "broadcast-isolated",
            Weakness::BroadcastReachesHost,
            "inferred",
            "d".into(),
        );
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["weakness"], "broadcast-reaches-host");
        let plain = Capability::new("x", CapabilityState::Yes, "measured", true, "d".into());
        assert!(serde_json::to_value(&plain)
            .unwrap()
            .get("weakness")
            .is_none());
    }
}
