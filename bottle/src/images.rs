//! The agent and sidecar images: their Containerfiles are compiled into the
//! binary, so an installed `bottle` can build them anywhere.
//!
//! The sidecar image carries the `bottle-sidecar` binary that sits next to
//! `bottle` (or `BOTTLE_SIDECAR_BIN`); its tag is a digest of that binary and
//! the Containerfile, so a rebuilt sidecar is never shadowed by a stale image.
//! The base image is `BOTTLE_BASE_IMAGE`, else `debian:bookworm-slim`, else the
//! local `bottle-base:bookworm` made by `scripts/setup-engine.sh` when that is
//! all the engine has.

use crate::host::Host;
use bottle_runtimes::{BuildSpec, Runtime, RuntimeError};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub const AGENT_CONTAINERFILE: &str = include_str!("../../images/agent/Containerfile");
pub const SIDECAR_CONTAINERFILE: &str = include_str!("../../images/sidecar/Containerfile");
/// The default agent image name (`agent.image`).
pub const DEFAULT_AGENT_IMAGE: &str = "bottle-agent:latest";
const UPSTREAM_BASE: &str = "debian:bookworm-slim";
const LOCAL_BASE: &str = "bottle-base:bookworm";

/// Failures preparing images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot find the bottle-sidecar binary (looked at {looked}); build it with `cargo build -p bottle-sidecar` or set BOTTLE_SIDECAR_BIN")]
    NoSidecarBinary { looked: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {image} is missing and bottle does not know how to build it; build or pull it yourself, or use the default {DEFAULT_AGENT_IMAGE}")]
    UnknownImage { image: String },
    #[error("the bottle-sidecar binary changed while `up` ran (planned image {planned}, now {now})\n  fix: run `bottle up` again once the build is done")]
    Changed { planned: String, now: String },
    #[error("{source}\n  hint: base image {base} could not be used; on machines without a registry run scripts/setup-engine.sh and set BOTTLE_BASE_IMAGE={LOCAL_BASE}")]
    Build {
        base: String,
        #[source]
        source: RuntimeError,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Where the sidecar binary is.
pub fn sidecar_binary(host: &Host) -> Result<PathBuf, ImageError> {
    if let Some(p) = host.var("BOTTLE_SIDECAR_BIN").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(ImageError::NoSidecarBinary {
                looked: format!("BOTTLE_SIDECAR_BIN={}", p.display()),
            })
        };
    }
    let exe = std::env::current_exe().map_err(|source| ImageError::Read {
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let candidate = exe.with_file_name("bottle-sidecar");
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(ImageError::NoSidecarBinary {
            looked: candidate.display().to_string(),
        })
    }
}

/// The sidecar image for this build of bottle: tag and build context.
pub fn sidecar_build(base: &str, host: &Host) -> Result<BuildSpec, ImageError> {
    let bin = sidecar_binary(host)?;
    let data = std::fs::read(&bin).map_err(|source| ImageError::Read {
        path: bin.clone(),
        source,
    })?;
    let mut h = Sha256::new();
    h.update(&data);
    h.update(SIDECAR_CONTAINERFILE.as_bytes());
    h.update(base.as_bytes());
    let tag = format!("bottle-sidecar:{}", &hex::encode(h.finalize())[..12]);
    Ok(BuildSpec {
        tag,
        files: BTreeMap::from([
            (
                "Containerfile".to_string(),
                (SIDECAR_CONTAINERFILE.as_bytes().to_vec(), 0o644),
            ),
            ("bottle-sidecar".to_string(), (data, 0o755)),
        ]),
        containerfile: "Containerfile".into(),
        build_args: BTreeMap::from([("BASE_IMAGE".to_string(), base.to_string())]),
        labels: BTreeMap::from([("dev.bottle.image".to_string(), "sidecar".to_string())]),
    })
}

/// The agent image build for `tag`.
pub fn agent_build(tag: &str, base: &str) -> BuildSpec {
    BuildSpec {
        tag: tag.into(),
        files: BTreeMap::from([(
            "Containerfile".to_string(),
            (AGENT_CONTAINERFILE.as_bytes().to_vec(), 0o644),
        )]),
        containerfile: "Containerfile".into(),
        build_args: BTreeMap::from([("BASE_IMAGE".to_string(), base.to_string())]),
        labels: BTreeMap::from([("dev.bottle.image".to_string(), "agent".to_string())]),
    }
}

/// Picks the base image: `BOTTLE_BASE_IMAGE`; else the upstream Debian image
/// if the engine has it; else the local debootstrap base if the engine has
/// that; else the upstream name (the engine will try to pull it).
pub async fn base_image(
    rt: &dyn Runtime,
    host: &Host,
) -> Result<(String, &'static str), RuntimeError> {
    if let Some(b) = host.var("BOTTLE_BASE_IMAGE").filter(|v| !v.is_empty()) {
        return Ok((b, "BOTTLE_BASE_IMAGE"));
    }
    if rt.image_exists(UPSTREAM_BASE).await? {
        return Ok((UPSTREAM_BASE.into(), "present on the engine"));
    }
    if rt.image_exists(LOCAL_BASE).await? {
        return Ok((
            LOCAL_BASE.into(),
            "local base made by scripts/setup-engine.sh",
        ));
    }
    Ok((UPSTREAM_BASE.into(), "default; will be pulled"))
}

/// Builds `spec` unless its tag exists; reports each build line through
/// `progress`. Returns whether a build ran.
pub async fn ensure(
    rt: &dyn Runtime,
    spec: &BuildSpec,
    base: &str,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<bool, ImageError> {
    if rt.image_exists(&spec.tag).await? {
        return Ok(false);
    }
    rt.build_image(spec, progress)
        .await
        .map_err(|source| ImageError::Build {
            base: base.into(),
            source,
        })?;
    Ok(true)
}
