//! Egress budgets (`[egress.budget]`): how many bytes a bottle may send and
//! receive, how many requests a host may get per minute, and how much LLM
//! spend the sidecar lets through, as data; the pure functions that say, for
//! given counters, whether a budget is fine, past its soft limit or
//! exhausted; the price table that turns token usage into US dollars; and
//! the counters file the sidecar persists (`budget.json`) and the CLI reads.
//!
//! Issue 16: an allow-list answers "where", not "how much"; a looping agent
//! can otherwise spend without bound on an allowed model API.
//!
//! Money is kept in whole units so the policy stays `Eq` and exact: limits
//! and prices in micro-dollars ([`Usd`]), spend in nano-dollars. A price is
//! US dollars per million tokens, so one token at price `p` costs `p`
//! micro-dollars, and a count of tokens costs `tokens × micros / 1000`
//! nano-dollars.
//!
//! Which hosts are metered for LLM spend ([`BudgetPolicy::is_llm_host`]):
//! a `[[egress.budget.host]]` entry with `llm_usd` or `llm = true` marks the
//! hosts it matches; when the bottle-wide `llm_usd` is set, the providers'
//! own API hosts ([`DEFAULT_LLM_HOSTS`]) are metered too. A model with no
//! price on a metered host fails closed: its tokens are counted, its spend
//! is unknown, and further requests to that host are refused until the user
//! adds `[egress.budget.prices."MODEL"]`.

use crate::host::{normalize_host, HostPattern};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// The providers' API hosts metered for LLM spend whenever the bottle-wide
/// `llm_usd` is set.
pub const DEFAULT_LLM_HOSTS: [&str; 2] = ["api.anthropic.com", "api.openai.com"];

/// Format version of the counters file; another version is not read.
pub const BUDGET_STATE_FORMAT: u32 = 1;

/// The name of the counters file in the sidecar's log directory.
pub const BUDGET_STATE_FILE: &str = "budget.json";

/// Soft fraction when none is written: warn at 80 %.
pub const DEFAULT_SOFT_PERMILLE: u16 = 800;

/// Why a budget value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetFieldError {
    #[error("`{0}` is not a size; write a number of bytes or a size such as \"50MiB\", \"2GiB\" or \"500MB\"")]
    Size(String),
    #[error("a size of 0 would refuse every request; leave the key out for no limit")]
    ZeroSize,
    #[error("`{0}` is not an amount of US dollars; write a number such as 25.0 (not negative, NaN or infinite, at most 1000000000)")]
    Usd(String),
    #[error("a spend limit of 0 would refuse every model request; leave the key out for no limit")]
    ZeroUsd,
    #[error(
        "soft = {0} is not a fraction above 0 and at most 1 (e.g. 0.8: warn at 80 % of a limit)"
    )]
    Soft(String),
    #[error("requests_per_minute is 0; write at least 1, or leave it out for no limit")]
    ZeroRate,
    #[error("`{0}` is not a model name; write the model's name exactly (e.g. \"claude-sonnet-4-5\"), or a prefix ending in `*` (e.g. \"claude-sonnet-4-*\"), in printable characters without spaces")]
    Model(String),
}

// ---------------------------------------------------------------------------
// Sizes

/// A number of bytes above zero, written as a plain number or a size string
/// (`KB`/`MB`/`GB`/`TB` are powers of 1000, `KiB`/`MiB`/`GiB`/`TiB` of 1024;
/// case does not matter). Serialised as the plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(u64);

impl ByteSize {
    pub fn parse(input: &str) -> Result<Self, BudgetFieldError> {
        let s = input.trim();
        let bad = || BudgetFieldError::Size(input.to_owned());
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let unit = unit.trim().to_ascii_lowercase();
        let factor: u64 = match unit.as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "m" | "mb" => 1000_u64.pow(2),
            "g" | "gb" => 1000_u64.pow(3),
            "t" | "tb" => 1000_u64.pow(4),
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            _ => return Err(bad()),
        };
        if number.is_empty() {
            return Err(bad());
        }
        let bytes = if number.contains('.') {
            let n: f64 = number.parse().map_err(|_| bad())?;
            let b = n * factor as f64;
            if !b.is_finite() || b >= u64::MAX as f64 {
                return Err(bad());
            }
            b.round() as u64
        } else {
            let n: u64 = number.parse().map_err(|_| bad())?;
            n.checked_mul(factor).ok_or_else(bad)?
        };
        ByteSize::from_bytes(bytes)
    }

    pub fn from_bytes(bytes: u64) -> Result<Self, BudgetFieldError> {
        if bytes == 0 {
            Err(BudgetFieldError::ZeroSize)
        } else {
            Ok(ByteSize(bytes))
        }
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&human_bytes(self.0))
    }
}

/// `1.5 MiB`, `20 GiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s} {unit}")
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"50MiB\" or a number of bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                ByteSize::from_bytes(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(BudgetFieldError::Size(v.to_string())))
                    .and_then(|v| ByteSize::from_bytes(v).map_err(E::custom))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// Money

