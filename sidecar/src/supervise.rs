//! The supervise service's core: proposals filed, decisions applied, and
//! the connections `egress.unknown = "ask"` holds until a human answers.
//! The MCP server that lets the agent ask is [`crate::mcp`].
//!
//! - **Filing.** A proposal is written to the queue directory
//!   (`bottle_policy::queue`), which the host shares with the sidecar only.
//!   Per bottle, at most `supervise.max_pending` proposals wait at once and
//!   at most `supervise.rate_per_minute` are filed a minute; a request the
//!   destination guard would refuse anyway (loopback, link-local and
//!   metadata, private without `allow_private`, the sidecar itself) never
//!   becomes a proposal ([`Supervisor::precheck`]).
//! - **Applying.** [`poll`] reads `decisions/` every [`POLL`] for the
//!   proposals still waiting. An approved egress proposal of scope `once`
//!   becomes a one-shot grant (the next connection to that host and port
//!   within [`ONCE_TTL`]); `session` and `always` become a [`Grant`] in
//!   `grants.json` and an `egress.allow` entry (and an `[[egress.rule]]`
//!   when methods were asked) in the live policy, through the same
//!   [`crate::policy_file::Live`] swap as a reload, so the proxy, the
//!   transparent listeners and DNS all see it. Grants are laid over every
//!   reloaded policy ([`Supervisor::overlay`]) and survive a sidecar restart.
//!   A grant never bypasses the destination guard: the guard still runs at
//!   connect time on the resolved addresses, and an IP-literal proposal the
//!   guard refuses is never filed nor applied.
//! - **Holding.** Under `egress.unknown = "ask"` (with supervise enabled) a
//!   connection to a host no rule covers files a proposal (one per
//!   host:port while it waits) and is held, at most `max_pending` at once and
//!   at most `timeout_secs`, then served (approved) or refused (denied,
//!   expired).
//! - **DNS** follows the decisions ([`Supervisor::dns_rule`]): a name a
//!   `session`/`always` grant added resolves through the policy; a live
//!   `once` grant resolves; under `ask` an ordinary name resolves (to the
//!   sidecar, whose listener then holds the connection and asks) unless
//!   its last proposal was denied or expired within `timeout_secs`.
//!
//! - **Pushes.** An approved `request_git_push` lets the git gate pass
//!   that ref through that remote's ref-name rules (`protected`, `push`),
//!   nothing else ([`Supervisor::claim_push`]): `once` for the next push
//!   of it within [`ONCE_TTL`], `session`/`always` while the bottle lives
//!   (in `grants.json`; `up` drops them, so `always` is `session` here).
//!
//! Every proposal and every decision is one audit line with
//! `"service":"supervise"`.

use crate::egress::{self, Allowed, Denied};
use crate::shared::Shared;
use bottle_policy::queue::{QueueDir, QueueError};
use bottle_policy::supervise::{
    Ask, AskedHost, Decision as Answer, Grant, Grants, Proposal, ProposalId, Scope, Status, Text,
};
use bottle_policy::{
    AllowRule, Decision, EgressPolicy, HostPattern, HttpRule, Policy, Unknown, DEFAULT_PORTS,
};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// The MCP server's port on the internal address.
pub const SUPERVISE_PORT: u16 = 8765;
/// Where the host mounts the queue directory in the sidecar.
pub const DEFAULT_QUEUE_DIR: &str = "/var/lib/bottle/supervise";
/// How often `decisions/` is read.
pub const POLL: Duration = Duration::from_millis(500);
/// How long a `once` approval waits for its connection.
pub const ONCE_TTL: Duration = Duration::from_secs(60);
/// How often a waiting tool call sends a progress notification.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How long a decided proposal is remembered for its waiters.
const KEEP_DECIDED: Duration = Duration::from_secs(600);

/// Unix seconds now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How a proposal ended, for whoever waits on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `ask` is what the operator approved: the proposal's, or their edit.
    Approved {
        scope: Scope,
        note: Option<String>,
        ask: Ask,
    },
    Denied {
        note: Option<String>,
    },
    Expired,
}

/// Who is waiting on a proposal: a tool call (a `once` approval then opens
/// the next connection) or a held connection (it is that connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Tool,
    Held,
}

