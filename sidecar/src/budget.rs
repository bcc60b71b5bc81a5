//! Enforcing `[egress.budget]` (issue 16): the counters, the check before a
//! request is forwarded, the usage read from LLM responses as they stream
//! through, and the counters file that survives a restart.
//!
//! - [`Meter::admit`] runs after the policy allowed a request and before it
//!   goes upstream: an exhausted budget that the request counts against
//!   answers 429 with the LLM-readable refusal body (which budget, limit,
//!   used, how to ask); past a soft limit the request goes through, the
//!   crossing is logged once, and the response carries a `bottle-budget`
//!   header. Budgets are checked between requests: the one request that
//!   crosses a limit completes. Past the soft limit of an LLM spend budget
//!   only one request counted against it is in flight at a time (others get
//!   429 `budget-busy` with `Retry-After: 1`), so requests sent together
//!   cannot all pass before any spend lands.
//! - [`Ticket::finish`] wraps the forwarded response body: it counts the
//!   bytes and, on a metered LLM host, reads the token usage out of the
//!   JSON or SSE body as it passes ([`UsageReader`]; never buffering more
//!   than [`MAX_JSON`] or one SSE event beyond [`MAX_EVENT`]). When the body
//!   ends or is dropped, the request's bytes, tokens and spend are added.
//!   A ticket dropped before it saw a response (the agent went away, a
//!   later refusal) still counts the request and its bytes up.
//! - Unknown spend fails closed: a model with no price, a stream that named
//!   a model but carried no usage (an OpenAI stream without
//!   `stream_options.include_usage`; the sidecar never rewrites a body to
//!   add it), a response still encoded although the sidecar asked for
//!   `accept-encoding: identity`, a body too large to read, a stream cut
//!   before its final event, a 2xx to a request that can spend ([`spends`])
//!   with no usage or neither JSON nor SSE. A WebSocket to a metered host
//!   is refused up front ([`websocket_refusal`]). The host's
//!   tokens are still counted, and its spend budgets are exhausted until
//!   the budget policy changes (a raise or a reload), which clears the mark.
//! - Counted: request and response BODY bytes of admitted HTTP requests
//!   (not headers, not requests a budget or the policy refused, not WebSocket frames after the
//!   upgrade, not the git gate's traffic). Requests per minute is a fixed
//!   one-minute window per host entry, kept in memory only.
//! - [`Meter::persist`] writes `budget.json` (next to the audit log)
//!   atomically at most once a second when changed, and at shutdown. A
//!   damaged or unreadable file at start is moved aside to
//!   `budget.json.damaged`, logged (`budget-state-damaged`), and counting
//!   starts from zero: the file lives in the sidecar's own directory, which
//!   the agent cannot reach, so damage is a host accident, and refusing to
//!   start would leave the user with no fix inside `bottle`.

use crate::forward::ProxyBody;
use crate::io::Counter;
use crate::log::Logger;
use bottle_policy::budget::{Level, Measure, Status};
use bottle_policy::{BudgetPolicy, BudgetState, Counters, Tokens};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderMap, HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The response header that tells the agent a budget is past its soft limit.
pub const BUDGET_HEADER: &str = "bottle-budget";
/// Largest JSON response body read for usage.
pub const MAX_JSON: usize = 8 << 20;
/// Largest single SSE event read for usage.
pub const MAX_EVENT: usize = 1 << 20;
/// The requests-per-minute window.
const WINDOW: Duration = Duration::from_secs(60);

/// What one response reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub model: Option<String>,
    pub tokens: Option<Tokens>,
    /// Part of the body could not be read (too large, not JSON).
    pub unreadable: bool,
    /// An SSE stream ended without its final event (Anthropic
    /// `message_stop`, OpenAI `[DONE]`, `response.completed`): the usage
    /// seen so far (Anthropic's `message_start` says 1 output token) is not
    /// the whole.
    pub cut_short: bool,
}

impl Seen {
    fn merge(&mut self, other: Seen) {
        if other.model.is_some() {
            self.model = other.model;
        }
        if let Some(t) = other.tokens {
            // Anthropic's message_delta repeats cumulative counts: keep the
            // largest of each.
            let mine = self.tokens.get_or_insert_with(Tokens::default);
            mine.input = mine.input.max(t.input);
            mine.output = mine.output.max(t.output);
            mine.cache_read = mine.cache_read.max(t.cache_read);
            mine.cache_write = mine.cache_write.max(t.cache_write);
        }
        self.unreadable |= other.unreadable;
        self.cut_short |= other.cut_short;
    }
}

/// The model and token usage in one JSON object from a provider: an
/// Anthropic message (or its `message_start` / `message_delta` events), an
/// OpenAI chat completion (or chunk), an OpenAI response (or its
/// `response.completed` event).
pub fn inspect(v: &Value) -> Seen {
    let obj = match v["type"].as_str() {
        Some("message_start") => &v["message"],
        Some(t) if t.starts_with("response.") && v["response"].is_object() => &v["response"],
        _ => v,
    };
    let model = obj["model"].as_str().map(str::to_string);
    let tokens = obj
        .get("usage")
        .filter(|u| u.is_object())
        .and_then(tokens_of);
    Seen {
        model,
        tokens,
        unreadable: false,
        cut_short: false,
    }
}

/// Is this SSE event the last one of a provider's stream? Anthropic ends
/// with `message_stop`, OpenAI Chat with `data: [DONE]`, OpenAI Responses
/// with `response.completed` (or `.incomplete` / `.failed`, which carry the
/// usage too).
fn terminal(data: &[u8], v: Option<&Value>) -> bool {
    data == b"[DONE]"
        || matches!(
            v.and_then(|v| v["type"].as_str()),
            Some("message_stop" | "response.completed" | "response.incomplete" | "response.failed")
        )
}

fn tokens_of(u: &Value) -> Option<Tokens> {
    let n = |k: &str| u[k].as_u64();
    if let Some(prompt) = n("prompt_tokens") {
        // OpenAI Chat Completions: prompt_tokens includes the cached ones.
        let cached = u["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0);
        return Some(Tokens {
            input: prompt.saturating_sub(cached),
            output: n("completion_tokens").unwrap_or(0),
            cache_read: cached,
            cache_write: 0,
        });
    }
    if let Some(cached) = u["input_tokens_details"]["cached_tokens"].as_u64() {
        // OpenAI Responses: input_tokens includes the cached ones.
        return Some(Tokens {
            input: n("input_tokens").unwrap_or(0).saturating_sub(cached),
            output: n("output_tokens").unwrap_or(0),
            cache_read: cached,
            cache_write: 0,
        });
    }
    let keys = [
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    ];
    if keys.iter().all(|k| n(k).is_none()) {
        return None;
    }
    // Anthropic Messages: input_tokens excludes the cache.
    Some(Tokens {
        input: n("input_tokens").unwrap_or(0),
        output: n("output_tokens").unwrap_or(0),
        cache_read: n("cache_read_input_tokens").unwrap_or(0),
        cache_write: n("cache_creation_input_tokens").unwrap_or(0),
    })
}

/// How a body is read for usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Sse,
}

