//! `bottle requests --watch`: a terminal UI over the supervise queues of
//! every bottle (or one), where new proposals appear as the sidecars file
//! them and the operator answers them with a key.
//!
//! Keys: ↑/↓ or k/j select; `a` approve (Tab cycles the scope once →
//! session → always, typed text is the note, Enter confirms, Esc cancels);
//! `d` deny (typed text is the note); `e` edit the rule in `$EDITOR`, then
//! approve what was saved; `l` the egress log around the request; `q`, Esc
//! or Ctrl-C quit. Every decision goes through [`crate::requests`], with the
//! same checks as `bottle approve`/`deny`; a refusal is shown in the status
//! line and changes nothing.
//!
//! The state machine ([`App`]) is separate from the terminal so tests drive
//! it with keys and draw it into ratatui's test backend. The terminal side
//! uses only what crossterm emits for any ANSI terminal (no mouse), so it
//! works over ssh; it redraws on resize and restores the terminal on every
//! way out. Text that came from the agent side (reasons, hosts, log lines)
//! is shown with control characters replaced.

use crate::host::Host;
use crate::requests::{self, Row};
use crate::state::StateRoot;
use bottle_policy::{ProposalId, Scope};
use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{
    Block, Borders, Cell, Clear, Paragraph, Row as TableRow, Table, TableState,
};
use ratatui::Frame;
use std::io::IsTerminal;
use std::time::Duration;

/// How often the queues are read again.
pub const REFRESH: Duration = Duration::from_millis(500);
/// Decided requests older than this drop off the list.
pub const RECENT_SECS: u64 = 600;
/// The log pane shows audit lines this close to the request.
pub const LOG_WINDOW_SECS: u64 = 60;

/// Why the UI could not run.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "bottle requests --watch needs a terminal\n  fix: in scripts use `bottle requests --json`"
    )]
    NotATerminal,
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

impl crate::exit::Classify for WatchError {
    fn exit(&self) -> crate::exit::Exit {
        match self {
            WatchError::NotATerminal => crate::exit::Exit::Usage,
            WatchError::Terminal(_) => crate::exit::Exit::Failed,
        }
    }
}

/// What the UI is showing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    List,
    Approve { scope: Scope, note: String },
    Deny { note: String },
    Log { title: String, lines: Vec<String> },
}

/// What a key asks of the loop beyond the state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    /// Suspend the UI and edit this request in `$EDITOR`.
    Edit(String),
}

/// The UI's state.
pub struct App {
    root: StateRoot,
    only: Option<String>,
    pub rows: Vec<Row>,
    pub selected: usize,
    pub mode: Mode,
    pub status: String,
}

/// `s` for the screen: control characters replaced.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

impl App {
    pub fn new(root: StateRoot, only: Option<String>) -> App {
        App {
            root,
            only,
            rows: Vec::new(),
            selected: 0,
            mode: Mode::List,
            status: "a approve · d deny · e edit · l log · q quit".into(),
        }
    }

    /// Reads the queues again at `now`: pending first (oldest first), then
    /// the recently decided, newest first. Keeps the selection on the same
    /// request where it can.
    pub fn refresh(&mut self, now: u64) {
        let keep = self.current().map(|r| r.id.clone());
        let (rows, _) = requests::list(&self.root, self.only.as_deref(), now);
        let (mut pending, mut done): (Vec<Row>, Vec<Row>) =
            rows.into_iter().partition(|r| r.status == "pending");
        done.retain(|r| now.saturating_sub(r.created) <= RECENT_SECS);
        done.reverse();
        pending.append(&mut done);
        self.rows = pending;
        if let Some(id) = keep {
            if let Some(i) = self.rows.iter().position(|r| r.id == id) {
                self.selected = i;
            }
        }
        self.selected = self.selected.min(self.rows.len().saturating_sub(1));
    }

    pub fn current(&self) -> Option<&Row> {
        self.rows.get(self.selected)
    }

