//! The sidecar's logs: one JSON object per line, in two streams.
//!
//! - Lifecycle events (`"service":"sidecar"`, `"event":…`) go to the events
//!   sink: stdout, read by `bottle logs` through the runtime.
//! - Decisions go to the audit sink: the `--audit` JSONL file in the bottle's
//!   state dir. `"service":"egress"` lines carry one request or tunnel each
//!   ([`EgressRecord`]); `"service":"dns"` lines one DNS query
//!   ([`DnsRecord`]).
//!
//! Lines a client can cause in unbounded numbers go through per-client-IP
//! token buckets, so an agent in a loop cannot flood the host's disk. There
//! is one bucket per client and [`Budget`]: DNS lines (UDP has no connection
//! cap) and refusals (including client errors) spend separate budgets, so a
//! DNS flood cannot starve the refusal lines and neither can starve the rest.
//! Lines about traffic that was let through (an `allow` decision, a
//! `credential-redacted` event) are never dropped: each one stands for an
//! upstream connection or round trip, which the connection caps bound, and
//! the audit file's rotation bounds the disk. Dropping them would let an
//! agent hide the requests that actually left the bottle.
//!
//! What a bucket drops is reported in one `"event":"suppressed"` audit line
//! when that client's bucket admits a line again (or at shutdown): the count,
//! the count per kind (`dns/deny`, `egress/deny`, `event/<name>`), and the
//! hosts (DNS names or destinations) that were dropped most, with counts.
//!
//! Nothing here ever receives a header value or a secret: the records have no
//! field that could carry one.

use bottle_policy::Verdict;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Longest host or path written to the log; the rest is cut, because both come
/// from the client.
const MAX_FIELD: usize = 512;

/// Where finished lines go. Implementations write `line` plus a newline as one
/// unit.
pub trait LineSink: Send + Sync + 'static {
    fn write_line(&self, line: &str);

    /// Bounds the sink's size where it has one (the audit file); called at
    /// start and on every policy reload with `limits.audit_max_bytes`.
    fn limit_size(&self, _max_bytes: u64) {}
}

/// The production sink: the process's stdout. Write errors are dropped: a
/// closed stdout must not stop the proxy.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdoutSink;

impl LineSink for StdoutSink {
    fn write_line(&self, line: &str) {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&buf);
        let _ = out.flush();
    }
}

/// An append-only file, one `write` per line so lines from concurrent
/// connections never interleave. Write errors are dropped like stdout's: a
/// full disk must not stop enforcement.
///
/// Bounded: once a line would take the file past its size limit
/// ([`LineSink::limit_size`], `limits.audit_max_bytes`), the file is renamed
/// to `<path>.1` (replacing the previous one) and a new file is started, so
/// an agent in a loop costs the host at most about twice the limit.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    state: Mutex<FileState>,
}

#[derive(Debug)]
struct FileState {
    file: File,
    /// Bytes in the current file.
    len: u64,
    /// Rotate past this many bytes.
    max: u64,
}

/// Why the audit file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditFileError {
    #[error("cannot open audit log {path} for appending: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn open_append(path: &Path) -> Result<File, AuditFileError> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|source| AuditFileError::Open {
            path: path.into(),
            source,
        })
}

impl FileSink {
    /// Opens (creating if needed, mode 0640) `path` for appending, with the
    /// default size limit until [`LineSink::limit_size`] says otherwise.
    pub fn append(path: &Path) -> Result<Self, AuditFileError> {
        let file = open_append(path)?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(FileSink {
            path: path.into(),
            state: Mutex::new(FileState {
                file,
                len,
                max: bottle_policy::Limits::default().audit_max_bytes,
            }),
        })
    }

    /// `<path>.1`, where the previous file goes on rotation.
    pub fn rotated_path(&self) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(".1");
        PathBuf::from(name)
    }

    fn rotate(&self, state: &mut FileState) {
        // If the rename or the reopen fails, keep appending to the open file:
        // losing the audit trail is worse than exceeding the bound.
        if std::fs::rename(&self.path, self.rotated_path()).is_err() {
            return;
        }
        if let Ok(file) = open_append(&self.path) {
            state.file = file;
            state.len = 0;
        }
    }
}

