//! Live reload of the policy and secrets files.
//!
//! The CLI replaces `policy.json` / `secrets.json` by atomic rename inside a
//! bind-mounted directory, which inotify on a file bind mount would miss; so
//! the files are polled (every second in production) by their identity:
//! inode, length and modification time. A change is re-read and validated in
//! full; a valid file is swapped in at once for every later decision
//! ([`crate::policy_file::Live`]), connections already open keep running; an
//! invalid one keeps the old version and logs why. `limits` reload with the
//! policy: the connection caps and the audit size bound at once, deadlines
//! for connections opened after the reload. The guard's view of the
//! network (gateways, own addresses) is refreshed on the same tick.

use crate::guard::LocalNetSource;
use crate::policy_file;
use crate::secrets::Secrets;
use crate::shared::Shared;
use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What identifies one version of a file; `None` when it does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp(Option<(u64, u64, u64, Option<SystemTime>)>);

impl Stamp {
    pub fn of(path: &Path) -> Stamp {
        Stamp(
            std::fs::metadata(path)
                .ok()
                .map(|m| (m.dev(), m.ino(), m.len(), m.modified().ok())),
        )
    }
}

/// The files watched, and how often.
#[derive(Debug, Clone)]
pub struct Watch {
    pub policy: PathBuf,
    pub secrets: PathBuf,
    pub interval: Duration,
    pub local: LocalNetSource,
}

/// Polls until the sidecar shuts down. `policy_stamp` and `secrets_stamp` are
/// the versions loaded at start.
pub async fn watch(
    watch: Watch,
    shared: Arc<Shared>,
    mut policy_stamp: Stamp,
    mut secrets_stamp: Stamp,
) {
    loop {
        tokio::select! {
            () = shared.closing() => return,
            () = tokio::time::sleep(watch.interval) => {}
        }
        let stamp = Stamp::of(&watch.policy);
        if stamp != policy_stamp {
            policy_stamp = stamp;
            reload_policy(&watch.policy, &shared);
        }
        let stamp = Stamp::of(&watch.secrets);
        if stamp != secrets_stamp {
            secrets_stamp = stamp;
            reload_secrets(&watch.secrets, &shared);
        }
        let local = watch.local.read();
        if *shared.local.current() != local {
            shared.local.replace(local);
        }
    }
}

fn reload_policy(path: &Path, shared: &Shared) {
    match policy_file::load(path) {
        Ok(policy) => {
            let fields = json!({
                "what": "policy",
                "path": path.display().to_string(),
                "bottle": policy.bottle,
                "allow": policy.egress.allow.len(),
                "rules": policy.egress.rules.len(),
                "credentials": policy.egress.credentials.len(),
            });
            shared.logger.limit_audit(policy.limits.audit_max_bytes);
            // Supervise grants stay in force across reloads.
            let policy = match &shared.supervisor {
                Some(s) => s.overlay(policy),
                None => policy,
            };
            shared.policy.replace(policy);
            shared.logger.event("policy-reloaded", fields);
        }
        Err(e) => shared.logger.event(
            "policy-reload-failed",
            json!({"what": "policy", "path": path.display().to_string(), "error": e.to_string(), "kept": "the previous policy"}),
        ),
    }
}

fn reload_secrets(path: &Path, shared: &Shared) {
    match Secrets::load(path) {
        Ok(secrets) => {
            shared.secrets.replace(secrets);
            shared.logger.event(
                "policy-reloaded",
                json!({"what": "secrets", "path": path.display().to_string()}),
            );
        }
        Err(e) => shared.logger.event(
            "policy-reload-failed",
            json!({"what": "secrets", "path": path.display().to_string(), "error": e.to_string(), "kept": "the previous secrets"}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_change_on_rename_and_rewrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("policy.json");
        assert_eq!(Stamp::of(&path), Stamp(None));
        std::fs::write(&path, "a").unwrap();
        let first = Stamp::of(&path);
        assert_ne!(first, Stamp(None));
        // Same length, replaced by rename: a new inode.
        let tmp = dir.join("policy.json.tmp");
        std::fs::write(&tmp, "b").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_ne!(Stamp::of(&path), first);
    }
}
