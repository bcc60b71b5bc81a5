//! Image archives bottle writes itself, for runtimes that boot images but
//! cannot build them (smolvm): no `docker build`, no `docker save`.
//!
//! An image is a base plus one layer bottle makes from a typed [`Recipe`]
//! (the files, directories and settings its Containerfile adds; the
//! Containerfile's package step is not replayed, so the base must already
//! hold what [`Recipe::requires`] names, and that is checked). The base is
//! one of [`Base`]: nothing, an unpacked rootfs directory, a rootfs tarball
//! (what `debootstrap` + `tar` make), or a `docker save` archive.
//!
//! The archive is a `docker save` archive (`manifest.json`) that is also an
//! OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`), the
//! shape Docker 25 and later write, so both kinds of reader take it. Layers
//! are uncompressed tars; every digest is checked by readers (`docker load`
//! recomputes each layer's against the config's `diff_ids`). Bottle's own
//! layer is deterministic: sorted entries, owner root, mtime 0, so the same
//! inputs give the same bytes and the same digests.
//!
//! The config and manifests are typed with the `oci-spec` crate; JSON is
//! written through `serde_json::Value` so keys come out sorted (the crate
//! keeps labels in a `HashMap`).

use crate::Arch;
use oci_spec::image::{
    Arch as OciArch, ConfigBuilder, DescriptorBuilder, HistoryBuilder, ImageConfiguration,
    ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType, Os,
    RootFsBuilder,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Component, Path, PathBuf};

/// What bottle adds on top of a base, the typed twin of a Containerfile's
/// `COPY`, `RUN mkdir`, `WORKDIR`, `ENTRYPOINT`, `CMD` and `LABEL` lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipe {
    /// Files: absolute path in the image → key of the build's files and mode.
    pub files: BTreeMap<String, (String, u32)>,
    /// Directories to create (absolute path → mode).
    pub dirs: BTreeMap<String, u32>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub workdir: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Absolute paths the base must hold (what the Containerfile would have
    /// installed), checked against the base's layers.
    pub requires: Vec<String>,
}

/// Where an image's lower layers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// No lower layers (the recipe's layer is the whole image).
    Scratch,
    /// An unpacked root filesystem; packed as one layer.
    RootfsDir(PathBuf),
    /// A tarball of a root filesystem; used as one layer as it is.
    RootfsTar(PathBuf),
    /// A `docker save` archive: its layers and settings are kept.
    SaveArchive(PathBuf),
}

/// Failures reading a base or writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not an uncompressed tar archive ({detail})\n  fix: give a rootfs directory, an uncompressed rootfs tarball (`tar -C ROOTFS -cf base.tar .`) or a `docker save` archive")]
    NotTar { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    BadSaveArchive { path: PathBuf, detail: String },
    #[error("the base lacks {missing:?}, which this image needs (its Containerfile installs them; bottle does not run package managers when it writes an archive)\n  fix: use a base that has them: scripts/setup-smolvm.sh makes one with debootstrap")]
    Missing { missing: Vec<String> },
    #[error("the recipe names file `{key}` that the build does not carry")]
    NoSuchFile { key: String },
    #[error("`{path}` is not an absolute, normal path inside an image")]
    BadPath { path: String },
    #[error("cannot write the image description: {0}")]
    Spec(String),
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a written archive holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `sha256:…` of the config: the image id readers report.
    pub image_id: String,
    /// `sha256:…` of each layer, lowest first (the config's `diff_ids`).
    pub diff_ids: Vec<String>,
    /// Bytes of the archive.
    pub size: u64,
}