    /// One key at `now`.
    pub fn on_key(&mut self, key: KeyEvent, now: u64) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        match std::mem::replace(&mut self.mode, Mode::List) {
            Mode::List => return self.list_key(key, now),
            Mode::Approve {
                mut scope,
                mut note,
            } => match key.code {
                KeyCode::Esc => self.status = "approval cancelled".into(),
                KeyCode::Tab => {
                    scope = match scope {
                        Scope::Once => Scope::Session,
                        Scope::Session => Scope::Always,
                        Scope::Always => Scope::Once,
                    };
                    self.mode = Mode::Approve { scope, note };
                }
                KeyCode::Enter => self.approve(scope, &note, now),
                KeyCode::Backspace => {
                    note.pop();
                    self.mode = Mode::Approve { scope, note };
                }
                KeyCode::Char(c) => {
                    note.push(c);
                    self.mode = Mode::Approve { scope, note };
                }
                _ => self.mode = Mode::Approve { scope, note },
            },
            Mode::Deny { mut note } => match key.code {
                KeyCode::Esc => self.status = "denial cancelled".into(),
                KeyCode::Enter => self.deny(&note, now),
                KeyCode::Backspace => {
                    note.pop();
                    self.mode = Mode::Deny { note };
                }
                KeyCode::Char(c) => {
                    note.push(c);
                    self.mode = Mode::Deny { note };
                }
                _ => self.mode = Mode::Deny { note },
            },
            Mode::Log { .. } => {}
        }
        Action::None
    }

    fn list_key(&mut self, key: KeyEvent, now: u64) -> Action {
        let pending = self.current().is_some_and(|r| r.status == "pending");
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') if self.selected + 1 < self.rows.len() => {
                self.selected += 1;
            }
            KeyCode::Char('a') if pending => {
                self.mode = Mode::Approve {
                    scope: Scope::Session,
                    note: String::new(),
                }
            }
            KeyCode::Char('d') if pending => {
                self.mode = Mode::Deny {
                    note: String::new(),
                }
            }
            KeyCode::Char('e') if pending => {
                return Action::Edit(self.current().map(|r| r.id.clone()).unwrap_or_default())
            }
            KeyCode::Char('a' | 'd' | 'e') => {
                self.status = "select a pending request first".into();
            }
            KeyCode::Char('l') => {
                if let Some(r) = self.current() {
                    let title = format!("egress log of {} around request {}", r.bottle, r.id);
                    let lines = log_around(&self.root, r);
                    self.mode = Mode::Log { title, lines };
                }
            }
            KeyCode::Char('r') => self.refresh(now),
            _ => {}
        }
        Action::None
    }

    fn approve(&mut self, scope: Scope, note: &str, now: u64) {
        let Some(id) = self.current().map(|r| r.id.clone()) else {
            return;
        };
        let note = Some(note.trim()).filter(|n| !n.is_empty());
        self.status = match requests::approve(&self.root, &id, scope, note, None, now) {
            Ok((bottle, _)) => format!("approved {id} of {bottle} ({scope})"),
            Err(e) => format!("not approved: {}", first_line(&e.to_string())),
        };
        self.after_decision(now);
    }

    /// Reads the queues again and moves to the first pending request, the
    /// one just decided having left the pending ones.
    fn after_decision(&mut self, now: u64) {
        self.refresh(now);
        if self.current().is_none_or(|r| r.status != "pending") {
            self.selected = 0;
        }
    }

    /// Approves `id` with what the operator saved in the form.
    pub fn approve_edited(&mut self, id: &str, edited: crate::edit::Edited, now: u64) {
        let note = edited.note.as_deref();
        self.status = match requests::approve(
            &self.root,
            id,
            edited.scope,
            note,
            Some(edited.ask.clone()),
            now,
        ) {
            Ok((bottle, _)) => format!(
                "approved {id} of {bottle} as {} ({})",
                edited.ask.summary(),
                edited.scope
            ),
            Err(e) => format!("not approved: {}", first_line(&e.to_string())),
        };
        self.after_decision(now);
    }

    fn deny(&mut self, note: &str, now: u64) {
        let Some(id) = self.current().map(|r| r.id.clone()) else {
            return;
        };
        let note = Some(note.trim()).filter(|n| !n.is_empty());
        self.status = match requests::deny(&self.root, &id, note, now) {
            Ok((bottle, _)) => format!("denied {id} of {bottle}"),
            Err(e) => format!("not denied: {}", first_line(&e.to_string())),
        };
        self.after_decision(now);
    }

    /// Draws the whole screen.
    pub fn draw(&self, f: &mut Frame, now: u64) {
        let [top, bottom] =
            Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(f.area());
        let widths = [
            Constraint::Length(14),
            Constraint::Length(11),
            Constraint::Length(18),
            Constraint::Length(7),
            Constraint::Percentage(40),
            Constraint::Fill(1),
        ];
        let header = TableRow::new(["BOTTLE", "ID", "STATUS", "LEFT", "ASK", "REASON"])
            .style(Style::new().add_modifier(Modifier::BOLD));
        let rows = self.rows.iter().map(|r| {
            let left = if r.status == "pending" {
                format!("{}s", r.expires.saturating_sub(now))
            } else {
                "-".into()
            };
            TableRow::new([
                Cell::from(clean(&r.bottle)),
                Cell::from(r.id.clone()),
                Cell::from(clean(&r.status)),
                Cell::from(left),
                Cell::from(clean(&r.ask)),
                Cell::from(clean(&r.reason)),
            ])
        });
        let title = format!(
            " bottle requests: {} pending ",
            self.rows.iter().filter(|r| r.status == "pending").count()
        );
        let table = Table::new(rows, widths)
            .header(header)
            .block(Block::default().borders(Borders::ALL).title(title))
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
        let mut state =
            TableState::default().with_selected((!self.rows.is_empty()).then_some(self.selected));
        f.render_stateful_widget(table, top, &mut state);
        f.render_widget(Paragraph::new(clean(&self.status)), bottom);
        let dialog = |f: &mut Frame, title: String, body: Vec<Line>| {
            let area = top.inner(ratatui::layout::Margin {
                horizontal: 4,
                vertical: 2,
            });
            let [area] = Layout::vertical([Constraint::Max(8)]).areas(area);
            f.render_widget(Clear, area);
            f.render_widget(
                Paragraph::new(body).block(Block::default().borders(Borders::ALL).title(title)),
                area,
            );
        };
        let ask = self.current().map(|r| clean(&r.ask)).unwrap_or_default();
        match &self.mode {
            Mode::List => {}
            Mode::Approve { scope, note } => dialog(
                f,
                " approve ".into(),
                vec![
                    Line::from(ask),
                    Line::from(format!("scope: {scope}   (Tab: once / session / always)")),
                    Line::from(format!("note: {note}_")),
                    Line::from("Enter approves · Esc cancels"),
                ],
            ),
            Mode::Deny { note } => dialog(
                f,
                " deny ".into(),
                vec![
                    Line::from(ask),
                    Line::from(format!("note: {note}_")),
                    Line::from("Enter denies · Esc cancels"),
                ],
            ),
            Mode::Log { title, lines } => {
                let body: Vec<Line> = if lines.is_empty() {
                    vec![Line::from(
                        "no egress log lines for this host near the request",
                    )]
                } else {
                    lines.iter().map(|l| Line::from(clean(l))).collect()
                };
                f.render_widget(Clear, top);
                f.render_widget(
                    Paragraph::new(body).block(
                        Block::default()
                            .borders(Borders::ALL)
                            .title(format!(" {} (any key returns) ", clean(title))),
                    ),
                    top,
                );
            }
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

/// Seconds since the epoch of an RFC 3339 UTC time such as the audit
/// log's `2026-11-27T01:02:03.456Z`.
fn unix_of(ts: &str) -> Option<u64> {
    let b = ts.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from the civil date (proleptic Gregorian), 1970-01-01 = 0.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// The bottle's audit lines within [`LOG_WINDOW_SECS`] of the request that
/// name its host, rendered like `bottle logs`.
fn log_around(root: &StateRoot, row: &Row) -> Vec<String> {
    let path = root.bottle(&row.bottle).audit_path();
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    // `egress host[:port] [METHODS]`: the host is the second word.
    let host = row
        .ask
        .split_whitespace()
        .nth(1)
        .map(|h| h.rsplit_once(':').map_or(h, |(h, _)| h).to_string())
        .unwrap_or_default();
    let (from, to) = (
        row.created.saturating_sub(LOG_WINDOW_SECS),
        row.created + LOG_WINDOW_SECS,
    );
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["ts"]
                .as_str()
                .and_then(unix_of)
                .is_some_and(|t| t >= from && t <= to)
        })
        .filter(|v| host.is_empty() || v.to_string().contains(&host))
        .map(|v| crate::logview::render(&v))
        .collect()
}

/// Leaves raw mode and the alternate screen when dropped.
struct Screen;

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        crossterm::terminal::enable_raw_mode()?;
        crossterm::execute!(
            std::io::stdout(),
            crossterm::terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        )?;
        Ok(Screen)
    }
}

