//! Keeping injected credentials from coming back to the agent.
//!
//! An origin that echoes request headers (httpbin-style, a debug endpoint, an
//! error page quoting the request) would hand the real value the sidecar
//! injected straight back to the agent. So every forwarded response is
//! filtered for the value of every credential the sidecar holds:
//!
//! - response headers (and trailers): each occurrence is replaced by a marker
//!   of the same length ([`marker`], `BOTTLE-REDACTED` cut or padded with
//!   `*`), so the header stays valid;
//! - the body, streaming ([`RedactBody`]): never buffered whole; after each
//!   chunk only the tail that could still be the start of a value (at most
//!   the longest value's length minus one) is held back, so a value split
//!   across reads or chunks is still caught, and same-length replacement
//!   keeps `Content-Length` valid.
//!
//! Compression could carry a value past this filter, so a request that carries
//! an injected credential is sent upstream with `accept-encoding: identity`
//! ([`crate::secrets::apply`]), and an encoded response to such a request is
//! refused (502, rule `credential-encoded-response`) rather than decoded:
//! decoding every encoding an origin might use (gzip, br, zstd, nested) would
//! be a larger attack surface than refusing the origins that ignore
//! `identity`. Responses to requests without an injected credential are
//! filtered the same way when not encoded; the value was never sent on them.
//!
//! The same goes for the other ways a response could get past the filter
//! ([`crate::exchange::unfilterable`], checked on the head as received,
//! before hop-by-hop stripping): a transfer coding other than `chunked` is
//! always refused (`unsupported-transfer-coding`); with an injected
//! credential, a `Connection` option naming `transfer-encoding` or a
//! `content-*` header (`credential-hidden-header`), and a partial answer,
//! `206` or `Content-Range` (`credential-partial-response`: pieces are
//! searched one by one; such requests go upstream without `Range` and
//! `If-Range`). The upstream's reason phrase is never forwarded: the agent
//! gets the standard one for the status.
//!
//! What was redacted is logged as a `credential-redacted` audit event with
//! the credential's name, never its value. WebSocket frames after a `101`
//! are not filtered.

use crate::secrets::Secrets;
use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderMap, HeaderValue};
use memchr::memmem;
use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// What a redacted value is replaced by (cut or padded to its length).
pub const MARKER: &str = "BOTTLE-REDACTED";

/// [`MARKER`] cut or padded with `*` to exactly `len` bytes.
pub fn marker(len: usize) -> Vec<u8> {
    let mut m: Vec<u8> = MARKER.bytes().take(len).collect();
    m.resize(len, b'*');
    m
}

/// The values to redact, by credential name. Cheap to clone.
#[derive(Clone, Default)]
pub struct Needles(Arc<Vec<(String, Vec<u8>)>>);

impl std::fmt::Debug for Needles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Needles")
            .field("count", &self.0.len())
            .finish()
    }
}

