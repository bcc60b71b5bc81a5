//! The supervise service's data: what the agent asks for (a [`Proposal`]),
//! what the human answers (a [`Decision`]), what follows from both
//! ([`Status`]), and the `[supervise]` knobs of the policy
//! ([`SupervisePolicy`]).
//!
//! Proposals are written by the sidecar from text the agent chose, and read
//! by the host (`bottle requests`), so every field checks itself on the way
//! in and on the way out (serde `try_from`, as in [`crate::fields`]): a
//! reason cannot carry control characters that would forge terminal lines,
//! a host is a normalised name or canonical address, an id is exactly
//! [`ProposalId::LEN`] base32 characters (so it is also a safe file name).
//! The files themselves are read and written by [`crate::queue`].

use crate::fields::RuleMethod;
use crate::git::{valid_refname, RemoteName};
use crate::host::{normalize_host, HostError};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Version of the proposal, decision and grants files; a file of another
/// version is refused rather than guessed at.
pub const SUPERVISE_FORMAT: u32 = 1;

/// Longest reason, note or action text kept, in characters.
pub const MAX_TEXT: usize = 500;

/// `[supervise]` in the policy: whether the sidecar serves the MCP server and
/// holds `unknown = "ask"` connections, and its bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisePolicy {
    #[serde(default)]
    pub enabled: bool,
    /// How long a proposal waits for a decision before it expires.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Proposals pending at once (and connections held for them) per bottle.
    #[serde(default = "default_max_pending")]
    pub max_pending: u32,
    /// Proposals filed per minute per bottle.
    #[serde(default = "default_rate")]
    pub rate_per_minute: u32,
}

fn default_timeout() -> u64 {
    300
}
fn default_max_pending() -> u32 {
    8
}
fn default_rate() -> u32 {
    12
}

impl Default for SupervisePolicy {
    fn default() -> Self {
        SupervisePolicy {
            enabled: false,
            timeout_secs: default_timeout(),
            max_pending: default_max_pending(),
            rate_per_minute: default_rate(),
        }
    }
}

