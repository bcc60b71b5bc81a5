#!/usr/bin/env bash
# Benchmarks the git gate (issue 11): `git clone` of a generated repository
# of BENCH_GIT_MB MB (default 300, random so nothing compresses away) through
# the gate and directly from the same upstream, side by side in one run.
#
#   bench/git.sh                 BENCH_GIT_MB=300 BENCH_GIT_RUNS=5
#
# Everything runs on 127.0.0.1 and is removed at the end:
# - the upstream is tests/fixtures/git-upstream.py: `git http-backend` behind
#   HTTPS (a test CA), the token required as Basic auth, exactly what the
#   end-to-end tests use;
# - the gate is the release `bottle-sidecar run` with only its git listener,
#   one remote, the token in its secrets.json and the test CA as upstream root;
# - "direct" clones the upstream with the token in an extra header;
#   "gate, cold" clones through the gate with its mirror removed first (the
#   gate fetches everything, then serves it); "gate, warm" clones through the
#   gate again (the gate asks the upstream for changes, then serves its
#   mirror). Each run does all three, in that order; medians are printed with
#   the spread and the ratio to direct.
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${BENCH_GIT_MB:-300}
RUNS=${BENCH_GIT_RUNS:-5}
log() { printf 'bench-git: %s\n' "$*" >&2; }

for tool in git python3 openssl; do
  command -v "$tool" >/dev/null 2>&1 || { log "$tool is missing (Debian: apt-get install $tool)"; exit 1; }
done
target=${CARGO_TARGET_DIR:-$PWD/target}
log "building bottle-sidecar (release) into $target"
cargo build --release --quiet -p bottle-sidecar
sidecar="$target/release/bottle-sidecar"

W=$(mktemp -d /tmp/bottle-git-bench.XXXXXX)
pids=()
cleanup() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    for f in sidecar.log upstream.log; do
      [ -f "$W/$f" ] && { log "--- $f"; tail -20 "$W/$f" >&2; }
    done
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s%N; }

log "generating a ${MB} MB repository"
mkdir -p "$W/srv" "$W/work"
git init -q --bare -b main "$W/srv/app.git"
git -C "$W/work" init -q -b main
per_commit=$(( (MB + 9) / 10 ))
for c in $(seq 1 10); do
  for f in $(seq 1 "$per_commit"); do
    head -c 1048576 /dev/urandom >"$W/work/c$c-f$f.bin"
  done
  git -C "$W/work" add -A
  git -C "$W/work" -c user.name=bench -c user.email=bench@example.test commit -q -m "commit $c"
done
git -C "$W/work" push -q "$W/srv/app.git" main
git -C "$W/srv/app.git" repack -a -d -q
size=$(du -sm "$W/srv/app.git" | cut -f1)
log "upstream repository: ${size} MB packed"

log "making the test CA, the upstream's leaf and the bottle CA"
pki="$W/pki"
mkdir -p "$pki"
(
  cd "$pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca-key.pem -out ca.pem \
    -days 2 -subj "/CN=bench upstream CA" -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout leaf-key.pem -out leaf.csr \
    -subj /CN=upstream 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext.cnf
  openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out leaf.pem -days 2 \
    -extfile ext.cnf 2>/dev/null
)
token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
up_port=$(free_port)
UPSTREAM_TOKEN=$token UPSTREAM_BIND=127.0.0.1 UPSTREAM_PORT=$up_port \
  python3 tests/fixtures/git-upstream.py "$pki/leaf.pem" "$pki/leaf-key.pem" "$W/srv" \
  >"$W/upstream.log" 2>&1 &
pids+=($!)

state="$W/sidecar"
mkdir -p "$state" "$W/git"
(
  cd "$state"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca-key.pem -out ca.pem \
    -days 2 -subj "/CN=bottle bench CA" -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
)
cp "$pki/ca.pem" "$state/upstream-roots.pem"
printf '{"format":1,"credentials":{"BENCH_GIT_TOKEN":{"value":"%s","placeholder":"bench-unused-placeholder"}}}\n' "$token" \
  >"$state/secrets.json"
