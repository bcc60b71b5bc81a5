//! `extends = ["base.toml", …]`: reading a config file and every parent it
//! names, each checked alone, then merging them into one TOML tree.
//!
//! Every file is walked against the schema by itself first, so each problem
//! is reported with the path and line of the file that has it; only a
//! schema-valid chain is merged. Parents load before their child (depth
//! first, in the order listed); a file reached twice (a diamond) is read
//! once. Relative paths (mounts, `upstream_roots`, `extends`) are made
//! absolute against the directory of the file that wrote them before the
//! merge, so a parent's `./data` means the parent's directory.
//!
//! Merge rules: tables merge key by key (`agent.env` included), a later
//! file's scalar or other array wins, and the arrays in [`CONCATENATED`]
//! add up, parent first.

use super::error::{ConfigErrors, ErrorKind, Found};
use super::value::{normalize_lexically, Mount};
use super::{check_auth_fits, schema, syntax_problems, AgentConfig};
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};

/// Arrays that concatenate across `extends` instead of being replaced.
pub(crate) const CONCATENATED: [&str; 7] = [
    "agent.mounts",
    "egress.allow",
    "egress.rule",
    "egress.credential",
    "egress.allow_private",
    "egress.upstream_roots",
    "git.remote",
];

/// One file of the chain, checked, its relative paths made absolute.
pub(crate) struct Layer {
    /// The path as shown in messages (the top file as the caller named it).
    pub shown: PathBuf,
    /// Absolute, lexically normalised.
    pub abs: PathBuf,
    pub src: String,
    /// The file's tree without `extends`, paths absolute.
    pub table: toml::Table,
}

/// Reads `src` (the contents of `path`) and its parents, checks each alone,
/// and returns the chain in merge order (parents first, `path` last), or
/// every problem in every file.
pub(crate) fn load_layers(src: &str, path: &Path) -> Result<Vec<Layer>, ConfigErrors> {
    let mut loader = Loader::default();
    let abs = normalize_lexically(&std::path::absolute(path).unwrap_or_else(|_| path.into()));
    loader.file(src.to_owned(), path.to_path_buf(), abs, true);
    if loader.errors.is_empty() {
        Ok(loader.layers)
    } else {
        Err(ConfigErrors::join(loader.errors))
    }
}

#[derive(Default)]
struct Loader {
    layers: Vec<Layer>,
    errors: Vec<ConfigErrors>,
    /// Identities (canonical paths) of the files being read, outermost
    /// first: a parent already here is a cycle.
    stack: Vec<(PathBuf, PathBuf)>,
    /// Identities of every file read, so a diamond reads a file once.
    seen: Vec<PathBuf>,
}

/// A file's identity: its canonical path when it exists, else its absolute
/// one.
fn identity(abs: &Path) -> PathBuf {
    std::fs::canonicalize(abs).unwrap_or_else(|_| abs.to_path_buf())
}