impl Format {
    /// From the response's `content-type`; `None` for anything else.
    pub fn of(headers: &HeaderMap) -> Option<Format> {
        let ct = headers
            .get(CONTENT_TYPE)?
            .to_str()
            .ok()?
            .to_ascii_lowercase();
        if ct.contains("text/event-stream") {
            Some(Format::Sse)
        } else if ct.contains("json") {
            Some(Format::Json)
        } else {
            None
        }
    }
}

/// Reads usage out of a body fed in arbitrary pieces.
#[derive(Debug)]
pub struct UsageReader {
    format: Format,
    /// JSON: the body so far; SSE: the current line.
    buf: Vec<u8>,
    /// SSE: the current event's `data:` lines.
    data: Vec<u8>,
    /// SSE: the current event is over [`MAX_EVENT`] and is skipped.
    skipping: bool,
    /// SSE: the stream's final event went by.
    ended: bool,
    seen: Seen,
}

impl UsageReader {
    pub fn new(format: Format) -> Self {
        UsageReader {
            format,
            buf: Vec::new(),
            data: Vec::new(),
            skipping: false,
            ended: false,
            seen: Seen::default(),
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match self.format {
            Format::Json => {
                if self.buf.len() + chunk.len() > MAX_JSON {
                    self.seen.unreadable = true;
                    self.buf = Vec::new();
                } else if !self.seen.unreadable {
                    self.buf.extend_from_slice(chunk);
                }
            }
            Format::Sse => {
                let mut rest = chunk;
                while let Some(i) = rest.iter().position(|b| *b == b'\n') {
                    self.push_line_part(&rest[..i]);
                    let line = std::mem::take(&mut self.buf);
                    self.line(&line);
                    rest = &rest[i + 1..];
                }
                self.push_line_part(rest);
            }
        }
    }

    fn push_line_part(&mut self, part: &[u8]) {
        if self.buf.len() + part.len() > MAX_EVENT {
            self.skipping = true;
            self.buf.clear();
        } else {
            self.buf.extend_from_slice(part);
        }
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if self.skipping {
            return;
        }
        if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if self.data.len() + value.len() > MAX_EVENT {
                self.skipping = true;
                self.data.clear();
                return;
            }
            if !self.data.is_empty() {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
        }
    }

    fn dispatch(&mut self) {
        if self.skipping {
            self.seen.unreadable = true;
        } else if !self.data.is_empty() {
            let v = serde_json::from_slice::<Value>(&self.data).ok();
            self.ended |= terminal(&self.data, v.as_ref());
            if let Some(v) = &v {
                self.seen.merge(inspect(v));
            }
        }
        self.skipping = false;
        self.data.clear();
    }

    /// What the whole body reported.
    pub fn finish(mut self) -> Seen {
        match self.format {
            Format::Json => {
                if !self.seen.unreadable {
                    match serde_json::from_slice::<Value>(&self.buf) {
                        Ok(v) => self.seen = inspect(&v),
                        Err(_) if self.buf.is_empty() => {}
                        Err(_) => self.seen.unreadable = true,
                    }
                }
            }
            Format::Sse => {
                let line = std::mem::take(&mut self.buf);
                if !line.is_empty() {
                    self.line(&line);
                }
                self.dispatch();
                self.seen.cut_short = !self.ended;
            }
        }
        self.seen
    }
}

/// Turns what a response reported into counters, pricing it with `budget`.
pub fn price(budget: &BudgetPolicy, seen: &Seen) -> Counters {
    let mut c = Counters::default();
    match (&seen.tokens, &seen.model) {
        (Some(t), Some(model)) => {
            c.tokens = *t;
            match budget.price_for(model) {
                Some(p) => c.spend_nanos = p.cost_nanos(t),
                None => {
                    c.unknown = Some(format!(
                        "model `{model}` has no price; add [egress.budget.prices.\"{model}\"] (US dollars per million input and output tokens) to bottle.toml"
                    ))
                }
            }
        }
        (Some(t), None) => {
            c.tokens = *t;
            c.unknown = Some(
                "a response reported token usage but no model name, so it cannot be priced".into(),
            );
        }
        (None, Some(model)) => {
            c.unknown = Some(format!(
                "a response from model `{model}` carried no token usage (an OpenAI stream reports it only with stream_options.include_usage = true)"
            ));
        }
        (None, None) => {}
    }
    if seen.cut_short && c.unknown.is_none() {
        c.unknown = Some(
            "a streamed response ended before its final event (message_stop, [DONE] or response.completed), so its whole token usage is not known".into(),
        );
    }
    if seen.unreadable && c.unknown.is_none() {
        c.unknown = Some(format!(
            "a response was too large to read its token usage (over {} MiB of JSON, or an event over {} MiB)",
            MAX_JSON >> 20,
            MAX_EVENT >> 20
        ));
    }
    c
}

#[derive(Debug, Default)]
struct Inner {
    state: BudgetState,
    dirty: bool,
    /// Requests in the current window, by host entry pattern.
    windows: BTreeMap<String, (Instant, u64)>,
    /// Budgets whose soft or exhausted crossing was logged.
    logged: BTreeSet<(String, Level)>,
    /// The budget policy last seen: when it changes (a raise, a reload),
    /// unknown-spend marks are cleared.
    policy: Option<BudgetPolicy>,
    /// Requests admitted and not yet counted, by LLM spend budget name.
    in_flight: BTreeMap<String, u64>,
}

/// Every bottle's counters in one sidecar, shared by all listeners.
#[derive(Debug)]
pub struct Meter {
    inner: Mutex<Inner>,
    path: Option<PathBuf>,
}

/// Why a request was refused by a budget.
#[derive(Debug, Clone)]
pub struct Exhausted {
    pub status: Box<Status>,
    /// Seconds until the request may be tried again (requests per minute,
    /// and one in flight near the limit).
    pub retry_after: Option<u64>,
    /// The spend budget is past its soft limit and another request counted
    /// against it is still in flight: one at a time near the limit.
    pub busy: bool,
}

/// Spending requests in flight at once against one LLM spend budget below
/// its soft limit (past it: one).
pub const MAX_SPENDING_IN_FLIGHT: usize = 8;

/// A request admitted by the budgets: what to do to it and its response.
/// Dropped before [`Ticket::finish`] (the agent went away before the
/// answer's head, a refusal after admission, an unreachable upstream), it
/// still counts the request and the request bytes read.
#[derive(Debug)]
pub struct Ticket {
    flight: Option<Flight>,
    llm: bool,
    /// `METHOD path` (path cut to 100 characters) of a request that spends
    /// on a metered host; `None` for one that cannot (see [`spends`]).
    spending: Option<String>,
    budget: BudgetPolicy,
    /// The `bottle-budget` header value, when a budget is past its soft limit.
    soft: Option<String>,
    up: Counter,
    /// The request was handed to the upstream ([`Ticket::sent`]).
    sent: bool,
}

impl Drop for Ticket {
    /// A spending request that went upstream and whose answer was never
    /// read (the agent went away first) may still be billed: its spend is
    /// unknown, which blocks the host until the user raises or reloads
    /// (second review: dropping the answer must not be a way to spend
    /// uncounted).
    fn drop(&mut self) {
        if let (true, Some(what), Some(flight)) = (self.sent, &self.spending, self.flight.as_mut())
        {
            if flight.used.unknown.is_none() {
                flight.used.unknown = Some(format!(
                    "{what} was sent and its answer was never read (the agent went away first), so its token usage is unknown"
                ));
            }
        }
    }
}

/// One admitted request until it is counted: counts it when dropped, and
/// releases its place among the requests in flight.
#[derive(Debug)]
struct Flight {
    meter: Arc<Meter>,
    host: String,
    up: Counter,
    /// The LLM spend budgets it is in flight against.
    holds: Vec<String>,
    /// What the response reported; bytes up and the request are added.
    used: Counters,
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut used = std::mem::take(&mut self.used);
        used.bytes_up = self.up.get();
        used.requests = 1;
        self.meter.land(&self.host, &used, &self.holds);
    }
}

