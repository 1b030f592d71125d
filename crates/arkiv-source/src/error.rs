//! Errors of the sources. File-level problems name the file; repository
//! failures keep the engine's error, which names the object.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Repo(#[from] arkiv_repo::Error),

    // The cause is part of the message, not a `source`: printed as a chain
    // it would appear twice.
    #[error("{path}: {cause}")]
    Io { path: String, cause: std::io::Error },

    /// A directory of a snapshot that cannot be read, named by its path in
    /// the snapshot.
    #[error("{path}: {error}")]
    Tree { path: String, error: arkiv_repo::Error },

    #[error(transparent)]
    Pattern(#[from] crate::files::filter::PatternError),

    #[error("{0}")]
    Invalid(String),

    /// A program a source needs is not installed (or not on `PATH`).
    #[error("{program}: not found; install it or put it on PATH")]
    ToolMissing { program: String },

    /// A program a source ran failed; `stderr` is the tail of what it said.
    #[error("{program} failed ({status}){}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    ToolFailed { program: String, status: String, stderr: String },

    /// A database or service could not be backed up or restored, named by
    /// its (password-free) location.
    #[error("{location}: {message}")]
    Source { location: String, message: String },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<std::path::Path>, cause: std::io::Error) -> Error {
        Error::Io { path: path.as_ref().display().to_string(), cause }
    }
}
