//! Runs one job as a child process: its own process group (so cancelling
//! ends the dump tools it started too), its standard error kept as the
//! run's log, progress lines picked out, a timeout, and a cancel signal.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

/// How a child ended.
#[derive(Debug)]
pub struct ChildEnd {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    /// The child's own one-line error (`arkiv: error: …`), or its last line.
    pub error_line: Option<String>,
    pub timed_out: bool,
    pub cancelled: bool,
}

/// What to run.
pub struct ChildSpec<'a> {
    pub exe: &'a Path,
    pub args: &'a [String],
    pub log: PathBuf,
    pub timeout: Option<Duration>,
    /// Niceness added to the child.
    pub nice: i32,
}

/// Lines the binary prints on standard error while it works, when
/// `ARKIV_PROGRESS_LINES` is set (see the binary's `progress.rs`).
pub const PROGRESS_PREFIX: &str = "progress: ";

/// Variables that would make a job ignore the configuration file (the
/// CLI lets the environment win over the file): a daemon started from a
/// shell that has `ARKIV_REPO` set must still back each source up where
/// the file says.
pub const OVERRIDES: [&str; 16] = [
    "ARKIV_REPO",
    "ARKIV_CONFIG",
    "ARKIV_DATA_REPO",
    "ARKIV_PASSWORD",
    "ARKIV_PASSWORD_FILE",
    "ARKIV_KEY_FILE",
    "ARKIV_CACHE_DIR",
    "ARKIV_FROM_PASSWORD_FILE",
    "ARKIV_FROM_KEY_FILE",
    "ARKIV_TO_PASSWORD_FILE",
    "ARKIV_TO_KEY_FILE",
    "ARKIV_TIMEOUT",
    "ARKIV_RETRIES",
    "ARKIV_CONNECTIONS",
    "ARKIV_FAULTS",
    "ARKIV_NEW_PASSWORD",
];

/// Set for a job: the binary then ends its whole process group (the dump
/// tools it started included) when it receives SIGUSR1, which is what the
/// kernel sends it when the daemon dies (see `PR_SET_PDEATHSIG` below).
pub const JOB_GROUP_ENV: &str = "ARKIV_JOB_GROUP";

/// How long a cancelled child has to exit after SIGTERM before SIGKILL.
const KILL_AFTER: Duration = Duration::from_secs(10);

pub async fn run(
    spec: ChildSpec<'_>,
    mut cancel: watch::Receiver<u8>,
    on_progress: impl Fn(&str) + Send,
) -> std::io::Result<ChildEnd> {
    let log_error = |e: std::io::Error| std::io::Error::new(e.kind(), format!("job log {}: {e}", spec.log.display()));
    let mut log = tokio::fs::OpenOptions::new().create(true).append(true).open(&spec.log).await.map_err(log_error)?;
    log.write_all(format!("$ arkiv {}\n", spec.args.join(" ")).as_bytes()).await.map_err(log_error)?;
    let mut cmd = Command::new(spec.exe);
    for v in OVERRIDES {
        cmd.env_remove(v);
    }
    cmd.args(spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("ARKIV_PROGRESS_LINES", "2")
        .env(JOB_GROUP_ENV, "1")
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe and touches only the child. It asks
    // the kernel to end the child when the daemon dies (kill -9 included),
    // so a restarted daemon never finds an orphan still writing. The
    // spawning thread is a runtime worker that lives as long as the daemon.
    let nice = spec.nice;
    let daemon = std::process::id() as libc::pid_t;
    #[cfg(target_os = "linux")]
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR1);
            // The daemon may have died between fork and prctl: then no
            // signal would ever come.
            if libc::getppid() != daemon {
                return Err(std::io::Error::other("the daemon exited"));
            }
            if nice > 0 {
                libc::nice(nice);
            }
            Ok(())
        });
    }
    let mut child =
        cmd.spawn().map_err(|e| std::io::Error::new(e.kind(), format!("starting {}: {e}", spec.exe.display())))?;
    let pid = child.id().map(|p| p as i32);
    let mut stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let out_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf).await;
        buf
    });
    let mut lines = BufReader::new(stderr).lines();
    let mut error_line: Option<String> = None;
    let mut last_line: Option<String> = None;
    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut timed_out = false;
    let mut cancelled = false;
    let mut stderr_open = true;
    let signal = |sig| {
        if let Some(pid) = pid {
            // SAFETY: signalling the child's process group, which it leads.
            unsafe {
                libc::kill(-pid, sig);
            }
        }
    };
    let mut killed_at: Option<tokio::time::Instant> = None;
    let status = loop {
        let sleep_until = match (killed_at, deadline) {
            (Some(k), _) => k + KILL_AFTER,
            (None, Some(d)) if !timed_out => d,
            _ => tokio::time::Instant::now() + Duration::from_secs(3600),
        };
        tokio::select! {
            line = lines.next_line(), if stderr_open => match line {
                Ok(Some(l)) => {
                    let _ = log.write_all(format!("{}\n", l).as_bytes()).await;
                    if let Some(p) = l.strip_prefix(PROGRESS_PREFIX) {
                        on_progress(p);
                    } else if !l.trim().is_empty() {
                        if let Some(e) = l.strip_prefix("arkiv: error: ") {
                            error_line = Some(e.to_string());
                        }
                        last_line = Some(l);
                    }
                }
                _ => stderr_open = false,
            },
            status = child.wait() => break status?,
            _ = cancel.changed(), if !cancelled => {
                if *cancel.borrow() != 0 {
                    cancelled = true;
                    signal(libc::SIGTERM);
                    killed_at = Some(tokio::time::Instant::now());
                }
            }
            _ = tokio::time::sleep_until(sleep_until) => {
                if killed_at.is_some() {
                    signal(libc::SIGKILL);
                } else if deadline.is_some() {
                    timed_out = true;
                    signal(libc::SIGTERM);
                    killed_at = Some(tokio::time::Instant::now());
                }
            }
        }
    };
    // Drain what is left of standard error for the log.
    while let Ok(Some(l)) = lines.next_line().await {
        let _ = log.write_all(format!("{}\n", l).as_bytes()).await;
        if let Some(e) = l.strip_prefix("arkiv: error: ") {
            error_line = Some(e.to_string());
        } else if !l.starts_with(PROGRESS_PREFIX) && !l.trim().is_empty() {
            last_line = Some(l);
        }
    }
    let stdout = out_task.await.unwrap_or_default();
    let end = format!("exit: {}\n", status.code().map(|c| c.to_string()).unwrap_or_else(|| format!("{status}")));
    let _ = log.write_all(end.as_bytes()).await;
    let _ = log.flush().await;
    Ok(ChildEnd { code: status.code(), stdout, error_line: error_line.or(last_line), timed_out, cancelled })
}
