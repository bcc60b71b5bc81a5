//! Enforcing the policy's [`Limits`] on client connections: the connection
//! caps (all listeners together, and per source IP) and the idle deadline.
//!
//! Every TCP connection a listener accepts must first take a [`Permit`] from
//! [`Conns`]; over a cap it is refused at once ([`crate::listen`] answers a
//! short 503 on HTTP listeners and just closes on the others). The permit
//! lives inside the connection's stream ([`Guarded`]), so it is returned when
//! the socket is closed, whoever holds it by then: a hyper connection, an
//! upgraded CONNECT tunnel, a TLS session or a WebSocket splice.
//!
//! [`Guarded`] also closes a connection on which no byte moved in either
//! direction for `idle_timeout_secs`: tunnels, WebSockets and kept-alive
//! connections alike.
//!
//! The caps are read from the current policy at each accept, so a reload
//! changes them at once (connections already open are not closed). Deadlines
//! are read when a connection starts and apply to new connections.

use bottle_policy::Limits;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Seconds as a [`Duration`] (limits are validated non-zero by the CLI; a
/// zero that slips through still means "at least a moment").
fn secs(n: u64) -> Duration {
    Duration::from_secs(n.max(1))
}

/// The deadlines of [`Limits`] as durations.
pub trait Deadlines {
    fn handshake(&self) -> Duration;
    fn idle(&self) -> Duration;
    fn body_gap(&self) -> Duration;
}

impl Deadlines for Limits {
    fn handshake(&self) -> Duration {
        secs(self.handshake_timeout_secs)
    }
    fn idle(&self) -> Duration {
        secs(self.idle_timeout_secs)
    }
    fn body_gap(&self) -> Duration {
        secs(self.body_timeout_secs)
    }
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Over {
    #[error("the sidecar already has {0} connections open (limits.max_connections)")]
    Total(u32),
    #[error("this client already has {0} connections open (limits.max_connections_per_client)")]
    PerClient(u32),
}

impl Over {
    /// The `limits` key that refused.
    pub fn key(&self) -> &'static str {
        match self {
            Over::Total(_) => "max_connections",
            Over::PerClient(_) => "max_connections_per_client",
        }
    }

    /// The cap's value.
    pub fn max(&self) -> u32 {
        match self {
            Over::Total(n) | Over::PerClient(n) => *n,
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    per_client: HashMap<IpAddr, u32>,
}

/// Open client connections, counted in total and per source IP.
#[derive(Debug, Default, Clone)]
pub struct Conns(Arc<Mutex<Counts>>);

impl Conns {
    /// Takes a slot for a connection from `ip`, or says which cap is full.
    pub fn acquire(&self, ip: IpAddr, limits: &Limits) -> Result<Permit, Over> {
        let mut counts = self.lock();
        if counts.total >= limits.max_connections {
            return Err(Over::Total(limits.max_connections));
        }
        let mine = counts.per_client.entry(ip).or_insert(0);
        if *mine >= limits.max_connections_per_client {
            return Err(Over::PerClient(limits.max_connections_per_client));
        }
        *mine += 1;
        counts.total += 1;
        Ok(Permit {
            conns: self.clone(),
            ip,
        })
    }

    /// Connections open now (total, from `ip`).
    pub fn open(&self, ip: IpAddr) -> (u32, u32) {
        let counts = self.lock();
        (
            counts.total,
            counts.per_client.get(&ip).copied().unwrap_or(0),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Only counters live behind this lock.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One connection's slot; returned on drop.
#[derive(Debug)]
pub struct Permit {
    conns: Conns,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.conns.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_client.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_client.remove(&self.ip);
            }
        }
    }
}

/// A client connection holding its [`Permit`], closed (with a `TimedOut`
/// error on the pending read) after `idle` with no byte in either direction.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    _permit: Option<Permit>,
    idle: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, permit: Option<Permit>, idle: Duration) -> Self {
        let last = Instant::now();
        Guarded {
            inner,
            _permit: permit,
            idle,
            last,
            timer: Box::pin(tokio::time::sleep_until(last + idle)),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// `Err` once the connection has been idle too long; otherwise arms the
    /// timer so the pending read is woken at the deadline.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let deadline = self.last + self.idle;
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no bytes in either direction for {}s (limits.idle_timeout_secs)",
                    self.idle.as_secs()
                ),
            ));
        }
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.last = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.check_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                this.last = Instant::now();
            }
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn caps_count_per_client_and_in_total_and_free_on_drop() {
        let conns = Conns::default();
        let limits = Limits {
            max_connections: 3,
            max_connections_per_client: 2,
            ..Limits::default()
        };
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let a1 = conns.acquire(a, &limits).unwrap();
        let _a2 = conns.acquire(a, &limits).unwrap();
        assert_eq!(conns.acquire(a, &limits).unwrap_err(), Over::PerClient(2));
        let _b1 = conns.acquire(b, &limits).unwrap();
        assert_eq!(conns.acquire(b, &limits).unwrap_err(), Over::Total(3));
        drop(a1);
        assert_eq!(conns.open(a), (2, 1));
        let _a3 = conns.acquire(a, &limits).unwrap();
    }

    #[tokio::test]
    async fn idle_connections_are_closed_and_traffic_keeps_them_open() {
        let (mut near, far) = tokio::io::duplex(64);
        let mut g = Guarded::new(far, None, Duration::from_millis(300));
        let mut buf = [0u8; 8];
        // Traffic every 100 ms for 600 ms: longer than the idle limit in
        // total, never idle that long.
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            near.write_all(b"x").await.unwrap();
            assert_eq!(g.read(&mut buf).await.unwrap(), 1);
        }
        let started = std::time::Instant::now();
        let err = g.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
