//! `arkiv-control` is Arkiv's control plane: what to back up, where, when,
//! and what happened. It holds the configuration file (`config`), read by
//! the CLI and the daemon alike, and the daemon (`arkiv serve`): its SQLite
//! catalog, schedules, job supervisor, HTTP API, metrics and audit trail.
//! Alerts, drills and reports, not built yet, are to be built on the same
//! catalog.
//!
//! It must not know how data is stored or dumped (it borrows only
//! `arkiv-repo`'s parsers of retention durations and check subsets, so
//! the file accepts exactly what the commands do): it names repositories
//! and sources, and runs jobs as the `arkiv` binary's own commands
//! (`jobs.rs` says why), reading their `--json` output.

pub mod api;
pub mod audit;
pub mod catalog;
pub mod config;
pub mod daemon;
pub mod jobs;
pub mod metrics;
pub mod runner;
pub mod schedule;
pub mod serve;
pub mod token;

pub use config::{Config, ConfigError, RepositoryConfig, SourceConfig, VerifyConfig};
