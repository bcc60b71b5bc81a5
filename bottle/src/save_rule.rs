//! `bottle approve --scope always --save`: an approved egress rule written
//! into the `bottle.toml` the bottle was brought up from, so the user keeps
//! it in the file they read instead of only in the pin.
//!
//! That file often sits in the workspace, which the agent can write. The
//! host therefore trusts nothing about it but the path it accepted
//! ([`crate::pin::Pinned::config`], canonical at `up`):
//!
//! - the file is opened with `O_NOFOLLOW` and must be a regular file owned
//!   by the user running `bottle`, with one link; the path the opened file
//!   really has (`/proc/self/fd`) must be the accepted path, so a symlink
//!   planted in any component, or a hard link to another file, is refused;
//! - the edit is format-preserving (`toml_edit`): the entry is appended to
//!   `egress.allow` (and an `[[egress.rule]]` with the approved methods);
//!   nothing else in the file changes;
//! - the new text is parsed again before it is written, and written through
//!   the descriptor that was checked.
//!
//! Whatever else the agent may have written into the file stays subject to
//! the pin at the next `up`: saving a rule accepts nothing but that rule.

use bottle_policy::{Ask, RuleMethod};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, Value};

/// Why the rule was not saved.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("bottle `{bottle}` has no accepted bottle.toml to save into (it runs the built-in default or was never brought up)\n  fix: add the rule to a bottle.toml yourself")]
    NoConfig { bottle: String },
    #[error("only an approved egress rule is saved into bottle.toml; {asked} is not one\n  fix: approve without --save")]
    NotEgress { asked: String },
    #[error("cannot save into {path}: {why}\n  fix: check the file (the agent may have replaced it) and add the rule yourself")]
    Unsafe { path: PathBuf, why: String },
    #[error("cannot save into {path}: {source}\n  fix: check the file's permissions")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot save into {path}: it is not valid TOML now ({why})\n  fix: repair the file, then add the rule yourself")]
    Toml { path: PathBuf, why: String },
}

/// An opened, checked config file and its edited text, ready to write.
#[derive(Debug)]
pub struct Prepared {
    file: File,
    path: PathBuf,
    text: String,
    /// Whether the file gains anything (the rule may be there already).
    pub changes: bool,
}

/// Opens `path` (the accepted config) safely and prepares the text with
/// `ask`'s rule added. Nothing is written yet.
pub fn prepare(path: &Path, ask: &Ask) -> Result<Prepared, SaveError> {
    let Ask::Egress {
        host,
        port,
        methods,
    } = ask
    else {
        return Err(SaveError::NotEgress {
            asked: ask.summary(),
        });
    };
    let unsafe_ = |why: String| SaveError::Unsafe {
        path: path.to_path_buf(),
        why,
    };
    let io = |source| SaveError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                unsafe_("it is a symbolic link".into())
            } else {
                io(e)
            }
        })?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(unsafe_("it is not a regular file".into()));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(unsafe_(format!(
            "it is owned by uid {}, not by you",
            meta.uid()
        )));
    }
    if meta.nlink() != 1 {
        return Err(unsafe_(format!(
            "it has {} hard links; a link could make the write land elsewhere",
            meta.nlink()
        )));
    }
    let real = std::fs::read_link(format!("/proc/self/fd/{}", fd_of(&file))).map_err(io)?;
    if real != path {
        return Err(unsafe_(format!(
            "it resolves to {}, not the accepted path (a directory on the way was replaced)",
            real.display()
        )));
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io)?;
    let toml = |why: String| SaveError::Toml {
        path: path.to_path_buf(),
        why,
    };
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| toml(e.message().to_string()))?;
    let entry = host.allow_entry(*port);
    let changes = add_rule(&mut doc, &entry, host.as_str(), methods).map_err(toml)?;
    let text = doc.to_string();
    // The edited text must still be a TOML document.
    text.parse::<DocumentMut>()
        .map_err(|e| toml(e.message().to_string()))?;
    Ok(Prepared {
        file,
        path: path.to_path_buf(),
        text,
        changes,
    })
}

impl Prepared {
    /// Writes the edited text through the checked descriptor.
    pub fn write(mut self) -> Result<PathBuf, SaveError> {
        if !self.changes {
            return Ok(self.path);
        }
        let path = self.path.clone();
        let io = |source| SaveError::Io {
            path: path.clone(),
            source,
        };
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        self.file.set_len(0).map_err(io)?;
        self.file.write_all(self.text.as_bytes()).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        Ok(self.path)
    }
}

fn fd_of(file: &File) -> i32 {
    use std::os::fd::AsRawFd;
    file.as_raw_fd()
}

