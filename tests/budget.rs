//! Egress budgets from inside a live bottle (issue 16): a fake model API
//! (tests/fixtures/fake-usage-api.py, HTTPS with the test CA) answers as
//! `api.anthropic.com` on the bottle's egress network, always reporting
//! 1000 input and 500 output tokens, which at $3/$15 per million cost
//! $0.0105. With `llm_usd = 0.01` the agent's first request (curl) passes,
//! the next gets the 429 body naming the budget, used and limit and how to
//! ask; `bottle budget NAME --raise llm_usd=...` on the host lets the next
//! (streamed) request through; `bottle ps --json` and `bottle budget
//! --json` show the counters, the stream's usage included.

use bottle_e2e::*;

const HOST: &str = "api.anthropic.com";

fn config() -> String {
    format!(
        "[egress]\n\
         allow = [\"{HOST}\"]\n\
         allow_private = [\"{HOST}\"]\n\
         upstream_roots = [\"test-ca.pem\"]\n\
         \n\
         [egress.budget]\n\
         llm_usd = 0.01\n\
         \n\
         [egress.budget.prices.\"claude-test\"]\n\
         input = 3.0\n\
         output = 15.0\n"
    )
}

/// Starts the fake model API as `api.anthropic.com` on `network`.
fn fake_api(name: &str, network: &str, pki: &std::path::Path) -> Container {
    fixture_server(
        name,
        network,
        &[HOST],
        pki,
        "fake-usage-api.py",
        "import socket; socket.create_connection(('127.0.0.1', 443), 1)",
    )
}

/// Whether the last status line in curl's output (the answer, not the
/// proxy's `200` to CONNECT before it) has `code`.
fn status(out: &str, code: u16) -> bool {
    out.lines()
        .rfind(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        == Some(code.to_string().as_str())
}

/// One `POST /v1/messages` from the agent; curl's whole output.
fn ask(b: &Bottle, stream: bool) -> String {
    let body = format!(
        "{{\"model\":\"claude-test\",\"max_tokens\":600,\"stream\":{stream},\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}"
    );
    sh_out(
        b,
        &format!(
            "curl -sS -i --max-time 20 -H 'content-type: application/json' \
             -H 'anthropic-version: 2023-06-01' --data '{body}' https://{HOST}/v1/messages"
        ),
    )
}

#[test]
fn spend_trips_the_budget_in_a_live_bottle_and_a_raise_lifts_it() {
    let prefix = "budget";
    if !engine_or_skip(prefix) {
        return;
    }
    let pki = TempDir::new(&format!("{prefix}-pki"));
    test_pki(&pki.0, &[HOST]);
    let ca = std::fs::read(pki.0.join("ca.pem")).unwrap();
    let b = Bottle::up_with(prefix, &config(), &[("test-ca.pem", &ca)], &[]);
    let _api = fake_api(
        &format!("bottle-test-api-{}", b.name),
        &format!("bottle-{}-egress", b.name),
        &pki.0,
    );

    // $0 used of $0.01: through, and it costs $0.0105.
    let first = ask(&b, false);
    assert!(status(&first, 200), "{first}");
    assert!(first.contains("json answer"), "{first}");

    // Now used up: a 429 the agent's model can read, never sent upstream.
    let refused = ask(&b, false);
    assert!(status(&refused, 429), "{refused}");
    for phrase in [
        "rule: budget-exhausted",
        "the egress budget `llm_usd` for the whole bottle is used up: $0.0105 used of $0.01",
        &format!(
            "ask the user to run `bottle budget {} --raise llm_usd=<more>`",
            b.name
        ),
    ] {
        assert!(
            refused.contains(phrase),
            "missing {phrase:?} in:\n{refused}"
        );
    }
    assert!(!refused.contains("json answer"), "{refused}");

    // The user raises it on the host; the sidecar picks the policy up
    // within about a second.
    let raised = b.bottle(&["budget", &b.name, "--raise", "llm_usd=0.05"]);
    assert!(
        raised.status.success(),
        "{}{}",
        stdout(&raised),
        stderr(&raised)
    );
    assert!(
        stderr(&raised).contains("llm_usd grows from $0.01 to $0.05"),
        "{}",
        stderr(&raised)
    );
    let mut passed = None;
    for _ in 0..40 {
        let out = ask(&b, true);
        if status(&out, 200) {
            passed = Some(out);
            break;
        }
        assert!(status(&out, 429), "{out}");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let streamed = passed.expect("the raised budget never let a request through");
    assert!(streamed.contains("event: message_stop"), "{streamed}");

    // The counters: two answered requests of $0.0105 each, the stream's
    // usage included (the refused one is not counted). The sidecar writes
    // them at most once a second.
    let mut last = String::new();
    let mut counted = None;
    for _ in 0..40 {
        let out = b.bottle(&["budget", &b.name, "--json"]);
        last = stdout(&out);
        let v = json_of(&last);
        let host = &v["hosts"][HOST];
        if host["requests"] == 2 {
            counted = Some(host.clone());
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let host = counted.unwrap_or_else(|| panic!("two requests never counted:\n{last}"));
    assert_eq!(host["spend_nanos"], 21_000_000, "{host}");
    assert_eq!(host["tokens"]["input"], 2000, "{host}");
    assert_eq!(host["tokens"]["output"], 1000, "{host}");
    assert!(host.get("unknown").is_none(), "{host}");

    let ps = b.bottle(&["ps", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(stdout(&ps).trim())
        .unwrap_or_else(|e| panic!("ps --json: {e}: {}", stdout(&ps)));
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == b.name.as_str()))
        .unwrap_or_else(|| panic!("{} not in ps: {rows}", b.name));
    let llm = row["budgets"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["budget"] == "llm_usd"))
        .unwrap_or_else(|| panic!("no llm_usd budget in ps: {row}"));
    assert_eq!(llm["used"], 21_000_000, "{llm}");
    assert_eq!(llm["limit"], 50_000_000, "{llm}");
    let text = stdout(&b.bottle(&["ps"]));
    assert!(
        text.contains(&format!("{}: budget llm_usd $0.021", b.name)),
        "{text}"
    );
}
