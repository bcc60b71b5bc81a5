//! The provider images on a real Docker engine: built through the library
//! (`ensure_provider_image`, which also builds the agent image when it is
//! missing), then each CLI asked for its version as the image's user, which
//! must be the non-root `agent` with a writable home in the image.
//!
//! The npm install needs the host's npm registry (`npm config get registry`
//! or `BOTTLE_NPM_REGISTRY`); the first build takes minutes, later ones hit
//! the engine's layer cache.

use bottle::host::Host;
use bottle::images::DEFAULT_AGENT_IMAGE;
use bottle::provider_image::{ensure_provider_image, Provider};
use bottle_e2e::*;
use bottle_runtimes::RuntimeKind;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread")]
async fn provider_images_run_their_pinned_cli_as_the_agent_user() {
    if !engine_or_skip("provider_images_run_their_pinned_cli_as_the_agent_user") {
        return;
    }
    let host = Host::from_env().expect("host");
    let rt = bottle::runtime_select::connect(RuntimeKind::Docker)
        .await
        .expect("connect to docker");
    for p in Provider::ALL {
        let started = Instant::now();
        let tag = ensure_provider_image(
            rt.as_ref(),
            &host,
            p,
            DEFAULT_AGENT_IMAGE,
            None,
            &mut |line: &str| eprintln!("  {line}"),
        )
        .await
        .unwrap_or_else(|e| panic!("{p} image: {e}"));
        eprintln!("{p}: {tag} ready in {:.1?}", started.elapsed());

        let labels = docker(&[
            "image",
            "inspect",
            "-f",
            "{{index .Config.Labels \"dev.bottle.image\"}} {{index .Config.Labels \"dev.bottle.provider.version\"}}",
            &tag,
        ]);
        assert_eq!(
            stdout(&labels).trim(),
            format!("agent-{p} {}", p.default_version()),
            "{}",
            stderr(&labels)
        );

        // The image's own user, as `bottle` runs it when no read-write
        // mount names another.
        let script = format!(
            "id -u; id -un; echo \"$HOME\"; touch \"$HOME/.probe\" && echo writable; {} --version",
            p.command()
        );
        let out = docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            &tag,
            "sh",
            "-c",
            &script,
        ]);
        let text = stdout(&out);
        assert!(out.status.success(), "{p}: {text}\n{}", stderr(&out));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..4],
            ["1000", "agent", "/home/agent", "writable"],
            "{p}: {text}"
        );
        let version = lines[4..].join("\n");
        eprintln!("{p} --version: {version}");
        assert!(
            version.contains(p.default_version()),
            "{p}: expected {} in {version:?}",
            p.default_version()
        );
    }
}
