//! One request and its answer, as every listener logs and refuses it.
//!
//! An [`Exchange`] carries the audit record of a request from the moment it
//! arrives; it ends in exactly one of: a refusal (logged now, answered with
//! the LLM-readable body), an unreachable upstream (502), or a forwarded
//! response whose record is written when the body is finished or dropped
//! ([`LogOnDrop`]), so byte counts are final.

use crate::body::BodyFailure;
use crate::egress::{self, Refusal};
use crate::forward::{self, full, strip_hop_headers, Metered, ProxyBody};
use crate::io::Counter;
use crate::log::{EgressRecord, Logger};
use crate::redact::{Hits, Needles, RedactBody};
use bottle_policy::{Decision, Verdict};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_ENCODING, CONTENT_RANGE, CONTENT_TYPE,
    TRANSFER_ENCODING,
};
use hyper::http::Extensions;
use hyper::{Response, StatusCode};
use serde_json::json;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Instant;

/// How the agent learns to go on after a DLP refusal.
pub const DLP_HINT: &str = "do not send secrets (credentials, keys, tokens) in requests: the sidecar adds the bottle's credentials itself where they belong; if the user means this data to go, ask them to change [dlp] in bottle.toml";

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
        let hint = match failure {
            BodyFailure::Refused { .. } => DLP_HINT.to_string(),
            _ => "send a complete, well-formed body without long pauses; the origin was not given this request as complete".into(),
        };
        let refusal = Refusal {
            what: self.what.clone(),
            decision: egress::refusal(failure.rule(), failure.to_string()),
            hint,
        };
        let mut resp = self.refuse(failure.status(), &refusal);
        resp.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        resp
    }

    /// Refuses a request DLP stopped before it was sent ([`crate::dlp`]).
    pub fn dlp_refused(self, refused: crate::dlp::Refused) -> Response<ProxyBody> {
        let failure = BodyFailure::Refused {
            rule: refused.rule,
            reason: refused.reason,
            status: refused.status,
        };
        let mut resp = self.bad_body(&failure);
        resp.headers_mut().remove(hyper::header::CONNECTION);
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
    /// body. `resp` is the upstream's response exactly as received: its head
    /// is checked ([`unfilterable`]) before the hop-by-hop headers are
    /// stripped here, so a `Connection` option cannot hide a header from the
    /// check. A response the filter cannot search, or one that could carry a
    /// part of an injected value, is refused (502) instead. The answer is
    /// rebuilt from the status, the filtered headers and the body: nothing
    /// else of the upstream's head (its reason phrase, which hyper keeps as
    /// an extension and would write back out) reaches the agent.
    pub fn forwarded(
        self,
        rule: &str,
        up: Counter,
        resp: Response<Incoming>,
        redaction: Redaction,
    ) -> Response<ProxyBody> {
        if let Some(decision) = unfilterable(resp.status(), resp.headers(), redaction.injected) {
            let refusal = Refusal {
                what: self.what.clone(),
                decision,
                hint: "the origin answered in a form the sidecar cannot search for credentials; ask the user to check the host, or use an endpoint that answers plainly".into(),
            };
            return self.refuse(StatusCode::BAD_GATEWAY, &refusal);
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_headers(&mut parts.headers);
        parts.extensions = Extensions::new();
        // An HTTP/2 upstream's answer may go to an HTTP/1.1 agent (the
        // agent's server writes its own version either way).
        if parts.version == hyper::Version::HTTP_2 {
            parts.version = hyper::Version::HTTP_11;
        }
        let resp = Response::from_parts(parts, body);
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
        let body = RedactBody::new(body, redaction.needles, hits);
        match redaction.inbound {
            Some(scope) => {
                Response::from_parts(parts, crate::dlp::InboundBody::new(body, scope).boxed())
            }
            None => Response::from_parts(parts, body.boxed()),
        }
    }
}

/// How a forwarded response is filtered: the values to redact, and whether
/// the request carried one of them (then an encoded or partial response is
/// refused).
#[derive(Debug, Clone, Default)]
pub struct Redaction {
    pub needles: Needles,
    pub injected: bool,
    /// Search the response for credential-shaped strings (`dlp.inbound`).
    pub inbound: Option<std::sync::Arc<crate::dlp::Scope>>,
}

/// Why an upstream response head, as received (before hop-by-hop
/// stripping), cannot go through the redaction filter; `None` when it can.
///
/// - A `Transfer-Encoding` with any coding but `chunked` (e.g. `gzip,
///   chunked`): hyper removes only the chunking, and stripping the header
///   would hand the agent a compressed body the filter never saw decoded.
///   Always refused (`unsupported-transfer-coding`).
/// - When the request carried an injected credential: a `Connection` option
///   naming `transfer-encoding` or a `content-*` header (`Connection:
///   content-encoding` would make the stripping remove the very header the
///   encoded-answer check reads; `content-range` the partial-answer check's),
///   rule `credential-hidden-header`; and a partial answer (`206` or any
///   `Content-Range`): the value could be split across answers that are each
///   searched alone; the request went without `Range` ([`crate::secrets`]),
///   rule `credential-partial-response`.
pub fn unfilterable(status: StatusCode, headers: &HeaderMap, injected: bool) -> Option<Decision> {
    let codings: Vec<String> = list(headers, TRANSFER_ENCODING)
        .into_iter()
        .filter(|c| c != "chunked")
        .collect();
    if !codings.is_empty() {
        return Some(egress::refusal(
            "unsupported-transfer-coding",
            format!(
                "the origin sent its answer with the transfer coding {}, which the sidecar does not decode and so cannot search for credentials; only `chunked` is forwarded",
                codings.join(",")
            ),
        ));
    }
    if !injected {
        return None;
    }
    let hidden: Vec<String> = list(headers, CONNECTION)
        .into_iter()
        .filter(|name| name.starts_with("content-") || name == "transfer-encoding")
        .collect();
    if !hidden.is_empty() {
        return Some(egress::refusal(
            "credential-hidden-header",
            format!(
                "the origin answered a request that carried an injected credential with a Connection header naming {}, which would hide how the body is encoded from the sidecar's credential filter",
                hidden.join(",")
            ),
        ));
    }
    if status == StatusCode::PARTIAL_CONTENT || headers.contains_key(CONTENT_RANGE) {
        return Some(egress::refusal(
            "credential-partial-response",
            "the origin answered a request that carried an injected credential with a part of a resource (206 / Content-Range); parts are searched for the credential one by one, so a value split across them would pass; the request was sent without Range".to_string(),
        ));
    }
    None
}

/// The comma-separated, lower-cased items of every `name` header.
fn list(headers: &HeaderMap, name: HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
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
        forward::host_port(host, port)
            .rsplit_once(':')
            .map(|(h, _)| h.to_string())
            .unwrap_or_default()
    } else {
        forward::host_port(host, port)
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
