//! Push: `POST /<name>.git/git-receive-pack`.
//!
//! The gate reads the ref-update commands itself (pkt-lines up to the
//! flush), then, before anything goes upstream:
//! 1. checks every update with [`GitRemote::check_update`] (mode, push
//!    patterns, protected, deletion; the fast-forward part once the pack is
//!    in), refusing the whole push if one is refused;
//! 2. refreshes the mirror, and refuses an update whose `old` is not the
//!    mirror's current value (stale: fetch first);
//! 3. indexes the pack into a quarantine repository whose object store
//!    borrows the mirror's (`objects/info/alternates`) with `git index-pack
//!    --stdin --fix-thin --strict`, and decides fast-forward with `git
//!    merge-base --is-ancestor`;
//! 4. scans every added line of every new commit (`git log -p` over the new
//!    tips, minus everything the mirror has) with [`crate::scan`];
//! 5. pushes from the quarantine to the upstream through the relay with
//!    `git push --atomic --porcelain`, one `--force-with-lease=<ref>:<the
//!    mirror's value>` per ref so nothing moved upstream in between is
//!    overwritten, and relays the upstream's per-ref result.
//!
//! The answer is a receive-pack report (`unpack ok`, `ok <ref>` / `ng <ref>
//! <reason>`), inside side-band-64k when the client asked for it, with a
//! `remote: git-gate: …` line (band 2) naming each refusal's rule. One
//! refused ref refuses the whole push.

use super::{audit, clean, fetch, full, pkt, Body, Gate};
use crate::log::GitRecord;
use crate::scan::Scanner;
use bottle_policy::{GitRemote, Oid, PushRefusal, RefUpdate, Verdict};
use futures_util::TryStreamExt;
use http_body_util::BodyDataStream;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest pack a push may carry.
pub const MAX_PACK: u64 = 1 << 30;
/// Most ref updates in one push.
pub const MAX_COMMANDS: usize = 1000;

/// One command of a receive-pack request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub old: Option<Oid>,
    pub new: Option<Oid>,
    pub refname: String,
}

/// The commands and the capabilities the client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Commands {
    pub commands: Vec<Command>,
    pub caps: Vec<String>,
}

impl Commands {
    pub fn has(&self, cap: &str) -> bool {
        self.caps.iter().any(|c| c == cap)
    }
}

fn oid(s: &str) -> Result<Option<Oid>, String> {
    let hex = (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("`{}` is not an object id", clean(s)));
    }
    Ok((!s.bytes().all(|b| b == b'0')).then(|| s.to_string()))
}

/// Reads the command list (up to its flush) from `r`.
pub async fn read_commands<R: AsyncRead + Unpin>(r: &mut R) -> Result<Commands, String> {
    let mut out = Commands::default();
    loop {
        let line = match pkt::read(r)
            .await
            .map_err(|e| format!("reading commands: {e}"))?
        {
            pkt::Pkt::Flush => break,
            pkt::Pkt::Data(d) => d,
            _ => return Err("unexpected delimiter in the command list".into()),
        };
        let line = match line.iter().position(|b| *b == 0) {
            Some(nul) if out.commands.is_empty() => {
                let caps = String::from_utf8_lossy(&line[nul + 1..]);
                out.caps = caps.split_whitespace().map(str::to_string).collect();
                line[..nul].to_vec()
            }
            _ => line,
        };
        let text = String::from_utf8(line).map_err(|_| "a command is not UTF-8".to_string())?;
        let text = text.trim_end_matches('\n');
        if text.starts_with("shallow ") {
            return Err("pushing from a shallow clone is not supported by the gate; fetch with --unshallow first".into());
        }
        let mut parts = text.splitn(3, ' ');
        let (Some(old), Some(new), Some(refname)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("malformed command `{}`", clean(text)));
        };
        out.commands.push(Command {
            old: oid(old)?,
            new: oid(new)?,
            refname: refname.to_string(),
        });
        if out.commands.len() > MAX_COMMANDS {
            return Err(format!("more than {MAX_COMMANDS} ref updates in one push"));
        }
    }
    if out.commands.is_empty() {
        return Err("no ref updates".into());
    }
    Ok(out)
}

/// The receive-pack answer.
#[derive(Debug, Default)]
pub struct Report {
    /// `None`: `unpack ok`.
    pub unpack_error: Option<String>,
    /// Per ref: `Ok` or the `ng` reason.
    pub refs: Vec<(String, Result<(), String>)>,
    /// Lines shown as `remote: git-gate: …`.
    pub messages: Vec<String>,
}

