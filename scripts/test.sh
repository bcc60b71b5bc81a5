#!/usr/bin/env bash
# Runs every test bottle has, the way CI does: formatting, lints, the unit and
# in-process tests of every crate, and the end-to-end tests against a real
# Docker engine. Sets up what is missing first (engine, base image).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null 2>&1 || {
  echo "test: cargo not found; install Rust (https://rustup.rs) and retry" >&2
  exit 1
}
# The end-to-end tests list the host's addresses with iproute2.
command -v ip >/dev/null 2>&1 || NEED_IPROUTE=1
if [ "${NEED_IPROUTE:-0}" = 1 ]; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq iproute2 >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq iproute2 >/dev/null; fi
fi

scripts/setup-engine.sh

echo "test: cargo fmt --check" >&2
cargo fmt --all -- --check
echo "test: cargo clippy" >&2
cargo clippy --workspace --all-targets -- -D warnings
echo "test: cargo build" >&2
cargo build --workspace
# Build the images once, so parallel tests do not race to build them.
echo "test: preparing images (bottle probe)" >&2
target/debug/bottle probe --runtime docker
echo "test: cargo test" >&2
cargo test --workspace -- --test-threads "${BOTTLE_TEST_THREADS:-2}"
