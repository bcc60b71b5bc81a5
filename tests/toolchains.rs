//! End-to-end: the toolchains in the agent trust the bottle CA with nothing
//! done by the user (issue 14 item 4). One bottle runs an agent image with
//! the toolchains Debian packages (tests/fixtures/toolchains/Containerfile),
//! and a fake registry (tests/fixtures/registry.py, its tree built by
//! registry-prep.sh with the real tools) serves over TLS on the bottle's
//! egress network under a name the bottle allows. The sidecar re-signs every
//! connection with the bottle CA, so each tool succeeding proves it trusts
//! that CA; the same tools pointed at another CA fail with a certificate
//! error, so the cases can fail. `bottle verify` then shows one passing trust
//! row per toolchain it finds.

use bottle_e2e::*;
use sha2::Digest;
use std::path::Path;
use std::process::Command;

/// uv is not packaged by Debian: its wheel is downloaded on the host.
const UV_VERSION: &str = "0.13.9";
const HOST: &str = "registry.test";

/// The toolchains image, built once per content (Containerfile + uv).
fn image() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/toolchains");
    let file = std::fs::read(dir.join("Containerfile")).expect("read Containerfile");
    let mut h = sha2::Sha256::new();
    h.update(&file);
    h.update(UV_VERSION.as_bytes());
    let tag = format!("bottle-toolchains:{}", &hex::encode(h.finalize())[..12]);
    if docker(&["image", "inspect", &tag]).status.success() {
        return tag;
    }
    let ctx = TempDir::new("toolchains-image");
    std::fs::write(ctx.0.join("Containerfile"), &file).unwrap();
    // The host's pip config names the index: no registry host here.
    let got = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary",
            ":all:",
            "-d",
        ])
        .arg(&ctx.0)
        .arg(format!("uv=={UV_VERSION}"))
        .output()
        .expect("python3 -m pip");
    assert!(got.status.success(), "pip download uv: {}", stderr(&got));
    let unpack = Command::new("python3")
        .args([
            "-c",
            "import glob, os, sys, zipfile\n\
             d = sys.argv[1]\n\
             z = zipfile.ZipFile(glob.glob(d + '/uv-*.whl')[0])\n\
             n = [x for x in z.namelist() if x.endswith('/scripts/uv')][0]\n\
             open(d + '/uv', 'wb').write(z.read(n))\n\
             os.chmod(d + '/uv', 0o755)",
        ])
        .arg(&ctx.0)
        .output()
        .unwrap();
    assert!(unpack.status.success(), "unpack uv: {}", stderr(&unpack));
    let ctx_s = ctx.0.display().to_string();
    let file_s = ctx.0.join("Containerfile").display().to_string();
    let built = docker(&["build", "-q", "-f", &file_s, "-t", &tag, &ctx_s]);
    assert!(built.status.success(), "build {tag}: {}", stderr(&built));
    tag
}

/// Starts the fake registry on `network` as [`HOST`] and waits for its tree.
fn registry(name: &str, network: &str, image: &str, pki: &Path) -> Container {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let out = docker(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        network,
        "--network-alias",
        HOST,
        "-v",
        &format!("{}:/fixtures:ro", fixtures.display()),
        "-v",
        &format!("{}:/pki:ro", pki.display()),
        image,
        "sh",
        "-c",
        &format!(
            "sh /fixtures/registry-prep.sh /srv https://{HOST} && \
             exec python3 /fixtures/registry.py /srv /pki/leaf.pem /pki/leaf-key.pem"
        ),
    ]);
    assert!(out.status.success(), "registry: {}", stderr(&out));
    let c = Container(name.into());
    for _ in 0..600 {
        let probe = docker(&["exec", name, "curl", "-sf", "http://127.0.0.1/ready"]);
        if probe.status.success() {
            return c;
        }
        if !docker(&["inspect", "-f", "{{.State.Running}}", name])
            .stdout
            .starts_with(b"true")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let logs = docker(&["logs", name]);
    panic!(
        "registry {name} did not start: {}{}",
        stdout(&logs),
        stderr(&logs)
    );
}

