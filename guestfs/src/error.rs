//! The one error type of the crate: a caller (the hub's restore API) maps it to a status, so
//! "not found" and "the image is damaged" must stay distinguishable.

/// Everything that can go wrong reading a guest disk.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("read of {len} bytes at offset {offset} is outside the {size}-byte source")]
    OutOfBounds { offset: u64, len: u64, size: u64 },
    #[error("no such file or directory: {0}")]
    NotFound(String),
    #[error("not a directory: {0}")]
    NotADirectory(String),
    #[error("is a directory: {0}")]
    IsADirectory(String),
    #[error("invalid path: {0}")]
    InvalidPath(String),
    #[error("too many levels of symbolic links: {0}")]
    SymlinkLoop(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("corrupt: {0}")]
    Corrupt(String),
    #[error("no known filesystem on this volume")]
    UnknownFilesystem,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
