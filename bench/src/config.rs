//! The command line of `egress-bench`, validated into a [`Config`] before
//! anything is started: every bound (connections, streams, seconds,
//! requests) is checked here so a run always stops by itself.

use anyhow::{anyhow, bail};
use lexopt::prelude::*;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
usage: egress-bench [flags]

Measures intercepted HTTPS with keep-alive on 127.0.0.1: direct to an
in-process origin, through bottle-sidecar, and through mitmdump, one after
the other in one run, over HTTP/1.1 and over HTTP/2, and prints a markdown
table.

  --concurrency LIST  keep-alive connections per path; a comma-separated
                      list (e.g. 1,4,16,64) measures every path at each
                      count, one row each                      (default 16)
  --h2-streams N      concurrent streams on each connection of the h2
                      paths, at most 32 (the sidecar's default
                      limits.h2_max_streams)                   (default 32)
  --warmup SECS       unrecorded load before measuring         (default 2)
  --duration SECS     measured load per path                   (default 10)
  --max-requests N    stop a path earlier after N measured requests
                                                               (default 5000000)
  --body-bytes N      size of the origin's fixed response body (default 128)
  --upload-bytes N    each request is a POST of N bytes of JSON-like text
                      (default 0: GET without a body)
  --no-dlp            run the sidecar with [dlp] enabled = false (to measure
                      what the DLP search costs)
  --proxy-cpus LIST   start each proxy under `taskset -c LIST`, e.g. to give
                      it cores of its own while this process runs under
                      `taskset -c` on the others (default: no pinning)
  --paths LIST        comma-separated subset of direct,egress,mitmproxy
                      (HTTP/1.1) and direct-h2,egress-h2,mitmproxy-h2
                      (HTTP/2); `h1` and `h2` name each group
                                                               (default all six)
  --sidecar PATH      bottle-sidecar binary (default $BOTTLE_SIDECAR, else
                      $CARGO_TARGET_DIR/release/bottle-sidecar, else the
                      workspace's target/release/bottle-sidecar)
  --mitmdump PATH     mitmdump binary                          (default mitmdump)
  --json PATH         also write every row to PATH as a JSON array of
                      objects (snake_case fields, one per table column)
  --keep-dir          keep the scratch directory (policy, CAs, proxy logs)
";

/// Who sits between the client and the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Client straight to the origin; the baseline.
    Direct,
    /// Through `bottle-sidecar`'s explicit proxy, intercepting TLS.
    Egress,
    /// Through `mitmdump` with an allow-list script, intercepting TLS.
    Mitmproxy,
}

/// The HTTP version the client offers (ALPN) and requires on both legs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http {
    /// HTTP/1.1: one request at a time per keep-alive connection.
    H1,
    /// HTTP/2: `--h2-streams` concurrent streams per connection.
    H2,
}

/// One way to reach the origin: a row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathKind {
    pub via: Via,
    pub http: Http,
}

impl PathKind {
    pub const DIRECT: PathKind = PathKind::new(Via::Direct, Http::H1);
    pub const EGRESS: PathKind = PathKind::new(Via::Egress, Http::H1);
    pub const MITMPROXY: PathKind = PathKind::new(Via::Mitmproxy, Http::H1);
    pub const DIRECT_H2: PathKind = PathKind::new(Via::Direct, Http::H2);
    pub const EGRESS_H2: PathKind = PathKind::new(Via::Egress, Http::H2);
    pub const MITMPROXY_H2: PathKind = PathKind::new(Via::Mitmproxy, Http::H2);
    /// Every path, in the order a default run measures them.
    pub const ALL: [PathKind; 6] = [
        PathKind::DIRECT,
        PathKind::EGRESS,
        PathKind::MITMPROXY,
        PathKind::DIRECT_H2,
        PathKind::EGRESS_H2,
        PathKind::MITMPROXY_H2,
    ];

    pub const fn new(via: Via, http: Http) -> PathKind {
        PathKind { via, http }
    }