impl Base {
    /// Reads what `path` is: a directory is a rootfs; a tar holding a
    /// top-level `manifest.json` is a `docker save` archive; any other tar a
    /// rootfs tarball. Compressed or non-tar files are refused.
    pub fn detect(path: &Path) -> Result<Base, ArchiveError> {
        let meta = std::fs::metadata(path).map_err(io_at(path))?;
        if meta.is_dir() {
            return Ok(Base::RootfsDir(path.to_path_buf()));
        }
        check_tar_magic(path)?;
        let file = File::open(path).map_err(io_at(path))?;
        let mut archive = tar::Archive::new(file);
        let entries = archive.entries().map_err(io_at(path))?;
        for entry in entries {
            let entry = entry.map_err(|e| ArchiveError::NotTar {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
            let name = entry.path().map_err(io_at(path))?;
            if normal(&name).as_deref() == Some("manifest.json") {
                return Ok(Base::SaveArchive(path.to_path_buf()));
            }
        }
        Ok(Base::RootfsTar(path.to_path_buf()))
    }
}

/// A tar file has `ustar` at offset 257; gzip, zstd and the rest do not.
fn check_tar_magic(path: &Path) -> Result<(), ArchiveError> {
    let mut head = [0u8; 265];
    let mut f = File::open(path).map_err(io_at(path))?;
    let n = read_full(&mut f, &mut head).map_err(io_at(path))?;
    if n < 265 || &head[257..262] != b"ustar" {
        let detail = match head {
            [0x1f, 0x8b, ..] => "it is gzip-compressed; decompress it first".to_string(),
            [0x28, 0xb5, 0x2f, 0xfd, ..] => "it is zstd-compressed; decompress it first".into(),
            _ => "no tar header at its start".into(),
        };
        return Err(ArchiveError::NotTar {
            path: path.to_path_buf(),
            detail,
        });
    }
    Ok(())
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A tar member name as a relative path without `.`/`./` or a trailing
/// slash, or None when it climbs out (`..`) or is empty.
fn normal(p: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// An absolute image path as its relative tar name.
fn image_path(path: &str) -> Result<String, ArchiveError> {
    let p = Path::new(path);
    match (p.is_absolute(), normal(p)) {
        (true, Some(n)) if !path.contains("/../") && !path.ends_with("/..") => Ok(n),
        _ => Err(ArchiveError::BadPath { path: path.into() }),
    }
}

/// One layer's blob: a file on disk (or in memory) and its digest.
struct Layer {
    source: LayerSource,
    digest: String,
    size: u64,
    created_by: String,
}

enum LayerSource {
    File(PathBuf),
    Temp(tempfile::NamedTempFile),
    Memory(Vec<u8>),
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The digest and size of a file, read once.
fn file_digest(path: &Path) -> Result<(String, u64), ArchiveError> {
    let mut f = File::open(path).map_err(io_at(path))?;
    let mut h = Sha256::new();
    let size = io::copy(&mut f, &mut h).map_err(io_at(path))?;
    Ok((hex::encode(h.finalize()), size))
}

/// Paths present after applying a layer tar (whiteouts remove).
fn apply_paths(
    present: &mut BTreeSet<String>,
    reader: impl Read,
    at: &Path,
) -> Result<(), ArchiveError> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| ArchiveError::NotTar {
        path: at.to_path_buf(),
        detail: e.to_string(),
    })?;
    for entry in entries {
        let entry = entry.map_err(|e| ArchiveError::NotTar {
            path: at.to_path_buf(),
            detail: e.to_string(),
        })?;
        let Some(name) = normal(&entry.path().map_err(io_at(at))?) else {
            continue;
        };
        let (dir, file) = match name.rsplit_once('/') {
            Some((d, f)) => (format!("{d}/"), f.to_string()),
            None => (String::new(), name.clone()),
        };
        if file == ".wh..wh..opq" {
            present.retain(|p| !p.starts_with(&dir) || p == dir.trim_end_matches('/'));
        } else if let Some(gone) = file.strip_prefix(".wh.") {
            let gone = format!("{dir}{gone}");
            present.retain(|p| p != &gone && !p.starts_with(&format!("{gone}/")));
        } else {
            present.insert(name);
        }
    }
    Ok(())
}

/// A base's layers and settings.
struct BaseLayers {
    layers: Vec<Layer>,
    config: Option<ImageConfiguration>,
    present: BTreeSet<String>,
}

fn read_base(base: &Base) -> Result<BaseLayers, ArchiveError> {
    match base {
        Base::Scratch => Ok(BaseLayers {
            layers: vec![],
            config: None,
            present: BTreeSet::new(),
        }),
        Base::RootfsTar(path) => {
            check_tar_magic(path)?;
            let (digest, size) = file_digest(path)?;
            let mut present = BTreeSet::new();
            apply_paths(&mut present, File::open(path).map_err(io_at(path))?, path)?;
            Ok(BaseLayers {
                layers: vec![Layer {
                    source: LayerSource::File(path.clone()),
                    digest,
                    size,
                    created_by: format!("bottle: rootfs tarball {}", path.display()),
                }],
                config: None,
                present,
            })
        }
        Base::RootfsDir(dir) => {
            let mut tmp = tempfile::NamedTempFile::new().map_err(io_at(dir))?;
            {
                let mut b = tar::Builder::new(tmp.as_file_mut());
                b.follow_symlinks(false);
                b.append_dir_all(".", dir).map_err(io_at(dir))?;
                b.finish().map_err(io_at(dir))?;
            }
            let (digest, size) = file_digest(tmp.path())?;
            let mut present = BTreeSet::new();
            apply_paths(
                &mut present,
                File::open(tmp.path()).map_err(io_at(dir))?,
                dir,
            )?;
            Ok(BaseLayers {
                layers: vec![Layer {
                    source: LayerSource::Temp(tmp),
                    digest,
                    size,
                    created_by: format!("bottle: rootfs directory {}", dir.display()),
                }],
                config: None,
                present,
            })
        }
        Base::SaveArchive(path) => read_save_archive(path),
    }
}

/// `manifest.json` of a `docker save` archive (one entry per image).
#[derive(serde::Serialize, serde::Deserialize)]
struct SaveManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// The layers of the first image of a `docker save` archive, extracted to
/// temporary files (a tar member cannot be streamed twice) and checked
/// against the config's `diff_ids`.
fn read_save_archive(path: &Path) -> Result<BaseLayers, ArchiveError> {
    let bad = |detail: String| ArchiveError::BadSaveArchive {
        path: path.to_path_buf(),
        detail,
    };
    let mut members: HashMap<String, tempfile::NamedTempFile> = HashMap::new();
    let mut small: HashMap<String, Vec<u8>> = HashMap::new();
    let mut archive = tar::Archive::new(File::open(path).map_err(io_at(path))?);
    for entry in archive.entries().map_err(io_at(path))? {
        let mut entry = entry.map_err(io_at(path))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let Some(name) = normal(&entry.path().map_err(io_at(path))?) else {
            continue;
        };
        if name.ends_with(".json") || entry.size() < 1 << 20 && !name.ends_with(".tar") {
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).map_err(io_at(path))?;
            small.insert(name, buf);
        } else {
            let mut tmp = tempfile::NamedTempFile::new().map_err(io_at(path))?;
            io::copy(&mut entry, tmp.as_file_mut()).map_err(io_at(path))?;
            members.insert(name, tmp);
        }
    }
    let manifest: Vec<SaveManifest> = serde_json::from_slice(
        small
            .get("manifest.json")
            .ok_or_else(|| bad("no manifest.json".into()))?,
    )
    .map_err(|e| bad(format!("manifest.json: {e}")))?;
    let first = manifest
        .into_iter()
        .next()
        .ok_or_else(|| bad("manifest.json lists no image".into()))?;
    let config_name = normal(Path::new(&first.config)).unwrap_or_default();
    let config: ImageConfiguration = serde_json::from_slice(
        small
            .get(&config_name)
            .ok_or_else(|| bad(format!("the config {} is missing", first.config)))?,
    )
    .map_err(|e| bad(format!("{}: {e}", first.config)))?;
    let want: Vec<String> = config.rootfs().diff_ids().clone();
    if want.len() != first.layers.len() {
        return Err(bad(format!(
            "the config lists {} layers, the manifest {}",
            want.len(),
            first.layers.len()
        )));
    }
    let mut layers = Vec::new();
    let mut present = BTreeSet::new();
    for (name, diff_id) in first.layers.iter().zip(&want) {
        let key = normal(Path::new(name)).unwrap_or_default();
        let source = match (members.remove(&key), small.remove(&key)) {
            (Some(tmp), _) => LayerSource::Temp(tmp),
            (None, Some(bytes)) => LayerSource::Memory(bytes),
            (None, None) => return Err(bad(format!("layer {name} is missing"))),
        };
        let (digest, size) = match &source {
            LayerSource::Temp(t) => file_digest(t.path())?,
            LayerSource::Memory(b) => (sha256_hex(b), b.len() as u64),
            LayerSource::File(p) => file_digest(p)?,
        };
        if diff_id != &format!("sha256:{digest}") {
            return Err(bad(format!(
                "layer {name} is not the layer the config names ({diff_id}); compressed layers are not supported"
            )));
        }
        match &source {
            LayerSource::Temp(t) => apply_paths(
                &mut present,
                File::open(t.path()).map_err(io_at(path))?,
                path,
            )?,
            LayerSource::Memory(b) => apply_paths(&mut present, &b[..], path)?,
            LayerSource::File(_) => {}
        }
        layers.push(Layer {
            source,
            digest,
            size,
            created_by: format!("bottle: layer of {}", path.display()),
        });
    }
    Ok(BaseLayers {
        layers,
        config: Some(config),
        present,
    })
}

/// Bottle's layer: the recipe's directories (with their parents) and files,
/// sorted, owned by root, mtime 0.
fn recipe_layer(
    recipe: &Recipe,
    files: &BTreeMap<String, (Vec<u8>, u32)>,
) -> Result<Vec<u8>, ArchiveError> {
    let mut dirs: BTreeMap<String, u32> = BTreeMap::new();
    let add_parents = |dirs: &mut BTreeMap<String, u32>, rel: &str| {
        let mut acc = String::new();
        let parts: Vec<&str> = rel.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            dirs.entry(acc.clone()).or_insert(0o755);
        }
    };
    for (path, mode) in &recipe.dirs {
        let rel = image_path(path)?;
        add_parents(&mut dirs, &rel);
        dirs.insert(rel, *mode);
    }
    let mut entries: Vec<(String, &[u8], u32)> = Vec::new();
    for (path, (key, mode)) in &recipe.files {
        let rel = image_path(path)?;
        add_parents(&mut dirs, &rel);
        let (data, _) = files
            .get(key)
            .ok_or_else(|| ArchiveError::NoSuchFile { key: key.clone() })?;
        entries.push((rel, data, *mode));
    }
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h
    };
    let io = |e| ArchiveError::Io {
        path: PathBuf::from("(bottle's layer)"),
        source: e,
    };
    for (rel, mode) in &dirs {
        let mut h = header(tar::EntryType::Directory, *mode, 0);
        b.append_data(&mut h, format!("{rel}/"), io::empty())
            .map_err(io)?;
    }
    for (rel, data, mode) in entries {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        b.append_data(&mut h, rel, data).map_err(io)?;
    }
    b.into_inner().map_err(io)
}

