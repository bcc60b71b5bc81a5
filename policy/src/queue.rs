//! The supervise queue on disk: the one place in this crate that does I/O
//! (plain `std::fs`, no runtime), so the sidecar, which files proposals, and
//! the `bottle` CLI, which decides them, read and write the same layout with
//! the same code.
//!
//! Layout of a queue directory (`<state>/supervise/` on the host, mounted
//! only into the sidecar, at `/var/lib/bottle/supervise`; see
//! `docs/supervise.md`):
//!
//! - `proposals/<id>.json`: a [`Proposal`], written by the sidecar;
//! - `decisions/<id>.json`: a [`Decision`], written by the host;
//! - `grants.json`: the [`Grants`] the sidecar has put in force.
//!
//! Every file is written to a temporary name in the same directory and then
//! moved into place, so a reader never sees half a file. Proposals and
//! decisions are put in place with a hard link, which fails when the name
//! exists: two `bottle approve` racing on one id cannot both win, and a
//! decision is never overwritten.

use crate::supervise::{Decision, Grants, Proposal, ProposalId, Status};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The proposals directory, under the queue directory.
pub const PROPOSALS: &str = "proposals";
/// The decisions directory, under the queue directory.
pub const DECISIONS: &str = "decisions";
/// The grants file, under the queue directory.
pub const GRANTS: &str = "grants.json";

/// Why a queue operation failed. Nothing on disk changed when one is
/// returned (a temporary file is removed again).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid supervise file: {source}; it was not written by this `bottle` or sidecar, remove it")]
    Invalid {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} holds id {found}, not {expected}; remove the file")]
    IdMismatch {
        path: PathBuf,
        found: ProposalId,
        expected: ProposalId,
    },
    #[error("no request {0}: list the requests with `bottle requests` and use an id from there")]
    Unknown(ProposalId),
    #[error("request {0} is already filed; file each proposal once, with a fresh id")]
    Duplicate(ProposalId),
    #[error("request {id} was already decided ({status}); a decision cannot be changed: ask the agent to request again")]
    AlreadyDecided { id: ProposalId, status: String },
    #[error("request {0} has expired; nothing was decided: ask the agent to request again")]
    Expired(ProposalId),
    #[error("cannot draw a random proposal id: {0}")]
    Random(String),
    #[error("request {id}: {source}; approve the request as asked or edit it within its kind")]
    Edit {
        id: ProposalId,
        #[source]
        source: crate::supervise::SuperviseFieldError,
    },
}

/// One proposal with its decision and status at the time of listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub proposal: Proposal,
    pub decision: Option<Decision>,
    pub status: Status,
}

/// What [`QueueDir::list`] found: the readable entries, oldest first, and
/// the files it could not read (with why), so one bad file does not hide
/// the rest.
#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<Entry>,
    pub unreadable: Vec<QueueError>,
}

/// A queue directory (nothing is touched until a method is called).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDir {
    root: PathBuf,
}

