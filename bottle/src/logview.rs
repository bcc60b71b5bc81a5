//! Turns the sidecar's JSON log lines into what `bottle logs` shows: raw JSON
//! lines with `--json`, one readable line per event otherwise, filtered to a
//! service when asked.

use std::io::Write;

/// A writer that buffers partial lines and re-renders complete ones.
pub struct LogSink<W: Write> {
    filter: Option<&'static str>,
    json: bool,
    out: W,
    partial: Vec<u8>,
}

impl<W: Write> LogSink<W> {
    pub fn new(filter: Option<&'static str>, json: bool, out: W) -> Self {
        LogSink {
            filter,
            json,
            out,
            partial: Vec::new(),
        }
    }

    fn line(&mut self, line: &str) -> std::io::Result<()> {
        let parsed: Option<serde_json::Value> = serde_json::from_str(line).ok();
        if let Some(service) = self.filter {
            match &parsed {
                Some(v) if v["service"] == service => {}
                _ => return Ok(()),
            }
        }
        match (&parsed, self.json) {
            (Some(_), true) | (None, _) => writeln!(self.out, "{line}"),
            (Some(v), false) => writeln!(self.out, "{}", render(v)),
        }
    }

    /// Flushes a last line without a newline.
    pub fn finish(mut self) {
        if !self.partial.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned();
            let _ = self.line(&rest);
        }
        let _ = self.out.flush();
    }
}

/// One readable line for a JSON event.
pub fn render(v: &serde_json::Value) -> String {
    let s = |k: &str| match &v[k] {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if v["decision"].is_string() {
        format!(
            "{} {:<5} {} {} {}:{}{} rule={} status={}",
            s("ts"),
            s("decision").to_uppercase(),
            s("client"),
            s("method"),
            s("host"),
            s("port"),
            s("path"),
            s("rule"),
            s("status")
        )
    } else {
        let mut rest = v.clone();
        if let Some(o) = rest.as_object_mut() {
            for k in ["ts", "service", "event"] {
                o.remove(k);
            }
        }
        format!("{} {} {} {}", s("ts"), s("service"), s("event"), rest)
    }
}

impl<W: Write> Write for LogSink<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.partial.extend_from_slice(buf);
        while let Some(pos) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            self.line(&text)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Copies `path` to `sink` (the last `tail` lines when given) and, with
/// `follow`, keeps copying what is appended until interrupted. A missing file
/// is an empty log.
pub async fn follow_file(
    path: &std::path::Path,
    follow: bool,
    tail: Option<usize>,
    sink: &mut (dyn Write + Send),
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let text = match tokio::fs::read(path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !follow => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut start = 0;
    if let Some(n) = tail {
        let newlines: Vec<usize> = text
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i)
            .collect();
        if newlines.len() > n {
            start = newlines[newlines.len() - n - 1] + 1;
        }
    }
    sink.write_all(&text[start..])?;
    if !follow {
        return Ok(());
    }
    let mut offset = text.len() as u64;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let Ok(mut f) = tokio::fs::File::open(path).await else {
            continue;
        };
        let len = f.metadata().await?.len();
        if len < offset {
            offset = 0; // truncated or replaced
        }
        if len > offset {
            f.seek(std::io::SeekFrom::Start(offset)).await?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).await?;
            offset += buf.len() as u64;
            sink.write_all(&buf)?;
            sink.flush()?;
        }
    }
}
