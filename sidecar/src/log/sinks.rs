//! Where finished log lines go: the [`LineSink`] trait, stdout for lifecycle
//! events, and the size-bounded, rotating audit file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where finished lines go. Implementations write `line` plus a newline as one
/// unit.
pub trait LineSink: Send + Sync + 'static {
    fn write_line(&self, line: &str);

    /// Bounds the sink's size where it has one (the audit file); called at
    /// start and on every policy reload with `limits.audit_max_bytes`.
    fn limit_size(&self, _max_bytes: u64) {}
}

/// The production sink: the process's stdout. Write errors are dropped: a
/// closed stdout must not stop the proxy.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdoutSink;

impl LineSink for StdoutSink {
    fn write_line(&self, line: &str) {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&buf);
        let _ = out.flush();
    }
}

/// An append-only file, one `write` per line so lines from concurrent
/// connections never interleave. Write errors are dropped like stdout's: a
/// full disk must not stop enforcement.
///
/// Bounded: once a line would take the file past its size limit
/// ([`LineSink::limit_size`], `limits.audit_max_bytes`), the file is renamed
/// to `<path>.1` (replacing the previous one) and a new file is started, so
/// an agent in a loop costs the host at most about twice the limit.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    state: Mutex<FileState>,
}

#[derive(Debug)]
struct FileState {
    file: File,
    /// Bytes in the current file.
    len: u64,
    /// Rotate past this many bytes.
    max: u64,
}

/// Why the audit file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditFileError {
    #[error("cannot open audit log {path} for appending: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn open_append(path: &Path) -> Result<File, AuditFileError> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|source| AuditFileError::Open {
            path: path.into(),
            source,
        })
}

impl FileSink {
    /// Opens (creating if needed, mode 0640) `path` for appending, with the
    /// default size limit until [`LineSink::limit_size`] says otherwise.
    pub fn append(path: &Path) -> Result<Self, AuditFileError> {
        let file = open_append(path)?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(FileSink {
            path: path.into(),
            state: Mutex::new(FileState {
                file,
                len,
                max: bottle_policy::Limits::default().audit_max_bytes,
            }),
        })
    }

    /// `<path>.1`, where the previous file goes on rotation.
    pub fn rotated_path(&self) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(".1");
        PathBuf::from(name)
    }

    fn rotate(&self, state: &mut FileState) {
        // If the rename or the reopen fails, keep appending to the open file:
        // losing the audit trail is worse than exceeding the bound.
        if std::fs::rename(&self.path, self.rotated_path()).is_err() {
            return;
        }
        if let Ok(file) = open_append(&self.path) {
            state.file = file;
            state.len = 0;
        }
    }
}

impl LineSink for FileSink {
    fn write_line(&self, line: &str) {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.len > 0 && state.len + buf.len() as u64 > state.max {
            self.rotate(&mut state);
        }
        if state.file.write_all(&buf).is_ok() {
            state.len += buf.len() as u64;
        }
    }

    fn limit_size(&self, max_bytes: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.max = max_bytes.max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sink_appends_whole_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("egress.jsonl");
        std::fs::write(&path, "{\"old\":1}\n").unwrap();
        let sink = FileSink::append(&path).unwrap();
        sink.write_line("{\"new\":2}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"old\":1}\n{\"new\":2}\n"
        );
        let err = FileSink::append(&dir.join("missing/dir/x.jsonl")).unwrap_err();
        assert!(err.to_string().contains("cannot open audit log"), "{err}");
    }

    #[test]
    fn file_sink_rotates_past_its_limit_keeping_one_old_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("egress.jsonl");
        let sink = FileSink::append(&path).unwrap();
        sink.limit_size(100);
        let line = "x".repeat(39); // 40 bytes with the newline
        for _ in 0..7 {
            sink.write_line(&line);
        }
        // 7 lines of 40 bytes, at most 2 per 100-byte file: the current file
        // holds the last line, `.1` the two before; the rest is gone.
        let current = std::fs::read_to_string(&path).unwrap();
        let old = std::fs::read_to_string(sink.rotated_path()).unwrap();
        assert_eq!(current.len(), 40);
        assert_eq!(old.len(), 80);
        assert_eq!(sink.rotated_path(), dir.join("egress.jsonl.1"));
        let files = std::fs::read_dir(dir).unwrap().count();
        assert_eq!(files, 2, "one old file is kept, no more");
        // A line longer than the limit still gets written (alone).
        sink.write_line(&"y".repeat(300));
        assert_eq!(std::fs::read_to_string(&path).unwrap().len(), 301);
    }
}
