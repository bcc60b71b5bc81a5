//! `bottle up` and `down` on the in-process fake runtime: the order of
//! creation and removal, rollback after a failure or an interrupt at every
//! step, the host-address and broadcast refusals, consent and pinning, and
//! `--dry-run` under `auto`. Fast: no engine, no image, no network.
//!
//! The isolation these steps buy is tested against the real engine in the
//! `tests` crate; here only the orchestration is.

use bottle::exit::{Classify, Exit};
use bottle::host::Host;
use bottle::interrupt::Interrupt;
use bottle::lifecycle::{self, LifecycleError};
use bottle::mounts::Grants;
use bottle::report::Reporter;
use bottle::runtime_select::Connect;
use bottle::up::{self, Prepared, Request, RuntimeRequest, UpError};
use bottle_runtimes::fake::{Call, FakeRuntime};
use bottle_runtimes::{Arch, Capability, Runtime, RuntimeError, RuntimeKind, Weakness, LABEL_ROLE};
use std::collections::BTreeMap;
use std::path::PathBuf;

mod common;

/// A scratch machine: state root, a home, a project directory, a file
/// standing in for the sidecar binary.
struct Machine {
    _dir: tempfile::TempDir,
    host: Host,
    project: PathBuf,
}

impl Machine {
    fn new() -> Machine {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let project = root.join("project");
        std::fs::create_dir_all(&project).unwrap();
        let bin = root.join("bottle-sidecar");
        std::fs::write(&bin, common::static_sidecar(Arch::X86_64, b"a sidecar")).unwrap();
        let host = Host::fixed(
            root.join("state"),
            vec![root.join("home")],
            BTreeMap::from([
                ("BOTTLE_SIDECAR_BIN".to_string(), bin.display().to_string()),
                ("BOTTLE_BASE_IMAGE".to_string(), "base:test".to_string()),
                ("MODEL_KEY".to_string(), "sk-test-secret".to_string()),
            ]),
        );
        Machine {
            _dir: dir,
            host,
            project,
        }
    }

