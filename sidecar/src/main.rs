//! The `bottle-sidecar` binary: parses arguments, runs one subcommand on one
//! tokio runtime, maps the result to an exit code. Everything else is in the
//! library.

#![forbid(unsafe_code)]

use anyhow::{bail, Context as _};
use bottle_sidecar::log::{FileSink, LineSink, Logger, RateLimit, StdoutSink};
use bottle_sidecar::{
    health, netinfo, RunConfig, DEFAULT_DNS_LISTEN, DEFAULT_HTTPS_LISTEN, DEFAULT_HTTP_LISTEN,
    DEFAULT_PROXY_LISTEN,
};
use serde_json::json;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

const USAGE: &str = "\
usage:
  bottle-sidecar run --policy PATH [--audit PATH] [--dns-answer IPV4]
                     [--proxy-listen ADDR] [--dns-listen ADDR]
                     [--http-listen ADDR] [--https-listen ADDR]
      ca.pem, ca-key.pem (required), secrets.json and upstream-roots.pem
      (optional) are read from the policy file's directory.
      --audit       decisions as JSON lines appended here (default: stdout)
      --dns-answer  the address allowed names resolve to (required with DNS on);
                    a subnet (a.b.c.0/24) means our own address inside it
      listen ADDRs are ip:port, or `off`; defaults 0.0.0.0:3128, 0.0.0.0:53,
      0.0.0.0:80, 0.0.0.0:443
  bottle-sidecar health [--addr ADDR]                      (default ADDR 127.0.0.1:3128)
  bottle-sidecar netinfo
";

/// Exit code for a command line that could not be understood.
const EXIT_USAGE: u8 = 2;

enum Command {
    Run(Box<RunConfig>, Option<PathBuf>),
    Health(SocketAddr),
    NetInfo,
    Help,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bottle-sidecar: {e:#}\n{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match command {
        Command::Help => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Run(config, audit) => run(*config, audit),
        Command::Health(addr) => health(addr),
        Command::NetInfo => netinfo(),
    }
}

fn parse(args: &[String]) -> anyhow::Result<Command> {
    let Some((sub, rest)) = args.split_first() else {
        bail!("missing subcommand");
    };
    if rest.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Command::Help);
    }
    let mut flags = Flags::new(rest)?;
    let command = match sub.as_str() {
        "run" => {
            let policy_path: PathBuf = flags
                .take("--policy")
                .context("`run` needs --policy PATH (the rendered policy JSON)")?
                .into();
            let mut config = RunConfig::new(policy_path);
            config.proxy_listen = listen_flag(&mut flags, "--proxy-listen", DEFAULT_PROXY_LISTEN)?;
            config.dns_listen = listen_flag(&mut flags, "--dns-listen", DEFAULT_DNS_LISTEN)?;
            config.http_listen = listen_flag(&mut flags, "--http-listen", DEFAULT_HTTP_LISTEN)?;
            config.https_listen = listen_flag(&mut flags, "--https-listen", DEFAULT_HTTPS_LISTEN)?;
            if let Some(ip) = flags.take("--dns-answer") {
                config.dns_answer = Some(match ip.split_once('/') {
                    // A subnet: runtimes that assign addresses at start cannot
                    // name ours beforehand; use our own address inside it.
                    Some(_) => bottle_sidecar::netinfo::own_address_in(&ip)
                        .with_context(|| format!("--dns-answer `{ip}`"))?,
                    None => ip.parse::<Ipv4Addr>().with_context(|| {
                        format!("--dns-answer `{ip}` is not an IPv4 address or subnet")
                    })?,
                });
            }
            if config.dns_listen.is_some() && config.dns_answer.is_none() {
                bail!("`run` needs --dns-answer IPV4 while DNS is on (or --dns-listen off)");
            }
            let audit = flags.take("--audit").map(PathBuf::from);
            Command::Run(Box::new(config), audit)
        }
        "health" => {
            let addr = flags
                .take("--addr")
                .unwrap_or_else(|| health::DEFAULT_HEALTH_ADDR.into());
            Command::Health(
                addr.parse()
                    .with_context(|| format!("--addr `{addr}` is not an ip:port"))?,
            )
        }
        "netinfo" => Command::NetInfo,
        "help" | "--help" | "-h" => Command::Help,
        other => bail!("unknown subcommand `{other}`"),
    };
    flags.finish()?;
    Ok(command)
}

/// A listen address flag: `ip:port`, or `off`.
fn listen_flag(flags: &mut Flags, name: &str, default: &str) -> anyhow::Result<Option<SocketAddr>> {
    let value = flags.take(name).unwrap_or_else(|| default.into());
    if value == "off" {
        return Ok(None);
    }
    let addr = value
        .parse()
        .with_context(|| format!("{name} `{value}` is not an ip:port (or `off`)"))?;
    Ok(Some(addr))
}

/// `--name value` / `--name=value` pairs; each flag at most once.
struct Flags(Vec<(String, String)>);

impl Flags {
    fn new(args: &[String]) -> anyhow::Result<Self> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if !arg.starts_with("--") {
                bail!("unexpected argument `{arg}`");
            }
            let (name, value) = match arg.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => {
                    let v = it.next().with_context(|| format!("{arg} needs a value"))?;
                    (arg.clone(), v.clone())
                }
            };
            if out.iter().any(|(n, _)| *n == name) {
                bail!("{name} given more than once");
            }
            out.push((name, value));
        }
        Ok(Flags(out))
    }

    fn take(&mut self, name: &str) -> Option<String> {
        let i = self.0.iter().position(|(n, _)| n == name)?;
        Some(self.0.remove(i).1)
    }

    fn finish(self) -> anyhow::Result<()> {
        match self.0.first() {
            Some((name, _)) => bail!("unknown flag {name}"),
            None => Ok(()),
        }
    }
}

/// The one runtime `run` serves on.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(config: RunConfig, audit: Option<PathBuf>) -> ExitCode {
    let events: Arc<dyn LineSink> = Arc::new(StdoutSink);
    let audit_sink: Arc<dyn LineSink> = match &audit {
        None => events.clone(),
        Some(path) => match FileSink::append(path) {
            Ok(sink) => Arc::new(sink),
            Err(e) => {
                let logger = Logger::new(events.clone(), events, RateLimit::default());
                logger.event("fatal", json!({"error": e.to_string()}));
                eprintln!("bottle-sidecar: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let logger = Logger::new(events, audit_sink, RateLimit::default());
    let result = runtime().and_then(|rt| {
        let served = rt.block_on(async {
            let shutdown = bottle_sidecar::shutdown_signal(logger.clone())
                .context("cannot install SIGTERM/SIGINT handlers")?;
            bottle_sidecar::run(&config, logger.clone(), shutdown)
                .await
                .map_err(anyhow::Error::from)
        });
        // Tunnels and pending lookups must not hold PID 1 up after a signal.
        rt.shutdown_timeout(Duration::from_millis(500));
        served
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logger.event("fatal", json!({"error": format!("{e:#}")}));
            eprintln!("bottle-sidecar: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn health(addr: SocketAddr) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime");
    let result = rt.and_then(|rt| {
        rt.block_on(health::check(addr, health::HEALTH_TIMEOUT))
            .map_err(anyhow::Error::from)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bottle-sidecar health: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn netinfo() -> ExitCode {
    let result = netinfo::collect()
        .map_err(anyhow::Error::from)
        .and_then(|info| serde_json::to_string(&info).context("cannot encode netinfo"));
    match result {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bottle-sidecar netinfo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
