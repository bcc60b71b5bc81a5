//! `bottle requests --watch` in a real terminal: tmux runs the real binary,
//! the test sends keys and reads the screen back. New proposals appear
//! without a key press, a key approves with a scope, `e` approves what the
//! operator's `$EDITOR` saved, a resize redraws to the new width, and
//! Ctrl-C leaves with exit 0 and the normal screen back.

use bottle::state::StateRoot;
use bottle_policy::{Ask, Proposal, ProposalId, QueueDir, Scope, Text};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

#[allow(
    clippy::disallowed_methods,
    reason = "the test drives the real tmux, as an operator's terminal"
)]
fn tmux(args: &[&str]) -> Output {
    Command::new("tmux").args(args).output().expect("run tmux")
}

fn tmux_present() -> bool {
    #[allow(clippy::disallowed_methods, reason = "is tmux installed")]
    let ok = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("tmux is missing and CI=true: scripts/test.sh installs it");
        }
        eprintln!("SKIP watch: no tmux");
    }
    ok
}

/// Kills the tmux session when dropped.
struct Session(String);

impl Drop for Session {
    fn drop(&mut self) {
        let _ = tmux(&["kill-session", "-t", &self.0]);
    }
}

impl Session {
    fn screen(&self) -> String {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &self.0]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.0];
        args.extend_from_slice(keys);
        assert!(tmux(&args).status.success());
    }

    /// Waits until the screen satisfies `ok`; the screen.
    fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "waited for {what}; the screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn file(root: &StateRoot, host: &str, now: u64) -> String {
    let state = root.bottle("demo");
    state.create().unwrap();
    let q = bottle::requests::queue_of(&state);
    q.create().unwrap();
    let p = Proposal {
        id: QueueDir::new_id().unwrap(),
        bottle: "demo".into(),
        created: now,
        expires: now + 300,
        ask: Ask::egress(host, None, vec![]).unwrap(),
        reason: Text::clean("the e2e test asks").unwrap(),
    };
    q.file_proposal(&p).unwrap();
    p.id.as_str().to_string()
}

fn decision(root: &StateRoot, id: &str) -> Option<bottle_policy::supervise::Decision> {
    bottle::requests::queue_of(&root.bottle("demo"))
        .decision_of(&ProposalId::parse(id).unwrap())
        .unwrap()
}

#[test]
fn the_operator_answers_in_the_terminal_ui() {
    if !tmux_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state_home = dir.path().join("state");
    let root = StateRoot::at(state_home.join("bottle"));
    let now = bottle::requests::now();
    let first = file(&root, "api.example.com", now);
    // The operator's editor: uncomments the port line (443 only).
    let editor = dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/^# port = 443.*/port = 443/' \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let name = format!("bottle-watch-{}", std::process::id());
    let script = format!(
        "XDG_STATE_HOME='{}' EDITOR='{}' '{}' requests --watch; echo watch-exited=$?; sleep 60",
        state_home.display(),
        editor.display(),
        Path::new(env!("CARGO_BIN_EXE_bottle")).display()
    );
    let out = tmux(&[
        "new-session",
        "-d",
        "-s",
        &name,
        "-x",
        "120",
        "-y",
        "30",
        "sh",
        "-c",
        &script,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = Session(name);
    s.wait("the first request", |t| {
        t.contains(&first) && t.contains("1 pending")
    });

    // A request filed while the UI runs appears without a key press.
    let second = file(&root, "pypi.example.org", now + 1);
    s.wait("the second request", |t| {
        t.contains(&second) && t.contains("2 pending")
    });

    // a, Enter: approved for the session (the default scope).
    s.keys(&["a"]);
    s.wait("the approve dialog", |t| t.contains("scope: session"));
    s.keys(&["Enter"]);
    s.wait("the approval", |t| t.contains(&format!("approved {first}")));
    let d = decision(&root, &first).expect("a decision file");
    assert_eq!(d.scope, Scope::Session);
    assert!(d.edited.is_none());

    // e: the editor narrows the rule to port 443; that is what is approved.
    s.keys(&["e"]);
    s.wait("the edited approval", |t| {
        t.contains(&format!("approved {second}"))
    });
    let d = decision(&root, &second).expect("a decision file");
    assert_eq!(
        d.edited.expect("the edited ask").summary(),
        "egress pypi.example.org:443"
    );

    // A resize redraws to the new width.
    assert!(tmux(&["resize-window", "-t", &s.0, "-x", "80", "-y", "20"])
        .status
        .success());
    s.wait("a redraw at 80 columns", |t| {
        t.lines()
            .next()
            .is_some_and(|l| l.trim_end().chars().count() == 80)
    });

    // Ctrl-C: exit 0, the normal screen back.
    s.keys(&["C-c"]);
    let t = s.wait("the exit", |t| t.contains("watch-exited="));
    assert!(t.contains("watch-exited=0"), "{t}");
    assert!(
        !t.contains("bottle requests:"),
        "the UI is still on screen:\n{t}"
    );
}

/// Without a terminal the UI refuses, pointing at --json.
#[test]
fn without_a_terminal_the_ui_refuses() {
    #[allow(
        clippy::disallowed_methods,
        reason = "the real binary, as a script runs it"
    )]
    let out = Command::new(env!("CARGO_BIN_EXE_bottle"))
        .args(["requests", "--watch"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("use `bottle requests --json`"), "{err}");
}
