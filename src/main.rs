//! The `etl-pipeline` binary: parse, set up logging, run, print the whole
//! error chain on failure.

use std::process::ExitCode;

use clap::Parser;
use etl_pipeline::cli::{self, Cli};
use etl_pipeline::error::chain;

fn main() -> ExitCode {
    let args = Cli::parse();
    let default_level = if args.verbose { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ETL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::execute(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            cli::exit_code(&e)
        }
    }
}
