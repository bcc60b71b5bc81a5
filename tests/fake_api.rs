//! The real agent CLIs against the fake model API, on the host (no engine):
//! Claude Code (`claude -p`) and Codex (`codex exec`) from
//! scripts/setup-agent-clis.sh talk HTTPS to tests/fixtures/fake-model-api.py
//! behind a test CA, run the shell command the fake asks for, and send its
//! output back. This proves the fake drives the real CLIs headless, with
//! the env and flags docs/agents.md lists, before a bottle is put around
//! them (issue 13). Without the CLIs the tests skip, or fail under
//! `CI=true`.

use bottle_e2e::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What the fake's scripted tool call prints: stands in for the proxy's 403
/// text that must come back to the model in the next request.
const TOOL_OUTPUT: &str = "403-from-proxy-text";
/// The fake's final answer.
const FINAL_TEXT: &str = "fake-api-finished";
const ANTHROPIC_KEY: &str = "sk-ant-fake-api-test-key";
const OPENAI_KEY: &str = "sk-openai-fake-api-test-key";
/// A CLI that has not finished by then is stuck (retrying, waiting for
/// input); a normal run takes about a second.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// The `bin/` holding `claude` and `codex` (scripts/setup-agent-clis.sh;
/// `BOTTLE_AGENT_CLIS` names its directory, else its default).
fn agent_clis(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("BOTTLE_AGENT_CLIS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/bottle/agent-clis"))
        })
        .map(|d| d.join("bin"))
        .filter(|b| b.join("claude").is_file() && b.join("codex").is_file());
    if dir.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: the agent CLIs are missing and CI=true: run scripts/setup-agent-clis.sh (scripts/test.sh does)");
        }
        eprintln!("SKIP {test}: no claude/codex CLIs (scripts/setup-agent-clis.sh installs them)");
    }
    dir
}

/// A running fake model API on 127.0.0.1 with a fresh test CA, killed on
/// drop. Its tool command writes `token` to `marker`, then prints
/// [`TOOL_OUTPUT`].
struct FakeApi {
    child: Child,
    port: u16,
    dir: TempDir,
    token: String,
}

