//! Forwarding one HTTP/1 request to an upstream the policy allowed.
//!
//! Owns what a forwarding hop must do to a message whatever brought it here
//! (the explicit proxy, TLS interception, the transparent listeners): check
//! that `Host` names the destination that was decided, drop `Proxy-*` and
//! hop-by-hop headers, rewrite the target to origin form, send it over a
//! connection that was opened to the checked address, and count body bytes in
//! both directions for the audit log.

use crate::io::Counter;
use bottle_policy::normalize_host;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, COOKIE, HOST, TE};
use hyper::http::uri::Authority;
use hyper::{Request, Response, Uri, Version};
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};

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
/// A `TE: trailers` the client sent is kept (gRPC needs it on HTTP/2);
/// [`to_h1`] drops it again for an HTTP/1.1 upstream.
pub fn upstream_request<B>(req: Request<B>, host_header: HeaderValue) -> Request<B> {
    let (mut parts, body) = req.into_parts();
    parts.uri = origin_form(&parts.uri);
    parts.version = Version::HTTP_11;
    // Nothing of the agent's connection (hyper's upgrade handle, an HTTP/2
    // `:protocol`) travels upstream.
    parts.extensions = hyper::http::Extensions::new();
    let trailers = parts
        .headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    strip_hop_headers(&mut parts.headers);
    if trailers {
        parts
            .headers
            .insert(TE, HeaderValue::from_static("trailers"));
    }
    parts.headers.insert(HOST, host_header);
    Request::from_parts(parts, body)
}

/// An [`upstream_request`] as sent on an HTTP/2 connection: the checked
/// `Host` becomes the `:authority` of an absolute URL with `scheme`, and no
/// `Host` header is sent.
pub fn to_h2<B>(req: Request<B>, scheme: &str) -> Result<Request<B>, ForwardError> {
    let (mut parts, body) = req.into_parts();
    let authority = parts
        .headers
        .remove(HOST)
        .and_then(|h| h.to_str().ok().map(str::to_string))
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    parts.uri = Uri::builder()
        .scheme(scheme)
        .authority(authority.as_str())
        .path_and_query(path)
        .build()
        .map_err(|_| ForwardError::Authority(authority))?;
    parts.version = Version::HTTP_2;
    Ok(Request::from_parts(parts, body))
}

/// An [`upstream_request`] as sent on an HTTP/1.1 connection: no `TE`, and
/// the `Cookie` fields an HTTP/2 client may split joined into one
/// (RFC 9113 §8.2.3).
pub fn to_h1<B>(req: Request<B>) -> Request<B> {
    let (mut parts, body) = req.into_parts();
    parts.headers.remove(TE);
    let cookies: Vec<HeaderValue> = parts.headers.get_all(COOKIE).iter().cloned().collect();
    if cookies.len() > 1 {
        let joined: Vec<&[u8]> = cookies.iter().map(HeaderValue::as_bytes).collect();
        if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
            parts.headers.insert(COOKIE, v);
        }
    }
    Request::from_parts(parts, body)
}

/// Why forwarding failed after the upstream connection was open.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("HTTP handshake with the upstream failed: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("the upstream did not answer: {0}")]
    Send(#[source] hyper::Error),
    #[error("{0:?} cannot be the authority of an HTTP/2 request")]
    Authority(String),
}

/// Opens an HTTP/1 client connection over `io` (already connected to the
/// checked address, TLS already set up when there is any). The connection
/// task runs until the sender is dropped and the last body is done; it
/// supports upgrades (WebSocket).
pub async fn client<I, B>(io: I) -> Result<hyper::client::conn::http1::SendRequest<B>, ForwardError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(ForwardError::Handshake)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// Sends `req` over `io` on a new connection and returns the response head,
/// as received, with its body still streaming. Its hop-by-hop headers are
/// removed by [`crate::exchange::Exchange::forwarded`], after it checked them.
pub async fn send<I, B>(io: I, req: Request<B>) -> Result<Response<Incoming>, ForwardError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut sender = client(io).await?;
    sender.send_request(req).await.map_err(ForwardError::Send)
}

/// `host[:port]` as a `Host` header for the destination that was checked;
/// the port is left out when it is `default_port`.
pub fn host_header(host: &str, port: u16, default_port: u16) -> Option<HeaderValue> {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let text = if port == default_port {
        host
    } else {
        format!("{host}:{port}")
    };
    HeaderValue::from_str(&text).ok()
}

/// `Some(reason)` when the request's `Host` header is missing (and
/// `required`), repeated, malformed, or names another destination than
/// `host:port`; a `Host` without a port means `default_port`. The reason never
/// quotes the header.
pub fn host_header_mismatch(
    headers: &HeaderMap,
    host: &str,
    port: u16,
    default_port: u16,
    required: bool,
) -> Option<String> {
    let target = host_port(host, port);
    let mut values = headers.get_all(HOST).iter();
    let Some(first) = values.next() else {
        return required.then(|| format!("the request has no Host header; it must name {target}"));
    };
    if values.next().is_some() {
        return Some("the request carries more than one Host header".into());
    }
    let parsed = first
        .to_str()
        .ok()
        .and_then(|s| s.parse::<Authority>().ok())
        .filter(|a| !a.as_str().contains('@'));
    let Some(auth) = parsed else {
        return Some(format!(
            "the Host header is not a valid host[:port]; the destination is {target}"
        ));
    };
    if same_host(auth.host(), host) && auth.port_u16().unwrap_or(default_port) == port {
        None
    } else {
        Some(format!(
            "the Host header names a different destination than {target}, the one the policy checked"
        ))
    }
}

