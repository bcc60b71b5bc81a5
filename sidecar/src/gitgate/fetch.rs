//! Clone, fetch and ls-remote: the ref advertisements (of both services)
//! and upload-pack, served from the remote's mirror by `git upload-pack
//! --stateless-rpc` (protocol v0 and v2: the client's `Git-Protocol` header
//! goes to git as `GIT_PROTOCOL`).
//!
//! The mirror is refreshed before each advertisement (`GET info/refs`, the
//! first request of every clone, fetch, ls-remote and push, v0 or v2), and
//! not again for the POSTs that follow it in the same operation: they
//! continue the conversation the advertisement began. An upstream that
//! cannot be reached fails the advertisement with an `ERR` pkt-line, which
//! git prints as `fatal: remote error: git-gate: upstream … unreachable:
//! <cause>`; with `stale_ok = true` the last mirror is served instead and
//! the audit line says `"stale": true`.

use super::{audit, full, pkt, relay, Body, Gate, Service};
use crate::log::GitRecord;
use bottle_policy::{GitMode, GitRemote, PushRefusal, Verdict};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{HeaderMap, Request, Response, StatusCode};
use std::io::Read as _;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Instant;
use tokio::io::AsyncWriteExt;

/// Largest upload-pack request body (wants and haves), after gunzip.
pub const MAX_UPLOAD_REQUEST: u64 = 64 << 20;

/// The capabilities a push advertisement keeps; the rest (push options,
/// signed pushes, report-status-v2) are features the gate does not relay.
const PUSH_CAPS: [&str; 6] = [
    "report-status",
    "side-band-64k",
    "quiet",
    "atomic",
    "ofs-delta",
    "delete-refs",
];

/// The client's `Git-Protocol` header if it is one git could have sent
/// (`version=2`, `key=value:…`), else none.
pub fn protocol(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("git-protocol")?.to_str().ok()?;
    let ok = v.len() <= 256
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "=:.-_".contains(c));
    ok.then(|| v.to_string())
}

fn is_v2(protocol: &Option<String>) -> bool {
    protocol
        .as_deref()
        .is_some_and(|p| p.split(':').any(|kv| kv == "version=2"))
}

/// The `ERR` advertisement git turns into `fatal: remote error: <text>`.
pub fn err_advertisement(service: Service, text: &str) -> Response<Body> {
    full(
        StatusCode::OK,
        &format!("application/x-{}-advertisement", service.name()),
        pkt::text(&format!("ERR {}", super::clean(text))),
    )
}

/// `GET /<name>.git/info/refs?service=…`.
pub async fn advertise(
    gate: &Gate,
    remote: &GitRemote,
    service: Service,
    req: Request<Incoming>,
    client: SocketAddr,
    started: Instant,
) -> Response<Body> {
    let name = remote.name.as_str();
    let mut record = GitRecord::new(client, name, "advertise");
    if service == Service::ReceivePack && remote.mode == GitMode::Fetch {
        let refusal = PushRefusal::FetchOnly {
            remote: name.to_string(),
        };
        record.rule = format!("git.remote \"{name}\" mode");
        record.reason = Some(refusal.to_string());
        audit(gate, client, record, started);
        return err_advertisement(service, &format!("git-gate: {refusal}"));
    }
    if let Err(cause) = gate.mirrors.refresh(name).await {
        let stale =
            service == Service::UploadPack && remote.stale_ok && gate.mirrors.has_data(name);
        record.reason = Some(format!("upstream {} unreachable: {cause}", remote.upstream));
        if !stale {
            record.rule = "upstream-unreachable".into();
            let text = format!(
                "git-gate: upstream {} unreachable: {cause}",
                remote.upstream
            );
            audit(gate, client, record, started);
            return err_advertisement(service, &text);
        }
        record.stale = true;
    }
    let protocol = protocol(req.headers());
    let v2 = service == Service::UploadPack && is_v2(&protocol);
    let dir = gate.mirrors.dir(name);
    let d = dir.display().to_string();
    let (sub, env): (&str, Vec<(&str, &str)>) = match service {
        Service::UploadPack => (
            "upload-pack",
            protocol
                .as_deref()
                .map(|p| vec![("GIT_PROTOCOL", p)])
                .unwrap_or_default(),
        ),
        // Pushes are v0 whatever the client asks (git has no v2 push).
        Service::ReceivePack => ("receive-pack", Vec::new()),
    };
    let mut args = vec![sub, "--stateless-rpc", "--advertise-refs"];
    if service == Service::UploadPack {
        args.push("--strict");
    }
    args.push(&d);
    let out = match gate.git.run(&dir, &args, &env, None).await {
        Ok(o) => o.stdout,
        Err(e) => {
            record.rule = "git-gate-error".into();
            record.reason = Some(e.to_string());
            audit(gate, client, record, started);
            return err_advertisement(service, &format!("git-gate: cannot read the mirror: {e}"));
        }
    };
    let mut body = Vec::new();
    if !v2 {
        body.extend(pkt::text(&format!("# service={}", service.name())));
        body.extend_from_slice(pkt::FLUSH);
    }
    match service {
        Service::ReceivePack => body.extend(push_caps(&out)),
        Service::UploadPack => body.extend(out),
    }
    record.decision = Verdict::Allow;
    record.rule = format!("git.remote \"{name}\"");
    record.bytes_down = body.len() as u64;
    audit(gate, client, record, started);
    full(
        StatusCode::OK,
        &format!("application/x-{}-advertisement", service.name()),
        body,
    )
}

