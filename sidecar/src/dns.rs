//! The sidecar's DNS server on :53 (UDP and TCP): the agent's only resolver.
//!
//! It answers from the policy alone and has no upstream at all: nothing in
//! this module (or anywhere in the sidecar) forwards a query, so a query can
//! never carry data out. For a name an `egress.allow` entry covers (exactly
//! or under a `*.suffix` entry):
//!
//! - `A` is answered with the sidecar's own internal IPv4 (`--dns-answer`),
//!   TTL [`TTL`]: the client then reaches the transparent :80/:443 listeners,
//!   which enforce the policy per connection and per request;
//! - `AAAA` is answered NOERROR with no records (IPv4 only, so clients fall
//!   back at once instead of timing out);
//! - any other type is REFUSED.
//!
//! With supervise on, a name the policy does not cover may still resolve
//! (to the same address) by a decision: a live `once` approval, or under
//! `egress.unknown = "ask"` any ordinary name whose last proposal was not
//! refused lately, so the connection reaches the listener that holds it
//! and asks ([`crate::supervise::Supervisor::dns_rule`]).
//!
//! Every other name, class or malformed query is REFUSED (or FORMERR /
//! NOTIMP when it cannot be read). The wire format is parsed here directly:
//! a query is one header, one question, and the name is read without
//! compression pointers (which never appear in a question). Decisions are
//! audit-logged, rate-limited per client.

use crate::limits::Deadlines;
use crate::listen::{self, ClientStream, ListenError, OverCap};
use crate::log::DnsRecord;
use crate::shared::Shared;
use bottle_policy::{normalize_host, EgressPolicy, Verdict};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// TTL of an answer: short, so a policy reload is seen quickly.
pub const TTL: u32 = 5;
/// Longest DNS-over-TCP message accepted. A query is one header and one
/// question (at most 12 + 255 + 4 bytes) plus, at most, an EDNS OPT record
/// with a few options; anything longer is not a query this server answers,
/// and the connection is closed before a buffer is allocated for it.
pub const MAX_TCP_QUERY: usize = 1024;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// Response codes used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    NotImp = 4,
    Refused = 5,
}

impl Rcode {
    pub fn name(self) -> &'static str {
        match self {
            Rcode::NoError => "NOERROR",
            Rcode::FormErr => "FORMERR",
            Rcode::NotImp => "NOTIMP",
            Rcode::Refused => "REFUSED",
        }
    }
}

/// What [`answer`] decided, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The queried name, lower-cased (absent when unreadable).
    pub name: Option<String>,
    pub qtype: Option<u16>,
    pub rule: String,
    pub verdict: Verdict,
    pub rcode: Rcode,
    pub answers: u16,
}

/// The question of a query, as read.
struct Question<'a> {
    /// The question's bytes (name, type, class), echoed verbatim.
    raw: &'a [u8],
    /// Labels joined with `.`; `None` when a label is not printable ASCII
    /// or contains a dot.
    name: Option<String>,
    qtype: u16,
    qclass: u16,
}

/// Reads the one question that starts at `buf[12..]`.
fn question(buf: &[u8]) -> Option<Question<'_>> {
    let mut i = 12;
    let mut labels: Vec<String> = Vec::new();
    let mut printable = true;
    let mut total = 0usize;
    loop {
        let len = usize::from(*buf.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        // Compression pointers (0xC0) and extended label types never appear
        // in a question's name.
        if len > 63 {
            return None;
        }
        let label = buf.get(i..i + len)?;
        i += len;
        total += len + 1;
        if total > 255 {
            return None;
        }
        if label.iter().all(|b| b.is_ascii_graphic() && *b != b'.') {
            labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        } else {
            printable = false;
        }
    }
    let fixed = buf.get(i..i + 4)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    Some(Question {
        raw: &buf[12..i + 4],
        name: printable.then(|| labels.join(".")),
        qtype,
        qclass,
    })
}

/// Answers one DNS message. `None` when it must be dropped (too short to
/// carry an ID, or itself a response).
pub fn answer(query: &[u8], policy: &EgressPolicy, ip: Ipv4Addr) -> Option<(Vec<u8>, Outcome)> {
    answer_with(query, policy, ip, |_| None)
}

