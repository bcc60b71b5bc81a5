//! Outbound DLP: every intercepted request is searched for secrets before it
//! leaves, and each hit is acted on by the policy's `[dlp]` section
//! ([`bottle_policy::DlpPolicy`]).
//!
//! What is searched:
//! - the request target (path and query) and every header value except the
//!   ones the sidecar itself sets for this host (the injected credential's
//!   header: putting the value there is the point) — [`check_head`];
//! - the body, as it streams ([`DlpBody`]): gzip, deflate and br bodies are
//!   decoded for the search (the bytes sent on are the agent's, unchanged);
//!   any other `Content-Encoding` is refused, since it cannot be searched.
//!
//! Each place is searched as sent, URL-decoded (`%XX`, when a `%` is there)
//! and JSON-unescaped (when a `\u` or `\/` escape is there: the detectors
//! read through the other escapes, `\n`, `\"`, …, as sent, so a model
//! request is searched once, without a copy), with the
//! pattern detectors of [`crate::scan`] and, for the bottle's own secrets
//! (its credentials and `dlp.values_from_env`), each value as written, in
//! base64 (standard and URL-safe, at each of the three alignments) and in hex
//! ([`Engine`]). A hit is named by its detector and place, never its text.
//!
//! Actions: `block` answers 403 naming the detector and the place; `redact`
//! replaces the matched bytes with a marker of the same length (so
//! `Content-Length` holds) — a hit in a compressed body cannot be replaced
//! and is blocked instead, and a hit whose start already went out (the body
//! paused mid-value, below) is replaced from there on; `ask` files a
//! supervise proposal and holds the request until it is decided (refused
//! where supervise is off); `log` writes a `dlp` audit line (at most
//! [`MAX_LINES`] per request; a path holding a hit is logged replaced).
//!
//! The origin never receives a blocked value: up to [`PRIME_BYTES`] of a
//! body is read and searched before the request is sent at all (a blocked
//! request then never reaches the origin), and past that, bytes that could
//! be the start of a secret (a trailing run of token characters, or a prefix
//! of an exact value of any length) are held back until the next piece
//! decides them. A body is searched once [`SEARCH_MIN`] new bytes built up,
//! when it pauses, and at its end — which is taken from the piece that
//! completes a body of known length, so its tail is searched (and a decoder
//! finished) before it goes. The one exception is a body that stops
//! arriving mid-token for [`IDLE_FLUSH`] (a streaming client waiting for an
//! answer): the held bytes are then sent, and a secret they start is
//! blocked when it completes, so the origin sees at most its beginning.
//! Compressed input is decoded [`DECODE_PIECE`] bytes at a time and searched
//! in slices of at most [`SEARCH_SLICE`], so a decompression bomb costs
//! bounded memory per step and stops at `max_body`.
//!
//! This stops accidents and prompt-injected leaks in the usual shapes and
//! simple encodings; an agent that encrypts or splits a secret across
//! requests defeats any content filter. The allow-list remains the boundary.

use crate::body::{AgentBody, AgentBodyError, BodyFailure, Watch};
use crate::redact::marker;
use crate::scan;
use crate::secrets::Secrets;
use crate::shared::Shared;
use aho_corasick::AhoCorasick;
use base64::Engine as _;
use bottle_policy::{Detector, DlpAction, DlpActions, Oversize};
use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderName, HeaderValue, CONTENT_ENCODING, HOST};
use serde_json::json;
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// Bytes of a body read and searched before the request goes upstream.
pub const PRIME_BYTES: usize = 256 * 1024;
/// Bytes of the previous piece searched again with the next one, so a
/// secret split across pieces is still found whole (at least the longest
/// exact value's longest form).
pub const CARRY: usize = 1024;
/// New bytes that build up before a search (a body in many tiny pieces is
/// searched once per [`SEARCH_MIN`], or when it pauses, not per piece).
pub const SEARCH_MIN: usize = 16 * 1024;
/// Most new bytes one search covers.
pub const SEARCH_SLICE: usize = 64 * 1024;
/// Compressed input fed to a decoder at once (deflate expands at most
/// about 1032:1, so one write yields well under a megabyte).
pub const DECODE_PIECE: usize = 512;
/// Most bytes held back because they could start a secret.
pub const HOLD_MAX: usize = 2048;
/// Longest private key block `redact` waits for before refusing.
pub const KEY_MAX: u64 = 16 * 1024;
/// How long held bytes wait for the rest of the body before they are sent.
pub const IDLE_FLUSH: Duration = Duration::from_millis(100);
/// Shortest exact value searched for (shorter ones match ordinary text).
pub const MIN_EXACT_LEN: usize = scan::MIN_EXACT_LEN;

/// A search by the pattern detectors ([`scan::pattern_hits`]).
type PatternSearch = fn(&[u8], &mut Vec<(Detector, usize, usize)>);

/// How a value was written where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// As sent.
    Raw,
    /// After `%XX` decoding.
    UrlEncoded,
    /// After JSON string unescaping.
    JsonEscaped,
}

/// One hit: the detector, the bytes it covers (in the searched buffer as
/// sent), and how the value was written. Never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub detector: Detector,
    pub start: usize,
    pub end: usize,
    pub view: View,
    /// `base64`, `hex` or `plain` for exact values; `plain` otherwise.
    pub encoding: &'static str,
    /// The variable name of an exact value (`ANTHROPIC_API_KEY`), never
    /// the value.
    pub credential: Option<Arc<str>>,
}

impl Finding {
    /// `base64, URL-encoded` and the like; empty for a plain value.
    pub fn how(&self) -> String {
        let mut parts = Vec::new();
        if self.encoding != "plain" {
            parts.push(self.encoding);
        }
        match self.view {
            View::Raw => {}
            View::UrlEncoded => parts.push("URL-encoded"),
            View::JsonEscaped => parts.push("JSON-escaped"),
        }
        parts.join(", ")
    }
}

/// The exact values to search for, with their encodings, and the pattern
/// detectors. Built once per secrets file ([`Engines`]).
pub struct Engine {
    exact: Option<AhoCorasick>,
    /// Per exact pattern: detector, variable name, encoding.
    meta: Vec<(Detector, Arc<str>, &'static str)>,
    /// Every exact pattern, for the "could this tail start one" check.
    needles: Vec<Vec<u8>>,
    longest: usize,
    /// Some exact value holds a character JSON escapes (a backslash, a
    /// quote, a control character): bodies with escapes are then searched
    /// both as sent and unescaped.
    escapable: bool,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("exact_patterns", &self.meta.len())
            .finish()
    }
}

/// `value` as base64 (standard and URL-safe) at each alignment, and as hex:
/// only the characters that depend on `value` alone, so the value is found
/// wherever it sits in a larger encoded blob.
pub fn encodings(value: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let mut out = Vec::new();
    let n = value.len();
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for k in 0..3usize {
            let mut buf = vec![0u8; k];
            buf.extend_from_slice(value);
            let text = engine.encode(&buf);
            // Character i carries bits 6i..6i+6 of the input: keep those
            // entirely inside the value's bits.
            let first = (8 * k).div_ceil(6);
            let last = (8 * (k + n)) / 6;
            if last > first {
                let needle = text.as_bytes()[first..last].to_vec();
                if !out.iter().any(|(_, v)| *v == needle) {
                    out.push(("base64", needle));
                }
            }
        }
    }
    let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
    out.push(("hex", hex.clone().into_bytes()));
    out.push(("hex", hex.to_ascii_uppercase().into_bytes()));
    out
}

