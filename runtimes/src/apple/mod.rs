//! The Apple `container` runtime (macOS 26, Apple silicon), over its CLI 1.0.0.
//!
//! The contract this module codes against is in docs/runtimes.md (appendix);
//! tests run it against a fake `container` (tests/fake-container/) that
//! reproduces that contract. Facts that shape the code:
//! - there is no API: every call is one `container …` process; results are
//!   on stdout, errors are `Error: …` on stderr, usage errors exit 64;
//! - the service must run (`container system start --enable-kernel-install`);
//!   when it does not, commands fail with an `XPC connection error`;
//! - networks exist only on macOS 26 (`network` exits 64 before);
//! - a container names its networks at create, one `--network` flag each;
//!   the FIRST gets the default route, DNS and published ports, so the
//!   sidecar is created with the egress network first;
//! - addresses are assigned at start and cannot be fixed: read them from
//!   `inspect` (`status.networks[].ipv4Address`, a CIDR) after start;
//! - there is no `--filter`: labels are matched client-side;
//! - `network delete` fails while any container references the network, so
//!   containers go first;
//! - on an `--internal` network the host stays reachable at the gateway
//!   (apple/container#1320): the probe reports it as the weakness
//!   `host-reachable-from-internal`;
//! - what the agent broadcasts or multicasts on an `--internal` network
//!   reaches the host's sockets on the vmnet bridge, which holds the gateway
//!   address, and nothing in the CLI closes it: the probe reports the
//!   weakness `broadcast-reaches-host` (inferred);
//! - there is no pids flag (1.0.0 to 1.2.x): [`ContainerSpec::pids_limit`]
//!   is not translated. It is not refused either: each container is its own
//!   VM, so a fork bomb fills only that VM's process table, bounded by its
//!   `--memory`/`--cpus`, and the sidecar is another VM;
//! - before 1.2.0 an image's `ENV` keys with no `=` are filled in from the
//!   environment of the `container` process (apple/container#2027), so a
//!   crafted image could read bottle's environment: `container` is always
//!   run from an empty environment plus [`ENV_KEEP`], and the probe warns
//!   about releases before [`ENV_FIX_VERSION`].

mod json;
mod probe;

use crate::cli_shared::{labels_match, parse_json};
use crate::process::{locate, Output, Tool, Version};
use crate::{
    Arch, BuildSpec, ContainerInfo, ContainerSpec, ContainerState, ExecOutput, ExecSpec,
    NetworkInfo, NetworkKind, NetworkSpec, Probe, Progress, ResourceKind, ResourceRef, Runtime,
    RuntimeError, RuntimeKind,
};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// Environment variable naming the `container` binary (else `container` on PATH).
pub const BIN_ENV: &str = "BOTTLE_CONTAINER_BIN";
/// The first release whose JSON shapes and dual-homing this driver relies on.
pub const MIN_VERSION: Version = Version(1, 0, 0);
/// The one command that starts the service without prompting for a kernel.
pub const START_SERVICE: &str = "container system start --enable-kernel-install";
/// Exit code of a usage error (unknown command or option, bad value).
const EXIT_USAGE: i32 = 64;
/// The first release that no longer copies the caller's environment into
/// an image's unset `ENV` keys (apple/container#2027).
pub const ENV_FIX_VERSION: Version = Version(1, 2, 0);
/// The newest release whose source this driver was checked against; later
/// ones are run, but only the live probe speaks for them.
pub const CHECKED_UP_TO: Version = Version(1, 2, 2);
/// All of bottle's environment that `container` gets: where to find
/// programs and the user's home (the CLI keeps its state under
/// `~/Library/Application Support`), the temp dir, the terminal type for
/// `exec --tty`, and the locale. Nothing else (tokens, keys, proxies)
/// reaches it.
pub const ENV_KEEP: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "TERM", "LANG"];

/// Whether the `container` system service answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceState {
    Running {
        version: String,
    },
    /// `status` is what the service reported (`not running`, `unregistered`)
    /// or the error text when it could not be asked.
    Down {
        status: String,
    },
}

/// A connected Apple `container` CLI whose service is running.
pub struct AppleRuntime {
    tool: Tool,
    version: Version,
    version_line: String,
    service_version: String,
    macos: Option<String>,
}

