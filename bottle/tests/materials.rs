//! What `up` writes and reads on the host before any container exists: the
//! state dir's files and modes, the sidecar's materials (and that no secret
//! reaches the agent's directory), the image plan, and the plan's text.
//! In process, on scratch directories; the fake runtime stands in for the
//! engine's image store.

use bottle::host::Host;
use bottle::interrupt::Interrupt;
use bottle::lifecycle;
use bottle::mounts::Grants;
use bottle::report::Reporter;
use bottle::state::{write_private, write_public, StateRoot};
use bottle_runtimes::fake::{Call, FakeRuntime};
use bottle_runtimes::{Arch, RuntimeKind};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

mod common;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn host(dir: &Path, vars: &[(&str, &str)]) -> Host {
    let bin = dir.join("bottle-sidecar");
    if !bin.exists() {
        std::fs::write(&bin, common::static_sidecar(Arch::X86_64, b"v1")).unwrap();
    }
    let mut map: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    map.entry("BOTTLE_SIDECAR_BIN".into())
        .or_insert_with(|| bin.display().to_string());
    Host::fixed(dir.join("state"), vec![dir.join("home")], map)
}

#[test]
fn state_files_are_written_whole_with_their_modes() {
    let dir = tempfile::tempdir().unwrap();
    let root = StateRoot::at(dir.path().join("state"));
    let state = root.bottle("b");
    state.create().unwrap();
    assert_eq!(mode(state.root()), 0o700);
    assert_eq!(mode(&state.sidecar_dir()), 0o700);
    assert_eq!(mode(&state.agent_dir()), 0o755);
    let secret = state.sidecar_dir().join("s.json");
    write_private(&secret, b"one").unwrap();
    write_private(&secret, b"two").unwrap();
    assert_eq!(mode(&secret), 0o600);
    assert_eq!(std::fs::read(&secret).unwrap(), b"two");
    let public = state.agent_dir().join("ca.crt");
    write_public(&public, b"cert").unwrap();
    assert_eq!(mode(&public), 0o644);
    // No temporary file is left beside them.
    let names: Vec<_> = std::fs::read_dir(state.sidecar_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["s.json"]);
    // Only directories are bottles.
    std::fs::write(root.path().join("stray-file"), b"").unwrap();
    root.bottle("a").create().unwrap();
    assert_eq!(root.names(), ["a", "b"]);
}

#[test]
fn the_agent_gets_the_ca_certificate_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path(), &[("MODEL_KEY", "sk-live-do-not-leak")]);
    let project = dir.path().join("p");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("bottle.toml"),
        r#"
name = "m"
[egress]
allow = ["api.anthropic.com"]
[[egress.credential]]
host = "api.anthropic.com"
header = "x-api-key"
from_env = "MODEL_KEY"
"#,
    )
    .unwrap();
    let (cfg, source) = bottle::up::load_config(None, &project).unwrap();
    let plan = bottle::plan::build(
        &h,
        &cfg,
        &source,
        None,
        RuntimeKind::Docker,
        &Grants::default(),
    )
    .unwrap();
    let state = h.state.bottle("m");
    let rendered = bottle::materials::render(&state, &plan, |k| h.var(k)).unwrap();
    assert!(rendered.minted_ca);
    let placeholder = &rendered.placeholders["MODEL_KEY"];
    assert!(!placeholder.contains("sk-live"), "{placeholder}");
    // The agent's directory holds the certificate only.
    let agent: Vec<_> = std::fs::read_dir(state.agent_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(agent, ["bottle-ca.crt"]);
    let crt = std::fs::read_to_string(state.agent_dir().join("bottle-ca.crt")).unwrap();
    assert!(!crt.contains("PRIVATE KEY"));
    // The secret is in the sidecar's directory, readable by its owner only.
    let secrets = state.sidecar_dir().join("secrets.json");
    let written = std::fs::read(&secrets).expect("secrets.json written");
    assert!(String::from_utf8_lossy(&written).contains("sk-live-do-not-leak"));
    let mut holders = 0;
    for entry in std::fs::read_dir(state.sidecar_dir()).unwrap() {
        let p = entry.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        if text.contains("sk-live-do-not-leak") || text.contains("PRIVATE KEY") {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
            holders += 1;
        }
    }
    assert!(holders >= 2, "the secret and the CA key, each 0600");
    // A second render keeps the CA and the placeholder.
    let again = bottle::materials::render(&state, &plan, |k| h.var(k)).unwrap();
    assert!(!again.minted_ca);
    assert_eq!(&again.placeholders["MODEL_KEY"], placeholder);
    // A missing variable is refused before anything is rewritten.
    let bare = host(dir.path(), &[]);
    let policy = std::fs::read(state.policy_path()).unwrap();
    let err = bottle::materials::render(&state, &plan, |k| bare.var(k)).unwrap_err();
    assert!(err.to_string().contains("MODEL_KEY is not set"), "{err}");
    assert_eq!(
        std::fs::read(&secrets).unwrap(),
        written,
        "secrets untouched"
    );
    assert_eq!(
        std::fs::read(state.policy_path()).unwrap(),
        policy,
        "policy untouched"
    );
}

