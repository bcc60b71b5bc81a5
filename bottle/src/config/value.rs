//! The value types of `bottle.toml` that carry their own rules: bottle names,
//! the runtime choice, memory sizes, mounts, and the string checks (env names,
//! header names, HTTP methods, path prefixes, git ref patterns, upstream URLs).
//!
//! Each check lives here once. The schema walk in `schema.rs` calls it to
//! report a bad value with its position, and the typed deserialisation calls it
//! again (through `TryFrom`) so a value that skipped the walk still cannot get
//! into a [`Config`](super::Config) unchecked.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Why one value in `bottle.toml` was refused. Each message names the value
/// and says what is allowed, so it can stand after `file:line:col: key: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("`{0}`: a bottle name is 1 to 30 characters of a-z, 0-9 and `-`, starting with a letter or digit (e.g. `my-project`)")]
    Name(String),
    #[error("`{0}`: write a memory size as a whole number with an optional unit k, m, g or t (powers of 1024), e.g. \"4g\" or \"512m\"")]
    MemoryFormat(String),
    #[error("`{0}`: too large for a memory size")]
    MemoryTooLarge(String),
    #[error("`{0}`: at least 64m (67108864 bytes) is needed")]
    MemoryTooSmall(String),
    #[error("`{0}`: a mount is \"HOST:CONTAINER\", \"HOST:CONTAINER:ro\" or \"HOST:CONTAINER:rw\" (e.g. \"./:/workspace:rw\")")]
    MountFormat(String),
    #[error("`{mount}`: the mode is `{mode}`; use `ro` or `rw`")]
    MountMode { mount: String, mode: String },
    #[error("`{0}`: the host path is empty; write `./` for the directory holding bottle.toml")]
    MountEmptyHost(String),
    #[error("`{0}`: `~` is not expanded; write an absolute host path or one relative to the directory holding bottle.toml")]
    MountTilde(String),
    #[error("`{0}`: a container path must be absolute and plain (start with `/`, no `.` or `..` parts), e.g. `/workspace`")]
    ContainerPath(String),
    #[error("`{0}`: an environment variable name is letters, digits and `_`, not starting with a digit (e.g. `EDITOR`)")]
    EnvName(String),
    #[error("`{0}`: bottle sets this variable itself (it routes the agent through the sidecar); remove it")]
    EnvProxy(String),
    #[error("`{0}`: names starting with `BOTTLE_` are reserved for bottle; choose another name")]
    EnvReserved(String),
    #[error("the value contains a NUL character, which an environment variable cannot hold")]
    EnvValueNul,
    /// A method, credential header or path prefix: the policy crate's own
    /// check, so `bottle.toml` and `policy.json` refuse the same things.
    #[error(transparent)]
    Field(#[from] bottle_policy::FieldError),
    /// A remote name, upstream URL or ref pattern: the policy crate's own
    /// check, so `bottle.toml` and `policy.json` refuse the same things.
    #[error(transparent)]
    Git(#[from] bottle_policy::GitFieldError),
    #[error(
        "`{0}`: an image reference cannot be empty or hold whitespace (e.g. `bottle-agent:latest`)"
    )]
    Image(String),
    #[error("the command's first element (the program) cannot be empty")]
    CommandProgram,
    #[error("`{0}`: cpus must be a positive, finite number (e.g. 2 or 0.5)")]
    Cpus(String),
}

// ---------------------------------------------------------------------------
// Bottle names

/// A validated bottle name: `^[a-z0-9][a-z0-9-]{0,29}$`. It names the state
/// directory and labels every resource, so it is kept to characters every
/// runtime accepts in names and labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BottleName(String);

impl BottleName {
    /// Longest name allowed.
    pub const MAX_LEN: usize = 30;

    /// Checks `name` against the name rule.
    pub fn parse(name: &str) -> Result<Self, ValueError> {
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if first_ok && rest_ok && name.len() <= Self::MAX_LEN {
            Ok(BottleName(name.to_owned()))
        } else {
            Err(ValueError::Name(name.to_owned()))
        }
    }

