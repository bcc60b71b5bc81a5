//! `bottle-sidecar health`: is the proxy accepting connections?
//!
//! Used as the container's health check, so it only opens and closes a TCP
//! connection: it must not create log lines or depend on the policy.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Default address probed: the proxy on loopback.
pub const DEFAULT_HEALTH_ADDR: &str = "127.0.0.1:3128";
/// How long the probe waits for the connection.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the proxy is considered unhealthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("proxy at {addr} did not accept a connection within {}s", after.as_secs_f32())]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("proxy at {addr} refused the connection: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Succeeds when `addr` accepts a TCP connection within `timeout`.
pub async fn check(addr: SocketAddr, timeout: Duration) -> Result<(), HealthError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(source)) => Err(HealthError::Connect { addr, source }),
        Err(_) => Err(HealthError::Timeout {
            addr,
            after: timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listening_is_healthy_closed_is_not() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        check(addr, HEALTH_TIMEOUT).await.unwrap();
        drop(l);
        let err = check(addr, HEALTH_TIMEOUT).await.unwrap_err();
        assert!(matches!(err, HealthError::Connect { .. }), "{err}");
    }
}
