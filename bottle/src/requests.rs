//! The host's side of supervise: listing the proposals the sidecars filed
//! (`bottle requests`), and answering them (`bottle approve`, `bottle deny`)
//! by writing a decision into the bottle's queue directory
//! (`<state>/supervise/`, shared with that bottle's sidecar only). The queue
//! format and its rules (unknown id, a second decision, an expired request)
//! are the policy crate's [`QueueDir`], which the sidecar uses too.
//!
//! An approval never opens what the destination guard forbids: an address
//! that is loopback, link-local, metadata, private or otherwise not public,
//! and the names that stand for them (`localhost`, the cloud metadata
//! names, `*.internal`), are refused here whatever the scope, and the
//! sidecar's guard checks every connection again anyway. `always` also
//! writes the rule into the bottle's pinned policy, so the next `up` from a
//! config that has it asks nothing more; the config file itself is not
//! edited (the user adds the rule to `bottle.toml` to keep it).

use crate::state::{StateDir, StateRoot};
use bottle_policy::supervise::{Decision, Verdict};
use bottle_policy::{
    classify, AllowRule, Ask, Entry, ProposalId, QueueDir, QueueError, Scope, Text,
};
use serde::Serialize;

/// The queue directory inside a bottle's state dir.
pub const QUEUE_DIR: &str = "supervise";

/// Failures answering or listing requests.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Field(#[from] bottle_policy::SuperviseFieldError),
    #[error("no bottle has a request {id}\n  fix: `bottle requests` lists the pending ones")]
    Unknown { id: String },
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("request {id} asks for {asked}, which bottle never opens: {why}\n  fix: deny it; a private service needs its name in `egress.allow_private` of bottle.toml")]
    Forbidden {
        id: String,
        asked: String,
        why: String,
    },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Save(#[from] crate::save_rule::SaveError),
}

impl crate::exit::Classify for RequestError {
    fn exit(&self) -> crate::exit::Exit {
        use crate::exit::Exit;
        match self {
            RequestError::Field(_)
            | RequestError::Unknown { .. }
            | RequestError::Forbidden { .. } => Exit::Usage,
            RequestError::Queue(QueueError::Expired(_) | QueueError::AlreadyDecided { .. }) => {
                Exit::Usage
            }
            RequestError::Save(crate::save_rule::SaveError::NotEgress { .. }) => Exit::Usage,
            RequestError::Queue(_) | RequestError::State(_) | RequestError::Save(_) => Exit::Failed,
        }
    }
}

/// The queue of one bottle.
pub fn queue_of(state: &StateDir) -> QueueDir {
    QueueDir::new(state.root().join(QUEUE_DIR))
}

/// One listed request.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub bottle: String,
    pub id: String,
    pub status: String,
    pub ask: String,
    pub reason: String,
    pub created: u64,
    pub expires: u64,
    pub note: Option<String>,
}

impl Row {
    fn of(bottle: &str, e: &Entry) -> Row {
        Row {
            bottle: bottle.to_string(),
            id: e.proposal.id.as_str().to_string(),
            status: e.status.label(),
            ask: e.proposal.ask.summary(),
            reason: e.proposal.reason.as_str().to_string(),
            created: e.proposal.created,
            expires: e.proposal.expires,
            note: e
                .decision
                .as_ref()
                .and_then(|d| d.note.as_ref())
                .map(|n| n.as_str().to_string()),
        }
    }
}

/// Every request of `bottle` (or of every bottle), oldest first, and the
/// queue files that could not be read.
pub fn list(root: &StateRoot, bottle: Option<&str>, now: u64) -> (Vec<Row>, Vec<String>) {
    let names = match bottle {
        Some(b) => vec![b.to_string()],
        None => root.names(),
    };
    let mut rows = Vec::new();
    let mut unreadable = Vec::new();
    for name in names {
        let q = queue_of(&root.bottle(&name));
        if !q.root().is_dir() {
            continue;
        }
        match q.list(now) {
            Ok(l) => {
                rows.extend(l.entries.iter().map(|e| Row::of(&name, e)));
                unreadable.extend(l.unreadable.iter().map(|e| format!("{name}: {e}")));
            }
            Err(e) => unreadable.push(format!("{name}: {e}")),
        }
    }
    rows.sort_by_key(|r| (r.created, r.id.clone()));
    (rows, unreadable)
}

/// The bottle whose queue holds `id`.
fn find(root: &StateRoot, id: &ProposalId) -> Result<(String, QueueDir), RequestError> {
    for name in root.names() {
        let q = queue_of(&root.bottle(&name));
        if q.proposal(id).is_ok() {
            return Ok((name, q));
        }
    }
    Err(RequestError::Unknown {
        id: id.as_str().to_string(),
    })
}

/// The bottle and the proposal of request `id`.
pub fn proposal(
    root: &StateRoot,
    id: &str,
) -> Result<(String, bottle_policy::Proposal), RequestError> {
    let pid = ProposalId::parse(id)?;
    let (bottle, q) = find(root, &pid)?;
    Ok((bottle, q.proposal(&pid)?))
}

