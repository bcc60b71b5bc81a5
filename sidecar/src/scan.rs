//! Secret detection over text the agent sends out: a set of detectors with
//! stable names, run line by line. The git gate runs it over every added
//! line of every commit a push would publish ([`Scanner::scan_patch`] reads
//! `git log -p` output); the egress DLP (`crate::dlp`) runs the same
//! detectors over requests ([`pattern_hits`]). The names are
//! [`bottle_policy::Detector`]'s.
//!
//! Detectors (the names are stable; audit lines and refusals carry them):
//! - `private-key`: a PEM/OpenSSH/PGP private key header.
//! - `github-token`: `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` tokens and
//!   fine-grained `github_pat_` tokens.
//! - `gitlab-token`: `glpat-` personal access tokens.
//! - `aws-access-key`: `AKIA`/`ASIA`/`ABIA`/`ACCA` access key ids.
//! - `slack-token`: `xoxb-`/`xoxa-`/`xoxp-`/`xoxr-`/`xoxs-` tokens.
//! - `gcp-api-key`: Google Cloud API keys (`AIza` and 35 more characters).
//! - `stripe-key`: Stripe secret and restricted keys (`sk_live_`,
//!   `rk_test_`, …).
//! - `anthropic-key`: `sk-ant-` keys.
//! - `openai-key`: `sk-` / `sk-proj-` / `sk-svcacct-` / `sk-admin-` keys
//!   of at least 32 characters mixing letters and digits.
//! - `jwt`: a JSON Web Token (two base64url JSON parts starting `eyJ` and a
//!   signature).
//! - `generic-secret-assignment`: `password|secret|token|api_key|… = value`
//!   where the value is 16+ characters mixing letters and digits with a
//!   Shannon entropy of at least [`GENERIC_MIN_ENTROPY`] bits per character.
//! - `bottle-credential`: the exact value of any credential in this
//!   bottle's `secrets.json` (values shorter than [`MIN_EXACT_LEN`] are not
//!   searched: they would match ordinary text).
//!
//! A hit names the detector and where it is, never the matched text. No
//! in-file suppression comment (`# nosecret`, `gitleaks:allow`, …) is
//! honoured: the agent writes those files.

use bottle_policy::Detector;
use regex::bytes::Regex;
use std::fmt;
use std::sync::LazyLock;

/// Shortest credential value searched for by `bottle-credential`.
pub const MIN_EXACT_LEN: usize = 8;

/// Bits per character a `generic-secret-assignment` value must reach.
pub const GENERIC_MIN_ENTROPY: f64 = 3.5;

/// One pattern detector.
struct Pattern {
    kind: Detector,
    re: Regex,
    /// Further check of the match (the whole match, or group 1 when present).
    accept: fn(&[u8]) -> bool,
    /// For a pattern with no literal prefix the regex engine can skip to
    /// (case-insensitive keywords): the keywords, found in one pass, and an
    /// anchored copy of the regex run only where one starts, over at most
    /// [`KEYED_SPAN`] bytes of text (reading JSON's escapes: an escape is
    /// one byte of text; [`window_end`]).
    keyed: Option<(Regex, Regex, bool)>,
    /// For a token (JSON flavor): the token right after one of JSON's
    /// letter escapes (`\n`, `\t`, `\r`, `\b`, `\f`), as group 1. The
    /// escape's letter glues onto the token as sent, so `re`'s leading
    /// `\b` misses it: `\nghp_…` is a newline and a token once unescaped.
    /// (After an escaped backslash and such a letter it is not a token;
    /// telling them apart needs the text before, which a search window may
    /// not hold, so that is found too: more, never less.)
    escaped: Option<Regex>,
    /// For a header that opens a block (a PEM key): its END line. A match
    /// is extended to the first END line within [`BLOCK_MAX`] bytes, so
    /// `redact` covers the key material, not only the header. Found in one
    /// pass over the buffer, so many headers cost no more than one.
    block_end: Option<Regex>,
}

