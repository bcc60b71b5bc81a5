//! The provider images `bottle-agent-claude` and `bottle-agent-codex`: the
//! agent image plus Node.js (Debian's) and a coding agent CLI from npm at a
//! pinned version, run by the non-root user `agent` (uid 1000, home
//! `/home/agent`). Their one Containerfile (`images/agent-provider`, the
//! CLI given as build arguments) is compiled into the binary like the others.
//!
//! The npm registry is never written into bottle: it is the host's own
//! (`npm config get registry`, found on the host's `PATH`) or
//! `BOTTLE_NPM_REGISTRY`, passed as a build argument; with neither, the build
//! is refused with both fixes. The host's npm CA file and a `strict-ssl =
//! false` are passed through only when the host sets them.
//!
//! The image tag is `bottle-agent-<provider>:<version>-<12 hex>`, a digest of
//! the Containerfile, the agent image's name and the version, so a changed
//! Containerfile or version is never shadowed by a stale image. (The agent
//! image is named, not identified by content: a rebuilt `bottle-agent:latest`
//! keeps the provider images built on the old one until they are removed.)
//!
//! smolvm writes images as archives and cannot run the npm install, so
//! [`ensure_provider_image`] refuses it with the ways out.

use crate::host::Host;
use crate::images::{self, ImageError};
use bottle_runtimes::oci::Recipe;
use bottle_runtimes::{BuildSpec, Runtime, RuntimeError, RuntimeKind};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

pub const PROVIDER_CONTAINERFILE: &str = include_str!("../../images/agent-provider/Containerfile");

/// The Claude Code version a provider image gets unless `[agent] version`
/// says otherwise (checked to install and run on Debian bookworm's Node 18).
pub const CLAUDE_CODE_VERSION: &str = "2.1.332";
/// The Codex CLI version a provider image gets by default.
pub const CODEX_VERSION: &str = "0.171.0";

/// The environment variable naming the npm registry, before the host's npm.
pub const NPM_REGISTRY_VAR: &str = "BOTTLE_NPM_REGISTRY";

/// The agent CLIs bottle builds images for (`shell` needs none: it runs in
/// the plain agent image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    Claude,
    Codex,
}

impl Provider {
    pub const ALL: [Provider; 2] = [Provider::Claude, Provider::Codex];

    /// The name in `[agent] provider` and in the image's name.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Claude => "claude",
            Provider::Codex => "codex",
        }
    }

    /// The npm package holding the CLI.
    pub fn package(self) -> &'static str {
        match self {
            Provider::Claude => "@anthropic-ai/claude-code",
            Provider::Codex => "@openai/codex",
        }
    }

    /// The pinned version used when the config names none.
    pub fn default_version(self) -> &'static str {
        match self {
            Provider::Claude => CLAUDE_CODE_VERSION,
            Provider::Codex => CODEX_VERSION,
        }
    }

    /// The command the image puts on `PATH`.
    pub fn command(self) -> &'static str {
        self.name()
    }

    pub fn containerfile(self) -> &'static str {
        match self {
            Provider::Claude | Provider::Codex => PROVIDER_CONTAINERFILE,
        }
    }

    /// The image's repository name and its `dev.bottle.image` label.
    pub fn image_repo(self) -> String {
        format!("bottle-agent-{}", self.name())
    }
}

