//! The agent and sidecar images: their Containerfiles are compiled into the
//! binary, so an installed `bottle` can build them anywhere.
//!
//! The sidecar image carries a static Linux `bottle-sidecar` built for the
//! runtime's architecture (asked from the runtime, not assumed from the
//! host: on a Mac the containers run in an arm64 Linux VM). It is found by
//! [`sidecar_binary`] and its ELF header is checked by [`check_sidecar`]
//! before any image is built, so a Mach-O, dynamically linked or
//! wrong-architecture binary is refused with the fix
//! (`scripts/build-sidecar.sh`) instead of failing inside the container.
//! The image tag is a digest of that binary and the Containerfile, so a
//! rebuilt sidecar is never shadowed by a stale image.
//! The base image is `BOTTLE_BASE_IMAGE`, else `debian:bookworm-slim`, else the
//! local `bottle-base:bookworm` made by `scripts/setup-engine.sh` when that is
//! all the engine has.

use crate::host::Host;
use bottle_runtimes::oci::Recipe;
use bottle_runtimes::{Arch, BuildSpec, Runtime, RuntimeError, RuntimeKind};
use object::read::elf::{FileHeader, ProgramHeader};
use object::{elf, Endianness, FileKind};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
pub const AGENT_CONTAINERFILE: &str = include_str!("../../images/agent/Containerfile");
pub const SIDECAR_CONTAINERFILE: &str = include_str!("../../images/sidecar/Containerfile");
/// The default agent image name (`agent.image`).
pub const DEFAULT_AGENT_IMAGE: &str = "bottle-agent:latest";
const UPSTREAM_BASE: &str = "debian:bookworm-slim";
const LOCAL_BASE: &str = "bottle-base:bookworm";

/// The command that builds the static sidecars, named in every refusal.
pub const BUILD_SIDECAR: &str = "scripts/build-sidecar.sh";