/// An amount of US dollars, kept in micro-dollars; written and serialised as
/// a number of dollars (`25.0`, `0.30`). Zero is allowed (a free model's
/// price); a spend limit uses [`Spend`], which is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Usd(u64);

/// The largest amount accepted, in dollars.
const MAX_USD: f64 = 1e9;

impl Usd {
    pub fn from_dollars(v: f64) -> Result<Self, BudgetFieldError> {
        if !v.is_finite() || !(0.0..=MAX_USD).contains(&v) {
            return Err(BudgetFieldError::Usd(v.to_string()));
        }
        Ok(Usd((v * 1e6).round() as u64))
    }
    pub fn from_micros(m: u64) -> Self {
        Usd(m)
    }
    pub fn micros(self) -> u64 {
        self.0
    }
    /// In nano-dollars, the unit spend is counted in.
    pub fn nanos(self) -> u64 {
        self.0.saturating_mul(1000)
    }
    pub fn dollars(self) -> f64 {
        self.0 as f64 / 1e6
    }
}

/// `$25.00`, `$21.30`, `$0.0105`: two to four decimals, as many as matter.
pub fn human_usd_nanos(nanos: u64) -> String {
    let s = format!("{:.4}", nanos as f64 / 1e9);
    let (whole, frac) = s.split_once('.').unwrap_or((&s, "0000"));
    let frac = frac.trim_end_matches('0');
    format!("${whole}.{frac:0<2}")
}

impl fmt::Display for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&human_usd_nanos(self.nanos()))
    }
}

impl Serialize for Usd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.dollars())
    }
}

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        Usd::from_dollars(v).map_err(serde::de::Error::custom)
    }
}

/// A spend limit: [`Usd`] above zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Spend(Usd);

impl Spend {
    pub fn from_dollars(v: f64) -> Result<Self, BudgetFieldError> {
        let usd = Usd::from_dollars(v)?;
        if usd.0 == 0 {
            return Err(BudgetFieldError::ZeroUsd);
        }
        Ok(Spend(usd))
    }
    pub fn usd(self) -> Usd {
        self.0
    }
}

impl fmt::Display for Spend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for Spend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        Spend::from_dollars(v).map_err(serde::de::Error::custom)
    }
}

/// The fraction of a limit where the soft warning starts, in thousandths
/// (`soft = 0.8` is 800); above 0, at most 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Soft(u16);

impl Soft {
    pub fn from_fraction(v: f64) -> Result<Self, BudgetFieldError> {
        if !v.is_finite() || v <= 0.0 || v > 1.0 {
            return Err(BudgetFieldError::Soft(v.to_string()));
        }
        let p = (v * 1000.0).round() as u16;
        Ok(Soft(p.max(1)))
    }
    pub fn permille(self) -> u16 {
        self.0
    }
}

impl Default for Soft {
    fn default() -> Self {
        Soft(DEFAULT_SOFT_PERMILLE)
    }
}

impl Serialize for Soft {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(f64::from(self.0) / 1000.0)
    }
}

impl<'de> Deserialize<'de> for Soft {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        Soft::from_fraction(v).map_err(serde::de::Error::custom)
    }
}

/// Requests per minute to one host entry's hosts: at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Rate(u32);