/// The terminal as it was: cursor shown, main screen, cooked mode.
fn restore() {
    let _ = crossterm::execute!(
        std::io::stdout(),
        crossterm::cursor::Show,
        crossterm::terminal::LeaveAlternateScreen
    );
    let _ = crossterm::terminal::disable_raw_mode();
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Runs the UI until the operator quits.
pub fn run(host: &Host, only: Option<String>) -> Result<(), WatchError> {
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        return Err(WatchError::NotATerminal);
    }
    let mut app = App::new(host.state.clone(), only);
    // A panic's message is printed before unwinding drops the screen: put
    // the terminal back first, so the message lands on the main screen.
    let previous = std::sync::Arc::new(std::panic::take_hook());
    let chained = previous.clone();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        chained(info);
    }));
    let result = ui(host, &mut app);
    let _ = std::panic::take_hook();
    if let Ok(previous) = std::sync::Arc::try_unwrap(previous) {
        std::panic::set_hook(previous);
    }
    result
}

/// The loop of [`run`], with the panic hook in place.
fn ui(host: &Host, app: &mut App) -> Result<(), WatchError> {
    let mut screen = Some(Screen::enter()?);
    let mut terminal =
        ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))?;
    loop {
        let now = requests::now();
        app.refresh(now);
        terminal.draw(|f| app.draw(f, now))?;
        if !crossterm::event::poll(REFRESH)? {
            continue;
        }
        match crossterm::event::read()? {
            Event::Key(key) => match app.on_key(key, requests::now()) {
                Action::None => {}
                Action::Quit => break,
                Action::Edit(id) => {
                    // The editor gets the real terminal.
                    drop(screen.take());
                    let edited = edit_one(host, app, &id);
                    screen = Some(Screen::enter()?);
                    terminal.clear()?;
                    match edited {
                        Ok(e) => app.approve_edited(&id, e, requests::now()),
                        Err(e) => app.status = first_line(&e.to_string()),
                    }
                }
            },
            Event::Resize(_, _) => terminal.autoresize()?,
            _ => {}
        }
    }
    drop(screen);
    Ok(())
}

