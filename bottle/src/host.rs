//! What bottle reads from the machine it runs on, gathered once at the
//! binary's edge: where state lives, the user's home directories (which are
//! never mounted silently) and the environment credentials are read from.
//!
//! The library takes a [`Host`] instead of reading the process environment
//! itself, so each unit test gets its own state root and variables and tests
//! can run side by side.

use crate::mounts::HostFacts;
use crate::state::{StateError, StateRoot};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where the environment's variables come from.
#[derive(Debug, Clone)]
enum Vars {
    Process,
    Fixed(BTreeMap<String, String>),
}

/// The machine as bottle sees it.
#[derive(Debug, Clone)]
pub struct Host {
    pub state: StateRoot,
    pub facts: HostFacts,
    vars: Vars,
}

impl Host {
    /// The real machine: `XDG_STATE_HOME`, `$HOME`, `$SUDO_USER`, and the
    /// process environment.
    pub fn from_env() -> Result<Host, StateError> {
        let state = StateRoot::from_env()?;
        Ok(Host {
            facts: HostFacts::from_env(&state),
            state,
            vars: Vars::Process,
        })
    }

    /// A host whose state lives under `state_base`, whose homes are `homes`
    /// and whose environment is exactly `vars`.
    pub fn fixed(state_base: PathBuf, homes: Vec<PathBuf>, vars: BTreeMap<String, String>) -> Host {
        let state = StateRoot::at(state_base);
        Host {
            facts: HostFacts {
                homes,
                state_root: Some(state.path().to_path_buf()),
            },
            state,
            vars: Vars::Fixed(vars),
        }
    }

    /// One environment variable.
    pub fn var(&self, key: &str) -> Option<String> {
        match &self.vars {
            Vars::Process => std::env::var(key).ok(),
            Vars::Fixed(map) => map.get(key).cloned(),
        }
    }
}
