//! The git gate's rules, as data: the remotes a bottle may reach through the
//! sidecar's git gate, where each one lives upstream, which refs the agent
//! may push, and the decision for one ref update ([`GitRemote::check_update`]).
//!
//! Every field checks itself when made, and serde makes it through the same
//! check (`try_from`), so a hand-written `policy.json` cannot hold an `http://`
//! upstream, a URL with a password in it, or a push pattern such as `**`.
//!
//! Ref patterns (`push`, `protected`): a pattern without a `refs/` prefix
//! names a branch (`main` is `refs/heads/main`); one with it names any ref
//! (`refs/tags/v*`). At most one `*`, and only at the very end of the
//! pattern: it matches the rest of the ref name, `/` included, so `agent/*`
//! covers `agent/x` and `agent/x/y`, and `v*` covers `v1.2`. There is no `**`
//! and no `*` in the middle of a pattern, so a pattern means one thing.

use crate::host::{normalize_host, HostError};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a remote name, upstream URL or ref pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitFieldError {
    #[error("remote name `{0}`: 1 to 40 of a-z, 0-9, `-`, `_`, `.`, not starting with `.` or `-` (e.g. `app`)")]
    RemoteName(String),
    #[error("upstream `{0}`: the git gate reaches upstreams over https only; write `https://host/owner/repo.git` (git over ssh has no route out of a bottle)")]
    UpstreamScheme(String),
    #[error("upstream `{0}`: a URL cannot carry a user or token; give the token with `token_from_env` instead")]
    UpstreamUserinfo(String),
    #[error("upstream `{0}`: a URL cannot carry a query (`?`) or fragment (`#`); write the repository's plain https URL")]
    UpstreamQuery(String),
    #[error("upstream `{url}`: {source}")]
    UpstreamHost { url: String, source: HostError },
    #[error("upstream `{0}`: the port is a number from 1 to 65535 (e.g. `https://git.example:8443/a/b.git`)")]
    UpstreamPort(String),
    #[error("upstream `{0}`: the path names a repository (e.g. `/acme/app.git`), in letters, digits and any of -._~%+@/ without `.`/`..` segments")]
    UpstreamPath(String),
    #[error("ref pattern `{0}`: empty; write a branch (`main`), a branch glob (`agent/*`) or a full ref (`refs/tags/v*`)")]
    PatternEmpty(String),
    #[error("ref pattern `{0}`: `*` may appear once, as the last character (e.g. `agent/*`, `refs/tags/v*`); it then matches the rest of the name, `/` included")]
    PatternStar(String),
    #[error("ref pattern `{0}`: not a valid git ref name (no empty or `.`-led segments, `..`, `@{{`, `.lock` ending, whitespace or any of ~^:?[\\)")]
    PatternRef(String),
    #[error("git.remote names `{0}` twice; each remote needs its own name")]
    DuplicateRemote(String),
}

/// The name a remote is served under: `http://<gate>/<name>.git`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RemoteName(String);

impl RemoteName {
    pub fn parse(s: &str) -> Result<Self, GitFieldError> {
        let ok_chars = s.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' || c == '.'
        });
        if s.is_empty() || s.len() > 40 || !ok_chars || s.starts_with(['.', '-']) {
            return Err(GitFieldError::RemoteName(s.to_owned()));
        }
        Ok(RemoteName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An https URL of an upstream repository: no user, password, query or
/// fragment; the host kept normalised (the destination guard compares it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UpstreamUrl {
    host: String,
    port: Option<u16>,
    path: String,
}

