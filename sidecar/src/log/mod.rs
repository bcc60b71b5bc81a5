//! The sidecar's logs: one JSON object per line, in two streams.
//!
//! - Lifecycle events (`"service":"sidecar"`, `"event":…`) go to the events
//!   sink: stdout, read by `bottle logs` through the runtime.
//! - Decisions go to the audit sink: the `--audit` JSONL file in the bottle's
//!   state dir. `"service":"egress"` lines carry one request or tunnel each
//!   ([`EgressRecord`]); `"service":"dns"` lines one DNS query
//!   ([`DnsRecord`]); `"service":"git-gate"` lines one git operation
//!   ([`GitRecord`]).
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
//!
//! Split by concern: `sinks.rs` (where lines go), `limit.rs` (the per-client
//! token buckets), `records.rs` (what an audit line says). This file holds
//! the [`Logger`] that ties them together and stamps every line.

mod limit;
mod records;
mod sinks;

pub use limit::{Admit, Budget, Dropped, LineKind, RateLimit, RateLimiter};
pub use records::{DnsRecord, EgressRecord, GitRecord, GitRefRecord};
pub use sinks::{AuditFileError, FileSink, LineSink, StdoutSink};

use bottle_policy::Verdict;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU8;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use time::format_description::well_known::iso8601::{self, Iso8601, TimePrecision};
use time::OffsetDateTime;

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

    /// A supervise audit line (a proposal filed, a decision applied):
    /// `{"ts","service":"supervise","event":…,…fields}`. Not rate-limited
    /// here: the supervisor bounds how many proposals a bottle files.
    pub fn supervise(&self, event: &str, fields: Value) {
        write(&*self.audit, "supervise", &event_body(event, fields));
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

    /// A git gate operation (`"service":"git-gate"`). An `allow` is always
    /// written (it stands for traffic that reached the upstream); a refusal
    /// is subject to the client's [`Budget::Refused`] rate limit.
    pub fn git(&self, client: SocketAddr, record: &GitRecord) {
        if record.decision == Verdict::Allow {
            write(&*self.audit, "git-gate", record);
            return;
        }
        let line = LineKind {
            kind: "git-gate/deny",
            host: Some(&record.remote),
        };
        self.limited(client.ip(), Budget::Refused, line, Instant::now(), || {
            write(&*self.audit, "git-gate", record)
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

/// The `ts` format: RFC 3339 (ISO 8601 extended), UTC as `Z`, always three
/// decimal digits (truncated), so timestamps sort as text.
const TIMESTAMP: Iso8601<
    {
        iso8601::Config::DEFAULT
            .set_time_precision(TimePrecision::Second {
                decimal_digits: NonZeroU8::new(3),
            })
            .encode()
    },
> = Iso8601;

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for `t` (UTC). Times before 1970 print as the
/// epoch, and so would times past year 9999; the sidecar never logs those.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let at = time::Duration::try_from(since)
        .ok()
        .and_then(|d| OffsetDateTime::UNIX_EPOCH.checked_add(d))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    at.format(&TIMESTAMP)
        .or_else(|_| OffsetDateTime::UNIX_EPOCH.format(&TIMESTAMP))
        .unwrap_or_default()
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
        // Truncated, never rounded up into the next second.
        let late = UNIX_EPOCH + Duration::from_secs(59) + Duration::from_nanos(999_999_999);
        assert_eq!(rfc3339_millis(late), "1970-01-01T00:00:59.999Z");
        let early = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(rfc3339_millis(early), "1970-01-01T00:00:00.000Z");
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
}
