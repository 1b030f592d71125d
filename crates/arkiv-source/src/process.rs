//! Running the programs a source depends on (`pg_dump`, `mariadb-dump`,
//! `redis-cli`, an operator's own command) as streams.
//!
//! Dumps are read from the child's standard output straight into the
//! repository and restores are written straight into the child's standard
//! input: no dump file ever touches the disk. Standard error is kept (its
//! last few KiB) so that a failure is reported with the tool's own words,
//! and a child that is not finished when its stream is abandoned is killed,
//! so an aborted backup never leaves a `pg_dump` running.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// How much of a tool's standard error is kept for its error message.
const STDERR_KEEP: usize = 8 << 10;

/// A program to run, with the name it is reported under.
pub struct Tool {
    cmd: Command,
    program: String,
    /// Where the tool's standard output goes when Arkiv does not read it.
    show_output: bool,
}

impl Tool {
    pub fn new(program: impl AsRef<OsStr>) -> Tool {
        let program = program.as_ref();
        Tool { cmd: Command::new(program), program: program.to_string_lossy().into_owned(), show_output: false }
    }

    /// A command line run by `sh -c`, for operator-supplied commands
    /// (pipelines and quoting work as in a shell). It is reported by its
    /// first word, not its whole text, which may hold secrets.
    pub fn shell(command_line: &str) -> Tool {
        let first = command_line.split_whitespace().next().unwrap_or("sh").to_string();
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(command_line);
        Tool { cmd, program: first, show_output: false }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Tool {
        self.cmd.arg(a);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Tool
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Tool {
        self.cmd.env(k, v);
        self
    }

    pub fn env_remove(mut self, k: impl AsRef<OsStr>) -> Tool {
        self.cmd.env_remove(k);
        self
    }

    /// Passes what the tool prints (when fed a restore) on to Arkiv's
    /// standard error, for an operator's own command; Arkiv's standard
    /// output stays its own (`--json`).
    pub fn show_output(mut self) -> Tool {
        self.show_output = true;
        self
    }

    fn spawn(mut self, stdin: Stdio, stdout: Stdio) -> Result<Running> {
        self.cmd.stdin(stdin).stdout(stdout).stderr(Stdio::piped());
        tracing::debug!(program = %self.program, "starting");
        let mut child = self.cmd.spawn().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::ToolMissing { program: self.program.clone() },
            _ => Error::Io { path: self.program.clone(), cause: e },
        })?;
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let pipe = child.stderr.take();
        let keep = stderr.clone();
        let program = self.program.clone();
        let collector = std::thread::spawn(move || {
            let Some(mut pipe) = pipe else { return };
            let mut buf = [0u8; 4096];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        tracing::debug!(program = %program, "stderr: {}", String::from_utf8_lossy(&buf[..n]).trim_end());
                        let mut k = keep.lock().unwrap();
                        k.extend(&buf[..n]);
                        let excess = k.len().saturating_sub(STDERR_KEEP);
                        k.drain(..excess);
                    }
                }
            }
        });
        Ok(Running { child: Some(child), program: self.program, stderr, collector: Some(collector) })
    }

    /// Runs the tool to completion and returns its standard output (for
    /// short answers: versions, query results).
    pub fn output(self) -> Result<String> {
        let mut running = self.spawn(Stdio::null(), Stdio::piped())?;
        let mut out = Vec::new();
        let read = running.child.as_mut().and_then(|c| c.stdout.take()).map(|mut s| s.read_to_end(&mut out));
        running.finish()?;
        if let Some(Err(e)) = read {
            return Err(Error::Io { path: format!("{} (standard output)", running.program), cause: e });
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Starts the tool with its standard output as a stream. Read it to the
    /// end, then call [`ToolOutput::finish`]: only a tool that exits with
    /// status 0 produced a complete stream.
    pub fn stream(self) -> Result<ToolOutput> {
        let mut running = self.spawn(Stdio::null(), Stdio::piped())?;
        let stdout = running.child.as_mut().and_then(|c| c.stdout.take()).expect("stdout is piped");
        Ok(ToolOutput { running, stdout })
    }

    /// Runs the tool with `input` as its standard input, to the end, and
    /// returns how many bytes it was given. If the tool exits early, its
    /// exit status and standard error are the error (not the broken pipe).
    pub fn feed(self, input: &mut dyn Read) -> Result<u64> {
        use std::os::fd::AsFd;
        let stdout = match self.show_output {
            true => io::stderr().as_fd().try_clone_to_owned().map(Stdio::from).unwrap_or_else(|_| Stdio::null()),
            false => Stdio::null(),
        };
        let mut running = self.spawn(Stdio::piped(), stdout)?;
        let mut stdin = running.child.as_mut().and_then(|c| c.stdin.take()).expect("stdin is piped");
        let _sigpipe = SigpipeBlocked::new();
        let mut fed = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        let copy: std::result::Result<(), CopyError> = loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(CopyError::Input(e)),
            };
            if let Err(e) = stdin.write_all(&buf[..n]) {
                break Err(CopyError::Output(e));
            }
            fed += n as u64;
        };
        drop(stdin);
        match copy {
            Ok(()) => running.finish().map(|_| fed),
            // The repository could not be read: that is the error, and the
            // tool is stopped rather than left to apply half a stream.
            Err(CopyError::Input(e)) => {
                running.kill();
                Err(input_error(e))
            }
            // The tool stopped reading: its own status says why.
            Err(CopyError::Output(e)) => {
                running.finish()?;
                Err(Error::Io { path: format!("{} (standard input)", running.program), cause: e })
            }
        }
    }
}

