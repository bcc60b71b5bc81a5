//! The command line of `egress-bench`, validated into a [`Config`] before
//! anything is started: every bound (connections, seconds, requests) is
//! checked here so a run always stops by itself.

use anyhow::{anyhow, bail};
use lexopt::prelude::*;
use std::ffi::OsString;
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

/// The arguments after the program name, read with lexopt: `--name value`
/// or `--name=value`; a repeated flag's last value wins.
pub fn parse<A: Into<OsString>>(args: impl IntoIterator<Item = A>) -> anyhow::Result<Command> {
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
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Long("keep-dir") => config.keep_dir = true,
            Long("concurrency") => {
                config.concurrency = number(&mut parser, "--concurrency", 1, 1024)? as usize;
            }
            Long("warmup") => {
                config.warmup = Duration::from_secs(number(&mut parser, "--warmup", 0, 60)?);
            }
            Long("duration") => {
                config.duration = Duration::from_secs(number(&mut parser, "--duration", 1, 600)?);
            }
            Long("max-requests") => {
                config.max_requests = number(&mut parser, "--max-requests", 1, 50_000_000)?;
            }
            Long("body-bytes") => {
                config.body_bytes = number(&mut parser, "--body-bytes", 0, 1 << 20)? as usize;
            }
            Long("proxy-cpus") => {
                let list = value(&mut parser, "--proxy-cpus")?;
                if list.is_empty()
                    || !list
                        .chars()
                        .all(|c| c.is_ascii_digit() || c == ',' || c == '-')
                {
                    bail!("--proxy-cpus `{list}`: expected a CPU list like `1` or `2-3`");
                }
                config.proxy_cpus = Some(list);
            }
            Long("paths") => {
                let mut paths = Vec::new();
                for p in value(&mut parser, "--paths")?.split(',') {
                    let p = PathKind::parse(p)?;
                    if !paths.contains(&p) {
                        paths.push(p);
                    }
                }
                config.paths = paths;
            }
            Long("sidecar") => config.sidecar = value(&mut parser, "--sidecar")?.into(),
            Long("mitmdump") => config.mitmdump = value(&mut parser, "--mitmdump")?.into(),
            Long(other) => bail!("unknown flag `--{other}`"),
            Short(other) => bail!("unknown flag `-{other}`"),
            Value(other) => bail!("unexpected argument `{}`", other.to_string_lossy()),
        }
    }
    Ok(Command::Run(config))
}

/// The value of `flag`, which the parser just returned.
fn value(parser: &mut lexopt::Parser, flag: &str) -> anyhow::Result<String> {
    let value = parser
        .value()
        .map_err(|_| anyhow!("{flag} needs a value"))?;
    value.into_string().map_err(|v| {
        anyhow!(
            "{flag} `{}` is not UTF-8; use a UTF-8 value",
            v.to_string_lossy()
        )
    })
}

/// The value of `flag` as a whole number from `min` to `max`.
fn number(parser: &mut lexopt::Parser, flag: &str, min: u64, max: u64) -> anyhow::Result<u64> {
    let value = value(parser, flag)?;
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
        assert!(parse(args(&["--duration", "0"])).is_err());
        assert!(parse(args(&["--concurrency=5000"])).is_err());
        assert!(parse(args(&["--paths", "direct,tor"])).is_err());
        let Command::Run(c) = parse(args(&["--paths=direct,egress", "--duration", "3"])).unwrap()
        else {
            panic!("expected a run");
        };
        assert_eq!(c.paths, vec![PathKind::Direct, PathKind::Egress]);
        assert_eq!(c.duration, Duration::from_secs(3));
    }

    #[test]
    fn flags_keep_their_defaults_and_messages() {
        let Command::Run(c) = parse(args(&[])).unwrap() else {
            panic!("expected a run");
        };
        assert_eq!(
            (
                c.concurrency,
                c.warmup,
                c.duration,
                c.max_requests,
                c.body_bytes
            ),
            (
                16,
                Duration::from_secs(2),
                Duration::from_secs(10),
                5_000_000,
                128
            )
        );
        assert!(!c.keep_dir);
        let Command::Run(c) = parse(args(&[
            "--keep-dir",
            "--duration=5",
            "--duration",
            "7",
            "--mitmdump",
            "--not-a-flag",
        ]))
        .unwrap() else {
            panic!("expected a run");
        };
        assert!(c.keep_dir);
        assert_eq!(c.duration, Duration::from_secs(7), "the last one wins");
        assert_eq!(c.mitmdump, PathBuf::from("--not-a-flag"));
        let err = |list: &[&str]| format!("{:#}", parse(args(list)).err().unwrap());
        assert_eq!(err(&["--duration"]), "--duration needs a value");
        assert_eq!(
            err(&["--warmup", "x"]),
            "--warmup `x`: expected a whole number from 0 to 60"
        );
        assert_eq!(err(&["--bogus"]), "unknown flag `--bogus`");
        assert_eq!(err(&["stray"]), "unexpected argument `stray`");
        assert_eq!(err(&["--bogus=1", "-h"]), "unknown flag `--bogus`");
        assert_eq!(
            err(&["--keep-dir=yes"]),
            "unexpected argument for option '--keep-dir': \"yes\""
        );
        assert!(matches!(
            parse(args(&["--paths", "egress", "--help"])),
            Ok(Command::Help)
        ));
    }
}