impl LineSink for FileSink {
    fn write_line(&self, line: &str) {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.len > 0 && state.len + buf.len() as u64 > state.max {
            self.rotate(&mut state);
        }
        if state.file.write_all(&buf).is_ok() {
            state.len += buf.len() as u64;
        }
    }

    fn limit_size(&self, max_bytes: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.max = max_bytes.max(1);
    }
}

/// Token bucket parameters for client-triggered lines, per client IP.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second (0 = never refill).
    pub per_second: f64,
    /// Bucket size: how many lines a quiet client may emit at once.
    pub burst: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: 50.0,
            burst: 100.0,
        }
    }
}

/// Most client buckets kept; beyond this, full buckets are forgotten (they
/// would be recreated full anyway).
const MAX_BUCKETS: usize = 4096;

/// Distinct hosts counted per bucket between two summaries; drops for further
/// hosts are counted as `other_hosts`.
const MAX_DROPPED_HOSTS: usize = 64;

/// Hosts named in a `suppressed` summary.
const TOP_HOSTS: usize = 5;

/// Which rate-limit budget a client-caused line spends. Lines about traffic
/// that was let through spend none (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Budget {
    /// DNS queries (`"service":"dns"`).
    Dns,
    /// Refused requests and tunnels, and client errors.
    Refused,
}

/// What one line is, for the `suppressed` summary should it be dropped.
#[derive(Debug, Clone, Copy)]
pub struct LineKind<'a> {
    /// `dns/deny`, `egress/deny`, `event/<name>`.
    pub kind: &'a str,
    /// The DNS name or destination host, when the line has one.
    pub host: Option<&'a str>,
}

/// What a bucket dropped since its last admitted line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped {
    pub count: u64,
    /// Count per [`LineKind::kind`].
    pub kinds: BTreeMap<String, u64>,
    /// Count per host, for at most `MAX_DROPPED_HOSTS` hosts (drops for
    /// further hosts, or of lines without one, are only in `count`).
    pub hosts: HashMap<String, u64>,
}

impl Dropped {
    fn add(&mut self, line: LineKind<'_>) {
        self.count += 1;
        *self.kinds.entry(truncate(line.kind, 64)).or_default() += 1;
        let Some(host) = line.host.map(|h| truncate(h, MAX_FIELD)) else {
            return;
        };
        if let Some(n) = self.hosts.get_mut(&host) {
            *n += 1;
        } else if self.hosts.len() < MAX_DROPPED_HOSTS {
            self.hosts.insert(host, 1);
        }
    }

    /// The `TOP_HOSTS` most dropped hosts, most first (ties by name).
    pub fn top_hosts(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self.hosts.iter().map(|(h, n)| (h.clone(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(TOP_HOSTS);
        v
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    dropped: Dropped,
}

/// What [`RateLimiter::admit`] says about one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Write it; first report what was dropped since the last line written
    /// from this bucket (when anything was).
    Yes { dropped: Option<Dropped> },
    /// Drop it; it has been counted.
    No,
}

/// Per-IP, per-[`Budget`] token buckets. The clock is a parameter so tests
/// need no sleeps.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: HashMap<(IpAddr, Budget), Bucket>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token from `ip`'s `budget` bucket at time `now`.
    pub fn admit(&mut self, ip: IpAddr, budget: Budget, line: LineKind<'_>, now: Instant) -> Admit {
        let key = (ip, budget);
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(&key) {
            self.forget_full(now);
        }
        let limit = self.limit;
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: limit.burst,
            last: now,
            dropped: Dropped::default(),
        });
        refill(bucket, limit, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            let dropped = std::mem::take(&mut bucket.dropped);
            Admit::Yes {
                dropped: (dropped.count > 0).then_some(dropped),
            }
        } else {
            bucket.dropped.add(line);
            Admit::No
        }
    }

    /// Returns and clears every pending drop summary (for shutdown).
    pub fn drain_suppressed(&mut self) -> Vec<(IpAddr, Budget, Dropped)> {
        let mut out: Vec<(IpAddr, Budget, Dropped)> = self
            .buckets
            .iter_mut()
            .filter(|(_, b)| b.dropped.count > 0)
            .map(|((ip, budget), b)| (*ip, *budget, std::mem::take(&mut b.dropped)))
            .collect();
        out.sort_by_key(|(ip, budget, _)| (*ip, *budget));
        out
    }