    /// The row label; HTTP/1.1 rows keep the names of the issue 3 table.
    pub fn name(self) -> &'static str {
        match (self.via, self.http) {
            (Via::Direct, Http::H1) => "direct",
            (Via::Egress, Http::H1) => "bottle egress",
            (Via::Mitmproxy, Http::H1) => "mitmproxy",
            (Via::Direct, Http::H2) => "direct h2",
            (Via::Egress, Http::H2) => "bottle egress h2",
            (Via::Mitmproxy, Http::H2) => "mitmproxy h2",
        }
    }

    /// The paths one `--paths` entry names.
    fn parse(s: &str) -> anyhow::Result<Vec<Self>> {
        let group = |http| PathKind::ALL.into_iter().filter(move |p| p.http == http);
        Ok(match s.trim() {
            "direct" => vec![PathKind::DIRECT],
            "egress" => vec![PathKind::EGRESS],
            "mitmproxy" | "mitmdump" => vec![PathKind::MITMPROXY],
            "direct-h2" => vec![PathKind::DIRECT_H2],
            "egress-h2" => vec![PathKind::EGRESS_H2],
            "mitmproxy-h2" | "mitmdump-h2" => vec![PathKind::MITMPROXY_H2],
            "h1" => group(Http::H1).collect(),
            "h2" => group(Http::H2).collect(),
            other => bail!(
                "--paths: unknown path `{other}` (use direct, egress, mitmproxy, direct-h2, egress-h2, mitmproxy-h2, h1 or h2)"
            ),
        })
    }
}

/// Everything a run needs, already validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Keep-alive connections per path: each path is measured once per
    /// entry, in this order (a sweep when there are several).
    pub concurrency: Vec<usize>,
    /// Concurrent streams per connection on the HTTP/2 paths.
    pub h2_streams: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub max_requests: u64,
    pub body_bytes: usize,
    /// Bytes each request uploads (0: a GET).
    pub upload_bytes: usize,
    /// The sidecar runs with `dlp.enabled = false`.
    pub no_dlp: bool,
    pub proxy_cpus: Option<String>,
    pub paths: Vec<PathKind>,
    pub sidecar: PathBuf,
    pub mitmdump: PathBuf,
    pub keep_dir: bool,
    /// Where to write the rows as JSON, besides the table.
    pub json: Option<PathBuf>,
}

/// What `main` should do.
pub enum Command {
    Run(Box<Config>),
    Help,
}

/// The arguments after the program name, read with lexopt: `--name value`
/// or `--name=value`; a repeated flag's last value wins.
pub fn parse<A: Into<OsString>>(args: impl IntoIterator<Item = A>) -> anyhow::Result<Command> {
    let mut config = Config {
        concurrency: vec![16],
        h2_streams: 32,
        warmup: Duration::from_secs(2),
        duration: Duration::from_secs(10),
        max_requests: 5_000_000,
        body_bytes: 128,
        upload_bytes: 0,
        no_dlp: false,
        proxy_cpus: None,
        paths: PathKind::ALL.to_vec(),
        sidecar: default_sidecar(),
        mitmdump: "mitmdump".into(),
        keep_dir: false,
        json: None,
    };
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Long("keep-dir") => config.keep_dir = true,
            Long("concurrency") => {
                config.concurrency = concurrency_list(&value(&mut parser, "--concurrency")?)?;
            }
            Long("h2-streams") => {
                config.h2_streams = number(&mut parser, "--h2-streams", 1, 32)? as usize;
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
            Long("upload-bytes") => {
                config.upload_bytes = number(&mut parser, "--upload-bytes", 0, 1 << 20)? as usize;
            }
            Long("no-dlp") => config.no_dlp = true,
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
                    for p in PathKind::parse(p)? {
                        if !paths.contains(&p) {
                            paths.push(p);
                        }
                    }
                }
                config.paths = paths;
            }
            Long("sidecar") => config.sidecar = value(&mut parser, "--sidecar")?.into(),
            Long("mitmdump") => config.mitmdump = value(&mut parser, "--mitmdump")?.into(),
            Long("json") => config.json = Some(value(&mut parser, "--json")?.into()),
            Long(other) => bail!("unknown flag `--{other}`"),
            Short(other) => bail!("unknown flag `-{other}`"),
            Value(other) => bail!("unexpected argument `{}`", other.to_string_lossy()),
        }
    }
    Ok(Command::Run(Box::new(config)))
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
    bounded(flag, &value, min, max)
}

/// `value` as a whole number from `min` to `max`.
fn bounded(flag: &str, value: &str, min: u64, max: u64) -> anyhow::Result<u64> {
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => bail!("{flag} `{value}`: expected a whole number from {min} to {max}"),
    }
}

/// Most connections one `--concurrency` entry may ask for.
const MAX_CONCURRENCY: u64 = 1024;
/// Most entries in a `--concurrency` list: every entry is a full pass over
/// the paths, so a long list is a long run.
const MAX_SWEEP: usize = 8;