/// Longest block (header to END line) a match is extended over.
pub const BLOCK_MAX: usize = 16 * 1024;

/// Bytes after a keyword an assignment detector looks at.
const KEYED_SPAN: usize = 512;

/// Where a generic assignment can start (lower-case; matched ignoring
/// ASCII case).
const ASSIGNMENT_KEYWORDS: [&str; 14] = [
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "accesskey",
    "access_key",
    "access-key",
    "privatekey",
    "private_key",
    "private-key",
    "credential",
];

impl Pattern {
    /// Every accepted match in `buf`: (start, end) of the token, or of the
    /// whole assignment (a keyed detector: group 1, the value, is what
    /// `accept` checks).
    fn hits(&self, buf: &[u8], out: &mut impl FnMut(usize, usize) -> bool) {
        let accept = |caps: &regex::bytes::Captures<'_>| {
            let whole = caps.get(0).expect("group 0 is the whole match");
            let checked = caps.get(1).unwrap_or(whole);
            (self.accept)(checked.as_bytes()).then(|| (whole.start(), whole.end()))
        };
        match &self.keyed {
            None => {
                // Every END line, once (none searched without `-----END`).
                let ends: Vec<(usize, usize)> = match &self.block_end {
                    Some(end) if memchr::memmem::find(buf, b"-----END").is_some() => {
                        end.find_iter(buf).map(|m| (m.start(), m.end())).collect()
                    }
                    _ => Vec::new(),
                };
                let plain = self.re.captures_iter(buf).map(|caps| (caps, 0));
                // Tokens right after a JSON escape's letter, in a pass of
                // their own, so neither kind of match can hide the other.
                let escaped = self
                    .escaped
                    .as_ref()
                    .filter(|_| memchr::memchr(b'\\', buf).is_some())
                    .into_iter()
                    .flat_map(|re| re.captures_iter(buf).map(|caps| (caps, 1)));
                for (caps, group) in plain.chain(escaped) {
                    let token = caps.get(group).expect("the token is captured");
                    if !(self.accept)(token.as_bytes()) {
                        continue;
                    }
                    let (s, mut e) = (token.start(), token.end());
                    let i = ends.partition_point(|(at, _)| *at < e);
                    if let Some((_, end)) = ends
                        .get(i)
                        .filter(|(at, _)| text_len(&buf[e..*at]) <= BLOCK_MAX)
                    {
                        e = *end;
                    }
                    if !out(s, e) {
                        return;
                    }
                }
            }
            Some((keywords, anchored, escapes)) => {
                // Keywords are found in a lower-cased copy, case-sensitively:
                // far faster than matching ignoring case.
                let lower = buf.to_ascii_lowercase();
                let mut done = 0;
                for m in keywords.find_iter(&lower) {
                    if m.start() < done {
                        continue;
                    }
                    let end = window_end(buf, m.start(), *escapes);
                    let hit = anchored
                        .captures(&buf[m.start()..end])
                        .and_then(|caps| accept(&caps));
                    match hit {
                        Some((s, e)) => {
                            done = m.start() + e;
                            if !out(m.start() + s, m.start() + e) {
                                return;
                            }
                        }
                        // A keyword right after a backslash may be an
                        // escape's letter and the rest of a word (`\token`
                        // is a tab and `oken`): a keyword later in it is
                        // still tried.
                        None if m.start() > 0 && buf[m.start() - 1] == b'\\' => {}
                        // A later keyword in the same identifier has the
                        // same tail and fails the same way: skip them all
                        // (`tokentoken…` costs one attempt per identifier).
                        None => {
                            done = m.start()
                                + buf[m.start()..]
                                    .iter()
                                    .take_while(|b| {
                                        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')
                                    })
                                    .count();
                        }
                    }
                }
            }
        }
    }
}

/// Bytes of text in `buf` as sent: a backslash and the byte after it are
/// one (a JSON escape); at most `buf.len()`, and never more than the text
/// it unescapes to, so a limit measured with it holds as on that text.
fn text_len(buf: &[u8]) -> usize {
    buf.len() - memchr::memchr_iter(b'\\', buf).count().min(buf.len() / 2)
}

