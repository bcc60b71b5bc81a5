//! End-to-end: what an agent's tools speak works through the sidecar
//! (issue 14), from inside a live bottle against origins on its egress
//! network: nginx serving HTTP/2 over TLS, a gRPC service (Python `grpcio`),
//! and a streaming origin (tests/fixtures/protocols/stream-origin.py) for
//! server-sent events, a WebSocket and a large upload. Real clients in the
//! agent: curl, grpcio, Python's urllib and a raw-socket WebSocket client.

use bottle_e2e::*;
use sha2::Digest;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const GRPCIO: &str = "1.76.0";
/// grpcio's one dependency.
const TYPING_EXTENSIONS: &str = "4.15.0";
const NAMES: [&str; 3] = ["h2.test", "grpc.test", "stream.test"];

/// The test image (agent image + nginx-light + grpcio), built once per
/// content of the Containerfile and the wheel versions.
fn image() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/protocols");
    let file = std::fs::read(dir.join("Containerfile")).expect("read Containerfile");
    let mut h = sha2::Sha256::new();
    h.update(&file);
    h.update(GRPCIO.as_bytes());
    h.update(TYPING_EXTENSIONS.as_bytes());
    let tag = format!("bottle-protocols:{}", &hex::encode(h.finalize())[..12]);
    if docker(&["image", "inspect", &tag]).status.success() {
        return tag;
    }
    let ctx = TempDir::new("protocols-image");
    std::fs::write(ctx.0.join("Containerfile"), &file).unwrap();
    // The host's pip config names the index: no registry host here.
    let got = Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps"])
        .args(["--only-binary", ":all:", "-d"])
        .arg(&ctx.0)
        .arg(format!("grpcio=={GRPCIO}"))
        .arg(format!("typing_extensions=={TYPING_EXTENSIONS}"))
        .output()
        .expect("python3 -m pip");
    assert!(
        got.status.success(),
        "pip download grpcio: {}",
        stderr(&got)
    );
    let unpack = Command::new("python3")
        .args([
            "-c",
            "import glob, sys, zipfile\n\
             d = sys.argv[1]\n\
             for w in glob.glob(d + '/*.whl'):\n\
             \x20   zipfile.ZipFile(w).extractall(d + '/site-packages')",
        ])
        .arg(&ctx.0)
        .output()
        .unwrap();
    assert!(
        unpack.status.success(),
        "unpack grpcio: {}",
        stderr(&unpack)
    );
    let ctx_s = ctx.0.display().to_string();
    let file_s = ctx.0.join("Containerfile").display().to_string();
    let built = docker(&["build", "-q", "-f", &file_s, "-t", &tag, &ctx_s]);
    assert!(built.status.success(), "build {tag}: {}", stderr(&built));
    tag
}