impl Loader {
    fn file(&mut self, src: String, shown: PathBuf, abs: PathBuf, top: bool) {
        let id = identity(&abs);
        self.seen.push(id.clone());
        let (root, syntax) = DeTable::parse_recoverable(&src);
        if !syntax.is_empty() {
            self.errors.push(ConfigErrors::from_found(
                &src,
                &shown,
                syntax_problems(&src, syntax),
            ));
            return;
        }
        let mut found = schema::check_document(&root);
        if !top {
            if let Some((key, _)) = root.get_ref().get_key_value("name") {
                found.push(Found::new(
                    Some(key.span()),
                    Some("name".into()),
                    ErrorKind::InvalidValue,
                    "a file that others extend cannot name the bottle: each config extending it would take the same name and so the same bottle; set `name` in the extending file".into(),
                ));
            }
        }
        let dir = abs.parent().map(Path::to_path_buf).unwrap_or_default();
        let parents: Vec<(String, Range<usize>)> = root
            .get_ref()
            .get("extends")
            .and_then(|v| v.get_ref().as_array())
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i.get_ref().as_str().map(|s| (s.to_owned(), i.span())))
                    .collect()
            })
            .unwrap_or_default();
        self.stack.push((id, shown.clone()));
        // Parents are followed even when this file has problems, so every
        // file's are reported in one run (parents' first).
        let mut problems = found;
        for (i, (entry, span)) in parents.iter().enumerate() {
            let p_abs = normalize_lexically(&dir.join(entry));
            let p_id = identity(&p_abs);
            let key = Some(format!("extends[{i}]"));
            if let Some(at) = self.stack.iter().position(|(s, _)| *s == p_id) {
                let mut chain: Vec<String> = self.stack[at..]
                    .iter()
                    .map(|(_, shown)| shown.display().to_string())
                    .collect();
                chain.push(self.stack[at].1.display().to_string());
                problems.push(Found::new(
                    Some(span.clone()),
                    key,
                    ErrorKind::InvalidValue,
                    format!(
                        "`{entry}` makes a cycle: {}; remove one of these extends",
                        chain.join(" -> ")
                    ),
                ));
                continue;
            }
            if self.seen.contains(&p_id) {
                continue;
            }
            match std::fs::read_to_string(&p_abs) {
                Ok(p_src) => self.file(p_src, p_abs.clone(), p_abs, false),
                Err(e) => problems.push(Found::new(
                    Some(span.clone()),
                    key,
                    ErrorKind::Io,
                    format!(
                        "cannot read {} (extended by {}): {e}; fix the path (a relative one is taken from {})",
                        p_abs.display(),
                        shown.display(),
                        dir.display()
                    ),
                )),
            }
        }
        self.stack.pop();
        if !problems.is_empty() {
            self.errors
                .push(ConfigErrors::from_found(&src, &shown, problems));
            return;
        }
        match toml::from_str::<toml::Table>(&src) {
            Ok(mut table) => {
                table.remove("extends");
                absolutize(&mut table, &dir);
                self.layers.push(Layer {
                    shown,
                    abs,
                    src,
                    table,
                });
            }
            Err(e) => self.errors.push(ConfigErrors::from_found(
                &src,
                &shown,
                vec![Found::new(
                    e.span(),
                    None,
                    ErrorKind::Syntax,
                    format!("invalid TOML: {}", e.message()),
                )],
            )),
        }
    }
}

/// Rewrites the relative host paths of one file against its directory.
fn absolutize(table: &mut toml::Table, dir: &Path) {
    if let Some(toml::Value::Array(mounts)) = get_mut(table, &["agent", "mounts"]) {
        for m in mounts.iter_mut() {
            if let Some(Ok(mut mount)) = m.as_str().map(Mount::parse) {
                mount.resolve(dir);
                *m = toml::Value::String(mount.to_string());
            }
        }
    }
    if let Some(toml::Value::Array(roots)) = get_mut(table, &["egress", "upstream_roots"]) {
        for r in roots.iter_mut() {
            if let Some(s) = r.as_str() {
                let p = normalize_lexically(&dir.join(s));
                *r = toml::Value::String(p.to_string_lossy().into_owned());
            }
        }
    }
}

fn get_mut<'a>(table: &'a mut toml::Table, keys: &[&str]) -> Option<&'a mut toml::Value> {
    let (last, head) = keys.split_last()?;
    let mut t = table;
    for k in head {
        t = t.get_mut(*k)?.as_table_mut()?;
    }
    t.get_mut(*last)
}

/// The chain's trees merged: parents first, each later file on top.
pub(crate) fn merge(layers: &[Layer]) -> toml::Table {
    let mut out = toml::Table::new();
    for l in layers {
        merge_into(&mut out, l.table.clone(), "");
    }
    out
}

