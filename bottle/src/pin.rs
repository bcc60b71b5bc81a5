//! Pinning: what the user last accepted for a bottle, keyed by the bottle's
//! identity, and everything a new config would widen.
//!
//! A `bottle.toml` can sit in a directory the agent mounts read-write, so the
//! agent can edit the policy of its own next run — including the bottle's
//! `name`. A pin looked up by name alone is therefore worthless: a new name
//! has no pin, and another bottle's name inherits that bottle's pin. So the
//! identity of a bottle is its name **and** the canonical path of the config
//! file it was accepted from ([`Pinned::config`]), and [`judge`] asks for
//! consent when:
//!
//! - the name was accepted before from another file (or from an unreadable
//!   or older pin);
//! - the name is new and the file was accepted before under another name
//!   (the widenings are listed against that pin);
//! - the name is new and the file lies inside any pinned bottle's read-write
//!   mount, where an agent could have written it (everything it grants is
//!   listed);
//! - the config grants more than the pin in any way: an allowed host, a
//!   private name, a rule added or removed (rules for a host add up, so an
//!   added rule can only open more), a credential, a mount (canonical
//!   source; a read-only mount inside an already mounted source is not more),
//!   an upstream root (path and digest), a larger resource limit, another
//!   image, `unknown = "ask"`, a looser `[egress.budget]` (a limit raised or
//!   removed, a price added or lowered), an `[agent] env` value newly read from the
//!   host (`${VAR}`) or asked on the terminal (`?prompt`).
//!
//! The pin is taken from the plan, which is built from the RESOLVED config:
//! a widening written in an `extends` parent is judged like one in
//! bottle.toml itself.
//!
//! Consent is `--accept-changes`, or y at a terminal prompt. Narrowing needs
//! none. The pin (`accepted.json` in the state dir) is written only after a
//! successful `up` or `reload`.

use crate::plan::Plan;
use crate::state::{write_private, StateDir, StateError};
use bottle_policy::{EgressPolicy, Unknown};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One agent mount as pinned (canonical source).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedMount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

impl std::fmt::Display for PinnedMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.source.display(),
            self.target,
            if self.read_only { "ro" } else { "rw" }
        )
    }
}

/// The security-relevant part of a plan, and whose it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pinned {
    /// Canonical path of the config file; `None` for the built-in default
    /// (and for a pin bottle could not read, which matches no file).
    pub config: Option<PathBuf>,
    pub egress: EgressPolicy,
    pub mounts: Vec<PinnedMount>,
    pub image: String,
    /// `PATH (sha256 DIGEST)` of every upstream root.
    #[serde(default)]
    pub upstream_roots: Vec<String>,
    /// Resource limits where more is wider (`agent.memory`, `agent.pids`,
    /// `agent.millicpus`, `sidecar.*`).
    #[serde(default)]
    pub limits: BTreeMap<String, u64>,
    /// `[[git.remote]]`s: where the gate may fetch from and push to.
    #[serde(default)]
    pub git: Vec<bottle_policy::GitRemote>,
    /// `[agent] env` values read from the host (`${VAR}`) or asked on the
    /// terminal (`?prompt`), as written: a config an agent edited could
    /// otherwise copy any host variable into the agent.
    #[serde(default)]
    pub env_from_host: BTreeMap<String, String>,
    /// `[dlp]`: a weaker action, a dropped value, more left unsearched.
    /// A pin from before `[dlp]` existed reads as the defaults.
    #[serde(default)]
    pub dlp: bottle_policy::DlpPolicy,
}

