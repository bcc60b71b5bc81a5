//! The supervise MCP server on `:8765/mcp` (streamable HTTP, the official
//! `rmcp` SDK served with hyper like every other listener): how the agent
//! asks a human for more than its policy gives it.
//!
//! Tools (their answers are short and say what to do next, for a model):
//!
//! - `request_egress {host, port?, methods?, reason}`: reach a host;
//! - `list_egress_rules {}`: what is allowed now (policy and grants);
//! - `request_git_push {remote, ref, reason}`: push a ref the git gate's
//!   ref rules refuse (`protected`, not in `push`); an approval lets the
//!   gate pass that ref (once, or for the session), never a rewrite, a
//!   deletion or a secret; a fetch-only remote is refused at once;
//! - `request_approval {action, reason}`: anything else.
//!
//! A request tool files a proposal ([`crate::supervise`]) and waits for its
//! decision, up to `supervise.timeout_secs`, sending a progress notification
//! every few seconds when the client gave a progress token. Malformed
//! arguments are a tool error naming the field; a request over the rate or
//! pending bound, or one the destination guard refuses anyway, is answered
//! at once and files nothing.
//!
//! The server checks no `Host` header (rmcp's DNS-rebinding guard is for
//! servers on a browser's loopback): it listens only on the bottle's
//! internal network, where the agent, its only client, reaches it by the
//! sidecar's address.

use crate::limits::Deadlines;
use crate::listen::{ClientStream, ListenError, OverCap};
use crate::shared::Shared;
use crate::supervise::{log_proposal, FileError, Origin, Outcome, Supervisor};
use bottle_policy::supervise::{Ask, AskedRef, Proposal, SuperviseFieldError, Text};
use bottle_policy::{RemoteName, RuleMethod, DEFAULT_PORTS};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The path the server answers on.
pub const MCP_PATH: &str = "/mcp";

/// A bound, not yet serving, MCP listener.
#[derive(Debug)]
pub struct Mcp {
    listener: TcpListener,
}

impl Mcp {
    pub async fn bind(addr: SocketAddr) -> Result<Mcp, ListenError> {
        Ok(Mcp {
            listener: crate::listen::bind_tcp("supervise", addr).await?,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        crate::listen::local_addr(&self.listener)
    }

    /// Serves until the sidecar shuts down.
    pub async fn serve(self, shared: Arc<Shared>) {
        let stop = CancellationToken::new();
        let factory_shared = shared.clone();
        let service = StreamableHttpService::new(
            move || {
                Ok(Tools {
                    shared: factory_shared.clone(),
                })
            },
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default()
                .disable_allowed_hosts()
                .with_cancellation_token(stop.child_token()),
        );
        let service = Arc::new(service);
        crate::listen::accept_loop(
            self.listener,
            shared,
            "supervise",
            OverCap::Http503,
            move |stream: ClientStream, _client: SocketAddr, shared: Arc<Shared>| {
                let service = service.clone();
                async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let service = service.clone();
                        async move {
                            if req.uri().path() != MCP_PATH {
                                return Ok::<_, Infallible>(not_found());
                            }
                            Ok(service.handle(req).await.map(http_body_util::Either::Left))
                        }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(shared.limits().handshake())
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        () = shared.closing() => {}
                    }
                }
            },
        )
        .await;
        stop.cancel();
    }
}

type McpBody = http_body_util::Either<
    http_body_util::combinators::BoxBody<bytes::Bytes, Infallible>,
    http_body_util::Full<bytes::Bytes>,
>;

fn not_found() -> hyper::Response<McpBody> {
    let mut resp = hyper::Response::new(http_body_util::Either::Right(http_body_util::Full::new(
        bytes::Bytes::from(format!(
            "bottle supervise: the MCP server is at {MCP_PATH}\n"
        )),
    )));
    *resp.status_mut() = hyper::StatusCode::NOT_FOUND;
    resp
}

/// The tool handler, one per MCP session.
#[derive(Clone)]
struct Tools {
    shared: Arc<Shared>,
}

