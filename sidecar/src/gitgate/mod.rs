//! The git gate (port 8080): git smart HTTP for each `[[git.remote]]`, so
//! the agent clones, fetches and pushes with plain git while the token and
//! the push rules stay in the sidecar. See docs/git-gate.md for the
//! behaviour, and docs/decisions.md for why `git` itself does the object
//! work.
//!
//! Served per remote `<name>`:
//! - `GET /<name>.git/info/refs?service=git-upload-pack` and
//!   `POST /<name>.git/git-upload-pack`: clone, fetch, ls-remote (protocol
//!   v0 and v2), from the remote's mirror ([`mirror`]), refreshed from the
//!   upstream first ([`fetch`]).
//! - `GET /<name>.git/info/refs?service=git-receive-pack` and
//!   `POST /<name>.git/git-receive-pack`: push, every ref update checked
//!   against the policy and every new commit scanned for secrets before
//!   anything goes upstream ([`push`]).
//!
//! Anything else is a 404 naming the known remotes. The upstream is reached
//! only through the loopback [`relay`], which holds the token.

pub mod fetch;
pub mod git;
pub mod mirror;
pub mod pkt;
pub mod push;
pub mod relay;

use crate::limits::Deadlines;
use crate::listen::{ClientStream, ListenError, OverCap};
use crate::log::GitRecord;
use crate::shared::Shared;
use bytes::Bytes;
use git::Git;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use mirror::Mirrors;
use relay::Relay;
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;

/// The gate's port on the internal address.
pub const GIT_PORT: u16 = 8080;
/// Where mirrors live unless `--git-state` says otherwise.
pub const DEFAULT_GIT_STATE: &str = "/var/lib/bottle/git";

/// Every response body of the gate.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A bound, not yet serving, git gate.
#[derive(Debug)]
pub struct GitGate {
    listener: TcpListener,
    state: PathBuf,
    git: Git,
}

/// What every request handler needs.
#[derive(Debug, Clone)]
pub struct Gate {
    pub shared: Arc<Shared>,
    pub git: Git,
    pub relay: Relay,
    pub mirrors: Mirrors,
    /// The state dir (mirrors, quarantines).
    pub state: PathBuf,
}

