//! The starter `bottle.toml` that `bottle init` writes: safe defaults (no
//! mounts, all egress denied) and every section explained, with the riskier
//! settings left commented out for the user to choose.

/// A commented `bottle.toml` that parses as is (a test makes sure).
pub const INIT_TEMPLATE: &str = r#"# bottle.toml: what the agent in this bottle may reach and do.
#
# The agent runs in a VM/container whose only way out is a sidecar that
# enforces this file. Anything not allowed here is denied. Unknown keys are
# errors, so a typo cannot silently weaken a rule. `bottle up` refuses a
# setting this version cannot enforce yet rather than run a weaker sandbox.

# The bottle's name: 1 to 30 characters of a-z, 0-9 and "-". It names the
# state directory and every container/network bottle creates.
# Default: this directory's name.
# name = "my-project"

# Which runtime runs the bottle: "auto", "docker", "apple-container" or
# "smolvm". "auto" takes the first whose capability probe passes:
# apple-container on macOS 26+, then docker, then smolvm.
# `bottle up --runtime R` and $BOTTLE_RUNTIME override this.
runtime = "auto"

# Build on other config files (relative to this file's directory): their
# tables merge under this one, later values win, and allow lists, rules,
# credentials, mounts and git remotes add up. A parent is as trusted as this
# file: keep it where the agent cannot write.
# extends = ["../team/bottle-base.toml"]

[agent]
# The agent's image; `bottle up` builds it from images/agent when missing.
image = "bottle-agent:latest"
# The agent's main process. The default keeps the agent up for `bottle exec`.
command = ["sleep", "infinity"]
# Working directory inside the agent (absolute).
workdir = "/workspace"

# Bind mounts, "HOST:CONTAINER[:ro|:rw]" (the mode defaults to rw). A relative
# HOST path is taken from the directory holding this file.
#
# WARNING: a writable mount of the directory holding this bottle.toml lets the
# agent edit its own policy, which takes effect on the next `bottle up`.
# Prefer a read-only mount (":ro"), or keep bottle.toml outside what you mount.
# mounts = ["./:/workspace:rw"]
mounts = []

# The agent CLI in the provider image: "claude", "codex", or "shell" (none,
# the default); which host credential its API gets; a base URL for a local
# model (a host NAME, reached through the sidecar; allow it in [egress]); the
# CLI's version.
# provider = "claude"
# auth = "ANTHROPIC_API_KEY"        # or "CLAUDE_CODE_OAUTH_TOKEN"; codex: "OPENAI_API_KEY" or "codex-login"
# api_base = "http://llm.example:8080/v1"
# version = "2.0.14"

# Extra environment variables for the agent. bottle sets HTTP_PROXY,
# HTTPS_PROXY, NO_PROXY, ALL_PROXY and BOTTLE_* itself; those are refused here.
# A value "${NAME}" is read from the host at `bottle up`; "?text" is asked at
# the terminal; "??x" is the literal "?x".
# Do not put secrets here: the agent can read its whole environment. Use
# [[egress.credential]] below instead.
# env = { EDITOR = "vi", REGION = "${AWS_REGION}" }

# Resource limits; unset means the runtime's default.
# cpus = 2            # a positive number; fractions such as 0.5 are fine
# memory = "4g"       # k, m, g or t (powers of 1024), or bytes; at least 64m

[egress]
# Hosts the agent may reach through the sidecar: "name", "*.suffix" (any name
# below suffix, not suffix itself) or an IP address, each optionally ":port"
# (default: 443 and 80). Write host patterns, not URLs. Empty: deny all.
# allow = ["api.anthropic.com", "*.githubusercontent.com", "api.github.com:443"]
allow = []

# What happens to a destination no rule allows: "deny", or "ask" to hold the
# request and queue an approval for `bottle requests` / `bottle approve`
# (needs [supervise] enabled, the default).
unknown = "deny"

# Narrow an allowed host to some methods and path prefixes (needs the
# sidecar's TLS interception; methods: GET HEAD POST PUT PATCH DELETE OPTIONS).
# [[egress.rule]]
# host = "api.github.com"
# methods = ["GET"]
# paths = ["/repos/acme/"]

# Inject a credential: the agent only ever sees a placeholder; the sidecar puts
# the real value into this header, for this host only. The value is read from
# the named environment variable on the host at `bottle up`.
# [[egress.credential]]
# host = "api.anthropic.com"
# header = "x-api-key"
# from_env = "ANTHROPIC_API_KEY"

# Repositories the agent reaches through the sidecar's git-gate. Fetches are
# mirrored from upstream; a push is forwarded only when every ref update
# matches `push`, touches nothing `protected`, and neither forces nor deletes.
# The upstream token stays on the sidecar.
# [[git.remote]]
# name = "app"
# upstream = "https://github.com/acme/app.git"
# push = ["agent/*"]
# protected = ["main", "release/*"]
# token_from_env = "GITHUB_TOKEN"
# mode = "push"          # or "fetch": no push at all
# allow_force = false    # non-fast-forward pushes to `push` refs
# stale_ok = false       # serve the last mirror when the upstream is down

[supervise]
# The MCP service through which the agent asks for more (request_egress,
# request_approval); you answer with `bottle approve` or `bottle deny`.
enabled = true
"#;
