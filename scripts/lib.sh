# Shell functions the set-up scripts share. Sourced, not run; the sourcing
# script defines `log` (its own prefix) before calling these.

# Runs a command as root (directly when already root, else with sudo).
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  log "installing $*"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# The first deb URI of apt's sources (deb822 or one-line format): where
# debootstrap fetches the base image from, read from the machine's own apt
# configuration.
debian_mirror() {
  local uri
  uri=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
          | awk '{print $2}' | grep -v security | head -n1 || true)
  if [ -z "$uri" ]; then
    uri=$(grep -hE '^deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '{for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
            | grep -v security | head -n1 || true)
  fi
  [ -n "$uri" ] || { log "no Debian mirror found in apt's sources"; exit 1; }
  printf '%s\n' "$uri"
}

# Makes the Python venv $1 with interpreter $2 unless it exists.
ensure_venv() {
  local venv=$1 python=$2
  [ -x "$venv/bin/python" ] && return
  log "creating venv $venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv" || {
    log "cannot create a venv with $python (Debian: apt-get install python3-venv)"
    exit 1
  }
}

# The base root filesystem every runtime's images start from, as an
# uncompressed tarball made once per machine with debootstrap and cached:
# docker and podman import it, smolvm's image store holds it as it is.
# Prints the tarball's path.
#   BOTTLE_BASE_SUITE   Debian suite (default bookworm)
#   BOTTLE_BASE_TARBALL where to keep it (default ~/.cache/bottle/base-<suite>-<arch>.tar)
ensure_base_rootfs() {
  local suite=${BOTTLE_BASE_SUITE:-bookworm}
  local arch
  arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
  local tarball=${BOTTLE_BASE_TARBALL:-${XDG_CACHE_HOME:-$HOME/.cache}/bottle/base-$suite-$arch.tar}
  if [ -s "$tarball" ]; then
    printf '%s\n' "$tarball"
    return
  fi
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  local mirror dir
  mirror=$(debian_mirror)
  dir=$(mktemp -d /tmp/bottle-base.XXXXXX)
  log "debootstrap $suite from $mirror (about 80 s)"
  as_root debootstrap --variant=minbase \
    --include=bash,git,ca-certificates,curl,python3,iproute2,dnsutils,netcat-openbsd,procps,less \
    "$suite" "$dir" "$mirror" >/tmp/bottle-debootstrap.log 2>&1 \
    || { as_root rm -rf "$dir"; log "debootstrap failed; see /tmp/bottle-debootstrap.log"; exit 1; }
  as_root rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  mkdir -p "$(dirname "$tarball")"
  as_root tar --numeric-owner -C "$dir" -cf "$tarball.partial" .
  as_root chown "$(id -u):$(id -g)" "$tarball.partial"
  mv "$tarball.partial" "$tarball"
  as_root rm -rf "$dir"
  log "base rootfs ready: $tarball"
  printf '%s\n' "$tarball"
}