impl Pinned {
    pub fn of(plan: &Plan) -> Self {
        let mut limits = BTreeMap::new();
        if let Some(c) = plan.agent.cpus {
            limits.insert("agent.millicpus".into(), (c * 1000.0).round() as u64);
        }
        if let Some(m) = plan.agent.memory_bytes {
            limits.insert("agent.memory".into(), m);
        }
        if let Some(p) = plan.agent.pids {
            limits.insert("agent.pids".into(), p);
        }
        let l = &plan.policy.limits;
        for (k, v) in [
            ("sidecar.max_connections", u64::from(l.max_connections)),
            (
                "sidecar.max_connections_per_client",
                u64::from(l.max_connections_per_client),
            ),
            ("sidecar.handshake_timeout", l.handshake_timeout_secs),
            ("sidecar.idle_timeout", l.idle_timeout_secs),
            ("sidecar.body_timeout", l.body_timeout_secs),
            ("sidecar.audit_max_bytes", l.audit_max_bytes),
            ("sidecar.h2_max_streams", u64::from(l.h2_max_streams)),
            (
                "sidecar.h2_max_header_list_bytes",
                u64::from(l.h2_max_header_list_bytes),
            ),
            (
                "sidecar.h2_stream_window_bytes",
                u64::from(l.h2_stream_window_bytes),
            ),
            (
                "sidecar.h2_connection_window_bytes",
                u64::from(l.h2_connection_window_bytes),
            ),
        ] {
            limits.insert(k.into(), v);
        }
        Pinned {
            config: plan.config_path.clone(),
            egress: plan.policy.egress.clone(),
            mounts: plan
                .agent
                .mounts
                .iter()
                .map(|m| PinnedMount {
                    source: m.source.clone(),
                    target: m.target.clone(),
                    read_only: m.read_only,
                })
                .collect(),
            image: plan.agent.image.clone(),
            upstream_roots: plan
                .upstream_roots
                .iter()
                .map(|r| format!("{} (sha256 {})", r.path.display(), r.sha256))
                .collect(),
            git: plan.policy.git.remotes.clone(),
            limits,
            env_from_host: plan
                .agent
                .env
                .iter()
                .filter(|(_, v)| !v.is_literal())
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            dlp: plan.policy.dlp.clone(),
        }
    }

    /// The pin of a `reload` of `plan` over the pin `old`: the policy part
    /// from the plan; mounts, image and the agent's limits from `old`,
    /// because a reload does not change what the running agent has (pinning
    /// the plan's would let a narrowed-then-reloaded config hide mounts the
    /// agent still holds).
    pub fn for_reload(plan: &Plan, old: Option<&Pinned>) -> Self {
        let new = Pinned::of(plan);
        match old {
            Some(old) => new.keeping_agent_of(old),
            None => new,
        }
    }

    /// This pin with `old`'s mounts, image and agent limits.
    pub fn keeping_agent_of(mut self, old: &Pinned) -> Self {
        self.mounts = old.mounts.clone();
        self.image = old.image.clone();
        self.env_from_host = old.env_from_host.clone();
        self.limits.retain(|k, _| !k.starts_with("agent."));
        for (k, v) in old.limits.iter().filter(|(k, _)| k.starts_with("agent.")) {
            self.limits.insert(k.clone(), *v);
        }
        self
    }

    /// A pin that grants nothing and belongs to no file: what a bottle never
    /// accepted is compared against, and what an unreadable pin reads as.
    pub fn nothing() -> Self {
        Pinned {
            config: None,
            egress: EgressPolicy::default(),
            mounts: Vec::new(),
            image: String::new(),
            upstream_roots: Vec::new(),
            limits: BTreeMap::new(),
            git: Vec::new(),
            env_from_host: BTreeMap::new(),
            // The defaults: a new config that blocks less than they do is
            // a widening.
            dlp: bottle_policy::DlpPolicy::default(),
        }
    }
}

fn path(state: &StateDir) -> PathBuf {
    state.root().join("accepted.json")
}

/// The last accepted pin of a bottle, if it has one. A pin file that exists
/// but cannot be read or parsed (permissions, damage, an older bottle's
/// format) reads as [`Pinned::nothing`], so it matches no config and consent
/// is asked; only a missing file means "never accepted".
pub fn load(state: &StateDir) -> Option<Pinned> {
    match std::fs::read(path(state)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(_) => Some(Pinned::nothing()),
        Ok(bytes) => Some(serde_json::from_slice(&bytes).unwrap_or_else(|_| Pinned::nothing())),
    }
}

/// Every bottle's pin, by name.
pub fn load_all(root: &crate::state::StateRoot) -> BTreeMap<String, Pinned> {
    root.names()
        .into_iter()
        .filter_map(|name| load(&root.bottle(&name)).map(|pin| (name, pin)))
        .collect()
}

