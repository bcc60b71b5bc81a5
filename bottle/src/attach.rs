//! Running a command in the agent attached to the user's terminal: raw
//! mode for the length of the command (restored on every way out, a panic
//! included), the remote terminal sized like the local one and resized on
//! every `SIGWINCH`. Keys such as Ctrl-C reach the command as bytes, the way
//! `docker exec -it` and ssh pass them, so the agent CLI gets its own
//! interrupt and the user's terminal gets its prompt back only when the
//! command ends.

use bottle_runtimes::{ExecSpec, Runtime, RuntimeError};
use std::io::IsTerminal;

/// Why a command could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("--tty needs a terminal on stdin\n  fix: drop -t when piping")]
    NotATerminal,
    #[error("cannot switch the terminal to raw mode: {0}\n  fix: run it from a real terminal (a pipe or a dumb terminal cannot be attached)")]
    Terminal(std::io::Error),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl crate::exit::Classify for AttachError {
    fn exit(&self) -> crate::exit::Exit {
        match self {
            AttachError::NotATerminal => crate::exit::Exit::Usage,
            AttachError::Terminal(_) => crate::exit::Exit::Failed,
            AttachError::Runtime(e) => e.exit(),
        }
    }
}

/// Leaves raw mode when dropped.
struct RawMode;

impl RawMode {
    fn enter() -> Result<RawMode, AttachError> {
        crossterm::terminal::enable_raw_mode().map_err(AttachError::Terminal)?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// The local terminal's size as (rows, cols).
fn size() -> Option<(u16, u16)> {
    crossterm::terminal::size().ok().map(|(c, r)| (r, c))
}

/// Runs `spec` in container `id`. With `spec.tty` the local terminal is
/// put in raw mode and followed in size; the command's exit code is
/// returned.
pub async fn run(rt: &dyn Runtime, id: &str, mut spec: ExecSpec) -> Result<i64, AttachError> {
    if !spec.tty {
        return Ok(rt.exec_attached(id, &spec).await?);
    }
    if !std::io::stdin().is_terminal() {
        return Err(AttachError::NotATerminal);
    }
    let first = size();
    spec.size = first;
    let (tx, rx) = tokio::sync::watch::channel(first.unwrap_or((24, 80)));
    spec.resize = Some(rx);
    let follower = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .ok()
        .map(|mut winch| {
            tokio::spawn(async move {
                while winch.recv().await.is_some() {
                    if let Some(s) = size() {
                        if tx.send(s).is_err() {
                            break;
                        }
                    }
                }
            })
        });
    // Dropped on return and while unwinding from a panic alike.
    let raw = RawMode::enter()?;
    let result = rt.exec_attached(id, &spec).await;
    drop(raw);
    if let Some(f) = follower {
        f.abort();
    }
    Ok(result?)
}