printf '{"format":1,"bottle":"bench","egress":{"allow":["127.0.0.1:%s"]},"git":{"remotes":[{"name":"app","upstream":"https://127.0.0.1:%s/app.git","credential":"BENCH_GIT_TOKEN"}]}}\n' \
  "$up_port" "$up_port" >"$state/policy.json"
chmod 600 "$state"/*.pem "$state/secrets.json"
gate_port=$(free_port)
"$sidecar" run --policy "$state/policy.json" --audit "$W/audit.jsonl" \
  --proxy-listen "127.0.0.1:$(free_port)" --dns-listen off --http-listen off --https-listen off \
  --health-file off --git-listen "127.0.0.1:$gate_port" --git-state "$W/git" \
  >"$W/sidecar.log" 2>&1 &
sidecar_pid=$!
pids+=("$sidecar_pid")

for _ in $(seq 1 100); do
  if grep -q "upstream ready" "$W/upstream.log" && \
     python3 -c "import socket; socket.create_connection(('127.0.0.1',$gate_port),1)" 2>/dev/null; then
    break
  fi
  sleep 0.1
done

auth=$(printf 'x-access-token:%s' "$token" | base64 -w0)
direct() {
  rm -rf "$W/clone"
  GIT_SSL_CAINFO="$pki/ca.pem" git -c "http.extraHeader=Authorization: Basic $auth" \
    clone -q "https://127.0.0.1:$up_port/app.git" "$W/clone"
}
gate() {
  rm -rf "$W/clone"
  git clone -q "http://127.0.0.1:$gate_port/app.git" "$W/clone"
}

if [ -n "${BENCH_GIT_HOLD:-}" ]; then
  log "holding: gate http://127.0.0.1:$gate_port/app.git, upstream https://127.0.0.1:$up_port (token $token, CA $pki/ca.pem); Ctrl-C ends"
  echo "GATE=http://127.0.0.1:$gate_port/app.git" >"$BENCH_GIT_HOLD"
  echo "UP=https://127.0.0.1:$up_port/app.git" >>"$BENCH_GIT_HOLD"
  echo "AUTH=$(printf 'x-access-token:%s' "$token" | base64 -w0)" >>"$BENCH_GIT_HOLD"
  echo "CA=$pki/ca.pem" >>"$BENCH_GIT_HOLD"
  wait "$sidecar_pid"
fi
declare -a t_direct t_cold t_warm
for r in $(seq 1 "$RUNS"); do
  s=$(now); direct; t_direct+=($(( ($(now) - s) / 1000000 )))
  rm -rf "$W/git"/*
  s=$(now); gate; t_cold+=($(( ($(now) - s) / 1000000 )))
  s=$(now); gate; t_warm+=($(( ($(now) - s) / 1000000 )))
  log "run $r: direct ${t_direct[-1]} ms, gate cold ${t_cold[-1]} ms, gate warm ${t_warm[-1]} ms"
done
rss=$(awk '/VmHWM/ {print $2}' "/proc/$sidecar_pid/status" 2>/dev/null || echo "?")

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
minmax() { printf '%s\n' "$@" | sort -n | awk 'NR==1 {lo=$1} {hi=$1} END {print lo "-" hi}'; }
md=$(median "${t_direct[@]}")
echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(uname -sr)"
echo "git: $(git --version), python: $(python3 --version 2>&1), repository: ${MB} MB of random files in 10 commits, ${size} MB packed; $RUNS runs"
printf '%-12s %10s %14s %8s\n' path "median ms" "spread ms" "x direct"
for row in direct cold warm; do
  case $row in
    direct) arr=("${t_direct[@]}"); label=direct ;;
    cold) arr=("${t_cold[@]}"); label="gate, cold" ;;
    warm) arr=("${t_warm[@]}"); label="gate, warm" ;;
  esac
  m=$(median "${arr[@]}")
  printf '%-12s %10s %14s %8s\n' "$label" "$m" "$(minmax "${arr[@]}")" "$(awk -v a="$m" -v b="$md" 'BEGIN {printf "%.2f", a/b}')"
done
echo "sidecar peak RSS: ${rss} kB"
