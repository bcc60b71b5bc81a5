#!/usr/bin/env bash
# Validates bottle's apple-container driver on a Mac: the exact commands of
# docs/runtimes.md ("Apple container on a Mac, step by step"), each checked.
# Needs macOS 26 on Apple silicon, Apple `container` 1.0.0 or later
# (1.2.0 or later recommended), a Rust toolchain, and a Linux arm64 build of
# bottle-sidecar (BOTTLE_SIDECAR_BIN, or scripts/build-sidecar.sh if this
# checkout has it). Exits non-zero at the first check that fails, saying which.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "check-apple: FAILED: $*" >&2; exit 1; }
step() { echo; echo "== $*"; }

step "1. the machine: macOS 26 on Apple silicon"
[ "$(uname -s)" = Darwin ] || fail "this is $(uname -s), not macOS; the driver's tests against the fake run anywhere: cargo test -p bottle-runtimes --test apple"
[ "$(uname -m)" = arm64 ] || fail "Apple container needs Apple silicon (this is $(uname -m))"
major=$(sw_vers -productVersion | cut -d. -f1)
[ "$major" -ge 26 ] || fail "macOS $(sw_vers -productVersion): container networks need macOS 26"

step "2. the container CLI and its service"
command -v container >/dev/null || fail "no \`container\` on PATH: install the signed .pkg from github.com/apple/container/releases"
container --version
container system status >/dev/null 2>&1 || container system start --enable-kernel-install
container system status

step "3. building bottle and a Linux sidecar for the VM"
cargo build --release -p bottle
if [ -z "${BOTTLE_SIDECAR_BIN:-}" ] && [ -x scripts/build-sidecar.sh ]; then
  scripts/build-sidecar.sh
fi
if [ -n "${BOTTLE_SIDECAR_BIN:-}" ]; then
  file "$BOTTLE_SIDECAR_BIN" | grep -q 'ELF 64-bit.*aarch64' \
    || fail "BOTTLE_SIDECAR_BIN=$BOTTLE_SIDECAR_BIN is not a Linux arm64 (ELF aarch64) binary"
fi
bottle=target/release/bottle
name=check-apple
"$bottle" down "$name" >/dev/null 2>&1 || true
trap '"$bottle" down "$name" >/dev/null 2>&1 || true' EXIT

step "4. bottle probe: every measurement, with the sidecar image as the helper"
set +e
"$bottle" probe --runtime apple-container
"$bottle" probe --runtime apple-container --json >"${TMPDIR:-/tmp}/bottle-check-apple-probe.json"
set -e
probe="${TMPDIR:-/tmp}/bottle-check-apple-probe.json"
state_of() { grep -A1 "\"name\": \"$1\"" "$probe" | sed -n 's/.*"state": "\(.*\)".*/\1/p'; }
for cap in cli service-running private-network internal-network multi-network-attach; do
  [ "$(state_of "$cap")" = yes ] || fail "probe: $cap is $(state_of "$cap"), expected yes (see the table above)"
done
# apple/container#2062: raw-IP TCP from the internal network must not reach
# the internet. `no` here means your release leaks: bottle refuses to run.
[ "$(state_of internal-network-isolated)" = yes ] \
  || fail "probe: internal-network-isolated is $(state_of internal-network-isolated): the internal network passes traffic to the internet (apple/container#2062) or could not be measured"
# apple/container#1320: the host answers at the gateway. Expected `no` on
# every release up to 1.2.2; `yes` means the gateway is gone from inspect.
echo "host-unreachable-from-internal: $(state_of host-unreachable-from-internal) (expected no up to 1.2.2: apple/container#1320)"

step "5. the negative test: bottle up refuses without consent to the weaknesses"
set +e
"$bottle" up --runtime apple-container --name "$name" -f examples/demo.toml
code=$?
set -e
[ "$code" = 4 ] || fail "bottle up without --accept-weakness exited $code, expected 4 (refused)"

step "6. bottle up with the weaknesses accepted, a command, verify, down"
"$bottle" up --runtime apple-container --name "$name" -f examples/demo.toml \
  --accept-weakness host-reachable-from-internal \
  --accept-weakness broadcast-reaches-host
"$bottle" exec "$name" -- sh -c 'echo "inside: $(uname -m)"'
"$bottle" verify "$name"
"$bottle" down "$name"
trap - EXIT
[ -z "$(container ls --all --quiet | grep "bottle-$name-" || true)" ] || fail "containers of $name are left: container ls --all"
[ -z "$(container network ls --format json | grep -o "bottle-$name-[a-z]*" || true)" ] || fail "networks of $name are left: container network ls"

echo
echo "check-apple: all checks passed on $(sw_vers -productVersion), $(container --version)"