    fn forget_full(&mut self, now: Instant) {
        let limit = self.limit;
        self.buckets.retain(|_, b| {
            refill(b, limit, now);
            b.dropped.count > 0 || b.tokens < limit.burst
        });
    }
}

fn refill(bucket: &mut Bucket, limit: RateLimit, now: Instant) {
    let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
    bucket.tokens = (bucket.tokens + elapsed * limit.per_second).min(limit.burst);
    bucket.last = now;
}

/// One egress decision, as logged. Built by the proxy; the logger adds `ts`.
#[derive(Debug, Clone, Serialize)]
pub struct EgressRecord {
    /// `ip:port` of the client.
    pub client: String,
    pub method: String,
    /// The destination host (normalised when valid); absent when the request
    /// named none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Request path without the query; absent for CONNECT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub rule: String,
    pub decision: Verdict,
    pub status: u16,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    /// Why an allowed connection failed (never request content).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl EgressRecord {
    /// A record with the request's identity and no outcome yet.
    pub fn new(client: SocketAddr, method: &str) -> Self {
        EgressRecord {
            client: client.to_string(),
            method: truncate(method, 32),
            host: None,
            port: None,
            path: None,
            rule: String::new(),
            decision: Verdict::Deny,
            status: 0,
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 0,
            error: None,
        }
    }

    pub fn host(mut self, host: &str, port: Option<u16>) -> Self {
        self.host = Some(truncate(host, MAX_FIELD));
        self.port = port;
        self
    }

    pub fn path(mut self, path: &str) -> Self {
        self.path = Some(truncate(path, MAX_FIELD));
        self
    }
}

/// One DNS query and its answer, as logged.
#[derive(Debug, Clone, Serialize)]
pub struct DnsRecord {
    /// `ip:port` of the client.
    pub client: String,
    /// `udp` or `tcp`.
    pub transport: &'static str,
    /// The queried name (lower case, cut to a safe length); absent when the
    /// query could not be parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `A`, `AAAA`, or the numeric type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qtype: Option<String>,
    /// The allow entry that made the name answerable, or why not.
    pub rule: String,
    pub decision: Verdict,
    /// `NOERROR`, `REFUSED`, `FORMERR`, `NOTIMP`.
    pub rcode: &'static str,
    /// Number of answer records.
    pub answers: u16,
}

impl DnsRecord {
    pub fn new(client: SocketAddr, transport: &'static str) -> Self {
        DnsRecord {
            client: client.to_string(),
            transport,
            name: None,
            qtype: None,
            rule: String::new(),
            decision: Verdict::Deny,
            rcode: "REFUSED",
            answers: 0,
        }
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(truncate(name, MAX_FIELD));
        self
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[derive(Serialize)]
struct Stamped<'a, T: Serialize> {
    ts: String,
    service: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

/// The logger handed to every service. Cheap to clone.
#[derive(Clone)]
pub struct Logger {
    events: Arc<dyn LineSink>,
    audit: Arc<dyn LineSink>,
    limiter: Arc<Mutex<RateLimiter>>,
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logger").finish_non_exhaustive()
    }
}

impl Logger {
    /// Lifecycle events go to `events`, decisions to `audit` (they may be the
    /// same sink).
    pub fn new(events: Arc<dyn LineSink>, audit: Arc<dyn LineSink>, limit: RateLimit) -> Self {
        Logger {
            events,
            audit,
            limiter: Arc::new(Mutex::new(RateLimiter::new(limit))),
        }
    }

    /// Both streams on stdout, with the default rate limit.
    pub fn stdout() -> Self {
        Logger::new(
            Arc::new(StdoutSink),
            Arc::new(StdoutSink),
            RateLimit::default(),
        )
    }

    /// A lifecycle line: `{"ts","service":"sidecar","event":event, …fields}`.
    /// `fields` should be a JSON object; anything else is ignored.
    pub fn event(&self, event: &str, fields: Value) {
        write(&*self.events, "sidecar", &event_body(event, fields));
    }

