//! `bottle render --runtime kubernetes` as a user runs it: the built binary
//! on example configs. Golden files (bottle/tests/golden/render/) hold the
//! exact stdout and stderr; `BOTTLE_UPDATE_GOLDEN=1 cargo test -p bottle
//! --test render` rewrites them. Exit codes are the ones docs promise
//! (2: bad config or flags).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `bottle` in `dir` with a clean environment (plus `env`).
// The binary under test is bottle itself, built by cargo: nothing the agent
// could have written.
#[allow(clippy::disallowed_methods)]
fn bottle(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bottle"));
    cmd.current_dir(dir).args(args).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

fn check(name: &str, actual: &str) {
    let path = repo().join("bottle/tests/golden/render").join(name);
    if std::env::var_os("BOTTLE_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}\n  fix: BOTTLE_UPDATE_GOLDEN=1 cargo test -p bottle --test render",
            path.display()
        )
    });
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .filter(|(_, (e, a))| e != a)
            .map(|(i, (e, a))| format!("line {}:\n  - {e}\n  + {a}", i + 1))
            .collect();
        panic!(
            "{} differs ({} lines expected, {} rendered):\n{}\n  fix: if intended, BOTTLE_UPDATE_GOLDEN=1 cargo test -p bottle --test render",
            path.display(),
            expected.lines().count(),
            actual.lines().count(),
            diff.join("\n")
        );
    }
}

fn temp_config(toml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bottle.toml"), toml).unwrap();
    dir
}

#[test]
fn the_deny_all_default_renders_the_same_every_time() {
    let dir = temp_config("name = \"demo\"\n");
    let a = bottle(dir.path(), &["render", "--runtime", "kubernetes"], &[]);
    assert_eq!(a.status.code(), Some(0), "{}", text(&a.stderr));
    let b = bottle(dir.path(), &["render", "--runtime", "kubernetes"], &[]);
    assert_eq!(a.stdout, b.stdout);
    check("deny-all.yaml", &text(&a.stdout));
}

#[test]
fn egress_credential_and_git_render_without_reading_the_secrets() {
    let toml = "name = \"app\"\n\
        [agent]\nenv = { EDITOR = \"vi\" }\n\
        [egress]\nallow = [\"api.anthropic.com\"]\n\
        [[egress.credential]]\nhost = \"api.anthropic.com\"\nheader = \"x-api-key\"\nfrom_env = \"ANTHROPIC_API_KEY\"\n\
        [[git.remote]]\nname = \"app\"\nupstream = \"https://github.com/acme/app.git\"\npush = [\"agent/*\"]\nprotected = [\"main\"]\ntoken_from_env = \"GITHUB_TOKEN\"\n";
    let dir = temp_config(toml);
    let env = [
        ("ANTHROPIC_API_KEY", "sk-real-value"),
        ("GITHUB_TOKEN", "ghp-real-token"),
    ];
    let args = [
        "render",
        "--runtime",
        "kubernetes",
        "--runtime-class",
        "gvisor",
        "--node-cidr",
        "203.0.113.0/24",
    ];
    let out = bottle(dir.path(), &args, &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for secret in ["sk-real-value", "ghp-real-token", "PRIVATE KEY"] {
        assert!(!stdout.contains(secret), "{secret} on stdout");
    }
    check("egress-git.yaml", &stdout);

    // -o DIR --secrets: the same objects by concern, and the material in
    // one private file.
    let out_dir = dir.path().join("k8s");
    let mut with_dir = args.to_vec();
    with_dir.extend(["-o", out_dir.to_str().unwrap(), "--secrets"]);
    let out = bottle(dir.path(), &with_dir, &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let secrets = std::fs::read_to_string(out_dir.join("05-secrets.yaml")).unwrap();
    assert!(secrets.contains("sk-real-value") && secrets.contains("ghp-real-token"));
    assert!(secrets.contains("PRIVATE KEY"));
    use std::os::unix::fs::PermissionsExt;
    let mode = |f: &str| {
        std::fs::metadata(out_dir.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("05-secrets.yaml"), 0o600);
    assert_eq!(
        mode("40-agent.yaml") & 0o600,
        0o600,
        "the user reads and writes the others"
    );
    // Every other file holds exactly what stdout held, split by concern.
    let mut joined = Vec::new();
    for f in [
        "00-namespace.yaml",
        "10-config.yaml",
        "20-storage.yaml",
        "30-sidecar.yaml",
        "40-agent.yaml",
        "50-network.yaml",
        "60-access.yaml",
    ] {
        let body = std::fs::read_to_string(out_dir.join(f)).unwrap();
        assert!(
            !body.contains("sk-real-value") && !body.contains("PRIVATE KEY"),
            "{f}"
        );
        joined.push(body.split_once("---\n").unwrap().1.to_string());
    }
    // The files' headers differ from stdout's only in the secrets note.
    let docs = stdout.split_once("---\n").unwrap().1;
    assert_eq!(joined.join("---\n"), docs);
}

#[test]
fn a_feature_kubernetes_cannot_enforce_is_refused_by_name() {
    // examples/bottle.toml mounts the workspace from the host.
    let out = bottle(
        &repo(),
        &[
            "render",
            "--runtime",
            "kubernetes",
            "-f",
            "examples/bottle.toml",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    check("refused.txt", &text(&out.stderr));
}

#[test]
fn other_runtimes_and_secrets_on_stdout_are_refused() {
    let dir = temp_config("name = \"demo\"\n");
    let out = bottle(dir.path(), &["render", "--runtime", "docker"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("fix: pass --runtime kubernetes"));
    let out = bottle(
        dir.path(),
        &["render", "--runtime", "kubernetes", "--secrets"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("add -o DIR"));
    assert!(out.stdout.is_empty());
    // A credential whose variable is not set: named, exit 2.
    let dir = temp_config(
        "name = \"demo\"\n[egress]\nallow = [\"api.anthropic.com\"]\n[[egress.credential]]\nhost = \"api.anthropic.com\"\nheader = \"x-api-key\"\nfrom_env = \"ANTHROPIC_API_KEY\"\n",
    );
    let out_dir = dir.path().join("k8s");
    let out = bottle(
        dir.path(),
        &[
            "render",
            "--runtime",
            "kubernetes",
            "-o",
            out_dir.to_str().unwrap(),
            "--secrets",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("ANTHROPIC_API_KEY"));
    assert!(!out_dir.exists(), "nothing written on a refusal");
}
