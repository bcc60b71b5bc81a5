#!/usr/bin/env bash
# Installs the real agent CLIs, Claude Code (`@anthropic-ai/claude-code`, bin
# `claude`) and Codex (`@openai/codex`, bin `codex`), with npm into a plain
# directory, for the host-side tests in tests/fake_api.rs that drive them
# against tests/fixtures/fake-model-api.py. The registry is whatever the
# host's npm config names (no --registry here). The pins match the provider
# images' constants. Idempotent; prints the directory whose bin/ holds both.
#   BOTTLE_AGENT_CLIS_DIR  where to install (default ~/.cache/bottle/agent-clis)
#   BOTTLE_CLAUDE_CODE_VERSION  (default 2.1.332)
#   BOTTLE_CODEX_VERSION        (default 0.171.0)
set -euo pipefail
DIR=${BOTTLE_AGENT_CLIS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/bottle/agent-clis}
CLAUDE=${BOTTLE_CLAUDE_CODE_VERSION:-2.1.332}
CODEX=${BOTTLE_CODEX_VERSION:-0.171.0}
WANT="claude-code@$CLAUDE codex@$CODEX"
log() { printf 'setup-agent-clis: %s\n' "$*" >&2; }

command -v npm >/dev/null 2>&1 || {
  log "npm is not installed (Debian: apt-get install nodejs npm)"
  exit 1
}
if [ -f "$DIR/.versions" ] && [ "$(cat "$DIR/.versions")" = "$WANT" ] \
   && [ -x "$DIR/bin/claude" ] && [ -x "$DIR/bin/codex" ]; then
  log "$WANT already in $DIR"
  printf '%s\n' "$DIR"
  exit 0
fi
log "installing $WANT into $DIR"
rm -rf "$DIR.partial"
mkdir -p "$DIR.partial"
# --prefix gives bin/claude and bin/codex; the native binaries come from each
# package's platform optionalDependencies, so optional deps must stay on.
npm install --global --prefix "$DIR.partial" --no-audit --no-fund --loglevel=error \
  "@anthropic-ai/claude-code@$CLAUDE" "@openai/codex@$CODEX" >&2
printf '%s\n' "$WANT" >"$DIR.partial/.versions"
rm -rf "$DIR"
mv "$DIR.partial" "$DIR"
"$DIR/bin/claude" --version >&2 || { log "claude does not run from $DIR/bin"; exit 1; }
"$DIR/bin/codex" --version >&2 || { log "codex does not run from $DIR/bin"; exit 1; }
log "$WANT ready in $DIR/bin"
printf '%s\n' "$DIR"
