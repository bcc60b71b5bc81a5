//! The shape of `bottle.toml` as data, and the walk that checks a parsed
//! document against it.
//!
//! The walk runs over the span-preserving tree from `toml::de::DeTable`, so
//! every problem keeps its place in the file, and it never stops at the first
//! one: unknown keys, wrong types, missing keys and bad values are all
//! collected. Value rules themselves live in `value.rs` and in
//! `bottle_policy`; this file only says which rule applies where.

use super::agent::{AgentAuth, AgentVersion, ApiBase, Provider};
use super::error::{ErrorKind, Found};
use super::value::{self, RuntimeChoice, ValueError};
use bottle_policy::{AllowRule, HostPattern};
use std::fmt::Write as _;
use std::ops::Range;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A check on one string value (or key); the message says what is allowed.
type Check = fn(&str) -> Result<(), String>;

/// A check that needs a whole table (duplicates across entries and such).
type TableCheck = fn(&DeTable<'_>, &KeyPath, &mut Vec<Found>);

/// What a key's value must be.
enum Kind {
    /// A string, checked.
    Str(Check),
    /// One of a few strings.
    OneOf(&'static [&'static str]),
    Bool,
    /// A CPU count: an integer or float above zero.
    Cpus,
    /// A size string or a plain number of bytes.
    Memory,
    /// An integer or float, checked (dollars, fractions).
    Number(fn(f64) -> Result<(), String>),
    /// A budget size: a size string such as "50MiB" or a number of bytes.
    Size,
    /// A table whose keys are checked names and whose values are tables of
    /// one shape (`[egress.budget.prices."MODEL"]`).
    TableMap {
        key: Check,
        value: &'static TableSchema,
    },
    /// A whole number within `min..=max` (limits, counts, seconds).
    Count {
        min: u64,
        max: u64,
    },
    /// An array of strings, each checked.
    StrArray {
        each: Check,
        non_empty: bool,
    },
    /// An array of strings, each one of a few.
    OneOfArray(&'static [&'static str]),
    /// A table of string values with checked keys.
    StrMap {
        key: Check,
        value: Check,
    },
    Table(&'static TableSchema),
    /// `[[…]]`, or an inline array of tables.
    TableArray(&'static TableSchema),
}

impl Kind {
    /// What the value should be, for "expected …, found …".
    fn expected(&self) -> String {
        match self {
            Kind::Str(_) => "a string".into(),
            Kind::OneOf(names) => format!("a string ({})", quoted_list(names)),
            Kind::Bool => "true or false".into(),
            Kind::Cpus => "a positive number".into(),
            Kind::Memory => "a size string such as \"4g\" or a number of bytes".into(),
            Kind::Count { min, max } => format!("a whole number from {min} to {max}"),
            Kind::Number(_) => "a number".into(),
            Kind::Size => "a size such as \"50MiB\" or a number of bytes".into(),
            Kind::TableMap { value, .. } => format!("a table of tables ({})", value.header),
            Kind::StrArray { .. } | Kind::OneOfArray(_) => "an array of strings".into(),
            Kind::StrMap { .. } => "a table of strings (e.g. { EDITOR = \"vi\" })".into(),
            Kind::Table(t) => format!("a table ({})", t.header),
            Kind::TableArray(t) => format!("an array of tables ({})", t.header),
        }
    }
}

struct Field {
    key: &'static str,
    kind: Kind,
    /// For a required key: what to write, for the "missing" message.
    required: Option<&'static str>,
}

const fn opt(key: &'static str, kind: Kind) -> Field {
    Field {
        key,
        kind,
        required: None,
    }
}

const fn req(key: &'static str, kind: Kind, what: &'static str) -> Field {
    Field {
        key,
        kind,
        required: Some(what),
    }
}

struct TableSchema {
    /// How the table is written, for messages: `[agent]`, `[[egress.rule]]`.
    header: &'static str,
    fields: &'static [Field],
    check: Option<TableCheck>,
}

// ---------------------------------------------------------------------------
// The schema. Keep in step with the typed structs in `config.rs` (the typed
// deserialisation with `deny_unknown_fields` catches any drift in tests).

static ROOT: TableSchema = TableSchema {
    header: "the top level",
    fields: &[
        opt("name", Kind::Str(check_name)),
        opt(
            "extends",
            Kind::StrArray {
                each: check_file_path,
                non_empty: false,
            },
        ),
        opt("runtime", Kind::OneOf(&RuntimeChoice::NAMES)),
        opt("agent", Kind::Table(&AGENT)),
        opt("egress", Kind::Table(&EGRESS)),
        opt("git", Kind::Table(&GIT)),
        opt("supervise", Kind::Table(&SUPERVISE)),
        opt("sidecar", Kind::Table(&SIDECAR)),
        opt("dlp", Kind::Table(&DLP)),
    ],
    check: None,
};

/// `[dlp]`: outbound data-loss prevention (see `bottle_policy::DlpPolicy`).
static DLP: TableSchema = TableSchema {
    header: "[dlp]",
    fields: &[
        opt("enabled", Kind::Bool),
        opt(
            "values_from_env",
            Kind::StrArray {
                each: check_env_name,
                non_empty: false,
            },
        ),
        opt("max_body", Kind::Size),
        opt("oversize", Kind::OneOf(&["block", "log"])),
        opt("inbound", Kind::Bool),
        opt(
            "action",
            Kind::StrMap {
                key: check_detector,
                value: check_dlp_action,
            },
        ),
        opt("host", Kind::TableArray(&DLP_HOST)),
    ],
    check: None,
};

static DLP_HOST: TableSchema = TableSchema {
    header: "[[dlp.host]]",
    fields: &[
        req(
            "host",
            Kind::Str(check_host_pattern),
            "a host pattern such as `api.github.com`",
        ),
        opt(
            "action",
            Kind::StrMap {
                key: check_detector,
                value: check_dlp_action,
            },
        ),
    ],
    check: None,
};

static AGENT: TableSchema = TableSchema {
    header: "[agent]",
    fields: &[
        opt("image", Kind::Str(check_image)),
        opt(
            "command",
            Kind::StrArray {
                each: any_string,
                non_empty: true,
            },
        ),
        opt("workdir", Kind::Str(check_container_path)),
        opt(
            "mounts",
            Kind::StrArray {
                each: check_mount,
                non_empty: false,
            },
        ),
        opt(
            "env",
            Kind::StrMap {
                key: check_agent_env_name,
                value: check_env_value,
            },
        ),
        opt("cpus", Kind::Cpus),
        opt("memory", Kind::Memory),
        opt(
            "pids",
            Kind::Count {
                min: 16,
                max: 1 << 22,
            },
        ),
        opt("provider", Kind::OneOf(&Provider::NAMES)),
        opt("auth", Kind::OneOf(&AgentAuth::NAMES)),
        opt("api_base", Kind::Str(check_api_base)),
        opt("version", Kind::Str(check_version)),
    ],
    check: Some(check_agent_table),
};

static EGRESS: TableSchema = TableSchema {
    header: "[egress]",
    fields: &[
        opt(
            "allow",
            Kind::StrArray {
                each: check_allow,
                non_empty: false,
            },
        ),
        opt("unknown", Kind::OneOf(&["deny", "ask"])),
        opt(
            "allow_private",
            Kind::StrArray {
                each: check_host_pattern,
                non_empty: false,
            },
        ),
        opt(
            "upstream_roots",
            Kind::StrArray {
                each: check_file_path,
                non_empty: false,
            },
        ),
        opt("upstream_proxy", Kind::Str(check_proxy_url)),
        opt("upstream_proxy_auth_env", Kind::Str(check_env_name)),
        opt("rule", Kind::TableArray(&EGRESS_RULE)),
        opt("credential", Kind::TableArray(&EGRESS_CREDENTIAL)),
        opt("budget", Kind::Table(&EGRESS_BUDGET)),
    ],
    check: None,
};

/// `[egress.budget]` (see `bottle_policy::budget`).
static EGRESS_BUDGET: TableSchema = TableSchema {
    header: "[egress.budget]",
    fields: &[
        opt("bytes_up", Kind::Size),
        opt("bytes_down", Kind::Size),
        opt("llm_usd", Kind::Number(check_spend)),
        opt("soft", Kind::Number(check_soft)),
        opt("host", Kind::TableArray(&EGRESS_BUDGET_HOST)),
        opt(
            "prices",
            Kind::TableMap {
                key: check_model_key,
                value: &EGRESS_BUDGET_PRICE,
            },
        ),
    ],
    check: Some(check_budget_table),
};

static EGRESS_BUDGET_HOST: TableSchema = TableSchema {
    header: "[[egress.budget.host]]",
    fields: &[
        req(
            "host",
            Kind::Str(check_host_pattern),
            "a host pattern such as `api.github.com`",
        ),
        opt("bytes_up", Kind::Size),
        opt("bytes_down", Kind::Size),
        opt(
            "requests_per_minute",
            Kind::Count {
                min: 1,
                max: 1_000_000,
            },
        ),
        opt("llm_usd", Kind::Number(check_spend)),
        opt("llm", Kind::Bool),
    ],
    check: None,
};

static EGRESS_BUDGET_PRICE: TableSchema = TableSchema {
    header: "[egress.budget.prices.\"MODEL\"]",
    fields: &[
        req(
            "input",
            Kind::Number(check_price),
            "US dollars per million input tokens, such as 3.0",
        ),
        req(
            "output",
            Kind::Number(check_price),
            "US dollars per million output tokens, such as 15.0",
        ),
        opt("cache_read", Kind::Number(check_price)),
        opt("cache_write", Kind::Number(check_price)),
    ],
    check: None,
};

static EGRESS_RULE: TableSchema = TableSchema {
    header: "[[egress.rule]]",
    fields: &[
        req(
            "host",
            Kind::Str(check_host_pattern),
            "a host pattern such as `api.github.com`",
        ),
        opt("methods", Kind::OneOfArray(&value::METHODS)),
        opt(
            "paths",
            Kind::StrArray {
                each: check_path_prefix,
                non_empty: false,
            },
        ),
    ],
    check: None,
};

static EGRESS_CREDENTIAL: TableSchema = TableSchema {
    header: "[[egress.credential]]",
    fields: &[
        req(
            "host",
            Kind::Str(check_host_pattern),
            "a host pattern such as `api.github.com`",
        ),
        req(
            "header",
            Kind::Str(check_header_name),
            "a header name such as `x-api-key`",
        ),
        req(
            "from_env",
            Kind::Str(check_env_name),
            "the host environment variable holding the secret, such as `API_KEY`",
        ),
        opt("scheme", Kind::Str(check_auth_scheme)),
    ],
    check: None,
};

static GIT: TableSchema = TableSchema {
    header: "[git]",
    fields: &[opt("remote", Kind::TableArray(&GIT_REMOTE))],
    check: Some(check_git_table),
};

static GIT_REMOTE: TableSchema = TableSchema {
    header: "[[git.remote]]",
    fields: &[
        req(
            "name",
            Kind::Str(check_remote_name),
            "a remote name such as `app`",
        ),
        req(
            "upstream",
            Kind::Str(check_upstream),
            "an https URL such as `https://github.com/acme/app.git`",
        ),
        opt(
            "push",
            Kind::StrArray {
                each: check_ref_pattern,
                non_empty: false,
            },
        ),
        opt(
            "protected",
            Kind::StrArray {
                each: check_ref_pattern,
                non_empty: false,
            },
        ),
        opt("token_from_env", Kind::Str(check_env_name)),
        opt("mode", Kind::Str(check_git_mode)),
        opt("allow_force", Kind::Bool),
        opt("stale_ok", Kind::Bool),
        opt("allow_ci_changes", Kind::Bool),
    ],
    check: None,
};

/// `[sidecar]`: the sidecar's own limits (see `bottle_policy::Limits`).
static SIDECAR: TableSchema = TableSchema {
    header: "[sidecar]",
    fields: &[
        opt(
            "max_connections",
            Kind::Count {
                min: 1,
                max: 1 << 20,
            },
        ),
        opt(
            "max_connections_per_client",
            Kind::Count {
                min: 1,
                max: 1 << 20,
            },
        ),
        opt("handshake_timeout", Kind::Count { min: 1, max: 3600 }),
        opt(
            "idle_timeout",
            Kind::Count {
                min: 1,
                max: 86_400,
            },
        ),
        opt("body_timeout", Kind::Count { min: 1, max: 3600 }),
        opt(
            "audit_max_bytes",
            Kind::Count {
                min: 1 << 16,
                max: 1 << 40,
            },
        ),
        opt(
            "h2_max_streams",
            Kind::Count {
                min: 1,
                max: 10_000,
            },
        ),
        opt(
            "h2_max_header_list_bytes",
            Kind::Count {
                min: 1024,
                max: 16 << 20,
            },
        ),
        opt(
            "h2_stream_window_bytes",
            Kind::Count {
                min: 65_535,
                max: (1 << 31) - 1,
            },
        ),
        opt(
            "h2_connection_window_bytes",
            Kind::Count {
                min: 65_535,
                max: (1 << 31) - 1,
            },
        ),
    ],
    check: None,
};

static SUPERVISE: TableSchema = TableSchema {
    header: "[supervise]",
    fields: &[
        opt("enabled", Kind::Bool),
        opt(
            "timeout_secs",
            Kind::Count {
                min: 1,
                max: 86_400,
            },
        ),
        opt("max_pending", Kind::Count { min: 1, max: 1000 }),
        opt(
            "rate_per_minute",
            Kind::Count {
                min: 1,
                max: 10_000,
            },
        ),
    ],
    check: None,
};

// ---------------------------------------------------------------------------
// String checks: thin adapters over `value.rs` and `bottle_policy`.

fn msg(r: Result<impl Sized, impl ToString>) -> Result<(), String> {
    r.map(|_| ()).map_err(|e| e.to_string())
}

fn any_string(_: &str) -> Result<(), String> {
    Ok(())
}
fn check_name(s: &str) -> Result<(), String> {
    msg(value::BottleName::parse(s))
}
fn check_image(s: &str) -> Result<(), String> {
    msg(value::check_image(s))
}
fn check_container_path(s: &str) -> Result<(), String> {
    msg(value::check_container_path(s))
}
fn check_mount(s: &str) -> Result<(), String> {
    msg(value::Mount::parse(s))
}
fn check_agent_env_name(s: &str) -> Result<(), String> {
    msg(value::check_agent_env_name(s))
}
fn check_env_value(s: &str) -> Result<(), String> {
    msg(value::check_env_value(s))
}
fn check_api_base(s: &str) -> Result<(), String> {
    msg(ApiBase::parse(s))
}
fn check_version(s: &str) -> Result<(), String> {
    msg(AgentVersion::parse(s))
}
fn check_env_name(s: &str) -> Result<(), String> {
    msg(value::check_env_name(s))
}
fn check_allow(s: &str) -> Result<(), String> {
    msg(AllowRule::parse(s))
}
fn check_file_path(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        Err("a file path is empty".into())
    } else if s.starts_with('~') {
        Err(format!("`{s}`: `~` is not expanded; write an absolute path or one relative to the directory holding this file"))
    } else {
        Ok(())
    }
}
fn check_proxy_url(s: &str) -> Result<(), String> {
    msg(bottle_policy::ProxyUrl::parse(s))
}
fn check_host_pattern(s: &str) -> Result<(), String> {
    msg(HostPattern::parse(s))
}
fn check_path_prefix(s: &str) -> Result<(), String> {
    msg(value::check_path_prefix(s))
}
fn check_auth_scheme(s: &str) -> Result<(), String> {
    msg(bottle_policy::AuthScheme::parse(s))
}
fn check_detector(s: &str) -> Result<(), String> {
    match bottle_policy::Detector::parse(s) {
        Some(_) => Ok(()),
        None => Err(format!(
            "`{s}` is not a DLP detector; the detectors are {}",
            bottle_policy::Detector::ALL
                .iter()
                .map(|d| d.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}
fn check_dlp_action(s: &str) -> Result<(), String> {
    match bottle_policy::DlpAction::parse(s) {
        Some(_) => Ok(()),
        None => Err(format!(
            "`{s}` is not a DLP action; write one of {}",
            quoted_list(&bottle_policy::DlpAction::NAMES)
        )),
    }
}
fn check_header_name(s: &str) -> Result<(), String> {
    msg(value::check_header_name(s))
}
fn check_remote_name(s: &str) -> Result<(), String> {
    msg(value::check_remote_name(s))
}
fn check_upstream(s: &str) -> Result<(), String> {
    msg(value::check_upstream(s))
}
fn check_git_mode(s: &str) -> Result<(), String> {
    match s {
        "fetch" | "push" => Ok(()),
        _ => Err(format!("`{s}`: mode is `fetch` (no push at all) or `push` (each ref checked against push and protected)")),
    }
}
fn check_ref_pattern(s: &str) -> Result<(), String> {
    msg(value::check_ref_pattern(s))
}
fn check_spend(v: f64) -> Result<(), String> {
    msg(bottle_policy::Spend::from_dollars(v))
}
fn check_price(v: f64) -> Result<(), String> {
    msg(bottle_policy::Usd::from_dollars(v))
}
fn check_soft(v: f64) -> Result<(), String> {
    msg(bottle_policy::budget::Soft::from_fraction(v))
}
fn check_model_key(s: &str) -> Result<(), String> {
    msg(bottle_policy::budget::ModelKey::parse(s))
}

// ---------------------------------------------------------------------------
// Whole-table checks.

/// Two mounts on the same container path: the second silently hides the
/// first, so say so.
fn check_agent_table(table: &DeTable<'_>, path: &KeyPath, out: &mut Vec<Found>) {
    let Some(mounts) = table.get("mounts").and_then(|m| m.get_ref().as_array()) else {
        return;
    };
    let mut seen: Vec<String> = Vec::new();
    for (i, item) in mounts.iter().enumerate() {
        let Some(Ok(mount)) = item.get_ref().as_str().map(value::Mount::parse) else {
            continue;
        };
        let target = mount.target.trim_end_matches('/').to_owned();
        if let Some(first) = seen.iter().position(|t| *t == target) {
            out.push(Found::new(
                Some(item.span()),
                Some(path.key("mounts").index(i).render()),
                ErrorKind::InvalidValue,
                format!(
                    "`{}` is already mounted by agent.mounts[{first}]; each container path may be mounted once",
                    mount.target
                ),
            ));
        }
        seen.push(target);
    }
}

/// Remote names must be unique: each becomes one URL on the git-gate.
fn check_git_table(table: &DeTable<'_>, path: &KeyPath, out: &mut Vec<Found>) {
    let Some(remotes) = table.get("remote").and_then(|m| m.get_ref().as_array()) else {
        return;
    };
    let mut seen: Vec<&str> = Vec::new();
    for (i, remote) in remotes.iter().enumerate() {
        let Some(name) = remote.get_ref().get("name") else {
            continue;
        };
        let Some(text) = name.get_ref().as_str() else {
            continue;
        };
        if let Some(first) = seen.iter().position(|n| *n == text) {
            out.push(Found::new(
                Some(name.span()),
                Some(path.key("remote").index(i).key("name").render()),
                ErrorKind::InvalidValue,
                format!("`{text}` is already the name of git.remote[{first}]; remote names must be unique"),
            ));
        }
        seen.push(text);
    }
}

/// Two `[[egress.budget.host]]` entries for one host pattern: which one
/// counts would be a guess, so say so.
fn check_budget_table(table: &DeTable<'_>, path: &KeyPath, out: &mut Vec<Found>) {
    let Some(hosts) = table.get("host").and_then(|m| m.get_ref().as_array()) else {
        return;
    };
    let mut seen: Vec<HostPattern> = Vec::new();
    for (i, entry) in hosts.iter().enumerate() {
        let Some(host) = entry.get_ref().get("host") else {
            continue;
        };
        let Some(Ok(pattern)) = host.get_ref().as_str().map(HostPattern::parse) else {
            continue;
        };
        if let Some(first) = seen.iter().position(|p| *p == pattern) {
            out.push(Found::new(
                Some(host.span()),
                Some(path.key("host").index(i).key("host").render()),
                ErrorKind::InvalidValue,
                format!("`{pattern}` already has egress.budget.host[{first}]; put its limits in one entry"),
            ));
        }
        seen.push(pattern);
    }
}

// ---------------------------------------------------------------------------
// Key paths.

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A dotted key path such as `egress.rule[0].methods[1]`.
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyPath(Vec<Seg>);

impl KeyPath {
    fn key(&self, k: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }

    fn index(&self, i: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for seg in &self.0 {
            match seg {
                Seg::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    if is_bare_key(k) {
                        out.push_str(k);
                    } else {
                        // TOML basic-string quoting is close enough to Rust's
                        // debug escaping for a message.
                        let _ = write!(out, "{k:?}");
                    }
                }
                Seg::Index(i) => {
                    let _ = write!(out, "[{i}]");
                }
            }
        }
        out
    }
}

fn is_bare_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

// ---------------------------------------------------------------------------
// The walk.

/// Checks a whole document; returns every problem found.
pub(crate) fn check_document(root: &Spanned<DeTable<'_>>) -> Vec<Found> {
    let mut out = Vec::new();
    walk_table(
        root.get_ref(),
        root.span(),
        &ROOT,
        &KeyPath::default(),
        &mut out,
    );
    out
}

fn walk_table(
    table: &DeTable<'_>,
    span: Range<usize>,
    schema: &TableSchema,
    path: &KeyPath,
    out: &mut Vec<Found>,
) {
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        match schema.fields.iter().find(|f| f.key == name) {
            Some(field) => walk_value(value, &field.kind, &path.key(name), out),
            None => out.push(Found::new(
                Some(key.span()),
                Some(path.key(name).render()),
                ErrorKind::UnknownKey,
                unknown_key_message(name, schema),
            )),
        }
    }
    for field in schema.fields {
        let Some(what) = field.required else {
            continue;
        };
        if !table.contains_key(field.key) {
            out.push(Found::new(
                Some(span.clone()),
                Some(path.key(field.key).render()),
                ErrorKind::MissingKey,
                format!(
                    "required key is missing: every {} needs `{}`, {what}",
                    schema.header, field.key
                ),
            ));
        }
    }
    if let Some(check) = schema.check {
        check(table, path, out);
    }
}

fn walk_value(value: &Spanned<DeValue<'_>>, kind: &Kind, path: &KeyPath, out: &mut Vec<Found>) {
    let span = value.span();
    let v = value.get_ref();
    let wrong_type = |out: &mut Vec<Found>| {
        out.push(Found::new(
            Some(span.clone()),
            Some(path.render()),
            ErrorKind::WrongType,
            wrong_type_message(kind, v),
        ));
    };
    match kind {
        Kind::Str(check) => match v.as_str() {
            Some(s) => push_check(out, span.clone(), path, check(s)),
            None => wrong_type(out),
        },
        Kind::OneOf(names) => match v.as_str() {
            Some(s) => push_check(out, span.clone(), path, one_of(s, names)),
            None => wrong_type(out),
        },
        Kind::Bool => {
            if !matches!(v, DeValue::Boolean(_)) {
                wrong_type(out);
            }
        }
        Kind::Cpus => {
            let n = match v {
                DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                    .ok()
                    .map(|n| (n as f64, i.to_string())),
                DeValue::Float(f) => f.as_str().parse::<f64>().ok().map(|n| (n, f.to_string())),
                _ => return wrong_type(out),
            };
            let result = match n {
                Some((n, shown)) => value::check_cpus(n, &shown).map_err(|e| e.to_string()),
                None => Err(format!("{} is out of range", path.render())),
            };
            push_check(out, span.clone(), path, result);
        }
        Kind::Memory => {
            let result = match v {
                DeValue::String(s) => value::Memory::parse(s).map(|_| ()),
                DeValue::Integer(i) => match u64::from_str_radix(i.as_str(), i.radix()) {
                    Ok(n) => value::Memory::from_bytes(n).map(|_| ()),
                    Err(_) => Err(ValueError::MemoryFormat(i.to_string())),
                },
                _ => return wrong_type(out),
            };
            push_check(out, span.clone(), path, result.map_err(|e| e.to_string()));
        }
        Kind::Number(check) => {
            let n = match v {
                DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                    .ok()
                    .map(|n| n as f64),
                DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
                _ => return wrong_type(out),
            };
            let result = match n {
                Some(n) => check(n),
                None => Err(format!("{} is out of range", path.render())),
            };
            push_check(out, span.clone(), path, result);
        }
        Kind::Size => {
            let result = match v {
                DeValue::String(s) => bottle_policy::ByteSize::parse(s).map(|_| ()),
                DeValue::Integer(i) => match u64::from_str_radix(i.as_str(), i.radix()) {
                    Ok(n) => bottle_policy::ByteSize::from_bytes(n).map(|_| ()),
                    Err(_) => Err(bottle_policy::budget::BudgetFieldError::Size(i.to_string())),
                },
                _ => return wrong_type(out),
            };
            push_check(out, span.clone(), path, result.map_err(|e| e.to_string()));
        }
        Kind::TableMap { key, value } => {
            let Some(table) = v.as_table() else {
                return wrong_type(out);
            };
            for (k, val) in table.iter() {
                let kpath = path.key(k.get_ref());
                push_check(out, k.span(), &kpath, key(k.get_ref()));
                match val.get_ref().as_table() {
                    Some(t) => walk_table(t, val.span(), value, &kpath, out),
                    None => out.push(Found::new(
                        Some(val.span()),
                        Some(kpath.render()),
                        ErrorKind::WrongType,
                        format!(
                            "expected a table ({}), found {}",
                            value.header,
                            val.get_ref().type_str()
                        ),
                    )),
                }
            }
        }
        Kind::Count { min, max } => {
            let DeValue::Integer(i) = v else {
                return wrong_type(out);
            };
            let n = u64::from_str_radix(i.as_str(), i.radix()).ok();
            let result = match n {
                Some(n) if (*min..=*max).contains(&n) => Ok(()),
                _ => Err(format!(
                    "`{i}` is out of range: write a whole number from {min} to {max}"
                )),
            };
            push_check(out, span.clone(), path, result);
        }
        Kind::StrArray { each, non_empty } => {
            let Some(items) = v.as_array() else {
                return wrong_type(out);
            };
            if *non_empty && items.is_empty() {
                out.push(Found::new(
                    Some(span.clone()),
                    Some(path.render()),
                    ErrorKind::InvalidValue,
                    "cannot be empty; give the program and its arguments (e.g. [\"sleep\", \"infinity\"])"
                        .into(),
                ));
            }
            for (i, item) in items.iter().enumerate() {
                let ipath = path.index(i);
                match item.get_ref().as_str() {
                    Some(s) => {
                        // The program of a command must be named.
                        let r = if *non_empty && i == 0 && s.is_empty() {
                            Err(ValueError::CommandProgram.to_string())
                        } else {
                            each(s)
                        };
                        push_check(out, item.span(), &ipath, r);
                    }
                    None => push_element_type(out, item, &ipath, path, "string"),
                }
            }
        }
        Kind::OneOfArray(names) => {
            let Some(items) = v.as_array() else {
                return wrong_type(out);
            };
            for (i, item) in items.iter().enumerate() {
                let ipath = path.index(i);
                match item.get_ref().as_str() {
                    Some(s) => push_check(out, item.span(), &ipath, one_of(s, names)),
                    None => push_element_type(out, item, &ipath, path, "string"),
                }
            }
        }
        Kind::StrMap { key, value } => {
            let Some(table) = v.as_table() else {
                return wrong_type(out);
            };
            for (k, val) in table.iter() {
                let kpath = path.key(k.get_ref());
                push_check(out, k.span(), &kpath, key(k.get_ref()));
                match val.get_ref().as_str() {
                    Some(s) => push_check(out, val.span(), &kpath, value(s)),
                    None => out.push(Found::new(
                        Some(val.span()),
                        Some(kpath.render()),
                        ErrorKind::WrongType,
                        format!("expected a string, found {}", val.get_ref().type_str()),
                    )),
                }
            }
        }
        Kind::Table(schema) => match v.as_table() {
            Some(table) => walk_table(table, span.clone(), schema, path, out),
            None => wrong_type(out),
        },
        Kind::TableArray(schema) => {
            let Some(items) = v.as_array() else {
                return wrong_type(out);
            };
            for (i, item) in items.iter().enumerate() {
                let ipath = path.index(i);
                match item.get_ref().as_table() {
                    Some(table) => walk_table(table, item.span(), schema, &ipath, out),
                    None => push_element_type(out, item, &ipath, path, "table"),
                }
            }
        }
    }
}

fn push_check(out: &mut Vec<Found>, span: Range<usize>, path: &KeyPath, r: Result<(), String>) {
    if let Err(message) = r {
        out.push(Found::new(
            Some(span),
            Some(path.render()),
            ErrorKind::InvalidValue,
            message,
        ));
    }
}

fn push_element_type(
    out: &mut Vec<Found>,
    item: &Spanned<DeValue<'_>>,
    ipath: &KeyPath,
    array: &KeyPath,
    want: &str,
) {
    out.push(Found::new(
        Some(item.span()),
        Some(ipath.render()),
        ErrorKind::WrongType,
        format!(
            "expected a {want} ({} holds {want}s), found {}",
            array.render(),
            item.get_ref().type_str()
        ),
    ));
}

fn wrong_type_message(kind: &Kind, found: &DeValue<'_>) -> String {
    let mut m = format!("expected {}, found {}", kind.expected(), found.type_str());
    // The common slip: `[egress.rule]` where `[[egress.rule]]` was meant.
    if let (Kind::TableArray(t), DeValue::Table(_)) = (kind, found) {
        let _ = write!(m, "; write {} (double brackets) for each entry", t.header);
    }
    m
}

fn one_of(s: &str, names: &[&str]) -> Result<(), String> {
    if names.contains(&s) {
        return Ok(());
    }
    let mut m = format!("`{s}` is not one of {}", quoted_list(names));
    if let Some(close) = did_you_mean(s, names.iter().copied()) {
        let _ = write!(m, "; did you mean `{close}`?");
    }
    Err(m)
}

fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn unknown_key_message(name: &str, schema: &TableSchema) -> String {
    let mut m = format!("unknown key `{name}`");
    let allowed = schema.fields.iter().map(|f| f.key);
    if let Some(close) = did_you_mean(name, allowed.clone()) {
        let _ = write!(m, "; did you mean `{close}`?");
    } else if let Some(home) = home_of(name, schema) {
        let _ = write!(m, "; `{name}` belongs in {home}");
    }
    let list: Vec<&str> = allowed.collect();
    let _ = write!(m, " ({} allows: {})", schema.header, list.join(", "));
    m
}

/// The section a misplaced key belongs in (`image` at the top level belongs
/// in `[agent]`).
fn home_of(name: &str, here: &TableSchema) -> Option<&'static str> {
    let mut stack: Vec<&'static TableSchema> = vec![&ROOT];
    while let Some(t) = stack.pop() {
        if !std::ptr::eq(t, here) && t.fields.iter().any(|f| f.key == name) {
            return Some(t.header);
        }
        for f in t.fields {
            if let Kind::Table(sub) | Kind::TableArray(sub) | Kind::TableMap { value: sub, .. } =
                f.kind
            {
                stack.push(sub);
            }
        }
    }
    None
}

/// The closest candidate, if it is close: the same word in another case, or
/// within a small edit distance (about one typo per four letters). The
/// distance is optimal string alignment (`strsim::osa_distance`): swapping
/// two neighbours counts as one edit, so `imgae` is one typo from `image`.
fn did_you_mean<'a>(
    input: &str,
    candidates: impl Iterator<Item = &'a str> + Clone,
) -> Option<&'a str> {
    if let Some(c) = candidates.clone().find(|c| c.eq_ignore_ascii_case(input)) {
        return Some(c);
    }
    let lower = input.to_ascii_lowercase();
    let limit = (input.chars().count() / 4).clamp(1, 3);
    candidates
        .map(|c| (strsim::osa_distance(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let keys = [
            "image", "command", "workdir", "mounts", "env", "cpus", "memory",
        ];
        assert_eq!(did_you_mean("imgae", keys.iter().copied()), Some("image"));
        assert_eq!(did_you_mean("mount", keys.iter().copied()), Some("mounts"));
        assert_eq!(did_you_mean("CPUS", keys.iter().copied()), Some("cpus"));
        assert_eq!(did_you_mean("volumes", keys.iter().copied()), None);
        // A swap is one edit (plain Levenshtein would say 2 and, with a
        // limit of 1 for five letters, suggest nothing).
        assert_eq!(strsim::osa_distance("imgae", "image"), 1);
        assert_eq!(
            did_you_mean("wrokdir", keys.iter().copied()),
            Some("workdir")
        );
        assert_eq!(
            did_you_mean("get", value::METHODS.iter().copied()),
            Some("GET")
        );
        assert_eq!(
            did_you_mean("dokcer", RuntimeChoice::NAMES.iter().copied()),
            Some("docker")
        );
    }

    #[test]
    fn key_paths_render() {
        let p = KeyPath::default()
            .key("egress")
            .key("rule")
            .index(0)
            .key("methods")
            .index(2);
        assert_eq!(p.render(), "egress.rule[0].methods[2]");
        assert_eq!(
            KeyPath::default()
                .key("agent")
                .key("env")
                .key("a b")
                .render(),
            "agent.env.\"a b\""
        );
    }

    #[test]
    fn misplaced_keys_point_home() {
        assert_eq!(home_of("image", &ROOT), Some("[agent]"));
        assert_eq!(home_of("allow", &AGENT), Some("[egress]"));
        assert_eq!(home_of("nothing", &ROOT), None);
    }
}
