//! `bottle budget NAME`: a bottle's egress budgets and how far they are used
//! (read from the policy in force and the counters the sidecar persists),
//! and `--raise`, the user's explicit act that changes a limit in the
//! running bottle's policy and its pin (issue 16).
//!
//! A raise is written into `policy.json` (the sidecar reloads it within its
//! reload interval, about a second) and into the pin, so the raised limit
//! is what the next `reload` is compared against: a bottle.toml that asks
//! for the same is no widening, and one that asks for less narrows it
//! silently (a raise lasts until the next `up` or `reload` from a config
//! with a lower limit; write it into bottle.toml to keep it).
//!
//! The counters file is written by the sidecar into the bottle's log
//! directory, which the agent cannot reach; a file that cannot be read
//! shows as no counters, with a warning.

use crate::pin;
use crate::state::{StateDir, StateError};
use bottle_policy::budget::{Level, Measure, Status};
use bottle_policy::{BudgetPolicy, BudgetState, ByteSize, HostBudget, HostPattern, Policy, Spend};
use serde::Serialize;

/// Why `bottle budget` could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("bottle `{name}` has no rendered policy at {path}\n  fix: bring it up with `bottle up` first")]
    NoPolicy { name: String, path: String },
    #[error("the policy at {path} cannot be read: {error}\n  fix: run `bottle reload {name}` to render it again")]
    BadPolicy {
        name: String,
        path: String,
        error: String,
    },
    #[error("`--raise {0}`: write BUDGET=VALUE, e.g. llm_usd=40, bytes_up=2GiB, or HOST:BUDGET=VALUE such as api.github.com:requests_per_minute=240")]
    RaiseSyntax(String),
    #[error("`--raise {raise}`: {why}")]
    RaiseValue { raise: String, why: String },
    #[error(transparent)]
    State(#[from] StateError),
}

impl crate::exit::Classify for BudgetError {
    fn exit(&self) -> crate::exit::Exit {
        match self {
            BudgetError::RaiseSyntax(_) | BudgetError::RaiseValue { .. } => {
                crate::exit::Exit::Usage
            }
            _ => crate::exit::Exit::Failed,
        }
    }
}

/// One `--raise`: a limit to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raise {
    /// A host entry's pattern; `None` for the bottle-wide budget.
    pub host: Option<HostPattern>,
    pub value: Value,
}

/// The new limit of one measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    BytesUp(ByteSize),
    BytesDown(ByteSize),
    LlmUsd(Spend),
    RequestsPerMinute(bottle_policy::budget::Rate),
}

impl Raise {
    /// Parses `BUDGET=VALUE` or `HOST:BUDGET=VALUE`.
    pub fn parse(s: &str) -> Result<Raise, BudgetError> {
        let (name, value) = s
            .split_once('=')
            .ok_or_else(|| BudgetError::RaiseSyntax(s.into()))?;
        let (host, measure) = match name.rsplit_once(':') {
            Some((h, m)) => (
                Some(HostPattern::parse(h).map_err(|e| BudgetError::RaiseValue {
                    raise: s.into(),
                    why: e.to_string(),
                })?),
                m,
            ),
            None => (None, name),
        };
        let bad = |why: String| BudgetError::RaiseValue {
            raise: s.into(),
            why,
        };
        let measure = Measure::parse(measure.trim()).ok_or_else(|| {
            bad(format!(
                "`{measure}` is not a budget; the budgets are bytes_up, bytes_down, llm_usd and (per host) requests_per_minute"
            ))
        })?;
        let value = value.trim();
        let value = match measure {
            Measure::BytesUp => {
                Value::BytesUp(ByteSize::parse(value).map_err(|e| bad(e.to_string()))?)
            }
            Measure::BytesDown => {
                Value::BytesDown(ByteSize::parse(value).map_err(|e| bad(e.to_string()))?)
            }
            Measure::LlmUsd => {
                let v: f64 = value
                    .trim_start_matches('$')
                    .parse()
                    .map_err(|_| bad(format!("`{value}` is not a number of US dollars")))?;
                Value::LlmUsd(Spend::from_dollars(v).map_err(|e| bad(e.to_string()))?)
            }
            Measure::RequestsPerMinute => {
                if host.is_none() {
                    return Err(bad("requests_per_minute is a per-host budget; write HOST:requests_per_minute=N".into()));
                }
                let n: u32 = value
                    .parse()
                    .map_err(|_| bad(format!("`{value}` is not a whole number")))?;
                Value::RequestsPerMinute(
                    bottle_policy::budget::Rate::new(n).map_err(|e| bad(e.to_string()))?,
                )
            }
        };
        Ok(Raise { host, value })
    }

