//! Golden files for the render: the stream `bottle render` prints and the
//! files of `-o DIR`, for each example bottle. Any difference fails and is
//! printed; `BOTTLE_UPDATE_GOLDEN=1 cargo test -p bottle-kube --test
//! golden` rewrites them (review the diff before committing).

mod common;

use std::path::PathBuf;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares `actual` with the golden file `name`, or rewrites it.
fn check(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("BOTTLE_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}\n  fix: BOTTLE_UPDATE_GOLDEN=1 cargo test -p bottle-kube --test golden",
            path.display()
        )
    });
    if expected != actual {
        let mut diff = String::new();
        let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
        for i in 0..e.len().max(a.len()) {
            match (e.get(i), a.get(i)) {
                (Some(x), Some(y)) if x == y => {}
                (x, y) => {
                    diff.push_str(&format!(
                        "line {}:\n  - {}\n  + {}\n",
                        i + 1,
                        x.unwrap_or(&"<none>"),
                        y.unwrap_or(&"<none>")
                    ));
                }
            }
        }
        panic!(
            "{} differs from the render:\n{diff}\n  fix: if the change is intended, BOTTLE_UPDATE_GOLDEN=1 cargo test -p bottle-kube --test golden",
            path.display()
        );
    }
}

#[test]
fn deny_all_stream() {
    let r = bottle_kube::render(&common::deny_all("demo")).unwrap();
    check("deny-all.yaml", &r.to_yaml());
}

#[test]
fn egress_git_stream_and_files() {
    let r = bottle_kube::render(&common::egress_git("app")).unwrap();
    let stream = r.to_yaml();
    check("egress-git.yaml", &stream);
    // The stream never carries the per-install material.
    for secret in [
        "TEST-CA-KEY",
        "TEST-REAL-VALUE",
        "TEST-CA-CERTIFICATE",
        "bottle-placeholder-TEST",
    ] {
        assert!(!stream.contains(secret), "{secret} in the stream");
    }
    let files = r.files();
    let names: Vec<&str> = files.iter().map(|f| f.name).collect();
    assert_eq!(
        names,
        [
            "00-namespace.yaml",
            "05-secrets.yaml",
            "10-config.yaml",
            "20-storage.yaml",
            "30-sidecar.yaml",
            "40-agent.yaml",
            "50-network.yaml",
            "60-access.yaml"
        ]
    );
    for f in &files {
        assert_eq!(f.secret, f.name == "05-secrets.yaml", "{}", f.name);
        check(&format!("egress-git/{}", f.name), &f.contents);
    }
}

#[test]
fn a_render_is_the_same_every_time() {
    let a = bottle_kube::render(&common::egress_git("app")).unwrap();
    let b = bottle_kube::render(&common::egress_git("app")).unwrap();
    assert_eq!(a.to_yaml(), b.to_yaml());
    assert_eq!(a.files(), b.files());
}

#[test]
fn every_document_reads_back_as_what_was_rendered() {
    // An independent YAML parser reads each document back to the JSON the
    // typed object serialised to.
    for spec in [common::deny_all("demo"), common::egress_git("app")] {
        let r = bottle_kube::render(&spec).unwrap();
        let mut docs = r.documents();
        docs.extend(r.secret_documents());
        for d in docs {
            let text = bottle_kube::yaml::to_string(&d.value);
            let back: serde_json::Value = serde_norway::from_str(&text).unwrap();
            assert_eq!(back, d.value, "{} {}", d.kind, d.name);
        }
    }
}
