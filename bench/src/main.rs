//! `egress-bench`: requests/s, latency and proxy memory for intercepted HTTPS
//! with keep-alive, direct vs through bottle's egress vs through mitmproxy, in
//! one run on 127.0.0.1 (issue 3, "Benchmark"), over HTTP/1.1 and over HTTP/2
//! with many streams per connection (issue 14). `main` only parses flags and
//! maps the result of [`run::run`] to an exit code.

#![forbid(unsafe_code)]

mod client;
mod config;
mod origin;
mod pki;
mod proxy;
mod report;
mod run;

use std::process::ExitCode;

fn main() -> ExitCode {
    let config = match config::parse(std::env::args_os().skip(1)) {
        Ok(config::Command::Run(c)) => c,
        Ok(config::Command::Help) => {
            print!("{}", config::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("egress-bench: {e:#}\n\n{}", config::USAGE);
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("egress-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On SIGINT/SIGTERM the run is dropped, which kills the proxy children
    // (kill_on_drop) and removes the scratch directory, so nothing outlives
    // the bench.
    let result = runtime.block_on(async {
        tokio::select! {
            result = run::run(&config) => result,
            signal = interrupted() => Err(anyhow::anyhow!("stopped by {signal}")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egress-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on the first SIGINT or SIGTERM, naming it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
