//! What an audit line says: [`EgressRecord`] for one request or tunnel,
//! [`DnsRecord`] for one DNS query. Every text field that comes from the
//! client is cut to [`MAX_FIELD`] bytes, and no field can carry a header
//! value or a secret.

use bottle_policy::Verdict;
use serde::Serialize;
use std::net::SocketAddr;

/// Longest host or path written to the log; the rest is cut, because both come
/// from the client.
pub(super) const MAX_FIELD: usize = 512;

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

/// One git gate operation (an advertisement, a fetch, a push), as logged.
#[derive(Debug, Clone, Serialize)]
pub struct GitRecord {
    /// `ip:port` of the client.
    pub client: String,
    /// The `[[git.remote]]` name (cut; it comes from the request path).
    pub remote: String,
    /// `advertise`, `fetch` or `push`.
    pub op: &'static str,
    /// The ref updates of a push, each `old → new` (abbreviated ids; `-`
    /// for none) and its outcome.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refs: Vec<GitRefRecord>,
    pub decision: Verdict,
    /// The rule that decided (`git.remote "app" push`, `secret-scan`,
    /// `upstream-unreachable`, …).
    pub rule: String,
    /// Why, when refused or failed (never a secret: the scanner's findings
    /// name the detector, not the text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Served from the last mirror because the upstream was unreachable
    /// (`stale_ok = true`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// Bytes of the client's request body.
    pub bytes_up: u64,
    /// Bytes of the answer to the client.
    pub bytes_down: u64,
    pub duration_ms: u64,
}

/// One ref update in a [`GitRecord`].
#[derive(Debug, Clone, Serialize)]
pub struct GitRefRecord {
    #[serde(rename = "ref")]
    pub refname: String,
    /// `old → new`.
    pub update: String,
    /// `ok`, or the reason it was refused.
    pub result: String,
}

impl GitRecord {
    pub fn new(client: SocketAddr, remote: &str, op: &'static str) -> Self {
        GitRecord {
            client: client.to_string(),
            remote: truncate(remote, 64),
            op,
            refs: Vec::new(),
            decision: Verdict::Deny,
            rule: String::new(),
            reason: None,
            stale: false,
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 0,
        }
    }

    /// Adds one ref update (fields cut to a safe length).
    pub fn add_ref(&mut self, refname: &str, old: Option<&str>, new: Option<&str>, result: &str) {
        let short = |o: Option<&str>| o.map_or("-".to_string(), |o| o.chars().take(12).collect());
        self.refs.push(GitRefRecord {
            refname: truncate(refname, MAX_FIELD),
            update: format!("{} → {}", short(old), short(new)),
            result: truncate(result, MAX_FIELD),
        });
    }
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_fields_are_cut() {
        let client: SocketAddr = "10.0.0.2:1".parse().unwrap();
        let rec = EgressRecord::new(client, "GET").path(&"é".repeat(1000));
        let path = rec.path.unwrap();
        assert!(path.len() <= MAX_FIELD + '…'.len_utf8());
        assert!(path.ends_with('…'));
    }
}
