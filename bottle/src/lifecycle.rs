//! Bringing a bottle up and down on any [`Runtime`].
//!
//! `up` creates, in order: the internal and egress networks, the dual-homed
//! sidecar (egress first, internal second), then the agent on the internal
//! network only. Every resource carries the bottle's labels from the moment it
//! exists, so `down` (which works from labels alone) can remove whatever an
//! interrupted `up` left behind. Any failure after the first resource exists
//! rolls everything back before the error is returned.

use crate::host::Host;
use crate::images::{self, ImageError};
use crate::interrupt::Interrupt;
use crate::plan::{
    labels_for, ImagePlan, Plan, AGENT_CA_DIR, SIDECAR_GIT_MOUNT, SIDECAR_LOG_MOUNT,
    SIDECAR_STATE_MOUNT, SIDECAR_SUPERVISE_MOUNT, SUPERVISE_PORT,
};
use crate::report::Reporter;
use crate::state::{StateDir, StateError, StateRoot};
use bottle_runtimes::{
    ContainerInfo, ContainerSpec, ContainerState, ExecSpec, Mount, NetworkAttachment, NetworkInfo,
    NetworkKind, NetworkSpec, ResourceKind, ResourceRef, Role, Runtime, RuntimeError, Weakness,
    LABEL_NAME,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// Why `up` (or another verb) stopped.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("cannot prepare the supervise queue: {0}\n  fix: check that the bottle's state dir is writable by you")]
    Queue(String),
    #[error("bottle `{name}` already exists ({count} resources carry its label)\n  fix: `bottle down {name}` first, or pick another --name")]
    Exists { name: String, count: usize },
    #[error("no bottle named `{name}` is running\n  fix: `bottle ps` lists bottles; `bottle up` starts one")]
    NoBottle { name: String },
    #[error(transparent)]
    Provider(#[from] crate::provider::ProviderError),
    #[error("cannot prepare the agent: {what} failed: {why}\n  fix: check the agent image (`bottle run shell` starts without a provider image)")]
    Provision { what: String, why: String },
    #[error("bottle `{name}` has no running agent (state: {state})\n  fix: `bottle down {name}` then `bottle up`")]
    AgentNotRunning { name: String, state: String },
    #[error("refusing to start: {runtime} lacks `{capability}`: {detail}\n  fix: {fix}")]
    Refused {
        runtime: String,
        capability: String,
        detail: String,
        fix: String,
    },
    #[error("refusing to start: the host holds {addrs} on the internal network {network}{}, so the agent could reach host services\n  fix: {fix}", if .bridge.is_empty() { String::new() } else { format!(" (bridge {})", .bridge) })]
    HostAddress {
        network: String,
        bridge: String,
        addrs: String,
        /// The runtime's own fix ([`host_address_fix`]).
        fix: String,
    },
    #[error("the sidecar did not become ready within {secs} s; no egress is possible, so the bottle was removed.\n  sidecar output:\n{logs}")]
    SidecarNotReady { secs: u64, logs: String },
    #[error("the sidecar has no address on the internal network {network}")]
    NoSidecarAddress { network: String },
    #[error("bottle `{name}`: the sidecar refused the new files and keeps the previous ones: {error}\n  fix: if the sidecar is older than this bottle, `bottle down {name}` and `bottle up` again; else check `bottle logs {name} --service sidecar`")]
    ReloadRefused { name: String, error: String },
    #[error("bottle `{name}`: the sidecar did not report loading the new policy within 10 s; the old policy may still apply\n  fix: check `bottle logs {name} --service sidecar`")]
    ReloadNotSeen { name: String },
    #[error("mount source {was} now resolves to {now}: it changed after the plan was made, so it is not what was shown and pinned\n  fix: check what replaced it, then run `bottle up` again")]
    MountMoved {
        was: std::path::PathBuf,
        now: std::path::PathBuf,
    },
    #[error(transparent)]
    Mount(#[from] crate::mounts::MountError),
    #[error("interrupted; everything created so far was removed")]
    Interrupted,
    #[error("interrupted again while removing what `up` had made; left behind: {}\n  fix: {}", .left.join(", "), leftover_fix(name, left))]
    InterruptedTwice { name: String, left: Vec<String> },
    #[error("cannot read random bytes from the system: {0}\n  fix: check that the kernel's random source (getrandom, /dev/urandom) works")]
    Random(String),
    #[error("the plan for bottle `{name}` has no images; it was not made by `up::prepare`")]
    Unplanned { name: String },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Materials(#[from] crate::materials::MaterialError),
    #[error("cannot render the policy: {0}")]
    Policy(#[from] serde_json::Error),
}

/// How to remove what a stopped rollback left: the bottle's resources go
/// with `bottle down`; a probe's scratch with the next probe's sweep.
fn leftover_fix(name: &str, left: &[String]) -> String {
    let scratch = |l: &String| l.starts_with("bottle-probe-") || l.starts_with("bottle-netinfo-");
    let mut fixes = Vec::new();
    if left.iter().any(|l| !scratch(l)) {
        fixes.push(format!(
            "`bottle down {name}` removes the bottle's resources"
        ));
    }
    if left.iter().any(scratch) {
        fixes.push(
            "remove the probe's scratch named above with your runtime's own CLI (e.g. `docker rm -f`, `docker network rm`)".to_string(),
        );
    }
    fixes.join("; ")
}

/// How to get past "the host holds an address on the internal network",
/// in the terms of the runtime that said so.
pub fn host_address_fix(kind: bottle_runtimes::RuntimeKind) -> String {
    use bottle_runtimes::RuntimeKind as K;
    let accept = Weakness::HostReachableFromInternal;
    match kind {
        K::Docker => "use an engine that honours com.docker.network.bridge.inhibit_ipv4 (or gateway_mode_ipv4=isolated on engine >= 28)".into(),
        K::AppleContainer => format!("Apple `container` gives the host the gateway of every --internal network (apple/container#1320, open up to 1.2.2) and has no flag to withdraw it: keep host services bound to 127.0.0.1 and accept it knowingly with --accept-weakness {accept}, or use --runtime docker (docs/runtimes.md, \"Apple container on a Mac\")"),
        K::Smolvm => format!("smolvm's fabric gave the host an address on the internal network: accept it knowingly with --accept-weakness {accept}, or use --runtime docker"),
    }
}

/// What `up` made, for the summary and `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct UpSummary {
    pub name: String,
    pub runtime: String,
    pub agent: ContainerSummary,
    pub sidecar: ContainerSummary,
    pub internal_network: NetworkInfo,
    pub egress_network: NetworkInfo,
    pub proxy: String,
    pub allow: Vec<String>,
    /// The git gate's remotes: name, gate URL, upstream.
    pub git: Vec<GitSummary>,
    pub state_dir: String,
    /// `uid:gid` the agent runs as; `None`: the image's user.
    pub agent_user: Option<String>,
    pub limits: Limits,
}

/// The limits a bottle runs under, for the summary and `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub sidecar: bottle_policy::Limits,
}

/// One `[[git.remote]]` as `up` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct GitSummary {
    pub name: String,
    pub gate: String,
    pub upstream: String,
    pub mode: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerSummary {
    pub name: String,
    pub id: String,
    pub image: String,
    pub ipv4: BTreeMap<String, Ipv4Addr>,
}

impl From<&ContainerInfo> for ContainerSummary {
    fn from(c: &ContainerInfo) -> Self {
        ContainerSummary {
            name: c.name.clone(),
            id: c.id.chars().take(12).collect(),
            image: c.image.clone(),
            ipv4: c.ipv4.clone(),
        }
    }
}

/// Resolves the images a bottle runs on without building anything: which
/// base, which sidecar tag (a digest of this build's sidecar binary), and
/// which of them are missing.
pub async fn plan_images(
    rt: &dyn Runtime,
    host: &Host,
    agent_image: &str,
) -> Result<ImagePlan, LifecycleError> {
    // The engine's answers at once; then the sidecar's tag (a digest of its
    // binary), and whether the engine has it.
    let (base, arch, agent_exists) = tokio::join!(
        images::base_image(rt, host),
        rt.architecture(),
        rt.image_exists(agent_image)
    );
    let ((base, why), arch, missing) = (base?, arch?, !agent_exists?);
    let sidecar_binary = images::sidecar_binary(host, arch)?;
    let sidecar = images::sidecar_build(&base, host, arch)?;
    let build_sidecar = !rt.image_exists(&sidecar.tag).await?;
    let build_agent = missing && agent_image == images::DEFAULT_AGENT_IMAGE;
    if missing && !build_agent && !rt.pulls_missing_images() {
        return Err(ImageError::UnknownImage {
            image: agent_image.into(),
        }
        .into());
    }
    Ok(ImagePlan {
        base,
        base_why: why.into(),
        sidecar: sidecar.tag,
        sidecar_arch: arch,
        sidecar_binary,
        build_sidecar,
        agent: agent_image.into(),
        build_agent,
        provider: None,
    })
}

/// Builds what [`plan_images`] found missing, with progress.
pub async fn build_images(
    rt: &dyn Runtime,
    host: &Host,
    plan: &ImagePlan,
    report: &mut Reporter,
) -> Result<(), LifecycleError> {
    let mut progress = report.progress();
    if plan.build_sidecar {
        let spec = images::sidecar_build(&plan.base, host, plan.sidecar_arch)?;
        if spec.tag != plan.sidecar {
            // The binary changed since the plan was made.
            return Err(ImageError::Changed {
                planned: plan.sidecar.clone(),
                now: spec.tag,
            }
            .into());
        }
        progress(&format!(
            "building {} from base {} ({})",
            spec.tag, plan.base, plan.base_why
        ));
        images::ensure(rt, &spec, &plan.base, &mut progress).await?;
        // Older sidecar images (earlier builds of bottle) only take space.
        let repo = spec.tag.split(':').next().unwrap_or_default();
        if let Ok(n @ 1..) = rt.prune_images(repo, &spec.tag).await {
            progress(&format!("removed {n} unused older {repo} image(s)"));
        }
    }
    if plan.build_agent {
        progress(&format!(
            "building {} from base {} ({})",
            plan.agent, plan.base, plan.base_why
        ));
        let spec = images::agent_build(&plan.agent, &plan.base);
        images::ensure(rt, &spec, &plan.base, &mut progress).await?;
    }
    Ok(())
}

/// Plans and builds in one go (`bottle probe` needs the sidecar image).
pub async fn ensure_images(
    rt: &dyn Runtime,
    host: &Host,
    agent_image: &str,
    report: &mut Reporter,
) -> Result<ImagePlan, LifecycleError> {
    let plan = plan_images(rt, host, agent_image).await?;
    build_images(rt, host, &plan, report).await?;
    Ok(plan)
}

/// Keeps, of a previous run's grants, the `always` ones whose allow entry
/// the user's pin holds (`bottle approve --scope always` put it there).
/// grants.json is written by the sidecar: nothing in it survives `up` on
/// that file's word alone, and session grants end with the bottle.
///
/// Approved pushes never outlive the bottle: the pin holds no git grant, so
/// `always` is `session` for a push.
pub fn keep_pinned_grants(grants: &mut bottle_policy::Grants, pinned: &[bottle_policy::AllowRule]) {
    grants.git.clear();
    grants.grants.retain(|g| {
        g.scope == bottle_policy::Scope::Always
            && bottle_policy::AllowRule::parse(&g.host.allow_entry(g.port))
                .is_ok_and(|r| pinned.contains(&r))
    });
}

/// Where credential values come from: the host's environment, and with
/// `auth = "codex-login"` the API key of the host's Codex login
/// (`$CODEX_HOME`, else `~/.codex`) for `OPENAI_API_KEY`.
pub fn credentials<'a>(
    host: &'a Host,
    plan: &Plan,
) -> Result<impl Fn(&str) -> Option<String> + 'a, LifecycleError> {
    let codex = if plan.agent.codex_login {
        let dir = host
            .var("CODEX_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                host.var("HOME")
                    .map(|h| std::path::Path::new(&h).join(".codex"))
            })
            .or_else(|| host.facts.homes.first().map(|h| h.join(".codex")))
            .unwrap_or_else(|| std::path::PathBuf::from(".codex"));
        Some(crate::provider::codex_login_key(&dir)?)
    } else {
        None
    };
    Ok(move |k: &str| match (&codex, k) {
        (Some(v), "OPENAI_API_KEY") => Some(v.clone()),
        _ => host.var(k),
    })
}

