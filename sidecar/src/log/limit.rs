//! The rate limiter for lines a client can cause: one token bucket per
//! client IP and [`Budget`], and the [`Dropped`] tally each bucket keeps for
//! its `suppressed` summary (see the [module doc](super) for which lines
//! spend a budget and why).

use super::records::{truncate, MAX_FIELD};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Instant;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
