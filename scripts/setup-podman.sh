#!/usr/bin/env bash
# Makes a machine ready to run bottle's docker runtime against podman's
# Docker-compatible API: installs podman (with runc) when missing, starts
# `podman system service` on a unix socket, keeps podman's default container
# ulimits within what the service may grant, and loads the base image the
# agent and sidecar images are built FROM. Idempotent: every step checks
# before it acts. Rootful (run as root or through sudo).
#
# Prints the DOCKER_HOST to use on stdout (progress goes to stderr):
#   export DOCKER_HOST=$(scripts/setup-podman.sh)
#   BOTTLE_BASE_IMAGE=localhost/bottle-base:bookworm bottle probe --runtime docker
#
#   BOTTLE_PODMAN_SOCKET  API socket path (default /run/podman/podman.sock)
#   BOTTLE_BASE_IMAGE     base image name in docker (default bottle-base:bookworm);
#                         podman stores it as localhost/<name>
set -euo pipefail

SOCKET=${BOTTLE_PODMAN_SOCKET:-/run/podman/podman.sock}
BASE_IMAGE=${BOTTLE_BASE_IMAGE:-bottle-base:bookworm}
BASE_IMAGE=localhost/${BASE_IMAGE#localhost/}
ULIMITS_CONF=/etc/containers/containers.conf.d/50-bottle-ulimits.conf
log() { printf 'setup-podman: %s\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"



ensure_podman() {
  command -v podman >/dev/null 2>&1 || apt_install podman runc
  command -v curl >/dev/null 2>&1 || apt_install curl
  log "$(podman --version), OCI runtime $(as_root podman info --format '{{.Host.OCIRuntime.Name}}')"
}

api_answers() {
  [ -S "$SOCKET" ] && as_root curl -fsS --max-time 5 --unix-socket "$SOCKET" http://podman/_ping >/dev/null 2>&1
}

# The pid of the `podman system service` listening on $SOCKET, if any.
service_pid() {
  pgrep -f -x "podman system service --time=0 unix://$SOCKET" | head -n1 || true
}

# Stops the service process $1 and waits (up to 10 s) until it is gone.
stop_service() {
  as_root kill "$1"
  for _ in $(seq 1 20); do
    [ -d "/proc/$1" ] || break
    sleep 0.5
  done
}

start_service() {
  as_root mkdir -p "$(dirname "$SOCKET")"
  log "starting podman system service on unix://$SOCKET (log: /var/log/bottle-podman.log)"
  # From /: the service's conmon children inherit its working directory, and
  # one started from a checkout that is later removed fails every container
  # start ("Failed to get working directory", "write child: broken pipe").
  as_root sh -c "cd / && setsid nohup podman system service --time=0 unix://$SOCKET >/var/log/bottle-podman.log 2>&1 </dev/null &"
  for _ in $(seq 1 30); do
    api_answers && return
    sleep 1
  done
  log "podman's API did not answer on $SOCKET within 30 s; see /var/log/bottle-podman.log"
  exit 1
}

ensure_service() {
  local pid
  pid=$(service_pid)
  # A service whose working directory was removed (started from a checkout
  # since deleted) answers but cannot start a container: restart it from /.
  if [ -n "$pid" ] && as_root readlink "/proc/$pid/cwd" | grep -q ' (deleted)$'; then
    log "the API service's working directory was removed; restarting it"
    stop_service "$pid"
  fi
  if api_answers; then
    log "podman API answers on unix://$SOCKET"
  else
    start_service
  fi
}

# Podman gives every container nofile=1048576 and nproc=4194304 by default;
# runc must then RAISE the hard limits, which needs CAP_SYS_RESOURCE. Where
# root lacks it (this is so in some VMs and nested containers), every start
# fails with "error setting rlimit type 7: operation not permitted". Docker
# has no such default: its containers inherit dockerd's own limits. This
# drop-in gives podman the same behaviour: containers get the limits the
# API service itself runs with, which it can always grant. The service reads
# containers.conf at start, so it is restarted when the file changes.
# (docs/decisions.md, "podman's default ulimits")
ensure_ulimits() {
  local pid nofile nproc want
  pid=$(service_pid)
  if [ -z "$pid" ]; then
    log "no 'podman system service' process of ours on $SOCKET to read limits from; leaving $ULIMITS_CONF as it is"
    return
  fi
  nofile=$(awk '/^Max open files/ {print $5}' "/proc/$pid/limits")
  nproc=$(awk '/^Max processes/ {print $4}' "/proc/$pid/limits")
  want=$(printf '# Written by bottle scripts/setup-podman.sh: container ulimits within the\n# hard limits of the podman API service, so runc never has to raise them.\n[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n' \
    "$nofile" "$nofile" "$nproc" "$nproc")
  if [ -f "$ULIMITS_CONF" ] && [ "$(cat "$ULIMITS_CONF")" = "$want" ]; then
    log "container ulimits nofile=$nofile nproc=$nproc already set in $ULIMITS_CONF"
    return
  fi
  log "writing $ULIMITS_CONF: nofile=$nofile nproc=$nproc (the service's own hard limits)"
  as_root mkdir -p "$(dirname "$ULIMITS_CONF")"
  printf '%s\n' "$want" | as_root tee "$ULIMITS_CONF" >/dev/null
  log "restarting the API service to read it"
  stop_service "$pid"
  start_service
}

# The same base image as scripts/setup-engine.sh: copied from docker when it
# has one, else imported from the debootstrap tarball (lib.sh).
ensure_base_image() {
  if as_root podman image exists "$BASE_IMAGE"; then
    log "base image $BASE_IMAGE present"
    return
  fi
  local docker_name=${BASE_IMAGE#localhost/}
  if command -v docker >/dev/null 2>&1 && env -u DOCKER_HOST docker image inspect "$docker_name" >/dev/null 2>&1; then
    log "copying $docker_name from docker"
    env -u DOCKER_HOST docker save "$docker_name" | as_root podman load >/dev/null
    as_root podman image exists "$BASE_IMAGE" || as_root podman tag "$docker_name" "$BASE_IMAGE"
    log "base image $BASE_IMAGE ready"
    return
  fi
  local tarball
  tarball=$(ensure_base_rootfs)
  log "importing $tarball as $BASE_IMAGE"
  as_root podman import - "$BASE_IMAGE" <"$tarball" >/dev/null
  log "base image $BASE_IMAGE ready"
}

# Podman next to docker: dockerd sets the FORWARD policy to DROP, and with
# br_netfilter loaded, frames bridged between two containers on ONE bridge
# pass that chain. netavark adds accept rules only for networks with a way
# out, so on the internal network a bottle makes (no gateway, no DNS) the
# agent could not reach its own sidecar. This accepts exactly the frames
# bridged within one bottle bridge (`bt-*`, the names bottle gives its
# bridges), in DOCKER-USER, the chain dockerd leaves to the administrator;
# nothing crosses between bridges or reaches the host by it. Idempotent.
ensure_bridged_forwarding() {
  command -v iptables >/dev/null 2>&1 || return 0
  as_root iptables -S FORWARD 2>/dev/null | grep -qx -- '-P FORWARD DROP' || return 0
  [ "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo 0)" = 1 ] || return 0
  local chain=FORWARD
  as_root iptables -S DOCKER-USER >/dev/null 2>&1 && chain=DOCKER-USER
  local rule=(-m physdev --physdev-is-bridged -i 'bt-+' -o 'bt-+' -j ACCEPT)
  if as_root iptables -C "$chain" "${rule[@]}" 2>/dev/null; then
    log "frames bridged within bt-* bridges already accepted ($chain)"
    return
  fi
  log "accepting frames bridged within bt-* bridges ($chain; FORWARD's policy is DROP)"
  as_root iptables -I "$chain" "${rule[@]}"
}

ensure_podman
ensure_service
ensure_ulimits
ensure_base_image
ensure_bridged_forwarding
printf 'unix://%s\n' "$SOCKET"
