//! `bottle run` and `bottle resume`: an agent CLI started in a bottle,
//! attached to the user's terminal or headless, and the record of that
//! session (`run.json` in the bottle's state dir) that `ps` and `resume`
//! read.
//!
//! The CLI is started with the runtime's exec in the running agent
//! container, so everything `up` set up holds for it: the agent's user,
//! environment (placeholders only), CA trust and MCP configs. `run` removes
//! a bottle it brought up itself when the CLI ends, unless `--keep`; a
//! bottle that was already running is left as it was.

use crate::lifecycle;
use crate::provider::{Mode, Provider};
use crate::state::{StateDir, StateError};
use bottle_runtimes::{ContainerState, ExecSpec, Role, Runtime, RuntimeError};
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;

/// The session record's file name in the state dir.
pub const RUN_FILE: &str = "run.json";

/// What `run` recorded about a bottle's agent session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    pub provider: String,
    /// `attached` or `headless`.
    pub mode: String,
    /// Unix seconds.
    pub started: u64,
    /// `running`, or `exited N` once the CLI ended.
    pub state: String,
    /// Kept at exit (`--keep`, or the bottle was running before `run`).
    pub kept: bool,
}

impl Session {
    /// How to get back to it, for `ps`.
    pub fn resume_hint(&self, name: &str) -> Option<String> {
        self.kept.then(|| format!("bottle resume {name}"))
    }
}