/// Where the window of an assignment detector that starts at `at` ends:
/// [`KEYED_SPAN`] bytes later, or, reading JSON's escapes, after that many
/// bytes of text (an escape is one), so the window holds what the same
/// window holds in the unescaped text.
fn window_end(buf: &[u8], at: usize, escapes: bool) -> usize {
    let plain = (at + KEYED_SPAN).min(buf.len());
    if !escapes || memchr::memchr(b'\\', &buf[at..plain]).is_none() {
        return plain;
    }
    let (mut i, mut n) = (at, 0);
    while i < buf.len() && n < KEYED_SPAN {
        i += if buf[i] == b'\\' && i + 1 < buf.len() {
            2
        } else {
            1
        };
        n += 1;
    }
    i
}

fn any(_: &[u8]) -> bool {
    true
}

fn letters_and_digits(v: &[u8]) -> bool {
    v.iter().any(u8::is_ascii_digit) && v.iter().any(u8::is_ascii_alphabetic)
}

/// An OpenAI-shaped key that is not an Anthropic key and looks random.
fn openai_shaped(v: &[u8]) -> bool {
    !v.starts_with(b"sk-ant-") && letters_and_digits(&v[3..])
}

fn high_entropy(v: &[u8]) -> bool {
    letters_and_digits(v) && entropy(v) >= GENERIC_MIN_ENTROPY
}

/// Shannon entropy of `v`, in bits per byte.
pub fn entropy(v: &[u8]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut counts = [0usize; 256];
    for b in v {
        counts[*b as usize] += 1;
    }
    let n = v.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = *c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// The word boundary before a token.
const BOUNDARY: &str = r"(?-u:\b)";

/// How the detectors read the text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// Also through JSON's simple escapes: a token may follow an escape
    /// whose letter would otherwise glue onto it (`Pattern::escaped`), an
    /// assignment's parts may be spaced by escaped white space and quoted
    /// by escaped quotes. So in a JSON string body holding only the simple
    /// escapes (`\n \t \r \b \f \" \\`) they find everything
    /// [`Flavor::Plain`] finds in its unescaped text, and such a body is
    /// searched once, as sent (`crate::dlp`; a test there compares the two
    /// over many generated bodies).
    Json,
    /// As written: what the unescaped text is judged by.
    #[cfg_attr(not(test), allow(dead_code))]
    Plain,
}

impl Flavor {
    /// Space between an assignment's parts (the escapes of exactly the
    /// white space `\s` reads: not `\b`, a backspace).
    fn space(self) -> &'static str {
        match self {
            Flavor::Json => r"(?:\s|(?-i:\\[ntrf]))*",
            Flavor::Plain => r"\s*",
        }
    }

    /// An optional backslash before an assignment's quote.
    fn quote_escape(self) -> &'static str {
        match self {
            Flavor::Json => r"\\?",
            Flavor::Plain => "",
        }
    }
}

static DETECTORS: LazyLock<Vec<Pattern>> = LazyLock::new(|| detectors(Flavor::Json));