/// The form of request `id`, edited.
fn edit_one(
    host: &Host,
    app: &App,
    id: &str,
) -> Result<crate::edit::Edited, crate::edit::EditError> {
    let row = app.rows.iter().find(|r| r.id == id);
    let bottle = row.map(|r| r.bottle.clone()).unwrap_or_default();
    let pid = ProposalId::parse(id).map_err(|e| crate::edit::EditError::Form(e.to_string()))?;
    let q = requests::queue_of(&host.state.bottle(&bottle));
    let p = q
        .proposal(&pid)
        .map_err(|e| crate::edit::EditError::Form(e.to_string()))?;
    let form = crate::edit::form(&bottle, &p, Scope::Session, None);
    let text = crate::edit::run_editor(&crate::edit::editor(host), &form)?;
    crate::edit::parse(&p, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bottle_policy::{Ask, Proposal, QueueDir, Text};
    use ratatui::backend::TestBackend;

    fn file(root: &StateRoot, bottle: &str, host: &str, created: u64) -> String {
        let state = root.bottle(bottle);
        state.create().unwrap();
        let q = requests::queue_of(&state);
        q.create().unwrap();
        let p = Proposal {
            id: QueueDir::new_id().unwrap(),
            bottle: bottle.into(),
            created,
            expires: created + 300,
            ask: Ask::egress(host, None, vec![]).unwrap(),
            reason: Text::clean("needs\u{7}it").unwrap_or_else(|| Text::clean("needs it").unwrap()),
        };
        q.file_proposal(&p).unwrap();
        p.id.as_str().to_string()
    }

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    fn keys(app: &mut App, s: &str, now: u64) {
        for c in s.chars() {
            app.on_key(key(KeyCode::Char(c)), now);
        }
    }

    fn screen(app: &App, w: u16, h: u16, now: u64) -> String {
        let mut t = ratatui::Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| app.draw(f, now)).unwrap();
        let buf = t.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..h {
            for x in 0..w {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn approve_with_scope_and_note_deny_and_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let root = StateRoot::at(dir.path().to_path_buf());
        let a = file(&root, "one", "api.example.com", 1000);
        let b = file(&root, "two", "pypi.example.org", 1001);
        let c = file(&root, "two", "cdn.example.net", 1002);
        let mut app = App::new(root.clone(), None);
        app.refresh(1010);
        assert_eq!(app.rows.len(), 3);
        // Esc cancels and writes nothing.
        app.on_key(key(KeyCode::Char('a')), 1010);
        app.on_key(key(KeyCode::Esc), 1010);
        assert_eq!(app.rows[0].status, "pending");
        // a, Tab (session → always), a note, Enter.
        app.on_key(key(KeyCode::Char('a')), 1010);
        app.on_key(key(KeyCode::Tab), 1010);
        keys(&mut app, "ok now", 1010);
        app.on_key(key(KeyCode::Enter), 1010);
        assert!(
            app.status.contains(&format!("approved {a}")),
            "{}",
            app.status
        );
        let q = requests::queue_of(&root.bottle("one"));
        let d = q
            .decision_of(&ProposalId::parse(&a).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(
            (d.scope, d.note.unwrap().as_str()),
            (Scope::Always, "ok now")
        );
        // Pending first: the next one is selected; deny it with a note.
        assert_eq!(app.current().unwrap().id, b);
        app.on_key(key(KeyCode::Char('d')), 1011);
        keys(&mut app, "no", 1011);
        app.on_key(key(KeyCode::Enter), 1011);
        let q = requests::queue_of(&root.bottle("two"));
        let d = q
            .decision_of(&ProposalId::parse(&b).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(d.verdict, bottle_policy::supervise::Verdict::Deny);
        assert_eq!(app.current().unwrap().id, c);
        // Past its expiry: refused, shown, nothing written.
        app.on_key(key(KeyCode::Char('a')), 2000);
        app.on_key(key(KeyCode::Enter), 2000);
        assert!(app.status.starts_with("not approved"), "{}", app.status);
        assert!(q
            .decision_of(&ProposalId::parse(&c).unwrap())
            .unwrap()
            .is_none());
        assert_eq!(app.on_key(key(KeyCode::Char('q')), 2000), Action::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        app.mode = Mode::Deny { note: "x".into() };
        assert_eq!(app.on_key(ctrl_c, 2000), Action::Quit);
    }

    #[test]
    fn what_the_guard_forbids_is_refused_in_the_ui_too() {
        let dir = tempfile::tempdir().unwrap();
        let root = StateRoot::at(dir.path().to_path_buf());
        let id = file(&root, "one", "169.254.169.254", 1000);
        let mut app = App::new(root.clone(), None);
        app.refresh(1010);
        app.on_key(key(KeyCode::Char('a')), 1010);
        app.on_key(key(KeyCode::Enter), 1010);
        assert!(
            app.status.contains("which bottle never opens"),
            "{}",
            app.status
        );
        let q = requests::queue_of(&root.bottle("one"));
        assert!(q
            .decision_of(&ProposalId::parse(&id).unwrap())
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_screen_shows_proposals_at_any_size() {
        let dir = tempfile::tempdir().unwrap();
        let root = StateRoot::at(dir.path().to_path_buf());
        let id = file(&root, "one", "api.example.com", 1000);
        let mut app = App::new(root, None);
        app.refresh(1010);
        for (w, h) in [(120, 20), (70, 10)] {
            let s = screen(&app, w, h, 1010);
            assert!(s.contains(&id), "{w}x{h}:\n{s}");
            assert!(s.contains("1 pending"), "{w}x{h}:\n{s}");
        }
        assert!(screen(&app, 160, 20, 1010).contains("egress api.example.com"));
        app.on_key(key(KeyCode::Char('a')), 1010);
        assert!(screen(&app, 120, 20, 1010).contains("scope: session"));
    }

    #[test]
    fn audit_times_are_read() {
        assert_eq!(unix_of("1970-01-01T00:00:59.999Z"), Some(59));
        assert_eq!(unix_of("2026-11-27T01:02:03.456Z"), Some(1_795_741_323));
        assert_eq!(unix_of("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert!(unix_of("yesterday").is_none());
    }
}