/// Keeps SIGPIPE from killing Arkiv while it writes into a tool that may
/// exit early: the binary restores SIGPIPE's default action (so `arkiv
/// snapshots | head` ends quietly), which would turn a restore tool's
/// failure into Arkiv's silent death instead of a broken-pipe error and the
/// tool's own account. Blocking the signal in this thread makes the write
/// return EPIPE; a SIGPIPE left pending is consumed before the mask is
/// restored, so it is never delivered later.
struct SigpipeBlocked {
    old: libc::sigset_t,
}

impl SigpipeBlocked {
    fn new() -> SigpipeBlocked {
        // SAFETY: sigset_t is plain data; the calls only read and write the
        // sets passed and this thread's signal mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGPIPE);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            SigpipeBlocked { old }
        }
    }
}

impl Drop for SigpipeBlocked {
    fn drop(&mut self) {
        // SAFETY: as above; sigtimedwait with a zero timeout only dequeues
        // a pending SIGPIPE of this thread, if there is one.
        unsafe {
            let mut pending: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut pending);
            libc::sigpending(&mut pending);
            if libc::sigismember(&pending, libc::SIGPIPE) == 1 && libc::sigismember(&self.old, libc::SIGPIPE) == 0 {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGPIPE);
                let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                libc::sigtimedwait(&set, std::ptr::null_mut(), &zero);
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

enum CopyError {
    Input(io::Error),
    Output(io::Error),
}

/// A repository error carried through `io::Read` comes back as itself.
pub(crate) fn input_error(e: io::Error) -> Error {
    let text = e.to_string();
    match e.into_inner() {
        Some(inner) => match inner.downcast::<arkiv_repo::Error>() {
            Ok(repo) => Error::Repo(*repo),
            Err(other) => Error::Invalid(other.to_string()),
        },
        None => Error::Invalid(text),
    }
}

/// A started tool whose standard output is being read.
pub struct ToolOutput {
    running: Running,
    stdout: ChildStdout,
}

impl ToolOutput {
    /// Waits for the tool and fails unless it exited with status 0.
    pub fn finish(mut self) -> Result<()> {
        // Whatever is left unread would block a tool that is still
        // writing; the stream is complete only if it was read to the end.
        drop(self.stdout);
        self.running.finish().map(|_| ())
    }

    /// Stops the tool (its stream is abandoned).
    pub fn kill(mut self) {
        self.running.kill();
    }
}

impl Read for ToolOutput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stdout.read(buf)
    }
}

struct Running {
    child: Option<Child>,
    program: String,
    stderr: Arc<Mutex<VecDeque<u8>>>,
    collector: Option<JoinHandle<()>>,
}

impl Running {
    fn finish(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(Error::Invalid(format!("{}: already finished", self.program)));
        };
        let status = child.wait().map_err(|e| Error::Io { path: self.program.clone(), cause: e })?;
        if let Some(c) = self.collector.take() {
            let _ = c.join();
        }
        if status.success() {
            return Ok(status);
        }
        Err(Error::ToolFailed { program: self.program.clone(), status: describe_status(status), stderr: self.stderr() })
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(c) = self.collector.take() {
            let _ = c.join();
        }
    }

    /// The tool's last words: the tail of its standard error, trimmed to a
    /// few lines for a one-line error.
    fn stderr(&self) -> String {
        let bytes: Vec<u8> = self.stderr.lock().unwrap().iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let tail = &lines[lines.len().saturating_sub(3)..];
        tail.join(" / ")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

fn describe_status(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_returns_what_the_tool_printed() {
        let out = Tool::shell("printf 'a\\nb'").output().unwrap();
        assert_eq!(out, "a\nb");
    }

    #[test]
    fn a_failing_tool_is_reported_with_its_status_and_last_words() {
        let e = Tool::shell("echo first >&2; echo 'it broke' >&2; exit 3").output().unwrap_err().to_string();
        assert!(e.contains("exit status 3") && e.contains("it broke"), "{e}");
    }

    #[test]
    fn a_missing_program_says_so() {
        let e = Tool::new("arkiv-no-such-tool").output().unwrap_err();
        assert!(matches!(e, Error::ToolMissing { .. }), "{e}");
        assert!(e.to_string().contains("arkiv-no-such-tool"), "{e}");
    }

    #[test]
    fn a_stream_is_complete_only_if_the_tool_succeeds() {
        let mut s = Tool::shell("printf hello; exit 1").stream().unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello");
        assert!(s.finish().is_err());
    }

    #[test]
    fn a_stream_killed_midway_fails() {
        let mut s = Tool::shell("printf part; kill -9 $$").stream().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        let e = s.finish().unwrap_err().to_string();
        assert!(e.contains("signal 9"), "{e}");
    }

    #[test]
    fn feed_gives_the_tool_all_its_input() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let data = vec![7u8; 3 << 20];
        let n = Tool::shell(&format!("cat > {}", out.display())).feed(&mut &data[..]).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(std::fs::read(&out).unwrap(), data);
    }

    #[test]
    fn feed_reports_a_tool_that_stops_reading_by_its_status() {
        let data = vec![7u8; 8 << 20];
        let e = Tool::shell("echo 'no thanks' >&2; exit 4").feed(&mut &data[..]).unwrap_err().to_string();
        assert!(e.contains("exit status 4") && e.contains("no thanks"), "{e}");
    }
}