    /// Makes a valid name out of anything (a directory name): lower case,
    /// every other character becomes `-`, leading and trailing `-` trimmed,
    /// at most 30 characters; `bottle` if nothing is left.
    pub fn sanitize(raw: &str) -> Self {
        let mapped: String = raw
            .to_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let trimmed = mapped.trim_matches('-');
        // Only ASCII is left, so byte truncation is character truncation.
        let cut = &trimmed[..trimmed.len().min(Self::MAX_LEN)];
        let cut = cut.trim_end_matches('-');
        if cut.is_empty() {
            BottleName("bottle".into())
        } else {
            BottleName(cut.into())
        }
    }

    /// The name a bottle gets from the directory it lives in.
    pub fn from_dir(dir: &Path) -> Self {
        dir.file_name()
            .map(|n| Self::sanitize(&n.to_string_lossy()))
            .unwrap_or_else(|| BottleName("bottle".into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BottleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for BottleName {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        BottleName::parse(&s)
    }
}

impl From<BottleName> for String {
    fn from(n: BottleName) -> String {
        n.0
    }
}

impl std::str::FromStr for BottleName {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BottleName::parse(s)
    }
}

// ---------------------------------------------------------------------------
// Runtime choice

/// `runtime = "…"`: which runtime runs the bottle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeChoice {
    /// The first runtime whose probe passes: apple-container on macOS 26+,
    /// then docker, then smolvm.
    #[default]
    Auto,
    Docker,
    AppleContainer,
    Smolvm,
}

impl RuntimeChoice {
    /// Every accepted spelling, in the order the docs list them.
    pub const NAMES: [&'static str; 4] = ["auto", "docker", "apple-container", "smolvm"];

    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeChoice::Auto => "auto",
            RuntimeChoice::Docker => "docker",
            RuntimeChoice::AppleContainer => "apple-container",
            RuntimeChoice::Smolvm => "smolvm",
        }
    }

    /// The runtime this choice names, or `None` for `auto`.
    pub fn kind(self) -> Option<bottle_runtimes::RuntimeKind> {
        match self {
            RuntimeChoice::Auto => None,
            RuntimeChoice::Docker => Some(bottle_runtimes::RuntimeKind::Docker),
            RuntimeChoice::AppleContainer => Some(bottle_runtimes::RuntimeKind::AppleContainer),
            RuntimeChoice::Smolvm => Some(bottle_runtimes::RuntimeKind::Smolvm),
        }
    }
}