/// Why a proposal was not filed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("too many requests: {max} a minute per bottle (supervise.rate_per_minute); retry in {retry_secs} s")]
    Rate { max: u32, retry_secs: u64 },
    #[error("{max} requests are already waiting for a decision (supervise.max_pending); wait for one to be decided or to expire, then retry")]
    Pending { max: u32 },
    #[error("refused without asking: {}", .0.reason)]
    Guard(Decision),
    #[error("the request could not be queued: {0}")]
    Queue(#[from] QueueError),
}

#[derive(Debug)]
struct Waiting {
    proposal: Proposal,
    origin: Origin,
    outcome: Option<(Outcome, Instant)>,
}

#[derive(Debug)]
struct OnceGrant {
    id: ProposalId,
    host: String,
    port: Option<u16>,
    until: Instant,
}

/// A `once` push approval taken out by [`Supervisor::claim_push`].
#[derive(Debug)]
pub struct PushClaim(GitOnce);

/// An approved push of scope `once`: the next push of `refname` through
/// `remote` within [`ONCE_TTL`].
#[derive(Debug)]
struct GitOnce {
    id: ProposalId,
    remote: String,
    refname: String,
    until: Instant,
}

#[derive(Debug, Default)]
struct State {
    waiting: HashMap<ProposalId, Waiting>,
    /// The proposal a held host:port waits on.
    held_for: HashMap<(String, u16), ProposalId>,
    held: u32,
    filed: VecDeque<Instant>,
    once: Vec<OnceGrant>,
    git_once: Vec<GitOnce>,
    grants: Grants,
    /// Hosts whose last egress proposal was denied or expired, and when:
    /// DNS refuses them on an ask for `timeout_secs` after.
    refused: HashMap<String, Instant>,
}