impl Engine {
    /// The bottle's credentials (`bottle-credential`) and listed values
    /// (`listed-value`) of `secrets`, each with its encodings.
    pub fn new(secrets: &Secrets) -> Engine {
        let mut meta = Vec::new();
        let mut needles: Vec<Vec<u8>> = Vec::new();
        let values = secrets
            .values()
            .map(|(n, v)| (Detector::BottleCredential, n, v))
            .chain(secrets.listed().map(|(n, v)| (Detector::ListedValue, n, v)));
        for (detector, name, value) in values {
            if value.len() < MIN_EXACT_LEN {
                continue;
            }
            let name: Arc<str> = Arc::from(name);
            let mut forms = vec![("plain", value.as_bytes().to_vec())];
            forms.extend(encodings(value.as_bytes()));
            for (encoding, needle) in forms {
                if needle.len() < MIN_EXACT_LEN {
                    continue;
                }
                meta.push((detector, name.clone(), encoding));
                needles.push(needle);
            }
        }
        // Leftmost-longest, not overlapping: that is what lets the
        // automaton use its SIMD prefilter (measured on 16 KiB of prose with
        // 12 patterns: 1.9 us against 27.6 us for overlapping search). A
        // value inside a longer one is covered by the longer match.
        let exact = (!needles.is_empty()).then(|| {
            AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(&needles)
                .expect("exact values are plain byte strings")
        });
        let longest = needles.iter().map(Vec::len).max().unwrap_or(0);
        let escapable = needles
            .iter()
            .any(|n| n.iter().any(|b| matches!(b, b'\\' | b'"') || *b < 0x20));
        Engine {
            exact,
            meta,
            needles,
            longest,
            escapable,
        }
    }

    /// Every hit in `buf`, searched as sent, URL-decoded and JSON-unescaped;
    /// offsets are `buf`'s. A span found in several views is reported once.
    pub fn scan(&self, buf: &[u8], out: &mut Vec<Finding>) {
        let before = out.len();
        if memchr::memchr(b'\\', buf).is_some() && (self.escapable || !only_simple_escapes(buf)) {
            // A `\u` or `\/` escape can hide any character of a value, so
            // the text is unescaped first. Everything the raw search finds,
            // the JSON-unescaped view finds too (escapes outside a token
            // leave it as it is), so the view replaces the raw search,
            // which still runs when an exact value itself holds a
            // character JSON escapes.
            let (v, _) = decode_view(buf, View::JsonEscaped, false);
            self.scan_view(&v, buf, View::JsonEscaped, out);
            if self.escapable {
                self.scan_view(buf, buf, View::Raw, out);
            }
        } else {
            // No escape, or only the simple ones (`\n`, `\"`, …: every
            // model request): they stand for characters no exact value
            // holds (else `escapable`) and no token is made of, and the
            // detectors read them where they matter (a token glued to
            // `\n`, an assignment quoted `\"`; `scan::TOKEN_START`), so the
            // text as sent is searched once, without a copy.
            let from = out.len();
            self.scan_view(buf, buf, View::Raw, out);
            for f in &mut out[from..] {
                if memchr::memchr(b'\\', &buf[f.start..f.end]).is_some() {
                    f.view = View::JsonEscaped;
                }
            }
        }
        if memchr::memchr(b'%', buf).is_some() {
            let (v, _) = decode_view(buf, View::UrlEncoded, false);
            self.scan_view(&v, buf, View::UrlEncoded, out);
        }
        // One finding per (detector, start), in a single pass.
        let mut seen = HashSet::new();
        let tail = out.split_off(before);
        out.extend(
            tail.into_iter()
                .filter(|f| seen.insert((f.detector, f.start))),
        );
    }

    /// The JSON-unescaped text searched by the detectors as they read
    /// plain text: what the one search as sent must match.
    #[cfg(test)]
    fn scan_unescaped(&self, buf: &[u8], out: &mut Vec<Finding>) {
        let (v, _) = decode_view(buf, View::JsonEscaped, false);
        self.scan_view_with(&v, buf, View::JsonEscaped, out, scan::plain_pattern_hits);
    }

    /// Searches `view`, the decoding of `raw` for `kind`; offsets are
    /// mapped back to `raw` (the map is built only when something is found).
    fn scan_view(&self, view: &[u8], raw: &[u8], kind: View, out: &mut Vec<Finding>) {
        self.scan_view_with(view, raw, kind, out, scan::pattern_hits);
    }

    /// [`Engine::scan_view`] with the pattern detectors of `patterns`.
    fn scan_view_with(
        &self,
        view: &[u8],
        raw: &[u8],
        kind: View,
        out: &mut Vec<Finding>,
        patterns: PatternSearch,
    ) {
        let mut found: Vec<(Detector, usize, usize, Option<usize>)> = Vec::new();
        if let Some(ac) = &self.exact {
            for m in ac.find_iter(view) {
                let p = m.pattern().as_usize();
                found.push((self.meta[p].0, m.start(), m.end(), Some(p)));
            }
        }
        let mut hits = Vec::new();
        patterns(view, &mut hits);
        found.extend(hits.into_iter().map(|(d, s, e)| (d, s, e, None)));
        if found.is_empty() {
            return;
        }
        let map = (kind != View::Raw).then(|| decode_view(raw, kind, true).1);
        for (detector, s, e, pattern) in found {
            let (start, end) = match &map {
                None => (s, e),
                Some(map) => (map[s] as usize, raw_end(map, e, raw.len())),
            };
            let (encoding, credential) = match pattern {
                Some(p) => (self.meta[p].2, Some(self.meta[p].1.clone())),
                None => ("plain", None),
            };
            // Found in a decoded view but written plainly (no escape inside
            // the match): say so.
            let view = if end - start == e - s {
                View::Raw
            } else {
                kind
            };
            out.push(Finding {
                detector,
                start,
                end,
                view,
                encoding,
                credential,
            });
        }
    }

    /// How many bytes at the end of `buf` could begin an exact value (or
    /// one of its encodings): the longest tail that is a needle's prefix.
    /// Only places holding a needle's first byte are tried.
    fn pending(&self, buf: &[u8]) -> usize {
        let start = buf.len().saturating_sub(self.longest.saturating_sub(1));
        let mut best = 0;
        for needle in &self.needles {
            let Some(&first) = needle.first() else {
                continue;
            };
            for p in memchr::memchr_iter(first, &buf[start..]) {
                let tail = &buf[start + p..];
                if tail.len() <= best {
                    break;
                }
                if tail.len() < needle.len() && needle.starts_with(tail) {
                    best = tail.len();
                    break;
                }
            }
        }
        best
    }

    /// How many bytes at the end of `buf` must wait for the next piece:
    /// a trailing run of characters a token or an encoding is made of (at
    /// most [`HOLD_MAX`]), or the start of an exact value.
    pub fn hold(&self, buf: &[u8]) -> usize {
        let run = buf
            .iter()
            .rev()
            .take(HOLD_MAX)
            .take_while(|b| is_token_byte(**b))
            .count();
        // A token run is held up to HOLD_MAX; the start of an exact value
        // however long it is.
        run.max(self.pending(buf))
    }
}

/// Does `buf` hold no JSON escape that the detectors cannot read through
/// as sent? Those are `\u` (any character) and `\/`; any other escape
/// stands for a character no token or exact value holds (`\n \t \r \b \f
/// \" \\`, see `scan`'s `Flavor::Json`) or, unknown, for itself. An escaped
/// backslash before a `u` or `/` also asks for the unescaped view: a
/// slower search, never a weaker one.
fn only_simple_escapes(buf: &[u8]) -> bool {
    static U: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\\u"));
    static SLASH: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\\/"));
    U.find(buf).is_none() && SLASH.find(buf).is_none()
}

/// Bytes a token, base64, hex, `%XX` or a JSON escape is made of.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'+' | b'/' | b'=' | b'_' | b'-' | b'.' | b'~' | b'%' | b'\\'
        )
}

