//! Running a runtime's command-line tool: the shared plumbing of the drivers
//! that speak to a CLI instead of an API (Apple `container`, smolvm).
//!
//! Every failure keeps the child's exit status and its cleaned-up stderr, so
//! the message the user reads is the tool's own words, not ours.

use crate::{RuntimeError, RuntimeKind};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// What a finished child left behind.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    /// Exit code; `128 + N` when killed by signal N, `-1` when unknown.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == 0
    }

    /// The error text a user should read: the `Error: …` lines of stderr
    /// (without the prefix and terminal colours), else all of stderr, else
    /// stdout.
    pub fn message(&self) -> String {
        let stderr = strip_ansi(&self.stderr);
        let errors: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter_map(|l| {
                l.strip_prefix("Error: ")
                    .or_else(|| l.strip_prefix("error: "))
            })
            .collect();
        let text = if !errors.is_empty() {
            errors.join("; ")
        } else if !stderr.trim().is_empty() {
            stderr.trim().lines().collect::<Vec<_>>().join("; ")
        } else {
            strip_ansi(self.stdout.trim())
        };
        format!("{text} (exit {})", self.code)
    }
}

/// Removes ANSI escape sequences (smolvm colours its log lines even when
/// stderr is not a terminal).
pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates, then one final byte in @..~.
                for n in chars.by_ref() {
                    if ('@'..='~').contains(&n) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// One CLI tool: its binary, the global arguments every call starts with,
/// and what of bottle's environment the child gets.
#[derive(Debug, Clone)]
pub(crate) struct Tool {
    pub runtime: RuntimeKind,
    pub bin: PathBuf,
    pub global: Vec<String>,
    /// Variables dropped from the inherited environment.
    pub env_remove: Vec<&'static str>,
    /// When set, the child starts from an EMPTY environment and gets only
    /// these variables (those that are set): a tool that may copy the
    /// caller's environment somewhere the agent can read it never sees the
    /// rest.
    pub env_keep: Option<&'static [&'static str]>,
}

fn code_of(status: std::process::ExitStatus) -> i32 {
    if let Some(c) = status.code() {
        return c;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return 128 + sig;
        }
    }
    -1
}

impl Tool {
    fn command<S: AsRef<str>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(self.global.iter().map(OsString::from));
        cmd.args(args.iter().map(|a| OsString::from(a.as_ref())));
        if let Some(keep) = self.env_keep {
            cmd.env_clear();
            for k in keep {
                if let Some(v) = std::env::var_os(k) {
                    cmd.env(k, v);
                }
            }
        }
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        cmd.kill_on_drop(true);
        cmd
    }

    fn spawn_error(&self, source: std::io::Error) -> RuntimeError {
        if source.kind() == std::io::ErrorKind::NotFound {
            RuntimeError::Unavailable {
                runtime: self.runtime,
                reason: format!("{} is not there any more", self.bin.display()),
                fix: "reinstall it, or point the BOTTLE_*_BIN variable at it".into(),
            }
        } else {
            RuntimeError::Io {
                doing: format!("running {}", self.bin.display()),
                source,
            }
        }
    }

    /// Runs `args` to completion with no stdin and collects its output.
    pub async fn run<S: AsRef<str>>(&self, args: &[S]) -> Result<Output, RuntimeError> {
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| self.spawn_error(e))?;
        Ok(Output {
            code: code_of(out.status),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs `args` and fails with [`RuntimeError::Call`] (exit code and the
    /// tool's own message) unless it exits 0.
    pub async fn run_ok<S: AsRef<str>>(
        &self,
        operation: &str,
        args: &[S],
    ) -> Result<Output, RuntimeError> {
        let out = self.run(args).await?;
        if out.ok() {
            Ok(out)
        } else {
            Err(self.failed(operation, &out))
        }
    }

    pub fn failed(&self, operation: &str, out: &Output) -> RuntimeError {
        RuntimeError::Call {
            runtime: self.runtime,
            operation: operation.into(),
            message: out.message(),
        }
    }

    /// Runs `args` with the caller's stdin, stdout and stderr; returns the
    /// exit code.
    pub async fn run_attached<S: AsRef<str>>(&self, args: &[S]) -> Result<i32, RuntimeError> {
        let status = self
            .command(args)
            .stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .await
            .map_err(|e| self.spawn_error(e))?;
        Ok(code_of(status))
    }

    /// Runs `args`, copying its stdout into `out` as it arrives (for
    /// `logs -f`). Stderr is collected for the error message.
    pub async fn run_streaming<S: AsRef<str>>(
        &self,
        operation: &str,
        args: &[S],
        out: &mut (dyn Write + Send),
    ) -> Result<(), RuntimeError> {
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(e))?;
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let err_task = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf).await;
            buf
        });
        let mut buf = [0u8; 8192];
        loop {
            let n = stdout
                .read(&mut buf)
                .await
                .map_err(|source| RuntimeError::Io {
                    doing: format!("reading the output of {operation}"),
                    source,
                })?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .and_then(|_| out.flush())
                .map_err(|source| RuntimeError::Io {
                    doing: "writing logs".into(),
                    source,
                })?;
        }
        let status = child.wait().await.map_err(|e| self.spawn_error(e))?;
        let stderr = err_task.await.unwrap_or_default();
        let result = Output {
            code: code_of(status),
            stdout: String::new(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        };
        if result.ok() {
            Ok(())
        } else {
            Err(self.failed(operation, &result))
        }
    }
}