/// Reads a bottle's session record (none when absent or unreadable).
pub fn load(state: &StateDir) -> Option<Session> {
    let text = std::fs::read_to_string(state.root().join(RUN_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes a bottle's session record.
pub fn save(state: &StateDir, session: &Session) -> Result<(), StateError> {
    let json = serde_json::to_vec_pretty(session).unwrap_or_default();
    crate::state::write_private(&state.root().join(RUN_FILE), &json)
}

/// Why the CLI could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("bottle `{name}` is not running (its agent is {state})\n  fix: `bottle run --keep` keeps a bottle for `resume`; start a new one with `bottle run`")]
    NotRunning { name: String, state: String },
    #[error("bottle `{name}` runs no agent CLI to resume (it was not started by `bottle run`)\n  fix: `bottle run AGENT` in its directory, or `bottle exec -it {name} -- bash`")]
    NoSession { name: String },
    #[error("`{provider}` is not in the agent image `{image}` (exit code {code})\n  fix: use the provider image (`[agent] provider` in bottle.toml builds it), or `bottle run shell`")]
    NoCli {
        provider: String,
        image: String,
        code: i64,
    },
    #[error("bottle `{name}` is running without {provider}'s API (it was brought up for {was})\n  fix: `bottle down {name}`, then `bottle run {provider}`")]
    OtherProvider {
        name: String,
        provider: String,
        was: String,
    },
    #[error("bottle `{name}` is running; --from starts a new bottle from a snapshot\n  fix: `bottle down {name}` first, or give another --name")]
    FromRunning { name: String },
    #[error("snapshot tag `{tag}`: use 1 to 64 of a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit")]
    BadTag { tag: String },
    #[error("no snapshot `{tag}` ({image} is not in the runtime)\n  fix: `bottle snapshot NAME --tag {tag}` makes one from a kept bottle")]
    NoSnapshot { tag: String, image: String },
    #[error(transparent)]
    Attach(#[from] crate::attach::AttachError),
    #[error(transparent)]
    Lifecycle(#[from] lifecycle::LifecycleError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl crate::exit::Classify for RunError {
    fn exit(&self) -> crate::exit::Exit {
        use crate::exit::Exit;
        match self {
            RunError::NotRunning { .. }
            | RunError::NoSession { .. }
            | RunError::NoCli { .. }
            | RunError::OtherProvider { .. }
            | RunError::BadTag { .. }
            | RunError::FromRunning { .. }
            | RunError::NoSnapshot { .. } => Exit::Usage,
            RunError::Attach(e) => e.exit(),
            RunError::Lifecycle(e) => e.exit(),
            RunError::Runtime(e) => e.exit(),
            RunError::State(_) => Exit::Failed,
        }
    }
}

/// The running agent container of `name`, or why there is none.
pub async fn running_agent(
    rt: &dyn Runtime,
    name: &str,
) -> Result<bottle_runtimes::ContainerInfo, RunError> {
    let agent = match lifecycle::find_container(rt, name, Role::Agent).await {
        Err(lifecycle::LifecycleError::NoBottle { .. }) => {
            return Err(RunError::NotRunning {
                name: name.into(),
                state: "gone".into(),
            })
        }
        other => other?,
    };
    if agent.state != ContainerState::Running {
        return Err(RunError::NotRunning {
            name: name.into(),
            state: format!("{:?}", agent.state).to_lowercase(),
        });
    }
    Ok(agent)
}

/// Whether the running bottle `name` was brought up with `provider`'s API
/// (its accepted policy allows `needs`, the provider's allow entry); a
/// reused bottle is never widened by `run`.
pub fn check_reuse(
    state: &StateDir,
    name: &str,
    provider: Provider,
    needs: Option<&bottle_policy::AllowRule>,
) -> Result<(), RunError> {
    let Some(needs) = needs else {
        return Ok(());
    };
    let pinned = crate::pin::load(state);
    let has = pinned
        .as_ref()
        .is_some_and(|p| p.egress.allow.contains(needs));
    if has {
        return Ok(());
    }
    Err(RunError::OtherProvider {
        name: name.into(),
        provider: provider.as_str().into(),
        was: load(state).map_or("another use".into(), |s| s.provider),
    })
}

/// Starts `provider`'s CLI in `mode` in the agent of `name` and returns its
/// exit code. Attached modes use the terminal when stdin is one.
pub async fn start(
    rt: &dyn Runtime,
    name: &str,
    provider: Provider,
    mode: &Mode,
) -> Result<i64, RunError> {
    let agent = running_agent(rt, name).await?;
    let attached = !matches!(mode, Mode::Headless { .. });
    let tty = attached && std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let spec = ExecSpec {
        cmd: crate::provider::command(provider, mode),
        stdin: attached,
        tty,
        ..ExecSpec::default()
    };
    let code = crate::attach::run(rt, &agent.id, spec).await?;
    // 127 from a shell, 126 from the engine's exec: no such program.
    if matches!(code, 126 | 127) && provider != Provider::Shell {
        return Err(RunError::NoCli {
            provider: provider.as_str().into(),
            image: agent.image.clone(),
            code,
        });
    }
    Ok(code)
}

/// Where snapshots go: `bottle-snapshot:<tag>`.
pub const SNAPSHOT_REPO: &str = "bottle-snapshot";

/// The image of snapshot `tag`, the tag checked: 1 to 64 of `a-z0-9._-`,
/// starting with a letter or digit.
pub fn snapshot_image(tag: &str) -> Result<String, RunError> {
    let ok = !tag.is_empty()
        && tag.len() <= 64
        && tag.as_bytes()[0].is_ascii_alphanumeric()
        && tag.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if !ok {
        return Err(RunError::BadTag { tag: tag.into() });
    }
    Ok(format!("{SNAPSHOT_REPO}:{tag}"))
}

/// Saves the agent of `name` as snapshot `tag`: its filesystem (not its
/// mounts: the workspace stays where it is), the agent image's command and
/// working directory, none of its variables' values. Returns the image.
pub async fn snapshot(
    rt: &dyn Runtime,
    name: &str,
    tag: &str,
    session: Option<&Session>,
) -> Result<String, RunError> {
    let image = snapshot_image(tag)?;
    let agent = running_agent(rt, name).await?;
    let mut labels = std::collections::BTreeMap::from([
        ("dev.bottle.snapshot.of".to_string(), name.to_string()),
        ("dev.bottle.snapshot.from".to_string(), agent.image.clone()),
        ("dev.bottle.image".to_string(), "agent".to_string()),
    ]);
    if let Some(s) = session {
        labels.insert("dev.bottle.snapshot.provider".into(), s.provider.clone());
    }
    let spec = bottle_runtimes::CommitSpec {
        env: Vec::new(),
        cmd: vec!["sleep".into(), "infinity".into()],
        workdir: Some(crate::config::AgentConfig::DEFAULT_WORKDIR.into()),
        user: None,
        labels,
    };
    rt.commit(&agent.id, &image, &spec).await?;
    Ok(image)
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    crate::requests::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_tags_are_checked() {
        assert_eq!(
            snapshot_image("v1.2_x-y").unwrap(),
            "bottle-snapshot:v1.2_x-y"
        );
        for bad in ["", "-x", "A", "a/b", "a:b", &"x".repeat(65)] {
            assert!(
                matches!(snapshot_image(bad), Err(RunError::BadTag { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn sessions_round_trip_and_say_how_to_resume() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::at(dir.path().join("demo"));
        state.create().unwrap();
        assert!(load(&state).is_none());
        let s = Session {
            provider: "claude".into(),
            mode: "attached".into(),
            started: 10,
            state: "running".into(),
            kept: true,
        };
        save(&state, &s).unwrap();
        assert_eq!(load(&state).unwrap(), s);
        assert_eq!(s.resume_hint("demo").unwrap(), "bottle resume demo");
        let gone = Session { kept: false, ..s };
        assert!(gone.resume_hint("demo").is_none());
    }
}