/// Can `method path` spend on an LLM host? Reads (GET, HEAD, OPTIONS),
/// deletes and the token counters (`/v1/messages/count_tokens`,
/// `/v1/responses/input_tokens`) cannot; every other request is expected
/// to report its usage.
pub fn spends(method: &str, path: &str) -> bool {
    !matches!(method, "GET" | "HEAD" | "OPTIONS" | "DELETE")
        && !path.ends_with("/count_tokens")
        && !path.ends_with("/input_tokens")
}

impl Meter {
    /// A meter persisted at `path` (none: in memory only), loaded from it
    /// when it exists.
    pub fn open(path: Option<PathBuf>, logger: &Logger) -> Arc<Meter> {
        let state = match &path {
            Some(p) => load(p, logger),
            None => BudgetState::default(),
        };
        Arc::new(Meter {
            inner: Mutex::new(Inner {
                state,
                ..Inner::default()
            }),
            path,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counters now.
    pub fn snapshot(&self) -> BudgetState {
        self.lock().state.clone()
    }

    /// Checks a request (`method`, `path`) to `host` (normalised) against
    /// `budget`.
    pub fn admit(
        self: &Arc<Self>,
        budget: &BudgetPolicy,
        host: &str,
        (method, path): (&str, &str),
        logger: &Logger,
        client: SocketAddr,
    ) -> Result<Ticket, Exhausted> {
        if budget.is_empty() {
            return Ok(Ticket::none());
        }
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.policy.as_ref() != Some(budget) {
            if inner.policy.is_some() {
                let mut cleared = false;
                for c in inner.state.hosts.values_mut() {
                    cleared |= c.unknown.take().is_some();
                }
                inner.dirty |= cleared;
            }
            inner.policy = Some(budget.clone());
            inner.logged.clear();
        }
        let rates = budget.rate_entries(host);
        let count = |inner: &Inner, i: usize| -> u64 {
            let key = budget.hosts[i].host.to_string();
            match inner.windows.get(&key) {
                Some((start, n)) if now.duration_since(*start) < WINDOW => *n,
                _ => 0,
            }
        };
        let statuses = budget.check(host, &inner.state, &|i| count(&inner, i));
        if let Some(s) = statuses.iter().find(|s| s.level == Level::Exhausted) {
            let retry_after = (s.measure == Measure::RequestsPerMinute).then(|| {
                let key = s.host.as_ref().map(|h| h.to_string()).unwrap_or_default();
                inner
                    .windows
                    .get(&key)
                    .map(|(start, _)| WINDOW.saturating_sub(now.duration_since(*start)))
                    .unwrap_or(WINDOW)
                    .as_secs()
                    .max(1)
            });
            // A per-minute limit comes back by itself: log only the others'
            // crossings (once each).
            if s.measure != Measure::RequestsPerMinute
                && inner.logged.insert((s.budget.clone(), Level::Exhausted))
            {
                logger.audit_event(client, "budget-exhausted", status_json(s, host));
            }
            return Err(Exhausted {
                status: Box::new(s.clone()),
                retry_after,
                busy: false,
            });
        }
        // Spend lands only when a response ends, so requests admitted
        // together would all pass a check none of their spend has reached
        // yet (review M1): at most MAX_SPENDING_IN_FLIGHT spending requests
        // run at once against an LLM spend budget, and past its soft limit
        // one. The overshoot past the hard limit is at most what the
        // requests in flight when the soft limit was crossed spend.
        let llm = budget.is_llm_host(host);
        // Only a request that can spend takes a place: a free GET cannot
        // pin the slot (second review).
        let can_spend = llm && spends(method, path);
        let holds: Vec<&Status> = statuses
            .iter()
            .filter(|s| can_spend && s.measure == Measure::LlmUsd)
            .collect();
        if let Some(s) = holds.iter().find(|s| {
            let cap = if s.level == Level::Soft {
                1
            } else {
                MAX_SPENDING_IN_FLIGHT
            };
            inner
                .in_flight
                .get(&s.budget)
                .is_some_and(|n| *n >= cap as u64)
        }) {
            return Err(Exhausted {
                status: Box::new((*s).clone()),
                retry_after: Some(1),
                busy: true,
            });
        }
        let holds: Vec<String> = holds.iter().map(|s| s.budget.clone()).collect();
        for b in &holds {
            *inner.in_flight.entry(b.clone()).or_default() += 1;
        }
        for (i, _) in rates {
            let key = budget.hosts[i].host.to_string();
            let slot = inner.windows.entry(key).or_insert((now, 0));
            if now.duration_since(slot.0) >= WINDOW {
                *slot = (now, 0);
            }
            slot.1 += 1;
        }
        let soft: Vec<&Status> = statuses.iter().filter(|s| s.level == Level::Soft).collect();
        for s in &soft {
            if inner.logged.insert((s.budget.clone(), Level::Soft)) {
                logger.audit_event(client, "budget-soft", status_json(s, host));
            }
        }
        let header = (!soft.is_empty()).then(|| {
            soft.iter()
                .map(|s| s.summary())
                .collect::<Vec<_>>()
                .join(", ")
        });
        let up = Counter::default();
        Ok(Ticket {
            flight: Some(Flight {
                meter: self.clone(),
                host: host.to_string(),
                up: up.clone(),
                holds,
                used: Counters::default(),
            }),
            llm,
            spending: (llm && spends(method, path)).then(|| {
                let path: String = path.chars().take(100).collect();
                format!("{method} {path}")
            }),
            budget: budget.clone(),
            soft: header,
            up,
            sent: false,
        })
    }

    #[cfg(test)]
    fn record(&self, host: &str, used: &Counters) {
        self.land(host, used, &[]);
    }

    /// Counts a request that ended, and releases its place in flight.
    fn land(&self, host: &str, used: &Counters, holds: &[String]) {
        let mut inner = self.lock();
        inner.state.record(host, used);
        inner.dirty = true;
        for b in holds {
            if let Some(n) = inner.in_flight.get_mut(b) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    inner.in_flight.remove(b);
                }
            }
        }
    }

    /// Writes the counters when they changed since the last write.
    pub fn persist(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let json = {
            let mut inner = self.lock();
            if !inner.dirty {
                return Ok(());
            }
            inner.dirty = false;
            serde_json::to_vec_pretty(&inner.state).unwrap_or_default()
        };
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, &json)?;
        std::fs::rename(&tmp, path)
    }
}

