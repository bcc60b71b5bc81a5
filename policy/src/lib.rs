//! The policy model of a bottle, as data.
//!
//! One type, shared by the `bottle` CLI (which builds and validates it from
//! `bottle.toml`) and by `bottle-sidecar` (which enforces it). Nothing here
//! knows about a runtime, and nothing does I/O except [`queue`], the supervise
//! queue's files, which the CLI and the sidecar must read and write alike: the
//! CLI renders a [`Policy`] to JSON in the bottle's state directory and the
//! sidecar reads the same JSON back.
//!
//! Everything is deny-by-default: an empty [`EgressPolicy`] allows nothing.

#![forbid(unsafe_code)]

pub mod address;
pub mod budget;
pub mod dlp;
pub mod egress;
pub mod fields;
pub mod git;
pub mod host;
pub mod limits;
pub mod proxy;
pub mod queue;
pub mod request;
pub mod resolver;
pub mod secrets;
pub mod supervise;

pub use address::{classify, AddressClass, Classified, Embedding, LocalNet};
pub use budget::{
    BudgetPolicy, BudgetState, ByteSize, Counters, HostBudget, Level, Measure, Price, Spend,
    Tokens, Usd, BUDGET_STATE_FILE,
};
pub use dlp::{Action as DlpAction, Actions as DlpActions, Detector, DlpHost, DlpPolicy, Oversize};
pub use egress::{
    AllowRule, CredentialRule, Decision, EgressPolicy, HttpRule, Unknown, Verdict, DEFAULT_PORTS,
};
pub use fields::{
    AuthScheme, CredentialHeader, FieldError, PathPrefix, RuleMethod, RESERVED_HEADERS,
    RULE_METHODS,
};
pub use git::{
    ci_config_path, valid_refname, GitFieldError, GitMode, GitPolicy, GitRemote, Oid, PushRefusal,
    RefPattern, RefUpdate, RemoteName, UpstreamUrl,
};
pub use host::{normalize_host, HostError, HostPattern};
pub use limits::{Limits, LimitsError};
pub use proxy::{check_proxy_address, ProxyUrl, ProxyUrlError, UpstreamProxy};
pub use queue::{Entry, Listing, QueueDir, QueueError};
pub use request::{
    check_path, method_override_param, PathError, FORBIDDEN_METHODS, METHOD_OVERRIDE_HEADERS,
    METHOD_OVERRIDE_PARAMS,
};
pub use resolver::{
    is_dns_media_type, is_encrypted_dns_host, ENCRYPTED_DNS_HINT, ENCRYPTED_DNS_HOSTS,
};
pub use secrets::{FormatError, SecretEntry, SecretValue, SecretsFile, SECRETS_FORMAT};
pub use supervise::{
    forbidden_name, Ask, AskedHost, AskedRef, GitGrant, Grant, Grants, Proposal, ProposalId, Scope,
    Status, SuperviseFieldError, SupervisePolicy, Text, SUPERVISE_FORMAT,
};

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
    /// The git gate's remotes; none when absent (the gate is not started).
    #[serde(default)]
    pub git: GitPolicy,
    /// The supervise service (MCP server, `unknown = "ask"`); off when absent.
    #[serde(default)]
    pub supervise: SupervisePolicy,
    /// Outbound data-loss prevention; the defaults when absent.
    #[serde(default)]
    pub dlp: DlpPolicy,
}

impl Policy {
    pub fn new(bottle: impl Into<String>, egress: EgressPolicy) -> Self {
        Policy {
            format: POLICY_FORMAT,
            bottle: bottle.into(),
            egress,
            limits: Limits::default(),
            git: GitPolicy::default(),
            supervise: SupervisePolicy::default(),
            dlp: DlpPolicy::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"format":1,"bottle":"demo","egress":{
        "allow":["api.github.com"],
        "rules":[{"host":"api.github.com","methods":["GET","HEAD"],"paths":["/repos/acme/"]}],
        "credentials":[{"host":"api.github.com","header":"authorization","from_env":"GH_TOKEN"}]}}"#;

    #[test]
    fn policy_json_keeps_its_strings() {
        let p: Policy = serde_json::from_str(GOOD).unwrap();
        assert_eq!(p.egress.rules[0].methods[1].as_str(), "HEAD");
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json["egress"]["rules"][0],
            serde_json::json!({"host":"api.github.com","methods":["GET","HEAD"],"paths":["/repos/acme/"]})
        );
        assert_eq!(
            json["egress"]["credentials"][0]["header"],
            serde_json::json!("authorization")
        );
        let back: Policy = serde_json::from_value(json).unwrap();
        assert_eq!(back, p);
    }

    /// A policy.json the config layer would refuse is refused at load too,
    /// whoever wrote it.
    #[test]
    fn policy_json_cannot_bypass_the_field_checks() {
        for (from, to, says) in [
            (
                r#""header":"authorization""#,
                r#""header":"Host""#,
                "manages this header itself",
            ),
            (
                r#""header":"authorization""#,
                r#""header":"Proxy-Authorization""#,
                "manages this header itself",
            ),
            (
                r#""header":"authorization""#,
                r#""header":"x api""#,
                "a header name is",
            ),
            (r#""GET","HEAD""#, r#""GET","TRACE""#, "not a method"),
            (r#""GET","HEAD""#, r#""GET","get""#, "not a method"),
            (r#""/repos/acme/""#, r#""repos/acme/""#, "starts with `/`"),
            (r#""/repos/acme/""#, r#""/repos/../admin""#, "segments"),
        ] {
            let bad = GOOD.replace(from, to);
            assert_ne!(bad, GOOD, "{to} was not substituted");
            let e = serde_json::from_str::<Policy>(&bad).unwrap_err();
            assert!(e.to_string().contains(says), "{to}: {e}");
        }
    }
}