impl Rate {
    pub fn new(n: u32) -> Result<Self, BudgetFieldError> {
        if n == 0 {
            Err(BudgetFieldError::ZeroRate)
        } else {
            Ok(Rate(n))
        }
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Rate::new(u32::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A price-table key: a model's exact name, or a prefix ending in `*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModelKey(String);

impl ModelKey {
    pub fn parse(s: &str) -> Result<Self, BudgetFieldError> {
        let body = s.strip_suffix('*').unwrap_or(s);
        let ok = !s.is_empty()
            && s.len() <= 200
            && !body.contains('*')
            && s.chars().all(|c| c.is_ascii_graphic());
        if ok {
            Ok(ModelKey(s.to_owned()))
        } else {
            Err(BudgetFieldError::Model(s.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Does this key cover `model`? A prefix covers every name it starts.
    pub fn matches(&self, model: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => self.0 == model,
        }
    }
}

impl TryFrom<String> for ModelKey {
    type Error = BudgetFieldError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ModelKey::parse(&s)
    }
}

impl From<ModelKey> for String {
    fn from(k: ModelKey) -> String {
        k.0
    }
}

impl fmt::Display for ModelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------
// The policy

/// `[egress.budget.prices."MODEL"]`: US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: Usd,
    pub output: Usd,
    /// Prompt tokens read from the provider's cache; the input price when
    /// absent (errs high: providers charge less).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<Usd>,
    /// Prompt tokens written to the cache; twice the input price when absent
    /// (errs high: the dearest cache write the providers list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<Usd>,
}

impl Price {
    fn cache_read(&self) -> Usd {
        self.cache_read.unwrap_or(self.input)
    }
    fn cache_write(&self) -> Usd {
        self.cache_write
            .unwrap_or(Usd(self.input.0.saturating_mul(2)))
    }

    /// What `tokens` cost, in nano-dollars.
    pub fn cost_nanos(&self, tokens: &Tokens) -> u64 {
        let part = |n: u64, p: Usd| -> u128 { u128::from(n) * u128::from(p.0) / 1000 };
        let total = part(tokens.input, self.input)
            + part(tokens.output, self.output)
            + part(tokens.cache_read, self.cache_read())
            + part(tokens.cache_write, self.cache_write());
        u64::try_from(total).unwrap_or(u64::MAX)
    }

    /// Is any component of `self` cheaper than the same one of `other`?
    fn cheaper_than(&self, other: &Price) -> bool {
        self.input < other.input
            || self.output < other.output
            || self.cache_read() < other.cache_read()
            || self.cache_write() < other.cache_write()
    }
}

/// `[[egress.budget.host]]`: limits for the hosts one pattern matches,
/// counted together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostBudget {
    pub host: HostPattern,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_up: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_down: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<Rate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_usd: Option<Spend>,
    /// Meter LLM spend on these hosts (implied by `llm_usd`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub llm: bool,
}

impl HostBudget {
    /// An entry for `host` with no limits (for raising one that had none).
    pub fn empty(host: HostPattern) -> Self {
        HostBudget {
            host,
            bytes_up: None,
            bytes_down: None,
            requests_per_minute: None,
            llm_usd: None,
            llm: false,
        }
    }
    fn meters_llm(&self) -> bool {
        self.llm || self.llm_usd.is_some()
    }
}

/// `[egress.budget]`. Every limit is optional; an empty budget limits
/// nothing and is left out of the rendered policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetPolicy {
    /// Request bytes to every host together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_up: Option<ByteSize>,
    /// Response bytes from every host together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_down: Option<ByteSize>,
    /// LLM spend on every metered host together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_usd: Option<Spend>,
    /// Where the soft warning starts (default 0.8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft: Option<Soft>,
    #[serde(default, rename = "host", skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostBudget>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prices: BTreeMap<ModelKey, Price>,
}

/// Which limit a [`Status`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    BytesUp,
    BytesDown,
    LlmUsd,
    RequestsPerMinute,
}

impl Measure {
    pub const ALL: [Measure; 4] = [
        Measure::BytesUp,
        Measure::BytesDown,
        Measure::LlmUsd,
        Measure::RequestsPerMinute,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Measure::BytesUp => "bytes_up",
            Measure::BytesDown => "bytes_down",
            Measure::LlmUsd => "llm_usd",
            Measure::RequestsPerMinute => "requests_per_minute",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Measure::ALL.into_iter().find(|m| m.name() == s)
    }

    /// A limit or a used amount, in this measure's unit (bytes, nano-dollars,
    /// requests), for people.
    pub fn show(self, n: u64) -> String {
        match self {
            Measure::BytesUp | Measure::BytesDown => human_bytes(n),
            Measure::LlmUsd => human_usd_nanos(n),
            Measure::RequestsPerMinute => format!("{n}/min"),
        }
    }
}

/// How far one budget is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Soft,
    Exhausted,
}

/// One budget and how far it is used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// `llm_usd` for a bottle-wide budget, `api.github.com:bytes_up` for a
    /// host entry's: the name `bottle budget --raise` takes.
    pub budget: String,
    /// The host entry's pattern; `None` bottle-wide.
    pub host: Option<HostPattern>,
    pub measure: Measure,
    /// In the measure's unit: bytes, nano-dollars, requests per minute.
    pub limit: u64,
    pub used: u64,
    pub level: Level,
    /// Set when the used amount is not known (a model with no price, a
    /// response whose usage could not be read): the budget is exhausted
    /// until the user fixes the cause and raises or reloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
}

impl Status {
    /// `llm_usd $21.30/$25.00 soft`, for the response header and tables.
    pub fn summary(&self) -> String {
        let level = match self.level {
            Level::Ok => "ok",
            Level::Soft => "soft",
            Level::Exhausted => "exhausted",
        };
        format!(
            "{}={}/{} {level}",
            self.budget,
            self.measure.show(self.used),
            self.measure.show(self.limit)
        )
    }
}

/// `used` against `limit` with the soft fraction.
pub fn level(used: u64, limit: u64, soft: Soft) -> Level {
    if used >= limit {
        Level::Exhausted
    } else if u128::from(used) * 1000 >= u128::from(limit) * u128::from(soft.0) {
        Level::Soft
    } else {
        Level::Ok
    }
}

impl BudgetPolicy {
    pub fn is_empty(&self) -> bool {
        *self == BudgetPolicy::default()
    }

    fn soft(&self) -> Soft {
        self.soft.unwrap_or_default()
    }

