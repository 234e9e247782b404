//! The hub library's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is wrong (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// Something named does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The request clashes with the current state (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    #[error("configuration: {0}")]
    Config(String),
    /// The repository holds backups the catalog does not account for; the message says what
    /// to run.
    #[error("{0}")]
    CatalogBehind(String),
    #[error("catalog: {0}")]
    Catalog(#[from] rusqlite::Error),
    #[error("image {}: {source}", path.display())]
    Image { path: PathBuf, source: qcow2::Error },
    #[error("NBD server: {0}")]
    Nbd(#[from] nbd_server::ServerError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub fn image(path: impl Into<PathBuf>) -> impl FnOnce(qcow2::Error) -> Error {
        let path = path.into();
        move |source| Error::Image { path, source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
