//! One request and its answer, as every listener logs and refuses it.
//!
//! An [`Exchange`] carries the audit record of a request from the moment it
//! arrives; it ends in exactly one of: a refusal (logged now, answered with
//! the LLM-readable body), an unreachable upstream (502), or a forwarded
//! response whose record is written when the body is finished or dropped
//! ([`LogOnDrop`]), so byte counts are final.

use crate::body::BodyFailure;
use crate::egress::{self, Refusal};
use crate::forward::{full, Counter, Metered, ProxyBody};
use crate::log::{EgressRecord, Logger};
use crate::redact::{Hits, Needles, RedactBody};
use bottle_policy::{Decision, Verdict};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::json;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Instant;

/// What a handler needs to answer and log one request.
#[derive(Debug)]
pub struct Exchange {
    pub logger: Logger,
    pub client: SocketAddr,
    pub started: Instant,
    pub record: EgressRecord,
    /// `CONNECT host:port` / `GET https://host/path`, for refusal bodies.
    pub what: String,
}

impl Exchange {
    pub fn log(&self, mut record: EgressRecord) {
        record.duration_ms = millis(self.started);
        self.logger.egress(self.client, &record);
    }

    /// Logs a denial and answers it.
    pub fn refuse(self, status: StatusCode, refusal: &Refusal) -> Response<ProxyBody> {
        let mut record = self.record.clone();
        record.rule = refusal.decision.rule.clone();
        record.decision = Verdict::Deny;
        record.status = status.as_u16();
        self.log(record);
        text(status, refusal.body())
    }

    /// A refusal by `decision` with `hint`, answered 403.
    pub fn forbid(self, decision: Decision, hint: String) -> Response<ProxyBody> {
        let refusal = Refusal {
            what: self.what.clone(),
            decision,
            hint,
        };
        self.refuse(StatusCode::FORBIDDEN, &refusal)
    }

    /// Logs and answers a request whose body the agent sent broken or too
    /// slowly: 400 or 408, the agent's error, not the upstream's (the
    /// upstream request was aborted, see [`crate::body`]).
    pub fn bad_body(self, failure: &BodyFailure) -> Response<ProxyBody> {
        let refusal = Refusal {
            what: self.what.clone(),
            decision: egress::refusal(failure.rule(), failure.to_string()),
            hint: "send a complete, well-formed body without long pauses; the origin was not given this request as complete".into(),
        };
        let mut resp = self.refuse(failure.status(), &refusal);
        resp.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        resp
    }

    /// Logs an allowed destination that could not be reached and answers 502.
    pub fn unreachable(self, target: &str, rule: &str, error: String) -> Response<ProxyBody> {
        let mut record = self.record.clone();
        record.rule = rule.to_string();
        record.decision = Verdict::Allow;
        record.status = StatusCode::BAD_GATEWAY.as_u16();
        record.error = Some(error.clone());
        self.log(record);
        text(
            StatusCode::BAD_GATEWAY,
            format!(
                "bottle egress: {target} is allowed (rule: {rule}) but could not be reached\nwhy: {error}\n"
            ),
        )
    }