/// The origins (nginx on 443, gRPC on 50051, the streaming origin on 8443)
/// in one container on `network`, answering to [`NAMES`].
fn origins(name: &str, network: &str, image: &str, pki: &Path) -> Container {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/protocols");
    let mut args: Vec<String> = ["run", "-d", "--name", name, "--network", network]
        .map(String::from)
        .to_vec();
    for n in NAMES {
        args.extend(["--network-alias".into(), n.into()]);
    }
    args.extend([
        "-v".into(),
        format!("{}:/fixtures:ro", fixtures.display()),
        "-v".into(),
        format!("{}:/pki:ro", pki.display()),
        image.into(),
        "sh".into(),
        "-c".into(),
        "nginx -c /fixtures/nginx.conf & \
         python3 /fixtures/grpc-server.py /pki/leaf.pem /pki/leaf-key.pem & \
         exec python3 /fixtures/stream-origin.py /pki/leaf.pem /pki/leaf-key.pem"
            .into(),
    ]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = docker(&argv);
    assert!(out.status.success(), "origins: {}", stderr(&out));
    let c = Container(name.into());
    for _ in 0..300 {
        let probe = docker(&[
            "exec",
            name,
            "sh",
            "-c",
            "curl -sf http://127.0.0.1:8080/ready && curl -skf https://127.0.0.1/ && \
             python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 50051), 1)'",
        ]);
        if probe.status.success() {
            return c;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = docker(&["logs", name]);
    panic!("origins did not start: {}{}", stdout(&logs), stderr(&logs));
}

/// The sidecar process's peak resident memory in KiB (VmHWM), read by the
/// host from /proc.
fn sidecar_peak_kib(b: &Bottle) -> u64 {
    let top = docker(&[
        "top",
        &format!("bottle-{}-sidecar", b.name),
        "-eo",
        "pid,comm",
    ]);
    let pid = stdout(&top)
        .lines()
        .find(|l| l.contains("bottle-sidecar"))
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| panic!("no sidecar process: {}", stdout(&top)));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM")
}

#[test]
fn http2_grpc_streaming_and_websockets_work_through_the_sidecar() {
    if !engine_or_skip("protocols") {
        return;
    }
    let image = image();
    let pki = TempDir::new("protocols-pki");
    test_pki(&pki.0, &NAMES);
    let ca = std::fs::read(pki.0.join("ca.pem")).unwrap();
    let b = Bottle::up_with(
        "protocols",
        &format!(
            "[agent]\nimage = \"{image}\"\n\n[egress]\n\
             allow = [\"h2.test\", \"grpc.test:50051\", \"stream.test:8443\"]\n\
             allow_private = [\"h2.test\", \"grpc.test\", \"stream.test\"]\n\
             upstream_roots = [\"test-ca.pem\"]\n\n\
             [[egress.rule]]\nhost = \"h2.test\"\npaths = [\"/ok/\"]\n"
        ),
        &[("test-ca.pem", &ca)],
        &[],
    );
    let origin_name = format!("bottle-test-protocols-{}", b.name);
    let _origins = origins(
        &origin_name,
        &format!("bottle-{}-egress", b.name),
        &image,
        &pki.0,
    );
    let fixtures = "/tmp/fixtures";
    let copied = docker(&[
        "cp",
        &format!("{}/fixtures/protocols/.", env!("CARGO_MANIFEST_DIR")),
        &format!("bottle-{}-agent:{fixtures}", b.name),
    ]);
    assert!(copied.status.success(), "{}", stderr(&copied));

    // A WebSocket that stays idle for 90 s, in the background.
    let handle = b.handle();
    let ws = std::thread::spawn(move || {
        handle.bottle(&[
            "exec",
            &handle.name,
            "--",
            "python3",
            "/tmp/fixtures/ws-client.py",
            "90",
        ])
    });

    // HTTP/2 on both legs: curl's answer and nginx's log.
    let out = b.sh("curl -sS --http2 -w '%{http_version} %{http_code}' https://h2.test/ok/page");
    assert_eq!(
        stdout(&out),
        "nginx over HTTP/2.0\n2 200",
        "{}",
        stderr(&out)
    );
    let log = docker(&["exec", &origin_name, "cat", "/tmp/access.log"]);
    assert!(
        stdout(&log).lines().any(|l| l == "HTTP/2.0 GET /ok/page"),
        "nginx must see HTTP/2: {}",
        stdout(&log)
    );
    // A denied path on the allowed host: the sidecar's 403, over HTTP/2.
    let out = b.sh("curl -sS --http2 -w '\\n%{http_version} %{http_code}' https://h2.test/admin");
    let text = stdout(&out);
    assert!(
        text.starts_with("bottle egress: blocked GET https://h2.test/admin\nrule: "),
        "{text}"
    );
    assert!(text.ends_with("\n2 403"), "{text}");
    assert!(!stdout(&docker(&["exec", &origin_name, "cat", "/tmp/access.log"])).contains("/admin"));

    // gRPC: the answer, its trailers, and an error status, intact.
    let out = b.sh("python3 /tmp/fixtures/grpc-client.py");
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim())
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    assert_eq!(json["resp"], "echo:hi", "{json}");
    assert_eq!(json["code"], "OK");
    assert_eq!(json["trailers"]["x-trailer"], "kept");
    assert_eq!(
        json["missing"],
        serde_json::json!(["NOT_FOUND", "no-such-thing"])
    );

    // Server-sent events: the first of one-per-second events within 1.5 s.
    let out = b.sh("python3 -c 'import time, urllib.request\n\
         t = time.monotonic()\n\
         r = urllib.request.urlopen(\"https://stream.test:8443/sse\")\n\
         print(r.readline().decode().strip(), time.monotonic() - t)'");
    let text = stdout(&out);
    let (event, secs) = text
        .trim()
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("{text}{}", stderr(&out)));
    assert_eq!(event, "data: event 0");
    let secs: f64 = secs.parse().unwrap();
    assert!(secs < 1.5, "first event after {secs} s");

    // 200 MiB up, streamed: the origin counts every byte, the sidecar's
    // peak memory stays far below the body.
    let out = b.sh(
        "head -c 209715200 /dev/zero | curl -sS -H 'Expect:' -T - https://stream.test:8443/upload",
    );
    assert_eq!(stdout(&out), "209715200", "{}", stderr(&out));
    let peak = sidecar_peak_kib(&b);
    assert!(
        peak < 64 * 1024,
        "sidecar peak RSS {peak} KiB for a 200 MiB upload"
    );

    let ws = ws.join().unwrap();
    assert_eq!(
        stdout(&ws),
        "before\nafter\n",
        "the WebSocket must survive 90 s idle: {}",
        stderr(&ws)
    );
}
