//! Helpers shared by the runtime driver tests: scratch directories that
//! remove themselves, and the skip-or-fail rule for tools that may be absent
//! (skip with a printed reason; fail under `CI=true`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A directory under the system temp dir, under a random name, removed on
/// drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix(&format!("bottle-test-{what}-"))
            // Readable as a plain `mkdir` would leave it: the CLI under test
            // may read its state dir as another user.
            .permissions(std::fs::Permissions::from_mode(0o755))
            .tempdir()
            .expect("create scratch dir")
            .keep();
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes an executable shell script.
pub fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, body).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// `true` to run the test; `false` (after printing why) to skip it. Under
/// `CI=true` a missing tool fails the test instead.
pub fn present_or_skip(test: &str, what: &str, found: bool, fix: &str) -> bool {
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: {what} is missing and CI=true: these tests must run ({fix})");
        }
        eprintln!("SKIP {test}: {what} is missing ({fix})");
    }
    found
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}
