//! Progress output for long verbs: numbered steps and indented details on
//! stderr, so stdout stays clean for `--json` and for command output.

use std::io::Write;

/// Writes progress lines to stderr unless quiet.
pub struct Reporter {
    quiet: bool,
    step: usize,
}

impl Reporter {
    pub fn new(quiet: bool) -> Self {
        Reporter { quiet, step: 0 }
    }

    pub fn step(&mut self, what: &str) {
        self.step += 1;
        if !self.quiet {
            let _ = writeln!(std::io::stderr(), "[{}] {what}", self.step);
        }
    }

    pub fn detail(&mut self, what: &str) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr(), "    {what}");
        }
    }

    /// A sink for build output lines.
    pub fn progress(&self) -> impl FnMut(&str) + Send + 'static {
        let quiet = self.quiet;
        move |line: &str| {
            if !quiet {
                let _ = writeln!(std::io::stderr(), "    | {line}");
            }
        }
    }
}