/// Each toolchain's real client against the registry, through the sidecar.
/// Each script exits 0 only when the tool fetched what the registry serves.
const CASES: &[(&str, &str)] = &[
    ("curl", "curl -sSf https://registry.test/ready"),
    ("wget", "wget -q -O - https://registry.test/ready"),
    (
        "git",
        "git ls-remote https://registry.test/git/tiny.git | grep HEAD",
    ),
    (
        "python",
        "python3 -c 'import ssl, urllib.request; print(urllib.request.urlopen(\"https://registry.test/ready\", context=ssl.create_default_context()).read())'",
    ),
    (
        "python requests",
        "python3 -c 'import requests; r = requests.get(\"https://registry.test/ready\"); r.raise_for_status(); print(r.text)'",
    ),
    (
        "pip",
        "python3 -m pip download --disable-pip-version-check --no-deps --index-url https://registry.test/simple/ -d /tmp/pipdl tinypkg && ls /tmp/pipdl/tinypkg-1.0-py3-none-any.whl",
    ),
    (
        "uv",
        "export UV_CACHE_DIR=/tmp/uvcache; rm -rf /tmp/uvenv && uv venv -q /tmp/uvenv && uv pip install --python /tmp/uvenv/bin/python --index-url https://registry.test/simple/ tinypkg && /tmp/uvenv/bin/python -c 'import tinypkg; assert tinypkg.VALUE == 42'",
    ),
    (
        "node",
        "node -e 'require(\"https\").get(\"https://registry.test/ready\", r => process.exit(r.statusCode == 200 ? 0 : 1)).on(\"error\", e => { console.error(e.message); process.exit(1) })'",
    ),
    (
        "npm",
        "export npm_config_cache=/tmp/npmcache; cd /tmp && npm view tinypkg version --registry https://registry.test/npm/ && npm pack tinypkg --registry https://registry.test/npm/ && test -f /tmp/tinypkg-1.0.0.tgz",
    ),
    (
        "yarn",
        "export YARN_CACHE_FOLDER=/tmp/yarncache; cd /tmp && yarnpkg info tinypkg version --registry https://registry.test/npm/ | grep 1.0.0",
    ),
    (
        "cargo",
        "export CARGO_HOME=/tmp/cargohome RUSTC_BOOTSTRAP=1; rm -rf /tmp/cp && mkdir -p /tmp/cp/src /tmp/cp/.cargo && cd /tmp/cp && \
         printf '[package]\\nname = \"cp\"\\nversion = \"0.1.0\"\\nedition = \"2018\"\\n\\n[dependencies]\\ntinycrate = { version = \"1\", registry = \"fake\" }\\n' >Cargo.toml && \
         : >src/lib.rs && printf '[registries.fake]\\nindex = \"sparse+https://registry.test/cargo/\"\\n' >.cargo/config.toml && \
         Z=; cargo -Z help 2>/dev/null | grep -q sparse-registry && Z='-Z sparse-registry'; \
         cargo $Z generate-lockfile && cargo $Z fetch && grep -q tinycrate Cargo.lock",
    ),
    (
        "go",
        "export GOPATH=/tmp/gopath GOCACHE=/tmp/gocache GOPROXY=https://registry.test/go GOSUMDB=off GOFLAGS=-modcacherw; cd /tmp && go mod download -json example.test/tiny@v1.0.0 && test -f /tmp/gopath/pkg/mod/example.test/tiny@v1.0.0/tiny.go",
    ),
    (
        "ruby",
        "ruby -rnet/http -e 'r = Net::HTTP.get_response(URI(\"https://registry.test/ready\")); exit(r.code == \"200\" ? 0 : 1)'",
    ),
    (
        "gem",
        "mkdir -p /tmp/gemdl && cd /tmp/gemdl && HOME=/tmp/gemdl gem fetch tinygem --clear-sources --source https://registry.test/gems/ && test -f tinygem-1.0.0.gem",
    ),
    (
        "jvm",
        "cat >/tmp/Fetch.java <<'J'\n\
public class Fetch {\n\
  public static void main(String[] a) throws Exception {\n\
    var c = (javax.net.ssl.HttpsURLConnection) new java.net.URL(a[0]).openConnection();\n\
    System.out.println(new String(c.getInputStream().readAllBytes()));\n\
  }\n\
}\n\
J\n\
java /tmp/Fetch.java https://registry.test/maven/org/example/tiny/1.0/tiny-1.0.pom | grep '<artifactId>tiny</artifactId>'",
    ),
    (
        "nss",
        "certutil -L -d \"sql:$HOME/.pki/nssdb\" -n bottle-ca >/dev/null && \
         openssl s_client -connect registry.test:443 -servername registry.test </dev/null 2>/dev/null | openssl x509 >/tmp/leaf.pem && \
         vfychain -a -d \"sql:$HOME/.pki/nssdb\" -u 1 /tmp/leaf.pem",
    ),
];