impl GitGate {
    /// Binds `addr`; mirrors go under `state`.
    pub async fn bind(addr: SocketAddr, state: &Path) -> Result<GitGate, ListenError> {
        Ok(GitGate {
            listener: crate::listen::bind_tcp("git-gate", addr).await?,
            state: state.to_path_buf(),
            git: Git::new(state),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        crate::listen::local_addr(&self.listener)
    }

    /// The gate's `git` spawner (its [`Git::spawned`] record is what tests
    /// read).
    pub fn git(&self) -> Git {
        self.git.clone()
    }

    /// Starts the relay and accepts connections until the sidecar shuts
    /// down. Without a relay the gate serves nothing (fail closed).
    pub async fn serve(self, shared: Arc<Shared>) {
        let relay = match Relay::start(shared.clone()).await {
            Ok(r) => r,
            Err(e) => {
                shared
                    .logger
                    .event("git-gate-failed", json!({"error": e.to_string()}));
                return;
            }
        };
        let gate = Gate {
            mirrors: Mirrors::new(&self.state, self.git.clone(), relay.clone()),
            shared: shared.clone(),
            git: self.git,
            relay,
            state: self.state,
        };
        crate::listen::accept_loop(
            self.listener,
            shared,
            "git-gate",
            OverCap::Http503,
            move |stream, client, shared| serve_connection(stream, client, shared, gate.clone()),
        )
        .await;
    }
}

async fn serve_connection(
    stream: ClientStream,
    client: SocketAddr,
    shared: Arc<Shared>,
    gate: Gate,
) {
    let handshake = shared.limits().handshake();
    let service = service_fn(move |req| {
        let gate = gate.clone();
        async move { Ok::<_, Infallible>(handle(req, client, &gate).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = conn => {
            if let Err(e) = result {
                if !(e.is_timeout() || e.is_incomplete_message() || e.is_canceled()) {
                    shared.logger.client_event(client, "connection-error", json!({"listener": "git-gate", "error": e.to_string()}));
                }
            }
        }
        () = shared.closing() => {}
    }
}

/// The two smart-HTTP services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    UploadPack,
    ReceivePack,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::UploadPack => "git-upload-pack",
            Service::ReceivePack => "git-receive-pack",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "git-upload-pack" => Some(Service::UploadPack),
            "git-receive-pack" => Some(Service::ReceivePack),
            _ => None,
        }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /<name>.git/info/refs?service=…`
    Advertise(String, Service),
    /// `POST /<name>.git/<service>`
    Rpc(String, Service),
}

/// Routes `method path?query`; `None` for anything the gate does not serve.
pub fn route(method: &Method, path: &str, query: Option<&str>) -> Option<Route> {
    let rest = path.strip_prefix('/')?;
    let (repo, tail) = rest.split_once('/')?;
    let name = repo.strip_suffix(".git")?.to_string();
    match (method, tail) {
        (&Method::GET, "info/refs") => {
            let service = query?
                .split('&')
                .find_map(|kv| kv.strip_prefix("service="))?;
            Some(Route::Advertise(name, Service::parse(service)?))
        }
        (&Method::POST, svc) if query.is_none_or(str::is_empty) => {
            Some(Route::Rpc(name, Service::parse(svc)?))
        }
        _ => None,
    }
}

async fn handle(req: Request<Incoming>, client: SocketAddr, gate: &Gate) -> Response<Body> {
    let policy = gate.shared.policy.current();
    let names: Vec<String> = policy
        .git
        .remotes
        .iter()
        .map(|r| format!("{}.git", r.name))
        .collect();
    let not_found = |what: &str| {
        relay::text(
            StatusCode::NOT_FOUND,
            &format!(
                "git-gate: {what}; this gate serves {} (clone http://<gate>/<name>.git)\n",
                if names.is_empty() {
                    "no remotes".to_string()
                } else {
                    names.join(", ")
                }
            ),
        )
    };
    let Some(route) = route(req.method(), req.uri().path(), req.uri().query()) else {
        return not_found("not a git smart-HTTP request");
    };
    let (Route::Advertise(name, _) | Route::Rpc(name, _)) = &route;
    let Some(remote) = policy.git.remote(name).cloned() else {
        return not_found(&format!("no remote named `{}`", clean(name)));
    };
    let started = Instant::now();
    match route {
        Route::Advertise(_, service) => {
            fetch::advertise(gate, &remote, service, req, client, started).await
        }
        Route::Rpc(_, Service::UploadPack) => {
            fetch::upload_pack(gate, &remote, req, client, started).await
        }
        Route::Rpc(_, Service::ReceivePack) => {
            push::receive_pack(gate, &remote, req, client, started).await
        }
    }
}

/// Logs `record` with its duration.
pub fn audit(gate: &Gate, client: SocketAddr, mut record: GitRecord, started: Instant) {
    record.duration_ms = crate::exchange::millis(started);
    gate.shared.logger.git(client, &record);
}

/// A whole-body response.
pub fn full(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(BodyExt::boxed_unsync(
        Full::new(Bytes::from(body)).map_err(|never| match never {}),
    ));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    resp
}

/// Client text with control characters replaced, for messages.
pub fn clean(s: &str) -> String {
    s.chars()
        .take(2000)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_only_smart_http() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(
            route(&get, "/app.git/info/refs", Some("service=git-upload-pack")),
            Some(Route::Advertise("app".into(), Service::UploadPack))
        );
        assert_eq!(
            route(&get, "/app.git/info/refs", Some("service=git-receive-pack")),
            Some(Route::Advertise("app".into(), Service::ReceivePack))
        );
        assert_eq!(
            route(&post, "/app.git/git-upload-pack", None),
            Some(Route::Rpc("app".into(), Service::UploadPack))
        );
        assert_eq!(
            route(&post, "/app.git/git-receive-pack", None),
            Some(Route::Rpc("app".into(), Service::ReceivePack))
        );
        for (m, p, q) in [
            (&get, "/app.git/info/refs", None),
            (
                &get,
                "/app.git/info/refs",
                Some("service=git-upload-archive"),
            ),
            (&get, "/app/info/refs", Some("service=git-upload-pack")),
            (&post, "/app.git/info/refs", None),
            (&get, "/app.git/git-upload-pack", None),
            (&post, "/app.git/git-upload-pack", Some("x=1")),
            (&get, "/app.git/HEAD", None),
            (&get, "/app.git/objects/info/packs", None),
            (&get, "/", None),
        ] {
            assert_eq!(route(m, p, q), None, "{m} {p} {q:?}");
        }
    }
}
