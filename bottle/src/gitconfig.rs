//! The agent's system git configuration: the user's git identity (from
//! their global config on the host) for the agent's commits, and each
//! `[[git.remote]]` upstream URL
//! rewritten (`url.<gate>.insteadOf`) to the sidecar's git gate, so a plain
//! `git clone https://github.com/acme/app.git` inside the agent goes through
//! the gate unchanged, and git over ssh answered with the way that works.
//!
//! The file lives in the state dir's `agent/` directory, mounted read-only
//! into the agent, and git finds it through `GIT_CONFIG_SYSTEM`. Nothing is
//! written into the workspace's `.git/config`: the agent can rewrite that
//! file and the host may run git on it. The rewrite is convenience, not a
//! boundary: an agent that ignores it meets the egress policy, where the
//! upstream host is not allowed.

use bottle_policy::GitRemote;

/// The file's name in `agent/`.
pub const FILE: &str = "gitconfig";
/// The git gate's port on the sidecar.
pub const GATE_PORT: u16 = 8080;

/// A value in double quotes for a git config file.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The spellings of `remote`'s upstream the agent may use: the URL as
/// written, without `.git`, and the ssh forms for the same path (an ssh
/// URL of a configured remote goes through the gate over https).
pub fn spellings(remote: &GitRemote) -> Vec<String> {
    let url = &remote.upstream;
    let https = format!("https://{}{}", authority(remote), url.path());
    let mut out = vec![https.clone()];
    if let Some(bare) = https.strip_suffix(".git") {
        out.push(bare.to_string());
    } else {
        out.push(format!("{https}.git"));
    }
    if url.port() == 443 {
        let path = url.path().trim_start_matches('/');
        let path_git = if path.ends_with(".git") {
            path.to_string()
        } else {
            format!("{path}.git")
        };
        out.push(format!("git@{}:{path_git}", url.host()));
        out.push(format!("ssh://git@{}/{path_git}", url.host()));
    }
    out
}

fn authority(remote: &GitRemote) -> String {
    let url = &remote.upstream;
    let host = if url.host().contains(':') {
        format!("[{}]", url.host())
    } else {
        url.host().to_string()
    };
    if url.port() == 443 {
        host
    } else {
        format!("{host}:{}", url.port())
    }
}

/// The gate's URL of `remote` on the sidecar at `sidecar_ip`.
pub fn gate_url(sidecar_ip: &str, remote: &GitRemote) -> String {
    format!(
        "http://{sidecar_ip}:{GATE_PORT}/{}.git",
        remote.name.as_str()
    )
}

/// The user's git identity, for the agent's commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub email: String,
}

impl Identity {
    /// Both values on one line of printable text, at most 200 characters
    /// each; else `None`.
    pub fn new(name: &str, email: &str) -> Option<Identity> {
        let ok = |s: &str| !s.is_empty() && s.len() <= 200 && !s.chars().any(char::is_control);
        (ok(name.trim()) && ok(email.trim())).then(|| Identity {
            name: name.trim().to_string(),
            email: email.trim().to_string(),
        })
    }
}

/// The host user's `user.name` and `user.email` from their global git
/// config, read by the host's `git` run in `/` (never in the workspace,
/// whose `.git/` the agent writes); `None` when either is unset or git is
/// missing.
pub fn host_identity() -> Option<Identity> {
    let git = which::which("git").ok()?;
    let get = |key: &str| -> Option<String> {
        #[allow(
            clippy::disallowed_methods,
            reason = "the host's own git reads the user's global config, in / and with no repository, so nothing the agent wrote is read or run"
        )]
        let out = std::process::Command::new(&git)
            .args(["config", "--global", "--includes", "--get", key])
            .current_dir("/")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CEILING_DIRECTORIES", "/")
            .stdin(std::process::Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    Identity::new(&get("user.name")?, &get("user.email")?)
}

