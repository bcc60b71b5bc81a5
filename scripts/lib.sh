# Shell functions the set-up scripts share. Sourced, not run; the sourcing
# script defines `log` (its own prefix) before calling these.

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
