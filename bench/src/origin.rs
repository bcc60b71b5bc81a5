//! The origin every path ends at: an in-process HTTPS server on 127.0.0.1
//! (hyper + tokio-rustls) that answers every request with the same small body
//! and keeps connections alive. It speaks HTTP/2 to a client that asks for
//! `h2` by ALPN and HTTP/1.1 otherwise. It is deliberately cheap so the
//! numbers measure the path, not the server. It counts the connections it
//! accepts, which shows whether a proxy keeps its upstream connections alive,
//! and the requests it answered per HTTP version, which shows whether a proxy
//! really spoke HTTP/2 upstream or fell back to HTTP/1.1 (issue 14).
//!
//! The origins run on a tokio runtime of their own ([`OriginRuntime`]) whose
//! threads are all named [`ORIGIN_THREAD`], so the bench can read their CPU
//! time apart from the load generator's in `/proc/self/task/TID/stat`: on the
//! direct path that is what terminating TLS and answering costs per request,
//! the floor an intercepting proxy (a TLS server and a TLS client) can
//! approach (issue 15).

use crate::config::Http;
use anyhow::{ensure, Context as _};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use http_body_util::Full;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// The name of every thread of the origins' runtime (at most 15 bytes, the
/// length Linux keeps in `/proc/.../comm`).
pub const ORIGIN_THREAD: &str = "bench-origin";

/// The runtime the origins serve on, apart from the load generator's.
pub struct OriginRuntime {
    runtime: Option<Runtime>,
}

impl OriginRuntime {
    /// A multi-thread runtime with as many workers as usable cores, as the
    /// load generator's, its threads named [`ORIGIN_THREAD`].
    pub fn start() -> anyhow::Result<OriginRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name(ORIGIN_THREAD)
            .enable_all()
            .build()
            .context("cannot start the origin's runtime")?;
        Ok(OriginRuntime {
            runtime: Some(runtime),
        })
    }

    pub fn handle(&self) -> &Handle {
        self.runtime
            .as_ref()
            .expect("the runtime lives until drop")
            .handle()
    }
}

impl Drop for OriginRuntime {
    fn drop(&mut self) {
        // Dropped from inside the bench's own runtime, where a blocking
        // shutdown would panic; the origins' tasks are aborted either way.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// CPU time (user + system) of this process's threads named `name`, from
/// `/proc/self/task/TID/{comm,stat}`; a thread that exits between the two
/// reads is skipped.
pub fn threads_cpu(name: &str) -> anyhow::Result<Duration> {
    let mut total = Duration::ZERO;
    for task in std::fs::read_dir("/proc/self/task").context("reading /proc/self/task")? {
        let dir = task?.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(dir.join("stat")) {
            total += crate::proxy::stat_cpu(&stat)?;
        }
    }
    Ok(total)
}

/// A running origin; stops when dropped.
pub struct Origin {
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

/// What the origin has seen so far.
#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    h1_requests: AtomicU64,
    h2_requests: AtomicU64,
    /// Requests in any other version (HTTP/1.0, or HTTP/3 if hyper ever
    /// hands one over): never expected.
    other_requests: AtomicU64,
}

/// Requests the origin answered, by HTTP version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Versions {
    pub h1: u64,
    pub h2: u64,
    pub other: u64,
}

impl Versions {
    /// What was answered between `before` and `self`.
    pub fn since(self, before: Versions) -> Versions {
        Versions {
            h1: self.h1 - before.h1,
            h2: self.h2 - before.h2,
            other: self.other - before.other,
        }
    }
}

/// Fails unless the origin answered at least `answered` requests (what the
/// client got back; the origin may have answered a few more that the client
/// then gave up on) and every one of them in `http`'s version: an HTTP/2 row
/// whose proxy fell back to HTTP/1.1 upstream must not pass as HTTP/2.
pub fn check_versions(http: Http, seen: Versions, answered: u64) -> anyhow::Result<()> {
    let (right, wrong, label) = match http {
        Http::H1 => (seen.h1, seen.h2, "HTTP/2"),
        Http::H2 => (seen.h2, seen.h1, "HTTP/1.1"),
    };
    let want = match http {
        Http::H1 => "HTTP/1.1",
        Http::H2 => "HTTP/2",
    };
    ensure!(
        wrong == 0 && seen.other == 0,
        "the origin answered {wrong} {label} and {} other requests on a {want} path (and {right} in {want}): the path changed the HTTP version on the way; it is not measuring {want}",
        seen.other
    );
    ensure!(
        right >= answered,
        "the origin answered {right} {want} requests but the client got {answered} answers: something else answered"
    );
    Ok(())
}

impl Origin {
    /// TCP connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }

