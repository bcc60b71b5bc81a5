//! The git gate end to end, in-process: the real sidecar with its git gate
//! on 127.0.0.1, a real smart-HTTP upstream (`git http-backend` as CGI
//! behind a small TLS server signed by the test upstream CA, requiring the
//! token as Basic auth), and the real `git` CLI as the agent.
//!
//! The upstream is `git.test`, resolved by the sidecar's fixed test resolver
//! to 127.0.0.1; a loopback address is never reachable through the
//! destination guard unless `egress.allow` names it, so each test's policy
//! allows `127.0.0.1:<upstream port>` (exactly as an egress test would).

#![allow(
    clippy::disallowed_methods,
    reason = "the tests' real clients and upstream: git itself"
)]

mod common;

use base64::Engine as _;
use bottle_sidecar::guard::{LocalNetSource, Resolver};
use bottle_sidecar::log::{Logger, RateLimit};
use bottle_sidecar::{RunConfig, Sidecar};
use bytes::Bytes;
use common::{temp_dir, Capture, Pki};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::oneshot;

const TOKEN: &str = "ghp_TestTokenValue0123456789abcdefABCDEF";

/// The test upstream: `git http-backend` over TLS for the bare repos in
/// `root`.
struct Upstream {
    port: u16,
    root: PathBuf,
    /// GETs of `info/refs` seen.
    advertisements: Arc<AtomicUsize>,
    /// While set, every connection is closed at once.
    down: Arc<AtomicBool>,
    /// Delay before answering `info/refs`.
    delay_ms: Arc<AtomicUsize>,
}

async fn upstream(pki: &Pki) -> Upstream {
    let root = temp_dir("git-upstream");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.origin_tls(&["git.test"]));
    let advertisements = Arc::new(AtomicUsize::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let delay_ms = Arc::new(AtomicUsize::new(0));
    let (r, a, d, w) = (
        root.clone(),
        advertisements.clone(),
        down.clone(),
        delay_ms.clone(),
    );
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if d.load(Ordering::SeqCst) {
                continue; // dropped: the connection is closed
            }
            let (acceptor, r, a, w) = (acceptor.clone(), r.clone(), a.clone(), w.clone());
            let d = d.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(move |req| {
                    let (r, a, w, d) = (r.clone(), a.clone(), w.clone(), d.clone());
                    async move {
                        // Down: kept-alive connections are cut too.
                        if d.load(Ordering::SeqCst) {
                            return Err(std::io::Error::other("upstream down"));
                        }
                        Ok(cgi(req, &r, &a, &w).await)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Upstream {
        port,
        root,
        advertisements,
        down,
        delay_ms,
    }
}

async fn cgi(
    req: Request<Incoming>,
    root: &Path,
    advertisements: &AtomicUsize,
    delay_ms: &AtomicUsize,
) -> Response<Full<Bytes>> {
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}"))
    );
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if auth != Some(want.as_str()) {
        let mut r = Response::new(Full::new(Bytes::from_static(b"auth required\n")));
        *r.status_mut() = hyper::StatusCode::UNAUTHORIZED;
        r.headers_mut()
            .insert("www-authenticate", "Basic realm=\"git\"".parse().unwrap());
        return r;
    }
    if req.uri().path().ends_with("/info/refs") {
        advertisements.fetch_add(1, Ordering::SeqCst);
        let ms = delay_ms.load(Ordering::SeqCst) as u64;
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (ctype, enc, proto) = (
        header("content-type"),
        header("content-encoding"),
        header("git-protocol"),
    );
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut child = Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", ctype)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", enc)
        .env("GIT_PROTOCOL", proto)
        .env("REMOTE_USER", "agent")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await.unwrap().stdout;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
        .unwrap();
    let head = String::from_utf8_lossy(&out[..split.0]).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(out[split.0 + split.1..].to_vec())));
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            let code: u16 = v.split(' ').next().unwrap().parse().unwrap();
            *resp.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
        } else if let (Ok(k), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            hyper::header::HeaderValue::from_str(v),
        ) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

