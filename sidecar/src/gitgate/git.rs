//! Running `git` for the gate: always the binary on a fixed `PATH`, never a
//! shell, with a scrubbed environment (nothing inherited: `PATH`, `HOME` =
//! the gate's state dir, no system or global config, no terminal prompt,
//! `LC_ALL=C`) and config that turns off everything a repository could make
//! git run or reach: hooks (`core.hooksPath=/dev/null`), fsmonitor, every
//! transport but http (the loopback relay), credential helpers, redirects,
//! automatic gc.
//!
//! The children only ever work on repositories the gate owns (the mirrors
//! and per-push quarantines under the state dir) and only ever talk to the
//! relay; they never hold the token ([`super::relay`] adds it). Every
//! child's argv and environment is kept in a small ring ([`Git::spawned`]),
//! so tests can prove the token is in neither.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// `PATH` of every child.
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Children remembered by [`Git::spawned`].
const REMEMBERED: usize = 256;

/// Config given to every child on its command line.
const CONFIG: &[&str] = &[
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "protocol.allow=never",
    "protocol.http.allow=always",
    "credential.helper=",
    "http.followRedirects=false",
    "gc.auto=0",
    "maintenance.auto=false",
    "uploadpack.allowFilter=true",
    // Fetched objects stay in the pack they came in, however few: serving
    // a clone then reuses it instead of compressing loose objects again
    // (a 30 MB mirror of loose objects served at a quarter of the speed).
    "transfer.unpackLimit=1",
    "fetch.unpackLimit=1",
    "core.quotePath=false",
];

/// A child that failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git ({source}); the sidecar image needs git on {PATH}")]
    Spawn {
        #[source]
        source: std::io::Error,
    },
    #[error("git {command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// One spawned child, as remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawned {
    pub argv: Vec<String>,
    /// `NAME=value` of every variable the child got.
    pub env: Vec<String>,
}

/// Spawns the gate's `git` children.
#[derive(Debug, Clone)]
pub struct Git {
    home: PathBuf,
    spawned: Arc<Mutex<VecDeque<Spawned>>>,
}

/// A finished child's output.
#[derive(Debug)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Git {
    /// Children get `home` as `HOME` (the gate's state dir).
    pub fn new(home: &Path) -> Self {
        Git {
            home: home.to_path_buf(),
            spawned: Arc::default(),
        }
    }

    /// A `git <config> <args>` command in `dir`, its environment scrubbed,
    /// killed when dropped; stdin/stdout/stderr unset.
    pub fn command(&self, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut argv: Vec<String> = Vec::new();
        for c in CONFIG {
            argv.push("-c".into());
            argv.push((*c).into());
        }
        argv.extend(args.iter().map(|a| a.to_string()));
        let home = self.home.display().to_string();
        let mut vars: Vec<(String, String)> = vec![
            ("PATH".into(), PATH.into()),
            ("HOME".into(), home),
            ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
            ("GIT_CONFIG_GLOBAL".into(), "/dev/null".into()),
            ("GIT_TERMINAL_PROMPT".into(), "0".into()),
            ("LC_ALL".into(), "C".into()),
        ];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.remember(Spawned {
            argv: std::iter::once("git".to_string())
                .chain(argv.iter().cloned())
                .collect(),
            env: vars.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        });
        #[allow(
            clippy::disallowed_methods,
            reason = "the git gate's object work is done by git itself (docs/decisions.md); it runs only on the gate's own bare repositories, with hooks off and a scrubbed environment, never through a shell"
        )]
        let mut cmd = Command::new("git");
        cmd.env_clear()
            .envs(vars)
            .args(argv)
            .current_dir(dir)
            .kill_on_drop(true);
        cmd
    }

    /// Runs `git args` in `dir` with `stdin` to completion; a non-zero exit
    /// is an error carrying git's stderr.
    pub async fn run(
        &self,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&[u8]>,
    ) -> Result<Output, GitError> {
        let mut cmd = self.command(dir, args, env);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| GitError::Spawn { source })?;
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A child that exits early closes the pipe; its status says why.
            let _ = pipe.write_all(data).await;
            drop(pipe);
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|source| GitError::Spawn { source })?;
        if !out.status.success() {
            return Err(GitError::Failed {
                command: args.iter().take(2).copied().collect::<Vec<_>>().join(" "),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(Output {
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    /// The most recent children's argv and environment (oldest first).
    pub fn spawned(&self) -> Vec<Spawned> {
        self.lock().iter().cloned().collect()
    }

    fn remember(&self, s: Spawned) {
        let mut ring = self.lock();
        if ring.len() == REMEMBERED {
            ring.pop_front();
        }
        ring.push_back(s);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Spawned>> {
        self.spawned.lock().unwrap_or_else(|p| p.into_inner())
    }
}
