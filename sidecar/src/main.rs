//! The `bottle-sidecar` binary: parses arguments, runs one subcommand on one
//! tokio runtime, maps the result to an exit code. Everything else is in the
//! library.

#![forbid(unsafe_code)]

use anyhow::{anyhow, bail, Context as _};
use bottle_sidecar::log::{FileSink, LineSink, Logger, RateLimit, StdoutSink};
use bottle_sidecar::{
    health, netinfo, RunConfig, Sidecar, DNS_PORT, HTTPS_PORT, HTTP_PORT, PROXY_PORT,
};
use lexopt::Arg;
use serde_json::json;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

const USAGE: &str = "\
usage:
  bottle-sidecar run --policy PATH [--audit PATH] [--dns-answer IPV4|SUBNET]
                     [--proxy-listen ADDR] [--dns-listen ADDR]
                     [--http-listen ADDR] [--https-listen ADDR]
                     [--health-file PATH] [--ready-file PATH]
                     [--git-listen ADDR] [--git-state DIR]
                     [--supervise-state DIR] [--supervise-listen ADDR]
      ca.pem, ca-key.pem (required), secrets.json and upstream-roots.pem
      (optional) are read from the policy file's directory.
      --audit       decisions as JSON lines appended here (default: stdout);
                    rotated to PATH.1 past the policy's limits.audit_max_bytes
      --dns-answer  the sidecar's internal address: allowed names resolve to
                    it, and every listener binds to it (and only it) unless
                    given its own ADDR; a subnet (a.b.c.0/24) means our own
                    address inside it. Required unless every listener has an
                    ADDR and DNS is off.
      listen ADDRs are ip:port, or `off`; defaults <internal>:3128,
      <internal>:53 (udp+tcp), <internal>:80, <internal>:443. Nothing listens
      on 0.0.0.0 or the egress side unless asked to here.
      --git-listen  the git gate (default <internal>:8080, or `off`); it
                    listens only when the policy has [[git.remote]] entries
      --git-state   the git gate's mirrors (default /var/lib/bottle/git)
      --health-file where the proxy's bound address is recorded for `health`
                    (default /tmp/bottle-sidecar.proxy-addr), or `off`
      --ready-file  also recorded here once every listener is bound (bottle
                    up watches it from the host instead of polling `health`)
      --supervise-state DIR  the supervise queue (proposals/, decisions/,
                    grants.json; the host mounts it at /var/lib/bottle/supervise);
                    without it the supervise service is off
      --supervise-listen ADDR  the MCP server (default <internal>:8765), bound
                    only while the policy has supervise.enabled
  bottle-sidecar health [--addr ADDR | --file PATH]
      succeeds when the proxy accepts a TCP connection at ADDR, or at the
      address `run` recorded in PATH (default /tmp/bottle-sidecar.proxy-addr)
  bottle-sidecar netinfo
  bottle-sidecar --version
      the version and the platform it was built for (e.g. x86_64-linux-musl)
";

/// What `health` probes.
#[derive(Debug, PartialEq, Eq)]
enum HealthTarget {
    Addr(SocketAddr),
    /// The address `run` recorded in this file.
    File(PathBuf),
}

/// Exit code for a command line that could not be understood.
const EXIT_USAGE: u8 = 2;

#[derive(Debug)]
enum Command {
    /// The config, the audit file, the health file, the ready file.
    Run(
        Box<RunConfig>,
        Option<PathBuf>,
        Option<PathBuf>,
        Option<PathBuf>,
    ),
    Health(HealthTarget),
    NetInfo,
    Help,
    Version,
}

fn main() -> ExitCode {
    let command = match parse(std::env::args_os().skip(1)) {
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
        Command::Run(config, audit, health_file, ready_file) => {
            run(*config, audit, health_file, ready_file)
        }
        Command::Health(target) => health(target),
        Command::NetInfo => netinfo(),
        Command::Version => {
            println!("{}", version());
            ExitCode::SUCCESS
        }
    }
}

/// `bottle-sidecar 0.1.0 aarch64-linux-musl`: what CI runs under qemu to
/// show a cross-built binary starts, and what tells a static build (`musl`)
/// from a host one.
fn version() -> String {
    let env = if cfg!(target_env = "musl") {
        "-musl"
    } else if cfg!(target_env = "gnu") {
        "-gnu"
    } else {
        ""
    };
    format!(
        "bottle-sidecar {} {}-{}{env}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS
    )
}