    /// Is `host` (normalised) metered for LLM spend?
    pub fn is_llm_host(&self, host: &str) -> bool {
        self.hosts
            .iter()
            .any(|h| h.meters_llm() && h.host.matches(host))
            || (self.llm_usd.is_some() && DEFAULT_LLM_HOSTS.contains(&host))
    }

    /// The price of `model`: its exact key, else the longest prefix key that
    /// covers it.
    pub fn price_for(&self, model: &str) -> Option<&Price> {
        if let Ok(k) = ModelKey::parse(model) {
            if let Some(p) = self.prices.get(&k) {
                return Some(p);
            }
        }
        self.prices
            .iter()
            .filter(|(k, _)| k.as_str().ends_with('*') && k.matches(model))
            .max_by_key(|(k, _)| k.as_str().len())
            .map(|(_, p)| p)
    }

    /// Every budget and how far `state` uses it; `rate(i)` is how many
    /// requests host entry `i` had in the current minute.
    pub fn statuses(&self, state: &BudgetState, rate: &dyn Fn(usize) -> u64) -> Vec<Status> {
        let soft = self.soft();
        let mut out = Vec::new();
        let mut push = |host: Option<&HostPattern>,
                        measure: Measure,
                        limit: u64,
                        used: u64,
                        unknown: Option<String>| {
            let budget = match host {
                Some(h) => format!("{h}:{}", measure.name()),
                None => measure.name().to_string(),
            };
            let level = if unknown.is_some() {
                Level::Exhausted
            } else {
                level(used, limit, soft)
            };
            out.push(Status {
                budget,
                host: host.cloned(),
                measure,
                limit,
                used,
                level,
                unknown,
            });
        };
        let total = state.total();
        if let Some(l) = self.bytes_up {
            push(None, Measure::BytesUp, l.0, total.bytes_up, None);
        }
        if let Some(l) = self.bytes_down {
            push(None, Measure::BytesDown, l.0, total.bytes_down, None);
        }
        if let Some(l) = self.llm_usd {
            let unknown = state
                .hosts
                .iter()
                .find_map(|(h, c)| c.unknown.as_ref().map(|why| format!("{h}: {why}")));
            push(
                None,
                Measure::LlmUsd,
                l.0.nanos(),
                total.spend_nanos,
                unknown,
            );
        }
        for (i, entry) in self.hosts.iter().enumerate() {
            let used = state.matching(&entry.host);
            let h = Some(&entry.host);
            if let Some(l) = entry.bytes_up {
                push(h, Measure::BytesUp, l.0, used.bytes_up, None);
            }
            if let Some(l) = entry.bytes_down {
                push(h, Measure::BytesDown, l.0, used.bytes_down, None);
            }
            if let Some(l) = entry.requests_per_minute {
                push(h, Measure::RequestsPerMinute, u64::from(l.0), rate(i), None);
            }
            if let Some(l) = entry.llm_usd {
                let unknown = state
                    .hosts
                    .iter()
                    .filter(|(name, _)| entry.host.matches(name))
                    .find_map(|(h, c)| c.unknown.as_ref().map(|why| format!("{h}: {why}")));
                push(h, Measure::LlmUsd, l.0.nanos(), used.spend_nanos, unknown);
            }
        }
        out
    }

    /// The budgets a request to `host` (normalised) counts against, with
    /// their levels: the bottle-wide byte budgets always, the bottle-wide
    /// spend budget on metered hosts, and every host entry matching `host`.
    /// A host with unknown spend is exhausted for every spend budget it
    /// counts against.
    pub fn check(
        &self,
        host: &str,
        state: &BudgetState,
        rate: &dyn Fn(usize) -> u64,
    ) -> Vec<Status> {
        let llm = self.is_llm_host(host);
        let own_unknown = state.hosts.get(host).and_then(|c| c.unknown.clone());
        self.statuses(state, rate)
            .into_iter()
            .filter(|s| match &s.host {
                None => s.measure != Measure::LlmUsd || llm,
                Some(p) => p.matches(host),
            })
            .map(|mut s| {
                // Another host's unknown spend does not stop this one unless
                // they share the budget; this host's own always does.
                if s.measure == Measure::LlmUsd {
                    if let Some(why) = &own_unknown {
                        s.unknown = Some(format!("{host}: {why}"));
                        s.level = Level::Exhausted;
                    }
                }
                s
            })
            .collect()
    }

