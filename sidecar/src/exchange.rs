//! One request and its answer, as every listener logs and refuses it.
//!
//! An [`Exchange`] carries the audit record of a request from the moment it
//! arrives; it ends in exactly one of: a refusal (logged now, answered with
//! the LLM-readable body), an unreachable upstream (502), or a forwarded
//! response whose record is written when the body is finished or dropped
//! ([`LogOnDrop`]), so byte counts are final.

use crate::egress::{self, Refusal};
use crate::forward::{full, Counter, Metered, ProxyBody};
use crate::log::{EgressRecord, Logger};
use bottle_policy::{Decision, Verdict};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
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
    /// counts, when the body ends. `up` counted the request body.
    pub fn forwarded(
        self,
        rule: &str,
        up: Counter,
        resp: Response<Incoming>,
    ) -> Response<ProxyBody> {
        let mut record = self.record;
        record.rule = rule.to_string();
        record.decision = Verdict::Allow;
        record.status = resp.status().as_u16();
        let down = Counter::default();
        let guard = LogOnDrop {
            logger: self.logger,
            client: self.client,
            started: self.started,
            record,
            up,
            down: down.clone(),
        };
        resp.map(|body| Metered::with_guard(body, down, guard).boxed())
    }
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
}

impl Drop for LogOnDrop {
    fn drop(&mut self) {
        self.record.bytes_up = self.up.get();
        self.record.bytes_down = self.down.get();
        self.record.duration_ms = millis(self.started);
        self.logger.egress(self.client, &self.record);
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
