//! Outbound data-loss prevention (`[dlp]` in bottle.toml): which detector
//! does what, for which host.
//!
//! An allow-list says where the agent may send; it does not say what. The
//! sidecar searches every intercepted request (target, headers, body) with
//! the detectors named by [`Detector`] and acts on each hit by its
//! [`Action`]: `block` (403 naming the detector and where it was found,
//! never the value), `redact` (the value replaced in flight), `ask` (the
//! request is held and a supervise proposal filed; refused where supervise is
//! off) or `log`.
//!
//! Defaults ([`Detector::default_action`]): the bottle's own secrets (the
//! credentials in `secrets.json` and every value named by
//! `values_from_env`) and private keys are blocked everywhere; every other
//! detector only logs. `[dlp.action]` changes a detector's action for every
//! host; a `[[dlp.host]]` entry changes it for the hosts its pattern covers
//! (the first entry that covers the host and names the detector wins).
//!
//! Pure data: the sidecar enforces it (`sidecar/src/dlp.rs`), the CLI pins
//! it. A looser setting than the one the user accepted is a widening
//! ([`DlpPolicy::widenings`]).

use crate::host::HostPattern;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Bytes of each request body the sidecar searches by default (after
/// decoding a compressed body): 256 MiB.
pub const DEFAULT_MAX_BODY: u64 = 256 * 1024 * 1024;

/// What a detector looks for. The names are stable: audit lines, refusals
/// and the git gate's push scan carry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Detector {
    /// A PEM, OpenSSH or PGP private key header.
    PrivateKey,
    /// `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` and fine-grained `github_pat_`.
    GithubToken,
    /// `glpat-` personal access tokens.
    GitlabToken,
    /// `AKIA`/`ASIA`/`ABIA`/`ACCA` access key ids.
    AwsAccessKey,
    /// Google Cloud API keys (`AIza…`).
    GcpApiKey,
    /// `xoxb-`/`xoxa-`/`xoxp-`/`xoxr-`/`xoxs-` tokens.
    SlackToken,
    /// Stripe secret and restricted keys (`sk_live_`, `rk_test_`, …).
    StripeKey,
    /// `sk-ant-` keys.
    AnthropicKey,
    /// `sk-`, `sk-proj-`, `sk-svcacct-`, `sk-admin-` keys.
    OpenaiKey,
    /// A JSON Web Token (`eyJ….eyJ….sig`).
    Jwt,
    /// `password = …`, `api_key: …` and the like with a high-entropy value.
    GenericSecretAssignment,
    /// The exact value (or its base64, hex or URL encoding) of a credential
    /// this bottle's sidecar holds.
    BottleCredential,
    /// The exact value (or its base64, hex or URL encoding) of a variable
    /// named in `dlp.values_from_env`.
    ListedValue,
}

impl Detector {
    /// Every detector, in a fixed order.
    pub const ALL: [Detector; 13] = [
        Detector::PrivateKey,
        Detector::GithubToken,
        Detector::GitlabToken,
        Detector::AwsAccessKey,
        Detector::GcpApiKey,
        Detector::SlackToken,
        Detector::StripeKey,
        Detector::AnthropicKey,
        Detector::OpenaiKey,
        Detector::Jwt,
        Detector::GenericSecretAssignment,
        Detector::BottleCredential,
        Detector::ListedValue,
    ];

    /// The stable name (`private-key`, `bottle-credential`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::PrivateKey => "private-key",
            Detector::GithubToken => "github-token",
            Detector::GitlabToken => "gitlab-token",
            Detector::AwsAccessKey => "aws-access-key",
            Detector::GcpApiKey => "gcp-api-key",
            Detector::SlackToken => "slack-token",
            Detector::StripeKey => "stripe-key",
            Detector::AnthropicKey => "anthropic-key",
            Detector::OpenaiKey => "openai-key",
            Detector::Jwt => "jwt",
            Detector::GenericSecretAssignment => "generic-secret-assignment",
            Detector::BottleCredential => "bottle-credential",
            Detector::ListedValue => "listed-value",
        }
    }

    /// The detector named `name`, if any.
    pub fn parse(name: &str) -> Option<Detector> {
        Detector::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// What the detector does when the config says nothing: block the
    /// bottle's own secrets and private keys, log the rest.
    pub fn default_action(self) -> Action {
        match self {
            Detector::BottleCredential | Detector::ListedValue | Detector::PrivateKey => {
                Action::Block
            }
            _ => Action::Log,
        }
    }

    /// Whether the detector looks for exact values rather than a shape.
    pub fn is_exact(self) -> bool {
        matches!(self, Detector::BottleCredential | Detector::ListedValue)
    }
}