fn schema(v: Value) -> Arc<JsonObject> {
    match v {
        Value::Object(o) => Arc::new(o),
        _ => Arc::new(JsonObject::new()),
    }
}

/// The tools and their input schemas.
pub fn tools() -> Vec<Tool> {
    let reason = json!({"type": "string", "description": "one sentence: why you need it (shown to the human who decides)"});
    vec![
        Tool::new(
            "request_egress",
            "Ask the human operator to let this sandbox reach a host it is not allowed to reach now. Waits for the decision (minutes at most) and says whether to retry.",
            schema(json!({
                "type": "object",
                "properties": {
                    "host": {"type": "string", "description": "one host name or IP address, e.g. api.example.com (no URL, no wildcard)"},
                    "port": {"type": "integer", "minimum": 1, "maximum": 65535, "description": "leave out for 443 and 80"},
                    "methods": {"type": "array", "items": {"type": "string", "enum": ["GET","HEAD","POST","PUT","PATCH","DELETE","OPTIONS"]}, "description": "only these HTTP methods (leave out for any)"},
                    "reason": reason,
                },
                "required": ["host", "reason"],
                "additionalProperties": false,
            })),
        ),
        Tool::new(
            "list_egress_rules",
            "List the hosts this sandbox may reach now: the policy's allow list and rules, and the approvals granted in this session.",
            schema(json!({"type": "object", "properties": {}, "additionalProperties": false})),
        ),
        Tool::new(
            "request_git_push",
            "Ask the human operator to approve a git push the sandbox's git policy does not allow. Waits for the decision.",
            schema(json!({
                "type": "object",
                "properties": {
                    "remote": {"type": "string", "description": "the git gate's remote name, e.g. app"},
                    "ref": {"type": "string", "description": "the branch or full ref, e.g. agent/fix or refs/heads/agent/fix"},
                    "reason": reason,
                },
                "required": ["remote", "ref", "reason"],
                "additionalProperties": false,
            })),
        ),
        Tool::new(
            "request_approval",
            "Ask the human operator to approve an action before you take it. Waits for the decision.",
            schema(json!({
                "type": "object",
                "properties": {
                    "action": {"type": "string", "description": "what you want to do, in one sentence"},
                    "reason": reason,
                },
                "required": ["action", "reason"],
                "additionalProperties": false,
            })),
        ),
    ]
}

fn text_result(text: impl Into<String>, error: bool) -> CallToolResponse {
    let content = vec![ContentBlock::text(text)];
    if error {
        CallToolResult::error(content).into()
    } else {
        CallToolResult::success(content).into()
    }
}

/// A malformed argument: the field and what is wrong with it.
#[derive(Debug)]
struct BadArg(String);

impl BadArg {
    fn field(field: &str, e: impl std::fmt::Display) -> BadArg {
        BadArg(format!("argument `{field}`: {e}"))
    }
}

struct Args<'a>(&'a JsonObject);

impl<'a> Args<'a> {
    fn only(&self, known: &[&str]) -> Result<(), BadArg> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(BadArg(format!(
                "unknown argument `{}`; this tool takes {}",
                k.chars().take(40).collect::<String>(),
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }

    fn str(&self, field: &str) -> Result<Option<&'a str>, BadArg> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(BadArg::field(field, "must be a string")),
        }
    }

    fn required(&self, field: &str) -> Result<&'a str, BadArg> {
        self.str(field)?
            .ok_or_else(|| BadArg::field(field, "is required"))
    }

    fn text(&self, field: &'static str) -> Result<Text, BadArg> {
        Text::parse_field(self.required(field)?, field).map_err(|e| BadArg::field(field, e))
    }
}

fn field_err(field: &str) -> impl FnOnce(SuperviseFieldError) -> BadArg + '_ {
    move |e| BadArg::field(field, e)
}