impl std::str::FromStr for Provider {
    type Err = ProviderImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| ProviderImageError::UnknownProvider(s.into()))
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Failures preparing a provider image.
#[derive(Debug, thiserror::Error)]
pub enum ProviderImageError {
    #[error("`{0}` is not a provider bottle builds an image for (claude, codex)\n  fix: set [agent] provider to claude, codex or shell")]
    UnknownProvider(String),
    #[error("provider version `{0}` is not a version: it must be 1 to 64 of 0-9 A-Z a-z . + -\n  fix: set [agent] version to a published version of the CLI, e.g. {CLAUDE_CODE_VERSION} or {CODEX_VERSION}")]
    BadVersion(String),
    #[error("no npm registry to install the agent CLI from: {NPM_REGISTRY_VAR} is unset and {why}\n  fix: install npm on this machine (bottle uses its `npm config get registry`), or set {NPM_REGISTRY_VAR} to the registry's URL")]
    NoRegistry { why: String },
    #[error("npm registry `{url}` (from {from}) cannot be used: {problem}\n  fix: set {NPM_REGISTRY_VAR} to an http(s) URL without credentials (npm's auth settings are not passed into the build)")]
    BadRegistry {
        url: String,
        from: &'static str,
        problem: &'static str,
    },
    #[error("cannot read the host's npm CA file {}: {source}\n  fix: fix or unset npm's `cafile` (`npm config delete cafile`)", path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {provider} image cannot be built on smolvm: smolvm images are written as archives, and this one needs an npm install run inside it\n  fix: build it with docker or podman (`bottle run` there), or use provider = \"shell\" on smolvm")]
    Smolvm { provider: Provider },
    #[error("{source}\n  hint: the image installs {package}@{version} from {registry}: check that this version is published (`npm view {package}@{version} version`) and that the engine's build containers reach the registry")]
    Build {
        package: &'static str,
        version: String,
        registry: String,
        #[source]
        source: Box<RuntimeError>,
    },
    #[error(transparent)]
    Image(#[from] Box<ImageError>),
    #[error(transparent)]
    Runtime(#[from] Box<RuntimeError>),
}

impl From<ImageError> for ProviderImageError {
    fn from(e: ImageError) -> Self {
        ProviderImageError::Image(Box::new(e))
    }
}

impl From<RuntimeError> for ProviderImageError {
    fn from(e: RuntimeError) -> Self {
        ProviderImageError::Runtime(Box::new(e))
    }
}

/// Checks a CLI version the way the config does (`[0-9A-Za-z.+-]{1,64}`),
/// again here because it becomes a build argument and part of a tag.
pub fn validate_version(v: &str) -> Result<(), ProviderImageError> {
    let ok = (1..=64).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ProviderImageError::BadVersion(v.into()))
    }
}

/// Where the CLI is installed from: the registry and the host's TLS
/// settings for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpmSource {
    pub registry: String,
    /// The host's npm `cafile` contents, when it sets one.
    pub ca: Option<Vec<u8>>,
    /// The host's `strict-ssl = false`, passed on (true is npm's default).
    pub strict_ssl_off: bool,
}

/// npm environment settings of the host, passed to the `npm` bottle runs,
/// so a [`Host`] with fixed variables answers with them.
const NPM_VARS: &[&str] = &[
    "PATH",
    "HOME",
    "npm_config_registry",
    "NPM_CONFIG_REGISTRY",
    "npm_config_cafile",
    "NPM_CONFIG_CAFILE",
    "npm_config_strict_ssl",
    "NPM_CONFIG_STRICT_SSL",
    "npm_config_userconfig",
    "NPM_CONFIG_USERCONFIG",
    "npm_config_globalconfig",
    "NPM_CONFIG_GLOBALCONFIG",
];

/// The host's `npm`, found on the host's `PATH`.
fn host_npm(host: &Host) -> Result<PathBuf, String> {
    which::which_in("npm", host.var("PATH"), "/")
        .map_err(|_| "npm is not on this machine's PATH".to_string())
}

