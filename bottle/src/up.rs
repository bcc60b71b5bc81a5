//! `bottle up` as two library calls: [`prepare`] resolves the request into
//! a complete [`Plan`] (config, name, mounts, policy, the runtime chosen,
//! the images and whether they must be built, what needs consent) and
//! creates nothing a bottle is made of; [`execute`] carries the plan out
//! (builds missing images, probes, creates, pins, verifies). Between the two
//! the binary prints the plan (`--dry-run`) or asks for consent.
//!
//! Under `auto`, choosing a runtime means probing it, so [`prepare`] may
//! create and remove a probe's scratch networks; an interrupt at any point
//! removes what `up` and its probes made ([`crate::interrupt`]).

use crate::config::{self, ConfigErrors};
use crate::host::Host;
use crate::interrupt::Interrupt;
use crate::lifecycle::{self, LifecycleError, UpSummary};
use crate::mounts::Grants;
use crate::pin::{self, Pinned};
use crate::plan::{self, Plan, PlanError, RuntimeChoice};
use crate::report::Reporter;
use crate::runtime_select::{self, Connect, NoRuntime, RefusalReason};
use bottle_runtimes::{Runtime, RuntimeError, RuntimeKind};
use std::path::{Path, PathBuf};

/// What the user asked the runtime to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeRequest {
    Named(RuntimeKind),
    Auto,
}

/// Everything `bottle up` was asked, flags resolved.
#[derive(Debug, Clone)]
pub struct Request {
    /// `-f FILE`; else `bottle.toml` in `cwd`; else the built-in default.
    pub file: Option<PathBuf>,
    pub cwd: PathBuf,
    pub name: Option<String>,
    /// `--runtime` / `BOTTLE_RUNTIME`; `None` leaves it to the config.
    pub runtime: Option<RuntimeRequest>,
    pub accept_weakness: Vec<String>,
    pub grants: Grants,
    pub verify: bool,
    /// `--reprobe`: measure the runtime even when a recent probe of it is
    /// stored ([`crate::probe_cache`]).
    pub reprobe: bool,
    /// `bottle run AGENT`: the provider whose API, credential and CLI
    /// variables are added to the config.
    pub provider: Option<crate::provider::Provider>,
    /// `bottle run --from TAG`: the agent image instead of the config's.
    pub image: Option<String>,
}

/// A complete plan and the runtime it runs on.
pub struct Prepared {
    pub plan: Plan,
    pub runtime: Box<dyn Runtime>,
    /// The caller sets this once the user agreed to `plan.consent`;
    /// [`execute`] refuses a plan that needs consent without it.
    pub consented: bool,
    pub verify: bool,
    /// Measure the runtime even when a recent probe of it is stored.
    pub reprobe: bool,
    /// Answers `?prompt` values of `[agent] env` when [`execute`] resolves
    /// them; the terminal unless a caller (a test) sets another.
    pub prompter: Box<dyn config::Prompter>,
}

/// What a successful `up` made.
pub struct Outcome {
    pub summary: UpSummary,
    /// The checks `--verify` ran (all passed).
    pub verified: Option<crate::verify::Report>,
}

/// Why `up` stopped.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Env(#[from] config::EnvError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    NoRuntime(#[from] NoRuntime),
    #[error(transparent)]
    Refused(#[from] RefusalReason),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    Provider(#[from] crate::provider::ProviderError),
    #[error(transparent)]
    ProviderImage(#[from] crate::provider_image::ProviderImageError),
    #[error("cannot read the current directory: {0}")]
    Cwd(std::io::Error),
    #[error("refusing to start bottle `{name}` without your consent: {count} reason(s) listed above; an agent may have written them\n  fix: review them, then rerun with --accept-changes")]
    Widened { name: String, count: usize },
    #[error(
        "bottle `{name}` failed {failed} isolation check(s) and was removed; see the table above"
    )]
    VerifyFailed {
        name: String,
        failed: usize,
        report: Option<Box<crate::verify::Report>>,
    },
    #[error("`up --verify` could not check bottle `{name}`, so it was removed: {error}")]
    VerifyCouldNotRun { name: String, error: String },
    #[error("interrupted before bottle `{name}` was created; {aftermath}")]
    Interrupted { name: String, aftermath: String },
}