impl QueueDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        QueueDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the directory and its `proposals/` and `decisions/`.
    pub fn create(&self) -> Result<(), QueueError> {
        for dir in [self.root.join(PROPOSALS), self.root.join(DECISIONS)] {
            std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        }
        Ok(())
    }

    /// A fresh id from the OS's random source.
    pub fn new_id() -> Result<ProposalId, QueueError> {
        let mut bytes = [0u8; 8];
        getrandom::getrandom(&mut bytes).map_err(|e| QueueError::Random(e.to_string()))?;
        Ok(ProposalId::from_random(bytes))
    }

    fn proposal_path(&self, id: &ProposalId) -> PathBuf {
        self.root.join(PROPOSALS).join(format!("{id}.json"))
    }

    fn decision_path(&self, id: &ProposalId) -> PathBuf {
        self.root.join(DECISIONS).join(format!("{id}.json"))
    }

    /// Writes `proposal` as `proposals/<id>.json`; refuses an id already
    /// filed.
    pub fn file_proposal(&self, proposal: &Proposal) -> Result<(), QueueError> {
        let path = self.proposal_path(&proposal.id);
        match write_new(&path, proposal)? {
            true => Ok(()),
            false => Err(QueueError::Duplicate(proposal.id.clone())),
        }
    }

    /// The proposal `id`.
    pub fn proposal(&self, id: &ProposalId) -> Result<Proposal, QueueError> {
        let path = self.proposal_path(id);
        let proposal: Proposal = read(&path)?.ok_or_else(|| QueueError::Unknown(id.clone()))?;
        if &proposal.id != id {
            return Err(QueueError::IdMismatch {
                path,
                found: proposal.id,
                expected: id.clone(),
            });
        }
        Ok(proposal)
    }

    /// The decision on `id`, if one was written.
    pub fn decision_of(&self, id: &ProposalId) -> Result<Option<Decision>, QueueError> {
        let path = self.decision_path(id);
        let Some(decision) = read::<Decision>(&path)? else {
            return Ok(None);
        };
        if &decision.id != id {
            return Err(QueueError::IdMismatch {
                path,
                found: decision.id,
                expected: id.clone(),
            });
        }
        Ok(Some(decision))
    }

    /// The proposal `id` with its decision and status at `now`.
    pub fn entry(&self, id: &ProposalId, now: u64) -> Result<Entry, QueueError> {
        let proposal = self.proposal(id)?;
        let decision = self.decision_of(id)?;
        let status = Status::of(&proposal, decision.as_ref(), now);
        Ok(Entry {
            proposal,
            decision,
            status,
        })
    }

    /// Every proposal, oldest first, with its status at `now` (unix
    /// seconds). A missing directory is an empty queue.
    pub fn list(&self, now: u64) -> Result<Listing, QueueError> {
        let dir = self.root.join(PROPOSALS);
        let mut listing = Listing::default();
        let names = match std::fs::read_dir(&dir) {
            Ok(names) => names,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(listing),
            Err(e) => return Err(io("read", &dir)(e)),
        };
        for name in names {
            let name = name.map_err(io("read", &dir))?.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| ProposalId::parse(n).ok())
            else {
                // Temporary files and anything else that is not a proposal.
                continue;
            };
            match self.entry(&id, now) {
                Ok(entry) => listing.entries.push(entry),
                Err(e) => listing.unreadable.push(e),
            }
        }
        listing.entries.sort_by(|a, b| {
            (a.proposal.created, &a.proposal.id).cmp(&(b.proposal.created, &b.proposal.id))
        });
        Ok(listing)
    }

    /// Records `decision` for the proposal it names, at `now`. Refuses an
    /// unknown id, a proposal already decided and an expired one; in each
    /// case nothing is written.
    pub fn decide(&self, decision: &Decision, now: u64) -> Result<Entry, QueueError> {
        let id = &decision.id;
        let entry = self.entry(id, now)?;
        decision
            .answers(&entry.proposal)
            .map_err(|source| QueueError::Edit {
                id: id.clone(),
                source,
            })?;
        match entry.status {
            Status::Pending => {}
            Status::Expired if entry.decision.is_none() => {
                return Err(QueueError::Expired(id.clone()))
            }
            status => {
                return Err(QueueError::AlreadyDecided {
                    id: id.clone(),
                    status: status.label(),
                })
            }
        }
        if !write_new(&self.decision_path(id), decision)? {
            // Another writer won the race between the check and the link.
            let status = self.entry(id, now).map(|e| e.status.label());
            return Err(QueueError::AlreadyDecided {
                id: id.clone(),
                status: status.unwrap_or_else(|_| "decided".into()),
            });
        }
        self.entry(id, now)
    }

    /// The grants in force; none when the file does not exist.
    pub fn grants(&self) -> Result<Grants, QueueError> {
        Ok(read(&self.root.join(GRANTS))?.unwrap_or_default())
    }

    /// Replaces `grants.json` (atomically).
    pub fn save_grants(&self, grants: &Grants) -> Result<(), QueueError> {
        let path = self.root.join(GRANTS);
        let tmp = write_temp(&path, grants)?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io("replace", &path)(e)
        })
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> QueueError {
    let path = path.to_path_buf();
    move |source| QueueError::Io { what, path, source }
}

/// Reads and parses `path`; `None` when it does not exist.
fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, QueueError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", path)(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| QueueError::Invalid {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes `value` to a fresh temporary file beside `path` and returns its
/// name.
fn write_temp<T: serde::Serialize>(path: &Path, value: &T) -> Result<PathBuf, QueueError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut json = serde_json::to_vec_pretty(value).map_err(|source| QueueError::Invalid {
        path: path.to_path_buf(),
        source,
    })?;
    json.push(b'\n');
    let nonce = QueueDir::new_id()?;
    let tmp = dir.join(format!(".tmp-{nonce}"));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(&json)?;
            f.sync_all()
        });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("write", &tmp)(e));
    }
    Ok(tmp)
}

