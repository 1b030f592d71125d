//! The `arkiv` binary: parses the command line, calls the libraries,
//! prints. Everything that decides anything lives in `arkiv-repo` and
//! `arkiv-source`.

mod cli;
mod commands;
mod context;
mod output;
mod progress;
mod ssh_control;

use std::process::ExitCode;

use clap::Parser;

/// Pins glibc's mmap threshold at 8 MiB, between the largest blob (4 MiB)
/// and a pack (16 MiB). By default the threshold rises to the size of the
/// largest block ever freed (the 32 MiB Argon2 buffer, then packs), after
/// which freed 16 MiB pack buffers stay resident in per-thread arenas.
/// Pinned, pack buffers go back to the kernel when dropped while blob-sized
/// buffers keep being reused from the heap (a 2 MiB threshold also freed
/// those, and cost check a third of its speed; docs/benchmarks.md §4).
fn limit_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator, before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
    }
}

/// A job of the daemon runs in a process group of its own, which it leads.
/// When the daemon dies the kernel sends it SIGUSR1 (its parent-death
/// signal, set by the daemon); the dump tools and commands it started must
/// not outlive it and run twice beside the job the restarted daemon queues
/// again, so the handler ends the whole group, itself included. SIGTERM —
/// the daemon's own cancel, timeout or end of grace, sent to the whole
/// group and followed by SIGKILL 10 s later — keeps its default action.
/// A signal of its own is needed because the kernel sends the parent-death
/// signal when the daemon's spawning thread exits, before the child is
/// seen to have a new parent, so the handler cannot tell the two apart by
/// `getppid`.
fn end_group_when_the_daemon_dies() {
    extern "C" fn handler(_: libc::c_int) {
        // SAFETY: kill is async-signal-safe; 0 names the caller's group.
        unsafe {
            libc::kill(0, libc::SIGKILL);
        }
    }
    // SAFETY: installing a handler that only calls an async-signal-safe function.
    unsafe {
        libc::signal(libc::SIGUSR1, handler as extern "C" fn(libc::c_int) as libc::sighandler_t);
    }
}

/// Exit code of an operation that finished but left something out.
pub const EXIT_PARTIAL: u8 = 3;

/// Exit code of bad usage: what the argument parser refuses, and
/// [`Usage`] errors.
pub const EXIT_USAGE: u8 = 2;

/// Arguments the parser accepts but that make no sense together or hold an
/// invalid value (`backup` with no paths, a malformed
/// `--read-data-subset`): found before the repository is touched, and
/// ending with the parser's exit code for bad usage.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn main() -> ExitCode {
    // Output piped into `head` ends quietly, as for any Unix tool, instead
    // of panicking on a closed pipe.
    // SAFETY: restoring the default disposition of a signal at start-up.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    limit_mmap_threshold();
    if std::env::var_os("ARKIV_JOB_GROUP").is_some() {
        end_group_when_the_daemon_dies();
    }
    // Parsing may exit (--help, bad usage): before anything to clean up.
    let cli = cli::Cli::parse();
    // Still one thread: this sets the environment.
    let ssh = ssh_control::SshControl::isolate();
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    if filter.max_level_hint() == Some(tracing_subscriber::filter::LevelFilter::TRACE) {
        // The FTP client logs every command it sends at trace level, the
        // password (`PASS …`) included: capped at debug whatever RUST_LOG asks.
        filter = filter.add_directive("suppaftp=debug".parse().expect("a valid directive"));
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .init();
    let result = commands::run(cli);
    arkiv_repo::backend::shutdown();
    if let Some(c) = ssh {
        // A connection still being set up when the runtime stopped may
        // write to its master as the master exits: that EPIPE must not
        // kill the process with SIGPIPE before it reports its result.
        // SAFETY: changing a signal disposition; nothing relies on SIGPIPE from here on.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        c.cleanup();
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line: what failed and where; causes joined with ": ".
            eprintln!("arkiv: error: {e:#}");
            if e.downcast_ref::<Usage>().is_some() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