/// Adds `entry` to `egress.allow` and, with `methods`, an `[[egress.rule]]`
/// for `host`. Returns whether anything was added.
fn add_rule(
    doc: &mut DocumentMut,
    entry: &str,
    host: &str,
    methods: &[RuleMethod],
) -> Result<bool, String> {
    let egress = doc
        .entry("egress")
        .or_insert_with(|| Item::Table(Table::new()));
    let egress = egress
        .as_table_like_mut()
        .ok_or("`egress` is not a table")?;
    let allow = egress
        .entry("allow")
        .or_insert(Item::Value(Value::Array(Array::new())));
    let allow = allow
        .as_array_mut()
        .ok_or("`egress.allow` is not an array")?;
    let mut changed = false;
    if !allow.iter().any(|v| v.as_str() == Some(entry)) {
        allow.push(entry);
        changed = true;
    }
    if methods.is_empty() {
        return Ok(changed);
    }
    let wanted: Vec<&str> = methods.iter().map(RuleMethod::as_str).collect();
    let rules = egress
        .entry("rule")
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()));
    let rules = rules
        .as_array_of_tables_mut()
        .ok_or("`egress.rule` is not an array of tables")?;
    let exists = rules.iter().any(|t| {
        t.get("host").and_then(Item::as_str) == Some(host)
            && t.get("paths").is_none()
            && t.get("methods").and_then(Item::as_array).is_some_and(|a| {
                a.iter()
                    .map(|v| v.as_str())
                    .eq(wanted.iter().map(|m| Some(*m)))
            })
    });
    if !exists {
        let mut t = Table::new();
        t.insert("host", toml_edit::value(host));
        t.insert("methods", toml_edit::value(Array::from_iter(wanted)));
        rules.push(t);
        changed = true;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "name = \"demo\"  # kept\n\n[egress]\nallow = [\"a.example.com\"]   # mine\nunknown = \"ask\"\n\n[supervise]\nenabled = true\n";

    fn setup(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().canonicalize().unwrap().join("bottle.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn egress(host: &str, port: Option<u16>, methods: &[&str]) -> Ask {
        let m = methods
            .iter()
            .map(|m| RuleMethod::parse(m).unwrap())
            .collect();
        Ask::egress(host, port, m).unwrap()
    }

    #[test]
    fn the_rule_is_added_and_nothing_else_changes() {
        let (_d, path) = setup(CONFIG);
        let p = prepare(&path, &egress("api.example.com", Some(8443), &["GET"])).unwrap();
        assert!(p.changes);
        p.write().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("name = \"demo\"  # kept\n"), "{text}");
        assert!(
            text.contains("allow = [\"a.example.com\", \"api.example.com:8443\"]   # mine"),
            "{text}"
        );
        assert!(
            text.contains("[[egress.rule]]\nhost = \"api.example.com\"\nmethods = [\"GET\"]"),
            "{text}"
        );
        // The result is a config bottle reads.
        let cfg = crate::config::load(&path).unwrap();
        assert!(cfg
            .egress
            .allow
            .iter()
            .any(|r| r.to_string() == "api.example.com:8443"));
        // Saving the same rule again changes nothing.
        let again = prepare(&path, &egress("api.example.com", Some(8443), &["GET"])).unwrap();
        assert!(!again.changes);
    }

    #[test]
    fn a_file_without_egress_gets_one() {
        let (_d, path) = setup("name = \"demo\"\n");
        prepare(&path, &egress("api.example.com", None, &[]))
            .unwrap()
            .write()
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("[egress]\nallow = [\"api.example.com\"]"),
            "{text}"
        );
    }

    /// The agent replaced bottle.toml with a link to a file of the user's:
    /// the host writes nothing there.
    #[test]
    fn planted_links_are_refused() {
        let (d, path) = setup(CONFIG);
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let e = prepare(&path, &egress("api.example.com", None, &[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::remove_file(&path).unwrap();
        std::fs::hard_link(&victim, &path).unwrap();
        let e = prepare(&path, &egress("api.example.com", None, &[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hard links"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    }

    /// A directory on the accepted path swapped for a symlink.
    #[test]
    fn a_swapped_directory_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().canonicalize().unwrap();
        let elsewhere = base.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("bottle.toml"), CONFIG).unwrap();
        std::os::unix::fs::symlink(&elsewhere, base.join("proj")).unwrap();
        let accepted = base.join("proj").join("bottle.toml");
        let e = prepare(&accepted, &egress("api.example.com", None, &[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not the accepted path"), "{e}");
    }

    #[test]
    fn what_cannot_be_edited_is_reported() {
        let (_d, path) = setup("egress = 3\n");
        let e = prepare(&path, &egress("api.example.com", None, &[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`egress` is not a table"), "{e}");
        let (_d, path) = setup("[egress\n");
        let e = prepare(&path, &egress("api.example.com", None, &[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid TOML"), "{e}");
        let ask = Ask::Approval {
            action: bottle_policy::Text::parse("deploy").unwrap(),
        };
        assert!(matches!(
            prepare(&path, &ask),
            Err(SaveError::NotEgress { .. })
        ));
    }
}
