//! Choosing between the buffered and the direct-I/O backend for an image file.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::Arc;

use super::{DirectStorage, FileStorage, Storage};

/// How an image file is read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageIo {
    /// Direct for images opened for writing, except on tmpfs or where the filesystem or kernel
    /// offers no direct I/O; buffered otherwise.
    #[default]
    Auto,
    /// `O_DIRECT` through io_uring; opening fails where that is not possible.
    Direct,
    /// Through the page cache (pread/pwrite).
    Buffered,
}

impl StorageIo {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageIo::Auto => "auto",
            StorageIo::Direct => "direct",
            StorageIo::Buffered => "buffered",
        }
    }
}

impl fmt::Display for StorageIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StorageIo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(StorageIo::Auto),
            "direct" => Ok(StorageIo::Direct),
            "buffered" => Ok(StorageIo::Buffered),
            other => Err(format!(
                "storage I/O {other:?} (expected auto, direct or buffered)"
            )),
        }
    }
}

/// The backend for an opened image file, as `io` asks.
///
/// `Auto` stays buffered on tmpfs, where the page cache *is* the storage and `O_DIRECT` would only
/// add copies, and for read-only opens: restores read sequentially and gain from the kernel's
/// readahead; on ext4 cold direct reads measured no faster and warm ones 1.6× slower
/// (`benches/RESULTS.md`, "Restores on ext4, buffered against direct"). Everywhere else it goes
/// direct, because buffered writes to a real disk are held to a fraction of its speed by the page
/// cache. Where the filesystem refuses `O_DIRECT` (EINVAL) or io_uring is unavailable, `Auto`
/// stays buffered and says so in the log; `Direct` fails.
pub fn open_file_storage(
    fst: FileStorage,
    io: StorageIo,
    writable: bool,
) -> io::Result<Arc<dyn Storage>> {
    let want_direct = match io {
        StorageIo::Buffered => false,
        StorageIo::Direct => true,
        StorageIo::Auto => writable && !fst.on_tmpfs(),
    };
    if !want_direct {
        return Ok(Arc::new(fst));
    }
    match DirectStorage::new(fst) {
        Ok(d) => {
            tracing::debug!(alignment = ?d.alignment(), "direct I/O");
            Ok(Arc::new(d))
        }
        Err((e, fst)) if io == StorageIo::Auto => {
            tracing::info!(error = %e, "no direct I/O for this image; using the page cache");
            Ok(Arc::new(fst))
        }
        Err((e, _)) => Err(e),
    }
}