/// Reads the counters file; a damaged one is moved aside and logged.
fn load(path: &Path, logger: &Logger) -> BudgetState {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BudgetState::default(),
        Err(e) => {
            logger.event(
                "budget-state-damaged",
                json!({"path": path.display().to_string(), "error": e.to_string(), "action": "counting from zero"}),
            );
            return BudgetState::default();
        }
    };
    match BudgetState::parse(&bytes) {
        Ok(s) => {
            logger.event(
                "budget-state-loaded",
                json!({"path": path.display().to_string(), "hosts": s.hosts.len()}),
            );
            s
        }
        Err(e) => {
            let aside = path.with_extension("json.damaged");
            let _ = std::fs::rename(path, &aside);
            logger.event(
                "budget-state-damaged",
                json!({"path": path.display().to_string(), "error": e.to_string(), "moved_to": aside.display().to_string(), "action": "counting from zero"}),
            );
            BudgetState::default()
        }
    }
}

fn status_json(s: &Status, host: &str) -> Value {
    json!({
        "budget": s.budget,
        "host": host,
        "limit": s.measure.show(s.limit),
        "used": s.measure.show(s.used),
        "level": s.level,
        "unknown": s.unknown,
    })
}

/// Writes the counters every `every` while they change, and once more when
/// `closing` completes.
pub async fn persist_loop(
    meter: Arc<Meter>,
    logger: Logger,
    every: Duration,
    closing: impl std::future::Future<Output = ()>,
) {
    let mut warned = false;
    let mut write = |meter: &Meter| {
        if let Err(e) = meter.persist() {
            if !warned {
                logger.event("budget-state-write-failed", json!({"error": e.to_string()}));
                warned = true;
            }
        }
    };
    tokio::pin!(closing);
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => write(&meter),
            () = &mut closing => break,
        }
    }
    write(&meter);
}

impl Exhausted {
    /// The refusal's `why` line.
    pub fn reason(&self) -> String {
        let s = &self.status;
        let scope = match &s.host {
            Some(h) => format!("for {h}"),
            None => "for the whole bottle".into(),
        };
        if self.busy && s.level != Level::Soft {
            return format!(
                "{MAX_SPENDING_IN_FLIGHT} requests that can spend are already in flight against the egress budget `{}` {scope} ({} used of {}); its spend is counted when each answer ends, so no more run at once; retry when one has ended",
                s.budget,
                s.measure.show(s.used),
                s.measure.show(s.limit)
            );
        }
        if self.busy {
            return format!(
                "the egress budget `{}` {scope} is near its limit ({} used of {}) and a request is already in flight near the limit; retry when it has ended, one request at a time",
                s.budget,
                s.measure.show(s.used),
                s.measure.show(s.limit)
            );
        }
        match (&s.unknown, s.measure) {
            (Some(why), _) => format!(
                "the egress budget `{}` {scope} cannot be enforced because the spend is not known ({why}); requests counted against it are refused",
                s.budget
            ),
            (None, Measure::RequestsPerMinute) => format!(
                "the egress budget `{}` {scope} allows {} requests per minute and this minute has used them",
                s.budget, s.limit
            ),
            (None, m) => format!(
                "the egress budget `{}` {scope} is used up: {} used of {}; further requests counted against it are refused until the user raises it",
                s.budget,
                m.show(s.used),
                m.show(s.limit)
            ),
        }
    }

    /// The refusal's `to get access` line, before the supervise hint.
    pub fn hint(&self, bottle: &str) -> String {
        let s = &self.status;
        if self.busy {
            return format!(
                "retry in a second (Retry-After: 1), one request at a time; or ask the user to run `bottle budget {bottle} --raise {}=<more>`",
                s.budget
            );
        }
        match (&s.unknown, s.measure) {
            (None, Measure::RequestsPerMinute) => format!(
                "wait {} seconds (Retry-After) and send fewer requests; or ask the user to run `bottle budget {bottle} --raise {}=<more>`",
                self.retry_after.unwrap_or(60),
                s.budget
            ),
            (Some(_), _) => format!(
                "ask the user to fix the cause above in bottle.toml and run `bottle reload {bottle}`, or to run `bottle budget {bottle} --raise {}=<amount>`",
                s.budget
            ),
            _ => format!(
                "ask the user to run `bottle budget {bottle} --raise {}=<more>`",
                s.budget
            ),
        }
    }

    /// The 429's headers: `Retry-After` for a per-minute budget and for one
    /// request in flight near the limit.
    pub fn decorate(&self, resp: &mut Response<ProxyBody>) {
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(hyper::header::RETRY_AFTER, v);
            }
        }
    }
}