/// The agent CLI's home in a provider image (images/agent-provider).
pub const PROVIDER_HOME: &str = "/home/agent";
/// The home of an agent that runs as a mount owner's uid in a provider
/// image: made by the agent at `up` (in /tmp, which any uid can write).
pub const OWNER_HOME: &str = "/tmp/bottle-home";

/// The sidecar's memory limit (the git gate's children included).
pub const SIDECAR_MEMORY: u64 = 2 << 30;
/// The sidecar's process and thread limit.
pub const SIDECAR_PIDS: i64 = 512;

/// The generic MCP config in the agent dir.
pub const MCP_FILE: &str = "mcp.json";
/// Where, in its log dir, the sidecar records its proxy address once every
/// listener is bound (`--ready-file`).
pub const READY_FILE: &str = "ready";
/// The line between the agent user's trust output and its MCP provisioning
/// output (one exec does both).
const MCP_MARK: &str = "--bottle-mcp--";

/// `{"mcpServers": {"bottle": {"type": "http", "url": URL}}}`, the shape
/// Claude Code's and most MCP clients' configs share.
pub fn mcp_config(url: &str) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "mcpServers": {"bottle": {"type": "http", "url": url}}
    }))
    .unwrap_or_default()
}

/// The `up` line for the stores the CA went into (words printed by
/// [`crate::trust::ROOT_SCRIPT`] and [`crate::trust::USER_SCRIPT`]).
pub fn trust_detail(stores: &[String]) -> String {
    let name = |w: &str| match w {
        "system" => "the system store",
        "jvm" => "the JVM keystore",
        "nss" => "the agent user's NSS database",
        _ => "",
    };
    let ok: Vec<&str> = stores
        .iter()
        .map(|w| name(w))
        .filter(|n| !n.is_empty())
        .collect();
    let failed: Vec<&str> = stores
        .iter()
        .filter_map(|w| w.strip_suffix("-failed"))
        .map(name)
        .collect();
    let mut line = if ok.is_empty() {
        "note: the bottle CA is in no store of the agent (no update-ca-certificates); the CA variables point at it".to_string()
    } else {
        format!(
            "bottle CA trusted in {}, and by the CA variables",
            ok.join(", ")
        )
    };
    if !failed.is_empty() {
        line.push_str(&format!("; could not add it to {}", failed.join(", ")));
    }
    line
}

