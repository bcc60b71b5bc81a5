#!/usr/bin/env bash
# Runs egress-bench (issue 3, "Benchmark"): installs mitmproxy from Debian when
# mitmdump is missing, builds bottle-sidecar in the `ship` profile it ships in
# (release + LTO) and egress-bench in release mode,
# prints the machine and versions, then runs the benchmark on 127.0.0.1:
# HTTP/1.1 rows (issue 3) and HTTP/2 rows, many streams per connection
# (issue 14). Extra arguments go to egress-bench (see `egress-bench --help`),
# e.g.
#   bench/run.sh --concurrency 64 --duration 20
#   bench/run.sh --paths h2 --h2-streams 64
#   bench/run.sh --paths h1 --concurrency 1,4,16,64 --json rows.json
# Set BENCH_PIN=1 to give the proxy core 1 and client + origin core 0
# (needs at least 2 cores; uses taskset).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'bench: %s\n' "$*" >&2; }
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v mitmdump >/dev/null 2>&1; then
  log "installing mitmproxy (Debian package)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mitmproxy >/dev/null
fi

target=${CARGO_TARGET_DIR:-$PWD/target}
# The sidecar in the profile that ships (`ship`: release + LTO, Cargo.toml),
# the bench in plain release.
log "building bottle-sidecar (ship) and egress-bench (release) into $target"
CARGO_TARGET_DIR=$target cargo build --profile ship --quiet -p bottle-sidecar
CARGO_TARGET_DIR=$target cargo build --release --quiet -p bottle-bench

echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(uname -sr)"
echo "rustc: $(rustc --version)"
echo "mitmproxy: $(mitmdump --version 2>/dev/null | head -1)"
echo "load before the run: $(cut -d' ' -f1-3 /proc/loadavg)"

bench=("$target/release/egress-bench" --sidecar "$target/ship/bottle-sidecar")
if [ "${BENCH_PIN:-0}" = 1 ]; then
  exec taskset -c 0 "${bench[@]}" --proxy-cpus 1 "$@"
fi
exec "${bench[@]}" "$@"
