//! The policy model of a bottle, as data.
//!
//! One type, shared by the `bottle` CLI (which builds and validates it from
//! `bottle.toml`) and by `bottle-sidecar` (which enforces it). Nothing here does
//! I/O or knows about a runtime: the CLI renders a [`Policy`] to JSON in the
//! bottle's state directory and the sidecar reads the same JSON back.
//!
//! Everything is deny-by-default: an empty [`EgressPolicy`] allows nothing.

#![forbid(unsafe_code)]

pub mod address;
pub mod egress;
pub mod fields;
pub mod host;
pub mod limits;
pub mod request;
pub mod secrets;

pub use address::{classify, AddressClass, Classified, Embedding, LocalNet};
pub use egress::{
    AllowRule, CredentialRule, Decision, EgressPolicy, HttpRule, Unknown, Verdict, DEFAULT_PORTS,
};
pub use fields::{
    CredentialHeader, FieldError, PathPrefix, RuleMethod, RESERVED_HEADERS, RULE_METHODS,
};
pub use host::{normalize_host, HostError, HostPattern};
pub use limits::{Limits, LimitsError};
pub use request::{
    check_path, method_override_param, PathError, FORBIDDEN_METHODS, METHOD_OVERRIDE_HEADERS,
    METHOD_OVERRIDE_PARAMS,
};
pub use secrets::{FormatError, SecretEntry, SecretValue, SecretsFile, SECRETS_FORMAT};

use serde::{Deserialize, Serialize};

/// Version of the rendered policy format; the sidecar refuses a file of
/// another version rather than guess at its meaning.
pub const POLICY_FORMAT: u32 = 1;

/// Everything the sidecar enforces for one bottle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Format version; see [`POLICY_FORMAT`].
    pub format: u32,
    /// The bottle's name, for messages and logs.
    pub bottle: String,
    pub egress: EgressPolicy,
    /// Connection, timeout and log-size limits; all default when absent.
    #[serde(default)]
    pub limits: Limits,
}

impl Policy {
    pub fn new(bottle: impl Into<String>, egress: EgressPolicy) -> Self {
        Policy {
            format: POLICY_FORMAT,
            bottle: bottle.into(),
            egress,
            limits: Limits::default(),
        }
    }
}