    /// The indexes of the host entries matching `host` that limit requests
    /// per minute.
    pub fn rate_entries(&self, host: &str) -> Vec<(usize, Rate)> {
        self.hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.host.matches(host))
            .filter_map(|(i, h)| h.requests_per_minute.map(|r| (i, r)))
            .collect()
    }

    /// Every way `self` is looser than `old`, one line each: a limit raised
    /// or removed, a host entry removed, `llm` metering dropped, a later soft
    /// warning, a price added or made cheaper, a price dropped so its models
    /// fall back to a cheaper one.
    pub fn loosened_from(&self, old: &BudgetPolicy) -> Vec<String> {
        let mut out = Vec::new();
        fn limit(
            out: &mut Vec<String>,
            name: String,
            old: Option<u64>,
            new: Option<u64>,
            show: Measure,
        ) {
            match (old, new) {
                (Some(o), None) => out.push(format!(
                    "egress.budget {name} limit ({}) is removed",
                    show.show(o)
                )),
                (Some(o), Some(n)) if n > o => out.push(format!(
                    "egress.budget {name} grows from {} to {}",
                    show.show(o),
                    show.show(n)
                )),
                _ => {}
            }
        }
        limit(
            &mut out,
            "bytes_up".into(),
            old.bytes_up.map(|b| b.0),
            self.bytes_up.map(|b| b.0),
            Measure::BytesUp,
        );
        limit(
            &mut out,
            "bytes_down".into(),
            old.bytes_down.map(|b| b.0),
            self.bytes_down.map(|b| b.0),
            Measure::BytesDown,
        );
        limit(
            &mut out,
            "llm_usd".into(),
            old.llm_usd.map(|s| s.0.nanos()),
            self.llm_usd.map(|s| s.0.nanos()),
            Measure::LlmUsd,
        );
        for o in &old.hosts {
            let n = self.hosts.iter().find(|n| n.host == o.host);
            let empty = HostBudget::empty(o.host.clone());
            let n = n.unwrap_or(&empty);
            let h = &o.host;
            limit(
                &mut out,
                format!("{h}:bytes_up"),
                o.bytes_up.map(|b| b.0),
                n.bytes_up.map(|b| b.0),
                Measure::BytesUp,
            );
            limit(
                &mut out,
                format!("{h}:bytes_down"),
                o.bytes_down.map(|b| b.0),
                n.bytes_down.map(|b| b.0),
                Measure::BytesDown,
            );
            limit(
                &mut out,
                format!("{h}:requests_per_minute"),
                o.requests_per_minute.map(|r| u64::from(r.0)),
                n.requests_per_minute.map(|r| u64::from(r.0)),
                Measure::RequestsPerMinute,
            );
            limit(
                &mut out,
                format!("{h}:llm_usd"),
                o.llm_usd.map(|s| s.0.nanos()),
                n.llm_usd.map(|s| s.0.nanos()),
                Measure::LlmUsd,
            );
            if o.meters_llm() && !n.meters_llm() {
                out.push(format!(
                    "egress.budget LLM spend on {h} is no longer metered"
                ));
            }
        }
        if self.soft() > old.soft() {
            out.push(format!(
                "egress.budget soft warning moves from {} % to {} % of each limit",
                f64::from(old.soft().0) / 10.0,
                f64::from(self.soft().0) / 10.0
            ));
        }
        for (key, price) in &self.prices {
            // Compare what the old table charged for the same name; a
            // prefix key is probed with a character no key holds, so an old
            // exact key equal to the prefix cannot answer for the models the
            // prefix covers (second review).
            let probe = match key.as_str().strip_suffix('*') {
                Some(prefix) => format!("{prefix}\u{1}"),
                None => key.as_str().to_string(),
            };
            match old.prices.get(key).or_else(|| old.price_for(&probe)) {
                None => out.push(format!(
                    "egress.budget prices gains \"{key}\": requests for it were refused (no price) and now pass"
                )),
                Some(was) if price.cheaper_than(was) => out.push(format!(
                    "egress.budget price of \"{key}\" is lowered, so the same use counts as less spend"
                )),
                Some(_) => {}
            }
        }
        for (key, was) in &old.prices {
            if self.prices.contains_key(key) {
                continue; // compared above
            }
            // A key dropped: what does the new table charge for the names
            // only it covered? Falling back to a cheaper, less specific
            // price is a widening; to none (refused, unknown spend) is not.
            // A prefix key is probed with a suffix no key can hold, so no
            // longer key in the new table answers for it.
            let probe = match key.as_str().strip_suffix('*') {
                Some(prefix) => format!("{prefix}\u{1}"),
                None => key.as_str().to_owned(),
            };
            if let Some(now) = self.price_for(&probe) {
                if now.cheaper_than(was) {
                    out.push(format!(
                        "egress.budget prices drops \"{key}\", so its models fall back to a cheaper price"
                    ));
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Usage and counters

/// Tokens one response (or several) reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Tokens {
    pub fn add(&mut self, other: &Tokens) {
        self.input = self.input.saturating_add(other.input);
        self.output = self.output.saturating_add(other.output);
        self.cache_read = self.cache_read.saturating_add(other.cache_read);
        self.cache_write = self.cache_write.saturating_add(other.cache_write);
    }
    pub fn is_zero(&self) -> bool {
        *self == Tokens::default()
    }
}

/// What one host (or all of them) has used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Requests forwarded.
    pub requests: u64,
    /// LLM spend in nano-dollars.
    pub spend_nanos: u64,
    pub tokens: Tokens,
    /// Why this host's spend is not known (a model with no price, a usage
    /// the sidecar could not read); its spend budgets are exhausted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        self.bytes_up = self.bytes_up.saturating_add(other.bytes_up);
        self.bytes_down = self.bytes_down.saturating_add(other.bytes_down);
        self.requests = self.requests.saturating_add(other.requests);
        self.spend_nanos = self.spend_nanos.saturating_add(other.spend_nanos);
        self.tokens.add(&other.tokens);
        if self.unknown.is_none() {
            self.unknown.clone_from(&other.unknown);
        }
    }
}

/// The counters file (`budget.json` in the sidecar's log directory): what
/// each host has used since the bottle came up. Written by the sidecar,
/// read by `bottle ps` and `bottle budget`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetState {
    pub format: u32,
    /// By normalised host name.
    #[serde(default)]
    pub hosts: BTreeMap<String, Counters>,
}

