//! The daemon's catalog: an embedded SQLite database of job runs,
//! snapshots seen, schedule state, the audit log and API tokens.
//!
//! The repositories stay the source of truth for what is stored; the
//! catalog remembers what the daemon did and when. Its schema moves forward
//! by numbered migrations recorded in `PRAGMA user_version`, each applied in
//! one transaction, so a daemon killed during an upgrade starts again from
//! the last whole step. A catalog written by a newer Arkiv is refused
//! rather than misread.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {path}: {error}")]
    Sql { path: String, error: rusqlite::Error },
    #[error("catalog {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("catalog {path}: {error}")]
    Io { path: String, error: std::io::Error },
}

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// Each entry is one schema step; its position + 1 is the version it
/// leads to. Never edit a step that has shipped: add one.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE job_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job TEXT NOT NULL,
        kind TEXT NOT NULL,
        target TEXT NOT NULL,
        trigger TEXT NOT NULL,
        requested_by TEXT,
        attempt INTEGER NOT NULL DEFAULT 1,
        retry_of INTEGER,
        priority INTEGER NOT NULL DEFAULT 0,
        args TEXT NOT NULL DEFAULT '[]',
        status TEXT NOT NULL,
        queued_at INTEGER NOT NULL,
        not_before INTEGER NOT NULL,
        started_at INTEGER,
        ended_at INTEGER,
        bytes INTEGER,
        files INTEGER,
        snapshot TEXT,
        progress TEXT,
        error TEXT,
        log_path TEXT
    );
    CREATE INDEX job_runs_job ON job_runs (job, id);
    CREATE INDEX job_runs_status ON job_runs (status);
    CREATE INDEX job_runs_retry_of ON job_runs (retry_of);
    CREATE TABLE schedule_state (
        job TEXT PRIMARY KEY,
        last_due INTEGER NOT NULL
    );
    CREATE TABLE snapshots (
        repository TEXT NOT NULL,
        id TEXT NOT NULL,
        source TEXT NOT NULL,
        host TEXT NOT NULL,
        time INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        tags TEXT NOT NULL,
        seen_at INTEGER NOT NULL,
        PRIMARY KEY (repository, id)
    );
    CREATE TABLE repository_state (
        name TEXT PRIMARY KEY,
        size_bytes INTEGER,
        snapshots INTEGER,
        last_check_at INTEGER,
        last_check_status TEXT,
        replication TEXT,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY,
        time TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        origin TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        last_used_at INTEGER,
        revoked_at INTEGER
    );",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// A job run's state. `Queued` runs wait for their time and a free slot;
/// the last five are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    /// Finished, but left something out (exit code 3).
    Partial,
    Failed,
    Cancelled,
    /// The daemon stopped (or was killed) while it ran.
    Interrupted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Partial => "partial",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        Some(match s {
            "queued" => RunStatus::Queued,
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "partial" => RunStatus::Partial,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            "interrupted" => RunStatus::Interrupted,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

/// One job run as the catalog keeps it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Run {
    pub id: i64,
    /// The job's name, e.g. `backup:shop`, `check:main`.
    pub job: String,
    /// backup, retention, check, check-data, replicate, verify, restore.
    pub kind: String,
    /// The source or repository it works on.
    pub target: String,
    /// schedule, catch-up, retry, api, after-backup (a replication), reschedule (after an interruption).
    pub trigger: String,
    pub requested_by: Option<String>,
    pub attempt: u32,
    pub priority: i32,
    /// Extra arguments (restore target, snapshot) given when it was requested.
    pub args: Vec<String>,
    pub status: RunStatus,
    pub queued_at: DateTime<Utc>,
    /// Not started before this time (retries wait here).
    pub not_before: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub bytes: Option<u64>,
    pub files: Option<u64>,
    pub snapshot: Option<String>,
    /// The last progress line of a running job.
    pub progress: Option<String>,
    pub error: Option<String>,
    #[serde(skip)]
    pub log_path: Option<PathBuf>,
    /// The run this one repeats (a retry, or a run the daemon's stop interrupted).
    pub retry_of: Option<i64>,
}

/// A run to be queued.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub job: String,
    pub kind: String,
    pub target: String,
    pub trigger: String,
    pub requested_by: Option<String>,
    pub attempt: u32,
    pub priority: i32,
    pub args: Vec<String>,
    pub not_before: DateTime<Utc>,
    pub retry_of: Option<i64>,
}

