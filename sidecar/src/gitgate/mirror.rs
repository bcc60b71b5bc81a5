//! The bare mirror of each remote, `<git-state>/<name>.git`, and its
//! refresh from the upstream.
//!
//! A refresh is `git fetch --prune <relay> +refs/heads/*:refs/heads/*
//! +refs/tags/*:refs/tags/*` in the mirror. It is single-flight per remote:
//! a request that arrives while one is running waits for that one and gets
//! its result; a request that arrives after it finished starts a new one.
//! The refresh itself runs on its own task, so a client that hangs up
//! never leaves the mirror half-updated.

use super::git::Git;
use super::relay::Relay;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What a refresh ended with: `Err` holds the cause, for the client.
pub type Refreshed = Result<(), String>;

type Waiter = watch::Receiver<Option<Refreshed>>;

/// Every remote's mirror.
#[derive(Debug, Clone)]
pub struct Mirrors {
    root: PathBuf,
    git: Git,
    relay: Relay,
    inflight: Arc<Mutex<HashMap<String, Waiter>>>,
    /// Refreshes started, per remote (tests check coalescing with it).
    started: Arc<Mutex<HashMap<String, u64>>>,
}

impl Mirrors {
    pub fn new(root: &Path, git: Git, relay: Relay) -> Self {
        Mirrors {
            root: root.to_path_buf(),
            git,
            relay,
            inflight: Arc::default(),
            started: Arc::default(),
        }
    }

    /// `<git-state>/<name>.git`.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.git"))
    }

    /// Has the mirror of `name` ever been fetched into (for `stale_ok`)?
    pub fn has_data(&self, name: &str) -> bool {
        self.dir(name).join("gate-fetched").exists()
    }

    /// How many refreshes of `name` were started.
    pub fn refreshes(&self, name: &str) -> u64 {
        let started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        started.get(name).copied().unwrap_or(0)
    }

    /// Brings `name`'s mirror up to date with the upstream (joining a
    /// refresh already running).
    pub async fn refresh(&self, name: &str) -> Refreshed {
        let mut rx = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.get(name) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(name.to_string(), rx.clone());
                    *self
                        .started
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(name.to_string())
                        .or_default() += 1;
                    let me = self.clone();
                    let name = name.to_string();
                    tokio::spawn(async move {
                        let result = me.fetch(&name).await;
                        // Under the lock: a request from now on starts anew.
                        let mut inflight = me.inflight.lock().unwrap_or_else(|p| p.into_inner());
                        inflight.remove(&name);
                        let _ = tx.send(Some(result));
                    });
                    rx
                }
            }
        };
        let result = match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or_else(|| Err("refresh lost".into())),
            Err(_) => Err("the refresh task stopped".into()),
        };
        result
    }

    /// Creates the mirror if needed.
    pub async fn ensure(&self, name: &str) -> Result<PathBuf, String> {
        let dir = self.dir(name);
        if !dir.join("HEAD").exists() {
            std::fs::create_dir_all(&self.root)
                .map_err(|e| format!("cannot create {}: {e}", self.root.display()))?;
            let d = dir.display().to_string();
            self.git
                .run(&self.root, &["init", "--bare", "--quiet", &d], &[], None)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(dir)
    }

    async fn fetch(&self, name: &str) -> Refreshed {
        let dir = self.ensure(name).await?;
        self.relay.clear_error(name);
        let url = self.relay.url(name);
        let result = self
            .git
            .run(
                &dir,
                &[
                    "fetch",
                    "--prune",
                    "--quiet",
                    "--no-write-fetch-head",
                    "--no-auto-gc",
                    &url,
                    "+refs/heads/*:refs/heads/*",
                    "+refs/tags/*:refs/tags/*",
                ],
                &[],
                None,
            )
            .await;
        match result {
            Ok(_) => {
                self.follow_head(&dir, &url).await;
                let _ = std::fs::write(dir.join("gate-fetched"), b"");
                Ok(())
            }
            // The relay's own words say more than git's "returned 502".
            Err(e) => Err(self.relay.last_error(name).unwrap_or_else(|| e.to_string())),
        }
    }

    /// Points the mirror's HEAD where the upstream's points, so a clone
    /// checks out the upstream's default branch. Best effort: a failure
    /// leaves HEAD as it was.
    async fn follow_head(&self, dir: &Path, url: &str) {
        let Ok(out) = self
            .git
            .run(dir, &["ls-remote", "--symref", url, "HEAD"], &[], None)
            .await
        else {
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let target = text.lines().find_map(|l| {
            l.strip_prefix("ref: ")
                .and_then(|r| r.strip_suffix("\tHEAD"))
                .filter(|r| bottle_policy::valid_refname(r))
        });
        if let Some(target) = target {
            let _ = self
                .git
                .run(dir, &["symbolic-ref", "HEAD", target], &[], None)
                .await;
        }
    }
}
