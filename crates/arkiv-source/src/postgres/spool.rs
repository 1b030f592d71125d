//! Asynchronous archiving: `archive_command` hands WAL to a long-running
//! pusher through a spool directory, and the pusher uploads every ready
//! segment in parallel with one open repository.
//!
//! PostgreSQL archives one file at a time and waits for each command to
//! finish, so a synchronous `wal-push` pays a process start, a key
//! derivation and an upload per segment, one after another. Here the
//! pusher watches `pg_wal/archive_status/*.ready` itself, uploads what is
//! ready `parallel` at a time, and leaves a marker in `done/` for each
//! stored file; `archive_command` then only waits for its marker.
//!
//! Policy when the repository is unreachable: nothing is ever dropped.
//! Failed uploads are retried with backoff, each failure is written to
//! `failed/NAME` and returned by `archive_command` as a non-zero exit with
//! the reason — so PostgreSQL logs a warning for every attempt and keeps
//! the segment — and `status.json` says how much WAL is waiting and for
//! how long, for monitoring (and the daemon's archive-lag metric). pg_wal grows
//! while the archive is down, loudly; dropping WAL to save disk would
//! silently break point-in-time recovery, which is worse than a full disk
//! that every alert is already watching.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arkiv_repo::Repository;
use chrono::{DateTime, Utc};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::wal::{self, WalFile};
use crate::error::{Error, Result};

/// The spool's layout.
#[derive(Debug, Clone)]
pub struct Spool {
    pub dir: PathBuf,
}

/// What the pusher last saw, for people and monitoring.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SpoolStatus {
    pub updated: Option<DateTime<Utc>>,
    /// WAL files PostgreSQL has marked ready and the repository does not hold yet.
    pub waiting: usize,
    pub waiting_bytes: u64,
    /// When the oldest of them was written: how far the archive lags.
    pub oldest_waiting: Option<DateTime<Utc>>,
    pub last_pushed: Option<String>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub pushed_total: u64,
}

