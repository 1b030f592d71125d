//! `arkiv-source` is what Arkiv protects and how it comes back. Each source
//! turns something live (a directory tree, a database, a bucket, a
//! command's output) into streams and trees stored through `arkiv-repo`,
//! restores them, verifies a restored copy, and reports what it could not
//! save. Directory trees are `files`; everything else is a
//! [`stream::StreamSource`] with a matching [`stream::StreamTarget`].
//!
//! It must not know about schedules, alerts or the daemon (that is
//! `arkiv-control`), nor about the repository's bytes: it talks to the
//! engine only through `Indexed`, `Writer` and trees of `Node`s.

pub mod bucket;
pub mod command;
pub mod error;
pub mod files;
pub mod mysql;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod spec;
pub mod sqlite;
pub mod stream;
pub mod verify;

pub use error::{Error, Result};
