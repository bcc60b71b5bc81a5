//! End-to-end test of `egress.upstream_proxy` on Docker: a live bottle whose
//! sidecar must tunnel through a local stand-in for a corporate proxy
//! (`tests/fixtures/connect-proxy.py`, which wants `Proxy-Authorization` and
//! logs one JSON line per request).
//!
//! The layout proves the path. The echo origin lives on a network of its own
//! that only the proxy joins, so a fetch that succeeds went through the
//! proxy: neither the sidecar nor the agent has a route to the origin.
//!
//! ```text
//!  agent ──internal── sidecar ──egress── proxy ──backend── origin
//! ```
//!
//! The sidecar resolves and checks a name before it asks the proxy for it
//! (the destination guard runs on its own resolution), so `origin.test` must
//! resolve on the egress network too: the proxy container carries it as a
//! network alias there, and `egress.allow_private` accepts that private
//! address. The sidecar never dials it (were it to, nothing listens on the
//! proxy's :443 and the fetch fails). The proxy itself resolves
//! `origin.test` through its own `/etc/hosts` (`--add-host`) to the origin's
//! backend address, as a corporate proxy resolves names in its own view of
//! the network.
//!
//! Asserted from inside the agent: fetches succeed; the proxy sees only the
//! sidecar's CONNECTs, with the credential, and nothing from the agent, which
//! cannot reach the proxy by name, by address or through the sidecar; denied
//! and guard-refused names never reach the proxy; the credential is nowhere
//! the agent or the host's logs and state files can show it; a wrong
//! credential gives the agent a 502 naming the proxy's 407.

use bottle_e2e::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The proxy's credential variable on the host, and its value.
const VAR: &str = "E2E_PROXY_AUTH";
const USER: &str = "pxe-user";
const PASSWORD: &str = "pxe-SECRET-5151-proxy";
/// What `bottle reload` gives the sidecar for the 407 case.
const WRONG: &str = "pxe-user:not-the-password";

fn credential() -> String {
    format!("{USER}:{PASSWORD}")
}

/// `base64(user:password)`, as sent in `Proxy-Authorization: Basic …`; the
/// encoded form must not leak either.
fn credential_b64() -> String {
    base64(credential().as_bytes())
}

/// Standard base64 with padding (RFC 4648 section 4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_the_rfc_vectors() {
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(plain.as_bytes()), encoded);
    }
}

/// A Docker network removed on drop.
struct Network(String);

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.0]);
    }
}

/// Fields drop in order: the proxy and the origin go before their backend
/// network, and the proxy leaves the bottle's egress network before
/// `bottle down` removes it.
struct Setup {
    proxy: Container,
    _origin: Container,
    _backend: Network,
    b: Bottle,
    _pki: TempDir,
}

fn config() -> String {
    "[egress]\n\
     allow = [\"origin.test\", \"private.test\"]\n\
     # origin.test resolves, for the sidecar, to the proxy's egress address\n\
     # (see the module doc); private.test too, and stays guard-refused.\n\
     allow_private = [\"origin.test\"]\n\
     upstream_roots = [\"test-ca.pem\"]\n\
     upstream_proxy = \"http://proxy.test:3128\"\n"
        .to_string()
        + &format!("upstream_proxy_auth_env = \"{VAR}\"\n")
}

fn address_on(container: &str, network: &str) -> String {
    let fmt = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    let out = docker(&["inspect", "-f", &fmt, container]);
    let ip = stdout(&out).trim().to_string();
    assert!(
        !ip.is_empty() && !ip.contains("no value"),
        "no address for {container} on {network}: {}",
        stderr(&out)
    );
    ip
}

