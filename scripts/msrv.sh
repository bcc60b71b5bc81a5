#!/usr/bin/env bash
# Checks the workspace's declared minimum Rust (`rust-version` in Cargo.toml)
# against what the lockfile and the code really need. Why this and not only
# `cargo +MSRV check`: docs/decisions.md, "The minimum Rust version".
#
# 1. Every workspace member inherits the declared version (a member without
#    `rust-version.workspace = true` declares nothing, and nothing checks it).
# 2. No locked dependency declares a `rust-version` newer than ours.
# 3. When a toolchain of exactly that version is installed, the workspace
#    builds with it (`cargo +X check`); otherwise this says it was skipped.
#    Only the machine's own toolchain can be had on a fresh machine, so (3)
#    runs where someone installed the toolchain, and (1)-(2) everywhere.
# Clippy's `incompatible_msrv` lint (on by default, `-D warnings` in
# scripts/test.sh) covers the standard-library APIs our own code calls.
set -euo pipefail
cd "$(dirname "$0")/.."

mkdir -p target
cargo metadata --format-version 1 --locked >target/msrv-metadata.json
msrv="$(python3 - target/msrv-metadata.json <<'EOF'
import json, re, sys

def key(v):
    return tuple(int(x) for x in (v.split(".") + ["0", "0"])[:3])

meta = json.load(open(sys.argv[1]))
root = open("Cargo.toml").read()
m = re.search(r'^\[workspace\.package\][^\[]*?^rust-version\s*=\s*"([0-9.]+)"', root, re.M | re.S)
if not m:
    sys.exit("msrv: Cargo.toml has no [workspace.package] rust-version; declare the minimum Rust there")
ours = m.group(1)

members = set(meta["workspace_members"])
bad = []
for p in meta["packages"]:
    if p["id"] in members:
        if p.get("rust_version") != ours:
            bad.append(f"  {p['name']}: rust-version {p.get('rust_version')!r}, workspace says {ours}"
                       f" (add `rust-version.workspace = true` to {p['manifest_path']})")
    elif p.get("rust_version") and key(p["rust_version"]) > key(ours):
        bad.append(f"  {p['name']} {p['version']} needs Rust {p['rust_version']}, newer than our {ours}")
if bad:
    print(f"msrv: the declared minimum Rust {ours} is not what the workspace needs:", file=sys.stderr)
    print("\n".join(sorted(bad)), file=sys.stderr)
    sys.exit("msrv: raise rust-version in Cargo.toml, or pin the dependency to an older version "
             "(`cargo update -p NAME --precise VERSION`)")
print(ours)
EOF
)"
echo "msrv: Rust $msrv is declared by every member and enough for every locked dependency" >&2

# The toolchain of exactly that version, if one is installed (never fetched:
# `rustup run` could try to download it).
toolchain=""
if command -v rustup >/dev/null 2>&1; then
  toolchain="$(rustup toolchain list | awk -v v="$msrv" '{ split($1, a, "-"); if (a[1] == v || a[1] == v ".0") { print $1; exit } }')"
fi
if [ -n "$toolchain" ]; then
  echo "msrv: cargo +$toolchain check --workspace --all-targets" >&2
  cargo "+$toolchain" check --workspace --all-targets --locked
else
  echo "msrv: no Rust $msrv toolchain on this machine; the build itself was not checked with it" >&2
fi
