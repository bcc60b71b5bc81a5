//! Egress budgets end to end in-process (issue 16): a TLS origin answering
//! like the Anthropic Messages API reports token usage; the sidecar prices
//! it, refuses the next request with the 429 body once the spend budget is
//! used, lets requests through again after a policy reload raises it, and
//! keeps the counters across a restart; a WebSocket to a metered host is
//! refused before it is sent.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// What the fake model API answers: 1000 input and 500 output tokens of
/// `claude-sonnet-4-5`, which at $3/$15 per million costs $0.0105.
const MESSAGE: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":1000,"output_tokens":500,"cache_read_input_tokens":0,"cache_creation_input_tokens":0}}"#;

/// A TLS origin that answers every request with [`MESSAGE`] and records
/// each request's `accept-encoding`.
async fn model_api(config: Arc<rustls::ServerConfig>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let enc = req
                        .headers()
                        .get("accept-encoding")
                        .map(|v| v.to_str().unwrap_or("").to_string())
                        .unwrap_or_default();
                    record.lock().unwrap().push(enc);
                    async move {
                        let mut resp =
                            Response::new(Full::new(Bytes::from_static(MESSAGE.as_bytes())));
                        resp.headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, hyper::Error>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, seen)
}

fn egress(port: u16, limit: f64) -> Value {
    json!({
        "allow": [format!("llm.test:{port}"), format!("127.0.0.1:{port}")],
        "budget": {
            "soft": 0.5,
            "host": [{"host": "llm.test", "llm_usd": limit}],
            "prices": {"claude-sonnet-4-5": {"input": 3.0, "output": 15.0}},
        },
    })
}

/// One POST through a fresh tunnel; the whole answer.
async fn post(
    proxy: std::net::SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    port: u16,
) -> RawResponse {
    let stream = tunnel(proxy, &format!("llm.test:{port}")).await;
    let tls = tls_over(connector, stream, "llm.test").await;
    exchange(
        tls,
        &format!("POST /v1/messages HTTP/1.1\r\nHost: llm.test:{port}\r\naccept-encoding: gzip\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"),
    )
    .await
}

#[tokio::test]
async fn spend_trips_the_budget_a_reload_lifts_it_and_counters_survive_a_restart() {
    let pki = Pki::new();
    let (port, seen) = model_api(pki.origin_tls(&["llm.test"])).await;
    let state = pki.dir.join("budget.json");
    let mut opts = Options::new(egress(port, 0.01));
    opts.hosts = vec![("llm.test", vec![ip("127.0.0.1")])];
    opts.budget_state = Some(state.clone());
    let bottle = Bottle::start_in(pki, opts).await;
    let agent = bottle.pki.agent_tls();

    let first = post(bottle.addr, &agent, port).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert!(first.body.contains("msg_1"));
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["identity"],
        "the sidecar asks a metered host for an unencoded answer"
    );

    // $0.0105 spent of $0.01: the next request is refused, never sent.
    let refused = post(bottle.addr, &agent, port).await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert!(
        refused.body.contains("rule: budget-exhausted"),
        "{}",
        refused.body
    );
    assert!(
        refused
            .body
            .contains("`llm.test:llm_usd` for llm.test is used up: $0.0105 used of $0.01"),
        "{}",
        refused.body
    );
    assert!(
        refused
            .body
            .contains("bottle budget test --raise llm.test:llm_usd="),
        "{}",
        refused.body
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the origin saw the refused request"
    );
    let exhausted = eventually("budget-exhausted event", || {
        bottle
            .log
            .json()
            .into_iter()
            .find(|v| v["service"] == "egress" && v["event"] == "budget-exhausted")
    })
    .await;
    assert_eq!(exhausted["budget"], "llm.test:llm_usd");

    // A reload with a higher budget lets it through, with the soft header
    // ($0.0105 of $0.02 is past 50 %).
    bottle.write_policy(&egress(port, 0.02));
    let mut passed = None;
    for _ in 0..100 {
        let r = post(bottle.addr, &agent, port).await;
        if r.status == 200 {
            passed = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let passed = passed.expect("the raised budget never let a request through");
    assert!(
        passed
            .head
            .to_ascii_lowercase()
            .contains("bottle-budget: llm.test:llm_usd=$0.0105/$0.02 soft"),
        "{}",
        passed.head
    );

    // The counters reach the file, and a new sidecar starts from them.
    let counted = eventually("two requests in budget.json", || {
        let bytes = std::fs::read(&state).ok()?;
        let s = bottle_policy::BudgetState::parse(&bytes).ok()?;
        let c = s.hosts.get("llm.test")?.clone();
        (c.requests == 2).then_some(c)
    })
    .await;
    assert_eq!(counted.spend_nanos, 21_000_000);
    assert_eq!(counted.tokens.output, 1000);
    drop(bottle);

    let pki = Pki::new();
    let (port2, _) = model_api(pki.origin_tls(&["llm.test"])).await;
    std::fs::copy(&state, pki.dir.join("budget.json")).unwrap();
    let mut opts = Options::new(egress(port2, 0.02));
    opts.hosts = vec![("llm.test", vec![ip("127.0.0.1")])];
    opts.budget_state = Some(pki.dir.join("budget.json"));
    let again = Bottle::start_in(pki, opts).await;
    let agent = again.pki.agent_tls();
    let r = post(again.addr, &agent, port2).await;
    assert_eq!(
        r.status, 429,
        "the restarted sidecar forgot the spend: {r:?}"
    );
    assert!(
        r.body.contains("$0.021 used of $0.02") || r.body.contains("$0.0210 used of $0.02"),
        "{}",
        r.body
    );
}

/// A WebSocket to a metered host would carry spend the sidecar cannot
/// read: refused before anything is sent upstream (review M2).
#[tokio::test]
async fn a_websocket_to_a_metered_host_is_refused_up_front() {
    let pki = Pki::new();
    let (port, seen) = model_api(pki.origin_tls(&["llm.test"])).await;
    let mut opts = Options::new(egress(port, 1.0));
    opts.hosts = vec![("llm.test", vec![ip("127.0.0.1")])];
    let bottle = Bottle::start_in(pki, opts).await;
    let agent = bottle.pki.agent_tls();
    let stream = tunnel(bottle.addr, &format!("llm.test:{port}")).await;
    let tls = tls_over(&agent, stream, "llm.test").await;
    let resp = exchange(
        tls,
        &format!(
            "GET /v1/realtime HTTP/1.1\r\nHost: llm.test:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nconnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(
        resp.body.contains("rule: budget-websocket"),
        "{}",
        resp.body
    );
    assert!(resp.body.contains("llm_usd"), "{}", resp.body);
    assert!(
        seen.lock().unwrap().is_empty(),
        "the origin saw the upgrade"
    );
}