    /// Writes `bottle.toml` in the project.
    fn config(&self, text: &str) -> PathBuf {
        let p = self.project.join("bottle.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn request(&self, runtime: Option<RuntimeRequest>) -> Request {
        Request {
            file: None,
            cwd: self.project.clone(),
            name: None,
            runtime,
            accept_weakness: vec![],
            grants: Grants::default(),
            verify: false,
            reprobe: false,
            provider: None,
            image: None,
        }
    }
}

const CONFIG: &str = r#"
name = "t"
[egress]
allow = ["api.anthropic.com"]
"#;

/// Connects each kind to its fake, or reports it unavailable.
struct Fakes(BTreeMap<&'static str, FakeRuntime>);

#[async_trait::async_trait]
impl Connect for Fakes {
    async fn connect(&self, kind: RuntimeKind) -> Result<Box<dyn Runtime>, RuntimeError> {
        match self.0.get(kind.as_str()) {
            Some(f) => Ok(Box::new(f.clone())),
            None => Err(RuntimeError::Unavailable {
                runtime: kind,
                reason: "not on this machine".into(),
                fix: "install it".into(),
            }),
        }
    }
}

fn docker() -> (FakeRuntime, Fakes) {
    let fake = FakeRuntime::new(RuntimeKind::Docker);
    (fake.clone(), Fakes(BTreeMap::from([("docker", fake)])))
}

/// A machine with [`CONFIG`] and a fake docker.
fn on_docker() -> (Machine, FakeRuntime, Fakes) {
    let m = Machine::new();
    m.config(CONFIG);
    let (fake, fakes) = docker();
    (m, fake, fakes)
}

const ORDER: [RuntimeKind; 2] = [RuntimeKind::Docker, RuntimeKind::Smolvm];

async fn prepare(m: &Machine, fakes: &Fakes, i: &Interrupt) -> Result<Prepared, UpError> {
    prepare_req(
        m,
        &m.request(Some(RuntimeRequest::Named(RuntimeKind::Docker))),
        fakes,
        i,
    )
    .await
}

/// `prepare` of `req` on `fakes`, quietly.
async fn prepare_req(
    m: &Machine,
    req: &Request,
    fakes: &Fakes,
    i: &Interrupt,
) -> Result<Prepared, UpError> {
    up::prepare(&m.host, req, fakes, &ORDER, i, &mut Reporter::new(true)).await
}

async fn up_with(m: &Machine, fakes: &Fakes, i: &Interrupt) -> Result<up::Outcome, UpError> {
    let prepared = prepare(m, fakes, i).await?;
    up::execute(&m.host, prepared, i, &mut Reporter::new(true)).await
}

/// The calls of a clean `up` of [`CONFIG`], made on a twin machine: tests
/// number the step they break by them.
async fn clean_run() -> Vec<Call> {
    let (m, fake, fakes) = on_docker();
    up_with(&m, &fakes, &Interrupt::new()).await.unwrap();
    fake.calls()
}

fn created(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::CreateNetwork(n) | Call::CreateContainer(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn up_creates_in_order_and_down_removes_containers_then_networks() {
    let (m, fake, fakes) = on_docker();
    let out = up_with(&m, &fakes, &Interrupt::new()).await.unwrap();
    assert_eq!(out.summary.name, "t");
    assert_eq!(
        created(&fake.calls()),
        [
            "bottle-t-internal",
            "bottle-t-egress",
            "bottle-t-sidecar",
            "bottle-t-agent"
        ]
    );
    // The host-address check and the broadcast fence (run while the
    // sidecar starts and the agent is created) come before the agent
    // starts: the last of the two starts.
    let calls = fake.calls();
    let at = |want: &Call| calls.iter().position(|c| c == want).unwrap();
    let starts: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c, Call::StartContainer(_)))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(starts.len(), 2, "the sidecar and the agent: {calls:?}");
    let agent_start = starts[1];
    assert!(at(&Call::HostAddressesOn("bottle-t-internal".into())) < agent_start);
    assert!(at(&Call::IsolateHostFrom("bottle-t-internal".into())) < agent_start);
    // The agent is on the internal network only, with the sidecar as DNS.
    let agent = fake.spec_of("bottle-t-agent").unwrap();
    assert_eq!(agent.networks.len(), 1);
    assert_eq!(agent.dns.len(), 1);
    assert!(
        !agent.env.values().any(|v| v.contains("sk-test-secret")),
        "no secret in the agent's environment"
    );
    // The accepted pin is recorded.
    assert!(bottle::pin::load(&m.host.state.bottle("t")).is_some());

    let before = fake.calls().len();
    let removed = lifecycle::down(&fake, &m.host.state, "t", &mut Reporter::new(true))
        .await
        .unwrap();
    assert_eq!(removed.len(), 4);
    let removals: Vec<Call> = fake.calls()[before..]
        .iter()
        .filter(|c| matches!(c, Call::RemoveContainer(_) | Call::RemoveNetwork(_)))
        .cloned()
        .collect();
    let role_of = |id: &str| {
        removed
            .iter()
            .find(|r| r.id == id)
            .and_then(|r| r.labels.get(LABEL_ROLE).cloned())
            .unwrap()
    };
    let order: Vec<String> = removals
        .iter()
        .map(|c| match c {
            Call::RemoveContainer(id) | Call::RemoveNetwork(id) => role_of(id),
            _ => unreachable!(),
        })
        .collect();
    // Both containers (at once), then both networks.
    let mut containers = order[..2].to_vec();
    containers.sort();
    assert_eq!(containers, ["agent", "sidecar"]);
    let mut networks = order[2..].to_vec();
    networks.sort();
    assert_eq!(networks, ["egress", "internal"]);
    assert!(fake.resources().is_empty());
    // Idempotent.
    let again = lifecycle::down(&fake, &m.host.state, "t", &mut Reporter::new(true))
        .await
        .unwrap();
    assert!(again.is_empty());
}

#[tokio::test]
async fn a_failure_at_any_step_leaves_nothing_behind() {
    // Count the calls of a clean run, then fail each one in turn.
    let total = clean_run().await.len();
    assert!(total > 15, "{total} calls");
    let mut failures = 0;
    for n in 1..=total {
        let (m, fake, fakes) = on_docker();
        fake.fail_at(n);
        match up_with(&m, &fakes, &Interrupt::new()).await {
            Ok(_) => assert_eq!(
                fake.resources().len(),
                4,
                "call {n} ({:?}) failed and up still succeeded with a partial bottle",
                fake.calls().get(n - 1)
            ),
            Err(e) => {
                failures += 1;
                assert!(
                    fake.resources().is_empty(),
                    "failing call {n} ({:?}) left {:?}: {e}",
                    fake.calls().get(n - 1),
                    fake.resources()
                );
                assert_ne!(e.exit(), Exit::Done);
                // Nothing was accepted for a bottle that never came up.
                assert!(
                    bottle::pin::load(&m.host.state.bottle("t")).is_none(),
                    "call {n}: pinned a failed bottle"
                );
            }
        }
    }
    assert!(
        failures > total / 2,
        "only {failures} of {total} failures surfaced"
    );
}

#[tokio::test]
async fn an_interrupt_at_any_step_removes_everything_and_exits_130() {
    let total = clean_run().await.len();
    for n in 1..=total {
        let (m, fake, fakes) = on_docker();
        let interrupt = Interrupt::new();
        let i = interrupt.clone();
        // Ctrl-C arrives while call `n` is in flight; the call still
        // completes (an engine finishes a create it has received).
        fake.on_call(n, false, move || i.trigger());
        let err = match up_with(&m, &fakes, &interrupt).await {
            Ok(_) => panic!("call {n}: interrupted up succeeded"),
            Err(e) => e,
        };
        assert_eq!(
            err.exit(),
            Exit::Interrupted,
            "call {n} ({:?}): {err}",
            fake.calls().get(n - 1)
        );
        assert!(
            fake.resources().is_empty(),
            "interrupt at call {n} ({:?}) left {:?}",
            fake.calls().get(n - 1),
            fake.resources()
        );
    }
}

#[tokio::test]
async fn a_second_interrupt_stops_the_rollback_and_names_what_is_left() {
    // The call that creates the agent, from a clean run.
    let agent_at = 1 + clean_run()
        .await
        .iter()
        .position(|c| *c == Call::CreateContainer("bottle-t-agent".into()))
        .unwrap();

    let (m, fake, fakes) = on_docker();
    let interrupt = Interrupt::new();
    // Ctrl-C while the agent is created (the create completes); again
    // while the rollback's first removal hangs (after its `list`).
    let i = interrupt.clone();
    fake.on_call(agent_at, false, move || i.trigger());
    let i = interrupt.clone();
    fake.on_call(agent_at + 2, true, move || i.trigger());
    let err = up_with(&m, &fakes, &interrupt).await.err().unwrap();
    let UpError::Lifecycle(LifecycleError::InterruptedTwice { name, left }) = &err else {
        panic!("{err}");
    };
    assert_eq!(name, "t");
    let mut left = left.clone();
    left.sort();
    let mut there = fake.resources();
    there.sort();
    assert_eq!(left, there, "the error names exactly what is left");
    assert_eq!(
        left.len(),
        4,
        "the agent was created, then nothing removed: {left:?}"
    );
    assert!(
        err.to_string().contains("fix: `bottle down t` removes"),
        "{err}"
    );
    assert_eq!(err.exit(), Exit::Interrupted);
}

#[tokio::test]
async fn a_host_address_on_the_internal_network_refuses_and_rolls_back() {
    let m = Machine::new();
    m.config(CONFIG);
    let fake = FakeRuntime::new(RuntimeKind::Docker)
        .with_host_addresses(vec!["10.99.1.1".parse().unwrap()]);
    let fakes = Fakes(BTreeMap::from([("docker", fake.clone())]));
    let err = up_with(&m, &fakes, &Interrupt::new()).await.err().unwrap();
    assert!(
        matches!(err, UpError::Lifecycle(LifecycleError::HostAddress { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("10.99.1.1"), "{err}");
    assert!(err.to_string().contains("inhibit_ipv4"), "{err}");
    assert_eq!(err.exit(), Exit::Refused);
    assert!(fake.resources().is_empty(), "{:?}", fake.resources());
    // The sidecar starts, and the agent is created, while the network is
    // checked (both were removed again, above); the agent never starts on
    // a network that failed.
    let started: Vec<String> = fake
        .calls()
        .iter()
        .filter_map(|c| match c {
            Call::StartContainer(id) => Some(id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        created(&fake.calls()),
        [
            "bottle-t-internal",
            "bottle-t-egress",
            "bottle-t-sidecar",
            "bottle-t-agent"
        ]
    );
    assert_eq!(started.len(), 1, "only the sidecar started: {started:?}");
}

/// The same refusal on Apple `container` names Apple's situation and
/// choices (apple/container#1320), not docker's engine options.
#[tokio::test]
async fn a_host_address_refusal_names_the_runtimes_own_fix() {
    let m = Machine::new();
    m.config(CONFIG);
    let fake = FakeRuntime::new(RuntimeKind::AppleContainer)
        .with_host_addresses(vec!["192.168.65.1".parse().unwrap()]);
    let fakes = Fakes(BTreeMap::from([("apple-container", fake.clone())]));
    let req = m.request(Some(RuntimeRequest::Named(RuntimeKind::AppleContainer)));
    let prepared = prepare_req(&m, &req, &fakes, &Interrupt::new())
        .await
        .unwrap();
    let err = up::execute(
        &m.host,
        prepared,
        &Interrupt::new(),
        &mut Reporter::new(true),
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(err, UpError::Lifecycle(LifecycleError::HostAddress { .. })),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("apple/container#1320")
            && text.contains("--accept-weakness host-reachable-from-internal")
            && !text.contains("inhibit_ipv4"),
        "{text}"
    );
    assert!(fake.resources().is_empty(), "{:?}", fake.resources());
}

#[tokio::test]
async fn no_broadcast_fence_refuses_unless_the_weakness_is_accepted() {
    let m = Machine::new();
    m.config(CONFIG);
    let fake = FakeRuntime::new(RuntimeKind::Docker).without_broadcast_isolation();
    let fakes = Fakes(BTreeMap::from([("docker", fake.clone())]));
    let err = up_with(&m, &fakes, &Interrupt::new()).await.err().unwrap();
    assert!(err.to_string().contains("broadcast-isolated"), "{err}");
    assert_eq!(err.exit(), Exit::Refused);
    assert!(fake.resources().is_empty());

    // Accepted, and measured by the probe: the bottle comes up.
    let fake = FakeRuntime::new(RuntimeKind::Docker)
        .without_broadcast_isolation()
        .with_capabilities(vec![Capability::weak(
            "broadcast-isolated",
            Weakness::BroadcastReachesHost,
            "measured",
            "fake".into(),
        )]);
    let fakes = Fakes(BTreeMap::from([("docker", fake.clone())]));
    let mut req = m.request(Some(RuntimeRequest::Named(RuntimeKind::Docker)));
    req.accept_weakness = vec!["broadcast-reaches-host".into()];
    let i = Interrupt::new();
    let prepared = prepare_req(&m, &req, &fakes, &i).await.unwrap();
    up::execute(&m.host, prepared, &i, &mut Reporter::new(true))
        .await
        .unwrap();
    assert_eq!(fake.resources().len(), 4);
}

#[tokio::test]
async fn a_widened_config_needs_consent_and_is_pinned_only_once_up() {
    let (m, fake, fakes) = on_docker();
    let i = Interrupt::new();
    up_with(&m, &fakes, &i).await.unwrap();
    lifecycle::down(&fake, &m.host.state, "t", &mut Reporter::new(true))
        .await
        .unwrap();
    let pinned = std::fs::read(m.host.state.bottle("t").root().join("accepted.json")).unwrap();

    // The agent (or anyone) adds a host.
    m.config(
        r#"
name = "t"
[egress]
allow = ["api.anthropic.com", "exfil.example"]
"#,
    );
    let prepared = prepare(&m, &fakes, &i).await.unwrap();
    assert!(
        prepared
            .plan
            .consent
            .iter()
            .any(|c| c.contains("exfil.example")),
        "{:?}",
        prepared.plan.consent
    );
    let calls = fake.calls().len();
    let err = up::execute(&m.host, prepared, &i, &mut Reporter::new(true))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, UpError::Widened { .. }), "{err}");
    assert_eq!(err.exit(), Exit::Refused);
    assert_eq!(fake.calls().len(), calls, "refused before any call");
    assert_eq!(
        std::fs::read(m.host.state.bottle("t").root().join("accepted.json")).unwrap(),
        pinned,
        "the pin did not move"
    );

    // With consent it comes up and the wider config is what is pinned.
    let mut prepared = prepare(&m, &fakes, &i).await.unwrap();
    prepared.consented = true;
    up::execute(&m.host, prepared, &i, &mut Reporter::new(true))
        .await
        .unwrap();
    lifecycle::down(&fake, &m.host.state, "t", &mut Reporter::new(true))
        .await
        .unwrap();
    let prepared = prepare(&m, &fakes, &i).await.unwrap();
    assert!(
        prepared.plan.consent.is_empty(),
        "{:?}",
        prepared.plan.consent
    );
}

#[tokio::test]
async fn dry_run_under_auto_names_the_runtime_auto_chose_and_creates_nothing() {
    let m = Machine::new();
    m.config(CONFIG);
    // No docker here; smolvm answers.
    let smol = FakeRuntime::new(RuntimeKind::Smolvm).assigning_addresses_at_start();
    let fakes = Fakes(BTreeMap::from([("smolvm", smol.clone())]));
    let i = Interrupt::new();
    let prepared = prepare_req(&m, &m.request(Some(RuntimeRequest::Auto)), &fakes, &i)
        .await
        .unwrap();
    assert_eq!(prepared.plan.runtime, RuntimeKind::Smolvm);
    let choice = prepared.plan.runtime_choice.as_ref().unwrap();
    assert_eq!(choice.by, "auto");
    assert_eq!(choice.skipped[0].0, RuntimeKind::Docker);
    let text = bottle::plan::render(&prepared.plan);
    assert!(text.starts_with("bottle `t` on smolvm"), "{text}");
    assert!(text.contains("skipped docker"), "{text}");
    let images = prepared.plan.images.as_ref().unwrap();
    assert!(images.build_sidecar && images.build_agent);
    assert!(created(&smol.calls()).is_empty(), "{:?}", smol.calls());
    assert!(!smol
        .calls()
        .iter()
        .any(|c| matches!(c, Call::BuildImage(_))));
}

#[tokio::test]
async fn auto_skips_a_runtime_whose_probe_finds_a_weakness() {
    let m = Machine::new();
    m.config(CONFIG);
    let weak = FakeRuntime::new(RuntimeKind::Docker).with_capabilities(vec![Capability::weak(
        "host-unreachable-from-internal",
        Weakness::HostReachableFromInternal,
        "measured",
        "the host answers".into(),
    )]);
    let smol = FakeRuntime::new(RuntimeKind::Smolvm);
    let fakes = Fakes(BTreeMap::from([("docker", weak), ("smolvm", smol)]));
    let i = Interrupt::new();
    let prepared = prepare_req(&m, &m.request(None), &fakes, &i).await.unwrap();
    assert_eq!(prepared.plan.runtime, RuntimeKind::Smolvm);
    let skipped = &prepared.plan.runtime_choice.as_ref().unwrap().skipped;
    assert!(
        skipped[0].1.contains("host-reachable-from-internal"),
        "{skipped:?}"
    );
}

#[tokio::test]
async fn bad_input_is_refused_before_the_runtime_is_touched() {
    let m = Machine::new();
    let (fake, fakes) = docker();
    let i = Interrupt::new();
    // A config error.
    m.config("name = \"t\"\n[egress]\nallow = 7\n");
    let err = prepare(&m, &fakes, &i).await.err().unwrap();
    assert_eq!(err.exit(), Exit::Usage, "{err}");
    // A misspelt weakness.
    m.config(CONFIG);
    let mut req = m.request(Some(RuntimeRequest::Named(RuntimeKind::Docker)));
    req.accept_weakness = vec!["host-reachable".into()];
    let err = prepare_req(&m, &req, &fakes, &i).await.err().unwrap();
    assert_eq!(err.exit(), Exit::Usage, "{err}");
    // A mount of the user's home.
    let home = m.host.facts.homes[0].clone();
    std::fs::create_dir_all(&home).unwrap();
    m.config(&format!(
        "name = \"t\"\n[agent]\nmounts = [\"{}:/w\"]\n",
        home.display()
    ));
    let err = prepare(&m, &fakes, &i).await.err().unwrap();
    assert_eq!(err.exit(), Exit::Refused, "{err}");
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    // No runtime at all.
    m.config(CONFIG);
    let none = Fakes(BTreeMap::new());
    let err = prepare_req(&m, &m.request(Some(RuntimeRequest::Auto)), &none, &i)
        .await
        .err()
        .unwrap();
    assert_eq!(err.exit(), Exit::Unavailable, "{err}");
}

#[tokio::test]
async fn an_existing_bottle_is_not_touched() {
    let (m, fake, fakes) = on_docker();
    let i = Interrupt::new();
    up_with(&m, &fakes, &i).await.unwrap();
    let err = up_with(&m, &fakes, &i).await.err().unwrap();
    assert!(
        matches!(
            err,
            UpError::Lifecycle(LifecycleError::Exists { count: 4, .. })
        ),
        "{err}"
    );
    assert_eq!(fake.resources().len(), 4, "the running bottle stays");
}

#[tokio::test]
async fn an_interrupt_while_auto_probes_removes_the_probes_scratch() {
    let m = Machine::new();
    m.config(CONFIG);
    let fake = FakeRuntime::new(RuntimeKind::Docker);
    let fakes = Fakes(BTreeMap::from([("docker", fake.clone())]));
    let interrupt = Interrupt::new();
    let (i, f) = (interrupt.clone(), fake.clone());
    let mine = format!("bottle-probe-{}-7-internal", std::process::id());
    let theirs = "bottle-probe-1-7-internal".to_string();
    let probe_labels = BTreeMap::from([(LABEL_ROLE.to_string(), "probe".to_string())]);
    let (m1, t1) = (mine.clone(), theirs.clone());
    // The probe is the first call after connecting.
    fake.on_call(1, true, move || {
        f.plant_network(&m1, probe_labels.clone());
        f.plant_network(&t1, probe_labels.clone());
        i.trigger();
    });
    let err = prepare_req(
        &m,
        &m.request(Some(RuntimeRequest::Auto)),
        &fakes,
        &interrupt,
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, UpError::Interrupted { .. }), "{err}");
    assert_eq!(err.exit(), Exit::Interrupted);
    // This process's scratch is gone; another process's probe is left alone.
    assert_eq!(fake.resources(), [theirs]);
}

#[tokio::test]
async fn a_widening_reload_needs_consent_before_any_call() {
    let (m, fake, fakes) = on_docker();
    up_with(&m, &fakes, &Interrupt::new()).await.unwrap();
    let policy = m.host.state.bottle("t").policy_path();
    let before = std::fs::read(&policy).unwrap();
    m.config(
        r#"
name = "t"
[egress]
allow = ["api.anthropic.com", "exfil.example"]
"#,
    );
    let prepared = bottle::reload::prepare(&m.host, "t", None).unwrap();
    assert!(
        prepared.consent.iter().any(|c| c.contains("exfil.example")),
        "{:?}",
        prepared.consent
    );
    let calls = fake.calls().len();
    let err = bottle::reload::execute(&m.host, &fake, prepared)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("without your consent"), "{err}");
    assert_eq!(err.exit(), Exit::Refused);
    assert_eq!(fake.calls().len(), calls, "refused before any call");
    assert_eq!(
        std::fs::read(&policy).unwrap(),
        before,
        "the running policy is untouched"
    );
    // A bottle that was never brought up has no config to reload.
    let err = bottle::reload::prepare(&m.host, "never", None)
        .err()
        .unwrap();
    assert_eq!(err.exit(), Exit::Usage);
}

#[tokio::test]
async fn an_interrupt_during_the_probe_sweeps_its_scratch() {
    let (m, fake, fakes) = on_docker();
    let interrupt = Interrupt::new();
    let prepared = prepare(&m, &fakes, &interrupt).await.unwrap();
    // The probe's call number, from a clean run.
    let probe_at = 1 + clean_run()
        .await
        .iter()
        .position(|c| *c == Call::Probe)
        .unwrap();
    let (i, f) = (interrupt.clone(), fake.clone());
    let mine = format!("bottle-probe-{}-3-internal", std::process::id());
    let labels = BTreeMap::from([(LABEL_ROLE.to_string(), "probe".to_string())]);
    fake.on_call(probe_at, true, move || {
        assert_eq!(f.calls().last(), Some(&Call::Probe), "numbering");
        f.plant_network(&mine, labels.clone());
        i.trigger();
    });
    let err = up::execute(&m.host, prepared, &interrupt, &mut Reporter::new(true))
        .await
        .err()
        .unwrap();
    assert_eq!(err.exit(), Exit::Interrupted, "{err}");
    assert!(fake.resources().is_empty(), "{:?}", fake.resources());
    assert!(!created(&fake.calls()).contains(&"bottle-t-internal".to_string()));
}

#[tokio::test]
async fn a_second_up_of_the_same_name_waits_its_turn() {
    let (m, fake, fakes) = on_docker();
    // Another `bottle up t` is between its checks and its rollback.
    let held = m.host.state.bottle("t").lock().unwrap();
    let err = up_with(&m, &fakes, &Interrupt::new()).await.err().unwrap();
    assert!(err.to_string().contains("another `bottle up`"), "{err}");
    assert!(fake.resources().is_empty());
    assert!(
        !fake.calls().iter().any(|c| matches!(c, Call::List)),
        "not even listed"
    );
    drop(held);
    up_with(&m, &fakes, &Interrupt::new()).await.unwrap();
}

#[tokio::test]
async fn a_reload_the_sidecar_refuses_is_reported_not_waited_out() {
    let (m, fake, fakes) = on_docker();
    up_with(&m, &fakes, &Interrupt::new()).await.unwrap();
    let mut prepared = bottle::reload::prepare(&m.host, "t", None).unwrap();
    prepared.consented = true;
    // find the sidecar (list, inspect), read its log once, render, then
    // poll: the sidecar (an older build, say) refuses the new secrets file.
    let f = fake.clone();
    fake.on_call(fake.calls().len() + 4, false, move || {
        f.append_log(r#"{"service":"sidecar","event":"policy-reloaded","what":"policy"}"#);
        f.append_log(r#"{"service":"sidecar","event":"policy-reload-failed","what":"secrets","error":"secrets file format 2 unknown"}"#);
    });
    let started = std::time::Instant::now();
    let err = bottle::reload::execute(&m.host, &fake, prepared)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("refused the new files") && err.to_string().contains("format 2"),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "not waited out"
    );
}

#[tokio::test]
async fn names_the_agent_chose_in_sidecar_logs_do_not_count_as_reload_events() {
    let (m, fake, fakes) = on_docker();
    up_with(&m, &fakes, &Interrupt::new()).await.unwrap();
    let mut prepared = bottle::reload::prepare(&m.host, "t", None).unwrap();
    prepared.consented = true;
    let f = fake.clone();
    fake.on_call(fake.calls().len() + 4, false, move || {
        // The agent asked for hosts named after the events.
        f.append_log(
            r#"{"service":"egress","host":"policy-reload-failed","verdict":"deny","error":"forged"}"#,
        );
        f.append_log(r#"{"service":"dns","name":"\"policy-reloaded\""}"#);
        f.append_log(r#"{"service":"sidecar","event":"policy-reloaded","what":"policy"}"#);
    });
    let summary = bottle::reload::execute(&m.host, &fake, prepared)
        .await
        .unwrap();
    assert!(summary.contains("policy reloaded"), "{summary}");
}