/// The raw end of a view span ending at `e`: the start of the first view
/// byte from another raw position, or the end of the raw buffer.
fn raw_end(map: &[u32], e: usize, raw_len: usize) -> usize {
    if e == 0 {
        return map.first().map(|m| *m as usize).unwrap_or(0);
    }
    let last = map[e - 1];
    map[e..]
        .iter()
        .find(|m| **m != last)
        .map(|m| *m as usize)
        .unwrap_or(raw_len)
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// `buf` decoded for `kind` (`%XX`, or JSON string escapes with surrogate
/// pairs joined), and, when `want_map`, for each decoded byte the offset in
/// `buf` of what it came from. Runs without escapes are copied whole.
fn decode_view(buf: &[u8], kind: View, want_map: bool) -> (Vec<u8>, Vec<u32>) {
    let mark = match kind {
        View::UrlEncoded => b'%',
        View::JsonEscaped => b'\\',
        View::Raw => return (buf.to_vec(), (0..buf.len() as u32).collect()),
    };
    let mut v = Vec::with_capacity(buf.len());
    let mut map = Vec::new();
    if want_map {
        map.reserve(buf.len());
    }
    let mut i = 0;
    while i < buf.len() {
        let next = memchr::memchr(mark, &buf[i..]).map_or(buf.len(), |n| i + n);
        v.extend_from_slice(&buf[i..next]);
        if want_map {
            map.extend(i as u32..next as u32);
        }
        if next == buf.len() {
            break;
        }
        let (bytes, len) = match kind {
            View::UrlEncoded => percent_escape(buf, next),
            _ => json_escape(buf, next),
        };
        v.extend_from_slice(bytes.as_slice());
        if want_map {
            map.extend(std::iter::repeat_n(next as u32, bytes.len));
        }
        i = next + len;
    }
    (v, map)
}

/// Up to four decoded bytes: what one escape stands for (no allocation
/// per escape; a body can hold one every few bytes).
#[derive(Clone, Copy)]
struct Decoded {
    bytes: [u8; 4],
    len: usize,
}

impl Decoded {
    fn one(b: u8) -> Decoded {
        Decoded {
            bytes: [b, 0, 0, 0],
            len: 1,
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The byte of the `%XX` at `at` and its length (a lone `%` stands for
/// itself).
fn percent_escape(buf: &[u8], at: usize) -> (Decoded, usize) {
    if at + 2 < buf.len() {
        if let (Some(h), Some(l)) = (hex_val(buf[at + 1]), hex_val(buf[at + 2])) {
            return (Decoded::one(h << 4 | l), 3);
        }
    }
    (Decoded::one(buf[at]), 1)
}

/// The bytes of the JSON escape at `at` and its length (an unknown escape
/// stands for its backslash).
fn json_escape(buf: &[u8], at: usize) -> (Decoded, usize) {
    let Some(&c) = buf.get(at + 1) else {
        return (Decoded::one(buf[at]), 1);
    };
    let simple = match c {
        b'"' => Some(b'"'),
        b'\\' => Some(b'\\'),
        b'/' => Some(b'/'),
        b'b' => Some(8),
        b'f' => Some(12),
        b'n' => Some(b'\n'),
        b'r' => Some(b'\r'),
        b't' => Some(b'\t'),
        _ => None,
    };
    if let Some(c) = simple {
        return (Decoded::one(c), 2);
    }
    if c == b'u' {
        if let Some(hi) = hex4(buf, at + 2) {
            let mut len = 6;
            let mut cp = hi;
            if (0xD800..0xDC00).contains(&hi)
                && buf.get(at + 6) == Some(&b'\\')
                && buf.get(at + 7) == Some(&b'u')
            {
                if let Some(lo) = hex4(buf, at + 8).filter(|l| (0xDC00..0xE000).contains(l)) {
                    cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                    len = 12;
                }
            }
            let ch = char::from_u32(cp).unwrap_or('\u{FFFD}');
            let mut d = Decoded {
                bytes: [0; 4],
                len: ch.len_utf8(),
            };
            ch.encode_utf8(&mut d.bytes);
            return (d, len);
        }
    }
    (Decoded::one(buf[at]), 1)
}

/// Four hex digits at `buf[at..]` as a number.
fn hex4(buf: &[u8], at: usize) -> Option<u32> {
    let digits = buf.get(at..at + 4)?;
    digits
        .iter()
        .try_fold(0u32, |acc, b| Some(acc << 4 | u32::from(hex_val(*b)?)))
}

/// `buf` with `%XX` decoded, and the source offset of each byte.
#[cfg(test)]
fn percent_view(buf: &[u8]) -> (Vec<u8>, Vec<u32>) {
    decode_view(buf, View::UrlEncoded, true)
}

/// `buf` with JSON escapes decoded, and the source offset of each byte.
#[cfg(test)]
fn json_view(buf: &[u8]) -> (Vec<u8>, Vec<u32>) {
    decode_view(buf, View::JsonEscaped, true)
}

/// The engine for the secrets in force, rebuilt only when they change.
#[derive(Debug, Default)]
pub struct Engines(Mutex<Option<(Arc<Secrets>, Arc<Engine>)>>);

impl Engines {
    pub fn for_secrets(&self, secrets: &Arc<Secrets>) -> Arc<Engine> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, e)) = slot.as_ref() {
            if Arc::ptr_eq(s, secrets) || **s == **secrets {
                return e.clone();
            }
        }
        let engine = Arc::new(Engine::new(secrets));
        *slot = Some((secrets.clone(), engine.clone()));
        engine
    }
}

/// Where in the request a hit was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Method,
    Target,
    Header(String),
    Body(u64),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Method => f.write_str("the request method"),
            Place::Target => f.write_str("the request URL"),
            Place::Header(h) => write!(f, "header {h}"),
            Place::Body(at) => write!(f, "the body at byte {at}"),
        }
    }
}

/// Where a scope's audit lines go: the sidecar's log (and its supervise
/// service for asks), or a list (tests).
#[derive(Debug)]
pub enum Sink {
    Shared(Arc<Shared>),
    Memory(Mutex<Vec<serde_json::Value>>),
}

/// One request's DLP: what it may do and who it is, for logs and asks.
#[derive(Debug)]
pub struct Scope {
    pub sink: Sink,
    pub client: SocketAddr,
    pub host: String,
    pub port: u16,
    pub method: String,
    pub path: String,
    pub actions: DlpActions,
    pub engine: Arc<Engine>,
    pub max_body: u64,
    pub oversize: Oversize,
    pub inbound: bool,
    /// The path with every hit in the target replaced, once the target was
    /// searched and something found: what logs show instead of `path`.
    safe_path: Mutex<Option<String>>,
    /// Audit lines written for this request (capped at [`MAX_LINES`]).
    lines: std::sync::atomic::AtomicUsize,
}

/// Most `dlp` audit lines one request writes; past it, one line says how
/// many more hits there were not logged (a body full of tokens must not
/// rotate the audit log).
pub const MAX_LINES: usize = 32;

/// A request DLP refused: the rule, the sentence for the agent, and the
/// status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub rule: String,
    pub reason: String,
    pub status: u16,
}

impl Refused {
    fn hit(f: &Finding, place: &Place, why: &str) -> Refused {
        let how = f.how();
        let how = if how.is_empty() {
            String::new()
        } else {
            format!(" ({how})")
        };
        let what = match &f.credential {
            Some(name) if f.detector == Detector::BottleCredential => {
                format!("the value of the bottle's credential {name}")
            }
            Some(name) => format!("the value of {name} (dlp.values_from_env)"),
            None => format!("a {} ", f.detector).trim_end().to_string(),
        };
        Refused {
            rule: format!("dlp:{}", f.detector),
            reason: format!("{what}{how} is in {place}; detector {} {why}", f.detector),
            status: 403,
        }
    }
}

