//! Keeping two prunes of one repository apart.
//!
//! Backups never lock: prune's two phases make them safe alongside it. Two
//! prunes are another matter — each rewrites the index from what it read,
//! and with `--instant` one could delete as stray a pack the other has just
//! written — so a prune announces itself with a lock file and backs off
//! when it finds an older one.
//!
//! Object stores give no atomic "create if absent" to build a mutex on
//! (Garage accepts a second conditional create), so the protocol is restic's:
//! write your own lock, then list; of two live locks the older (by time,
//! then name) wins and the younger withdraws. A lock is refreshed every
//! [`REFRESH`] while its prune runs and counts as abandoned after
//! [`STALE`] without a refresh, so a killed prune blocks others for at most
//! that long. This is a guard against mistakes (two cron jobs, an operator
//! running prune by hand during the nightly one), not a consensus protocol:
//! a store whose listings lag by more than the time between a lock's write
//! and its listing could let two through.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backend::FileKind;
use crate::envelope::EnvelopeKind;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repository::Repository;

/// How often a held lock is rewritten with a new time.
pub const REFRESH: Duration = Duration::from_secs(5 * 60);
/// A lock not refreshed for this long belongs to a prune that died.
pub const STALE: Duration = Duration::from_secs(30 * 60);

/// What a lock file holds (sealed, so host names stay private).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockInfo {
    pub operation: String,
    pub host: String,
    pub pid: u32,
    /// When the operation started.
    pub started: DateTime<Utc>,
    /// When this lock file was written (a refresh writes a new file).
    pub time: DateTime<Utc>,
    /// Makes every lock file's content, and so its name, unique.
    pub nonce: String,
}

impl Repository {
    fn write_lock(&self, info: &LockInfo) -> Result<Id> {
        self.write_sealed(FileKind::Lock, EnvelopeKind::Lock, &serde_json::to_vec(info).expect("locks serialise"), 0)
    }

    /// Every readable lock file. A lock that cannot be read (deleted while
    /// listed, written by another key) is skipped: it cannot be judged, and
    /// ignoring it only weakens a guard.
    pub fn list_locks(&self) -> Result<Vec<(Id, LockInfo)>> {
        let mut out = Vec::new();
        for (name, _) in self.backend().list(FileKind::Lock)? {
            let Ok(id) = name.parse::<Id>() else { continue };
            let Ok((_, plain)) = self.read_sealed(FileKind::Lock, EnvelopeKind::Lock, "lock", &id) else { continue };
            if let Ok(info) = serde_json::from_slice::<LockInfo>(&plain) {
                out.push((id, info));
            }
        }
        Ok(out)
    }
}

struct Shared {
    current: Mutex<Option<Id>>,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// A held lock; released (its file deleted) when dropped.
pub struct Lock {
    repo: Repository,
    shared: Arc<Shared>,
    refresher: Option<JoinHandle<()>>,
}

impl Lock {
    /// Takes the lock for `operation` or fails with [`Error::Locked`]
    /// naming the holder.
    pub fn acquire(repo: &Repository, operation: &str) -> Result<Lock> {
        Lock::acquire_at(repo, operation, Utc::now())
    }

    fn acquire_at(repo: &Repository, operation: &str, now: DateTime<Utc>) -> Result<Lock> {
        let info = LockInfo {
            operation: operation.to_string(),
            host: crate::snapshot::hostname(),
            pid: std::process::id(),
            started: now,
            time: now,
            nonce: hex::encode(crate::crypto::random_bytes::<16>()),
        };
        let mine = repo.write_lock(&info)?;
        let others: Vec<(Id, LockInfo)> = match repo.list_locks() {
            Ok(l) => l.into_iter().filter(|(id, l)| *id != mine && !is_stale(l, now)).collect(),
            Err(e) => {
                let _ = repo.backend().delete(FileKind::Lock, &mine.to_hex());
                return Err(e);
            }
        };
        if let Some((id, holder)) =
            others.iter().filter(|(id, l)| (l.time, *id) < (info.time, mine)).min_by_key(|(id, l)| (l.time, *id))
        {
            let _ = repo.backend().delete(FileKind::Lock, &mine.to_hex());
            return Err(Error::Locked {
                location: repo.backend().location().to_string(),
                holder: format!(
                    "{} is running (started {} on {}, pid {})",
                    holder.operation,
                    holder.started.format("%Y-%m-%d %H:%M:%S UTC"),
                    holder.host,
                    holder.pid
                ),
                lock: FileKind::Lock.path(&id.to_hex()),
            });
        }
        let shared =
            Arc::new(Shared { current: Mutex::new(Some(mine)), stop: Mutex::new(false), wake: Condvar::new() });
        let refresher = {
            let (repo, shared, info) = (repo.clone(), shared.clone(), info.clone());
            std::thread::spawn(move || refresh_loop(&repo, &shared, info))
        };
        Ok(Lock { repo: repo.clone(), shared, refresher: Some(refresher) })
    }

