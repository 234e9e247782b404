//! A read budget per operation, for backends whose crates follow on-disk links (cluster
//! chains, B-tree child pointers) for as long as they go: a damaged volume whose links loop
//! would make one call read for ever. Each call is given what a sound volume could need;
//! past it the volume is `Corrupt`, after a bounded amount of work rather than never.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::source::ReadAt;

/// The volume, with a count of the bytes the current operation may still read.
pub(crate) struct Budgeted {
    volume: Arc<dyn ReadAt>,
    left: Arc<AtomicU64>,
    /// Names the filesystem in the error.
    kind: &'static str,
}

/// Sets the read budget of the operations that follow.
pub(crate) struct Budget(Arc<AtomicU64>);

impl Budget {
    pub(crate) fn set(&self, bytes: u64) {
        self.0.store(bytes, Ordering::Relaxed);
    }
}

/// A budgeted view of `volume` and the handle that refills it, starting with `initial`.
pub(crate) fn budgeted(
    volume: Arc<dyn ReadAt>,
    kind: &'static str,
    initial: u64,
) -> (Budgeted, Budget) {
    let left = Arc::new(AtomicU64::new(initial));
    (
        Budgeted {
            volume,
            left: left.clone(),
            kind,
        },
        Budget(left),
    )
}

impl ReadAt for Budgeted {
    fn size(&self) -> u64 {
        self.volume.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let len = buf.len() as u64;
        self.left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(len)
            })
            .map_err(|_| {
                Error::Corrupt(format!(
                    "{}: metadata read on past any sound size (a loop in its links?)",
                    self.kind
                ))
            })?;
        self.volume.read_at(buf, offset)
    }
}

/// An `io::Error` from a crate reading through our cursor: our own error (a refused read, a
/// spent budget) comes back wrapped as `Other` and is unwrapped; a damaged volume reported as
/// `InvalidData`/`UnexpectedEof` is `Corrupt`.
pub(crate) fn io_error(e: std::io::Error, kind: &str, what: &str) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(Ok(ours)) = e.into_inner().map(|inner| inner.downcast::<Error>()) {
            return *ours;
        }
        // Checked to hold an Error just above; the downcast cannot miss.
        return Error::Corrupt(format!("{kind}: {what}"));
    }
    match e.kind() {
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
            Error::Corrupt(format!("{kind}: {e} ({what})"))
        }
        _ => Error::Io(e),
    }
}
