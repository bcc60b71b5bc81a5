//! What the CLI drivers (Apple `container`, smolvm) share besides running
//! the tool ([`crate::process`]): neither CLI filters by label, so labels are
//! matched here, client-side, the way the docker engine matches them; and both
//! print JSON that is read the same way.

use crate::{RuntimeError, RuntimeKind};
use std::collections::BTreeMap;

/// Does a resource labelled `have` match the filter `want`? Every key of
/// `want` must be present; an empty value matches any value of that key
/// (docker's `--filter label=KEY`).
pub(crate) fn labels_match(
    have: &BTreeMap<String, String>,
    want: &BTreeMap<String, String>,
) -> bool {
    want.iter().all(|(k, v)| match have.get(k) {
        Some(h) => v.is_empty() || h == v,
        None => false,
    })
}

/// Reads the JSON `text` a `runtime` command (`what`) printed. `expects`,
/// when set, says which shapes the driver was written against, for the
/// error.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    runtime: RuntimeKind,
    text: &str,
    what: &str,
    expects: Option<&str>,
) -> Result<T, RuntimeError> {
    serde_json::from_str(text.trim()).map_err(|e| RuntimeError::Call {
        runtime,
        operation: format!("read `{what}`"),
        message: match expects {
            Some(shapes) => format!("unexpected JSON ({e}); bottle expects {shapes}"),
            None => format!("unexpected JSON ({e})"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_filter_matches_like_docker() {
        let have = BTreeMap::from([
            (crate::LABEL_NAME.to_string(), "a".to_string()),
            crate::Role::Agent.label(),
        ]);
        let any = BTreeMap::from([(crate::LABEL_NAME.to_string(), String::new())]);
        let other = BTreeMap::from([(crate::LABEL_NAME.to_string(), "b".to_string())]);
        let both = BTreeMap::from([
            (crate::LABEL_NAME.to_string(), "a".to_string()),
            crate::Role::Agent.label(),
        ]);
        let missing = BTreeMap::from([("dev.bottle.other".to_string(), String::new())]);
        assert!(labels_match(&have, &any));
        assert!(labels_match(&have, &both));
        assert!(!labels_match(&have, &other));
        assert!(!labels_match(&have, &missing));
        assert!(labels_match(&have, &BTreeMap::new()));
    }

    #[test]
    fn bad_json_names_the_command_and_the_shapes() {
        let err = parse_json::<Vec<u8>>(
            RuntimeKind::AppleContainer,
            "{",
            "ls --format json",
            Some("the container 1.0.0 shapes"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("apple-container: read `ls --format json` failed: unexpected JSON ("),
            "{err}"
        );
        assert!(
            err.ends_with("; bottle expects the container 1.0.0 shapes"),
            "{err}"
        );
        let err = parse_json::<Vec<u8>>(RuntimeKind::Smolvm, "[1,", "machine ls --json", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("smolvm: read `machine ls --json` failed: unexpected JSON ("),
            "{err}"
        );
        assert!(err.ends_with(')'), "{err}");
        assert_eq!(
            parse_json::<Vec<u8>>(RuntimeKind::Smolvm, " [1, 2]\n", "x", None).unwrap(),
            vec![1, 2]
        );
    }
}