impl fmt::Display for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the sidecar does with a hit. Ordered from the loosest to the
/// strictest: a change towards `Log` is a widening.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Forward, and write an audit line (detector and place, never the value).
    Log,
    /// Hold the request and file a supervise proposal; refused where
    /// supervise is off or the operator denies.
    Ask,
    /// Replace the value in flight with a marker of the same length.
    Redact,
    /// Refuse the request (403); the origin never gets the value.
    Block,
}

impl Action {
    pub const NAMES: [&'static str; 4] = ["block", "redact", "ask", "log"];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Log => "log",
            Action::Ask => "ask",
            Action::Redact => "redact",
            Action::Block => "block",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "block" => Some(Action::Block),
            "redact" => Some(Action::Redact),
            "ask" => Some(Action::Ask),
            "log" => Some(Action::Log),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to the part of a request body past `dlp.max_body`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Oversize {
    /// Forward it unsearched, with an audit line.
    Log,
    /// Refuse the request (the default: an unsearched body could carry
    /// anything).
    #[default]
    Block,
}

/// One `[[dlp.host]]` entry: detector actions for the hosts `host` covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlpHost {
    pub host: HostPattern,
    #[serde(default)]
    pub action: BTreeMap<Detector, Action>,
}

/// The `dlp` section of the rendered policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DlpPolicy {
    /// Search requests at all (default true). Off is the loosest setting:
    /// nothing is searched, blocked or logged.
    pub enabled: bool,
    /// Host variables whose values the sidecar blocks like its own
    /// credentials (`listed-value`). The values travel in `secrets.json`.
    pub values_from_env: Vec<String>,
    /// Bytes of each request body searched (after decoding).
    pub max_body: u64,
    /// What happens past `max_body`.
    pub oversize: Oversize,
    /// Log credential-shaped strings in responses (never changes them).
    pub inbound: bool,
    /// Actions per detector for every host.
    pub action: BTreeMap<Detector, Action>,
    /// Actions per detector for some hosts.
    pub host: Vec<DlpHost>,
}

impl Default for DlpPolicy {
    fn default() -> Self {
        DlpPolicy {
            enabled: true,
            values_from_env: Vec::new(),
            max_body: DEFAULT_MAX_BODY,
            oversize: Oversize::Block,
            inbound: false,
            action: BTreeMap::new(),
            host: Vec::new(),
        }
    }
}

/// The action of every detector for one host, ready for the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actions([Action; Detector::ALL.len()]);

impl Actions {
    pub fn get(&self, d: Detector) -> Action {
        self.0[d as usize]
    }

    /// The strictest action of any detector (what the host could need).
    pub fn strictest(&self) -> Action {
        self.0.iter().copied().max().unwrap_or(Action::Log)
    }
}

impl DlpPolicy {
    /// `detector`'s action for `host` (normalised).
    pub fn action_for(&self, detector: Detector, host: &str) -> Action {
        self.host
            .iter()
            .filter(|h| h.host.matches(host))
            .find_map(|h| h.action.get(&detector).copied())
            .or_else(|| self.action.get(&detector).copied())
            .unwrap_or_else(|| detector.default_action())
    }

    /// Every detector's action for `host`.
    pub fn actions_for(&self, host: &str) -> Actions {
        let mut out = [Action::Log; Detector::ALL.len()];
        for d in Detector::ALL {
            out[d as usize] = self.action_for(d, host);
        }
        Actions(out)
    }

    /// Every way `new` is looser than `self`, one line each: a detector's
    /// action weaker for some host, a listed variable dropped, more of a body
    /// left unsearched, or inbound logging turned off.
    pub fn widenings(&self, new: &DlpPolicy) -> Vec<String> {
        let mut out = Vec::new();
        if self.enabled && !new.enabled {
            out.push(
                "dlp.enabled is turned off: requests are no longer searched for secrets".into(),
            );
            return out;
        }
        if !self.enabled {
            return out;
        }
        // Hosts fall into classes by the entries that cover them: a name
        // with an exact entry; else the deepest suffix entry it is under;
        // else no entry. One probe per class decides every host in it. The
        // probes for the last two cannot be written as patterns (`!` is not
        // a host character), so no entry can claim a probe without
        // covering the hosts it stands for.
        let mut probes: Vec<(String, String)> =
            vec![("!other".to_string(), "every other host".to_string())];
        for h in self.host.iter().chain(&new.host) {
            let probe = probe_host(&h.host);
            if !probes.iter().any(|(p, _)| *p == probe) {
                probes.push((probe, h.host.to_string()));
            }
        }
        for (probe, shown) in &probes {
            for d in Detector::ALL {
                let (was, now) = (self.action_for(d, probe), new.action_for(d, probe));
                if now < was {
                    out.push(format!(
                        "dlp: detector {d} for {shown} changes from {was} to {now}"
                    ));
                }
            }
        }
        for v in &self.values_from_env {
            if !new.values_from_env.contains(v) {
                out.push(format!("dlp.values_from_env drops {v}"));
            }
        }
        if new.max_body > self.max_body {
            out.push(format!(
                "dlp.max_body grows from {} to {} bytes (more of a body may pass unsearched only if oversize = \"log\"; the larger limit costs the sidecar more work per request)",
                self.max_body, new.max_body
            ));
        }
        if new.oversize < self.oversize {
            out.push(
                "dlp.oversize changes from block to log: bodies past max_body go out unsearched"
                    .into(),
            );
        }
        if self.inbound && !new.inbound {
            out.push("dlp.inbound is turned off".into());
        }
        out
    }
}