    /// A lifecycle line a client caused (e.g. a malformed request), subject to
    /// `client`'s [`Budget::Refused`] rate limit.
    pub fn client_event(&self, client: SocketAddr, event: &str, mut fields: Value) {
        let host = fields
            .get("host")
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Value::Object(map) = &mut fields {
            map.insert("client".into(), client.to_string().into());
        }
        let body = event_body(event, fields);
        let kind = format!("event/{event}");
        let line = LineKind {
            kind: &kind,
            host: host.as_deref(),
        };
        self.limited(client.ip(), Budget::Refused, line, Instant::now(), || {
            write(&*self.events, "sidecar", &body)
        });
    }

    /// An audit line about a forwarded request that is not its decision (the
    /// `credential-redacted` event): `{"ts","service":"egress","event":…,
    /// "client",…fields}`. Never rate-limited, like the forwarded request's
    /// own line (see the module doc): use it for nothing a client can cause
    /// without a forwarded request.
    pub fn audit_event(&self, client: SocketAddr, event: &str, mut fields: Value) {
        if let Value::Object(map) = &mut fields {
            map.insert("client".into(), client.to_string().into());
        }
        write(&*self.audit, "egress", &event_body(event, fields));
    }

    /// Sets the audit sink's size bound (`limits.audit_max_bytes`).
    pub fn limit_audit(&self, max_bytes: u64) {
        self.audit.limit_size(max_bytes);
    }

    /// An egress decision. An `allow` is always written; a refusal is subject
    /// to the client's [`Budget::Refused`] rate limit.
    pub fn egress(&self, client: SocketAddr, record: &EgressRecord) {
        self.egress_at(client.ip(), Instant::now(), record);
    }

    /// [`Logger::egress`] with an explicit clock, for tests.
    pub fn egress_at(&self, ip: IpAddr, now: Instant, record: &EgressRecord) {
        if record.decision == Verdict::Allow {
            write(&*self.audit, "egress", record);
            return;
        }
        let line = LineKind {
            kind: "egress/deny",
            host: record.host.as_deref(),
        };
        self.limited(ip, Budget::Refused, line, now, || {
            write(&*self.audit, "egress", record)
        });
    }

    /// A DNS decision, subject to the client's [`Budget::Dns`] rate limit.
    pub fn dns(&self, client: SocketAddr, record: &DnsRecord) {
        self.dns_at(client.ip(), Instant::now(), record);
    }

    /// [`Logger::dns`] with an explicit clock, for tests.
    pub fn dns_at(&self, ip: IpAddr, now: Instant, record: &DnsRecord) {
        let kind = match record.decision {
            Verdict::Allow => "dns/allow",
            Verdict::Deny => "dns/deny",
        };
        let line = LineKind {
            kind,
            host: record.name.as_deref(),
        };
        self.limited(ip, Budget::Dns, line, now, || {
            write(&*self.audit, "dns", record)
        });
    }

    /// Writes the pending `suppressed` summaries (call at shutdown).
    pub fn flush_suppressed(&self) {
        let pending = self.lock_limiter().drain_suppressed();
        for (ip, budget, dropped) in pending {
            self.write_suppressed(ip, budget, &dropped);
        }
    }

    fn limited(
        &self,
        ip: IpAddr,
        budget: Budget,
        line: LineKind<'_>,
        now: Instant,
        write: impl FnOnce(),
    ) {
        let admit = self.lock_limiter().admit(ip, budget, line, now);
        if let Admit::Yes { dropped } = admit {
            if let Some(dropped) = dropped {
                self.write_suppressed(ip, budget, &dropped);
            }
            write();
        }
    }

    fn write_suppressed(&self, ip: IpAddr, budget: Budget, dropped: &Dropped) {
        #[derive(Serialize)]
        struct Host {
            host: String,
            count: u64,
        }
        #[derive(Serialize)]
        struct Suppressed<'a> {
            event: &'static str,
            client: String,
            budget: Budget,
            count: u64,
            kinds: &'a BTreeMap<String, u64>,
            top_hosts: Vec<Host>,
            /// Dropped lines not counted in `top_hosts`.
            other_hosts: u64,
        }
        let top = dropped.top_hosts();
        let shown: u64 = top.iter().map(|(_, n)| n).sum();
        write(
            &*self.audit,
            "egress",
            &Suppressed {
                event: "suppressed",
                client: ip.to_string(),
                budget,
                count: dropped.count,
                kinds: &dropped.kinds,
                top_hosts: top
                    .into_iter()
                    .map(|(host, count)| Host { host, count })
                    .collect(),
                other_hosts: dropped.count - shown,
            },
        );
    }