/// The refusal for a request carrying a method-override header
/// ([`bottle_policy::METHOD_OVERRIDE_HEADERS`]) or query parameter
/// ([`bottle_policy::method_override_param`], `_method`) to a host whose rules
/// restrict methods; `None` when there is no such header or parameter, or no
/// such rule. A `_method` in a form body is not looked for (bodies are
/// streamed unparsed; see the policy crate).
pub fn method_override(
    policy: &bottle_policy::EgressPolicy,
    host: &str,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Option<bottle_policy::Decision> {
    let header = headers.keys().find(|k| {
        bottle_policy::METHOD_OVERRIDE_HEADERS
            .iter()
            .any(|h| k.as_str().eq_ignore_ascii_case(h))
    });
    if let Some(header) = header {
        return policy.decide_method_override(host, header.as_str());
    }
    let param = bottle_policy::method_override_param(query?)?;
    policy.decide_method_override(host, &format!("the query parameter `{param}`"))
}

/// The refusal for a request whose `Content-Type` or `Accept` names a DNS
/// media type (DNS-over-HTTPS) to a host not allowed exactly
/// ([`bottle_policy::resolver`]); `None` when it may go.
pub fn encrypted_dns(
    policy: &bottle_policy::EgressPolicy,
    host: &str,
    port: u16,
    headers: &HeaderMap,
) -> Option<bottle_policy::Decision> {
    for name in [hyper::header::CONTENT_TYPE, hyper::header::ACCEPT] {
        let hit = headers
            .get_all(&name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .find(|v| bottle_policy::is_dns_media_type(v));
        if let Some(value) = hit {
            return policy.encrypted_dns_request(host, port, &format!("{name}: {value}"));
        }
    }
    None
}

/// The hint for a method-override refusal.
pub const METHOD_OVERRIDE_HINT: &str = "send the real method (e.g. DELETE) without a method-override header or `_method` parameter; the egress.rule for this host lists the methods it accepts";

/// `host:port`, with brackets around an IPv6 address.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Do two hosts name the same destination once normalised?
pub fn same_host(a: &str, b: &str) -> bool {
    match (normalize_host(a), normalize_host(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
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
    fn requests_take_the_shape_of_the_upstream_version() {
        let req = Request::builder()
            .uri("https://a.example/x?q=1")
            .header("te", "trailers, deflate")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("connection", "te")
            .body(())
            .unwrap();
        let req = upstream_request(req, HeaderValue::from_static("a.example:8443"));
        assert_eq!(req.headers()["te"], "trailers");
        let h2 = to_h2(req, "https").unwrap();
        assert_eq!(h2.uri(), "https://a.example:8443/x?q=1");
        assert_eq!(h2.version(), Version::HTTP_2);
        assert!(h2.headers().get("host").is_none());
        assert_eq!(h2.headers()["te"], "trailers");
        let req = Request::builder()
            .uri("/x")
            .header("te", "trailers")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .unwrap();
        let h1 = to_h1(upstream_request(req, HeaderValue::from_static("a.example")));
        assert!(h1.headers().get("te").is_none());
        assert_eq!(h1.headers()["cookie"], "a=1; b=2");
        assert_eq!(h1.headers()["host"], "a.example");
        assert_eq!(h1.uri(), "/x");
    }

    #[test]
    fn origin_form_keeps_path_and_query() {
        let u: Uri = "http://a.example:8080/x/y?q=1".parse().unwrap();
        assert_eq!(origin_form(&u), "/x/y?q=1");
        let u: Uri = "http://a.example".parse().unwrap();
        assert_eq!(origin_form(&u), "/");
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn host_header_must_match_the_destination() {
        assert_eq!(
            host_header_mismatch(&headers(&[]), "a.example", 80, 80, false),
            None
        );
        assert!(host_header_mismatch(&headers(&[]), "a.example", 443, 443, true).is_some());
        for ok in ["a.example", "A.Example.", "a.example:80"] {
            let h = headers(&[("host", ok)]);
            assert_eq!(
                host_header_mismatch(&h, "a.example", 80, 80, true),
                None,
                "{ok}"
            );
        }
        let h = headers(&[("host", "127.0.0.1:8080")]);
        assert_eq!(host_header_mismatch(&h, "127.0.0.1", 8080, 80, true), None);
        for bad in ["b.example", "a.example:81", "x@a.example", "a example"] {
            let h = headers(&[("host", bad)]);
            assert!(
                host_header_mismatch(&h, "a.example", 80, 80, true).is_some(),
                "{bad}"
            );
        }
        // Inside TLS, a Host without a port means 443.
        let h = headers(&[("host", "a.example")]);
        assert!(host_header_mismatch(&h, "a.example", 8443, 443, true).is_some());
        let h = headers(&[("host", "a.example"), ("host", "a.example")]);
        assert!(host_header_mismatch(&h, "a.example", 80, 80, true).is_some());
        let h = headers(&[("host", "[::1]:8080")]);
        assert_eq!(host_header_mismatch(&h, "::1", 8080, 80, true), None);
    }

    #[test]
    fn host_header_values() {
        assert_eq!(host_header("a.example", 443, 443).unwrap(), "a.example");
        assert_eq!(
            host_header("a.example", 8443, 443).unwrap(),
            "a.example:8443"
        );
        assert_eq!(host_header("fd00::1", 8080, 80).unwrap(), "[fd00::1]:8080");
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