impl Ticket {
    /// A ticket for a bottle without budgets: counts nothing.
    pub fn none() -> Ticket {
        Ticket {
            flight: None,
            llm: false,
            spending: None,
            budget: BudgetPolicy::default(),
            soft: None,
            up: Counter::default(),
            sent: false,
        }
    }

    /// The counter the request body's bytes are to be added to.
    pub fn up(&self) -> Counter {
        self.up.clone()
    }

    /// The request is being handed to the upstream: from now on, dropping
    /// the ticket without an answer leaves its spend unknown.
    pub fn sent(&mut self) {
        self.sent = true;
    }

    /// The upstream could not be reached or refused the request before
    /// answering: nothing was billed.
    pub fn unsent(&mut self) {
        self.sent = false;
    }

    /// Asks a metered LLM host for an unencoded answer, so its usage can be
    /// read (as `secrets::apply` does for responses to redact).
    pub fn prepare(&self, headers: &mut HeaderMap) {
        if self.llm {
            headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        }
    }

    /// Wraps the forwarded response: the soft header, and a body that
    /// counts bytes (and usage on a metered LLM host) and records them when
    /// it ends or is dropped.
    pub fn finish(mut self, resp: Response<ProxyBody>) -> Response<ProxyBody> {
        let Some(flight) = self.flight.take() else {
            return resp;
        };
        let (mut parts, body) = resp.into_parts();
        if let Some(h) = &self.soft {
            if let Ok(v) = HeaderValue::from_str(h) {
                parts.headers.insert(BUDGET_HEADER, v);
            }
        }
        let ok = parts.status.is_success();
        let encoded = parts
            .headers
            .get_all(CONTENT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|c| c.trim().to_ascii_lowercase())
            .find(|c| !c.is_empty() && c != "identity");
        let mut pre = Counters::default();
        let reader = if self.llm && ok {
            match (encoded, Format::of(&parts.headers)) {
                (Some(enc), _) => {
                    pre.unknown = Some(format!("the response was {enc}-encoded although the sidecar asked for an unencoded one, so its token usage could not be read"));
                    None
                }
                (None, Some(f)) => Some(UsageReader::new(f)),
                (None, None) => {
                    if let Some(what) = &self.spending {
                        pre.unknown = Some(format!("{what} was answered {} with neither JSON nor an event stream, so its token usage could not be read", parts.status.as_u16()));
                    }
                    None
                }
            }
        } else {
            None
        };
        // A 2xx to a request that spends must report its usage.
        let expect = self
            .spending
            .take()
            .filter(|_| ok)
            .map(|what| (what, parts.status.as_u16()));
        let body = Metering {
            inner: body,
            reader,
            down: 0,
            done: Some(Done {
                flight,
                budget: std::mem::take(&mut self.budget),
                pre,
                expect,
            }),
        };
        Response::from_parts(parts, body.boxed())
    }
}

/// What a [`Metering`] body records when it ends.
#[derive(Debug)]
struct Done {
    flight: Flight,
    budget: BudgetPolicy,
    pre: Counters,
    /// `METHOD path` and status of a 2xx that must report usage.
    expect: Option<(String, u16)>,
}

/// A response body that counts and reads usage, recording on end or drop.
struct Metering {
    inner: ProxyBody,
    reader: Option<UsageReader>,
    down: u64,
    done: Option<Done>,
}

impl Metering {
    fn record(&mut self) {
        let Some(mut done) = self.done.take() else {
            return;
        };
        let seen = self.reader.take().map(UsageReader::finish);
        let mut used = match &seen {
            Some(seen) => price(&done.budget, seen),
            None => Counters::default(),
        };
        if used.unknown.is_none() {
            used.unknown = done.pre.unknown;
        }
        let reported = seen.as_ref().is_some_and(|s| s.tokens.is_some());
        if let (None, false, Some((what, status))) = (&used.unknown, reported, &done.expect) {
            used.unknown = Some(format!(
                "{what} was answered {status} without token usage (batches and other asynchronous jobs are not metered), so its spend is not known"
            ));
        }
        used.bytes_down = self.down;
        // The flight adds the request and its bytes up when dropped.
        done.flight.used = used;
    }
}

impl Drop for Metering {
    fn drop(&mut self) {
        self.record();
    }
}