impl UpstreamUrl {
    pub fn parse(s: &str) -> Result<Self, GitFieldError> {
        let rest = match s.get(..8) {
            Some(scheme) if scheme.eq_ignore_ascii_case("https://") => &s[8..],
            _ => return Err(GitFieldError::UpstreamScheme(s.to_owned())),
        };
        if rest.contains(['?', '#']) {
            return Err(GitFieldError::UpstreamQuery(s.to_owned()));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(GitFieldError::UpstreamUserinfo(s.to_owned()));
        }
        // `[v6]:port`, `[v6]`, `host:port`, `host`.
        let (host, port) = if authority.starts_with('[') {
            match authority.find(']') {
                Some(end) => {
                    let after = &authority[end + 1..];
                    let port = match after.strip_prefix(':') {
                        Some(p) => Some(p),
                        None if after.is_empty() => None,
                        None => return Err(GitFieldError::UpstreamPort(s.to_owned())),
                    };
                    (&authority[..=end], port)
                }
                None => {
                    return Err(GitFieldError::UpstreamHost {
                        url: s.to_owned(),
                        source: HostError::BadChar {
                            host: authority.into(),
                            ch: '[',
                        },
                    })
                }
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && !p.starts_with('0') => Some(n),
                _ => return Err(GitFieldError::UpstreamPort(s.to_owned())),
            },
        };
        let host = normalize_host(host).map_err(|source| GitFieldError::UpstreamHost {
            url: s.to_owned(),
            source,
        })?;
        // One trailing `/` is dropped (`…/repo.git/` is `…/repo.git`).
        let path = path.strip_suffix('/').unwrap_or(path);
        let path_ok = path.len() > 1
            && path.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || matches!(c, '-' | '.' | '_' | '~' | '%' | '+' | '@' | '/')
            })
            && !path[1..]
                .split('/')
                .any(|seg| seg == "." || seg == ".." || seg.is_empty());
        if !path_ok {
            return Err(GitFieldError::UpstreamPath(s.to_owned()));
        }
        Ok(UpstreamUrl {
            host,
            port,
            path: path.to_owned(),
        })
    }

    /// The normalised host (an IPv6 address without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, 443 unless the URL names one.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(443)
    }

    /// The repository path, starting with `/`, without a trailing `/`.
    pub fn path(&self) -> &str {
        self.path.trim_end_matches('/')
    }

    /// `https://host[:port]/path` + `tail` (e.g. `/info/refs?service=…`).
    pub fn join(&self, tail: &str) -> String {
        format!("{}{}", self.base(), tail)
    }

    fn base(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(p) => format!("https://{host}:{p}{}", self.path()),
            None => format!("https://{host}{}", self.path()),
        }
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base())
    }
}

impl TryFrom<String> for UpstreamUrl {
    type Error = GitFieldError;
    fn try_from(s: String) -> Result<Self, GitFieldError> {
        UpstreamUrl::parse(&s)
    }
}

impl From<UpstreamUrl> for String {
    fn from(u: UpstreamUrl) -> String {
        u.to_string()
    }
}

/// A `push` or `protected` entry; see the module doc for its grammar.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RefPattern {
    /// As written (for messages).
    text: String,
    /// The full ref form, without the trailing `*` when `glob`.
    full: String,
    glob: bool,
}