impl Report {
    /// Every ref refused: those in `reasons` with theirs, the rest because
    /// the push is all-or-nothing.
    fn refuse_all(cmds: &Commands, reasons: &HashMap<String, String>) -> Self {
        let refs = cmds
            .commands
            .iter()
            .map(|c| {
                let why = reasons.get(&c.refname).cloned().unwrap_or_else(|| {
                    "git-gate: not pushed: another ref in this push was refused (all-or-nothing)"
                        .into()
                });
                (c.refname.clone(), Err(why))
            })
            .collect();
        Report {
            unpack_error: None,
            refs,
            messages: Vec::new(),
        }
    }

    /// The bytes of the answer; `sideband` wraps it in side-band-64k.
    pub fn encode(&self, sideband: bool) -> Vec<u8> {
        let mut status = match &self.unpack_error {
            None => pkt::text("unpack ok"),
            Some(e) => pkt::text(&format!("unpack {}", one_line(e))),
        };
        for (refname, result) in &self.refs {
            status.extend(match result {
                Ok(()) => pkt::text(&format!("ok {refname}")),
                Err(why) => pkt::text(&format!("ng {refname} {}", one_line(why))),
            });
        }
        status.extend_from_slice(pkt::FLUSH);
        if !sideband {
            return status;
        }
        let mut out = Vec::new();
        for m in &self.messages {
            out.extend(pkt::band(
                2,
                format!("git-gate: {}\n", one_line(m)).as_bytes(),
            ));
        }
        out.extend(pkt::band(1, &status));
        out.extend_from_slice(pkt::FLUSH);
        out
    }
}

fn one_line(s: &str) -> String {
    clean(&s.replace(['\n', '\r'], "; "))
        .chars()
        .take(1000)
        .collect()
}

/// A quarantine repository, removed when dropped.
struct Quarantine(PathBuf);