impl Default for BudgetState {
    fn default() -> Self {
        BudgetState {
            format: BUDGET_STATE_FORMAT,
            hosts: BTreeMap::new(),
        }
    }
}

/// Why a counters file was not read.
#[derive(Debug, thiserror::Error)]
pub enum BudgetStateError {
    #[error("the budget counters are not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the budget counters are format {0}; this bottle reads format {BUDGET_STATE_FORMAT}")]
    Format(u32),
}

impl BudgetState {
    pub fn parse(bytes: &[u8]) -> Result<Self, BudgetStateError> {
        let s: BudgetState = serde_json::from_slice(bytes)?;
        if s.format != BUDGET_STATE_FORMAT {
            return Err(BudgetStateError::Format(s.format));
        }
        Ok(s)
    }

    /// Every host together.
    pub fn total(&self) -> Counters {
        let mut t = Counters::default();
        for c in self.hosts.values() {
            t.add(c);
        }
        t.unknown = None;
        t
    }

    /// The hosts `pattern` matches, together.
    pub fn matching(&self, pattern: &HostPattern) -> Counters {
        let mut t = Counters::default();
        for (h, c) in &self.hosts {
            if pattern.matches(h) {
                t.add(c);
            }
        }
        t
    }

    /// Adds `used` to `host`'s counters (`host` is normalised when it can
    /// be).
    pub fn record(&mut self, host: &str, used: &Counters) {
        let key = normalize_host(host).unwrap_or_else(|_| host.to_string());
        self.hosts.entry(key).or_default().add(used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(json: serde_json::Value) -> BudgetPolicy {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn sizes_parse_and_refuse() {
        for (s, n) in [
            ("50MiB", 50 << 20),
            ("2GiB", 2 << 30),
            ("2 gib", 2 << 30),
            ("500MB", 500_000_000),
            ("1.5KiB", 1536),
            ("4096", 4096),
            ("10k", 10_000),
        ] {
            assert_eq!(ByteSize::parse(s).unwrap().bytes(), n, "{s}");
        }
        for s in ["", "MiB", "-5MiB", "5 parsecs", "1.2.3GB", "0", "0MiB"] {
            assert!(ByteSize::parse(s).is_err(), "{s}");
        }
        assert!(ByteSize::parse("99999999999TiB").is_err());
        let b: ByteSize = serde_json::from_str("\"1KiB\"").unwrap();
        assert_eq!(serde_json::to_string(&b).unwrap(), "1024");
        assert!(serde_json::from_str::<ByteSize>("-1").is_err());
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(20 << 30), "20 GiB");
    }

    #[test]
    fn money_is_exact_and_refuses_nonsense() {
        assert_eq!(Usd::from_dollars(0.30).unwrap().micros(), 300_000);
        assert_eq!(Usd::from_dollars(25.0).unwrap().nanos(), 25_000_000_000);
        for v in [-1.0, f64::NAN, f64::INFINITY, 2e9] {
            assert!(Usd::from_dollars(v).is_err(), "{v}");
        }
        assert_eq!(Spend::from_dollars(0.0), Err(BudgetFieldError::ZeroUsd));
        assert!(Usd::from_dollars(0.0).is_ok(), "a free model is fine");
        // JSON round trip keeps the value.
        let u: Usd = serde_json::from_str("0.3").unwrap();
        let back: Usd = serde_json::from_str(&serde_json::to_string(&u).unwrap()).unwrap();
        assert_eq!(u, back);
        assert!(serde_json::from_str::<Spend>("-2").is_err());
        assert_eq!(human_usd_nanos(21_300_000_000), "$21.30");
        assert_eq!(human_usd_nanos(3_100_000), "$0.0031");
        assert_eq!(human_usd_nanos(10_500_000), "$0.0105");
        assert_eq!(human_usd_nanos(21_000_000), "$0.021");
        assert_eq!(human_usd_nanos(0), "$0.00");
    }

    #[test]
    fn soft_and_rate_and_model_keys() {
        assert_eq!(Soft::from_fraction(0.8).unwrap().permille(), 800);
        for v in [0.0, -0.1, 1.1, f64::NAN] {
            assert!(Soft::from_fraction(v).is_err(), "{v}");
        }
        assert!(Rate::new(0).is_err());
        assert!(ModelKey::parse("claude-*").is_ok());
        for bad in ["", "a*b", "*x*", "has space", "ü"] {
            assert!(ModelKey::parse(bad).is_err(), "{bad}");
        }
        assert!(ModelKey::parse("claude-*").unwrap().matches("claude-x"));
        assert!(!ModelKey::parse("claude").unwrap().matches("claude-x"));
    }

    #[test]
    fn unknown_keys_are_refused_and_empty_is_skipped() {
        let e =
            serde_json::from_value::<BudgetPolicy>(serde_json::json!({"byte_up": 5})).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = serde_json::from_value::<BudgetPolicy>(
            serde_json::json!({"host": [{"host": "a.com", "rpm": 5}]}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        assert!(BudgetPolicy::default().is_empty());
    }

    #[test]
    fn prices_convert_usage_to_dollars() {
        let b = budget(serde_json::json!({"prices": {
            "claude-sonnet-4-5": {"input": 3.0, "output": 15.0, "cache_read": 0.30, "cache_write": 3.75},
            "claude-*": {"input": 100.0, "output": 100.0},
            "claude-sonnet-*": {"input": 1.0, "output": 1.0},
        }}));
        let p = b.price_for("claude-sonnet-4-5").unwrap();
        let t = Tokens {
            input: 1_000_000,
            output: 100_000,
            cache_read: 1_000_000,
            cache_write: 0,
        };
        // $3 + $1.50 + $0.30
        assert_eq!(p.cost_nanos(&t), 4_800_000_000);
        // Longest prefix wins.
        assert_eq!(
            b.price_for("claude-sonnet-9").unwrap().input.micros(),
            1_000_000
        );
        assert_eq!(
            b.price_for("claude-opus").unwrap().input.micros(),
            100_000_000
        );
        assert!(b.price_for("gpt-4o").is_none());
        // Missing cache prices err high.
        let q = b.price_for("claude-opus").unwrap();
        let w = Tokens {
            cache_write: 1_000_000,
            ..Tokens::default()
        };
        assert_eq!(q.cost_nanos(&w), 200_000_000_000);
    }

    fn state(host: &str, c: Counters) -> BudgetState {
        let mut s = BudgetState::default();
        s.record(host, &c);
        s
    }

    #[test]
    fn levels_follow_the_counters() {
        let b = budget(serde_json::json!({
            "bytes_up": "1KiB",
            "llm_usd": 10.0,
            "host": [{"host": "api.github.com", "bytes_down": 100, "requests_per_minute": 2}],
        }));
        let none = |_| 0;
        assert!(b
            .check("api.github.com", &BudgetState::default(), &none)
            .iter()
            .all(|s| s.level == Level::Ok));
        let s = state(
            "api.github.com",
            Counters {
                bytes_up: 900,
                bytes_down: 100,
                ..Counters::default()
            },
        );
        let got = b.check("api.github.com", &s, &none);
        let by = |name: &str| got.iter().find(|s| s.budget == name).unwrap().level;
        assert_eq!(by("bytes_up"), Level::Soft);
        assert_eq!(by("api.github.com:bytes_down"), Level::Exhausted);
        assert!(
            got.iter().all(|s| s.measure != Measure::LlmUsd),
            "github is not an LLM host"
        );
        // The per-minute budget reads the caller's window.
        let got = b.check("api.github.com", &BudgetState::default(), &|_| 2);
        assert_eq!(
            got.iter()
                .find(|s| s.measure == Measure::RequestsPerMinute)
                .unwrap()
                .level,
            Level::Exhausted
        );
        // Another host counts against the bottle-wide bytes only.
        let got = b.check("example.com", &s, &none);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].budget, "bytes_up");
        assert_eq!(got[0].summary(), "bytes_up=900 B/1 KiB soft");
    }

    #[test]
    fn spend_is_metered_on_llm_hosts_and_unknown_spend_exhausts() {
        let b = budget(serde_json::json!({
            "llm_usd": 25.0,
            "host": [{"host": "llm.internal", "llm": true}],
        }));
        assert!(b.is_llm_host("api.anthropic.com"));
        assert!(b.is_llm_host("llm.internal"));
        assert!(!b.is_llm_host("api.github.com"));
        let none = |_| 0;
        let mut s = state(
            "api.anthropic.com",
            Counters {
                spend_nanos: 21_300_000_000,
                ..Counters::default()
            },
        );
        let got = b.check("api.anthropic.com", &s, &none);
        assert_eq!(got[0].summary(), "llm_usd=$21.30/$25.00 soft");
        s.hosts.get_mut("api.anthropic.com").unwrap().unknown =
            Some("model `x` has no price".into());
        let got = b.check("api.anthropic.com", &s, &none);
        assert_eq!(got[0].level, Level::Exhausted);
        assert!(got[0].unknown.as_deref().unwrap().contains("no price"));
        // Without a bottle-wide spend limit the default hosts are not
        // metered.
        let b = budget(serde_json::json!({"bytes_up": 10}));
        assert!(!b.is_llm_host("api.anthropic.com"));
    }

    #[test]
    fn loosening_is_listed_and_tightening_is_not() {
        let old = budget(serde_json::json!({
            "bytes_up": "1MiB", "llm_usd": 25.0,
            "host": [{"host": "api.github.com", "requests_per_minute": 60, "llm": true}],
            "prices": {"m": {"input": 3.0, "output": 15.0}},
        }));
        assert!(old.loosened_from(&old).is_empty());
        let tighter = budget(serde_json::json!({
            "bytes_up": "512KiB", "bytes_down": 10, "llm_usd": 5.0, "soft": 0.5,
            "host": [{"host": "api.github.com", "requests_per_minute": 30, "llm": true}],
            "prices": {"m": {"input": 4.0, "output": 15.0}},
        }));
        assert_eq!(tighter.loosened_from(&old), Vec::<String>::new());
        for (looser, says) in [
            (serde_json::json!({"llm_usd": 40.0}), "llm_usd grows"),
            (serde_json::json!({"bytes_up": null}), "bytes_up limit"),
            (serde_json::json!({"soft": 0.95}), "soft warning"),
            (serde_json::json!({"host": []}), "requests_per_minute limit"),
            (
                serde_json::json!({"host": [{"host": "api.github.com", "requests_per_minute": 60}]}),
                "no longer metered",
            ),
            (
                serde_json::json!({"prices": {"m": {"input": 3.0, "output": 1.0}}}),
                "lowered",
            ),
            (
                serde_json::json!({"prices": {"m": {"input": 3.0, "output": 15.0}, "n*": {"input": 1.0, "output": 1.0}}}),
                "gains \"n*\"",
            ),
        ] {
            let mut v = serde_json::to_value(&old).unwrap();
            for (k, val) in looser.as_object().unwrap() {
                if val.is_null() {
                    v.as_object_mut().unwrap().remove(k);
                } else {
                    v[k] = val.clone();
                }
            }
            let new: BudgetPolicy = serde_json::from_value(v).unwrap();
            let w = new.loosened_from(&old);
            assert!(w.iter().any(|l| l.contains(says)), "{says}: {w:?}");
        }
    }

    /// Dropping a more specific price is a widening when the model falls
    /// back to a cheaper one; dropping the only price is not (it fails
    /// closed). Issue 16, review M3.
    #[test]
    fn dropping_a_specific_price_is_a_widening() {
        let old = budget(serde_json::json!({"llm_usd": 5.0, "prices": {
            "m*": {"input": 3.0, "output": 15.0},
            "m-big*": {"input": 30.0, "output": 150.0},
            "m": {"input": 5.0, "output": 20.0},
        }}));
        let with = |prices: serde_json::Value| {
            budget(serde_json::json!({"llm_usd": 5.0, "prices": prices}))
        };
        let w = with(serde_json::json!({
            "m*": {"input": 3.0, "output": 15.0},
            "m": {"input": 5.0, "output": 20.0},
        }))
        .loosened_from(&old);
        assert_eq!(
            w,
            ["egress.budget prices drops \"m-big*\", so its models fall back to a cheaper price"]
        );
        let w = with(serde_json::json!({
            "m*": {"input": 3.0, "output": 15.0},
            "m-big*": {"input": 30.0, "output": 150.0},
        }))
        .loosened_from(&old);
        assert!(w.iter().any(|l| l.contains("drops \"m\"")), "{w:?}");
        // A prefix key added over an old exact key of the same text is
        // judged for the models the prefix covers (second review).
        let exact = with(serde_json::json!({"claude-o": {"input": 0.01, "output": 0.01}}));
        let both = with(serde_json::json!({
            "claude-o": {"input": 0.01, "output": 0.01},
            "claude-o*": {"input": 0.01, "output": 0.01},
        }));
        let w = both.loosened_from(&exact);
        assert!(w.iter().any(|l| l.contains("gains \"claude-o*\"")), "{w:?}");
        // No price left for `m-x`: refused, so tighter.
        let w = with(serde_json::json!({
            "m-big*": {"input": 30.0, "output": 150.0},
            "m": {"input": 5.0, "output": 20.0},
        }))
        .loosened_from(&old);
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn counters_file_round_trips_and_refuses_other_formats() {
        let mut s = BudgetState::default();
        s.record(
            "API.anthropic.com.",
            &Counters {
                bytes_up: 5,
                spend_nanos: 7,
                tokens: Tokens {
                    input: 3,
                    ..Tokens::default()
                },
                ..Counters::default()
            },
        );
        assert!(s.hosts.contains_key("api.anthropic.com"));
        let bytes = serde_json::to_vec(&s).unwrap();
        assert_eq!(BudgetState::parse(&bytes).unwrap(), s);
        assert!(BudgetState::parse(b"{\"format\":2}").is_err());
        assert!(BudgetState::parse(b"{not json").is_err());
    }
}
