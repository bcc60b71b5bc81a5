//! What of the host the agent sees, decided before anything is created.
//!
//! The agent controls everything it can write, including the `bottle.toml`
//! that names its mounts and the symlinks inside them. So every mount source
//! is resolved here, on the host, into the exact directory the runtime will
//! bind (symlinks followed, `..` gone), and that canonical path is what is
//! pinned, shown and mounted ([`resolve`]). Then:
//!
//! - **Refused sources.** Some sources hand the agent the host whatever the
//!   pin says: `/`, the user's home (or a parent of it), the secrets under it
//!   (`~/.ssh`, `~/.aws`, `~/.config`, …), `/etc`, `/run` and `/var/run`
//!   (engine sockets), the engines' state, bottle's own state, and any unix
//!   socket or device. They are mounted only when the user names the exact
//!   canonical path with `--allow-mount` on this `up`; nothing remembers it.
//! - **Owner.** Files the agent writes on a read-write mount belong to the
//!   mount's owner: the agent runs as that uid:gid (root only when the owner
//!   is root). Read-write mounts owned by different users are refused, since
//!   the agent can write as only one of them.
//! - **The repository's executable configuration.** A `.git` at the root of a
//!   read-write mount is mounted read-only over itself, as are the hook
//!   directory and the config files it includes when they lie in a
//!   read-write mount: the host's `git` runs hooks and commands named in
//!   `.git/config` (`core.fsmonitor`, `core.pager`, filters, aliases, …),
//!   `.git/commondir` redirects where that config is read from, and a
//!   submodule's git dir inside `.git/modules` is read by the superproject's
//!   `git status`, so no part of the git dir is left writable. Where a
//!   read-write mount has no `.git`, bottle creates an empty one (owned by the
//!   mount's owner) and mounts it read-only, so the agent cannot plant a
//!   repository there for the host's next `git status`. The agent can read
//!   history and diff; it cannot commit into the host's repository.

use crate::config;
use bottle_runtimes::Mount;
use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The mounts to make, and as whom the agent runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Exposure {
    /// Canonical sources; the configured mounts first, then the read-only
    /// git protections.
    pub mounts: Vec<Mount>,
    /// `uid:gid` owning the read-write mounts; `None` when there is none or
    /// its owner is root (the image's user, root, applies).
    pub user: Option<(u32, u32)>,
    /// Empty `.git` directories to create (owned by the uid:gid) before the
    /// agent starts; their read-only mounts are in `mounts`.
    pub plant: Vec<(PathBuf, Option<(u32, u32)>)>,
    /// Things `up` should tell the user.
    pub notes: Vec<String>,
}

/// Why a mount cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount source {path} does not exist (from `{entry}` in {source_file})\n  fix: create it or remove the mount")]
    Missing {
        path: PathBuf,
        entry: String,
        source_file: String,
    },
    #[error("cannot resolve mount source {path}: {source}")]
    Resolve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing to mount {canonical}{via}: it is {why}, which gives the agent the host\n  fix: mount a project directory instead; if you really mean it, pass --allow-mount {canonical} on every `bottle up`")]
    Sensitive {
        canonical: PathBuf,
        via: String,
        why: String,
    },
    #[error("the read-write mounts belong to different users ({owners}); files the agent writes must belong to the mount's owner, and it can write as only one\n  fix: make one user own every read-write mount, or mount the others :ro")]
    MixedOwners { owners: String },
    #[error("{what} {path} lies in a read-write mount and does not exist, so the agent could create it and your next `git` would run it\n  fix: {fix}")]
    GitConfig {
        what: String,
        path: PathBuf,
        fix: String,
    },
    #[error("{path} is a symlink to {target}, outside the mount: bottle cannot keep that git dir read-only for the agent\n  fix: mount the repository the symlink points to instead")]
    GitOutside { path: PathBuf, target: PathBuf },
    #[error("refusing a read-write mount of {canonical}: it is (inside) a git directory, whose config and hooks your `git` runs\n  fix: mount it :ro, or mount the work tree instead (bottle keeps its .git read-only)")]
    GitWritable { canonical: PathBuf },
    #[error("the read-write mount {sources} belongs to root, so the agent would write there as root: setuid-root programs and files owned by anyone, left in a directory on your host\n  fix: give the directory to your user (`chown -R USER {sources}`; the agent then runs as that user), mount it :ro, or pass --allow-root-owner to accept it for this run")]
    RootOwned { sources: String },
    #[error("cannot prepare {path}: {source}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the user allowed on the command line for this run only (never
/// pinned: asked again at every `up`).
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// `--allow-mount`: sources mounted although [`refusal`] names them.
    pub mounts: Vec<PathBuf>,
    /// `--allow-root-owner`: the agent may write as root in root-owned
    /// read-write mounts.
    pub root_owner: bool,
}

/// What the refusal rules need to know of the host.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// Home directories of the invoking user (and of the user behind sudo).
    pub homes: Vec<PathBuf>,
    /// bottle's own state root (`$XDG_STATE_HOME/bottle`).
    pub state_root: Option<PathBuf>,
}