/// Why a supervise field was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuperviseFieldError {
    #[error("proposal id `{0}`: an id is 10 characters of a-z and 2-7 (as `bottle requests` lists them)")]
    Id(String),
    #[error("`{field}` is empty; say in one sentence what it is for")]
    EmptyText { field: &'static str },
    #[error("`{field}` is longer than {MAX_TEXT} characters; shorten it")]
    LongText { field: &'static str },
    #[error("`{field}` holds control characters; write it on one line of plain text")]
    ControlText { field: &'static str },
    #[error("host: {0}")]
    Host(#[from] HostError),
    #[error("host `{0}`: ask for one host, not a pattern (no `*`, no port, no URL)")]
    HostPattern(String),
    #[error("port 0 is not a port; give a number from 1 to 65535 or leave it out (443 and 80)")]
    Port,
    #[error("remote: {0}")]
    Remote(String),
    #[error("ref `{0}`: give a full ref name such as `refs/heads/agent/fix`")]
    Ref(String),
    #[error("file has format {found}, but this bottle understands supervise format {SUPERVISE_FORMAT}; use matching `bottle` and sidecar versions")]
    Format { found: u32 },
    #[error("expires ({expires}) is not after created ({created})")]
    Times { created: u64, expires: u64 },
    #[error("the edited rule {edited} does not answer the request for {asked}: {why}")]
    Edit {
        asked: String,
        edited: String,
        why: &'static str,
    },
}

/// Names that stand for the host, a cloud metadata service, an internal-only
/// service or a bottle's sidecar wherever they resolve: never approved (the
/// host refuses the approval) and never answered by DNS on an ask. The
/// reason, or `None` for an ordinary name.
pub fn forbidden_name(host: &str) -> Option<&'static str> {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    if h == "localhost" || h.ends_with(".localhost") {
        return Some("it names this machine (loopback)");
    }
    if matches!(
        h.as_str(),
        "metadata" | "metadata.google.internal" | "instance-data" | "instance-data.ec2.internal"
    ) || h.ends_with(".internal")
    {
        return Some("it names a cloud metadata or internal-only service");
    }
    if h == "sidecar" || h.ends_with(".sidecar") {
        return Some("it names a bottle's sidecar");
    }
    None
}

/// A proposal's id: [`ProposalId::LEN`] characters of RFC 4648 base32 in
/// lower case, from [`ProposalId::from_random`] (50 random bits: not
/// guessable by the agent, short enough to type).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProposalId(String);

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

impl ProposalId {
    pub const LEN: usize = 10;

    /// An id from random bytes (the caller draws them from the OS).
    pub fn from_random(bytes: [u8; 8]) -> Self {
        let mut bits = u64::from_le_bytes(bytes);
        let mut s = String::with_capacity(Self::LEN);
        for _ in 0..Self::LEN {
            s.push(char::from(BASE32[(bits & 31) as usize]));
            bits >>= 5;
        }
        ProposalId(s)
    }

    pub fn parse(s: &str) -> Result<Self, SuperviseFieldError> {
        let ok = s.len() == Self::LEN && s.bytes().all(|b| BASE32.contains(&b));
        if !ok {
            return Err(SuperviseFieldError::Id(clean_for_message(s)));
        }
        Ok(ProposalId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A short text from the agent or the operator (a reason, a note, an
/// action): one line, at most [`MAX_TEXT`] characters. [`Text::clean`]
/// makes one from anything (control characters become spaces, the rest is
/// cut); parsing (and so reading a file) refuses what `clean` would change.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Text(String);

impl Text {
    /// `s` with control characters replaced and cut to [`MAX_TEXT`]
    /// characters; `None` when nothing but whitespace is left.
    pub fn clean(s: &str) -> Option<Self> {
        let cleaned: String = s
            .chars()
            .map(|c| if unsafe_char(c) { ' ' } else { c })
            .take(MAX_TEXT)
            .collect();
        let trimmed = cleaned.trim();
        (!trimmed.is_empty()).then(|| Text(trimmed.to_owned()))
    }

    /// Exactly `s`, refused (naming `field`) when empty, too long or holding
    /// control characters.
    pub fn parse_field(s: &str, field: &'static str) -> Result<Self, SuperviseFieldError> {
        if s.trim().is_empty() {
            return Err(SuperviseFieldError::EmptyText { field });
        }
        if s.chars().count() > MAX_TEXT {
            return Err(SuperviseFieldError::LongText { field });
        }
        if s.chars().any(unsafe_char) {
            return Err(SuperviseFieldError::ControlText { field });
        }
        Ok(Text(s.trim().to_owned()))
    }

    pub fn parse(s: &str) -> Result<Self, SuperviseFieldError> {
        Self::parse_field(s, "text")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One host the agent asks to reach: a normalised DNS name or a canonical IP
/// address (IPv6 without brackets), never a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AskedHost(String);

impl AskedHost {
    pub fn parse(s: &str) -> Result<Self, SuperviseFieldError> {
        if s.contains(['*', '/', ' ']) || (s.matches(':').count() == 1 && !s.starts_with('[')) {
            return Err(SuperviseFieldError::HostPattern(clean_for_message(s)));
        }
        Ok(AskedHost(normalize_host(s)?))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host as an `egress.allow` entry writes it, with `port` when given
    /// (IPv6 in brackets then).
    pub fn allow_entry(&self, port: Option<u16>) -> String {
        match (port, self.0.contains(':')) {
            (Some(p), true) => format!("[{}]:{p}", self.0),
            (Some(p), false) => format!("{}:{p}", self.0),
            (None, _) => self.0.clone(),
        }
    }
}

/// Characters a terminal would act on or that reorder or hide text when
/// `bottle requests` prints what the agent wrote: controls, bidirectional
/// overrides and isolates, zero-width characters, line and paragraph
/// separators, soft hyphen and the byte-order mark.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// A git ref name a push may be asked for (`refs/heads/...`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AskedRef(String);

impl AskedRef {
    /// A full ref name; a bare branch name `x` means `refs/heads/x`.
    pub fn parse(s: &str) -> Result<Self, SuperviseFieldError> {
        let full = if s.starts_with("refs/") {
            s.to_owned()
        } else {
            format!("refs/heads/{s}")
        };
        if !valid_refname(&full) {
            return Err(SuperviseFieldError::Ref(clean_for_message(s)));
        }
        Ok(AskedRef(full))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn parse_text(s: &str) -> Result<Text, SuperviseFieldError> {
    Text::parse(s)
}

macro_rules! string_form {
    ($t:ty, $parse:path) => {
        impl TryFrom<String> for $t {
            type Error = SuperviseFieldError;
            fn try_from(s: String) -> Result<Self, SuperviseFieldError> {
                $parse(&s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
string_form!(ProposalId, ProposalId::parse);
string_form!(Text, parse_text);
string_form!(AskedHost, AskedHost::parse);
string_form!(AskedRef, AskedRef::parse);

/// What is asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Ask {
    /// Reach `host` on `port` (none: 443 and 80), optionally only with
    /// `methods` (an `[[egress.rule]]` then narrows it).
    Egress {
        host: AskedHost,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        methods: Vec<RuleMethod>,
    },
    /// Push `refname` through the git gate's remote `remote`.
    GitPush {
        remote: RemoteName,
        refname: AskedRef,
    },
    /// Anything else the agent wants a human to approve before it acts.
    Approval { action: Text },
}

impl Ask {
    /// An egress ask, checked (port 0 refused).
    pub fn egress(
        host: &str,
        port: Option<u16>,
        methods: Vec<RuleMethod>,
    ) -> Result<Ask, SuperviseFieldError> {
        if port == Some(0) {
            return Err(SuperviseFieldError::Port);
        }
        Ok(Ask::Egress {
            host: AskedHost::parse(host)?,
            port,
            methods,
        })
    }

    /// One line for lists and logs: `egress api.example.com:443 [GET]`.
    pub fn summary(&self) -> String {
        match self {
            Ask::Egress {
                host,
                port,
                methods,
            } => {
                let mut s = format!("egress {}", host.allow_entry(*port));
                if !methods.is_empty() {
                    let m: Vec<&str> = methods.iter().map(RuleMethod::as_str).collect();
                    s.push_str(&format!(" [{}]", m.join(",")));
                }
                s
            }
            Ask::GitPush { remote, refname } => format!("git push {remote} {refname}"),
            Ask::Approval { action } => format!("approval: {action}"),
        }
    }
}

/// A request for a human decision, as filed by the sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ProposalWire", into = "ProposalWire")]
pub struct Proposal {
    pub id: ProposalId,
    pub bottle: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; no decision is taken from this moment on.
    pub expires: u64,
    pub ask: Ask,
    pub reason: Text,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposalWire {
    format: u32,
    id: ProposalId,
    bottle: String,
    created: u64,
    expires: u64,
    ask: Ask,
    reason: Text,
}

impl TryFrom<ProposalWire> for Proposal {
    type Error = SuperviseFieldError;
    fn try_from(w: ProposalWire) -> Result<Self, Self::Error> {
        if w.format != SUPERVISE_FORMAT {
            return Err(SuperviseFieldError::Format { found: w.format });
        }
        if w.expires <= w.created {
            return Err(SuperviseFieldError::Times {
                created: w.created,
                expires: w.expires,
            });
        }
        Ok(Proposal {
            id: w.id,
            bottle: w.bottle,
            created: w.created,
            expires: w.expires,
            ask: w.ask,
            reason: w.reason,
        })
    }
}

impl From<Proposal> for ProposalWire {
    fn from(p: Proposal) -> Self {
        ProposalWire {
            format: SUPERVISE_FORMAT,
            id: p.id,
            bottle: p.bottle,
            created: p.created,
            expires: p.expires,
            ask: p.ask,
            reason: p.reason,
        }
    }
}

/// Approve or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Approve,
    Deny,
}

/// How far an approval reaches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The one request that asked (a held connection, or the next one within
    /// a minute).
    #[default]
    Once,
    /// Until the bottle is stopped.
    Session,
    /// Also written into the bottle's pinned policy by the host.
    Always,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Once => "once",
            Scope::Session => "session",
            Scope::Always => "always",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The human's answer to one proposal, as written by the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DecisionWire", into = "DecisionWire")]
pub struct Decision {
    pub id: ProposalId,
    pub verdict: Verdict,
    /// Meaningful for approvals; a denial is recorded with `once`.
    pub scope: Scope,
    pub note: Option<Text>,
    /// Unix seconds.
    pub decided: u64,
    /// What the operator approved when they edited the proposal's ask
    /// before approving (a narrower port, fewer methods, another ref); the
    /// proposal's own ask when `None`. [`Decision::answers`] checks it fits.
    pub edited: Option<Ask>,
}

impl Decision {
    /// The ask this decision puts in force for `proposal`.
    pub fn ask<'a>(&'a self, proposal: &'a Proposal) -> &'a Ask {
        self.edited.as_ref().unwrap_or(&proposal.ask)
    }

    /// Checks that an edited ask still answers `proposal`: only an approval
    /// carries one, of the same kind (egress for egress, a push through the
    /// same remote for a push); a free-text approval is not edited.
    pub fn answers(&self, proposal: &Proposal) -> Result<(), SuperviseFieldError> {
        let Some(edited) = &self.edited else {
            return Ok(());
        };
        let refuse = |why| SuperviseFieldError::Edit {
            asked: proposal.ask.summary(),
            edited: edited.summary(),
            why,
        };
        if self.verdict == Verdict::Deny {
            return Err(refuse("a denial carries no rule"));
        }
        match (&proposal.ask, edited) {
            (Ask::Egress { .. }, Ask::Egress { .. }) => Ok(()),
            (Ask::GitPush { remote: a, .. }, Ask::GitPush { remote: b, .. }) if a == b => Ok(()),
            (Ask::GitPush { .. }, Ask::GitPush { .. }) => {
                Err(refuse("a push is approved for the remote it asked for"))
            }
            (Ask::Approval { .. }, _) => Err(refuse("an approval of an action is not edited")),
            _ => Err(refuse("the edited rule is of another kind")),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionWire {
    format: u32,
    id: ProposalId,
    verdict: Verdict,
    #[serde(default)]
    scope: Scope,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<Text>,
    decided: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    edited: Option<Ask>,
}

impl TryFrom<DecisionWire> for Decision {
    type Error = SuperviseFieldError;
    fn try_from(w: DecisionWire) -> Result<Self, Self::Error> {
        if w.format != SUPERVISE_FORMAT {
            return Err(SuperviseFieldError::Format { found: w.format });
        }
        Ok(Decision {
            id: w.id,
            verdict: w.verdict,
            scope: w.scope,
            note: w.note,
            decided: w.decided,
            edited: w.edited,
        })
    }
}

impl From<Decision> for DecisionWire {
    fn from(d: Decision) -> Self {
        DecisionWire {
            format: SUPERVISE_FORMAT,
            id: d.id,
            verdict: d.verdict,
            scope: d.scope,
            note: d.note,
            decided: d.decided,
            edited: d.edited,
        }
    }
}

/// Where a proposal stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Status {
    Pending,
    Approved { scope: Scope },
    Denied,
    Expired,
}

impl Status {
    /// The status of `proposal` at `now` (unix seconds), given its decision.
    /// A decision dated at or after the expiry does not count.
    pub fn of(proposal: &Proposal, decision: Option<&Decision>, now: u64) -> Status {
        match decision {
            Some(d) if d.decided < proposal.expires => match d.verdict {
                Verdict::Approve => Status::Approved { scope: d.scope },
                Verdict::Deny => Status::Denied,
            },
            _ if now >= proposal.expires => Status::Expired,
            Some(_) => Status::Expired,
            None => Status::Pending,
        }
    }

    pub fn label(&self) -> String {
        match self {
            Status::Pending => "pending".into(),
            Status::Approved { scope } => format!("approved ({scope})"),
            Status::Denied => "denied".into(),
            Status::Expired => "expired".into(),
        }
    }
}

/// An egress approval of scope `session` or `always` that the sidecar has
/// put in force: kept in `grants.json` so it survives a sidecar restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The proposal it answered.
    pub id: ProposalId,
    pub host: AskedHost,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// When not empty, only these methods (an `[[egress.rule]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<RuleMethod>,
    pub scope: Scope,
    /// Unix seconds.
    pub granted: u64,
}

/// An approved `request_git_push` of scope `session` or `always`: the git
/// gate lets that ref through that remote's ref-name rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitGrant {
    /// The proposal it answered.
    pub id: ProposalId,
    pub remote: RemoteName,
    pub refname: AskedRef,
    pub scope: Scope,
    /// Unix seconds.
    pub granted: u64,
}

/// Every grant in force (`grants.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "GrantsWire", into = "GrantsWire")]
pub struct Grants {
    pub grants: Vec<Grant>,
    /// Approved pushes.
    pub git: Vec<GitGrant>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantsWire {
    format: u32,
    #[serde(default)]
    grants: Vec<Grant>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    git: Vec<GitGrant>,
}

impl TryFrom<GrantsWire> for Grants {
    type Error = SuperviseFieldError;
    fn try_from(w: GrantsWire) -> Result<Self, Self::Error> {
        if w.format != SUPERVISE_FORMAT {
            return Err(SuperviseFieldError::Format { found: w.format });
        }
        Ok(Grants {
            grants: w.grants,
            git: w.git,
        })
    }
}

impl From<Grants> for GrantsWire {
    fn from(g: Grants) -> Self {
        GrantsWire {
            format: SUPERVISE_FORMAT,
            grants: g.grants,
            git: g.git,
        }
    }
}

/// `s` for an error message: control characters replaced, at most 80
/// characters (an id or host from the agent can be anything).
fn clean_for_message(s: &str) -> String {
    s.chars()
        .take(80)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn proposal() -> Proposal {
        Proposal {
            id: ProposalId::from_random([7; 8]),
            bottle: "demo".into(),
            created: 100,
            expires: 400,
            ask: Ask::egress("API.Example.com.", Some(8443), vec![]).unwrap(),
            reason: Text::clean("need the\nAPI docs").unwrap(),
        }
    }

    #[test]
    fn ids_are_base32_of_fixed_length() {
        let id = ProposalId::from_random([0xff, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(id.as_str().len(), ProposalId::LEN);
        assert_eq!(ProposalId::parse(id.as_str()).unwrap(), id);
        assert_ne!(
            ProposalId::from_random([1; 8]),
            ProposalId::from_random([2; 8])
        );
        for bad in [
            "",
            "abc",
            "ABCDEFGHIJ",
            "abcdefgh1j",
            "../../etc/",
            "abcdefghijk",
        ] {
            assert!(ProposalId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn texts_are_one_bounded_line() {
        assert_eq!(Text::clean("a\nb\x1b[31m").unwrap().as_str(), "a b [31m");
        assert!(Text::clean(" \n\t").is_none());
        assert_eq!(
            Text::clean(&"x".repeat(MAX_TEXT + 50))
                .unwrap()
                .as_str()
                .len(),
            MAX_TEXT
        );
        assert_eq!(
            Text::parse_field("a\nb", "reason"),
            Err(SuperviseFieldError::ControlText { field: "reason" })
        );
        assert!(matches!(
            Text::parse_field(&"y".repeat(MAX_TEXT + 1), "reason"),
            Err(SuperviseFieldError::LongText { .. })
        ));
        assert!(serde_json::from_value::<Text>(json!("two\nlines")).is_err());
    }

    #[test]
    fn asked_hosts_are_single_normalised_hosts() {
        assert_eq!(
            AskedHost::parse("API.example.com.").unwrap().as_str(),
            "api.example.com"
        );
        assert_eq!(AskedHost::parse("[fd00::1]").unwrap().as_str(), "fd00::1");
        assert_eq!(
            AskedHost::parse("fd00::1").unwrap().allow_entry(Some(9)),
            "[fd00::1]:9"
        );
        for bad in [
            "*.example.com",
            "a.com:443",
            "https://a.com",
            "",
            "0x7f.1",
            "a b",
        ] {
            assert!(AskedHost::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Ask::egress("a.com", Some(0), vec![]),
            Err(SuperviseFieldError::Port)
        );
    }

    #[test]
    fn refs_are_full_names() {
        assert_eq!(
            AskedRef::parse("agent/x").unwrap().as_str(),
            "refs/heads/agent/x"
        );
        assert!(AskedRef::parse("refs/heads/a..b").is_err());
        assert!(AskedRef::parse("a b").is_err());
    }

    #[test]
    fn proposals_round_trip_with_a_format() {
        let p = proposal();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["format"], json!(SUPERVISE_FORMAT));
        assert_eq!(
            v["ask"],
            json!({"kind": "egress", "host": "api.example.com", "port": 8443})
        );
        assert_eq!(v["reason"], json!("need the API docs"));
        assert_eq!(serde_json::from_value::<Proposal>(v.clone()).unwrap(), p);
        let mut other = v.clone();
        other["format"] = json!(2);
        let e = serde_json::from_value::<Proposal>(other).unwrap_err();
        assert!(e.to_string().contains("format 2"), "{e}");
        let mut late = v.clone();
        late["expires"] = json!(50);
        assert!(serde_json::from_value::<Proposal>(late).is_err());
        let mut extra = v.clone();
        extra["ask"]["paths"] = json!(["/"]);
        assert!(serde_json::from_value::<Proposal>(extra).is_err());
        let mut forged = v;
        forged["reason"] = json!("ok\n\x1b[2Japproved");
        assert!(serde_json::from_value::<Proposal>(forged).is_err());
    }

    #[test]
    fn decisions_round_trip_and_status_follows() {
        let p = proposal();
        let d = Decision {
            id: p.id.clone(),
            verdict: Verdict::Approve,
            scope: Scope::Session,
            note: Text::clean("ok for today"),
            decided: 200,
            edited: None,
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["scope"], json!("session"));
        assert_eq!(serde_json::from_value::<Decision>(v).unwrap(), d);
        assert_eq!(Status::of(&p, None, 150), Status::Pending);
        assert_eq!(Status::of(&p, None, 400), Status::Expired);
        assert_eq!(
            Status::of(&p, Some(&d), 1000),
            Status::Approved {
                scope: Scope::Session
            }
        );
        let deny = Decision {
            verdict: Verdict::Deny,
            ..d.clone()
        };
        assert_eq!(Status::of(&p, Some(&deny), 150), Status::Denied);
        let late = Decision { decided: 400, ..d };
        assert_eq!(Status::of(&p, Some(&late), 401), Status::Expired);
    }

    #[test]
    fn an_edited_rule_must_answer_the_request() {
        let p = proposal();
        let approve = |edited: Ask| Decision {
            id: p.id.clone(),
            verdict: Verdict::Approve,
            scope: Scope::Once,
            note: None,
            decided: 200,
            edited: Some(edited),
        };
        let narrower = approve(Ask::egress("api.example.com", Some(443), vec![]).unwrap());
        assert_eq!(narrower.answers(&p), Ok(()));
        assert_eq!(narrower.ask(&p).summary(), "egress api.example.com:443");
        let v = serde_json::to_value(&narrower).unwrap();
        assert_eq!(serde_json::from_value::<Decision>(v).unwrap(), narrower);
        let push = approve(Ask::GitPush {
            remote: RemoteName::parse("origin").unwrap(),
            refname: AskedRef::parse("main").unwrap(),
        });
        let e = push.answers(&p).unwrap_err().to_string();
        assert!(e.contains("of another kind"), "{e}");
        let deny = Decision {
            verdict: Verdict::Deny,
            ..narrower.clone()
        };
        assert!(deny.answers(&p).unwrap_err().to_string().contains("denial"));
        let asked_push = Proposal {
            ask: Ask::GitPush {
                remote: RemoteName::parse("origin").unwrap(),
                refname: AskedRef::parse("agent/x").unwrap(),
            },
            ..p.clone()
        };
        assert_eq!(push.answers(&asked_push), Ok(()));
        let elsewhere = approve(Ask::GitPush {
            remote: RemoteName::parse("fork").unwrap(),
            refname: AskedRef::parse("main").unwrap(),
        });
        assert!(elsewhere.answers(&asked_push).is_err());
    }

    #[test]
    fn policy_defaults() {
        let s: SupervisePolicy = serde_json::from_value(json!({"enabled": true})).unwrap();
        assert_eq!(
            (s.timeout_secs, s.max_pending, s.rate_per_minute),
            (300, 8, 12)
        );
        assert!(serde_json::from_value::<SupervisePolicy>(json!({"enable": true})).is_err());
    }

    /// What the agent writes is shown on the host's terminal: nothing in it
    /// may reorder or hide the text.
    #[test]
    fn text_that_would_spoof_the_host_terminal_is_refused() {
        for bad in [
            "ok\u{202E}gnp.exe",
            "a\u{200B}b",
            "x\u{2028}y",
            "\u{1b}[2Jwipe",
            "\u{2066}iso\u{2069}",
        ] {
            assert!(Text::parse(bad).is_err(), "{bad:?}");
            assert!(
                !Text::clean(bad)
                    .map(|t| t.as_str().chars().any(unsafe_char))
                    .unwrap_or(false),
                "{bad:?}"
            );
        }
        assert!(Text::parse("needs pypi.org for pip — straße ok").is_ok());
    }
}
