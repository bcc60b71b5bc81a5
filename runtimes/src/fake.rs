//! An in-process [`Runtime`] for the orchestrator's unit tests (feature
//! `test-util`): it keeps networks and containers in memory, records every
//! call in order, and can fail, or stop and run a hook, at the N-th call.
//!
//! It models what the orchestrator relies on and nothing more: labels and
//! `list`, addresses of a /24 per internal network, containers that run when
//! started, `bottle-sidecar health` answering 0. It never stands in for a
//! real engine in a test of isolation: those run against the engine.

use crate::{
    Arch, BuildSpec, Capability, CapabilityState, ContainerInfo, ContainerSpec, ContainerState,
    ExecOutput, ExecSpec, NetworkInfo, NetworkKind, NetworkSpec, Probe, Progress, ResourceKind,
    ResourceRef, Runtime, RuntimeError, RuntimeKind,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};

/// One call the orchestrator made, with the name or id it named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Probe,
    Architecture,
    ImageExists(String),
    PruneImages(String),
    BuildImage(String),
    CreateNetwork(String),
    RemoveNetwork(String),
    HostAddressesOn(String),
    IsolateHostFrom(String),
    HostTargets,
    CreateContainer(String),
    StartContainer(String),
    RemoveContainer(String),
    InspectContainer(String),
    ExecAttached(String),
    ExecCapture(String, Vec<String>),
    Logs(String),
    List,
}

/// A hook run when the call with its index is made.
type Hook = Arc<dyn Fn() + Send + Sync>;

struct Net {
    info: NetworkInfo,
    labels: BTreeMap<String, String>,
}

struct Container {
    spec: ContainerSpec,
    info: ContainerInfo,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    networks: BTreeMap<String, Net>,
    containers: BTreeMap<String, Container>,
    images: BTreeSet<String>,
    next: u32,
    fail_at: Option<usize>,
    hooks: BTreeMap<usize, (Hook, bool)>,
    log: String,
}

/// The fake runtime. Cheap to clone: clones share one state, so a test can
/// keep a handle while the orchestrator owns a `Box<dyn Runtime>`.
#[derive(Clone)]
pub struct FakeRuntime {
    kind: RuntimeKind,
    state: Arc<Mutex<State>>,
    probe: Arc<Mutex<Probe>>,
    host_addresses: Arc<Mutex<Vec<IpAddr>>>,
    isolates: bool,
    assigns_at_start: bool,
    arch: Arch,
}

impl FakeRuntime {
    /// A runtime of `kind` that has every capability and every image.
    pub fn new(kind: RuntimeKind) -> Self {
        FakeRuntime {
            kind,
            state: Arc::default(),
            probe: Arc::new(Mutex::new(Probe {
                runtime: kind,
                endpoint: "fake".into(),
                present: true,
                running: true,
                version: Some("0.0.0-fake".into()),
                capabilities: vec![Capability::new(
                    "internal-network",
                    CapabilityState::Yes,
                    "measured",
                    true,
                    "fake".into(),
                )],
            })),
            host_addresses: Arc::default(),
            isolates: true,
            assigns_at_start: false,
            arch: Arch::X86_64,
        }
    }

    /// Images that exist from the start (none: every image is built).
    pub fn with_images(self, images: &[&str]) -> Self {
        self.lock()
            .images
            .extend(images.iter().map(|i| i.to_string()));
        self
    }

    /// The probe returns these capabilities.
    pub fn with_capabilities(self, caps: Vec<Capability>) -> Self {
        self.probe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .capabilities = caps;
        self
    }

    /// The host holds `addrs` on every internal network.
    pub fn with_host_addresses(self, addrs: Vec<IpAddr>) -> Self {
        *self
            .host_addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = addrs;
        self
    }

    /// `isolate_host_from` fails as a runtime without the capability does.
    pub fn without_broadcast_isolation(mut self) -> Self {
        self.isolates = false;
        self
    }

    /// Containers run on `arch` (x86_64 unless set).
    pub fn with_architecture(mut self, arch: Arch) -> Self {
        self.arch = arch;
        self
    }

    /// Addresses are leased at start (Apple `container`, smolvm).
    pub fn assigning_addresses_at_start(mut self) -> Self {
        self.assigns_at_start = true;
        self
    }

    /// The `n`-th call (counting from 1, every method of [`Runtime`]) fails
    /// with [`RuntimeError::Call`]; later calls succeed again.
    pub fn fail_at(&self, n: usize) {
        self.lock().fail_at = Some(n);
    }

    /// At the `n`-th call run `hook`; with `hang`, that call then never
    /// returns (a slow step the user interrupts).
    pub fn on_call(&self, n: usize, hang: bool, hook: impl Fn() + Send + Sync + 'static) {
        self.lock().hooks.insert(n, (Arc::new(hook), hang));
    }

