//! The `arkiv` binary: parses the command line, calls the libraries,
//! prints. Everything that decides anything lives in `arkiv-repo` and
//! `arkiv-source`.

mod cli;
mod commands;
mod context;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;

/// Exit code of an operation that finished but left something out.
pub const EXIT_PARTIAL: u8 = 3;

fn main() -> ExitCode {
    // Output piped into `head` ends quietly, as for any Unix tool, instead
    // of panicking on a closed pipe.
    // SAFETY: restoring the default disposition of a signal at start-up.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .init();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: what failed and where; causes joined with ": ".
            eprintln!("arkiv: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