/// Failures preparing images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot find a bottle-sidecar for {arch} (looked at {looked})\n  fix: run {BUILD_SIDECAR} in bottle's source tree (it builds the static Linux sidecars and puts them next to `bottle`), or set BOTTLE_SIDECAR_BIN to a static {} build", arch.musl_target())]
    NoSidecarBinary { arch: Arch, looked: String },
    #[error("{} cannot go into the sidecar image of an {arch} runtime: {problem}\n  fix: run {BUILD_SIDECAR} (it builds static Linux sidecars for x86_64 and aarch64 on any host and puts them where bottle looks), or set BOTTLE_SIDECAR_BIN to a static {} build", path.display(), arch.musl_target())]
    BadSidecarBinary {
        path: PathBuf,
        arch: Arch,
        problem: BinaryProblem,
    },
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
    #[error("{source}\n  hint: base image {base} could not be used; {hint}")]
    Build {
        base: String,
        hint: &'static str,
        #[source]
        source: RuntimeError,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Why a file is not a sidecar a runtime of some architecture can run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryProblem {
    #[error("it is a Mach-O (macOS) binary; the runtime's containers run Linux")]
    MachO,
    #[error("it is not an ELF executable ({0})")]
    NotElf(String),
    #[error("it is a 32-bit ELF file; the sidecar is a 64-bit Linux executable")]
    Elf32,
    #[error("it is a big-endian ELF file")]
    BigEndian,
    #[error("its ELF header is malformed: {0}")]
    Malformed(String),
    #[error("it is an ELF file for OS ABI {0}, not Linux")]
    NotLinux(u8),
    #[error("it is an ELF {0} file, not an executable")]
    NotExecutable(&'static str),
    #[error("it is built for machine {0} (ELF e_machine), which bottle ships no sidecar for")]
    UnknownMachine(u16),
    #[error("it is built for {found}")]
    WrongArch { found: Arch },
    #[error("it is dynamically linked (it needs the loader {interp}, which the image may not have); the sidecar must be a static musl build")]
    Dynamic { interp: String },
}

/// Checks that `data` is a static 64-bit little-endian Linux executable
/// (ELF, no `PT_INTERP`, so it needs nothing from the image's libc) for
/// `want`. Read with the `object` crate (docs/decisions.md).
pub fn check_sidecar(data: &[u8], want: Arch) -> Result<(), BinaryProblem> {
    match FileKind::parse(data) {
        Ok(FileKind::Elf64) => {}
        Ok(FileKind::Elf32) => return Err(BinaryProblem::Elf32),
        Ok(FileKind::MachO32 | FileKind::MachO64 | FileKind::MachOFat32 | FileKind::MachOFat64) => {
            return Err(BinaryProblem::MachO)
        }
        Ok(other) => return Err(BinaryProblem::NotElf(format!("{other:?}"))),
        Err(_) => {
            return Err(BinaryProblem::NotElf(
                "no executable format bottle knows starts this file".into(),
            ))
        }
    }
    let malformed = |e: object::read::Error| BinaryProblem::Malformed(e.to_string());
    let header = elf::FileHeader64::<Endianness>::parse(data).map_err(malformed)?;
    let endian = header.endian().map_err(malformed)?;
    if endian != Endianness::Little {
        return Err(BinaryProblem::BigEndian);
    }
    let abi = header.e_ident().os_abi;
    if abi != elf::ELFOSABI_NONE && abi != elf::ELFOSABI_LINUX {
        return Err(BinaryProblem::NotLinux(abi.0));
    }
    match header.e_type(endian) {
        // ET_DYN without an interpreter is a static-pie, what Rust's musl
        // targets produce by default.
        elf::ET_EXEC | elf::ET_DYN => {}
        elf::ET_REL => return Err(BinaryProblem::NotExecutable("relocatable (object)")),
        elf::ET_CORE => return Err(BinaryProblem::NotExecutable("core dump")),
        _ => return Err(BinaryProblem::NotExecutable("unknown-type")),
    }
    let found = match header.e_machine(endian) {
        elf::EM_X86_64 => Arch::X86_64,
        elf::EM_AARCH64 => Arch::Aarch64,
        other => return Err(BinaryProblem::UnknownMachine(other.0)),
    };
    if found != want {
        return Err(BinaryProblem::WrongArch { found });
    }
    for ph in header.program_headers(endian, data).map_err(malformed)? {
        if ph.p_type(endian) == elf::PT_INTERP {
            let interp = ph
                .data(endian, data)
                .ok()
                .map(|d| {
                    String::from_utf8_lossy(d)
                        .trim_end_matches('\0')
                        .to_string()
                })
                .unwrap_or_else(|| "(unreadable)".into());
            return Err(BinaryProblem::Dynamic { interp });
        }
    }
    Ok(())
}

/// Where the sidecar binary for `arch` is: `BOTTLE_SIDECAR_BIN`, else next
/// to the running `bottle` (see [`sidecar_binary_beside`]).
pub fn sidecar_binary(host: &Host, arch: Arch) -> Result<PathBuf, ImageError> {
    if let Some(p) = host.var("BOTTLE_SIDECAR_BIN").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(ImageError::NoSidecarBinary {
                arch,
                looked: format!("BOTTLE_SIDECAR_BIN={}", p.display()),
            })
        };
    }
    let exe = std::env::current_exe().map_err(|source| ImageError::Read {
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    sidecar_binary_beside(exe.parent().unwrap_or(Path::new(".")), arch)
}

/// The sidecar for `arch` near a `bottle` in `dir`, the first that exists of:
/// `dir/bottle-sidecar-<musl target>` (an install, or where
/// `scripts/build-sidecar.sh` copies it in a cargo target directory),
/// `dir/../sidecar/<musl target>/bottle-sidecar` (that script's own output,
/// for a `bottle` in `target/debug` or `target/release`), and
/// `dir/bottle-sidecar` (a plain `cargo build`, accepted only if it passes
/// [`check_sidecar`], so a Mac's or a glibc build is refused with the fix).
pub fn sidecar_binary_beside(dir: &Path, arch: Arch) -> Result<PathBuf, ImageError> {
    let target = arch.musl_target();
    let mut candidates = vec![dir.join(format!("bottle-sidecar-{target}"))];
    if let Some(parent) = dir.parent() {
        candidates.push(parent.join("sidecar").join(target).join("bottle-sidecar"));
    }
    candidates.push(dir.join("bottle-sidecar"));
    candidates
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .ok_or_else(|| ImageError::NoSidecarBinary {
            arch,
            looked: candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The sidecar image for a runtime on `arch`: tag and build context. The
/// binary is checked first ([`check_sidecar`]).
pub fn sidecar_build(base: &str, host: &Host, arch: Arch) -> Result<BuildSpec, ImageError> {
    let bin = sidecar_binary(host, arch)?;
    let data = std::fs::read(&bin).map_err(|source| ImageError::Read {
        path: bin.clone(),
        source,
    })?;
    check_sidecar(&data, arch).map_err(|problem| ImageError::BadSidecarBinary {
        path: bin.clone(),
        arch,
        problem,
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
        recipe: sidecar_recipe(),
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
        recipe: agent_recipe(),
    }
}

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

/// images/sidecar/Containerfile as typed data, for runtimes that write an
/// image archive instead of running the Containerfile (smolvm). The
/// package step is not replayed: the base must already hold what it would
/// install. A unit test keeps the two in step.
pub fn sidecar_recipe() -> Recipe {
    Recipe {
        files: BTreeMap::from([(
            "/usr/local/bin/bottle-sidecar".to_string(),
            ("bottle-sidecar".to_string(), 0o755),
        )]),
        entrypoint: Some(words(&["/usr/local/bin/bottle-sidecar"])),
        cmd: Some(words(&["run", "--policy", "/etc/bottle/policy.json"])),
        labels: BTreeMap::from([("dev.bottle.image".to_string(), "sidecar".to_string())]),
        requires: words(&["/etc/ssl/certs/ca-certificates.crt", "/usr/bin/git"]),
        ..Recipe::default()
    }
}

/// images/agent/Containerfile as typed data (see [`sidecar_recipe`]).
pub fn agent_recipe() -> Recipe {
    Recipe {
        dirs: BTreeMap::from([("/workspace".to_string(), 0o755)]),
        workdir: Some("/workspace".into()),
        cmd: Some(words(&["sleep", "infinity"])),
        labels: BTreeMap::from([("dev.bottle.image".to_string(), "agent".to_string())]),
        requires: words(&[
            "/usr/bin/bash",
            "/usr/bin/git",
            "/usr/bin/curl",
            "/usr/bin/python3",
            "/etc/ssl/certs/ca-certificates.crt",
        ]),
        ..Recipe::default()
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
            "local base made by scripts/setup-engine.sh or setup-smolvm.sh",
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
    let hint = match rt.kind() {
        RuntimeKind::Smolvm => "scripts/setup-smolvm.sh puts a Debian base into smolvm's image store; BOTTLE_BASE_IMAGE may name a rootfs directory, rootfs tarball or `docker save` archive instead",
        _ => "on machines without a registry run scripts/setup-engine.sh and set BOTTLE_BASE_IMAGE=bottle-base:bookworm",
    };
    rt.build_image(spec, progress)
        .await
        .map_err(|source| ImageError::Build {
            base: base.into(),
            hint,
            source,
        })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PT_LOAD: u32 = 1;
    const PT_INTERP: u32 = 3;

    /// A 64-bit ELF header with the given fields and program headers of the
    /// given types; a `PT_INTERP` one points at `interp`.
    fn elf(
        class: u8,
        data: u8,
        abi: elf::OsAbi,
        e_type: elf::FileType,
        machine: elf::Machine,
        phdrs: &[u32],
    ) -> Vec<u8> {
        let interp = b"/lib/ld-musl-x86_64.so.1\0";
        let phoff = 64u64;
        let interp_at = phoff + 56 * phdrs.len() as u64;
        let mut h = vec![0x7f, b'E', b'L', b'F', class, data, 1, abi.0];
        h.resize(16, 0);
        h.extend(e_type.0.to_le_bytes());
        h.extend(machine.0.to_le_bytes());
        h.extend(1u32.to_le_bytes()); // e_version
        h.extend(0x40_1000u64.to_le_bytes()); // e_entry
        h.extend(phoff.to_le_bytes());
        h.extend(0u64.to_le_bytes()); // e_shoff
        h.extend(0u32.to_le_bytes()); // e_flags
        h.extend(64u16.to_le_bytes()); // e_ehsize
        h.extend(56u16.to_le_bytes()); // e_phentsize
        h.extend((phdrs.len() as u16).to_le_bytes());
        h.extend(64u16.to_le_bytes()); // e_shentsize
        h.extend([0u8; 4]); // e_shnum, e_shstrndx
        for &t in phdrs {
            let (off, size) = if t == PT_INTERP {
                (interp_at, interp.len() as u64)
            } else {
                (0, 64)
            };
            h.extend(t.to_le_bytes());
            h.extend(4u32.to_le_bytes()); // p_flags
            h.extend(off.to_le_bytes());
            h.extend(0u64.to_le_bytes()); // p_vaddr
            h.extend(0u64.to_le_bytes()); // p_paddr
            h.extend(size.to_le_bytes()); // p_filesz
            h.extend(size.to_le_bytes()); // p_memsz
            h.extend(8u64.to_le_bytes()); // p_align
        }
        h.extend(interp);
        h
    }

    fn static_exe(machine: elf::Machine) -> Vec<u8> {
        elf(2, 1, elf::ELFOSABI_NONE, elf::ET_DYN, machine, &[PT_LOAD])
    }

    #[test]
    fn static_linux_executables_of_the_runtime_arch_pass() {
        assert_eq!(
            check_sidecar(&static_exe(elf::EM_X86_64), Arch::X86_64),
            Ok(())
        );
        assert_eq!(
            check_sidecar(&static_exe(elf::EM_AARCH64), Arch::Aarch64),
            Ok(())
        );
        // ET_EXEC (non-PIE static) and the GNU/Linux OS ABI byte too.
        let exec = elf(
            2,
            1,
            elf::ELFOSABI_LINUX,
            elf::ET_EXEC,
            elf::EM_AARCH64,
            &[],
        );
        assert_eq!(check_sidecar(&exec, Arch::Aarch64), Ok(()));
    }

    #[test]
    fn every_wrong_binary_is_refused_for_its_own_reason() {
        let x86 = Arch::X86_64;
        assert_eq!(
            check_sidecar(&static_exe(elf::EM_AARCH64), x86),
            Err(BinaryProblem::WrongArch {
                found: Arch::Aarch64
            })
        );
        assert_eq!(
            check_sidecar(&static_exe(elf::EM_X86_64), Arch::Aarch64),
            Err(BinaryProblem::WrongArch { found: x86 })
        );
        assert_eq!(
            check_sidecar(
                &elf(
                    2,
                    1,
                    elf::ELFOSABI_NONE,
                    elf::ET_DYN,
                    elf::EM_X86_64,
                    &[PT_LOAD, PT_INTERP]
                ),
                x86
            ),
            Err(BinaryProblem::Dynamic {
                interp: "/lib/ld-musl-x86_64.so.1".into()
            })
        );
        assert_eq!(
            check_sidecar(&static_exe(elf::EM_RISCV), x86),
            Err(BinaryProblem::UnknownMachine(elf::EM_RISCV.0))
        );
        assert_eq!(
            check_sidecar(
                &elf(2, 1, elf::ELFOSABI_NONE, elf::ET_REL, elf::EM_X86_64, &[]),
                x86
            ),
            Err(BinaryProblem::NotExecutable("relocatable (object)"))
        );
        assert_eq!(
            check_sidecar(
                &elf(
                    2,
                    1,
                    elf::ELFOSABI_FREEBSD,
                    elf::ET_EXEC,
                    elf::EM_X86_64,
                    &[]
                ),
                x86
            ),
            Err(BinaryProblem::NotLinux(elf::ELFOSABI_FREEBSD.0))
        );
        assert_eq!(
            check_sidecar(
                &elf(2, 2, elf::ELFOSABI_NONE, elf::ET_EXEC, elf::EM_X86_64, &[]),
                x86
            ),
            Err(BinaryProblem::BigEndian)
        );
        let mut elf32 = vec![0x7f, b'E', b'L', b'F', 1, 1, 1, 0];
        elf32.resize(52, 0);
        assert_eq!(check_sidecar(&elf32, x86), Err(BinaryProblem::Elf32));
        // A Mach-O 64-bit arm64 executable's first bytes (MH_MAGIC_64, then
        // CPU_TYPE_ARM64), as `cargo build` leaves on a Mac.
        let mut macho = vec![0xcf, 0xfa, 0xed, 0xfe, 0x0c, 0x00, 0x00, 0x01];
        macho.resize(64, 0);
        assert_eq!(
            check_sidecar(&macho, Arch::Aarch64),
            Err(BinaryProblem::MachO)
        );
        assert!(matches!(
            check_sidecar(b"#!/bin/sh\nexec true\n", x86),
            Err(BinaryProblem::NotElf(_))
        ));
        // Truncated: the header claims program headers the file lacks.
        let mut cut = elf(
            2,
            1,
            elf::ELFOSABI_NONE,
            elf::ET_DYN,
            elf::EM_X86_64,
            &[PT_LOAD, PT_INTERP],
        );
        cut.truncate(80);
        assert!(matches!(
            check_sidecar(&cut, x86),
            Err(BinaryProblem::Malformed(_))
        ));
    }

    /// This test binary is a real executable of the host, linked against
    /// the host's libc: refused as dynamic (on Linux) or Mach-O (on a Mac).
    #[test]
    fn a_host_build_is_refused() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let arch = Arch::host().expect("tests run on x86_64 or aarch64");
        let got = check_sidecar(&exe, arch);
        if cfg!(target_os = "macos") {
            assert_eq!(got, Err(BinaryProblem::MachO));
        } else if cfg!(target_env = "gnu") {
            assert!(
                matches!(&got, Err(BinaryProblem::Dynamic { interp }) if interp.contains("ld-linux")),
                "{got:?}"
            );
        }
    }

    /// The sidecars `scripts/build-sidecar.sh` built, when it ran (CI runs it
    /// first, so there they must be present).
    #[test]
    fn the_built_static_sidecars_pass_and_not_for_the_other_arch() {
        // This test runs from <target dir>/<profile>/deps/.
        let exe = std::env::current_exe().unwrap();
        let target = exe.ancestors().nth(3).unwrap().join("sidecar");
        for arch in Arch::ALL {
            let bin = target.join(arch.musl_target()).join("bottle-sidecar");
            let Ok(data) = std::fs::read(&bin) else {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "{} missing under CI: scripts/test.sh runs {BUILD_SIDECAR} first",
                    bin.display()
                );
                eprintln!("skipped: {} not built (run {BUILD_SIDECAR})", bin.display());
                continue;
            };
            assert_eq!(check_sidecar(&data, arch), Ok(()), "{}", bin.display());
            let other = Arch::ALL.into_iter().find(|a| *a != arch).unwrap();
            assert_eq!(
                check_sidecar(&data, other),
                Err(BinaryProblem::WrongArch { found: arch })
            );
        }
    }

    #[test]
    fn the_binary_is_found_beside_bottle_by_target_name_first() {
        let dir = tempfile::tempdir().unwrap();
        let bin_dir = dir.path().join("debug");
        std::fs::create_dir(&bin_dir).unwrap();
        let arch = Arch::Aarch64;
        let err = sidecar_binary_beside(&bin_dir, arch).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("bottle-sidecar-aarch64-unknown-linux-musl"),
            "{msg}"
        );
        assert!(msg.contains(BUILD_SIDECAR), "{msg}");

        let plain = bin_dir.join("bottle-sidecar");
        std::fs::write(&plain, b"").unwrap();
        assert_eq!(sidecar_binary_beside(&bin_dir, arch).unwrap(), plain);
        let script_out = dir
            .path()
            .join("sidecar/aarch64-unknown-linux-musl/bottle-sidecar");
        std::fs::create_dir_all(script_out.parent().unwrap()).unwrap();
        std::fs::write(&script_out, b"").unwrap();
        assert_eq!(sidecar_binary_beside(&bin_dir, arch).unwrap(), script_out);
        let by_name = bin_dir.join("bottle-sidecar-aarch64-unknown-linux-musl");
        std::fs::write(&by_name, b"").unwrap();
        assert_eq!(sidecar_binary_beside(&bin_dir, arch).unwrap(), by_name);
        // The other architecture's name is never taken.
        assert_eq!(
            sidecar_binary_beside(&bin_dir, Arch::X86_64).unwrap(),
            plain
        );
    }

    #[test]
    fn a_bad_binary_is_refused_before_any_image_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bottle-sidecar");
        std::fs::write(&bin, static_exe(elf::EM_X86_64)).unwrap();
        let host = Host::fixed(
            dir.path().join("state"),
            vec![dir.path().to_path_buf()],
            BTreeMap::from([("BOTTLE_SIDECAR_BIN".to_string(), bin.display().to_string())]),
        );
        let spec = sidecar_build("base", &host, Arch::X86_64).unwrap();
        assert!(spec.tag.starts_with("bottle-sidecar:"));
        let err = sidecar_build("base", &host, Arch::Aarch64).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(
                "cannot go into the sidecar image of an aarch64 runtime: it is built for x86_64"
            ),
            "{msg}"
        );
        assert!(msg.contains("fix: run scripts/build-sidecar.sh"), "{msg}");
        assert!(msg.contains("aarch64-unknown-linux-musl build"), "{msg}");
    }

    /// The recipe a Containerfile's instructions leave, read from the file:
    /// COPY, `RUN mkdir -p`, WORKDIR, ENTRYPOINT, CMD, LABEL.
    fn recipe_of(containerfile: &str) -> Recipe {
        let mut r = Recipe::default();
        let json = |rest: &str| serde_json::from_str::<Vec<String>>(rest).unwrap();
        for line in containerfile.lines() {
            let (op, rest) = line.split_once(' ').unwrap_or((line, ""));
            match op {
                "COPY" => {
                    let (src, dst) = rest.split_once(' ').unwrap();
                    r.files.insert(dst.into(), (src.into(), 0o755));
                }
                "RUN" if rest.starts_with("mkdir -p ") => {
                    for d in rest["mkdir -p ".len()..].split_whitespace() {
                        r.dirs.insert(d.into(), 0o755);
                    }
                }
                "WORKDIR" => r.workdir = Some(rest.into()),
                "ENTRYPOINT" => r.entrypoint = Some(json(rest)),
                "CMD" => r.cmd = Some(json(rest)),
                "LABEL" => {
                    let (k, v) = rest.split_once('=').unwrap();
                    r.labels.insert(k.into(), v.trim_matches('"').into());
                }
                _ => {}
            }
        }
        r
    }

    /// The archive recipes say what the Containerfiles say, so an image
    /// written for smolvm is the image docker and Apple `container` build.
    #[test]
    fn recipes_follow_the_containerfiles() {
        for (file, recipe) in [
            (SIDECAR_CONTAINERFILE, sidecar_recipe()),
            (AGENT_CONTAINERFILE, agent_recipe()),
        ] {
            let read = recipe_of(file);
            assert_eq!(read.files, recipe.files);
            assert_eq!(read.dirs, recipe.dirs);
            assert_eq!(read.workdir, recipe.workdir);
            assert_eq!(read.entrypoint, recipe.entrypoint);
            assert_eq!(read.cmd, recipe.cmd);
            assert_eq!(read.labels, recipe.labels);
        }
        // Each file the sidecar recipe adds is carried by its build.
        let build = BuildSpec {
            recipe: sidecar_recipe(),
            ..agent_build("t", "b")
        };
        for (key, _) in build.recipe.files.values() {
            assert!(key == "bottle-sidecar", "{key}");
        }
        // The packages the Containerfiles install are what the recipes
        // require of a base.
        for (bin, pkg) in [
            ("git", "git"),
            ("curl", "curl"),
            ("python3", "python3"),
            ("bash", "bash"),
        ] {
            assert!(AGENT_CONTAINERFILE.contains(pkg));
            assert!(
                agent_recipe().requires.contains(&format!("/usr/bin/{bin}")),
                "{bin}"
            );
        }
        for pkg in ["ca-certificates", "git"] {
            assert!(SIDECAR_CONTAINERFILE.contains(pkg), "{pkg}");
        }
        assert!(sidecar_recipe()
            .requires
            .contains(&"/usr/bin/git".to_string()));
    }
}
