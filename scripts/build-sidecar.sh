#!/usr/bin/env bash
# Builds the static Linux `bottle-sidecar` that goes into the sidecar image,
# for every architecture a runtime may run (x86_64 and aarch64), on any host:
# a Mac builds the Linux binaries its Apple `container` or Docker Desktop VM
# runs, and a Linux x86_64 machine builds the aarch64 one too.
#
# The linker is zig, driven by `cargo zigbuild`; both come from PyPI
# (`ziglang`, `cargo-zigbuild`) into a private venv, so nothing but Python 3
# and rustup is needed. pip reads its index from its own configuration.
# Missing rustup targets are added. Idempotent: what is there is reused.
#
# Puts each binary where `bottle` looks for it (docs/runtimes.md, "The sidecar
# binary"):
#   target/sidecar/<triple>/bottle-sidecar        (stable path for scripts and CI)
#   target/<profile>/bottle-sidecar-<triple>      (next to `bottle`: found by target name)
# and prints the paths on stdout, one per line (progress goes to stderr).
#
#   BOTTLE_SIDECAR_TARGETS  triples to build  (default: x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
#   BOTTLE_SIDECAR_PROFILE  cargo profile     (default: ship, release + LTO; Cargo.toml)
#   BOTTLE_BESIDE           profile dir of the `bottle` to put copies beside
#                           (default: target/debug and target/release, those that exist)
#   BOTTLE_ZIG_VENV         venv for zig      (default ~/.local/share/bottle/zig-venv)
#   PYTHON                  interpreter for the venv (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=${BOTTLE_SIDECAR_TARGETS:-x86_64-unknown-linux-musl aarch64-unknown-linux-musl}
PROFILE=${BOTTLE_SIDECAR_PROFILE:-ship}
VENV=${BOTTLE_ZIG_VENV:-${XDG_DATA_HOME:-$HOME/.local/share}/bottle/zig-venv}
PYTHON=${PYTHON:-python3}
# Pinned so every machine links with the same zig (and CI is repeatable).
ZIGLANG_VERSION=0.17.1
ZIGBUILD_VERSION=0.24.1
log() { printf 'build-sidecar: %s\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

command -v cargo >/dev/null 2>&1 || {
  log "cargo not found; install Rust with rustup (https://rustup.rs) and retry"
  exit 1
}
command -v rustup >/dev/null 2>&1 || {
  log "rustup not found; the musl targets are added with rustup: install Rust with it (https://rustup.rs) and retry"
  exit 1
}
command -v "$PYTHON" >/dev/null 2>&1 || {
  log "$PYTHON not found; install Python 3 (Debian: apt-get install python3 python3-venv; macOS: it ships with the Xcode command-line tools) and retry"
  exit 1
}

# 1. zig and cargo-zigbuild in a private venv.
installed() {
  "$VENV/bin/python" - "$1" <<'EOF' 2>/dev/null
import importlib.metadata as m, sys
print(m.version(sys.argv[1]))
EOF
}
if [ -x "$VENV/bin/python" ] &&
  [ "$(installed ziglang || true)" = "$ZIGLANG_VERSION" ] &&
  [ "$(installed cargo-zigbuild || true)" = "$ZIGBUILD_VERSION" ]; then
  log "ziglang $ZIGLANG_VERSION and cargo-zigbuild $ZIGBUILD_VERSION already in $VENV"
else
  ensure_venv "$VENV" "$PYTHON"
  log "installing ziglang==$ZIGLANG_VERSION cargo-zigbuild==$ZIGBUILD_VERSION into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION"
fi
# cargo-zigbuild finds zig through the `ziglang` module of the Python on PATH
# (or `python-zig`): put the venv first.
export PATH="$VENV/bin:$PATH"

# 2. The Rust standard library for each target.
have_targets=$(rustup target list --installed)
for t in $TARGETS; do
  if ! grep -qx "$t" <<<"$have_targets"; then
    log "rustup target add $t"
    rustup target add "$t" >&2
  fi
done

# 3. Build, then copy where bottle looks.
case "$PROFILE" in
  dev | debug) profile_dir=debug; profile_flag=() ;;
  release) profile_dir=release; profile_flag=(--release) ;;
  *) profile_dir=$PROFILE; profile_flag=(--profile "$PROFILE") ;;
esac
target_dir=$(cargo metadata --format-version 1 --no-deps | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
beside=()
if [ -n "${BOTTLE_BESIDE:-}" ]; then
  beside=("$BOTTLE_BESIDE")
else
  for d in debug release; do [ -d "$target_dir/$d" ] && beside+=("$target_dir/$d"); done
fi

for t in $TARGETS; do
  start=$(date +%s)
  log "cargo zigbuild -p bottle-sidecar --target $t (${PROFILE})"
  cargo zigbuild --locked -p bottle-sidecar --bin bottle-sidecar --target "$t" "${profile_flag[@]}" >&2
  built="$target_dir/$t/$profile_dir/bottle-sidecar"
  [ -f "$built" ] || {
    log "cargo zigbuild finished but $built is not there; check the cargo output above"
    exit 1
  }
  out="$target_dir/sidecar/$t/bottle-sidecar"
  mkdir -p "$(dirname "$out")"
  cp -f "$built" "$out.tmp" && mv -f "$out.tmp" "$out"
  for d in "${beside[@]}"; do
    mkdir -p "$d"
    cp -f "$built" "$d/bottle-sidecar-$t.tmp" && mv -f "$d/bottle-sidecar-$t.tmp" "$d/bottle-sidecar-$t"
  done
  log "$t built in $(($(date +%s) - start))s: $out"
  printf '%s\n' "$out"
done