fn spec_err(e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Spec(e.to_string())
}

/// A descriptor builder for the blob of `media` with sha256 `hex` and `size`.
fn descriptor(media: MediaType, hex: &str, size: u64) -> Result<DescriptorBuilder, ArchiveError> {
    Ok(DescriptorBuilder::default()
        .media_type(media)
        .digest(
            format!("sha256:{hex}")
                .parse::<oci_spec::image::Digest>()
                .map_err(spec_err)?,
        )
        .size(size))
}

/// JSON with sorted keys: the same value always gives the same bytes.
fn canonical(value: &impl serde::Serialize) -> Result<Vec<u8>, ArchiveError> {
    let v = serde_json::to_value(value).map_err(spec_err)?;
    serde_json::to_vec(&v).map_err(spec_err)
}

/// The image's config: the base's (if any) with the recipe applied, the
/// way a Containerfile's instructions would leave it.
fn image_config(
    base: Option<ImageConfiguration>,
    recipe: &Recipe,
    arch: Arch,
    diff_ids: Vec<String>,
    history: Vec<String>,
) -> Result<ImageConfiguration, ArchiveError> {
    let old = base.as_ref().and_then(|b| b.config().clone());
    let mut c = ConfigBuilder::default();
    let env = old
        .as_ref()
        .and_then(|o| o.env().clone())
        .unwrap_or_else(|| {
            vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()]
        });
    c = c.env(env);
    // ENTRYPOINT resets an inherited CMD, as in a Containerfile.
    let entrypoint = recipe
        .entrypoint
        .clone()
        .or_else(|| old.as_ref().and_then(|o| o.entrypoint().clone()));
    let cmd = match (&recipe.cmd, &recipe.entrypoint) {
        (Some(cmd), _) => Some(cmd.clone()),
        (None, Some(_)) => None,
        (None, None) => old.as_ref().and_then(|o| o.cmd().clone()),
    };
    if let Some(e) = entrypoint {
        c = c.entrypoint(e);
    }
    if let Some(cmd) = cmd {
        c = c.cmd(cmd);
    }
    if let Some(w) = recipe
        .workdir
        .clone()
        .or_else(|| old.as_ref().and_then(|o| o.working_dir().clone()))
    {
        c = c.working_dir(w);
    }
    if let Some(u) = old.as_ref().and_then(|o| o.user().clone()) {
        c = c.user(u);
    }
    let mut labels: HashMap<String, String> = old
        .as_ref()
        .and_then(|o| o.labels().clone())
        .unwrap_or_default();
    labels.extend(recipe.labels.clone());
    if !labels.is_empty() {
        c = c.labels(labels);
    }
    let history = history
        .into_iter()
        .map(|h| {
            HistoryBuilder::default()
                .created_by(h)
                .build()
                .map_err(spec_err)
        })
        .collect::<Result<Vec<_>, _>>()?;
    ImageConfigurationBuilder::default()
        .architecture(match arch {
            Arch::X86_64 => OciArch::Amd64,
            Arch::Aarch64 => OciArch::ARM64,
        })
        .os(Os::Linux)
        .config(c.build().map_err(spec_err)?)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(diff_ids)
                .build()
                .map_err(spec_err)?,
        )
        .history(history)
        .build()
        .map_err(spec_err)
}