/// Puts `value` at `path` unless something is there already (`false`).
fn write_new<T: serde::Serialize>(path: &Path, value: &T) -> Result<bool, QueueError> {
    let tmp = write_temp(path, value)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io("write", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::{Ask, Grant, Scope, Text, Verdict};

    fn queue() -> (tempfile::TempDir, QueueDir) {
        let tmp = tempfile::tempdir().unwrap();
        let q = QueueDir::new(tmp.path().join("supervise"));
        q.create().unwrap();
        (tmp, q)
    }

    fn proposal(created: u64) -> Proposal {
        Proposal {
            id: QueueDir::new_id().unwrap(),
            bottle: "demo".into(),
            created,
            expires: created + 300,
            ask: Ask::egress("api.example.com", None, vec![]).unwrap(),
            reason: Text::clean("docs").unwrap(),
        }
    }

    fn approve(id: &ProposalId, decided: u64) -> Decision {
        Decision {
            id: id.clone(),
            verdict: Verdict::Approve,
            scope: Scope::Session,
            note: None,
            decided,
            edited: None,
        }
    }

    /// Every file under the queue, with its contents.
    fn snapshot(q: &QueueDir) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for sub in [PROPOSALS, DECISIONS] {
            for e in std::fs::read_dir(q.root().join(sub)).unwrap() {
                let p = e.unwrap().path();
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn file_list_decide() {
        let (_t, q) = queue();
        let (a, b) = (proposal(100), proposal(50));
        q.file_proposal(&a).unwrap();
        q.file_proposal(&b).unwrap();
        assert!(matches!(q.file_proposal(&a), Err(QueueError::Duplicate(_))));
        let l = q.list(120).unwrap();
        assert!(l.unreadable.is_empty());
        let ids: Vec<_> = l.entries.iter().map(|e| e.proposal.id.clone()).collect();
        assert_eq!(ids, vec![b.id.clone(), a.id.clone()]);
        assert!(l.entries.iter().all(|e| e.status == Status::Pending));
        let e = q.decide(&approve(&a.id, 130), 130).unwrap();
        assert_eq!(
            e.status,
            Status::Approved {
                scope: Scope::Session
            }
        );
        assert_eq!(q.decision_of(&a.id).unwrap(), Some(approve(&a.id, 130)));
        assert_eq!(q.decision_of(&b.id).unwrap(), None);
        // No temporary file is left behind.
        assert_eq!(snapshot(&q).len(), 3);
    }

    #[test]
    fn bad_decisions_change_nothing() {
        let (_t, q) = queue();
        let p = proposal(100);
        q.file_proposal(&p).unwrap();
        let before = snapshot(&q);
        let unknown = QueueDir::new_id().unwrap();
        let e = q.decide(&approve(&unknown, 110), 110).unwrap_err();
        assert!(matches!(e, QueueError::Unknown(_)), "{e}");
        assert!(e.to_string().contains("bottle requests"), "{e}");
        let e = q.decide(&approve(&p.id, 400), 400).unwrap_err();
        assert!(matches!(e, QueueError::Expired(_)), "{e}");
        let other_kind = Decision {
            edited: Some(Ask::Approval {
                action: Text::clean("anything").unwrap(),
            }),
            ..approve(&p.id, 110)
        };
        let e = q.decide(&other_kind, 110).unwrap_err();
        assert!(matches!(e, QueueError::Edit { .. }), "{e}");
        assert_eq!(snapshot(&q), before);
        q.decide(&approve(&p.id, 110), 110).unwrap();
        let after_first = snapshot(&q);
        let deny = Decision {
            verdict: Verdict::Deny,
            ..approve(&p.id, 120)
        };
        let e = q.decide(&deny, 120).unwrap_err();
        assert!(matches!(e, QueueError::AlreadyDecided { .. }), "{e}");
        assert!(e.to_string().contains("approved (session)"), "{e}");
        // Expired after an approval: still "already decided", not "expired".
        let e = q.decide(&deny, 1000).unwrap_err();
        assert!(matches!(e, QueueError::AlreadyDecided { .. }), "{e}");
        assert_eq!(snapshot(&q), after_first);
    }

    #[test]
    fn bad_files_are_reported_not_fatal() {
        let (_t, q) = queue();
        let p = proposal(100);
        q.file_proposal(&p).unwrap();
        let other = QueueDir::new_id().unwrap();
        std::fs::write(
            q.root().join(PROPOSALS).join(format!("{other}.json")),
            "{\"format\":1}",
        )
        .unwrap();
        std::fs::write(q.root().join(PROPOSALS).join("notes.txt"), "x").unwrap();
        // A proposal copied under another id is refused.
        let moved = QueueDir::new_id().unwrap();
        std::fs::copy(
            q.root().join(PROPOSALS).join(format!("{}.json", p.id)),
            q.root().join(PROPOSALS).join(format!("{moved}.json")),
        )
        .unwrap();
        let l = q.list(110).unwrap();
        assert_eq!(l.entries.len(), 1);
        assert_eq!(l.unreadable.len(), 2);
        assert!(matches!(
            q.proposal(&moved),
            Err(QueueError::IdMismatch { .. })
        ));
        assert!(QueueDir::new(q.root().join("none"))
            .list(0)
            .unwrap()
            .entries
            .is_empty());
    }

    #[test]
    fn grants_round_trip() {
        let (_t, q) = queue();
        assert_eq!(q.grants().unwrap(), Grants::default());
        let g = Grants {
            grants: vec![Grant {
                id: QueueDir::new_id().unwrap(),
                host: crate::supervise::AskedHost::parse("a.example").unwrap(),
                port: Some(8443),
                methods: vec![],
                scope: Scope::Session,
                granted: 5,
            }],
            git: vec![crate::supervise::GitGrant {
                id: QueueDir::new_id().unwrap(),
                remote: crate::RemoteName::parse("app").unwrap(),
                refname: crate::supervise::AskedRef::parse("main").unwrap(),
                scope: Scope::Session,
                granted: 6,
            }],
        };
        q.save_grants(&g).unwrap();
        q.save_grants(&g).unwrap();
        assert_eq!(q.grants().unwrap(), g);
    }
}