impl NewRun {
    /// A first attempt of `job`, with no arguments and no requester.
    pub fn first(
        job: &str,
        kind: &str,
        target: &str,
        trigger: &str,
        priority: i32,
        not_before: DateTime<Utc>,
    ) -> NewRun {
        NewRun {
            job: job.into(),
            kind: kind.into(),
            target: target.into(),
            trigger: trigger.into(),
            requested_by: None,
            attempt: 1,
            priority,
            args: Vec::new(),
            not_before,
            retry_of: None,
        }
    }

    /// `run` once more (a retry, or after an interruption): same job,
    /// target, requester, priority and arguments.
    pub fn again(run: &Run, trigger: &str, attempt: u32, not_before: DateTime<Utc>) -> NewRun {
        NewRun {
            requested_by: run.requested_by.clone(),
            args: run.args.clone(),
            attempt,
            retry_of: Some(run.id),
            ..NewRun::first(&run.job, &run.kind, &run.target, trigger, run.priority, not_before)
        }
    }
}

/// What a finished run produced.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub bytes: Option<u64>,
    pub files: Option<u64>,
    pub snapshot: Option<String>,
    pub error: Option<String>,
}

/// A snapshot as the daemon last saw it in a repository.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SnapshotSeen {
    pub repository: String,
    pub id: String,
    pub source: String,
    pub host: String,
    pub time: DateTime<Utc>,
    pub bytes: u64,
    pub tags: Vec<String>,
}

/// What the daemon last learnt about a repository.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct RepositoryState {
    pub size_bytes: Option<u64>,
    pub snapshots: Option<u64>,
    pub last_check_at: Option<DateTime<Utc>>,
    pub last_check_status: Option<String>,
    /// replication-status output per replica.
    #[schema(value_type = Object)]
    pub replication: Option<serde_json::Value>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// An API token's record; the token itself is never stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenRecord {
    pub id: i64,
    pub name: String,
    pub role: String,
    /// `cli`, `api` or `config`.
    pub origin: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Filters for listing runs.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub job: Option<String>,
    pub kind: Option<String>,
    pub target: Option<String>,
    pub status: Option<RunStatus>,
    pub before_id: Option<i64>,
    pub limit: usize,
}

pub struct Catalog {
    path: String,
    conn: Mutex<Connection>,
}