/// Refuses an egress approval the guard would never let through.
fn check_egress(id: &ProposalId, ask: &Ask) -> Result<(), RequestError> {
    let Ask::Egress { host, port, .. } = ask else {
        return Ok(());
    };
    let forbidden = |why: String| RequestError::Forbidden {
        id: id.as_str().to_string(),
        asked: host.allow_entry(*port),
        why,
    };
    if let Ok(ip) = host.as_str().parse::<std::net::IpAddr>() {
        if let Some(c) = classify(ip) {
            return Err(forbidden(format!(
                "{ip} is a {:?} address, not public",
                c.class
            )));
        }
    } else if let Some(why) = bottle_policy::forbidden_name(host.as_str()) {
        return Err(forbidden(why.into()));
    }
    Ok(())
}

/// Approves request `id` with `scope` (and `note`) at `now`, as asked or as
/// the operator `edited` it (same kind, checked by the queue). `always` also
/// adds the rule to the bottle's pin. Returns the bottle and the entry.
pub fn approve(
    root: &StateRoot,
    id: &str,
    scope: Scope,
    note: Option<&str>,
    edited: Option<Ask>,
    now: u64,
) -> Result<(String, Entry), RequestError> {
    let id = ProposalId::parse(id)?;
    let (bottle, q) = find(root, &id)?;
    let proposal = q.proposal(&id)?;
    check_egress(&id, &proposal.ask)?;
    if let Some(e) = &edited {
        check_egress(&id, e)?;
    }
    let decision = Decision {
        id: id.clone(),
        verdict: Verdict::Approve,
        scope,
        note: note.map(Text::parse).transpose()?,
        decided: now,
        edited,
    };
    let entry = q.decide(&decision, now)?;
    if scope == Scope::Always {
        if let Ask::Egress { host, port, .. } = decision.ask(&proposal) {
            let state = root.bottle(&bottle);
            if let Some(mut pinned) = crate::pin::load(&state) {
                if let Ok(rule) = AllowRule::parse(&host.allow_entry(*port)) {
                    if !pinned.egress.allow.contains(&rule) {
                        pinned.egress.allow.push(rule);
                        crate::pin::accept(&state, &pinned)?;
                    }
                }
            }
        }
    }
    Ok((bottle, entry))
}

/// [`approve`] with scope `always`, and the rule also written into the
/// `bottle.toml` the bottle was accepted from ([`crate::save_rule`]). The
/// file is checked and the edit prepared first: when it cannot be saved,
/// nothing is decided. Returns the bottle, the entry and the file when it
/// changed.
pub fn approve_and_save(
    root: &StateRoot,
    id: &str,
    note: Option<&str>,
    edited: Option<Ask>,
    now: u64,
) -> Result<(String, Entry, Option<std::path::PathBuf>), RequestError> {
    let pid = ProposalId::parse(id)?;
    let (bottle, q) = find(root, &pid)?;
    let proposal = q.proposal(&pid)?;
    let ask = edited.clone().unwrap_or(proposal.ask);
    let config = crate::pin::load(&root.bottle(&bottle))
        .and_then(|p| p.config)
        .ok_or_else(|| crate::save_rule::SaveError::NoConfig {
            bottle: bottle.clone(),
        })?;
    let prepared = crate::save_rule::prepare(&config, &ask)?;
    let changes = prepared.changes;
    let (bottle, entry) = approve(root, id, Scope::Always, note, edited, now)?;
    let path = prepared.write()?;
    Ok((bottle, entry, changes.then_some(path)))
}

