//! `arkiv-source` is what Arkiv protects and how it comes back. Each source
//! turns something live (a directory tree now; databases next) into streams
//! and trees stored through `arkiv-repo`, restores them, and reports what it
//! could not save.
//!
//! It must not know about schedules, alerts or the daemon (that is
//! `arkiv-control`), nor about the repository's bytes: it talks to the
//! engine only through `Indexed`, `Writer` and trees of `Node`s.

pub mod error;
pub mod files;

pub use error::{Error, Result};
