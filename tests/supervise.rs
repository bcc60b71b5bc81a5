//! supervise end to end: a real MCP client nobody here wrote (the Python
//! SDK from PyPI, mounted into the agent read-only) asks the sidecar's MCP
//! server for egress, and the human answers with `bottle approve` /
//! `bottle deny` on the host; the proxy then lets the host through, or not.

use bottle_e2e::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The directory scripts/setup-mcp-client.sh installs the `mcp` package
/// into (`BOTTLE_TEST_MCP_PY`, else its default).
fn mcp_py(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("BOTTLE_TEST_MCP_PY")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/bottle/mcp-py")))
        .filter(|d| d.join("mcp").is_dir());
    if dir.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: the Python mcp client is missing and CI=true: run scripts/setup-mcp-client.sh (scripts/test.sh does)");
        }
        eprintln!("SKIP {test}: no Python mcp client (scripts/setup-mcp-client.sh)");
    }
    dir
}

/// Runs the MCP client in the agent: `tool` with `args` (JSON); returns its
/// JSON answer.
fn ask(b: &BottleRef, tool: &str, args: &str) -> serde_json::Value {
    let out = b.bottle(&[
        "exec",
        &b.name,
        "-e",
        "PYTHONPATH=/opt/mcp",
        "--",
        "python3",
        "/opt/fixtures/mcp-ask.py",
        tool,
        args,
    ]);
    let text = stdout(&out);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|_| panic!("mcp client: {text}{}", stderr(&out)))
}

/// [`ask`] on its own thread, while the test answers as the human.
fn ask_in_background(
    b: &Bottle,
    tool: &'static str,
    args: &'static str,
) -> std::thread::JoinHandle<serde_json::Value> {
    let handle = b.handle();
    std::thread::spawn(move || ask(&handle, tool, args))
}

