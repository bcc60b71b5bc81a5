//! The `bottle` binary: parse flags, run, map the outcome to an exit code
//! (see [`bottle::exit`]).

use bottle::exit::Classify;
use clap::Parser;

fn main() {
    let cli = bottle::cli::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bottle: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(bottle::cli::run(cli)) {
        Ok(code) => code,
        // The reader went away (`bottle ps | head`): nothing to say.
        Err(e) if e.is_closed_pipe() => 0,
        Err(e) => {
            let code = e.exit().code();
            let e: anyhow::Error = e.into();
            eprintln!("bottle: {e:#}");
            code
        }
    };
    // Exit without waiting for a blocked stdin reader of `exec -i`.
    std::process::exit(code);
}
