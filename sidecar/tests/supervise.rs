//! The supervise service in-process: a real MCP client (rmcp's streamable
//! HTTP client) asks through the sidecar's MCP server, a concurrent task
//! decides through the shared queue functions (as `bottle approve` does),
//! and the proxy then lets the host through, or not. Also the
//! `egress.unknown = "ask"` hold, the rate bound, guard refusals and grants
//! surviving a restart.

mod common;

use bottle_policy::queue::QueueDir;
use bottle_policy::supervise::{Decision, Scope, Text, Verdict};
use bottle_sidecar::guard::{LocalNetSource, Resolver};
use bottle_sidecar::log::{Logger, RateLimit};
use bottle_sidecar::{Addrs, RunConfig, Sidecar};
use common::*;
use rmcp::model::{
    CallToolRequestParams, ClientRequest, ProgressNotificationParam, Request, ServerResult,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

/// A sidecar with supervise on.
struct Supervised {
    addrs: Addrs,
    log: Arc<Capture>,
    queue: PathBuf,
    pki_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Supervised {
    fn mcp_url(&self) -> String {
        format!("http://{}/mcp", self.addrs.supervise.unwrap())
    }
    fn proxy(&self) -> std::net::SocketAddr {
        self.addrs.proxy.unwrap()
    }
    fn queue(&self) -> QueueDir {
        QueueDir::new(&self.queue)
    }
    /// (RCODE, answer count) of an A query for `name`.
    async fn resolve(&self, name: &str) -> (u8, u16) {
        let r = dns_udp(self.addrs.dns_udp.unwrap(), 7, name, 1).await;
        (rcode(&r), ancount(&r))
    }
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.done.take().unwrap().await.unwrap();
    }
    fn supervise_lines(&self, event: &str) -> Vec<Value> {
        self.log
            .json()
            .into_iter()
            .filter(|v| v["service"] == "supervise" && v["event"] == event)
            .collect()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn policy(egress: Value, supervise: Value) -> String {
    json!({"format": 1, "bottle": "test", "egress": egress, "supervise": supervise}).to_string()
}

async fn start(
    pki_dir: &Path,
    queue: &Path,
    policy_text: &str,
    hosts: Vec<(&'static str, Vec<std::net::IpAddr>)>,
) -> Supervised {
    let policy_path = pki_dir.join("policy.json");
    std::fs::write(&policy_path, policy_text).unwrap();
    let log = Arc::new(Capture::default());
    let logger = Logger::new(log.clone(), log.clone(), RateLimit::default());
    let local: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = RunConfig::new(&policy_path);
    config.proxy_listen = Some(local);
    config.supervise_listen = Some(local);
    config.dns_listen = Some(local);
    config.dns_answer = Some("10.99.0.2".parse().unwrap());
    config.supervise_state = Some(queue.to_path_buf());
    config.supervise_progress = Duration::from_millis(100);
    config.reload_interval = Duration::from_millis(50);
    config.resolver = Resolver::fixed(hosts);
    config.local_net = LocalNetSource::Fixed(bottle_policy::LocalNet {
        gateways: vec!["198.51.100.1".parse().unwrap()],
        own: vec!["198.51.100.2".parse().unwrap()],
    });
    let sidecar = Sidecar::start(&config, logger).await.unwrap();
    let addrs = sidecar.addrs().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(sidecar.serve(async {
        let _ = stopped.await;
    }));
    Supervised {
        addrs,
        log,
        queue: queue.to_path_buf(),
        pki_dir: pki_dir.to_path_buf(),
        stop: Some(stop),
        done: Some(done),
    }
}

/// A TLS origin answering to origin.test, and a sidecar that allows its
/// address (so the guard accepts it) but not the name.
async fn setup(supervise: Value) -> (Supervised, Origin, Pki) {
    let pki = Pki::new();
    let origin = tls_origin(pki.origin_tls(&["origin.test"])).await;
    let port = origin.port();
    let queue = temp_dir("queue");
    let s = start(
        &pki.dir,
        &queue,
        &policy(json!({"allow": [format!("127.0.0.1:{port}")]}), supervise),
        vec![
            ("origin.test", vec![ip("127.0.0.1")]),
            ("metadata.test", vec![ip("169.254.169.254")]),
        ],
    )
    .await;
    (s, origin, pki)
}

/// Counts progress notifications.
#[derive(Clone, Default)]
struct Client {
    progress: Arc<AtomicUsize>,
}

impl ClientHandler for Client {
    async fn on_progress(
        &self,
        _params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.fetch_add(1, Ordering::SeqCst);
    }
}

async fn connect(url: &str) -> (RunningService<RoleClient, Client>, Arc<AtomicUsize>) {
    let client = Client::default();
    let progress = client.progress.clone();
    let transport = StreamableHttpClientTransport::from_uri(url.to_string());
    let service = client.serve(transport).await.expect("MCP client connects");
    (service, progress)
}

/// Calls `tool` with a progress token; the text and whether it is an error.
async fn call(
    service: &RunningService<RoleClient, Client>,
    tool: &str,
    args: Value,
) -> (String, bool) {
    let params = CallToolRequestParams::new(tool.to_string())
        .with_arguments(args.as_object().cloned().unwrap());
    let handle = service
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(params)),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    let result = handle.await_response().await.expect("tool call answered");
    let ServerResult::CallToolResult(r) = result else {
        panic!("not a tool result: {result:?}");
    };
    let text: Vec<String> = r
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    (text.join("\n"), r.is_error == Some(true))
}

/// Waits for the one pending proposal and decides it as `bottle approve` /
/// `bottle deny` would.
async fn decide_when_filed(
    queue: QueueDir,
    verdict: Verdict,
    scope: Scope,
    wait: Duration,
) -> String {
    let id = eventually("a proposal on disk", || {
        let l = queue.list(bottle_sidecar::supervise::now_secs()).unwrap();
        l.entries.first().map(|e| e.proposal.id.clone())
    })
    .await;
    tokio::time::sleep(wait).await;
    let d = Decision {
        id: id.clone(),
        verdict,
        scope,
        note: Text::clean("looked fine"),
        decided: bottle_sidecar::supervise::now_secs(),
        edited: None,
    };
    queue.decide(&d, d.decided).unwrap();
    id.to_string()
}

async fn https_get(pki: &Pki, proxy: std::net::SocketAddr, port: u16) -> RawResponse {
    let s = tunnel(proxy, &format!("origin.test:{port}")).await;
    let mut tls = tls_over(&pki.agent_tls(), s, "origin.test").await;
    tls.write_all(
        format!("GET /hello HTTP/1.1\r\nHost: origin.test:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    read_response(&mut tls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_request_opens_the_host_and_survives_a_restart() {
    let (s, origin, pki) = setup(json!({"enabled": true})).await;
    let port = origin.port();
    // Before: the proxy refuses, and its 403 names the tool.
    let before = raw_request(
        s.proxy(),
        &format!("CONNECT origin.test:{port} HTTP/1.1\r\nHost: origin.test:{port}\r\n\r\n"),
    )
    .await;
    assert_eq!(before.status, 403, "{before:?}");
    assert!(before.body.contains("request_egress"), "{}", before.body);
    assert!(before.body.contains(&s.mcp_url()), "{}", before.body);

    let (client, progress) = connect(&s.mcp_url()).await;
    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "list_egress_rules",
            "request_approval",
            "request_egress",
            "request_git_push"
        ]
    );
    let decider = tokio::spawn(decide_when_filed(
        s.queue(),
        Verdict::Approve,
        Scope::Session,
        Duration::from_millis(600),
    ));
    let (text, is_error) = call(
        &client,
        "request_egress",
        json!({"host": "origin.test", "port": port, "reason": "fetch the hello page"}),
    )
    .await;
    let id = decider.await.unwrap();
    assert!(!is_error, "{text}");
    assert!(text.starts_with("approved (session)"), "{text}");
    assert!(text.contains("Retry your request now"), "{text}");
    assert!(text.contains("looked fine"), "{text}");
    assert!(
        progress.load(Ordering::SeqCst) >= 2,
        "progress notifications while waiting"
    );
    let resp = https_get(&pki, s.proxy(), port).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(origin.seen().len(), 1);
    // Audit: one proposal line and one decision line.
    let p = s.supervise_lines("proposal");
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0]["id"], json!(id));
    let d = s.supervise_lines("decision");
    assert_eq!(d[0]["verdict"], "approve");
    assert_eq!(d[0]["scope"], "session");
    // list_egress_rules shows the grant.
    let (rules, _) = call(&client, "list_egress_rules", json!({})).await;
    assert!(
        rules.contains(&format!("approved in this session: origin.test:{port}")),
        "{rules}"
    );
    client.cancel().await.unwrap();

    // Restart: the grant is still in force.
    let (dir, queue) = (s.pki_dir.clone(), s.queue.clone());
    let text = std::fs::read_to_string(dir.join("policy.json")).unwrap();
    s.stop().await;
    let s2 = start(
        &dir,
        &queue,
        &text,
        vec![("origin.test", vec![ip("127.0.0.1")])],
    )
    .await;
    let resp = https_get(&pki, s2.proxy(), port).await;
    assert_eq!(resp.status, 200, "{resp:?}");
}

/// `request_egress` for origin.test:`port`, answered at once with
/// `verdict` and `scope` as `bottle approve`/`deny` would; the tool's text.
async fn ask_decided(s: &Supervised, port: u16, verdict: Verdict, scope: Scope) -> String {
    let (client, _) = connect(&s.mcp_url()).await;
    let decider = tokio::spawn(decide_when_filed(s.queue(), verdict, scope, Duration::ZERO));
    let (text, _) = call(
        &client,
        "request_egress",
        json!({"host": "origin.test", "port": port, "reason": "x"}),
    )
    .await;
    decider.await.unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_request_leaves_the_host_blocked() {
    let (s, origin, _pki) = setup(json!({"enabled": true})).await;
    let port = origin.port();
    let text = ask_decided(&s, port, Verdict::Deny, Scope::Once).await;
    assert!(text.starts_with("denied"), "{text}");
    assert!(text.contains("looked fine"), "{text}");
    let after = raw_request(
        s.proxy(),
        &format!("CONNECT origin.test:{port} HTTP/1.1\r\nHost: origin.test:{port}\r\n\r\n"),
    )
    .await;
    assert_eq!(after.status, 403);
    assert!(origin.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_approval_opens_one_connection() {
    let (s, origin, pki) = setup(json!({"enabled": true})).await;
    let port = origin.port();
    let text = ask_decided(&s, port, Verdict::Approve, Scope::Once).await;
    assert!(text.starts_with("approved (once)"), "{text}");
    // DNS follows the approval while it waits for its connection.
    assert_eq!(s.resolve("origin.test").await, (0, 1));
    assert_eq!(s.resolve("other.test").await, (5, 0));
    assert_eq!(https_get(&pki, s.proxy(), port).await.status, 200);
    let second = raw_request(
        s.proxy(),
        &format!("CONNECT origin.test:{port} HTTP/1.1\r\nHost: origin.test:{port}\r\n\r\n"),
    )
    .await;
    assert_eq!(second.status, 403, "the grant was consumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecided_requests_expire() {
    let (s, origin, _pki) = setup(json!({"enabled": true, "timeout_secs": 1})).await;
    let (client, progress) = connect(&s.mcp_url()).await;
    let (text, is_error) = call(
        &client,
        "request_egress",
        json!({"host": "origin.test", "port": origin.port(), "reason": "x"}),
    )
    .await;
    assert!(!is_error);
    assert!(text.starts_with("expired"), "{text}");
    assert!(progress.load(Ordering::SeqCst) >= 1);
    // The host cannot decide it any more.
    let queue = s.queue();
    let entry = &queue.list(u64::MAX / 2).unwrap().entries[0];
    let d = Decision {
        id: entry.proposal.id.clone(),
        verdict: Verdict::Approve,
        scope: Scope::Session,
        note: None,
        decided: bottle_sidecar::supervise::now_secs(),
        edited: None,
    };
    let e = queue.decide(&d, d.decided).unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_and_malformed_requests_are_answered_at_once() {
    let (s, _origin, _pki) = setup(json!({"enabled": true})).await;
    let (client, _) = connect(&s.mcp_url()).await;
    for (args, says) in [
        (
            json!({"host": "169.254.169.254", "reason": "x"}),
            "refused without asking",
        ),
        (
            json!({"host": "metadata.test", "reason": "x"}),
            "refused without asking",
        ),
        (
            json!({"host": "127.0.0.1", "port": 22, "reason": "x"}),
            "refused without asking",
        ),
        (
            json!({"host": "10.1.2.3", "reason": "x"}),
            "refused without asking",
        ),
        (
            json!({"host": "198.51.100.2", "reason": "x"}),
            "refused without asking",
        ),
        (json!({"reason": "x"}), "argument `host`: is required"),
        (
            json!({"host": "a.example"}),
            "argument `reason`: is required",
        ),
        (
            json!({"host": "*.example.com", "reason": "x"}),
            "argument `host`",
        ),
        (
            json!({"host": "a.example", "port": 0, "reason": "x"}),
            "argument `port`",
        ),
        (
            json!({"host": "a.example", "port": "443", "reason": "x"}),
            "argument `port`",
        ),
        (
            json!({"host": "a.example", "methods": ["TRACE"], "reason": "x"}),
            "argument `methods`",
        ),
        (
            json!({"host": "a.example", "reason": "x", "url": "y"}),
            "unknown argument `url`",
        ),
        (
            json!({"host": "a.example", "reason": "two\nlines"}),
            "argument `reason`",
        ),
    ] {
        let (text, is_error) = call(&client, "request_egress", args.clone()).await;
        assert!(is_error, "{args}: {text}");
        assert!(text.contains(says), "{args}: {text}");
    }
    let (text, is_error) = call(
        &client,
        "request_git_push",
        json!({"remote": "app", "ref": "agent/x", "reason": "x"}),
    )
    .await;
    assert!(is_error);
    assert!(text.contains("no git remotes configured"), "{text}");
    assert!(
        s.queue().list(0).unwrap().entries.is_empty(),
        "nothing was filed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_is_rate_limited() {
    let (s, _origin, _pki) =
        setup(json!({"enabled": true, "rate_per_minute": 2, "max_pending": 5})).await;
    let url = s.mcp_url();
    // Two requests wait (undecided); the third is refused at once.
    let mut waiting = Vec::new();
    for n in 0..2 {
        let url = url.clone();
        waiting.push(tokio::spawn(async move {
            let (client, _) = connect(&url).await;
            call(
                &client,
                "request_approval",
                json!({"action": format!("step {n}"), "reason": "x"}),
            )
            .await
        }));
    }
    eventually("two proposals", || {
        (s.queue().list(0).unwrap().entries.len() == 2).then_some(())
    })
    .await;
    let (client, _) = connect(&url).await;
    let (text, is_error) = call(
        &client,
        "request_approval",
        json!({"action": "three", "reason": "x"}),
    )
    .await;
    assert!(is_error);
    assert!(
        text.contains("2 a minute") && text.contains("retry in"),
        "{text}"
    );
    assert_eq!(s.queue().list(0).unwrap().entries.len(), 2);
    for w in waiting {
        w.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_mode_holds_a_connection_until_the_decision() {
    let pki = Pki::new();
    let origin = tls_origin(pki.origin_tls(&["origin.test"])).await;
    let port = origin.port();
    let queue = temp_dir("queue");
    let s = start(
        &pki.dir,
        &queue,
        &policy(
            json!({"allow": [format!("127.0.0.1:{port}")], "unknown": "ask"}),
            json!({"enabled": true}),
        ),
        vec![
            ("origin.test", vec![ip("127.0.0.1")]),
            ("other.test", vec![ip("127.0.0.1")]),
        ],
    )
    .await;
    // An unknown name resolves (to the sidecar), so a client without the
    // proxy variables reaches the listener that asks; what never may, not.
    assert_eq!(s.resolve("new.test").await, (0, 1));
    for never in [
        "metadata.google.internal",
        "localhost",
        "10.0.0.5",
        "0x0a.0.0.5",
    ] {
        assert_eq!(s.resolve(never).await, (5, 0), "{never}");
    }
    // Approved: the held CONNECT gets its tunnel.
    let decider = tokio::spawn(decide_when_filed(
        s.queue(),
        Verdict::Approve,
        Scope::Once,
        Duration::from_millis(300),
    ));
    let resp = https_get(&pki, s.proxy(), port).await;
    decider.await.unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    let p = s.supervise_lines("proposal");
    assert_eq!(p[0]["origin"], "held");
    assert!(p[0]["ask"]
        .as_str()
        .unwrap()
        .contains(&format!("origin.test:{port}")));
    // Denied: the held CONNECT gets a 403 that says so.
    let queue = s.queue();
    let denier = tokio::spawn(async move {
        let id = eventually("a second proposal", || {
            let l = queue.list(bottle_sidecar::supervise::now_secs()).unwrap();
            l.entries
                .iter()
                .find(|e| e.decision.is_none())
                .map(|e| e.proposal.id.clone())
        })
        .await;
        let d = Decision {
            id,
            verdict: Verdict::Deny,
            scope: Scope::Once,
            note: Text::clean("not today"),
            decided: bottle_sidecar::supervise::now_secs(),
            edited: None,
        };
        queue.decide(&d, d.decided).unwrap();
    });
    let denied = raw_request(
        s.proxy(),
        &format!("CONNECT other.test:{port} HTTP/1.1\r\nHost: other.test:{port}\r\n\r\n"),
    )
    .await;
    denier.await.unwrap();
    assert_eq!(denied.status, 403, "{denied:?}");
    assert!(denied.body.contains("supervise-denied"), "{}", denied.body);
    // After the denial DNS refuses the name for a while.
    assert_eq!(s.resolve("other.test").await, (5, 0));
    assert_eq!(s.resolve("new.test").await, (0, 1));
    assert!(denied.body.contains("not today"), "{}", denied.body);
    // A guarded address is refused at once, without a proposal.
    let before = s.queue().list(0).unwrap().entries.len();
    let meta = raw_request(
        s.proxy(),
        "CONNECT 169.254.169.254:80 HTTP/1.1\r\nHost: 169.254.169.254:80\r\n\r\n",
    )
    .await;
    assert_eq!(meta.status, 403);
    assert!(meta.body.contains("destination-guard"), "{}", meta.body);
    assert_eq!(s.queue().list(0).unwrap().entries.len(), before);
}

/// `[dlp]` set to `ask` for a detector: the request is held, a proposal
/// filed; approved, it goes to the origin as sent; denied, it is refused
/// and the origin never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dlp_ask_holds_the_request_for_a_decision() {
    let pki = Pki::new();
    let origin = tls_origin(pki.origin_tls(&["origin.test"])).await;
    let port = origin.port();
    let queue = temp_dir("queue");
    let text = json!({
        "format": 1, "bottle": "test",
        "egress": {"allow": [format!("origin.test:{port}"), format!("127.0.0.1:{port}")]},
        "supervise": {"enabled": true},
        "dlp": {"action": {"jwt": "ask"}},
    })
    .to_string();
    let s = start(
        &pki.dir,
        &queue,
        &text,
        vec![("origin.test", vec![ip("127.0.0.1")])],
    )
    .await;
    let jwt = [
        "ey",
        "JhbGciOiJIUzI1NiJ9.ey",
        "JzdWIiOiIxMjM0NTY3ODkwIn0.",
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ]
    .concat();
    let post = |tag: &str| {
        let body = format!("{{\"{tag}\":\"{jwt}\"}}");
        format!(
            "POST /hello HTTP/1.1\r\nHost: origin.test:{port}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    for (verdict, tag) in [(Verdict::Approve, "approved"), (Verdict::Deny, "denied")] {
        let queue = s.queue();
        let decider = tokio::spawn(async move {
            let id = eventually("an undecided proposal", || {
                let l = queue.list(bottle_sidecar::supervise::now_secs()).unwrap();
                l.entries
                    .iter()
                    .find(|e| e.decision.is_none())
                    .map(|e| e.proposal.id.clone())
            })
            .await;
            let d = Decision {
                id,
                verdict,
                scope: Scope::Once,
                note: None,
                decided: bottle_sidecar::supervise::now_secs(),
                edited: None,
            };
            queue.decide(&d, d.decided).unwrap();
        });
        let t = tunnel(s.proxy(), &format!("origin.test:{port}")).await;
        let mut tls = tls_over(&pki.agent_tls(), t, "origin.test").await;
        tls.write_all(post(tag).as_bytes()).await.unwrap();
        let resp = read_response(&mut tls).await;
        decider.await.unwrap();
        let got = origin.seen();
        let reached = got
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains(tag));
        match verdict {
            Verdict::Approve => {
                assert_eq!(resp.status, 200, "{resp:?}");
                assert!(reached, "the approved request reached the origin");
            }
            _ => {
                assert_eq!(resp.status, 403, "{resp:?}");
                assert!(resp.body.contains("rule: dlp:jwt"), "{resp:?}");
                assert!(resp.body.contains("the operator denied it"), "{resp:?}");
                assert!(!reached, "the denied request never reached the origin");
            }
        }
    }
    s.stop().await;
}