/// A `--concurrency` list: `16` or `1,4,16,64`, each entry 1 to 1024, no
/// repeats, at most 8 entries, measured in the order given.
fn concurrency_list(list: &str) -> anyhow::Result<Vec<usize>> {
    let mut counts = Vec::new();
    for entry in list.split(',') {
        let n = bounded("--concurrency", entry.trim(), 1, MAX_CONCURRENCY)? as usize;
        if counts.contains(&n) {
            bail!("--concurrency `{list}`: {n} is listed twice; give each count once");
        }
        counts.push(n);
    }
    if counts.len() > MAX_SWEEP {
        bail!(
            "--concurrency `{list}`: {} counts, at most {MAX_SWEEP}; split the sweep into several runs",
            counts.len()
        );
    }
    Ok(counts)
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
        assert_eq!(c.paths, vec![PathKind::DIRECT, PathKind::EGRESS]);
        assert_eq!(c.duration, Duration::from_secs(3));
    }

    #[test]
    fn flags_keep_their_defaults_and_messages() {
        let Command::Run(c) = parse(args(&[])).unwrap() else {
            panic!("expected a run");
        };
        assert_eq!(
            (
                c.concurrency.clone(),
                c.warmup,
                c.duration,
                c.max_requests,
                c.body_bytes
            ),
            (
                vec![16],
                Duration::from_secs(2),
                Duration::from_secs(10),
                5_000_000,
                128
            )
        );
        assert!(!c.keep_dir);
        assert_eq!(c.json, None);
        assert_eq!(c.h2_streams, 32);
        assert_eq!(c.paths, PathKind::ALL.to_vec(), "every path, h1 then h2");
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

    #[test]
    fn h2_paths_and_streams_parse() {
        let run = |list: &[&str]| match parse(args(list)).unwrap() {
            Command::Run(c) => c,
            Command::Help => panic!("expected a run"),
        };
        let c = run(&["--paths", "h2"]);
        assert_eq!(
            c.paths,
            vec![
                PathKind::DIRECT_H2,
                PathKind::EGRESS_H2,
                PathKind::MITMPROXY_H2
            ]
        );
        let c = run(&["--paths=egress-h2,direct,h1,egress-h2", "--h2-streams=32"]);
        assert_eq!(
            c.paths,
            vec![
                PathKind::EGRESS_H2,
                PathKind::DIRECT,
                PathKind::EGRESS,
                PathKind::MITMPROXY
            ],
            "groups expand in place, repeats are dropped"
        );
        assert_eq!(c.h2_streams, 32);
        let names: Vec<&str> = PathKind::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(
            names,
            [
                "direct",
                "bottle egress",
                "mitmproxy",
                "direct h2",
                "bottle egress h2",
                "mitmproxy h2"
            ]
        );
        let err = |list: &[&str]| format!("{:#}", parse(args(list)).err().unwrap());
        assert_eq!(
            err(&["--h2-streams", "0"]),
            "--h2-streams `0`: expected a whole number from 1 to 32"
        );
        assert_eq!(
            err(&["--h2-streams", "33"]),
            "--h2-streams `33`: expected a whole number from 1 to 32"
        );
        assert!(err(&["--paths", "h3"]).starts_with("--paths: unknown path `h3`"));
    }

    #[test]
    fn concurrency_takes_a_list_and_json_a_path() {
        let run = |list: &[&str]| match parse(args(list)).unwrap() {
            Command::Run(c) => c,
            Command::Help => panic!("expected a run"),
        };
        let c = run(&["--concurrency", "1,4,16,64", "--json", "/tmp/rows.json"]);
        assert_eq!(c.concurrency, vec![1, 4, 16, 64]);
        assert_eq!(c.json, Some(PathBuf::from("/tmp/rows.json")));
        assert_eq!(run(&["--concurrency=64, 1"]).concurrency, vec![64, 1]);
        assert_eq!(run(&["--concurrency", "8"]).concurrency, vec![8]);
        let err = |list: &[&str]| format!("{:#}", parse(args(list)).err().unwrap());
        assert_eq!(
            err(&["--concurrency", "1,0"]),
            "--concurrency `0`: expected a whole number from 1 to 1024"
        );
        assert_eq!(
            err(&["--concurrency", "1,,4"]),
            "--concurrency ``: expected a whole number from 1 to 1024"
        );
        assert_eq!(
            err(&["--concurrency", "4,1,4"]),
            "--concurrency `4,1,4`: 4 is listed twice; give each count once"
        );
        assert_eq!(
            err(&["--concurrency", "1,2,3,4,5,6,7,8,9"]),
            "--concurrency `1,2,3,4,5,6,7,8,9`: 9 counts, at most 8; split the sweep into several runs"
        );
        assert_eq!(err(&["--json"]), "--json needs a value");
    }
}