/// The whole file for `remotes` behind the sidecar at `sidecar_ip`, with
/// the user's `identity` for the agent's commits.
pub fn render(sidecar_ip: &str, remotes: &[GitRemote], identity: Option<&Identity>) -> String {
    let mut out = String::from(
        "# Written by bottle at `bottle up`; read-only in the agent.\n\
         # Each remote's upstream URL goes to the sidecar's git gate, which holds the\n\
         # token and checks every push; no other route to these hosts exists.\n",
    );
    if let Some(id) = identity {
        out.push_str(&format!(
            "[user]\n\tname = {}\n\temail = {}\n",
            quoted(&id.name),
            quoted(&id.email)
        ));
    }
    for r in remotes {
        out.push_str(&format!("[url {}]\n", quoted(&gate_url(sidecar_ip, r))));
        for s in spellings(r) {
            out.push_str(&format!("\tinsteadOf = {}\n", quoted(&s)));
        }
    }
    let names: Vec<&str> = remotes.iter().map(|r| r.name.as_str()).collect();
    let message = format!(
        "bottle: git over ssh has no route out of this bottle; use the https URL (through the git gate: {})",
        if names.is_empty() { "no remotes".to_string() } else { names.join(", ") }
    );
    // git runs core.sshCommand with a shell and appends its arguments.
    let command = format!("echo '{}' >&2; exit 128; :", message.replace('\'', ""));
    out.push_str(&format!("[core]\n\tsshCommand = {}\n", quoted(&command)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(upstream: &str) -> GitRemote {
        serde_json::from_value(serde_json::json!({"name": "app", "upstream": upstream})).unwrap()
    }

    #[test]
    fn every_spelling_of_an_upstream_goes_to_the_gate() {
        let r = remote("https://github.com/acme/app.git");
        assert_eq!(
            spellings(&r),
            [
                "https://github.com/acme/app.git",
                "https://github.com/acme/app",
                "git@github.com:acme/app.git",
                "ssh://git@github.com/acme/app.git",
            ]
        );
        let id = Identity::new("A \"Q\" User", "a@example.com").unwrap();
        let text = render("10.213.0.2", &[r], Some(&id));
        assert!(
            text.contains("[user]\n\tname = \"A \\\"Q\\\" User\"\n\temail = \"a@example.com\"\n"),
            "{text}"
        );
        assert!(Identity::new("x\ny", "a@b").is_none());
        assert!(text.contains("[url \"http://10.213.0.2:8080/app.git\"]\n\tinsteadOf = \"https://github.com/acme/app.git\"\n"), "{text}");
        assert!(text.contains("sshCommand = \"echo 'bottle: git over ssh has no route out of this bottle; use the https URL (through the git gate: app)' >&2; exit 128; :\""), "{text}");
        // A port of its own has no ssh spelling.
        let r = remote("https://git.corp.example:8443/t/x");
        assert_eq!(
            spellings(&r),
            [
                "https://git.corp.example:8443/t/x",
                "https://git.corp.example:8443/t/x.git"
            ]
        );
    }

    /// What git itself makes of the file: the real `git` resolves each
    /// spelling to the gate, and leaves other URLs alone.
    #[test]
    fn git_reads_the_rewrites() {
        let Ok(git) = which::which("git") else {
            eprintln!("SKIP git_reads_the_rewrites: no git");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE);
        std::fs::write(
            &file,
            render(
                "10.213.0.2",
                &[remote("https://github.com/acme/app.git")],
                Identity::new("Ann", "ann@example.com").as_ref(),
            ),
        )
        .unwrap();
        // The real git on the file it would read in the agent; a test's own
        // spawn, on a file it wrote.
        let git_out = |args: &[&str]| {
            #[allow(clippy::disallowed_methods)]
            let out = std::process::Command::new(&git)
                .args(args)
                .env_clear()
                .env("GIT_CONFIG_SYSTEM", &file)
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env("HOME", dir.path())
                .current_dir(dir.path())
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        // `git ls-remote --get-url` applies insteadOf without a network.
        let resolve = |url: &str| git_out(&["ls-remote", "--get-url", url]);
        for url in [
            "https://github.com/acme/app.git",
            "https://github.com/acme/app",
            "git@github.com:acme/app.git",
        ] {
            assert_eq!(resolve(url), "http://10.213.0.2:8080/app.git", "{url}");
        }
        let get = |key: &str| git_out(&["config", "--get", key]);
        assert_eq!(get("user.name"), "Ann");
        assert_eq!(get("user.email"), "ann@example.com");
        assert_eq!(
            resolve("https://github.com/acme/other.git"),
            "https://github.com/acme/other.git"
        );
        assert_eq!(
            resolve("https://github.com/acme/app-other.git"),
            "http://10.213.0.2:8080/app.git-other.git",
            "a longer name is not the remote: the gate answers 404 for it"
        );
    }
}
