//! Files and directories: backup with a parallel walk, restore with
//! verification, and the path patterns both use.

pub mod backup;
pub mod filter;
pub mod meta;
pub mod restore;

pub use backup::{backup, backup_stream, BackupOptions, BackupOutcome, Progress};
pub use filter::PathFilter;
pub use restore::{restore, RestoreOptions, RestoreOutcome};