    /// Adds a line to what `logs` returns for every container.
    pub fn append_log(&self, line: &str) {
        let mut s = self.lock();
        s.log.push_str(line);
        s.log.push('\n');
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Names of the networks and containers that exist now.
    pub fn resources(&self) -> Vec<String> {
        let s = self.lock();
        s.networks
            .values()
            .map(|n| n.info.name.clone())
            .chain(s.containers.values().map(|c| c.info.name.clone()))
            .collect()
    }

    /// The spec a container named `name` was created from.
    pub fn spec_of(&self, name: &str) -> Option<ContainerSpec> {
        self.lock()
            .containers
            .values()
            .find(|c| c.spec.name == name)
            .map(|c| c.spec.clone())
    }

    /// Creates a resource behind the orchestrator's back (a leftover of an
    /// earlier run, another process's probe).
    pub fn plant_network(&self, name: &str, labels: BTreeMap<String, String>) {
        let mut s = self.lock();
        let id = s.id("net");
        s.networks.insert(
            id.clone(),
            Net {
                info: NetworkInfo {
                    id,
                    name: name.into(),
                    kind: NetworkKind::Internal,
                    subnet: None,
                    host_interface: None,
                },
                labels,
            },
        );
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `call`; fails or runs a hook when its number comes up.
    async fn enter(&self, call: Call) -> Result<(), RuntimeError> {
        let (n, fail, hook) = {
            let mut s = self.lock();
            s.calls.push(call.clone());
            let n = s.calls.len();
            let fail = s.fail_at == Some(n);
            (n, fail, s.hooks.get(&n).cloned())
        };
        if let Some((hook, hang)) = hook {
            hook();
            if hang {
                std::future::pending::<()>().await;
            }
        }
        if fail {
            return Err(RuntimeError::Call {
                runtime: self.kind,
                operation: format!("{call:?}"),
                message: format!("injected failure at call {n}"),
            });
        }
        Ok(())
    }

    fn not_found(what: &str) -> RuntimeError {
        RuntimeError::NotFound { what: what.into() }
    }
}

impl State {
    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{:04}", self.next)
    }

    fn network(&self, id_or_name: &str) -> Option<&Net> {
        self.networks
            .get(id_or_name)
            .or_else(|| self.networks.values().find(|n| n.info.name == id_or_name))
    }
}

fn matches(have: &BTreeMap<String, String>, want: &BTreeMap<String, String>) -> bool {
    want.iter()
        .all(|(k, v)| have.get(k).is_some_and(|h| v.is_empty() || h == v))
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn kind(&self) -> RuntimeKind {
        self.kind
    }

    async fn probe(&self, _helper_image: Option<&str>) -> Probe {
        if self.enter(Call::Probe).await.is_err() {
            return Probe::absent(self.kind, "fake".into(), "injected failure".into());
        }
        self.probe.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn architecture(&self) -> Result<Arch, RuntimeError> {
        self.enter(Call::Architecture).await?;
        Ok(self.arch)
    }

    async fn image_exists(&self, image: &str) -> Result<bool, RuntimeError> {
        self.enter(Call::ImageExists(image.into())).await?;
        Ok(self.lock().images.contains(image))
    }

    async fn prune_images(&self, repo: &str, _keep: &str) -> Result<usize, RuntimeError> {
        self.enter(Call::PruneImages(repo.into())).await?;
        Ok(0)
    }

    async fn build_image(
        &self,
        spec: &BuildSpec,
        progress: Progress<'_>,
    ) -> Result<(), RuntimeError> {
        self.enter(Call::BuildImage(spec.tag.clone())).await?;
        progress(&format!("fake build of {}", spec.tag));
        self.lock().images.insert(spec.tag.clone());
        Ok(())
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<NetworkInfo, RuntimeError> {
        self.enter(Call::CreateNetwork(spec.name.clone())).await?;
        let mut s = self.lock();
        if s.network(&spec.name).is_some() {
            return Err(RuntimeError::Call {
                runtime: self.kind,
                operation: format!("create network {}", spec.name),
                message: "a network with that name exists".into(),
            });
        }
        let id = s.id("net");
        let third = (s.next % 250) as u8;
        let info = NetworkInfo {
            id: id.clone(),
            name: spec.name.clone(),
            kind: spec.kind,
            subnet: Some(format!("10.99.{third}.0/24")),
            host_interface: Some(format!("br-{id}")),
        };
        s.networks.insert(
            id,
            Net {
                info: info.clone(),
                labels: spec.labels.clone(),
            },
        );
        Ok(info)
    }

    async fn remove_network(&self, id: &str) -> Result<(), RuntimeError> {
        self.enter(Call::RemoveNetwork(id.into())).await?;
        let mut s = self.lock();
        let in_use = s.containers.values().any(|c| {
            c.spec.networks.iter().any(|a| a.network == id)
                && c.info.state == ContainerState::Running
        });
        if in_use {
            return Err(RuntimeError::Call {
                runtime: self.kind,
                operation: format!("remove network {id}"),
                message: "network has active endpoints".into(),
            });
        }
        s.networks.remove(id);
        Ok(())
    }

    async fn host_addresses_on(
        &self,
        network: &NetworkInfo,
        _helper_image: &str,
    ) -> Result<Vec<IpAddr>, RuntimeError> {
        self.enter(Call::HostAddressesOn(network.name.clone()))
            .await?;
        Ok(self
            .host_addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone())
    }

    async fn isolate_host_from(
        &self,
        network: &NetworkInfo,
        _helper_image: &str,
    ) -> Result<String, RuntimeError> {
        self.enter(Call::IsolateHostFrom(network.name.clone()))
            .await?;
        if self.isolates {
            Ok(format!("rp_filter=1 on {}", network.name))
        } else {
            Err(RuntimeError::Capability {
                runtime: self.kind,
                capability: "broadcast-isolated".into(),
                detail: "the fake cannot".into(),
                fix: "accept it knowingly with --accept-weakness broadcast-reaches-host".into(),
            })
        }
    }

    async fn host_targets(&self, _helper_image: &str) -> Result<Vec<IpAddr>, RuntimeError> {
        self.enter(Call::HostTargets).await?;
        Ok(vec![])
    }

    fn assigns_addresses_at_start(&self) -> bool {
        self.assigns_at_start
    }

    fn supports_sysctls(&self) -> bool {
        true
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.enter(Call::CreateContainer(spec.name.clone())).await?;
        let mut s = self.lock();
        if s.containers.values().any(|c| c.spec.name == spec.name) {
            return Err(RuntimeError::Call {
                runtime: self.kind,
                operation: format!("create container {}", spec.name),
                message: "the name is in use".into(),
            });
        }
        if !s.images.contains(&spec.image) {
            return Err(Self::not_found(&format!("image {}", spec.image)));
        }
        let mut ipv4 = BTreeMap::new();
        for a in &spec.networks {
            let Some(net) = s.network(&a.network) else {
                return Err(Self::not_found(&format!("network {}", a.network)));
            };
            let ip = a.ipv4.or_else(|| {
                let base: Ipv4Addr = net
                    .info
                    .subnet
                    .as_deref()?
                    .split('/')
                    .next()?
                    .parse()
                    .ok()?;
                let o = base.octets();
                Some(Ipv4Addr::new(o[0], o[1], o[2], 10 + ipv4.len() as u8))
            });
            if let Some(ip) = ip {
                ipv4.insert(net.info.name.clone(), ip);
            }
        }
        let id = s.id("ctr");
        let info = ContainerInfo {
            id: id.clone(),
            name: spec.name.clone(),
            image: spec.image.clone(),
            state: ContainerState::Created,
            health: "starting".into(),
            labels: spec.labels.clone(),
            ipv4,
            exit_code: None,
            security: None,
        };
        s.containers.insert(
            id.clone(),
            Container {
                spec: spec.clone(),
                info,
            },
        );
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.enter(Call::StartContainer(id.into())).await?;
        let mut s = self.lock();
        let c = s
            .containers
            .get_mut(id)
            .ok_or_else(|| Self::not_found(id))?;
        c.info.state = ContainerState::Running;
        c.info.health = "healthy".into();
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.enter(Call::RemoveContainer(id.into())).await?;
        self.lock().containers.remove(id);
        Ok(())
    }

    async fn inspect_container(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        self.enter(Call::InspectContainer(id.into())).await?;
        self.lock()
            .containers
            .get(id)
            .map(|c| c.info.clone())
            .ok_or_else(|| Self::not_found(id))
    }

    async fn exec_attached(&self, id: &str, _spec: &ExecSpec) -> Result<i64, RuntimeError> {
        self.enter(Call::ExecAttached(id.into())).await?;
        Ok(0)
    }

    async fn exec_capture(&self, id: &str, spec: &ExecSpec) -> Result<ExecOutput, RuntimeError> {
        self.enter(Call::ExecCapture(id.into(), spec.cmd.clone()))
            .await?;
        let running = self
            .lock()
            .containers
            .get(id)
            .is_some_and(|c| c.info.state == ContainerState::Running);
        Ok(ExecOutput {
            code: if running { 0 } else { 1 },
            stdout: String::new(),
            stderr: String::new(),
        })
    }

    async fn logs(
        &self,
        id: &str,
        _follow: bool,
        _tail: Option<usize>,
        out: &mut (dyn Write + Send),
    ) -> Result<(), RuntimeError> {
        self.enter(Call::Logs(id.into())).await?;
        let log = self.lock().log.clone();
        let _ = write!(out, "fake log of {id}\n{log}");
        Ok(())
    }

    async fn list(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ResourceRef>, RuntimeError> {
        self.enter(Call::List).await?;
        let s = self.lock();
        let nets = s
            .networks
            .values()
            .filter(|n| matches(&n.labels, labels))
            .map(|n| ResourceRef {
                kind: ResourceKind::Network,
                id: n.info.id.clone(),
                name: n.info.name.clone(),
                labels: n.labels.clone(),
                state: None,
            });
        let ctrs = s
            .containers
            .values()
            .filter(|c| matches(&c.info.labels, labels))
            .map(|c| ResourceRef {
                kind: ResourceKind::Container,
                id: c.info.id.clone(),
                name: c.info.name.clone(),
                labels: c.info.labels.clone(),
                state: Some(c.info.state),
            });
        Ok(ctrs.chain(nets).collect())
    }
}
