//! The crate's one error type: a kind the NBD layer maps to an errno, plus a message with context.

use std::fmt;

/// What went wrong, so callers (the NBD layer) can map a kind to an errno in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    Io,
    InvalidFormat,
    Unsupported,
    Corrupt,
    OutOfBounds,
    NoSpace,
    ReadOnly,
    InvalidArgument,
    /// Another process (qemu, or another opener of ours) holds a conflicting image lock.
    Busy,
    /// The image names a file the [`crate::OpenOptions`] forbid opening: outside `backing_dir`,
    /// or a symlink under `no_symlinks`.
    Refused,
    /// The caller asked a long operation (a merge) to stop; nothing is left half done.
    Cancelled,
}

#[derive(Debug, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn new(kind: ErrorKind, message: impl fmt::Display) -> Self {
        Self {
            kind,
            message: message.to_string(),
        }
    }

    pub(crate) fn corrupt(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    pub(crate) fn unsupported(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    pub(crate) fn invalid_format(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::InvalidFormat, message)
    }

    pub(crate) fn invalid_argument(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// Locking `path` failed: [`ErrorKind::Busy`] when someone else holds it.
    pub(crate) fn lock(err: crate::storage::LockError, path: &std::path::Path) -> Self {
        match err {
            crate::storage::LockError::Conflict { .. } => {
                Self::new(ErrorKind::Busy, format!("{}: {err}", path.display()))
            }
            crate::storage::LockError::Io(e) => Self::io(e, format!("locking {}", path.display())),
        }
    }

    /// An I/O error with what we were doing; ENOSPC/EDQUOT become [`ErrorKind::NoSpace`].
    pub(crate) fn io(err: std::io::Error, context: impl fmt::Display) -> Self {
        let kind = match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::NoSpace,
            _ if err.kind() == std::io::ErrorKind::StorageFull => ErrorKind::NoSpace,
            _ => ErrorKind::Io,
        };
        Self {
            kind,
            message: format!("{context}: {err}"),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