/// The supervise service's state, shared by the MCP server, the listeners
/// and the poll loop.
#[derive(Debug)]
pub struct Supervisor {
    queue: QueueDir,
    url: String,
    progress_every: Duration,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

/// What the sidecar needs to start the supervise service.
#[derive(Debug, Clone)]
pub struct SuperviseConfig {
    /// The queue directory (`--supervise-state`).
    pub queue_dir: PathBuf,
    /// The MCP server's URL as the agent reaches it (for 403 bodies).
    pub url: String,
    pub progress_every: Duration,
}

impl Supervisor {
    /// Opens the queue directory (creating it), loads the grants in force
    /// and the proposals still waiting from before a restart.
    pub fn open(config: &SuperviseConfig) -> Result<Supervisor, QueueError> {
        let queue = QueueDir::new(&config.queue_dir);
        queue.create()?;
        let grants = queue.grants()?;
        let now = now_secs();
        let mut waiting = HashMap::new();
        for entry in queue.list(now)?.entries {
            if entry.status == Status::Pending {
                waiting.insert(
                    entry.proposal.id.clone(),
                    Waiting {
                        proposal: entry.proposal,
                        origin: Origin::Tool,
                        outcome: None,
                    },
                );
            }
        }
        Ok(Supervisor {
            queue,
            url: config.url.clone(),
            progress_every: config.progress_every,
            state: Mutex::new(State {
                waiting,
                grants,
                ..State::default()
            }),
            changed: watch::channel(0).0,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn queue(&self) -> &QueueDir {
        &self.queue
    }

    pub fn progress_every(&self) -> Duration {
        self.progress_every
    }

    /// The grants in force.
    pub fn grants(&self) -> Grants {
        self.state().grants.clone()
    }

    /// `policy` with every grant laid over it.
    pub fn overlay(&self, policy: Policy) -> Policy {
        let grants = self.grants();
        let mut policy = policy;
        for g in &grants.grants {
            add_grant(&mut policy.egress, &g.host, g.port, &g.methods);
        }
        policy
    }

    /// The refusal the destination guard would give `host:port` anyway
    /// under `policy`, so that it is never asked for. A name that does not
    /// resolve is not refused here (it may resolve later; the guard runs
    /// again at connect time).
    pub async fn precheck(
        shared: &Shared,
        policy: &EgressPolicy,
        host: &AskedHost,
        port: Option<u16>,
    ) -> Result<(), Decision> {
        let ports: Vec<u16> = port.map(|p| vec![p]).unwrap_or(DEFAULT_PORTS.to_vec());
        let local = shared.local.current();
        for port in ports {
            let addrs: Vec<IpAddr> = match host.as_str().parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => match shared.resolver.resolve(host.as_str(), port).await {
                    Ok(a) => a.iter().map(|a| a.ip()).collect(),
                    Err(_) => continue,
                },
            };
            let refusals: Vec<Decision> = addrs
                .iter()
                .filter_map(|ip| policy.check_address(host.as_str(), *ip, port, &local).err())
                .collect();
            if refusals.len() == addrs.len() {
                if let Some(d) = refusals.into_iter().next() {
                    return Err(d);
                }
            }
        }
        Ok(())
    }

    /// Files a proposal for `ask`, within the rate and pending bounds of
    /// `policy.supervise`.
    pub fn file(
        &self,
        policy: &Policy,
        ask: Ask,
        reason: Text,
        origin: Origin,
    ) -> Result<Proposal, FileError> {
        let limits = &policy.supervise;
        let mut state = self.state();
        let now = Instant::now();
        while state
            .filed
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            state.filed.pop_front();
        }
        if state.filed.len() >= limits.rate_per_minute as usize {
            let oldest = state.filed.front().copied().unwrap_or(now);
            let retry_secs = 60u64
                .saturating_sub(now.duration_since(oldest).as_secs())
                .max(1);
            return Err(FileError::Rate {
                max: limits.rate_per_minute,
                retry_secs,
            });
        }
        let open = state
            .waiting
            .values()
            .filter(|w| w.outcome.is_none())
            .count();
        if open >= limits.max_pending as usize {
            return Err(FileError::Pending {
                max: limits.max_pending,
            });
        }
        let created = now_secs();
        let proposal = Proposal {
            id: QueueDir::new_id()?,
            bottle: policy.bottle.clone(),
            created,
            expires: created + limits.timeout_secs.max(1),
            ask,
            reason,
        };
        self.queue.file_proposal(&proposal)?;
        state.filed.push_back(now);
        state.waiting.insert(
            proposal.id.clone(),
            Waiting {
                proposal: proposal.clone(),
                origin,
                outcome: None,
            },
        );
        Ok(proposal)
    }

    /// The outcome of `id` once there is one, or `None` at `until`.
    pub async fn outcome(&self, id: &ProposalId, until: Instant) -> Option<Outcome> {
        let mut changed = self.changed.subscribe();
        loop {
            if let Some(w) = self.state().waiting.get(id) {
                if let Some((o, _)) = &w.outcome {
                    return Some(o.clone());
                }
            } else {
                return Some(Outcome::Expired);
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return None },
                () = tokio::time::sleep_until(until.into()) => return None,
            }
        }
    }

    /// Whether a one-shot grant for `host` (any port) is live; DNS answers
    /// it without taking it.
    pub fn has_once(&self, host: &str) -> bool {
        let now = Instant::now();
        self.state()
            .once
            .iter()
            .any(|g| g.host == host && g.until > now)
    }

    /// Whether `host`'s last egress proposal was denied or expired less
    /// than `within` ago.
    pub fn refused_recently(&self, host: &str, within: Duration) -> bool {
        self.state()
            .refused
            .get(host)
            .is_some_and(|at| at.elapsed() < within)
    }

    /// What DNS answers for `name`, which the policy does not allow: the
    /// rule that lets it resolve (to the sidecar), or `None` to refuse.
    /// A live `once` grant resolves; under `egress.unknown = "ask"` any
    /// ordinary name resolves, so that the connection reaches the listener
    /// that holds it and asks, unless its last proposal was refused lately.
    /// Names that stand for the host, metadata or a sidecar, and names that
    /// read as addresses, never do.
    pub fn dns_rule(&self, policy: &Policy, name: &str) -> Option<&'static str> {
        if !policy.supervise.enabled {
            return None;
        }
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let numeric = name
            .rsplit('.')
            .next()
            .is_none_or(|last| last.is_empty() || last.chars().all(|c| c.is_ascii_digit()))
            || name.starts_with("0x")
            || name.parse::<IpAddr>().is_ok();
        if numeric || bottle_policy::forbidden_name(&name).is_some() {
            return None;
        }
        if self.has_once(&name) {
            return Some("supervise-once");
        }
        if policy.egress.unknown != Unknown::Ask {
            return None;
        }
        let within = Duration::from_secs(policy.supervise.timeout_secs.max(1));
        if self.refused_recently(&name, within) {
            return None;
        }
        Some("supervise-ask")
    }