fn setup(prefix: &str) -> Option<Setup> {
    if !engine_or_skip(prefix) {
        return None;
    }
    let pki = TempDir::new(&format!("{prefix}-pki"));
    test_pki(&pki.0, &["origin.test"]);
    let ca = std::fs::read(pki.0.join("ca.pem")).unwrap();
    let cred = credential();
    let b = Bottle::up_with(
        prefix,
        &config(),
        &[("test-ca.pem", &ca)],
        &[(VAR, cred.as_str())],
    );

    let backend = format!("bottle-test-pxnet-{}", b.name);
    let out = docker(&["network", "create", "--internal", &backend]);
    assert!(out.status.success(), "backend network: {}", stderr(&out));
    let backend = Network(backend);
    let origin = echo_origin(
        &format!("bottle-test-pxorigin-{}", b.name),
        &backend.0,
        &["origin.test"],
        &pki.0,
    );
    let origin_ip = address_on(&origin.0, &backend.0);

    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let proxy_name = format!("bottle-test-proxy-{}", b.name);
    let out = docker(&[
        "run",
        "-d",
        "--name",
        &proxy_name,
        "--network",
        &format!("bottle-{}-egress", b.name),
        "--network-alias",
        "proxy.test",
        "--network-alias",
        "origin.test",
        "--network-alias",
        "private.test",
        "--add-host",
        &format!("origin.test:{origin_ip}"),
        "-v",
        &format!("{}:/fixtures:ro", fixtures.display()),
        "bottle-agent:latest",
        "python3",
        "/fixtures/connect-proxy.py",
        "3128",
        &cred,
    ]);
    assert!(out.status.success(), "proxy: {}", stderr(&out));
    let proxy = Container(proxy_name);
    let out = docker(&["network", "connect", &backend.0, &proxy.0]);
    assert!(out.status.success(), "proxy on backend: {}", stderr(&out));
    for _ in 0..100 {
        if proxy_log_text(&proxy).contains("\"listening\"") {
            return Some(Setup {
                proxy,
                _origin: origin,
                _backend: backend,
                b,
                _pki: pki,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("proxy did not start: {}", proxy_log_text(&proxy));
}

fn proxy_log_text(proxy: &Container) -> String {
    let out = docker(&["logs", &proxy.0]);
    format!("{}{}", stdout(&out), stderr(&out))
}

/// The proxy's request lines (the startup line left out).
fn proxy_requests(proxy: &Container) -> Vec<serde_json::Value> {
    let out = docker(&["logs", &proxy.0]);
    stdout(&out)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .filter(|v| v.get("line").is_some())
        .collect()
}

/// Does `text` hold the credential in any form?
fn leaks(text: &str) -> bool {
    text.contains(PASSWORD) || text.contains(&credential_b64())
}

/// Every regular file under `dir`, with its bytes.
fn files_under(dir: &Path, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("dir entry").path();
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        if meta.is_dir() {
            files_under(&path, out);
        } else if meta.is_file() {
            out.push((path.clone(), std::fs::read(&path).expect("read")));
        }
    }
}

const UNSET: &str =
    "env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY -u all_proxy";

#[test]
fn the_sidecar_alone_reaches_the_upstream_proxy() {
    let Some(s) = setup("pxe") else { return };
    let b = &s.b;
    let sidecar_ip = b.ip("sidecar", "egress");
    let agent_ip = b.ip("agent", "internal");
    let proxy_ip = address_on(&s.proxy.0, &format!("bottle-{}-egress", b.name));

    // Through the sidecar's explicit proxy, its transparent HTTPS listener
    // and plain HTTP: each reaches the origin, which only the proxy can.
    let text = sh_out(b, "curl -sS --max-time 15 https://origin.test/explicit");
    assert_eq!(json_of(&text)["path"], "/explicit", "{text}");
    let text = sh_out(
        b,
        &format!("{UNSET} curl -sS --max-time 15 https://origin.test/transparent"),
    );
    assert_eq!(json_of(&text)["path"], "/transparent", "{text}");
    let text = sh_out(b, "curl -sS --max-time 15 http://origin.test/plain");
    assert_eq!(json_of(&text)["path"], "/plain", "{text}");

    // The proxy saw the sidecar's CONNECTs, with the right credential.
    let seen = proxy_requests(&s.proxy);
    let connects = |target: &str| {
        seen.iter()
            .filter(|v| v["line"] == format!("CONNECT {target} HTTP/1.1"))
            .count()
    };
    assert!(connects("origin.test:443") >= 2, "{seen:#?}");
    assert!(connects("origin.test:80") >= 1, "{seen:#?}");
    for v in &seen {
        assert_eq!(v["src"], sidecar_ip.as_str(), "only the sidecar: {v}");
        assert_eq!(v["auth"], "ok", "{v}");
        assert_eq!(v["status"], 200, "{v}");
    }

    // The agent cannot reach the proxy: its name does not resolve...
    let text = sh_out(
        b,
        "curl -sS --max-time 5 -x http://proxy.test:3128 http://origin.test/direct; echo \"exit=$?\"",
    );
    assert!(text.contains("exit=5"), "proxy name resolved: {text}");
    // ...its address has no route from the agent's network...
    let text = sh_out(
        b,
        &format!("curl -sS --max-time 5 -x http://{proxy_ip}:3128 http://origin.test/direct; echo \"exit=$?\""),
    );
    assert!(
        text.contains("exit=7") && !text.contains("\"path\""),
        "the agent reached the proxy at {proxy_ip}: {text}"
    );
    // ...and the sidecar refuses to tunnel to it (not allowed).
    let text = sh_out(
        b,
        "curl -s --max-time 5 -w '\\nstatus=%{http_code}' http://proxy.test:3128/; \
         curl -s --max-time 5 -o /dev/null -w 'connect=%{http_connect}\\n' -p http://proxy.test:3128/",
    );
    assert!(
        text.contains("status=403") && text.contains("connect=403"),
        "{text}"
    );

    // Denied and guard-refused names never reach the proxy.
    let text = sh_out(
        b,
        "curl -s --max-time 10 -o /dev/null -w '%{http_connect}' https://denied.test/",
    );
    assert_eq!(text.trim(), "403", "{text}");
    let text = sh_out(
        b,
        "curl -s --max-time 10 -w '\\nstatus=%{http_code}' http://private.test/",
    );
    assert!(text.contains("status=403"), "private.test: {text}");
    let text = sh_out(
        b,
        "curl -s --max-time 10 -o /dev/null -w '%{http_connect}' https://private.test/",
    );
    assert!(!text.contains("200"), "private.test over TLS: {text}");

    let after = proxy_requests(&s.proxy);
    let log = proxy_log_text(&s.proxy);
    assert!(
        !log.contains(&agent_ip),
        "the agent's {agent_ip} at the proxy: {log}"
    );
    for name in ["denied.test", "private.test", "proxy.test", "/direct"] {
        assert!(!log.contains(name), "{name} reached the proxy: {log}");
    }
    assert_eq!(after.len(), seen.len(), "new requests at the proxy: {log}");

    // The credential: nowhere in the agent (nor a variable for it)...
    let text = sh_out(b, "env; tr '\\0' '\\n' </proc/1/environ; echo done");
    assert!(text.ends_with("done\n"), "{text}");
    assert!(!leaks(&text), "credential in the agent's env:\n{text}");
    assert!(!text.contains(VAR), "{VAR} in the agent's env:\n{text}");
    for role in ["agent", "sidecar"] {
        let inspect = docker(&["inspect", &format!("bottle-{}-{role}", b.name)]);
        assert!(
            !leaks(&stdout(&inspect)),
            "credential in the {role} container's config"
        );
    }
    // ...nor in `bottle logs`...
    for service in ["agent", "sidecar", "egress"] {
        let out = b.bottle(&["logs", &b.name, "--service", service]);
        assert!(out.status.success(), "logs {service}: {}", stderr(&out));
        assert!(
            !leaks(&format!("{}{}", stdout(&out), stderr(&out))),
            "credential in `bottle logs --service {service}`"
        );
    }
    // ...nor in the state dir, but for secrets.json (where it must be).
    let mut files = Vec::new();
    files_under(&s.b.state.0, &mut files);
    let mut in_secrets = false;
    for (path, bytes) in &files {
        let text = String::from_utf8_lossy(bytes);
        if path.file_name().is_some_and(|n| n == "secrets.json") {
            in_secrets |= text.contains(PASSWORD);
        } else {
            assert!(!leaks(&text), "credential in {}", path.display());
        }
    }
    assert!(
        in_secrets,
        "no secrets.json holds the credential: {files:?}"
    );

    // A wrong credential: the proxy answers 407, the agent gets a 502 naming it.
    let out = Command::new(bottle_bin())
        .args(["reload", &b.name])
        .current_dir(&b.dir.0)
        .env("XDG_STATE_HOME", &b.state.0)
        .env_remove("BOTTLE_RUNTIME")
        .env(VAR, WRONG)
        .output()
        .expect("run bottle reload");
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "reload: {said}");
    assert!(
        !leaks(&said) && !said.contains("not-the-password"),
        "{said}"
    );
    let text = sh_out(
        b,
        "curl -s --max-time 15 -w '\\nstatus=%{http_code}' http://origin.test/wrong",
    );
    assert!(text.contains("status=502"), "{text}");
    assert!(
        text.contains("refused CONNECT origin.test:80")
            && text.contains("407 Proxy Authentication Required"),
        "{text}"
    );
    // Over HTTPS the sidecar opens the tunnel before it answers the agent's
    // CONNECT, so the 502 is that answer; its body names the 407 too.
    let text = sh_out(
        b,
        "curl -s --max-time 15 -o /dev/null -w 'connect=%{http_connect}' https://origin.test/wrong-tls",
    );
    assert_eq!(text.trim(), "connect=502", "{text}");
    let text = sh_out(
        b,
        r#"python3 - <<'PY'
import os, socket
s = socket.create_connection((os.environ["BOTTLE_SIDECAR"], 3128), timeout=15)
s.sendall(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.decode("utf-8", "replace"))
PY"#,
    );
    assert!(
        text.starts_with("HTTP/1.1 502")
            && text.contains("refused CONNECT origin.test:443")
            && text.contains("407 Proxy Authentication Required"),
        "{text}"
    );
    let wrong: Vec<_> = proxy_requests(&s.proxy)
        .into_iter()
        .filter(|v| v["auth"] == "wrong")
        .collect();
    assert!(!wrong.is_empty(), "{}", proxy_log_text(&s.proxy));
    for v in &wrong {
        assert_eq!(v["status"], 407, "{v}");
        assert_eq!(v["src"], sidecar_ip.as_str(), "{v}");
    }
}