fn tool_at(bin: PathBuf) -> Tool {
    Tool {
        runtime: RuntimeKind::AppleContainer,
        bin,
        global: vec![],
        env_remove: vec![],
        env_keep: Some(ENV_KEEP),
    }
}

fn unavailable(reason: String, fix: &str) -> RuntimeError {
    RuntimeError::Unavailable {
        runtime: RuntimeKind::AppleContainer,
        reason,
        fix: fix.into(),
    }
}

fn service_down(detail: String) -> RuntimeError {
    unavailable(
        format!("the container system service is not running ({detail})"),
        &format!("`{START_SERVICE}` (it does not restart after a reboot)"),
    )
}

fn capability(capability: &str, detail: String, fix: &str) -> RuntimeError {
    RuntimeError::Capability {
        runtime: RuntimeKind::AppleContainer,
        capability: capability.into(),
        detail,
        fix: fix.into(),
    }
}

/// Does this output say the service is down?
fn is_xpc_error(out: &Output) -> bool {
    out.stderr.contains("XPC connection error")
}

fn is_not_found(out: &Output) -> bool {
    out.stderr.contains("not found") || out.stderr.contains("notFound")
}

/// The macOS product version (`26.0`), or `None` when not on macOS.
fn macos_version() -> Option<String> {
    if !cfg!(target_os = "macos") {
        return None;
    }
    std::process::Command::new("sw_vers")
        .arg("-productVersion")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Label keys the CLI accepts: lowercase `[a-z0-9-]` segments joined by `.`
/// or `/`; values must not contain `=`.
fn check_labels(what: &str, labels: &BTreeMap<String, String>) -> Result<(), RuntimeError> {
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.split(['.', '/']).all(|seg| {
                !seg.is_empty()
                    && seg
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            });
        if !key_ok || v.contains('=') {
            return Err(RuntimeError::Call {
                runtime: RuntimeKind::AppleContainer,
                operation: format!("label {what}"),
                message: format!("label `{k}={v}` is not accepted by `container`: keys are lowercase [a-z0-9-] segments joined by `.` or `/`, values contain no `=`"),
            });
        }
    }
    Ok(())
}