    fn lock_limiter(&self) -> MutexGuard<'_, RateLimiter> {
        // A panic while holding this lock leaves only counters behind.
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn write<T: Serialize>(sink: &dyn LineSink, service: &'static str, body: &T) {
    let stamped = Stamped {
        ts: rfc3339_millis(SystemTime::now()),
        service,
        body,
    };
    match serde_json::to_string(&stamped) {
        Ok(line) => sink.write_line(&line),
        Err(e) => sink.write_line(&format!(
            r#"{{"service":"sidecar","event":"log-error","error":{}}}"#,
            Value::from(e.to_string())
        )),
    }
}

/// A lifecycle line's body: `event` first, then the other fields.
#[derive(Serialize)]
struct EventBody<'a> {
    event: &'a str,
    #[serde(flatten)]
    fields: Map<String, Value>,
}

fn event_body(event: &str, fields: Value) -> EventBody<'_> {
    let mut map = match fields {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    for reserved in ["ts", "service", "event"] {
        map.remove(reserved);
    }
    EventBody { event, fields: map }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for `t` (UTC). Times before 1970 print as the
/// epoch; the sidecar never logs those.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let millis = since.subsec_millis();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard
/// Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // d is 1..=31 and m is 1..=12 by construction.
    (y, m as u32, d as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);
    impl LineSink for Lines {
        fn write_line(&self, line: &str) {
            self.0.lock().unwrap().push(line.to_string());
        }
    }
    impl Lines {
        fn json(&self) -> Vec<Value> {
            let lines = self.0.lock().unwrap();
            lines
                .iter()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |s: u64, ms: u64| {
            rfc3339_millis(UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_700_000_000, 123), "2023-11-14T22:13:20.123Z");
        assert_eq!(at(4_107_542_399, 999), "2100-02-28T23:59:59.999Z");
    }

    const DENY: LineKind<'static> = LineKind {
        kind: "egress/deny",
        host: Some("evil.example"),
    };

    #[test]
    fn bucket_allows_burst_then_refills() {
        let limit = RateLimit {
            per_second: 2.0,
            burst: 3.0,
        };
        let mut rl = RateLimiter::new(limit);
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        let other: IpAddr = "10.0.0.3".parse().unwrap();
        let t0 = Instant::now();
        let yes = Admit::Yes { dropped: None };
        for _ in 0..3 {
            assert_eq!(rl.admit(ip, Budget::Refused, DENY, t0), yes);
        }
        assert_eq!(rl.admit(ip, Budget::Refused, DENY, t0), Admit::No);
        let dns = LineKind {
            kind: "dns/deny",
            host: None,
        };
        assert_eq!(rl.admit(ip, Budget::Refused, dns, t0), Admit::No);
        // Another client, and the same client's DNS budget, have their own
        // buckets.
        assert_eq!(rl.admit(other, Budget::Refused, DENY, t0), yes);
        assert_eq!(rl.admit(ip, Budget::Dns, dns, t0), yes);
        // Half a second later one token is back, and the two drops are
        // reported by kind and host.
        let t1 = t0 + Duration::from_millis(500);
        let Admit::Yes {
            dropped: Some(dropped),
        } = rl.admit(ip, Budget::Refused, DENY, t1)
        else {
            panic!("a token is back and two lines were dropped");
        };
        assert_eq!(dropped.count, 2);
        assert_eq!(
            dropped.kinds,
            BTreeMap::from([("dns/deny".into(), 1), ("egress/deny".into(), 1)])
        );
        assert_eq!(dropped.top_hosts(), vec![("evil.example".into(), 1)]);
        assert_eq!(rl.admit(ip, Budget::Refused, DENY, t1), Admit::No);
        let pending = rl.drain_suppressed();
        assert_eq!(pending.len(), 1);
        assert_eq!(
            (pending[0].0, pending[0].1, pending[0].2.count),
            (ip, Budget::Refused, 1)
        );
        assert!(rl.drain_suppressed().is_empty());
    }

    #[test]
    fn dropped_hosts_are_bounded_and_ranked() {
        let mut d = Dropped::default();
        for i in 0..200 {
            let host = format!("n{i}.exfil.example");
            d.add(LineKind {
                kind: "dns/deny",
                host: Some(&host),
            });
        }
        for _ in 0..3 {
            d.add(LineKind {
                kind: "dns/deny",
                host: Some("n7.exfil.example"),
            });
        }
        assert_eq!(d.count, 203);
        assert_eq!(d.hosts.len(), MAX_DROPPED_HOSTS);
        let top = d.top_hosts();
        assert_eq!(top.len(), TOP_HOSTS);
        assert_eq!(top[0], ("n7.exfil.example".into(), 4));
    }

    #[test]
    fn logger_suppresses_refusals_and_summarises_but_never_drops_allowed_lines() {
        let lines = Arc::new(Lines::default());
        let log = Logger::new(
            lines.clone(),
            lines.clone(),
            RateLimit {
                per_second: 1.0,
                burst: 2.0,
            },
        );
        let client: SocketAddr = "10.0.0.2:5555".parse().unwrap();
        let mut rec = EgressRecord::new(client, "CONNECT").host("evil.example", Some(443));
        rec.rule = "default-deny".into();
        rec.status = 403;
        let t0 = Instant::now();
        for _ in 0..5 {
            log.egress_at(client.ip(), t0, &rec);
        }
        assert_eq!(lines.json().len(), 2);
        // Allowed lines spend no budget and are never dropped.
        let mut ok = EgressRecord::new(client, "GET").host("api.example", Some(443));
        ok.decision = Verdict::Allow;
        for _ in 0..50 {
            log.egress_at(client.ip(), t0, &ok);
        }
        assert_eq!(lines.json().len(), 52);
        log.egress_at(client.ip(), t0 + Duration::from_secs(1), &rec);
        let all = lines.json();
        assert_eq!(all.len(), 54, "{all:?}");
        assert_eq!(all[52]["event"], "suppressed");
        assert_eq!(all[52]["service"], "egress");
        assert_eq!(all[52]["client"], "10.0.0.2");
        assert_eq!(all[52]["budget"], "refused");
        assert_eq!(all[52]["count"], 3);
        assert_eq!(all[52]["kinds"], serde_json::json!({"egress/deny": 3}));
        assert_eq!(
            all[52]["top_hosts"],
            serde_json::json!([{"host": "evil.example", "count": 3}])
        );
        assert_eq!(all[52]["other_hosts"], 0);
        assert_eq!(all[53]["decision"], "deny");
        assert_eq!(all[53]["host"], "evil.example");
        assert_eq!(all[53]["port"], 443);
        assert!(all[53].get("path").is_none());
        assert!(all[53]["ts"].as_str().unwrap().ends_with('Z'));
        // Lifecycle events are never limited.
        for _ in 0..5 {
            log.event("listening", serde_json::json!({"addr": "0.0.0.0:3128"}));
        }
        assert_eq!(lines.json().len(), 59);
        assert_eq!(lines.json()[58]["service"], "sidecar");
        assert_eq!(lines.json()[58]["event"], "listening");
    }

    #[test]
    fn a_dns_flood_spends_only_the_dns_budget() {
        let lines = Arc::new(Lines::default());
        let log = Logger::new(
            lines.clone(),
            lines.clone(),
            RateLimit {
                per_second: 0.0,
                burst: 2.0,
            },
        );
        let client: SocketAddr = "10.0.0.2:5555".parse().unwrap();
        let t0 = Instant::now();
        let mut q = DnsRecord::new(client, "udp").name("x.invalid");
        q.rule = "default-deny".into();
        for _ in 0..1000 {
            log.dns_at(client.ip(), t0, &q);
        }
        let mut rec = EgressRecord::new(client, "CONNECT").host("evil.example", Some(443));
        rec.rule = "default-deny".into();
        log.egress_at(client.ip(), t0, &rec);
        let all = lines.json();
        assert_eq!(all.len(), 3, "{all:?}");
        assert_eq!(
            all[2]["host"], "evil.example",
            "the refusal has its own budget"
        );
        log.flush_suppressed();
        let all = lines.json();
        assert_eq!(all[3]["event"], "suppressed");
        assert_eq!(all[3]["budget"], "dns");
        assert_eq!(all[3]["count"], 998);
        assert_eq!(all[3]["kinds"], serde_json::json!({"dns/deny": 998}));
        assert_eq!(
            all[3]["top_hosts"],
            serde_json::json!([{"host": "x.invalid", "count": 998}])
        );
    }

    #[test]
    fn flush_reports_pending_counts() {
        let lines = Arc::new(Lines::default());
        let log = Logger::new(
            lines.clone(),
            lines.clone(),
            RateLimit {
                per_second: 0.0,
                burst: 1.0,
            },
        );
        let client: SocketAddr = "[fd00::2]:1".parse().unwrap();
        let rec = EgressRecord::new(client, "GET");
        for _ in 0..4 {
            log.egress(client, &rec);
        }
        log.flush_suppressed();
        let all = lines.json();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1]["event"], "suppressed");
        assert_eq!(all[1]["client"], "fd00::2");
        assert_eq!(all[1]["count"], 3);
        assert_eq!(all[1]["kinds"], serde_json::json!({"egress/deny": 3}));
        assert_eq!(all[1]["other_hosts"], 3, "the records name no host");
    }

    #[test]
    fn events_and_decisions_go_to_their_own_sinks() {
        let events = Arc::new(Lines::default());
        let audit = Arc::new(Lines::default());
        let log = Logger::new(events.clone(), audit.clone(), RateLimit::default());
        let client: SocketAddr = "10.0.0.2:1".parse().unwrap();
        log.event("listening", serde_json::json!({}));
        log.egress(client, &EgressRecord::new(client, "GET"));
        let mut q = DnsRecord::new(client, "udp").name("evil.example");
        q.rule = "default-deny".into();
        log.dns(client, &q);
        assert_eq!(events.json().len(), 1);
        let audit = audit.json();
        assert_eq!(audit.len(), 2);
        assert_eq!(audit[0]["service"], "egress");
        assert_eq!(audit[1]["service"], "dns");
        assert_eq!(audit[1]["name"], "evil.example");
        assert_eq!(audit[1]["rcode"], "REFUSED");
    }

    #[test]
    fn file_sink_appends_whole_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("egress.jsonl");
        std::fs::write(&path, "{\"old\":1}\n").unwrap();
        let sink = FileSink::append(&path).unwrap();
        sink.write_line("{\"new\":2}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"old\":1}\n{\"new\":2}\n"
        );
        let err = FileSink::append(&dir.join("missing/dir/x.jsonl")).unwrap_err();
        assert!(err.to_string().contains("cannot open audit log"), "{err}");
    }

    #[test]
    fn file_sink_rotates_past_its_limit_keeping_one_old_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("egress.jsonl");
        let sink = FileSink::append(&path).unwrap();
        sink.limit_size(100);
        let line = "x".repeat(39); // 40 bytes with the newline
        for _ in 0..7 {
            sink.write_line(&line);
        }
        // 7 lines of 40 bytes, at most 2 per 100-byte file: the current file
        // holds the last line, `.1` the two before; the rest is gone.
        let current = std::fs::read_to_string(&path).unwrap();
        let old = std::fs::read_to_string(sink.rotated_path()).unwrap();
        assert_eq!(current.len(), 40);
        assert_eq!(old.len(), 80);
        assert_eq!(sink.rotated_path(), dir.join("egress.jsonl.1"));
        let files = std::fs::read_dir(dir).unwrap().count();
        assert_eq!(files, 2, "one old file is kept, no more");
        // A line longer than the limit still gets written (alone).
        sink.write_line(&"y".repeat(300));
        assert_eq!(std::fs::read_to_string(&path).unwrap().len(), 301);
    }

    #[test]
    fn long_fields_are_cut() {
        let client: SocketAddr = "10.0.0.2:1".parse().unwrap();
        let rec = EgressRecord::new(client, "GET").path(&"é".repeat(1000));
        let path = rec.path.unwrap();
        assert!(path.len() <= MAX_FIELD + '…'.len_utf8());
        assert!(path.ends_with('…'));
    }
}
