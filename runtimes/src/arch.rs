//! The CPU architecture a runtime's containers run on, which decides which
//! static Linux `bottle-sidecar` build goes into the sidecar image.
//!
//! It is the runtime's, not the host's: Docker Desktop and Apple `container`
//! run an arm64 Linux VM under a Mac, and a remote engine may be anything.

/// An architecture bottle ships a sidecar for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    X86_64,
    Aarch64,
}

/// An architecture name bottle has no sidecar build for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("architecture {0:?}, for which bottle has no sidecar build (it ships x86_64 and aarch64)")]
pub struct UnknownArch(pub String);

impl Arch {
    /// Every architecture, in the order `scripts/build-sidecar.sh` builds them.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The name Rust and the kernel use (`uname -m` on Linux).
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The Rust target the static sidecar for this architecture is built for.
    pub fn musl_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Aarch64 => "aarch64-unknown-linux-musl",
        }
    }

    /// The architecture this process was built for, when bottle ships a
    /// sidecar for it.
    pub fn host() -> Option<Arch> {
        std::env::consts::ARCH.parse().ok()
    }
}

impl std::str::FromStr for Arch {
    type Err = UnknownArch;

    /// Accepts the kernel's names (`x86_64`, `aarch64`, what docker `info`
    /// reports on Linux), the OCI/Go names (`amd64`, `arm64`, what podman
    /// and Docker Desktop may report) and `arm64` as macOS spells it.
    fn from_str(s: &str) -> Result<Arch, UnknownArch> {
        match s.trim().to_ascii_lowercase().as_str() {
            "x86_64" | "amd64" | "x86-64" | "x64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" | "arm64v8" => Ok(Arch::Aarch64),
            _ => Err(UnknownArch(s.trim().to_string())),
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_every_engine_parse() {
        for s in ["x86_64", "amd64", "AMD64", " x86_64\n"] {
            assert_eq!(s.parse::<Arch>(), Ok(Arch::X86_64), "{s:?}");
        }
        for s in ["aarch64", "arm64", "arm64v8"] {
            assert_eq!(s.parse::<Arch>(), Ok(Arch::Aarch64), "{s:?}");
        }
        for s in ["", "armv7l", "s390x", "ppc64le", "aarch64_be", "i686"] {
            assert_eq!(s.parse::<Arch>(), Err(UnknownArch(s.into())), "{s:?}");
        }
    }

    #[test]
    fn targets_are_the_static_linux_ones() {
        assert_eq!(Arch::X86_64.musl_target(), "x86_64-unknown-linux-musl");
        assert_eq!(Arch::Aarch64.musl_target(), "aarch64-unknown-linux-musl");
        assert_eq!(Arch::host().map(Arch::as_str), Some(std::env::consts::ARCH));
    }
}