/// `^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$`
fn valid_network_name(name: &str) -> bool {
    let b = name.as_bytes();
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && edge(b[0])
        && edge(b[b.len() - 1])
        && b.iter()
            .all(|&c| edge(c) || c == b'.' || c == b'_' || c == b'-')
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.-]+$`, at most 63 characters (1.2.0 enforces
/// the length in the CLI and the server, apple/container#1956).
fn valid_container_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() >= 2
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

fn state_of(s: &str) -> ContainerState {
    match s {
        "running" => ContainerState::Running,
        "stopped" => ContainerState::Exited,
        "created" => ContainerState::Created,
        _ => ContainerState::Other,
    }
}

impl AppleRuntime {
    /// The `container` binary: `BOTTLE_CONTAINER_BIN`, else `container` on PATH.
    pub fn binary() -> Result<PathBuf, RuntimeError> {
        locate(BIN_ENV, "container").map_err(|where_| {
            unavailable(
                format!("the Apple `container` CLI was not found: {where_}"),
                "install container 1.0.0 from github.com/apple/container/releases (macOS 26, Apple silicon), or choose another runtime",
            )
        })
    }

    /// Asks the service whether it runs (`system status --format json`).
    pub async fn service_status() -> Result<ServiceState, RuntimeError> {
        Self::service_status_at(Self::binary()?).await
    }

    /// [`AppleRuntime::service_status`] of the CLI at `bin`.
    pub async fn service_status_at(bin: PathBuf) -> Result<ServiceState, RuntimeError> {
        service_status_of(&tool_at(bin)).await
    }

    /// Starts the service the way the CLI documents for unattended use:
    /// `container system start --enable-kernel-install`. `bottle up` offers
    /// this when [`AppleRuntime::connect`] reports the service down.
    pub async fn start_service() -> Result<(), RuntimeError> {
        Self::start_service_at(Self::binary()?).await
    }

    /// [`AppleRuntime::start_service`] with the CLI at `bin`.
    pub async fn start_service_at(bin: PathBuf) -> Result<(), RuntimeError> {
        let tool = tool_at(bin);
        tool.run_ok(
            "start the container system service",
            &["system", "start", "--enable-kernel-install"],
        )
        .await
        .map(|_| ())
    }

    /// Finds the CLI and checks, in order: macOS 26 (on macOS), CLI version
    /// 1.0.0 or later, the service running, and the `network` command. Each
    /// failure is an error naming the cause and the fix.
    pub async fn connect() -> Result<Self, RuntimeError> {
        Self::connect_with(Self::binary()?).await
    }

    /// [`AppleRuntime::connect`] to the CLI at `bin`.
    pub async fn connect_with(bin: PathBuf) -> Result<Self, RuntimeError> {
        let tool = tool_at(bin);
        let macos = macos_version();
        if let Some(v) = &macos {
            let major = v.split('.').next().and_then(|m| m.parse::<u32>().ok());
            if major.is_some_and(|m| m < 26) {
                return Err(capability(
                    "container networks",
                    format!("this is macOS {v}; `container network` (private and internal networks) needs macOS 26"),
                    "upgrade to macOS 26, or use --runtime docker or smolvm",
                ));
            }
        }
        let out = tool.run(&["--version"]).await?;
        let version = Version::find_in(&out.stdout)
            .filter(|_| out.ok())
            .ok_or_else(|| {
                unavailable(
                    format!(
                        "`{} --version` did not report a version: {}",
                        tool.bin.display(),
                        out.message()
                    ),
                    "reinstall container 1.0.0 from github.com/apple/container/releases",
                )
            })?;
        let version_line = out.stdout.trim().to_string();
        if version < MIN_VERSION {
            return Err(capability(
                "container 1.0",
                format!("{version_line}: releases before {MIN_VERSION} have other JSON shapes and cannot dual-home a container"),
                "upgrade to container 1.0.0 or later",
            ));
        }
        let service_version = match service_status_of(&tool).await? {
            ServiceState::Running { version } => version,
            ServiceState::Down { status } => return Err(service_down(status)),
        };
        let out = tool.run(&["network", "ls", "--format", "json"]).await?;
        if out.code == EXIT_USAGE {
            return Err(capability(
                "container networks",
                format!(
                    "`container network` is not available ({}): macOS before 26 has no container networks",
                    out.message()
                ),
                "upgrade to macOS 26, or use --runtime docker or smolvm",
            ));
        }
        if is_xpc_error(&out) {
            return Err(service_down(out.message()));
        }
        if !out.ok() {
            return Err(tool.failed("list networks", &out));
        }
        Ok(AppleRuntime {
            tool,
            version,
            version_line,
            service_version,
            macos,
        })
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn binary_path(&self) -> &std::path::Path {
        &self.tool.bin
    }

    /// Runs `args`; the service going away mid-way becomes `Unavailable`.
    async fn run(&self, args: &[String]) -> Result<Output, RuntimeError> {
        let out = self.tool.run(args).await?;
        if !out.ok() && is_xpc_error(&out) {
            return Err(service_down(out.message()));
        }
        Ok(out)
    }

    async fn run_ok(&self, operation: &str, args: &[String]) -> Result<Output, RuntimeError> {
        let out = self.run(args).await?;
        if out.ok() {
            Ok(out)
        } else {
            Err(self.tool.failed(operation, &out))
        }
    }

    async fn network_inspect(&self, name: &str) -> Result<json::Network, RuntimeError> {
        let out = self
            .run_ok(
                &format!("inspect network {name}"),
                &["network".into(), "inspect".into(), name.into()],
            )
            .await?;
        let parsed: Vec<json::Network> = parse(&out.stdout, "network inspect")?;
        parsed
            .into_iter()
            .next()
            .ok_or_else(|| RuntimeError::NotFound {
                what: format!("network {name}"),
            })
    }

    async fn containers(&self) -> Result<Vec<json::Container>, RuntimeError> {
        let out = self
            .run_ok(
                "list containers",
                &[
                    "ls".into(),
                    "--all".into(),
                    "--format".into(),
                    "json".into(),
                ],
            )
            .await?;
        parse(&out.stdout, "ls --format json")
    }

    async fn networks(&self) -> Result<Vec<json::Network>, RuntimeError> {
        let out = self
            .run_ok(
                "list networks",
                &[
                    "network".into(),
                    "ls".into(),
                    "--format".into(),
                    "json".into(),
                ],
            )
            .await?;
        parse(&out.stdout, "network ls --format json")
    }

    /// The argv of `container create` for `spec` (no side effects).
    pub fn create_args(spec: &ContainerSpec) -> Result<Vec<String>, RuntimeError> {
        if let Some(of) = &spec.network_namespace_of {
            return Err(capability(
                "network namespace",
                format!(
                    "{} asks to join the network namespace of {of}: every Apple container is its own VM and cannot share another's",
                    spec.name
                ),
                "attach a fresh container to the same network instead",
            ));
        }
        if spec.host_network {
            return Err(capability(
                "host network",
                format!(
                    "{}: every Apple container is its own VM; there is no host network mode",
                    spec.name
                ),
                "attach the container to a network instead",
            ));
        }
        if let Some(a) = spec.networks.iter().find(|a| a.ipv4.is_some()) {
            return Err(capability(
                "fixed-address",
                format!("{} asks for {} on {}: container 1.0.0 assigns addresses at start and has no flag to fix one", spec.name, a.ipv4.map(|i| i.to_string()).unwrap_or_default(), a.network),
                "leave NetworkAttachment::ipv4 empty and read the address from inspect after start",
            ));
        }
        if !spec.sysctls.is_empty() {
            return Err(capability(
                "sysctl",
                format!(
                    "{} asks for {:?}: container 1.0.0 has no --sysctl flag",
                    spec.name,
                    spec.sysctls.keys().collect::<Vec<_>>()
                ),
                "run the process so it needs no sysctl (e.g. as root with --cap-add NET_BIND_SERVICE for low ports)",
            ));
        }
        check_labels(&spec.name, &spec.labels)?;
        if !valid_container_id(&spec.name) {
            return Err(RuntimeError::Call {
                runtime: RuntimeKind::AppleContainer,
                operation: format!("create container {}", spec.name),
                message: format!(
                    "`{}` is not a container id `container` accepts: 2 to 63 letters, digits, `_`, `.` or `-`, starting with a letter or digit (1.2.0 refuses longer ids); fix: choose a shorter bottle name",
                    spec.name
                ),
            });
        }
        let mut a: Vec<String> = vec!["create".into(), "--name".into(), spec.name.clone()];
        for (k, v) in &spec.labels {
            a.extend(["--label".into(), format!("{k}={v}")]);
        }
        // Order matters: the first network carries the default route.
        for n in &spec.networks {
            a.extend(["--network".into(), n.network.clone()]);
        }
        for d in &spec.dns {
            a.extend(["--dns".into(), d.to_string()]);
        }
        for c in &spec.cap_drop {
            a.extend(["--cap-drop".into(), c.clone()]);
        }
        for c in &spec.cap_add {
            a.extend(["--cap-add".into(), c.clone()]);
        }
        for (k, v) in &spec.env {
            a.extend(["--env".into(), format!("{k}={v}")]);
        }
        for m in &spec.mounts {
            let ro = if m.read_only { ":ro" } else { "" };
            a.extend([
                "--volume".into(),
                format!("{}:{}{ro}", m.source.display(), m.target),
            ]);
        }
        for t in &spec.tmpfs {
            a.extend(["--mount".into(), format!("type=tmpfs,target={t}")]);
        }
        for p in &spec.publish {
            // Always an explicit host address: without one `container`
            // publishes on 0.0.0.0.
            let host = match p.host_ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            a.extend([
                "--publish".into(),
                format!("{host}:{}:{}/tcp", p.host_port, p.container_port),
            ]);
        }
        if spec.read_only_rootfs {
            a.push("--read-only".into());
        }
        if let Some(c) = spec.cpus {
            a.extend(["--cpus".into(), (c.ceil().max(1.0) as u64).to_string()]);
        }
        if let Some(m) = spec.memory_bytes {
            let mib = m.div_ceil(1024 * 1024);
            if mib < 200 {
                return Err(capability(
                    "memory",
                    format!(
                        "{}: {mib} MiB is below the 200 MiB container 1.0.0 accepts",
                        spec.name
                    ),
                    "give the container at least 200 MiB",
                ));
            }
            a.extend(["--memory".into(), format!("{mib}M")]);
        }
        if let Some(u) = &spec.user {
            a.extend(["--user".into(), u.clone()]);
        }
        if let Some(w) = &spec.workdir {
            a.extend(["--workdir".into(), w.clone()]);
        }
        // `--entrypoint` takes one string and drops the image's CMD: the rest
        // of the entrypoint goes before the command.
        let mut rest: Vec<String> = Vec::new();
        if let Some(ep) = &spec.entrypoint {
            if let Some((first, more)) = ep.split_first() {
                a.extend(["--entrypoint".into(), first.clone()]);
                rest.extend(more.iter().cloned());
            }
        }
        rest.extend(spec.command.iter().cloned());
        a.push(spec.image.clone());
        a.extend(rest);
        Ok(a)
    }

    fn exec_args(id: &str, spec: &ExecSpec, attached: bool) -> Vec<String> {
        let mut a: Vec<String> = vec!["exec".into()];
        if attached && spec.stdin {
            a.push("--interactive".into());
        }
        if attached && spec.tty {
            a.push("--tty".into());
        }
        for (k, v) in &spec.env {
            a.extend(["--env".into(), format!("{k}={v}")]);
        }
        if let Some(u) = &spec.user {
            a.extend(["--user".into(), u.clone()]);
        }
        if let Some(w) = &spec.workdir {
            a.extend(["--workdir".into(), w.clone()]);
        }
        a.push(id.into());
        a.extend(spec.cmd.iter().cloned());
        a
    }

    /// Fails with `NotFound` / `not running` the way `container exec` does,
    /// before the command's own exit code is trusted. An empty command is
    /// refused first: 1.1.0 and later fail with `no command specified for
    /// exec`, 1.0.0 with a usage error.
    async fn check_exec_target(&self, id: &str, spec: &ExecSpec) -> Result<(), RuntimeError> {
        if spec.cmd.is_empty() {
            return Err(RuntimeError::Call {
                runtime: RuntimeKind::AppleContainer,
                operation: format!("exec in {id}"),
                message: "no command to run; fix: name the command (e.g. `bash`)".into(),
            });
        }
        let info = self.inspect_container(id).await?;
        if info.state != ContainerState::Running {
            return Err(RuntimeError::Call {
                runtime: RuntimeKind::AppleContainer,
                operation: format!("exec in {id}"),
                message: format!("container {id} is not running"),
            });
        }
        Ok(())
    }
}