impl Needles {
    pub fn new(secrets: &Secrets) -> Self {
        let mut v: Vec<(String, Vec<u8>)> = secrets
            .values()
            .filter(|(_, value)| !value.is_empty())
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect();
        // Longest first, so a value that contains another is replaced whole.
        v.sort_by_key(|(_, value)| std::cmp::Reverse(value.len()));
        Needles(Arc::new(v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn longest(&self) -> usize {
        self.0.first().map(|(_, v)| v.len()).unwrap_or(0)
    }

    /// Replaces every value in `buf`, adding the names found to `hits`.
    pub fn redact(&self, buf: &mut [u8], hits: &mut BTreeSet<String>) {
        for (name, value) in self.0.iter() {
            let finder = memmem::Finder::new(value);
            let mut from = 0;
            while let Some(at) = finder.find(&buf[from..]) {
                let start = from + at;
                buf[start..start + value.len()].copy_from_slice(&marker(value.len()));
                hits.insert(name.clone());
                from = start + value.len();
            }
        }
    }

    /// How many bytes at the end of `buf` could be the start of a value (and
    /// so must wait for the next chunk).
    fn pending(&self, buf: &[u8]) -> usize {
        let most = self.longest().saturating_sub(1).min(buf.len());
        (1..=most)
            .rev()
            .find(|&k| {
                let tail = &buf[buf.len() - k..];
                self.0.iter().any(|(_, v)| v.starts_with(tail))
            })
            .unwrap_or(0)
    }

    /// Redacts header values in place.
    pub fn redact_headers(&self, headers: &mut HeaderMap, hits: &mut BTreeSet<String>) {
        if self.is_empty() {
            return;
        }
        for value in headers.values_mut() {
            let mut bytes = value.as_bytes().to_vec();
            let before = hits.len();
            let mut found = BTreeSet::new();
            self.redact(&mut bytes, &mut found);
            if found.is_empty() {
                continue;
            }
            hits.extend(found);
            debug_assert!(hits.len() >= before);
            // The marker is visible ASCII, so the value stays valid; if not,
            // drop it rather than pass the original.
            *value = HeaderValue::from_bytes(&bytes)
                .unwrap_or_else(|_| HeaderValue::from_static("BOTTLE-REDACTED"));
        }
    }
}

/// The names of the credentials redacted from one response so far.
#[derive(Debug, Clone, Default)]
pub struct Hits(Arc<Mutex<BTreeSet<String>>>);

impl Hits {
    pub fn add(&self, names: BTreeSet<String>) {
        if !names.is_empty() {
            self.lock().extend(names);
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A response body with every credential value replaced, streaming.
#[derive(Debug)]
pub struct RedactBody<B> {
    inner: B,
    needles: Needles,
    hits: Hits,
    /// Bytes held back because they could start a value.
    held: BytesMut,
    /// Trailers that arrived while bytes were held.
    trailers: Option<HeaderMap>,
    done: bool,
}

impl<B> RedactBody<B> {
    pub fn new(inner: B, needles: Needles, hits: Hits) -> Self {
        RedactBody {
            inner,
            needles,
            hits,
            held: BytesMut::new(),
            trailers: None,
            done: false,
        }
    }
}

impl<B> Body for RedactBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                if !this.held.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(this.held.split().freeze()))));
                }
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    continue;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let mut hits = BTreeSet::new();
            let frame = match frame.into_data() {
                Ok(data) => {
                    if this.needles.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    this.held.extend_from_slice(&data);
                    this.needles.redact(&mut this.held, &mut hits);
                    this.hits.add(hits);
                    let keep = this.needles.pending(&this.held);
                    let ready = this.held.len() - keep;
                    if ready == 0 {
                        continue;
                    }
                    Frame::data(this.held.split_to(ready).freeze())
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(mut trailers) => {
                        this.needles.redact_headers(&mut trailers, &mut hits);
                        this.hits.add(hits);
                        this.trailers = Some(trailers);
                        this.done = true;
                        continue;
                    }
                    Err(_) => continue,
                },
            };
            return Poll::Ready(Some(Ok(frame)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.held.is_empty() && self.trailers.is_none()
            || (self.inner.is_end_stream() && self.held.is_empty() && self.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let held = self.held.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::Secret;
    use http_body_util::BodyExt;

    const VALUE: &str = "sk-real-secret-value-123";

    fn needles() -> Needles {
        Needles::new(&Secrets::new([
            ("A".to_string(), Secret::new(VALUE, "placeholder-a")),
            ("B".to_string(), Secret::new("xy", "placeholder-b")),
        ]))
    }

    #[test]
    fn markers_keep_the_length() {
        assert_eq!(marker(4), b"BOTT");
        assert_eq!(marker(18), b"BOTTLE-REDACTED***");
    }

    #[tokio::test]
    async fn values_split_across_chunks_are_caught_and_lengths_kept() {
        let body = format!("a{VALUE}b {}{} xy end x", &VALUE[..5], &VALUE[5..]);
        // Every split point of the body, as two chunks and as bytes one by one.
        for split in 0..body.len() {
            let chunks = Chunks(
                [&body[..split], &body[split..]]
                    .iter()
                    .map(|c| Bytes::from(c.to_string()))
                    .collect(),
            );
            let hits = Hits::default();
            let out = RedactBody::new(chunks, needles(), hits.clone())
                .collect()
                .await
                .unwrap()
                .to_bytes();
            let out = String::from_utf8(out.to_vec()).unwrap();
            assert!(!out.contains(VALUE), "split {split}: {out}");
            assert_eq!(out.len(), body.len(), "split {split}");
            assert!(
                out.ends_with("end x"),
                "trailing partial match is flushed: {out}"
            );
            assert_eq!(hits.names(), ["A", "B"]);
        }
    }

    #[test]
    fn headers_are_redacted_in_place() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-echo",
            HeaderValue::from_str(&format!("k={VALUE}")).unwrap(),
        );
        h.insert("x-other", HeaderValue::from_static("fine"));
        let mut hits = BTreeSet::new();
        needles().redact_headers(&mut h, &mut hits);
        assert_eq!(h["x-echo"], "k=BOTTLE-REDACTED*********");
        assert_eq!(h["x-other"], "fine");
        assert_eq!(hits.into_iter().collect::<Vec<_>>(), ["A"]);
    }

    /// A body that yields the given chunks, one per poll.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }
}
