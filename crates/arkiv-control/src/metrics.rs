//! Prometheus metrics in the exporters' conventions (base units, `_total`
//! counters, `_timestamp_seconds` gauges). Every series of every
//! configured source, job and repository is created at start-up with its
//! zero value, so an alert on a backup that never happened sees a value
//! rather than a missing series.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabel {
    pub job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobStatusLabel {
    pub job: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RepoLabel {
    pub repository: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabel {
    pub repository: String,
    pub replica: String,
}

type FGauge<L> = Family<L, Gauge<f64, AtomicU64>>;

fn duration_histogram() -> Histogram {
    // 1 s to ~9 h.
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub backup_last_success: FGauge<SourceLabel>,
    pub backup_duration: Family<SourceLabel, Histogram, fn() -> Histogram>,
    pub backup_bytes: Family<SourceLabel, Counter>,
    pub source_rpo: FGauge<SourceLabel>,
    pub job_runs: Family<JobStatusLabel, Counter>,
    pub job_failures: Family<JobLabel, Counter>,
    pub jobs_running: Gauge,
    pub jobs_queued: Gauge,
    pub repository_size: FGauge<RepoLabel>,
    pub repository_snapshots: FGauge<RepoLabel>,
    pub replication_lag: FGauge<ReplicaLabel>,
    pub replication_missing: FGauge<ReplicaLabel>,
    pub wal_archive_lag: FGauge<SourceLabel>,
    pub wal_archive_waiting: FGauge<SourceLabel>,
    pub auth_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            backup_last_success: Family::default(),
            backup_duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            backup_bytes: Family::default(),
            source_rpo: Family::default(),
            job_runs: Family::default(),
            job_failures: Family::default(),
            jobs_running: Gauge::default(),
            jobs_queued: Gauge::default(),
            repository_size: Family::default(),
            repository_snapshots: Family::default(),
            replication_lag: Family::default(),
            replication_missing: Family::default(),
            wal_archive_lag: Family::default(),
            wal_archive_waiting: Family::default(),
            auth_failures: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "arkiv_backup_last_success_timestamp_seconds",
            "Unix time of the source's newest successful backup (0: none yet)",
            m.backup_last_success.clone(),
        );
        registry.register(
            "arkiv_backup_duration_seconds",
            "Wall time of successful backups",
            m.backup_duration.clone(),
        );
        // The registry adds `_total` to counters.
        registry.register(
            "arkiv_backup_bytes",
            "Bytes read from the source by successful backups",
            m.backup_bytes.clone(),
        );
        registry.register(
            "arkiv_source_rpo_seconds",
            "The source's recovery point objective (0: none set)",
            m.source_rpo.clone(),
        );
        registry.register("arkiv_job_runs", "Finished job runs by final status", m.job_runs.clone());
        registry.register("arkiv_job_failures", "Job runs that failed (each attempt)", m.job_failures.clone());
        registry.register("arkiv_jobs_running", "Job runs running now", m.jobs_running.clone());
        registry.register("arkiv_jobs_queued", "Job runs waiting to start", m.jobs_queued.clone());
        registry.register("arkiv_repository_size_bytes", "Bytes of packs in the repository", m.repository_size.clone());
        registry.register("arkiv_repository_snapshots", "Snapshots in the repository", m.repository_snapshots.clone());
        registry.register(
            "arkiv_replication_lag_seconds",
            "How far the replica's newest common snapshot is behind the repository's newest",
            m.replication_lag.clone(),
        );
        registry.register(
            "arkiv_replication_missing_snapshots",
            "Snapshots of the repository the replica does not hold",
            m.replication_missing.clone(),
        );
        registry.register(
            "arkiv_wal_archive_lag_seconds",
            "Age of the oldest WAL file PostgreSQL has ready and the repository does not hold (0: none waiting)",
            m.wal_archive_lag.clone(),
        );
        registry.register(
            "arkiv_wal_archive_waiting_files",
            "WAL files waiting to be archived",
            m.wal_archive_waiting.clone(),
        );
        registry.register(
            "arkiv_api_auth_failures",
            "API requests refused for a missing or wrong token",
            m.auth_failures.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Creates each series at zero.
    pub fn init_series(
        &self,
        sources: &[String],
        pitr_sources: &[String],
        jobs: &[String],
        repos: &[String],
        replicas: &[(String, String)],
    ) {
        for s in sources {
            let l = SourceLabel { source: s.clone() };
            let _ = self.backup_last_success.get_or_create(&l);
            let _ = self.backup_duration.get_or_create(&l);
            let _ = self.backup_bytes.get_or_create(&l);
            let _ = self.source_rpo.get_or_create(&l);
        }
        for s in pitr_sources {
            let l = SourceLabel { source: s.clone() };
            let _ = self.wal_archive_lag.get_or_create(&l);
            let _ = self.wal_archive_waiting.get_or_create(&l);
        }
        for j in jobs {
            let _ = self.job_failures.get_or_create(&JobLabel { job: j.clone() });
            for status in ["succeeded", "partial", "failed", "cancelled", "interrupted"] {
                let _ = self.job_runs.get_or_create(&JobStatusLabel { job: j.clone(), status: status.into() });
            }
        }
        for r in repos {
            let l = RepoLabel { repository: r.clone() };
            let _ = self.repository_size.get_or_create(&l);
            let _ = self.repository_snapshots.get_or_create(&l);
        }
        for (r, replica) in replicas {
            let l = ReplicaLabel { repository: r.clone(), replica: replica.clone() };
            let _ = self.replication_lag.get_or_create(&l);
            let _ = self.replication_missing.get_or_create(&l);
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_present_at_zero_from_the_start() {
        let m = Metrics::new();
        m.init_series(
            &["shop".into()],
            &["db".into()],
            &["backup:shop".into()],
            &["main".into()],
            &[("main".into(), "offsite".into())],
        );
        let text = m.encode();
        for line in [
            "arkiv_backup_last_success_timestamp_seconds{source=\"shop\"} 0",
            "arkiv_backup_duration_seconds_count{source=\"shop\"} 0",
            "arkiv_backup_bytes_total{source=\"shop\"} 0",
            "arkiv_job_failures_total{job=\"backup:shop\"} 0",
            "arkiv_job_runs_total{job=\"backup:shop\",status=\"failed\"} 0",
            "arkiv_repository_size_bytes{repository=\"main\"} 0",
            "arkiv_replication_lag_seconds{repository=\"main\",replica=\"offsite\"} 0",
            "arkiv_wal_archive_lag_seconds{source=\"db\"} 0",
            "arkiv_jobs_running 0",
        ] {
            assert!(text.lines().any(|l| l.starts_with(line)), "missing {line} in\n{text}");
        }
    }
}
