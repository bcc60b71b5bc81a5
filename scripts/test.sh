#!/usr/bin/env bash
# Runs every test bottle has, the way CI does: formatting, lints (clippy.toml),
# docs, the minimum Rust version, cargo-deny (deny.toml), the static sidecar
# builds (x86_64 and aarch64 musl; the aarch64 one run under qemu), the unit
# and in-process tests of every crate, and the end-to-end tests against a real
# Docker engine on the static x86_64 sidecar. Sets up what is missing first
# (cargo-deny, engine, base image, zig, the musl targets, qemu-user-static).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null 2>&1 || {
  echo "test: cargo not found; install Rust (https://rustup.rs) and retry" >&2
  exit 1
}
# Host tools the end-to-end tests use: iproute2 (host addresses, breaking a
# bridge on purpose), openssl (a test CA for local TLS origins), script (a pty),
# tmux (a terminal to drive a full-screen UI in).
need=""
command -v ip >/dev/null 2>&1 || need="$need iproute2"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
command -v script >/dev/null 2>&1 || need="$need bsdutils"
# tmux: a real terminal for `bottle requests --watch` (keys sent, screen read).
command -v tmux >/dev/null 2>&1 || need="$need tmux"
# npm: the provider images install the agent CLIs from the registry the
# host's npm is configured with (tests/agents.rs, tests/agent_run.rs).
command -v npm >/dev/null 2>&1 || need="$need npm"
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need="$need python3-venv"
# qemu-aarch64-static runs the cross-built aarch64 sidecar (--version).
command -v qemu-aarch64-static >/dev/null 2>&1 || need="$need qemu-user-static"
if [ -n "$need" ]; then
  echo "test: installing$need" >&2
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null; fi
fi

# cargo-deny checks deny.toml: licences, banned crates (aws-lc-rs, a second
# TLS stack), sources, and known advisories when their database can be had.
DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "^cargo-deny $DENY_VERSION$"; then
  echo "test: installing cargo-deny $DENY_VERSION" >&2
  cargo install cargo-deny --version "$DENY_VERSION" --locked
fi
deny_checks() {
  echo "test: cargo deny check licenses bans sources" >&2
  cargo deny --locked check licenses bans sources
  # The RustSec database is a git clone from GitHub. Where that host cannot
  # be reached, a database already on disk (a copy put under
  # $CARGO_HOME/advisory-dbs/) is used as it is; with neither, say so plainly
  # (docs/decisions.md, "cargo-deny without the advisory database").
  local dbs="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
  if cargo deny fetch db >/dev/null 2>&1 || compgen -G "$dbs/advisory-db-*/*" >/dev/null; then
    echo "test: cargo deny check advisories" >&2
    cargo deny --frozen check advisories
  else
    echo "test: advisories NOT checked: the RustSec database cannot be fetched here and none is in $dbs" >&2
  fi
}

scripts/setup-engine.sh
# The real smolvm CLI (PyPI smolmachines) for the smolvm driver's tests.
BOTTLE_SMOLVM_BIN="$(scripts/setup-smolvm.sh)"
export BOTTLE_SMOLVM_BIN
# Podman's Docker-compatible API, for tests/podman.rs (a whole bottle on
# podman: probe, up, exec, verify, host unreachable, down).
BOTTLE_PODMAN_HOST="$(scripts/setup-podman.sh)"
export BOTTLE_PODMAN_HOST
# The Python MCP SDK (PyPI mcp), the real MCP client tests/supervise.rs runs
# inside the agent.
BOTTLE_TEST_MCP_PY="$(scripts/setup-mcp-client.sh)"
export BOTTLE_TEST_MCP_PY
# The real Claude Code and Codex CLIs (npm), which tests/fake_api.rs drives
# against the fake model API (tests/fixtures/fake-model-api.py).
BOTTLE_AGENT_CLIS="$(scripts/setup-agent-clis.sh)"
export BOTTLE_AGENT_CLIS

echo "test: cargo fmt --check" >&2
cargo fmt --all -- --check
echo "test: cargo clippy" >&2
cargo clippy --workspace --all-targets -- -D warnings
echo "test: cargo doc" >&2
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
echo "test: minimum Rust version" >&2
scripts/msrv.sh
deny_checks
echo "test: cargo build" >&2
cargo build --workspace
# The static Linux sidecars (issue 10): the end-to-end tests below run on the
# x86_64 one, which `bottle` finds next to itself as
# bottle-sidecar-x86_64-unknown-linux-musl. The aarch64 one is cross-built
# here; its ELF header (64-bit, aarch64, no interpreter) is checked by
# bottle's images::tests under CI=true, and it must start under qemu.
# Built in the `release` profile, not the shipped `ship` one (release + fat
# LTO, docs/decisions.md): the same source, without about 5 minutes of
# whole-program optimisation per target in every CI run.
echo "test: static sidecars (scripts/build-sidecar.sh)" >&2
sidecar_start=$(date +%s)
BOTTLE_SIDECAR_PROFILE=${BOTTLE_SIDECAR_PROFILE:-release} scripts/build-sidecar.sh >/dev/null
echo "test: static sidecars ready in $(($(date +%s) - sidecar_start))s" >&2
arm=target/sidecar/aarch64-unknown-linux-musl/bottle-sidecar
arm_version=$(qemu-aarch64-static "$arm" --version)
case "$arm_version" in
  "bottle-sidecar "*" aarch64-linux-musl") echo "test: qemu-aarch64-static $arm --version: $arm_version" >&2 ;;
  *)
    echo "test: qemu-aarch64-static $arm --version printed '$arm_version', not an aarch64-linux-musl bottle-sidecar" >&2
    exit 1
    ;;
esac
# Build the images once, so parallel tests do not race to build them.
echo "test: preparing images (bottle probe)" >&2
target/debug/bottle probe --runtime docker
echo "test: cargo test" >&2
cargo test --workspace -- --test-threads "${BOTTLE_TEST_THREADS:-2}"