impl RefPattern {
    pub fn parse(s: &str) -> Result<Self, GitFieldError> {
        if s.is_empty() {
            return Err(GitFieldError::PatternEmpty(s.to_owned()));
        }
        let (body, glob) = match s.strip_suffix('*') {
            Some(b) => (b, true),
            None => (s, false),
        };
        if body.contains('*') {
            return Err(GitFieldError::PatternStar(s.to_owned()));
        }
        let full = if body.starts_with("refs/") {
            body.to_owned()
        } else {
            format!("refs/heads/{body}")
        };
        // Check as a ref name with the glob replaced by one ordinary char,
        // so `agent/*` is checked as `refs/heads/agent/x`.
        let probe = if glob {
            format!("{full}x")
        } else {
            full.clone()
        };
        if !valid_refname(&probe) || full == "refs/" || full == "refs/heads/" && !glob {
            return Err(GitFieldError::PatternRef(s.to_owned()));
        }
        Ok(RefPattern {
            text: s.to_owned(),
            full,
            glob,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Does this pattern cover the full ref name `refname`?
    pub fn matches(&self, refname: &str) -> bool {
        if self.glob {
            refname.len() > self.full.len() && refname.starts_with(&self.full)
        } else {
            refname == self.full
        }
    }
}

impl TryFrom<String> for RefPattern {
    type Error = GitFieldError;
    fn try_from(s: String) -> Result<Self, GitFieldError> {
        RefPattern::parse(&s)
    }
}

impl From<RefPattern> for String {
    fn from(p: RefPattern) -> String {
        p.text
    }
}

impl fmt::Display for RefPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Is `name` a full ref name git itself would accept (the rules of
/// `git check-ref-format`), under `refs/`?
pub fn valid_refname(name: &str) -> bool {
    if !name.starts_with("refs/") || name.ends_with('/') || name.ends_with('.') {
        return false;
    }
    if name.contains("..") || name.contains("@{") || name == "@" {
        return false;
    }
    let bad_char = name.chars().any(|c| {
        c.is_ascii_control() || c == ' ' || c == '\x7f' || "~^:?*[\\".contains(c) || !c.is_ascii()
    });
    if bad_char {
        return false;
    }
    name.split('/')
        .all(|seg| !seg.is_empty() && !seg.starts_with('.') && !seg.ends_with(".lock"))
}

/// What the agent may do with a remote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GitMode {
    /// Clone and fetch only; every push is refused.
    Fetch,
    /// Clone, fetch, and push within `push` and outside `protected`.
    #[default]
    Push,
}

impl GitMode {
    pub fn as_str(self) -> &'static str {
        match self {
            GitMode::Fetch => "fetch",
            GitMode::Push => "push",
        }
    }
}

/// One `[[git.remote]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitRemote {
    pub name: RemoteName,
    pub upstream: UpstreamUrl,
    /// Refs the agent may push to (none: no push is accepted).
    #[serde(default)]
    pub push: Vec<RefPattern>,
    /// Refs never pushed to, even when `push` covers them.
    #[serde(default)]
    pub protected: Vec<RefPattern>,
    #[serde(default)]
    pub mode: GitMode,
    /// Accept non-fast-forward updates (still never deletions).
    #[serde(default)]
    pub allow_force: bool,
    /// When the upstream is unreachable, serve the last mirror (and say so)
    /// instead of failing the fetch.
    #[serde(default)]
    pub stale_ok: bool,
    /// Accept pushed commits that touch CI configuration (see
    /// [`ci_config_path`]). Off: such a push is refused, because the
    /// upstream runs that file with the repository's secrets and its own
    /// token, which can push where `protected` forbids.
    #[serde(default)]
    pub allow_ci_changes: bool,
    /// The `from_env` name of the token in `secrets.json`; none: the
    /// upstream is reached without credentials.
    #[serde(default)]
    pub credential: Option<String>,
}

/// An object id as git prints it (hex).
pub type Oid = String;

/// One ref update of a push, as the sidecar decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    /// The full ref name (`refs/heads/agent/x`).
    pub refname: String,
    /// The value the agent believes the ref has; `None` when creating it.
    pub old: Option<Oid>,
    /// The new value; `None` deletes the ref.
    pub new: Option<Oid>,
    /// `new` descends from the ref's current value (true for a creation).
    pub fast_forward: bool,
}

/// Why one ref update was refused; the text is what the agent sees after
/// `remote: `, naming the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushRefusal {
    #[error("git.remote \"{remote}\" is mode = \"fetch\": push refused")]
    FetchOnly { remote: String },
    #[error("git.remote \"{remote}\": `{refname}` is not a valid ref name")]
    BadRef { remote: String, refname: String },
    #[error("git.remote \"{remote}\": {refname} is protected (protected = \"{pattern}\")")]
    Protected {
        remote: String,
        refname: String,
        pattern: String,
    },
    #[error("git.remote \"{remote}\": {refname} matches no push pattern (push = [{patterns}])")]
    NotPushable {
        remote: String,
        refname: String,
        patterns: String,
    },
    #[error("git.remote \"{remote}\": {refname}: deletion refused (the gate never deletes upstream refs)")]
    Deletion { remote: String, refname: String },
    #[error("git.remote \"{remote}\": {refname}: non-fast-forward refused (allow_force = false)")]
    NonFastForward { remote: String, refname: String },
}

impl GitRemote {
    /// The decision for one ref update: `Ok` when this remote's rules allow
    /// it. Checked in order: mode, ref name, protected, push patterns,
    /// deletion, fast-forward.
    pub fn check_update(&self, u: &RefUpdate) -> Result<(), PushRefusal> {
        self.check_update_with(u, false)
    }

