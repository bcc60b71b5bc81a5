//! The git gate end to end: the real `git` client inside the agent, a real
//! smart-HTTP upstream (`git http-backend` behind HTTPS with a test CA and a
//! required token, `tests/fixtures/git-upstream.py`) on the bottle's egress
//! network, and the sidecar between them. Every refusal is performed as the
//! agent would try it and asserted by the message git prints.

use bottle_e2e::*;
use std::path::Path;
use std::process::Command;

const TOKEN: &str = "ghp_e2eUpstreamToken0123456789abcdefABCD";
const UPSTREAM: &str = "git.upstream.test";

/// `git ARGS` on the host, in `dir`.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "host")
        .env("GIT_AUTHOR_EMAIL", "host@example.test")
        .env("GIT_COMMITTER_NAME", "host")
        .env("GIT_COMMITTER_EMAIL", "host@example.test")
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
    stdout(&out)
}

/// A bare repository `name.git` under `root` with one commit on `main`.
fn upstream_repo(root: &Path, name: &str) {
    let bare = root.join(format!("{name}.git"));
    git(
        root,
        &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
    );
    let work = root.join(format!("{name}-work"));
    git(
        root,
        &[
            "clone",
            "-q",
            bare.to_str().unwrap(),
            work.to_str().unwrap(),
        ],
    );
    std::fs::write(work.join("README"), format!("{name}\n")).unwrap();
    git(&work, &["add", "README"]);
    git(&work, &["commit", "-q", "-m", "first"]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
}

/// A new commit on the upstream's `main`, made on the host.
fn upstream_commit(root: &Path, name: &str, file: &str) -> String {
    let work = root.join(format!("{name}-work"));
    std::fs::write(work.join(file), "more\n").unwrap();
    git(&work, &["add", file]);
    git(&work, &["commit", "-q", "-m", file]);
    git(&work, &["push", "-q", "origin", "HEAD:main"]);
    git(&work, &["rev-parse", "HEAD"]).trim().to_string()
}

fn refs(root: &Path, name: &str) -> String {
    let bare = root.join(format!("{name}.git"));
    let out = Command::new("git")
        .args(["--git-dir", bare.to_str().unwrap(), "show-ref"])
        .output()
        .unwrap();
    stdout(&out)
}

/// The upstream server on `network` as `git.upstream.test`, waiting until
/// it answers.
fn start_upstream(name: &str, network: &str, pki: &Path, repos: &Path) -> Container {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let out = docker(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
        "--network-alias",
        UPSTREAM,
        "-e",
        &format!("UPSTREAM_TOKEN={TOKEN}"),
        "-v",
        &format!("{}:/fixtures:ro", fixtures.display()),
        "-v",
        &format!("{}:/pki:ro", pki.display()),
        "-v",
        &format!("{}:/srv/git", repos.display()),
        "bottle-agent:latest",
        "python3",
        "/fixtures/git-upstream.py",
        "/pki/leaf.pem",
        "/pki/leaf-key.pem",
        "/srv/git",
    ]);
    assert!(out.status.success(), "upstream: {}", stderr(&out));
    let c = Container(name.into());
    for _ in 0..100 {
        let logs = docker(&["logs", name]);
        if stdout(&logs).contains("upstream ready") {
            return c;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!(
        "upstream {name} did not start: {}",
        stderr(&docker(&["logs", name]))
    );
}

fn stats(name: &str) -> serde_json::Value {
    let out = docker(&[
        "exec",
        name,
        "python3",
        "-c",
        "import ssl,urllib.request;print(urllib.request.urlopen('https://127.0.0.1/_stats',context=ssl._create_unverified_context()).read().decode())",
    ]);
    serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|_| panic!("stats: {}", stderr(&out)))
}

/// `sh -c SCRIPT` in the agent: (exit code, stdout + stderr).
fn agent(b: &Bottle, script: &str) -> (i32, String) {
    let out = b.sh(script);
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

const IDENTITY: &str =
    "git config --global user.email agent@example.test && git config --global user.name agent";

#[test]
fn the_agent_clones_fetches_and_pushes_through_the_gate_within_its_rules() {
    if !engine_or_skip("gitgate") {
        return;
    }
    let pki = TempDir::new("gitgate-pki");
    test_pki(&pki.0, &[UPSTREAM]);
    let repos = TempDir::new("gitgate-repos");
    upstream_repo(&repos.0, "app");
    upstream_repo(&repos.0, "ro");
    let ca = std::fs::read(pki.0.join("ca.pem")).unwrap();
    let config = format!(
        "[egress]\n\
         allow_private = [\"{UPSTREAM}\"]\n\
         upstream_roots = [\"test-ca.pem\"]\n\
         [[git.remote]]\n\
         name = \"app\"\n\
         upstream = \"https://{UPSTREAM}/app.git\"\n\
         push = [\"agent/*\"]\n\
         protected = [\"main\"]\n\
         token_from_env = \"E2E_GIT_TOKEN\"\n\
         [[git.remote]]\n\
         name = \"ro\"\n\
         upstream = \"https://{UPSTREAM}/ro.git\"\n\
         mode = \"fetch\"\n\
         push = [\"agent/*\"]\n\
         token_from_env = \"E2E_GIT_TOKEN\"\n"
    );
    let b = Bottle::up_with(
        "gitgate",
        &config,
        &[("test-ca.pem", &ca)],
        &[("E2E_GIT_TOKEN", TOKEN)],
    );
    let up_name = format!("bottle-test-upstream-{}", b.name);
    let upstream = start_upstream(
        &up_name,
        &format!("bottle-{}-egress", b.name),
        &pki.0,
        &repos.0,
    );

    // Clone with the upstream's own URL: the agent's system config sends it
    // to the gate.
    let (code, out) = agent(
        &b,
        &format!(
            "{IDENTITY} && git clone -q https://{UPSTREAM}/app.git /tmp/app && cat /tmp/app/README"
        ),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("app"), "{out}");
    // The upstream is not in egress.allow: nothing else gets there.
    let (code, out) = agent(
        &b,
        &format!(
            "curl -sS -o /dev/null -w '%{{http_connect}}' https://{UPSTREAM}/app.git/info/refs"
        ),
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("403"), "direct to the upstream: {out}");

    // Fetch after an upstream change.
    let new = upstream_commit(&repos.0, "app", "second");
    let (code, out) = agent(
        &b,
        "cd /tmp/app && git fetch -q origin && git rev-parse origin/main",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&new), "fetch did not bring {new}: {out}");

    // ls-remote over protocol v0 and v2.
    for v in ["0", "2"] {
        let (code, out) = agent(
            &b,
            &format!("git -c protocol.version={v} ls-remote https://{UPSTREAM}/app.git"),
        );
        assert_eq!(code, 0, "v{v}: {out}");
        assert!(
            out.contains("refs/heads/main") && out.contains(&new),
            "v{v}: {out}"
        );
    }

    // Push to agent/x: accepted and visible upstream.
    let (code, out) = agent(
        &b,
        "cd /tmp/app && git checkout -q -b work origin/main && echo x > x && git add x && git commit -q -m x && git push origin HEAD:agent/x 2>&1 && git rev-parse HEAD",
    );
    assert_eq!(code, 0, "{out}");
    let head = out.lines().last().unwrap().trim().to_string();
    assert!(
        refs(&repos.0, "app").contains(&format!("{head} refs/heads/agent/x")),
        "{}",
        refs(&repos.0, "app")
    );

    // Push to main: refused, naming the rule; upstream unchanged.
    let (code, out) = agent(&b, "cd /tmp/app && git push origin HEAD:main 2>&1");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("protected") && out.contains("main"), "{out}");
    assert!(refs(&repos.0, "app").contains(&format!("{new} refs/heads/main")));

    // Force-push: refused.
    let (code, out) = agent(
        &b,
        "cd /tmp/app && git commit -q --amend -m rewritten && git push -f origin HEAD:agent/x 2>&1",
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("non-fast-forward") || out.contains("allow_force"),
        "{out}"
    );
    assert!(refs(&repos.0, "app").contains(&format!("{head} refs/heads/agent/x")));

    // Deletion: refused.
    let (code, out) = agent(&b, "cd /tmp/app && git push origin :agent/x 2>&1");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("delet"), "{out}");
    assert!(refs(&repos.0, "app").contains("refs/heads/agent/x"));

    // A mode = "fetch" remote refuses every push.
    let (code, out) = agent(
        &b,
        &format!("git clone -q https://{UPSTREAM}/ro.git /tmp/ro && cd /tmp/ro && git commit -q --allow-empty -m y && git push origin HEAD:agent/y 2>&1"),
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("fetch"), "{out}");
    assert!(!refs(&repos.0, "ro").contains("agent/y"));

    // A commit carrying a private key: refused naming file and line, never
    // the key.
    let key_body = "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0";
    let (code, out) = agent(
        &b,
        &format!(
            "cd /tmp/app && git checkout -q -b leak origin/main && printf 'config\\n-----BEGIN RSA PRIVATE KEY-----\\n{key_body}\\n-----END RSA PRIVATE KEY-----\\n' > deploy.pem && git add deploy.pem && git commit -q -m key && git push origin HEAD:agent/leak 2>&1"
        ),
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("deploy.pem") && out.contains("private-key"),
        "{out}"
    );
    assert!(
        out.contains("deploy.pem:2") || out.contains("line 2"),
        "line named: {out}"
    );
    assert!(!out.contains(key_body), "the key came back: {out}");
    assert!(!refs(&repos.0, "app").contains("agent/leak"));

    // A commit adding CI configuration: refused (the upstream would run it
    // with its own token, which can push where `protected` forbids).
    let (code, out) = agent(
        &b,
        "cd /tmp/app && git checkout -q -b ci origin/main && mkdir -p .github/workflows && printf 'on: push\\njobs: {}\\n' > .github/workflows/x.yml && git add .github && git commit -q -m ci && git push origin HEAD:agent/ci 2>&1",
    );
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(".github/workflows/x.yml is CI configuration"),
        "{out}"
    );
    assert!(!refs(&repos.0, "app").contains("agent/ci"));

    // git over ssh has no route, and says to use https.
    let (code, out) = agent(&b, "git ls-remote git@github.com:acme/other.git 2>&1");
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("ssh has no route") && out.contains("https"),
        "{out}"
    );

    // The token is nowhere the agent can look.
    let (_, out) = agent(
        &b,
        "env; git config --list --show-origin; cat /proc/*/environ /proc/*/cmdline 2>/dev/null | tr '\\0' '\\n'; grep -r . /tmp/app/.git/config /usr/local/share/ca-certificates/bottle 2>/dev/null; git credential fill </dev/null 2>&1 | head -5",
    );
    assert!(!out.contains(TOKEN), "the token reached the agent");
    // Nor the audit.
    let audit = std::fs::read_to_string(
        b.state
            .0
            .join("bottle")
            .join(&b.name)
            .join("logs/egress.jsonl"),
    )
    .unwrap_or_default();
    assert!(audit.contains("git-gate"), "no git-gate audit lines");
    assert!(!audit.contains(TOKEN), "the token is in the audit");
    let logs = b.bottle(&["logs", &b.name, "--service", "git-gate", "--json"]);
    assert!(logs.status.success(), "{}", stderr(&logs));
    let lines: Vec<serde_json::Value> = stdout(&logs)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["op"] == "push" && l["decision"] == "deny"),
        "{}",
        stdout(&logs)
    );
    assert!(
        lines.iter().all(|l| l["service"] == "git-gate"),
        "{}",
        stdout(&logs)
    );
    // The upstream saw requests with the token and no fetch of the agent's
    // own: everything came from the gate.
    let s = stats(&up_name);
    assert!(s["upload"].as_u64().unwrap_or(0) >= 1, "{s}");

    // verify's git rows, from the agent: ssh refused, no token, protected
    // ref refused.
    let v = b.bottle(&["verify", &b.name]);
    let text = stdout(&v);
    // Counted rows, run with trusted tools in the agent's network namespace.
    for row in [
        "probe      attack   git over ssh to",
        "probe      attack   git push to protected main",
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(row))
            .unwrap_or_else(|| panic!("no `{row}` row: {text}"));
        assert!(line.starts_with("pass"), "{line}");
    }
    // The agent's own view, reported.
    for row in [
        "agent-view attack   git over ssh ",
        "agent-view attack   git token absent",
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(row))
            .unwrap_or_else(|| panic!("no `{row}` row: {text}"));
        assert!(line.starts_with("(pass)"), "{line}");
    }
    assert_eq!(v.status.code(), Some(0), "{text}{}", stderr(&v));

    // Upstream down: the clone fails with the gate's own message.
    drop(upstream);
    let (code, out) = agent(
        &b,
        &format!("git clone -q https://{UPSTREAM}/app.git /tmp/app2 2>&1"),
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("git-gate"), "{out}");
}
