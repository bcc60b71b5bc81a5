//! A recent passing probe, reused by `bottle up` so that a warm `up` does
//! not spend seconds re-measuring an engine that has not changed.
//!
//! A probe measures the *engine* (internal networks, bridges without a host
//! address, broadcast hardening, dual-homed containers, per-IP publishing);
//! `up` measures each bottle's own internal network again whatever the
//! cache says (no host address on it, its bridge closed and read back). The
//! cache holds one probe per runtime kind, in a file of the host's state
//! root (never mounted into any container), and is used only while:
//!
//! - it is younger than [`VALID`];
//! - the engine's [`identity`](bottle_runtimes::Runtime::identity) is the
//!   same (its ID, version, kernel, drivers, security options, runtimes
//!   and warnings: an upgrade, a reconfiguration `info` shows, or another
//!   engine behind the same socket all miss);
//! - this `bottle` binary measured it (a rebuilt binary may probe
//!   differently);
//! - it passed with no weakness accepted. A probe that refused or could not
//!   tell is never stored, so it never outlives the moment it was taken.
//!
//! `bottle probe` always measures and replaces the entry; `up --reprobe`
//! measures even with a fresh entry.

use bottle_runtimes::{Probe, RuntimeKind};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a stored probe stands in for a new one.
pub const VALID: Duration = Duration::from_secs(10 * 60);

/// One stored probe.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// [`key`] when it was measured.
    key: String,
    /// Seconds since the Unix epoch when it was measured.
    measured_at: u64,
    probe: Probe,
}

/// The stored probes under a state root.
#[derive(Debug, Clone)]
pub struct ProbeCache {
    dir: PathBuf,
}

/// A stored probe found fresh.
#[derive(Debug)]
pub struct Hit {
    pub probe: Probe,
    /// How long ago it was measured.
    pub age: Duration,
}

impl ProbeCache {
    /// The cache in state root `root` (a file per runtime kind, beside the
    /// bottles' directories: never a directory, so never a bottle's name).
    pub fn at(root: &Path) -> ProbeCache {
        ProbeCache {
            dir: root.to_path_buf(),
        }
    }

    fn file(&self, kind: RuntimeKind) -> PathBuf {
        self.dir.join(format!("probe-{kind}.json"))
    }

    /// The stored probe of `kind` when it was measured under `key` less than
    /// [`VALID`] before `now`.
    pub fn fresh(&self, kind: RuntimeKind, key: &str, now: SystemTime) -> Option<Hit> {
        let data = std::fs::read(self.file(kind)).ok()?;
        let entry: Entry = serde_json::from_slice(&data).ok()?;
        let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
        // A clock set back makes an entry "from the future": not fresh.
        let age = Duration::from_secs(now.checked_sub(entry.measured_at)?);
        (entry.key == key && age < VALID && entry.probe.runtime == kind).then_some(Hit {
            probe: entry.probe,
            age,
        })
    }

    /// Stores `probe` as measured under `key` at `now`.
    pub fn store(
        &self,
        key: &str,
        probe: &Probe,
        now: SystemTime,
    ) -> Result<(), crate::state::StateError> {
        let entry = Entry {
            key: key.into(),
            measured_at: now
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            probe: probe.clone(),
        };
        let json = serde_json::to_vec_pretty(&entry).unwrap_or_default();
        std::fs::create_dir_all(&self.dir).map_err(|e| crate::state::StateError::Write {
            path: self.dir.clone(),
            source: e,
        })?;
        crate::state::write_private(&self.file(probe.runtime), &json)
    }

    /// Drops the stored probe of `kind` (a new probe did not pass).
    pub fn forget(&self, kind: RuntimeKind) {
        let _ = std::fs::remove_file(self.file(kind));
    }
}

/// What [`lookup`] found: the key a new probe would be stored under
/// (none when the runtime has no identity), and a fresh stored probe.
#[derive(Debug)]
pub struct Lookup {
    pub key: Option<String>,
    pub hit: Option<Hit>,
}

/// The fresh stored probe of `rt`, if any. `measure` skips the cache (the
/// key is still returned, so the new probe can be stored).
pub async fn lookup(
    rt: &dyn bottle_runtimes::Runtime,
    cache: &ProbeCache,
    measure: bool,
) -> Lookup {
    let key = rt.identity().await.map(|id| key(&id));
    let hit = match (&key, measure) {
        (Some(k), false) => cache.fresh(rt.kind(), k, SystemTime::now()),
        _ => None,
    };
    Lookup { key, hit }
}