#[tokio::test]
async fn images_are_planned_from_what_the_runtime_has() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path(), &[("BOTTLE_BASE_IMAGE", "base:here")]);
    let fake = FakeRuntime::new(RuntimeKind::Docker).with_images(&["bottle-agent:latest"]);
    let plan = lifecycle::plan_images(&fake, &h, "bottle-agent:latest")
        .await
        .unwrap();
    assert_eq!(plan.base, "base:here");
    assert!(plan.build_sidecar && !plan.build_agent);
    assert!(plan.sidecar.starts_with("bottle-sidecar:"));
    // Nothing was built by planning.
    assert!(!fake
        .calls()
        .iter()
        .any(|c| matches!(c, Call::BuildImage(_))));
    lifecycle::build_images(&fake, &h, &plan, &mut Reporter::new(true))
        .await
        .unwrap();
    let again = lifecycle::plan_images(&fake, &h, "bottle-agent:latest")
        .await
        .unwrap();
    assert!(!again.build_sidecar, "built once, then present");

    // Another sidecar binary is another tag.
    std::fs::write(
        dir.path().join("bottle-sidecar"),
        common::static_sidecar(Arch::X86_64, b"v2"),
    )
    .unwrap();
    let v2 = lifecycle::plan_images(&fake, &h, "bottle-agent:latest")
        .await
        .unwrap();
    assert_ne!(v2.sidecar, plan.sidecar);
    // ... and a binary swapped between plan and build is refused.
    std::fs::write(
        dir.path().join("bottle-sidecar"),
        common::static_sidecar(Arch::X86_64, b"v3"),
    )
    .unwrap();
    let err = lifecycle::build_images(&fake, &h, &v2, &mut Reporter::new(true))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("changed while `up` ran"), "{err}");

    // An agent image bottle cannot build is a config error, named.
    let err = lifecycle::plan_images(&fake, &h, "someone/else:1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("someone/else:1"), "{err}");
    use bottle::exit::Classify;
    assert_eq!(err.exit(), bottle::exit::Exit::Usage);
}

/// The sidecar goes in for the runtime's architecture, not the host's: an
/// arm64 runtime (a Mac's VM) refuses the x86_64 build before any image is
/// built, and takes the aarch64 one when it is there.
#[tokio::test]
async fn the_sidecar_is_chosen_for_the_runtime_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path(), &[("BOTTLE_BASE_IMAGE", "base:here")]);
    let arm = FakeRuntime::new(RuntimeKind::AppleContainer).with_architecture(Arch::Aarch64);
    let err = lifecycle::plan_images(&arm, &h, "bottle-agent:latest")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sidecar image of an aarch64 runtime: it is built for x86_64"),
        "{err}"
    );
    assert!(err.contains("scripts/build-sidecar.sh"), "{err}");
    assert_eq!(arm.calls().first(), Some(&Call::Architecture));
    assert!(!arm.calls().iter().any(|c| matches!(c, Call::BuildImage(_))));

    std::fs::write(
        dir.path().join("bottle-sidecar"),
        common::static_sidecar(Arch::Aarch64, b"arm"),
    )
    .unwrap();
    let plan = lifecycle::plan_images(&arm, &h, "bottle-agent:latest")
        .await
        .unwrap();
    assert_eq!(plan.sidecar_arch, Arch::Aarch64);
    assert_eq!(plan.sidecar_binary, dir.path().join("bottle-sidecar"));
    lifecycle::build_images(&arm, &h, &plan, &mut Reporter::new(true))
        .await
        .unwrap();
    assert!(arm
        .calls()
        .contains(&Call::BuildImage(plan.sidecar.clone())));
}

#[tokio::test]
async fn the_dry_run_text_names_runtime_images_and_consent() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path(), &[("BOTTLE_BASE_IMAGE", "base:here")]);
    let project = dir.path().join("p");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("bottle.toml"),
        "name = \"d\"\nruntime = \"smolvm\"\n[egress]\nallow = [\"api.github.com\"]\n",
    )
    .unwrap();
    struct Only(FakeRuntime);
    #[async_trait::async_trait]
    impl bottle::runtime_select::Connect for Only {
        async fn connect(
            &self,
            kind: RuntimeKind,
        ) -> Result<Box<dyn bottle_runtimes::Runtime>, bottle_runtimes::RuntimeError> {
            assert_eq!(kind, RuntimeKind::Smolvm, "the config names smolvm");
            Ok(Box::new(self.0.clone()))
        }
    }
    let fake = FakeRuntime::new(RuntimeKind::Smolvm);
    let req = bottle::up::Request {
        file: None,
        cwd: project,
        name: None,
        runtime: None,
        accept_weakness: vec!["dns-forwarded-unfiltered".into()],
        grants: Grants::default(),
        verify: false,
        reprobe: false,
        provider: None,
        image: None,
    };
    let prepared = bottle::up::prepare(
        &h,
        &req,
        &Only(fake.clone()),
        &[],
        &Interrupt::new(),
        &mut Reporter::new(true),
    )
    .await
    .unwrap();
    let text = bottle::plan::render(&prepared.plan);
    assert!(text.starts_with("bottle `d` on smolvm"), "{text}");
    assert!(
        text.contains("runtime     smolvm (chosen by bottle.toml)"),
        "{text}"
    );
    assert!(text.contains("(built first)"), "{text}");
    assert!(text.contains("base base:here"), "{text}");
    assert!(
        text.contains("accepts     weakness dns-forwarded-unfiltered"),
        "{text}"
    );
    assert!(text.contains("egress      allow api.github.com"), "{text}");
    let json = serde_json::to_value(&prepared.plan).unwrap();
    assert_eq!(json["runtime"], "smolvm");
    assert_eq!(json["images"]["build_agent"], true);
    assert!(
        text.contains("(built first, x86_64 from "),
        "the sidecar's architecture and binary: {text}"
    );
    // The dry run probed nothing, built nothing, created nothing: it only
    // asked the architecture and which images exist.
    assert!(fake
        .calls()
        .iter()
        .all(|c| matches!(c, Call::ImageExists(_) | Call::Architecture)));
}
