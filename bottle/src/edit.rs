//! A proposal as a form the operator edits in `$EDITOR` before approving
//! (`bottle approve ID --edit`, the `e` key of `bottle requests --watch`),
//! and the form read back into an [`Ask`] with the policy crate's own
//! constructors, so an edit passes every check the MCP tool applies and the
//! queue then checks that it still answers the request.
//!
//! The form is TOML. For an egress request:
//!
//! ```toml
//! host = "api.example.com"
//! port = 443          # leave out for 443 and 80
//! methods = []        # empty: every method
//! scope = "session"   # once | session | always
//! note = ""
//! ```
//!
//! A git push has `ref` (the remote is fixed); an approval only `scope`
//! and `note`. An empty file, or one without its first key, cancels.

use bottle_policy::supervise::{AskedHost, AskedRef};
use bottle_policy::{Ask, Proposal, RuleMethod, Scope};
use serde::Deserialize;
use std::path::Path;

/// What the operator approved in the form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edited {
    pub ask: Ask,
    pub scope: Scope,
    pub note: Option<String>,
}

/// Why a form was not taken.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("the form was left empty; nothing was approved")]
    Cancelled,
    #[error("the form is not valid: {0}\n  fix: keep the keys the form gave (host, port, methods, ref, scope, note) with their types")]
    Form(String),
    #[error("the form's {key}: {why}")]
    Field { key: &'static str, why: String },
    #[error("cannot run the editor `{editor}`: {why}\n  fix: set VISUAL or EDITOR to an editor on your PATH")]
    Editor { editor: String, why: String },
    #[error("the editor `{editor}` exited with {code}; nothing was approved")]
    EditorFailed { editor: String, code: String },
    #[error("cannot write or read the form: {0}")]
    Io(#[from] std::io::Error),
}

impl crate::exit::Classify for EditError {
    fn exit(&self) -> crate::exit::Exit {
        match self {
            EditError::Cancelled | EditError::EditorFailed { .. } => crate::exit::Exit::Usage,
            EditError::Form(_) | EditError::Field { .. } => crate::exit::Exit::Usage,
            EditError::Editor { .. } | EditError::Io(_) => crate::exit::Exit::Failed,
        }
    }
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The form for `p` of bottle `bottle`, with `scope` and `note` filled in.
pub fn form(bottle: &str, p: &Proposal, scope: Scope, note: Option<&str>) -> String {
    let one_line = |s: &str| inert(&s.replace(['\n', '\r'], " "));
    let mut out = format!(
        "# bottle: approve request {} of bottle {}: {}\n# reason: {}\n# Edit, save and quit. An empty file cancels.\n",
        p.id.as_str(),
        one_line(bottle),
        one_line(&p.ask.summary()),
        one_line(p.reason.as_str()),
    );
    match &p.ask {
        Ask::Egress {
            host,
            port,
            methods,
        } => {
            out.push_str(&format!("host = {}\n", quote(host.as_str())));
            match port {
                Some(p) => out.push_str(&format!(
                    "port = {p}            # leave out for 443 and 80\n"
                )),
                None => out.push_str("# port = 443          # none: 443 and 80\n"),
            }
            let m: Vec<String> = methods.iter().map(|m| quote(m.as_str())).collect();
            out.push_str(&format!(
                "methods = [{}]        # empty: every method\n",
                m.join(", ")
            ));
        }
        Ask::GitPush { remote, refname } => {
            out.push_str(&format!(
                "# remote: {}\nref = {}\n",
                remote.as_str(),
                quote(refname.as_str())
            ));
        }
        Ask::Approval { action } => {
            out.push_str(&format!("# action: {}\n", one_line(action.as_str())));
        }
    }
    out.push_str(&format!(
        "scope = {}   # once | session | always\nnote = {}\n",
        quote(scope.as_str()),
        quote(note.unwrap_or(""))
    ));
    out
}

/// Agent-written text as the form's comments carry it: nothing an editor
/// reads as settings. Vim's modelines (`vim: set …:`, `vi:`, `ex:`, read
/// in the first and last lines, and the whole form is that short) and
/// Emacs's `-*- … -*-` line lose their trigger: every `:` becomes `꞉`
/// (U+A789) and `-*-` becomes `- * -`.
fn inert(s: &str) -> String {
    s.replace(':', "\u{A789}").replace("-*-", "- * -")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Form {
    host: Option<String>,
    port: Option<u16>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(rename = "ref")]
    refname: Option<String>,
    scope: Option<String>,
    note: Option<String>,
}

/// Reads the edited `text` back for proposal `p`.
pub fn parse(p: &Proposal, text: &str) -> Result<Edited, EditError> {
    if text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#')
    }) {
        return Err(EditError::Cancelled);
    }
    let f: Form = toml::from_str(text).map_err(|e| EditError::Form(e.message().to_string()))?;
    let field = |key: &'static str| {
        move |e: bottle_policy::SuperviseFieldError| EditError::Field {
            key,
            why: e.to_string(),
        }
    };
    let ask = match &p.ask {
        Ask::Egress { .. } => {
            if f.refname.is_some() {
                return Err(EditError::Form(
                    "`ref` belongs to a git push, not to egress".into(),
                ));
            }
            let Some(host) = f.host else {
                return Err(EditError::Cancelled);
            };
            let methods = f
                .methods
                .iter()
                .map(|m| {
                    RuleMethod::parse(m).map_err(|e| EditError::Field {
                        key: "methods",
                        why: e.to_string(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            AskedHost::parse(&host).map_err(field("host"))?;
            Ask::egress(&host, f.port, methods).map_err(field("port"))?
        }
        Ask::GitPush { remote, .. } => {
            if f.host.is_some() || f.port.is_some() || !f.methods.is_empty() {
                return Err(EditError::Form(
                    "a git push has only `ref`, `scope` and `note`".into(),
                ));
            }
            let Some(r) = f.refname else {
                return Err(EditError::Cancelled);
            };
            Ask::GitPush {
                remote: remote.clone(),
                refname: AskedRef::parse(&r).map_err(field("ref"))?,
            }
        }
        Ask::Approval { .. } => {
            if f.host.is_some() || f.port.is_some() || !f.methods.is_empty() || f.refname.is_some()
            {
                return Err(EditError::Form(
                    "an approval has only `scope` and `note`".into(),
                ));
            }
            p.ask.clone()
        }
    };
    let scope = match f.scope.as_deref().unwrap_or("once") {
        "once" => Scope::Once,
        "session" => Scope::Session,
        "always" => Scope::Always,
        other => {
            return Err(EditError::Field {
                key: "scope",
                why: format!("`{other}`: use once, session or always"),
            })
        }
    };
    let note = f.note.filter(|n| !n.trim().is_empty());
    Ok(Edited { ask, scope, note })
}

/// `$VISUAL`, else `$EDITOR`, else `vi`.
pub fn editor(host: &crate::host::Host) -> String {
    host.var("VISUAL")
        .or_else(|| host.var("EDITOR"))
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "vi".into())
}

/// Writes `text` to a private file, runs `editor` on it (as git does: the
/// variable's value through `sh -c`, the file as its argument) and returns
/// what the operator saved.
pub fn run_editor(editor: &str, text: &str) -> Result<String, EditError> {
    let dir = tempfile::Builder::new()
        .prefix("bottle-approve-")
        .tempdir()?;
    let path = dir.path().join("request.toml");
    write_private(&path, text)?;
    #[allow(
        clippy::disallowed_methods,
        reason = "the operator's own editor from their environment, on a file bottle wrote in a fresh private directory"
    )]
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$@\""))
        .arg(editor)
        .arg(&path)
        .status()
        .map_err(|e| EditError::Editor {
            editor: editor.into(),
            why: e.to_string(),
        })?;
    if !status.success() {
        return Err(EditError::EditorFailed {
            editor: editor.into(),
            code: status
                .code()
                .map_or("a signal".to_string(), |c| format!("code {c}")),
        });
    }
    Ok(std::fs::read_to_string(&path)?)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bottle_policy::{ProposalId, Text};

    fn proposal(ask: Ask) -> Proposal {
        Proposal {
            id: ProposalId::from_random([3; 8]),
            bottle: "demo".into(),
            created: 100,
            expires: 400,
            ask,
            reason: Text::clean("needs the docs").unwrap(),
        }
    }

    #[test]
    fn an_untouched_form_approves_the_request() {
        let p = proposal(Ask::egress("api.example.com", Some(8443), vec![]).unwrap());
        let text = form("demo", &p, Scope::Session, Some("ok"));
        let e = parse(&p, &text).unwrap();
        assert_eq!(e.ask, p.ask);
        assert_eq!(e.scope, Scope::Session);
        assert_eq!(e.note.as_deref(), Some("ok"));
        let narrowed = text
            .replace("port = 8443", "port = 443")
            .replace("methods = []", "methods = [\"GET\"]");
        let e = parse(&p, &narrowed).unwrap();
        assert_eq!(e.ask.summary(), "egress api.example.com:443 [GET]");
    }

    /// The agent writes the reason: it must not set the operator's
    /// editor's options (vim modelines, Emacs file variables).
    #[test]
    fn the_agents_text_carries_no_editor_settings() {
        let mut p = proposal(Ask::egress("vim", Some(443), vec![]).unwrap());
        p.reason = Text::clean("x vim: set ts=3 sw=3 : -*- eval: (evil) -*- ex:y").unwrap();
        let text = form("demo", &p, Scope::Once, None);
        for line in text.lines().filter(|l| l.starts_with('#')) {
            for trigger in ["vim:", "vi:", "ex:", "-*-"] {
                assert!(!line.contains(trigger), "{trigger} in {line}");
            }
        }
        assert!(
            text.contains("set ts=3 sw=3"),
            "the reason is shown: {text}"
        );
        // The real vim, modelines on, takes no setting from the form (a
        // harmless one stands for what a modeline bug would let through).
        if let Ok(vim) = which::which("vim") {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("f.toml");
            std::fs::write(&file, &text).unwrap();
            let out = dir.path().join("out");
            #[allow(
                clippy::disallowed_methods,
                reason = "the real vim reads the form the test wrote"
            )]
            let st = std::process::Command::new(vim)
                .args([
                    "-E",
                    "-s",
                    "-N",
                    "-u",
                    "NONE",
                    "-c",
                    "set modeline modelines=5",
                ])
                .arg("-c")
                .arg(format!(
                    "e {} | redir! > {} | set ts? | redir END | q!",
                    file.display(),
                    out.display()
                ))
                .status()
                .unwrap();
            assert!(st.success());
            let shown = std::fs::read_to_string(&out).unwrap();
            assert!(
                shown.contains("tabstop=8"),
                "a modeline in the form was obeyed: {shown}"
            );
        }
        assert_eq!(parse(&p, &text).unwrap().ask, p.ask);
    }

    #[test]
    fn edits_are_checked_like_the_tool_checks_them() {
        let p = proposal(Ask::egress("api.example.com", None, vec![]).unwrap());
        let text = form("demo", &p, Scope::Once, None);
        for (from, to, want) in [
            ("\"api.example.com\"", "\"*.example.com\"", "host"),
            ("methods = []", "methods = [\"get\"]", "methods"),
            ("scope = \"once\"", "scope = \"forever\"", "scope"),
            (
                "methods = []",
                "methods = []\nref = \"main\"",
                "belongs to a git push",
            ),
            ("methods = []", "methods = []\nextra = 1", "unknown field"),
        ] {
            let e = parse(&p, &text.replace(from, to)).unwrap_err().to_string();
            assert!(e.contains(want), "{to}: {e}");
        }
        assert!(matches!(
            parse(&p, "# nothing\n\n"),
            Err(EditError::Cancelled)
        ));
        assert!(matches!(
            parse(&p, "scope = \"once\"\n"),
            Err(EditError::Cancelled)
        ));
    }

    #[test]
    fn pushes_and_approvals_have_their_own_forms() {
        let push = proposal(Ask::GitPush {
            remote: bottle_policy::RemoteName::parse("origin").unwrap(),
            refname: AskedRef::parse("agent/x").unwrap(),
        });
        let text = form("demo", &push, Scope::Once, None);
        let e = parse(
            &push,
            &text.replace("refs/heads/agent/x", "refs/heads/agent/y"),
        )
        .unwrap();
        assert_eq!(e.ask.summary(), "git push origin refs/heads/agent/y");
        assert!(parse(&push, &text.replace("refs/heads/agent/x", "a..b")).is_err());
        let approval = proposal(Ask::Approval {
            action: Text::clean("deploy").unwrap(),
        });
        let text = form("demo", &approval, Scope::Once, None);
        assert_eq!(parse(&approval, &text).unwrap().ask, approval.ask);
        assert!(parse(&approval, &format!("host = \"x.com\"\n{text}")).is_err());
    }

    #[test]
    fn the_editor_edits_a_private_file() {
        let p = proposal(Ask::egress("api.example.com", None, vec![]).unwrap());
        let text = form("demo", &p, Scope::Once, None);
        let out = run_editor("sed -i s/once/always/", &text).unwrap();
        assert_eq!(parse(&p, &out).unwrap().scope, Scope::Always);
        let e = run_editor("false", &text).unwrap_err();
        assert!(matches!(e, EditError::EditorFailed { .. }), "{e}");
    }
}
