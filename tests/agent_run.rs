//! The real Claude Code CLI, headless, in a bottle, against a fake model
//! API nobody could mistake for the real one: `tests/fixtures/fake-model-api.py`
//! with a test CA (`egress.upstream_roots`) on the bottle's egress network
//! under the network alias `api.anthropic.com`, requiring the real key. Its
//! script asks the CLI to run `curl -s https://denied.example/` with its
//! shell tool, then finishes.
//!
//! The same for Codex under `api.openai.com`.
//!
//! Asserted: the API saw the real key and the agent only the placeholder;
//! the tool ran inside the agent and the proxy's 403 text went back to the
//! model in the next request; the supervise MCP server is registered with
//! the CLI; `run` leaves a kept bottle running and `down` removes it.

use bottle_e2e::*;
use std::path::Path;
use std::process::Command;

const ANTHROPIC_KEY: &str = "sk-ant-api03-e2e-REAL-key-0123456789abcdef";
const OPENAI_KEY: &str = "sk-proj-e2e-REAL-key-0123456789abcdef";

/// One provider's case: its name, API host, key variable and value, the
/// fake's variable for the expected key, the model requests' path, and
/// extra CLI arguments.
struct Case {
    provider: &'static str,
    host: &'static str,
    var: &'static str,
    key: &'static str,
    expect: &'static str,
    path: &'static str,
    args: &'static [&'static str],
    mcp_list: &'static str,
    /// `auth = "codex-login"`: the key is in a Codex login (an
    /// `auth.json` in the host's `~/.codex`), not in the environment.
    codex_login: bool,
}

/// `bottle ARGS` with the test's state dir and the real key in the host
/// environment.
fn bottle_with_key(b: &Bottle, c: &Case, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bottle_bin());
    if !c.codex_login {
        cmd.env(c.var, c.key);
    }
    cmd.args(args)
        .current_dir(&b.dir.0)
        .env("XDG_STATE_HOME", &b.state.0)
        .env_remove("BOTTLE_RUNTIME")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run bottle")
}

fn run_case(c: &Case) {
    let pki = TempDir::new("agent-run-pki");
    test_pki(&pki.0, &[c.host]);
    let ca = std::fs::read(pki.0.join("ca.pem")).unwrap();
    let config = format!(
        "[agent]\n\
         provider = \"{}\"\n\
         {}\
         [egress]\n\
         allow_private = [\"{}\"]\n\
         upstream_roots = [\"test-ca.pem\"]\n",
        c.provider,
        if c.codex_login {
            "auth = \"codex-login\"\n"
        } else {
            ""
        },
        c.host
    );
    // A Codex login on the host: the key in ~/.codex/auth.json of a home
    // of the test's own, and none in the environment.
    let home = TempDir::new("agent-run-home");
    std::fs::create_dir_all(home.0.join(".codex")).unwrap();
    std::fs::write(
        home.0.join(".codex/auth.json"),
        serde_json::json!({"OPENAI_API_KEY": c.key, "tokens": null}).to_string(),
    )
    .unwrap();
    let home_dir = home.0.display().to_string();
    let env: Vec<(&str, &str)> = if c.codex_login {
        vec![("HOME", home_dir.as_str()), ("OPENAI_API_KEY", "")]
    } else {
        vec![(c.var, c.key)]
    };
    let b = Bottle::up_full(
        &format!("agent-{}", c.provider),
        &config,
        &[("test-ca.pem", &ca)],
        &env,
        None,
    );
    // The fake API on the bottle's egress network, under the API's name.
    let log_dir = TempDir::new("agent-run-log");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let api = format!("bottle-test-api-{}", b.name);
    let out = docker(&[
        "run",
        "-d",
        "--name",
        &api,
        "--network",
        &format!("bottle-{}-egress", b.name),
        "--network-alias",
        c.host,
        "-v",
        &format!("{}:/fixtures:ro", fixtures.display()),
        "-v",
        &format!("{}:/pki:ro", pki.0.display()),
        "-v",
        &format!("{}:/log", log_dir.0.display()),
        "-e",
        "BIND=0.0.0.0",
        "-e",
        "PORT=443",
        "-e",
        "CERT=/pki/leaf.pem",
        "-e",
        "KEY=/pki/leaf-key.pem",
        "-e",
        &format!("{}={}", c.expect, c.key),
        "-e",
        "TOOL_COMMAND=curl -s https://denied.example/",
        "-e",
        "FINAL_TEXT=all checked",
        "-e",
        "LOG=/log/requests.jsonl",
        "bottle-agent:latest",
        "python3",
        "/fixtures/fake-model-api.py",
    ]);
    assert!(out.status.success(), "fake API: {}", stderr(&out));
    let _api = Container(api.clone());
    let log = log_dir.0.join("requests.jsonl");

    // The supervise MCP server is registered with the CLI.
    let mcp = b.sh(c.mcp_list);
    assert!(
        stdout(&mcp).contains("bottle"),
        "{}{}",
        stdout(&mcp),
        stderr(&mcp)
    );
    // The agent holds the placeholder, never the key.
    let env = stdout(&b.sh(&format!("echo ${}", c.var)));
    assert!(env.contains("bottle-placeholder-"), "{env}");
    assert!(!env.contains(c.key));

    let mut args = vec!["run", "-q", "--headless", "--prompt", "run the check", "--"];
    args.extend_from_slice(c.args);
    let out = bottle_with_key(&b, c, &args);
    let text = stdout(&out);
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}: {text}\n{}\nAPI log:\n{logged}",
        c.provider,
        stderr(&out)
    );
    assert!(text.contains("all checked"), "{text}");
    let requests: Vec<serde_json::Value> = logged
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let model: Vec<&serde_json::Value> = requests
        .iter()
        .filter(|r| r["path"].as_str().unwrap_or("").starts_with(c.path))
        .collect();
    assert!(model.len() >= 2, "{requests:?}");
    assert!(
        model.iter().all(|r| r["key_ok"] == true),
        "the API saw another key: {model:?}"
    );
    // The tool ran in the agent: the proxy's 403 for denied.example, which
    // names the way to ask, went back to the model.
    let bodies = model
        .iter()
        .map(|r| r["body"].to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        bodies.contains("denied.example") && bodies.contains("request_egress"),
        "no 403 text in a tool result: {bodies}"
    );
    // `run` used the running bottle and kept it.
    assert!(!labelled(&b.name).is_empty());
}

