//! Which HTTP version a connection speaks, and serving either one.
//!
//! The agent chooses HTTP/2 or HTTP/1.1 by ALPN inside TLS, or by sending
//! the HTTP/2 connection preface in the clear ("prior knowledge", what gRPC's
//! plaintext channels do inside a CONNECT tunnel); the upstream side is
//! negotiated on its own ([`crate::intercept`]). Every HTTP/2 connection from
//! the agent is served with the limits of the policy that bound the known
//! HTTP/2 denial-of-service classes:
//!
//! - streams open at once (`limits.h2_max_streams`), more are refused;
//! - rapid reset (CVE-2023-44487): at most [`MAX_PENDING_RESETS`] streams the
//!   client opened and reset before they were served, and
//!   [`MAX_LOCAL_RESETS`] streams the sidecar had to reset for errors, before
//!   the connection is closed with `ENHANCE_YOUR_CALM`;
//! - HPACK bombs and CONTINUATION floods: the decoded header list of one
//!   request is bounded (`limits.h2_max_header_list_bytes`), and so are the
//!   frames that may carry it;
//! - flow-control windows (`limits.h2_stream_window_bytes`,
//!   `limits.h2_connection_window_bytes`) bound how much body the agent can
//!   send ahead of the upstream, and [`MAX_SEND_BUF`] how much of an answer
//!   waits per stream for an agent that does not read.
//!
//! Where HTTP/2 is not served — the explicit proxy port and the transparent
//! :80 listener, which route by `Host` per request — a client that opens
//! with the preface gets an HTTP/2 `GOAWAY` with `HTTP_1_1_REQUIRED` and a
//! readable reason ([`refuse_prior_knowledge`]), never a silent close. An
//! `Upgrade: h2c` request is refused inside tunnels (`upgrade-not-allowed`)
//! and stripped like any hop-by-hop header on the plain proxy path.

use crate::forward::ProxyBody;
use bottle_policy::Limits;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The HTTP/2 connection preface a client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Streams an agent may open and reset before the sidecar served them, at
/// once, before its connection is closed (rapid reset).
pub const MAX_PENDING_RESETS: usize = 20;
/// Streams the sidecar may reset for protocol errors on one connection
/// before closing it.
pub const MAX_LOCAL_RESETS: usize = 256;
/// Largest header list accepted from an upstream's HTTP/2 answer.
pub const UPSTREAM_MAX_HEADER_LIST: u32 = 256 << 10;
/// Bytes the sidecar buffers per HTTP/2 stream on its way out (to the agent,
/// or to an upstream), beyond what the peer's window already took: small,
/// so many streams do not multiply memory.
pub const MAX_SEND_BUF: usize = 64 << 10;

/// The HTTP version of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    H1,
    H2,
}

impl Wire {
    /// What an ALPN protocol name means (`None`: HTTP/1.1).
    pub fn from_alpn(alpn: Option<&[u8]>) -> Wire {
        if alpn == Some(crate::tls::H2) {
            Wire::H2
        } else {
            Wire::H1
        }
    }

    /// The version as the audit log writes it.
    pub fn name(self) -> &'static str {
        match self {
            Wire::H1 => "HTTP/1.1",
            Wire::H2 => "HTTP/2",
        }
    }
}

/// Does `prefix` open with (`Some(true)`), rule out (`Some(false)`), or
/// not yet decide (`None`) the HTTP/2 preface?
pub fn preface(prefix: &[u8]) -> Option<bool> {
    let n = prefix.len().min(PREFACE.len());
    if prefix[..n] != PREFACE[..n] {
        Some(false)
    } else if n == PREFACE.len() {
        Some(true)
    } else {
        None
    }
}

