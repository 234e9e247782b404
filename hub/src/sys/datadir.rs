//! The data dir as a whole: one process at a time, and private to its owner.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

pub const LOCK_FILE: &str = "hub.lock";

/// Held for as long as a process works on the data dir (`serve`, `catalog rebuild`).
pub struct DataDirLock {
    _file: std::fs::File,
}

/// Take the data dir's lock, or say that another process holds it.
pub fn lock(data_dir: &Path) -> Result<DataDirLock> {
    let path = data_dir.join(LOCK_FILE);
    let file = open_private(&path).map_err(Error::io(format!("opening {}", path.display())))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(DataDirLock { _file: file }),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::Conflict(format!(
            "another sendense-hub process is using the data dir {} (it holds {})",
            data_dir.display(),
            path.display()
        ))),
        Err(e) => Err(Error::io(format!("locking {}", path.display()))(e.into())),
    }
}

/// Open a file of the hub's for reading and writing, creating it with mode 0600 if needed, and
/// make it 0600 if it was not (files made under an older umask).
pub fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Create the data dir if needed and make it private (0700), whatever the umask.
pub fn prepare(data_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(data_dir)
        .map_err(Error::io(format!("creating {}", data_dir.display())))?;
    private_dir(data_dir)
}

/// Mode 0700 for a directory the hub made (the data dir, repositories, backup directories).
pub fn private_dir(dir: &Path) -> Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(Error::io(
        format!("making {} private (mode 0700)", dir.display()),
    ))
}

/// Replaces `path` with `bytes` atomically and durably, mode 0600 whatever the umask: written to
/// `tmp` (beside it), synced, renamed over `path`, then the directory synced. A crash leaves the
/// old file or the new one, never a torn one; a failed write removes `tmp`.
pub fn replace_private(tmp: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}