fn detectors(flavor: Flavor) -> Vec<Pattern> {
    let d = |kind, re: &str, accept| Pattern {
        kind,
        re: Regex::new(re).expect("detector regexes are fixed and tested"),
        accept,
        keyed: None,
        escaped: None,
        block_end: None,
    };
    // A token: after a word boundary, and (JSON) after an escape's letter.
    let t = |kind, token: &str, accept| Pattern {
        escaped: (flavor == Flavor::Json).then(|| {
            Regex::new(&format!(r"\\[ntrbf]({token})"))
                .expect("detector regexes are fixed and tested")
        }),
        ..d(kind, &format!("{BOUNDARY}{token}"), accept)
    };
    let keyed = |kind, re: &str, accept| Pattern {
        keyed: Some((
            // A literal alternation: the regex engine finds it with SIMD
            // (an Aho-Corasick automaton over these common letters is an
            // order of magnitude slower on prose).
            Regex::new(&ASSIGNMENT_KEYWORDS.join("|")).expect("fixed keywords"),
            Regex::new(&format!("^(?:{re})")).expect("detector regexes are fixed and tested"),
            flavor == Flavor::Json,
        )),
        ..d(kind, re, accept)
    };
    let (sp, q) = (flavor.space(), flavor.quote_escape());
    vec![
        Pattern {
            block_end: Some(
                Regex::new(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
                    .expect("detector regexes are fixed and tested"),
            ),
            ..d(
                Detector::PrivateKey,
                r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
                any,
            )
        },
        t(
            Detector::GithubToken,
            r"(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{80,255})(?-u:\b)",
            any,
        ),
        t(Detector::GitlabToken, r"glpat-[A-Za-z0-9_-]{20,}", any),
        t(
            Detector::AwsAccessKey,
            r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?-u:\b)",
            any,
        ),
        t(
            Detector::SlackToken,
            r"xox[baprs]-[A-Za-z0-9-]{10,}",
            letters_and_digits,
        ),
        t(Detector::GcpApiKey, r"AIza[0-9A-Za-z_-]{35}", any),
        t(
            Detector::StripeKey,
            r"[rs]k_(?:live|test)_[0-9A-Za-z]{24,}",
            letters_and_digits,
        ),
        t(Detector::AnthropicKey, r"sk-ant-[A-Za-z0-9_-]{20,}", any),
        t(
            Detector::OpenaiKey,
            r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{32,}",
            openai_shaped,
        ),
        t(
            Detector::Jwt,
            r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}",
            any,
        ),
        keyed(
            Detector::GenericSecretAssignment,
            &format!(
                r#"(?i)(?:password|passwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credentials?)[a-z0-9_-]*(?:{q}["'])?{sp}(?::=|=>|[:=]){sp}(?:{q}["'`])?([A-Za-z0-9+/_.~=-]{{16,}})"#
            ),
            high_entropy,
        ),
    ]
}

/// Every pattern detector's hits in `buf`, as (detector, start, end) of the
/// whole match, in detector order. Exact values are not searched here
/// (`crate::dlp` searches them with their encodings).
pub fn pattern_hits(buf: &[u8], out: &mut Vec<(Detector, usize, usize)>) {
    // One pass decides whether any unkeyed detector can match at all (the
    // usual answer for a request body is no); only then each runs alone.
    let any = ANY_UNKEYED.is_match(buf);
    hits_of(&DETECTORS, any, buf, out);
}

/// [`pattern_hits`] with the detectors reading the text as written, not
/// through JSON escapes: the reference the escape-reading ones are tested
/// against.
#[cfg(test)]
pub(crate) fn plain_pattern_hits(buf: &[u8], out: &mut Vec<(Detector, usize, usize)>) {
    static PLAIN: LazyLock<Vec<Pattern>> = LazyLock::new(|| detectors(Flavor::Plain));
    hits_of(&PLAIN, true, buf, out);
}

fn hits_of(detectors: &[Pattern], any: bool, buf: &[u8], out: &mut Vec<(Detector, usize, usize)>) {
    for d in detectors {
        if d.keyed.is_none() && !any {
            continue;
        }
        d.hits(buf, &mut |s, e| {
            out.push((d.kind, s, e));
            true
        });
    }
}

/// Every detector without keywords as one alternation, for a single
/// "anything here?" pass: the tokens without the boundary before them, so
/// one that follows a JSON escape's letter is seen too, and the literal
/// set stays small enough for the fastest prefilter.
static ANY_UNKEYED: LazyLock<Regex> = LazyLock::new(|| {
    let all: Vec<String> = DETECTORS
        .iter()
        .filter(|d| d.keyed.is_none())
        .map(|d| {
            let token =
                d.re.as_str()
                    .strip_prefix(BOUNDARY)
                    .unwrap_or(d.re.as_str());
            format!("(?:{token})")
        })
        .collect();
    Regex::new(&all.join("|")).expect("detector regexes are fixed and tested")
});

