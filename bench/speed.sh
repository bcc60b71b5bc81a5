#!/usr/bin/env bash
# Speed users feel (issue 15), in one command: makes the engine ready
# (scripts/setup-engine.sh), builds bottle, the static sidecar and the
# benches in release mode, then
#   1. egress-bench: added latency and CPU per request at 1, 4, 16 and 64
#      connections (HTTP/1.1; direct vs bottle egress), as JSON;
#   2. lifecycle-bench: `bottle up`/`down` against the raw docker sequence,
#      warm and cold, then 1, 5, 10 and 20 bottles at once;
# and writes target/bench/{egress.json,lifecycle.json,lifecycle.md,speed.svg}.
# With --publish the figure is copied to docs/img/speed.svg.
# Other arguments go to lifecycle-bench run (e.g. --runs 9, --scale 1,5).
# Takes about 10 minutes on 2 cores. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'speed: %s\n' "$*" >&2; }

publish=0
args=()
for a in "$@"; do
  case "$a" in
    --publish) publish=1 ;;
    *) args+=("$a") ;;
  esac
done

bash scripts/setup-engine.sh
target=${CARGO_TARGET_DIR:-$PWD/target}
# bottle and the benches in release; the sidecar in the profile it ships in
# (`ship`: release + LTO), for the engine's architecture only (the image
# `up` builds) and, for egress-bench, for this host.
log "building bottle and the benches (release), bottle-sidecar (ship) into $target"
CARGO_TARGET_DIR=$target cargo build --release --quiet -p bottle -p bottle-bench
CARGO_TARGET_DIR=$target cargo build --profile ship --quiet -p bottle-sidecar
case "$(docker version --format '{{.Server.Arch}}' 2>/dev/null || uname -m)" in
  arm64 | aarch64) triple=aarch64-unknown-linux-musl ;;
  *) triple=x86_64-unknown-linux-musl ;;
esac
CARGO_TARGET_DIR=$target BOTTLE_SIDECAR_TARGETS=$triple BOTTLE_BESIDE=$target/release \
  bash scripts/build-sidecar.sh >/dev/null

out=$target/bench
mkdir -p "$out"
echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(uname -sr)"
echo "rustc: $(rustc --version)"
echo "docker: $(docker version --format '{{.Server.Version}}')"
echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "sidecar binary ($triple, ship): $(stat -c %s "$target/sidecar/$triple/bottle-sidecar") bytes"
echo "sidecar binary (this host, glibc, ship): $(stat -c %s "$target/ship/bottle-sidecar") bytes"

log "egress latency at 1, 4, 16 and 64 connections"
"$target/release/egress-bench" --sidecar "$target/ship/bottle-sidecar" \
  --paths direct,egress --concurrency 1,4,16,64 --duration 5 --warmup 1 \
  --json "$out/egress.json"

log "up/down against raw docker, and bottles at scale"
"$target/release/lifecycle-bench" run --bottle "$target/release/bottle" \
  --out "$out" --egress-json "$out/egress.json" "${args[@]}"

if [ "$publish" = 1 ]; then
  mkdir -p docs/img
  cp "$out/speed.svg" docs/img/speed.svg
  log "copied the figure to docs/img/speed.svg"
fi