/// One tar member of the outer archive from bytes.
fn put_bytes(out: &mut tar::Builder<impl Write>, name: &str, data: &[u8]) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_size(data.len() as u64);
    out.append_data(&mut h, name, data)
}

fn put_dir(out: &mut tar::Builder<impl Write>, name: &str) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_mtime(0);
    h.set_size(0);
    out.append_data(&mut h, name, io::empty())
}

/// Writes the image `tag` = `base` + `recipe` for `arch` to `out` (through
/// a temporary file in the same directory, renamed at the end, so a reader
/// never sees half an archive). `files` holds the recipe's file contents.
pub fn write_archive(
    base: &Base,
    recipe: &Recipe,
    files: &BTreeMap<String, (Vec<u8>, u32)>,
    tag: &str,
    arch: Arch,
    out: &Path,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Written, ArchiveError> {
    progress(&format!("reading base {}", describe(base)));
    let BaseLayers {
        mut layers,
        config: base_config,
        present,
    } = read_base(base)?;
    let missing: Vec<String> = recipe
        .requires
        .iter()
        .filter(|r| {
            normal(Path::new(r))
                .map(|n| !present.contains(&n))
                .unwrap_or(true)
        })
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(ArchiveError::Missing { missing });
    }
    let ours = recipe_layer(recipe, files)?;
    layers.push(Layer {
        digest: sha256_hex(&ours),
        size: ours.len() as u64,
        source: LayerSource::Memory(ours),
        created_by: "bottle: image recipe".into(),
    });
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", l.digest))
        .collect();
    let mut history: Vec<String> = match &base_config {
        Some(c) => c
            .history()
            .iter()
            .flatten()
            .map(|h| h.created_by().clone().unwrap_or_default())
            .collect(),
        None => vec![],
    };
    if base_config.is_none() {
        history.extend(
            layers[..layers.len() - 1]
                .iter()
                .map(|l| l.created_by.clone()),
        );
    }
    history.push("bottle: image recipe".into());
    let config = image_config(base_config, recipe, arch, diff_ids.clone(), history)?;
    let config_bytes = canonical(&config)?;
    let config_digest = sha256_hex(&config_bytes);

    let layer_descriptors = layers
        .iter()
        .map(|l| {
            descriptor(MediaType::ImageLayer, &l.digest, l.size)?
                .build()
                .map_err(spec_err)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(
            descriptor(
                MediaType::ImageConfig,
                &config_digest,
                config_bytes.len() as u64,
            )?
            .build()
            .map_err(spec_err)?,
        )
        .layers(layer_descriptors)
        .build()
        .map_err(spec_err)?;
    let manifest_bytes = canonical(&manifest)?;
    let manifest_digest = sha256_hex(&manifest_bytes);
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![descriptor(
            MediaType::ImageManifest,
            &manifest_digest,
            manifest_bytes.len() as u64,
        )?
        .annotations(HashMap::from([
            (
                "org.opencontainers.image.ref.name".to_string(),
                tag.rsplit_once(':')
                    .map(|(_, t)| t)
                    .unwrap_or(tag)
                    .to_string(),
            ),
            ("io.containerd.image.name".to_string(), tag.to_string()),
        ]))
        .build()
        .map_err(spec_err)?])
        .build()
        .map_err(spec_err)?;
    let save = vec![SaveManifest {
        config: format!("blobs/sha256/{config_digest}"),
        repo_tags: Some(vec![tag.to_string()]),
        layers: layers
            .iter()
            .map(|l| format!("blobs/sha256/{}", l.digest))
            .collect(),
    }];

    let dir = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    let tmp = tempfile::Builder::new()
        .prefix(".bottle-image-")
        .suffix(".tar.partial")
        .tempfile_in(dir)
        .map_err(io_at(dir))?;
    {
        let w = io::BufWriter::new(tmp.as_file());
        let mut t = tar::Builder::new(w);
        let io = io_at(out);
        put_dir(&mut t, "blobs/").map_err(&io)?;
        put_dir(&mut t, "blobs/sha256/").map_err(&io)?;
        let mut written = BTreeSet::new();
        for l in &layers {
            if !written.insert(l.digest.clone()) {
                continue;
            }
            progress(&format!(
                "writing layer sha256:{} ({} bytes)",
                &l.digest[..12],
                l.size
            ));
            let name = format!("blobs/sha256/{}", l.digest);
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_size(l.size);
            match &l.source {
                LayerSource::Memory(b) => t.append_data(&mut h, &name, &b[..]),
                LayerSource::File(p) => t.append_data(&mut h, &name, File::open(p).map_err(&io)?),
                LayerSource::Temp(f) => {
                    let mut file = f.reopen().map_err(&io)?;
                    file.rewind().map_err(&io)?;
                    t.append_data(&mut h, &name, file)
                }
            }
            .map_err(&io)?;
        }
        put_bytes(
            &mut t,
            &format!("blobs/sha256/{config_digest}"),
            &config_bytes,
        )
        .map_err(&io)?;
        put_bytes(
            &mut t,
            &format!("blobs/sha256/{manifest_digest}"),
            &manifest_bytes,
        )
        .map_err(&io)?;
        put_bytes(&mut t, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(&io)?;
        put_bytes(&mut t, "index.json", &canonical(&index)?).map_err(&io)?;
        put_bytes(&mut t, "manifest.json", &canonical(&save)?).map_err(&io)?;
        let mut w = t.into_inner().map_err(&io)?;
        w.flush().map_err(&io)?;
        w.get_ref().sync_all().map_err(&io)?;
    }
    tmp.persist(out).map_err(|e| ArchiveError::Io {
        path: out.to_path_buf(),
        source: e.error,
    })?;
    let size = std::fs::metadata(out).map_err(io_at(out))?.len();
    Ok(Written {
        image_id: format!("sha256:{config_digest}"),
        diff_ids,
        size,
    })
}

fn describe(base: &Base) -> String {
    match base {
        Base::Scratch => "scratch (empty)".into(),
        Base::RootfsDir(p) => format!("{} (rootfs directory)", p.display()),
        Base::RootfsTar(p) => format!("{} (rootfs tarball)", p.display()),
        Base::SaveArchive(p) => format!("{} (docker save archive)", p.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rootfs tarball holding `paths` (directories end in `/`).
    fn rootfs_tar(dir: &Path, paths: &[&str]) -> PathBuf {
        let path = dir.join("rootfs.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        for p in paths {
            let mut h = tar::Header::new_gnu();
            if p.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, format!("./{p}"), io::empty())
                    .unwrap();
            } else {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o755);
                h.set_size(3);
                b.append_data(&mut h, format!("./{p}"), &b"hi\n"[..])
                    .unwrap();
            }
        }
        b.finish().unwrap();
        path
    }

    fn sidecar_recipe() -> (Recipe, BTreeMap<String, (Vec<u8>, u32)>) {
        let recipe = Recipe {
            files: BTreeMap::from([(
                "/usr/local/bin/bottle-sidecar".to_string(),
                ("bottle-sidecar".to_string(), 0o755),
            )]),
            dirs: BTreeMap::from([("/workspace".to_string(), 0o755)]),
            entrypoint: Some(vec!["/usr/local/bin/bottle-sidecar".into()]),
            cmd: Some(vec!["run".into()]),
            workdir: Some("/workspace".into()),
            labels: BTreeMap::from([("dev.bottle.image".to_string(), "sidecar".to_string())]),
            requires: vec!["/usr/bin/git".into()],
        };
        let files = BTreeMap::from([(
            "bottle-sidecar".to_string(),
            (b"\x7fELF pretend".to_vec(), 0o755),
        )]);
        (recipe, files)
    }

    /// Every member of the archive at `path`: name → bytes.
    fn members(path: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut a = tar::Archive::new(File::open(path).unwrap());
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                let mut buf = Vec::new();
                e.read_to_end(&mut buf).unwrap();
                (name, buf)
            })
            .collect()
    }

    fn quiet() -> impl FnMut(&str) + Send {
        |_: &str| {}
    }

    #[test]
    fn an_archive_is_a_consistent_save_archive_and_oci_layout() {
        let d = tempfile::tempdir().unwrap();
        let base = rootfs_tar(d.path(), &["usr/", "usr/bin/", "usr/bin/git"]);
        let (recipe, files) = sidecar_recipe();
        let out = d.path().join("img.tar");
        let w = write_archive(
            &Base::detect(&base).unwrap(),
            &recipe,
            &files,
            "bottle-sidecar:abc",
            Arch::Aarch64,
            &out,
            &mut quiet(),
        )
        .unwrap();
        let m = members(&out);
        // Every blob is named by its own digest.
        for (name, data) in &m {
            if let Some(d) = name.strip_prefix("blobs/sha256/") {
                if !d.is_empty() {
                    assert_eq!(sha256_hex(data), d, "{name}");
                }
            }
        }
        let save: Vec<serde_json::Value> = serde_json::from_slice(&m["manifest.json"]).unwrap();
        assert_eq!(save[0]["RepoTags"][0], "bottle-sidecar:abc");
        let config: serde_json::Value =
            serde_json::from_slice(&m[save[0]["Config"].as_str().unwrap()]).unwrap();
        assert_eq!(config["architecture"], "arm64");
        assert_eq!(config["os"], "linux");
        assert_eq!(
            config["config"]["Entrypoint"][0],
            "/usr/local/bin/bottle-sidecar"
        );
        assert_eq!(config["config"]["WorkingDir"], "/workspace");
        assert_eq!(config["config"]["Labels"]["dev.bottle.image"], "sidecar");
        assert_eq!(
            format!(
                "sha256:{}",
                sha256_hex(&m[save[0]["Config"].as_str().unwrap()])
            ),
            w.image_id
        );
        // The config's diff_ids are the layers' own digests, lowest first,
        // and the first is the base tarball byte for byte.
        let layers = save[0]["Layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        assert_eq!(
            m[layers[0].as_str().unwrap()],
            std::fs::read(&base).unwrap()
        );
        for (l, id) in layers
            .iter()
            .zip(config["rootfs"]["diff_ids"].as_array().unwrap())
        {
            assert_eq!(
                format!("sha256:{}", sha256_hex(&m[l.as_str().unwrap()])),
                id.as_str().unwrap()
            );
        }
        // The OCI side points at the same config through its manifest.
        let index: serde_json::Value = serde_json::from_slice(&m["index.json"]).unwrap();
        let mdigest = index["manifests"][0]["digest"].as_str().unwrap();
        let manifest: serde_json::Value =
            serde_json::from_slice(&m[&format!("blobs/sha256/{}", &mdigest[7..])]).unwrap();
        assert_eq!(manifest["config"]["digest"], w.image_id);
        assert_eq!(m["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
        // Bottle's layer holds the binary, executable, owned by root.
        let mut top = tar::Archive::new(&m[layers[1].as_str().unwrap()][..]);
        let entries: Vec<(String, u32, u64)> = top
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path()
                        .unwrap()
                        .display()
                        .to_string()
                        .trim_end_matches('/')
                        .to_string(),
                    e.header().mode().unwrap(),
                    e.header().uid().unwrap(),
                )
            })
            .collect();
        assert!(entries.contains(&("usr/local/bin/bottle-sidecar".into(), 0o755, 0)));
        assert!(entries.contains(&("workspace".into(), 0o755, 0)));
        assert!(entries.contains(&("usr/local/bin".into(), 0o755, 0)));
    }

    #[test]
    fn the_same_inputs_give_the_same_bytes() {
        let d = tempfile::tempdir().unwrap();
        let base = rootfs_tar(d.path(), &["usr/", "usr/bin/", "usr/bin/git"]);
        let (recipe, files) = sidecar_recipe();
        let write = |name: &str| {
            let out = d.path().join(name);
            write_archive(
                &Base::RootfsTar(base.clone()),
                &recipe,
                &files,
                "t:1",
                Arch::X86_64,
                &out,
                &mut quiet(),
            )
            .unwrap();
            std::fs::read(out).unwrap()
        };
        assert_eq!(write("a.tar"), write("b.tar"));
        // And a changed binary changes the image.
        let mut other = files.clone();
        other.get_mut("bottle-sidecar").unwrap().0.push(b'!');
        let out = d.path().join("c.tar");
        write_archive(
            &Base::RootfsTar(base.clone()),
            &recipe,
            &other,
            "t:1",
            Arch::X86_64,
            &out,
            &mut quiet(),
        )
        .unwrap();
        assert_ne!(write("a.tar"), std::fs::read(out).unwrap());
    }

    #[test]
    fn a_base_without_what_the_image_needs_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let base = rootfs_tar(d.path(), &["usr/", "usr/bin/", "usr/bin/curl"]);
        let (recipe, files) = sidecar_recipe();
        let out = d.path().join("x.tar");
        let e = write_archive(
            &Base::RootfsTar(base),
            &recipe,
            &files,
            "t:1",
            Arch::X86_64,
            &out,
            &mut quiet(),
        )
        .unwrap_err();
        assert!(
            matches!(&e, ArchiveError::Missing { missing } if missing == &["/usr/bin/git"]),
            "{e}"
        );
        assert!(e.to_string().contains("scripts/setup-smolvm.sh"), "{e}");
        assert!(!out.exists(), "no archive is left behind");
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "no partial file either"
        );
    }

    #[test]
    fn a_save_archive_base_keeps_its_layers_settings_and_whiteouts() {
        let d = tempfile::tempdir().unwrap();
        let base = rootfs_tar(
            d.path(),
            &["usr/", "usr/bin/", "usr/bin/git", "etc/", "etc/x"],
        );
        let mut recipe = Recipe {
            cmd: Some(vec!["sleep".into(), "infinity".into()]),
            labels: BTreeMap::from([("a".to_string(), "1".to_string())]),
            ..Recipe::default()
        };
        let first = d.path().join("first.tar");
        write_archive(
            &Base::RootfsTar(base),
            &recipe,
            &BTreeMap::new(),
            "one:1",
            Arch::X86_64,
            &first,
            &mut quiet(),
        )
        .unwrap();
        assert_eq!(
            Base::detect(&first).unwrap(),
            Base::SaveArchive(first.clone())
        );
        // A second image on top of the first: three layers, the first two
        // unchanged, CMD and labels inherited, requirements read through.
        recipe = Recipe {
            workdir: Some("/w".into()),
            labels: BTreeMap::from([("b".to_string(), "2".to_string())]),
            requires: vec!["/usr/bin/git".into(), "/etc/x".into()],
            ..Recipe::default()
        };
        let second = d.path().join("second.tar");
        write_archive(
            &Base::detect(&first).unwrap(),
            &recipe,
            &BTreeMap::new(),
            "two:1",
            Arch::X86_64,
            &second,
            &mut quiet(),
        )
        .unwrap();
        let m = members(&second);
        let save: Vec<serde_json::Value> = serde_json::from_slice(&m["manifest.json"]).unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&m[save[0]["Config"].as_str().unwrap()]).unwrap();
        assert_eq!(save[0]["Layers"].as_array().unwrap().len(), 3);
        assert_eq!(
            config["config"]["Cmd"],
            serde_json::json!(["sleep", "infinity"])
        );
        assert_eq!(
            config["config"]["Labels"],
            serde_json::json!({"a": "1", "b": "2"})
        );
        assert_eq!(config["history"].as_array().unwrap().len(), 3);
        // A whiteout in a higher layer removes the path for the check.
        let mut present = BTreeSet::from(["etc".to_string(), "etc/x".to_string()]);
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, "etc/.wh.x", io::empty()).unwrap();
        apply_paths(&mut present, &b.into_inner().unwrap()[..], Path::new("t")).unwrap();
        assert_eq!(present, BTreeSet::from(["etc".to_string()]));
    }

    #[test]
    fn compressed_and_foreign_files_are_refused_with_the_fix() {
        let d = tempfile::tempdir().unwrap();
        let gz = d.path().join("base.tar.gz");
        std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3].repeat(40)).unwrap();
        let e = Base::detect(&gz).unwrap_err();
        assert!(
            e.to_string()
                .contains("gzip-compressed; decompress it first"),
            "{e}"
        );
        let txt = d.path().join("notes.txt");
        std::fs::write(&txt, "hello").unwrap();
        let e = Base::detect(&txt).unwrap_err();
        assert!(e.to_string().contains("no tar header"), "{e}");
        assert!(e.to_string().contains("fix:"), "{e}");
        assert_eq!(
            Base::detect(d.path()).unwrap(),
            Base::RootfsDir(d.path().into())
        );
    }

    #[test]
    fn recipe_paths_must_stay_inside_the_image() {
        for bad in ["relative/x", "/a/../../etc/passwd", "/", "/a/.."] {
            let recipe = Recipe {
                dirs: BTreeMap::from([(bad.to_string(), 0o755)]),
                ..Recipe::default()
            };
            let e = recipe_layer(&recipe, &BTreeMap::new()).unwrap_err();
            assert!(matches!(e, ArchiveError::BadPath { .. }), "{bad}: {e}");
        }
    }
}
