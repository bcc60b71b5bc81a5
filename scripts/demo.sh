#!/usr/bin/env bash
# The demo: builds bottle, brings up a bottle, runs a command inside it, checks
# from inside the agent that it cannot get out, and takes it down again.
# Sets up what is missing first (engine, base image).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-engine.sh
echo "demo: building bottle" >&2
cargo build --workspace --quiet
bottle=target/debug/bottle
name=demo

"$bottle" down "$name" >/dev/null 2>&1 || true
trap '"$bottle" down "$name"' EXIT

echo; echo "== bottle up"
"$bottle" up -f examples/demo.toml --name "$name"

echo; echo "== a command inside the agent"
"$bottle" exec "$name" -- sh -c 'echo "hello from $(hostname), uid $(id -u)"; ip -4 -o addr show | grep -v " lo "'

echo; echo "== isolation check (from inside the agent)"
"$bottle" exec -i "$name" -- bash -s <<'CHECK'
pass=0; fail=0
check() { # name, expected-outcome-description, command (must FAIL for a pass)
  if eval "$3" >/dev/null 2>&1; then echo "FAIL  $1: $2"; fail=$((fail+1)); else echo "ok    $1: $2"; pass=$((pass+1)); fi
}
control() { # name, description, command (must SUCCEED): proves the network is alive
  if eval "$3" >/dev/null 2>&1; then echo "ok    $1: $2"; pass=$((pass+1)); else echo "FAIL  $1: $2"; fail=$((fail+1)); fi
}
control "sidecar reachable"   "the proxy answers the agent (control)"       "curl -s --noproxy '*' --max-time 3 http://$BOTTLE_SIDECAR:3128/ | grep -q 'not-a-proxy-request'"
gw=$(ip route | awk '/default/ {print $3}')
check "network gateway"       "${gw:-gateway} holds no host address"       "curl -s --noproxy '*' --max-time 3 http://${gw:-10.255.255.1}/"
check "host gateway"          "172.17.0.1 (docker0) unreachable"           "curl -s --noproxy '*' --max-time 3 http://172.17.0.1/"
check "internet by IP"        "1.1.1.1:443 unreachable without the proxy"  "curl -s --noproxy '*' --max-time 3 https://1.1.1.1/"
check "metadata"              "169.254.169.254 unreachable"                 "curl -s --noproxy '*' --max-time 3 http://169.254.169.254/"
check "raw sockets"           "NET_RAW is dropped: no raw ICMP socket"     "python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)'"
check "denied host via proxy" "evil.example gets 403 from the sidecar"     "curl -sf --max-time 5 http://evil.example/"
echo "--- what the agent sees when it asks for a denied host:"
curl -s --max-time 5 http://evil.example/ | sed 's/^/    /'
echo "isolation: $pass passed, $fail failed"
[ "$fail" = 0 ]
CHECK

echo; echo "== bottle ps"
"$bottle" ps
echo; echo "== bottle down"
trap - EXIT
"$bottle" down "$name"