const NOTHING_LEFT: &str = "nothing was left behind";

/// What an interrupted probe's sweep left, for the message.
pub fn swept(result: Result<(), RuntimeError>) -> String {
    match result {
        Ok(()) => NOTHING_LEFT.into(),
        Err(e) => format!(
            "the probe's scratch could not be removed ({e}); remove the networks and containers named bottle-probe-{}-… with your runtime's CLI",
            std::process::id()
        ),
    }
}

/// The config `up` reads: `file`, else `bottle.toml` in `cwd`, else the
/// built-in deny-all default. Returns it with a description of its source.
pub fn load_config(
    file: Option<&Path>,
    cwd: &Path,
) -> Result<(config::Config, String), ConfigErrors> {
    let path = file.map(Path::to_path_buf).or_else(|| {
        let p = cwd.join("bottle.toml");
        p.exists().then_some(p)
    });
    match path {
        Some(p) => Ok((config::load(&p)?, p.display().to_string())),
        None => Ok((
            config::default_for_dir(cwd),
            "built-in default (deny all egress)".into(),
        )),
    }
}

/// The name `up` would give the bottle of `file` (else `bottle.toml` in the
/// current directory, else the default) and `--name`, and the config's
/// `[agent] provider`.
pub fn bottle_name(
    file: Option<&Path>,
    name: Option<&str>,
) -> Result<(String, config::Config), UpError> {
    let cwd = std::env::current_dir().map_err(UpError::Cwd)?;
    let (cfg, _) = load_config(file, &cwd)?;
    Ok((plan::bottle_name(&cfg, name)?, cfg))
}

/// What `provider` adds to `cfg` (its auth and api_base when it is the
/// config's own provider, the provider's defaults otherwise).
pub fn provider_additions(
    cfg: &config::Config,
    provider: crate::provider::Provider,
) -> Result<Option<crate::provider::Additions>, crate::provider::ProviderError> {
    let (auth, api) = if provider == cfg.agent.provider {
        (cfg.agent.auth(), cfg.agent.api_base.clone())
    } else {
        (provider.default_auth(), None)
    };
    crate::provider::additions(provider, auth, api.as_ref())
}