impl Scope {
    /// The scope for one request to `host:port`; `None` when `dlp.enabled`
    /// is off.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: &Arc<Shared>,
        client: SocketAddr,
        host: &str,
        port: u16,
        method: &str,
        path: &str,
        secrets: &Arc<Secrets>,
    ) -> Option<Arc<Scope>> {
        let policy = shared.policy.current();
        let dlp = &policy.dlp;
        if !dlp.enabled {
            return None;
        }
        Some(Arc::new(Scope {
            sink: Sink::Shared(shared.clone()),
            client,
            host: host.to_string(),
            port,
            method: method.to_string(),
            path: path.to_string(),
            actions: dlp.actions_for(host),
            engine: shared.dlp.for_secrets(secrets),
            max_body: dlp.max_body,
            oversize: dlp.oversize,
            inbound: dlp.inbound,
            safe_path: Mutex::new(None),
            lines: Default::default(),
        }))
    }

    /// The path as logs may show it: with every hit in the target replaced
    /// by a marker, or as sent when the target held none.
    pub fn logged_path(&self) -> String {
        self.safe_path
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| self.path.clone())
    }

    /// `Some(path)` to log instead of the one sent, when the target held a
    /// hit.
    pub fn path_override(&self) -> Option<String> {
        self.safe_path
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Writes one audit line of kind `event`.
    fn emit(&self, event: &str, fields: serde_json::Value) {
        match &self.sink {
            Sink::Shared(shared) => shared.logger.audit_event(self.client, event, fields),
            Sink::Memory(lines) => {
                let mut fields = fields;
                fields["event"] = event.into();
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(fields);
            }
        }
    }

    /// Writes one `dlp` audit line (never the value), up to [`MAX_LINES`]
    /// per request.
    fn log(&self, f: &Finding, place: &Place, outcome: &str) {
        let n = self
            .lines
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n == MAX_LINES {
            self.emit(
                "dlp",
                json!({
                    "host": self.host, "port": self.port, "method": self.method,
                    "path": self.logged_path(), "detector": null,
                    "action": format!("more hits in this request are not logged (over {MAX_LINES})"),
                }),
            );
        }
        if n >= MAX_LINES {
            return;
        }
        self.emit(
            "dlp",
            json!({
                "host": self.host,
                "port": self.port,
                "method": self.method,
                "path": self.logged_path(),
                "detector": f.detector.as_str(),
                "place": place.to_string(),
                "how": f.how(),
                "credential": f.credential.as_deref(),
                "action": outcome,
            }),
        );
    }

    /// Holds for a human's decision on sending `f`; `Err` with the
    /// refusal when supervise is off, refuses, or does not answer in time.
    async fn ask(&self, f: &Finding, place: &Place) -> Result<(), Refused> {
        use crate::supervise::{log_proposal, Origin, Outcome};
        let Sink::Shared(shared) = &self.sink else {
            self.log(f, place, "blocked (ask without supervise)");
            return Err(Refused::hit(
                f,
                place,
                "is set to ask, and supervise is off, so it is refused",
            ));
        };
        let policy = shared.policy.current();
        let sup = match &shared.supervisor {
            Some(s) if policy.supervise.enabled => s.clone(),
            _ => {
                self.log(f, place, "blocked (ask without supervise)");
                return Err(Refused::hit(
                    f,
                    place,
                    "is set to ask, and supervise is off, so it is refused",
                ));
            }
        };
        let action = format!(
            "send {} {}{} carrying {} in {}",
            self.method,
            self.host,
            self.logged_path(),
            f.detector,
            place
        );
        let refused = |why: &str| Err(Refused::hit(f, place, why));
        let Some(text) = bottle_policy::Text::clean(&action) else {
            return refused("is set to ask, and the question could not be written");
        };
        let reason =
            bottle_policy::Text::clean(&format!("held by DLP: detector {} matched", f.detector))
                .unwrap_or_else(|| text.clone());
        let proposal = match sup.file(
            &policy,
            bottle_policy::Ask::Approval { action: text },
            reason,
            Origin::Held,
        ) {
            Ok(p) => p,
            Err(e) => {
                self.log(f, place, "blocked (not asked)");
                return refused(&format!(
                    "is set to ask, and the question was not filed: {e}"
                ));
            }
        };
        log_proposal(shared, &proposal, "dlp");
        self.log(f, place, "held for a decision");
        let until =
            tokio::time::Instant::now() + Duration::from_secs(policy.supervise.timeout_secs.max(1));
        match sup.outcome(&proposal.id, until.into_std()).await {
            Some(Outcome::Approved { .. }) => {
                self.log(f, place, "sent (approved)");
                Ok(())
            }
            Some(Outcome::Denied { .. }) => {
                self.log(f, place, "blocked (denied)");
                refused("is set to ask, and the operator denied it")
            }
            _ => {
                self.log(f, place, "blocked (no decision)");
                refused("is set to ask, and no decision came in time")
            }
        }
    }
}

/// Searches the target and the headers of a request about to go upstream
/// and acts on each hit. `skip` names the headers the sidecar set itself.
pub async fn check_head(
    scope: &Scope,
    parts: &mut hyper::http::request::Parts,
    skip: &[HeaderName],
) -> Result<(), Refused> {
    let mut found = Vec::new();
    // The method: an extension method is any token, so it can carry one.
    scope
        .engine
        .scan(parts.method.as_str().as_bytes(), &mut found);
    if let Some(f) = found.first() {
        let place = Place::Method;
        scope.log(f, &place, "blocked");
        return Err(Refused::hit(
            f,
            &place,
            "matched the request method, which cannot be redacted; it is refused",
        ));
    }
    // The target.
    if let Some(pq) = parts.uri.path_and_query().map(|pq| pq.as_str().to_string()) {
        scope.engine.scan(pq.as_bytes(), &mut found);
        if !found.is_empty() {
            let mut safe = pq.clone().into_bytes();
            for f in &found {
                let end = f.end.min(safe.len());
                if f.start < end {
                    safe[f.start..end].copy_from_slice(&marker(end - f.start));
                }
            }
            let safe = String::from_utf8_lossy(&safe);
            let safe_path = safe.split('?').next().unwrap_or_default().to_string();
            *scope.safe_path.lock().unwrap_or_else(|p| p.into_inner()) = Some(safe_path);
            let mut bytes = pq.into_bytes();
            act_on_head(scope, &Place::Target, &found, &mut bytes).await?;
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let mut uri = parts.uri.clone().into_parts();
            uri.path_and_query = Some(text.parse().map_err(|_| Refused {
                rule: "dlp-redact-failed".into(),
                reason: "the request URL could not be rebuilt after redaction".into(),
                status: 403,
            })?);
            parts.uri = hyper::Uri::from_parts(uri).map_err(|_| Refused {
                rule: "dlp-redact-failed".into(),
                reason: "the request URL could not be rebuilt after redaction".into(),
                status: 403,
            })?;
        }
    }
    // Every header the agent sent, as `name: value` so an assignment
    // detector sees the name.
    let names: Vec<HeaderName> = parts.headers.keys().cloned().collect();
    for name in names {
        if name == HOST || skip.contains(&name) {
            continue;
        }
        let values: Vec<HeaderValue> = parts.headers.get_all(&name).iter().cloned().collect();
        let mut changed = false;
        let mut out = Vec::with_capacity(values.len());
        for value in values {
            let prefix = format!("{}: ", name.as_str());
            let mut line = prefix.clone().into_bytes();
            line.extend_from_slice(value.as_bytes());
            found.clear();
            scope.engine.scan(&line, &mut found);
            if found.is_empty() {
                out.push(value);
                continue;
            }
            let place = Place::Header(safe_header_name(name.as_str(), &found, prefix.len()));
            for f in &mut found {
                // (An assignment starts at its key, which is the name; its
                // value is what is replaced.)
                if f.start < prefix.len()
                    && f.detector != Detector::GenericSecretAssignment
                    && matches!(
                        scope.actions.get(f.detector),
                        DlpAction::Redact | DlpAction::Block
                    )
                {
                    // In the header's name: a name cannot be redacted.
                    scope.log(f, &place, "blocked");
                    return Err(Refused::hit(f, &place, "matched a header name, which cannot be redacted or removed silently; it is refused"));
                }
                f.start = f.start.max(prefix.len());
                f.end = f.end.max(f.start);
            }
            act_on_head(scope, &place, &found, &mut line).await?;
            let bytes = &line[prefix.len()..];
            if bytes != value.as_bytes() {
                changed = true;
            }
            // The marker is visible ASCII, so the value stays valid.
            out.push(
                HeaderValue::from_bytes(bytes)
                    .unwrap_or(HeaderValue::from_static("BOTTLE-REDACTED")),
            );
        }
        if changed {
            parts.headers.remove(&name);
            for v in out {
                parts.headers.append(name.clone(), v);
            }
        }
    }
    Ok(())
}

