#!/usr/bin/env bash
# Makes a machine ready to run bottle on the docker runtime: installs the
# Docker engine when no engine answers, starts dockerd when it is installed but
# not running, and builds the local base image (debootstrap + docker import)
# that the agent and sidecar images are built FROM on machines without a
# registry. Idempotent: every step checks before it acts.
#
# The Debian mirror is read from apt's own sources at run time, so the script
# works wherever apt works.
set -euo pipefail

BASE_IMAGE=${BOTTLE_BASE_IMAGE:-bottle-base:bookworm}
log() { printf 'setup: %s\n' "$*" >&2; }
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"


engine_answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }


ensure_engine() {
  if engine_answers; then
    log "docker engine $(docker version --format '{{.Server.Version}}') answers"
    return
  fi
  if [ -n "${DOCKER_HOST:-}" ]; then
    log "DOCKER_HOST=$DOCKER_HOST is set but no engine answers there; start that engine and retry"
    exit 1
  fi
  command -v dockerd >/dev/null 2>&1 || apt_install docker.io iptables
  command -v docker >/dev/null 2>&1 || apt_install docker.io
  log "starting dockerd (log: /var/log/bottle-dockerd.log)"
  # From /, so removing the checkout it was started from leaves it working,
  # and in a session of its own, so a job runner that kills the caller's
  # process group when the caller ends (CI steps, editors' terminals) leaves
  # the engine running.
  as_root sh -c 'cd / && setsid nohup dockerd >/var/log/bottle-dockerd.log 2>&1 </dev/null &'
  for _ in $(seq 1 60); do
    engine_answers && { log "docker engine $(docker version --format '{{.Server.Version}}') started"; return; }
    sleep 1
  done
  log "dockerd did not answer within 60 s; see /var/log/bottle-dockerd.log"
  exit 1
}

ensure_base_image() {
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE present"
    return
  fi
  local tarball
  tarball=$(ensure_base_rootfs)
  log "importing $tarball as $BASE_IMAGE"
  docker import - "$BASE_IMAGE" <"$tarball" >/dev/null
  log "base image $BASE_IMAGE ready"
}

ensure_engine
ensure_base_image