/// The git CLI, with nothing from the user's environment.
async fn git(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let home = dir.parent().unwrap_or(dir);
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Agent",
            "-c",
            "user.email=agent@bottle.test",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "advice.detachedHead=false",
        ])
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

async fn ok(dir: &Path, args: &[&str]) -> String {
    let (ok, out, err) = git(dir, args).await;
    assert!(ok, "git {args:?} failed:\n{out}\n{err}");
    out.trim().to_string()
}

/// A bare repo `<name>.git` upstream with one commit on main; returns the
/// seed work tree (commit there and push to the bare repo to change the
/// upstream behind the gate's back).
async fn seed(up: &Upstream, name: &str) -> PathBuf {
    let work = temp_dir("git-seed");
    ok(&work, &["init", "-q", "-b", "main", "."]).await;
    std::fs::write(work.join("README"), "hello\n").unwrap();
    ok(&work, &["add", "README"]).await;
    ok(&work, &["commit", "-q", "-m", "first"]).await;
    let bare = up.root.join(format!("{name}.git"));
    let b = bare.display().to_string();
    ok(
        &up.root,
        &["clone", "-q", "--bare", &work.display().to_string(), &b],
    )
    .await;
    ok(&bare, &["config", "http.receivepack", "true"]).await;
    work
}