/// Everything DLP does before a request goes upstream: the head searched
/// ([`check_head`], skipping the headers `egress`'s credential rules set
/// for this host), the body's coding checked, and the body wrapped and
/// primed ([`DlpBody::prime`]). `Err(Ok(_))`: refused by DLP before
/// anything was sent; `Err(Err(_))`: the agent's body failed while it was
/// read.
pub async fn inspect(
    scope: Option<&Arc<Scope>>,
    egress: &bottle_policy::EgressPolicy,
    req: hyper::Request<AgentBody>,
    watch: Watch,
) -> Result<hyper::Request<DlpBody>, Result<Refused, BodyFailure>> {
    let (mut parts, body) = req.into_parts();
    let Some(scope) = scope else {
        return Ok(hyper::Request::from_parts(
            parts,
            DlpBody::new(body, watch, None, None),
        ));
    };
    let skip: Vec<HeaderName> = egress
        .credentials_for(&scope.host)
        .map(|r| r.header.name().clone())
        .collect();
    check_head(scope, &mut parts, &skip).await.map_err(Ok)?;
    let coding = match body_coding(&parts.headers) {
        Ok(c) => c,
        Err(codings) => {
            return Err(Ok(Refused {
                rule: "dlp-unsearchable-body".into(),
                reason: format!("the request body is encoded as `{codings}`, which the sidecar cannot decode to search it before it leaves (it reads one of gzip, deflate or br)"),
                status: 415,
            }))
        }
    };
    let mut body = DlpBody::new(body, watch, Some(scope.clone()), coding);
    body.prime().await.map_err(|f| match f {
        BodyFailure::Refused {
            rule,
            reason,
            status,
        } => Ok(Refused {
            rule,
            reason,
            status,
        }),
        other => Err(other),
    })?;
    Ok(hyper::Request::from_parts(parts, body))
}

/// A header's name for logs and refusals: the name, or `(a header name
/// holding a hit)` when a hit reaches into it (the name is the agent's
/// text and may be the secret).
fn safe_header_name(name: &str, found: &[Finding], prefix: usize) -> String {
    if found
        .iter()
        .any(|f| f.start < prefix && f.detector != Detector::GenericSecretAssignment)
    {
        "(a header name holding a hit)".into()
    } else {
        name.to_string()
    }
}

/// DLP for one request of an exchange, as every forwarding path runs it:
/// the scope for `host:port` ([`Scope::new`]), [`inspect`], and the
/// exchange's record given the replaced path when the target held a hit.
/// On a refusal, the agent's answer.
#[allow(clippy::too_many_arguments)]
pub async fn gate(
    mut ex: crate::exchange::Exchange,
    shared: &Arc<Shared>,
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    secrets: &Arc<Secrets>,
    req: hyper::Request<AgentBody>,
    watch: Watch,
) -> Result<
    (
        crate::exchange::Exchange,
        hyper::Request<DlpBody>,
        Option<Arc<Scope>>,
    ),
    hyper::Response<crate::forward::ProxyBody>,
> {
    let scope = Scope::new(shared, ex.client, host, port, method, path, secrets);
    let policy = shared.policy.current();
    let inspected = inspect(scope.as_ref(), &policy.egress, req, watch).await;
    if let Some(p) = scope.as_ref().and_then(|s| s.path_override()) {
        // The target held a hit: the audit record shows it replaced.
        ex.record.path = Some(p);
    }
    match inspected {
        Ok(req) => Ok((ex, req, scope)),
        Err(Ok(refused)) => Err(ex.dlp_refused(refused)),
        Err(Err(failure)) => Err(ex.bad_body(&failure)),
    }
}

/// Acts on the hits in one head field (`bytes`, redacted in place).
async fn act_on_head(
    scope: &Scope,
    place: &Place,
    found: &[Finding],
    bytes: &mut [u8],
) -> Result<(), Refused> {
    // The strictest action decides; everything is logged.
    let mut order: Vec<&Finding> = found.iter().collect();
    order.sort_by_key(|f| std::cmp::Reverse(scope.actions.get(f.detector)));
    for f in order {
        match scope.actions.get(f.detector) {
            DlpAction::Block => {
                scope.log(f, place, "blocked");
                return Err(Refused::hit(f, place, "blocks it"));
            }
            DlpAction::Ask => scope.ask(f, place).await?,
            DlpAction::Redact => {
                let end = f.end.min(bytes.len());
                if f.start < end {
                    bytes[f.start..end].copy_from_slice(&marker(end - f.start));
                }
                scope.log(f, place, "redacted");
            }
            DlpAction::Log => scope.log(f, place, "logged"),
        }
    }
    Ok(())
}

