//! The smolvm runtime (libkrun microVMs), over the smolvm CLI.
//!
//! The contract is in docs/runtimes.md (appendix); the tests run this driver against the
//! real CLI from PyPI `smolmachines==1.32.2` (scripts/setup-smolvm.sh). How a
//! bottle maps onto smolvm (docs/design.md §1.1):
//! - there is no network object: the bottle's internal network is a named
//!   `--network` fabric (>= 1.8.3) that exists while a machine names it.
//!   [`Runtime::create_network`] creates nothing: an internal network's id is
//!   the fabric name, the egress network's id is [`EGRESS_ID`], which means
//!   "this machine has its own outbound network" (`--net`);
//! - the sidecar joins the fabric and has its own egress;
//! - the agent joins the fabric only; its egress allow-list is reduced to the
//!   sidecar (`--allow-cidr <sidecar>/32`, taken from the spec's DNS server)
//!   and its resolver pinned to it (`--dns`). An agent spec without a DNS
//!   server is refused: `--network` alone would give it open egress;
//! - a machine's fabric is recorded in the label `dev.bottle.fabric`, since
//!   `ls --json` says only `network: true`;
//! - the role's Smolfile (smolfiles/) is applied with `-s`;
//! - fabric addresses (100.96.N.2) are leased at start and appear in no JSON:
//!   they are read from inside the running machine;
//! - a machine whose start fails is deleted at once, so a failed boot leaves
//!   nothing behind (on nested/PVM KVM hosts every boot fails);
//! - container-level hardening (capabilities, no-new-privileges, read-only
//!   root) has no machine equivalent: the VM boundary and the host-side
//!   allow-list stand in for it (docs/runtimes.md);
//! - there is no pids option (CLI or Smolfile): [`ContainerSpec::pids_limit`]
//!   is not translated, and not refused: a machine is its own kernel, so a
//!   fork bomb fills only its process table, bounded by `--mem`/`--cpus`,
//!   and the sidecar is another machine;
//! - the fabric is a virtio-net segment between VMs and the host's relay:
//!   whether the agent's broadcast reaches a host socket is not measurable
//!   without a boot, so the probe infers the weakness `broadcast-reaches-host`.

mod probe;

use crate::cli_shared::{labels_match, parse_json};
use crate::process::{locate, Output, Tool, Version};
use crate::{
    BuildSpec, ContainerInfo, ContainerSpec, ContainerState, ExecOutput, ExecSpec, NetworkInfo,
    NetworkKind, NetworkSpec, Probe, Progress, ResourceKind, ResourceRef, Role, Runtime,
    RuntimeError, RuntimeKind,
};
use async_trait::async_trait;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// Environment variable naming the smolvm binary (else `smolvm` on PATH).
pub const BIN_ENV: &str = "BOTTLE_SMOLVM_BIN";
/// Environment variable naming a state dir passed as `--state-dir` to every call.
pub const STATE_DIR_ENV: &str = "BOTTLE_SMOLVM_STATE_DIR";
/// Environment variable naming the image store (the archives bottle writes).
pub const IMAGE_DIR_ENV: &str = "BOTTLE_SMOLVM_IMAGE_DIR";
/// Machines are named with `--name` from this release on (a positional before).
pub const NAME_FLAG_SINCE: Version = Version(1, 1, 0);
/// The `--network` fabric exists from this release on; bottle needs it.
pub const FABRIC_SINCE: Version = Version(1, 8, 3);
/// Host loopback blocked by default, `allowed_cidrs` in JSON, `--error-format`.
pub const LOOPBACK_BLOCKED_SINCE: Version = Version(1, 32, 0);
/// Id of the pseudo-network "own outbound network" (`--net`).
pub const EGRESS_ID: &str = "@egress";
/// Label recording the fabric a machine joined.
pub const LABEL_FABRIC: &str = "dev.bottle.fabric";
/// The Smolfiles of smolfiles/, compiled in.
pub const AGENT_SMOLFILE: &str = include_str!("../../../smolfiles/agent.smolfile");
pub const SIDECAR_SMOLFILE: &str = include_str!("../../../smolfiles/sidecar.smolfile");

