//! The `etl-pipeline` binary: parse, set up logging, run, print the whole
//! error chain on failure.

use std::process::ExitCode;

use std::io::IsTerminal;

use clap::Parser;
use etl_pipeline::cli::{self, Cli, LogFormat};
use etl_pipeline::error::chain;
use etl_pipeline::progress::{self, ProgressLayer};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// Logs go to standard error: plain text or JSON lines. On a terminal a
/// live progress view replaces the per-table lines; elsewhere (cron, log
/// shippers) each table's start and finish is logged.
fn init_logging(args: &Cli) {
    let live = std::io::stderr().is_terminal() && args.log_format == LogFormat::Text;
    let default = match (args.verbose, live) {
        (true, _) => "info".to_string(),
        (false, true) => "warn".to_string(),
        (false, false) => format!("warn,{}=info", progress::TARGET),
    };
    let filter = || EnvFilter::try_from_env("ETL_LOG").unwrap_or_else(|_| EnvFilter::new(&default));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match args.log_format {
        LogFormat::Text => fmt.with_ansi(live).boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let progress_layer = live.then(|| {
        ProgressLayer::start().with_filter(EnvFilter::new(format!("{}=debug", progress::TARGET)))
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter()))
        .with(progress_layer)
        .init();
}

fn main() -> ExitCode {
    // SAFETY: restoring the default disposition of SIGPIPE before any thread
    // starts; output piped into a reader that closes early (`status | head`)
    // then ends the process quietly, as for other command-line tools. Sockets
    // are written with MSG_NOSIGNAL and still report a closed peer as an error.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // glibc raises its mmap threshold after the first large block is freed,
    // after which every batch buffer (megabytes) comes from the heap and is
    // kept when freed: peak memory of a 2,000,000-row load grew to ~100 MiB.
    // A fixed 1 MiB threshold hands large buffers back at once (~45 MiB).
    // SAFETY: mallopt only tunes the allocator; called before any thread starts.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    // A panic is a bug, but its message must not carry a password either.
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "internal error (a bug; please report it with the lines above): {}",
            etl_pipeline::config::redact(&info.to_string())
        );
    }));
    let args = Cli::parse();
    init_logging(&args);
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