    /// The lock file now standing for this lock.
    pub fn id(&self) -> Option<Id> {
        *self.shared.current.lock().unwrap()
    }
}

fn is_stale(l: &LockInfo, now: DateTime<Utc>) -> bool {
    now.signed_duration_since(l.time).to_std().is_ok_and(|age| age > STALE)
}

/// Rewrites the lock every REFRESH until told to stop: the new file first,
/// then the old one deleted, so the lock never disappears in between.
fn refresh_loop(repo: &Repository, shared: &Shared, mut info: LockInfo) {
    let mut stop = shared.stop.lock().unwrap();
    loop {
        // Checked before waiting too: a lock dropped before this thread got
        // here has already sent its wake-up.
        if *stop {
            return;
        }
        let (guard, timeout) = shared.wake.wait_timeout(stop, REFRESH).unwrap();
        stop = guard;
        if *stop {
            return;
        }
        if !timeout.timed_out() {
            continue;
        }
        info.time = Utc::now();
        info.nonce = hex::encode(crate::crypto::random_bytes::<16>());
        match repo.write_lock(&info) {
            Ok(new) => {
                let old = shared.current.lock().unwrap().replace(new);
                if let Some(old) = old {
                    let _ = repo.backend().delete(FileKind::Lock, &old.to_hex());
                }
            }
            // The next attempt may work; until STALE passes the old file
            // still holds the lock.
            Err(e) => tracing::warn!("could not refresh the {} lock: {e}", info.operation),
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        *self.shared.stop.lock().unwrap() = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        if let Some(id) = self.shared.current.lock().unwrap().take() {
            if let Err(e) = self.repo.backend().delete(FileKind::Lock, &id.to_hex()) {
                tracing::warn!("could not remove lock {}: {e}", FileKind::Lock.path(&id.to_hex()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backend, Credential, InitOptions, KdfParams};

    fn repo(dir: &std::path::Path) -> Repository {
        let opts =
            InitOptions { kdf: KdfParams { memory_kib: 1024, iterations: 1, parallelism: 1 }, ..Default::default() };
        Repository::init(Backend::local(&dir.join("repo")).unwrap(), &Credential::password("pw"), opts).unwrap()
    }

    #[test]
    fn a_second_prune_is_refused_naming_the_first_and_may_run_once_it_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path());
        let first = Lock::acquire(&r, "prune").unwrap();
        let e = Lock::acquire(&r, "prune").err().expect("a second lock while the first is held");
        let text = e.to_string();
        assert!(text.contains("another prune is running") && text.contains("locks/"), "{text}");
        // The refused attempt left no lock of its own behind.
        assert_eq!(r.list_locks().unwrap().len(), 1);
        drop(first);
        assert!(r.list_locks().unwrap().is_empty());
        let _again = Lock::acquire(&r, "prune").unwrap();
    }

    #[test]
    fn a_lock_left_by_a_dead_prune_stops_counting_once_stale() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path());
        let long_ago = Utc::now() - chrono::Duration::from_std(STALE * 2).unwrap();
        let dead = Lock::acquire_at(&r, "prune", long_ago).unwrap();
        // A killed process never runs Drop: forget it.
        std::mem::forget(dead);
        let live = Lock::acquire(&r, "prune").unwrap();
        assert!(live.id().is_some());
    }

    #[test]
    fn of_two_simultaneous_locks_the_younger_withdraws() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path());
        // The other prune wrote its lock a moment before this one and had
        // not listed yet: this one must back off, not both go ahead.
        let earlier = LockInfo {
            operation: "prune".into(),
            host: "other-host".into(),
            pid: 4242,
            started: Utc::now() - chrono::Duration::seconds(1),
            time: Utc::now() - chrono::Duration::seconds(1),
            nonce: "x".into(),
        };
        r.write_lock(&earlier).unwrap();
        let e = Lock::acquire(&r, "prune").err().expect("the younger lock withdraws");
        assert!(e.to_string().contains("other-host") && e.to_string().contains("pid 4242"), "{e}");
    }
}