/// Waits for a pending request of `b` whose ask contains `what`; its id.
fn pending(b: &Bottle, what: &str) -> String {
    let start = Instant::now();
    loop {
        let out = b.bottle(&["requests", &b.name, "--json"]);
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(stdout(&out).trim()).unwrap_or_default();
        if let Some(r) = rows
            .iter()
            .find(|r| r["status"] == "pending" && r["ask"].as_str().unwrap_or("").contains(what))
        {
            return r["id"].as_str().unwrap().to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no pending request for {what}: {}",
            stdout(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn curl_status(b: &Bottle, url: &str) -> String {
    let out = b.sh(&format!(
        "curl -s -o /dev/null --max-time 10 -w '%{{http_connect}} %{{http_code}}' {url}"
    ));
    stdout(&out).trim().to_string()
}

#[test]
fn the_agent_asks_and_the_human_answers() {
    if !engine_or_skip("supervise") {
        return;
    }
    let Some(py) = mcp_py("the_agent_asks_and_the_human_answers") else {
        return;
    };
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    // A copy outside the home directory, which bottle never mounts.
    let client = TempDir::new("supervise-mcp");
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", py.display()))
        .arg(&client.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "copy the mcp client: {}",
        stderr(&out)
    );
    let py = client.0.clone();
    let pki = TempDir::new("supervise-pki");
    let names = ["origin.test", "denied.test"];
    test_pki(&pki.0, &names);
    let ca = std::fs::read(pki.0.join("ca.pem")).unwrap();
    let config = format!(
        "[agent]\n\
         mounts = [\"{}:/opt/mcp:ro\", \"{}:/opt/fixtures:ro\"]\n\
         [egress]\n\
         allow_private = [\"origin.test\", \"denied.test\"]\n\
         upstream_roots = [\"test-ca.pem\"]\n\
         [supervise]\n\
         enabled = true\n",
        py.display(),
        fixtures.display()
    );
    let b = Bottle::up_with("supervise", &config, &[("test-ca.pem", &ca)], &[]);
    let _origin = echo_origin(
        &format!("bottle-test-origin-{}", b.name),
        &format!("bottle-{}-egress", b.name),
        &names,
        &pki.0,
    );

    // Not allowed yet: the 403 says how to ask.
    let out = b.sh("curl -s --max-time 10 http://origin.test/");
    assert!(stdout(&out).contains("request_egress"), "{}", stdout(&out));
    assert_eq!(curl_status(&b, "https://origin.test/"), "403 000");

    // The agent asks; the human approves for the session.
    let asker = ask_in_background(
        &b,
        "request_egress",
        r#"{"host":"origin.test","reason":"e2e: fetch the fixture"}"#,
    );
    let id = pending(&b, "origin.test");
    let out = b.bottle(&[
        "approve",
        &id,
        "--scope",
        "session",
        "--note",
        "fine for this run",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer = asker.join().unwrap();
    let tools: Vec<&str> = answer["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    for t in ["request_egress", "list_egress_rules", "request_approval"] {
        assert!(tools.contains(&t), "{t} not in {tools:?}");
    }
    assert_eq!(answer["is_error"], false, "{answer}");
    let text = answer["text"].as_str().unwrap();
    assert!(
        text.contains("approved") && text.contains("fine for this run"),
        "{text}"
    );
    assert_eq!(curl_status(&b, "https://origin.test/hello"), "200 200");

    // A denial leaves the host blocked.
    let asker = ask_in_background(
        &b,
        "request_egress",
        r#"{"host":"denied.test","reason":"e2e"}"#,
    );
    let id = pending(&b, "denied.test");
    let out = b.bottle(&["deny", &id, "--note", "not this one"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer = asker.join().unwrap();
    let text = answer["text"].as_str().unwrap();
    assert!(
        text.contains("denied") && text.contains("not this one"),
        "{text}"
    );
    assert_eq!(curl_status(&b, "https://denied.test/"), "403 000");

    // The metadata address is refused at once; no request is filed.
    let answer = ask(
        &b.handle(),
        "request_egress",
        r#"{"host":"169.254.169.254","reason":"creds"}"#,
    );
    let text = answer["text"].as_str().unwrap();
    assert!(
        text.contains("refused") || answer["is_error"] == true,
        "{answer}"
    );
    let rows = stdout(&b.bottle(&["requests", &b.name, "--json"]));
    assert!(!rows.contains("169.254.169.254"), "{rows}");

    // The queue and the session grant survive a sidecar restart.
    let sidecar = format!("bottle-{}-sidecar", b.name);
    let out = docker(&["restart", &sidecar]);
    assert!(out.status.success(), "{}", stderr(&out));
    let start = Instant::now();
    while curl_status(&b, "https://origin.test/hello") != "200 200" {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the grant did not survive the restart"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let rows = stdout(&b.bottle(&["requests", &b.name, "--json"]));
    assert!(
        rows.contains("approved (session)") && rows.contains("denied"),
        "{rows}"
    );
}

/// A curl in the agent on its own thread: `http_connect http_code` and
/// the body, of a request `egress.unknown = "ask"` holds.
fn curl_in_background(b: &Bottle, url: &'static str) -> std::thread::JoinHandle<String> {
    let handle = b.handle();
    std::thread::spawn(move || {
        let out = handle.bottle(&[
            "exec",
            &handle.name,
            "--",
            "curl",
            "-s",
            "--max-time",
            "60",
            "-w",
            "\n%{http_connect} %{http_code}",
            url,
        ]);
        stdout(&out)
    })
}

#[test]
fn ask_mode_holds_the_connection_until_the_human_answers() {
    if !engine_or_skip("supervise ask") {
        return;
    }
    let pki = TempDir::new("supervise-ask-pki");
    let names = ["held.test", "refused.test", "kept.test", "tui.test"];
    test_pki(&pki.0, &names);
    let ca = std::fs::read(pki.0.join("ca.pem")).unwrap();
    let config = "[egress]\n\
         unknown = \"ask\"\n\
         allow_private = [\"held.test\", \"refused.test\", \"kept.test\", \"tui.test\"]\n\
         upstream_roots = [\"test-ca.pem\"]\n\
         [supervise]\n\
         enabled = true\n";
    let b = Bottle::up_with("supervise-ask", config, &[("test-ca.pem", &ca)], &[]);
    let _origin = echo_origin(
        &format!("bottle-test-origin-{}", b.name),
        &format!("bottle-{}-egress", b.name),
        &names,
        &pki.0,
    );

    // A TLS request to an unknown host is held; a `once` approval serves it.
    let curl = curl_in_background(&b, "https://held.test/hello");
    let id = pending(&b, "held.test:443");
    assert!(
        !curl.is_finished(),
        "the connection was answered before the decision"
    );
    let out = b.bottle(&["approve", &id, "--scope", "once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = curl.join().unwrap();
    assert!(got.ends_with("200 200"), "{got}");
    // `once` was that connection: the next one is held again, not served.
    let again = curl_in_background(&b, "https://held.test/hello");
    let id = pending(&b, "held.test:443");
    let out = b.bottle(&["deny", &id, "--note", "once was enough"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = again.join().unwrap();
    assert!(got.ends_with("403 000"), "{got}");

    // A plain HTTP request held and denied gets the 403 with the note.
    let curl = curl_in_background(&b, "http://refused.test/");
    let id = pending(&b, "refused.test:80");
    let out = b.bottle(&["deny", &id, "--note", "not today"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = curl.join().unwrap();
    assert!(
        got.contains("supervise-denied") && got.contains("not today") && got.ends_with(" 403"),
        "{got}"
    );

    // `always --save`: served, pinned, and written into bottle.toml.
    let curl = curl_in_background(&b, "https://kept.test/hello");
    let id = pending(&b, "kept.test:443");
    let out = b.bottle(&["approve", &id, "--scope", "always", "--save"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("saved the rule into"),
        "{}",
        stderr(&out)
    );
    let got = curl.join().unwrap();
    assert!(got.ends_with("200 200"), "{got}");
    let saved = std::fs::read_to_string(b.dir.0.join("bottle.toml")).unwrap();
    assert!(
        saved.contains("allow = [\"kept.test:443\"]") && saved.contains("unknown = \"ask\""),
        "{saved}"
    );
    // Served for the session without asking again.
    assert_eq!(curl_status(&b, "https://kept.test/hello"), "200 200");

    // The operator's terminal UI: the held request appears, a + Enter
    // approves it for the session, and the agent's curl gets its answer.
    let curl = curl_in_background(&b, "https://tui.test/hello");
    let id = pending(&b, "tui.test:443");
    let ui = format!("bottle-e2e-watch-{}", b.name);
    let script = format!(
        "XDG_STATE_HOME='{}' '{}' requests --watch; echo watch-exited=$?; sleep 30",
        b.state.0.display(),
        bottle_bin().display()
    );
    let tmux = |args: &[&str]| Command::new("tmux").args(args).output().expect("tmux");
    let out = tmux(&[
        "new-session",
        "-d",
        "-s",
        &ui,
        "-x",
        "150",
        "-y",
        "20",
        "sh",
        "-c",
        &script,
    ]);
    assert!(out.status.success(), "tmux: {}", stderr(&out));
    let screen = || stdout(&tmux(&["capture-pane", "-p", "-t", &ui]));
    let wait = |what: &str, ok: &dyn Fn(&str) -> bool| {
        let start = Instant::now();
        loop {
            let s = screen();
            if ok(&s) {
                return s;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{what}:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("the request on screen", &|s| s.contains(&id));
    tmux(&["send-keys", "-t", &ui, "a"]);
    wait("the approve dialog", &|s| s.contains("scope: session"));
    tmux(&["send-keys", "-t", &ui, "Enter"]);
    wait("the approval", &|s| s.contains(&format!("approved {id}")));
    tmux(&["send-keys", "-t", &ui, "q"]);
    let end = wait("the UI's exit", &|s| s.contains("watch-exited="));
    let _ = tmux(&["kill-session", "-t", &ui]);
    assert!(end.contains("watch-exited=0"), "{end}");
    let got = curl.join().unwrap();
    assert!(got.ends_with("200 200"), "{got}");
    assert_eq!(curl_status(&b, "https://tui.test/again"), "200 200");
}
