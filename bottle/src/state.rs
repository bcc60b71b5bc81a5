//! The bottle's state directory on the host: `$XDG_STATE_HOME/bottle/<name>/`
//! (default `~/.local/state/bottle/<name>/`).
//!
//! Layout, and who sees what:
//! - `sidecar/`  mounted read-only into the sidecar only: `policy.json`,
//!   `ca.pem`, `ca-key.pem` (0600), `secrets.json` (0600),
//!   `upstream-roots.pem`.
//! - `agent/`    mounted read-only into the agent: `bottle-ca.crt` and
//!   nothing else.
//! - `logs/`     mounted read-write into the sidecar: `egress.jsonl`.
//! - `bottle.json` which config the bottle was last brought up from (for
//!   `bottle reload`).
//!
//! Files are written to a temporary name and renamed, so the sidecar (which
//! watches `sidecar/`) never reads half a file.

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
    #[error("another `bottle up` of this bottle is running (it holds {path})\n  fix: wait for it to finish, or stop it with Ctrl-C")]
    Busy { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where every bottle's state dir lives: `$XDG_STATE_HOME/bottle`
/// (default `~/.local/state/bottle`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRoot {
    base: PathBuf,
}

impl StateRoot {
    /// From the environment (`XDG_STATE_HOME`, else the home directory).
    pub fn from_env() -> Result<Self, StateError> {
        let base = std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| dirs::home_dir().map(|h| h.join(".local").join("state")))
            .ok_or(StateError::NoHome)?;
        Ok(StateRoot {
            base: base.join("bottle"),
        })
    }

    /// The root at `base` (tests, and callers that already know it).
    pub fn at(base: PathBuf) -> Self {
        StateRoot { base }
    }

    pub fn path(&self) -> &Path {
        &self.base
    }

    /// The state dir of bottle `name`.
    pub fn bottle(&self, name: &str) -> StateDir {
        StateDir {
            root: self.base.join(name),
        }
    }

    /// Names of every bottle that has a state dir.
    pub fn names(&self) -> Vec<String> {
        let Ok(dir) = fs::read_dir(&self.base) else {
            return Vec::new();
        };
        let mut names: Vec<String> = dir
            .flatten()
            // `is_dir` follows a symlinked state dir: its pin still counts.
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// Paths of one bottle's state.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state dir of bottle `name`, from the environment.
    pub fn for_bottle(name: &str) -> Result<Self, StateError> {
        Ok(StateRoot::from_env()?.bottle(name))
    }

    /// The state dir at `root` (tests, and callers that already know it).
    pub fn at(root: PathBuf) -> Self {
        StateDir { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory mounted read-only into the sidecar.
    pub fn sidecar_dir(&self) -> PathBuf {
        self.root.join("sidecar")
    }

    /// The directory mounted read-only into the agent (the CA certificate).
    pub fn agent_dir(&self) -> PathBuf {
        self.root.join("agent")
    }

    /// The directory the sidecar writes its audit log to.
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// The git gate's bare mirrors, mounted read-write into the sidecar
    /// only (when the bottle has `[[git.remote]]`s).
    pub fn git_dir(&self) -> PathBuf {
        self.root.join("git")
    }

    /// The supervise queue (proposals, decisions, grants), mounted
    /// read-write into the sidecar only; `bottle approve` writes here.
    pub fn supervise_dir(&self) -> PathBuf {
        self.root.join(crate::requests::QUEUE_DIR)
    }

    pub fn policy_path(&self) -> PathBuf {
        self.sidecar_dir().join("policy.json")
    }

    pub fn audit_path(&self) -> PathBuf {
        self.logs_dir().join("egress.jsonl")
    }

    /// Creates every directory of the layout (0700).
    pub fn create(&self) -> Result<(), StateError> {
        for dir in [
            self.root.clone(),
            self.sidecar_dir(),
            self.agent_dir(),
            self.logs_dir(),
            self.git_dir(),
            self.supervise_dir(),
        ] {
            fs::create_dir_all(&dir)
                .and_then(|_| fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)))
                .map_err(|source| StateError::Write {
                    path: dir.clone(),
                    source,
                })?;
        }
        // The agent's directory is readable by any uid inside the agent.
        let agent = self.agent_dir();
        fs::set_permissions(&agent, fs::Permissions::from_mode(0o755)).map_err(|source| {
            StateError::Write {
                path: agent,
                source,
            }
        })
    }

    /// Takes this bottle's lock (`up.lock`, held until the guard drops), so
    /// two `bottle up` of one name cannot both pass the "already exists"
    /// check and then roll back each other's resources.
    pub fn lock(&self) -> Result<nix::fcntl::Flock<fs::File>, StateError> {
        self.create()?;
        let path = self.root.join("up.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| StateError::Write {
                path: path.clone(),
                source,
            })?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| StateError::Busy { path })
    }

    /// Writes `policy.json` atomically.
    pub fn write_policy(&self, json: &str) -> Result<PathBuf, StateError> {
        self.create()?;
        let path = self.policy_path();
        write_private(&path, json.as_bytes())?;
        Ok(path)
    }

    /// Writes (or, with `None`, removes) a file of the sidecar's directory.
    pub fn write_sidecar_file(&self, name: &str, data: Option<&[u8]>) -> Result<(), StateError> {
        let path = self.sidecar_dir().join(name);
        match data {
            Some(d) => write_private(&path, d),
            None => match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(StateError::Write { path, source: e })
                }
                _ => Ok(()),
            },
        }
    }
}

fn write_mode(path: &Path, data: &[u8], mode: u32) -> Result<(), StateError> {
    // One temporary name per process: two `bottle` processes writing the
    // same file (concurrent `up`s storing a probe) never share one.
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|source| StateError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a file only its owner can read (0600), atomically.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), StateError> {
    write_mode(path, data, 0o600)
}

/// Writes a file anyone may read (0644), atomically.
pub fn write_public(path: &Path, data: &[u8]) -> Result<(), StateError> {
    write_mode(path, data, 0o644)
}