    /// Requests answered so far, by HTTP version.
    pub fn versions(&self) -> Versions {
        let c = &self.counters;
        Versions {
            h1: c.h1_requests.load(Ordering::Relaxed),
            h2: c.h2_requests.load(Ordering::Relaxed),
            other: c.other_requests.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds 127.0.0.1 on a free port and serves `body_bytes` bytes of `x` to
/// every request, on `runtime`'s threads. With `speaks_h2` false the origin
/// offers only `http/1.1` by ALPN, which the tests use to show a fallback is
/// caught.
pub fn start(
    runtime: &Handle,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    body_bytes: usize,
    speaks_h2: bool,
) -> anyhow::Result<Origin> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .context("origin TLS config")?;
    tls.alpn_protocols = if speaks_h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    // Bound here, registered with the origin's runtime in its task: a tokio
    // socket belongs to the runtime it was created on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let body = Bytes::from(vec![b'x'; body_bytes]);
    let counters = Arc::new(Counters::default());
    let counter = counters.clone();
    let task = runtime.spawn(async move {
        let Ok(listener) = TcpListener::from_std(listener) else {
            return;
        };
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(_) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            counter.accepted.fetch_add(1, Ordering::Relaxed);
            let counter = counter.clone();
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let version = match req.version() {
                        Version::HTTP_11 => &counter.h1_requests,
                        Version::HTTP_2 => &counter.h2_requests,
                        _ => &counter.other_requests,
                    };
                    version.fetch_add(1, Ordering::Relaxed);
                    let body = body.clone();
                    async move {
                        // An upload is read whole before the answer.
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "text/plain")
                                .body(Full::new(body))
                                .expect("static response is valid"),
                        )
                    }
                });
                let io = TokioIo::new(tls);
                let _ = if h2 {
                    // hyper's defaults (200 streams per connection) are above
                    // anything `--h2-streams` asks for.
                    http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await
                } else {
                    http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(io, service)
                        .await
                };
            });
        }
    });
    Ok(Origin {
        addr,
        counters,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(h1: u64, h2: u64, other: u64) -> Versions {
        Versions { h1, h2, other }
    }

    #[test]
    fn versions_must_match_the_path() {
        assert!(check_versions(Http::H2, v(0, 10, 0), 10).is_ok());
        assert!(
            check_versions(Http::H2, v(0, 11, 0), 10).is_ok(),
            "the origin may answer more"
        );
        assert!(check_versions(Http::H1, v(5, 0, 0), 5).is_ok());
        let err = |http, seen, answered| {
            format!("{:#}", check_versions(http, seen, answered).unwrap_err())
        };
        assert_eq!(
            err(Http::H2, v(1, 9, 0), 9),
            "the origin answered 1 HTTP/1.1 and 0 other requests on a HTTP/2 path (and 9 in HTTP/2): the path changed the HTTP version on the way; it is not measuring HTTP/2"
        );
        assert!(
            err(Http::H1, v(4, 1, 0), 4).starts_with("the origin answered 1 HTTP/2 and 0 other")
        );
        assert!(err(Http::H1, v(4, 0, 1), 4).contains("and 1 other requests"));
        assert_eq!(
            err(Http::H2, v(0, 3, 0), 4),
            "the origin answered 3 HTTP/2 requests but the client got 4 answers: something else answered"
        );
        assert_eq!(v(3, 9, 1).since(v(1, 4, 1)), v(2, 5, 0));
    }

    #[test]
    fn threads_cpu_counts_only_threads_of_that_name() {
        let spin = |ms: u64| {
            let until = std::time::Instant::now() + Duration::from_millis(ms);
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
        };
        let busy = std::thread::Builder::new()
            .name("bench-test-spin".into())
            .spawn(move || {
                spin(300);
                // Still alive when read: a thread that exited is not listed.
                std::thread::sleep(Duration::from_millis(500));
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(350));
        let cpu = threads_cpu("bench-test-spin").unwrap();
        assert!(
            cpu >= Duration::from_millis(150) && cpu <= Duration::from_millis(450),
            "300 ms of spinning read as {cpu:?}"
        );
        assert_eq!(threads_cpu("no-such-thread").unwrap(), Duration::ZERO);
        busy.join().unwrap();
    }
}