/// `npm config get KEY`, trimmed; `None` for npm's unset (`null`,
/// `undefined`, empty).
fn npm_get(host: &Host, npm: &PathBuf, key: &str) -> Result<Option<String>, String> {
    // The user's own npm, found on the user's PATH, asked only `config get`.
    // It runs in `/`, never in the directory bottle was started from: that
    // may be the workspace, whose `.npmrc` the agent writes (a `cafile` there
    // would copy any host file into the image).
    #[allow(clippy::disallowed_methods)]
    let mut cmd = Command::new(npm);
    cmd.args(["config", "get", key]).current_dir("/");
    for k in NPM_VARS {
        if let Some(v) = host.var(k) {
            cmd.env(k, v);
        }
    }
    let out = cmd
        .output()
        .map_err(|e| format!("{} could not run: {e}", npm.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`npm config get {key}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok((!v.is_empty() && v != "null" && v != "undefined").then_some(v))
}

/// Checks that `url` is an http(s) URL without credentials (a build
/// argument is kept in the image's history).
fn check_registry(url: &str, from: &'static str) -> Result<String, ProviderImageError> {
    let bad = |problem| ProviderImageError::BadRegistry {
        url: url.into(),
        from,
        problem,
    };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| bad("it is not an http:// or https:// URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(bad("it names no host"));
    }
    if authority.contains('@') {
        return Err(bad(
            "it carries credentials, which would stay in the image's build history",
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains whitespace"));
    }
    Ok(url.into())
}

/// The npm registry: `BOTTLE_NPM_REGISTRY`, else the host's
/// `npm config get registry`; checked to be http(s).
pub fn npm_registry(host: &Host) -> Result<String, ProviderImageError> {
    if let Some(url) = host.var(NPM_REGISTRY_VAR).filter(|v| !v.is_empty()) {
        return check_registry(&url, NPM_REGISTRY_VAR);
    }
    let npm = host_npm(host).map_err(|why| ProviderImageError::NoRegistry { why })?;
    match npm_get(host, &npm, "registry") {
        Ok(Some(url)) => check_registry(&url, "npm config get registry"),
        Ok(None) => Err(ProviderImageError::NoRegistry {
            why: "the host's npm has no registry configured".into(),
        }),
        Err(why) => Err(ProviderImageError::NoRegistry { why }),
    }
}

/// The registry ([`npm_registry`]) and the host npm's `cafile` and
/// `strict-ssl`, each only when set (no npm on the host: neither).
pub fn npm_source(host: &Host) -> Result<NpmSource, ProviderImageError> {
    let registry = npm_registry(host)?;
    let mut source = NpmSource {
        registry,
        ca: None,
        strict_ssl_off: false,
    };
    let Ok(npm) = host_npm(host) else {
        return Ok(source);
    };
    if let Ok(Some(path)) = npm_get(host, &npm, "cafile") {
        let path = PathBuf::from(path);
        source.ca = Some(
            std::fs::read(&path).map_err(|source| ProviderImageError::CaFile { path, source })?,
        );
    }
    source.strict_ssl_off =
        matches!(npm_get(host, &npm, "strict-ssl"), Ok(Some(v)) if v == "false");
    Ok(source)
}

/// The provider image's tag: `bottle-agent-<provider>:<version>-<12 hex>`,
/// the hex a digest of the Containerfile, agent image and version. A `+` in
/// the version (semver build metadata) becomes `_`, which tags allow.
pub fn provider_tag(provider: Provider, agent_image: &str, version: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        provider.containerfile(),
        provider.name(),
        agent_image,
        version,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    format!(
        "{}:{}-{}",
        provider.image_repo(),
        version.replace('+', "_"),
        &hex::encode(h.finalize())[..12]
    )
}

/// The build of `provider`'s image at `version` FROM `agent_image`, with
/// the CLI from `npm`.
pub fn provider_build(
    provider: Provider,
    agent_image: &str,
    version: &str,
    npm: &NpmSource,
) -> Result<BuildSpec, ProviderImageError> {
    validate_version(version)?;
    let mut build_args = BTreeMap::from([
        ("AGENT_IMAGE".to_string(), agent_image.to_string()),
        ("NPM_REGISTRY".to_string(), npm.registry.clone()),
        ("VERSION".to_string(), version.to_string()),
        ("PROVIDER".to_string(), provider.name().to_string()),
        ("PACKAGE".to_string(), provider.package().to_string()),
        ("COMMAND".to_string(), provider.command().to_string()),
    ]);
    if npm.strict_ssl_off {
        build_args.insert("NPM_STRICT_SSL".into(), "false".into());
    }
    let labels = BTreeMap::from([
        ("dev.bottle.image".to_string(), format!("agent-{provider}")),
        (
            "dev.bottle.provider.version".to_string(),
            version.to_string(),
        ),
    ]);
    Ok(BuildSpec {
        tag: provider_tag(provider, agent_image, version),
        files: BTreeMap::from([
            (
                "Containerfile".to_string(),
                (provider.containerfile().as_bytes().to_vec(), 0o644),
            ),
            (
                "npm-ca.pem".to_string(),
                (npm.ca.clone().unwrap_or_default(), 0o644),
            ),
        ]),
        containerfile: "Containerfile".into(),
        build_args,
        // Never written as an archive: smolvm is refused before a build.
        recipe: Recipe {
            labels: labels.clone(),
            ..Recipe::default()
        },
        labels,
    })
}

/// Makes sure `provider`'s image at `version` (default: the pinned one)
/// exists on `rt`, FROM `agent_image`: builds the agent image first when it
/// is the default and missing, then the provider image when missing.
/// Progress lines go to `progress`. Returns the provider image's tag.
pub async fn ensure_provider_image(
    rt: &dyn Runtime,
    host: &Host,
    provider: Provider,
    agent_image: &str,
    version: Option<&str>,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<String, ProviderImageError> {
    let version = version.unwrap_or(provider.default_version());
    validate_version(version)?;
    if rt.kind() == RuntimeKind::Smolvm {
        return Err(ProviderImageError::Smolvm { provider });
    }
    let tag = provider_tag(provider, agent_image, version);
    if rt.image_exists(&tag).await? {
        return Ok(tag);
    }
    // Registry problems are reported before anything is built.
    let npm = npm_source(host)?;
    let spec = provider_build(provider, agent_image, version, &npm)?;
    if !rt.image_exists(agent_image).await? {
        if agent_image != images::DEFAULT_AGENT_IMAGE {
            return Err(ImageError::UnknownImage {
                image: agent_image.into(),
            }
            .into());
        }
        let (base, why) = images::base_image(rt, host).await?;
        progress(&format!("building {agent_image} from base {base} ({why})"));
        images::ensure(
            rt,
            &images::agent_build(agent_image, &base),
            &base,
            progress,
        )
        .await?;
    }
    progress(&format!(
        "building {tag}: {}@{version} from {} on {agent_image}",
        provider.package(),
        npm.registry
    ));
    rt.build_image(&spec, progress)
        .await
        .map_err(|source| ProviderImageError::Build {
            package: provider.package(),
            version: version.into(),
            registry: npm.registry.clone(),
            source: Box::new(source),
        })?;
    Ok(tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bottle_runtimes::fake::{Call, FakeRuntime};

    fn host(vars: &[(&str, &str)]) -> (tempfile::TempDir, Host) {
        let dir = tempfile::tempdir().unwrap();
        let h = Host::fixed(
            dir.path().join("state"),
            vec![],
            vars.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        (dir, h)
    }

    /// The host's real `npm`, or a printed skip (CI has npm: it must run).
    fn real_path_with_npm(test: &str) -> Option<String> {
        let path = std::env::var("PATH").unwrap_or_default();
        if which::which_in("npm", Some(&path), "/").is_ok() {
            return Some(path);
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: npm missing under CI"
        );
        eprintln!("SKIP {test}: no npm on PATH");
        None
    }

    #[test]
    fn versions_are_checked_like_the_config_does() {
        for ok in ["2.1.332", "0.171.0", "1.0.0-beta.1+build.7", "latest", "x"] {
            assert!(validate_version(ok).is_ok(), "{ok}");
        }
        let long = "1".repeat(65);
        for bad in ["", "1.0 ", "1;rm -rf /", "$(id)", "../x", "1/2", "ü", &long] {
            let err = validate_version(bad).unwrap_err();
            assert!(
                matches!(&err, ProviderImageError::BadVersion(v) if v == bad),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains("fix: set [agent] version"));
        }
        assert!(validate_version(&"1".repeat(64)).is_ok());
    }

    #[test]
    fn tags_are_deterministic_and_follow_every_input() {
        let t = provider_tag(Provider::Claude, "bottle-agent:latest", "2.1.332");
        assert_eq!(
            t,
            provider_tag(Provider::Claude, "bottle-agent:latest", "2.1.332")
        );
        let (repo, rest) = t.split_once(':').unwrap();
        assert_eq!(repo, "bottle-agent-claude");
        let (v, hex) = rest.rsplit_once('-').unwrap();
        assert_eq!(v, "2.1.332");
        assert_eq!(hex.len(), 12);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        let others = [
            provider_tag(Provider::Codex, "bottle-agent:latest", "2.1.332"),
            provider_tag(Provider::Claude, "my-agent:1", "2.1.332"),
            provider_tag(Provider::Claude, "bottle-agent:latest", "2.1.331"),
            // Field boundaries count: "a" + "b1" is not "ab" + "1".
            provider_tag(Provider::Claude, "bottle-agent:latest2", ".1.332"),
        ];
        for o in &others {
            assert_ne!(&t, o);
            assert_ne!(t.rsplit('-').next(), o.rsplit('-').next(), "{o}");
        }
        // A tag may not hold `+`.
        let plus = provider_tag(Provider::Codex, "a", "1.0.0+b");
        assert!(plus.starts_with("bottle-agent-codex:1.0.0_b-"), "{plus}");
    }

    #[test]
    fn the_registry_override_is_checked() {
        let (_d, h) = host(&[(NPM_REGISTRY_VAR, "https://npm.example.test/sub/")]);
        assert_eq!(npm_registry(&h).unwrap(), "https://npm.example.test/sub/");
        for (url, problem) in [
            ("ftp://npm.example.test/", "not an http:// or https:// URL"),
            ("npm.example.test", "not an http:// or https:// URL"),
            ("https:///x", "names no host"),
            ("https://u:secret@npm.example.test/", "carries credentials"),
            ("https://npm.example.test/ x", "whitespace"),
        ] {
            let (_d, h) = host(&[(NPM_REGISTRY_VAR, url)]);
            let msg = npm_registry(&h).unwrap_err().to_string();
            assert!(msg.contains(problem), "{url}: {msg}");
            assert!(msg.contains(&format!("from {NPM_REGISTRY_VAR}")), "{msg}");
        }
    }

    /// The real npm answers with `npm_config_registry`, which npm honours
    /// over every npmrc; bottle reads it back through the host's variables.
    #[test]
    fn the_registry_is_read_from_the_host_npm() {
        let Some(path) = real_path_with_npm("the_registry_is_read_from_the_host_npm") else {
            return;
        };
        let (_d, h) = host(&[
            ("PATH", &path),
            ("npm_config_registry", "https://npm.example.test/bottle/"),
        ]);
        assert_eq!(
            npm_registry(&h).unwrap(),
            "https://npm.example.test/bottle/"
        );
        // The override wins over npm.
        let (_d, h) = host(&[
            ("PATH", &path),
            ("npm_config_registry", "https://npm.example.test/bottle/"),
            (NPM_REGISTRY_VAR, "http://other.example.test:4873/"),
        ]);
        assert_eq!(npm_registry(&h).unwrap(), "http://other.example.test:4873/");
        // What npm says is checked too.
        let (_d, h) = host(&[("PATH", &path), ("npm_config_registry", "file:///srv/npm")]);
        let msg = npm_registry(&h).unwrap_err().to_string();
        assert!(msg.contains("from npm config get registry"), "{msg}");
    }

    #[test]
    fn the_host_npm_tls_settings_pass_through_only_when_set() {
        let Some(path) = real_path_with_npm("the_host_npm_tls_settings_pass_through") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, b"-----BEGIN CERTIFICATE-----\ntest\n").unwrap();
        // Empty user and global npmrc files: the host's own settings stay out.
        let (user_rc, global_rc) = (dir.path().join("npmrc"), dir.path().join("global-npmrc"));
        std::fs::write(&user_rc, b"").unwrap();
        std::fs::write(&global_rc, b"").unwrap();
        let (user_rc, global_rc) = (
            user_rc.display().to_string(),
            global_rc.display().to_string(),
        );
        let base = [
            ("PATH", path.as_str()),
            ("npm_config_registry", "https://npm.example.test/"),
            ("npm_config_userconfig", user_rc.as_str()),
            ("npm_config_globalconfig", global_rc.as_str()),
        ];
        let (_d, h) = host(&base);
        let plain = npm_source(&h).unwrap();
        assert_eq!(plain.ca, None);
        assert!(!plain.strict_ssl_off);

        let cafile = ca.display().to_string();
        let mut vars = base.to_vec();
        vars.extend([
            ("npm_config_cafile", cafile.as_str()),
            ("npm_config_strict_ssl", "false"),
        ]);
        let (_d, h) = host(&vars);
        let set = npm_source(&h).unwrap();
        assert_eq!(
            set.ca.as_deref(),
            Some(&b"-----BEGIN CERTIFICATE-----\ntest\n"[..])
        );
        assert!(set.strict_ssl_off);
        let spec = provider_build(Provider::Codex, "a:1", "0.171.0", &set).unwrap();
        assert_eq!(spec.files["npm-ca.pem"].0, set.ca.unwrap());
        assert_eq!(spec.build_args["NPM_STRICT_SSL"], "false");

        // A cafile that is not there is an error, not a silent skip.
        vars.push(("npm_config_cafile", "/nonexistent/ca.pem"));
        let (_d, h) = host(&vars);
        let msg = npm_source(&h).unwrap_err().to_string();
        assert!(msg.contains("/nonexistent/ca.pem"), "{msg}");
    }

    #[test]
    fn without_npm_or_override_the_build_is_refused_with_both_fixes() {
        let empty = tempfile::tempdir().unwrap();
        let (_d, h) = host(&[("PATH", &empty.path().display().to_string())]);
        let msg = npm_registry(&h).unwrap_err().to_string();
        assert!(msg.contains("npm is not on this machine's PATH"), "{msg}");
        assert!(msg.contains("install npm"), "{msg}");
        assert!(msg.contains(&format!("set {NPM_REGISTRY_VAR}")), "{msg}");
    }

    #[test]
    fn the_build_carries_registry_version_and_agent_image() {
        let npm = NpmSource {
            registry: "https://npm.example.test/".into(),
            ca: None,
            strict_ssl_off: false,
        };
        for p in Provider::ALL {
            let spec = provider_build(p, "bottle-agent:latest", "1.2.3", &npm).unwrap();
            assert_eq!(spec.tag, provider_tag(p, "bottle-agent:latest", "1.2.3"));
            assert_eq!(
                spec.build_args,
                BTreeMap::from([
                    ("AGENT_IMAGE".into(), "bottle-agent:latest".into()),
                    ("NPM_REGISTRY".into(), "https://npm.example.test/".into()),
                    ("VERSION".into(), "1.2.3".into()),
                    ("PROVIDER".into(), p.name().into()),
                    ("PACKAGE".into(), p.package().into()),
                    ("COMMAND".into(), p.command().into()),
                ])
            );
            assert_eq!(spec.files["npm-ca.pem"].0, b"");
            assert_eq!(spec.labels["dev.bottle.image"], format!("agent-{p}"));
            assert_eq!(spec.labels["dev.bottle.provider.version"], "1.2.3");
            // The Containerfile says the same label and installs the
            // package with the version and registry it is given.
            let file = p.containerfile();
            assert!(file.contains("LABEL dev.bottle.image=\"agent-${PROVIDER}\""));
            assert!(file.contains("\"$PACKAGE@$VERSION\""));
            assert!(file.contains("--registry \"$NPM_REGISTRY\""));
            assert!(file.contains("$COMMAND --version"));
            assert!(file.contains("USER agent"));
            assert!(matches!(
                provider_build(p, "a", "1 2", &npm),
                Err(ProviderImageError::BadVersion(_))
            ));
        }
    }

    #[tokio::test]
    async fn ensure_builds_the_agent_image_first_then_the_provider() {
        let (_d, h) = host(&[(NPM_REGISTRY_VAR, "https://npm.example.test/")]);
        let rt = FakeRuntime::new(RuntimeKind::Docker).with_images(&["bottle-base:bookworm"]);
        let mut lines = Vec::new();
        let tag = ensure_provider_image(
            &rt,
            &h,
            Provider::Claude,
            images::DEFAULT_AGENT_IMAGE,
            None,
            &mut |l: &str| lines.push(l.to_string()),
        )
        .await
        .unwrap();
        assert_eq!(
            tag,
            provider_tag(
                Provider::Claude,
                images::DEFAULT_AGENT_IMAGE,
                CLAUDE_CODE_VERSION
            )
        );
        let builds: Vec<_> = rt
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::BuildImage(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(
            builds,
            [images::DEFAULT_AGENT_IMAGE.to_string(), tag.clone()]
        );
        assert!(
            lines.iter().any(|l| l.contains(&format!("building {tag}"))),
            "{lines:?}"
        );
        // Present now: nothing is built, and npm is not even asked.
        let (_d, no_npm) = host(&[("PATH", "")]);
        let before = rt.calls().len();
        let again = ensure_provider_image(
            &rt,
            &no_npm,
            Provider::Claude,
            images::DEFAULT_AGENT_IMAGE,
            Some(CLAUDE_CODE_VERSION),
            &mut |_: &str| {},
        )
        .await
        .unwrap();
        assert_eq!(again, tag);
        assert!(!rt.calls()[before..]
            .iter()
            .any(|c| matches!(c, Call::BuildImage(_))));
    }

    #[tokio::test]
    async fn ensure_refuses_what_it_cannot_build() {
        let (_d, h) = host(&[(NPM_REGISTRY_VAR, "https://npm.example.test/")]);
        let smol = FakeRuntime::new(RuntimeKind::Smolvm);
        let err = ensure_provider_image(&smol, &h, Provider::Codex, "a", None, &mut |_: &str| {})
            .await
            .unwrap_err();
        assert!(matches!(err, ProviderImageError::Smolvm { .. }), "{err}");
        assert!(err.to_string().contains("provider = \"shell\""));
        assert!(smol.calls().is_empty());
        // A custom agent image that is missing is not guessed at.
        let rt = FakeRuntime::new(RuntimeKind::Docker);
        let err =
            ensure_provider_image(&rt, &h, Provider::Codex, "mine:1", None, &mut |_: &str| {})
                .await
                .unwrap_err();
        assert!(err.to_string().contains("image mine:1 is missing"), "{err}");
        // A bad version is refused before the runtime is asked anything.
        let err = ensure_provider_image(
            &rt,
            &h,
            Provider::Codex,
            "a",
            Some("$(id)"),
            &mut |_: &str| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ProviderImageError::BadVersion(_)));
    }

    /// bottle never carries a registry's host name: only build arguments.
    #[test]
    fn the_containerfiles_name_no_registry() {
        for p in Provider::ALL {
            let f = p.containerfile();
            assert!(!f.contains("://"), "{p}: a URL in the Containerfile");
            assert!(!f.to_lowercase().contains("npmjs"), "{p}");
        }
    }

    #[test]
    fn providers_parse_by_name() {
        assert_eq!("claude".parse::<Provider>().unwrap(), Provider::Claude);
        assert_eq!("codex".parse::<Provider>().unwrap(), Provider::Codex);
        assert!("shell".parse::<Provider>().is_err());
    }
}
