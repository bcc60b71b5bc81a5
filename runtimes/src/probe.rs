//! Measured capabilities of a runtime, as `bottle probe` prints them.
//!
//! Each capability says whether it was measured (by creating something and
//! looking) or inferred (from a version number), so nobody mistakes an
//! inference for a measurement.

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
            }],
        }
    }

    /// The first required capability that is not `yes`.
    pub fn first_missing(&self) -> Option<&Capability> {
        self.capabilities
            .iter()
            .find(|c| c.required && c.state != CapabilityState::Yes)
    }

    pub fn capability(&self, name: &str) -> Option<&Capability> {
        self.capabilities.iter().find(|c| c.name == name)
    }
}
