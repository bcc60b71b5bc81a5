//! Measured capabilities of a runtime, as `bottle probe` prints them.
//!
//! Each capability says whether it was measured (by creating something and
//! looking) or inferred (from a version number), so nobody mistakes an
//! inference for a measurement.
//!
//! A capability that a runtime is known to lack, and that a user may
//! knowingly give up, names a *weakness* ([`WEAKNESSES`]): `bottle up`
//! refuses while it is present, unless `--accept-weakness NAME` names it.

use crate::RuntimeKind;
use serde::Serialize;

/// The state of one capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    /// When this is not `yes`: the weakness name (one of [`WEAKNESSES`]) a
    /// user may accept with `--accept-weakness NAME` instead of refusing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weakness: Option<&'static str>,
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
        }
    }

    /// A required capability found missing, whose absence is the named
    /// weakness (`up` refuses unless `--accept-weakness NAME`).
    pub fn weak(
        name: &str,
        weakness: &'static str,
        how: &'static str,
        detail: String,
    ) -> Capability {
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

/// Every weakness a probe can report, with what it means for the user.
/// `docs/runtimes.md` explains each one at length.
pub const WEAKNESSES: &[(&str, &str)] = &[
    (
        "host-reachable-from-internal",
        "the agent can open connections to services on your machine (Apple container: the host answers at <subnet>.1 of the internal network, apple/container#1320)",
    ),
    (
        "dns-forwarded-unfiltered",
        "the agent can send DNS queries for any name past the sidecar to the runtime's resolver, a channel for leaking data (smolvm forwards DNS unfiltered unless a host allow-list is active)",
    ),
    (
        "broadcast-reaches-host",
        "what the agent broadcasts or multicasts (255.255.255.255, 224.0.0.0/4, the subnet broadcast) reaches programs on your machine listening on all addresses (mDNS, DHCP, SSDP, NetBIOS), which may answer or misbehave",
    ),
];

/// What accepting the weakness `name` means, if it is one.
pub fn weakness_meaning(name: &str) -> Option<&'static str> {
    WEAKNESSES.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
}

/// Everything a probe found.
#[derive(Debug, Clone, Serialize)]
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

    pub fn capability(&self, name: &str) -> Option<&Capability> {
        self.capabilities.iter().find(|c| c.name == name)
    }
}