    /// [`GitRemote::check_update`], where `approved` says a human approved
    /// pushing exactly this ref (supervise's `request_git_push`): that lifts
    /// the ref-name rules (`protected`, `push` patterns) and nothing else. A
    /// fetch-only remote, an invalid name, a deletion, a rewrite without
    /// `allow_force` stay refused.
    pub fn check_update_with(&self, u: &RefUpdate, approved: bool) -> Result<(), PushRefusal> {
        let remote = self.name.as_str().to_owned();
        let refname = u.refname.clone();
        if self.mode == GitMode::Fetch {
            return Err(PushRefusal::FetchOnly { remote });
        }
        if !valid_refname(&u.refname) {
            return Err(PushRefusal::BadRef { remote, refname });
        }
        if let Some(p) = self
            .protected
            .iter()
            .find(|p| !approved && p.matches(&u.refname))
        {
            return Err(PushRefusal::Protected {
                remote,
                refname,
                pattern: p.as_str().to_owned(),
            });
        }
        if !approved && !self.push.iter().any(|p| p.matches(&u.refname)) {
            let patterns = self
                .push
                .iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(PushRefusal::NotPushable {
                remote,
                refname,
                patterns,
            });
        }
        if u.new.is_none() {
            return Err(PushRefusal::Deletion { remote, refname });
        }
        // A tag names one commit for good: moving an existing tag, even
        // forward, is a rewrite (plain git refuses it without --force).
        let moves_tag = u.refname.starts_with("refs/tags/") && u.old.is_some();
        if (!u.fast_forward || moves_tag) && !self.allow_force {
            return Err(PushRefusal::NonFastForward { remote, refname });
        }
        Ok(())
    }
}

/// Is `path` (as git prints it, repository-relative) a file a hosted CI
/// runs on push: GitHub Actions workflows and actions, GitLab CI, CircleCI,
/// Jenkins, Buildkite, Azure Pipelines, Bitbucket Pipelines, Travis,
/// Drone, Woodpecker?
pub fn ci_config_path(path: &str) -> bool {
    let p = path.trim_start_matches("./");
    let file = p.rsplit('/').next().unwrap_or(p);
    p.starts_with(".github/workflows/")
        || p.starts_with(".github/actions/")
        || p.starts_with(".circleci/")
        || p.starts_with(".buildkite/")
        || p.starts_with(".woodpecker/")
        || p.starts_with(".gitlab/ci/")
        || matches!(
            p,
            ".gitlab-ci.yml"
                | ".travis.yml"
                | "azure-pipelines.yml"
                | "bitbucket-pipelines.yml"
                | ".drone.yml"
                | ".woodpecker.yml"
        )
        || file == "Jenkinsfile"
        || (p.starts_with(".github/") && (file == "action.yml" || file == "action.yaml"))
}

/// `[git]`: the remotes of the git gate. Remote names are unique.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "GitPolicyWire", into = "GitPolicyWire")]
pub struct GitPolicy {
    pub remotes: Vec<GitRemote>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GitPolicyWire {
    #[serde(default)]
    remotes: Vec<GitRemote>,
}

impl GitPolicy {
    /// Refuses two remotes of one name.
    pub fn new(remotes: Vec<GitRemote>) -> Result<Self, GitFieldError> {
        let mut seen = std::collections::BTreeSet::new();
        for r in &remotes {
            if !seen.insert(r.name.as_str()) {
                return Err(GitFieldError::DuplicateRemote(r.name.as_str().to_owned()));
            }
        }
        Ok(GitPolicy { remotes })
    }

    /// The remote served as `/<name>.git`.
    pub fn remote(&self, name: &str) -> Option<&GitRemote> {
        self.remotes.iter().find(|r| r.name.as_str() == name)
    }
}

impl TryFrom<GitPolicyWire> for GitPolicy {
    type Error = GitFieldError;
    fn try_from(w: GitPolicyWire) -> Result<Self, GitFieldError> {
        GitPolicy::new(w.remotes)
    }
}

impl From<GitPolicy> for GitPolicyWire {
    fn from(p: GitPolicy) -> Self {
        GitPolicyWire { remotes: p.remotes }
    }
}

impl TryFrom<String> for RemoteName {
    type Error = GitFieldError;
    fn try_from(s: String) -> Result<Self, GitFieldError> {
        RemoteName::parse(&s)
    }
}

impl From<RemoteName> for String {
    fn from(n: RemoteName) -> String {
        n.0
    }
}

impl fmt::Display for RemoteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(p: &[&str]) -> Vec<RefPattern> {
        p.iter().map(|s| RefPattern::parse(s).unwrap()).collect()
    }

