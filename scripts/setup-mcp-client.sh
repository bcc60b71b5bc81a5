#!/usr/bin/env bash
# Installs the Python MCP SDK (`mcp` from PyPI, a real MCP client nobody here
# wrote) into a plain directory that an agent can import from read-only:
# tests/supervise.rs mounts it into the agent at /opt/mcp and runs its
# client there (PYTHONPATH=/opt/mcp). The agent image's python3 is Debian's
# 3.11, so the packages are installed with a Python 3.11 venv of our own.
# Idempotent; prints the directory.
#   BOTTLE_MCP_PY_DIR   where to install (default ~/.cache/bottle/mcp-py)
#   BOTTLE_MCP_VERSION  the mcp version (default 2.3.0)
set -euo pipefail
DIR=${BOTTLE_MCP_PY_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/bottle/mcp-py}
VERSION=${BOTTLE_MCP_VERSION:-2.3.0}
VENV=${XDG_DATA_HOME:-$HOME/.local/share}/bottle/mcp-venv
log() { printf 'setup-mcp-client: %s\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

PY=python3
for cand in python3.11 python3; do
  if command -v "$cand" >/dev/null 2>&1 && \
     [ "$("$cand" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = 3.11 ]; then
    PY=$cand; break
  fi
done
if [ -f "$DIR/.version" ] && [ "$(cat "$DIR/.version")" = "$VERSION" ]; then
  log "mcp $VERSION already in $DIR"
  printf '%s\n' "$DIR"
  exit 0
fi
ensure_venv "$VENV" "$PY"
log "installing mcp==$VERSION into $DIR"
rm -rf "$DIR.partial"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  --target "$DIR.partial" "mcp==$VERSION"
printf '%s\n' "$VERSION" >"$DIR.partial/.version"
rm -rf "$DIR"
mv "$DIR.partial" "$DIR"
log "mcp $VERSION ready in $DIR"
printf '%s\n' "$DIR"