impl Spool {
    pub fn new(dir: &Path) -> Result<Spool> {
        for d in [dir.to_path_buf(), dir.join("done"), dir.join("failed")] {
            fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        Ok(Spool { dir: dir.to_path_buf() })
    }

    fn done(&self, name: &str) -> PathBuf {
        self.dir.join("done").join(name)
    }

    fn failed(&self, name: &str) -> PathBuf {
        self.dir.join("failed").join(name)
    }

    pub fn status_file(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    pub fn status(&self) -> Option<SpoolStatus> {
        serde_json::from_slice(&fs::read(self.status_file()).ok()?).ok()
    }

    fn write_status(&self, s: &SpoolStatus) {
        let tmp = self.dir.join("status.json.tmp");
        if fs::write(&tmp, serde_json::to_vec_pretty(s).unwrap_or_default()).is_ok() {
            let _ = fs::rename(&tmp, self.status_file());
        }
    }

    /// Takes the pusher's lock; `None` when another pusher holds it.
    pub fn lock(&self) -> Result<Option<File>> {
        let path = self.dir.join("pusher.lock");
        let f =
            File::options().create(true).truncate(false).write(true).open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: flock on a descriptor we own; the lock lives as long as `f`.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        Ok((r == 0).then_some(f))
    }

    /// `archive_command`'s side: waits until the pusher has stored `name`
    /// (true), reports its failure, or gives up after `wait`. `start`
    /// launches a pusher when none holds the lock.
    pub fn await_pushed(&self, name: &str, wait: Duration, start: &dyn Fn() -> Result<()>) -> Result<bool> {
        let deadline = Instant::now() + wait;
        let mut started = false;
        loop {
            if fs::remove_file(self.done(name)).is_ok() {
                return Ok(true);
            }
            if let Ok(reason) = fs::read_to_string(self.failed(name)) {
                let _ = fs::remove_file(self.failed(name));
                return Err(Error::Invalid(format!("{name} not archived yet: {}", reason.trim())));
            }
            if !started {
                if let Some(lock) = self.lock()? {
                    drop(lock);
                    start()?;
                }
                started = true;
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// WAL files PostgreSQL has marked ready in `pg_wal`, history files first
/// (a new timeline's history must be archived before its segments), then
/// in name order.
fn ready(pg_wal: &Path) -> Result<Vec<String>> {
    let status = pg_wal.join("archive_status");
    let mut names: Vec<String> = fs::read_dir(&status)
        .map_err(|e| Error::io(&status, e))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".ready").map(str::to_string))
        .filter(|n| WalFile::parse(n).is_some())
        .collect();
    names.sort_by_key(|n| (!n.ends_with(".history"), n.clone()));
    Ok(names)
}

/// Runs the pusher until nothing has been ready for `idle_exit`.
pub fn run_pusher(
    repo: &Repository,
    spool: &Spool,
    pg_wal: &Path,
    parallel: usize,
    level: i32,
    idle_exit: Duration,
) -> Result<()> {
    let Some(_lock) = spool.lock()? else {
        return Ok(());
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(parallel.max(1))
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start {parallel} upload threads: {e}")))?;
    let mut status = spool.status().unwrap_or_default();
    let mut idle_since = Instant::now();
    let mut backoff = Duration::from_millis(100);
    // Names stored in the last minute: between archive_command taking its
    // marker and PostgreSQL renaming `.ready` to `.done` a file still looks
    // ready, and pushing it again would cost a download to compare.
    let mut recent: std::collections::HashMap<String, Instant> = Default::default();
    loop {
        recent.retain(|_, t| t.elapsed() < Duration::from_secs(60));
        let names: Vec<String> =
            ready(pg_wal)?.into_iter().filter(|n| !spool.done(n).exists() && !recent.contains_key(n)).collect();
        let waiting_bytes: u64 = names.iter().filter_map(|n| fs::metadata(pg_wal.join(n)).ok()).map(|m| m.len()).sum();
        let oldest = names
            .iter()
            .filter_map(|n| fs::metadata(pg_wal.join(n)).ok()?.modified().ok())
            .min()
            .map(DateTime::<Utc>::from);
        status.waiting = names.len();
        status.waiting_bytes = waiting_bytes;
        status.oldest_waiting = oldest;
        status.updated = Some(Utc::now());
        if names.is_empty() {
            spool.write_status(&status);
            if idle_since.elapsed() >= idle_exit {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        idle_since = Instant::now();
        // History files go alone and first; segments in parallel batches.
        let batch: Vec<String> = if names[0].ends_with(".history") {
            vec![names[0].clone()]
        } else {
            names.into_iter().take(parallel.max(1) * 4).collect()
        };
        let results: Vec<(String, Result<()>)> = pool.install(|| {
            batch.par_iter().map(|n| (n.clone(), wal::push(repo, &pg_wal.join(n), level).map(|_| ()))).collect()
        });
        let mut failed = false;
        let mut done: BTreeSet<String> = BTreeSet::new();
        for (name, r) in results {
            match r {
                Ok(()) => {
                    let _ = fs::remove_file(spool.failed(&name));
                    if let Err(e) = File::create(spool.done(&name)) {
                        tracing::warn!("{}: {e}", spool.done(&name).display());
                    }
                    status.pushed_total += 1;
                    recent.insert(name.clone(), Instant::now());
                    done.insert(name);
                }
                // Gone from pg_wal: PostgreSQL archived it another way
                // (or it was removed); nothing left to do.
                Err(Error::Io { cause: source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    failed = true;
                    tracing::warn!("{name}: {e}");
                    let _ = fs::write(spool.failed(&name), e.to_string());
                    status.last_error = Some(format!("{}: {name}: {e}", Utc::now().format("%Y-%m-%d %H:%M:%S UTC")));
                }
            }
        }
        if let Some(last) = done.iter().next_back() {
            status.last_pushed = Some(last.clone());
            status.last_success = Some(Utc::now());
        }
        spool.write_status(&status);
        if failed {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(30));
        } else {
            backoff = Duration::from_millis(100);
        }
    }
}
