//! `lifecycle-bench`: how long `bottle up` and `bottle down` take next to
//! the raw docker sequence for the same shape, warm and cold, and what N
//! bottles at once cost in time and memory (issue 15). It drives the real
//! `bottle` and `docker` CLIs against the local engine, writes its results
//! as JSON and Markdown, and draws the speed figure (with the egress rows
//! of `egress-bench --json` when given). `main` parses flags only.

#![forbid(unsafe_code)]

mod measure;
mod plot;
mod stats;

use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: lifecycle-bench run --bottle PATH [--runs N] [--no-cold] [--scale 1,5,10,20]
                           [--agent-image IMAGE] [--out DIR] [--egress-json FILE]
       lifecycle-bench plot --results FILE [--egress-json FILE] --svg FILE

  run    times `bottle up` (until the agent answers `docker exec`) and `bottle
         down` against the raw docker sequence, N rounds each, alternating;
         warm (a stored probe) and cold (page cache dropped, no stored probe;
         images stay built); then N bottles at once for each --scale value.
         Writes DIR/lifecycle.json, DIR/lifecycle.md and, with the egress
         rows, DIR/speed.svg (DIR defaults to target/bench). Needs the local
         docker engine; uses a private state dir; removes what it made and
         fails if anything was left.
  plot   draws the figure again from saved results.

  --runs N          rounds per comparison (default 5, 1 to 50)
  --scale LIST      bottles at once (default 1,5,10,20; `none` to skip)
  --agent-image     the agent image (default bottle-agent:latest)
";

enum Cmd {
    Run {
        opts: measure::Options,
        out: PathBuf,
        egress: Option<PathBuf>,
    },
    Plot {
        results: PathBuf,
        egress: Option<PathBuf>,
        svg: PathBuf,
    },
    Help,
}

fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> anyhow::Result<Cmd> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let sub = match p.next()? {
        Some(Value(v)) => v.string()?,
        Some(Long("help")) | Some(Short('h')) | None => return Ok(Cmd::Help),
        Some(other) => bail!("{}", other.unexpected()),
    };
    let mut opts = measure::Options {
        bottle: PathBuf::new(),
        runs: 5,
        cold: true,
        scale: vec![1, 5, 10, 20],
        agent_image: "bottle-agent:latest".into(),
    };
    let (mut out, mut egress, mut results, mut svg) = (
        PathBuf::from("target/bench"),
        None::<PathBuf>,
        None::<PathBuf>,
        None::<PathBuf>,
    );
    while let Some(arg) = p.next()? {
        match arg {
            Long("bottle") => opts.bottle = p.value()?.into(),
            Long("runs") => {
                let v: String = p.value()?.string()?;
                opts.runs = match v.parse::<usize>() {
                    Ok(n @ 1..=50) => n,
                    _ => bail!("--runs `{v}`: expected a whole number from 1 to 50"),
                };
            }
            Long("no-cold") => opts.cold = false,
            Long("scale") => {
                let v: String = p.value()?.string()?;
                opts.scale = if v == "none" {
                    vec![]
                } else {
                    v.split(',')
                        .map(|n| match n.trim().parse::<usize>() {
                            Ok(n @ 1..=100) => Ok(n),
                            _ => bail!(
                                "--scale `{v}`: expected numbers from 1 to 100, like 1,5,10,20"
                            ),
                        })
                        .collect::<anyhow::Result<_>>()?
                };
            }
            Long("agent-image") => opts.agent_image = p.value()?.string()?,
            Long("out") => out = p.value()?.into(),
            Long("egress-json") => egress = Some(p.value()?.into()),
            Long("results") => results = Some(p.value()?.into()),
            Long("svg") => svg = Some(p.value()?.into()),
            Long("help") | Short('h') => return Ok(Cmd::Help),
            other => bail!("{}", other.unexpected()),
        }
    }
    match sub.as_str() {
        "run" if opts.bottle.as_os_str().is_empty() => {
            bail!("run needs --bottle PATH (a release build: target/release/bottle)")
        }
        "run" => Ok(Cmd::Run { opts, out, egress }),
        "plot" => match (results, svg) {
            (Some(results), Some(svg)) => Ok(Cmd::Plot {
                results,
                egress,
                svg,
            }),
            _ => bail!("plot needs --results FILE and --svg FILE"),
        },
        other => bail!("unknown subcommand `{other}` (run or plot)"),
    }
}

fn egress_rows(path: Option<&PathBuf>) -> anyhow::Result<Vec<plot::EgressPoint>> {
    match path {
        None => Ok(vec![]),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            plot::egress_points(&text)
                .with_context(|| format!("{} is not `egress-bench --json` output", p.display()))
        }
    }
}

fn main() -> ExitCode {
    let cmd = match parse(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lifecycle-bench: {e:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match cmd {
        Cmd::Help => {
            print!("{USAGE}");
            Ok(())
        }
        Cmd::Run { opts, out, egress } => (|| {
            let egress = egress_rows(egress.as_ref())?;
            let results = measure::measure(&opts)?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot make {}", out.display()))?;
            std::fs::write(
                out.join("lifecycle.json"),
                serde_json::to_vec_pretty(&results)?,
            )?;
            let md = measure::markdown(&results);
            std::fs::write(out.join("lifecycle.md"), &md)?;
            print!("{md}");
            let svg = out.join("speed.svg");
            plot::draw(&svg, &results, &egress)?;
            eprintln!(
                "lifecycle-bench: wrote {}/lifecycle.json, lifecycle.md and speed.svg",
                out.display()
            );
            Ok(())
        })(),
        Cmd::Plot {
            results,
            egress,
            svg,
        } => (|| {
            let results = measure::load(&results)?;
            plot::draw(&svg, &results, &egress_rows(egress.as_ref())?)
        })(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lifecycle-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<std::ffi::OsString> {
        list.iter().map(Into::into).collect()
    }

    #[test]
    fn flags_parse_and_bad_ones_name_the_problem() {
        let Cmd::Run { opts, out, egress } = parse(args(&[
            "run",
            "--bottle",
            "b",
            "--runs",
            "3",
            "--no-cold",
            "--scale",
            "2,4",
        ]))
        .unwrap() else {
            panic!("not run")
        };
        assert_eq!((opts.runs, opts.cold, opts.scale), (3, false, vec![2, 4]));
        assert_eq!((out, egress), (PathBuf::from("target/bench"), None));
        let err = |l: &[&str]| match parse(args(l)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{l:?} parsed"),
        };
        assert!(err(&["run"]).contains("--bottle"));
        assert!(err(&["run", "--bottle", "b", "--runs", "0"]).contains("1 to 50"));
        assert!(err(&["run", "--bottle", "b", "--scale", "1,x"]).contains("--scale"));
        assert!(err(&["plot", "--svg", "s"]).contains("--results"));
        assert!(err(&["walk"]).contains("unknown subcommand"));
        let Cmd::Run { opts, .. } = parse(args(&["run", "--bottle=b", "--scale", "none"])).unwrap()
        else {
            panic!("not run")
        };
        assert!(opts.scale.is_empty());
    }
}