/// Records `pinned` as accepted.
pub fn accept(state: &StateDir, pinned: &Pinned) -> Result<(), StateError> {
    state.create()?;
    let json = serde_json::to_vec_pretty(pinned).unwrap_or_default();
    write_private(&path(state), &json)
}

/// Why bottle `name` with config `new` needs the user's consent, one line
/// each; empty when it may start silently. `pins` holds every bottle's pin.
pub fn judge(name: &str, new: &Pinned, pins: &BTreeMap<String, Pinned>) -> Vec<String> {
    // The built-in default grants nothing and comes from no file.
    let Some(file) = &new.config else {
        return match pins.get(name) {
            Some(old) => widenings(old, new),
            None => Vec::new(),
        };
    };
    let mut out = Vec::new();
    if let Some(old) = pins.get(name) {
        if old.config.as_ref() != Some(file) {
            out.push(match &old.config {
                Some(was) => format!(
                    "bottle `{name}` was accepted from {}, not from {}",
                    was.display(),
                    file.display()
                ),
                None => format!(
                    "bottle `{name}` has no readable record of which config was accepted; {} is new to it",
                    file.display()
                ),
            });
        }
        out.extend(widenings(old, new));
        return out;
    }
    if let Some((other, old)) = pins.iter().find(|(_, p)| p.config.as_ref() == Some(file)) {
        out.push(format!(
            "{} was accepted as bottle `{other}`; it now names `{name}`",
            file.display()
        ));
        out.extend(widenings(old, new));
        return out;
    }
    let writable_by = pins.iter().find_map(|(other, p)| {
        p.mounts
            .iter()
            .find(|m| !m.read_only && file.starts_with(&m.source))
            .map(|m| (other, m))
    });
    if let Some((other, m)) = writable_by {
        out.push(format!(
            "{} lies in bottle `{other}`'s read-write mount {}, where its agent could have written it, and `{name}` was never accepted",
            file.display(),
            m.source.display()
        ));
        out.extend(widenings(&Pinned::nothing(), new));
    }
    out
}

/// `none`, or the proxy's URL and the variable its credential comes from.
fn describe_proxy(p: Option<&bottle_policy::UpstreamProxy>) -> String {
    match p {
        None => "none".into(),
        Some(p) => match &p.auth_from_env {
            Some(var) => format!("`{}` (credential from ${var})", p.url),
            None => format!("`{}`", p.url),
        },
    }
}

/// Every way `new` grants more than `old`, one line each.
pub fn widenings(old: &Pinned, new: &Pinned) -> Vec<String> {
    let mut out = Vec::new();
    for a in &new.egress.allow {
        if !old.egress.allow.contains(a) {
            out.push(format!("egress.allow gains `{a}`"));
        }
    }
    for p in &new.egress.allow_private {
        if !old.egress.allow_private.contains(p) {
            out.push(format!("egress.allow_private gains `{p}`"));
        }
    }
    if old.egress.unknown == Unknown::Deny && new.egress.unknown == Unknown::Ask {
        out.push("egress.unknown changes from deny to ask".into());
    }
    for r in &old.egress.rules {
        if !new.egress.rules.contains(r) {
            out.push(format!(
                "[[egress.rule]] for {} (methods {:?}, paths {:?}) is removed or changed",
                r.host,
                crate::plan::strings(&r.methods),
                crate::plan::strings(&r.paths)
            ));
        }
    }
    for r in &new.egress.rules {
        if !old.egress.rules.contains(r) {
            out.push(format!(
                "[[egress.rule]] added for {} (methods {:?}, paths {:?}): rules for a host add up, so it can only open more",
                r.host,
                crate::plan::strings(&r.methods),
                crate::plan::strings(&r.paths)
            ));
        }
    }
    for c in &new.egress.credentials {
        if !old.egress.credentials.contains(c) {
            out.push(format!(
                "[[egress.credential]] {} now goes to {} in header {}",
                c.from_env, c.host, c.header
            ));
        }
    }
    // Where the sidecar's upstream connections go, and which host variable
    // it sends there as the proxy credential: any change is a widening (an
    // agent that rewrote bottle.toml could send the corporate credential,
    // or every destination name, to a proxy of its own).
    if new.egress.upstream_proxy != old.egress.upstream_proxy {
        out.push(format!(
            "egress.upstream_proxy changes from {} to {}",
            describe_proxy(old.egress.upstream_proxy.as_ref()),
            describe_proxy(new.egress.upstream_proxy.as_ref())
        ));
    }
    // `[egress.budget]`: a limit raised or removed, a price added or made
    // cheaper (issue 16); lowering one needs no consent.
    out.extend(new.egress.budget.loosened_from(&old.egress.budget));
    for m in &new.mounts {
        let covered = m.read_only && old.mounts.iter().any(|o| m.source.starts_with(&o.source));
        if !old.mounts.contains(m) && !covered {
            out.push(format!("agent.mounts gains `{m}`"));
        }
    }
    for r in &new.upstream_roots {
        if !old.upstream_roots.contains(r) {
            out.push(format!("egress.upstream_roots gains {r}"));
        }
    }
    for (k, v) in &new.limits {
        if let Some(was) = old.limits.get(k) {
            if v > was {
                out.push(format!("{k} grows from {was} to {v}"));
            }
        }
    }
    out.extend(git_widenings(&old.git, &new.git));
    out.extend(old.dlp.widenings(&new.dlp));
    for (k, v) in &new.env_from_host {
        if old.env_from_host.get(k) != Some(v) {
            let how = if v.starts_with('?') {
                "is asked on the terminal"
            } else {
                "is read from the host environment"
            };
            out.push(format!("agent.env.{k} = \"{v}\" {how}"));
        }
    }
    if old.image != new.image {
        out.push(format!(
            "agent.image changes from `{}` to `{}`",
            old.image, new.image
        ));
    }
    out
}

