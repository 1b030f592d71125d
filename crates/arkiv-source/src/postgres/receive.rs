//! WAL streaming for a recovery point about a second behind the primary:
//! `pg_receivewal` receives WAL over a replication slot into a local
//! directory, and arkiv stores each finished segment and, every interval,
//! the segment still being written (as `NAME.partial`).
//!
//! `pg_receivewal` is supervised rather than reimplemented: it is the
//! reference client of the streaming protocol, maintained with the server,
//! and `--synchronous` makes it flush and confirm each write at once.
//! Arkiv restarts it when it exits, with backoff.
//!
//! Trade-offs (also in docs/operations/postgres-pitr.md): the replication
//! slot makes the primary keep every WAL segment the streamer has not
//! confirmed, so a streamer that stays down fills the primary's pg_wal
//! (cap it with `max_slot_wal_keep_size`, at the price of a gap in the
//! stream); without a slot a streamer that falls behind loses WAL to
//! recycling. `archive_command` stays the primary path: it archives every
//! segment whatever the streamer does, and the streamer only adds the tail.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arkiv_repo::Repository;

use super::wal::{self, WalFile};
use super::Conn;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    pub conn: Conn,
    pub slot: String,
    /// Create the slot if it does not exist.
    pub create_slot: bool,
    /// Where `pg_receivewal` writes.
    pub dir: PathBuf,
    /// How often the partial segment is stored.
    pub interval: Duration,
    /// Directory of `pg_receivewal`; `None`: from PATH.
    pub pg_bin: Option<PathBuf>,
}

fn program(opts: &ReceiveOptions) -> PathBuf {
    opts.pg_bin.as_ref().map(|d| d.join("pg_receivewal")).unwrap_or_else(|| PathBuf::from("pg_receivewal"))
}

fn command(opts: &ReceiveOptions) -> Command {
    let mut c = Command::new(program(opts));
    if let Some(h) = &opts.conn.host {
        c.args(["-h", h]);
    }
    if let Some(p) = opts.conn.port {
        c.args(["-p", &p.to_string()]);
    }
    let user = opts.conn.user.clone().or_else(|| std::env::var("PGUSER").ok()).unwrap_or_else(|| "postgres".into());
    c.args(["-U", &user]);
    c.args(["--slot", &opts.slot]).arg("--no-password");
    c
}

fn spawn(opts: &ReceiveOptions) -> Result<Child> {
    let mut c = command(opts);
    c.arg("-D").arg(&opts.dir).args(["--synchronous", "--no-loop"]).stdin(Stdio::null()).stderr(Stdio::inherit());
    // pg_receivewal must not outlive its supervisor: a second one on the
    // same slot would be refused, and an orphan would hold the slot.
    // SAFETY: prctl in the child before exec, async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    c.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::ToolMissing { program: program(opts).display().to_string() },
        _ => Error::io(program(opts), e),
    })
}

/// Stores what `pg_receivewal` has written: finished files once (then
/// removes them locally), the partial segment whenever it changed.
/// Returns how many files were stored.
pub fn store_received(repo: &Repository, dir: &Path, last_partial: &mut Option<(String, String)>) -> Result<usize> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect();
    names.sort_by_key(|n| (!n.ends_with(".history"), n.clone()));
    let mut stored = 0;
    for name in names {
        let path = dir.join(&name);
        match WalFile::parse(&name) {
            Some(WalFile::Segment(_)) | Some(WalFile::History(_)) => {
                wal::push(repo, &path, wal::WAL_COMPRESSION)?;
                // The whole segment supersedes its partial copy; an
                // append-only key cannot delete, which costs only space.
                if name.len() == 24 && repo.archive_exists(&format!("{name}.partial")).unwrap_or(false) {
                    let _ = repo.archive_delete(&format!("{name}.partial"));
                }
                fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                stored += 1;
            }
            Some(WalFile::Partial(_)) => {
                let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
                let hash = blake3::hash(&bytes).to_hex().to_string();
                if last_partial.as_ref().is_some_and(|(n, h)| *n == name && *h == hash) {
                    continue;
                }
                wal::push(repo, &path, wal::WAL_COMPRESSION)?;
                *last_partial = Some((name, hash));
                stored += 1;
            }
            _ => {}
        }
    }
    Ok(stored)
}

/// Streams until `stop` is set: supervises `pg_receivewal` and stores what
/// it receives every `opts.interval`.
pub fn run(repo: &Repository, opts: &ReceiveOptions, stop: &AtomicBool) -> Result<()> {
    fs::create_dir_all(&opts.dir).map_err(|e| Error::io(&opts.dir, e))?;
    if opts.create_slot {
        let out = command(opts)
            .args(["--create-slot", "--if-not-exists"])
            .output()
            .map_err(|e| Error::io(program(opts), e))?;
        if !out.status.success() {
            return Err(Error::ToolFailed {
                program: "pg_receivewal --create-slot".into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
    }
    let mut child: Option<Child> = None;
    let mut restart_at = Instant::now();
    let mut backoff = Duration::from_secs(1);
    let mut last_partial = None;
    while !stop.load(Ordering::Relaxed) {
        match child.as_mut().map(|c| c.try_wait()) {
            None if Instant::now() >= restart_at => {
                child = Some(spawn(opts)?);
            }
            Some(Ok(Some(status))) => {
                tracing::warn!("pg_receivewal exited ({status}); restarting in {backoff:?}");
                child = None;
                restart_at = Instant::now() + backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Some(Err(e)) => return Err(Error::io(program(opts), e)),
            _ => {}
        }
        match store_received(repo, &opts.dir, &mut last_partial) {
            Ok(n) if n > 0 => backoff = Duration::from_secs(1),
            Ok(_) => {}
            // The repository may come back; pg_receivewal keeps receiving
            // into the directory meanwhile, so nothing is lost.
            Err(e) => tracing::warn!("storing streamed WAL: {e}"),
        }
        std::thread::sleep(opts.interval);
    }
    if let Some(mut c) = child {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let _ = c.wait();
    }
    store_received(repo, &opts.dir, &mut last_partial)?;
    Ok(())
}
