//! File-level restore: a backup's disk browsed and downloaded file by file, read in process
//! through its QCOW2 chain by `guestfs` — no device, no kernel mount, no root, and nothing
//! written to the image.
//!
//! - `volumes`: the reader over the image, the disk's volumes, and how a browse path names one;
//! - `mount`: the in-memory registry of mounts (bounded, ended when idle or when their backup
//!   goes);
//! - `browse`: listings and file info, in the old hub's shapes;
//! - `download`: files (with `Range`) streamed with bounded memory, and the head of every download;
//! - `archive`: directories as zip or tar.gz, written into a download's stream;
//! - `stream`: that stream (a bounded channel the HTTP body drains) and the head sent before it.
//!
//! guestfs's filesystem handles are not `Send`, so every request opens the volume's
//! filesystem afresh on its own blocking thread (a superblock and a few tables: cheap next to
//! what the request then reads) and drops it at the end; nothing of a guest filesystem lives
//! between requests but the mount's image.

pub mod archive;
pub mod browse;
pub mod download;
pub mod mount;
pub mod stream;
pub mod volumes;

use crate::error::Error;

/// guestfs's errors as the API answers them: a missing path is 404, a wrong kind of path is
/// 400, a damaged or unsupported filesystem is 422, and a failed read of the image itself is ours.
pub(crate) fn fs_error(e: guestfs::Error) -> Error {
    use guestfs::Error as G;
    match e {
        G::NotFound(p) => Error::NotFound(format!("no such file or directory in the guest: {p}")),
        G::NotADirectory(p) => Error::Invalid(format!("not a directory: {p}")),
        G::IsADirectory(p) => Error::Invalid(format!("is a directory: {p}")),
        G::InvalidPath(p) => Error::Invalid(format!("invalid path: {p}")),
        G::SymlinkLoop(p) => {
            Error::Unprocessable(format!("too many levels of symbolic links: {p}"))
        }
        G::Unsupported(m) => Error::Unprocessable(format!("not readable here: {m}")),
        e @ (G::Corrupt(_) | G::OutOfBounds { .. } | G::UnknownFilesystem) => {
            Error::Unprocessable(format!("the guest filesystem cannot be read: {e}"))
        }
        G::Io(e) => Error::Internal(format!("reading the backup's image: {e}")),
    }
}