fn ts(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ts(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

const RUN_COLUMNS: &str = "id, job, kind, target, trigger, requested_by, attempt, priority, args, status, queued_at, \
    not_before, started_at, ended_at, bytes, files, snapshot, progress, error, log_path, retry_of";

fn run_from_row(r: &Row) -> rusqlite::Result<Run> {
    let args: String = r.get(8)?;
    let status: String = r.get(9)?;
    Ok(Run {
        id: r.get(0)?,
        job: r.get(1)?,
        kind: r.get(2)?,
        target: r.get(3)?,
        trigger: r.get(4)?,
        requested_by: r.get(5)?,
        attempt: r.get(6)?,
        priority: r.get(7)?,
        args: serde_json::from_str(&args).unwrap_or_default(),
        status: RunStatus::parse(&status).unwrap_or(RunStatus::Failed),
        queued_at: from_ts(r.get(10)?),
        not_before: from_ts(r.get(11)?),
        started_at: r.get::<_, Option<i64>>(12)?.map(from_ts),
        ended_at: r.get::<_, Option<i64>>(13)?.map(from_ts),
        bytes: r.get::<_, Option<i64>>(14)?.map(|b| b as u64),
        files: r.get::<_, Option<i64>>(15)?.map(|b| b as u64),
        snapshot: r.get(16)?,
        progress: r.get(17)?,
        error: r.get(18)?,
        log_path: r.get::<_, Option<String>>(19)?.map(PathBuf::from),
        retry_of: r.get(20)?,
    })
}

impl Catalog {
    /// Opens (creating if needed) the catalog at `path` and brings its
    /// schema up to date.
    pub fn open(path: &Path) -> Result<Catalog> {
        let shown = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| CatalogError::Io { path: shown.clone(), error })?;
        }
        let sql = |error| CatalogError::Sql { path: shown.clone(), error };
        let conn = Connection::open(path).map_err(sql)?;
        // WAL: the API reads while a job's end is written; synchronous=FULL
        // so that a run recorded as finished stays finished after power loss.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(sql)?;
        let catalog = Catalog { path: shown, conn: Mutex::new(conn) };
        catalog.migrate()?;
        Ok(catalog)
    }

    /// Takes the catalog for one daemon: an exclusive lock on
    /// `CATALOG.lock`, held as long as the returned file is open. A second
    /// `arkiv serve` on the same catalog would mark the first one's running
    /// jobs interrupted and run them twice; it stops here instead. The CLI's
    /// `token` and `audit` commands do not take it.
    pub fn lock_for_daemon(path: &Path) -> Result<std::fs::File> {
        use std::io::{Read, Seek, Write};
        use std::os::unix::io::AsRawFd;
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let shown = lock_path.display().to_string();
        if let Some(dir) = lock_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| CatalogError::Io { path: shown.clone(), error })?;
        }
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|error| CatalogError::Io { path: shown.clone(), error })?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            let holder = if holder.trim().is_empty() { "unknown".to_string() } else { holder.trim().to_string() };
            return Err(CatalogError::Invalid {
                path: path.display().to_string(),
                message: format!("in use by another arkiv serve (pid {}); one daemon per catalog", holder),
            });
        }
        let _ = f.set_len(0);
        let _ = f.rewind();
        let _ = writeln!(f, "{}", std::process::id());
        Ok(f)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sql(&self, error: rusqlite::Error) -> CatalogError {
        CatalogError::Sql { path: self.path.clone(), error }
    }

    /// Every row of a query, mapped.
    fn rows<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        map: impl FnMut(&Row) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(sql).map_err(|e| self.sql(e))?;
        let rows = stmt.query_map(params, map).map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| self.sql(e))
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.conn();
        let version: usize =
            conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).map_err(|e| self.sql(e))? as usize;
        if version > SCHEMA_VERSION {
            return Err(CatalogError::Invalid {
                path: self.path.clone(),
                message: format!(
                    "schema version {version} is newer than this Arkiv's {SCHEMA_VERSION}: upgrade Arkiv, or restore the catalog's backup"
                ),
            });
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction().map_err(|e| CatalogError::Sql { path: self.path.clone(), error: e })?;
            tx.execute_batch(step).map_err(|e| CatalogError::Sql { path: self.path.clone(), error: e })?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(|e| CatalogError::Sql { path: self.path.clone(), error: e })?;
            tx.commit().map_err(|e| CatalogError::Sql { path: self.path.clone(), error: e })?;
        }
        Ok(())
    }

    pub fn schema_version(&self) -> Result<usize> {
        self.conn()
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .map(|v| v as usize)
            .map_err(|e| self.sql(e))
    }

    // ---- job runs

    pub fn insert_run(&self, n: &NewRun, now: DateTime<Utc>) -> Result<Run> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO job_runs (job, kind, target, trigger, requested_by, attempt, priority, args, status, queued_at, not_before, retry_of)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9, ?10, ?11)",
            params![
                n.job,
                n.kind,
                n.target,
                n.trigger,
                n.requested_by,
                n.attempt,
                n.priority,
                serde_json::to_string(&n.args).unwrap_or_default(),
                ts(now),
                ts(n.not_before),
                n.retry_of
            ],
        )
        .map_err(|e| self.sql(e))?;
        let id = conn.last_insert_rowid();
        drop(conn);
        self.run(id)?
            .ok_or_else(|| CatalogError::Invalid { path: self.path.clone(), message: format!("run {id} vanished") })
    }

    pub fn run(&self, id: i64) -> Result<Option<Run>> {
        self.conn()
            .query_row(&format!("SELECT {RUN_COLUMNS} FROM job_runs WHERE id = ?1"), [id], run_from_row)
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Marks a queued run as running. False when it is no longer queued
    /// (cancelled in the meantime): then it must not run.
    pub fn start_run(&self, id: i64, at: DateTime<Utc>, log_path: &Path) -> Result<bool> {
        let n = self
            .conn()
            .execute(
                "UPDATE job_runs SET status = 'running', started_at = ?2, log_path = ?3 WHERE id = ?1 AND status = 'queued'",
                params![id, ts(at), log_path.display().to_string()],
            )
            .map_err(|e| self.sql(e))?;
        Ok(n == 1)
    }

    pub fn set_progress(&self, id: i64, progress: &str) -> Result<()> {
        self.conn()
            .execute("UPDATE job_runs SET progress = ?2 WHERE id = ?1 AND status = 'running'", params![id, progress])
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn finish_run(&self, id: i64, status: RunStatus, at: DateTime<Utc>, o: &Outcome) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE job_runs SET status = ?2, ended_at = ?3, bytes = ?4, files = ?5, snapshot = ?6, error = ?7 WHERE id = ?1",
                params![
                    id,
                    status.as_str(),
                    ts(at),
                    o.bytes.map(|b| b as i64),
                    o.files.map(|b| b as i64),
                    o.snapshot,
                    o.error
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Cancels a run that has not started. False when it is not queued.
    pub fn cancel_queued(&self, id: i64, at: DateTime<Utc>, by: &str) -> Result<bool> {
        let n = self
            .conn()
            .execute(
                "UPDATE job_runs SET status = 'cancelled', ended_at = ?2, error = ?3 WHERE id = ?1 AND status = 'queued'",
                params![id, ts(at), format!("cancelled by {by} before it started")],
            )
            .map_err(|e| self.sql(e))?;
        Ok(n == 1)
    }

    pub fn list_runs(&self, f: &RunFilter) -> Result<Vec<Run>> {
        let mut sql = format!("SELECT {RUN_COLUMNS} FROM job_runs WHERE 1=1");
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        let mut add = |clause: &str, v: rusqlite::types::Value| {
            values.push(v);
            sql.push_str(&format!(" AND {clause} ?{}", values.len()));
        };
        if let Some(j) = &f.job {
            add("job =", j.clone().into());
        }
        if let Some(k) = &f.kind {
            add("kind =", k.clone().into());
        }
        if let Some(t) = &f.target {
            add("target =", t.clone().into());
        }
        if let Some(s) = f.status {
            add("status =", s.as_str().to_string().into());
        }
        if let Some(b) = f.before_id {
            add("id <", b.into());
        }
        let limit = if f.limit == 0 { 100 } else { f.limit.min(1000) };
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        self.rows(&sql, rusqlite::params_from_iter(values), run_from_row)
    }

    /// Runs waiting to start, oldest first.
    pub fn queued_runs(&self) -> Result<Vec<Run>> {
        self.rows(&format!("SELECT {RUN_COLUMNS} FROM job_runs WHERE status = 'queued' ORDER BY id"), [], run_from_row)
    }

    /// How many runs wait to start (the queue gauge, every second).
    pub fn count_queued(&self) -> Result<usize> {
        self.conn()
            .query_row("SELECT count(*) FROM job_runs WHERE status = 'queued'", [], |r| r.get::<_, i64>(0))
            .map(|n| n as usize)
            .map_err(|e| self.sql(e))
    }

    /// Marks every run still recorded as running as interrupted (the daemon
    /// that ran it is gone) and returns them, so they can be queued again.
    pub fn mark_interrupted(&self, at: DateTime<Utc>, why: &str) -> Result<Vec<Run>> {
        let running =
            self.list_runs(&RunFilter { status: Some(RunStatus::Running), limit: 1000, ..Default::default() })?;
        let conn = self.conn();
        for r in &running {
            conn.execute(
                "UPDATE job_runs SET status = 'interrupted', ended_at = ?2, error = ?3 WHERE id = ?1",
                params![r.id, ts(at), why],
            )
            .map_err(|e| self.sql(e))?;
        }
        Ok(running)
    }

    /// Interrupted runs that no later run repeats yet.
    pub fn interrupted_not_requeued(&self) -> Result<Vec<Run>> {
        self.rows(
            &format!(
                "SELECT {RUN_COLUMNS} FROM job_runs r WHERE status = 'interrupted'
                 AND NOT EXISTS (SELECT 1 FROM job_runs x WHERE x.retry_of = r.id) ORDER BY id"
            ),
            [],
            run_from_row,
        )
    }

    /// The newest run of `job` in one of `statuses`.
    pub fn last_run(&self, job: &str, statuses: &[RunStatus]) -> Result<Option<Run>> {
        let list = statuses.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(",");
        self.conn()
            .query_row(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM job_runs WHERE job = ?1 AND status IN ({list}) ORDER BY id DESC LIMIT 1"
                ),
                [job],
                run_from_row,
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    // ---- schedule state

    pub fn last_due(&self, job: &str) -> Result<Option<DateTime<Utc>>> {
        self.conn()
            .query_row("SELECT last_due FROM schedule_state WHERE job = ?1", [job], |r| r.get::<_, i64>(0))
            .optional()
            .map(|v| v.map(from_ts))
            .map_err(|e| self.sql(e))
    }

    pub fn set_last_due(&self, job: &str, at: DateTime<Utc>) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO schedule_state (job, last_due) VALUES (?1, ?2)
                 ON CONFLICT (job) DO UPDATE SET last_due = excluded.last_due",
                params![job, ts(at)],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Forgets finished runs that ended before `before`, keeping for every
    /// job its newest run in each final state, so that "last run", "last
    /// success" and the RPO age never change because history was pruned,
    /// and every run that retried a kept run (else a kept interrupted run
    /// would look never requeued, and be run again at the next start).
    /// Returns how many runs went and their log files, for the caller to
    /// delete: a daemon starting a job every minute adds half a million
    /// runs and logs a year. The audit log is not touched.
    pub fn prune_runs(&self, before: DateTime<Utc>) -> Result<(usize, Vec<PathBuf>)> {
        const KEEP: &str = "WITH RECURSIVE keep(id) AS (
                SELECT id FROM job_runs
                 WHERE status IN ('queued', 'running') OR ended_at IS NULL OR ended_at >= ?1
                    OR id IN (SELECT MAX(id) FROM job_runs GROUP BY job, status)
                UNION
                SELECT r.id FROM job_runs r JOIN keep k ON r.retry_of = k.id
            )";
        let mut conn = self.conn();
        let sql = |e| CatalogError::Sql { path: self.path.clone(), error: e };
        let tx = conn.transaction().map_err(sql)?;
        let logs = tx
            .prepare(&format!(
                "{KEEP} SELECT log_path FROM job_runs WHERE id NOT IN (SELECT id FROM keep) AND log_path IS NOT NULL"
            ))
            .and_then(|mut q| q.query_map([ts(before)], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>())
            .map_err(sql)?;
        let n = tx
            .execute(&format!("{KEEP} DELETE FROM job_runs WHERE id NOT IN (SELECT id FROM keep)"), [ts(before)])
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok((n, logs.into_iter().map(PathBuf::from).collect()))
    }

    // ---- snapshots and repositories

    /// Replaces what is known of a repository's snapshots by a fresh listing.
    pub fn replace_snapshots(&self, repository: &str, list: &[SnapshotSeen], now: DateTime<Utc>) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| CatalogError::Sql { path: self.path.clone(), error: e })?;
        let sql = |e| CatalogError::Sql { path: self.path.clone(), error: e };
        tx.execute("DELETE FROM snapshots WHERE repository = ?1", [repository]).map_err(sql)?;
        for s in list {
            tx.execute(
                "INSERT OR REPLACE INTO snapshots (repository, id, source, host, time, bytes, tags, seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    repository,
                    s.id,
                    s.source,
                    s.host,
                    ts(s.time),
                    s.bytes as i64,
                    serde_json::to_string(&s.tags).unwrap_or_default(),
                    ts(now)
                ],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)
    }

    pub fn snapshots(&self, repository: Option<&str>, source: Option<&str>, limit: usize) -> Result<Vec<SnapshotSeen>> {
        self.rows(
            "SELECT repository, id, source, host, time, bytes, tags FROM snapshots
             WHERE (?1 IS NULL OR repository = ?1) AND (?2 IS NULL OR source = ?2)
             ORDER BY time DESC LIMIT ?3",
            params![repository, source, limit.clamp(1, 10_000) as i64],
            |r| {
                let tags: String = r.get(6)?;
                Ok(SnapshotSeen {
                    repository: r.get(0)?,
                    id: r.get(1)?,
                    source: r.get(2)?,
                    host: r.get(3)?,
                    time: from_ts(r.get(4)?),
                    bytes: r.get::<_, i64>(5)? as u64,
                    tags: serde_json::from_str(&tags).unwrap_or_default(),
                })
            },
        )
    }

    pub fn repository_state(&self, name: &str) -> Result<RepositoryState> {
        self.conn()
            .query_row(
                "SELECT size_bytes, snapshots, last_check_at, last_check_status, replication, updated_at
                 FROM repository_state WHERE name = ?1",
                [name],
                |r| {
                    Ok(RepositoryState {
                        size_bytes: r.get::<_, Option<i64>>(0)?.map(|v| v as u64),
                        snapshots: r.get::<_, Option<i64>>(1)?.map(|v| v as u64),
                        last_check_at: r.get::<_, Option<i64>>(2)?.map(from_ts),
                        last_check_status: r.get(3)?,
                        replication: r.get::<_, Option<String>>(4)?.and_then(|s| serde_json::from_str(&s).ok()),
                        updated_at: r.get::<_, Option<i64>>(5)?.map(from_ts),
                    })
                },
            )
            .optional()
            .map(Option::unwrap_or_default)
            .map_err(|e| self.sql(e))
    }

    /// Updates the fields given (`Some`) of a repository's state.
    pub fn update_repository_state(&self, name: &str, s: &RepositoryState, now: DateTime<Utc>) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO repository_state (name, size_bytes, snapshots, last_check_at, last_check_status, replication, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (name) DO UPDATE SET
                   size_bytes = coalesce(excluded.size_bytes, size_bytes),
                   snapshots = coalesce(excluded.snapshots, snapshots),
                   last_check_at = coalesce(excluded.last_check_at, last_check_at),
                   last_check_status = coalesce(excluded.last_check_status, last_check_status),
                   replication = coalesce(excluded.replication, replication),
                   updated_at = excluded.updated_at",
                params![
                    name,
                    s.size_bytes.map(|v| v as i64),
                    s.snapshots.map(|v| v as i64),
                    s.last_check_at.map(ts),
                    s.last_check_status,
                    s.replication.as_ref().map(|v| v.to_string()),
                    ts(now)
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    // ---- API tokens

    pub fn create_token(&self, name: &str, role: &str, hash: &str, origin: &str, now: DateTime<Utc>) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO api_tokens (name, role, hash, origin, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, role, hash, origin, ts(now)],
        )
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                CatalogError::Invalid {
                    path: self.path.clone(),
                    message: format!("a token named '{name}' already exists"),
                }
            }
            e => self.sql(e),
        })?;
        Ok(conn.last_insert_rowid())
    }

    /// Makes a token declared in the configuration file match its file:
    /// created, or its hash and role replaced, and revoked when the file's
    /// user is gone (`keep` lists the users the file still has).
    pub fn sync_config_tokens(&self, users: &[(String, String, String)], now: DateTime<Utc>) -> Result<()> {
        let conn = self.conn();
        let sql = |e| CatalogError::Sql { path: self.path.clone(), error: e };
        for (name, role, hash) in users {
            let other: Option<String> = conn
                .query_row("SELECT origin FROM api_tokens WHERE name = ?1 AND origin != 'config'", [name], |r| r.get(0))
                .optional()
                .map_err(sql)?;
            if let Some(origin) = other {
                return Err(CatalogError::Invalid {
                    path: self.path.clone(),
                    message: format!(
                        "users.{name}: a token named '{name}' was made with `arkiv token create` ({origin}); rename the user in the configuration"
                    ),
                });
            }
            conn.execute(
                "INSERT INTO api_tokens (name, role, hash, origin, created_at) VALUES (?1, ?2, ?3, 'config', ?4)
                 ON CONFLICT (name) DO UPDATE SET role = excluded.role, hash = excluded.hash, revoked_at = NULL
                 WHERE api_tokens.origin = 'config'",
                params![name, role, hash, ts(now)],
            )
            .map_err(sql)?;
        }
        let names: Vec<&str> = users.iter().map(|(n, _, _)| n.as_str()).collect();
        let mut stmt = conn
            .prepare("SELECT id, name FROM api_tokens WHERE origin = 'config' AND revoked_at IS NULL")
            .map_err(sql)?;
        let existing: Vec<(i64, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(sql)?
            .collect::<rusqlite::Result<_>>()
            .map_err(sql)?;
        for (id, name) in existing {
            if !names.contains(&name.as_str()) {
                conn.execute("UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1", params![id, ts(now)])
                    .map_err(sql)?;
            }
        }
        Ok(())
    }

    /// The live token with this hash: (name, role).
    pub fn token_by_hash(&self, hash: &str, now: DateTime<Utc>) -> Result<Option<(String, String)>> {
        let conn = self.conn();
        let found = conn
            .query_row("SELECT id, name, role FROM api_tokens WHERE hash = ?1 AND revoked_at IS NULL", [hash], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
            })
            .optional()
            .map_err(|e| self.sql(e))?;
        if let Some((id, _, _)) = &found {
            // Best effort: the time of last use is informative only.
            let _ = conn.execute("UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1", params![id, ts(now)]);
        }
        Ok(found.map(|(_, n, r)| (n, r)))
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        self.rows(
            "SELECT id, name, role, origin, created_at, last_used_at, revoked_at FROM api_tokens ORDER BY id",
            [],
            |r| {
                Ok(TokenRecord {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    role: r.get(2)?,
                    origin: r.get(3)?,
                    created_at: from_ts(r.get(4)?),
                    last_used_at: r.get::<_, Option<i64>>(5)?.map(from_ts),
                    revoked_at: r.get::<_, Option<i64>>(6)?.map(from_ts),
                })
            },
        )
    }

    /// Revokes a token by name. False when there is no live token of that name.
    pub fn revoke_token(&self, name: &str, now: DateTime<Utc>) -> Result<bool> {
        let n = self
            .conn()
            .execute(
                "UPDATE api_tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                params![name, ts(now)],
            )
            .map_err(|e| self.sql(e))?;
        Ok(n == 1)
    }

    // ---- audit log (the chain itself is in `audit`)

    pub(crate) fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut conn = self.conn();
        f(&mut conn).map_err(|e| self.sql(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_run(job: &str) -> NewRun {
        NewRun {
            job: job.into(),
            kind: "backup".into(),
            target: "shop".into(),
            trigger: "schedule".into(),
            requested_by: None,
            attempt: 1,
            priority: 0,
            args: vec![],
            not_before: Utc::now(),
            retry_of: None,
        }
    }

    #[test]
    fn migrations_run_once_and_a_newer_catalog_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/catalog.db");
        let c = Catalog::open(&path).unwrap();
        assert_eq!(c.schema_version().unwrap(), SCHEMA_VERSION);
        c.insert_run(&new_run("backup:shop"), Utc::now()).unwrap();
        drop(c);
        // Opening again keeps the data (no step runs twice).
        let c = Catalog::open(&path).unwrap();
        assert_eq!(c.list_runs(&RunFilter::default()).unwrap().len(), 1);
        c.with_conn(|conn| conn.pragma_update(None, "user_version", 999)).unwrap();
        drop(c);
        let e = Catalog::open(&path).err().unwrap().to_string();
        assert!(e.contains("schema version 999 is newer"), "{e}");
    }

    #[test]
    fn runs_move_through_their_states_and_interrupted_ones_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("c.db")).unwrap();
        let a = c.insert_run(&new_run("backup:shop"), Utc::now()).unwrap();
        let b = c.insert_run(&new_run("backup:shop"), Utc::now()).unwrap();
        assert_eq!(c.queued_runs().unwrap().len(), 2);
        assert!(c.start_run(a.id, Utc::now(), Path::new("/tmp/log")).unwrap());
        assert!(!c.start_run(a.id, Utc::now(), Path::new("/tmp/log")).unwrap(), "only a queued run starts");
        c.set_progress(a.id, "1 GiB read").unwrap();
        assert_eq!(c.run(a.id).unwrap().unwrap().progress.as_deref(), Some("1 GiB read"));
        assert!(c.cancel_queued(b.id, Utc::now(), "alice").unwrap());
        assert!(!c.cancel_queued(a.id, Utc::now(), "alice").unwrap(), "a running run is not cancelled here");
        let gone = c.mark_interrupted(Utc::now(), "daemon restarted").unwrap();
        assert_eq!(gone.iter().map(|r| r.id).collect::<Vec<_>>(), [a.id]);
        assert_eq!(c.run(a.id).unwrap().unwrap().status, RunStatus::Interrupted);
        let d = c.insert_run(&new_run("backup:shop"), Utc::now()).unwrap();
        c.finish_run(d.id, RunStatus::Succeeded, Utc::now(), &Outcome { bytes: Some(5), ..Default::default() })
            .unwrap();
        assert_eq!(c.last_run("backup:shop", &[RunStatus::Succeeded]).unwrap().unwrap().id, d.id);
        let failed = c.list_runs(&RunFilter { status: Some(RunStatus::Cancelled), ..Default::default() }).unwrap();
        assert_eq!(failed.len(), 1);
    }

    #[test]
    fn pruning_history_keeps_each_jobs_newest_run_in_every_state() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("c.db")).unwrap();
        let day = |d: i64| Utc::now() - chrono::Duration::days(d);
        // (job, status, days ago it ended); ids in this order, oldest first.
        let runs = [
            ("backup:shop", RunStatus::Succeeded, 100), // old, superseded
            ("backup:shop", RunStatus::Succeeded, 95),  // newest success, old
            ("backup:shop", RunStatus::Failed, 99),     // old, superseded
            ("backup:shop", RunStatus::Failed, 90),     // old, superseded by the next
            ("backup:shop", RunStatus::Failed, 10),     // recent
            ("check:main", RunStatus::Succeeded, 200),  // the only check: kept
        ];
        let mut ids = Vec::new();
        for (job, status, ago) in runs {
            let r = c.insert_run(&new_run(job), day(ago)).unwrap();
            assert!(c.start_run(r.id, day(ago), &dir.path().join(format!("{}.log", r.id))).unwrap());
            c.finish_run(r.id, status, day(ago), &Outcome::default()).unwrap();
            ids.push(r.id);
        }
        let queued = c.insert_run(&new_run("backup:shop"), day(300)).unwrap();
        let (n, logs) = c.prune_runs(day(30)).unwrap();
        assert_eq!(n, 3);
        let kept: Vec<i64> = c.list_runs(&RunFilter::default()).unwrap().iter().map(|r| r.id).collect();
        // Pruned: the superseded old success and both old failures that a
        // newer failure supersedes; their logs are handed back.
        for gone in [ids[0], ids[2], ids[3]] {
            assert!(!kept.contains(&gone), "run {gone} should be pruned: {kept:?}");
            assert!(logs.contains(&dir.path().join(format!("{gone}.log"))), "{logs:?}");
        }
        for stays in [ids[1], ids[4], ids[5], queued.id] {
            assert!(kept.contains(&stays), "run {stays} should stay: {kept:?}");
        }
        assert_eq!(logs.len(), 3);
        let ok = c.last_run("backup:shop", &[RunStatus::Succeeded]).unwrap().unwrap();
        assert_eq!(ok.id, ids[1], "the last success survives however old");
    }

    #[test]
    fn pruning_history_keeps_the_retries_of_kept_runs() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("c.db")).unwrap();
        let day = |d: i64| Utc::now() - chrono::Duration::days(d);
        let finish = |n: NewRun, status: RunStatus, ago: i64| {
            let r = c.insert_run(&n, day(ago)).unwrap();
            assert!(c.start_run(r.id, day(ago), Path::new("/nonexistent/log")).unwrap());
            c.finish_run(r.id, status, day(ago), &Outcome::default()).unwrap();
            c.run(r.id).unwrap().unwrap()
        };
        // Interrupted, retried and interrupted again, retried and succeeded,
        // all long ago; a newer success supersedes the retry's.
        let r = finish(new_run("backup:shop"), RunStatus::Interrupted, 100);
        let s = finish(NewRun::again(&r, "reschedule", 1, day(99)), RunStatus::Interrupted, 99);
        let t = finish(NewRun::again(&s, "reschedule", 1, day(98)), RunStatus::Succeeded, 98);
        let u = finish(new_run("backup:shop"), RunStatus::Succeeded, 1);
        let (n, _) = c.prune_runs(day(30)).unwrap();
        assert_eq!(n, 1, "only the first interruption goes");
        assert!(c.run(r.id).unwrap().is_none());
        for kept in [s.id, t.id, u.id] {
            assert!(c.run(kept).unwrap().is_some(), "run {kept}");
        }
        assert!(c.interrupted_not_requeued().unwrap().is_empty(), "the kept interruption still shows its retry");
    }

    #[test]
    fn tokens_are_found_by_hash_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("c.db")).unwrap();
        c.create_token("ci", "operator", "h1", "cli", Utc::now()).unwrap();
        assert!(c
            .create_token("ci", "viewer", "h2", "cli", Utc::now())
            .unwrap_err()
            .to_string()
            .contains("already exists"));
        assert_eq!(c.token_by_hash("h1", Utc::now()).unwrap(), Some(("ci".into(), "operator".into())));
        assert!(c.revoke_token("ci", Utc::now()).unwrap());
        assert_eq!(c.token_by_hash("h1", Utc::now()).unwrap(), None);
        c.sync_config_tokens(&[("ops".into(), "admin".into(), "h3".into())], Utc::now()).unwrap();
        assert!(c.token_by_hash("h3", Utc::now()).unwrap().is_some());
        c.sync_config_tokens(&[], Utc::now()).unwrap();
        assert!(c.token_by_hash("h3", Utc::now()).unwrap().is_none(), "a user removed from the file loses access");
    }
}