/// [`answer`], where `fallback` may still resolve a name the policy does
/// not allow, naming the rule (supervise's decisions:
/// [`crate::supervise::Supervisor::dns_rule`]).
pub fn answer_with(
    query: &[u8],
    policy: &EgressPolicy,
    ip: Ipv4Addr,
    fallback: impl Fn(&str) -> Option<&'static str>,
) -> Option<(Vec<u8>, Outcome)> {
    if query.len() < 12 {
        return None;
    }
    let flags = u16::from_be_bytes([query[2], query[3]]);
    if flags & 0x8000 != 0 {
        return None;
    }
    let id = [query[0], query[1]];
    let rd = flags & 0x0100;
    let opcode = (flags >> 11) & 0xF;
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    let header_only = |rcode: Rcode, rule: &str| {
        let mut out = Vec::with_capacity(12);
        out.extend_from_slice(&id);
        out.extend_from_slice(&(0x8400 | (opcode << 11) | rd | rcode as u16).to_be_bytes());
        out.extend_from_slice(&[0; 8]);
        let outcome = Outcome {
            name: None,
            qtype: None,
            rule: rule.into(),
            verdict: Verdict::Deny,
            rcode,
            answers: 0,
        };
        (out, outcome)
    };
    if opcode != 0 {
        return Some(header_only(Rcode::NotImp, "dns-opcode"));
    }
    if qdcount != 1 {
        return Some(header_only(Rcode::FormErr, "dns-malformed"));
    }
    let Some(q) = question(query) else {
        return Some(header_only(Rcode::FormErr, "dns-malformed"));
    };
    let in_class = q.name.as_deref().filter(|_| q.qclass == CLASS_IN);
    let allowed = in_class
        .and_then(|n| policy.allows_name(n).map(|r| r.to_string()))
        .or_else(|| in_class.and_then(|n| fallback(n).map(String::from)));
    let (rcode, answers, rule) = match (allowed, q.qtype) {
        (Some(rule), TYPE_A) => (Rcode::NoError, 1u16, rule),
        (Some(rule), TYPE_AAAA) => (Rcode::NoError, 0, rule),
        (Some(_), _) => (Rcode::Refused, 0, "dns-type".to_string()),
        (None, _) => {
            let rule = match q.name.as_deref().map(normalize_host) {
                Some(Ok(_)) if q.qclass == CLASS_IN => "default-deny",
                Some(Ok(_)) => "dns-class",
                _ => "invalid-host",
            };
            (Rcode::Refused, 0, rule.to_string())
        }
    };
    let mut out = Vec::with_capacity(12 + q.raw.len() + 16);
    out.extend_from_slice(&id);
    out.extend_from_slice(&(0x8400 | rd | rcode as u16).to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&answers.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(q.raw);
    if answers == 1 {
        out.extend_from_slice(&[0xC0, 0x0C]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    let outcome = Outcome {
        name: q.name,
        qtype: Some(q.qtype),
        rule,
        verdict: if rcode == Rcode::NoError {
            Verdict::Allow
        } else {
            Verdict::Deny
        },
        rcode,
        answers,
    };
    Some((out, outcome))
}

fn qtype_name(t: u16) -> String {
    match t {
        TYPE_A => "A".into(),
        TYPE_AAAA => "AAAA".into(),
        5 => "CNAME".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        33 => "SRV".into(),
        64 => "SVCB".into(),
        65 => "HTTPS".into(),
        other => other.to_string(),
    }
}

fn log(shared: &Shared, client: SocketAddr, transport: &'static str, outcome: &Outcome) {
    let mut record = DnsRecord::new(client, transport);
    if let Some(name) = &outcome.name {
        record = record.name(name);
    }
    record.qtype = outcome.qtype.map(qtype_name);
    record.rule = outcome.rule.clone();
    record.decision = outcome.verdict;
    record.rcode = outcome.rcode.name();
    record.answers = outcome.answers;
    shared.logger.dns(client, &record);
}

/// The bound DNS sockets.
#[derive(Debug)]
pub struct Dns {
    udp: UdpSocket,
    tcp: TcpListener,
    answer_ip: Ipv4Addr,
}

impl Dns {
    /// Binds UDP on `addr`, then TCP on the same address and port (the port
    /// UDP got, when `addr` asks for port 0).
    /// UDP and TCP on the same port. With port 0 the system picks the UDP
    /// port, which another process may already hold for TCP: that pick is
    /// retried a few times rather than failing.
    pub async fn bind(addr: SocketAddr, answer_ip: Ipv4Addr) -> Result<Self, ListenError> {
        let mut tries = if addr.port() == 0 { 16 } else { 1 };
        loop {
            tries -= 1;
            let udp = UdpSocket::bind(addr)
                .await
                .map_err(|source| ListenError::Bind {
                    listener: "dns (udp)",
                    addr,
                    source,
                })?;
            let port = udp.local_addr().map(|a| a.port()).unwrap_or(addr.port());
            match listen::bind_tcp("dns (tcp)", SocketAddr::new(addr.ip(), port)).await {
                Ok(tcp) => {
                    return Ok(Dns {
                        udp,
                        tcp,
                        answer_ip,
                    })
                }
                Err(ListenError::Bind { source, .. })
                    if tries > 0 && source.kind() == std::io::ErrorKind::AddrInUse => {}
                Err(e) => return Err(e),
            }
        }
    }

    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        listen::local_addr(&self.tcp)
    }

    /// Serves both until the sidecar shuts down.
    pub async fn serve(self, shared: Arc<Shared>) {
        let ip = self.answer_ip;
        let tcp = listen::accept_loop(
            self.tcp,
            shared.clone(),
            "dns-tcp",
            OverCap::Close,
            move |s, c, sh| serve_tcp(s, c, sh, ip),
        );
        tokio::join!(serve_udp(self.udp, shared, ip), tcp);
    }
}

/// [`answer_with`] the policy and supervise's decisions.
fn answer_for(
    shared: &Shared,
    query: &[u8],
    policy: &bottle_policy::Policy,
    ip: Ipv4Addr,
) -> Option<(Vec<u8>, Outcome)> {
    match &shared.supervisor {
        Some(sup) => answer_with(query, &policy.egress, ip, |n| sup.dns_rule(policy, n)),
        None => answer(query, &policy.egress, ip),
    }
}

async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>, ip: Ipv4Addr) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, client) = tokio::select! {
            () = shared.closing() => break,
            got = socket.recv_from(&mut buf) => match got {
                Ok(got) => got,
                // ICMP errors from earlier sends surface here; keep serving.
                Err(_) => continue,
            },
        };
        let policy = shared.policy.current();
        if let Some((reply, outcome)) = answer_for(&shared, &buf[..n], &policy, ip) {
            // Logged before answering, so the log is complete once the
            // client has its answer.
            log(&shared, client, "udp", &outcome);
            let _ = socket.send_to(&reply, client).await;
        }
    }
}

