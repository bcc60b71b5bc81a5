//! Set-up shared by the in-process orchestration tests.

use bottle_runtimes::Arch;

/// A file `bottle` accepts as a static Linux sidecar for `arch`: a 64-bit
/// little-endian ELF header (static-pie, no program headers, so no
/// `PT_INTERP`) followed by `payload`, which makes each stand-in distinct
/// (the sidecar image tag is a digest of the binary).
pub fn static_sidecar(arch: Arch, payload: &[u8]) -> Vec<u8> {
    const ET_DYN: u16 = 3;
    let machine: u16 = match arch {
        Arch::X86_64 => 62,
        Arch::Aarch64 => 183,
    };
    let mut h = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
    h.resize(16, 0);
    h.extend(ET_DYN.to_le_bytes());
    h.extend(machine.to_le_bytes());
    h.extend(1u32.to_le_bytes()); // e_version
    h.extend(0u64.to_le_bytes()); // e_entry
    h.extend(0u64.to_le_bytes()); // e_phoff
    h.extend(0u64.to_le_bytes()); // e_shoff
    h.extend(0u32.to_le_bytes()); // e_flags
    h.extend(64u16.to_le_bytes()); // e_ehsize
    h.extend(56u16.to_le_bytes()); // e_phentsize
    h.extend(0u16.to_le_bytes()); // e_phnum
    h.extend(64u16.to_le_bytes()); // e_shentsize
    h.extend([0u8; 4]); // e_shnum, e_shstrndx
    h.extend(payload);
    h
}