impl fmt::Display for RuntimeChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RuntimeChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(RuntimeChoice::Auto),
            "docker" => Ok(RuntimeChoice::Docker),
            "apple-container" => Ok(RuntimeChoice::AppleContainer),
            "smolvm" => Ok(RuntimeChoice::Smolvm),
            other => Err(format!(
                "`{other}` is not a runtime; use one of {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

// ---------------------------------------------------------------------------
// Memory

/// A memory limit in bytes, at least [`Memory::MIN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "u64")]
pub struct Memory(u64);

impl Memory {
    /// 64 MiB: below this an agent image does not start reliably.
    pub const MIN: u64 = 64 * 1024 * 1024;

    /// Parses `"4g"`, `"512m"`, `"1024k"`, `"2t"`, a plain number of bytes, or
    /// the same with a trailing `b`/`ib` (`"4gb"`, `"4GiB"`). Units are powers
    /// of 1024 (as `docker --memory` reads them) and case-insensitive.
    pub fn parse(input: &str) -> Result<Self, ValueError> {
        Self::from_bytes_named(parse_size(input)?, input)
    }

    /// A size given as a plain number of bytes.
    pub fn from_bytes(bytes: u64) -> Result<Self, ValueError> {
        Self::from_bytes_named(bytes, &bytes.to_string())
    }

    fn from_bytes_named(bytes: u64, shown: &str) -> Result<Self, ValueError> {
        if bytes < Self::MIN {
            Err(ValueError::MemoryTooSmall(shown.to_owned()))
        } else {
            Ok(Memory(bytes))
        }
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

/// Parses a size: `"4g"`, `"512m"`, `"1024k"`, `"2t"`, a plain number of
/// bytes, or the same with a trailing `b`/`ib` (`"4gb"`, `"4GiB"`). Units
/// are powers of 1024 and case-insensitive.
pub fn parse_size(input: &str) -> Result<u64, ValueError> {
    {
        let bad = || ValueError::MemoryFormat(input.to_owned());
        let digits_end = input
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(input.len());
        let (digits, unit) = input.split_at(digits_end);
        if digits.is_empty() {
            return Err(bad());
        }
        let unit = unit.to_ascii_lowercase();
        let unit = unit
            .strip_suffix("ib")
            .filter(|u| !u.is_empty())
            .or_else(|| unit.strip_suffix('b'))
            .unwrap_or(&unit);
        let shift = match unit {
            "" => 0,
            "k" => 10,
            "m" => 20,
            "g" => 30,
            "t" => 40,
            _ => return Err(bad()),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| ValueError::MemoryTooLarge(input.to_owned()))?;
        n.checked_mul(1u64 << shift)
            .ok_or_else(|| ValueError::MemoryTooLarge(input.to_owned()))
    }
}

impl From<Memory> for u64 {
    fn from(m: Memory) -> u64 {
        m.0
    }
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Memory;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"4g\" or a number of bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Memory, E> {
                Memory::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Memory, E> {
                Memory::from_bytes(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Memory, E> {
                let v = u64::try_from(v)
                    .map_err(|_| E::custom(ValueError::MemoryFormat(v.to_string())))?;
                Memory::from_bytes(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// Mounts

/// One `agent.mounts` entry. After [`parse`](super::parse) the source is an
/// absolute, lexically normalised host path (not canonicalised: it need not
/// exist yet, and symlinks are for the caller to judge).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct Mount {
    /// Host path.
    pub source: PathBuf,
    /// Absolute path inside the agent.
    pub target: String,
    pub read_only: bool,
}

impl Mount {
    /// Parses `HOST:CONTAINER[:ro|:rw]`. The mode defaults to `rw`, as with
    /// `docker run -v`. The host path is kept as written; see
    /// [`Mount::resolve`].
    pub fn parse(spec: &str) -> Result<Self, ValueError> {
        let parts: Vec<&str> = spec.split(':').collect();
        let (host, target, read_only) = match parts.as_slice() {
            [host, target] => (*host, *target, false),
            [host, target, "ro"] => (*host, *target, true),
            [host, target, "rw"] => (*host, *target, false),
            [_, _, mode] => {
                return Err(ValueError::MountMode {
                    mount: spec.to_owned(),
                    mode: (*mode).to_owned(),
                })
            }
            _ => return Err(ValueError::MountFormat(spec.to_owned())),
        };
        if host.is_empty() {
            return Err(ValueError::MountEmptyHost(spec.to_owned()));
        }
        if host == "~" || host.starts_with("~/") {
            return Err(ValueError::MountTilde(spec.to_owned()));
        }
        check_container_path(target)?;
        Ok(Mount {
            source: PathBuf::from(host),
            target: target.to_owned(),
            read_only,
        })
    }

    /// Makes the host path absolute (relative paths are taken from `dir`, the
    /// directory holding bottle.toml) and removes `.` and `..` parts.
    pub fn resolve(&mut self, dir: &Path) {
        let joined = if self.source.is_absolute() {
            self.source.clone()
        } else {
            dir.join(&self.source)
        };
        self.source = normalize_lexically(&joined);
    }
}

impl TryFrom<String> for Mount {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Mount::parse(&s)
    }
}

impl From<Mount> for bottle_runtimes::Mount {
    fn from(m: Mount) -> Self {
        bottle_runtimes::Mount {
            source: m.source,
            target: m.target,
            read_only: m.read_only,
        }
    }
}

impl fmt::Display for Mount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.read_only { "ro" } else { "rw" };
        write!(f, "{}:{}:{mode}", self.source.display(), self.target)
    }
}

/// Removes `.` parts and folds `..` into its parent without touching the
/// file system. `..` above the root stays at the root.
pub(crate) fn normalize_lexically(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(c);
                }
                // `pop` on `/` leaves `/` in place: `/..` is `/`.
                if out.as_os_str().is_empty() && path.is_absolute() {
                    out.push("/");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// An absolute container path without `.`/`..` parts, NUL or newlines.
pub fn check_container_path(path: &str) -> Result<(), ValueError> {
    let plain = path.starts_with('/')
        && !path.contains(['\0', '\n', '\r', ':'])
        && !path.split('/').any(|seg| seg == "." || seg == "..");
    if plain {
        Ok(())
    } else {
        Err(ValueError::ContainerPath(path.to_owned()))
    }
}

// ---------------------------------------------------------------------------
// Agent strings

/// An image reference: not empty, no whitespace or control characters. The
/// runtime judges the rest when it pulls or builds.
pub fn check_image(image: &str) -> Result<(), ValueError> {
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(ValueError::Image(image.to_owned()))
    } else {
        Ok(())
    }
}

/// A valid environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn check_env_name(name: &str) -> Result<(), ValueError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(ValueError::EnvName(name.to_owned()))
    }
}

/// Proxy variables bottle sets in the agent (compared case-insensitively,
/// because clients read both spellings).
pub const RESERVED_ENV: [&str; 4] = ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"];

/// A name the agent's `[agent] env` may set: valid, not a proxy variable, not
/// `BOTTLE_*` (either in any case).
pub fn check_agent_env_name(name: &str) -> Result<(), ValueError> {
    check_env_name(name)?;
    let upper = name.to_ascii_uppercase();
    if RESERVED_ENV.contains(&upper.as_str()) {
        return Err(ValueError::EnvProxy(name.to_owned()));
    }
    if upper.starts_with("BOTTLE_") {
        return Err(ValueError::EnvReserved(name.to_owned()));
    }
    Ok(())
}

/// An environment value: anything but NUL.
pub fn check_env_value(value: &str) -> Result<(), ValueError> {
    if value.contains('\0') {
        Err(ValueError::EnvValueNul)
    } else {
        Ok(())
    }
}

/// `cpus`: positive and finite.
pub fn check_cpus(cpus: f64, shown: &str) -> Result<(), ValueError> {
    if cpus.is_finite() && cpus > 0.0 {
        Ok(())
    } else {
        Err(ValueError::Cpus(shown.to_owned()))
    }
}

// ---------------------------------------------------------------------------
// Egress strings

/// HTTP methods an `[[egress.rule]]` may name (the policy crate's list).
pub const METHODS: [&str; 7] = bottle_policy::RULE_METHODS;

/// An HTTP header name that may carry a credential.
pub fn check_header_name(name: &str) -> Result<(), ValueError> {
    bottle_policy::CredentialHeader::parse(name)?;
    Ok(())
}

/// A path prefix of an `[[egress.rule]]`.
pub fn check_path_prefix(path: &str) -> Result<(), ValueError> {
    bottle_policy::PathPrefix::parse(path)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Git strings

/// A `[[git.remote]]` name (served as `/<name>.git`).
pub fn check_remote_name(name: &str) -> Result<(), ValueError> {
    bottle_policy::RemoteName::parse(name)?;
    Ok(())
}

/// A ref pattern for `push`/`protected`: a branch, a branch glob with one
/// trailing `*`, or a full ref.
pub fn check_ref_pattern(pattern: &str) -> Result<(), ValueError> {
    bottle_policy::RefPattern::parse(pattern)?;
    Ok(())
}

/// An upstream repository URL: `https://host[:port]/path`, no credentials,
/// query or fragment.
pub fn check_upstream(url: &str) -> Result<(), ValueError> {
    bottle_policy::UpstreamUrl::parse(url)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        let gib = 1u64 << 30;
        assert_eq!(Memory::parse("4g").unwrap().bytes(), 4 * gib);
        assert_eq!(Memory::parse("4G").unwrap().bytes(), 4 * gib);
        assert_eq!(Memory::parse("4gb").unwrap().bytes(), 4 * gib);
        assert_eq!(Memory::parse("4GiB").unwrap().bytes(), 4 * gib);
        assert_eq!(Memory::parse("512m").unwrap().bytes(), 512 << 20);
        assert_eq!(Memory::parse("65536k").unwrap().bytes(), 64 << 20);
        assert_eq!(Memory::parse("1t").unwrap().bytes(), 1 << 40);
        assert_eq!(Memory::parse("67108864").unwrap().bytes(), Memory::MIN);
        assert_eq!(Memory::parse("67108864b").unwrap().bytes(), Memory::MIN);
        assert_eq!(Memory::from_bytes(1 << 30).unwrap().bytes(), 1 << 30);
        for bad in ["", "g", "4x", "4 g", "-4g", "1.5g", "4gg", "4ib", " 4g"] {
            assert!(
                matches!(Memory::parse(bad), Err(ValueError::MemoryFormat(_))),
                "{bad:?} should be a format error"
            );
        }
        assert!(matches!(
            Memory::parse("1024k"),
            Err(ValueError::MemoryTooSmall(_))
        ));
        assert!(matches!(
            Memory::parse("63m"),
            Err(ValueError::MemoryTooSmall(_))
        ));
        assert!(matches!(
            Memory::from_bytes(1),
            Err(ValueError::MemoryTooSmall(_))
        ));
        assert!(matches!(
            Memory::parse("99999999999999999999"),
            Err(ValueError::MemoryTooLarge(_))
        ));
        assert!(matches!(
            Memory::parse("99999999t"),
            Err(ValueError::MemoryTooLarge(_))
        ));
    }

    #[test]
    fn names() {
        assert!(BottleName::parse("demo").is_ok());
        assert!(BottleName::parse("0-a").is_ok());
        assert!(BottleName::parse(&"a".repeat(30)).is_ok());
        for bad in ["", "-a", "Demo", "a_b", "a.b", "é", &"a".repeat(31)] {
            assert!(BottleName::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(BottleName::sanitize("My Project").as_str(), "my-project");
        assert_eq!(BottleName::sanitize("--x__y--").as_str(), "x--y");
        assert_eq!(BottleName::sanitize("___").as_str(), "bottle");
        assert_eq!(BottleName::sanitize("").as_str(), "bottle");
        assert_eq!(BottleName::sanitize("Ünïcode").as_str(), "n-code");
        let long = BottleName::sanitize(&format!("{}-{}", "a".repeat(29), "b".repeat(10)));
        assert_eq!(long.as_str(), "a".repeat(29));
        assert_eq!(BottleName::from_dir(Path::new("/")).as_str(), "bottle");
        assert_eq!(
            BottleName::from_dir(Path::new("/src/Web.App")).as_str(),
            "web-app"
        );
    }

    #[test]
    fn mounts() {
        let m = Mount::parse("./:/workspace:rw").unwrap();
        assert_eq!(
            (m.source.as_path(), m.target.as_str(), m.read_only),
            (Path::new("./"), "/workspace", false)
        );
        assert!(Mount::parse("/data:/data:ro").unwrap().read_only);
        assert!(!Mount::parse("/data:/data").unwrap().read_only);
        assert!(matches!(
            Mount::parse("/a"),
            Err(ValueError::MountFormat(_))
        ));
        assert!(matches!(
            Mount::parse("/a:/b:rw:x"),
            Err(ValueError::MountFormat(_))
        ));
        assert!(matches!(
            Mount::parse("/a:/b:z"),
            Err(ValueError::MountMode { .. })
        ));
        assert!(matches!(
            Mount::parse(":/b"),
            Err(ValueError::MountEmptyHost(_))
        ));
        assert!(matches!(
            Mount::parse("~/x:/b"),
            Err(ValueError::MountTilde(_))
        ));
        assert!(matches!(
            Mount::parse("/a:b"),
            Err(ValueError::ContainerPath(_))
        ));
        assert!(matches!(
            Mount::parse("/a:/b/../etc"),
            Err(ValueError::ContainerPath(_))
        ));
    }

    #[test]
    fn lexical_normalisation() {
        let n = |p: &str| normalize_lexically(Path::new(p));
        assert_eq!(n("/proj/./"), PathBuf::from("/proj"));
        assert_eq!(n("/proj/../data/./x"), PathBuf::from("/data/x"));
        assert_eq!(n("/../.."), PathBuf::from("/"));
        assert_eq!(n("/proj/a/.."), PathBuf::from("/proj"));
    }

    #[test]
    fn env_names() {
        assert!(check_agent_env_name("EDITOR").is_ok());
        assert!(check_agent_env_name("_x1").is_ok());
        for bad in ["", "1A", "A-B", "A B"] {
            assert!(
                matches!(check_agent_env_name(bad), Err(ValueError::EnvName(_))),
                "{bad:?}"
            );
        }
        for proxy in [
            "HTTP_PROXY",
            "http_proxy",
            "Https_Proxy",
            "no_proxy",
            "ALL_PROXY",
        ] {
            assert!(
                matches!(check_agent_env_name(proxy), Err(ValueError::EnvProxy(_))),
                "{proxy}"
            );
        }
        for own in ["BOTTLE_NAME", "bottle_x", "BOTTLE_"] {
            assert!(
                matches!(check_agent_env_name(own), Err(ValueError::EnvReserved(_))),
                "{own}"
            );
        }
        assert!(check_agent_env_name("BOTTLES").is_ok());
    }

    #[test]
    fn headers_paths_refs_urls() {
        assert!(check_header_name("x-api-key").is_ok());
        assert!(check_header_name("Authorization").is_ok());
        assert!(matches!(
            check_header_name("x api"),
            Err(ValueError::Field(bottle_policy::FieldError::HeaderName(_)))
        ));
        assert!(matches!(
            check_header_name(""),
            Err(ValueError::Field(bottle_policy::FieldError::HeaderName(_)))
        ));
        assert!(matches!(
            check_header_name("Host"),
            Err(ValueError::Field(
                bottle_policy::FieldError::HeaderReserved(_)
            ))
        ));
        assert!(matches!(
            check_header_name("Proxy-Authorization"),
            Err(ValueError::Field(
                bottle_policy::FieldError::HeaderReserved(_)
            ))
        ));

        assert!(check_path_prefix("/repos/acme/").is_ok());
        assert!(matches!(
            check_path_prefix("repos"),
            Err(ValueError::Field(bottle_policy::FieldError::PathStart(_)))
        ));
        assert!(matches!(
            check_path_prefix("/a/../b"),
            Err(ValueError::Field(bottle_policy::FieldError::PathChars(_)))
        ));
        assert!(matches!(
            check_path_prefix("/a?b"),
            Err(ValueError::Field(bottle_policy::FieldError::PathChars(_)))
        ));

        for ok in [
            "main",
            "agent/*",
            "release/*",
            "refs/heads/x",
            "feature/a-b_c",
        ] {
            assert!(check_ref_pattern(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a b", "a..b", "/a", "a/", "a.lock", "a//b", "a~1", "a:b", ".hidden", "a@{1}",
        ] {
            assert!(check_ref_pattern(bad).is_err(), "{bad:?}");
        }

        assert!(check_remote_name("app").is_ok());
        assert!(check_remote_name("my.repo_1-x").is_ok());
        for bad in ["", "-a", "a/b", ".a", &"a".repeat(65)] {
            assert!(check_remote_name(bad).is_err(), "{bad:?}");
        }

        assert!(check_upstream("https://github.com/acme/app.git").is_ok());
        assert!(check_upstream("https://git.example.com:8443/x").is_ok());
        for (bad, says) in [
            ("http://github.com/a", "over https only"),
            ("git@github.com:a/b.git", "ssh has no route"),
            ("https://tok@github.com/a", "cannot carry a user or token"),
            ("https://github.com", "the path names a repository"),
            ("https://github.com/", "the path names a repository"),
            ("https://github.com/a?b", "query"),
            ("https://gith_ub.com/a", "gith_ub.com"),
            ("https://github.com:0/a", "port"),
        ] {
            let e = check_upstream(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
