//! Errors of the repository engine. Each names the object it failed on, so
//! the binary can print it as one line that says what and where.

use crate::id::Id;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path}: {message}")]
    Backend { op: &'static str, path: String, message: String },

    #[error("{what} does not exist")]
    NotFound { what: String },

    // The cause is part of the message, not a `source`: printed as a chain
    // it would appear twice.
    #[error("{path}: {cause}")]
    Io { path: String, cause: std::io::Error },

    #[error("{location} is not an Arkiv repository (no config file); create one with `arkiv init`")]
    NotARepository { location: String },

    #[error("{location} already holds an Arkiv repository")]
    AlreadyExists { location: String },

    #[error("wrong password or key file: none of the {slots} key slot(s) of {location} opens with it")]
    WrongPassword { location: String, slots: usize },

    #[error("{object}: repository format version {found} is newer than this arkiv understands (up to {supported}); upgrade arkiv")]
    UnsupportedVersion { object: String, found: u32, supported: u32 },

    #[error("{object} is damaged: {reason}")]
    Corrupt { object: String, reason: String },

    #[error("blob {0} is not in the index")]
    BlobNotFound(Id),

    #[error("no snapshot matches '{0}'")]
    SnapshotNotFound(String),

    #[error("'{prefix}' matches {count} snapshots; give more digits")]
    AmbiguousSnapshot { prefix: String, count: usize },

    #[error("{0}")]
    Invalid(String),

    #[error("{location}: {operation} refused: this key slot is append-only")]
    AppendOnly { location: String, operation: String },

    #[error("key slot {slot}: {reason}")]
    KeySlot { slot: String, reason: String },

    #[error("{location}: another {holder}; wait for it to finish (if it is not running, delete {lock})")]
    Locked { location: String, holder: String, lock: String },
}

impl Error {
    /// A copy of a storage error, for reporting one failed read against each
    /// of the blobs it was meant to fetch. Other kinds become `Invalid` with
    /// the same message.
    pub fn duplicate(&self) -> Error {
        match self {
            Error::Backend { op, path, message } => Error::Backend { op, path: path.clone(), message: message.clone() },
            Error::NotFound { what } => Error::NotFound { what: what.clone() },
            other => Error::Invalid(other.to_string()),
        }
    }

    pub fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Corrupt { object: object.into(), reason: reason.into() }
    }

    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Error {
        Error::Io { path: path.as_ref().display().to_string(), cause: source }
    }
}
