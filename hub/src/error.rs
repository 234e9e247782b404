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
    /// What the request names existed but its files are gone (HTTP 410): a backup whose images
    /// were removed outside the hub.
    #[error("{0}")]
    Gone(String),
    /// What the request names is there but cannot be read as asked (HTTP 422): a guest
    /// filesystem that is damaged, of a kind not read here, or a disk without one.
    #[error("{0}")]
    Unprocessable(String),
    /// Something the request needs is unavailable on this hub (HTTP 503): the credential key.
    #[error("{0}")]
    Unavailable(String),
    /// The SNA refused or did not answer (HTTP 502).
    #[error("{0}")]
    Upstream(String),
    #[error("configuration: {0}")]
    Config(String),
    /// The repository holds backups the catalog does not account for; the message says what
    /// to run.
    #[error("{0}")]
    CatalogBehind(String),
    // The causes below are part of the message and deliberately not `source()`s: a report that
    // walks the chain (anyhow's `{:#}`) would print each twice ("X: X").
    #[error("catalog: {0}")]
    Catalog(rusqlite::Error),
    #[error("image {}: {cause}", path.display())]
    Image { path: PathBuf, cause: qcow2::Error },
    #[error("NBD server: {0}")]
    Nbd(nbd_server::ServerError),
    #[error("{context}: {cause}")]
    Io {
        context: String,
        cause: std::io::Error,
    },
    /// The filesystem holding `path` is full (HTTP 507).
    #[error("no space left on device: {}", path.display())]
    NoSpace { path: PathBuf },
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// Where the filesystem is full, when that is what went wrong (ENOSPC or EDQUOT, from the
    /// catalog, an image or any file the hub writes); the text names the path and the cause.
    pub fn no_space(&self) -> Option<String> {
        match self {
            Error::NoSpace { path } => Some(format!("catalog {}", path.display())),
            Error::Io { context, cause }
                if matches!(cause.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
            {
                Some(context.clone())
            }
            Error::Image { path, cause } if cause.kind() == qcow2::ErrorKind::NoSpace => {
                Some(format!("image {}: {}", path.display(), cause.message))
            }
            _ => None,
        }
    }

    /// The catalog's own filesystem is full (freeing operations release the reserve then).
    pub fn is_catalog_full(&self) -> bool {
        matches!(self, Error::NoSpace { .. })
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |cause| Error::Io { context, cause }
    }

    pub fn image(path: impl Into<PathBuf>) -> impl FnOnce(qcow2::Error) -> Error {
        let path = path.into();
        move |cause| Error::Image { path, cause }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Catalog(e)
    }
}

impl From<nbd_server::ServerError> for Error {
    fn from(e: nbd_server::ServerError) -> Self {
        Error::Nbd(e)
    }
}

pub type Result<T> = std::result::Result<T, Error>;
