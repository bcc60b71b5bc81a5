//! The bottle's state directory on the host: `$XDG_STATE_HOME/bottle/<name>/`
//! (default `~/.local/state/bottle/<name>/`).
//!
//! It holds what the sidecar needs (rendered policy, later the CA and secrets)
//! under `sidecar/`, which is the only part mounted into the sidecar, and is
//! never mounted into the agent.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Failures touching the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot find a home directory for the state dir; set XDG_STATE_HOME")]
    NoHome,
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Paths of one bottle's state.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state dir of bottle `name`, from the environment.
    pub fn for_bottle(name: &str) -> Result<Self, StateError> {
        let base = std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| dirs::home_dir().map(|h| h.join(".local").join("state")))
            .ok_or(StateError::NoHome)?;
        Ok(StateDir {
            root: base.join("bottle").join(name),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory mounted read-only into the sidecar.
    pub fn sidecar_dir(&self) -> PathBuf {
        self.root.join("sidecar")
    }

    pub fn policy_path(&self) -> PathBuf {
        self.sidecar_dir().join("policy.json")
    }

    /// Creates the directories (0700) and writes `policy.json` atomically.
    pub fn write_policy(&self, json: &str) -> Result<PathBuf, StateError> {
        for dir in [self.root.clone(), self.sidecar_dir()] {
            fs::create_dir_all(&dir)
                .and_then(|_| fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)))
                .map_err(|source| StateError::Write {
                    path: dir.clone(),
                    source,
                })?;
        }
        let path = self.policy_path();
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(json.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|source| StateError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}
