//! What went wrong with a `bottle.toml`, all of it at once.
//!
//! [`ConfigErrors`] carries every problem found in one file, each a
//! [`ConfigError`] with file, line, column, dotted key and message, sorted by
//! position. `Display` prints one problem per line in the form compilers use,
//! so editors can jump to it:
//!
//! ```text
//! bottle.toml:12:3: egress.allow[1]: `http://x`: write a host pattern, not a URL (e.g. `api.example.com` or `api.example.com:8443`)
//! ```
//!
//! The same fields serialise to JSON for `--json` output.

use serde::Serialize;
use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The class of a problem, for tools that group or filter them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The file could not be read.
    Io,
    /// The file is not valid TOML.
    Syntax,
    /// A key bottle does not know at that level.
    UnknownKey,
    /// A required key is absent.
    MissingKey,
    /// The value has the wrong TOML type.
    WrongType,
    /// The value has the right type but is not allowed.
    InvalidValue,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    /// The file, as the caller named it.
    pub file: PathBuf,
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// 1-based column in characters, when the problem has a place.
    pub column: Option<usize>,
    /// Dotted key path such as `egress.rule[0].methods[1]`, when the problem
    /// belongs to a key.
    pub key: Option<String>,
    pub kind: ErrorKind,
    /// What is wrong and what is allowed instead.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found while loading one config file (never empty).
#[derive(Debug, thiserror::Error)]
#[error("{}", render(.errors))]
pub struct ConfigErrors {
    errors: Vec<ConfigError>,
    #[source]
    io: Option<io::Error>,
}

fn render(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigErrors {
    /// The problems, sorted by position in the file.
    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }

    /// True when the file could not be read at all (as opposed to read and
    /// found wanting).
    pub fn is_io(&self) -> bool {
        self.io.is_some()
    }

    pub(crate) fn io(path: &Path, err: io::Error) -> Self {
        ConfigErrors {
            errors: vec![ConfigError {
                file: path.to_path_buf(),
                line: None,
                column: None,
                key: None,
                kind: ErrorKind::Io,
                message: format!("cannot read the config file: {err}"),
            }],
            io: Some(err),
        }
    }

    /// The problems of several files (an `extends` chain) as one list, file
    /// by file in the order given.
    pub(crate) fn join(list: Vec<ConfigErrors>) -> Self {
        ConfigErrors {
            errors: list.into_iter().flat_map(|e| e.errors).collect(),
            io: None,
        }
    }

    /// Builds the list from problems found at byte spans of `src`, sorted by
    /// position (problems at the same place keep the order they were found
    /// in).
    pub(crate) fn from_found(src: &str, path: &Path, mut found: Vec<Found>) -> Self {
        found.sort_by_key(|f| f.at);
        let lines = LineIndex::new(src);
        let errors = found
            .into_iter()
            .map(|f| {
                let (line, column) = match f.at {
                    Some(at) => {
                        let (l, c) = lines.position(src, at);
                        (Some(l), Some(c))
                    }
                    None => (None, None),
                };
                ConfigError {
                    file: path.to_path_buf(),
                    line,
                    column,
                    key: f.key,
                    kind: f.kind,
                    message: f.message,
                }
            })
            .collect();
        ConfigErrors { errors, io: None }
    }
}

/// A problem before it has a line and column.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    /// Byte offset into the source.
    pub at: Option<usize>,
    pub key: Option<String>,
    pub kind: ErrorKind,
    pub message: String,
}

impl Found {
    pub fn new(
        span: Option<Range<usize>>,
        key: Option<String>,
        kind: ErrorKind,
        message: String,
    ) -> Self {
        Found {
            at: span.map(|s| s.start),
            key,
            kind,
            message,
        }
    }
}

/// Byte offsets of line starts, to turn a byte offset into line and column.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(src: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { starts }
    }

    /// 1-based line and 1-based column counted in characters.
    fn position(&self, src: &str, at: usize) -> (usize, usize) {
        let mut at = at.min(src.len());
        while !src.is_char_boundary(at) {
            at -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= at);
        let start = self.starts[line - 1];
        let column = src[start..at].chars().count() + 1;
        (line, column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let src = "a = 1\nbé = 2\n\nc";
        let idx = LineIndex::new(src);
        assert_eq!(idx.position(src, 0), (1, 1));
        assert_eq!(idx.position(src, 4), (1, 5));
        assert_eq!(idx.position(src, 6), (2, 1));
        // `=` after the two-byte `é` is character 4.
        assert_eq!(idx.position(src, 10), (2, 4));
        assert_eq!(idx.position(src, 14), (3, 1));
        assert_eq!(idx.position(src, 15), (4, 1));
        assert_eq!(idx.position(src, 99), (4, 2));
    }

    #[test]
    fn display_forms() {
        let mut e = ConfigError {
            file: "bottle.toml".into(),
            line: Some(3),
            column: Some(7),
            key: Some("agent.memory".into()),
            kind: ErrorKind::InvalidValue,
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "bottle.toml:3:7: agent.memory: bad");
        e.key = None;
        assert_eq!(e.to_string(), "bottle.toml:3:7: bad");
        e.line = None;
        e.column = None;
        assert_eq!(e.to_string(), "bottle.toml: bad");
    }
}