/// `name` if it contains a slash (and is executable), else the first
/// executable `name` on `PATH` (the `which` crate's lookup).
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    which::which(name).ok()
}

/// The binary named by env var `var` (when set and non-empty), else
/// `default` on `PATH`; `Err` carries where it was looked for.
pub(crate) fn locate(var: &str, default: &str) -> Result<PathBuf, String> {
    match std::env::var(var).ok().filter(|v| !v.is_empty()) {
        Some(v) => which(&v).ok_or_else(|| format!("{var}={v} is not an executable file")),
        None => which(default).ok_or_else(|| format!("no `{default}` on PATH ({var} is not set)")),
    }
}

/// A semantic version `X.Y.Z` (pre-release and build suffixes ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Finds the first `X.Y[.Z]` in `text`.
    pub fn find_in(text: &str) -> Option<Version> {
        text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|w| w.contains('.'))
            .find_map(|w| {
                let mut parts = w.split('.').filter(|p| !p.is_empty());
                let major = parts.next()?.parse().ok()?;
                let minor = parts.next()?.parse().ok()?;
                let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                Some(Version(major, minor, patch))
            })
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            Version::find_in("container CLI version 1.0.0 (build: release, commit: ee848e3)"),
            Some(Version(1, 0, 0))
        );
        assert_eq!(Version::find_in("smolvm 1.32.2\n"), Some(Version(1, 32, 2)));
        assert_eq!(Version::find_in("smolvm 1.8"), Some(Version(1, 8, 0)));
        assert_eq!(Version::find_in("no version here"), None);
        assert!(Version(1, 8, 3) > Version(1, 8, 2));
        assert!(Version(1, 10, 0) > Version(1, 8, 3));
    }

    /// `env` prints the child's environment: with `env_keep` it holds only
    /// the kept names; without, the inherited environment (the control).
    #[tokio::test]
    async fn env_keep_starts_the_child_from_an_empty_environment() {
        let Some(env) = which("env") else {
            eprintln!("SKIP: no `env` on PATH");
            return;
        };
        let keys = |out: &Output| -> Vec<String> {
            out.stdout
                .lines()
                .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_string()))
                .collect()
        };
        let mut tool = Tool {
            runtime: RuntimeKind::AppleContainer,
            bin: env,
            global: vec![],
            env_remove: vec![],
            env_keep: None,
        };
        let inherited = keys(&tool.run::<&str>(&[]).await.unwrap());
        assert!(
            inherited.iter().any(|k| k != "PATH"),
            "the control sees more than PATH: {inherited:?}"
        );
        tool.env_keep = Some(&["PATH", "BOTTLE_NOT_SET_ANYWHERE"]);
        let kept = keys(&tool.run::<&str>(&[]).await.unwrap());
        assert_eq!(kept, vec!["PATH".to_string()]);
    }

    #[test]
    fn messages_prefer_error_lines_without_colours() {
        let out = Output {
            code: 1,
            stdout: String::new(),
            stderr: "Starting…\n\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m VMM exited\nError: vm not found: x\n".into(),
        };
        assert_eq!(out.message(), "vm not found: x (exit 1)");
        assert_eq!(strip_ansi("\u{1b}[33m WARN\u{1b}[0m x"), " WARN x");
    }
}