/// The body's content coding as the search reads it: `Ok(None)` for none
/// (or `identity`), `Ok(Some(name))` for one the search decodes, and
/// `Err(codings)` for anything else — an unknown coding, several (stacked,
/// or `identity` next to another: an origin may decode the last one), or an
/// empty entry. The same parse decides what is decoded, so what is
/// searched is what the origin would decode.
pub fn body_coding(headers: &hyper::HeaderMap) -> Result<Option<&'static str>, String> {
    let codings: Vec<String> = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .flat_map(|v| {
            v.to_str()
                .unwrap_or("?")
                .split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    let shown = || codings.join(", ");
    match codings.as_slice() {
        [] => Ok(None),
        [one] if one == "identity" => Ok(None),
        [one] => Decoder::new(one).map(|d| Some(d.name())).ok_or_else(shown),
        _ => Err(shown()),
    }
}

/// Why a body cannot be searched: its `Content-Encoding`, when it is not
/// one the search decodes ([`body_coding`]).
pub fn unsearchable_encoding(headers: &hyper::HeaderMap) -> Option<String> {
    body_coding(headers).err()
}

/// A sink that takes at most `room` bytes, then fails the write (a
/// decompression bomb stops at the search limit).
#[derive(Debug, Default)]
struct Capped {
    buf: Vec<u8>,
    room: u64,
    over: bool,
}

impl Write for Capped {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if data.len() as u64 > self.room {
            self.over = true;
            let n = self.room as usize;
            self.buf.extend_from_slice(&data[..n]);
            self.room = 0;
            return Err(std::io::Error::other("past dlp.max_body"));
        }
        self.room -= data.len() as u64;
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A streaming decoder for one content coding.
enum Decoder {
    Gzip(flate2::write::GzDecoder<Capped>),
    Zlib(flate2::write::ZlibDecoder<Capped>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Capped>>),
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Decoder {
    /// Refuses a gzip member whose header carries a name, a comment or an
    /// extra field: text the decoder drops unread, which the origin (or
    /// whatever stores the body) keeps.
    fn check_gzip_header(&self, first: &[u8]) -> Result<(), String> {
        if let Decoder::Gzip(_) = self {
            if let Some(flags) = first.get(3) {
                if flags & (4 | 8 | 16) != 0 {
                    return Err("its gzip header carries a name, comment or extra field, which is not searched".into());
                }
            }
        }
        Ok(())
    }

    fn new(coding: &str) -> Option<Decoder> {
        Some(match coding {
            "gzip" | "x-gzip" => Decoder::Gzip(flate2::write::GzDecoder::new(Capped::default())),
            "deflate" => Decoder::Zlib(flate2::write::ZlibDecoder::new(Capped::default())),
            "br" => Decoder::Brotli(Box::new(brotli_decompressor::DecompressorWriter::new(
                Capped::default(),
                4096,
            ))),
            _ => return None,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Decoder::Gzip(_) => "gzip",
            Decoder::Zlib(_) => "deflate",
            Decoder::Brotli(_) => "br",
        }
    }

    fn sink(&mut self) -> &mut Capped {
        match self {
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Zlib(d) => d.get_mut(),
            Decoder::Brotli(d) => d.get_mut(),
        }
    }

    /// Decodes `data` with room for `room` more bytes: the decoded bytes,
    /// whether the room ran out, or the decoding error.
    fn push(&mut self, data: &[u8], room: u64, last: bool) -> Result<(Vec<u8>, bool), String> {
        self.sink().room = room;
        let result = match self {
            // flate2's writers keep decoded bytes back until the next
            // write; `flush` hands them on, so what was given is searched
            // before it is released.
            Decoder::Gzip(d) => d.write_all(data).and_then(|_| d.flush()).and_then(|_| {
                if last {
                    d.try_finish()
                } else {
                    Ok(())
                }
            }),
            Decoder::Zlib(d) => d.write_all(data).and_then(|_| d.flush()).and_then(|_| {
                if last {
                    d.try_finish()
                } else {
                    Ok(())
                }
            }),
            Decoder::Brotli(d) => d.write_all(data).and_then(|_| d.flush()).and_then(|_| {
                if last {
                    d.close()
                        .map_err(|_| std::io::Error::other("truncated brotli stream"))
                } else {
                    Ok(())
                }
            }),
        };
        let sink = self.sink();
        let out = std::mem::take(&mut sink.buf);
        let over = sink.over;
        match result {
            Err(_) if over => Ok((out, true)),
            Err(e) => Err(e.to_string()),
            Ok(()) => Ok((out, over)),
        }
    }
}

/// What the inspector decided about the bytes it was given.
#[derive(Debug)]
enum Step {
    Go,
    Ask(Vec<(Finding, Place)>),
    Block(Refused),
}

/// The body search as a plain state machine (no I/O): bytes in, findings
/// acted on, bytes released when they cannot start a secret.
#[derive(Debug)]
struct Inspector {
    scope: Arc<Scope>,
    decoder: Option<Decoder>,
    /// Decoded bytes: the carry of the last piece plus the new one.
    window: Vec<u8>,
    /// Decoded offset of `window[0]`.
    window_at: u64,
    /// Raw bytes not yet released.
    out: BytesMut,
    /// Raw offset of `out[0]` (bytes released so far).
    out_at: u64,
    decoded: u64,
    handled: HashSet<(Detector, u64)>,
    /// Past `max_body` with oversize = log: nothing more is searched.
    stopped: bool,
    /// Decoded offset of a private key header to redact whose END line
    /// has not arrived: everything from it is held until it does.
    key_from: Option<u64>,
    /// Decoded bytes at the end of `window` not searched yet.
    unsearched: usize,
    /// Bytes of the window kept for the next search.
    carry: usize,
    /// The compressed stream's header was read and allowed (nothing is
    /// released before).
    header_ok: bool,
}

impl Inspector {
    fn new(scope: Arc<Scope>, coding: Option<&str>) -> Inspector {
        Inspector {
            decoder: coding.and_then(Decoder::new),
            window: Vec::new(),
            window_at: 0,
            out: BytesMut::new(),
            out_at: 0,
            decoded: 0,
            handled: HashSet::new(),
            stopped: false,
            key_from: None,
            unsearched: 0,
            header_ok: coding.is_none(),
            // A `\\u00XX` escape is 6 bytes per byte of a value.
            carry: CARRY.max(6 * scope.engine.longest + 64),
            scope,
        }
    }

    /// Takes the next piece of the body (`last`: the body ends after it).
    /// Searches once [`SEARCH_MIN`] new bytes have built up (or at the
    /// end); decoded output is searched in slices of at most
    /// [`SEARCH_SLICE`], so neither the window nor one search grows with
    /// a decompression ratio.
    fn push(&mut self, data: &[u8], last: bool) -> Step {
        self.out.extend_from_slice(data);
        if self.stopped {
            return Step::Go;
        }
        let mut asks = Vec::new();
        let mut over = false;
        if self.decoder.is_none() {
            let room = self.scope.max_body.saturating_sub(self.decoded);
            let take = (data.len() as u64).min(room) as usize;
            over = take < data.len();
            for slice in data[..take].chunks(SEARCH_SLICE) {
                self.window.extend_from_slice(slice);
                self.decoded += slice.len() as u64;
                self.unsearched += slice.len();
                if self.unsearched >= SEARCH_SLICE {
                    match self.search(false) {
                        Step::Go => {}
                        Step::Ask(a) => asks.extend(a),
                        block => return block,
                    }
                }
            }
        } else {
            if !self.header_ok && (self.out.len() >= 4 || last) {
                self.header_ok = true;
                let d = self.decoder.as_ref().expect("checked above");
                if let Err(why) = d.check_gzip_header(&self.out) {
                    let coding = d.name();
                    self.log_event("undecodable", &format!("body refused ({coding}): {why}"));
                    return Step::Block(Refused {
                        rule: "dlp-undecodable-body".into(),
                        reason: format!("the request body is {coding}-encoded and {why}; use a plain gzip stream"),
                        status: 403,
                    });
                }
            }
            // Small input pieces bound what one write can expand to.
            let pieces: Vec<&[u8]> = if data.is_empty() {
                vec![&[][..]]
            } else {
                data.chunks(DECODE_PIECE).collect()
            };
            let n = pieces.len();
            for (i, piece) in pieces.into_iter().enumerate() {
                let room = self.scope.max_body.saturating_sub(self.decoded);
                let d = self.decoder.as_mut().expect("checked above");
                let (decoded, full) = match d.push(piece, room, last && i + 1 == n) {
                    Ok(r) => r,
                    Err(e) => {
                        let coding = d.name();
                        self.log_event(
                            "undecodable",
                            &format!("body could not be decoded ({coding})"),
                        );
                        return Step::Block(Refused {
                            rule: "dlp-undecodable-body".into(),
                            reason: format!("the request body is marked {coding}-encoded but does not decode ({e}); the sidecar searches every body before it leaves, so one it cannot read is refused"),
                            status: 403,
                        });
                    }
                };
                for slice in decoded.chunks(SEARCH_SLICE) {
                    self.window.extend_from_slice(slice);
                    self.decoded += slice.len() as u64;
                    self.unsearched += slice.len();
                    if self.unsearched >= SEARCH_SLICE {
                        match self.search(false) {
                            Step::Go => {}
                            Step::Ask(a) => asks.extend(a),
                            block => return block,
                        }
                    }
                }
                if full {
                    over = true;
                    break;
                }
            }
        }
        if self.unsearched >= SEARCH_MIN || (last && self.unsearched > 0) || over {
            match self.search(last) {
                Step::Go => {}
                Step::Ask(a) => asks.extend(a),
                block => return block,
            }
        } else if last {
            if let Step::Block(b) = self.search(true) {
                return Step::Block(b);
            }
        }
        if over {
            let limit = self.scope.max_body;
            match self.scope.oversize {
                Oversize::Block => {
                    self.log_event("oversize", "blocked");
                    return Step::Block(Refused {
                        rule: "dlp-body-too-large".into(),
                        reason: format!("the request body is larger than {limit} bytes (dlp.max_body), the most the sidecar searches; dlp.oversize = \"block\" refuses the rest"),
                        status: 413,
                    });
                }
                Oversize::Log => {
                    self.log_event("oversize", "sent unsearched past dlp.max_body");
                    self.stopped = true;
                }
            }
        }
        if asks.is_empty() {
            Step::Go
        } else {
            Step::Ask(asks)
        }
    }

    /// Is `data`, the last piece of a body of which nothing came before,
    /// plain (no coding), within `max_body` and one search, and free of
    /// any hit? Then it is taken as searched and may go on unchanged (any
    /// hit, whatever its action, goes the general way of [`Self::push`]).
    fn clean_whole(&mut self, data: &[u8]) -> bool {
        let fresh = self.decoded == 0 && self.out.is_empty() && self.window.is_empty();
        if !fresh
            || self.decoder.is_some()
            || self.stopped
            || data.len() > SEARCH_SLICE
            || data.len() as u64 > self.scope.max_body
        {
            return false;
        }
        let mut found = Vec::new();
        self.scope.engine.scan(data, &mut found);
        if !found.is_empty() {
            return false;
        }
        self.decoded = data.len() as u64;
        self.out_at = data.len() as u64;
        self.window_at = data.len() as u64;
        true
    }

    /// Searches what has come but was not searched yet (the body paused).
    fn search_now(&mut self) -> Step {
        if self.unsearched == 0 || self.stopped {
            return Step::Go;
        }
        self.search(false)
    }

    fn log_event(&self, what: &str, outcome: &str) {
        let s = &self.scope;
        s.emit(
            "dlp",
            json!({
                "host": s.host, "port": s.port, "method": s.method, "path": s.logged_path(),
                "detector": null, "problem": what, "action": outcome,
                "max_body": s.max_body,
            }),
        );
    }

    /// Searches the window and acts on every new hit (`last`: nothing
    /// more will come).
    fn search(&mut self, last: bool) -> Step {
        self.unsearched = 0;
        let mut found = Vec::new();
        self.scope.engine.scan(&self.window, &mut found);
        let mut asks = Vec::new();
        let mut order: Vec<Finding> = found
            .into_iter()
            .filter(|f| {
                self.handled
                    .insert((f.detector, self.window_at + f.start as u64))
            })
            .collect();
        order.sort_by_key(|f| std::cmp::Reverse(self.scope.actions.get(f.detector)));
        for f in order {
            let at = self.window_at + f.start as u64;
            let place = Place::Body(at);
            match self.scope.actions.get(f.detector) {
                DlpAction::Block => {
                    self.scope.log(&f, &place, "blocked");
                    return Step::Block(Refused::hit(&f, &place, "blocks it"));
                }
                DlpAction::Redact
                    if f.detector == Detector::PrivateKey
                        && memchr::memmem::find(&self.window[f.start..f.end], b"-----END")
                            .is_none()
                        && self.decoder.is_none() =>
                {
                    // Only the header so far: hold from it until the END
                    // line comes, then redact the whole block.
                    self.handled.remove(&(f.detector, at));
                    let held = self.window_at + self.window.len() as u64 - at;
                    if last || held > KEY_MAX {
                        self.scope.log(&f, &place, "blocked (could not redact)");
                        return Step::Block(Refused::hit(&f, &place, "is set to redact, and the key's END line did not follow its header, so the key cannot be replaced whole; it is refused"));
                    }
                    // The earliest pending header holds everything after it.
                    self.key_from = Some(self.key_from.map_or(at, |k| k.min(at)));
                }
                DlpAction::Redact => {
                    if self.key_from == Some(at) {
                        self.key_from = None;
                    }
                    if self.decoder.is_some() {
                        self.scope.log(&f, &place, "blocked (could not redact)");
                        return Step::Block(Refused::hit(&f, &place, "is set to redact, which cannot be done inside a compressed body, so it is refused"));
                    }
                    // Bytes already released (a pattern's leading words, or
                    // a token sent when the body paused) stay as sent.
                    let end = self.window_at + f.end as u64;
                    let from = at.max(self.out_at);
                    if end > from {
                        let s = (from - self.out_at) as usize;
                        let len = (end - from) as usize;
                        let m = marker(len);
                        if let Some(dst) = self.out.get_mut(s..s + len) {
                            dst.copy_from_slice(&m);
                        }
                        let w = (from - self.window_at) as usize;
                        self.window[w..w + len].copy_from_slice(&m);
                    }
                    if from > at {
                        self.scope.log(
                            &f,
                            &place,
                            &format!("redacted (its first {} bytes were already sent)", from - at),
                        );
                        continue;
                    }
                    self.scope.log(&f, &place, "redacted");
                }
                DlpAction::Ask => asks.push((f, place)),
                DlpAction::Log => self.scope.log(&f, &place, "logged"),
            }
        }
        if self.window.len() > self.carry {
            let mut cut = self.window.len() - self.carry;
            if let Some(key) = self.key_from {
                cut = cut.min(key.saturating_sub(self.window_at) as usize);
            }
            self.window.drain(..cut);
            self.window_at += cut as u64;
            // Hits that started before the window are never seen again.
            let from = self.window_at;
            self.handled.retain(|(_, at)| *at >= from);
        }
        if asks.is_empty() {
            Step::Go
        } else {
            Step::Ask(asks)
        }
    }

    /// Bytes that may go now (`all`: the body ended or was approved;
    /// `idle`: the body paused, so a token run may go, a pending key not).
    fn release(&mut self, all: bool) -> Option<Bytes> {
        self.release_as(all, false)
    }

    fn release_as(&mut self, all: bool, idle: bool) -> Option<Bytes> {
        if (self.unsearched > 0 && !self.stopped) || !self.header_ok {
            return None;
        }
        let key_hold = self.key_from.map(|key| {
            self.out.len() - (key.saturating_sub(self.out_at) as usize).min(self.out.len())
        });
        let hold = if all || self.stopped {
            0
        } else if let Some(h) = key_hold {
            h
        } else if idle {
            0
        } else if self.decoder.is_some() {
            // What was released decodes (at the origin too) to what was
            // searched; hold the new piece while its output could end in
            // the start of a secret.
            if self.scope.engine.hold(&self.window) > 0 {
                self.out.len()
            } else {
                0
            }
        } else {
            self.scope.engine.hold(&self.window).min(self.out.len())
        };
        let n = self.out.len() - hold;
        if n == 0 {
            return None;
        }
        self.out_at += n as u64;
        Some(self.out.split_to(n).freeze())
    }

    fn held(&self) -> usize {
        self.out.len()
    }
}

type AskFuture = Pin<Box<dyn Future<Output = Result<(), Refused>> + Send>>;

/// The agent's request body on its way upstream, searched as it streams.
pub struct DlpBody<B = AgentBody> {
    inner: B,
    insp: Option<Box<Inspector>>,
    ready: VecDeque<Bytes>,
    /// The inner body ended (and the inspector was told).
    ended: bool,
    asking: Option<AskFuture>,
    idle: Option<Pin<Box<Sleep>>>,
    watch: Watch,
    failed: bool,
}

impl<B> fmt::Debug for DlpBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DlpBody")
            .field("searched", &self.insp.is_some())
            .field("ready", &self.ready.len())
            .finish()
    }
}

impl<B> DlpBody<B>
where
    B: Body<Data = Bytes, Error = AgentBodyError> + Unpin,
{
    /// `inner` searched under `scope` (none: passed through), decoding the
    /// body's `coding` (checked by [`unsearchable_encoding`] first).
    pub fn new(inner: B, watch: Watch, scope: Option<Arc<Scope>>, coding: Option<&str>) -> Self {
        DlpBody {
            inner,
            insp: scope.map(|s| Box::new(Inspector::new(s, coding))),
            ready: VecDeque::new(),
            ended: false,
            asking: None,
            idle: None,
            watch,
            failed: false,
        }
    }

    fn fail(&mut self, refused: Refused) -> AgentBodyError {
        self.failed = true;
        let failure = BodyFailure::Refused {
            rule: refused.rule,
            reason: refused.reason,
            status: refused.status,
        };
        self.watch.set(failure.clone());
        AgentBodyError::from(failure)
    }

    /// Reads and searches up to [`PRIME_BYTES`] of the body before it is
    /// sent: everything that has arrived (waiting for the first piece), so
    /// a blocked or held request has not reached the origin yet.
    pub async fn prime(&mut self) -> Result<(), BodyFailure> {
        if self.insp.is_none() || self.inner.is_end_stream() {
            return Ok(());
        }
        let mut primed: VecDeque<Bytes> = VecDeque::new();
        let mut size = 0usize;
        let mut first = true;
        loop {
            let wait = first || self.asking.is_some();
            let next = std::future::poll_fn(|cx| Pin::new(&mut *self).poll_frame(cx));
            let frame = if wait {
                next.await
            } else {
                match futures_util::FutureExt::now_or_never(next) {
                    Some(f) => f,
                    None => break,
                }
            };
            first = false;
            match frame {
                None => break,
                Some(Err(_)) => {
                    return Err(self
                        .watch
                        .failure()
                        .unwrap_or(BodyFailure::Malformed("the body failed".into())))
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        size += data.len();
                        primed.push_back(data);
                    }
                    if size >= PRIME_BYTES {
                        break;
                    }
                }
            }
        }
        // Handed out again, first, by `poll_frame`.
        while let Some(b) = primed.pop_back() {
            self.ready.push_front(b);
        }
        Ok(())
    }

    fn step(&mut self, step: Step) -> Result<(), AgentBodyError> {
        match step {
            Step::Go => Ok(()),
            Step::Block(r) => Err(self.fail(r)),
            Step::Ask(asks) => {
                let scope = self
                    .insp
                    .as_ref()
                    .map(|i| i.scope.clone())
                    .expect("asks come from an inspector");
                self.asking = Some(Box::pin(async move {
                    for (f, place) in &asks {
                        scope.ask(f, place).await?;
                    }
                    Ok(())
                }));
                Ok(())
            }
        }
    }
}

impl<B> Body for DlpBody<B>
where
    B: Body<Data = Bytes, Error = AgentBodyError> + Unpin,
{
    type Data = Bytes;
    type Error = AgentBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, AgentBodyError>>> {
        let this = self.get_mut();
        loop {
            if let Some(b) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if this.failed {
                return Poll::Ready(None);
            }
            if let Some(fut) = this.asking.as_mut() {
                match fut.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(r)) => {
                        this.asking = None;
                        return Poll::Ready(Some(Err(this.fail(r))));
                    }
                    Poll::Ready(Ok(())) => {
                        this.asking = None;
                        let all = this.ended;
                        if let Some(b) = this.insp.as_mut().and_then(|i| i.release(all)) {
                            this.ready.push_back(b);
                        }
                        continue;
                    }
                }
            }
            if this.ended {
                return Poll::Ready(None);
            }
            let Some(insp) = this.insp.as_mut() else {
                return Pin::new(&mut this.inner).poll_frame(cx);
            };
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.idle = None;
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    // A body of known length is over when its last byte is
                    // handed out, and hyper's client then stops polling:
                    // the end is taken here, so the tail is searched (and a
                    // decoder finished) before any of it goes.
                    let last = this.inner.is_end_stream();
                    if last && insp.clean_whole(&data) {
                        // The whole body in one piece with nothing in it:
                        // on as it came, without a copy (the usual API
                        // call).
                        this.ended = true;
                        this.ready.push_back(data);
                        continue;
                    }
                    let step = insp.push(&data, last);
                    if last {
                        this.ended = true;
                    }
                    if let Err(e) = this.step(step) {
                        return Poll::Ready(Some(Err(e)));
                    }
                    if this.asking.is_none() {
                        if let Some(b) = this.insp.as_mut().and_then(|i| i.release(last)) {
                            this.ready.push_back(b);
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    this.ended = true;
                    this.idle = None;
                    let step = insp.push(&[], true);
                    if let Err(e) = this.step(step) {
                        return Poll::Ready(Some(Err(e)));
                    }
                    if this.asking.is_none() {
                        if let Some(b) = this.insp.as_mut().and_then(|i| i.release(true)) {
                            this.ready.push_back(b);
                        }
                    }
                }
                Poll::Pending => {
                    // The body paused: search what built up, and let go
                    // what cannot start a secret.
                    if insp.unsearched > 0 {
                        let step = insp.search_now();
                        if let Err(e) = this.step(step) {
                            return Poll::Ready(Some(Err(e)));
                        }
                        if this.asking.is_none() {
                            if let Some(b) = this.insp.as_mut().and_then(|i| i.release(false)) {
                                this.ready.push_back(b);
                            }
                        }
                        continue;
                    }
                    if insp.held() == 0 {
                        return Poll::Pending;
                    }
                    let timer = this
                        .idle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(IDLE_FLUSH)));
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.idle = None;
                    match insp.release_as(false, true) {
                        Some(b) => this.ready.push_back(b),
                        // Only a pending key is held: wait for more.
                        None => return Poll::Pending,
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.insp.is_none() {
            return self.inner.is_end_stream();
        }
        // Never ahead of the search: the end is reported only once the
        // inspector was told (and everything it released was handed out).
        self.ready.is_empty() && self.asking.is_none() && (self.ended || self.failed)
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let extra: u64 = self.ready.iter().map(|b| b.len() as u64).sum::<u64>()
            + self.insp.as_ref().map(|i| i.held() as u64).unwrap_or(0);
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + extra);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + extra);
        }
        hint
    }
}

