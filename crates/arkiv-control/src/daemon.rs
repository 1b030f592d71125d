//! The scheduler and job supervisor: decides which runs are due, starts
//! them within the concurrency limits, records every step in the catalog,
//! retries failures with backoff, and stops cleanly.
//!
//! The catalog is the queue: a run is written as `queued` before anything
//! else happens to it, so a daemon killed at any moment restarts with its
//! history and its queue whole. Runs found `running` at start-up belonged
//! to a daemon that died; they are marked interrupted and queued again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::{watch, Notify};

use crate::audit;
use crate::catalog::{Catalog, CatalogError, NewRun, Outcome, RepositoryState, Run, RunStatus, SnapshotSeen};
use crate::config::Config;
use crate::jobs::{self, JobDef, JobKind};
use crate::metrics::{JobLabel, JobStatusLabel, Metrics, ReplicaLabel, RepoLabel, SourceLabel};
use crate::runner;
use crate::schedule::{Clock, Schedule};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the state (a run already queued).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
}

/// The longest a status query (snapshots, stats, replication-status) may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(300);

/// Why a running job was told to stop.
const CANCEL_USER: u8 = 1;
const CANCEL_STOP: u8 = 2;

struct Active {
    job: String,
    repository: String,
    /// 0 while running; [`CANCEL_USER`] or [`CANCEL_STOP`] once told to stop.
    cancel: watch::Sender<u8>,
}

#[derive(Default)]
struct State {
    next_due: HashMap<String, DateTime<Utc>>,
    running: HashMap<i64, Active>,
}

pub struct Daemon {
    pub config: Config,
    pub config_path: PathBuf,
    /// The `arkiv` binary jobs run as.
    pub exe: PathBuf,
    pub catalog: Catalog,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    pub jobs: BTreeMap<String, JobDef>,
    log_dir: PathBuf,
    state: Mutex<State>,
    /// Held from "is a run of this job pending?" to the insert, so that the
    /// scheduler and API requests never queue a job twice.
    enqueue: Mutex<()>,
    wake: Notify,
    stopping: AtomicBool,
    /// Set once the first scheduling pass is done: `/readyz`.
    ready: AtomicBool,
    /// When run history was last pruned (by the daemon's clock).
    history_pruned: Mutex<Option<DateTime<Utc>>>,
}