/// Resolves `req` into a complete plan. Reads files, connects to the
/// runtime and asks it which images it has; under `auto` it probes
/// runtimes to choose one. Creates no part of a bottle.
pub async fn prepare(
    host: &Host,
    req: &Request,
    connector: &dyn Connect,
    auto_order: &[RuntimeKind],
    interrupt: &Interrupt,
    report: &mut Reporter,
) -> Result<Prepared, UpError> {
    let (mut cfg, source) = load_config(req.file.as_deref(), &req.cwd)?;
    if let Some(image) = &req.image {
        cfg.agent.image = image.clone();
    }
    // `bottle run AGENT` names the provider; else `[agent] provider`. The
    // config's auth and api_base are its provider's.
    let provider = req.provider.unwrap_or(cfg.agent.provider);
    let codex_login = provider == crate::provider::Provider::Codex
        && provider == cfg.agent.provider
        && cfg.agent.auth() == Some(config::AgentAuth::CodexLogin);
    let agent_version = cfg
        .agent
        .version
        .as_ref()
        .filter(|_| provider == cfg.agent.provider)
        .map(|v| v.as_str().to_string());
    if let Some(a) = provider_additions(&cfg, provider)? {
        crate::provider::apply(&mut cfg, &a);
    }
    let named = match req.runtime {
        Some(RuntimeRequest::Named(kind)) => Some((kind, "--runtime / BOTTLE_RUNTIME")),
        Some(RuntimeRequest::Auto) => None,
        None => plan::config_runtime(&cfg).map(|k| (k, "bottle.toml")),
    };
    let mut plan = plan::build(
        host,
        &cfg,
        &source,
        req.name.as_deref(),
        named.map_or(RuntimeKind::Docker, |(k, _)| k),
        &req.grants,
    )?;
    // A misspelt weakness is refused before anything is touched.
    plan.accept_weakness = runtime_select::known_weaknesses(&req.accept_weakness)?;
    plan.agent.codex_login = codex_login;
    for note in &plan.notes {
        report.detail(&format!("note: {note}"));
    }
    let interrupted = || UpError::Interrupted {
        name: plan.name.clone(),
        aftermath: NOTHING_LEFT.into(),
    };
    let (rt, choice) = match named {
        Some((kind, by)) => {
            report.step(&format!("connecting to {kind}"));
            let rt = interrupt
                .unless(connector.connect(kind))
                .await
                .map_err(|_| interrupted())??;
            (
                rt,
                RuntimeChoice {
                    by: by.into(),
                    skipped: vec![],
                },
            )
        }
        None => {
            report.step("choosing a runtime (auto)");
            let cache = crate::probe_cache::ProbeCache::at(host.state.path());
            let sel = runtime_select::auto(
                connector,
                auto_order,
                &req.accept_weakness,
                interrupt,
                (!req.reprobe).then_some(&cache),
            )
            .await
            .map_err(|a| UpError::Interrupted {
                name: plan.name.clone(),
                aftermath: a.aftermath,
            })??;
            for (k, why) in &sel.skipped {
                report.detail(&format!("skipped {k}: {why}"));
            }
            (
                sel.runtime,
                RuntimeChoice {
                    by: "auto".into(),
                    skipped: sel.skipped,
                },
            )
        }
    };
    plan.runtime = rt.kind();
    plan.runtime_choice = Some(choice);
    report.step("resolving images");
    let images = interrupt
        .unless(lifecycle::plan_images(rt.as_ref(), host, &plan.agent.image))
        .await
        .map_err(|_| interrupted())??;
    let mut images = images;
    if provider != crate::provider::Provider::Shell && req.image.is_none() {
        // The CLI runs in its provider image, built FROM the agent image.
        let pi: crate::provider_image::Provider =
            provider.as_str().parse().map_err(UpError::ProviderImage)?;
        let version = agent_version.unwrap_or_else(|| pi.default_version().to_string());
        crate::provider_image::validate_version(&version)?;
        let tag = crate::provider_image::provider_tag(pi, &plan.agent.image, &version);
        images.provider = Some(crate::plan::ProviderImage {
            provider: provider.as_str().into(),
            version,
            from: plan.agent.image.clone(),
        });
        images.agent = tag.clone();
        plan.agent.image = tag;
    }
    plan.images = Some(images);
    plan.consent = pin::judge(&plan.name, &Pinned::of(&plan), &pin::load_all(&host.state));
    Ok(Prepared {
        plan,
        runtime: rt,
        consented: false,
        verify: req.verify,
        reprobe: req.reprobe,
        prompter: Box::new(config::TtyPrompter),
    })
}