/// The probe standing for the hosts `pattern` decides: the name itself
/// for an exact entry, and for a suffix a name under it that no pattern
/// can equal.
fn probe_host(pattern: &HostPattern) -> String {
    match pattern {
        HostPattern::Suffix(s) => format!("!.{s}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(pattern: &str, pairs: &[(Detector, Action)]) -> DlpHost {
        DlpHost {
            host: HostPattern::parse(pattern).unwrap(),
            action: pairs.iter().copied().collect(),
        }
    }

    #[test]
    fn defaults_block_own_secrets_and_keys_and_log_the_rest() {
        let p = DlpPolicy::default();
        for d in Detector::ALL {
            let want = match d {
                Detector::BottleCredential | Detector::ListedValue | Detector::PrivateKey => {
                    Action::Block
                }
                _ => Action::Log,
            };
            assert_eq!(p.action_for(d, "api.example.com"), want, "{d}");
        }
        assert_eq!(p.max_body, DEFAULT_MAX_BODY);
        assert_eq!(p.oversize, Oversize::Block);
        assert!(!p.inbound);
    }

    #[test]
    fn host_entries_beat_the_global_table_first_match_wins() {
        let p = DlpPolicy {
            action: [(Detector::Jwt, Action::Block)].into_iter().collect(),
            host: vec![
                host("api.github.com", &[(Detector::GithubToken, Action::Redact)]),
                host("*.github.com", &[(Detector::GithubToken, Action::Ask)]),
                host("*.github.com", &[(Detector::Jwt, Action::Log)]),
            ],
            ..DlpPolicy::default()
        };
        assert_eq!(
            p.action_for(Detector::GithubToken, "api.github.com"),
            Action::Redact
        );
        assert_eq!(
            p.action_for(Detector::GithubToken, "uploads.github.com"),
            Action::Ask
        );
        assert_eq!(
            p.action_for(Detector::GithubToken, "example.com"),
            Action::Log
        );
        // The first entry covering the host that names the detector wins.
        assert_eq!(p.action_for(Detector::Jwt, "api.github.com"), Action::Log);
        assert_eq!(p.action_for(Detector::Jwt, "example.com"), Action::Block);
        let a = p.actions_for("api.github.com");
        assert_eq!(a.get(Detector::GithubToken), Action::Redact);
        assert_eq!(a.get(Detector::BottleCredential), Action::Block);
        assert_eq!(a.strictest(), Action::Block);
    }

    #[test]
    fn names_round_trip_and_order_is_strictness() {
        for d in Detector::ALL {
            assert_eq!(Detector::parse(d.as_str()), Some(d));
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{}\"", d.as_str()));
        }
        assert_eq!(Detector::parse("nope"), None);
        for a in Action::NAMES {
            assert_eq!(Action::parse(a).unwrap().as_str(), a);
        }
        assert!(Action::Log < Action::Ask);
        assert!(Action::Ask < Action::Redact);
        assert!(Action::Redact < Action::Block);
    }

    #[test]
    fn json_form_is_typed_and_defaults_fill_in() {
        let p: DlpPolicy = serde_json::from_str(
            r#"{"values_from_env":["DB_PASSWORD"],"action":{"jwt":"redact"},
                "host":[{"host":"*.example.com","action":{"private-key":"ask"}}]}"#,
        )
        .unwrap();
        assert_eq!(p.max_body, DEFAULT_MAX_BODY);
        assert_eq!(p.action_for(Detector::Jwt, "a.b"), Action::Redact);
        assert_eq!(
            p.action_for(Detector::PrivateKey, "x.example.com"),
            Action::Ask
        );
        for bad in [
            r#"{"action":{"jwt":"allow"}}"#,
            r#"{"action":{"no-such":"log"}}"#,
            r#"{"typo":1}"#,
            r#"{"host":[{"host":"http://x","action":{}}]}"#,
        ] {
            assert!(serde_json::from_str::<DlpPolicy>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn looser_settings_are_widenings_and_stricter_ones_are_not() {
        let old = DlpPolicy {
            values_from_env: vec!["DB_PASSWORD".into()],
            inbound: true,
            host: vec![host(
                "*.github.com",
                &[(Detector::GithubToken, Action::Block)],
            )],
            ..DlpPolicy::default()
        };
        assert!(old.widenings(&old).is_empty());
        // Stricter everywhere: not a widening.
        let stricter = DlpPolicy {
            action: Detector::ALL
                .into_iter()
                .map(|d| (d, Action::Block))
                .collect(),
            max_body: 1024,
            values_from_env: vec!["DB_PASSWORD".into(), "OTHER".into()],
            ..old.clone()
        };
        assert_eq!(old.widenings(&stricter), Vec::<String>::new());
        // Each loosening is named.
        let cases: Vec<(DlpPolicy, &str)> = vec![
            (
                DlpPolicy {
                    action: [(Detector::BottleCredential, Action::Log)].into(),
                    ..old.clone()
                },
                "detector bottle-credential for every other host changes from block to log",
            ),
            (
                DlpPolicy {
                    host: vec![host(
                        "*.github.com",
                        &[(Detector::GithubToken, Action::Ask)],
                    )],
                    ..old.clone()
                },
                "detector github-token for *.github.com changes from block to ask",
            ),
            (
                DlpPolicy {
                    host: vec![],
                    ..old.clone()
                },
                "detector github-token for *.github.com changes from block to log",
            ),
            (
                DlpPolicy {
                    host: vec![
                        old.host[0].clone(),
                        host("evil.example", &[(Detector::PrivateKey, Action::Log)]),
                    ],
                    ..old.clone()
                },
                "detector private-key for evil.example changes from block to log",
            ),
            (
                DlpPolicy {
                    values_from_env: vec![],
                    ..old.clone()
                },
                "dlp.values_from_env drops DB_PASSWORD",
            ),
            (
                DlpPolicy {
                    oversize: Oversize::Log,
                    ..old.clone()
                },
                "dlp.oversize changes from block to log",
            ),
            (
                DlpPolicy {
                    inbound: false,
                    ..old.clone()
                },
                "dlp.inbound is turned off",
            ),
            (
                DlpPolicy {
                    enabled: false,
                    ..old.clone()
                },
                "dlp.enabled is turned off",
            ),
            (
                DlpPolicy {
                    max_body: DEFAULT_MAX_BODY * 2,
                    ..old.clone()
                },
                "dlp.max_body grows",
            ),
        ];
        for (new, says) in cases {
            let w = old.widenings(&new);
            assert!(w.iter().any(|l| l.contains(says)), "{says}: {w:?}");
        }
    }

    /// An entry for a probe's own name cannot hide a downgrade of the
    /// hosts the probe stands for.
    #[test]
    fn decoy_entries_do_not_hide_a_downgrade() {
        let old = DlpPolicy::default();
        let mut decoy = DlpPolicy {
            action: [
                (Detector::BottleCredential, Action::Log),
                (Detector::PrivateKey, Action::Log),
            ]
            .into(),
            ..DlpPolicy::default()
        };
        for name in ["other.invalid", "!other", "x.github.com"] {
            if let Ok(h) = HostPattern::parse(name) {
                decoy.host.push(DlpHost {
                    host: h,
                    action: [
                        (Detector::BottleCredential, Action::Block),
                        (Detector::PrivateKey, Action::Block),
                    ]
                    .into(),
                });
            }
        }
        let w = old.widenings(&decoy);
        assert!(
            w.iter()
                .any(|l| l
                    .contains("bottle-credential for every other host changes from block to log")),
            "{w:?}"
        );
        // A more specific exact entry before a weaker suffix entry.
        let shadow = DlpPolicy {
            host: vec![
                host("x.github.com", &[(Detector::PrivateKey, Action::Block)]),
                host("*.github.com", &[(Detector::PrivateKey, Action::Log)]),
            ],
            ..DlpPolicy::default()
        };
        let w = old.widenings(&shadow);
        assert!(
            w.iter()
                .any(|l| l.contains("private-key for *.github.com changes from block to log")),
            "{w:?}"
        );
    }
}