#[test]
fn claude_code_runs_headless_in_the_bottle() {
    if !engine_or_skip("claude_code_runs_headless_in_the_bottle") {
        return;
    }
    run_case(&Case {
        provider: "claude",
        host: "api.anthropic.com",
        var: "ANTHROPIC_API_KEY",
        key: ANTHROPIC_KEY,
        expect: "EXPECT_ANTHROPIC_KEY",
        path: "/v1/messages",
        args: &["--allowedTools", "Bash"],
        mcp_list: "claude mcp list 2>&1",
        codex_login: false,
    });
}

/// Codex's case, its key in the environment or in a Codex login.
fn codex(codex_login: bool) -> Case {
    Case {
        provider: "codex",
        host: "api.openai.com",
        var: "OPENAI_API_KEY",
        key: OPENAI_KEY,
        expect: "EXPECT_OPENAI_KEY",
        path: "/v1/responses",
        args: &[],
        mcp_list: "codex mcp list 2>&1",
        codex_login,
    }
}

#[test]
fn codex_runs_headless_in_the_bottle() {
    if !engine_or_skip("codex_runs_headless_in_the_bottle") {
        return;
    }
    run_case(&codex(false));
}

#[test]
fn codex_uses_the_hosts_codex_login() {
    if !engine_or_skip("codex_uses_the_hosts_codex_login") {
        return;
    }
    run_case(&codex(true));
}

/// An agent run as the workspace owner's uid gets a home of its own in the
/// provider image, with the CLI's configs in it.
#[test]
fn the_workspace_owner_gets_a_home_in_the_provider_image() {
    if !engine_or_skip("the_workspace_owner_gets_a_home_in_the_provider_image") {
        return;
    }
    let b = Bottle::up_full(
        "agent-owner",
        "[agent]\nprovider = \"claude\"\nmounts = [\"./:/workspace:rw\"]\n",
        &[],
        &[("ANTHROPIC_API_KEY", ANTHROPIC_KEY)],
        Some(4242),
    );
    let out = b.sh("id -u; echo $HOME; stat -c '%u %a' $HOME; claude mcp list 2>&1");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        &lines[..3],
        ["4242", "/tmp/bottle-home", "4242 700"],
        "{text}"
    );
    assert!(text.contains("bottle"), "{text}");
    // The image's own home is untouched.
    let out = b.sh("stat -c %u /home/agent");
    assert_eq!(stdout(&out).trim(), "1000");
}