struct Gate {
    addr: SocketAddr,
    log: Arc<Capture>,
    children: bottle_sidecar::gitgate::git::Git,
    _pki_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Gate {
    fn url(&self, name: &str) -> String {
        format!("http://{}/{name}.git", self.addr)
    }

    fn git_lines(&self) -> Vec<Value> {
        self.log
            .json()
            .into_iter()
            .filter(|v| v["service"] == "git-gate")
            .collect()
    }
}

/// The sidecar with only its git gate on, for `remotes` (JSON objects;
/// `upstream` defaults to `https://git.test:<port>/app.git`, the credential
/// to GIT_TOKEN).
async fn gate(pki: Pki, up: &Upstream, remotes: Vec<Value>) -> Gate {
    gate_with(&pki, up, remotes, None).await
}

/// [`gate`], with supervise on over the queue `supervise` when given.
async fn gate_with(
    pki: &Pki,
    up: &Upstream,
    remotes: Vec<Value>,
    supervise: Option<&Path>,
) -> Gate {
    let remotes: Vec<Value> = remotes
        .into_iter()
        .map(|mut r| {
            let o = r.as_object_mut().unwrap();
            o.entry("upstream")
                .or_insert(json!(format!("https://git.test:{}/app.git", up.port)));
            o.entry("credential").or_insert(json!("GIT_TOKEN"));
            r
        })
        .collect();
    let policy = json!({
        "format": 1,
        "bottle": "test",
        "egress": {"allow": [format!("127.0.0.1:{}", up.port)]},
        "git": {"remotes": remotes},
        "supervise": {"enabled": supervise.is_some()},
    });
    let policy_path = pki.dir.join("policy.json");
    std::fs::write(&policy_path, policy.to_string()).unwrap();
    std::fs::write(
        pki.dir.join("secrets.json"),
        json!({"format": 1, "credentials": {"GIT_TOKEN": {"value": TOKEN, "placeholder": "bottle-placeholder-git-token-0"}}}).to_string(),
    )
    .unwrap();
    let log = Arc::new(Capture::default());
    let logger = Logger::new(log.clone(), log.clone(), RateLimit::default());
    let mut config = RunConfig::new(&policy_path);
    config.git_listen = Some("127.0.0.1:0".parse().unwrap());
    config.git_state = temp_dir("git-state");
    config.supervise_state = supervise.map(Path::to_path_buf);
    config.reload_interval = Duration::from_millis(50);
    config.resolver = Resolver::fixed([("git.test", vec!["127.0.0.1".parse().unwrap()])]);
    config.local_net = LocalNetSource::Fixed(bottle_policy::LocalNet {
        gateways: vec!["198.51.100.1".parse().unwrap()],
        own: vec!["198.51.100.2".parse().unwrap()],
    });
    let sidecar = Sidecar::start(&config, logger).await.unwrap();
    let addr = sidecar
        .addrs()
        .git
        .expect("the gate listens when there are remotes");
    let children = sidecar.git_children().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(sidecar.serve(async {
        let _ = stopped.await;
    }));
    Gate {
        addr,
        log,
        children,
        _pki_dir: pki.dir.clone(),
        stop: Some(stop),
    }
}

fn upstream_rev(up: &Upstream, refname: &str) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--verify", "-q", refname])
        .current_dir(up.root.join("app.git"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn assert_no_token(what: &str, text: &str) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}"));
    assert!(!text.contains(TOKEN), "the token is in {what}: {text}");
    assert!(
        !text.contains(&basic),
        "the Basic credential is in {what}: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clone_fetch_push_and_every_refusal() {
    let pki = Pki::new();
    let up = upstream(&pki).await;
    let seed_work = seed(&up, "app").await;
    let g = gate(
        pki,
        &up,
        vec![
            json!({"name": "app", "push": ["agent/*", "main"], "protected": ["main"]}),
            json!({"name": "ro", "push": ["agent/*"], "mode": "fetch"}),
        ],
    )
    .await;
    let agent = temp_dir("git-agent");
    let work = agent.join("work");

    // Clone.
    ok(&agent, &["clone", "-q", &g.url("app"), "work"]).await;
    assert_eq!(
        std::fs::read_to_string(work.join("README")).unwrap(),
        "hello\n"
    );

    // Fetch after an upstream change.
    std::fs::write(seed_work.join("CHANGE"), "upstream moved\n").unwrap();
    ok(&seed_work, &["add", "CHANGE"]).await;
    ok(&seed_work, &["commit", "-q", "-m", "upstream change"]).await;
    let bare = up.root.join("app.git").display().to_string();
    ok(&seed_work, &["push", "-q", &bare, "main"]).await;
    let moved = upstream_rev(&up, "refs/heads/main").unwrap();
    ok(&work, &["fetch", "-q", "origin"]).await;
    assert_eq!(ok(&work, &["rev-parse", "origin/main"]).await, moved);
    ok(&work, &["merge", "-q", "--ff-only", "origin/main"]).await;

    // ls-remote over protocol v2 and v0 agree with the upstream.
    for v in ["2", "0"] {
        let out = ok(
            &agent,
            &[
                "-c",
                &format!("protocol.version={v}"),
                "ls-remote",
                &g.url("app"),
            ],
        )
        .await;
        assert!(
            out.contains(&format!("{moved}\trefs/heads/main")),
            "v{v}: {out}"
        );
    }

    // A push to agent/x is accepted and lands upstream.
    std::fs::write(work.join("feature"), "agent work\n").unwrap();
    ok(&work, &["add", "feature"]).await;
    ok(&work, &["commit", "-q", "-m", "agent work"]).await;
    let head = ok(&work, &["rev-parse", "HEAD"]).await;
    ok(&work, &["push", "-q", "origin", "HEAD:refs/heads/agent/x"]).await;
    assert_eq!(
        upstream_rev(&up, "refs/heads/agent/x").as_deref(),
        Some(head.as_str())
    );

    // main is protected (though `push` lists it).
    let (pushed, _, err) = git(&work, &["push", "origin", "HEAD:refs/heads/main"]).await;
    assert!(!pushed, "{err}");
    assert!(err.contains("remote: git-gate: git.remote \"app\": refs/heads/main is protected (protected = \"main\")"), "{err}");
    assert_eq!(upstream_rev(&up, "refs/heads/main").unwrap(), moved);

    // A ref outside `push`.
    let (pushed, _, err) = git(&work, &["push", "origin", "HEAD:refs/heads/feature"]).await;
    assert!(
        !pushed && err.contains("matches no push pattern (push = [\"agent/*\", \"main\"])"),
        "{err}"
    );

    // Force-push refused.
    ok(&work, &["reset", "-q", "--hard", "HEAD~1"]).await;
    std::fs::write(work.join("other"), "rewritten\n").unwrap();
    ok(&work, &["add", "other"]).await;
    ok(&work, &["commit", "-q", "-m", "rewritten"]).await;
    let (pushed, _, err) = git(&work, &["push", "-f", "origin", "HEAD:refs/heads/agent/x"]).await;
    assert!(
        !pushed && err.contains("non-fast-forward refused (allow_force = false)"),
        "{err}"
    );
    assert_eq!(
        upstream_rev(&up, "refs/heads/agent/x").as_deref(),
        Some(head.as_str())
    );

    // Deletion refused.
    let (pushed, _, err) = git(&work, &["push", "origin", ":refs/heads/agent/x"]).await;
    assert!(!pushed && err.contains("deletion refused"), "{err}");
    assert!(upstream_rev(&up, "refs/heads/agent/x").is_some());

    // A commit carrying a private key: refused naming file and line, never
    // the key.
    let key_body = "MIIEsecretKEYbodyTHATmustNEVERleak0123456789";
    let pem = format!(
        "# deploy key\n\n-----BEGIN RSA {}-----\n{key_body}\n-----END RSA {}-----\n",
        "PRIVATE KEY", "PRIVATE KEY"
    );
    std::fs::create_dir_all(work.join("keys")).unwrap();
    std::fs::write(work.join("keys/id_rsa"), pem).unwrap();
    ok(&work, &["add", "keys/id_rsa"]).await;
    ok(&work, &["commit", "-q", "-m", "add key"]).await;
    let (pushed, _, err) = git(&work, &["push", "origin", "HEAD:refs/heads/agent/y"]).await;
    assert!(!pushed, "{err}");
    assert!(err.contains("keys/id_rsa:3: private-key detected"), "{err}");
    assert!(!err.contains(key_body), "{err}");
    assert_eq!(upstream_rev(&up, "refs/heads/agent/y"), None);

    // A mode = "fetch" remote clones but refuses every push.
    ok(&agent, &["clone", "-q", &g.url("ro"), "ro"]).await;
    let ro = agent.join("ro");
    let (pushed, _, err) = git(&ro, &["push", "origin", "HEAD:refs/heads/agent/z"]).await;
    assert!(
        !pushed && err.contains("git-gate: git.remote \"ro\" is mode = \"fetch\": push refused"),
        "{err}"
    );

    // Not a remote: 404 naming the known ones.
    let (cloned, _, err) = git(&agent, &["clone", "-q", &g.url("nope"), "nope"]).await;
    assert!(!cloned, "{err}");

    // The audit: one line per operation, the push with its refs; the token
    // in no audit line and in no child's argv or environment.
    let lines = g.git_lines();
    let accepted = lines
        .iter()
        .find(|l| l["op"] == "push" && l["decision"] == "allow")
        .expect("an allowed push line");
    assert_eq!(accepted["refs"][0]["ref"], "refs/heads/agent/x");
    assert_eq!(accepted["refs"][0]["result"], "ok");
    assert!(lines
        .iter()
        .any(|l| l["op"] == "push" && l["rule"] == "secret-scan"));
    assert!(lines
        .iter()
        .any(|l| l["op"] == "fetch" && l["decision"] == "allow"));
    for raw in g.log.raw() {
        assert_no_token("the audit", &raw);
        assert!(!raw.contains(key_body), "{raw}");
    }
    let children = g.children.spawned();
    assert!(children.iter().any(|c| c.argv.iter().any(|a| a == "push")));
    for c in children {
        assert_no_token("a child's argv", &c.argv.join(" "));
        assert_no_token("a child's environment", &c.env.join(" "));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_down_fails_closed_unless_stale_ok() {
    let pki = Pki::new();
    let up = upstream(&pki).await;
    seed(&up, "app").await;
    let g = gate(
        pki,
        &up,
        vec![
            json!({"name": "app", "push": ["agent/*"]}),
            json!({"name": "cached", "push": ["agent/*"], "stale_ok": true}),
        ],
    )
    .await;
    let agent = temp_dir("git-agent");
    ok(&agent, &["clone", "-q", &g.url("app"), "a1"]).await;
    ok(&agent, &["clone", "-q", &g.url("cached"), "c1"]).await;

    up.down.store(true, Ordering::SeqCst);
    let (cloned, _, err) = git(&agent, &["clone", "-q", &g.url("app"), "a2"]).await;
    assert!(!cloned, "{err}");
    assert!(
        err.contains("git-gate: upstream https://git.test:"),
        "{err}"
    );
    assert!(err.contains("unreachable"), "{err}");
    assert!(g
        .git_lines()
        .iter()
        .any(|l| l["rule"] == "upstream-unreachable"));

    ok(&agent, &["clone", "-q", &g.url("cached"), "c2"]).await;
    assert!(agent.join("c2/README").exists());
    assert!(g
        .git_lines()
        .iter()
        .any(|l| l["remote"] == "cached" && l["stale"] == true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_fetches_share_one_refresh() {
    let pki = Pki::new();
    let up = upstream(&pki).await;
    seed(&up, "app").await;
    let g = gate(pki, &up, vec![json!({"name": "app", "push": ["agent/*"]})]).await;
    let agent = temp_dir("git-agent");
    ok(&agent, &["clone", "-q", &g.url("app"), "first"]).await;
    let per_refresh = up.advertisements.swap(0, Ordering::SeqCst);
    assert!(per_refresh > 0);

    up.delay_ms.store(700, Ordering::SeqCst);
    let url = g.url("app");
    let one = ["clone", "-q", url.as_str(), "one"];
    let two = ["clone", "-q", url.as_str(), "two"];
    let (a, b) = tokio::join!(git(&agent, &one), git(&agent, &two));
    assert!(a.0 && b.0, "{a:?} {b:?}");
    assert_eq!(
        up.advertisements.load(Ordering::SeqCst),
        per_refresh,
        "two concurrent clones should cause one upstream refresh"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_destination_guard_applies_to_the_upstream() {
    // Without `127.0.0.1:<port>` in egress.allow the loopback upstream is
    // refused by the guard, as egress would refuse it.
    let pki = Pki::new();
    let up = upstream(&pki).await;
    seed(&up, "app").await;
    let g = gate(pki, &up, vec![json!({"name": "app"})]).await;
    let policy_path = g._pki_dir.join("policy.json");
    let mut policy: Value =
        serde_json::from_str(&std::fs::read_to_string(&policy_path).unwrap()).unwrap();
    policy["egress"]["allow"] = json!([]);
    common::replace_file(&policy_path, &policy.to_string());
    // The reload loop picks it up.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let agent = temp_dir("git-agent");
    let (cloned, _, err) = git(&agent, &["clone", "-q", &g.url("app"), "x"]).await;
    assert!(!cloned, "{err}");
    assert!(
        err.contains("destination-guard") && err.contains("loopback"),
        "{err}"
    );
}

/// Files a push request for `refname` as the MCP tool would; its id.
fn file_push(queue: &Path, refname: &str) -> bottle_policy::ProposalId {
    use bottle_policy::{Ask, AskedRef, Proposal, QueueDir, RemoteName, Text};
    let q = QueueDir::new(queue);
    q.create().unwrap();
    let now = bottle_sidecar::supervise::now_secs();
    let p = Proposal {
        id: QueueDir::new_id().unwrap(),
        bottle: "test".into(),
        created: now,
        expires: now + 300,
        ask: Ask::GitPush {
            remote: RemoteName::parse("app").unwrap(),
            refname: AskedRef::parse(refname).unwrap(),
        },
        reason: Text::clean("release the fix").unwrap(),
    };
    q.file_proposal(&p).unwrap();
    p.id
}

/// Approves request `id` with `scope`, as `bottle approve` does.
fn approve(queue: &Path, id: bottle_policy::ProposalId, scope: bottle_policy::Scope) {
    use bottle_policy::supervise::{Decision, Verdict};
    let now = bottle_sidecar::supervise::now_secs();
    let d = Decision {
        id,
        verdict: Verdict::Approve,
        scope,
        note: None,
        decided: now,
        edited: None,
    };
    bottle_policy::QueueDir::new(queue).decide(&d, now).unwrap();
}

/// A human's approval of a push to a protected ref lets exactly that push
/// through (once), and never a rewrite; a session approval outlives a
/// sidecar restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approved_push_passes_the_ref_rules_and_nothing_else() {
    let pki = Pki::new();
    let up = upstream(&pki).await;
    seed(&up, "app").await;
    let queue = temp_dir("git-supervise");
    let remotes = vec![json!({"name": "app", "push": ["agent/*"], "protected": ["main"]})];
    // Filed before the sidecar starts (it reads waiting proposals back),
    // approved once it runs.
    let id = file_push(&queue, "main");
    let g = gate_with(&pki, &up, remotes.clone(), Some(&queue)).await;
    approve(&queue, id, bottle_policy::Scope::Once);
    let agent = temp_dir("git-agent");
    let work = agent.join("work");
    ok(&agent, &["clone", "-q", &g.url("app"), "work"]).await;
    std::fs::write(work.join("fix"), "the fix\n").unwrap();
    ok(&work, &["add", "fix"]).await;
    ok(&work, &["commit", "-q", "-m", "fix"]).await;
    let head = ok(&work, &["rev-parse", "HEAD"]).await;
    // The once approval is applied within a poll; then one push passes.
    let mut pushed = false;
    for _ in 0..40 {
        let (done, _, err) = git(&work, &["push", "origin", "HEAD:refs/heads/main"]).await;
        if done {
            pushed = true;
            break;
        }
        assert!(err.contains("is protected"), "{err}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pushed, "the approved push never passed");
    assert_eq!(
        upstream_rev(&up, "refs/heads/main").as_deref(),
        Some(head.as_str())
    );
    let line = g
        .git_lines()
        .into_iter()
        .rev()
        .find(|v| v["decision"] == "allow")
        .unwrap();
    assert!(line["rule"].as_str().unwrap().contains("(once)"), "{line}");
    // Used up: the next push to main is refused again.
    std::fs::write(work.join("fix2"), "more\n").unwrap();
    ok(&work, &["add", "fix2"]).await;
    ok(&work, &["commit", "-q", "-m", "fix2"]).await;
    let (done, _, err) = git(&work, &["push", "origin", "HEAD:refs/heads/main"]).await;
    assert!(
        !done && err.contains("refs/heads/main is protected"),
        "{err}"
    );
    assert_eq!(
        upstream_rev(&up, "refs/heads/main").as_deref(),
        Some(head.as_str())
    );

    // A session approval: pushes of main pass, a rewrite never does, and it
    // outlives a sidecar restart.
    let id = file_push(&queue, "main");
    drop(g);
    let g = gate_with(&pki, &up, remotes.clone(), Some(&queue)).await;
    approve(&queue, id, bottle_policy::Scope::Session);
    let url = g.url("app");
    ok(&work, &["remote", "set-url", "origin", &url]).await;
    let mut pushed = false;
    for _ in 0..40 {
        if git(&work, &["push", "origin", "HEAD:refs/heads/main"])
            .await
            .0
        {
            pushed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pushed, "the session approval never applied");
    let second = ok(&work, &["rev-parse", "HEAD"]).await;
    ok(&work, &["reset", "-q", "--hard", "HEAD~2"]).await;
    std::fs::write(work.join("other"), "rewritten\n").unwrap();
    ok(&work, &["add", "other"]).await;
    ok(&work, &["commit", "-q", "-m", "rewritten"]).await;
    let (done, _, err) = git(&work, &["push", "-f", "origin", "HEAD:refs/heads/main"]).await;
    assert!(!done && err.contains("non-fast-forward refused"), "{err}");
    assert_eq!(
        upstream_rev(&up, "refs/heads/main").as_deref(),
        Some(second.as_str())
    );
    drop(g);
    let g = gate_with(&pki, &up, remotes, Some(&queue)).await;
    ok(&work, &["remote", "set-url", "origin", &g.url("app")]).await;
    ok(&work, &["reset", "-q", "--hard", &second]).await;
    std::fs::write(work.join("fix3"), "after the restart\n").unwrap();
    ok(&work, &["add", "fix3"]).await;
    ok(&work, &["commit", "-q", "-m", "fix3"]).await;
    let third = ok(&work, &["rev-parse", "HEAD"]).await;
    ok(&work, &["push", "-q", "origin", "HEAD:refs/heads/main"]).await;
    assert_eq!(
        upstream_rev(&up, "refs/heads/main").as_deref(),
        Some(third.as_str())
    );
}
