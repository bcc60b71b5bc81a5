//! The host side of the boundary, attacked on a real Docker engine: what the
//! agent writes in its workspace (bottle.toml, symlinks, `.git/`, file modes)
//! and what it asks of the host's processes (forks) must never be turned
//! against the user. Each attack is performed from inside the agent, then the
//! user acts as they would afterwards — plain `bottle up` with no terminal,
//! `git status` in the workspace, listing file owners — and the exact refusal
//! is asserted, with nothing created and nothing run.

use bottle_e2e::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

/// The workspace's owner: not root, so "owned by the mount's owner" is
/// visible.
const OWNER: u32 = 4242;

/// `git` as the host user would run it in `dir` (root here, so the
/// ownership check is waived exactly as a same-user run would pass it).
fn host_git(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("git")
        .args(["-c", "safe.directory=*"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git")
}

/// An empty commit by the host user, which runs the repository's commit
/// hooks.
fn host_commit(dir: &Path, message: &str) -> std::process::Output {
    host_git(
        dir,
        &[
            "-c",
            "user.email=u@h",
            "-c",
            "user.name=u",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            message,
        ],
    )
}

/// `bottle up` as a script would run it: no terminal, no flags but `extra`.
fn up(b: &Bottle, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["up"];
    args.extend_from_slice(extra);
    let out = Command::new(bottle_bin())
        .args(&args)
        .current_dir(&b.dir.0)
        .env("XDG_STATE_HOME", &b.state.0)
        .env_remove("BOTTLE_RUNTIME")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("bottle up");
    out
}

#[test]
fn what_the_agent_writes_cannot_be_turned_against_the_user() {
    if !engine_or_skip("what_the_agent_writes_cannot_be_turned_against_the_user") {
        return;
    }
    // The user's project: a git repository with a cache directory, owned by
    // an ordinary user, and a directory elsewhere the agent must never get.
    let secret = TempDir::new("host-secret");
    std::fs::write(secret.0.join("id_rsa"), "PRIVATE KEY\n").unwrap();
    // Same owner as the workspace, so only the pin stands in the way.
    chown_r(&secret.0, OWNER);
    let name = unique_name("hostside");
    let dir = TempDir::new("hostside");
    let state = TempDir::new("hostside-state");
    let ws = dir.0.clone();
    std::fs::create_dir(ws.join("cache")).unwrap();
    let config = format!(
        "name = \"{name}\"\n\
         [agent]\n\
         mounts = [\"./:/workspace:rw\", \"./cache:/cache:rw\"]\n\
         [egress]\n\
         allow = [\"api.example.com\"]\n\
         [[egress.rule]]\n\
         host = \"api.example.com\"\n\
         methods = [\"GET\"]\n"
    );
    std::fs::write(ws.join("bottle.toml"), &config).unwrap();
    let g = host_git(&ws, &["init", "-q"]);
    assert!(g.status.success(), "{}", stderr(&g));
    // A submodule `lib` the user has not checked out: a gitlink in the index.
    let c = host_commit(&ws, "init");
    assert!(c.status.success(), "{}", stderr(&c));
    let head = stdout(&host_git(&ws, &["rev-parse", "HEAD"]))
        .trim()
        .to_string();
    let sub = host_git(
        &ws,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{head},lib"),
        ],
    );
    assert!(sub.status.success(), "{}", stderr(&sub));
    chown_r(&ws, OWNER);
    let b = Bottle {
        name: name.clone(),
        dir,
        state,
    };
    let first = up(&b, &[]);
    assert!(first.status.success(), "{}", stderr(&first));

    // ---- item 4: the agent writes as the mount's owner, never as root.
    let out = b.sh(
        "id -u; cp /bin/sh /workspace/rootshell && chmod 4755 /workspace/rootshell && echo planted",
    );
    let text = stdout(&out);
    assert!(text.starts_with(&format!("{OWNER}\n")), "agent uid: {text}");
    assert!(text.contains("planted"), "{text}{}", stderr(&out));
    let meta = std::fs::metadata(ws.join("rootshell")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (OWNER, OWNER),
        "a file the agent wrote is owned by {}:{}",
        meta.uid(),
        meta.gid()
    );

    // ---- item 7: a fork bomb stops at the pids limit, not at the host.
    let out = b.sh("python3 -c \"
import os, signal, time
kids = []
try:
    for i in range(6000):
        p = os.fork()
        if p == 0:
            time.sleep(30)
            os._exit(0)
        kids.append(p)
    print('forked', len(kids))
except OSError as e:
    print('refused after', len(kids), 'errno', e.errno)
for p in kids:
    os.kill(p, signal.SIGKILL)
\"");
    let text = stdout(&out);
    assert!(text.starts_with("refused after"), "{text}{}", stderr(&out));
    let n: usize = text.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(n < 2048, "{text}");
    let inspect = docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.PidsLimit}} {{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}",
        &format!("bottle-{name}-agent"),
    ]);
    let limits = stdout(&inspect);
    assert!(
        limits.starts_with(&format!("2048 {} ", 4u64 << 30)),
        "agent limits: {limits}"
    );

    // ---- item 5: the repository's executable configuration is read-only.
    let out = b.sh(
        "cd /workspace; \
         printf '[core]\\n\\tfsmonitor = \"touch PWNED-fsmonitor; false\"\\n' >> .git/config && echo config-written; \
         printf '#!/bin/sh\\ntouch PWNED-hook\\n' > .git/hooks/pre-commit && chmod +x .git/hooks/pre-commit && echo hook-written; \
         mkdir -p evil/objects evil/refs && printf '[core]\\n\\tfsmonitor = \"touch PWNED-commondir; false\"\\n' > evil/config; \
         echo ../evil > .git/commondir && echo commondir-written; \
         mv .git .git-old && echo git-moved; \
         rm -rf .git 2>/dev/null; ls -d .git && echo still-there; \
         mkdir -p lib/.git/objects lib/.git/refs && echo 'ref: refs/heads/main' > lib/.git/HEAD && echo submodule-written; \
         printf '[core]\\n\\tfsmonitor = \"touch ../PWNED-submodule; false\"\\n' > lib/.git/config",
    );
    let text = stdout(&out);
    let err = stderr(&out);
    for written in [
        "config-written",
        "hook-written",
        "commondir-written",
        "git-moved",
        "submodule-written",
    ] {
        assert!(!text.contains(written), "{written}: {text}{err}");
    }
    assert!(text.contains("still-there"), "{text}{err}");
    assert!(err.contains("Read-only file system"), "{err}");
    // The user's next `git status` and `git commit` run nothing the agent
    // wrote.
    let st = host_git(&ws, &["status", "--short"]);
    assert!(st.status.success(), "{}", stderr(&st));
    let ci = host_commit(&ws, "after");
    assert!(ci.status.success(), "{}", stderr(&ci));
    for planted in [
        "PWNED-fsmonitor",
        "PWNED-hook",
        "PWNED-commondir",
        "PWNED-submodule",
    ] {
        assert!(!ws.join(planted).exists(), "{planted} ran on the host");
    }
    // Control: the same payloads, written where they could be, do run, so
    // the absence above means "not written", not "would never run".
    let scratch = TempDir::new("host-scratch");
    assert!(host_git(&scratch.0, &["init", "-q"]).status.success());
    std::fs::write(
        scratch.0.join(".git/config"),
        "[core]\n\tfsmonitor = \"touch PWNED-fsmonitor; false\"\n",
    )
    .unwrap();
    let hook = scratch.0.join(".git/hooks/pre-commit");
    std::fs::write(&hook, "#!/bin/sh\ntouch PWNED-hook\n").unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    host_git(&scratch.0, &["status", "--short"]);
    host_commit(&scratch.0, "c");
    for ran in ["PWNED-fsmonitor", "PWNED-hook"] {
        assert!(scratch.0.join(ran).exists(), "control: {ran} did not run");
    }
    // The agent can still read the history.
    assert_eq!(
        b.exec_code(&["git", "-C", "/workspace", "status", "--short"]),
        0
    );

    // ---- items 1, 2, 3, 12: edits to bottle.toml and the mounts, made by the
    // agent, then plain `bottle up`. Each variant is written by the agent.
    let variants = [
        // 1: a new name with the engine socket inside.
        format!(
            "name = \"fresh-{n}\"\n[agent]\nmounts = [\"./:/workspace:rw\", \"/var/run/docker.sock:/var/run/docker.sock\"]\n",
            n = name
        ),
        // 1: a new name, nothing else widened.
        format!(
            "name = \"fresh-{n}\"\n[agent]\nmounts = [\"./:/workspace:rw\", \"./cache:/cache:rw\"]\n[egress]\nallow = [\"api.example.com\"]\n",
            n = name
        ),
        // 2: an added rule on a method-restricted host.
        format!(
            "{config}[[egress.rule]]\nhost = \"api.example.com\"\n"
        ),
        // 12: a root that never ends.
        format!("{config}[sidecar]\nmax_connections = 100000\n"),
        config.replace("[egress]\n", "[egress]\nupstream_roots = [\"/dev/zero\"]\n"),
        // 11: a proxy of the agent's own, sent a host variable as credential.
        config.replace(
            "[egress]\n",
            "[egress]\nupstream_proxy = \"http://evil.example:3128\"\nupstream_proxy_auth_env = \"PATH\"\n",
        ),
    ];
    for (i, v) in variants.iter().enumerate() {
        let path = format!("/workspace/variant{i}.toml");
        let out = b.sh(&format!("cat > {path} <<'EOF'\n{v}EOF"));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // 3: the cache directory becomes a symlink to a host directory, and to /etc.
    let out = b.sh(&format!(
        "cd /workspace && mv cache cache.old && ln -s {} cache && echo swapped",
        secret.0.display()
    ));
    assert!(
        stdout(&out).contains("swapped"),
        "{:?} {} {}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    let down = b.bottle(&["down", &name]);
    assert!(down.status.success());
    // The empty `.git` planted in the unchecked-out submodule went with it.
    assert!(!ws.join("lib").exists(), "the planted lib was left behind");

    // Exit 4: refused (consent, a mount bottle never makes); 2: bad input.
    let expect_exit = |code: i32, variant: Option<usize>, needle: &str| {
        if let Some(i) = variant {
            std::fs::copy(ws.join(format!("variant{i}.toml")), ws.join("bottle.toml")).unwrap();
        }
        let out = up(&b, &[]);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(code),
            "variant {variant:?} started (or not refused): {err}"
        );
        assert!(err.contains(needle), "variant {variant:?}: {err}");
        assert!(labelled(&name).is_empty(), "resources created: {err}");
        assert!(
            labelled(&format!("fresh-{name}")).is_empty(),
            "resources created: {err}"
        );
        err
    };
    let expect_refusal = |variant: Option<usize>, needle: &str| expect_exit(4, variant, needle);
    // 3: the symlinked mount resolves to the secret directory: a new mount.
    let err = expect_refusal(
        None,
        &format!(
            "agent.mounts gains `{}:/cache:rw`",
            std::fs::canonicalize(&secret.0).unwrap().display()
        ),
    );
    assert!(err.contains("--accept-changes"), "{err}");
    std::fs::remove_file(ws.join("cache")).unwrap();
    std::os::unix::fs::symlink("/etc", ws.join("cache")).unwrap();
    expect_refusal(None, "refusing to mount /etc (`");
    std::fs::remove_file(ws.join("cache")).unwrap();
    std::fs::rename(ws.join("cache.old"), ws.join("cache")).unwrap();
    // 1: the engine socket is never mounted silently, whatever the name.
    let err = expect_refusal(Some(0), "refusing to mount /run/docker.sock");
    assert!(err.contains("--allow-mount /run/docker.sock"), "{err}");
    // 1: a new name from the same file is the same file's consent.
    expect_refusal(
        Some(1),
        &format!("was accepted as bottle `{name}`; it now names `fresh-{name}`"),
    );
    // 2: an added rule opens more.
    expect_refusal(Some(2), "[[egress.rule]] added for api.example.com");
    // Larger limits are more.
    expect_refusal(Some(3), "sidecar.max_connections grows from 1024 to 100000");
    // 12: /dev/zero is refused before a byte is read.
    expect_exit(2, Some(4), "/dev/zero is not a regular file");
    // 11: the upstream proxy (and what it is sent) is the user's choice.
    expect_refusal(
        Some(5),
        "egress.upstream_proxy changes from none to `http://evil.example:3128` (credential from $PATH)",
    );

    // 4: a root-owned project: the agent would write as root.
    chown_r(&ws, 0);
    expect_refusal(
        None,
        "belongs to root, so the agent would write there as root",
    );
    chown_r(&ws, OWNER);

    // 14: a config error is printed once.
    std::fs::write(ws.join("bottle.toml"), "nmae = \"x\"\n").unwrap();
    let out = up(&b, &[]);
    let err = stderr(&out);
    assert_eq!(err.matches("unknown key `nmae`").count(), 1, "{err}");
    assert_eq!(out.status.code(), Some(2), "a config error: {err}");

    // Control: the accepted config still starts silently.
    std::fs::write(ws.join("bottle.toml"), &config).unwrap();
    let again = up(&b, &[]);
    assert!(again.status.success(), "{}", stderr(&again));
}