/// The flags `run` takes, each with a value.
const RUN_FLAGS: [&str; 13] = [
    "policy",
    "audit",
    "dns-answer",
    "proxy-listen",
    "dns-listen",
    "http-listen",
    "https-listen",
    "health-file",
    "ready-file",
    "git-listen",
    "git-state",
    "supervise-state",
    "supervise-listen",
];

/// The arguments after the program name: a subcommand, then its flags.
fn parse<A: Into<OsString>>(args: impl IntoIterator<Item = A>) -> anyhow::Result<Command> {
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let Some((sub, rest)) = args.split_first() else {
        bail!("missing subcommand");
    };
    if rest.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Command::Help);
    }
    let sub = sub.to_string_lossy();
    if sub == "--version" || sub == "version" {
        if let Some(extra) = rest.first() {
            bail!("unexpected argument `{}`", extra.to_string_lossy());
        }
        return Ok(Command::Version);
    }
    let takes: &[&'static str] = match &*sub {
        "run" => &RUN_FLAGS,
        "health" => &["addr", "file"],
        "netinfo" | "help" | "--help" | "-h" => &[],
        other => bail!("unknown subcommand `{other}`"),
    };
    let mut flags = Flags::parse(rest, takes)?;
    Ok(match &*sub {
        "run" => {
            let policy_path: PathBuf = flags
                .take("policy")
                .context("`run` needs --policy PATH (the rendered policy JSON)")?
                .into();
            let mut config = RunConfig::new(policy_path);
            if let Some(ip) = flags.take("dns-answer") {
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
            let internal = config.dns_answer;
            config.proxy_listen = listen_flag(&mut flags, "proxy-listen", internal, PROXY_PORT)?;
            config.dns_listen = listen_flag(&mut flags, "dns-listen", internal, DNS_PORT)?;
            config.http_listen = listen_flag(&mut flags, "http-listen", internal, HTTP_PORT)?;
            config.https_listen = listen_flag(&mut flags, "https-listen", internal, HTTPS_PORT)?;
            // Without an internal address the gate is off unless given its
            // own ADDR (it serves nothing without [[git.remote]] anyway).
            config.git_listen = if internal.is_none() && !flags.0.contains_key("git-listen") {
                None
            } else {
                listen_flag(
                    &mut flags,
                    "git-listen",
                    internal,
                    bottle_sidecar::gitgate::GIT_PORT,
                )?
            };
            if let Some(dir) = flags.take("git-state") {
                config.git_state = PathBuf::from(dir);
            }
            if config.dns_listen.is_some() && config.dns_answer.is_none() {
                bail!("`run` needs --dns-answer IPV4 while DNS is on (or --dns-listen off)");
            }
            config.supervise_state = flags.take("supervise-state").map(PathBuf::from);
            let supervise_listen = listen_flag(
                &mut flags,
                "supervise-listen",
                internal,
                bottle_sidecar::supervise::SUPERVISE_PORT,
            );
            config.supervise_listen = match &config.supervise_state {
                Some(_) => supervise_listen?,
                None => None,
            };
            let audit = flags.take("audit").map(PathBuf::from);
            let health_file = match flags.take("health-file") {
                Some(off) if off == "off" => None,
                Some(path) => Some(PathBuf::from(path)),
                None => Some(PathBuf::from(health::DEFAULT_HEALTH_FILE)),
            };
            let ready_file = flags.take("ready-file").map(PathBuf::from);
            Command::Run(Box::new(config), audit, health_file, ready_file)
        }
        "health" => {
            let target = match (flags.take("addr"), flags.take("file")) {
                (Some(_), Some(_)) => bail!("`health` takes --addr or --file, not both"),
                (Some(addr), None) => HealthTarget::Addr(
                    addr.parse()
                        .with_context(|| format!("--addr `{addr}` is not an ip:port"))?,
                ),
                (None, file) => HealthTarget::File(
                    file.unwrap_or_else(|| health::DEFAULT_HEALTH_FILE.into())
                        .into(),
                ),
            };
            Command::Health(target)
        }
        "netinfo" => Command::NetInfo,
        _ => Command::Help,
    })
}