/// A shell script that writes Claude Code's `~/.claude.json` and Codex's
/// `~/.codex/config.toml` pointing at `url`, each only when absent, and
/// prints which it wrote. `url` is bottle's own (an address and a port).
/// With `codex_base` (the codex provider), Codex's file also names a model
/// provider of its own at that URL that reads `OPENAI_API_KEY` (Codex's
/// built-in provider ignores both the variable and `OPENAI_BASE_URL`).
pub fn agent_mcp_script(url: &str, codex_base: Option<&str>) -> String {
    let claude = mcp_config(url).replace('\'', "");
    let mut codex = String::new();
    if let Some(base) = codex_base {
        codex.push_str(&format!(
            "model_provider = \"bottle\"\n\n[model_providers.bottle]\nname = \"bottle\"\nbase_url = \"{}\"\nenv_key = \"OPENAI_API_KEY\"\nwire_api = \"responses\"\n\n",
            base.replace(['\'', '"', '\\'], "")
        ));
    }
    codex.push_str(&format!("[mcp_servers.bottle]\nurl = \"{url}\""));
    let codex = codex.replace('\'', "");
    format!(
        "h=\"${{HOME:-/tmp}}\"; w=''; \
         if [ ! -e \"$h/.claude.json\" ]; then printf '%s\\n' '{claude}' > \"$h/.claude.json\" && chmod 600 \"$h/.claude.json\" && w=\"$w claude\"; fi; \
         if [ ! -e \"$h/.codex/config.toml\" ]; then mkdir -p \"$h/.codex\" && printf '%s\\n' '{codex}' > \"$h/.codex/config.toml\" && w=\"$w codex\"; fi; \
         echo \"configured for:${{w:- nothing new}}\""
    )
}

/// Everything carrying `dev.bottle.name=<name>`.
pub async fn resources_of(rt: &dyn Runtime, name: &str) -> Result<Vec<ResourceRef>, RuntimeError> {
    rt.list(&BTreeMap::from([(
        LABEL_NAME.to_string(),
        name.to_string(),
    )]))
    .await
}

/// Creates the bottle described by `plan` (made by `up::prepare`, so its
/// images exist). Rolls back on any failure and on an interrupt; a second
/// interrupt stops the rollback and the error names what is left.
pub async fn create(
    rt: &dyn Runtime,
    host: &Host,
    plan: &Plan,
    accepted: &[Weakness],
    interrupt: &Interrupt,
    report: &mut Reporter,
) -> Result<UpSummary, LifecycleError> {
    let images = plan
        .images
        .as_ref()
        .ok_or_else(|| LifecycleError::Unplanned {
            name: plan.name.clone(),
        })?;
    // Held to the end: no second `up` of this name between the check and
    // the rollback.
    let _lock = host.state.bottle(&plan.name).lock()?;
    let existing = interrupt
        .unless(resources_of(rt, &plan.name))
        .await
        .map_err(|_| LifecycleError::Interrupted)??;
    if !existing.is_empty() {
        return Err(LifecycleError::Exists {
            name: plan.name.clone(),
            count: existing.len(),
        });
    }
    let state = host.state.bottle(&plan.name);
    let rendered = crate::materials::render(&state, plan, credentials(host, plan)?)?;
    report.step(&format!(
        "policy, CA{} and credentials written to {}",
        if rendered.minted_ca { " (new)" } else { "" },
        state.sidecar_dir().display()
    ));
    record(&state, plan, accepted)?;

    // The first interrupt stops creation once the runtime call in flight
    // has returned (a create the engine already received still finishes,
    // so what it made exists and carries the labels the rollback goes by);
    // a second one abandons that call.
    let result = match interrupt
        .unless_level(
            2,
            create_all(
                rt,
                Creation {
                    plan,
                    images,
                    state: &state,
                    rendered: &rendered,
                    accepted,
                    interrupt,
                },
                report,
            ),
        )
        .await
    {
        Ok(r) => r,
        Err(_) => Err(LifecycleError::Interrupted),
    };
    match result {
        Ok(summary) => Ok(summary),
        Err(e) => {
            report.step(if matches!(e, LifecycleError::Interrupted) {
                "interrupted; removing what was created (Ctrl-C again to stop)"
            } else {
                "failed; removing what was created"
            });
            rollback(rt, &host.state, &plan.name, interrupt, report).await?;
            Err(e)
        }
    }
}