    /// Wraps a forwarded response so its record is logged, with the final byte
    /// counts, when the body ends, and every credential value is redacted from
    /// its headers and body ([`crate::redact`]). `up` counted the request
    /// body. An encoded response to a request that carried an injected
    /// credential is refused instead: it could carry the value past the
    /// filter.
    pub fn forwarded(
        self,
        rule: &str,
        up: Counter,
        resp: Response<Incoming>,
        redaction: Redaction,
    ) -> Response<ProxyBody> {
        if redaction.injected {
            if let Some(encoding) = content_encoding(resp.headers()) {
                let refusal = Refusal {
                    what: self.what.clone(),
                    decision: egress::refusal(
                        "credential-encoded-response",
                        format!("the origin answered a request that carried an injected credential with a {encoding}-encoded body, which the sidecar cannot search for the credential; the request asked for an unencoded answer (accept-encoding: identity)"),
                    ),
                    hint: "the origin ignores `accept-encoding: identity`; ask the user to check the host, or use an endpoint that answers unencoded".into(),
                };
                return self.refuse(StatusCode::BAD_GATEWAY, &refusal);
            }
        }
        let mut record = self.record;
        record.rule = rule.to_string();
        record.decision = Verdict::Allow;
        record.status = resp.status().as_u16();
        let (mut parts, body) = resp.into_parts();
        let hits = Hits::default();
        let mut found = BTreeSet::new();
        redaction
            .needles
            .redact_headers(&mut parts.headers, &mut found);
        hits.add(found);
        let down = Counter::default();
        let guard = LogOnDrop {
            logger: self.logger,
            client: self.client,
            started: self.started,
            record,
            up,
            down: down.clone(),
            redacted: hits.clone(),
        };
        let body = Metered::with_guard(body, down, guard);
        Response::from_parts(
            parts,
            RedactBody::new(body, redaction.needles, hits).boxed(),
        )
    }
}

/// How a forwarded response is filtered: the values to redact, and whether
/// the request carried one of them (then an encoded response is refused).
#[derive(Debug, Clone, Default)]
pub struct Redaction {
    pub needles: Needles,
    pub injected: bool,
}

/// The response's content coding, when it has one other than `identity`.
fn content_encoding(headers: &HeaderMap) -> Option<String> {
    let codings: Vec<String> = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty() && c != "identity")
                .collect::<Vec<_>>()
        })
        .collect();
    (!codings.is_empty()).then(|| codings.join(","))
}

/// Writes the log line for a forwarded request when its response body is
/// finished or abandoned, so the byte counts are final.
#[derive(Debug)]
pub struct LogOnDrop {
    pub logger: Logger,
    pub client: SocketAddr,
    pub started: Instant,
    pub record: EgressRecord,
    pub up: Counter,
    pub down: Counter,
    /// Credentials redacted from the response (names only).
    pub redacted: Hits,
}

impl Drop for LogOnDrop {
    fn drop(&mut self) {
        self.record.bytes_up = self.up.get();
        self.record.bytes_down = self.down.get();
        self.record.duration_ms = millis(self.started);
        self.logger.egress(self.client, &self.record);
        let names = self.redacted.names();
        if !names.is_empty() {
            self.logger.audit_event(
                self.client,
                "credential-redacted",
                json!({
                    "host": self.record.host,
                    "port": self.record.port,
                    "path": self.record.path,
                    "credentials": names,
                }),
            );
        }
    }
}

/// A `text/plain` answer.
pub fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The whole raw HTTP/1.1 response for a refusal written straight to a
/// socket (when no HTTP server is running on it).
pub fn raw_refusal(refusal: &Refusal) -> Vec<u8> {
    let body = refusal.body();
    format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// `METHOD target` for a refusal body: the query is never included.
pub fn describe(method: &str, scheme: &str, host: &str, port: u16, path: &str) -> String {
    let default = if scheme == "https" { 443 } else { 80 };
    let authority = if port == default {
        egress::host_port(host, port)
            .rsplit_once(':')
            .map(|(h, _)| h.to_string())
            .unwrap_or_default()
    } else {
        egress::host_port(host, port)
    };
    format!("{method} {scheme}://{authority}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_drops_default_ports_and_brackets_v6() {
        assert_eq!(
            describe("GET", "https", "api.example.com", 443, "/x"),
            "GET https://api.example.com/x"
        );
        assert_eq!(
            describe("GET", "http", "fd00::1", 8080, "/"),
            "GET http://[fd00::1]:8080/"
        );
        assert_eq!(
            describe("POST", "http", "fd00::1", 80, "/"),
            "POST http://[fd00::1]/"
        );
    }
}
