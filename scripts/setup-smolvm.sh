#!/usr/bin/env bash
# Installs the real smolvm CLI for bottle's smolvm runtime and its tests.
#
# smolvm ships on PyPI inside the wheel `smolmachines` as `smol/smol-vmm`,
# next to the libkrun libraries it loads (docs/runtimes.md, appendix). This script
# installs that wheel into a private venv and writes a wrapper named `smolvm`
# that points the loader at the wheel's `smol/` folder and execs the binary.
# Idempotent: a venv that already holds the pinned version is reused and the
# wrapper is rewritten only when its content changes. Prints the wrapper's
# path on stdout (progress goes to stderr).
#
#   BOTTLE_SMOLVM_VENV    venv to install into   (default ~/.local/share/bottle/smolvm-venv)
#   BOTTLE_SMOLVM_BINDIR  where to write `smolvm` (default ~/.local/bin)
#   BOTTLE_SMOLVM_VERSION smolmachines version    (default 1.32.2)
#   PYTHON                interpreter for the venv (default python3)
#   BOTTLE_SMOLVM_IMAGE_DIR  smolvm image store bottle writes its images to
#                         (default $BOTTLE_SMOLVM_STATE_DIR/bottle-images, else
#                         ~/.local/share/bottle/smolvm-images)
#   BOTTLE_SMOLVM_BASE    `skip` to leave the base out of the store
#
# smolvm boots images but does not build them, so bottle writes its agent and
# sidecar images itself as archives on a base rootfs (docs/runtimes.md). This
# script also puts that base, a Debian made with debootstrap (lib.sh), into the
# store as `bottle-base:bookworm`.
set -euo pipefail

VERSION=${BOTTLE_SMOLVM_VERSION:-1.32.2}
VENV=${BOTTLE_SMOLVM_VENV:-${XDG_DATA_HOME:-$HOME/.local/share}/bottle/smolvm-venv}
BINDIR=${BOTTLE_SMOLVM_BINDIR:-$HOME/.local/bin}
PYTHON=${PYTHON:-python3}
log() { printf 'setup-smolvm: %s\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

command -v "$PYTHON" >/dev/null 2>&1 || {
  log "$PYTHON not found; install Python 3 (Debian: apt-get install python3 python3-venv) and retry"
  exit 1
}

installed_version() {
  "$VENV/bin/python" - <<'EOF' 2>/dev/null
import importlib.metadata as m
print(m.version("smolmachines"))
EOF
}

if [ -x "$VENV/bin/python" ] && [ "$(installed_version || true)" = "$VERSION" ]; then
  log "smolmachines $VERSION already in $VENV"
else
  ensure_venv "$VENV" "$PYTHON"
  log "installing smolmachines==$VERSION into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "smolmachines==$VERSION"
fi

# The wheel's `smol/` folder: the binary and the libraries it dlopens.
SMOL_DIR=$("$VENV/bin/python" - <<'EOF'
import importlib.metadata as m, pathlib
dist = m.distribution("smolmachines")
for f in dist.files or []:
    if f.name == "smol-vmm" and f.parent.name == "smol":
        print(pathlib.Path(dist.locate_file(f)).resolve().parent)
        break
EOF
)
if [ -z "$SMOL_DIR" ] || [ ! -f "$SMOL_DIR/smol-vmm" ]; then
  log "smolmachines $VERSION has no smol/smol-vmm; the wheel layout changed (see the docs/runtimes.md appendix)"
  exit 1
fi
chmod +x "$SMOL_DIR/smol-vmm"
# smol-vmm looks for a packed `<its name>.smolmachine` next to itself and
# prints a note on every run when its file name is not `smolvm`; a hard link
# (a copy where links fail) named `smolvm` beside it keeps stderr clean.
BIN="$SMOL_DIR/smolvm"
if ! cmp -s "$SMOL_DIR/smol-vmm" "$BIN"; then
  rm -f "$BIN"
  ln "$SMOL_DIR/smol-vmm" "$BIN" 2>/dev/null || cp "$SMOL_DIR/smol-vmm" "$BIN"
  chmod 0755 "$BIN"
fi

mkdir -p "$BINDIR"
WRAPPER="$BINDIR/smolvm"
CONTENT="#!/bin/sh
# Written by bottle's scripts/setup-smolvm.sh: runs smolvm $VERSION from the
# smolmachines wheel in $VENV.
SMOLVM_LIB_DIR='$SMOL_DIR'
LD_LIBRARY_PATH='$SMOL_DIR'\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
export SMOLVM_LIB_DIR LD_LIBRARY_PATH
exec '$BIN' \"\$@\"
"
if [ ! -f "$WRAPPER" ] || [ "$(cat "$WRAPPER")" != "$(printf '%s' "$CONTENT")" ]; then
  printf '%s' "$CONTENT" >"$WRAPPER.tmp"
  chmod 0755 "$WRAPPER.tmp"
  mv "$WRAPPER.tmp" "$WRAPPER"
  log "wrote $WRAPPER"
fi

# The base rootfs in the store, under the name bottle looks for.
ensure_store_base() {
  [ "${BOTTLE_SMOLVM_BASE:-}" = skip ] && return
  local store=${BOTTLE_SMOLVM_IMAGE_DIR:-}
  if [ -z "$store" ]; then
    if [ -n "${BOTTLE_SMOLVM_STATE_DIR:-}" ]; then
      store=$BOTTLE_SMOLVM_STATE_DIR/bottle-images
    else
      store=${XDG_DATA_HOME:-$HOME/.local/share}/bottle/smolvm-images
    fi
  fi
  local target="$store/bottle-base%3Abookworm.tar"
  if [ -s "$target" ]; then
    log "base image bottle-base:bookworm in $store"
    return
  fi
  if [ "$(uname -s)" != Linux ] || ! command -v apt-get >/dev/null 2>&1; then
    log "no base in $store: debootstrap needs Debian or Ubuntu; copy an uncompressed Debian rootfs tarball (with bash, git, curl, python3, ca-certificates) to $target, or set BOTTLE_BASE_IMAGE to one"
    return
  fi
  local tarball
  tarball=$(ensure_base_rootfs)
  mkdir -p "$store"
  ln -f "$tarball" "$target" 2>/dev/null || cp "$tarball" "$target"
  log "base image bottle-base:bookworm in $store"
}

got=$("$WRAPPER" --version 2>&1) || {
  log "$WRAPPER --version failed: $got"
  exit 1
}
log "$got ready"
ensure_store_base
case ":$PATH:" in
  *":$BINDIR:"*) ;;
  *) log "note: $BINDIR is not on PATH; add it, or set BOTTLE_SMOLVM_BIN=$WRAPPER" ;;
esac
printf '%s\n' "$WRAPPER"