/// Removes what a stopped `up` made: the bottle's resources, then the
/// scratch its probe and checks left. Runs to the end unless a second
/// interrupt arrives; then [`LifecycleError::InterruptedTwice`] names what
/// is left. A failure to remove is reported, not returned: the caller's
/// error is the one that matters.
pub async fn rollback(
    rt: &dyn Runtime,
    root: &StateRoot,
    name: &str,
    interrupt: &Interrupt,
    report: &mut Reporter,
) -> Result<(), LifecycleError> {
    // The next interrupt from here on stops the rollback.
    let stop = (interrupt, interrupt.count() + 1);
    let mut left = Vec::new();
    let outcome = remove_all(rt, root, name, Some(stop), report, &mut left).await;
    if let Err(Stop::Interrupted) = outcome {
        return Err(LifecycleError::InterruptedTwice {
            name: name.into(),
            left,
        });
    }
    if let Err(Stop::Failed(e)) = outcome {
        report.detail(&format!(
            "cleanup also failed: {e}; run `bottle down {name}`"
        ));
        return Ok(());
    }
    let mut scratch = Vec::new();
    match remove_probe_scratch(rt, Some(stop), &mut scratch).await {
        Err(Stop::Interrupted) => Err(LifecycleError::InterruptedTwice {
            name: name.into(),
            left: scratch,
        }),
        Err(Stop::Failed(e)) => {
            report.detail(&format!("could not remove the probe's scratch: {e}"));
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// Why a removal stopped early.
enum Stop {
    Interrupted,
    Failed(RuntimeError),
}

/// Where a removal stops: at the `level`-th interrupt.
type StopAt<'a> = Option<(&'a Interrupt, u32)>;

/// Runs one removal, stopping at the interrupt `stop` names.
async fn step<T>(
    stop: StopAt<'_>,
    work: impl std::future::Future<Output = Result<T, RuntimeError>>,
) -> Result<T, Stop> {
    match stop {
        Some((i, level)) => match i.unless_level(level, work).await {
            Ok(r) => r.map_err(Stop::Failed),
            Err(_) => Err(Stop::Interrupted),
        },
        None => work.await.map_err(Stop::Failed),
    }
}

/// Names of this process's probe scratch (`bottle-probe-<pid>-…`,
/// `bottle-netinfo-<pid>-…`): what a probe or a host check dropped mid-way
/// leaves behind.
fn is_own_scratch(name: &str) -> bool {
    let pid = std::process::id();
    let name = name.trim_start_matches('/');
    name.starts_with(&format!("bottle-probe-{pid}-"))
        || name.starts_with(&format!("bottle-netinfo-{pid}-"))
}

/// Removes this process's probe scratch (containers first). `left` ends
/// up holding what is still there when it stops.
async fn remove_probe_scratch(
    rt: &dyn Runtime,
    stop: StopAt<'_>,
    left: &mut Vec<String>,
) -> Result<(), Stop> {
    let labels = BTreeMap::from([Role::Probe.label()]);
    let mut found: Vec<ResourceRef> = step(stop, rt.list(&labels))
        .await?
        .into_iter()
        .filter(|r| is_own_scratch(&r.name))
        .collect();
    let rank = |r: &ResourceRef| u8::from(r.kind == ResourceKind::Network);
    found.sort_by_key(rank);
    remove_each(rt, &found, rank, stop, left, |_| {}).await
}

/// Removes `found`, a rank at a time in the order `rank` sorted it in,
/// the members of one rank at once; `left` names what is not yet removed
/// when a removal fails or an interrupt stops it (after every removal of
/// that rank came back).
async fn remove_each(
    rt: &dyn Runtime,
    found: &[ResourceRef],
    rank: impl Fn(&ResourceRef) -> u8,
    stop: StopAt<'_>,
    left: &mut Vec<String>,
    mut removed: impl FnMut(&ResourceRef),
) -> Result<(), Stop> {
    left.extend(found.iter().map(|r| r.name.clone()));
    for group in found.chunk_by(|a, b| rank(a) == rank(b)) {
        let results = futures_util::future::join_all(group.iter().map(|r| {
            step(stop, async move {
                match r.kind {
                    ResourceKind::Container => rt.remove_container(&r.id).await,
                    ResourceKind::Network => rt.remove_network(&r.id).await,
                }
            })
        }))
        .await;
        let mut first_stop = None;
        for (r, result) in group.iter().zip(results) {
            match result {
                Ok(()) => {
                    left.retain(|l| l != &r.name);
                    removed(r);
                }
                Err(e) => {
                    first_stop.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_stop {
            return Err(e);
        }
    }
    Ok(())
}

/// Removes this process's probe scratch after an interrupted probe. A
/// create the engine had already received when the probe was dropped may
/// still finish, so the sweep runs again after a moment.
pub async fn sweep_probe_scratch(rt: &dyn Runtime) -> Result<(), RuntimeError> {
    for settle in [Duration::ZERO, SCRATCH_SETTLE] {
        tokio::time::sleep(settle).await;
        let mut left = Vec::new();
        if let Err(Stop::Failed(e)) = remove_probe_scratch(rt, None, &mut left).await {
            return Err(e);
        }
    }
    Ok(())
}

/// How long a create sent just before an interrupt may take to appear.
const SCRATCH_SETTLE: Duration = Duration::from_millis(1500);

/// Stops creation at the first interrupt, between runtime calls.
fn halt(interrupt: &Interrupt) -> Result<(), LifecycleError> {
    if interrupt.count() >= 1 {
        Err(LifecycleError::Interrupted)
    } else {
        Ok(())
    }
}

/// What `bottle.json` in the state dir remembers of a bottle's last `up`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Recorded {
    pub name: String,
    /// The config file, or `built-in default …`.
    pub config: String,
    pub runtime: bottle_runtimes::RuntimeKind,
    /// Weaknesses accepted with `--accept-weakness`; shown by `ps`.
    #[serde(default)]
    pub accepted_weaknesses: Vec<Weakness>,
}

fn record(state: &StateDir, plan: &Plan, accepted: &[Weakness]) -> Result<(), StateError> {
    let rec = Recorded {
        name: plan.name.clone(),
        config: plan.config_source.clone(),
        runtime: plan.runtime,
        accepted_weaknesses: accepted.to_vec(),
    };
    let json = serde_json::to_vec_pretty(&rec).unwrap_or_default();
    crate::state::write_private(&state.root().join("bottle.json"), &json)
}

/// What a bottle's last `up` recorded in its state dir, if anything.
pub fn recorded(state: &StateDir) -> Option<Recorded> {
    serde_json::from_str(&std::fs::read_to_string(state.root().join("bottle.json")).ok()?).ok()
}

/// The config file a bottle was last brought up from, if it had one.
pub fn recorded_source(state: &StateDir) -> Option<std::path::PathBuf> {
    let p = std::path::PathBuf::from(recorded(state)?.config);
    p.is_file().then_some(p)
}

/// `uid:gid` owning the state dir: the sidecar runs as that user so it can
/// read the 0600 files and write its log without any capability.
fn state_owner(state: &StateDir) -> Result<String, StateError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(state.root()).map_err(|source| StateError::Read {
        path: state.root().to_path_buf(),
        source,
    })?;
    Ok(format!("{}:{}", meta.uid(), meta.gid()))
}

/// What [`create_all`] works from.
struct Creation<'a> {
    plan: &'a Plan,
    images: &'a ImagePlan,
    state: &'a StateDir,
    rendered: &'a crate::materials::Rendered,
    accepted: &'a [Weakness],
    interrupt: &'a Interrupt,
}

async fn create_all(
    rt: &dyn Runtime,
    c: Creation<'_>,
    report: &mut Reporter,
) -> Result<UpSummary, LifecycleError> {
    let Creation {
        plan,
        images,
        state,
        rendered,
        accepted,
        interrupt,
    } = c;
    // Both networks at once; a failure of either is returned after both
    // calls came back, so the rollback finds whatever the other made.
    report.step(&format!(
        "creating networks {} (internal) and {} (egress)",
        plan.internal_network, plan.egress_network
    ));
    let internal_spec = NetworkSpec {
        name: plan.internal_network.clone(),
        kind: NetworkKind::Internal,
        labels: plan.labels(bottle_runtimes::Role::Internal),
    };
    let egress_spec = NetworkSpec {
        name: plan.egress_network.clone(),
        kind: NetworkKind::Egress,
        labels: plan.labels(bottle_runtimes::Role::Egress),
    };
    let (internal, egress) = tokio::join!(
        rt.create_network(&internal_spec),
        rt.create_network(&egress_spec)
    );
    let (internal, egress) = (internal?, egress?);
    halt(interrupt)?;
    report.detail(&format!(
        "subnet {}, bridge {}",
        internal.subnet.as_deref().unwrap_or("?"),
        internal.host_interface.as_deref().unwrap_or("-")
    ));

    // Docker takes fixed addresses; runtimes that assign them at start get
    // none, and the sidecar finds its own inside the internal subnet.
    let (sidecar_ip, agent_ip) = if rt.assigns_addresses_at_start() {
        (None, None)
    } else {
        fixed_addresses(&internal)
    };
    let dns_answer = match (sidecar_ip, &internal.subnet) {
        (Some(ip), _) => ip.to_string(),
        (None, Some(subnet)) => subnet.clone(),
        (None, None) => {
            return Err(LifecycleError::NoSidecarAddress {
                network: internal.name.clone(),
            })
        }
    };
    // Where the runtime has namespaced sysctls, the sidecar runs as the
    // state dir's owner with no capability at all; elsewhere it runs as root
    // keeping only NET_BIND_SERVICE.
    let unprivileged = rt.supports_sysctls();
    let git = !plan.policy.git.remotes.is_empty();
    let mut command = vec![
        "run".into(),
        "--policy".into(),
        format!("{SIDECAR_STATE_MOUNT}/policy.json"),
        "--audit".into(),
        format!("{SIDECAR_LOG_MOUNT}/egress.jsonl"),
        "--dns-answer".into(),
        dns_answer,
        "--ready-file".into(),
        format!("{SIDECAR_LOG_MOUNT}/{READY_FILE}"),
    ];
    let mut sidecar_mounts = vec![
        Mount {
            source: state.sidecar_dir(),
            target: SIDECAR_STATE_MOUNT.into(),
            read_only: true,
        },
        Mount {
            source: state.logs_dir(),
            target: SIDECAR_LOG_MOUNT.into(),
            read_only: false,
        },
    ];
    let supervise = plan.policy.supervise.enabled;
    if supervise {
        // The approval queue: the sidecar files proposals, `bottle approve`
        // writes decisions; the agent never sees it. Session grants end
        // with the bottle; `always` ones are kept.
        let queue = crate::requests::queue_of(state);
        queue
            .create()
            .map_err(|e| LifecycleError::Queue(e.to_string()))?;
        if let Ok(mut grants) = queue.grants() {
            let pinned = crate::pin::load(state)
                .map(|p| p.egress.allow)
                .unwrap_or_default();
            keep_pinned_grants(&mut grants, &pinned);
            queue
                .save_grants(&grants)
                .map_err(|e| LifecycleError::Queue(e.to_string()))?;
        }
        command.extend(["--supervise-state".into(), SIDECAR_SUPERVISE_MOUNT.into()]);
        sidecar_mounts.push(Mount {
            source: state.supervise_dir(),
            target: SIDECAR_SUPERVISE_MOUNT.into(),
            read_only: false,
        });
    }
    if git {
        // The gate's mirrors: written by the sidecar, never seen by the agent.
        command.extend(["--git-state".into(), SIDECAR_GIT_MOUNT.into()]);
        sidecar_mounts.push(Mount {
            source: state.git_dir(),
            target: SIDECAR_GIT_MOUNT.into(),
            read_only: false,
        });
    }
    let sidecar_spec = ContainerSpec {
        name: plan.sidecar_name.clone(),
        image: images.sidecar.clone(),
        command,
        labels: plan.labels(bottle_runtimes::Role::Sidecar),
        networks: vec![
            NetworkAttachment {
                network: egress.id.clone(),
                ipv4: None,
                aliases: vec![],
            },
            NetworkAttachment {
                network: internal.id.clone(),
                ipv4: sidecar_ip,
                aliases: vec!["sidecar".into()],
            },
        ],
        cap_drop: vec!["ALL".into()],
        cap_add: if unprivileged {
            vec![]
        } else {
            crate::hardening::names(crate::hardening::SIDECAR_CAP_ADD_FALLBACK)
        },
        sysctls: if unprivileged {
            crate::hardening::SIDECAR_SYSCTLS
                .iter()
                .map(|(k, v, _)| (k.to_string(), v.to_string()))
                .collect()
        } else {
            Default::default()
        },
        user: if unprivileged {
            Some(state_owner(state)?)
        } else {
            None
        },
        no_new_privileges: true,
        read_only_rootfs: true,
        tmpfs: vec!["/tmp".into()],
        // Bounds on what the agent can make the sidecar spend (the git
        // gate runs git for it): its processes and memory, not the host's.
        memory_bytes: Some(SIDECAR_MEMORY),
        pids_limit: Some(SIDECAR_PIDS),
        mounts: sidecar_mounts,
        healthcheck: Some(vec!["bottle-sidecar".into(), "health".into()]),
        hostname: Some("sidecar".into()),
        ..Default::default()
    };
    // The agent's container, for the sidecar at `sidecar_internal_ip`: its
    // planted mount points and the files of its read-only dir are written
    // here. Where addresses are fixed (docker) it is created (not started)
    // while the sidecar starts; elsewhere once the sidecar has its address.
    let prepare_agent =
        |sidecar_internal_ip: Ipv4Addr| -> Result<(ContainerSpec, String), LifecycleError> {
            mounts_unmoved(plan)?;
            let made = crate::mounts::plant(&plan.agent.plant)?;
            if !made.is_empty() {
                // `down` removes them again (while still empty).
                let json = serde_json::to_vec(&made).unwrap_or_default();
                crate::state::write_private(&state.root().join(PLANTED), &json)?;
            }
            let mut env = plan.agent.resolved_env.0.clone();
            if images.provider.is_some() && !env.contains_key("HOME") {
                // A provider image has the CLI's home for its own user; an agent run
                // as a mount owner's uid gets a fresh one, made for that uid once
                // the container is up (nothing in it but what the CLI writes).
                let home = if plan.agent.user.is_some() {
                    OWNER_HOME
                } else {
                    PROVIDER_HOME
                };
                env.insert("HOME".into(), home.into());
            } else if plan.agent.user.is_some() && !env.contains_key("HOME") {
                // The agent runs as the mount owner's uid, which has no home in the
                // image; a writable one keeps tools that write dotfiles working.
                env.insert("HOME".into(), "/tmp".into());
            }
            env.extend(rendered.placeholders.clone());
            env.extend(Plan::proxy_env(&sidecar_internal_ip.to_string()));
            // The agent's system git config: upstream URLs to the gate. Written now,
            // when the sidecar's address is known, into the read-only agent dir.
            let gitconfig = state.agent_dir().join(crate::gitconfig::FILE);
            let identity = crate::gitconfig::host_identity();
            if git || identity.is_some() {
                crate::state::write_public(
                    &gitconfig,
                    crate::gitconfig::render(
                        &sidecar_internal_ip.to_string(),
                        &plan.policy.git.remotes,
                        identity.as_ref(),
                    )
                    .as_bytes(),
                )?;
                env.insert(
                    "GIT_CONFIG_SYSTEM".into(),
                    format!("{AGENT_CA_DIR}/{}", crate::gitconfig::FILE),
                );
            } else {
                let _ = std::fs::remove_file(&gitconfig);
            }
            // Where MCP clients find supervise: a generic config in the read-only
            // agent dir, and BOTTLE_MCP_URL.
            let mcp_file = state.agent_dir().join(MCP_FILE);
            let mcp_url = format!("http://{sidecar_internal_ip}:{SUPERVISE_PORT}/mcp");
            if supervise {
                crate::state::write_public(&mcp_file, mcp_config(&mcp_url).as_bytes())?;
                env.insert("BOTTLE_MCP_URL".into(), mcp_url.clone());
                env.insert(
                    "BOTTLE_MCP_CONFIG".into(),
                    format!("{AGENT_CA_DIR}/{MCP_FILE}"),
                );
            } else {
                let _ = std::fs::remove_file(&mcp_file);
            }
            env.insert("BOTTLE_NAME".into(), plan.name.clone());
            let agent_spec = ContainerSpec {
                name: plan.agent_name.clone(),
                image: images.agent.clone(),
                command: plan.agent.command.clone(),
                env,
                labels: plan.labels(bottle_runtimes::Role::Agent),
                networks: vec![NetworkAttachment {
                    network: internal.id.clone(),
                    ipv4: agent_ip,
                    aliases: vec![],
                }],
                dns: vec![IpAddr::V4(sidecar_internal_ip)],
                cap_drop: plan.agent.cap_drop.clone(),
                no_new_privileges: true,
                mounts: plan
                    .agent
                    .mounts
                    .iter()
                    .cloned()
                    .chain([Mount {
                        source: state.agent_dir(),
                        target: AGENT_CA_DIR.into(),
                        read_only: true,
                    }])
                    .collect(),
                workdir: Some(plan.agent.workdir.clone()),
                user: plan.agent.user.clone(),
                cpus: plan.agent.cpus,
                memory_bytes: plan.agent.memory_bytes,
                pids_limit: plan.agent.pids.and_then(|p| i64::try_from(p).ok()),
                hostname: Some(plan.name.clone()),
                ..Default::default()
            };
            Ok((agent_spec, mcp_url))
        };
    let early_agent = match sidecar_ip {
        Some(ip) => Some(prepare_agent(ip)?),
        None => None,
    };
    // The sidecar starts while the internal network is checked and closed:
    // the agent, the only party those checks protect from, starts after
    // both. Every outcome is read once both came back.
    let ready_file = state.logs_dir().join(READY_FILE);
    let _ = std::fs::remove_file(&ready_file);
    report.step("checking the internal network and closing its bridge to broadcast");
    let sidecar_up = async {
        let sidecar_id = rt.create_container(&sidecar_spec).await?;
        halt(interrupt)?;
        rt.start_container(&sidecar_id).await?;
        halt(interrupt)?;
        wait_sidecar_ready(
            rt,
            &sidecar_id,
            &ready_file,
            Duration::from_secs(30),
            interrupt,
        )
        .await?;
        Ok::<_, LifecycleError>(rt.inspect_container(&sidecar_id).await?)
    };
    let checks = rt.check_and_isolate(&internal, &images.sidecar);
    let agent_made = async {
        match &early_agent {
            Some((spec, _)) => Some(rt.create_container(spec).await),
            None => None,
        }
    };
    let ((host_addrs, isolated), sidecar, agent_made) =
        tokio::join!(checks, sidecar_up, agent_made);
    let agent_made = agent_made.transpose()?;
    halt(interrupt)?;
    let host_addrs: Vec<IpAddr> = host_addrs?.into_iter().filter(|a| a.is_ipv4()).collect();
    let host_ok = accepted.contains(&Weakness::HostReachableFromInternal);
    if !host_addrs.is_empty() && host_ok {
        report.detail(&format!(
            "WEAKNESS ACCEPTED: the host answers at {} on the internal network",
            host_addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    } else if !host_addrs.is_empty() {
        return Err(LifecycleError::HostAddress {
            fix: host_address_fix(rt.kind()),
            network: internal.name.clone(),
            bridge: internal.host_interface.clone().unwrap_or_default(),
            addrs: host_addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    if host_addrs.is_empty() {
        report
            .detail("no host address on it: the agent cannot reach the host through this network");
    }
    match isolated {
        Ok(set) => report.detail(&set),
        Err(_) if accepted.contains(&Weakness::BroadcastReachesHost) => report.detail(
            "WEAKNESS ACCEPTED: what the agent broadcasts may reach host sockets on 0.0.0.0",
        ),
        Err(e) => {
            let (detail, fix) = match e {
                RuntimeError::Capability { detail, fix, .. } => (detail, fix),
                other => (
                    other.to_string(),
                    "see `bottle probe`, or accept it knowingly with --accept-weakness broadcast-reaches-host".into(),
                ),
            };
            return Err(LifecycleError::Refused {
                runtime: rt.kind().to_string(),
                capability: "broadcast-isolated".into(),
                detail,
                fix,
            });
        }
    }
    let sidecar = sidecar?;
    let sidecar_internal_ip = sidecar.ipv4.get(&internal.name).copied().ok_or_else(|| {
        LifecycleError::NoSidecarAddress {
            network: internal.name.clone(),
        }
    })?;
    report.step(&format!("sidecar {} started", plan.sidecar_name));
    report.detail(&format!(
        "internal address {sidecar_internal_ip}, egress proxy ready"
    ));

    report.step(&format!("starting agent {}", plan.agent_name));
    let (agent_id, mcp_url) = match (agent_made, early_agent) {
        (Some(id), Some((_, mcp_url))) if sidecar_ip == Some(sidecar_internal_ip) => (id, mcp_url),
        (Some(_), _) => {
            // The engine gave the sidecar another address than the one
            // asked for: the agent made for it is removed with the rest.
            return Err(LifecycleError::NoSidecarAddress {
                network: internal.name.clone(),
            });
        }
        (None, _) => {
            let (spec, mcp_url) = prepare_agent(sidecar_internal_ip)?;
            (rt.create_container(&spec).await?, mcp_url)
        }
    };
    halt(interrupt)?;
    // Checked again just before the mounts are made.
    mounts_unmoved(plan)?;
    rt.start_container(&agent_id).await?;
    halt(interrupt)?;
    let agent = rt.inspect_container(&agent_id).await?;
    halt(interrupt)?;
    if agent.state != ContainerState::Running {
        return Err(LifecycleError::AgentNotRunning {
            name: plan.name.clone(),
            state: format!("{:?}, exit code {:?}", agent.state, agent.exit_code),
        });
    }
    if let (Some(_), Some(user)) = (&images.provider, &plan.agent.user) {
        // The agent runs as the mount owner's uid: its home is a fresh
        // directory it makes itself (the agent has no capability to chown,
        // and nothing is handed over: a mount below a home would carry an
        // ownership change to the host).
        let chown = ExecSpec {
            cmd: vec![
                "sh".into(),
                "-c".into(),
                format!("mkdir -p -m 700 {OWNER_HOME} && test -O {OWNER_HOME}"),
            ],
            ..Default::default()
        };
        let owned = rt.exec_capture(&agent_id, &chown).await;
        halt(interrupt)?;
        match owned {
            Ok(o) if o.code == 0 => report.detail(&format!("home {OWNER_HOME} made for {user}")),
            Ok(o) => {
                return Err(LifecycleError::Provision {
                    what: format!("making {OWNER_HOME} for {user}"),
                    why: o.stderr.trim().to_string(),
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Trust the bottle's CA in the stores toolchains read besides the CA
    // variables (best effort: an image without the tools still has the
    // variables): the system store and the JVM keystore as root, the agent
    // user's NSS database as that user (crate::trust). As that user too,
    // the agent CLIs' MCP configs, in its home (its own files, never the
    // host's): Claude Code's user config and Codex's, each only when
    // absent, so a config the image ships wins. The two execs run at once:
    // each touches its own files.
    let codex_base = images
        .provider
        .as_ref()
        .filter(|p| p.provider == "codex")
        .map(|_| {
            plan.agent
                .resolved_env
                .0
                .get("OPENAI_BASE_URL")
                .cloned()
                .unwrap_or_else(|| "https://api.openai.com/v1".into())
        });
    let mut user_script = format!("(\n{}\n)", crate::trust::with_ca(crate::trust::USER_SCRIPT));
    if supervise {
        user_script.push_str(&format!(
            "\necho {MCP_MARK}\n{}",
            agent_mcp_script(&mcp_url, codex_base.as_deref())
        ));
    }
    let as_root = ExecSpec {
        cmd: vec![
            "sh".into(),
            "-c".into(),
            crate::trust::with_ca(crate::trust::ROOT_SCRIPT),
        ],
        user: Some("0".into()),
        ..Default::default()
    };
    let as_agent = ExecSpec {
        cmd: vec!["sh".into(), "-c".into(), user_script],
        ..Default::default()
    };
    let (as_root, as_agent) = tokio::join!(
        rt.exec_capture(&agent_id, &as_root),
        rt.exec_capture(&agent_id, &as_agent)
    );
    halt(interrupt)?;
    let (agent_trust, provisioned) = match &as_agent {
        Ok(o) => match o.stdout.split_once(&format!("{MCP_MARK}\n")) {
            Some((trust, mcp)) => (trust, Some((o.code, mcp.trim()))),
            None => (o.stdout.as_str(), None),
        },
        Err(_) => ("", None),
    };
    let stores: Vec<String> = as_root
        .as_ref()
        .map(|o| o.stdout.as_str())
        .unwrap_or_default()
        .split_whitespace()
        .chain(agent_trust.split_whitespace())
        .map(str::to_string)
        .collect();
    report.detail(&trust_detail(&stores));
    if supervise {
        match provisioned {
            // Printed from the agent's container: printable ASCII only.
            Some((0, out)) => report.detail(&format!(
                "supervise at {mcp_url} (MCP): {}",
                out.chars()
                    .filter(|c| c.is_ascii_graphic() || *c == ' ')
                    .take(80)
                    .collect::<String>()
            )),
            _ => report.detail(&format!(
                "note: supervise at {mcp_url}; could not write the agent CLIs' MCP configs (BOTTLE_MCP_CONFIG names a generic one)"
            )),
        }
    }
    Ok(UpSummary {
        name: plan.name.clone(),
        runtime: rt.kind().to_string(),
        agent: (&agent).into(),
        sidecar: (&sidecar).into(),
        internal_network: internal,
        egress_network: egress,
        proxy: format!("http://{sidecar_internal_ip}:{}", crate::plan::PROXY_PORT),
        allow: plan
            .policy
            .egress
            .allow
            .iter()
            .map(|a| a.to_string())
            .collect(),
        git: plan
            .policy
            .git
            .remotes
            .iter()
            .map(|r| GitSummary {
                name: r.name.as_str().to_string(),
                gate: crate::gitconfig::gate_url(&sidecar_internal_ip.to_string(), r),
                upstream: r.upstream.to_string(),
                mode: r.mode.as_str().to_string(),
            })
            .collect(),
        state_dir: state.root().display().to_string(),
        agent_user: plan.agent.user.clone(),
        limits: Limits {
            cpus: plan.agent.cpus,
            memory_bytes: plan.agent.memory_bytes,
            pids: plan.agent.pids,
            sidecar: plan.policy.limits,
        },
    })
}

/// The mount sources were resolved when the plan was made; one replaced by
/// a symlink since then is not what was pinned and shown.
fn mounts_unmoved(plan: &Plan) -> Result<(), LifecycleError> {
    for m in &plan.agent.mounts {
        if let Ok(now) = std::fs::canonicalize(&m.source) {
            if now != m.source {
                return Err(LifecycleError::MountMoved {
                    was: m.source.clone(),
                    now,
                });
            }
        }
    }
    Ok(())
}

/// Sidecar at `.2`, agent at `.3` of the internal /24 (`.1` is the gateway the
/// IPAM reserves even though the host holds no address there).
fn fixed_addresses(net: &NetworkInfo) -> (Option<Ipv4Addr>, Option<Ipv4Addr>) {
    let base = net
        .subnet
        .as_deref()
        .and_then(|s| s.split('/').next())
        .and_then(|a| a.parse::<Ipv4Addr>().ok());
    match base {
        Some(b) => {
            let o = b.octets();
            (
                Some(Ipv4Addr::new(o[0], o[1], o[2], 2)),
                Some(Ipv4Addr::new(o[0], o[1], o[2], 3)),
            )
        }
        None => (None, None),
    }
}

async fn wait_sidecar_ready(
    rt: &dyn Runtime,
    id: &str,
    ready_file: &std::path::Path,
    limit: Duration,
    interrupt: &Interrupt,
) -> Result<(), LifecycleError> {
    // The sidecar records its proxy address in its log dir (the host's,
    // never the agent's) once every listener is bound: watched often and
    // cheaply. The engine is asked every half second whether it is still
    // running, and `health` run in it, for runtimes whose mounts show
    // the file late.
    let start = Instant::now();
    let check = ExecSpec {
        cmd: vec!["bottle-sidecar".into(), "health".into()],
        ..Default::default()
    };
    let mut next_ask = start + Duration::from_millis(500);
    loop {
        if std::fs::read_to_string(ready_file).is_ok_and(|t| !t.trim().is_empty()) {
            return Ok(());
        }
        let now = Instant::now();
        if now >= next_ask || now.duration_since(start) >= limit {
            next_ask = now + Duration::from_millis(500);
            let info = rt.inspect_container(id).await?;
            if info.state == ContainerState::Running {
                if let Ok(out) = rt.exec_capture(id, &check).await {
                    if out.code == 0 {
                        return Ok(());
                    }
                }
            }
            if info.state == ContainerState::Exited || start.elapsed() >= limit {
                let mut logs = Vec::new();
                let _ = rt.logs(id, false, Some(20), &mut logs).await;
                return Err(LifecycleError::SidecarNotReady {
                    secs: start.elapsed().as_secs(),
                    logs: String::from_utf8_lossy(&logs).into_owned(),
                });
            }
        }
        halt(interrupt)?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Re-renders the sidecar's files from `plan` for a running bottle. The
/// sidecar notices the new policy by itself (no restart, connections in
/// flight continue); this waits until it reports the reload.
pub async fn reload(
    rt: &dyn Runtime,
    host: &Host,
    plan: &Plan,
    sidecar: &ContainerInfo,
) -> Result<String, LifecycleError> {
    let state = host.state.bottle(&plan.name);
    let before: Option<bottle_policy::Policy> = std::fs::read_to_string(state.policy_path())
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    // The sidecar's events, parsed: a host name or path the agent chose
    // can appear inside a line, but never as a line's `event`.
    let events = |logs: &[u8], event: &str| -> Vec<serde_json::Value> {
        String::from_utf8_lossy(logs)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["service"] == "sidecar" && v["event"] == event)
            .collect()
    };
    let count = |logs: &[u8], event: &str| events(logs, event).len();
    // The first new failure (the sidecar keeps its previous file then).
    let failure = |logs: &[u8], before: usize| {
        events(logs, "policy-reload-failed")
            .get(before)
            .map(|v| v["error"].as_str().unwrap_or("no reason given").to_string())
    };
    let mut logs = Vec::new();
    rt.logs(&sidecar.id, false, None, &mut logs).await?;
    let seen = count(&logs, "policy-reloaded");
    let failed = count(&logs, "policy-reload-failed");
    crate::materials::render(&state, plan, credentials(host, plan)?)?;
    let accepted = recorded(&state)
        .map(|r| r.accepted_weaknesses)
        .unwrap_or_default();
    record(&state, plan, &accepted)?;
    let start = Instant::now();
    let mut reloaded_at = None;
    loop {
        let mut logs = Vec::new();
        rt.logs(&sidecar.id, false, None, &mut logs).await?;
        if let Some(error) = failure(&logs, failed) {
            return Err(LifecycleError::ReloadRefused {
                name: plan.name.clone(),
                error,
            });
        }
        // Policy and secrets are reloaded one after the other: after the
        // first success, look once more for a failure of the other.
        match reloaded_at {
            Some(at) if Instant::now() >= at => break,
            None if count(&logs, "policy-reloaded") > seen => {
                reloaded_at = Some(Instant::now() + Duration::from_millis(500));
            }
            _ => {}
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(LifecycleError::ReloadNotSeen {
                name: plan.name.clone(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let allow = |p: Option<&bottle_policy::Policy>| -> Vec<String> {
        p.map(|p| p.egress.allow.iter().map(|a| a.to_string()).collect())
            .unwrap_or_default()
    };
    let (old, new) = (allow(before.as_ref()), allow(Some(&plan.policy)));
    let added: Vec<_> = new.iter().filter(|a| !old.contains(a)).cloned().collect();
    let removed: Vec<_> = old.iter().filter(|a| !new.contains(a)).cloned().collect();
    Ok(format!(
        "bottle `{}`: policy reloaded by the sidecar (no restart); allow +[{}] -[{}]",
        plan.name,
        added.join(", "),
        removed.join(", ")
    ))
}

/// The state file listing the empty `.git` directories `up` made.
const PLANTED: &str = "planted.json";

/// Removes every container, then every network, carrying the bottle's name
/// label, then the empty `.git` directories `up` planted in its mounts.
/// Idempotent: returns what it removed (nothing the second time).
pub async fn down(
    rt: &dyn Runtime,
    root: &StateRoot,
    name: &str,
    report: &mut Reporter,
) -> Result<Vec<ResourceRef>, RuntimeError> {
    let mut left = Vec::new();
    match remove_all(rt, root, name, None, report, &mut left).await {
        Ok(found) => Ok(found),
        Err(Stop::Failed(e)) => Err(e),
        Err(Stop::Interrupted) => unreachable!("no interrupt was given"),
    }
}

/// [`down`], stopping at the second interrupt when `stop` is given; `left`
/// holds the names not yet removed when it stops.
async fn remove_all(
    rt: &dyn Runtime,
    root: &StateRoot,
    name: &str,
    stop: StopAt<'_>,
    report: &mut Reporter,
    left: &mut Vec<String>,
) -> Result<Vec<ResourceRef>, Stop> {
    // The containers at once, then the networks. An agent whose sidecar
    // went first is alone on its internal network for a moment: no egress,
    // nothing to reach (it holds no capability to change its address).
    let rank = |r: &ResourceRef| u8::from(r.kind == ResourceKind::Network);
    let mut found: Vec<ResourceRef> = Vec::new();
    // Listed again once what was found is gone: an `up` killed while the
    // engine had creates of it in flight (they run at once) leaves
    // resources that appear only after the first listing.
    for _ in 0..2 {
        let mut batch = step(stop, resources_of(rt, name)).await?;
        if batch.is_empty() {
            break;
        }
        batch.sort_by_key(rank);
        remove_each(rt, &batch, rank, stop, left, |r| {
            report.detail(&format!(
                "removed {} {}",
                match r.kind {
                    ResourceKind::Container => "container",
                    ResourceKind::Network => "network",
                },
                r.name
            ))
        })
        .await?;
        found.extend(batch);
    }
    let list = root.bottle(name).root().join(PLANTED);
    if let Ok(text) = std::fs::read(&list) {
        let made: Vec<std::path::PathBuf> = serde_json::from_slice(&text).unwrap_or_default();
        crate::mounts::unplant(&made);
        let _ = std::fs::remove_file(&list);
    }
    Ok(found)
}

/// The bottle's container in `role`, which must exist.
pub async fn find_container(
    rt: &dyn Runtime,
    name: &str,
    role: bottle_runtimes::Role,
) -> Result<ContainerInfo, LifecycleError> {
    let found = rt.list(&labels_for(name, role)).await?;
    let Some(c) = found.iter().find(|r| r.kind == ResourceKind::Container) else {
        return Err(LifecycleError::NoBottle { name: name.into() });
    };
    Ok(rt.inspect_container(&c.id).await?)
}

/// One bottle as `ps` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BottleStatus {
    pub name: String,
    pub runtime: String,
    pub agent: String,
    pub sidecar: String,
    pub sidecar_health: String,
    pub agent_ip: Option<Ipv4Addr>,
    pub sidecar_ip: Option<Ipv4Addr>,
    pub networks: Vec<String>,
    /// Weaknesses accepted at `up` (`--accept-weakness`).
    pub accepted_weaknesses: Vec<Weakness>,
    /// The agent session `bottle run` started, when it did.
    pub session: Option<crate::run::Session>,
    /// How to return to a kept session (`bottle resume NAME`).
    pub resume: Option<String>,
}

/// Every bottle the runtime holds, found by label.
pub async fn ps(rt: &dyn Runtime, root: &StateRoot) -> Result<Vec<BottleStatus>, RuntimeError> {
    let all = rt
        .list(&BTreeMap::from([(LABEL_NAME.to_string(), String::new())]))
        .await?;
    let mut by_name: BTreeMap<String, BottleStatus> = BTreeMap::new();
    for r in &all {
        let Some(name) = r.labels.get(LABEL_NAME) else {
            continue;
        };
        let entry = by_name.entry(name.clone()).or_insert_with(|| BottleStatus {
            name: name.clone(),
            runtime: rt.kind().to_string(),
            agent: "missing".into(),
            sidecar: "missing".into(),
            sidecar_health: "-".into(),
            agent_ip: None,
            sidecar_ip: None,
            networks: vec![],
            accepted_weaknesses: recorded(&root.bottle(name))
                .map(|r| r.accepted_weaknesses)
                .unwrap_or_default(),
            session: crate::run::load(&root.bottle(name)),
            resume: crate::run::load(&root.bottle(name)).and_then(|s| s.resume_hint(name)),
        });
        let internal = Plan::resource_name(name, Role::Internal);
        match (r.kind, Role::of(&r.labels)) {
            (ResourceKind::Network, _) => entry.networks.push(r.name.clone()),
            (ResourceKind::Container, Some(role @ (Role::Agent | Role::Sidecar))) => {
                let info = rt.inspect_container(&r.id).await.ok();
                let state = info
                    .as_ref()
                    .map(|i| format!("{:?}", i.state).to_lowercase())
                    .unwrap_or_else(|| "gone".into());
                let ip = info.as_ref().and_then(|i| i.ipv4.get(&internal).copied());
                if role == Role::Agent {
                    entry.agent = state;
                    entry.agent_ip = ip;
                } else {
                    entry.sidecar = state;
                    entry.sidecar_ip = ip;
                    entry.sidecar_health = info.map(|i| i.health).unwrap_or_else(|| "-".into());
                }
            }
            _ => {}
        }
    }
    Ok(by_name.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_detail_names_the_stores_and_the_failures() {
        let w = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            trust_detail(&w(&["system", "jvm", "nss"])),
            "bottle CA trusted in the system store, the JVM keystore, the agent user's NSS database, and by the CA variables"
        );
        let d = trust_detail(&w(&["system", "nss-failed"]));
        assert!(
            d.ends_with("could not add it to the agent user's NSS database"),
            "{d}"
        );
        assert!(trust_detail(&[]).starts_with("note: the bottle CA is in no store"));
    }

    /// The CLIs' configs as the real `sh` writes them into a home.
    #[test]
    fn the_agent_cli_configs_are_written_once() {
        let home = tempfile::tempdir().unwrap();
        let script = agent_mcp_script(
            "http://10.0.0.2:8765/mcp",
            Some("https://models.lan:8443/v1"),
        );
        let run = || {
            #[allow(
                clippy::disallowed_methods,
                reason = "the test runs the script in a temp home"
            )]
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .env("HOME", home.path())
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        assert_eq!(run(), "configured for: claude codex");
        let codex: toml::Table = toml::from_str(
            &std::fs::read_to_string(home.path().join(".codex/config.toml")).unwrap(),
        )
        .unwrap();
        assert_eq!(codex["model_provider"].as_str(), Some("bottle"));
        assert_eq!(
            codex["model_providers"]["bottle"]["base_url"].as_str(),
            Some("https://models.lan:8443/v1")
        );
        assert_eq!(
            codex["mcp_servers"]["bottle"]["url"].as_str(),
            Some("http://10.0.0.2:8765/mcp")
        );
        let claude: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(home.path().join(".claude.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            claude["mcpServers"]["bottle"]["url"],
            "http://10.0.0.2:8765/mcp"
        );
        assert_eq!(run(), "configured for: nothing new");
    }

    /// Only `always` grants the pin holds outlive the bottle: one planted in
    /// grants.json, or a session one, does not.
    #[test]
    fn only_pinned_always_grants_survive_up() {
        let grant = |host: &str, scope: &str| -> bottle_policy::Grant {
            serde_json::from_value(serde_json::json!({
                "id": "abcdefgh23", "host": host, "scope": scope, "granted": 1
            }))
            .unwrap()
        };
        let mut grants = bottle_policy::Grants {
            grants: vec![
                grant("kept.example", "always"),
                grant("planted.example", "always"),
                grant("session.example", "session"),
            ],
            git: vec![serde_json::from_value(serde_json::json!({
                "id": "abcdefgh24", "remote": "app", "refname": "refs/heads/main",
                "scope": "always", "granted": 1
            }))
            .unwrap()],
        };
        let pinned = vec![
            bottle_policy::AllowRule::parse("kept.example").unwrap(),
            bottle_policy::AllowRule::parse("session.example").unwrap(),
        ];
        keep_pinned_grants(&mut grants, &pinned);
        let hosts: Vec<&str> = grants.grants.iter().map(|g| g.host.as_str()).collect();
        assert_eq!(hosts, ["kept.example"]);
        assert!(grants.git.is_empty(), "approved pushes last one run");
    }
}
