//! Binding and accept loops shared by the TCP listeners (proxy, transparent
//! HTTP and HTTPS, DNS over TCP).

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

/// Accepts connections until the sidecar shuts down, running `handle` for
/// each on its own task.
pub async fn accept_loop<F, Fut>(listener: TcpListener, shared: Arc<Shared>, handle: F)
where
    F: Fn(TcpStream, SocketAddr, Arc<Shared>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            () = shared.closing() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(handle(stream, client, shared.clone()));
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