fn merge_into(into: &mut toml::Table, over: toml::Table, prefix: &str) {
    for (k, v) in over {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge_into(a, b, &path),
            (Some(toml::Value::Array(a)), toml::Value::Array(b))
                if CONCATENATED.contains(&path.as_str()) =>
            {
                a.extend(b)
            }
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// Checks that need the merged config (a file's `auth` may fit a parent's
/// `provider`; a parent and a child may both mount one container path or
/// name one git remote). Each problem is placed in the file that wrote the
/// offending key.
pub(crate) fn check_merged(layers: &[Layer], agent: &AgentConfig) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    if let Some(auth) = agent.auth {
        if let Err(message) = check_auth_fits(agent.provider, auth) {
            // The last file that set `auth` (or, when the problem is a
            // provider set later, still the `auth` it no longer fits).
            if let Some(l) = layers
                .iter()
                .rev()
                .find(|l| get(&l.table, &["agent", "auth"]).is_some())
            {
                errors.push(place(l, &["agent", "auth"], None, "agent.auth", message));
            }
        }
    }
    if layers.len() > 1 {
        duplicates(
            layers,
            &["agent", "mounts"],
            |v| {
                v.as_str()
                    .and_then(|s| Mount::parse(s).ok())
                    .map(|m| m.target.trim_end_matches('/').to_owned())
            },
            None,
            "each container path may be mounted once",
            &mut errors,
        );
        duplicates(
            layers,
            &["git", "remote"],
            |v| v.get("name").and_then(|n| n.as_str()).map(str::to_owned),
            Some("name"),
            "remote names must be unique",
            &mut errors,
        );
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors::join(errors))
    }
}

/// Entries of a concatenated array that repeat one written by an earlier
/// file (within one file the schema walk already said so).
fn duplicates(
    layers: &[Layer],
    keys: &[&str],
    id: impl Fn(&toml::Value) -> Option<String>,
    sub: Option<&str>,
    rule: &str,
    errors: &mut Vec<ConfigErrors>,
) {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for (li, l) in layers.iter().enumerate() {
        let Some(toml::Value::Array(items)) = get(&l.table, keys) else {
            continue;
        };
        let mut mine = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Some(x) = id(item) else { continue };
            if let Some((_, first)) = seen.iter().find(|(s, _)| *s == x) {
                let key = format!("{}[{i}]", keys.join("."));
                errors.push(place(
                    l,
                    keys,
                    Some((i, sub)),
                    &key,
                    format!(
                        "`{x}` is also in {} of {}; {rule}",
                        keys.join("."),
                        layers[*first].shown.display()
                    ),
                ));
            }
            mine.push((x, li));
        }
        seen.extend(mine);
    }
}

fn get<'a>(table: &'a toml::Table, keys: &[&str]) -> Option<&'a toml::Value> {
    let (last, head) = keys.split_last()?;
    let mut t = table;
    for k in head {
        t = t.get(*k)?.as_table()?;
    }
    t.get(*last)
}

/// An error at `keys` (and array `index`) of `layer`, placed by re-reading
/// the file's spans.
fn place(
    layer: &Layer,
    keys: &[&str],
    index: Option<(usize, Option<&str>)>,
    key: &str,
    message: String,
) -> ConfigErrors {
    let (root, _) = DeTable::parse_recoverable(&layer.src);
    let span = span_of(root.get_ref(), keys, index);
    ConfigErrors::from_found(
        &layer.src,
        &layer.shown,
        vec![Found::new(
            span,
            Some(key.to_owned()),
            ErrorKind::InvalidValue,
            message,
        )],
    )
}

/// The span of `keys`, of its entry `index`, or of that entry's key `sub`.
fn span_of(
    table: &DeTable<'_>,
    keys: &[&str],
    index: Option<(usize, Option<&str>)>,
) -> Option<Range<usize>> {
    let (last, head) = keys.split_last()?;
    let mut t = table;
    for k in head {
        t = t.get(*k)?.get_ref().as_table()?;
    }
    let v = t.get(*last)?;
    let (i, sub) = match (index, v.get_ref()) {
        (Some((i, sub)), DeValue::Array(items)) => match items.get(i) {
            Some(item) => (item, sub),
            None => return Some(v.span()),
        },
        _ => return Some(v.span()),
    };
    match sub.and_then(|k| i.get_ref().as_table()?.get(k)) {
        Some(x) => Some(x.span()),
        None => Some(i.span()),
    }
}