impl Tools {
    async fn call(
        &self,
        name: &str,
        args: &JsonObject,
        ctx: &RequestContext<RoleServer>,
    ) -> CallToolResponse {
        let policy = self.shared.policy.current();
        let Some(sup) = self
            .shared
            .supervisor
            .clone()
            .filter(|_| policy.supervise.enabled)
        else {
            return text_result("supervise is off for this bottle (bottle.toml [supervise] enabled = false); ask the user directly", true);
        };
        let args = Args(args);
        let ask = match name {
            "list_egress_rules" => return self.list_rules(&sup),
            "request_egress" => self.egress_ask(&args).await,
            "request_git_push" => git_ask(&args, &policy.git),
            "request_approval" => args
                .only(&["action", "reason"])
                .and_then(|()| args.text("action"))
                .map(|action| Ask::Approval { action })
                .map_err(Refusal::from),
            other => {
                return text_result(
                    format!(
                        "no tool `{}`; the tools are request_egress, list_egress_rules, request_git_push, request_approval",
                        other.chars().take(40).collect::<String>()
                    ),
                    true,
                )
            }
        };
        let (ask, reason) = match ask.and_then(|ask| Ok((ask, args.text("reason")?))) {
            Ok(v) => v,
            Err(Refusal::Bad(BadArg(msg))) => return text_result(msg, true),
            Err(Refusal::Now(msg)) => return text_result(msg, true),
        };
        let proposal = match sup.file(&policy, ask, reason, Origin::Tool) {
            Ok(p) => p,
            Err(e @ FileError::Guard(_))
            | Err(e @ FileError::Rate { .. })
            | Err(e @ FileError::Pending { .. }) => return text_result(e.to_string(), true),
            Err(e) => return text_result(format!("{e}; tell the user"), true),
        };
        log_proposal(&self.shared, &proposal, "tool");
        let outcome = self.wait(&sup, &proposal, ctx).await;
        text_result(answer(&proposal, &outcome), false)
    }

    async fn egress_ask(&self, args: &Args<'_>) -> Result<Ask, Refusal> {
        args.only(&["host", "port", "methods", "reason"])?;
        let host = args.required("host")?;
        let port = match args.0.get("port") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| BadArg::field("port", "must be a number from 1 to 65535"))?,
            ),
        };
        let methods = match args.0.get("methods") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|m| {
                    m.as_str()
                        .ok_or_else(|| BadArg::field("methods", "must be a list of strings"))
                        .and_then(|m| RuleMethod::parse(m).map_err(|e| BadArg::field("methods", e)))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(BadArg::field("methods", "must be a list such as [\"GET\"]").into())
            }
        };
        let ask = Ask::egress(host, port, methods).map_err(|e| match e {
            SuperviseFieldError::Port => BadArg::field("port", e),
            e => BadArg::field("host", e),
        })?;
        let Ask::Egress { host, port, .. } = &ask else {
            return Ok(ask);
        };
        let policy = self.shared.policy.current();
        if let Err(d) = Supervisor::precheck(&self.shared, &policy.egress, host, *port).await {
            return Err(Refusal::Now(format!(
                "refused without asking: {}. No approval can open this address; do not retry",
                d.reason
            )));
        }
        let ports: Vec<u16> = port.map(|p| vec![p]).unwrap_or(DEFAULT_PORTS.to_vec());
        let allowed_now = ports.iter().all(|p| {
            policy.egress.decide(host.as_str(), *p).verdict == bottle_policy::Verdict::Allow
        });
        if allowed_now {
            return Err(Refusal::Now(format!(
                "{} is already allowed; nothing to ask. If requests fail, the reason is in the proxy's answer (an egress.rule may narrow methods or paths: see list_egress_rules)",
                host.allow_entry(*port)
            )));
        }
        Ok(ask)
    }

    fn list_rules(&self, sup: &Supervisor) -> CallToolResponse {
        let policy = self.shared.policy.current();
        let grants = sup.grants();
        let granted: Vec<String> = grants
            .grants
            .iter()
            .map(|g| g.host.allow_entry(g.port))
            .collect();
        let allow: Vec<String> = policy
            .egress
            .allow
            .iter()
            .map(|a| a.to_string())
            .filter(|a| !granted.contains(a))
            .collect();
        let rules: Vec<String> = policy
            .egress
            .rules
            .iter()
            .map(|r| {
                let m: Vec<&str> = r.methods.iter().map(RuleMethod::as_str).collect();
                let p: Vec<&str> = r.paths.iter().map(|p| p.as_str()).collect();
                format!(
                    "{}: methods [{}] paths [{}]",
                    r.host,
                    m.join(","),
                    p.join(",")
                )
            })
            .collect();
        let unknown = match policy.egress.unknown {
            bottle_policy::Unknown::Deny => "denied",
            bottle_policy::Unknown::Ask => "held until a human decides",
        };
        let list = |v: &[String]| {
            if v.is_empty() {
                "(none)".to_string()
            } else {
                v.join(", ")
            }
        };
        text_result(
            format!(
                "allowed by the policy: {}\nnarrowed by rules: {}\napproved in this session: {}\nother hosts: {unknown}; ask with request_egress",
                list(&allow),
                list(&rules),
                list(&granted)
            ),
            false,
        )
    }

    /// Waits for the decision, with progress notifications.
    async fn wait(
        &self,
        sup: &Supervisor,
        p: &Proposal,
        ctx: &RequestContext<RoleServer>,
    ) -> Outcome {
        let deadline = Instant::now()
            + Duration::from_secs(p.expires.saturating_sub(p.created))
            + Duration::from_secs(2);
        let token = ctx.meta.get_progress_token();
        let mut ticks = 0u32;
        loop {
            let next = (Instant::now() + sup.progress_every()).min(deadline);
            let outcome = tokio::select! {
                o = sup.outcome(&p.id, next) => o,
                () = ctx.ct.cancelled() => return Outcome::Expired,
                () = self.shared.closing() => return Outcome::Expired,
            };
            if let Some(o) = outcome {
                return o;
            }
            if Instant::now() >= deadline {
                return Outcome::Expired;
            }
            ticks += 1;
            if let Some(token) = &token {
                let _ = ctx
                    .peer
                    .notify_progress(
                        ProgressNotificationParam::new(token.clone(), f64::from(ticks))
                            .with_message(format!(
                                "waiting for the operator to decide request {}",
                                p.id
                            )),
                    )
                    .await;
            }
        }
    }
}

