//! `arkiv-repo` is Arkiv's storage engine: the repository format, its
//! cryptography, content-defined chunking, packs, the index, trees,
//! snapshots and the storage backends (through Apache OpenDAL).
//!
//! It stores and returns byte streams and trees of named nodes; it must not
//! know about databases, files on a disk, schedules or the CLI. Sources
//! (`arkiv-source`) decide what the streams are; the control plane decides
//! when they are written. Every object it writes is immutable and named by
//! its content, so the same code is correct on a local disk and on object
//! storage without locks or conditional writes.
//!
//! The byte-level format is specified in `docs/repository-format.md`.

pub mod archive;
pub mod backend;
pub mod check;
pub mod chunker;
pub mod content;
pub mod copy;
pub mod crypto;
pub mod delta;
pub mod envelope;
pub mod error;
pub mod fault;
pub mod id;
pub mod index;
pub mod keys;
pub mod location;
pub mod lock;
pub mod pack;
pub mod prune;
pub mod repository;
pub mod retention;
pub mod snapshot;
pub mod tree;
pub mod writer;

pub use archive::{ArchivedEntry, ArchivedMeta};
pub use backend::{Backend, FileKind};
pub use content::ContentReader;
pub use error::{Error, Result};
pub use id::Id;
pub use keys::{Credential, KdfParams};
pub use pack::BlobType;
pub use repository::{release_free_memory, Indexed, InitOptions, RepoConfig, Repository};
pub use snapshot::{Skipped, Snapshot, SnapshotEntry, SnapshotFilter, Summary};
pub use tree::{Name, Node, NodeKind, Tree, Xattr};
pub use writer::{WriteStats, Writer};