impl FakeApi {
    fn start(tag: &str) -> FakeApi {
        let dir = TempDir::new(tag);
        let pki = dir.0.join("pki");
        std::fs::create_dir_all(&pki).unwrap();
        test_pki(&pki, &["localhost"]);
        std::fs::create_dir_all(dir.0.join("home")).unwrap();
        std::fs::create_dir_all(dir.0.join("work")).unwrap();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let token = format!("fake-api-tool-ran-{}-{nanos}", std::process::id());
        let marker = dir.0.join("marker");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fake-model-api.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .env("BIND", "127.0.0.1")
            .env("PORT", "0")
            .env("CERT", pki.join("leaf.pem"))
            .env("KEY", pki.join("leaf-key.pem"))
            .env("EXPECT_ANTHROPIC_KEY", ANTHROPIC_KEY)
            .env("EXPECT_OPENAI_KEY", OPENAI_KEY)
            .env(
                "TOOL_COMMAND",
                format!("echo {token} > {}; echo {TOOL_OUTPUT}", marker.display()),
            )
            .env("FINAL_TEXT", FINAL_TEXT)
            .env("LOG", dir.0.join("requests.jsonl"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (the fake model API needs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the fake model API did not start: {line:?}"));
        FakeApi {
            child,
            port,
            dir,
            token,
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    fn ca(&self) -> PathBuf {
        self.dir.0.join("pki/ca.pem")
    }

    /// A command with nothing from this environment but `PATH` (the codex
    /// launcher is a node script), `HOME` in the temp dir and the work dir.
    fn cli(&self, bin: &Path, name: &str) -> Command {
        let mut cmd = Command::new(bin.join(name));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.0.join("home"))
            .current_dir(self.dir.0.join("work"))
            .stdin(Stdio::null());
        cmd
    }

    /// Every request the fake saw, in order.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.0.join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON log line"))
            .collect()
    }

    /// The requests to `route` (the path without its query).
    fn model_requests(&self, route: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["route"] == route)
            .collect()
    }

    /// What the tool call left in the marker file, if it ran.
    fn marker(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.0.join("marker"))
            .ok()
            .map(|s| s.trim().to_owned())
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A finished CLI run: exit status, stdout, stderr.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion with its output in files under `dir` (no pipe
/// to fill), killing it after [`CLI_TIMEOUT`].
fn run(mut cmd: Command, dir: &Path, tag: &str) -> Run {
    let out_path = dir.join(format!("{tag}.out"));
    let err_path = dir.join(format!("{tag}.err"));
    cmd.stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let mut child = cmd.spawn().expect("start the agent CLI");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > CLI_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{tag} still running after {CLI_TIMEOUT:?}; stderr: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Run {
        status,
        stdout: std::fs::read_to_string(out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(err_path).unwrap_or_default(),
    }
}

/// `claude -p` headless against the fake, with `key` as its API key.
/// Runs as root here, where `--dangerously-skip-permissions` refuses to
/// start; `--allowedTools Bash` lets the Bash tool run unattended.
fn claude(api: &FakeApi, bin: &Path, key: &str) -> Run {
    let mut cmd = api.cli(bin, "claude");
    cmd.env("ANTHROPIC_BASE_URL", api.url())
        .env("ANTHROPIC_API_KEY", key)
        .env("NODE_EXTRA_CA_CERTS", api.ca())
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        // A 401 is retried with back-off by default (minutes); fail at once.
        .env("CLAUDE_CODE_MAX_RETRIES", "0")
        .args([
            "-p",
            "run the check",
            "--output-format",
            "json",
            "--allowedTools",
            "Bash",
        ]);
    run(cmd, &api.dir.0, "claude")
}

/// `codex exec` headless against the fake, with `key` as its API key, via
/// a provider of its own (the built-in one ignores `OPENAI_API_KEY` and
/// `OPENAI_BASE_URL` and tries WebSockets first).
fn codex(api: &FakeApi, bin: &Path, key: &str) -> Run {
    let mut cmd = api.cli(bin, "codex");
    cmd.env("OPENAI_API_KEY", key)
        .env("CODEX_CA_CERTIFICATE", api.ca())
        .args([
            "exec",
            "--skip-git-repo-check",
            "-s",
            "danger-full-access",
            "-c",
            "model_provider=fake",
            "-c",
        ])
        .arg(format!(
            "model_providers.fake={{name=\"fake\",base_url=\"{}/v1\",env_key=\"OPENAI_API_KEY\",\
             wire_api=\"responses\",request_max_retries=0,stream_max_retries=0}}",
            api.url()
        ))
        .arg("run the check");
    run(cmd, &api.dir.0, "codex")
}

/// Does the JSON body carry `TOOL_OUTPUT` in an item of type `kind`?
fn carries_tool_output(body: &Value, kind: &str) -> bool {
    fn walk(v: &Value, kind: &str) -> bool {
        match v {
            Value::Object(m) => {
                (m.get("type").and_then(Value::as_str) == Some(kind)
                    && v.to_string().contains(TOOL_OUTPUT))
                    || m.values().any(|x| walk(x, kind))
            }
            Value::Array(a) => a.iter().any(|x| walk(x, kind)),
            _ => false,
        }
    }
    walk(body, kind)
}

fn describe(api: &FakeApi, r: &Run) -> String {
    let seen: Vec<String> = api
        .requests()
        .iter()
        .map(|q| {
            format!(
                "{} {} key_ok={} -> {} {}",
                q["method"], q["path"], q["key_ok"], q["status"], q["answered"]
            )
        })
        .collect();
    format!(
        "status {:?}\nstdout: {}\nstderr: {}\nthe fake saw:\n  {}",
        r.status,
        r.stdout,
        r.stderr,
        seen.join("\n  ")
    )
}

#[test]
fn claude_runs_the_scripted_tool_and_sends_its_output_back() {
    let Some(bin) = agent_clis("claude_runs_the_scripted_tool_and_sends_its_output_back") else {
        return;
    };
    let api = FakeApi::start("fake-api-claude");
    let r = claude(&api, &bin, ANTHROPIC_KEY);
    let why = describe(&api, &r);
    assert!(r.status.success(), "claude failed: {why}");
    let result: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {why}"));
    assert_eq!(result["result"], FINAL_TEXT, "{why}");
    assert_eq!(result["is_error"], false, "{why}");
    assert_eq!(
        api.marker().as_deref(),
        Some(api.token.as_str()),
        "the Bash tool did not run: {why}"
    );
    let msgs = api.model_requests("/v1/messages");
    assert!(msgs.len() >= 2, "{why}");
    assert!(msgs.iter().all(|q| q["key_ok"] == true), "{why}");
    assert_eq!(msgs[0]["answered"], "tool_call", "{why}");
    let last = msgs.last().unwrap();
    assert_eq!(last["answered"], "final", "{why}");
    assert!(
        carries_tool_output(&last["body"], "tool_result"),
        "the tool's output did not come back: {why}"
    );
}

#[test]
fn claude_with_a_wrong_key_fails_and_runs_nothing() {
    let Some(bin) = agent_clis("claude_with_a_wrong_key_fails_and_runs_nothing") else {
        return;
    };
    let api = FakeApi::start("fake-api-claude-key");
    let r = claude(&api, &bin, "sk-ant-not-the-key");
    let why = describe(&api, &r);
    assert!(
        !r.status.success(),
        "claude succeeded with a wrong key: {why}"
    );
    let result: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {why}"));
    assert_eq!(result["is_error"], true, "{why}");
    assert_eq!(result["api_error_status"], 401, "{why}");
    let msgs = api.model_requests("/v1/messages");
    assert!(
        !msgs.is_empty()
            && msgs
                .iter()
                .all(|q| q["key_ok"] == false && q["status"] == 401),
        "{why}"
    );
    assert_eq!(api.marker(), None, "{why}");
}

#[test]
fn codex_runs_the_scripted_tool_and_sends_its_output_back() {
    let Some(bin) = agent_clis("codex_runs_the_scripted_tool_and_sends_its_output_back") else {
        return;
    };
    let api = FakeApi::start("fake-api-codex");
    let r = codex(&api, &bin, OPENAI_KEY);
    let why = describe(&api, &r);
    assert!(r.status.success(), "codex failed: {why}");
    assert_eq!(r.stdout.trim(), FINAL_TEXT, "{why}");
    assert_eq!(
        api.marker().as_deref(),
        Some(api.token.as_str()),
        "the shell tool did not run: {why}"
    );
    let calls = api.model_requests("/v1/responses");
    assert!(calls.len() >= 2, "{why}");
    assert!(calls.iter().all(|q| q["key_ok"] == true), "{why}");
    assert_eq!(calls[0]["answered"], "tool_call", "{why}");
    let last = calls.last().unwrap();
    assert_eq!(last["answered"], "final", "{why}");
    // Code mode's `exec` answers with a custom tool's output; a plain
    // function tool would with `function_call_output`.
    assert!(
        carries_tool_output(&last["body"], "custom_tool_call_output")
            || carries_tool_output(&last["body"], "function_call_output"),
        "the tool's output did not come back: {why}"
    );
}

#[test]
fn codex_with_a_wrong_key_fails_and_runs_nothing() {
    let Some(bin) = agent_clis("codex_with_a_wrong_key_fails_and_runs_nothing") else {
        return;
    };
    let api = FakeApi::start("fake-api-codex-key");
    let r = codex(&api, &bin, "sk-openai-not-the-key");
    let why = describe(&api, &r);
    assert!(
        !r.status.success(),
        "codex succeeded with a wrong key: {why}"
    );
    assert!(r.stderr.contains("401 Unauthorized"), "{why}");
    let calls = api.model_requests("/v1/responses");
    assert!(
        !calls.is_empty()
            && calls
                .iter()
                .all(|q| q["key_ok"] == false && q["status"] == 401),
        "{why}"
    );
    assert_eq!(api.marker(), None, "{why}");
}