/// Why a request was not filed.
enum Refusal {
    Bad(BadArg),
    Now(String),
}

impl From<BadArg> for Refusal {
    fn from(b: BadArg) -> Self {
        Refusal::Bad(b)
    }
}

fn git_ask(args: &Args<'_>, git: &bottle_policy::GitPolicy) -> Result<Ask, Refusal> {
    args.only(&["remote", "ref", "reason"])?;
    let remote =
        RemoteName::parse(args.required("remote")?).map_err(|e| BadArg::field("remote", e))?;
    let refname = AskedRef::parse(args.required("ref")?).map_err(field_err("ref"))?;
    if git.remotes.is_empty() {
        return Err(Refusal::Now(
            "this bottle has no git remotes configured ([[git.remote]] in bottle.toml), so there is no push to approve; ask the user to add the remote".into(),
        ));
    }
    if !git.remotes.iter().any(|r| r.name == remote) {
        let names: Vec<&str> = git.remotes.iter().map(|r| r.name.as_str()).collect();
        return Err(BadArg::field(
            "remote",
            format!(
                "no remote `{remote}`; the git gate's remotes are {}",
                names.join(", ")
            ),
        )
        .into());
    }
    if git
        .remotes
        .iter()
        .any(|r| r.name == remote && r.mode == bottle_policy::GitMode::Fetch)
    {
        return Err(Refusal::Now(format!(
            "remote `{remote}` is fetch-only (mode = \"fetch\" in bottle.toml); no approval can make it pushable, ask the user to change its mode"
        )));
    }
    Ok(Ask::GitPush { remote, refname })
}