/// What a detector found on a line: its name, never the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub detector: &'static str,
}

/// The detectors plus this bottle's exact credential values.
#[derive(Clone, Default)]
pub struct Scanner {
    exact: Vec<Vec<u8>>,
}

impl fmt::Debug for Scanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scanner")
            .field(
                "exact",
                &format_args!("[{} values elided]", self.exact.len()),
            )
            .finish()
    }
}

/// A hit in a patch: where, and which detector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchFinding {
    /// The commit's full object id.
    pub commit: String,
    /// The file's path in the commit, as git prints it.
    pub file: String,
    /// 1-based line number in the file as of the commit.
    pub line: u64,
    pub detector: &'static str,
}

impl fmt::Display for PatchFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = self.commit.get(..12).unwrap_or(&self.commit);
        write!(
            f,
            "commit {short} {}:{}: {} detected",
            self.file, self.line, self.detector
        )
    }
}

impl Scanner {
    /// A scanner that also looks for these exact values (the real values of
    /// the bottle's credentials).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let exact = values
            .into_iter()
            .filter(|v| v.len() >= MIN_EXACT_LEN)
            .map(|v| v.as_bytes().to_vec())
            .collect();
        Scanner { exact }
    }

    /// The first detector that fires on `line`, exact values first.
    pub fn scan_line(&self, line: &[u8]) -> Option<Hit> {
        if self
            .exact
            .iter()
            .any(|v| memchr::memmem::find(line, v).is_some())
        {
            return Some(Hit {
                detector: Detector::BottleCredential.as_str(),
            });
        }
        for d in DETECTORS.iter() {
            let mut found = false;
            d.hits(line, &mut |_, _| {
                found = true;
                false
            });
            if found {
                return Some(Hit {
                    detector: d.kind.as_str(),
                });
            }
        }
        None
    }

    /// Every hit on an added line of `patch`, the output of
    /// `git log -p --format='commit %H' --unified=0` (any context size
    /// works). Lines are numbered from the hunk headers, so a content line
    /// that happens to start with `+++` is still content.
    pub fn scan_patch(&self, patch: &[u8]) -> Vec<PatchFinding> {
        let mut out = Vec::new();
        let mut commit = String::new();
        let mut file = String::new();
        // Lines of the current hunk still to come (old side, new side).
        let (mut old_left, mut new_left) = (0u64, 0u64);
        let mut new_line = 0u64;
        for raw in patch.split(|b| *b == b'\n') {
            if old_left > 0 || new_left > 0 {
                match raw.first() {
                    Some(b'+') => {
                        if let Some(hit) = self.scan_line(&raw[1..]) {
                            out.push(PatchFinding {
                                commit: commit.clone(),
                                file: file.clone(),
                                line: new_line,
                                detector: hit.detector,
                            });
                        }
                        new_line += 1;
                        new_left = new_left.saturating_sub(1);
                    }
                    Some(b'-') => old_left = old_left.saturating_sub(1),
                    Some(b'\\') => {} // "\ No newline at end of file"
                    _ => {
                        new_line += 1;
                        old_left = old_left.saturating_sub(1);
                        new_left = new_left.saturating_sub(1);
                    }
                }
                continue;
            }
            if let Some(rest) = raw.strip_prefix(b"commit ") {
                commit = String::from_utf8_lossy(rest).trim().to_owned();
            } else if let Some(rest) = raw.strip_prefix(b"+++ ") {
                let name = String::from_utf8_lossy(rest);
                file = name.strip_prefix("b/").unwrap_or(&name).to_owned();
            } else if let Some(rest) = raw.strip_prefix(b"@@ ") {
                if let Some((o, n, start)) = hunk_header(rest) {
                    (old_left, new_left, new_line) = (o, n, start);
                }
            }
        }
        out
    }
}

