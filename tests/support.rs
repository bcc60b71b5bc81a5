//! Helpers for bottle's end-to-end tests: find the built binaries, decide
//! whether an engine is there (skip with a printed reason, or fail under
//! `CI=true`), run `bottle` and `docker`, and tear bottles down on drop.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Is a Docker engine answering? Under `CI=true` a missing engine is a test
/// failure, never a skip.
pub fn engine_or_skip(test: &str) -> bool {
    let ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: no Docker engine answers and CI=true: engine tests must run (scripts/setup-engine.sh starts one)");
        }
        eprintln!("SKIP {test}: no Docker engine answers (run scripts/setup-engine.sh)");
    }
    ok
}

/// `target/<profile>/` of this test build.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub fn bottle_bin() -> PathBuf {
    let p = bin_dir().join("bottle");
    assert!(
        p.is_file() && static_sidecar_bin().is_file(),
        "{} or {} missing: run `cargo build --workspace` and scripts/build-sidecar.sh before the end-to-end tests",
        p.display(),
        static_sidecar_bin().display()
    );
    p
}

/// The static musl sidecar `bottle` puts in the sidecar image on this
/// (local) engine: `BOTTLE_SIDECAR_BIN`, else the one
/// scripts/build-sidecar.sh copied next to `bottle` for this host's arch.
pub fn static_sidecar_bin() -> PathBuf {
    match std::env::var_os("BOTTLE_SIDECAR_BIN").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => bin_dir().join(format!(
            "bottle-sidecar-{}-unknown-linux-musl",
            std::env::consts::ARCH
        )),
    }
}

/// A unique, valid bottle name for one test.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Runs `bottle ARGS` with the test's state dir.
pub fn bottle(state: &Path, dir: &Path, args: &[&str]) -> Output {
    Command::new(bottle_bin())
        .args(args)
        .current_dir(dir)
        .env("XDG_STATE_HOME", state)
        .env_remove("BOTTLE_RUNTIME")
        .output()
        .expect("run bottle")
}

/// Runs `docker ARGS`, returning stdout.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run docker")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    #[allow(
        clippy::disallowed_methods,
        reason = "a directory's name is the default name of the bottle made in it, so the tests \
                  choose it (tag, pid, counter); they run as the machine's only user"
    )]
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(unique_name(&format!("bottle-test-{tag}")));
        std::fs::create_dir_all(&p).expect("mkdir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running bottle, brought down when dropped.
pub struct Bottle {
    pub name: String,
    pub dir: TempDir,
    pub state: TempDir,
}

impl Bottle {
    /// Writes `config` (with `name = ...` prepended) and runs `bottle up`.
    pub fn up(prefix: &str, config: &str) -> Bottle {
        Bottle::up_with(prefix, config, &[], &[])
    }

    /// Like [`Bottle::up`], with extra files next to bottle.toml and extra
    /// environment for `bottle up` (credential values).
    pub fn up_with(
        prefix: &str,
        config: &str,
        files: &[(&str, &[u8])],
        env: &[(&str, &str)],
    ) -> Bottle {
        Bottle::up_full(prefix, config, files, env, None)
    }

    /// Like [`Bottle::up`], with the project directory (and everything in it)
    /// given to `uid:uid` first: bottle refuses to let the agent write as root
    /// in a root-owned read-write mount, and runs it as the mount's owner.
    pub fn up_owned(prefix: &str, config: &str, uid: u32) -> Bottle {
        Bottle::up_full(prefix, config, &[], &[], Some(uid))
    }

    pub fn up_full(
        prefix: &str,
        config: &str,
        files: &[(&str, &[u8])],
        env: &[(&str, &str)],
        owner: Option<u32>,
    ) -> Bottle {
        let name = unique_name(prefix);
        let dir = TempDir::new(prefix);
        let state = TempDir::new(&format!("{prefix}-state"));
        std::fs::write(
            dir.0.join("bottle.toml"),
            format!("name = \"{name}\"\n{config}"),
        )
        .expect("write config");
        for (f, data) in files {
            std::fs::write(dir.0.join(f), data).expect("write file");
        }
        if let Some(uid) = owner {
            chown_r(&dir.0, uid);
        }
        let b = Bottle { name, dir, state };
        let out = Command::new(bottle_bin())
            .arg("up")
            .current_dir(&b.dir.0)
            .env("XDG_STATE_HOME", &b.state.0)
            .env_remove("BOTTLE_RUNTIME")
            .envs(env.iter().copied())
            .output()
            .expect("run bottle up");
        assert!(
            out.status.success(),
            "bottle up failed:\nstdout:\n{}\nstderr:\n{}",
            stdout(&out),
            stderr(&out)
        );
        b
    }

    pub fn bottle(&self, args: &[&str]) -> Output {
        bottle(&self.state.0, &self.dir.0, args)
    }

    /// `bottle exec NAME -- sh -c SCRIPT`.
    pub fn sh(&self, script: &str) -> Output {
        self.bottle(&["exec", &self.name, "--", "sh", "-c", script])
    }

    /// Exit code of `bottle exec NAME -- ARGS`.
    pub fn exec_code(&self, args: &[&str]) -> i32 {
        let mut all = vec!["exec", self.name.as_str(), "--"];
        all.extend_from_slice(args);
        self.bottle(&all).status.code().unwrap_or(-1)
    }

    /// IPv4 address of the bottle's container in `role` on `network`.
    pub fn ip(&self, role: &str, network_role: &str) -> String {
        let container = format!("bottle-{}-{role}", self.name);
        let network = format!("bottle-{}-{network_role}", self.name);
        let fmt = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
        let out = docker(&["inspect", "-f", &fmt, &container]);
        let ip = stdout(&out).trim().to_string();
        assert!(
            !ip.is_empty(),
            "no address for {container} on {network}: {}",
            stderr(&out)
        );
        ip
    }
}

/// A handle on a running bottle that does not bring it down when dropped
/// (for threads that run commands in it while the test goes on).
#[derive(Debug, Clone)]
pub struct BottleRef {
    pub name: String,
    pub dir: PathBuf,
    pub state: PathBuf,
}

impl BottleRef {
    pub fn bottle(&self, args: &[&str]) -> Output {
        bottle(&self.state, &self.dir, args)
    }
}

impl Bottle {
    pub fn handle(&self) -> BottleRef {
        BottleRef {
            name: self.name.clone(),
            dir: self.dir.0.clone(),
            state: self.state.0.clone(),
        }
    }
}

impl Drop for Bottle {
    fn drop(&mut self) {
        let _ = self.bottle(&["down", &self.name]);
    }
}

/// `chown -R uid:uid path`, without following symlinks, by system call
/// rather than a `chown` process.
pub fn chown_r(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid))
        .unwrap_or_else(|e| panic!("chown {uid} {}: {e}", path.display()));
    let meta = std::fs::symlink_metadata(path).expect("stat");
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).expect("read_dir") {
            chown_r(&entry.expect("dir entry").path(), uid);
        }
    }
}