    /// `llm_usd`, `api.github.com:bytes_up`.
    pub fn name(&self) -> String {
        let m = match self.value {
            Value::BytesUp(_) => "bytes_up",
            Value::BytesDown(_) => "bytes_down",
            Value::LlmUsd(_) => "llm_usd",
            Value::RequestsPerMinute(_) => "requests_per_minute",
        };
        match &self.host {
            Some(h) => format!("{h}:{m}"),
            None => m.to_string(),
        }
    }

    /// Sets this limit in `budget` (adding a host entry when needed).
    pub fn apply(&self, budget: &mut BudgetPolicy) {
        let entry = match &self.host {
            None => None,
            Some(h) => {
                let i = match budget.hosts.iter().position(|e| e.host == *h) {
                    Some(i) => i,
                    None => {
                        budget.hosts.push(HostBudget::empty(h.clone()));
                        budget.hosts.len() - 1
                    }
                };
                Some(&mut budget.hosts[i])
            }
        };
        match (entry, &self.value) {
            (None, Value::BytesUp(b)) => budget.bytes_up = Some(*b),
            (None, Value::BytesDown(b)) => budget.bytes_down = Some(*b),
            (None, Value::LlmUsd(s)) => budget.llm_usd = Some(*s),
            (None, Value::RequestsPerMinute(_)) => {}
            (Some(e), Value::BytesUp(b)) => e.bytes_up = Some(*b),
            (Some(e), Value::BytesDown(b)) => e.bytes_down = Some(*b),
            (Some(e), Value::LlmUsd(s)) => e.llm_usd = Some(*s),
            (Some(e), Value::RequestsPerMinute(r)) => e.requests_per_minute = Some(*r),
        }
    }
}

/// What `bottle budget NAME` shows (and `--json` prints).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub name: String,
    /// Every budget with its limit and use (requests per minute shows 0
    /// used: the window lives in the sidecar's memory only).
    pub budgets: Vec<Status>,
    /// The counters by host.
    pub hosts: std::collections::BTreeMap<String, bottle_policy::Counters>,
    /// Set when the counters file could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters_error: Option<String>,
}

fn load_policy(name: &str, state: &StateDir) -> Result<Policy, BudgetError> {
    let path = state.policy_path();
    let text = std::fs::read_to_string(&path).map_err(|_| BudgetError::NoPolicy {
        name: name.into(),
        path: path.display().to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| BudgetError::BadPolicy {
        name: name.into(),
        path: path.display().to_string(),
        error: e.to_string(),
    })
}

/// The counters the sidecar persisted; no file is no use yet.
pub fn counters(state: &StateDir) -> Result<BudgetState, String> {
    let path = state.logs_dir().join(bottle_policy::BUDGET_STATE_FILE);
    match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BudgetState::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
        Ok(bytes) => BudgetState::parse(&bytes).map_err(|e| format!("{}: {e}", path.display())),
    }
}

/// Bottle `name`'s budgets and counters.
pub fn report(name: &str, state: &StateDir) -> Result<Report, BudgetError> {
    let policy = load_policy(name, state)?;
    let (counters, counters_error) = match counters(state) {
        Ok(c) => (c, None),
        Err(e) => (BudgetState::default(), Some(e)),
    };
    Ok(Report {
        name: name.into(),
        budgets: policy.egress.budget.statuses(&counters, &|_| 0),
        hosts: counters.hosts,
        counters_error,
    })
}