/// A receive-pack advertisement with its capabilities cut to `PUSH_CAPS`
/// (plus `object-format` and `agent`).
pub fn push_caps(adv: &[u8]) -> Vec<u8> {
    let Some(first) = pkt::first(adv) else {
        return adv.to_vec();
    };
    let Some(nul) = first.iter().position(|b| *b == 0) else {
        return adv.to_vec();
    };
    let caps = String::from_utf8_lossy(&first[nul + 1..]);
    let kept: Vec<&str> = caps
        .split_whitespace()
        .filter(|c| {
            PUSH_CAPS.contains(c) || c.starts_with("object-format=") || c.starts_with("agent=")
        })
        .collect();
    let mut line = first[..=nul].to_vec();
    line.extend_from_slice(kept.join(" ").as_bytes());
    line.push(b'\n');
    let mut out = pkt::line(&line);
    out.extend_from_slice(&adv[first.len() + 4..]);
    out
}

/// Reads a request body whole (at most `max` bytes after gunzip).
pub async fn read_body(req: Request<Incoming>, max: u64) -> Result<Vec<u8>, String> {
    let gzip = req
        .headers()
        .get(hyper::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip") || v.eq_ignore_ascii_case("x-gzip"));
    let limited = http_body_util::Limited::new(req.into_body(), max as usize);
    let raw = limited
        .collect()
        .await
        .map_err(|e| format!("request body: {e}"))?
        .to_bytes();
    if !gzip {
        return Ok(raw.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&raw[..])
        .take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("gzip request body: {e}"))?;
    if out.len() as u64 > max {
        return Err(format!("request body larger than {max} bytes"));
    }
    Ok(out)
}

/// Writes the audit line when the streamed answer is done (or dropped).
struct AuditOnDrop {
    gate: Gate,
    client: SocketAddr,
    record: Option<GitRecord>,
    started: Instant,
    _child: tokio::process::Child,
}

impl Drop for AuditOnDrop {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            audit(&self.gate, self.client, record, self.started);
        }
    }
}

/// `POST /<name>.git/git-upload-pack`.
pub async fn upload_pack(
    gate: &Gate,
    remote: &GitRemote,
    req: Request<Incoming>,
    client: SocketAddr,
    started: Instant,
) -> Response<Body> {
    let name = remote.name.as_str();
    let protocol = protocol(req.headers());
    let body = match read_body(req, MAX_UPLOAD_REQUEST).await {
        Ok(b) => b,
        Err(e) => return relay::text(StatusCode::BAD_REQUEST, &format!("git-gate: {e}\n")),
    };
    let ls_refs = pkt::first(&body).is_some_and(|l| l.starts_with(b"command=ls-refs"));
    let mut record = GitRecord::new(client, name, if ls_refs { "advertise" } else { "fetch" });
    record.bytes_up = body.len() as u64;
    let dir = gate.mirrors.dir(name);
    let d = dir.display().to_string();
    let env: Vec<(&str, &str)> = protocol
        .as_deref()
        .map(|p| vec![("GIT_PROTOCOL", p)])
        .unwrap_or_default();
    let mut cmd = gate.git.command(
        &dir,
        &["upload-pack", "--stateless-rpc", "--strict", &d],
        &env,
    );
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            record.rule = "git-gate-error".into();
            record.reason = Some(e.to_string());
            audit(gate, client, record, started);
            return relay::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "git-gate: cannot run git\n",
            );
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        tokio::spawn(async move {
            let _ = stdin.write_all(&body).await;
        });
    }
    let Some(stdout) = child.stdout.take() else {
        return relay::text(StatusCode::INTERNAL_SERVER_ERROR, "git-gate: no output\n");
    };
    record.decision = Verdict::Allow;
    record.rule = format!("git.remote \"{name}\"");
    let mut guard = AuditOnDrop {
        gate: gate.clone(),
        client,
        record: Some(record),
        started,
        _child: child,
    };
    let stream = tokio_util::io::ReaderStream::new(stdout).map(move |chunk| {
        if let (Ok(c), Some(r)) = (&chunk, guard.record.as_mut()) {
            r.bytes_down += c.len() as u64;
        }
        chunk.map(|c: Bytes| Frame::data(c))
    });
    let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(stream)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-git-upload-pack-result"),
    );
    resp.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_advertisement_keeps_only_relayed_caps() {
        let oid = "a".repeat(40);
        let first = format!(
            "{oid} refs/heads/main\0report-status report-status-v2 delete-refs side-band-64k quiet atomic ofs-delta push-options object-format=sha1 agent=git/2.47\n"
        );
        let mut adv = pkt::line(first.as_bytes());
        adv.extend(pkt::text(&format!("{oid} refs/heads/x")));
        adv.extend_from_slice(pkt::FLUSH);
        let out = push_caps(&adv);
        let line = pkt::first(&out).unwrap();
        let text = String::from_utf8_lossy(line);
        assert!(text.ends_with("\0report-status delete-refs side-band-64k quiet atomic ofs-delta object-format=sha1 agent=git/2.47\n"), "{text:?}");
        assert!(
            out.ends_with(&[pkt::text(&format!("{oid} refs/heads/x")), b"0000".to_vec()].concat())
        );
    }

    #[test]
    fn protocol_header_is_checked() {
        let mut h = HeaderMap::new();
        h.insert("git-protocol", "version=2".parse().unwrap());
        assert_eq!(protocol(&h).as_deref(), Some("version=2"));
        assert!(is_v2(&protocol(&h)));
        h.insert("git-protocol", "version=2 x;rm".parse().unwrap());
        assert_eq!(protocol(&h), None);
        assert!(!is_v2(&None));
    }
}
