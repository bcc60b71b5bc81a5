//! What part a resource plays in a bottle: the value of [`crate::LABEL_ROLE`].
//!
//! The role label is how `bottle down`, `ps` and `verify` find a bottle's
//! pieces again, and how smolvm picks a machine's Smolfile, so its spellings
//! are one type instead of string literals scattered over the crates.

use serde::{Deserialize, Serialize};

/// The role of a container or network bottle creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The container the agent runs in.
    Agent,
    /// The container that proxies the agent's egress.
    Sidecar,
    /// The network the agent and the sidecar share, with no route out.
    Internal,
    /// The sidecar's network to the outside.
    Egress,
    /// Short-lived containers and networks a probe or `verify` makes.
    Probe,
    /// Podman only: a sleeping container on the internal network that keeps
    /// its bridge, and the sysctls set on it, in existence for the bottle's
    /// life (netavark deletes a bridge with its last container).
    Bridge,
}

impl Role {
    /// Every role, in the order above.
    pub const ALL: [Role; 6] = [
        Role::Agent,
        Role::Sidecar,
        Role::Internal,
        Role::Egress,
        Role::Probe,
        Role::Bridge,
    ];

    /// The label value (and resource-name suffix) of this role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Sidecar => "sidecar",
            Role::Internal => "internal",
            Role::Egress => "egress",
            Role::Probe => "probe",
            Role::Bridge => "bridge",
        }
    }

    /// The `(LABEL_ROLE, role)` pair for a resource's label map.
    pub fn label(self) -> (String, String) {
        (crate::LABEL_ROLE.to_string(), self.as_str().to_string())
    }

    /// The role a resource's labels name; `None` when there is no role label
    /// or bottle does not know its value.
    pub fn of(labels: &std::collections::BTreeMap<String, String>) -> Option<Role> {
        labels.get(crate::LABEL_ROLE)?.parse().ok()
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role label value bottle does not know (written by hand, or by another
/// version of bottle).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` is not a bottle role\n  fix: name one of: {}", Role::ALL.map(Role::as_str).join(", "))]
pub struct UnknownRole {
    pub name: String,
}

impl std::str::FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole { name: s.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_round_trips_through_its_label_and_serde() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(role.to_string(), role.as_str());
            // serde's kebab-case spelling is the label value.
            assert_eq!(
                serde_json::to_value(role).unwrap(),
                serde_json::Value::String(role.as_str().into())
            );
            assert_eq!(
                serde_json::from_value::<Role>(role.as_str().into()).unwrap(),
                role
            );
        }
    }

    #[test]
    fn a_role_is_read_back_from_labels() {
        let labels = std::collections::BTreeMap::from([Role::Sidecar.label()]);
        assert_eq!(labels[crate::LABEL_ROLE], "sidecar");
        assert_eq!(Role::of(&labels), Some(Role::Sidecar));
        let odd = std::collections::BTreeMap::from([(
            crate::LABEL_ROLE.to_string(),
            "Sidecar".to_string(),
        )]);
        assert_eq!(Role::of(&odd), None);
        assert_eq!(Role::of(&Default::default()), None);
    }

    #[test]
    fn an_unknown_role_names_the_known_ones() {
        let err = "Agent".parse::<Role>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "`Agent` is not a bottle role\n  fix: name one of: agent, sidecar, internal, egress, probe, bridge"
        );
    }
}
