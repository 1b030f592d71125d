//! `arkiv-control` is Arkiv's control plane: what to back up, where, and
//! how to prove it restores, as an operator writes it down. Today that is
//! the configuration file (`config`), read by the CLI; the daemon, its
//! catalog, schedules, alerts, drills and reports are built on the same
//! file.
//!
//! It must not know how data is stored or dumped: it names repositories
//! and sources and hands their URLs to `arkiv-repo` and `arkiv-source`.

pub mod config;

pub use config::{Config, ConfigError, RepositoryConfig, SourceConfig, VerifyConfig};