/// Carries out a prepared plan: builds the images it lacks, probes the
/// runtime with them, creates the bottle, records the accepted pin, and
/// (with `verify`) checks the sandbox, removing it if a check fails. An
/// interrupt at any step removes what was made.
pub async fn execute(
    host: &Host,
    prepared: Prepared,
    interrupt: &Interrupt,
    report: &mut Reporter,
) -> Result<Outcome, UpError> {
    let Prepared {
        mut plan,
        runtime: rt,
        consented,
        verify,
        reprobe,
        mut prompter,
    } = prepared;
    let rt = rt.as_ref();
    if !plan.consent.is_empty() && !consented {
        return Err(UpError::Widened {
            name: plan.name.clone(),
            count: plan.consent.len(),
        });
    }
    // `${VAR}` and `?prompt` values are read only now, after consent and
    // before anything is built; they stay in memory.
    plan.agent.resolved_env = config::ResolvedEnv(config::resolve_env_values(
        &plan.agent.env,
        host,
        prompter.as_mut(),
    )?);
    let images = plan
        .images
        .clone()
        .ok_or_else(|| LifecycleError::Unplanned {
            name: plan.name.clone(),
        })?;
    let interrupted = || UpError::Interrupted {
        name: plan.name.clone(),
        aftermath: NOTHING_LEFT.into(),
    };
    if images.build_sidecar || images.build_agent {
        report.step("building images");
        interrupt
            .unless(lifecycle::build_images(rt, host, &images, report))
            .await
            .map_err(|_| interrupted())??;
    }
    if let Some(p) = &images.provider {
        report.step(&format!("provider image for {} {}", p.provider, p.version));
        let pi: crate::provider_image::Provider =
            p.provider.parse().map_err(UpError::ProviderImage)?;
        let mut progress = report.progress();
        let tag = interrupt
            .unless(crate::provider_image::ensure_provider_image(
                rt,
                host,
                pi,
                &p.from,
                Some(&p.version),
                &mut progress,
            ))
            .await
            .map_err(|_| interrupted())??;
        report.detail(&tag);
    }
    report.step("probing the runtime");
    if interrupt.count() > 0 {
        // Nothing probed yet: nothing to sweep.
        return Err(interrupted());
    }
    let cache = crate::probe_cache::ProbeCache::at(host.state.path());
    // Reading the engine's identity is a call to it: interruptible.
    let stored = interrupt
        .unless(crate::probe_cache::lookup(rt, &cache, reprobe))
        .await
        .map_err(|_| interrupted())?;
    let probe = match stored.hit {
        Some(hit) => {
            report.detail(&format!(
                "measured {} s ago on this engine, unchanged since (`--reprobe` measures again)",
                hit.age.as_secs()
            ));
            hit.probe
        }
        None => match interrupt.unless(rt.probe(Some(&images.sidecar))).await {
            Ok(p) => {
                crate::probe_cache::record(&cache, stored.key.as_deref(), &p);
                p
            }
            Err(_) => {
                report.detail("interrupted; removing the probe's scratch");
                return Err(UpError::Interrupted {
                    name: plan.name.clone(),
                    aftermath: swept(lifecycle::sweep_probe_scratch(rt).await),
                });
            }
        },
    };
    // Shown before any refusal: they hold whatever `up` decides.
    for w in probe.warnings() {
        report.detail(&format!("WARNING: {}: {}", w.name, w.detail));
    }
    let accepted = runtime_select::check_accepted(&probe, &plan.accept_weakness)?;
    report.detail(&format!(
        "{} {}: every required capability present{}",
        probe.runtime,
        probe.version.as_deref().unwrap_or("?"),
        if accepted.is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = accepted.iter().map(|w| w.as_str()).collect();
            format!("; ACCEPTED WEAKNESS: {}", names.join(", "))
        }
    ));
    let summary = lifecycle::create(rt, host, &plan, &accepted, interrupt, report).await?;
    pin::accept(&host.state.bottle(&plan.name), &Pinned::of(&plan))
        .map_err(LifecycleError::from)?;
    if !verify {
        return Ok(Outcome {
            summary,
            verified: None,
        });
    }
    report.step(
        "verifying the sandbox (a probe in the agent's network, the runtime's inspect data, the host)",
    );
    let checked = match interrupt
        .unless(crate::verify::verify(rt, host, &plan.name, &images.sidecar))
        .await
    {
        Ok(r) => r,
        Err(_) => {
            report.step("interrupted; removing the bottle (Ctrl-C again to stop)");
            lifecycle::rollback(rt, &host.state, &plan.name, interrupt, report).await?;
            return Err(LifecycleError::Interrupted.into());
        }
    };
    match checked {
        Ok(r) if r.failed == 0 => Ok(Outcome {
            summary,
            verified: Some(r),
        }),
        Ok(r) => {
            report.step("verify failed; removing the bottle");
            lifecycle::rollback(rt, &host.state, &plan.name, interrupt, report).await?;
            Err(UpError::VerifyFailed {
                name: plan.name.clone(),
                failed: r.failed,
                report: Some(Box::new(r)),
            })
        }
        Err(e) => {
            report.step("verify could not run; removing the bottle");
            lifecycle::rollback(rt, &host.state, &plan.name, interrupt, report).await?;
            Err(UpError::VerifyCouldNotRun {
                name: plan.name.clone(),
                error: e.to_string(),
            })
        }
    }
}