/// Denies request `id` (with `note`) at `now`.
pub fn deny(
    root: &StateRoot,
    id: &str,
    note: Option<&str>,
    now: u64,
) -> Result<(String, Entry), RequestError> {
    let id = ProposalId::parse(id)?;
    let (bottle, q) = find(root, &id)?;
    let decision = Decision {
        id,
        verdict: Verdict::Deny,
        scope: Scope::Once,
        note: note.map(Text::parse).transpose()?,
        decided: now,
        edited: None,
    };
    let entry = q.decide(&decision, now)?;
    Ok((bottle, entry))
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bottle_policy::Proposal;

    fn setup(asks: &[(&str, Ask)]) -> (tempfile::TempDir, StateRoot) {
        let dir = tempfile::tempdir().unwrap();
        let root = StateRoot::at(dir.path().to_path_buf());
        for (bottle, ask) in asks {
            let state = root.bottle(bottle);
            state.create().unwrap();
            let q = queue_of(&state);
            q.create().unwrap();
            let p: Proposal = serde_json::from_value(serde_json::json!({
                "format": 1,
                "id": QueueDir::new_id().unwrap().as_str(),
                "bottle": bottle,
                "created": 1000,
                "expires": 2000,
                "ask": serde_json::to_value(ask).unwrap(),
                "reason": "needs it",
            }))
            .unwrap();
            q.file_proposal(&p).unwrap();
        }
        (dir, root)
    }

    fn egress(host: &str) -> Ask {
        Ask::egress(host, None, vec![]).unwrap()
    }

    #[test]
    fn approve_and_deny_find_the_bottle_and_refuse_twice() {
        let (_d, root) = setup(&[
            ("a", egress("api.example.com")),
            ("b", egress("pypi.example.org")),
        ]);
        let (rows, bad) = list(&root, None, 1500);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.status == "pending"));
        let b = rows.iter().find(|r| r.bottle == "b").unwrap().id.clone();
        let (bottle, e) =
            approve(&root, &b, Scope::Session, Some("ok for today"), None, 1500).unwrap();
        assert_eq!(bottle, "b");
        assert_eq!(e.status.label(), "approved (session)");
        let again = deny(&root, &b, None, 1501).unwrap_err().to_string();
        assert!(again.contains("already"), "{again}");
        let a = rows.iter().find(|r| r.bottle == "a").unwrap().id.clone();
        // Past its expiry nothing is decided.
        let late = approve(&root, &a, Scope::Once, None, None, 2500)
            .unwrap_err()
            .to_string();
        assert!(late.contains("expired"), "{late}");
        assert!(list(&root, Some("a"), 1500).0[0].status == "pending");
        let unknown = deny(&root, "aaaaaaaaaa", None, 1500)
            .unwrap_err()
            .to_string();
        assert!(
            unknown.contains("no bottle has a request aaaaaaaaaa"),
            "{unknown}"
        );
        let bad_id = deny(&root, "../x", None, 1500).unwrap_err().to_string();
        assert!(bad_id.contains("proposal id"), "{bad_id}");
    }

    #[test]
    fn what_the_guard_forbids_is_refused_whatever_the_scope() {
        for host in [
            "169.254.169.254",
            "127.0.0.1",
            "10.0.0.5",
            "fd00:ec2::254",
            "localhost",
            "metadata.google.internal",
            "db.corp.internal",
            "sidecar",
        ] {
            let (_d, root) = setup(&[("a", egress(host))]);
            let id = list(&root, None, 1500).0[0].id.clone();
            for scope in [Scope::Once, Scope::Session, Scope::Always] {
                let e = approve(&root, &id, scope, None, None, 1500)
                    .unwrap_err()
                    .to_string();
                assert!(e.contains("which bottle never opens"), "{host}: {e}");
            }
            assert_eq!(
                list(&root, None, 1500).0[0].status,
                "pending",
                "{host}: nothing written"
            );
        }
    }

    #[test]
    fn an_edit_cannot_open_what_the_guard_forbids() {
        let (_d, root) = setup(&[("a", egress("api.example.com"))]);
        let id = list(&root, None, 1500).0[0].id.clone();
        let e = approve(
            &root,
            &id,
            Scope::Session,
            None,
            Some(egress("169.254.169.254")),
            1500,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("which bottle never opens"), "{e}");
        assert_eq!(list(&root, None, 1500).0[0].status, "pending");
        let narrowed = Ask::egress("api.example.com", Some(443), vec![]).unwrap();
        let (_, entry) = approve(&root, &id, Scope::Once, None, Some(narrowed), 1500).unwrap();
        let d = entry.decision.unwrap();
        assert_eq!(
            d.ask(&entry.proposal).summary(),
            "egress api.example.com:443"
        );
    }

    #[test]
    fn always_is_saved_on_request_and_nothing_is_decided_when_it_cannot_be() {
        let (d, root) = setup(&[("a", egress("api.example.com"))]);
        let state = root.bottle("a");
        let id = list(&root, None, 1500).0[0].id.clone();
        // No accepted config: refused, nothing decided.
        let e = approve_and_save(&root, &id, None, None, 1500).unwrap_err();
        assert!(e.to_string().contains("no accepted bottle.toml"), "{e}");
        assert_eq!(list(&root, None, 1500).0[0].status, "pending");
        let config = d.path().canonicalize().unwrap().join("bottle.toml");
        std::fs::write(&config, "[egress]\nallow = []\n").unwrap();
        let mut pinned = crate::pin::Pinned::nothing();
        pinned.config = Some(config.clone());
        crate::pin::accept(&state, &pinned).unwrap();
        let (_, entry, saved) = approve_and_save(&root, &id, Some("keep it"), None, 1500).unwrap();
        assert_eq!(entry.status.label(), "approved (always)");
        assert_eq!(saved.as_deref(), Some(config.as_path()));
        assert!(std::fs::read_to_string(&config)
            .unwrap()
            .contains("allow = [\"api.example.com\"]"));
        assert_eq!(
            crate::pin::load(&state).unwrap().egress.allow,
            vec![AllowRule::parse("api.example.com").unwrap()]
        );
    }

    #[test]
    fn always_is_pinned() {
        let (_d, root) = setup(&[("a", egress("api.example.com"))]);
        let state = root.bottle("a");
        crate::pin::accept(&state, &crate::pin::Pinned::nothing()).unwrap();
        let id = list(&root, None, 1500).0[0].id.clone();
        approve(&root, &id, Scope::Always, None, None, 1500).unwrap();
        let pinned = crate::pin::load(&state).unwrap();
        assert_eq!(
            pinned.egress.allow,
            vec![AllowRule::parse("api.example.com").unwrap()]
        );
    }
}
