//! Binding and accept loops shared by the TCP listeners (proxy, transparent
//! HTTP and HTTPS, DNS over TCP).
//!
//! Every accepted connection takes a slot against `limits.max_connections`
//! and `limits.max_connections_per_client` ([`crate::limits`]) before any
//! task is spawned for it; over a cap it is refused at once, without a task:
//! HTTP listeners write a short 503 naming the limit, the others just close.
//! The refusal is logged through the per-client rate limit.

use crate::limits::{Deadlines, Guarded, Over};
use crate::shared::Shared;
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen for {listener} on {addr}: {source}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds a TCP listener for `listener` (a name for messages).
pub async fn bind_tcp(
    listener: &'static str,
    addr: SocketAddr,
) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Bind {
            listener,
            addr,
            source,
        })
}

/// The address a listener actually bound.
pub fn local_addr(listener: &TcpListener) -> SocketAddr {
    // A bound listener always has a local address; fall back to unspecified
    // rather than panic if the OS says otherwise.
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// A client connection as handlers get it: holding its connection slot and
/// closed after `limits.idle_timeout_secs` without traffic.
pub type ClientStream = Guarded<TcpStream>;

/// How a listener refuses a connection over a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverCap {
    /// Answer `503 Service Unavailable` naming the limit, then close.
    Http503,
    /// Close (TLS and DNS clients could not read a plain-text answer).
    Close,
}

/// The 503 an HTTP client gets over a connection cap.
pub fn over_cap_response(over: &Over) -> Vec<u8> {
    let body = format!(
        "bottle egress: connection refused: {over}\nhint: close idle connections or wait for some to finish, then retry; the limit is set in bottle.toml [limits] {}\n",
        over.key()
    );
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Accepts connections until the sidecar shuts down, running `handle` for
/// each on its own task once it has a connection slot.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shared: Arc<Shared>,
    name: &'static str,
    over_cap: OverCap,
    handle: F,
) where
    F: Fn(ClientStream, SocketAddr, Arc<Shared>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            () = shared.closing() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => {
                    let limits = shared.limits();
                    match shared.conns.acquire(client.ip(), &limits) {
                        Ok(permit) => {
                            let _ = stream.set_nodelay(true);
                            let stream = Guarded::new(stream, Some(permit), limits.idle());
                            tokio::spawn(handle(stream, client, shared.clone()));
                        }
                        Err(over) => refuse(stream, client, &shared, name, over_cap, over),
                    }
                }
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    shared.logger.event("accept-error", json!({"error": e.to_string()}));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Refuses a connection over a cap, without blocking the accept loop: the 503
/// fits an empty socket buffer, so one non-blocking write sends it.
fn refuse(
    stream: TcpStream,
    client: SocketAddr,
    shared: &Shared,
    name: &'static str,
    over_cap: OverCap,
    over: Over,
) {
    if over_cap == OverCap::Http503 {
        let _ = stream.try_write(&over_cap_response(&over));
    }
    shared.logger.client_event(
        client,
        "connection-refused",
        json!({"listener": name, "limit": over.key(), "max": over.max()}),
    );
    drop(stream);
}