    fn remote() -> GitRemote {
        GitRemote {
            name: RemoteName::parse("app").unwrap(),
            upstream: UpstreamUrl::parse("https://github.com/acme/app.git").unwrap(),
            push: pats(&["agent/*", "main", "refs/tags/v*"]),
            protected: pats(&["main", "release/*"]),
            mode: GitMode::Push,
            allow_force: false,
            stale_ok: false,
            allow_ci_changes: false,
            credential: Some("GITHUB_TOKEN".into()),
        }
    }

    fn update(refname: &str, new: Option<&str>, ff: bool) -> RefUpdate {
        RefUpdate {
            refname: refname.into(),
            old: Some("a".repeat(40)),
            new: new.map(str::to_owned),
            fast_forward: ff,
        }
    }

    const NEW: Option<&str> = Some("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb");

    #[test]
    fn remote_names() {
        for ok in ["app", "a", "my-app_2.x", &"a".repeat(40)] {
            assert!(RemoteName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".git", "-x", "App", "a/b", "a b", &"a".repeat(41), "é"] {
            assert_eq!(
                RemoteName::parse(bad),
                Err(GitFieldError::RemoteName(bad.into()))
            );
        }
    }

    #[test]
    fn upstream_urls() {
        let u = UpstreamUrl::parse("HTTPS://GitHub.com./acme/app.git").unwrap();
        assert_eq!(u.host(), "github.com");
        assert_eq!(u.port(), 443);
        assert_eq!(u.to_string(), "https://github.com/acme/app.git");
        assert_eq!(
            u.join("/info/refs?service=git-upload-pack"),
            "https://github.com/acme/app.git/info/refs?service=git-upload-pack"
        );
        let p = UpstreamUrl::parse("https://git.internal.example:8443/a/b/").unwrap();
        assert_eq!((p.host(), p.port()), ("git.internal.example", 8443));
        assert_eq!(p.to_string(), "https://git.internal.example:8443/a/b");
        let v6 = UpstreamUrl::parse("https://[::1]:9000/r.git").unwrap();
        assert_eq!((v6.host(), v6.port()), ("::1", 9000));
        assert_eq!(v6.to_string(), "https://[::1]:9000/r.git");

        use GitFieldError as E;
        type Make = fn(String) -> E;
        let cases: [(&str, Make); 10] = [
            ("http://github.com/a.git", E::UpstreamScheme),
            ("ssh://git@github.com/a.git", E::UpstreamScheme),
            ("git@github.com:a/b.git", E::UpstreamScheme),
            (
                "https://x-access-token:t@github.com/a.git",
                E::UpstreamUserinfo,
            ),
            ("https://github.com/a.git?x=1", E::UpstreamQuery),
            ("https://github.com/a.git#f", E::UpstreamQuery),
            ("https://github.com:0/a.git", E::UpstreamPort),
            ("https://github.com:99999/a.git", E::UpstreamPort),
            ("https://github.com", E::UpstreamPath),
            ("https://github.com/a/../b.git", E::UpstreamPath),
        ];
        for (bad, want) in cases {
            assert_eq!(UpstreamUrl::parse(bad), Err(want(bad.into())), "{bad}");
        }
        for bad in ["https://0x7f.1/a.git", "https://a_b.com/a.git"] {
            assert!(
                matches!(UpstreamUrl::parse(bad), Err(E::UpstreamHost { .. })),
                "{bad}"
            );
        }
        assert!(UpstreamUrl::parse("https://github.com/a b.git").is_err());
    }

    #[test]
    fn ref_patterns() {
        let agent = RefPattern::parse("agent/*").unwrap();
        assert!(agent.matches("refs/heads/agent/x"));
        assert!(agent.matches("refs/heads/agent/x/y"));
        assert!(!agent.matches("refs/heads/agent/"));
        assert!(!agent.matches("refs/heads/agentx"));
        assert!(!agent.matches("refs/tags/agent/x"));
        let main = RefPattern::parse("main").unwrap();
        assert!(main.matches("refs/heads/main"));
        assert!(!main.matches("refs/heads/main2"));
        assert!(!main.matches("refs/heads/x/main"));
        let tags = RefPattern::parse("refs/tags/v*").unwrap();
        assert!(tags.matches("refs/tags/v1.2"));
        assert!(!tags.matches("refs/heads/v1"));
        let all = RefPattern::parse("*").unwrap();
        assert!(all.matches("refs/heads/anything/at/all"));
        assert!(!all.matches("refs/tags/v1"));

        for bad in ["**", "agent/**", "a*b", "*/x", "refs/*/x"] {
            assert_eq!(
                RefPattern::parse(bad),
                Err(GitFieldError::PatternStar(bad.into()))
            );
        }
        assert_eq!(
            RefPattern::parse(""),
            Err(GitFieldError::PatternEmpty("".into()))
        );
        for bad in [
            "a..b",
            "a/../b",
            "/main",
            "main/",
            "a//b",
            ".hidden",
            "x.lock",
            "a b",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a[b",
            "a\\b",
            "a@{1}",
            "refs/",
            "refs/heads/",
        ] {
            assert_eq!(
                RefPattern::parse(bad),
                Err(GitFieldError::PatternRef(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn updates_are_decided_by_the_named_rule() {
        let r = remote();
        assert_eq!(
            r.check_update(&update("refs/heads/agent/x", NEW, true)),
            Ok(())
        );
        // An existing tag does not move, even forward (see below).
        assert!(matches!(
            r.check_update(&update("refs/tags/v1", NEW, true)),
            Err(PushRefusal::NonFastForward { .. })
        ));

        let e = r
            .check_update(&update("refs/heads/main", NEW, true))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "git.remote \"app\": refs/heads/main is protected (protected = \"main\")"
        );
        let e = r
            .check_update(&update("refs/heads/release/1", NEW, true))
            .unwrap_err();
        assert!(e.to_string().contains("protected = \"release/*\""), "{e}");

        let e = r
            .check_update(&update("refs/heads/feature", NEW, true))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "git.remote \"app\": refs/heads/feature matches no push pattern (push = [\"agent/*\", \"main\", \"refs/tags/v*\"])"
        );

        let e = r
            .check_update(&update("refs/heads/agent/x", None, true))
            .unwrap_err();
        assert!(
            e.to_string()
                .ends_with("deletion refused (the gate never deletes upstream refs)"),
            "{e}"
        );

        let e = r
            .check_update(&update("refs/heads/agent/x", NEW, false))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "git.remote \"app\": refs/heads/agent/x: non-fast-forward refused (allow_force = false)"
        );
        let forced = GitRemote {
            allow_force: true,
            ..remote()
        };
        assert_eq!(
            forced.check_update(&update("refs/heads/agent/x", NEW, false)),
            Ok(())
        );
        // allow_force never allows a deletion or a protected ref.
        assert!(forced
            .check_update(&update("refs/heads/agent/x", None, true))
            .is_err());
        assert!(forced
            .check_update(&update("refs/heads/main", NEW, false))
            .is_err());

        let fetch = GitRemote {
            mode: GitMode::Fetch,
            ..remote()
        };
        let e = fetch
            .check_update(&update("refs/heads/agent/x", NEW, true))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "git.remote \"app\" is mode = \"fetch\": push refused"
        );

        for bad in [
            "HEAD",
            "refs/heads/agent/../x",
            "refs/heads/agent/x.lock",
            "main",
        ] {
            assert!(
                matches!(
                    r.check_update(&update(bad, NEW, true)),
                    Err(PushRefusal::BadRef { .. })
                ),
                "{bad}"
            );
        }
        // No push patterns: nothing is pushable.
        let none = GitRemote {
            push: vec![],
            ..remote()
        };
        let e = none
            .check_update(&update("refs/heads/agent/x", NEW, true))
            .unwrap_err();
        assert!(e.to_string().contains("push = []"), "{e}");
    }

    /// A human's approval of one ref lifts the ref-name rules only.
    #[test]
    fn an_approval_lifts_only_the_ref_name_rules() {
        let r = remote();
        for refname in [
            "refs/heads/main",
            "refs/heads/release/1",
            "refs/heads/feature",
        ] {
            assert!(r.check_update(&update(refname, NEW, true)).is_err());
            assert_eq!(
                r.check_update_with(&update(refname, NEW, true), true),
                Ok(()),
                "{refname}"
            );
        }
        assert!(matches!(
            r.check_update_with(&update("refs/heads/main", NEW, false), true),
            Err(PushRefusal::NonFastForward { .. })
        ));
        assert!(matches!(
            r.check_update_with(&update("refs/heads/main", None, true), true),
            Err(PushRefusal::Deletion { .. })
        ));
        assert!(matches!(
            r.check_update_with(&update("refs/tags/v1", NEW, true), true),
            Err(PushRefusal::NonFastForward { .. })
        ));
        assert!(matches!(
            r.check_update_with(&update("refs/heads/a..b", NEW, true), true),
            Err(PushRefusal::BadRef { .. })
        ));
        let fetch = GitRemote {
            mode: GitMode::Fetch,
            ..remote()
        };
        assert!(matches!(
            fetch.check_update_with(&update("refs/heads/main", NEW, true), true),
            Err(PushRefusal::FetchOnly { .. })
        ));
    }

    #[test]
    fn serde_runs_the_same_checks() {
        let json = r#"{"remotes":[{"name":"app","upstream":"https://github.com/acme/app.git",
            "push":["agent/*"],"protected":["main"],"credential":"GITHUB_TOKEN"}]}"#;
        let p: GitPolicy = serde_json::from_str(json).unwrap();
        let r = p.remote("app").unwrap();
        assert_eq!(r.mode, GitMode::Push);
        assert!(!r.allow_force && !r.stale_ok);
        let back: GitPolicy = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert_eq!(
            serde_json::to_value(&p).unwrap()["remotes"][0]["mode"],
            serde_json::json!("push")
        );

        for (from, to, says) in [
            ("https://github", "http://github", "https only"),
            (
                "https://github",
                "https://u:p@github",
                "cannot carry a user",
            ),
            ("\"agent/*\"", "\"**\"", "may appear once"),
            ("\"main\"", "\"a..b\"", "not a valid git ref"),
            ("\"name\":\"app\"", "\"name\":\"-app\"", "remote name"),
            ("\"credential\"", "\"token\"", "unknown field"),
        ] {
            let bad = json.replace(from, to);
            assert_ne!(bad, json, "{to}");
            let e = serde_json::from_str::<GitPolicy>(&bad).unwrap_err();
            assert!(e.to_string().contains(says), "{to}: {e}");
        }
        let twice = r#"{"remotes":[{"name":"a","upstream":"https://h.example/a"},
            {"name":"a","upstream":"https://h.example/b"}]}"#;
        let e = serde_json::from_str::<GitPolicy>(twice).unwrap_err();
        assert!(e.to_string().contains("names `a` twice"), "{e}");
    }

    /// Moving an existing tag forward is still a rewrite; creating one is not.
    #[test]
    fn an_existing_tag_never_moves_without_allow_force() {
        let mut r: GitRemote = serde_json::from_value(serde_json::json!({
            "name": "app", "upstream": "https://git.example/a.git", "push": ["refs/tags/v*"]
        }))
        .unwrap();
        let update = |old: Option<&str>| RefUpdate {
            refname: "refs/tags/v1.2.0".into(),
            old: old.map(str::to_string),
            new: Some("b".repeat(40)),
            fast_forward: true,
        };
        assert!(r.check_update(&update(None)).is_ok(), "a new tag");
        let e = r.check_update(&update(Some(&"a".repeat(40)))).unwrap_err();
        assert!(e.to_string().contains("non-fast-forward refused"), "{e}");
        r.allow_force = true;
        assert!(r.check_update(&update(Some(&"a".repeat(40)))).is_ok());
    }

    #[test]
    fn ci_configuration_is_recognised() {
        for p in [
            ".github/workflows/x.yml",
            ".gitlab-ci.yml",
            ".circleci/config.yml",
            "ci/Jenkinsfile",
            ".github/actions/a/action.yml",
            "azure-pipelines.yml",
        ] {
            assert!(ci_config_path(p), "{p}");
        }
        for p in [
            "src/main.rs",
            "docs/github/workflows.md",
            "README.md",
            "gitlab-ci.yml.md",
        ] {
            assert!(!ci_config_path(p), "{p}");
        }
    }
}
