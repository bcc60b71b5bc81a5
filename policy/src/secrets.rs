//! The wire form of `secrets.json`, the credentials file bottle writes into
//! the state dir for the sidecar alone (0600, mounted read-only into the
//! sidecar only): a format version and, per `from_env` name, the real value
//! and the placeholder the agent holds instead.
//!
//! A value never shows in `Debug` output: [`SecretValue`] prints
//! `<redacted>`, so a stray `{:?}` in a log or an error cannot leak it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Version of the secrets file; a reader refuses any other.
pub const SECRETS_FORMAT: u32 = 1;

/// A credential's real value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        SecretValue(value.into())
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One credential.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretEntry {
    pub value: SecretValue,
    /// What the agent holds in the variable of the same name.
    pub placeholder: String,
}

impl fmt::Debug for SecretEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretEntry")
            .field("value", &self.value)
            .field("placeholder", &"<redacted>")
            .finish()
    }
}

/// `secrets.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsFile {
    /// See [`SECRETS_FORMAT`].
    pub format: u32,
    #[serde(default)]
    pub credentials: BTreeMap<String, SecretEntry>,
    /// `dlp.values_from_env`: values the sidecar never injects but blocks
    /// wherever they go out (`listed-value`), by variable name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dlp_values: BTreeMap<String, SecretValue>,
}

impl Default for SecretsFile {
    fn default() -> Self {
        SecretsFile {
            format: SECRETS_FORMAT,
            credentials: BTreeMap::new(),
            dlp_values: BTreeMap::new(),
        }
    }
}

/// A secrets file of another format than this build reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secrets file format {found}, but this build reads format {SECRETS_FORMAT}\n  fix: run `bottle up` (or `bottle reload`) with this build of bottle to write it again")]
pub struct FormatError {
    pub found: u32,
}

impl SecretsFile {
    /// Refuses a file of another format.
    pub fn check_format(&self) -> Result<(), FormatError> {
        if self.format == SECRETS_FORMAT {
            Ok(())
        } else {
            Err(FormatError { found: self.format })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> SecretsFile {
        SecretsFile {
            format: SECRETS_FORMAT,
            credentials: BTreeMap::from([(
                "API_KEY".to_string(),
                SecretEntry {
                    value: SecretValue::new("sk-live-1234567890"),
                    placeholder: "bottle-placeholder-api-key-00".into(),
                },
            )]),
            dlp_values: BTreeMap::from([(
                "DB_PASSWORD".to_string(),
                SecretValue::new("listed-value-42"),
            )]),
        }
    }

    #[test]
    fn debug_never_shows_a_value() {
        let shown = format!("{:?} {:#?}", file(), file());
        assert!(!shown.contains("sk-live"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn round_trips_and_refuses_other_formats() {
        let json = serde_json::to_string(&file()).unwrap();
        assert!(json.contains("\"format\":1"), "{json}");
        let back: SecretsFile = serde_json::from_str(&json).unwrap();
        assert_eq!(back, file());
        assert!(back.check_format().is_ok());
        let future: SecretsFile =
            serde_json::from_str(&json.replace("\"format\":1", "\"format\":2")).unwrap();
        assert_eq!(future.check_format(), Err(FormatError { found: 2 }));
        // A file without a format (an older bottle's) does not load.
        assert!(serde_json::from_str::<SecretsFile>(r#"{"credentials":{}}"#).is_err());
    }
}