/// Serves DNS over TCP: each message (its 2-byte length, then the message)
/// must arrive whole within `limits.handshake_timeout_secs`, counted from
/// when the server starts waiting for it; the length is read and bounded
/// ([`MAX_TCP_QUERY`]) before the message's buffer is allocated.
async fn serve_tcp(
    mut stream: ClientStream,
    client: SocketAddr,
    shared: Arc<Shared>,
    ip: Ipv4Addr,
) {
    let deadline = shared.limits().handshake();
    loop {
        let read = async {
            let len = usize::from(stream.read_u16().await?);
            if len > MAX_TCP_QUERY {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "DNS message longer than a query",
                ));
            }
            let mut msg = vec![0u8; len];
            stream.read_exact(&mut msg).await?;
            Ok::<_, std::io::Error>(msg)
        };
        let msg = tokio::select! {
            () = shared.closing() => return,
            got = tokio::time::timeout(deadline, read) => match got {
                Ok(Ok(msg)) => msg,
                _ => return,
            },
        };
        let policy = shared.policy.current();
        let Some((reply, outcome)) = answer_for(&shared, &msg, &policy, ip) else {
            return;
        };
        log(&shared, client, "tcp", &outcome);
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bottle_policy::AllowRule;

    const IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

    fn policy() -> EgressPolicy {
        EgressPolicy {
            allow: ["api.example.com:8443", "*.cdn.example", "10.0.0.5"]
                .iter()
                .map(|a| AllowRule::parse(a).unwrap())
                .collect(),
            ..Default::default()
        }
    }

    /// A query as a stub resolver sends it (RD set).
    pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.').filter(|l| !l.is_empty()) {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    fn rcode(reply: &[u8]) -> u16 {
        u16::from_be_bytes([reply[2], reply[3]]) & 0xF
    }

    #[test]
    fn allowed_a_gets_the_sidecar_address() {
        let q = query(0xBEEF, "API.Example.com", TYPE_A);
        let (r, o) = answer(&q, &policy(), IP).unwrap();
        assert_eq!(&r[..2], &[0xBE, 0xEF]);
        assert_eq!(
            u16::from_be_bytes([r[2], r[3]]),
            0x8500,
            "QR AA RD, NOERROR"
        );
        assert_eq!(&r[4..12], &[0, 1, 0, 1, 0, 0, 0, 0]);
        // The question is echoed byte for byte (case kept for 0x20 checks).
        assert_eq!(&r[12..q.len()], &q[12..]);
        let ans = &r[q.len()..];
        assert_eq!(
            ans,
            &[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 99, 0, 2]
        );
        assert_eq!(o.name.as_deref(), Some("api.example.com"));
        assert_eq!(o.rule, "api.example.com:8443");
        assert_eq!((o.verdict, o.answers), (Verdict::Allow, 1));

        let (r, o) = answer(&query(1, "files.cdn.example", TYPE_A), &policy(), IP).unwrap();
        assert_eq!((rcode(&r), o.answers), (0, 1));
    }

    #[test]
    fn allowed_aaaa_is_empty_and_other_types_refused() {
        let (r, o) = answer(&query(2, "api.example.com", TYPE_AAAA), &policy(), IP).unwrap();
        assert_eq!(rcode(&r), 0);
        assert_eq!(&r[6..8], &[0, 0], "no answers");
        assert_eq!(o.answers, 0);
        for t in [16u16, 15, 64, 65, 255] {
            let (r, o) = answer(&query(3, "api.example.com", t), &policy(), IP).unwrap();
            assert_eq!(rcode(&r), Rcode::Refused as u16, "type {t}");
            assert_eq!(o.rule, "dns-type");
        }
    }

    #[test]
    fn everything_else_is_refused() {
        for name in [
            "evil.example",
            "cdn.example",
            "c2VjcmV0.exfil.example",
            "5.0.0.10.in-addr.arpa",
            "10.0.0.5",
            "localhost",
        ] {
            let (r, o) = answer(&query(4, name, TYPE_A), &policy(), IP).unwrap();
            assert_eq!(rcode(&r), Rcode::Refused as u16, "{name}");
            assert_eq!(o.verdict, Verdict::Deny, "{name}");
            assert_eq!(&r[6..8], &[0, 0], "{name}: no answers");
        }
        // Class CH, a non-ASCII label.
        let mut ch = query(5, "api.example.com", TYPE_A);
        let n = ch.len();
        ch[n - 1] = 3;
        let (r, o) = answer(&ch, &policy(), IP).unwrap();
        assert_eq!((rcode(&r), o.rule.as_str()), (5, "dns-class"));
        let mut bin = query(6, "api.example.com", TYPE_A);
        bin[13] = 0xFF;
        let (r, o) = answer(&bin, &policy(), IP).unwrap();
        assert_eq!((rcode(&r), o.rule.as_str()), (5, "invalid-host"));
    }

    #[test]
    fn encrypted_resolvers_under_a_wildcard_get_no_answer() {
        let p = EgressPolicy {
            allow: ["*.nextdns.io", "*.cloudflare-dns.com", "dns.quad9.net"]
                .iter()
                .map(|a| AllowRule::parse(a).unwrap())
                .collect(),
            ..Default::default()
        };
        for name in ["dns.nextdns.io", "mozilla.cloudflare-dns.com"] {
            let (r, o) = answer(&query(9, name, TYPE_A), &p, IP).unwrap();
            assert_eq!(rcode(&r), 5, "{name}: REFUSED");
            assert_eq!(o.rule, "default-deny", "{name}");
        }
        // Named exactly, a resolver is answered like any allowed name.
        let (r, _) = answer(&query(9, "dns.quad9.net", TYPE_A), &p, IP).unwrap();
        assert_eq!(rcode(&r), 0);
        let (r, _) = answer(&query(9, "status.nextdns.io", TYPE_A), &p, IP).unwrap();
        assert_eq!(rcode(&r), 0);
    }

    #[test]
    fn malformed_messages() {
        assert!(answer(&[0; 5], &policy(), IP).is_none());
        let mut resp = query(7, "api.example.com", TYPE_A);
        resp[2] |= 0x80;
        assert!(
            answer(&resp, &policy(), IP).is_none(),
            "responses are dropped"
        );
        let q = query(8, "api.example.com", TYPE_A);
        let (r, _) = answer(&q[..q.len() - 2], &policy(), IP).unwrap();
        assert_eq!(rcode(&r), Rcode::FormErr as u16);
        let mut two = q.clone();
        two[5] = 2;
        assert_eq!(rcode(&answer(&two, &policy(), IP).unwrap().0), 1);
        let mut ptr = q.clone();
        ptr[12] = 0xC0;
        assert_eq!(rcode(&answer(&ptr, &policy(), IP).unwrap().0), 1);
        let mut notify = q;
        notify[2] = 0x20; // opcode 4
        let (r, _) = answer(&notify, &policy(), IP).unwrap();
        assert_eq!(rcode(&r), Rcode::NotImp as u16);
    }
}