/// Ids of every container and network labelled with bottle `name`.
pub fn labelled(name: &str) -> Vec<String> {
    let filter = format!("label=dev.bottle.name={name}");
    let mut ids: Vec<String> = Vec::new();
    for args in [
        vec!["ps", "-aq", "--filter", filter.as_str()],
        vec!["network", "ls", "-q", "--filter", filter.as_str()],
    ] {
        let out = docker(&args);
        assert!(out.status.success(), "docker {:?}: {}", args, stderr(&out));
        ids.extend(
            stdout(&out)
                .lines()
                .map(String::from)
                .filter(|l| !l.is_empty()),
        );
    }
    ids
}

/// A container removed on drop.
pub struct Container(pub String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

/// A test CA and a leaf certificate for `names`, made with the openssl CLI in
/// `dir`: `ca.pem`, `leaf.pem`, `leaf-key.pem`.
pub fn test_pki(dir: &Path, names: &[&str]) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (install it: apt-get install openssl)");
        assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=bottle test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf-key.pem",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=origin",
    ]);
    let san = names
        .iter()
        .map(|n| format!("DNS:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    for f in ["ca.pem", "leaf.pem", "leaf-key.pem"] {
        let p = dir.join(f);
        let mut perm = std::fs::metadata(&p).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
        std::fs::set_permissions(&p, perm).unwrap();
    }
}

/// Starts the echo origin (`tests/fixtures/origin.py`, HTTP on 80, HTTPS on
/// 443 with `pki/leaf.pem`) on `network` under `aliases`, and waits until it
/// answers.
pub fn echo_origin(name: &str, network: &str, aliases: &[&str], pki: &Path) -> Container {
    fixture_server(
        name,
        network,
        aliases,
        pki,
        "origin.py",
        "import urllib.request; urllib.request.urlopen('http://127.0.0.1:80/ready', timeout=1)",
    )
}

/// Starts `tests/fixtures/<script>` (given `/pki/leaf.pem` and
/// `/pki/leaf-key.pem`) in the agent image on `network` under `aliases`, and
/// waits until the python `ready` snippet succeeds inside it.
pub fn fixture_server(
    name: &str,
    network: &str,
    aliases: &[&str],
    pki: &Path,
    script: &str,
    ready: &str,
) -> Container {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut args: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        name.into(),
        "--network".into(),
        network.into(),
        "-v".into(),
        format!("{}:/fixtures:ro", fixtures.display()),
        "-v".into(),
        format!("{}:/pki:ro", pki.display()),
    ];
    for a in aliases {
        args.push("--network-alias".into());
        args.push((*a).into());
    }
    args.extend(
        [
            "bottle-agent:latest",
            "python3",
            &format!("/fixtures/{script}"),
            "/pki/leaf.pem",
            "/pki/leaf-key.pem",
        ]
        .map(String::from),
    );
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = docker(&argv);
    assert!(out.status.success(), "{script}: {}", stderr(&out));
    let c = Container(name.into());
    for _ in 0..100 {
        let probe = docker(&["exec", name, "python3", "-c", ready]);
        if probe.status.success() {
            return c;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let logs = docker(&["logs", name]);
    panic!(
        "{script} in {name} did not start: {}{}",
        stdout(&logs),
        stderr(&logs)
    );
}

/// Runs a shell script in `b`'s agent; returns stdout and stderr together.
pub fn sh_out(b: &Bottle, script: &str) -> String {
    let out = b.sh(script);
    format!("{}{}", stdout(&out), stderr(&out))
}

/// The JSON object in `text` (from its first `{` to its last `}`).
pub fn json_of(text: &str) -> serde_json::Value {
    let start = text
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in: {text}"));
    serde_json::from_str(&text[start..text.rfind('}').unwrap() + 1])
        .unwrap_or_else(|e| panic!("{e}: {text}"))
}