impl HostFacts {
    /// From the environment: `$HOME`, `$SUDO_USER`'s home, root's home.
    pub fn from_env(state: &crate::state::StateRoot) -> Self {
        let mut homes: Vec<PathBuf> = Vec::new();
        if let Some(h) = dirs::home_dir() {
            homes.push(h);
        }
        if let Ok(user) = std::env::var("SUDO_USER") {
            if let Ok(Some(u)) = nix::unistd::User::from_name(&user) {
                homes.push(u.dir);
            }
        }
        homes.push(PathBuf::from("/root"));
        homes.sort();
        homes.dedup();
        let state_root = Some(state.path().to_path_buf());
        HostFacts { homes, state_root }
    }
}

/// Non-dot paths under a home that hold credentials or what the user's shell
/// and tools run. Every dot-file and dot-directory directly in a home is
/// refused too: shell start-up files, `~/.ssh`, `~/.aws`, `~/.config`,
/// `~/.cargo/bin`, engine VMs' sockets (`~/.colima`, `~/.lima`, …).
const HOME_SECRETS: &[&str] = &["bin", "Library"];

/// Host paths never mounted silently, each with the reason: refused when the
/// source is one of them, inside one, or holds one.
const SYSTEM: &[(&str, &str)] = &[
    ("/etc", "the host's configuration"),
    ("/run", "the host's runtime directory (engine sockets)"),
    ("/var/run", "the host's runtime directory (engine sockets)"),
    ("/var/lib/docker", "the Docker engine's state"),
    ("/var/lib/containers", "podman's state"),
    ("/var/lib/containerd", "containerd's state"),
    ("/proc", "the host's process table"),
    ("/sys", "the host's kernel settings"),
    ("/dev", "the host's devices"),
    ("/boot", "the host's boot files"),
    ("/usr", "the host's programs"),
    ("/bin", "the host's programs"),
    ("/sbin", "the host's programs"),
    ("/lib", "the host's libraries"),
    ("/lib64", "the host's libraries"),
    ("/opt", "the host's installed software"),
];

/// Shared directories refused only as a whole (or a directory holding
/// them): they hold other users' and services' sockets; a project inside
/// them is fine.
const SHARED: &[(&str, &str)] = &[
    (
        "/tmp",
        "the shared temporary directory (ssh-agent and X11 sockets)",
    ),
    ("/var/tmp", "the shared temporary directory"),
];

/// Why mounting `canonical` would give the agent the host, if it would.
pub fn refusal(canonical: &Path, host: &HostFacts) -> Option<String> {
    if canonical == Path::new("/") {
        return Some("the host's root directory".into());
    }
    if let Ok(meta) = std::fs::metadata(canonical) {
        let ft = meta.file_type();
        if ft.is_socket() {
            return Some("a unix socket (an engine socket is root on the host)".into());
        }
        if ft.is_block_device() || ft.is_char_device() {
            return Some("a device".into());
        }
    }
    if let Some(sock) = socket_near(canonical) {
        return Some(format!(
            "a directory holding the unix socket {} (an engine socket is root on the host)",
            sock.display()
        ));
    }
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    // `p` is refused when it is `danger`, inside it, or contains it.
    let touches = |danger: &Path| {
        let danger = canon(danger);
        canonical.starts_with(&danger) || danger.starts_with(canonical)
    };
    for home in &host.homes {
        let home_c = canon(home);
        if home_c.starts_with(canonical) {
            return Some(format!(
                "your home directory {} or a directory containing it",
                home.display()
            ));
        }
        if let Ok(rest) = canonical.strip_prefix(&home_c) {
            let first = rest
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned());
            if let Some(first) = first.filter(|f| f.starts_with('.')) {
                return Some(format!(
                    "{}: dot-files in your home hold credentials and what your shell and tools run",
                    home.join(first).display()
                ));
            }
        }
        for s in HOME_SECRETS {
            if touches(&home.join(s)) {
                return Some(format!("{}, or holds it", home.join(s).display()));
            }
        }
    }
    for (p, why) in SHARED {
        if canon(Path::new(p)).starts_with(canonical) {
            return Some(format!("{why} ({p}), or holds it"));
        }
    }
    for (p, why) in SYSTEM {
        if touches(Path::new(p)) {
            return Some(format!("{why} ({p}), or holds it"));
        }
    }
    if let Some(state) = &host.state_root {
        if touches(state) {
            return Some(format!(
                "bottle's own state ({}: CA keys, credentials, policy), or holds it",
                state.display()
            ));
        }
    }
    None
}

/// The read-write mount whose source holds `file` (the config), if any:
/// through it the agent can edit the policy of its own next run. Compare
/// canonical paths on both sides, or a symlink hides it.
pub fn exposing<'a>(file: &Path, mounts: &'a [Mount]) -> Option<&'a Mount> {
    mounts
        .iter()
        .find(|m| !m.read_only && file.starts_with(&m.source))
}