/// One machine as `machine ls --json` / `machine status --json` show it
/// (`ports` and `mounts` are counts, not lists).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
pub struct Machine {
    pub name: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub network: bool,
    #[serde(default)]
    pub allowed_cidrs: Option<Vec<String>>,
    #[serde(default)]
    pub dns: Option<String>,
    #[serde(default)]
    pub ports: u32,
    #[serde(default)]
    pub mounts: u32,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
}

/// Where the CLI is and which state dir it uses.
#[derive(Debug, Clone)]
pub struct SmolvmConfig {
    pub bin: PathBuf,
    pub state_dir: Option<PathBuf>,
    /// Where image archives live, one `<reference>.tar` per image
    /// ([`store_path`]); bottle writes its own images here.
    pub image_dir: PathBuf,
}

/// The default image store: `<state dir>/bottle-images` when a state dir is
/// set, else `<data dir>/bottle/smolvm-images`
/// (`~/.local/share/bottle/smolvm-images` on Linux).
pub fn default_image_dir(state_dir: Option<&Path>) -> PathBuf {
    match state_dir {
        Some(s) => s.join("bottle-images"),
        None => dirs::data_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("bottle")
            .join("smolvm-images"),
    }
}

/// The archive of image `reference` in the store `dir`: the reference with
/// every byte outside `a-z 0-9 . _ -` percent-encoded, plus `.tar`
/// (`bottle-agent:latest` → `bottle-agent%3Alatest.tar`).
pub fn store_path(dir: &Path, reference: &str) -> PathBuf {
    let mut name = String::new();
    for b in reference.bytes() {
        if b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b) {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    dir.join(format!("{name}.tar"))
}

/// Is `image` a path on this machine rather than a reference?
fn is_local_path(image: &str) -> bool {
    image.starts_with('/')
        || image.starts_with("./")
        || image.starts_with("../")
        || image.ends_with(".tar")
        || image.ends_with(".tar.gz")
        || image.ends_with(".tgz")
}

impl SmolvmConfig {
    /// `BOTTLE_SMOLVM_BIN` (else `smolvm` on PATH) and `BOTTLE_SMOLVM_STATE_DIR`.
    pub fn from_env() -> Result<Self, RuntimeError> {
        let bin = locate(BIN_ENV, "smolvm").map_err(|where_| RuntimeError::Unavailable {
            runtime: RuntimeKind::Smolvm,
            reason: format!("the smolvm CLI was not found: {where_}"),
            fix: "run scripts/setup-smolvm.sh (installs smolmachines==1.32.2 from PyPI) and put the `smolvm` it prints on PATH, or set BOTTLE_SMOLVM_BIN".into(),
        })?;
        let state_dir = std::env::var_os(STATE_DIR_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let image_dir = std::env::var_os(IMAGE_DIR_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| default_image_dir(state_dir.as_deref()));
        Ok(SmolvmConfig {
            bin,
            state_dir,
            image_dir,
        })
    }
}

/// A smolvm CLI of a version bottle can drive (>= 1.8.3).
pub struct SmolvmRuntime {
    tool: Tool,
    version: Version,
    image_dir: PathBuf,
}

fn capability(capability: &str, detail: String, fix: &str) -> RuntimeError {
    RuntimeError::Capability {
        runtime: RuntimeKind::Smolvm,
        capability: capability.into(),
        detail,
        fix: fix.into(),
    }
}

/// Does this failure say the machine does not exist? (`vm not found: X`,
/// `machine 'X' not found`, or the JSON code `NOT_FOUND`.)
fn is_not_found(out: &Output) -> bool {
    out.stderr.contains("not found") || out.stderr.contains("NOT_FOUND")
}

/// The arguments that name machine `name` for `version`.
pub fn name_args(version: Version, name: &str) -> Vec<String> {
    if version >= NAME_FLAG_SINCE {
        vec!["--name".into(), name.into()]
    } else {
        vec![name.into()]
    }
}

/// Refuses versions without the fabric, naming the fix.
pub fn check_version(version: Version) -> Result<(), RuntimeError> {
    if version < FABRIC_SINCE {
        return Err(capability(
            "network fabric",
            format!("smolvm {version} has no `--network` (the private inter-VM network a bottle's agent and sidecar share arrived in {FABRIC_SINCE})"),
            "upgrade smolvm: scripts/setup-smolvm.sh installs smolmachines==1.32.2",
        ));
    }
    Ok(())
}

fn state_of(s: &str) -> ContainerState {
    match s {
        "created" => ContainerState::Created,
        "running" => ContainerState::Running,
        "stopped" | "failed" => ContainerState::Exited,
        _ => ContainerState::Other,
    }
}

/// A shell-quoted word for `--init` (which runs its argument with `sh -c`).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The first fabric address (100.96.N.2 with N > 0 or the link address) in
/// the output of `hostname -I` / `ip -4 -o addr`.
pub fn fabric_address(text: &str) -> Option<Ipv4Addr> {
    text.split(|c: char| c.is_whitespace())
        .filter_map(|w| w.split('/').next()?.parse::<Ipv4Addr>().ok())
        .find(|ip| {
            let o = ip.octets();
            o[0] == 100 && o[1] == 96 && o[3] != 1
        })
}

/// A hint for a failed `machine start`, from smolvm's own words.
fn boot_hint(message: &str) -> &'static str {
    // Most specific first: the library and /dev/kvm failures also say the
    // boot process exited before the agent was ready.
    if message.contains("libkrun/libkrunfw not found") {
        "smolvm could not load libkrun: as root it drops the VMM to an unprivileged user, which cannot read libraries under /root; install smolvm where every user can read it (BOTTLE_SMOLVM_VENV=/opt/bottle/smolvm-venv scripts/setup-smolvm.sh) or, accepting a root VMM, set SMOLVM_VM_UID_DROP=off"
    } else if message.contains("KvmOpen") {
        "the VMM cannot open /dev/kvm: as root smolvm drops it to an unprivileged user; give that user access to /dev/kvm (the kvm group) or, accepting a root VMM, set SMOLVM_VM_UID_DROP=off"
    } else if message.contains("no boot progress")
        || message.contains("did not become ready")
        || message.contains("before the agent was ready")
    {
        "the guest did not boot: this host's KVM cannot run smolvm guests (nested or PVM KVM cannot boot the guest kernel); use a machine with direct KVM or macOS Hypervisor.framework"
    } else if message.contains("/dev/kvm") || message.contains("Hypervisor") {
        "no usable hypervisor: smolvm needs /dev/kvm (Linux) or Hypervisor.framework (macOS)"
    } else {
        "see smolvm's message above"
    }
}

impl SmolvmRuntime {
    /// [`SmolvmRuntime::connect_with`] the configuration from the environment.
    pub async fn connect() -> Result<Self, RuntimeError> {
        Self::connect_with(SmolvmConfig::from_env()?).await
    }

    /// Reads `smolvm --version` and refuses versions without the fabric.
    pub async fn connect_with(config: SmolvmConfig) -> Result<Self, RuntimeError> {
        let mut tool = Tool {
            runtime: RuntimeKind::Smolvm,
            bin: config.bin,
            global: vec![],
            // Would name a machine behind bottle's back when `--name` is absent.
            env_remove: vec!["SMOLVM_MACHINE_NAME"],
            env_keep: None,
        };
        let out = tool.run(&["--version"]).await?;
        let version = Version::find_in(&out.stdout)
            .filter(|_| out.ok())
            .ok_or_else(|| RuntimeError::Unavailable {
                runtime: RuntimeKind::Smolvm,
                reason: format!(
                    "`{} --version` did not print `smolvm X.Y.Z`: {}",
                    tool.bin.display(),
                    out.message()
                ),
                fix: "reinstall with scripts/setup-smolvm.sh".into(),
            })?;
        check_version(version)?;
        if let Some(dir) = config.state_dir {
            tool.global = vec!["--state-dir".into(), dir.display().to_string()];
        }
        Ok(SmolvmRuntime {
            tool,
            version,
            image_dir: config.image_dir,
        })
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn binary_path(&self) -> &Path {
        &self.tool.bin
    }

    /// The image store ([`SmolvmConfig::image_dir`]).
    pub fn image_dir(&self) -> &Path {
        &self.image_dir
    }

    /// What `--image` gets for `image`: the store's archive when it holds
    /// one, else `image` as given (a path, or a reference smolvm pulls).
    pub fn image_source(&self, image: &str) -> String {
        let stored = store_path(&self.image_dir, image);
        if !is_local_path(image) && stored.is_file() {
            stored.display().to_string()
        } else {
            image.to_string()
        }
    }

    /// The base an archive is written on: a local path as it is, else the
    /// store's archive of that reference, else nothing bottle can read.
    fn base_of(&self, base: &str) -> Result<crate::oci::Base, RuntimeError> {
        let path = if is_local_path(base) || Path::new(base).is_absolute() {
            PathBuf::from(base)
        } else {
            store_path(&self.image_dir, base)
        };
        if !path.exists() {
            return Err(capability(
                "image base",
                format!(
                    "smolvm cannot build images, so bottle writes them as archives on a base it can read; base `{base}` is neither a local rootfs/archive nor in the image store ({} is missing)",
                    path.display()
                ),
                "run scripts/setup-smolvm.sh (it makes the Debian base with debootstrap and puts it in the store), or set BOTTLE_BASE_IMAGE to a rootfs directory, an uncompressed rootfs tarball or a `docker save` archive",
            ));
        }
        crate::oci::Base::detect(&path).map_err(|e| RuntimeError::Build {
            image: base.to_string(),
            message: e.to_string(),
            log_tail: String::new(),
        })
    }

    fn machine(&self, sub: &str, name: &str) -> Vec<String> {
        let mut a = vec!["machine".to_string(), sub.to_string()];
        a.extend(name_args(self.version, name));
        a
    }

    /// `machine ls --json`.
    pub async fn machines(&self) -> Result<Vec<Machine>, RuntimeError> {
        let out = self
            .tool
            .run_ok("list machines", &["machine", "ls", "--json"])
            .await?;
        parse(&out.stdout, "machine ls --json")
    }

    /// `machine status --name N --json`; a missing machine is `NotFound`.
    pub async fn status(&self, name: &str) -> Result<Machine, RuntimeError> {
        let mut args = self.machine("status", name);
        args.push("--json".into());
        let out = self.tool.run(&args).await?;
        if !out.ok() {
            return Err(if is_not_found(&out) {
                RuntimeError::NotFound {
                    what: format!("smolvm machine {name}"),
                }
            } else {
                self.tool.failed(&format!("status of machine {name}"), &out)
            });
        }
        parse(&out.stdout, "machine status --json")
    }

    /// `machine update --name N --allow-cidr …`: widens (or, with `remove`,
    /// narrows) a machine's egress allow-list. Applies to a running machine
    /// with an allow-list at its next connection.
    pub async fn update_allow_cidrs(
        &self,
        name: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<(), RuntimeError> {
        let mut args = self.machine("update", name);
        for c in add {
            args.extend(["--allow-cidr".into(), c.clone()]);
        }
        for c in remove {
            args.extend(["--remove-allow-cidr".into(), c.clone()]);
        }
        self.tool
            .run_ok(&format!("update machine {name}"), &args)
            .await
            .map(|_| ())
    }

    /// The argv of `machine create` for `spec` (no side effects);
    /// `smolfile` is the role's Smolfile written to disk, if any.
    pub fn create_args(
        &self,
        spec: &ContainerSpec,
        smolfile: Option<&Path>,
    ) -> Result<Vec<String>, RuntimeError> {
        if let Some(of) = &spec.network_namespace_of {
            return Err(capability(
                "network namespace",
                format!(
                    "{} asks to join the network namespace of {of}: a smolvm machine is a VM and cannot share another's",
                    spec.name
                ),
                "attach a fresh machine to the same network instead",
            ));
        }
        if spec.host_network {
            return Err(capability(
                "host network",
                format!(
                    "{}: a smolvm machine is a VM; it has no host network mode",
                    spec.name
                ),
                "attach it to a network instead",
            ));
        }
        let mut fabrics: Vec<&str> = Vec::new();
        let mut egress = false;
        for a in &spec.networks {
            if a.ipv4.is_some() {
                return Err(capability(
                    "fixed-address",
                    format!(
                        "{} asks for a fixed address on {}: fabric addresses are leased at start",
                        spec.name, a.network
                    ),
                    "leave NetworkAttachment::ipv4 empty and read the address after start",
                ));
            }
            if a.network == EGRESS_ID {
                egress = true;
            } else {
                fabrics.push(&a.network);
            }
        }
        if fabrics.len() > 1 {
            return Err(capability(
                "multi-fabric",
                format!(
                    "{} asks for fabrics {fabrics:?}: a machine joins one `--network`",
                    spec.name
                ),
                "attach it to one internal network",
            ));
        }
        let mut a = self.machine("create", &spec.name);
        if let Some(f) = smolfile {
            a.extend(["--smolfile".into(), f.display().to_string()]);
        }
        if !spec.image.is_empty() {
            a.extend(["--image".into(), self.image_source(&spec.image)]);
        }
        let mut labels = spec.labels.clone();
        if let Some(f) = fabrics.first() {
            labels.insert(LABEL_FABRIC.into(), f.to_string());
        }
        for (k, v) in &labels {
            a.extend(["--label".into(), format!("{k}={v}")]);
        }
        if let Some(f) = fabrics.first() {
            a.extend(["--network".into(), f.to_string()]);
        }
        if egress {
            a.push("--net".into());
        } else if !fabrics.is_empty() {
            // Fabric only: `--network` implies `--net`, so the allow-list is
            // what keeps the machine from the outside. It is the sidecar.
            let Some(IpAddr::V4(sidecar)) = spec.dns.first() else {
                return Err(capability(
                    "egress allow-list",
                    format!("{} joins {} without its own egress but names no IPv4 DNS server (the sidecar): its allow-list would be empty and `--network` would give it open egress", spec.name, fabrics[0]),
                    "set ContainerSpec::dns to the sidecar's fabric address",
                ));
            };
            a.extend(["--allow-cidr".into(), format!("{sidecar}/32")]);
            a.extend(["--dns".into(), sidecar.to_string()]);
        }
        if egress {
            if let Some(d) = spec.dns.first() {
                a.extend(["--dns".into(), d.to_string()]);
            }
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
        for p in &spec.publish {
            if p.host_ip != IpAddr::V4(Ipv4Addr::LOCALHOST) {
                return Err(capability(
                    "per-ip-publish",
                    format!("{} publishes on {}: smolvm has no host-IP form of -p and binds 127.0.0.1 only", spec.name, p.host_ip),
                    "publish on 127.0.0.1",
                ));
            }
            a.extend([
                "--port".into(),
                format!("{}:{}", p.host_port, p.container_port),
            ]);
        }
        if let Some(u) = &spec.user {
            a.extend(["--user".into(), u.clone()]);
        }
        if let Some(w) = &spec.workdir {
            a.extend(["--workdir".into(), w.clone()]);
        }
        if let Some(c) = spec.cpus {
            a.extend(["--cpus".into(), (c.ceil().max(1.0) as u64).to_string()]);
        }
        if let Some(m) = spec.memory_bytes {
            a.extend(["--mem".into(), m.div_ceil(1024 * 1024).to_string()]);
        }
        // Namespaced sysctls become a first-start step run as root; the
        // machine is its own kernel, so they touch nothing else.
        for (k, v) in &spec.sysctls {
            let path = format!("/proc/sys/{}", k.replace('.', "/"));
            a.extend([
                "--init".into(),
                format!("echo {} > {}", sh_quote(v), sh_quote(&path)),
            ]);
        }
        let mut argv: Vec<String> = spec.entrypoint.clone().unwrap_or_default();
        argv.extend(spec.command.iter().cloned());
        if !argv.is_empty() {
            a.push("--".into());
            a.extend(argv);
        }
        Ok(a)
    }

    fn exec_args(&self, name: &str, spec: &ExecSpec, attached: bool) -> Vec<String> {
        // `exec` takes only the long `--name`.
        let mut a = vec!["machine".to_string(), "exec".to_string()];
        a.extend(name_args(self.version, name));
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
        a.push("--".into());
        a.extend(spec.cmd.iter().cloned());
        a
    }

    async fn require_running(&self, name: &str) -> Result<(), RuntimeError> {
        let m = self.status(name).await?;
        if m.state != "running" {
            return Err(RuntimeError::Call {
                runtime: RuntimeKind::Smolvm,
                operation: format!("exec in {name}"),
                message: format!("machine {name} is not running (state: {})", m.state),
            });
        }
        Ok(())
    }

    fn info_of(&self, m: &Machine, fabric_ip: Option<Ipv4Addr>) -> ContainerInfo {
        let mut ipv4 = BTreeMap::new();
        if let (Some(f), Some(ip)) = (m.labels.get(LABEL_FABRIC), fabric_ip) {
            ipv4.insert(f.clone(), ip);
        }
        ContainerInfo {
            id: m.name.clone(),
            name: m.name.clone(),
            image: m.image.clone().unwrap_or_default(),
            state: state_of(&m.state),
            health: "none".into(),
            labels: m.labels.clone(),
            ipv4,
            exit_code: None,
            // `machine ls --json` names no capabilities, mounts or limits.
            security: None,
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, RuntimeError> {
    parse_json(RuntimeKind::Smolvm, text, what, None)
}

/// Writes `text` to a fresh file in the system temp dir that only this user
/// can read (created 0600, whatever the umask) under a random name, so no
/// other local user can read the Smolfile or swap in their own between the
/// write and smolvm's read. The file goes when the returned guard drops:
/// hold it until the CLI has read the file.
fn write_temp(stem: &str, text: &str) -> Result<tempfile::TempPath, RuntimeError> {
    let io = |source: std::io::Error| RuntimeError::Io {
        doing: format!(
            "writing the Smolfile of {stem} to a private file in {}",
            tempfile::env::temp_dir().display()
        ),
        source,
    };
    let prefix = format!("bottle-{stem}-");
    let mut file = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".smolfile")
        .tempfile()
        .map_err(io)?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.flush())
        .map_err(io)?;
    Ok(file.into_temp_path())
}

#[async_trait]
impl Runtime for SmolvmRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Smolvm
    }

    fn assigns_addresses_at_start(&self) -> bool {
        true
    }

    async fn probe(&self, helper_image: Option<&str>) -> Probe {
        probe::run(self, helper_image).await
    }

    /// A local source (`/…`, `./…`, `../…`, `*.tar[.gz]`, `*.tgz`) exists;
    /// a reference is present when the image store holds its archive. Any
    /// other reference is one smolvm pulls at first start
    /// ([`Runtime::pulls_missing_images`]).
    async fn image_exists(&self, image: &str) -> Result<bool, RuntimeError> {
        if is_local_path(image) {
            return Ok(Path::new(image).exists());
        }
        Ok(store_path(&self.image_dir, image).is_file())
    }

    fn pulls_missing_images(&self) -> bool {
        true
    }

    /// smolvm runs no Containerfile: bottle writes the image as an archive
    /// into the store from the spec's [`crate::oci::Recipe`] on the base
    /// `BASE_IMAGE` (a rootfs directory or tarball, a `docker save`
    /// archive, or a reference whose archive the store holds).
    async fn build_image(
        &self,
        spec: &BuildSpec,
        progress: Progress<'_>,
    ) -> Result<(), RuntimeError> {
        let base_name = spec
            .build_args
            .get("BASE_IMAGE")
            .cloned()
            .unwrap_or_default();
        let base = self.base_of(&base_name)?;
        let arch = self.architecture().await?;
        let out = store_path(&self.image_dir, &spec.tag);
        let recipe = spec.recipe.clone();
        let files = spec.files.clone();
        let tag = spec.tag.clone();
        // The archive is written on a blocking thread; its progress lines
        // come back over a channel.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let job = tokio::task::spawn_blocking(move || {
            let mut say = move |line: &str| {
                let _ = tx.send(line.to_string());
            };
            crate::oci::write_archive(&base, &recipe, &files, &tag, arch, &out, &mut say)
        });
        while let Some(line) = rx.recv().await {
            progress(&line);
        }
        let written = job
            .await
            .map_err(|e| RuntimeError::Build {
                image: spec.tag.clone(),
                message: format!("the archive writer stopped: {e}"),
                log_tail: String::new(),
            })?
            .map_err(|e| RuntimeError::Build {
                image: spec.tag.clone(),
                message: e.to_string(),
                log_tail: String::new(),
            })?;
        progress(&format!(
            "wrote {} ({} layers, {} bytes, image {})",
            store_path(&self.image_dir, &spec.tag).display(),
            written.diff_ids.len(),
            written.size,
            written.image_id
        ));
        Ok(())
    }

    /// Removes the store's other archives of `repo` (`keep` stays).
    /// smolvm copies an archive into its own cache at `machine create`, so
    /// no machine depends on the store's file.
    async fn prune_images(&self, repo: &str, keep: &str) -> Result<usize, RuntimeError> {
        let keep = store_path(&self.image_dir, keep);
        let prefix = store_path(&self.image_dir, &format!("{repo}:"));
        let prefix = prefix.display().to_string();
        let prefix = prefix.trim_end_matches(".tar");
        let Ok(entries) = std::fs::read_dir(&self.image_dir) else {
            return Ok(0);
        };
        let mut n = 0;
        for e in entries.flatten() {
            let p = e.path();
            if p != keep
                && p.display().to_string().starts_with(prefix)
                && p.extension().is_some_and(|x| x == "tar")
                && std::fs::remove_file(&p).is_ok()
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Creates nothing: a fabric exists while a machine names it, and the
    /// egress network is each machine's own `--net`.
    async fn create_network(&self, spec: &NetworkSpec) -> Result<NetworkInfo, RuntimeError> {
        Ok(NetworkInfo {
            id: match spec.kind {
                NetworkKind::Internal => spec.name.clone(),
                NetworkKind::Egress => EGRESS_ID.into(),
            },
            name: spec.name.clone(),
            kind: spec.kind,
            // Leases are 100.96.N.2, one N per member, gateway 100.96.N.1:
            // members find their own address inside this range.
            subnet: (spec.kind == NetworkKind::Internal).then(|| "100.96.0.0/16".to_string()),
            host_interface: None,
        })
    }

    async fn remove_network(&self, _id: &str) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// None: the host has no interface on a fabric. Its gateway relays to
    /// host loopback only, which 1.32 blocks unless `--allow-host-loopback`
    /// (never passed), and the agent's allow-list holds only the sidecar.
    async fn host_addresses_on(
        &self,
        _network: &NetworkInfo,
        _helper_image: &str,
    ) -> Result<Vec<IpAddr>, RuntimeError> {
        Ok(vec![])
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let smolfile = match Role::of(&spec.labels) {
            Some(Role::Agent) => Some(AGENT_SMOLFILE),
            Some(Role::Sidecar) => Some(SIDECAR_SMOLFILE),
            _ => None,
        };
        let path = smolfile
            .map(|text| write_temp(&spec.name, text))
            .transpose()?;
        let result = async {
            let args = self.create_args(spec, path.as_deref())?;
            self.tool
                .run_ok(&format!("create machine {}", spec.name), &args)
                .await
        }
        .await;
        // `machine create` has read the Smolfile: the guard removes it.
        drop(path);
        result.map(|_| spec.name.clone())
    }

    /// Starts the machine; when that fails the machine is deleted and the
    /// error says why the guest did not come up.
    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let out = self.tool.run(&self.machine("start", id)).await?;
        if out.ok() {
            return Ok(());
        }
        let mut delete = self.machine("delete", id);
        delete.push("--force".into());
        let cleaned = match self.tool.run(&delete).await {
            Ok(d) if d.ok() || is_not_found(&d) => {
                "the machine was deleted, nothing is left behind".to_string()
            }
            Ok(d) => format!(
                "deleting it failed too ({}); run `bottle down`",
                d.message()
            ),
            Err(e) => format!("deleting it failed too ({e}); run `bottle down`"),
        };
        let message = out.message();
        Err(RuntimeError::Call {
            runtime: RuntimeKind::Smolvm,
            operation: format!("start machine {id}"),
            message: format!("{message}\n  {}\n  {cleaned}", boot_hint(&message)),
        })
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let mut args = self.machine("delete", id);
        args.push("--force".into());
        let out = self.tool.run(&args).await?;
        if out.ok() || is_not_found(&out) {
            return Ok(());
        }
        Err(self.tool.failed(&format!("delete machine {id}"), &out))
    }

    async fn inspect_container(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let m = self.status(id).await?;
        let mut ip = None;
        if m.state == "running" && m.labels.contains_key(LABEL_FABRIC) {
            let probe = ExecSpec {
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "hostname -I 2>/dev/null || ip -4 -o addr show 2>/dev/null".into(),
                ],
                ..Default::default()
            };
            let out = self.tool.run(&self.exec_args(id, &probe, false)).await?;
            ip = fabric_address(&out.stdout);
        }
        Ok(self.info_of(&m, ip))
    }

    async fn exec_attached(&self, id: &str, spec: &ExecSpec) -> Result<i64, RuntimeError> {
        self.require_running(id).await?;
        Ok(self
            .tool
            .run_attached(&self.exec_args(id, spec, true))
            .await?
            .into())
    }

    async fn exec_capture(&self, id: &str, spec: &ExecSpec) -> Result<ExecOutput, RuntimeError> {
        self.require_running(id).await?;
        let out = self.tool.run(&self.exec_args(id, spec, false)).await?;
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
        let mut args = self.machine("logs", id);
        if follow {
            args.push("--follow".into());
        }
        if let Some(n) = tail {
            args.extend(["--tail".into(), n.to_string()]);
        }
        match self
            .tool
            .run_streaming(&format!("read logs of {id}"), &args, out)
            .await
        {
            Err(RuntimeError::Call { message, .. }) if message.contains("not found") => {
                Err(RuntimeError::NotFound {
                    what: format!("smolvm machine {id}"),
                })
            }
            other => other,
        }
    }

    /// Machines only: fabrics are not objects.
    async fn list(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ResourceRef>, RuntimeError> {
        Ok(self
            .machines()
            .await?
            .into_iter()
            .filter(|m| labels_match(&m.labels, labels))
            .map(|m| ResourceRef {
                kind: ResourceKind::Container,
                id: m.name.clone(),
                name: m.name,
                labels: m.labels,
                state: Some(state_of(&m.state)),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naming_changed_at_1_1() {
        assert_eq!(name_args(Version(1, 0, 9), "m"), vec!["m"]);
        assert_eq!(name_args(Version(1, 1, 0), "m"), vec!["--name", "m"]);
    }

    #[test]
    fn fabric_needs_1_8_3() {
        assert!(check_version(Version(1, 8, 2)).is_err());
        assert!(check_version(Version(1, 1, 2)).is_err());
        assert!(check_version(Version(1, 8, 3)).is_ok());
        assert!(check_version(Version(1, 32, 2)).is_ok());
        let msg = check_version(Version(1, 8, 2)).unwrap_err().to_string();
        assert!(
            msg.contains("1.8.3") && msg.contains("setup-smolvm.sh"),
            "{msg}"
        );
    }

    #[test]
    fn fabric_addresses() {
        assert_eq!(
            fabric_address("100.96.3.2 \n"),
            Some(Ipv4Addr::new(100, 96, 3, 2))
        );
        assert_eq!(
            fabric_address("2: eth0    inet 100.96.1.2/30 brd 100.96.1.3 scope global eth0"),
            Some(Ipv4Addr::new(100, 96, 1, 2))
        );
        assert_eq!(fabric_address("127.0.0.1 10.0.0.2"), None);
    }

    #[test]
    fn boot_hints() {
        assert!(boot_hint(
            "agent did not become ready within 30 seconds: no boot progress for 30 seconds"
        )
        .contains("KVM"));
        assert!(boot_hint("find libraries: libkrun/libkrunfw not found. (boot process exited (code 1) before the agent was ready)").contains("could not load libkrun"));
        assert!(boot_hint(
            "monitor agent: boot process exited (code 1) before the agent was ready"
        )
        .contains("did not boot"));
        assert!(
            boot_hint("Internal error while starting microVM: KvmContext(KvmOpen(Error(13)))")
                .contains("kvm group")
        );
    }

    #[test]
    fn smolfiles_are_written_private_under_unguessable_names() {
        let a = write_temp("demo-agent", "[network]\n").unwrap();
        let b = write_temp("demo-agent", "[network]\n").unwrap();
        assert_ne!(a.to_path_buf(), b.to_path_buf());
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "[network]\n");
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(a.parent(), Some(tempfile::env::temp_dir().as_path()));
        assert!(
            name.starts_with("bottle-demo-agent-") && name.ends_with(".smolfile"),
            "{name}"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{mode:o}");
        }
        let path = a.to_path_buf();
        drop(a);
        assert!(!path.exists(), "the guard removes the file");
        assert!(b.exists());
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    }
}