/// `-a[,b] +c[,d] @@…` → (b, d, c): lines on each side and the first new line.
fn hunk_header(rest: &[u8]) -> Option<(u64, u64, u64)> {
    let text = std::str::from_utf8(rest).ok()?;
    let mut parts = text.split(' ');
    let old = parts.next()?.strip_prefix('-')?;
    let new = parts.next()?.strip_prefix('+')?;
    let side = |s: &str| -> Option<(u64, u64)> {
        match s.split_once(',') {
            Some((start, len)) => Some((start.parse().ok()?, len.parse().ok()?)),
            None => Some((s.parse().ok()?, 1)),
        }
    };
    let (_, old_len) = side(old)?;
    let (new_start, new_len) = side(new)?;
    Some((old_len, new_len, new_start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(line: &str) -> Option<&'static str> {
        Scanner::new(["the-real-credential-value"])
            .scan_line(line.as_bytes())
            .map(|h| h.detector)
    }

    // Test keys are assembled at run time so this file holds no string a
    // scanner (ours or a host's) would flag.
    fn k(parts: &[&str]) -> String {
        parts.concat()
    }

    #[test]
    fn each_detector_fires_on_its_shape() {
        let cases = [
            (k(&["-----BEGIN RSA ", "PRIVATE KEY-----"]), "private-key"),
            (
                k(&["-----BEGIN OPENSSH ", "PRIVATE KEY-----"]),
                "private-key",
            ),
            (
                k(&["x = \"-----BEGIN ", "PRIVATE KEY-----\\n"]),
                "private-key",
            ),
            (
                k(&["-----BEGIN PGP ", "PRIVATE KEY BLOCK-----"]),
                "private-key",
            ),
            (k(&["token: gh", "p_", &"a1B2".repeat(9)]), "github-token"),
            (k(&["github_", "pat_", &"aB3_".repeat(21)]), "github-token"),
            (k(&["gl", "pat-", "xYz12-AbC34_dEf56gHi7"]), "gitlab-token"),
            (k(&["AK", "IA", "IOSFODNN7EXAMPLE"]), "aws-access-key"),
            (k(&["xo", "xb-", "1234567890-abcdefABCDEF"]), "slack-token"),
            (
                k(&["key=AI", "za", "SyD4x9Qk2LmN8pR5tV7wY1zB3cE6gH0jK_-"]),
                "gcp-api-key",
            ),
            (
                k(&["sk_", "live_", "4eC39HqLyjWDarjtT1zdp7dc"]),
                "stripe-key",
            ),
            (
                k(&[
                    "Bearer ey",
                    "JhbGciOiJIUzI1NiJ9.ey",
                    "JzdWIiOiIxMjM0NTY3ODkwIn0.",
                    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                ]),
                "jwt",
            ),
            (
                k(&["sk-", "ant-api03-", "Ab3dEf6hIj9kLm2nOp5qRs8t"]),
                "anthropic-key",
            ),
            (
                k(&["sk-", "proj-", "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"]),
                "openai-key",
            ),
            (
                k(&["sk-", "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb3dEf6hIj9kLm2n"]),
                "openai-key",
            ),
            (
                k(&["DB_PASS", "WORD=\"Zq8x", "xT4vLp9wR2mK7sB1\""]),
                "generic-secret-assignment",
            ),
            (
                k(&["api_", "key: 'a8Fk2LmQ9zX4vB7nR1tY'"]),
                "generic-secret-assignment",
            ),
            (
                k(&["client_", "secret := X9f2kLq8Zm4Vb7Nr1Ty5Wp3"]),
                "generic-secret-assignment",
            ),
            (
                "auth = the-real-credential-value;".to_string(),
                "bottle-credential",
            ),
        ];
        for (line, want) in cases {
            assert_eq!(hit(&line), Some(want), "{line}");
        }
    }

    #[test]
    fn near_misses_do_not_fire() {
        for line in [
            k(&["-----BEGIN ", "PUBLIC KEY-----"]),
            k(&["-----BEGIN ", "CERTIFICATE-----"]),
            "the word private key in prose".into(),
            k(&["gh", "p_short"]),
            k(&["gh", "x_", &"a1B2".repeat(9)]),
            k(&["gl", "pat-short"]),
            k(&["AK", "IA", "IOSFODNN7EXAMP"]),
            k(&["ak", "ia", "iosfodnn7example"]),
            k(&["xo", "xb-", "not-a-token"]),
            k(&["AI", "za", "short"]),
            k(&["sk_", "live_", "short"]),
            k(&["sk_", "live_", "onlylettersherenodigitsatall"]),
            k(&["ey", "JhbGciOiJIUzI1NiJ9.notjson.sig"]),
            k(&["sk-", "ant-short"]),
            k(&["sk-", "this-is-a-long-kebab-case-identifier-name"]),
            "risk-management-1234567890abcdefghijklmnopqrst".into(),
            "password = \"changeme\"".into(),
            "token = os.environ[\"TOKEN\"]".into(),
            "api_key = \"${API_KEY_FROM_THE_ENVIRONMENT}\"".into(),
            "secret_name = get_secret_from_vault_function".into(),
            "password = \"aaaaaaaaaaaaaaaa1\"".into(),
            "the-real-credential".into(),
        ] {
            assert_eq!(hit(&line), None, "{line}");
        }
    }

    #[test]
    fn short_exact_values_are_not_searched() {
        let s = Scanner::new(["short", "a-long-enough-value"]);
        assert_eq!(s.scan_line(b"a short line"), None);
        assert!(s.scan_line(b"x a-long-enough-value y").is_some());
        assert!(!format!("{s:?}").contains("long-enough"));
    }

    #[test]
    fn a_suppression_comment_changes_nothing() {
        let line = k(&["AK", "IA", "IOSFODNN7EXAMPLE # nosecret gitleaks:allow"]);
        assert_eq!(hit(&line), Some("aws-access-key"));
    }

    #[test]
    fn patches_name_commit_file_and_line() {
        let key = k(&["-----BEGIN OPENSSH ", "PRIVATE KEY-----"]);
        let aws = k(&["AK", "IA", "IOSFODNN7EXAMPLE"]);
        let patch = format!(
            "commit 0123456789abcdef0123456789abcdef01234567\n\
             \n\
             diff --git a/keys/id b/keys/id\n\
             new file mode 100644\n\
             --- /dev/null\n\
             +++ b/keys/id\n\
             @@ -0,0 +1,3 @@\n\
             +first\n\
             +{key}\n\
             +last\n\
             commit fedcba9876543210fedcba9876543210fedcba98\n\
             diff --git a/src/a.rs b/src/a.rs\n\
             --- a/src/a.rs\n\
             +++ b/src/a.rs\n\
             @@ -10,2 +10,0 @@ fn x()\n\
             -{aws}\n\
             -gone\n\
             @@ -40 +38,2 @@\n\
             -old\n\
             +++ {aws}\n\
             +fine\n"
        );
        let found = Scanner::default().scan_patch(patch.as_bytes());
        assert_eq!(
            found,
            vec![
                PatchFinding {
                    commit: "0123456789abcdef0123456789abcdef01234567".into(),
                    file: "keys/id".into(),
                    line: 2,
                    detector: "private-key",
                },
                PatchFinding {
                    commit: "fedcba9876543210fedcba9876543210fedcba98".into(),
                    file: "src/a.rs".into(),
                    line: 38,
                    detector: "aws-access-key",
                },
            ]
        );
        let shown = found[0].to_string();
        assert_eq!(shown, "commit 0123456789ab keys/id:2: private-key detected");
        assert!(!found.iter().any(|f| f.to_string().contains("IOSF")));
    }

    #[test]
    fn entropy_is_bits_per_byte() {
        assert_eq!(entropy(b""), 0.0);
        assert_eq!(entropy(b"aaaa"), 0.0);
        assert!((entropy(b"abcd") - 2.0).abs() < 1e-9);
    }
}
