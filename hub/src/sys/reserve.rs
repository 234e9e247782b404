//! A few MiB the hub keeps in the data dir so it can still work when the filesystem fills up:
//! released, they let the catalog record a cancel or a delete (which then free space) or a start
//! finish its recovery; refilled once space is back.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const RESERVE_FILE: &str = "space-reserve";
/// Enough for SQLite to append the pages of a few transactions to its WAL.
const RESERVE_BYTES: usize = 8 << 20;

pub struct SpaceReserve {
    path: PathBuf,
}

impl SpaceReserve {
    pub fn new(data_dir: &Path) -> SpaceReserve {
        SpaceReserve {
            path: data_dir.join(RESERVE_FILE),
        }
    }

    /// Make sure the reserve is there, whole (real blocks, not a sparse file). Best effort: on a
    /// full filesystem it stays released and this says so.
    pub fn refill(&self) -> bool {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() == RESERVE_BYTES as u64) {
            return true;
        }
        let fill = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&self.path)?;
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..RESERVE_BYTES / chunk.len() {
                file.write_all(&chunk)?;
            }
            file.sync_all()
        };
        match fill() {
            Ok(()) => true,
            Err(err) => {
                let _ = std::fs::remove_file(&self.path);
                tracing::warn!(path = %self.path.display(), %err, "space reserve not refilled");
                false
            }
        }
    }

    /// Give the reserve's space back to the filesystem; whether there was any.
    pub fn release(&self) -> bool {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::warn!(path = %self.path.display(),
                    "filesystem full: space reserve released so the catalog can record the change");
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refill_and_release() {
        let dir = tempfile::tempdir().unwrap();
        let r = SpaceReserve::new(dir.path());
        assert!(!r.release());
        assert!(r.refill());
        let len = std::fs::metadata(dir.path().join(RESERVE_FILE))
            .unwrap()
            .len();
        assert_eq!(len, RESERVE_BYTES as u64);
        assert!(r.release());
        assert!(!dir.path().join(RESERVE_FILE).exists());
    }
}