impl Body for Metering {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.down += data.len() as u64;
                    if let Some(r) = &mut this.reader {
                        r.feed(data);
                    }
                }
            }
            Poll::Ready(None) => this.record(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A WebSocket upgrade to a metered LLM host is refused before it is sent
/// (review M2): the sidecar reads usage only from JSON and SSE answers, not
/// from frames, so the spend of a socket could never be counted. `Some`
/// with the refusal and its hint.
pub fn websocket_refusal(
    budget: &BudgetPolicy,
    host: &str,
) -> Option<(bottle_policy::Decision, String)> {
    if !budget.is_llm_host(host) {
        return None;
    }
    Some((
        crate::egress::refusal(
            "budget-websocket",
            format!("{host} is metered by the egress budget (llm_usd in [egress.budget]), and the spend of a WebSocket cannot be read, so WebSocket upgrades to it are refused"),
        ),
        "use the provider's HTTP API (a JSON or streamed answer), whose token usage the sidecar counts".into(),
    ))
}

/// Answers a request a budget refused: 429 with the refusal body.
pub fn refuse(
    ex: crate::exchange::Exchange,
    exhausted: &Exhausted,
    shared: &crate::shared::Shared,
) -> Response<ProxyBody> {
    let bottle = shared.policy.current().bottle.clone();
    let hint = match &shared.supervisor {
        Some(s) if shared.policy.current().supervise.enabled => format!(
            "{}, or ask with the request_approval tool of the supervise MCP server at {} (say which budget and how much more)",
            exhausted.hint(&bottle),
            s.url()
        ),
        _ => exhausted.hint(&bottle),
    };
    let refusal = crate::egress::Refusal {
        what: ex.what.clone(),
        decision: crate::egress::refusal(
            if exhausted.busy {
                "budget-busy"
            } else {
                "budget-exhausted"
            },
            exhausted.reason(),
        ),
        hint,
    };
    let mut resp = ex.refuse(StatusCode::TOO_MANY_REQUESTS, &refusal);
    exhausted.decorate(&mut resp);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANTHROPIC: &str = r#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":1200,"cache_creation_input_tokens":100,"cache_read_input_tokens":3000,"output_tokens":450}}"#;

    const ANTHROPIC_SSE: &str = "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":10,\"output_tokens\":1}}}\r\n\r\nevent: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\r\n\r\nevent: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\r\n\r\nevent: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n";

    const OPENAI: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":200,"total_tokens":1200,"prompt_tokens_details":{"cached_tokens":400}}}"#;

    const OPENAI_SSE: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\ndata: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}\n\ndata: [DONE]\n\n";

    const RESPONSES_SSE: &str = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"model\":\"gpt-4.1\",\"usage\":null}}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"model\":\"gpt-4.1\",\"usage\":{\"input_tokens\":50,\"input_tokens_details\":{\"cached_tokens\":20},\"output_tokens\":7,\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":57}}}\n\n";

    fn read(format: Format, body: &str) -> Seen {
        let mut r = UsageReader::new(format);
        r.feed(body.as_bytes());
        r.finish()
    }

    #[test]
    fn anthropic_message_usage() {
        let s = read(Format::Json, ANTHROPIC);
        assert_eq!(s.model.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(
            s.tokens,
            Some(Tokens {
                input: 1200,
                output: 450,
                cache_read: 3000,
                cache_write: 100
            })
        );
    }

    #[test]
    fn openai_chat_and_responses_usage() {
        let s = read(Format::Json, OPENAI);
        assert_eq!(
            s.tokens,
            Some(Tokens {
                input: 600,
                output: 200,
                cache_read: 400,
                cache_write: 0
            })
        );
        let s = read(Format::Sse, OPENAI_SSE);
        assert_eq!(s.model.as_deref(), Some("gpt-4o"));
        assert_eq!(s.tokens.unwrap().output, 3);
        let s = read(Format::Sse, RESPONSES_SSE);
        assert_eq!(s.model.as_deref(), Some("gpt-4.1"));
        assert_eq!(
            s.tokens,
            Some(Tokens {
                input: 30,
                output: 7,
                cache_read: 20,
                cache_write: 0
            })
        );
    }

    /// Every split of every stream into two pieces reads the same usage.
    #[test]
    fn sse_split_at_every_byte_boundary() {
        for body in [ANTHROPIC_SSE, OPENAI_SSE, RESPONSES_SSE] {
            let whole = read(Format::Sse, body);
            assert!(whole.tokens.is_some(), "{body}");
            let bytes = body.as_bytes();
            for cut in 0..=bytes.len() {
                let mut r = UsageReader::new(Format::Sse);
                r.feed(&bytes[..cut]);
                r.feed(&bytes[cut..]);
                assert_eq!(r.finish(), whole, "cut at {cut}");
            }
            // And one byte at a time.
            let mut r = UsageReader::new(Format::Sse);
            for b in bytes {
                r.feed(std::slice::from_ref(b));
            }
            assert_eq!(r.finish(), whole);
        }
        let s = read(Format::Sse, ANTHROPIC_SSE);
        assert_eq!(
            s.tokens,
            Some(Tokens {
                input: 25,
                output: 15,
                cache_read: 10,
                cache_write: 0
            })
        );
    }

    #[test]
    fn oversized_events_and_bodies_are_unreadable_not_buffered() {
        let mut r = UsageReader::new(Format::Sse);
        let big = vec![b'x'; MAX_EVENT + 10];
        r.feed(b"data: ");
        r.feed(&big);
        assert!(r.buf.len() <= MAX_EVENT && r.data.len() <= MAX_EVENT);
        r.feed(b"\n\n");
        r.feed(OPENAI_SSE.as_bytes());
        let s = r.finish();
        assert!(s.unreadable);
        assert_eq!(s.tokens.unwrap().input, 9, "later events still count");
        let mut r = UsageReader::new(Format::Json);
        r.feed(&vec![b' '; MAX_JSON]);
        r.feed(b"{}");
        assert!(r.buf.is_empty());
        assert!(r.finish().unreadable);
    }

    fn budget(v: Value) -> BudgetPolicy {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pricing_fails_closed() {
        let b =
            budget(json!({"llm_usd": 1.0, "prices": {"claude-*": {"input": 3.0, "output": 15.0}}}));
        let c = price(&b, &read(Format::Json, ANTHROPIC));
        // 1200*3 + 450*15 + 3000*3 (cache read = input) + 100*6 (write = 2x) micro-$
        assert_eq!(c.spend_nanos, (3600 + 6750 + 9000 + 600) * 1000);
        assert!(c.unknown.is_none());
        let c = price(&b, &read(Format::Json, OPENAI));
        assert_eq!(c.tokens.input, 600, "tokens are counted");
        assert!(c
            .unknown
            .unwrap()
            .contains("[egress.budget.prices.\"gpt-4o-2024-08-06\"]"));
        let no_usage = read(
            Format::Sse,
            "data: {\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[]}\n\ndata: [DONE]\n\n",
        );
        assert!(price(&b, &no_usage)
            .unknown
            .unwrap()
            .contains("include_usage"));
        assert_eq!(
            price(&b, &read(Format::Json, "{\"data\":[]}")),
            Counters::default()
        );
    }

    fn logger() -> Logger {
        Logger::stdout()
    }

    const POST: (&str, &str) = ("POST", "/v1/messages");

    fn client() -> SocketAddr {
        "10.0.0.2:5000".parse().unwrap()
    }

    #[test]
    fn admission_soft_then_exhausted_then_lifted_by_a_raise() {
        let meter = Meter::open(None, &logger());
        let b = budget(
            json!({"llm_usd": 1.0, "soft": 0.5, "prices": {"m": {"input": 1.0, "output": 1.0}}}),
        );
        let host = "api.anthropic.com";
        let t = meter.admit(&b, host, POST, &logger(), client()).unwrap();
        assert!(t.llm && t.soft.is_none());
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        t.prepare(&mut h);
        assert_eq!(h[ACCEPT_ENCODING], "identity");
        drop(t);
        meter.record(
            host,
            &Counters {
                spend_nanos: 600_000_000,
                ..Counters::default()
            },
        );
        let t = meter.admit(&b, host, POST, &logger(), client()).unwrap();
        assert_eq!(t.soft.as_deref(), Some("llm_usd=$0.60/$1.00 soft"));
        drop(t);
        meter.record(
            host,
            &Counters {
                spend_nanos: 500_000_000,
                ..Counters::default()
            },
        );
        let e = meter
            .admit(&b, host, POST, &logger(), client())
            .unwrap_err();
        assert_eq!(e.status.budget, "llm_usd");
        assert!(e.reason().contains("$1.10 used of $1.00"), "{}", e.reason());
        assert!(e
            .hint("demo")
            .contains("bottle budget demo --raise llm_usd="));
        // Other hosts are not LLM hosts: they pass.
        assert!(meter
            .admit(&b, "example.com", POST, &logger(), client())
            .is_ok());
        let raised = budget(
            json!({"llm_usd": 2.0, "soft": 0.5, "prices": {"m": {"input": 1.0, "output": 1.0}}}),
        );
        assert!(meter
            .admit(&raised, host, POST, &logger(), client())
            .is_ok());
    }

    #[test]
    fn unknown_spend_blocks_until_the_policy_changes() {
        let meter = Meter::open(None, &logger());
        let b = budget(json!({"llm_usd": 10.0}));
        let host = "api.anthropic.com";
        assert!(meter.admit(&b, host, POST, &logger(), client()).is_ok());
        meter.record(host, &price(&b, &read(Format::Json, ANTHROPIC)));
        let e = meter
            .admit(&b, host, POST, &logger(), client())
            .unwrap_err();
        assert!(e.reason().contains("claude-sonnet-4-5"), "{}", e.reason());
        let priced = budget(
            json!({"llm_usd": 10.0, "prices": {"claude-sonnet-4-5": {"input": 3.0, "output": 15.0}}}),
        );
        assert!(meter
            .admit(&priced, host, POST, &logger(), client())
            .is_ok());
        assert_eq!(meter.snapshot().hosts[host].tokens.input, 1200);
    }

    #[test]
    fn requests_per_minute_refuse_with_retry_after() {
        let meter = Meter::open(None, &logger());
        let b = budget(json!({"host": [{"host": "api.github.com", "requests_per_minute": 2}]}));
        for _ in 0..2 {
            meter
                .admit(&b, "api.github.com", POST, &logger(), client())
                .unwrap();
        }
        let e = meter
            .admit(&b, "api.github.com", POST, &logger(), client())
            .unwrap_err();
        assert_eq!(e.status.budget, "api.github.com:requests_per_minute");
        let secs = e.retry_after.unwrap();
        assert!((1..=60).contains(&secs), "{secs}");
        let mut resp = Response::new(crate::forward::full(""));
        e.decorate(&mut resp);
        assert_eq!(
            resp.headers()[hyper::header::RETRY_AFTER],
            secs.to_string().as_str()
        );
        assert!(meter
            .admit(&b, "other.example", POST, &logger(), client())
            .is_ok());
    }

    #[test]
    fn counters_survive_a_restart_and_damage_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("budget.json");
        let meter = Meter::open(Some(path.clone()), &logger());
        meter.record(
            "api.anthropic.com",
            &Counters {
                bytes_up: 10,
                spend_nanos: 42,
                ..Counters::default()
            },
        );
        meter.persist().unwrap();
        assert!(!path.with_extension("json.tmp").exists());
        let again = Meter::open(Some(path.clone()), &logger());
        assert_eq!(again.snapshot(), meter.snapshot());
        assert_eq!(again.snapshot().hosts["api.anthropic.com"].spend_nanos, 42);
        std::fs::write(&path, b"{broken").unwrap();
        let fresh = Meter::open(Some(path.clone()), &logger());
        assert!(fresh.snapshot().hosts.is_empty());
        assert!(path.with_extension("json.damaged").exists());
    }

    #[tokio::test]
    async fn the_body_counts_bytes_and_usage_when_it_ends() {
        let meter = Meter::open(None, &logger());
        let b = budget(
            json!({"llm_usd": 10.0, "soft": 0.0001, "prices": {"claude-*": {"input": 3.0, "output": 15.0}}}),
        );
        let host = "api.anthropic.com";
        meter.record(
            host,
            &Counters {
                spend_nanos: 10_000_000,
                ..Counters::default()
            },
        );
        let t = meter.admit(&b, host, POST, &logger(), client()).unwrap();
        t.up().add(7);
        let mut resp = Response::new(crate::forward::full(ANTHROPIC_SSE));
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        let resp = t.finish(resp);
        assert!(resp.headers()[BUDGET_HEADER]
            .to_str()
            .unwrap()
            .contains("soft"));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), ANTHROPIC_SSE.len());
        let c = &meter.snapshot().hosts[host];
        assert_eq!(c.bytes_up, 7);
        assert_eq!(c.bytes_down, ANTHROPIC_SSE.len() as u64);
        assert_eq!(c.tokens.output, 15);
        assert_eq!(c.requests, 1);
        // 25*3 + 15*15 + 10*3 micro-$ on top of the 0.01 $ before.
        assert_eq!(c.spend_nanos, 10_000_000 + (75 + 225 + 30) * 1000);
        // An encoded answer on an LLM host is unknown spend.
        let t = meter.admit(&b, host, POST, &logger(), client()).unwrap();
        let mut resp = Response::new(crate::forward::full("xx"));
        resp.headers_mut()
            .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        drop(t.finish(resp));
        assert!(meter.admit(&b, host, POST, &logger(), client()).is_err());
    }

    /// A stream cut before its final event is unknown spend, not the input
    /// and the 1 output token `message_start` announced (review M2).
    #[test]
    fn a_stream_cut_short_is_unknown_spend() {
        let b = budget(
            json!({"llm_usd": 1.0, "prices": {"claude-*": {"input": 3.0, "output": 15.0}, "gpt-*": {"input": 1.0, "output": 1.0}}}),
        );
        for whole in [ANTHROPIC_SSE, OPENAI_SSE, RESPONSES_SSE] {
            let seen = read(Format::Sse, whole);
            assert!(!seen.cut_short, "{whole}");
            assert!(price(&b, &seen).unknown.is_none(), "{whole}");
        }
        for (whole, last) in [
            (ANTHROPIC_SSE, "event: message_stop"),
            (OPENAI_SSE, "data: [DONE]"),
            (RESPONSES_SSE, "event: response.completed"),
        ] {
            let cut = &whole[..whole.find(last).unwrap()];
            // Cut before `response.completed`, a Responses stream has no
            // usage at all: unknown for that reason first.
            let c = price(&b, &read(Format::Sse, cut));
            assert!(c.unknown.is_some(), "{cut}: {c:?}");
            if whole != RESPONSES_SSE {
                assert!(
                    c.unknown
                        .as_deref()
                        .unwrap_or("")
                        .contains("ended before its final event"),
                    "{cut}: {c:?}"
                );
            }
        }
    }

    /// Past the soft limit one request at a time; below it, in parallel;
    /// the place is released when the ticket is dropped (review M1).
    #[test]
    fn near_the_limit_one_request_is_in_flight_at_a_time() {
        let meter = Meter::open(None, &logger());
        let b = budget(json!({"llm_usd": 1.0, "soft": 0.5}));
        let host = "api.anthropic.com";
        let admit = || meter.admit(&b, host, POST, &logger(), client());
        let (a, c) = (admit().unwrap(), admit().unwrap());
        drop((a, c));
        meter.record(
            host,
            &Counters {
                spend_nanos: 600_000_000,
                ..Counters::default()
            },
        );
        let first = admit().unwrap();
        let e = admit().unwrap_err();
        assert!(e.busy);
        assert_eq!(e.retry_after, Some(1));
        assert!(
            e.reason()
                .contains("a request is already in flight near the limit; retry"),
            "{}",
            e.reason()
        );
        let mut resp = Response::new(crate::forward::full(""));
        e.decorate(&mut resp);
        assert_eq!(resp.headers()[hyper::header::RETRY_AFTER], "1");
        // Hosts that are not metered do not wait.
        assert!(meter
            .admit(&b, "example.com", POST, &logger(), client())
            .is_ok());
        drop(first);
        let next = admit().unwrap();
        assert_eq!(meter.snapshot().hosts[host].requests, 3);
        drop(next);
    }

    /// At most MAX_SPENDING_IN_FLIGHT spending requests run at once against
    /// an LLM budget, far from its limit too; a read neither waits nor takes
    /// a place (second review).
    #[test]
    fn spending_requests_in_flight_are_capped_and_reads_take_no_place() {
        let meter = Meter::open(None, &logger());
        let b = budget(json!({"llm_usd": 100.0}));
        let host = "api.anthropic.com";
        let admit = |m: (&str, &str)| meter.admit(&b, host, m, &logger(), client());
        let held: Vec<Ticket> = (0..MAX_SPENDING_IN_FLIGHT)
            .map(|_| admit(POST).unwrap())
            .collect();
        let e = admit(POST).unwrap_err();
        assert!(e.busy);
        assert!(e.reason().contains("already in flight"), "{}", e.reason());
        let read = admit(("GET", "/v1/models")).unwrap();
        drop(held);
        let next = admit(POST).unwrap();
        drop((read, next));
    }

    /// A spending request handed upstream whose answer was never read may
    /// be billed: its spend is unknown and the host waits for the user. One
    /// refused before it was sent is not.
    #[test]
    fn a_sent_request_dropped_unanswered_is_unknown_spend() {
        let b = budget(
            json!({"llm_usd": 10.0, "prices": {"claude-*": {"input": 3.0, "output": 15.0}}}),
        );
        let host = "api.anthropic.com";
        let meter = Meter::open(None, &logger());
        let t = meter.admit(&b, host, POST, &logger(), client()).unwrap();
        drop(t);
        assert!(meter.admit(&b, host, POST, &logger(), client()).is_ok());
        let mut t = meter.admit(&b, host, POST, &logger(), client()).unwrap();
        t.sent();
        drop(t);
        let e = meter
            .admit(&b, host, POST, &logger(), client())
            .unwrap_err();
        assert!(e.reason().contains("never read"), "{}", e.reason());
        // An unreachable upstream billed nothing.
        let meter = Meter::open(None, &logger());
        let mut t = meter.admit(&b, host, POST, &logger(), client()).unwrap();
        t.sent();
        t.unsent();
        drop(t);
        assert!(meter.admit(&b, host, POST, &logger(), client()).is_ok());
    }

    /// A request whose answer never came (the agent went away, a refusal
    /// after admission) still counts the request and the bytes sent.
    #[test]
    fn a_dropped_ticket_counts_the_request_and_bytes_up() {
        let meter = Meter::open(None, &logger());
        let b = budget(json!({"bytes_up": "1MiB"}));
        let t = meter
            .admit(&b, "example.com", POST, &logger(), client())
            .unwrap();
        t.up().add(4096);
        drop(t);
        let c = &meter.snapshot().hosts["example.com"];
        assert_eq!((c.requests, c.bytes_up), (1, 4096));
    }

    /// On a metered host a 2xx that spends must say what it spent: no
    /// usage, or an answer that is neither JSON nor SSE, is unknown spend;
    /// reads and token counts are not (review M2).
    #[tokio::test]
    async fn a_spending_answer_without_usage_is_unknown_spend() {
        let b = budget(
            json!({"llm_usd": 10.0, "prices": {"claude-*": {"input": 3.0, "output": 15.0}}}),
        );
        let host = "api.anthropic.com";
        let answer = |ct: &'static str, body: &'static str| {
            let mut resp = Response::new(crate::forward::full(body));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            resp
        };
        for (method, path, ct, body, unknown) in [
            (
                "POST",
                "/v1/messages/batches",
                "application/json",
                r#"{"id":"msgbatch_1","type":"message_batch","processing_status":"in_progress"}"#,
                Some("without token usage"),
            ),
            (
                "POST",
                "/v1/batches",
                "application/json",
                r#"{"id":"batch_1","object":"batch"}"#,
                Some("without token usage"),
            ),
            (
                "POST",
                "/v1/messages",
                "text/plain",
                "hello",
                Some("neither JSON nor an event stream"),
            ),
            (
                "GET",
                "/v1/models",
                "application/json",
                r#"{"data":[]}"#,
                None,
            ),
            (
                "POST",
                "/v1/messages/count_tokens",
                "application/json",
                r#"{"input_tokens":12}"#,
                None,
            ),
            ("POST", "/v1/messages", "application/json", ANTHROPIC, None),
        ] {
            let meter = Meter::open(None, &logger());
            let t = meter
                .admit(&b, host, (method, path), &logger(), client())
                .unwrap();
            let resp = t.finish(answer(ct, body));
            resp.into_body().collect().await.unwrap();
            let c = meter.snapshot().hosts[host].clone();
            match unknown {
                Some(why) => assert!(
                    c.unknown.as_deref().unwrap_or("").contains(why),
                    "{method} {path}: {c:?}"
                ),
                None => assert!(c.unknown.is_none(), "{method} {path}: {c:?}"),
            }
        }
    }

    #[test]
    fn websockets_to_a_metered_host_are_refused() {
        let b = budget(json!({"llm_usd": 1.0, "host": [{"host": "llm.test", "llm": true}]}));
        let (d, _) = websocket_refusal(&b, "llm.test").unwrap();
        assert_eq!(d.rule, "budget-websocket");
        assert!(d.reason.contains("llm_usd"), "{}", d.reason);
        assert!(websocket_refusal(&b, "api.anthropic.com").is_some());
        assert!(websocket_refusal(&b, "example.com").is_none());
    }
}