/// A response body searched for credential-shaped strings on the way to
/// the agent (`dlp.inbound`): each detector is logged once per response,
/// nothing is changed.
pub struct InboundBody<B> {
    inner: B,
    scope: Arc<Scope>,
    window: Vec<u8>,
    logged: HashSet<Detector>,
}

impl<B> InboundBody<B> {
    pub fn new(inner: B, scope: Arc<Scope>) -> Self {
        InboundBody {
            inner,
            scope,
            window: Vec::new(),
            logged: HashSet::new(),
        }
    }

    fn search(&mut self, data: &[u8]) {
        self.window.extend_from_slice(data);
        let mut found = Vec::new();
        self.scope.engine.scan(&self.window, &mut found);
        for f in found {
            if self.logged.insert(f.detector) {
                let s = &self.scope;
                s.emit(
                    "dlp-inbound",
                    json!({
                        "host": s.host, "port": s.port, "method": s.method, "path": s.logged_path(),
                        "detector": f.detector.as_str(), "how": f.how(),
                        "credential": f.credential.as_deref(),
                        "action": "logged",
                    }),
                );
            }
        }
        if self.window.len() > CARRY {
            let cut = self.window.len() - CARRY;
            self.window.drain(..cut);
        }
    }
}

impl<B> Body for InboundBody<B>
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
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let data = data.clone();
                this.search(&data);
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

#[cfg(test)]
mod tests;