/// Stores `probe` under `key` when it passes with no weakness accepted;
/// otherwise drops what was stored. A probe that cannot be stored is only
/// measured again next time.
pub fn record(cache: &ProbeCache, key: Option<&str>, probe: &Probe) {
    let clean = crate::runtime_select::check_accepted(probe, &[]).is_ok_and(|w| w.is_empty());
    match key {
        Some(k) if clean => {
            let _ = cache.store(k, probe, SystemTime::now());
        }
        _ => cache.forget(probe.runtime),
    }
}

/// The key a probe is stored under: the engine's identity and this
/// binary's (its version, size and modification time).
pub fn key(identity: &str) -> String {
    let exe = std::env::current_exe()
        .and_then(std::fs::metadata)
        .map(|m| {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!("{}:{mtime}", m.len())
        })
        .unwrap_or_default();
    format!("bottle {} ({exe})\n{identity}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bottle_runtimes::{Capability, CapabilityState, Weakness};

    fn probe() -> Probe {
        Probe {
            runtime: RuntimeKind::Docker,
            endpoint: "unix:///var/run/docker.sock (default)".into(),
            present: true,
            running: true,
            version: Some("20.10.24".into()),
            capabilities: vec![
                Capability::new(
                    "internal-network",
                    CapabilityState::Yes,
                    "measured",
                    true,
                    "created".into(),
                ),
                Capability::weak(
                    "broadcast-isolated",
                    Weakness::BroadcastReachesHost,
                    "inferred",
                    "d".into(),
                ),
            ],
        }
    }

    #[test]
    fn a_probe_round_trips_and_is_fresh_only_under_its_key_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ProbeCache::at(dir.path());
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        cache.store("k1", &probe(), t0).unwrap();
        let hit = cache
            .fresh(RuntimeKind::Docker, "k1", t0 + Duration::from_secs(30))
            .expect("fresh");
        assert_eq!(hit.age, Duration::from_secs(30));
        assert_eq!(hit.probe.capabilities.len(), 2);
        assert_eq!(hit.probe.capabilities[1].how, "inferred");
        assert_eq!(
            hit.probe.capabilities[1].weakness,
            Some(Weakness::BroadcastReachesHost)
        );
        // Another engine identity, another binary: a miss.
        assert!(cache.fresh(RuntimeKind::Docker, "k2", t0).is_none());
        // Too old, or from the future (a clock set back): a miss.
        assert!(cache.fresh(RuntimeKind::Docker, "k1", t0 + VALID).is_none());
        assert!(cache
            .fresh(RuntimeKind::Docker, "k1", t0 - Duration::from_secs(1))
            .is_none());
        // Another runtime's file is another file.
        assert!(cache.fresh(RuntimeKind::Smolvm, "k1", t0).is_none());
        cache.forget(RuntimeKind::Docker);
        assert!(cache.fresh(RuntimeKind::Docker, "k1", t0).is_none());
    }

    #[test]
    fn a_damaged_or_foreign_entry_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ProbeCache::at(dir.path());
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        cache.store("k", &probe(), t0).unwrap();
        let file = dir.path().join("probe-docker.json");
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, text.replace("\"measured\"", "\"guessed\"")).unwrap();
        assert!(cache.fresh(RuntimeKind::Docker, "k", t0).is_none());
        std::fs::write(&file, b"{").unwrap();
        assert!(cache.fresh(RuntimeKind::Docker, "k", t0).is_none());
        // The file is the owner's alone.
        cache.store("k", &probe(), t0).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn only_a_clean_probe_is_stored_and_anything_else_drops_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ProbeCache::at(dir.path());
        let now = SystemTime::now();
        let mut clean = probe();
        clean.capabilities.truncate(1);
        record(&cache, Some("k"), &clean);
        assert!(cache.fresh(RuntimeKind::Docker, "k", now).is_some());
        // A probe with a weakness (even one a user might accept) is never
        // stored, and the clean one it replaces is dropped.
        record(&cache, Some("k"), &probe());
        assert!(cache.fresh(RuntimeKind::Docker, "k", now).is_none());
        // So is one that could not tell (unknown), and one of a runtime
        // with no identity.
        record(&cache, Some("k"), &clean);
        let mut unsure = clean.clone();
        unsure.capabilities[0].state = CapabilityState::Unknown;
        record(&cache, Some("k"), &unsure);
        assert!(cache.fresh(RuntimeKind::Docker, "k", now).is_none());
        record(&cache, Some("k"), &clean);
        record(&cache, None, &clean);
        assert!(cache.fresh(RuntimeKind::Docker, "k", now).is_none());
    }

    #[test]
    fn the_key_names_the_binary_and_the_identity() {
        let k = key("engine-a");
        assert!(k.contains(env!("CARGO_PKG_VERSION")));
        assert!(k.ends_with("\nengine-a"));
        assert_ne!(k, key("engine-b"));
    }
}