/// A unix socket in `dir` or one level below it, if any (bounded: a
/// project's top levels, not its whole tree).
fn socket_near(dir: &Path) -> Option<PathBuf> {
    let is_sock = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket());
    let mut seen = 0usize;
    let top = std::fs::read_dir(dir).ok()?;
    for e in top.flatten() {
        seen += 1;
        if seen > 4096 {
            return None;
        }
        let p = e.path();
        if is_sock(&p) {
            return Some(p);
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            for e2 in std::fs::read_dir(&p)
                .into_iter()
                .flatten()
                .flatten()
                .take(1024)
            {
                if is_sock(&e2.path()) {
                    return Some(e2.path());
                }
            }
        }
    }
    None
}

fn entry(m: &config::Mount) -> String {
    m.to_string()
}

/// Resolves the configured mounts into what the runtime will bind. Reads the
/// file system and changes nothing: the empty `.git` directories to create
/// are returned in [`Exposure::plant`] (see [`plant`]).
pub fn resolve(
    mounts: &[config::Mount],
    source_file: &str,
    grants: &Grants,
    host: &HostFacts,
) -> Result<Exposure, MountError> {
    let allow_root_owner = grants.root_owner;
    let allow: Vec<PathBuf> = grants
        .mounts
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let mut out = Vec::new();
    let mut notes = Vec::new();
    let mut planted = Vec::new();
    for m in mounts {
        let canonical = match std::fs::canonicalize(&m.source) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(MountError::Missing {
                    path: m.source.clone(),
                    entry: entry(m),
                    source_file: source_file.into(),
                })
            }
            Err(source) => {
                return Err(MountError::Resolve {
                    path: m.source.clone(),
                    source,
                })
            }
        };
        if let Some(why) = refusal(&canonical, host) {
            if !allow.contains(&canonical) {
                return Err(MountError::Sensitive {
                    via: if canonical == m.source {
                        String::new()
                    } else {
                        format!(" (`{}` resolves there)", m.source.display())
                    },
                    canonical,
                    why,
                });
            }
            notes.push(format!(
                "WARNING: {} is mounted although it is {why} (--allow-mount)",
                canonical.display()
            ));
        }
        if !m.read_only && canonical.components().any(|c| c.as_os_str() == ".git") {
            return Err(MountError::GitWritable { canonical });
        }
        out.push(Mount {
            source: canonical,
            target: m.target.trim_end_matches('/').to_string(),
            read_only: m.read_only,
        });
    }
    let user = owner(&out)?;
    if user.is_some_and(|(uid, _)| uid == 0) && !allow_root_owner {
        let list = out
            .iter()
            .filter(|m| !m.read_only)
            .map(|m| m.source.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(MountError::RootOwned { sources: list });
    }
    let rw: Vec<Mount> = out.iter().filter(|m| !m.read_only).cloned().collect();
    for m in &rw {
        if m.source.is_dir() {
            protect_git(m, &rw, user, &mut out, &mut planted, &mut notes)?;
        }
    }
    if user.is_some_and(|(uid, _)| uid == 0) {
        notes.push(
            "WARNING: the agent writes as root in its read-write mounts (--allow-root-owner)"
                .into(),
        );
    }
    Ok(Exposure {
        mounts: out,
        user: user.filter(|(uid, _)| *uid != 0),
        plant: planted,
        notes,
    })
}

/// Creates the empty directories of [`Exposure::plant`], in order; returns
/// those it made (an existing empty directory is kept and not returned, so
/// [`unplant`] never removes what it did not make).
pub fn plant(dirs: &[(PathBuf, Option<(u32, u32)>)]) -> Result<Vec<PathBuf>, MountError> {
    let mut made = Vec::new();
    for (dir, owner) in dirs {
        match std::fs::create_dir(dir) {
            Ok(()) => made.push(dir.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Something appeared since the plan: only a real, empty
                // directory is what the plan meant to cover (a planted
                // parent holds its planted `.git`, which is fine).
                let real = std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir());
                let empty = std::fs::read_dir(dir).is_ok_and(|d| {
                    d.flatten()
                        .all(|e| made.contains(&e.path()) || e.file_name() == ".git")
                });
                if real && empty {
                    continue;
                }
                return Err(MountError::Prepare {
                    path: dir.clone(),
                    source: e,
                });
            }
            Err(source) => {
                return Err(MountError::Prepare {
                    path: dir.clone(),
                    source,
                })
            }
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir, Some(*uid), Some(*gid)).map_err(|source| {
                MountError::Prepare {
                    path: dir.clone(),
                    source,
                }
            })?;
        }
    }
    Ok(made)
}

