//! Errors of the sources. File-level problems name the file; repository
//! failures keep the engine's error, which names the object.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Repo(#[from] arkiv_repo::Error),

    // The cause is part of the message, not a `source`: printed as a chain
    // it would appear twice.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },

    /// A directory of a snapshot that cannot be read, named by its path in
    /// the snapshot.
    #[error("{path}: {error}")]
    Tree { path: String, error: arkiv_repo::Error },

    #[error(transparent)]
    Pattern(#[from] crate::files::filter::PatternError),

    #[error("{0}")]
    Invalid(String),
}