/// The tool's answer for a model: what happened and what to do now.
pub fn answer(p: &Proposal, o: &Outcome) -> String {
    let note = |n: &Option<String>| {
        n.as_ref()
            .map(|n| format!(" Operator's note: {n}"))
            .unwrap_or_default()
    };
    match (o, &p.ask) {
        (
            Outcome::Approved {
                scope,
                note: n,
                ask: Ask::Egress { host, port, .. },
            },
            _,
        ) => {
            let reach = match scope {
                bottle_policy::Scope::Once => "for one connection within the next minute".to_string(),
                _ => "for the rest of this session".to_string(),
            };
            format!(
                "approved ({scope}): {} is reachable {reach}. Retry your request now.{}",
                host.allow_entry(*port),
                note(n)
            )
        }
        (
            Outcome::Approved {
                scope,
                note: n,
                ask: Ask::GitPush { remote, refname },
            },
            _,
        ) => {
            let reach = match scope {
                bottle_policy::Scope::Once => "the approval covers one push within a minute",
                _ => "the approval covers pushes of that ref for the rest of this session",
            };
            format!(
                "approved ({scope}): push {refname} to {remote} now (git push {remote} HEAD:{refname}); {reach}. A non-fast-forward, a deletion or a secret in the commits is still refused.{}",
                note(n)
            )
        }
        (
            Outcome::Approved {
                scope,
                note: n,
                ask,
            },
            _,
        ) => {
            format!("approved ({scope}): {}. Go ahead.{}", ask.summary(), note(n))
        }
        (Outcome::Denied { note: n }, _) => format!(
            "denied: {}. Do not retry it; find another way or ask the user.{}",
            p.ask.summary(),
            note(n)
        ),
        (Outcome::Expired, _) => format!(
            "expired: nobody decided request {} in time. Ask again later if you still need it, or ask the user.",
            p.id
        ),
    }
}

impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("bottle-supervise", env!("CARGO_PKG_VERSION")))
            .with_instructions("Ask the human operator of this sandbox for network access (request_egress), a git push (request_git_push) or approval of an action (request_approval). Each call waits for the decision.")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.clone().unwrap_or_default();
        Ok(self.call(&request.name, &args, &context).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::Outcome;
    use bottle_policy::{AskedRef, ProposalId, Scope};
    use serde_json::json;

    fn git() -> bottle_policy::GitPolicy {
        serde_json::from_value(json!({"remotes": [
            {"name": "app", "upstream": "https://git.example/app.git", "push": ["agent/*"]},
            {"name": "ro", "upstream": "https://git.example/ro.git", "mode": "fetch"},
        ]}))
        .unwrap()
    }

    fn ask(args: serde_json::Value) -> Result<Ask, Refusal> {
        let obj = args.as_object().unwrap().clone();
        git_ask(&Args(&obj), &git())
    }

    #[test]
    fn push_requests_name_a_pushable_remote() {
        assert!(ask(json!({"remote": "app", "ref": "main", "reason": "x"})).is_ok());
        match ask(json!({"remote": "ro", "ref": "main", "reason": "x"})) {
            Err(Refusal::Now(why)) => assert!(why.contains("fetch-only"), "{why}"),
            _ => panic!("a fetch-only remote is refused at once"),
        }
        assert!(matches!(
            ask(json!({"remote": "nope", "ref": "main", "reason": "x"})),
            Err(Refusal::Bad(_))
        ));
    }

    #[test]
    fn an_approved_push_says_how_to_push() {
        let a = Ask::GitPush {
            remote: bottle_policy::RemoteName::parse("app").unwrap(),
            refname: AskedRef::parse("main").unwrap(),
        };
        let p = Proposal {
            id: ProposalId::from_random([1; 8]),
            bottle: "t".into(),
            created: 1,
            expires: 2,
            ask: a.clone(),
            reason: Text::clean("r").unwrap(),
        };
        let once = answer(
            &p,
            &Outcome::Approved {
                scope: Scope::Once,
                note: None,
                ask: a.clone(),
            },
        );
        assert!(
            once.starts_with("approved (once): push refs/heads/main to app now (git push app HEAD:refs/heads/main); the approval covers one push within a minute."),
            "{once}"
        );
        let session = answer(
            &p,
            &Outcome::Approved {
                scope: Scope::Session,
                note: Some("ok".into()),
                ask: a,
            },
        );
        assert!(
            session.contains("for the rest of this session")
                && session.ends_with("Operator's note: ok"),
            "{session}"
        );
    }
}