async fn service_status_of(tool: &Tool) -> Result<ServiceState, RuntimeError> {
    let out = tool.run(&["system", "status", "--format", "json"]).await?;
    match serde_json::from_str::<json::SystemStatus>(out.stdout.trim()) {
        Ok(s) if out.ok() && s.status == "running" => Ok(ServiceState::Running {
            version: s.api_server_version,
        }),
        Ok(s) if !s.status.is_empty() => Ok(ServiceState::Down { status: s.status }),
        _ => Ok(ServiceState::Down {
            status: out.message(),
        }),
    }
}

fn parse<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, RuntimeError> {
    parse_json(
        RuntimeKind::AppleContainer,
        text,
        what,
        Some("the container 1.0.0 shapes"),
    )
}

/// The host's addresses on a network: its gateway, as `network inspect`
/// reports it (the host answers there, apple/container#1320). The one
/// source of both the probe's `host-unreachable-from-internal` and the check
/// `up` makes before creating anything, so the two never disagree.
fn host_addresses_of(net: &json::Network) -> Vec<IpAddr> {
    net.status
        .ipv4_gateway
        .parse::<Ipv4Addr>()
        .ok()
        .map(IpAddr::V4)
        .into_iter()
        .collect()
}

fn info_of(c: &json::Container) -> ContainerInfo {
    let name =
        c.id.clone()
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| c.configuration.id.clone());
    ContainerInfo {
        id: name.clone(),
        name,
        image: c.configuration.image.reference.clone(),
        state: state_of(&c.status.state),
        // 1.0.0 has no health checks; `bottle` checks readiness by exec.
        health: "none".into(),
        labels: c.configuration.labels.clone(),
        ipv4: c
            .status
            .networks
            .iter()
            .filter_map(|n| Some((n.network.clone(), n.ipv4()?)))
            .collect(),
        // "No exit code is recorded for a detached container anywhere."
        exit_code: None,
        // 1.0.0's inspect names no capabilities, mounts or limits.
        security: None,
    }
}

