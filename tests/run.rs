//! `bottle run` and `bottle resume` on a real Docker engine: the agent's
//! command runs in the bottle and its exit code becomes bottle's, the
//! bottle is removed at exit unless kept, a kept bottle is resumed, and a
//! running bottle is never widened by a `run` of another provider.

use bottle_e2e::*;
use std::io::Write;
use std::process::{Command, Stdio};

/// `bottle ARGS` in `dir` with `state`, `stdin` piped in.
fn bottle_in(dir: &TempDir, state: &TempDir, args: &[&str], stdin: &str) -> std::process::Output {
    bottle_env(dir, state, args, stdin, &[])
}

/// [`bottle_in`] with extra environment.
fn bottle_env(
    dir: &TempDir,
    state: &TempDir,
    args: &[&str],
    stdin: &str,
    env: &[(&str, &std::path::Path)],
) -> std::process::Output {
    let mut child = Command::new(bottle_bin())
        .args(args)
        .envs(env.iter().copied())
        .current_dir(&dir.0)
        .env("XDG_STATE_HOME", &state.0)
        .env_remove("BOTTLE_RUNTIME")
        .env_remove("ANTHROPIC_API_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bottle");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A usage refusal (exit 2) whose message says `why`.
fn refused(out: &std::process::Output, why: &str) {
    assert_eq!(out.status.code(), Some(2), "{}", stderr(out));
    assert!(stderr(out).contains(why), "{}", stderr(out));
}

#[test]
fn run_headless_keep_and_resume() {
    if !engine_or_skip("run") {
        return;
    }
    let name = unique_name("run");
    let dir = TempDir::new("run");
    let state = TempDir::new("run-state");
    std::fs::write(dir.0.join("bottle.toml"), format!("name = \"{name}\"\n")).unwrap();

    // Headless: the output, the exit code, the user's git identity, and
    // nothing left behind.
    let home = TempDir::new("run-home");
    std::fs::write(
        home.0.join(".gitconfig"),
        "[user]\n\tname = Run Tester\n\temail = run@example.com\n",
    )
    .unwrap();
    let out = bottle_env(
        &dir,
        &state,
        &[
            "run",
            "shell",
            "-q",
            "--headless",
            "--prompt",
            "echo in-bottle $BOTTLE_NAME; git config user.email; exit 3",
        ],
        "",
        &[("HOME", &home.0)],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!("in-bottle {name}\nrun@example.com")
    );
    assert!(labelled(&name).is_empty(), "left: {:?}", labelled(&name));

    // --keep: the bottle stays, `resume` returns to it (stdin forwarded).
    let out = bottle_in(
        &dir,
        &state,
        &[
            "run",
            "shell",
            "-q",
            "--keep",
            "--headless",
            "--prompt",
            "touch /tmp/kept-marker",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!labelled(&name).is_empty(), "the kept bottle is gone");
    let ps = stdout(&bottle_in(&dir, &state, &["ps", "--json"], ""));
    let ps: Vec<serde_json::Value> = serde_json::from_str(ps.trim()).unwrap();
    let me = ps
        .iter()
        .find(|b| b["name"] == name.as_str())
        .expect("in ps");
    assert_eq!(me["session"]["provider"], "shell", "{me}");
    assert_eq!(me["session"]["state"], "exited 0", "{me}");
    assert_eq!(
        me["resume"],
        format!("bottle resume {name}").as_str(),
        "{me}"
    );
    let out = bottle_in(
        &dir,
        &state,
        &["resume", &name],
        "test -e /tmp/kept-marker && echo same-agent; exit 4\n",
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "same-agent");

    // A snapshot keeps the agent's files, not its variables' values; a new
    // bottle starts from it (a new image: consent, as for any other).
    let tag = format!("t{}", name.replace("run-", ""));
    let out = bottle_in(
        &dir,
        &state,
        &["snapshot", &name, "--tag", &tag, "--json"],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let image = format!("bottle-snapshot:{tag}");
    assert!(stdout(&out).contains(&image), "{}", stdout(&out));
    let env = stdout(&docker(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.Env}}",
        &image,
    ]));
    assert!(env.contains("\"BOTTLE_NAME=\""), "{env}");
    assert!(
        !env.contains(&name),
        "a value of the bottle's variables is in the image: {env}"
    );
    let out = bottle_in(
        &dir,
        &state,
        &[
            "run",
            "--from",
            &tag,
            "-q",
            "--headless",
            "--prompt",
            "true",
        ],
        "",
    );
    refused(&out, "--from starts a new bottle");

    // Another provider never widens the running bottle.
    let out = bottle_in(
        &dir,
        &state,
        &["run", "claude", "-q", "--headless", "--prompt", "hi"],
        "",
    );
    refused(&out, "is running without claude's API");
    let out = bottle_in(&dir, &state, &["down", &name], "");
    assert!(out.status.success(), "{}", stderr(&out));

    let out = bottle_in(
        &dir,
        &state,
        &[
            "run",
            "--from",
            &tag,
            "-q",
            "--accept-changes",
            "--headless",
            "--prompt",
            "test -e /tmp/kept-marker",
        ],
        "",
    );
    assert!(
        out.status.success(),
        "started from the snapshot: {}",
        stderr(&out)
    );
    let _ = docker(&["rmi", "-f", &image]);
    let out = bottle_in(
        &dir,
        &state,
        &[
            "run",
            "--from",
            "NO",
            "-q",
            "--headless",
            "--prompt",
            "true",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // `resume` of a bottle that is gone says so.
    let out = bottle_in(&dir, &state, &["resume", &name], "");
    refused(&out, "is not running");
    assert!(labelled(&name).is_empty());
}