/// The one-cell summary `bottle ps` shows: the most used budget (`llm_usd
/// $3.10/$25.00`), `-` without budgets.
pub fn summary(budgets: &[Status]) -> String {
    let worst = budgets
        .iter()
        .filter(|s| s.measure != Measure::RequestsPerMinute)
        .max_by(|a, b| {
            let ratio = |s: &Status| {
                if s.unknown.is_some() {
                    f64::INFINITY
                } else {
                    s.used as f64 / s.limit.max(1) as f64
                }
            };
            (a.level, ratio(a))
                .partial_cmp(&(b.level, ratio(b)))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    match worst {
        None => "-".into(),
        Some(s) => {
            let mark = match s.level {
                Level::Ok => "",
                Level::Soft => " (soft)",
                Level::Exhausted => " (EXHAUSTED)",
            };
            format!(
                "{} {}/{}{mark}",
                printable(&s.budget),
                s.measure.show(s.used),
                s.measure.show(s.limit)
            )
        }
    }
}

/// Applies `raises` to the running bottle's policy and its pin; returns
/// the lines describing each change.
pub fn raise(name: &str, state: &StateDir, raises: &[Raise]) -> Result<Vec<String>, BudgetError> {
    let mut policy = load_policy(name, state)?;
    let before = policy.egress.budget.clone();
    for r in raises {
        r.apply(&mut policy.egress.budget);
    }
    let after = policy.egress.budget.clone();
    let loosened = after.loosened_from(&before);
    let lines = if loosened.is_empty() {
        raises
            .iter()
            .map(|r| format!("egress.budget {} is set (no limit grows)", r.name()))
            .collect()
    } else {
        loosened
    };
    let json = serde_json::to_string_pretty(&policy).unwrap_or_default();
    state.write_policy(&json)?;
    if let Some(mut pinned) = pin::load(state) {
        pinned.egress.budget = after;
        pin::accept(state, &pinned)?;
    }
    Ok(lines)
}

/// `s` safe for a terminal: the counters file is written by the sidecar,
/// but what it says about unknown spend quotes the model name an origin
/// sent (issue 16, review L5), so characters a terminal acts on or that
/// hide or reorder text are shown as `?`: controls (escape sequences),
/// bidirectional overrides and isolates, zero-width characters, line and
/// paragraph separators, soft hyphen, byte-order mark.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            let bad = c.is_control()
                || matches!(c,
                    '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
                    | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}'
                    | '\u{FFF9}'..='\u{FFFB}');
            if bad {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// `bottle budget NAME` as a table.
pub fn render(out: &mut dyn std::io::Write, report: &Report) -> std::io::Result<()> {
    if report.budgets.is_empty() {
        writeln!(
            out,
            "bottle `{}` has no egress budgets ([egress.budget] in bottle.toml)",
            report.name
        )?;
    } else {
        writeln!(
            out,
            "{:<40} {:>14} {:>14} {:<10} NOTE",
            "BUDGET", "USED", "LIMIT", "STATE"
        )?;
        for s in &report.budgets {
            let used = if s.measure == Measure::RequestsPerMinute {
                "-".to_string()
            } else {
                s.measure.show(s.used)
            };
            let state = match s.level {
                Level::Ok => "ok",
                Level::Soft => "soft",
                Level::Exhausted => "EXHAUSTED",
            };
            writeln!(
                out,
                "{:<40} {:>14} {:>14} {:<10} {}",
                printable(&s.budget),
                used,
                s.measure.show(s.limit),
                state,
                printable(s.unknown.as_deref().unwrap_or(""))
            )?;
        }
    }
    for (host, c) in &report.hosts {
        writeln!(
            out,
            "  {}: {} requests, {} up, {} down, {} spent ({} in / {} out / {} cache-read / {} cache-write tokens)",
            printable(host),
            c.requests,
            bottle_policy::budget::human_bytes(c.bytes_up),
            bottle_policy::budget::human_bytes(c.bytes_down),
            bottle_policy::budget::human_usd_nanos(c.spend_nanos),
            c.tokens.input,
            c.tokens.output,
            c.tokens.cache_read,
            c.tokens.cache_write
        )?;
    }
    if let Some(e) = &report.counters_error {
        writeln!(
            out,
            "warning: the counters could not be read: {}",
            printable(e)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_parse_and_refuse() {
        let r = Raise::parse("llm_usd=40").unwrap();
        assert_eq!(r.host, None);
        let r = Raise::parse("api.github.com:bytes_up=100MiB").unwrap();
        assert_eq!(r.host, Some(HostPattern::parse("api.github.com").unwrap()));
        assert_eq!(r.value, Value::BytesUp(ByteSize::parse("100MiB").unwrap()));
        assert!(Raise::parse("api.github.com:requests_per_minute=240").is_ok());
        for bad in [
            "llm_usd",
            "llm_usd=-1",
            "llm_usd=0",
            "tokens=5",
            "requests_per_minute=5",
            "bad host!:bytes_up=1",
            "bytes_up=lots",
        ] {
            assert!(Raise::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn raising_writes_the_policy_and_the_pin() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::at(dir.path().to_path_buf());
        let egress = bottle_policy::EgressPolicy {
            budget: serde_json::from_value(serde_json::json!({"llm_usd": 25.0})).unwrap(),
            ..Default::default()
        };
        let policy = Policy::new("demo", egress.clone());
        state
            .write_policy(&serde_json::to_string(&policy).unwrap())
            .unwrap();
        let mut pinned = pin::Pinned::nothing();
        pinned.egress = egress;
        pin::accept(&state, &pinned).unwrap();
        std::fs::create_dir_all(state.logs_dir()).unwrap();
        let mut used = BudgetState::default();
        used.record(
            "api.anthropic.com",
            &bottle_policy::Counters {
                spend_nanos: 25_500_000_000,
                ..Default::default()
            },
        );
        std::fs::write(
            state.logs_dir().join(bottle_policy::BUDGET_STATE_FILE),
            serde_json::to_vec(&used).unwrap(),
        )
        .unwrap();
        let before = report("demo", &state).unwrap();
        assert_eq!(before.budgets[0].level, Level::Exhausted);
        assert_eq!(
            summary(&before.budgets),
            "llm_usd $25.50/$25.00 (EXHAUSTED)"
        );
        let lines = raise(
            "demo",
            &state,
            &[
                Raise::parse("llm_usd=40").unwrap(),
                Raise::parse("api.github.com:requests_per_minute=60").unwrap(),
            ],
        )
        .unwrap();
        assert_eq!(lines, ["egress.budget llm_usd grows from $25.00 to $40.00"]);
        let after = report("demo", &state).unwrap();
        assert_eq!(after.budgets[0].level, Level::Ok);
        assert_eq!(after.budgets.len(), 2);
        let pinned = pin::load(&state).unwrap();
        assert_eq!(
            pinned.egress.budget.llm_usd.unwrap().usd().micros(),
            40_000_000
        );
        let mut text = Vec::new();
        render(&mut text, &after).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("$25.50"), "{text}");
        assert!(
            text.contains("api.github.com:requests_per_minute"),
            "{text}"
        );
    }

    /// An origin's model name reaches the table through the sidecar's
    /// unknown-spend note: escape sequences and bidi overrides are not
    /// written to the terminal (review L5).
    #[test]
    fn origin_strings_are_made_printable() {
        let mut state = BudgetState::default();
        state.record(
            "api.anthropic.com",
            &bottle_policy::Counters {
                unknown: Some("model `x\u{1b}]0;pwned\u{7}\u{202e}y` has no price".into()),
                ..Default::default()
            },
        );
        let budget: BudgetPolicy =
            serde_json::from_value(serde_json::json!({"llm_usd": 1.0})).unwrap();
        let report = Report {
            name: "demo".into(),
            budgets: budget.statuses(&state, &|_| 0),
            hosts: state.hosts.clone(),
            counters_error: Some("bad\u{1b}[2J".into()),
        };
        let mut text = Vec::new();
        render(&mut text, &report).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("model `x?]0;pwned??y` has no price"),
            "{text}"
        );
        assert!(text.contains("bad?[2J"), "{text}");
        assert!(
            !text
                .chars()
                .any(|c| c.is_control() && c != '\n' || c == '\u{202e}'),
            "{text:?}"
        );
    }
}
