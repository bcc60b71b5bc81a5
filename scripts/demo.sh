#!/usr/bin/env bash
# The demo: builds bottle, brings up a bottle, runs a command inside it, checks
# from inside the agent that it cannot get out (`bottle verify`), and takes it
# down again.
# Sets up what is missing first (engine, base image, the static sidecar).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-engine.sh
echo "demo: building bottle" >&2
cargo build --workspace --quiet
# The sidecar image carries a static Linux sidecar for the engine's
# architecture (this machine's: the engine is local).
echo "demo: building the static sidecar" >&2
arch=$(uname -m); [ "$arch" = arm64 ] && arch=aarch64
BOTTLE_SIDECAR_TARGETS="$arch-unknown-linux-musl" scripts/build-sidecar.sh >/dev/null
bottle=target/debug/bottle
name=demo

"$bottle" down "$name" >/dev/null 2>&1 || true
trap '"$bottle" down "$name"' EXIT

echo; echo "== bottle up"
"$bottle" up -f examples/demo.toml --name "$name"

echo; echo "== a command inside the agent"
"$bottle" exec "$name" -- sh -c 'echo "hello from $(hostname), uid $(id -u)"; ip -4 -o addr show | grep -v " lo "'

echo; echo "== isolation check: bottle verify (every escape tried from the agent's network with probes it cannot alter, its settings read from the engine, with controls)"
"$bottle" verify "$name"

echo; echo "== what the agent sees when it asks for a host that is not allowed"
"$bottle" exec "$name" -- curl -s --max-time 5 http://evil.example/ | sed 's/^/    /'

echo; echo "== bottle ps"
"$bottle" ps
echo; echo "== bottle down"
trap - EXIT
"$bottle" down "$name"