/// Removes directories [`plant`] made, deepest first, where they are still
/// empty (`rmdir`: never follows a symlink, never removes content).
pub fn unplant(made: &[PathBuf]) {
    for dir in made.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// The single owner of every read-write mount, if there is one.
fn owner(mounts: &[Mount]) -> Result<Option<(u32, u32)>, MountError> {
    let mut owners = BTreeSet::new();
    for m in mounts.iter().filter(|m| !m.read_only) {
        let meta = std::fs::metadata(&m.source).map_err(|source| MountError::Resolve {
            path: m.source.clone(),
            source,
        })?;
        owners.insert((meta.uid(), meta.gid()));
    }
    match owners.len() {
        0 => Ok(None),
        1 => Ok(owners.into_iter().next()),
        _ => Err(MountError::MixedOwners {
            owners: owners
                .iter()
                .map(|(u, g)| format!("{u}:{g}"))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Every place `host_path` appears in the agent: once per mount whose
/// source holds it (a read-only mount covers one path, not the file).
fn in_agent(host_path: &Path, mounts: &[Mount]) -> Vec<String> {
    mounts
        .iter()
        .filter(|m| host_path.starts_with(&m.source))
        .map(|m| {
            let rest = host_path.strip_prefix(&m.source).unwrap_or(Path::new(""));
            if rest.as_os_str().is_empty() {
                m.target.clone()
            } else {
                Path::new(&m.target).join(rest).display().to_string()
            }
        })
        .collect()
}

/// Mounts `source` read-only over every path at which a read-write mount
/// shows it.
fn cover(out: &mut Vec<Mount>, source: &Path, rw: &[Mount]) {
    for target in in_agent(source, rw) {
        add_read_only(out, source.to_path_buf(), target);
    }
}

fn add_read_only(out: &mut Vec<Mount>, source: PathBuf, target: String) {
    if !out.iter().any(|m| m.target == target) {
        out.push(Mount {
            source,
            target,
            read_only: true,
        });
    }
}

/// Keeps the repository metadata of mount `m`'s work tree read-only.
fn protect_git(
    m: &Mount,
    rw: &[Mount],
    owner: Option<(u32, u32)>,
    out: &mut Vec<Mount>,
    planted: &mut Vec<(PathBuf, Option<(u32, u32)>)>,
    notes: &mut Vec<String>,
) -> Result<(), MountError> {
    let mut cx = GitCover {
        rw,
        covered: Vec::new(),
        owner,
        out,
        planted,
    };
    if std::fs::symlink_metadata(m.source.join(".git")).is_err() {
        notes.push(format!(
            "an empty read-only {} is made for the life of the bottle, so the agent cannot plant a repository your next `git` would run",
            m.source.join(".git").display()
        ));
    }
    cx.work_tree(&m.source, 0)?;
    // Repositories nested in the tree (a clone inside the project, not a
    // submodule) are run by `git` in their own directory just the same.
    let (nested, complete) = nested_repositories(&m.source);
    for wt in nested {
        cx.work_tree(&wt, 1)?;
    }
    if !complete {
        notes.push(format!(
            "{} is larger than bottle searches for nested repositories ({NESTED_SEARCH_LIMIT} entries): those past the limit are not read-only to the agent",
            m.source.display()
        ));
    }
    Ok(())
}

/// How many directory entries `nested_repositories` reads at most.
pub const NESTED_SEARCH_LIMIT: usize = 200_000;

/// Directories below `root` (not `root` itself) that hold a `.git`, found by
/// a bounded walk that follows no symlink and does not enter `.git`
/// directories or `node_modules`. Returns whether the walk finished.
fn nested_repositories(root: &Path) -> (Vec<PathBuf>, bool) {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > NESTED_SEARCH_LIMIT {
                return (found, false);
            }
            let name = e.file_name();
            let Ok(ft) = e.file_type() else { continue };
            if name == ".git" {
                if dir != root {
                    found.push(dir.clone());
                }
                continue;
            }
            if ft.is_dir() && name != "node_modules" {
                stack.push(e.path());
            }
        }
    }
    found.sort();
    (found, true)
}

/// What [`protect_git`] adds to, shared down the submodule walk.
struct GitCover<'a> {
    rw: &'a [Mount],
    /// What this walk already mounted read-only (with every path of it).
    covered: Vec<PathBuf>,
    owner: Option<(u32, u32)>,
    out: &'a mut Vec<Mount>,
    planted: &'a mut Vec<(PathBuf, Option<(u32, u32)>)>,
}

/// How deep submodules of submodules are followed.
const SUBMODULE_DEPTH: usize = 4;

impl GitCover<'_> {
    fn cover(&mut self, p: &Path) {
        if self.covered.iter().any(|c| p.starts_with(c)) {
            return;
        }
        cover(self.out, p, self.rw);
        self.covered.push(p.to_path_buf());
    }

    /// Plants an empty read-only `.git` in the mount root `dir`: git skips
    /// an empty `.git` when it looks for a repository, and the agent cannot
    /// make one there.
    fn plant_git(&mut self, dir: &Path) {
        let git = dir.join(".git");
        self.planted.push((git.clone(), self.owner));
        self.cover(&git);
    }

    /// An unpopulated submodule's directory (made empty when missing, as a
    /// checkout does) is read-only as a whole: with a gitlink in the index,
    /// a `.git` the agent put there would be run by the superproject's
    /// `git status`, and an empty `.git` there makes that command fail.
    fn unpopulated(&mut self, dir: &Path) {
        if std::fs::symlink_metadata(dir).is_err() {
            self.planted.push((dir.to_path_buf(), self.owner));
        }
        self.cover(dir);
    }

    /// The `.git` of work tree `wt`, the git dir and common dir it leads to,
    /// the hooks and config files those name, the `.git` files of their
    /// linked worktrees, and (recursively) their submodules' work trees.
    fn work_tree(&mut self, wt: &Path, depth: usize) -> Result<(), MountError> {
        let dot_git = wt.join(".git");
        let Ok(meta) = std::fs::symlink_metadata(&dot_git) else {
            if depth == 0 {
                self.plant_git(wt);
            } else {
                self.unpopulated(wt);
            }
            return Ok(());
        };
        let resolved = std::fs::canonicalize(&dot_git).map_err(|source| MountError::Resolve {
            path: dot_git.clone(),
            source,
        })?;
        if meta.file_type().is_symlink() && !resolved.starts_with(wt) {
            return Err(MountError::GitOutside {
                path: dot_git,
                target: resolved,
            });
        }
        self.cover(&resolved);
        // A `.git` file (`gitdir: PATH`): linked worktrees, submodules,
        // `--separate-git-dir` layouts.
        let git_dir = if resolved.is_file() {
            let Some(dir) = gitfile_target(&resolved, wt) else {
                return Ok(());
            };
            self.cover(&dir);
            dir
        } else {
            resolved
        };
        let common = match std::fs::read_to_string(git_dir.join("commondir")) {
            Ok(rel) => match std::fs::canonicalize(git_dir.join(rel.trim())) {
                Ok(c) => {
                    self.cover(&c);
                    c
                }
                Err(_) => git_dir.clone(),
            },
            Err(_) => git_dir.clone(),
        };
        for config in [common.join("config"), git_dir.join("config.worktree")] {
            if config.is_file() {
                self.named_by(&config, wt, &git_dir)?;
            }
        }
        // Each linked worktree's `.git` file: rewritten, it would send the
        // host's `git` in that worktree to a config the agent wrote.
        for e in std::fs::read_dir(common.join("worktrees"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(target) = std::fs::read_to_string(e.path().join("gitdir")) {
                if let Ok(c) = std::fs::canonicalize(target.trim()) {
                    self.cover(&c);
                }
            }
        }
        if depth < SUBMODULE_DEPTH {
            for sub in gitlinks(&git_dir, wt) {
                let sub_wt = lexical(&wt.join(sub));
                if sub_wt.starts_with(wt) {
                    self.work_tree(&sub_wt, depth + 1)?;
                }
            }
        }
        Ok(())
    }

    /// Covers `core.hooksPath` and included config files named by `config`
    /// that lie in a read-write mount; one that does not exist yet is
    /// refused (the agent could create it).
    fn named_by(&mut self, config: &Path, wt: &Path, git_dir: &Path) -> Result<(), MountError> {
        for (what, path) in git_paths(config, wt, git_dir) {
            match std::fs::canonicalize(&path) {
                // Only what the agent could write needs covering; a path
                // that resolves out of every read-write mount is not shown
                // to it.
                Ok(c) => self.cover(&c),
                Err(_) if in_agent(&lexical(&path), self.rw).is_empty() => {}
                Err(_) => {
                    return Err(MountError::GitConfig {
                        fix: format!(
                            "create {} yourself (bottle mounts it read-only), or remove the setting from {}",
                            path.display(),
                            config.display()
                        ),
                        what,
                        path,
                    })
                }
            }
        }
        Ok(())
    }
}

/// The directory a `.git` file (`gitdir: PATH`, relative to the work tree)
/// points at, canonical.
fn gitfile_target(file: &Path, wt: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(file).ok()?;
    let target = text.lines().next()?.strip_prefix("gitdir:")?.trim();
    std::fs::canonicalize(wt.join(target)).ok()
}

/// Paths of the submodules (gitlinks) in the index of `git_dir`, relative to
/// the work tree. The agent cannot add one (the git dir is read-only to it),
/// so the set is fixed when the bottle starts. Read with `git ls-files`, with
/// the only index hook that command could run (`core.fsmonitor`) switched
/// off and no system or global config.
#[allow(
    clippy::disallowed_methods,
    reason = "the user's own git, run on the host to read (never run) what the repository names, with hooks and fsmonitor off and no system or global config"
)]
fn gitlinks(git_dir: &Path, wt: &Path) -> Vec<PathBuf> {
    let Ok(git) = which::which("git") else {
        return Vec::new();
    };
    let Ok(out) = std::process::Command::new(git)
        .args(["-c", "core.fsmonitor=false", "-c", "safe.directory=*"])
        .arg("--git-dir")
        .arg(git_dir)
        .arg("--work-tree")
        .arg(wt)
        .args(["ls-files", "--stage", "-z"])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_OPTIONAL_LOCKS", "0")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split('\0')
        .filter_map(|rec| {
            let (meta, path) = rec.split_once('\t')?;
            meta.starts_with("160000 ").then(|| PathBuf::from(path))
        })
        .collect()
}