/// Every way `new`'s remotes grant more than `old`'s: a new remote or
/// upstream, a push pattern gained, a protected pattern lost, `mode` from
/// fetch to push, force allowed, a stale mirror allowed, another token.
fn git_widenings(
    old: &[bottle_policy::GitRemote],
    new: &[bottle_policy::GitRemote],
) -> Vec<String> {
    use bottle_policy::GitMode;
    let mut out = Vec::new();
    for n in new {
        let name = n.name.as_str();
        let Some(o) = old.iter().find(|o| o.name == n.name) else {
            out.push(format!(
                "git.remote `{name}` is new: the gate reaches {} ({}, push {:?})",
                n.upstream,
                n.mode.as_str(),
                n.push.iter().map(|p| p.as_str()).collect::<Vec<_>>()
            ));
            continue;
        };
        if o.upstream != n.upstream {
            out.push(format!(
                "git.remote `{name}` moves from {} to {}",
                o.upstream, n.upstream
            ));
        }
        if o.mode == GitMode::Fetch && n.mode == GitMode::Push {
            out.push(format!(
                "git.remote `{name}` changes from mode fetch to push"
            ));
        }
        for p in &n.push {
            if !o.push.contains(p) {
                out.push(format!("git.remote `{name}` push gains `{}`", p.as_str()));
            }
        }
        for p in &o.protected {
            if !n.protected.contains(p) {
                out.push(format!(
                    "git.remote `{name}` protected loses `{}`",
                    p.as_str()
                ));
            }
        }
        if n.allow_force && !o.allow_force {
            out.push(format!("git.remote `{name}` allows force pushes"));
        }
        if n.allow_ci_changes && !o.allow_ci_changes {
            out.push(format!(
                "git.remote `{name}` accepts pushes that change CI configuration"
            ));
        }
        if n.stale_ok && !o.stale_ok {
            out.push(format!("git.remote `{name}` may serve a stale mirror"));
        }
        if n.credential.is_some() && n.credential != o.credential {
            out.push(format!(
                "git.remote `{name}` pushes with the token from {}",
                n.credential.as_deref().unwrap_or_default()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bottle_policy::{AllowRule, HostPattern, HttpRule};

    fn pin(allow: &[&str]) -> Pinned {
        Pinned {
            config: Some("/home/u/proj/bottle.toml".into()),
            egress: EgressPolicy {
                allow: allow.iter().map(|a| AllowRule::parse(a).unwrap()).collect(),
                ..Default::default()
            },
            mounts: vec![PinnedMount {
                source: "/home/u/proj".into(),
                target: "/workspace".into(),
                read_only: false,
            }],
            image: "bottle-agent:latest".into(),
            upstream_roots: vec![],
            limits: BTreeMap::from([("agent.pids".into(), 2048)]),
            git: vec![],
            env_from_host: BTreeMap::new(),
            dlp: bottle_policy::DlpPolicy::default(),
        }
    }

    /// An agent that rewrote bottle.toml to log its own secrets instead
    /// of blocking them, or to stop watching a value, is stopped at `up`.
    #[test]
    fn a_looser_dlp_is_a_widening_and_an_old_pin_reads_as_the_defaults() {
        use bottle_policy::{Detector, DlpAction};
        let old = pin(&["api.example.com"]);
        let mut new = old.clone();
        new.dlp
            .action
            .insert(Detector::BottleCredential, DlpAction::Log);
        let w = widenings(&old, &new);
        assert_eq!(
            w,
            ["dlp: detector bottle-credential for every other host changes from block to log"]
        );
        // Stricter is silent.
        let mut stricter = old.clone();
        stricter.dlp.action.insert(Detector::Jwt, DlpAction::Block);
        assert!(widenings(&old, &stricter).is_empty());
        // A pin written before [dlp] existed holds the defaults.
        let mut json = serde_json::to_value(&old).unwrap();
        json.as_object_mut().unwrap().remove("dlp");
        let back: Pinned = serde_json::from_value(json).unwrap();
        assert_eq!(back.dlp, bottle_policy::DlpPolicy::default());
        assert_eq!(widenings(&back, &new).len(), 1);
    }

    fn remote(json: serde_json::Value) -> bottle_policy::GitRemote {
        serde_json::from_value(json).unwrap()
    }

    /// An agent that can write bottle.toml must not widen its own git
    /// access at the next `up` without the user's consent.
    #[test]
    fn every_git_widening_needs_consent_and_narrowing_none() {
        let base = serde_json::json!({"name": "app", "upstream": "https://git.example/a/app.git",
            "push": ["agent/*"], "protected": ["main"], "mode": "fetch"});
        let mut old = pin(&[]);
        old.git = vec![remote(base.clone())];
        let with = |patch: serde_json::Value| {
            let mut v = base.clone();
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            let mut p = pin(&[]);
            p.git = vec![remote(v)];
            widenings(&old, &p)
        };
        for (patch, says) in [
            (
                serde_json::json!({"push": ["agent/*", "*"]}),
                "push gains `*`",
            ),
            (
                serde_json::json!({"protected": []}),
                "protected loses `main`",
            ),
            (
                serde_json::json!({"mode": "push"}),
                "from mode fetch to push",
            ),
            (
                serde_json::json!({"allow_force": true}),
                "allows force pushes",
            ),
            (serde_json::json!({"stale_ok": true}), "stale mirror"),
            (
                serde_json::json!({"allow_ci_changes": true}),
                "change CI configuration",
            ),
            (
                serde_json::json!({"upstream": "https://evil.example/a/app.git"}),
                "moves from",
            ),
            (
                serde_json::json!({"credential": "OTHER_TOKEN"}),
                "token from OTHER_TOKEN",
            ),
        ] {
            let w = with(patch.clone());
            assert!(w.iter().any(|l| l.contains(says)), "{patch}: {w:?}");
        }
        let mut more = pin(&[]);
        more.git = vec![
            remote(base.clone()),
            remote(serde_json::json!({"name": "b", "upstream": "https://git.example/b.git"})),
        ];
        assert!(widenings(&old, &more)
            .iter()
            .any(|l| l.contains("`b` is new")));
        // Narrowing: fewer push patterns, more protected, a remote removed.
        assert!(with(serde_json::json!({"push": [], "protected": ["main", "x"]})).is_empty());
        assert!(widenings(&old, &pin(&[])).is_empty());
    }

    fn rule(host: &str, methods: &[&str]) -> HttpRule {
        HttpRule {
            host: HostPattern::parse(host).unwrap(),
            methods: methods
                .iter()
                .map(|m| bottle_policy::RuleMethod::parse(m).unwrap())
                .collect(),
            paths: vec![],
        }
    }

    #[test]
    fn narrowing_is_silent_widening_is_listed() {
        let old = pin(&["a.example.com", "b.example.com"]);
        assert!(widenings(&old, &pin(&["a.example.com"])).is_empty());
        let w = widenings(&old, &pin(&["a.example.com", "evil.example.com"]));
        assert_eq!(w, vec!["egress.allow gains `evil.example.com`".to_string()]);
    }

    #[test]
    fn removing_a_rule_or_adding_a_mount_widens() {
        let mut old = pin(&["api.github.com"]);
        old.egress.rules.push(rule("api.github.com", &["GET"]));
        let mut new = pin(&["api.github.com"]);
        new.mounts.push(PinnedMount {
            source: "/home/u".into(),
            target: "/home".into(),
            read_only: false,
        });
        new.egress.unknown = Unknown::Ask;
        let w = widenings(&old, &new);
        assert_eq!(w.len(), 3, "{w:?}");
    }

    #[test]
    fn an_added_rule_widens_even_beside_an_existing_one() {
        let mut old = pin(&["api.github.com"]);
        old.egress.rules.push(rule("api.github.com", &["GET"]));
        let mut new = old.clone();
        new.egress.rules.push(rule("api.github.com", &[]));
        let w = widenings(&old, &new);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("[[egress.rule]] added for api.github.com"),
            "{w:?}"
        );
    }

    #[test]
    fn read_only_mounts_inside_a_mounted_source_are_not_more() {
        let old = pin(&[]);
        let mut new = old.clone();
        new.mounts.push(PinnedMount {
            source: "/home/u/proj/.git".into(),
            target: "/workspace/.git".into(),
            read_only: true,
        });
        assert!(widenings(&old, &new).is_empty());
        new.mounts[1].read_only = false;
        assert_eq!(widenings(&old, &new).len(), 1);
    }

    #[test]
    fn any_change_of_the_upstream_proxy_widens() {
        let old = pin(&[]);
        let mut new = old.clone();
        let proxy = |url: &str, var: Option<&str>| bottle_policy::UpstreamProxy {
            url: bottle_policy::ProxyUrl::parse(url).unwrap(),
            auth_from_env: var.map(str::to_string),
        };
        new.egress.upstream_proxy = Some(proxy("http://proxy.corp.example:3128", None));
        assert_eq!(
            widenings(&old, &new),
            ["egress.upstream_proxy changes from none to `http://proxy.corp.example:3128`"]
        );
        let mut next = new.clone();
        next.egress.upstream_proxy = Some(proxy(
            "http://proxy.corp.example:3128",
            Some("AWS_SECRET_ACCESS_KEY"),
        ));
        assert_eq!(
            widenings(&new, &next),
            ["egress.upstream_proxy changes from `http://proxy.corp.example:3128` to `http://proxy.corp.example:3128` (credential from $AWS_SECRET_ACCESS_KEY)"]
        );
        let mut evil = next.clone();
        evil.egress.upstream_proxy = Some(proxy(
            "http://evil.example:3128",
            Some("AWS_SECRET_ACCESS_KEY"),
        ));
        assert_eq!(widenings(&next, &evil).len(), 1);
        assert_eq!(widenings(&next, &old).len(), 1, "removing it counts too");
        assert!(widenings(&next, &next.clone()).is_empty());
    }

    #[test]
    fn a_looser_budget_widens_and_a_tighter_one_does_not() {
        let with = |json: serde_json::Value| {
            let mut p = pin(&["api.anthropic.com"]);
            p.egress.budget = serde_json::from_value(json).unwrap();
            p
        };
        let old = with(
            serde_json::json!({"llm_usd": 25.0, "host": [{"host": "api.github.com", "bytes_up": "50MiB"}]}),
        );
        let raised = with(
            serde_json::json!({"llm_usd": 40.0, "host": [{"host": "api.github.com", "bytes_up": "50MiB"}]}),
        );
        let w = widenings(&old, &raised);
        assert_eq!(w, ["egress.budget llm_usd grows from $25.00 to $40.00"]);
        let dropped = with(serde_json::json!({"llm_usd": 25.0}));
        let w = widenings(&old, &dropped);
        assert_eq!(
            w,
            ["egress.budget api.github.com:bytes_up limit (50 MiB) is removed"]
        );
        let lowered = with(
            serde_json::json!({"llm_usd": 10.0, "host": [{"host": "api.github.com", "bytes_up": "1MiB"}]}),
        );
        assert!(widenings(&old, &lowered).is_empty());
        // A pin written before budgets existed reads as no budget.
        let mut json = serde_json::to_value(pin(&["api.anthropic.com"])).unwrap();
        json["egress"].as_object_mut().unwrap().remove("budget");
        let legacy: Pinned = serde_json::from_value(json).unwrap();
        assert!(legacy.egress.budget.is_empty());
        assert!(
            widenings(&legacy, &old).is_empty(),
            "adding a budget narrows"
        );
    }

    #[test]
    fn larger_limits_and_new_roots_widen() {
        let old = pin(&[]);
        let mut new = old.clone();
        new.limits.insert("agent.pids".into(), 1_000_000);
        new.upstream_roots
            .push("/etc/ssl/evil.pem (sha256 00)".into());
        let w = widenings(&old, &new);
        assert_eq!(w.len(), 2, "{w:?}");
        new.limits.insert("agent.pids".into(), 16);
        new.upstream_roots.clear();
        assert!(widenings(&old, &new).is_empty());
    }

    #[test]
    fn a_new_name_from_a_file_an_agent_could_write_needs_consent() {
        let pins = BTreeMap::from([("demo".to_string(), pin(&["a.example.com"]))]);
        // Same file, renamed: compared with the pin it was accepted under.
        let renamed = pin(&["a.example.com"]);
        let why = judge("fresh", &renamed, &pins);
        assert_eq!(
            why,
            vec!["/home/u/proj/bottle.toml was accepted as bottle `demo`; it now names `fresh`"]
        );
        // Another file inside demo's read-write mount, under a new name.
        let mut planted = pin(&[]);
        planted.config = Some("/home/u/proj/sub/bottle.toml".into());
        let why = judge("fresh", &planted, &pins);
        assert!(why[0].contains("read-write mount /home/u/proj"), "{why:?}");
        assert!(
            why.iter().any(|w| w.contains("agent.mounts gains")),
            "{why:?}"
        );
        // The first bottle from a file no agent can write starts silently.
        let mut mine = pin(&["a.example.com"]);
        mine.config = Some("/home/u/other/bottle.toml".into());
        assert!(judge("other", &mine, &pins).is_empty());
    }

    #[test]
    fn naming_another_bottle_does_not_inherit_its_pin() {
        let pins = BTreeMap::from([("wide".to_string(), {
            let mut p = pin(&["a.example.com", "b.example.com"]);
            p.config = Some("/home/u/wide/bottle.toml".into());
            p
        })]);
        let narrow = pin(&["a.example.com"]);
        let why = judge("wide", &narrow, &pins);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].contains("was accepted from /home/u/wide/bottle.toml"));
        // An unreadable pin matches no file.
        let pins = BTreeMap::from([("demo".to_string(), Pinned::nothing())]);
        assert!(!judge("demo", &pin(&[]), &pins).is_empty());
    }

    #[test]
    fn a_reload_keeps_the_mounts_the_agent_still_has() {
        let old = pin(&["a.example.com"]);
        let mut narrowed = old.clone();
        narrowed.mounts[0].source = "/home/u/proj/src".into();
        narrowed.limits.insert("agent.pids".into(), 16);
        // What a reload pins: the plan's policy, the old pin's mounts.
        let reloaded = narrowed.clone().keeping_agent_of(&old);
        assert_eq!(reloaded.mounts, old.mounts);
        assert_eq!(reloaded.limits["agent.pids"], 2048);
        let pins = BTreeMap::from([("demo".to_string(), reloaded)]);
        // A file the agent writes anywhere in the still-mounted project is
        // still inside demo's read-write mount.
        let mut planted = pin(&[]);
        planted.config = Some("/home/u/proj/evil/bottle.toml".into());
        assert!(!judge("evil", &planted, &pins).is_empty());
    }

    #[test]
    fn an_unreadable_pin_is_no_pin_only_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::at(dir.path().join("p"));
        assert_eq!(load(&state), None);
        state.create().unwrap();
        std::fs::write(path(&state), b"\xff not json").unwrap();
        assert_eq!(load(&state), Some(Pinned::nothing()));
    }
}
