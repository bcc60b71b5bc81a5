//! `bottle-sidecar health`: is the proxy accepting connections?
//!
//! Used as the container's health check, so it only opens and closes a TCP
//! connection: it must not create log lines or depend on the policy.
//!
//! The proxy listens on the sidecar's internal address only (never on
//! loopback or 0.0.0.0), which `health` cannot know from its (empty) command
//! line; so `run` writes the address it bound to [`DEFAULT_HEALTH_FILE`] (on
//! the container's /tmp tmpfs; the root filesystem is read-only) and `health`
//! reads it back. `health --addr` probes a given address instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpStream;

/// Where `run` records the proxy's bound address and `health` reads it.
pub const DEFAULT_HEALTH_FILE: &str = "/tmp/bottle-sidecar.proxy-addr";
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
    #[error("cannot read the proxy's address from {path} (written by `bottle-sidecar run` once it listens; is it running, with the proxy on?): {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not hold an ip:port: {text:?}")]
    BadFile { path: PathBuf, text: String },
    #[error("cannot record the proxy's address in {path}: {source}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Records `addr` in `path` (written aside, then renamed: a concurrent
/// `health` never reads half an address).
pub fn write_addr(path: &Path, addr: SocketAddr) -> Result<(), HealthError> {
    let err = |source| HealthError::WriteFile {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{addr}\n")).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Reads the address [`write_addr`] recorded.
pub fn read_addr(path: &Path) -> Result<SocketAddr, HealthError> {
    let text = std::fs::read_to_string(path).map_err(|source| HealthError::ReadFile {
        path: path.into(),
        source,
    })?;
    text.trim().parse().map_err(|_| HealthError::BadFile {
        path: path.into(),
        text: text.trim().chars().take(64).collect(),
    })
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

    #[test]
    fn the_address_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("health-addr");
        let addr: SocketAddr = "10.99.0.2:3128".parse().unwrap();
        write_addr(&path, addr).unwrap();
        assert_eq!(read_addr(&path).unwrap(), addr);
        std::fs::write(&path, "nonsense").unwrap();
        assert!(matches!(read_addr(&path), Err(HealthError::BadFile { .. })));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            read_addr(&path),
            Err(HealthError::ReadFile { .. })
        ));
    }
}
