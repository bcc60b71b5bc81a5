//! Pinning: what the user last accepted for a bottle, and what a new config
//! would widen.
//!
//! A `bottle.toml` can sit in a directory the agent mounts read-write, so the
//! agent can edit the policy of its own next run. bottle therefore keeps the
//! security-relevant part of the last accepted plan (`accepted.json` in the
//! state dir) and, on `up` and `reload`, shows every widening against it and
//! asks for explicit consent (`--accept-changes`, or a y/N prompt on a
//! terminal) before applying it. Narrowing needs no consent.

use crate::plan::Plan;
use crate::state::{write_private, StateDir, StateError};
use bottle_policy::{EgressPolicy, Unknown};
use serde::{Deserialize, Serialize};

/// The security-relevant part of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pinned {
    pub egress: EgressPolicy,
    /// `SOURCE:TARGET:ro|rw` of every agent mount.
    pub mounts: Vec<String>,
    pub image: String,
}

impl Pinned {
    pub fn of(plan: &Plan) -> Self {
        Pinned {
            egress: plan.policy.egress.clone(),
            mounts: plan
                .agent
                .mounts
                .iter()
                .map(|m| {
                    format!(
                        "{}:{}:{}",
                        m.source.display(),
                        m.target,
                        if m.read_only { "ro" } else { "rw" }
                    )
                })
                .collect(),
            image: plan.agent.image.clone(),
        }
    }
}

fn path(state: &StateDir) -> std::path::PathBuf {
    state.root().join("accepted.json")
}

/// The last accepted pin of a bottle, if any.
pub fn load(state: &StateDir) -> Option<Pinned> {
    serde_json::from_str(&std::fs::read_to_string(path(state)).ok()?).ok()
}

/// Records `plan` as accepted.
pub fn accept(state: &StateDir, plan: &Plan) -> Result<(), StateError> {
    state.create()?;
    let json = serde_json::to_vec_pretty(&Pinned::of(plan)).unwrap_or_default();
    write_private(&path(state), &json)
}

/// Every way `new` grants more than `old`, one line each.
pub fn widenings(old: &Pinned, new: &Pinned) -> Vec<String> {
    let mut out = Vec::new();
    for a in &new.egress.allow {
        if !old.egress.allow.contains(a) {
            out.push(format!("egress.allow gains `{a}`"));
        }
    }
    for p in &new.egress.allow_private {
        if !old.egress.allow_private.contains(p) {
            out.push(format!("egress.allow_private gains `{p}`"));
        }
    }
    if old.egress.unknown == Unknown::Deny && new.egress.unknown == Unknown::Ask {
        out.push("egress.unknown changes from deny to ask".into());
    }
    for r in &old.egress.rules {
        if !new.egress.rules.contains(r) {
            out.push(format!(
                "[[egress.rule]] for {} (methods {:?}, paths {:?}) is removed or changed",
                r.host, r.methods, r.paths
            ));
        }
    }
    for c in &new.egress.credentials {
        if !old.egress.credentials.contains(c) {
            out.push(format!(
                "[[egress.credential]] {} now goes to {} in header {}",
                c.from_env, c.host, c.header
            ));
        }
    }
    for m in &new.mounts {
        if !old.mounts.contains(m) {
            out.push(format!("agent.mounts gains `{m}`"));
        }
    }
    if old.image != new.image {
        out.push(format!(
            "agent.image changes from `{}` to `{}`",
            old.image, new.image
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bottle_policy::{AllowRule, HostPattern, HttpRule};

    fn pin(allow: &[&str]) -> Pinned {
        Pinned {
            egress: EgressPolicy {
                allow: allow.iter().map(|a| AllowRule::parse(a).unwrap()).collect(),
                ..Default::default()
            },
            mounts: vec![],
            image: "bottle-agent:latest".into(),
        }
    }

    #[test]
    fn narrowing_is_silent_widening_is_listed() {
        let old = pin(&["a.example.com", "b.example.com"]);
        assert!(widenings(&old, &pin(&["a.example.com"])).is_empty());
        let w = widenings(&old, &pin(&["a.example.com", "evil.example.com"]));
        assert_eq!(w, vec!["egress.allow gains `evil.example.com`".to_string()]);
    }

    #[test]
    fn removing_a_rule_or_adding_a_mount_widens() {
        let mut old = pin(&["api.github.com"]);
        old.egress.rules.push(HttpRule {
            host: HostPattern::parse("api.github.com").unwrap(),
            methods: vec!["GET".into()],
            paths: vec![],
        });
        let mut new = pin(&["api.github.com"]);
        new.mounts.push("/home/u:/home:rw".into());
        new.egress.unknown = Unknown::Ask;
        let w = widenings(&old, &new);
        assert_eq!(w.len(), 3, "{w:?}");
    }
}