#[async_trait]
impl Runtime for AppleRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::AppleContainer
    }

    fn assigns_addresses_at_start(&self) -> bool {
        true
    }

    async fn probe(&self, helper_image: Option<&str>) -> Probe {
        probe::run(self, helper_image).await
    }

    /// Always arm64: `container` runs on Apple silicon only and its guests
    /// are arm64 (amd64 needs `--platform linux/amd64 --rosetta`, which
    /// bottle does not use). `system status` names no architecture, and the
    /// host's own may be x86_64 when bottle itself runs under Rosetta.
    async fn architecture(&self) -> Result<Arch, RuntimeError> {
        Ok(Arch::Aarch64)
    }

    /// `image inspect REF` (outside the 1.0.0 reference, which documents no
    /// image listing; a non-zero exit that says "not found" means absent).
    async fn image_exists(&self, image: &str) -> Result<bool, RuntimeError> {
        let out = self
            .run(&["image".into(), "inspect".into(), image.into()])
            .await?;
        if out.ok() {
            Ok(true)
        } else if is_not_found(&out) {
            Ok(false)
        } else {
            Err(self.tool.failed(&format!("inspect image {image}"), &out))
        }
    }

    /// `build -t T -f F --build-arg K=V DIR` from the context written to a
    /// temporary directory. `--label` is not part of 1.0.0's build contract;
    /// labels are passed as `LABEL` build args the Containerfiles may use.
    async fn build_image(
        &self,
        spec: &BuildSpec,
        progress: Progress<'_>,
    ) -> Result<(), RuntimeError> {
        let dir = scratch_dir("build")?;
        let result = async {
            for (path, (data, mode)) in &spec.files {
                let target = dir.path().join(path);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|source| RuntimeError::Io {
                        doing: format!("writing the build context of {}", spec.tag),
                        source,
                    })?;
                }
                std::fs::write(&target, data).map_err(|source| RuntimeError::Io {
                    doing: format!("writing the build context of {}", spec.tag),
                    source,
                })?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let _ =
                        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode));
                }
                #[cfg(not(unix))]
                let _ = mode;
            }
            let cf = spec.files.get(&spec.containerfile).map(|(d, _)| d.len());
            if cf.is_some_and(|len| len >= 16 * 1024) {
                return Err(RuntimeError::Build {
                    image: spec.tag.clone(),
                    message: "container 1.0.0 rejects Containerfiles of 16 KiB or more".into(),
                    log_tail: String::new(),
                });
            }
            let mut args: Vec<String> = vec![
                "build".into(),
                "--tag".into(),
                spec.tag.clone(),
                "--file".into(),
                dir.path().join(&spec.containerfile).display().to_string(),
            ];
            for (k, v) in &spec.build_args {
                args.extend(["--build-arg".into(), format!("{k}={v}")]);
            }
            args.push(dir.path().display().to_string());
            progress(&format!("container build --tag {}", spec.tag));
            let out = self.run(&args).await?;
            for line in out
                .stderr
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                progress(line);
            }
            if !out.ok() {
                return Err(RuntimeError::Build {
                    image: spec.tag.clone(),
                    message: out.message(),
                    log_tail: out
                        .stderr
                        .lines()
                        .rev()
                        .take(20)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n"),
                });
            }
            Ok(())
        }
        .await;
        // The build has read its context: the guard removes it.
        drop(dir);
        result
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<NetworkInfo, RuntimeError> {
        if !valid_network_name(&spec.name) {
            return Err(RuntimeError::Call {
                runtime: RuntimeKind::AppleContainer,
                operation: format!("create network {}", spec.name),
                message: "network names are lowercase letters, digits, `.`, `_` and `-`, at most 63, starting and ending with a letter or digit".into(),
            });
        }
        check_labels(&spec.name, &spec.labels)?;
        let mut args: Vec<String> = vec!["network".into(), "create".into()];
        if spec.kind == NetworkKind::Internal {
            args.push("--internal".into());
        }
        for (k, v) in &spec.labels {
            args.extend(["--label".into(), format!("{k}={v}")]);
        }
        args.push(spec.name.clone());
        self.run_ok(&format!("create network {}", spec.name), &args)
            .await?;
        let net = self.network_inspect(&spec.name).await?;
        Ok(NetworkInfo {
            id: spec.name.clone(),
            name: spec.name.clone(),
            kind: spec.kind,
            subnet: Some(net.status.ipv4_subnet).filter(|s| !s.is_empty()),
            host_interface: None,
        })
    }

    async fn remove_network(&self, id: &str) -> Result<(), RuntimeError> {
        let out = self
            .run(&["network".into(), "delete".into(), id.into()])
            .await?;
        if out.ok() || out.stderr.contains("failed to delete one or more networks") {
            // The second form is what a missing network says.
            return Ok(());
        }
        let mut err = self.tool.failed(&format!("remove network {id}"), &out);
        if let RuntimeError::Call { message, .. } = &mut err {
            if out
                .stderr
                .contains("delete failed for one or more networks")
            {
                message.push_str(
                    "; a container (running or stopped) still references it: remove containers first",
                );
            }
        }
        Err(err)
    }

    /// The host holds the gateway address of every vmnet network, internal
    /// ones included (apple/container#1320): read from `network inspect`
    /// by `host_addresses_of`, as the probe does.
    async fn host_addresses_on(
        &self,
        network: &NetworkInfo,
        _helper_image: &str,
    ) -> Result<Vec<IpAddr>, RuntimeError> {
        let net = self.network_inspect(&network.name).await?;
        Ok(host_addresses_of(&net))
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let args = Self::create_args(spec)?;
        let out = self
            .run_ok(&format!("create container {}", spec.name), &args)
            .await?;
        let id = out.stdout.trim();
        Ok(if id.is_empty() {
            spec.name.clone()
        } else {
            id.to_string()
        })
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.run_ok(
            &format!("start container {id}"),
            &["start".into(), id.into()],
        )
        .await
        .map(|_| ())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let out = self
            .run(&["delete".into(), "--force".into(), id.into()])
            .await?;
        if out.ok() || is_not_found(&out) {
            return Ok(());
        }
        Err(self.tool.failed(&format!("remove container {id}"), &out))
    }

    async fn inspect_container(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let out = self.run(&["inspect".into(), id.into()]).await?;
        if !out.ok() {
            return Err(if is_not_found(&out) {
                RuntimeError::NotFound {
                    what: format!("container {id}"),
                }
            } else {
                self.tool.failed(&format!("inspect container {id}"), &out)
            });
        }
        let list: Vec<json::Container> = parse(&out.stdout, "inspect")?;
        list.first()
            .map(info_of)
            .ok_or_else(|| RuntimeError::NotFound {
                what: format!("container {id}"),
            })
    }

    async fn exec_attached(&self, id: &str, spec: &ExecSpec) -> Result<i64, RuntimeError> {
        self.check_exec_target(id, spec).await?;
        let code = self
            .tool
            .run_attached(&Self::exec_args(id, spec, true))
            .await?;
        Ok(code.into())
    }

    async fn exec_capture(&self, id: &str, spec: &ExecSpec) -> Result<ExecOutput, RuntimeError> {
        self.check_exec_target(id, spec).await?;
        let out = self.run(&Self::exec_args(id, spec, false)).await?;
        Ok(ExecOutput {
            code: out.code.into(),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    async fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: Option<usize>,
        out: &mut (dyn Write + Send),
    ) -> Result<(), RuntimeError> {
        let mut args: Vec<String> = vec!["logs".into()];
        if follow {
            args.push("--follow".into());
        }
        if let Some(n) = tail {
            args.extend(["-n".into(), n.to_string()]);
        }
        args.push(id.into());
        match self
            .tool
            .run_streaming(&format!("read logs of {id}"), &args, out)
            .await
        {
            Err(RuntimeError::Call { message, .. }) if message.contains("not found") => {
                Err(RuntimeError::NotFound {
                    what: format!("container {id}"),
                })
            }
            Err(RuntimeError::Call { message, .. }) if message.contains("XPC connection error") => {
                Err(service_down(message))
            }
            other => other,
        }
    }

    async fn list(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ResourceRef>, RuntimeError> {
        let mut found: Vec<ResourceRef> = self
            .containers()
            .await?
            .iter()
            .filter(|c| labels_match(&c.configuration.labels, labels))
            .map(|c| {
                let info = info_of(c);
                ResourceRef {
                    kind: ResourceKind::Container,
                    id: info.id,
                    name: info.name,
                    labels: info.labels,
                    state: Some(info.state),
                }
            })
            .collect();
        found.extend(
            self.networks()
                .await?
                .iter()
                .filter(|n| labels_match(&n.configuration.labels, labels))
                .map(|n| ResourceRef {
                    kind: ResourceKind::Network,
                    id: n.name().to_string(),
                    name: n.name().to_string(),
                    labels: n.configuration.labels.clone(),
                    state: None,
                }),
        );
        Ok(found)
    }
}

/// A fresh directory in the system temp dir that only this user can enter
/// (created 0700, whatever the umask) under a random name, so no other local
/// user can read a build context or plant files in it. It goes, with what is
/// in it, when the returned guard drops: hold it until the CLI is done.
fn scratch_dir(what: &str) -> Result<tempfile::TempDir, RuntimeError> {
    let prefix = format!("bottle-{what}-");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o700));
    }
    builder.tempdir().map_err(|source| RuntimeError::Io {
        doing: format!(
            "creating a private {what} directory in {}",
            tempfile::env::temp_dir().display()
        ),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_checked_like_1_2() {
        assert!(valid_container_id("bottle-demo-sidecar"));
        assert!(valid_container_id(&"a".repeat(63)));
        assert!(!valid_container_id(&"a".repeat(64)));
        assert!(!valid_container_id("a"));
        assert!(!valid_container_id("-ab"));
        assert!(!valid_container_id("a b"));
        let spec = ContainerSpec {
            name: format!("bottle-{}-sidecar", "x".repeat(50)),
            image: "img".into(),
            ..Default::default()
        };
        let err = AppleRuntime::create_args(&spec).unwrap_err().to_string();
        assert!(err.contains("63") && err.contains("fix:"), "{err}");
    }

    #[test]
    fn network_names() {
        assert!(valid_network_name("bottle-demo-internal"));
        assert!(valid_network_name("a"));
        assert!(!valid_network_name("Bottle"));
        assert!(!valid_network_name("-x"));
        assert!(!valid_network_name("x-"));
        assert!(!valid_network_name(&"a".repeat(64)));
    }

    #[test]
    fn scratch_dirs_are_private_under_unguessable_names() {
        let a = scratch_dir("build").unwrap();
        let b = scratch_dir("build").unwrap();
        assert_ne!(a.path(), b.path());
        assert_eq!(a.path().parent(), Some(tempfile::env::temp_dir().as_path()));
        let name = a.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("bottle-build-"), "{name}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(a.path()).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{mode:o}");
        }
        std::fs::write(a.path().join("Containerfile"), "FROM x\n").unwrap();
        let path = a.path().to_path_buf();
        drop(a);
        assert!(
            !path.exists(),
            "the guard removes the directory and its files"
        );
        assert!(b.path().exists());
    }

    #[test]
    fn labels_are_checked_like_the_cli() {
        let ok = BTreeMap::from([("dev.bottle.name".to_string(), "demo".to_string())]);
        assert!(check_labels("x", &ok).is_ok());
        for (k, v) in [
            ("dev.bottle_name", "x"),
            ("Dev.bottle", "x"),
            ("a..b", "x"),
            ("a", "b=c"),
        ] {
            let bad = BTreeMap::from([(k.to_string(), v.to_string())]);
            assert!(check_labels("x", &bad).is_err(), "{k}={v}");
        }
    }
}