/// `path` without `.` and `..` parts (for a path that does not exist yet).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `core.hooksPath` and every `include.path` / `includeIf.*.path` of a git
/// config file, as absolute host paths. Read with `git config --file`, which
/// parses only; nothing the file names is run.
#[allow(
    clippy::disallowed_methods,
    reason = "the user's own git, run on the host to read (never run) the paths a git config names: `git config --file` only parses, with no system or global config"
)]
fn git_paths(config: &Path, worktree: &Path, git_dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(git) = which::which("git") else {
        return Vec::new();
    };
    let out = std::process::Command::new(git)
        .arg("config")
        .arg("--file")
        .arg(config)
        .args([
            "--null",
            "--get-regexp",
            r"^(core\.hookspath|include\..*path|includeif\..*\.path)$",
        ])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output();
    let Ok(out) = out else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found = Vec::new();
    for rec in text.split('\0').filter(|r| !r.is_empty()) {
        let (key, value) = rec.split_once('\n').unwrap_or((rec, ""));
        let value = value.trim();
        if value.is_empty() || value.starts_with('~') {
            continue;
        }
        let key = key.to_ascii_lowercase();
        let (what, base) = if key == "core.hookspath" {
            ("core.hooksPath", worktree)
        } else {
            ("the included git config", git_dir)
        };
        let p = Path::new(value);
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        };
        found.push((format!("{what} `{value}` ({})", config.display()), abs));
    }
    found
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "the tests build real repositories (worktrees, submodules) with git"
)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A private scratch directory, removed when the test ends.
    struct Scratch {
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    impl std::ops::Deref for Scratch {
        type Target = PathBuf;
        fn deref(&self) -> &PathBuf {
            &self.path
        }
    }

    fn tmp(tag: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix(&format!("bottle-mounts-{tag}-"))
            .tempdir()
            .unwrap();
        let path = std::fs::canonicalize(dir.path()).unwrap();
        Scratch { _dir: dir, path }
    }

    /// Grants for tests whose temporary directories belong to whoever runs
    /// them (root on CI).
    fn g() -> Grants {
        Grants {
            mounts: vec![],
            root_owner: true,
        }
    }

    fn git(dir: &Path, args: &[&str]) {
        let st = Command::new("git")
            .args([
                "-c",
                "user.email=t@t",
                "-c",
                "user.name=t",
                "-c",
                "protocol.file.allow=always",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(st.status.success(), "git {args:?}: {st:?}");
    }

    fn ro_targets(e: &Exposure) -> Vec<&str> {
        e.mounts
            .iter()
            .filter(|m| m.read_only)
            .map(|m| m.target.as_str())
            .collect()
    }

    fn host(home: &Path) -> HostFacts {
        HostFacts {
            homes: vec![home.to_path_buf()],
            state_root: Some(home.join(".local/state/bottle")),
        }
    }

    fn mount(spec: &str, dir: &Path) -> config::Mount {
        let mut m = config::Mount::parse(spec).unwrap();
        m.resolve(dir);
        m
    }

    #[test]
    fn a_symlinked_source_is_mounted_where_it_points_and_refused_when_that_is_secret() {
        let home = tmp("home");
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        let ws = home.join("proj");
        std::fs::create_dir_all(ws.join("real")).unwrap();
        std::os::unix::fs::symlink(ws.join("real"), ws.join("cache")).unwrap();
        let e = resolve(
            &[mount("./cache:/cache:ro", &ws)],
            "bottle.toml",
            &g(),
            &host(&home),
        )
        .unwrap();
        assert_eq!(e.mounts[0].source, ws.join("real"));
        std::fs::remove_file(ws.join("cache")).unwrap();
        std::os::unix::fs::symlink(home.join(".ssh"), ws.join("cache")).unwrap();
        let err = resolve(
            &[mount("./cache:/cache:ro", &ws)],
            "bottle.toml",
            &g(),
            &host(&home),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!(
                "refusing to mount {}",
                home.join(".ssh").display()
            )),
            "{msg}"
        );
        assert!(
            msg.contains("resolves there") && msg.contains("--allow-mount"),
            "{msg}"
        );
        // The exact canonical path, named on the command line, is allowed.
        let ok = resolve(
            &[mount("./cache:/cache:ro", &ws)],
            "bottle.toml",
            &Grants {
                mounts: vec![home.join(".ssh")],
                root_owner: false,
            },
            &host(&home),
        )
        .unwrap();
        assert!(ok.notes[0].starts_with("WARNING"), "{:?}", ok.notes);
    }

    #[test]
    fn the_host_its_home_sockets_and_engine_state_are_refused() {
        let home = tmp("home2");
        let h = host(&home);
        for p in [
            "/",
            "/etc",
            "/etc/ssl",
            "/var",
            "/run",
            "/var/run",
            "/var/lib/docker",
        ] {
            let c = std::fs::canonicalize(p).unwrap_or_else(|_| p.into());
            assert!(refusal(&c, &h).is_some(), "{p}");
        }
        assert!(refusal(&home, &h).is_some());
        assert!(refusal(home.parent().unwrap(), &h).is_some());
        assert!(refusal(&home.join(".config/gh"), &h).is_some());
        assert!(refusal(&home.join(".local/state/bottle/x"), &h).is_some());
        assert!(refusal(&home.join("src/app"), &h).is_none());
        let sock_dir = tmp("sock");
        let sock = sock_dir.join("engine.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(refusal(&sock, &h).unwrap().contains("unix socket"));
        assert!(refusal(Path::new("/dev/null"), &h).is_some());
    }

    #[test]
    fn git_dir_is_read_only_and_a_missing_one_is_planted_empty() {
        let home = tmp("home3");
        let ws = home.join("ws");
        std::fs::create_dir_all(&ws).unwrap();
        let e = resolve(&[mount("./:/workspace:rw", &ws)], "f", &g(), &host(&home)).unwrap();
        assert!(!ws.join(".git").exists(), "resolving changes nothing");
        assert_eq!(e.plant.len(), 1);
        assert_eq!(e.plant[0].0, ws.join(".git"));
        plant(&e.plant).unwrap();
        assert!(ws.join(".git").is_dir());
        assert_eq!(
            e.mounts[1],
            Mount {
                source: ws.join(".git"),
                target: "/workspace/.git".into(),
                read_only: true
            }
        );
        assert!(e.notes[0].contains("empty read-only"), "{:?}", e.notes);
    }

    #[test]
    fn hooks_path_and_includes_inside_the_mount_are_read_only_or_refused() {
        if which::which("git").is_err() {
            eprintln!("SKIP: no git");
            return;
        }
        let home = tmp("home4");
        let ws = home.join("repo");
        std::fs::create_dir_all(&ws).unwrap();
        let git = |args: &[&str]| {
            let st = Command::new("git")
                .args(args)
                .current_dir(&ws)
                .output()
                .unwrap();
            assert!(st.status.success(), "{st:?}");
        };
        git(&["init", "-q"]);
        git(&["config", "core.hooksPath", ".githooks"]);
        let err = resolve(&[mount("./:/w:rw", &ws)], "f", &g(), &host(&home)).unwrap_err();
        assert!(
            err.to_string().contains("core.hooksPath `.githooks`"),
            "{err}"
        );
        std::fs::create_dir(ws.join(".githooks")).unwrap();
        git(&["config", "include.path", "../shared.gitconfig"]);
        std::fs::write(ws.join("shared.gitconfig"), "").unwrap();
        let e = resolve(&[mount("./:/w:rw", &ws)], "f", &g(), &host(&home)).unwrap();
        let ro: Vec<_> = e
            .mounts
            .iter()
            .filter(|m| m.read_only)
            .map(|m| m.target.as_str())
            .collect();
        assert_eq!(ro, vec!["/w/.git", "/w/.githooks", "/w/shared.gitconfig"]);
    }

    #[test]
    fn a_git_dir_seen_through_two_mounts_is_covered_at_both() {
        let home = tmp("home6");
        let ws = home.join("ws");
        std::fs::create_dir_all(ws.join("cache/.git")).unwrap();
        std::fs::create_dir_all(ws.join(".git")).unwrap();
        let e = resolve(
            &[
                mount("./:/workspace:rw", &ws),
                mount("./cache:/cache:rw", &ws),
            ],
            "f",
            &g(),
            &host(&home),
        )
        .unwrap();
        let ro: Vec<_> = e
            .mounts
            .iter()
            .filter(|m| m.read_only)
            .map(|m| m.target.as_str())
            .collect();
        assert_eq!(
            ro,
            vec!["/workspace/.git", "/workspace/cache/.git", "/cache/.git"]
        );
    }

    #[test]
    fn read_write_mounts_of_two_owners_are_refused() {
        let home = tmp("home5");
        let (a, b) = (home.join("a"), home.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&b, Some(4242), Some(4242)).unwrap();
            let err = resolve(
                &[mount("./a:/a:rw", &home), mount("./b:/b:rw", &home)],
                "f",
                &g(),
                &host(&home),
            )
            .unwrap_err();
            assert!(err.to_string().contains("4242:4242"), "{err}");
            // Read-only, b's owner does not matter; the agent runs as a's.
            let e = resolve(
                &[mount("./a:/a:rw", &home), mount("./b:/b:ro", &home)],
                "f",
                &g(),
                &host(&home),
            )
            .unwrap();
            assert_eq!(e.user, None, "a is root's: the agent stays root");
            let e = resolve(&[mount("./b:/b:rw", &home)], "f", &g(), &host(&home)).unwrap();
            assert_eq!(e.user, Some((4242, 4242)));
        }
    }

    #[test]
    fn a_root_owned_read_write_mount_is_refused_unless_allowed() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: needs root to own the directory");
            return;
        }
        let home = tmp("home7");
        let ws = home.join("ws");
        std::fs::create_dir_all(&ws).unwrap();
        let err = resolve(
            &[mount("./:/w:rw", &ws)],
            "f",
            &Grants::default(),
            &host(&home),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("belongs to root") && msg.contains("--allow-root-owner"),
            "{msg}"
        );
        // Read-only, root's files are fine.
        assert!(resolve(
            &[mount("./:/w:ro", &ws)],
            "f",
            &Grants::default(),
            &host(&home)
        )
        .is_ok());
        let e = resolve(&[mount("./:/w:rw", &ws)], "f", &g(), &host(&home)).unwrap();
        assert!(
            e.notes.iter().any(|n| n.contains("writes as root")),
            "{:?}",
            e.notes
        );
    }

    #[test]
    fn a_read_write_mount_of_a_git_dir_is_refused() {
        let home = tmp("home8");
        let ws = home.join("ws");
        std::fs::create_dir_all(ws.join(".git/hooks")).unwrap();
        for spec in ["./.git:/g:rw", "./.git/hooks:/h:rw"] {
            let err = resolve(&[mount(spec, &ws)], "f", &g(), &host(&home)).unwrap_err();
            assert!(
                matches!(err, MountError::GitWritable { .. }),
                "{spec}: {err}"
            );
        }
        assert!(resolve(&[mount("./.git:/g:ro", &ws)], "f", &g(), &host(&home)).is_ok());
    }

    #[test]
    fn dot_files_of_a_home_and_directories_holding_sockets_are_refused() {
        let home = tmp("home9");
        let h = host(&home);
        for p in [".colima", ".cargo/bin", ".bashrc", ".local/bin"] {
            assert!(refusal(&home.join(p), &h).is_some(), "{p}");
        }
        assert!(refusal(&home.join("src/app"), &h).is_none());
        let proj = home.join("src/app");
        std::fs::create_dir_all(proj.join("run")).unwrap();
        let _l = std::os::unix::net::UnixListener::bind(proj.join("run/agent.sock")).unwrap();
        let why = refusal(&proj, &h).unwrap();
        assert!(why.contains("agent.sock"), "{why}");
        let tmp_c = std::fs::canonicalize("/tmp").unwrap();
        assert!(refusal(&tmp_c, &h).is_some());
    }

    #[test]
    fn submodules_are_covered_even_when_not_checked_out() {
        if which::which("git").is_err() {
            eprintln!("SKIP: no git");
            return;
        }
        let home = tmp("home10");
        let ws = home.join("repo");
        std::fs::create_dir_all(&ws).unwrap();
        git(&ws, &["init", "-q"]);
        git(&ws, &["commit", "-q", "--allow-empty", "-m", "x"]);
        let head = String::from_utf8(
            Command::new("git")
                .args(["rev-parse", "HEAD"])
                .current_dir(&ws)
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        // A gitlink for an unpopulated submodule `lib`, and one whose work
        // tree has a `.git` file.
        git(
            &ws,
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("160000,{},lib", head.trim()),
            ],
        );
        git(
            &ws,
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("160000,{},vendor/x", head.trim()),
            ],
        );
        std::fs::create_dir_all(ws.join(".git/modules/x")).unwrap();
        std::fs::create_dir_all(ws.join("vendor/x")).unwrap();
        std::fs::write(ws.join("vendor/x/.git"), "gitdir: ../../.git/modules/x\n").unwrap();
        let e = resolve(&[mount("./:/w:rw", &ws)], "f", &g(), &host(&home)).unwrap();
        assert_eq!(
            ro_targets(&e),
            vec!["/w/.git", "/w/lib", "/w/vendor/x/.git"]
        );
        let planted: Vec<_> = e.plant.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(planted, vec![ws.join("lib")]);
        let made = plant(&e.plant).unwrap();
        assert_eq!(made, planted);
        unplant(&made);
        assert!(!ws.join("lib").exists());
    }

    #[test]
    fn a_bare_repository_with_worktrees_is_covered_through_its_gitfiles() {
        if which::which("git").is_err() {
            eprintln!("SKIP: no git");
            return;
        }
        let home = tmp("home11");
        let ws = home.join("proj");
        std::fs::create_dir_all(&ws).unwrap();
        git(&ws, &["init", "-q", "--bare", ".bare"]);
        std::fs::write(ws.join(".git"), "gitdir: ./.bare\n").unwrap();
        git(
            &ws,
            &["worktree", "add", "-q", "--orphan", "-b", "main", "main"],
        );
        let e = resolve(&[mount("./:/w:rw", &ws)], "f", &g(), &host(&home)).unwrap();
        assert_eq!(ro_targets(&e), vec!["/w/.git", "/w/.bare", "/w/main/.git"]);
        // From inside the worktree's own mount, the same.
        let e = resolve(&[mount("./main:/m:rw", &ws)], "f", &g(), &host(&home)).unwrap();
        assert_eq!(ro_targets(&e), vec!["/m/.git"]);
    }

    #[test]
    fn a_repository_cloned_inside_the_project_is_covered_too() {
        if which::which("git").is_err() {
            eprintln!("SKIP: no git");
            return;
        }
        let home = tmp("home12");
        let ws = home.join("proj");
        std::fs::create_dir_all(ws.join("vendor/dep")).unwrap();
        git(&ws, &["init", "-q"]);
        git(&ws.join("vendor/dep"), &["init", "-q"]);
        std::fs::create_dir_all(ws.join("node_modules/pkg/.git")).unwrap();
        let e = resolve(&[mount("./:/w:rw", &ws)], "f", &g(), &host(&home)).unwrap();
        assert_eq!(ro_targets(&e), vec!["/w/.git", "/w/vendor/dep/.git"]);
    }
}