impl Daemon {
    pub fn new(
        config: Config,
        config_path: &Path,
        exe: &Path,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Daemon>, DaemonError> {
        let catalog = Catalog::open(&config.daemon.catalog)?;
        let log_dir = config
            .daemon
            .job_log_dir
            .clone()
            .unwrap_or_else(|| config.daemon.catalog.parent().unwrap_or(Path::new(".")).join("job-logs"));
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| DaemonError::Invalid(format!("job log directory {}: {e}", log_dir.display())))?;
        let jobs = jobs::job_defs(&config);
        let metrics = Metrics::new();
        let sources: Vec<String> = config.sources.keys().cloned().collect();
        let pitr: Vec<String> =
            config.sources.iter().filter(|(_, s)| s.pitr.is_some()).map(|(n, _)| n.clone()).collect();
        let repos: Vec<String> = config.repositories.keys().cloned().collect();
        let replicas: Vec<(String, String)> = config
            .repositories
            .iter()
            .flat_map(|(n, r)| r.replicas.iter().map(move |x| (n.clone(), x.clone())))
            .collect();
        metrics.init_series(&sources, &pitr, &jobs.keys().cloned().collect::<Vec<_>>(), &repos, &replicas);
        for (name, s) in &config.sources {
            if let Some(rpo) = s.rpo {
                metrics.source_rpo.get_or_create(&SourceLabel { source: name.clone() }).set(rpo.as_secs_f64());
            }
        }
        let d = Daemon {
            config,
            config_path: config_path.to_path_buf(),
            exe: exe.to_path_buf(),
            catalog,
            clock,
            metrics,
            jobs,
            log_dir,
            state: Mutex::new(State::default()),
            enqueue: Mutex::new(()),
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            history_pruned: Mutex::new(None),
        };
        d.sync_tokens()?;
        d.load_metrics_from_history()?;
        Ok(Arc::new(d))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.stopping.load(Ordering::Relaxed)
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Users of the configuration file get their tokens (hashed) in the catalog.
    fn sync_tokens(&self) -> Result<(), DaemonError> {
        let mut users: Vec<(String, String, String)> = Vec::new();
        for (name, u) in &self.config.users {
            let token = self.config.user_token(name).map_err(|e| DaemonError::Invalid(e.to_string()))?;
            let hash = crate::token::hash(&token);
            if let Some((other, _, _)) = users.iter().find(|(_, _, h)| *h == hash) {
                return Err(DaemonError::Invalid(format!(
                    "{}: users.{other} and users.{name} have the same token ({} and {}): each user needs its own",
                    self.config.path,
                    self.config.users[other].token_file.display(),
                    u.token_file.display()
                )));
            }
            users.push((name.clone(), u.role.as_str().to_string(), hash));
        }
        self.catalog.sync_config_tokens(&users, self.now())?;
        Ok(())
    }

    /// Metrics that describe history (the newest success) come from the
    /// catalog, so a restart does not reset them to zero.
    fn load_metrics_from_history(&self) -> Result<(), DaemonError> {
        for name in self.config.sources.keys() {
            let job = JobDef::name_of(JobKind::Backup, name);
            if let Some(r) = self.catalog.last_run(&job, &[RunStatus::Succeeded, RunStatus::Partial])? {
                if let Some(end) = r.ended_at {
                    self.metrics
                        .backup_last_success
                        .get_or_create(&SourceLabel { source: name.clone() })
                        .set(end.timestamp_millis() as f64 / 1000.0);
                }
            }
        }
        for name in self.config.repositories.keys() {
            let st = self.catalog.repository_state(name)?;
            self.apply_repository_metrics(name, &st);
        }
        Ok(())
    }

    /// Start-up: runs a dead daemon left running are interrupted and queued
    /// again; missed schedules are caught up; the first due times are set.
    pub fn recover(&self) -> Result<Vec<Run>, DaemonError> {
        let now = self.now();
        let dead = self.catalog.mark_interrupted(now, "the daemon stopped while it ran")?;
        for r in &dead {
            tracing::warn!(run = r.id, job = %r.job, "run was interrupted by the daemon's stop; queued again");
            self.metrics
                .job_runs
                .get_or_create(&JobStatusLabel { job: r.job.clone(), status: RunStatus::Interrupted.as_str().into() })
                .inc();
        }
        let mut queued = Vec::new();
        for r in self.catalog.interrupted_not_requeued()? {
            if r.kind == JobKind::Restore.as_str() {
                // A restore may have half-written its target: an operator
                // decides whether to run it again.
                continue;
            }
            let n = NewRun::again(&r, "reschedule", r.attempt, now);
            queued.push(self.catalog.insert_run(&n, now)?);
        }
        let mut state = self.state();
        for def in self.jobs.values() {
            let Some(s) = &def.schedule else { continue };
            let last = self.catalog.last_due(&def.name)?;
            if let Some(last) = last {
                // Not when a run of it is already queued (requeued above, or
                // one that was waiting for its window or a slot).
                let waiting = self.catalog.queued_runs()?.iter().any(|r| r.job == def.name);
                if s.catch_up && s.missed_since(last, now) && !waiting {
                    tracing::info!(job = %def.name, "catching up a run missed while the daemon was down");
                    queued.push(self.insert_scheduled(def, s, now, "catch-up")?);
                    self.catalog.set_last_due(&def.name, now)?;
                }
            }
            // An interval counts from when the job was last due, so a
            // restart does not push the next run a whole interval away.
            let base = match last {
                Some(l) if s.next_due(l).is_some_and(|n| n > now) => l,
                _ => now,
            };
            if let Some(next) = s.next_due(base) {
                state.next_due.insert(def.name.clone(), next);
            }
        }
        drop(state);
        let _ = audit::append(
            &self.catalog,
            "daemon",
            "daemon.start",
            &self.config.path,
            &json!({
                "interrupted": dead.iter().map(|r| r.id).collect::<Vec<_>>(),
                "requeued": queued.iter().map(|r| r.id).collect::<Vec<_>>(),
            }),
        );
        self.update_queue_metrics()?;
        Ok(queued)
    }

    fn insert_scheduled(
        &self,
        def: &JobDef,
        s: &Schedule,
        due: DateTime<Utc>,
        trigger: &str,
    ) -> Result<Run, DaemonError> {
        let jitter = chrono::Duration::from_std(s.jitter_delay()).unwrap_or_default();
        let n =
            NewRun::first(&def.name, def.kind.as_str(), &def.target, trigger, s.priority, s.into_window(due + jitter));
        Ok(self.catalog.insert_run(&n, self.now())?)
    }

    /// Whether a run of `job` is queued or running.
    fn pending(&self, job: &str) -> Result<Option<Run>, DaemonError> {
        let queued = self.catalog.queued_runs()?;
        if let Some(r) = queued.into_iter().find(|r| r.job == job) {
            return Ok(Some(r));
        }
        let running: Vec<i64> = self.state().running.iter().filter(|(_, a)| a.job == job).map(|(id, _)| *id).collect();
        match running.first() {
            Some(id) => Ok(self.catalog.run(*id)?),
            None => Ok(None),
        }
    }

    /// Queues every scheduled job that is due at `now`. A job whose
    /// previous run is still queued or running is not queued twice; the
    /// occurrence is counted as done.
    pub fn plan(&self, now: DateTime<Utc>) -> Result<Vec<Run>, DaemonError> {
        let _enqueue = self.enqueue.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        let due: Vec<(String, DateTime<Utc>)> = {
            let state = self.state();
            state.next_due.iter().filter(|(_, t)| **t <= now).map(|(j, t)| (j.clone(), *t)).collect()
        };
        for (job, at) in due {
            let def = &self.jobs[&job];
            let s = def.schedule.as_ref().expect("only scheduled jobs have a due time");
            if self.pending(&job)?.is_some() {
                tracing::info!(job = %job, "due, but the previous run has not finished: skipped");
            } else {
                out.push(self.insert_scheduled(def, s, at, "schedule")?);
            }
            self.catalog.set_last_due(&job, at)?;
            // Occurrences that passed while this one waited are not run
            // one by one: the next is the first still ahead.
            let mut next = s.next_due(at);
            while let Some(n) = next.filter(|n| *n <= now) {
                next = s.next_due(n);
            }
            let mut state = self.state();
            match next {
                Some(n) => state.next_due.insert(job.clone(), n),
                None => state.next_due.remove(&job),
            };
        }
        Ok(out)
    }

    /// When each scheduled job is next due.
    pub fn next_due(&self, job: &str) -> Option<DateTime<Utc>> {
        self.state().next_due.get(job).copied()
    }

    fn repo_limit(&self, repository: &str) -> usize {
        self.config.repositories.get(repository).and_then(|r| r.max_concurrent_jobs).unwrap_or(1)
    }

    fn repository_of(&self, run: &Run) -> String {
        match self.jobs.get(&run.job) {
            Some(def) => def.repository.clone(),
            None => run.target.clone(),
        }
    }

    /// The queued runs that may start at `now`: in time, highest priority
    /// first (then oldest), within the global, per-repository and per-job
    /// limits (one run of a job at a time).
    pub fn runnable(&self, now: DateTime<Utc>) -> Result<Vec<Run>, DaemonError> {
        let mut queued: Vec<Run> = self.catalog.queued_runs()?.into_iter().filter(|r| r.not_before <= now).collect();
        queued.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
        let state = self.state();
        let mut total = state.running.len();
        let mut per_repo: HashMap<String, usize> = HashMap::new();
        let mut jobs: HashSet<String> = HashSet::new();
        for a in state.running.values() {
            *per_repo.entry(a.repository.clone()).or_default() += 1;
            jobs.insert(a.job.clone());
        }
        drop(state);
        let mut out = Vec::new();
        for r in queued {
            if total >= self.config.daemon.max_concurrent_jobs {
                break;
            }
            let repo = self.repository_of(&r);
            if per_repo.get(&repo).copied().unwrap_or(0) >= self.repo_limit(&repo) || jobs.contains(&r.job) {
                continue;
            }
            total += 1;
            *per_repo.entry(repo).or_default() += 1;
            jobs.insert(r.job.clone());
            out.push(r);
        }
        Ok(out)
    }

    /// One pass: plan, then start what may start.
    pub fn tick(self: &Arc<Self>) -> Result<(), DaemonError> {
        if self.is_stopping() {
            return Ok(());
        }
        let now = self.now();
        self.plan(now)?;
        for run in self.runnable(now)? {
            self.start(run);
        }
        self.update_queue_metrics()?;
        self.ready.store(true, Ordering::Relaxed);
        self.prune_history(now);
        Ok(())
    }

    /// Forgets finished runs older than `[daemon] keep_history` and deletes
    /// their logs, at most once an hour. Failures are logged, not fatal:
    /// history that stays a little longer harms nothing.
    fn prune_history(&self, now: DateTime<Utc>) {
        let keep = self.config.daemon.keep_history;
        if keep.is_zero() {
            return;
        }
        {
            let mut last = self.history_pruned.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| now - t < chrono::Duration::hours(1)) {
                return;
            }
            *last = Some(now);
        }
        let Some(before) = history_cutoff(now, keep) else {
            return;
        };
        let (pruned, logs) = match self.catalog.prune_runs(before) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("pruning run history: {e}");
                return;
            }
        };
        for log in &logs {
            // Only logs in the daemon's own directory: the catalog's record
            // is not a licence to delete anything anywhere.
            if !log.starts_with(&self.log_dir) {
                continue;
            }
            if let Err(e) = std::fs::remove_file(log) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("deleting job log {}: {e}", log.display());
                }
            }
        }
        if pruned > 0 {
            tracing::info!("pruned {pruned} runs that ended before {before} from the history");
        }
    }

    fn update_queue_metrics(&self) -> Result<(), DaemonError> {
        let queued = self.catalog.count_queued()?;
        self.metrics.jobs_queued.set(queued as i64);
        self.metrics.jobs_running.set(self.state().running.len() as i64);
        Ok(())
    }

    /// Runs `tick` every second (and whenever woken) until stopped.
    pub async fn run_loop(self: Arc<Self>) {
        loop {
            if self.is_stopping() {
                return;
            }
            if let Err(e) = self.tick() {
                tracing::error!("scheduling pass failed: {e}");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Queues a run on request (API or CLI). Refused while a run of the same
    /// job is queued or running.
    pub fn request(&self, job: &str, args: Vec<String>, by: &str) -> Result<Run, DaemonError> {
        let (kind, target) = match self.jobs.get(job) {
            Some(def) => (def.kind, def.target.clone()),
            None => {
                let (k, t) =
                    job.split_once(':').ok_or_else(|| DaemonError::NotFound(format!("no job named '{job}'")))?;
                match JobKind::parse(k) {
                    Some(JobKind::Restore) if self.config.repositories.contains_key(t) => {
                        (JobKind::Restore, t.to_string())
                    }
                    _ => {
                        return Err(DaemonError::NotFound(format!(
                            "no job named '{job}' (jobs: {})",
                            self.jobs.keys().cloned().collect::<Vec<_>>().join(", ")
                        )))
                    }
                }
            }
        };
        if self.is_stopping() {
            return Err(DaemonError::Conflict("the daemon is stopping".into()));
        }
        let _enqueue = self.enqueue.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = self.pending(job)? {
            return Err(DaemonError::Conflict(format!("job {job} already has run {} {}", r.id, r.status.as_str())));
        }
        // Validate the command line now, so a bad request fails here
        // rather than as a failed run.
        jobs::argv(&self.config_path, &self.config, kind, &target, &args).map_err(DaemonError::Invalid)?;
        let priority = self.jobs.get(job).and_then(|d| d.schedule.as_ref()).map(|s| s.priority).unwrap_or(0);
        let now = self.now();
        let run = self.catalog.insert_run(
            &NewRun {
                requested_by: Some(by.into()),
                args,
                ..NewRun::first(job, kind.as_str(), &target, "api", priority, now)
            },
            now,
        )?;
        self.wake.notify_one();
        Ok(run)
    }

    /// Cancels a queued run, or signals a running one to stop.
    pub fn cancel(&self, id: i64, by: &str) -> Result<Run, DaemonError> {
        let run = self.catalog.run(id)?.ok_or_else(|| DaemonError::NotFound(format!("no run {id}")))?;
        match run.status {
            RunStatus::Queued => {
                if !self.catalog.cancel_queued(id, self.now(), by)? {
                    return Err(DaemonError::Conflict(format!("run {id} has just started; cancel it again")));
                }
                self.metrics
                    .job_runs
                    .get_or_create(&JobStatusLabel {
                        job: run.job.clone(),
                        status: RunStatus::Cancelled.as_str().into(),
                    })
                    .inc();
            }
            RunStatus::Running => {
                let state = self.state();
                let a =
                    state.running.get(&id).ok_or_else(|| DaemonError::Conflict(format!("run {id} is finishing")))?;
                let _ = a.cancel.send(CANCEL_USER);
            }
            s => return Err(DaemonError::Conflict(format!("run {id} is already {}", s.as_str()))),
        }
        Ok(self.catalog.run(id)?.unwrap_or(run))
    }

    fn start(self: &Arc<Self>, run: Run) {
        let (tx, rx) = watch::channel(0u8);
        let repository = self.repository_of(&run);
        self.state().running.insert(run.id, Active { job: run.job.clone(), repository, cancel: tx });
        let d = self.clone();
        tokio::spawn(async move {
            let id = run.id;
            if let Err(e) = d.clone().execute(run, rx).await {
                tracing::error!(run = id, "recording the run failed: {e}");
            }
            d.state().running.remove(&id);
            let _ = d.update_queue_metrics();
            d.wake.notify_one();
        });
    }

    async fn execute(self: Arc<Self>, run: Run, cancel: watch::Receiver<u8>) -> Result<(), DaemonError> {
        let reason = cancel.clone();
        let kind =
            JobKind::parse(&run.kind).ok_or_else(|| DaemonError::Invalid(format!("unknown kind {}", run.kind)))?;
        let policy = self.jobs.get(&run.job).map(|d| d.policy(&self.config.daemon.timezone));
        let log = self.log_dir.join(format!("{}.log", run.id));
        let started = self.now();
        if !self.catalog.start_run(run.id, started, &log)? {
            tracing::info!(run = run.id, job = %run.job, "cancelled before it started");
            return Ok(());
        }
        tracing::info!(run = run.id, job = %run.job, trigger = %run.trigger, attempt = run.attempt, "job started");
        let args = match jobs::argv(&self.config_path, &self.config, kind, &run.target, &run.args) {
            Ok(a) => a,
            Err(e) => {
                self.finish(&run, RunStatus::Failed, started, Outcome { error: Some(e), ..Default::default() })?;
                return Ok(());
            }
        };
        let timeout = policy.as_ref().and_then(|p| p.timeout);
        let catalog_progress = {
            let d = self.clone();
            let id = run.id;
            move |p: &str| {
                let _ = d.catalog.set_progress(id, p);
            }
        };
        let spec = runner::ChildSpec { exe: &self.exe, args: &args, log, timeout, nice: self.config.daemon.job_nice };
        let end = runner::run(spec, cancel, catalog_progress).await;
        let (status, mut outcome) = match end {
            Err(e) => (RunStatus::Failed, Outcome { error: Some(e.to_string()), ..Default::default() }),
            Ok(end) => {
                let mut o = jobs::parse_outcome(&end.stdout);
                // Killed by a signal while the daemon stops: the service
                // manager signalled the whole group (systemd's default
                // KillMode); the run did not fail, it was cut short.
                let stopped_under_it = self.is_stopping() && end.code.is_none();
                let by_stop = *reason.borrow() == CANCEL_STOP;
                let status = if (end.cancelled && by_stop) || (!end.cancelled && stopped_under_it) {
                    o.error = Some("the daemon stopped before the run finished (shutdown grace period over)".into());
                    RunStatus::Interrupted
                } else if end.cancelled {
                    o.error = Some("cancelled".into());
                    RunStatus::Cancelled
                } else if end.timed_out {
                    o.error =
                        Some(format!("timed out after {}", humantime::format_duration(timeout.unwrap_or_default())));
                    RunStatus::Failed
                } else {
                    match end.code {
                        Some(0) => RunStatus::Succeeded,
                        Some(3) => {
                            o.error = end.error_line.clone();
                            RunStatus::Partial
                        }
                        code => {
                            o.error = Some(end.error_line.clone().unwrap_or_else(|| match code {
                                Some(c) => format!("exited with code {c}"),
                                None => "killed by a signal".into(),
                            }));
                            RunStatus::Failed
                        }
                    }
                };
                (status, o)
            }
        };
        if outcome.error.as_deref() == Some("") {
            outcome.error = None;
        }
        self.finish(&run, status, started, outcome)?;
        if status == RunStatus::Failed {
            if let Some(p) = &policy {
                if run.attempt <= p.retries && !self.is_stopping() {
                    let wait = p.retry_delay(run.attempt);
                    let now = self.now();
                    let retry = self.catalog.insert_run(
                        &NewRun::again(
                            &run,
                            "retry",
                            run.attempt + 1,
                            now + chrono::Duration::from_std(wait).unwrap_or_default(),
                        ),
                        now,
                    )?;
                    tracing::info!(run = run.id, retry = retry.id, wait = ?wait, "job failed; retry queued");
                }
            }
        }
        if matches!(status, RunStatus::Succeeded | RunStatus::Partial) {
            self.after_success(&run, kind).await;
        } else if kind == JobKind::Replicate {
            // A failing replication must still show its growing lag.
            if let Some((from, to)) = run.target.split_once(':') {
                self.refresh_replication(from, to).await;
            }
        } else if matches!(kind, JobKind::Check | JobKind::CheckData) {
            let st = RepositoryState {
                last_check_at: Some(self.now()),
                last_check_status: Some(format!("{}: failed", kind.as_str())),
                ..Default::default()
            };
            self.catalog.update_repository_state(&run.target, &st, self.now())?;
        }
        Ok(())
    }

    fn finish(&self, run: &Run, status: RunStatus, started: DateTime<Utc>, o: Outcome) -> Result<(), DaemonError> {
        let ended = self.now();
        self.catalog.finish_run(run.id, status, ended, &o)?;
        // The slot is free as soon as the run is recorded, not after the
        // follow-up work (listing snapshots, replication status) is done.
        self.state().running.remove(&run.id);
        let _ = self.update_queue_metrics();
        self.wake.notify_one();
        let level_error = matches!(status, RunStatus::Failed);
        if level_error {
            tracing::error!(run = run.id, job = %run.job, error = o.error.as_deref().unwrap_or(""), "job failed");
        } else {
            tracing::info!(run = run.id, job = %run.job, status = status.as_str(), "job finished");
        }
        self.metrics
            .job_runs
            .get_or_create(&JobStatusLabel { job: run.job.clone(), status: status.as_str().into() })
            .inc();
        if status == RunStatus::Failed {
            self.metrics.job_failures.get_or_create(&JobLabel { job: run.job.clone() }).inc();
        }
        if run.kind == JobKind::Backup.as_str() && matches!(status, RunStatus::Succeeded | RunStatus::Partial) {
            let l = SourceLabel { source: run.target.clone() };
            self.metrics.backup_last_success.get_or_create(&l).set(ended.timestamp_millis() as f64 / 1000.0);
            let secs = (ended - started).num_milliseconds() as f64 / 1000.0;
            self.metrics.backup_duration.get_or_create(&l).observe(secs);
            self.metrics.backup_bytes.get_or_create(&l).inc_by(o.bytes.unwrap_or(0));
        }
        Ok(())
    }

    /// What a successful run changes elsewhere: the snapshot list and
    /// sizes of the repository, replication after a backup, check state.
    async fn after_success(self: &Arc<Self>, run: &Run, kind: JobKind) {
        let now = self.now();
        match kind {
            JobKind::Backup => {
                let repo = self.repository_of(run);
                self.refresh_repository(&repo).await;
                for job in jobs::replicas_after_backup(&self.config, &repo) {
                    match self.request_internal(&job) {
                        Ok(r) => tracing::info!(run = r.id, job = %job, "replication queued after backup"),
                        Err(e) => tracing::info!(job = %job, "replication not queued: {e}"),
                    }
                }
            }
            JobKind::Retention => self.refresh_repository(&run.target).await,
            JobKind::Replicate => {
                if let Some((from, to)) = run.target.split_once(':') {
                    self.refresh_repository(to).await;
                    self.refresh_replication(from, to).await;
                }
            }
            JobKind::Check | JobKind::CheckData => {
                let st = RepositoryState {
                    last_check_at: Some(now),
                    last_check_status: Some(format!("{}: ok", kind.as_str())),
                    ..Default::default()
                };
                let _ = self.catalog.update_repository_state(&run.target, &st, now);
            }
            JobKind::Verify | JobKind::Restore => {}
        }
    }

    /// Queues a run the daemon itself asks for (replication after a backup).
    fn request_internal(&self, job: &str) -> Result<Run, DaemonError> {
        let _enqueue = self.enqueue.lock().unwrap_or_else(|e| e.into_inner());
        // A replication already running may have listed its snapshots
        // before this backup ended: one more is queued behind it. One
        // queued is enough, whatever number of backups end meanwhile.
        if let Some(r) = self.catalog.queued_runs()?.into_iter().find(|r| r.job == job) {
            return Err(DaemonError::Conflict(format!("run {} is already queued", r.id)));
        }
        let def = self.jobs.get(job).ok_or_else(|| DaemonError::NotFound(job.into()))?;
        let now = self.now();
        let run = self.catalog.insert_run(
            &NewRun::first(
                job,
                def.kind.as_str(),
                &def.target,
                "after-backup",
                def.schedule.as_ref().map(|s| s.priority).unwrap_or(0),
                now,
            ),
            now,
        )?;
        self.wake.notify_one();
        Ok(run)
    }

    /// Runs a read-only command of the binary and parses its JSON output.
    async fn query(&self, args: Vec<String>) -> Result<serde_json::Value, String> {
        let mut full = vec![
            "--config".to_string(),
            self.config_path.display().to_string(),
            "--json".into(),
            "--no-progress".into(),
        ];
        full.extend(args);
        let mut cmd = tokio::process::Command::new(&self.exe);
        for v in runner::OVERRIDES {
            cmd.env_remove(v);
        }
        let running = cmd.args(&full).stdin(std::process::Stdio::null()).kill_on_drop(true).output();
        // A hung storage must not hold the daemon: the child is killed when
        // the timeout drops it.
        let out = tokio::time::timeout(QUERY_TIMEOUT, running)
            .await
            .map_err(|_| format!("arkiv {} took more than {}s", full.join(" "), QUERY_TIMEOUT.as_secs()))?
            .map_err(|e| format!("{}: {e}", self.exe.display()))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
            return Err(line.trim_start_matches("arkiv: error: ").to_string());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("unreadable output of arkiv {}: {e}", full.join(" ")))
    }

    /// Reads a repository's snapshots and size into the catalog and metrics.
    pub async fn refresh_repository(&self, name: &str) {
        let snaps = self.query(vec!["--repo".into(), name.into(), "snapshots".into()]).await;
        let stats = self.query(vec!["--repo".into(), name.into(), "stats".into()]).await;
        let now = self.now();
        let mut st = RepositoryState::default();
        match snaps {
            Ok(serde_json::Value::Array(list)) => {
                let seen: Vec<SnapshotSeen> = list
                    .iter()
                    .filter_map(|s| {
                        Some(SnapshotSeen {
                            repository: name.into(),
                            id: s.get("id")?.as_str()?.into(),
                            source: s.get("source").and_then(|v| v.as_str()).unwrap_or("").into(),
                            host: s.get("host").and_then(|v| v.as_str()).unwrap_or("").into(),
                            time: s.get("time")?.as_str()?.parse().ok()?,
                            bytes: s.pointer("/summary/total_bytes").and_then(|v| v.as_u64()).unwrap_or(0),
                            tags: s
                                .get("tags")
                                .and_then(|t| t.as_array())
                                .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                                .unwrap_or_default(),
                        })
                    })
                    .collect();
                st.snapshots = Some(seen.len() as u64);
                if let Err(e) = self.catalog.replace_snapshots(name, &seen, now) {
                    tracing::warn!(repository = name, "recording snapshots: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(repository = name, "listing snapshots failed: {e}"),
        }
        match stats {
            Ok(v) => st.size_bytes = v.get("pack_bytes").and_then(|b| b.as_u64()),
            Err(e) => tracing::warn!(repository = name, "reading repository size failed: {e}"),
        }
        if let Err(e) = self.catalog.update_repository_state(name, &st, now) {
            tracing::warn!(repository = name, "recording repository state: {e}");
        }
        if let Ok(full) = self.catalog.repository_state(name) {
            self.apply_repository_metrics(name, &full);
        }
    }

    /// Compares a repository with a replica: lag and missing snapshots.
    pub async fn refresh_replication(&self, from: &str, to: &str) {
        let mut args = vec!["--repo".to_string(), from.to_string(), "replication-status".into()];
        if let Err(e) = jobs::pair_flags(&self.config, to, &mut args) {
            tracing::warn!("replication status {from} -> {to}: {e}");
            return;
        }
        match self.query(args).await {
            Ok(v) => {
                let status = v.get("status").cloned().unwrap_or_default();
                let mut all = self.catalog.repository_state(from).ok().and_then(|s| s.replication).unwrap_or(json!({}));
                all[to] = json!({
                    "missing_in_replica": status.get("missing_in_second"),
                    "lag_seconds": status.get("lag_secs"),
                    "newest_common": status.get("newest_common"),
                    "checked_at": self.now(),
                });
                let st = RepositoryState { replication: Some(all), ..Default::default() };
                let _ = self.catalog.update_repository_state(from, &st, self.now());
                if let Ok(full) = self.catalog.repository_state(from) {
                    self.apply_repository_metrics(from, &full);
                }
            }
            Err(e) => tracing::warn!("replication status {from} -> {to}: {e}"),
        }
    }

    fn apply_repository_metrics(&self, name: &str, st: &RepositoryState) {
        let l = RepoLabel { repository: name.into() };
        if let Some(s) = st.size_bytes {
            self.metrics.repository_size.get_or_create(&l).set(s as f64);
        }
        if let Some(s) = st.snapshots {
            self.metrics.repository_snapshots.get_or_create(&l).set(s as f64);
        }
        if let Some(serde_json::Value::Object(map)) = &st.replication {
            for (replica, v) in map {
                let l = ReplicaLabel { repository: name.into(), replica: replica.clone() };
                if let Some(lag) = v.get("lag_seconds").and_then(|x| x.as_f64()) {
                    self.metrics.replication_lag.get_or_create(&l).set(lag);
                }
                if let Some(m) = v.get("missing_in_replica").and_then(|x| x.as_f64()) {
                    self.metrics.replication_missing.get_or_create(&l).set(m);
                }
            }
        }
    }

    /// Reads each PITR source's spool status for the WAL lag metric (at
    /// scrape time: the spool's file is the archiver's own record).
    pub fn refresh_wal_metrics(&self) {
        let now = self.now();
        for (name, s) in &self.config.sources {
            let Some(spool) = s.pitr.as_ref().and_then(|p| p.spool.as_ref()) else { continue };
            let l = SourceLabel { source: name.clone() };
            let Ok(bytes) = std::fs::read(spool.join("status.json")) else { continue };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
            let waiting = v.get("waiting").and_then(|w| w.as_f64()).unwrap_or(0.0);
            let lag = v
                .get("oldest_waiting")
                .and_then(|t| t.as_str())
                .and_then(|t| t.parse::<DateTime<Utc>>().ok())
                .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
                .unwrap_or(0.0);
            self.metrics.wal_archive_waiting.get_or_create(&l).set(waiting);
            self.metrics.wal_archive_lag.get_or_create(&l).set(if waiting > 0.0 { lag } else { 0.0 });
        }
    }

    /// Refreshes every repository (at start-up, in the background).
    pub async fn refresh_all(self: Arc<Self>) {
        for name in self.config.repositories.keys() {
            self.refresh_repository(name).await;
            for replica in &self.config.repositories[name].replicas {
                self.refresh_replication(name, replica).await;
            }
        }
    }

    /// Stops starting runs, lets running ones finish for up to `grace`,
    /// then stops them; they are recorded as interrupted and queued again
    /// at the next start.
    pub async fn shutdown(&self, grace: Duration) {
        self.stopping.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + grace;
        let mut told = false;
        let mut announced = false;
        loop {
            let running = self.state().running.len();
            if running == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                if !told {
                    tracing::warn!(running, "shutdown grace period over: stopping the running jobs");
                    for a in self.state().running.values() {
                        let _ = a.cancel.send(CANCEL_STOP);
                    }
                    told = true;
                }
            } else if !told && !announced {
                tracing::info!(running, "waiting for running jobs before stopping");
                announced = true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let _ = audit::append(&self.catalog, "daemon", "daemon.stop", &self.config.path, &json!({}));
    }
}

/// When runs must have ended to be pruned, keeping `keep`; `None` for a
/// `keep` longer than the calendar goes back (`"1000000y"`, meant as
/// "forever"), which keeps everything rather than overflow.
fn history_cutoff(now: DateTime<Utc>, keep: Duration) -> Option<DateTime<Utc>> {
    chrono::Duration::from_std(keep).ok().and_then(|k| now.checked_sub_signed(k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::ManualClock;

    #[test]
    fn a_keep_history_beyond_the_calendar_keeps_everything() {
        let now = at("2026-06-01T00:00:00Z");
        assert_eq!(history_cutoff(now, Duration::from_secs(86_400)), Some(at("2026-05-31T00:00:00Z")));
        assert_eq!(history_cutoff(now, Duration::from_secs(1_000_000 * 366 * 86_400)), None);
        assert_eq!(history_cutoff(now, Duration::MAX), None);
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        daemon: Arc<Daemon>,
        clock: Arc<ManualClock>,
    }

    fn fixture(extra: &str, now: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[daemon]\ncatalog = '{}/catalog.db'\nmax_concurrent_jobs = 2\n\
             [repositories.a]\nurl = '/nonexistent/a'\n[repositories.b]\nurl = '/nonexistent/b'\n{extra}",
            dir.path().display()
        );
        let config = Config::parse("test.toml", &text).unwrap();
        let clock = Arc::new(ManualClock::new(at(now)));
        let daemon = Daemon::new(config, Path::new("test.toml"), Path::new("/bin/false"), clock.clone()).unwrap();
        Fixture { _dir: dir, daemon, clock }
    }

    fn finish_all(d: &Daemon) {
        for r in d.catalog.queued_runs().unwrap() {
            d.catalog.finish_run(r.id, RunStatus::Succeeded, d.now(), &Outcome::default()).unwrap();
        }
    }

    #[test]
    fn history_older_than_keep_history_is_pruned_hourly_with_its_logs() {
        let f = fixture("[sources.s]\npaths = ['/x']\nrepository = 'a'\n", "2026-06-01T00:00:00Z");
        let d = &f.daemon;
        let mut runs = Vec::new();
        for day in ["2026-01-01", "2026-01-02", "2026-05-20"] {
            let t = at(&format!("{day}T03:00:00Z"));
            let r = d.catalog.insert_run(&NewRun::first("backup:s", "backup", "s", "schedule", 0, t), t).unwrap();
            let log = d.log_dir.join(format!("{}.log", r.id));
            std::fs::write(&log, "log").unwrap();
            assert!(d.catalog.start_run(r.id, t, &log).unwrap());
            d.catalog.finish_run(r.id, RunStatus::Failed, t, &Outcome::default()).unwrap();
            runs.push((r.id, log));
        }
        d.prune_history(d.now());
        // Default 90 days: January's first failure goes, its second is not
        // the newest failure either; May's stays.
        assert!(d.catalog.run(runs[0].0).unwrap().is_none() && !runs[0].1.exists());
        assert!(d.catalog.run(runs[1].0).unwrap().is_none() && !runs[1].1.exists());
        assert!(d.catalog.run(runs[2].0).unwrap().is_some() && runs[2].1.exists());
        // Within the hour nothing is pruned again; after it, it is.
        let t = at("2026-08-01T03:00:00Z");
        let late = d.catalog.insert_run(&NewRun::first("backup:s", "backup", "s", "schedule", 0, t), t).unwrap();
        d.catalog.finish_run(late.id, RunStatus::Failed, t, &Outcome::default()).unwrap();
        f.clock.set(at("2026-08-19T04:00:00Z"));
        *d.history_pruned.lock().unwrap() = Some(at("2026-08-19T03:30:00Z"));
        d.prune_history(d.now());
        assert!(d.catalog.run(runs[2].0).unwrap().is_some(), "pruned 30 minutes ago");
        f.clock.set(at("2026-08-19T04:30:00Z"));
        d.prune_history(d.now());
        assert!(d.catalog.run(runs[2].0).unwrap().is_none() && !runs[2].1.exists(), "superseded and 91 days old");
    }

    #[test]
    fn a_cron_job_is_queued_when_due_and_not_before() {
        let f = fixture(
            "[sources.s]\npaths = ['/x']\nrepository = 'a'\nschedule = { cron = '0 * * * *' }\n",
            "2026-03-01T10:00:30Z",
        );
        let d = &f.daemon;
        assert!(d.recover().unwrap().is_empty());
        assert_eq!(d.next_due("backup:s"), Some(at("2026-03-01T11:00:00Z")));
        f.clock.set(at("2026-03-01T10:59:59Z"));
        assert!(d.plan(d.now()).unwrap().is_empty());
        f.clock.set(at("2026-03-01T11:00:00Z"));
        let queued = d.plan(d.now()).unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!((queued[0].trigger.as_str(), queued[0].not_before), ("schedule", at("2026-03-01T11:00:00Z")));
        assert_eq!(d.next_due("backup:s"), Some(at("2026-03-01T12:00:00Z")));
        assert_eq!(d.catalog.last_due("backup:s").unwrap(), Some(at("2026-03-01T11:00:00Z")));
    }

    #[test]
    fn a_job_still_queued_is_not_queued_twice_and_missed_occurrences_collapse() {
        let f = fixture(
            "[sources.s]\npaths = ['/x']\nrepository = 'a'\nschedule = { every = '10m' }\n",
            "2026-03-01T10:00:00Z",
        );
        let d = &f.daemon;
        d.recover().unwrap();
        f.clock.set(at("2026-03-01T10:10:00Z"));
        assert_eq!(d.plan(d.now()).unwrap().len(), 1);
        f.clock.set(at("2026-03-01T10:20:00Z"));
        assert!(d.plan(d.now()).unwrap().is_empty(), "the 10:10 run has not run yet");
        finish_all(d);
        // An hour passes in one step: one run, and the next due time is ahead.
        f.clock.set(at("2026-03-01T11:25:00Z"));
        assert_eq!(d.plan(d.now()).unwrap().len(), 1);
        assert_eq!(d.next_due("backup:s"), Some(at("2026-03-01T11:30:00Z")));
    }

    #[test]
    fn runs_missed_while_down_are_caught_up_once_unless_disabled() {
        let extra = "[sources.s]\npaths = ['/x']\nrepository = 'a'\nschedule = { cron = '0 2 * * *' }\n\
                     [sources.t]\npaths = ['/y']\nrepository = 'b'\nschedule = { cron = '0 2 * * *', catch_up = false }\n";
        let f = fixture(extra, "2026-03-05T09:00:00Z");
        let d = &f.daemon;
        // The previous daemon last saw both due three days ago.
        d.catalog.set_last_due("backup:s", at("2026-03-02T02:00:00Z")).unwrap();
        d.catalog.set_last_due("backup:t", at("2026-03-02T02:00:00Z")).unwrap();
        let queued = d.recover().unwrap();
        assert_eq!(
            queued.iter().map(|r| (r.job.as_str(), r.trigger.as_str())).collect::<Vec<_>>(),
            [("backup:s", "catch-up")]
        );
        assert_eq!(d.next_due("backup:t"), Some(at("2026-03-06T02:00:00Z")));
    }

    #[test]
    fn no_catch_up_when_a_run_of_the_job_is_already_queued() {
        let f = fixture("[sources.s]\npaths = ['/x']\nrepository = 'a'\nschedule = { cron = '0 2 * * *', not_before = '02:00', not_after = '03:00' }\n", "2026-03-05T09:00:00Z");
        let d = &f.daemon;
        d.catalog.set_last_due("backup:s", at("2026-03-02T02:00:00Z")).unwrap();
        // A run that waits for its window survived the restart.
        let waiting = NewRun {
            job: "backup:s".into(),
            kind: "backup".into(),
            target: "s".into(),
            trigger: "schedule".into(),
            requested_by: None,
            attempt: 1,
            priority: 0,
            args: vec![],
            not_before: at("2026-03-06T02:00:00Z"),
            retry_of: None,
        };
        d.catalog.insert_run(&waiting, d.now()).unwrap();
        assert!(d.recover().unwrap().is_empty());
        assert_eq!(d.catalog.queued_runs().unwrap().len(), 1);
    }

    #[test]
    fn a_run_cancelled_while_queued_does_not_start() {
        let f = fixture("[sources.s]\npaths = ['/x']\nrepository = 'a'\n", "2026-03-01T10:00:00Z");
        let d = &f.daemon;
        let r = d.request("backup:s", vec![], "alice").unwrap();
        // The dispatcher picked it, then the cancel came first.
        assert_eq!(d.runnable(d.now()).unwrap()[0].id, r.id);
        d.cancel(r.id, "bob").unwrap();
        assert!(!d.catalog.start_run(r.id, d.now(), Path::new("/dev/null")).unwrap());
        assert_eq!(d.catalog.run(r.id).unwrap().unwrap().status, RunStatus::Cancelled);
    }

    #[test]
    fn a_due_time_outside_the_window_waits_for_it() {
        let f = fixture(
            "[sources.s]\npaths = ['/x']\nrepository = 'a'\nschedule = { every = '1h', not_before = '02:00', not_after = '04:00', timezone = 'Europe/Berlin' }\n",
            "2026-01-10T02:30:00Z",
        );
        let d = &f.daemon;
        d.recover().unwrap();
        // 03:30 UTC is 04:30 in Berlin: after the window, so the next start
        // is 02:00 Berlin (01:00 UTC) the next day.
        assert_eq!(d.next_due("backup:s"), Some(at("2026-01-11T01:00:00Z")));
    }

    #[test]
    fn limits_priorities_and_one_run_per_job() {
        let extra = "[repositories.a.retention]\nkeep_last = 1\n\
                     [sources.s1]\npaths = ['/x']\nrepository = 'a'\nschedule = { every = '1h', priority = 1 }\n\
                     [sources.s2]\npaths = ['/x']\nrepository = 'a'\nschedule = { every = '1h', priority = 9 }\n\
                     [sources.s3]\npaths = ['/x']\nrepository = 'b'\nschedule = { every = '1h' }\n";
        let f = fixture(extra, "2026-03-01T10:00:00Z");
        let d = &f.daemon;
        d.recover().unwrap();
        for job in ["backup:s1", "backup:s2", "backup:s3", "retention:a"] {
            d.request(job, Vec::new(), "test").unwrap();
        }
        let e = d.request("backup:s1", Vec::new(), "test").unwrap_err();
        assert!(matches!(e, DaemonError::Conflict(_)), "{e}");
        assert!(matches!(d.request("backup:nope", Vec::new(), "t").unwrap_err(), DaemonError::NotFound(_)));
        // Repository a takes one job at a time and s2 has the highest
        // priority there; b's job fills the second global slot.
        let picked: Vec<String> = d.runnable(d.now()).unwrap().into_iter().map(|r| r.job).collect();
        assert_eq!(picked, ["backup:s2", "backup:s3"]);
        // A retry waiting for its time is not runnable yet.
        let later = NewRun {
            job: "check:b".into(),
            kind: "check".into(),
            target: "b".into(),
            trigger: "retry".into(),
            requested_by: None,
            attempt: 2,
            priority: 100,
            args: vec![],
            not_before: d.now() + chrono::Duration::minutes(5),
            retry_of: None,
        };
        d.catalog.insert_run(&later, d.now()).unwrap();
        assert!(!d.runnable(d.now()).unwrap().iter().any(|r| r.job == "check:b"));
        f.clock.advance(Duration::from_secs(301));
        assert_eq!(d.runnable(d.now()).unwrap()[0].job, "check:b", "highest priority once due");
    }

    #[test]
    fn runs_a_dead_daemon_left_running_are_interrupted_and_queued_again() {
        let f = fixture("[sources.s]\npaths = ['/x']\nrepository = 'a'\n", "2026-03-01T10:00:00Z");
        let d = &f.daemon;
        let r = d.request("backup:s", vec![], "alice").unwrap();
        d.catalog.start_run(r.id, d.now(), Path::new("/dev/null")).unwrap();
        let restore = d.request("restore:a", vec!["latest".into(), "--target=/tmp/x".into()], "alice").unwrap();
        d.catalog.start_run(restore.id, d.now(), Path::new("/dev/null")).unwrap();
        let queued = d.recover().unwrap();
        assert_eq!(d.catalog.run(r.id).unwrap().unwrap().status, RunStatus::Interrupted);
        assert_eq!(queued.len(), 1, "restores are not repeated on their own: {queued:?}");
        assert_eq!((queued[0].trigger.as_str(), queued[0].retry_of), ("reschedule", Some(r.id)));
        assert_eq!(queued[0].requested_by.as_deref(), Some("alice"));
        // A second start does not queue it again.
        assert!(d.recover().unwrap().is_empty());
    }
}