    /// Puts an approved push in force: once, the next push of the ref
    /// within [`ONCE_TTL`]; session or always, every push of it while the
    /// bottle lives (kept in `grants.json` across a sidecar restart).
    fn grant_push(
        &self,
        shared: &Shared,
        id: &ProposalId,
        scope: Scope,
        remote: &bottle_policy::RemoteName,
        refname: &bottle_policy::AskedRef,
    ) {
        if scope == Scope::Once {
            self.state().git_once.push(GitOnce {
                id: id.clone(),
                remote: remote.as_str().to_string(),
                refname: refname.as_str().to_string(),
                until: Instant::now() + ONCE_TTL,
            });
            return;
        }
        self.keep_grant(shared, |g| {
            g.git.push(bottle_policy::GitGrant {
                id: id.clone(),
                remote: remote.clone(),
                refname: refname.clone(),
                scope,
                granted: now_secs(),
            })
        });
    }

    /// Adds a grant with `add` and writes `grants.json`; a grant that
    /// cannot be written stays in force until the sidecar restarts.
    fn keep_grant(&self, shared: &Shared, add: impl FnOnce(&mut Grants)) {
        let grants = {
            let mut state = self.state();
            add(&mut state.grants);
            state.grants.clone()
        };
        if let Err(e) = self.queue.save_grants(&grants) {
            shared.logger.event(
                "supervise-grants-unsaved",
                json!({"error": e.to_string(), "effect": "the grant is in force until the sidecar restarts"}),
            );
        }
    }

    /// Claims the approval that covers a push of `refname` through
    /// `remote`: its rule as the gate names it (`supervise <id> (<scope>)`)
    /// and, for a `once` approval, the approval itself, taken out so two
    /// pushes at once cannot both use it ([`Supervisor::return_push`] puts
    /// it back when the push does not land). `None` when no human approved
    /// that push.
    pub fn claim_push(&self, remote: &str, refname: &str) -> Option<(String, Option<PushClaim>)> {
        let mut state = self.state();
        let now = Instant::now();
        state.git_once.retain(|g| g.until > now);
        if let Some(i) = state
            .git_once
            .iter()
            .position(|g| g.remote == remote && g.refname == refname)
        {
            let g = state.git_once.remove(i);
            return Some((format!("supervise {} (once)", g.id), Some(PushClaim(g))));
        }
        state
            .grants
            .git
            .iter()
            .find(|g| g.remote.as_str() == remote && g.refname.as_str() == refname)
            .map(|g| (format!("supervise {} ({})", g.id, g.scope), None))
    }

    /// Puts back a `once` approval whose push did not land.
    pub fn return_push(&self, claim: PushClaim) {
        self.state().git_once.push(claim.0);
    }

    /// Takes the one-shot grant for `host:port`, if there is one.
    pub fn take_once(&self, host: &str, port: u16) -> Option<ProposalId> {
        let mut state = self.state();
        let now = Instant::now();
        state.once.retain(|g| g.until > now);
        let i = state.once.iter().position(|g| {
            g.host == host
                && match g.port {
                    Some(p) => p == port,
                    None => DEFAULT_PORTS.contains(&port),
                }
        })?;
        Some(state.once.remove(i).id)
    }