impl Drop for Quarantine {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

static QUARANTINES: AtomicU64 = AtomicU64::new(0);

async fn quarantine(gate: &Gate, mirror: &Path) -> Result<Quarantine, String> {
    let root = gate.state.join("quarantine");
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let n = QUARANTINES.fetch_add(1, Ordering::Relaxed);
    let dir = root.join(format!("q-{}-{n}.git", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let q = Quarantine(dir.clone());
    let d = dir.display().to_string();
    gate.git
        .run(&root, &["init", "--bare", "--quiet", &d], &[], None)
        .await
        .map_err(|e| e.to_string())?;
    let alternates = dir.join("objects/info/alternates");
    std::fs::write(
        &alternates,
        format!("{}\n", mirror.join("objects").display()),
    )
    .map_err(|e| format!("cannot write {}: {e}", alternates.display()))?;
    Ok(q)
}

/// The mirror's refs: name → object id.
async fn refs(gate: &Gate, dir: &Path) -> Result<HashMap<String, Oid>, String> {
    let out = gate
        .git
        .run(
            dir,
            &["for-each-ref", "--format=%(objectname) %(refname)"],
            &[],
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(o, r)| (r.to_string(), o.to_string()))
        .collect())
}

/// Does `new` descend from `old` (in the quarantine, which sees both)?
async fn is_ancestor(gate: &Gate, q: &Path, old: &str, new: &str) -> bool {
    gate.git
        .run(q, &["merge-base", "--is-ancestor", old, new], &[], None)
        .await
        .is_ok()
}

/// Feeds the rest of `body` (the pack) to `git index-pack` in `q`.
async fn index_pack<R: AsyncRead + Unpin>(
    gate: &Gate,
    q: &Path,
    body: &mut R,
) -> Result<u64, String> {
    let mut cmd = gate
        .git
        .command(q, &["index-pack", "--stdin", "--fix-thin", "--strict"], &[]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run git index-pack: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("index-pack has no stdin")?;
    let mut limited = body.take(MAX_PACK + 1);
    let copied = tokio::io::copy(&mut limited, &mut stdin).await;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("git index-pack: {e}"))?;
    let n = copied.map_err(|e| format!("reading the pack: {e}"))?;
    if n > MAX_PACK {
        return Err(format!("the pack is larger than {MAX_PACK} bytes"));
    }
    if !out.status.success() {
        return Err(format!(
            "index-pack: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(n)
}

/// Secret findings on the commits `news` adds to what `known` has.
async fn scan(
    gate: &Gate,
    q: &Path,
    news: &[&str],
    known: &HashMap<String, Oid>,
    allow_ci: bool,
) -> Result<Vec<String>, String> {
    let mut revs = String::new();
    for n in news {
        revs.push_str(n);
        revs.push('\n');
    }
    for o in known.values() {
        revs.push('^');
        revs.push_str(o);
        revs.push('\n');
    }
    let out = gate
        .git
        .run(
            q,
            &[
                "log",
                "--stdin",
                "--format=commit %H",
                "-p",
                "--no-color",
                "--no-ext-diff",
                "--no-textconv",
                "--no-renames",
                "--diff-merges=first-parent",
                "--text",
                "--unified=0",
            ],
            &[],
            Some(revs.as_bytes()),
        )
        .await
        .map_err(|e| format!("cannot list the pushed commits: {e}"))?;
    let secrets = gate.shared.secrets.current();
    let scanner = Scanner::new(secrets.values().map(|(_, v)| v));
    let mut findings: Vec<String> = scanner
        .scan_patch(&out.stdout)
        .iter()
        .map(|f| f.to_string())
        .collect();
    if !allow_ci {
        findings.extend(ci_changes(&out.stdout));
    }
    Ok(findings)
}

/// Every CI configuration file the patch of `git log -p` touches, as
/// `commit <short>: <path>: ...`: the upstream runs those with the
/// repository's secrets and a token of its own.
fn ci_changes(patch: &[u8]) -> Vec<String> {
    let mut commit = String::new();
    let mut out = Vec::new();
    for line in String::from_utf8_lossy(patch).lines() {
        if let Some(c) = line.strip_prefix("commit ") {
            commit = c.chars().take(12).collect();
        } else if let Some(rest) = line.strip_prefix("diff --git a/") {
            // `diff --git a/P b/P` (no renames: both sides are one path).
            let path = rest.split(" b/").next().unwrap_or(rest);
            if bottle_policy::ci_config_path(path) {
                let f = format!("commit {commit}: {path} is CI configuration, which the upstream runs with its own token and secrets (allow_ci_changes = false)");
                if !out.contains(&f) {
                    out.push(f);
                }
            }
        }
    }
    out
}

/// Pushes the accepted updates upstream; per ref `Ok` or the upstream's
/// reason.
async fn push_upstream(
    gate: &Gate,
    remote: &GitRemote,
    q: &Path,
    cmds: &Commands,
    current: &HashMap<String, Oid>,
) -> Result<Vec<(String, Result<(), String>)>, String> {
    let name = remote.name.as_str();
    let url = gate.relay.url(name);
    let mut args: Vec<String> = vec![
        "push".into(),
        "--atomic".into(),
        "--porcelain".into(),
        "--no-verify".into(),
    ];
    let mut specs = Vec::new();
    for c in &cmds.commands {
        let Some(new) = &c.new else { continue };
        let expect = current.get(&c.refname).cloned().unwrap_or_default();
        args.push(format!("--force-with-lease={}:{expect}", c.refname));
        specs.push(format!("{new}:{}", c.refname));
    }
    args.push(url.clone());
    args.extend(specs);
    gate.relay.clear_error(name);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = gate.git.command(q, &argv, &[]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("cannot run git push: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let scrub = |s: &str| s.replace(&url, &remote.upstream.to_string());
    let mut results = Vec::new();
    for line in stdout.lines() {
        let mut cols = line.splitn(3, '\t');
        let (Some(flag), Some(spec), summary) = (cols.next(), cols.next(), cols.next()) else {
            continue;
        };
        let Some((_, dst)) = spec.split_once(':') else {
            continue;
        };
        let ok = matches!(flag, " " | "+" | "*" | "=");
        let result = if ok {
            Ok(())
        } else {
            Err(format!(
                "upstream refused: {}",
                scrub(summary.unwrap_or("rejected"))
            ))
        };
        results.push((dst.to_string(), result));
    }
    if results.is_empty() {
        let cause = gate
            .relay
            .last_error(name)
            .unwrap_or_else(|| scrub(String::from_utf8_lossy(&out.stderr).trim()));
        return Err(format!(
            "upstream {} push failed: {cause} [{}]",
            remote.upstream,
            scrub(&stdout)
        ));
    }
    Ok(results)
}

/// `POST /<name>.git/git-receive-pack`.
pub async fn receive_pack(
    gate: &Gate,
    remote: &GitRemote,
    req: Request<Incoming>,
    client: SocketAddr,
    started: Instant,
) -> Response<Body> {
    let name = remote.name.as_str();
    let mut record = GitRecord::new(client, name, "push");
    let gzip = req
        .headers()
        .get(hyper::header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let mut body: Box<dyn AsyncRead + Unpin + Send> = if gzip {
        match fetch::read_body(req, MAX_PACK).await {
            Ok(b) => Box::new(std::io::Cursor::new(b)),
            Err(e) => return bad_request(gate, client, record, started, &e),
        }
    } else {
        let stream = BodyDataStream::new(req.into_body()).map_err(std::io::Error::other);
        Box::new(tokio_util::io::StreamReader::new(stream))
    };
    let cmds = match read_commands(&mut body).await {
        Ok(c) => c,
        Err(e) => return bad_request(gate, client, record, started, &e),
    };
    let sideband = cmds.has("side-band-64k");
    let (report, decision, rule, reason) = decide(gate, remote, &cmds, &mut body).await;
    // Whatever happened, the client is done sending only once the body is
    // read; answer after that so it reads the report, not a reset.
    let _ = tokio::io::copy(&mut (&mut body).take(MAX_PACK), &mut tokio::io::sink()).await;
    for (refname, result) in &report.refs {
        let cmd = cmds.commands.iter().find(|c| &c.refname == refname);
        let r = match result {
            Ok(()) => "ok".to_string(),
            Err(e) => e.clone(),
        };
        record.add_ref(
            refname,
            cmd.and_then(|c| c.old.as_deref()),
            cmd.and_then(|c| c.new.as_deref()),
            &r,
        );
    }
    record.decision = decision;
    record.rule = rule;
    record.reason = reason;
    let bytes = report.encode(sideband);
    record.bytes_down = bytes.len() as u64;
    audit(gate, client, record, started);
    full(
        StatusCode::OK,
        "application/x-git-receive-pack-result",
        bytes,
    )
}

fn bad_request(
    gate: &Gate,
    client: SocketAddr,
    mut record: GitRecord,
    started: Instant,
    why: &str,
) -> Response<Body> {
    record.rule = "malformed-push".into();
    record.reason = Some(why.to_string());
    audit(gate, client, record, started);
    super::relay::text(StatusCode::BAD_REQUEST, &format!("git-gate: {why}\n"))
}

/// Everything between reading the commands and answering: the report, the
/// decision, the rule and why.
/// The policy's decision on each `(command, fast_forward)`, on top of the
/// refusals already found (`reasons` per ref, `messages` for the agent):
/// `None` when nothing is refused, else the all-or-nothing refusal report
/// and why.
fn check_all(
    remote: &GitRemote,
    cmds: &Commands,
    updates: &[(&Command, bool)],
    approved: &HashMap<String, String>,
    mut reasons: HashMap<String, String>,
    mut messages: Vec<String>,
) -> Option<(Report, Option<String>)> {
    for (c, ff) in updates {
        let u = RefUpdate {
            refname: c.refname.clone(),
            old: c.old.clone(),
            new: c.new.clone(),
            fast_forward: *ff,
        };
        if let Err(refusal) = remote.check_update_with(&u, approved.contains_key(&c.refname)) {
            messages.push(refusal.to_string());
            reasons.insert(c.refname.clone(), format!("git-gate: {refusal}"));
        }
    }
    if reasons.is_empty() {
        return None;
    }
    let mut report = Report::refuse_all(cmds, &reasons);
    report.messages = messages.clone();
    Some((report, Some(messages.join("; "))))
}

async fn decide<R: AsyncRead + Unpin>(
    gate: &Gate,
    remote: &GitRemote,
    cmds: &Commands,
    body: &mut R,
) -> (Report, Verdict, String, Option<String>) {
    let name = remote.name.as_str();
    // The refs the ref-name rules refuse and a human approved pushing
    // (supervise's request_git_push); a `once` approval is claimed for this
    // push and given back unless it lands.
    let mut claims = Vec::new();
    let mut approved: HashMap<String, String> = HashMap::new();
    if let Some(sup) = &gate.shared.supervisor {
        for c in &cmds.commands {
            let u = RefUpdate {
                refname: c.refname.clone(),
                old: c.old.clone(),
                new: c.new.clone(),
                fast_forward: true,
            };
            let needs = matches!(
                remote.check_update(&u),
                Err(PushRefusal::Protected { .. } | PushRefusal::NotPushable { .. })
            );
            if !needs {
                continue;
            }
            if let Some((rule, claim)) = sup.claim_push(name, &c.refname) {
                approved.insert(c.refname.clone(), rule);
                claims.extend(claim);
            }
        }
    }
    let (report, verdict, rule, reason) = decide_claimed(gate, remote, cmds, body, &approved).await;
    if let Some(sup) = &gate.shared.supervisor {
        if verdict != Verdict::Allow {
            for claim in claims {
                sup.return_push(claim);
            }
        }
    }
    (report, verdict, rule, reason)
}

/// [`decide`] with the approvals claimed.
async fn decide_claimed<R: AsyncRead + Unpin>(
    gate: &Gate,
    remote: &GitRemote,
    cmds: &Commands,
    body: &mut R,
    approved: &HashMap<String, String>,
) -> (Report, Verdict, String, Option<String>) {
    let name = remote.name.as_str();
    let rule_of = |r: &str| {
        let mut rule = format!("git.remote \"{name}\" {r}");
        let mut by: Vec<&String> = approved.values().collect();
        by.sort();
        by.dedup();
        for b in by {
            rule.push_str(&format!(", {b}"));
        }
        rule
    };
    // 1. The policy, as far as it can be decided without the pack.
    let updates: Vec<(&Command, bool)> = cmds.commands.iter().map(|c| (c, true)).collect();
    if let Some(refused) = check_all(remote, cmds, &updates, approved, HashMap::new(), Vec::new()) {
        return (refused.0, Verdict::Deny, rule_of("push"), refused.1);
    }
    let fail_all = |why: String, rule: String| {
        let reasons: HashMap<String, String> = cmds
            .commands
            .iter()
            .map(|c| (c.refname.clone(), format!("git-gate: {why}")))
            .collect();
        let mut report = Report::refuse_all(cmds, &reasons);
        report.messages = vec![why.clone()];
        (report, Verdict::Deny, rule, Some(why))
    };
    // 2. The mirror, fresh.
    if let Err(cause) = gate.mirrors.refresh(name).await {
        return fail_all(
            format!("upstream {} unreachable: {cause}", remote.upstream),
            "upstream-unreachable".into(),
        );
    }
    let mirror = gate.mirrors.dir(name);
    let current = match refs(gate, &mirror).await {
        Ok(r) => r,
        Err(e) => {
            return fail_all(
                format!("cannot read the mirror: {e}"),
                "git-gate-error".into(),
            )
        }
    };
    // 3. The pack, into a quarantine.
    let q = match quarantine(gate, &mirror).await {
        Ok(q) => q,
        Err(e) => {
            return fail_all(
                format!("cannot make a quarantine: {e}"),
                "git-gate-error".into(),
            )
        }
    };
    if cmds.commands.iter().any(|c| c.new.is_some()) {
        if let Err(e) = index_pack(gate, &q.0, body).await {
            let (mut report, v, _, _) =
                fail_all(format!("the pack was refused: {e}"), String::new());
            report.unpack_error = Some(e.clone());
            return (report, v, "invalid-pack".into(), Some(e));
        }
    }
    // Stale and fast-forward, against the mirror's values.
    let mut reasons = HashMap::new();
    let mut messages = Vec::new();
    let mut updates = Vec::new();
    for c in &cmds.commands {
        let cur = current.get(&c.refname);
        if c.old.as_ref() != cur {
            let why = format!(
                "{}: stale: the upstream has {} (you pushed over {}); fetch, rebase or merge, and push again",
                c.refname,
                cur.map_or("no such ref".to_string(), |o| o.chars().take(12).collect()),
                c.old.as_deref().map_or("nothing".to_string(), |o| o.chars().take(12).collect()),
            );
            messages.push(why.clone());
            reasons.insert(c.refname.clone(), format!("git-gate: {why}"));
            continue;
        }
        let (Some(cur), Some(new)) = (cur, &c.new) else {
            continue;
        };
        updates.push((c, is_ancestor(gate, &q.0, cur, new).await));
    }
    if let Some(refused) = check_all(remote, cmds, &updates, approved, reasons, messages) {
        return (refused.0, Verdict::Deny, rule_of("push"), refused.1);
    }
    // 4. Secrets in the new commits.
    let news: Vec<&str> = cmds
        .commands
        .iter()
        .filter_map(|c| c.new.as_deref())
        .collect();
    match scan(gate, &q.0, &news, &current, remote.allow_ci_changes).await {
        Ok(findings) if findings.is_empty() => {}
        Ok(findings) => {
            let mut msgs: Vec<String> = findings
                .iter()
                .map(|f| format!("secret-scan: {f}"))
                .collect();
            msgs.push("remove the secret from these commits (git commit --amend, git rebase -i) and push again; the gate honours no suppression comment".into());
            let reasons: HashMap<String, String> = cmds
                .commands
                .iter()
                .map(|c| (c.refname.clone(), "git-gate: secret-scan: a pushed commit holds a secret (see the remote: lines)".to_string()))
                .collect();
            let mut report = Report::refuse_all(cmds, &reasons);
            report.messages = msgs;
            return (
                report,
                Verdict::Deny,
                "secret-scan".into(),
                Some(findings.join("; ")),
            );
        }
        Err(e) => return fail_all(e, "secret-scan".into()),
    }
    // 5. Upstream.
    match push_upstream(gate, remote, &q.0, cmds, &current).await {
        Ok(results) => {
            let all_ok = results.iter().all(|(_, r)| r.is_ok());
            let mut refs = Vec::new();
            for c in &cmds.commands {
                let r = results
                    .iter()
                    .find(|(d, _)| d == &c.refname)
                    .map(|(_, r)| r.clone())
                    .unwrap_or_else(|| Err("upstream gave no result for this ref".into()));
                refs.push((c.refname.clone(), r));
            }
            let messages: Vec<String> = refs
                .iter()
                .filter_map(|(r, res)| res.as_ref().err().map(|e| format!("{r}: {e}")))
                .collect();
            let reason = (!messages.is_empty()).then(|| messages.join("; "));
            let report = Report {
                unpack_error: None,
                refs,
                messages,
            };
            let verdict = if all_ok {
                Verdict::Allow
            } else {
                Verdict::Deny
            };
            let rule = if all_ok {
                rule_of("push")
            } else {
                "upstream-refused".into()
            };
            (report, verdict, rule, reason)
        }
        Err(e) => fail_all(e, "upstream-unreachable".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_commands_and_caps() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let z = "0".repeat(40);
        let mut body = pkt::line(
            format!("{z} {a} refs/heads/agent/x\0report-status side-band-64k agent=git/2\n")
                .as_bytes(),
        );
        body.extend(pkt::text(&format!("{b} {z} refs/heads/old")));
        body.extend_from_slice(pkt::FLUSH);
        body.extend_from_slice(b"PACK...");
        let mut r: &[u8] = &body;
        let cmds = read_commands(&mut r).await.unwrap();
        assert_eq!(r, b"PACK...");
        assert!(cmds.has("side-band-64k") && cmds.has("report-status"));
        assert_eq!(
            cmds.commands,
            vec![
                Command {
                    old: None,
                    new: Some(a.clone()),
                    refname: "refs/heads/agent/x".into()
                },
                Command {
                    old: Some(b.clone()),
                    new: None,
                    refname: "refs/heads/old".into()
                },
            ]
        );
        for bad in [
            pkt::text("nonsense"),
            pkt::text(&format!("{a} xyz refs/heads/x")),
            pkt::text(&format!("shallow {a}")),
            Vec::new(),
        ] {
            let mut v = bad.clone();
            v.extend_from_slice(pkt::FLUSH);
            let mut r: &[u8] = &v;
            assert!(
                read_commands(&mut r).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(&bad)
            );
        }
    }

    #[test]
    fn report_in_and_out_of_side_band() {
        let report = Report {
            unpack_error: None,
            refs: vec![
                ("refs/heads/a".into(), Ok(())),
                (
                    "refs/heads/main".into(),
                    Err("git-gate: protected\nx".into()),
                ),
            ],
            messages: vec!["protected".into()],
        };
        let plain = report.encode(false);
        assert_eq!(
            plain,
            [
                pkt::text("unpack ok"),
                pkt::text("ok refs/heads/a"),
                pkt::text("ng refs/heads/main git-gate: protected; x"),
                b"0000".to_vec()
            ]
            .concat()
        );
        let banded = report.encode(true);
        let mut expect = pkt::band(2, b"git-gate: protected\n");
        expect.extend(pkt::band(1, &plain));
        expect.extend_from_slice(b"0000");
        assert_eq!(banded, expect);
    }
}
