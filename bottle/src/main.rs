//! The `bottle` binary: parse flags, run, map the outcome to an exit code.

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
    let result: anyhow::Result<i32> = runtime.block_on(bottle::cli::run(cli)).map_err(Into::into);
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bottle: {e:#}");
            1
        }
    };
    // Exit without waiting for a blocked stdin reader of `exec -i`.
    std::process::exit(code);
}
