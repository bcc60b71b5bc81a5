//! Reading the rendered policy file, and the handle services read it through.
//!
//! The `bottle` CLI writes a [`Policy`] as JSON into the bottle's state
//! directory. The sidecar refuses to start on a file it cannot read, cannot
//! parse, or whose `format` is not [`POLICY_FORMAT`]: without a policy there is
//! no proxy (fail closed). The `format` is checked before the rest is parsed,
//! so a newer file is reported as "newer", not as an unknown field.

use bottle_policy::{Policy, POLICY_FORMAT};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Why the policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy file {path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("policy file {path} has no numeric `format` field; it was not written by `bottle` (expected format {expected})")]
    NoFormat { path: PathBuf, expected: u32 },
    #[error("policy file {path} has format {found}, but this bottle-sidecar understands only format {expected}; use the sidecar image that matches your `bottle` version")]
    Format {
        path: PathBuf,
        found: u64,
        expected: u32,
    },
    #[error("policy file {path} has unusable limits: {errors}")]
    Limits { path: PathBuf, errors: String },
    #[error("policy file {path} is not a valid format {expected} policy: {source}")]
    Invalid {
        path: PathBuf,
        expected: u32,
        #[source]
        source: serde_json::Error,
    },
}

/// Reads and validates the policy at `path`.
pub fn load(path: &Path) -> Result<Policy, PolicyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyFileError::Read {
        path: path.into(),
        source,
    })?;
    parse(path, &text)
}

/// Validates policy JSON `text`; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Policy, PolicyFileError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|source| PolicyFileError::Json {
            path: path.into(),
            source,
        })?;
    let found = value
        .get("format")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| PolicyFileError::NoFormat {
            path: path.into(),
            expected: POLICY_FORMAT,
        })?;
    if found != u64::from(POLICY_FORMAT) {
        return Err(PolicyFileError::Format {
            path: path.into(),
            found,
            expected: POLICY_FORMAT,
        });
    }
    let policy: Policy =
        serde_json::from_value(value).map_err(|source| PolicyFileError::Invalid {
            path: path.into(),
            expected: POLICY_FORMAT,
            source,
        })?;
    policy
        .limits
        .validate()
        .map_err(|errors| PolicyFileError::Limits {
            path: path.into(),
            errors: errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        })?;
    Ok(policy)
}

/// A value in force for every service (the policy, the secrets), swapped
/// whole on reload. Readers take a snapshot (an `Arc`) per decision, so no
/// decision ever sees half of two versions, and connections already open keep
/// working while the next decision uses the new value.
#[derive(Debug)]
pub struct Live<T> {
    inner: Arc<RwLock<Arc<T>>>,
}

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Live {
            inner: self.inner.clone(),
        }
    }
}

impl<T> Live<T> {
    pub fn new(value: T) -> Self {
        Live {
            inner: Arc::new(RwLock::new(Arc::new(value))),
        }
    }

    /// The value as of now.
    pub fn current(&self) -> Arc<T> {
        // The lock only guards an Arc swap; a poisoned lock still holds a
        // complete value.
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `value` in force for every decision taken after this call.
    pub fn replace(&self, value: T) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(value);
    }
}

/// The policy in force.
pub type PolicyHandle = Live<Policy>;

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/state/policy.json")
    }

    #[test]
    fn accepts_a_current_policy() {
        let text = r#"{"format":1,"bottle":"demo","egress":{"allow":["api.example.com","10.0.0.5:9000"]}}"#;
        let policy = parse(p(), text).unwrap();
        assert_eq!(policy.bottle, "demo");
        assert_eq!(policy.egress.allow.len(), 2);
    }

    #[test]
    fn refuses_other_formats_before_parsing_the_rest() {
        let err = parse(p(), r#"{"format":2,"bottle":"demo","egress":{},"new":1}"#).unwrap_err();
        assert!(
            matches!(
                err,
                PolicyFileError::Format {
                    found: 2,
                    expected: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("format 2"), "{err}");
        let err = parse(p(), r#"{"bottle":"demo","egress":{}}"#).unwrap_err();
        assert!(matches!(err, PolicyFileError::NoFormat { .. }), "{err}");
        let err = parse(p(), r#"{"format":"1","bottle":"demo","egress":{}}"#).unwrap_err();
        assert!(matches!(err, PolicyFileError::NoFormat { .. }), "{err}");
    }

    #[test]
    fn refuses_malformed_policies() {
        assert!(matches!(
            parse(p(), "{").unwrap_err(),
            PolicyFileError::Json { .. }
        ));
        let err = parse(
            p(),
            r#"{"format":1,"bottle":"d","egress":{"allow":["https://x"]}}"#,
        )
        .unwrap_err();
        assert!(matches!(err, PolicyFileError::Invalid { .. }), "{err}");
        let err = parse(p(), r#"{"format":1,"bottle":"d","egress":{},"extra":true}"#).unwrap_err();
        assert!(matches!(err, PolicyFileError::Invalid { .. }), "{err}");
        let err = load(Path::new("/nonexistent/bottle/policy.json")).unwrap_err();
        assert!(matches!(err, PolicyFileError::Read { .. }), "{err}");
    }

    #[test]
    fn refuses_fields_the_config_would_refuse() {
        for (egress, says) in [
            (
                r#"{"credentials":[{"host":"a.example","header":"Host","from_env":"K"}]}"#,
                "manages this header itself",
            ),
            (
                r#"{"credentials":[{"host":"a.example","header":"content-length","from_env":"K"}]}"#,
                "manages this header itself",
            ),
            (
                r#"{"rules":[{"host":"a.example","methods":["CONNECT"]}]}"#,
                "not a method",
            ),
            (
                r#"{"rules":[{"host":"a.example","paths":["v1/"]}]}"#,
                "starts with `/`",
            ),
        ] {
            let text = format!(r#"{{"format":1,"bottle":"d","egress":{egress}}}"#);
            let err = parse(p(), &text).unwrap_err();
            assert!(matches!(err, PolicyFileError::Invalid { .. }), "{err}");
            assert!(err.to_string().contains(says), "{egress}: {err}");
        }
    }

    #[test]
    fn handle_swaps_whole_policies() {
        let h = PolicyHandle::new(Policy::new("a", Default::default()));
        let before = h.current();
        h.replace(Policy::new("b", Default::default()));
        assert_eq!(before.bottle, "a");
        assert_eq!(h.current().bottle, "b");
    }
}