/// Reads until the first bytes show whether they are the HTTP/2 preface,
/// within `deadline`; returns the verdict and the bytes read (to replay).
/// A client that closes or stalls reads as "not the preface", leaving the
/// HTTP/1 server to time it out as before.
pub async fn read_preface<S: AsyncRead + Unpin>(io: &mut S, deadline: Duration) -> (bool, Vec<u8>) {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 64];
        loop {
            if let Some(verdict) = (!buf.is_empty()).then(|| preface(&buf)).flatten() {
                return verdict;
            }
            let want = PREFACE.len().saturating_sub(buf.len()).max(1);
            match io.read(&mut chunk[..want.min(64)]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let verdict = tokio::time::timeout(deadline, read).await.unwrap_or(false);
    (verdict, buf)
}

/// The frames that turn an HTTP/2 client away: an empty `SETTINGS` (the
/// server preface) and a `GOAWAY` with `HTTP_1_1_REQUIRED` whose debug data
/// is `why`.
pub fn goaway_http11_required(why: &str) -> Vec<u8> {
    let debug = why.as_bytes();
    let mut out = Vec::with_capacity(9 + 9 + 8 + debug.len());
    // SETTINGS, no parameters.
    out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    let len = u32::try_from(8 + debug.len()).unwrap_or(8).min(0xff_ffff);
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    // Last stream id 0, error HTTP_1_1_REQUIRED (0xd).
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0xd]);
    out.extend_from_slice(&debug[..(len as usize - 8)]);
    out
}

/// Answers a client that opened with the HTTP/2 preface where only
/// HTTP/1.1 is served, and closes.
pub async fn refuse_prior_knowledge<S: AsyncWrite + Unpin>(io: &mut S, why: &str) {
    let _ = io.write_all(&goaway_http11_required(why)).await;
    let _ = io.shutdown().await;
}

/// Serves `svc` on `io` as `wire` until either side closes, with the
/// policy's limits; HTTP/1 connections support upgrades (WebSocket).
pub async fn serve<I, S>(io: I, wire: Wire, limits: &Limits, svc: S) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = ProxyBody> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use crate::limits::Deadlines;
    match wire {
        Wire::H1 => {
            http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.handshake())
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades()
                .await
        }
        Wire::H2 => {
            server_h2(limits)
                .serve_connection(TokioIo::new(io), svc)
                .await
        }
    }
}

/// The HTTP/2 server settings for agent connections.
fn server_h2(limits: &Limits) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .max_header_list_size(limits.h2_max_header_list_bytes)
        .initial_stream_window_size(limits.h2_stream_window_bytes)
        .initial_connection_window_size(limits.h2_connection_window_bytes)
        .max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        .max_local_error_reset_streams(Some(MAX_LOCAL_RESETS))
        .max_send_buf_size(MAX_SEND_BUF);
    b
}

/// Opens an HTTP/2 client connection over `io` (already connected to a
/// checked address; TLS set up, or prior knowledge in the clear).
pub async fn client_h2<I, B>(
    io: I,
    limits: &Limits,
) -> Result<hyper::client::conn::http2::SendRequest<B>, hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(limits.h2_stream_window_bytes)
        .initial_connection_window_size(limits.h2_connection_window_bytes)
        .max_header_list_size(UPSTREAM_MAX_HEADER_LIST)
        .max_send_buf_size(MAX_SEND_BUF)
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_is_recognised_byte_by_byte() {
        assert_eq!(preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Some(true));
        assert_eq!(preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"), Some(true));
        assert_eq!(preface(b"PRI * HT"), None);
        assert_eq!(preface(b"GET / HTTP/1.1\r\n"), Some(false));
        assert_eq!(preface(b"PRI / HTTP/1.1\r\n"), Some(false));
    }

    #[tokio::test]
    async fn read_preface_stops_at_the_first_differing_byte() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(b"GET").await.unwrap();
        let (h2, bytes) = read_preface(&mut b, Duration::from_secs(5)).await;
        assert!(!h2);
        assert_eq!(bytes, b"GET");
        a.write_all(PREFACE).await.unwrap();
        let (h2, bytes) = read_preface(&mut b, Duration::from_secs(5)).await;
        assert!(h2);
        assert_eq!(bytes, PREFACE);
    }

    #[test]
    fn goaway_frames_are_well_formed() {
        let f = goaway_http11_required("use HTTP/1.1");
        assert_eq!(&f[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let len = u32::from_be_bytes([0, f[9], f[10], f[11]]) as usize;
        assert_eq!(len, 8 + "use HTTP/1.1".len());
        assert_eq!(f[12], 7, "GOAWAY");
        assert_eq!(&f[18..26], &[0, 0, 0, 0, 0, 0, 0, 0xd]);
        assert_eq!(&f[26..], b"use HTTP/1.1");
    }
}