    /// Reads the decisions of every waiting proposal and applies them;
    /// expires those past their time. Called by [`poll`].
    pub fn apply_decisions(&self, shared: &Shared) {
        let now = now_secs();
        let ids: Vec<(ProposalId, u64)> = self
            .state()
            .waiting
            .iter()
            .filter(|(_, w)| w.outcome.is_none())
            .map(|(id, w)| (id.clone(), w.proposal.expires))
            .collect();
        let mut changed = false;
        for (id, expires) in ids {
            let answer = match self.queue.decision_of(&id) {
                Ok(a) => a,
                Err(e) => {
                    shared.logger.event(
                        "supervise-decision-unreadable",
                        json!({"id": id.as_str(), "error": e.to_string()}),
                    );
                    None
                }
            };
            let outcome = match answer {
                Some(a) => Some(self.apply(shared, &id, &a)),
                None if now >= expires => {
                    shared
                        .logger
                        .supervise("expired", json!({"id": id.as_str(), "status": "expired"}));
                    let mut state = self.state();
                    let host = state.waiting.get(&id).and_then(|w| match &w.proposal.ask {
                        Ask::Egress { host, .. } => Some(host.as_str().to_string()),
                        _ => None,
                    });
                    if let Some(h) = host {
                        state.refused.insert(h, Instant::now());
                    }
                    drop(state);
                    Some(Outcome::Expired)
                }
                None => None,
            };
            if let Some(o) = outcome {
                let mut state = self.state();
                if let Some(w) = state.waiting.get_mut(&id) {
                    w.outcome = Some((o, Instant::now()));
                }
                changed = true;
            }
        }
        let mut state = self.state();
        state.waiting.retain(|_, w| match &w.outcome {
            Some((_, at)) => at.elapsed() < KEEP_DECIDED,
            None => true,
        });
        let waiting = &state.waiting;
        let live: Vec<(String, u16)> = state
            .held_for
            .iter()
            .filter(|(_, id)| waiting.get(*id).is_some_and(|w| w.outcome.is_none()))
            .map(|(k, _)| k.clone())
            .collect();
        state.held_for.retain(|k, _| live.contains(k));
        drop(state);
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Applies one decision: the outcome, and for an approved egress
    /// proposal the grant.
    fn apply(&self, shared: &Shared, id: &ProposalId, answer: &Answer) -> Outcome {
        let Some((proposal, origin)) = self
            .state()
            .waiting
            .get(id)
            .map(|w| (w.proposal.clone(), w.origin))
        else {
            return Outcome::Expired;
        };
        let note = answer.note.as_ref().map(|n| n.as_str().to_string());
        let asked = answer.ask(&proposal).clone();
        let mut outcome = match Status::of(&proposal, Some(answer), now_secs()) {
            Status::Approved { scope } => Outcome::Approved {
                scope,
                note,
                ask: asked.clone(),
            },
            Status::Denied => Outcome::Denied { note },
            Status::Pending | Status::Expired => Outcome::Expired,
        };
        // The host checks an edited rule before writing it; a decision file
        // that does not answer its proposal is not applied.
        if let Err(e) = answer.answers(&proposal) {
            outcome = Outcome::Denied {
                note: Some(format!("the approval was not applied: {e}")),
            };
        }
        if let (
            Outcome::Approved { scope, .. },
            Ask::Egress {
                host,
                port,
                methods,
            },
        ) = (&outcome, &asked)
        {
            if let Some(refusal) = literal_guard(shared, host, *port) {
                outcome = Outcome::Denied {
                    note: Some(format!("the approval was not applied: {}", refusal.reason)),
                };
            } else {
                self.grant(shared, &proposal, *scope, origin, host, *port, methods);
            }
        }
        if let (Outcome::Approved { scope, .. }, Ask::GitPush { remote, refname }) =
            (&outcome, &asked)
        {
            self.grant_push(shared, &proposal.id, *scope, remote, refname);
        }
        if let (Outcome::Denied { .. } | Outcome::Expired, Ask::Egress { host, .. }) =
            (&outcome, &proposal.ask)
        {
            self.state()
                .refused
                .insert(host.as_str().to_string(), Instant::now());
        }
        let (verdict, scope) = match &outcome {
            Outcome::Approved { scope, .. } => ("approve", Some(scope.as_str())),
            Outcome::Denied { .. } => ("deny", None),
            Outcome::Expired => ("expired", None),
        };
        shared.logger.supervise(
            "decision",
            json!({
                "id": id.as_str(),
                "ask": proposal.ask.summary(),
                "approved": answer.edited.as_ref().map(Ask::summary),
                "verdict": verdict,
                "scope": scope,
                "note": answer.note.as_ref().map(Text::as_str),
            }),
        );
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    fn grant(
        &self,
        shared: &Shared,
        proposal: &Proposal,
        scope: Scope,
        origin: Origin,
        host: &AskedHost,
        port: Option<u16>,
        methods: &[bottle_policy::RuleMethod],
    ) {
        if scope == Scope::Once {
            // A held connection is itself the one request approved.
            if origin == Origin::Tool {
                self.state().once.push(OnceGrant {
                    id: proposal.id.clone(),
                    host: host.as_str().to_string(),
                    port,
                    until: Instant::now() + ONCE_TTL,
                });
            }
            return;
        }
        self.keep_grant(shared, |g| {
            g.grants.push(Grant {
                id: proposal.id.clone(),
                host: host.clone(),
                port,
                methods: methods.to_vec(),
                scope,
                granted: now_secs(),
            })
        });
        let mut policy = (*shared.policy.current()).clone();
        add_grant(&mut policy.egress, host, port, methods);
        shared.policy.replace(policy);
    }

    /// For a destination the policy denied: a one-shot grant, or under
    /// `egress.unknown = "ask"` a proposal and a hold until its decision.
    /// Anything else keeps the denial.
    pub async fn on_denied(
        shared: &Arc<Shared>,
        policy: &Policy,
        denied: Denied,
        what: &str,
    ) -> Result<Allowed, Denied> {
        let Some(sup) = shared.supervisor.clone() else {
            return Err(denied);
        };
        if denied.decision.rule != "default-deny" || !policy.supervise.enabled {
            return Err(denied);
        }
        if let Some(id) = sup.take_once(&denied.host, denied.port) {
            return Ok(egress::granted(&denied.host, denied.port, &id, "once"));
        }
        if policy.egress.unknown != Unknown::Ask {
            return Err(denied);
        }
        let Ok(host) = AskedHost::parse(&denied.host) else {
            return Err(denied);
        };
        let refuse = |rule: &str, reason: String| Denied {
            host: denied.host.clone(),
            port: denied.port,
            decision: egress::refusal(rule, reason),
        };
        if let Err(d) = Supervisor::precheck(shared, &policy.egress, &host, Some(denied.port)).await
        {
            return Err(Denied {
                decision: d,
                ..denied.clone()
            });
        }
        let key = (denied.host.clone(), denied.port);
        let filed = {
            let mut state = sup.state();
            if state.held >= policy.supervise.max_pending {
                None
            } else {
                state.held += 1;
                Some(state.held_for.get(&key).cloned())
            }
        };
        let Some(existing) = filed else {
            return Err(refuse(
                "supervise-busy",
                format!(
                    "{} connections are already held for a decision (supervise.max_pending); {}:{} was not asked for",
                    policy.supervise.max_pending, denied.host, denied.port
                ),
            ));
        };
        let _held = Held(sup.clone());
        let id = match existing {
            Some(id) => id,
            None => {
                let ask = Ask::Egress {
                    host,
                    port: Some(denied.port),
                    methods: Vec::new(),
                };
                let reason = Text::clean(&format!("held connection: {what}"))
                    .unwrap_or_else(|| Text::clean("held connection").expect("non-empty"));
                match sup.file(policy, ask, reason, Origin::Held) {
                    Ok(p) => {
                        log_proposal(shared, &p, "held");
                        sup.state().held_for.insert(key, p.id.clone());
                        p.id
                    }
                    Err(e) => return Err(refuse("supervise-busy", e.to_string())),
                }
            }
        };
        let until = Instant::now() + Duration::from_secs(policy.supervise.timeout_secs.max(1) + 2);
        let outcome = tokio::select! {
            o = sup.outcome(&id, until) => o.unwrap_or(Outcome::Expired),
            () = shared.closing() => Outcome::Expired,
        };
        match outcome {
            Outcome::Approved { scope, ask, .. } if covers(&ask, scope, &denied) => Ok(
                egress::granted(&denied.host, denied.port, &id, scope.as_str()),
            ),
            Outcome::Approved { ask, .. } => Err(refuse(
                "supervise-edited",
                format!(
                    "the operator approved {} instead of {}:{}; retry the request if that covers it",
                    ask.summary(),
                    denied.host,
                    denied.port
                ),
            )),
            Outcome::Denied { note } => Err(refuse(
                "supervise-denied",
                format!(
                    "the operator denied request {id} for {}:{}{}",
                    denied.host,
                    denied.port,
                    note.map(|n| format!(": {n}")).unwrap_or_default()
                ),
            )),
            Outcome::Expired => Err(refuse(
                "supervise-expired",
                format!(
                    "nobody decided request {id} for {}:{} within {} s",
                    denied.host, denied.port, policy.supervise.timeout_secs
                ),
            )),
        }
    }
}

/// Does the approved `ask` let the held connection `denied` through as it
/// is? The same host and a port the approval names (or 443/80 when it names
/// none); a `once` approval narrowed to methods cannot be checked on a held
/// tunnel, so it does not cover one.
fn covers(ask: &Ask, scope: Scope, denied: &Denied) -> bool {
    let Ask::Egress {
        host,
        port,
        methods,
    } = ask
    else {
        return false;
    };
    let port_ok = match port {
        Some(p) => *p == denied.port,
        None => DEFAULT_PORTS.contains(&denied.port),
    };
    host.as_str() == denied.host && port_ok && (methods.is_empty() || scope != Scope::Once)
}

/// Counts a held connection for as long as it lives.
struct Held(Arc<Supervisor>);

impl Drop for Held {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.held = state.held.saturating_sub(1);
    }
}

/// The audit line of a filed proposal.
pub fn log_proposal(shared: &Shared, p: &Proposal, origin: &str) {
    shared.logger.supervise(
        "proposal",
        json!({
            "id": p.id.as_str(),
            "origin": origin,
            "ask": p.ask.summary(),
            "reason": p.reason.as_str(),
            "expires": p.expires,
        }),
    );
}

/// The guard's refusal of an IP literal (no resolution), checked again
/// when an approval is applied.
fn literal_guard(shared: &Shared, host: &AskedHost, port: Option<u16>) -> Option<Decision> {
    let ip = host.as_str().parse::<IpAddr>().ok()?;
    let policy = shared.policy.current();
    let port = port.unwrap_or(DEFAULT_PORTS[0]);
    policy
        .egress
        .check_address(host.as_str(), ip, port, &shared.local.current())
        .err()
}

/// Adds the allow entry (and the methods rule) of a grant to `egress`,
/// unless it is there already.
pub fn add_grant(
    egress: &mut EgressPolicy,
    host: &AskedHost,
    port: Option<u16>,
    methods: &[bottle_policy::RuleMethod],
) {
    let Ok(pattern) = HostPattern::parse(host.as_str()) else {
        return;
    };
    let rule = AllowRule {
        host: pattern.clone(),
        port,
    };
    if !egress.allow.contains(&rule) {
        egress.allow.push(rule);
    }
    if !methods.is_empty() {
        let http = HttpRule {
            host: pattern,
            methods: methods.to_vec(),
            paths: Vec::new(),
        };
        if !egress.rules.contains(&http) {
            egress.rules.push(http);
        }
    }
}

/// `egress` with `host:port` allowed, for the requests inside a connection
/// a one-shot or held approval let through (never for the guard).
pub fn widened(egress: &EgressPolicy, allowed: &Allowed) -> EgressPolicy {
    let mut out = egress.clone();
    if let Ok(host) = AskedHost::parse(allowed.host()) {
        add_grant(&mut out, &host, Some(allowed.port()), &[]);
    }
    out
}

/// Reads decisions until the sidecar shuts down.
pub async fn poll(shared: Arc<Shared>) {
    let Some(sup) = shared.supervisor.clone() else {
        return;
    };
    loop {
        tokio::select! {
            () = shared.closing() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        sup.apply_decisions(&shared);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_add_allow_entries_once() {
        let mut e = EgressPolicy::default();
        let host = AskedHost::parse("api.example.com").unwrap();
        let get = bottle_policy::RuleMethod::parse("GET").unwrap();
        add_grant(&mut e, &host, Some(8443), std::slice::from_ref(&get));
        add_grant(&mut e, &host, Some(8443), &[get]);
        assert_eq!(e.allow.len(), 1);
        assert_eq!(e.rules.len(), 1);
        assert_eq!(
            e.decide("api.example.com", 8443).verdict,
            bottle_policy::Verdict::Allow
        );
        assert_eq!(
            e.decide_request("api.example.com", 8443, "POST", "/")
                .verdict,
            bottle_policy::Verdict::Deny
        );
    }
}
