//! Forwarding one HTTP/1 request to an upstream the policy allowed.
//!
//! Owns what a forwarding hop must do to a message whatever brought it here
//! (the explicit proxy now, TLS interception and the transparent listener
//! later): drop `Proxy-*` and hop-by-hop headers, rewrite the target to origin
//! form, send it over a connection that was opened to the checked address,
//! and count body bytes in both directions for the audit log.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST};
use hyper::{Request, Response, Uri, Version};
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// The response body type every handler in this crate returns.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
/// `Proxy-Connection` and the other `Proxy-*` headers go by prefix.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, the headers `Connection` names, and every
/// `Proxy-*` header (`Proxy-Authorization` must never reach an origin).
pub fn strip_hop_headers(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

/// `uri`'s path and query alone (`/` when empty).
pub fn origin_form(uri: &Uri) -> Uri {
    uri.path_and_query()
        .map(|pq| pq.as_str())
        .filter(|pq| pq.starts_with('/'))
        .unwrap_or("/")
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"))
}

/// Builds the upstream request: origin-form target, HTTP/1.1, cleaned
/// headers, and `Host` set to `host_header` (the authority that was checked).
pub fn upstream_request<B>(req: Request<B>, host_header: HeaderValue) -> Request<B> {
    let (mut parts, body) = req.into_parts();
    parts.uri = origin_form(&parts.uri);
    parts.version = Version::HTTP_11;
    strip_hop_headers(&mut parts.headers);
    parts.headers.insert(HOST, host_header);
    Request::from_parts(parts, body)
}

/// Why forwarding failed after the upstream connection was open.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("HTTP handshake with the upstream failed: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("the upstream did not answer: {0}")]
    Send(#[source] hyper::Error),
}

/// Sends `req` over `stream` (already connected to the checked address) and
/// returns the response head with its body still streaming. Hop-by-hop
/// headers are removed from the response too.
pub async fn send<B>(stream: TcpStream, req: Request<B>) -> Result<Response<Incoming>, ForwardError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ForwardError::Handshake)?;
    // The connection task ends when the response body is done or dropped.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut resp = sender.send_request(req).await.map_err(ForwardError::Send)?;
    strip_hop_headers(resp.headers_mut());
    Ok(resp)
}

/// A byte counter shared between a body and whoever reports on it.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// Wraps a body, adding the length of every data frame to a [`Counter`], and
/// holding `G` (e.g. a log guard) until the body is finished or dropped.
#[derive(Debug)]
pub struct Metered<B, G = ()> {
    inner: B,
    counter: Counter,
    _guard: G,
}

impl<B> Metered<B, ()> {
    pub fn new(inner: B, counter: Counter) -> Self {
        Metered {
            inner,
            counter,
            _guard: (),
        }
    }
}

impl<B, G> Metered<B, G> {
    pub fn with_guard(inner: B, counter: Counter, guard: G) -> Self {
        Metered {
            inner,
            counter,
            _guard: guard,
        }
    }
}

impl<B, G> Body for Metered<B, G>
where
    B: Body<Data = Bytes> + Unpin,
    G: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.counter.add(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A complete short body.
pub fn full(body: impl Into<Bytes>) -> ProxyBody {
    http_body_util::Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_proxy_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("proxy-authorization", "Basic c2VjcmV0"),
            ("proxy-connection", "keep-alive"),
            ("proxy-x-anything", "1"),
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("upgrade", "websocket"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "yes"),
            ("authorization", "Bearer t"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_headers(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["authorization", "x-kept"]);
    }

    #[test]
    fn origin_form_keeps_path_and_query() {
        let u: Uri = "http://a.example:8080/x/y?q=1".parse().unwrap();
        assert_eq!(origin_form(&u), "/x/y?q=1");
        let u: Uri = "http://a.example".parse().unwrap();
        assert_eq!(origin_form(&u), "/");
    }

    #[tokio::test]
    async fn metered_counts_data_bytes() {
        let c = Counter::default();
        let body = Metered::new(
            http_body_util::Full::new(Bytes::from_static(b"hello")),
            c.clone(),
        );
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(out, "hello");
        assert_eq!(c.get(), 5);
    }
}