/// Tools pointed at another CA must fail, naming the certificate. Where a
/// tool also reads the system store's directory (curl and cargo through
/// libcurl's CA path, OpenSSL's and Go's default directories), that is
/// pointed away too: the variable alone leaves the bottle CA trusted there.
const NEGATIVES: &[(&str, &str, &str)] = &[
    (
        "node",
        "mkdir -p /tmp/empty && NODE_EXTRA_CA_CERTS=/tmp/other-ca.pem SSL_CERT_FILE=/tmp/other-ca.pem SSL_CERT_DIR=/tmp/empty node -e 'require(\"https\").get(\"https://registry.test/ready\", r => process.exit(0)).on(\"error\", e => { console.error(e.message); process.exit(1) })'",
        "certificate",
    ),
    (
        "python",
        "mkdir -p /tmp/empty && SSL_CERT_FILE=/tmp/other-ca.pem SSL_CERT_DIR=/tmp/empty python3 -c 'import ssl, urllib.request; urllib.request.urlopen(\"https://registry.test/ready\", context=ssl.create_default_context())'",
        "CERTIFICATE_VERIFY_FAILED",
    ),
    (
        "uv",
        "export UV_CACHE_DIR=/tmp/uvcache-neg SSL_CERT_FILE=/tmp/other-ca.pem; rm -rf /tmp/uvneg && uv venv -q /tmp/uvneg && uv pip install --python /tmp/uvneg/bin/python --index-url https://registry.test/simple/ tinypkg",
        "UnknownIssuer",
    ),
    (
        "go",
        "mkdir -p /tmp/empty && export GOPATH=/tmp/gopath-neg GOCACHE=/tmp/gocache GOPROXY=https://registry.test/go GOSUMDB=off GOFLAGS=-modcacherw SSL_CERT_FILE=/tmp/other-ca.pem SSL_CERT_DIR=/tmp/empty; cd /tmp && go mod download example.test/tiny@v1.0.0",
        "x509",
    ),
];

#[test]
fn every_toolchain_trusts_the_bottle_ca_and_another_ca_fails() {
    if !engine_or_skip("toolchains") {
        return;
    }
    let image = image();
    let pki = TempDir::new("toolchains-pki");
    test_pki(&pki.0, &[HOST]);
    let ca = std::fs::read(pki.0.join("ca.pem")).unwrap();
    let b = Bottle::up_with(
        "toolchains",
        &format!(
            "[agent]\nimage = \"{image}\"\n\n[egress]\nallow = [\"{HOST}\"]\n\
             allow_private = [\"{HOST}\"]\nupstream_roots = [\"test-ca.pem\"]\n"
        ),
        &[("test-ca.pem", &ca)],
        &[],
    );
    let _registry = registry(
        &format!("bottle-test-registry-{}", b.name),
        &format!("bottle-{}-egress", b.name),
        &image,
        &pki.0,
    );

    let mut failed = Vec::new();
    for (tool, script) in CASES {
        let o = b.sh(&format!("{script} 2>&1"));
        if !o.status.success() {
            failed.push(format!(
                "{tool}: exit {:?}\n{}{}",
                o.status.code(),
                stdout(&o),
                stderr(&o)
            ));
        } else {
            eprintln!("ok {tool}");
        }
    }
    let other = b.sh(
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout /tmp/other-key.pem \
         -out /tmp/other-ca.pem -days 1 -subj /CN=other 2>&1",
    );
    assert!(other.status.success(), "{}", stdout(&other));
    for (tool, script, needle) in NEGATIVES {
        let o = b.sh(&format!("{script} 2>&1"));
        let text = format!("{}{}", stdout(&o), stderr(&o));
        if o.status.success() || !text.contains(needle) {
            failed.push(format!(
                "{tool} pointed at another CA: exit {:?}, expected a failure naming {needle:?}\n{text}",
                o.status.code()
            ));
        } else {
            eprintln!("ok {tool} pointed elsewhere fails");
        }
    }

    // verify: one passing trust row per toolchain the agent has.
    let v = b.bottle(&["verify", "--json", &b.name]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&v))
        .unwrap_or_else(|e| panic!("verify --json: {e}\n{}{}", stdout(&v), stderr(&v)));
    let rows: Vec<&serde_json::Value> = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "trust")
        .collect();
    for tool in [
        "curl",
        "wget",
        "git",
        "python",
        "python requests",
        "pip",
        "uv",
        "node",
        "npm",
        "yarn",
        "cargo",
        "go",
        "ruby",
        "gem",
        "jvm",
        "nss",
    ] {
        let name = format!("trust: {tool}");
        match rows.iter().find(|c| c["name"] == name.as_str()) {
            Some(c) if c["pass"] == true && c["counted"] == false => {}
            other => failed.push(format!("verify row {name}: {other:?}")),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}