/// A listen address flag: `ip:port`, or `off`; without the flag, `port` on
/// the internal address (never the unspecified address).
fn listen_flag(
    flags: &mut Flags,
    name: &str,
    internal: Option<Ipv4Addr>,
    port: u16,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(value) = flags.take(name) else {
        let ip = internal.with_context(|| {
            format!("`run` needs --dns-answer (the internal address every listener binds to) or --{name} ADDR")
        })?;
        return Ok(Some(SocketAddr::new(ip.into(), port)));
    };
    if value == "off" {
        return Ok(None);
    }
    let addr = value
        .parse()
        .with_context(|| format!("--{name} `{value}` is not an ip:port (or `off`)"))?;
    Ok(Some(addr))
}

/// A subcommand's flags by name (without `--`), read with lexopt: `--name
/// value` or `--name=value`, each flag one the subcommand takes, each at
/// most once, every value UTF-8.
struct Flags(BTreeMap<&'static str, String>);

impl Flags {
    fn parse(args: &[OsString], takes: &[&'static str]) -> anyhow::Result<Self> {
        let mut parser = lexopt::Parser::from_args(args.iter().cloned());
        let mut given = BTreeMap::new();
        while let Some(arg) = parser.next()? {
            let name = match arg {
                Arg::Long(name) => match takes.iter().find(|t| **t == name) {
                    Some(known) => *known,
                    None => bail!("unknown flag --{name}"),
                },
                Arg::Short(c) => bail!("unknown flag -{c}"),
                Arg::Value(v) => bail!("unexpected argument `{}`", v.to_string_lossy()),
            };
            let value = match parser.value() {
                Ok(v) => v.into_string().map_err(|v| {
                    anyhow!(
                        "--{name} `{}` is not UTF-8; use a UTF-8 value",
                        v.to_string_lossy()
                    )
                })?,
                Err(_) => bail!("--{name} needs a value"),
            };
            if given.insert(name, value).is_some() {
                bail!("--{name} given more than once");
            }
        }
        Ok(Flags(given))
    }

    fn take(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }
}

/// The one runtime `run` serves on.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(
    mut config: RunConfig,
    audit: Option<PathBuf>,
    health_file: Option<PathBuf>,
    ready_file: Option<PathBuf>,
) -> ExitCode {
    // The egress budget counters live beside the audit log, in the
    // sidecar's own writable log directory (issue 16).
    if let Some(dir) = audit.as_deref().and_then(std::path::Path::parent) {
        config.budget_state = Some(dir.join(bottle_policy::BUDGET_STATE_FILE));
    }
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
            let sidecar = Sidecar::start(&config, logger.clone()).await?;
            if let Some(addr) = sidecar.addrs().proxy {
                // Without them `health` fails and `up` times out waiting:
                // say why, keep enforcing.
                for path in [&health_file, &ready_file].into_iter().flatten() {
                    if let Err(e) = health::write_addr(path, addr) {
                        logger.event("health-file-error", json!({"error": e.to_string()}));
                    }
                }
            }
            sidecar.serve(shutdown).await;
            Ok(())
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

fn health(target: HealthTarget) -> ExitCode {
    let addr = match target {
        HealthTarget::Addr(addr) => Ok(addr),
        HealthTarget::File(path) => health::read_addr(&path),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime");
    let result = addr.map_err(anyhow::Error::from).and_then(|addr| {
        rt.and_then(|rt| {
            rt.block_on(health::check(addr, health::HEALTH_TIMEOUT))
                .map_err(anyhow::Error::from)
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn listeners_default_to_the_internal_address_only() {
        let cmd = parse(args(&[
            "run",
            "--policy",
            "/etc/bottle/policy.json",
            "--audit",
            "/var/log/bottle/egress.jsonl",
            "--dns-answer",
            "10.99.0.2",
        ]))
        .unwrap();
        let Command::Run(config, _, health_file, _) = cmd else {
            panic!("not run: {cmd:?}");
        };
        let at = |port: u16| Some(SocketAddr::from(([10, 99, 0, 2], port)));
        assert_eq!(config.proxy_listen, at(3128));
        assert_eq!(config.dns_listen, at(53));
        assert_eq!(config.http_listen, at(80));
        assert_eq!(config.https_listen, at(443));
        assert_eq!(
            health_file.as_deref(),
            Some(std::path::Path::new(health::DEFAULT_HEALTH_FILE))
        );
        // An explicit flag still wins, and `off` turns one off.
        let cmd = parse(args(&[
            "run",
            "--policy",
            "p.json",
            "--dns-answer",
            "10.99.0.2",
            "--proxy-listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
        ]))
        .unwrap();
        let Command::Run(config, ..) = cmd else {
            panic!("not run");
        };
        assert_eq!(config.proxy_listen, "127.0.0.1:0".parse().ok());
        assert_eq!(config.http_listen, None);
        assert_eq!(config.https_listen, at(443));
    }

    #[test]
    fn without_an_internal_address_nothing_is_bound_by_default() {
        let err = parse(args(&["run", "--policy", "p.json", "--dns-listen", "off"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--dns-answer"), "{err}");
    }

    fn usage_error(list: &[&str]) -> String {
        match parse(args(list)) {
            Ok(cmd) => panic!("{list:?} parsed as {cmd:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn flags_take_a_value_inline_or_next_and_only_once() {
        let cmd = parse(args(&[
            "run",
            "--policy=p.json",
            "--dns-answer",
            "10.99.0.2",
            "--audit=/a=b.jsonl",
            "--health-file",
            "off",
            "--ready-file=/var/log/bottle/ready",
        ]))
        .unwrap();
        let Command::Run(config, audit, health_file, ready_file) = cmd else {
            panic!("not run: {cmd:?}");
        };
        assert_eq!(config.policy_path, PathBuf::from("p.json"));
        assert_eq!(audit, Some(PathBuf::from("/a=b.jsonl")));
        assert_eq!(health_file, None);
        assert_eq!(ready_file, Some(PathBuf::from("/var/log/bottle/ready")));
        let base = ["run", "--policy", "p", "--dns-answer", "10.99.0.2"];
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            base.iter().chain(extra).copied().collect()
        };
        for (list, want) in [
            (with(&["--policy", "q"]), "--policy given more than once"),
            (with(&["--policy=q"]), "--policy given more than once"),
            (with(&["--audit"]), "--audit needs a value"),
            (with(&["--bogus", "x"]), "unknown flag --bogus"),
            (with(&["--addr", "x"]), "unknown flag --addr"),
            (with(&["-x"]), "unknown flag -x"),
            (with(&["stray"]), "unexpected argument `stray`"),
            (vec!["health", "--policy", "p"], "unknown flag --policy"),
            (vec!["netinfo", "x"], "unexpected argument `x`"),
            (vec!["frobnicate"], "unknown subcommand `frobnicate`"),
            (vec![], "missing subcommand"),
        ] {
            let err = usage_error(&list);
            assert_eq!(err, want, "{list:?}");
        }
        // A value may look like a flag: it is still the value.
        let cmd = parse(args(&["health", "--file", "--addr"])).unwrap();
        assert!(
            matches!(&cmd, Command::Health(HealthTarget::File(p)) if p == std::path::Path::new("--addr")),
            "{cmd:?}"
        );
        assert!(matches!(
            parse(args(&["run", "--bogus", "--help"])).unwrap(),
            Command::Help
        ));
    }

    #[test]
    fn version_names_the_build_platform() {
        assert!(matches!(
            parse(args(&["--version"])).unwrap(),
            Command::Version
        ));
        assert!(matches!(
            parse(args(&["version"])).unwrap(),
            Command::Version
        ));
        assert_eq!(usage_error(&["--version", "x"]), "unexpected argument `x`");
        let v = version();
        assert!(
            v.starts_with(&format!("bottle-sidecar {} ", env!("CARGO_PKG_VERSION"))),
            "{v}"
        );
        assert!(
            v.contains(&format!(
                "{}-{}",
                std::env::consts::ARCH,
                std::env::consts::OS
            )),
            "{v}"
        );
    }

    #[test]
    fn health_reads_the_recorded_address_by_default() {
        let cmd = parse(args(&["health"])).unwrap();
        assert!(
            matches!(&cmd, Command::Health(HealthTarget::File(p)) if p == std::path::Path::new(health::DEFAULT_HEALTH_FILE)),
            "{cmd:?}"
        );
        let cmd = parse(args(&["health", "--addr", "10.99.0.2:3128"])).unwrap();
        assert!(
            matches!(cmd, Command::Health(HealthTarget::Addr(a)) if a.port() == 3128),
            "{cmd:?}"
        );
    }
}
