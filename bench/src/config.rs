//! The command line of `egress-bench`, validated into a [`Config`] before
//! anything is started: every bound (connections, seconds, requests) is
//! checked here so a run always stops by itself.

use anyhow::{bail, Context as _};
use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
usage: egress-bench [flags]

Measures intercepted HTTPS with keep-alive on 127.0.0.1: direct to an
in-process origin, through bottle-sidecar, and through mitmdump, one after
the other in one run, and prints a markdown table.

  --concurrency N     keep-alive connections per path         (default 16)
  --warmup SECS       unrecorded load before measuring         (default 2)
  --duration SECS     measured load per path                   (default 10)
  --max-requests N    stop a path earlier after N measured requests
                                                               (default 5000000)
  --body-bytes N      size of the origin's fixed response body (default 128)
  --proxy-cpus LIST   start each proxy under `taskset -c LIST`, e.g. to give
                      it cores of its own while this process runs under
                      `taskset -c` on the others (default: no pinning)
  --paths LIST        comma-separated subset of direct,egress,mitmproxy
                                                               (default all three)
  --sidecar PATH      bottle-sidecar binary (default $BOTTLE_SIDECAR, else
                      $CARGO_TARGET_DIR/release/bottle-sidecar, else the
                      workspace's target/release/bottle-sidecar)
  --mitmdump PATH     mitmdump binary                          (default mitmdump)
  --keep-dir          keep the scratch directory (policy, CAs, proxy logs)
";

/// One way to reach the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Client straight to the origin; the baseline.
    Direct,
    /// Through `bottle-sidecar`'s explicit proxy, intercepting TLS.
    Egress,
    /// Through `mitmdump` with an allow-list script, intercepting TLS.
    Mitmproxy,
}

impl PathKind {
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Egress => "bottle egress",
            PathKind::Mitmproxy => "mitmproxy",
        }
    }

    fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s.trim() {
            "direct" => PathKind::Direct,
            "egress" => PathKind::Egress,
            "mitmproxy" | "mitmdump" => PathKind::Mitmproxy,
            other => bail!("--paths: unknown path `{other}` (use direct, egress, mitmproxy)"),
        })
    }
}

/// Everything a run needs, already validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub max_requests: u64,
    pub body_bytes: usize,
    pub proxy_cpus: Option<String>,
    pub paths: Vec<PathKind>,
    pub sidecar: PathBuf,
    pub mitmdump: PathBuf,
    pub keep_dir: bool,
}

/// What `main` should do.
pub enum Command {
    Run(Config),
    Help,
}

pub fn parse(args: &[String]) -> anyhow::Result<Command> {
    let mut config = Config {
        concurrency: 16,
        warmup: Duration::from_secs(2),
        duration: Duration::from_secs(10),
        max_requests: 5_000_000,
        body_bytes: 128,
        proxy_cpus: None,
        paths: vec![PathKind::Direct, PathKind::Egress, PathKind::Mitmproxy],
        sidecar: default_sidecar(),
        mitmdump: "mitmdump".into(),
        keep_dir: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        if name == "--help" || name == "-h" {
            return Ok(Command::Help);
        }
        if name == "--keep-dir" {
            config.keep_dir = true;
            continue;
        }
        let mut value = || -> anyhow::Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .with_context(|| format!("{name} needs a value")),
            }
        };
        match name {
            "--concurrency" => config.concurrency = number(name, &value()?, 1, 1024)? as usize,
            "--warmup" => config.warmup = Duration::from_secs(number(name, &value()?, 0, 60)?),
            "--duration" => config.duration = Duration::from_secs(number(name, &value()?, 1, 600)?),
            "--max-requests" => config.max_requests = number(name, &value()?, 1, 50_000_000)?,
            "--body-bytes" => config.body_bytes = number(name, &value()?, 0, 1 << 20)? as usize,
            "--proxy-cpus" => {
                let list = value()?;
                if list.is_empty()
                    || !list
                        .chars()
                        .all(|c| c.is_ascii_digit() || c == ',' || c == '-')
                {
                    bail!("--proxy-cpus `{list}`: expected a CPU list like `1` or `2-3`");
                }
                config.proxy_cpus = Some(list);
            }
            "--paths" => {
                let mut paths = Vec::new();
                for p in value()?.split(',') {
                    let p = PathKind::parse(p)?;
                    if !paths.contains(&p) {
                        paths.push(p);
                    }
                }
                config.paths = paths;
            }
            "--sidecar" => config.sidecar = value()?.into(),
            "--mitmdump" => config.mitmdump = value()?.into(),
            other => bail!("unknown flag `{other}`"),
        }
    }
    Ok(Command::Run(config))
}

fn number(flag: &str, value: &str, min: u64, max: u64) -> anyhow::Result<u64> {
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => bail!("{flag} `{value}`: expected a whole number from {min} to {max}"),
    }
}

/// `$BOTTLE_SIDECAR`, else the release binary in `$CARGO_TARGET_DIR`, else in
/// the workspace's own `target/`.
fn default_sidecar() -> PathBuf {
    if let Some(p) = std::env::var_os("BOTTLE_SIDECAR") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    target.join("release").join("bottle-sidecar")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn flags_are_bounded() {
        assert!(parse(&args(&["--duration", "0"])).is_err());
        assert!(parse(&args(&["--concurrency=5000"])).is_err());
        assert!(parse(&args(&["--paths", "direct,tor"])).is_err());
        let Command::Run(c) = parse(&args(&["--paths=direct,egress", "--duration", "3"])).unwrap()
        else {
            panic!("expected a run");
        };
        assert_eq!(c.paths, vec![PathKind::Direct, PathKind::Egress]);
        assert_eq!(c.duration, Duration::from_secs(3));
    }
}
