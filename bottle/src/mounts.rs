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
    #[error("cannot prepare {path}: {source}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    pub fn from_env() -> Self {
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
        let state_root = crate::state::StateDir::for_bottle("x")
            .ok()
            .and_then(|s| s.root().parent().map(Path::to_path_buf));
        HostFacts { homes, state_root }
    }
}

/// Directories under a home whose contents are credentials or configuration
/// the host executes.
const HOME_SECRETS: &[&str] = &[
    ".ssh",
    ".aws",
    ".config",
    ".gnupg",
    ".kube",
    ".docker",
    ".azure",
    ".netrc",
    ".git-credentials",
    ".gitconfig",
    ".password-store",
    ".local/share/keyrings",
    "Library",
];

/// Host paths never mounted silently, each with the reason.
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
    // `p` is refused when it is `danger`, inside it, or contains it.
    let touches = |danger: &Path| {
        let danger = std::fs::canonicalize(danger).unwrap_or_else(|_| danger.to_path_buf());
        canonical.starts_with(&danger) || danger.starts_with(canonical)
    };
    for home in &host.homes {
        let home_c = std::fs::canonicalize(home).unwrap_or_else(|_| home.clone());
        if home_c.starts_with(canonical) {
            return Some(format!(
                "your home directory {} or a directory containing it",
                home.display()
            ));
        }
        for s in HOME_SECRETS {
            if touches(&home.join(s)) {
                return Some(format!("{}, or holds it", home.join(s).display()));
            }
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

fn entry(m: &config::Mount) -> String {
    m.to_string()
}

/// Resolves the configured mounts into what the runtime will bind. Reads the
/// file system and changes nothing: the empty `.git` directories to create
/// are returned in [`Exposure::plant`] (see [`plant`]).
pub fn resolve(
    mounts: &[config::Mount],
    source_file: &str,
    allow: &[PathBuf],
    host: &HostFacts,
) -> Result<Exposure, MountError> {
    let allow: Vec<PathBuf> = allow
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
        out.push(Mount {
            source: canonical,
            target: m.target.clone(),
            read_only: m.read_only,
        });
    }
    let user = owner(&out)?;
    let rw: Vec<Mount> = out.iter().filter(|m| !m.read_only).cloned().collect();
    for m in &rw {
        if m.source.is_dir() {
            protect_git(m, &rw, user, &mut out, &mut planted, &mut notes)?;
        }
    }
    Ok(Exposure {
        mounts: out,
        user: user.filter(|(uid, _)| *uid != 0),
        plant: planted,
        notes,
    })
}

/// Creates the empty `.git` directories of [`Exposure::plant`] (an existing
/// one is left as it is: only an empty directory is ever made).
pub fn plant(dirs: &[(PathBuf, Option<(u32, u32)>)]) -> Result<(), MountError> {
    for (dir, owner) in dirs {
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Something appeared since the plan: only a real, empty
                // directory is what the plan meant to cover.
                let real_empty = std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir())
                    && std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
                if real_empty {
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
    Ok(())
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
            Path::new(&m.target).join(rest).display().to_string()
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

/// Keeps the git dir (and hooks and included config it names inside a
/// read-write mount) of mount `m` read-only for the agent.
fn protect_git(
    m: &Mount,
    rw: &[Mount],
    owner: Option<(u32, u32)>,
    out: &mut Vec<Mount>,
    planted: &mut Vec<(PathBuf, Option<(u32, u32)>)>,
    notes: &mut Vec<String>,
) -> Result<(), MountError> {
    let dot_git = m.source.join(".git");
    if std::fs::symlink_metadata(&dot_git).is_err() {
        // The source is canonical and `.git` does not exist: the path is
        // canonical as it stands.
        notes.push(format!(
            "an empty read-only {} is created so the agent cannot plant a repository your next `git` would run",
            dot_git.display()
        ));
        planted.push((dot_git.clone(), owner));
        cover(out, &dot_git, rw);
        return Ok(());
    }
    let git_c = std::fs::canonicalize(&dot_git).map_err(|source| MountError::Resolve {
        path: dot_git.clone(),
        source,
    })?;
    if !git_c.starts_with(&m.source) {
        return Err(MountError::GitOutside {
            path: dot_git,
            target: git_c,
        });
    }
    cover(out, &git_c, rw);
    let config = git_c.join("config");
    if !git_c.is_dir() || !config.is_file() {
        return Ok(());
    }
    for (what, path) in git_paths(&config, &m.source, &git_c) {
        match std::fs::canonicalize(&path) {
            // Only what the agent could write needs covering; a path that
            // resolves out of every read-write mount is not shown to it.
            Ok(c) => {
                if !c.starts_with(&git_c) {
                    cover(out, &c, rw);
                }
            }
            Err(_) if in_agent(&lexical(&path), rw).is_empty() => {}
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
mod tests {
    use super::*;
    use std::process::Command;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "bottle-mounts-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::canonicalize(d).unwrap()
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
            &[],
            &host(&home),
        )
        .unwrap();
        assert_eq!(e.mounts[0].source, ws.join("real"));
        std::fs::remove_file(ws.join("cache")).unwrap();
        std::os::unix::fs::symlink(home.join(".ssh"), ws.join("cache")).unwrap();
        let err = resolve(
            &[mount("./cache:/cache:ro", &ws)],
            "bottle.toml",
            &[],
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
            &[home.join(".ssh")],
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
        let e = resolve(&[mount("./:/workspace:rw", &ws)], "f", &[], &host(&home)).unwrap();
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
        let err = resolve(&[mount("./:/w:rw", &ws)], "f", &[], &host(&home)).unwrap_err();
        assert!(
            err.to_string().contains("core.hooksPath `.githooks`"),
            "{err}"
        );
        std::fs::create_dir(ws.join(".githooks")).unwrap();
        git(&["config", "include.path", "../shared.gitconfig"]);
        std::fs::write(ws.join("shared.gitconfig"), "").unwrap();
        let e = resolve(&[mount("./:/w:rw", &ws)], "f", &[], &host(&home)).unwrap();
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
            &[],
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
                &[],
                &host(&home),
            )
            .unwrap_err();
            assert!(err.to_string().contains("4242:4242"), "{err}");
            // Read-only, b's owner does not matter; the agent runs as a's.
            let e = resolve(
                &[mount("./a:/a:rw", &home), mount("./b:/b:ro", &home)],
                "f",
                &[],
                &host(&home),
            )
            .unwrap();
            assert_eq!(e.user, None, "a is root's: the agent stays root");
            let e = resolve(&[mount("./b:/b:rw", &home)], "f", &[], &host(&home)).unwrap();
            assert_eq!(e.user, Some((4242, 4242)));
        }
    }
}
