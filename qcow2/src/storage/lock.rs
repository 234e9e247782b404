//! Image locks qemu understands: the byte-range OFD locks of qemu's file-posix driver, so
//! `qemu-img`, `qemu-io` and `qemu-nbd` refuse an image we write (with their own "Failed to get
//! ... lock" message), and we refuse one they write.
//!
//! qemu's scheme: each permission `i` (0 consistent read, 1 write, 2 write unchanged, 3 resize)
//! has two bytes. A holder of the permission takes a shared lock on byte `100 + i`; a holder that
//! does not let others have it takes a shared lock on byte `200 + i`. Opening checks that nobody
//! else locks `200 + i` for a permission it wants, nor `100 + i` for one it will not share.
//! Locks belong to the open file description, so they go when the file is closed.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;

const CONSISTENT_READ: u32 = 0;
const WRITE: u32 = 1;
const RESIZE: u32 = 3;

fn perm_name(i: u32) -> &'static str {
    match i {
        0 => "consistent read",
        1 => "write",
        2 => "write unchanged",
        _ => "resize",
    }
}

/// How an image is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Reads; nobody may change the image meanwhile (qemu's reader of a format node).
    Read,
    /// Reads, writes and grows the file; nobody else may write or grow it.
    Write,
}

impl LockMode {
    /// (permissions taken, permissions not shared) as qemu's bit indexes.
    fn perms(self) -> (&'static [u32], &'static [u32]) {
        match self {
            LockMode::Read => (&[CONSISTENT_READ], &[WRITE, RESIZE]),
            LockMode::Write => (&[CONSISTENT_READ, WRITE, RESIZE], &[WRITE, RESIZE]),
        }
    }
}

/// Why an image could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process (qemu, or another opener of ours) holds a conflicting lock.
    #[error("failed to get {what} lock: another process (qemu or a sendense-hub) is using it")]
    Conflict { what: String },
    #[error("locking failed: {0}")]
    Io(#[from] io::Error),
}

/// How long a conflicting lock may take to go away before the open is refused. A process killed
/// while io_uring requests of its were in flight keeps its open file descriptions, and so its
/// locks, until the kernel has torn its rings down, a few milliseconds after the process is gone:
/// a restart right after `kill -9` must not take its predecessor's images for busy.
const CONFLICT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Takes qemu's locks for `mode` on `file`, then checks that no other open file holds a
/// conflicting one, waiting up to [`CONFLICT_PATIENCE`] for one to go away. On error the caller
/// drops the file, which releases what was taken.
pub fn lock(file: &File, mode: LockMode) -> Result<(), LockError> {
    let start = std::time::Instant::now();
    loop {
        match try_lock(file, mode) {
            Err(LockError::Conflict { .. }) if start.elapsed() < CONFLICT_PATIENCE => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Drops every lock this open file description holds, at once. Closing the fd alone releases
/// them only when the kernel lets go of the file, and io_uring may hold it a little past the last
/// completion we reaped (a write punted to an io-wq worker is freed after its CQE is posted): a
/// `qemu-img check` right after `close` then found the image "in use".
pub fn unlock(file: &File) -> io::Result<()> {
    let mut fl = libc::flock {
        l_type: libc::F_UNLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        // To the end of the file and past it: every byte qemu's scheme uses.
        l_len: 0,
        l_pid: 0,
    };
    fcntl_lock(file, libc::F_OFD_SETLK, &mut fl)
}

fn try_lock(file: &File, mode: LockMode) -> Result<(), LockError> {
    let (taken, unshared) = mode.perms();
    for &i in taken {
        ofd_lock(file, PERM_BASE + i64::from(i))?;
    }
    for &i in unshared {
        ofd_lock(file, SHARED_BASE + i64::from(i))?;
    }
    for &i in taken {
        if ofd_held_elsewhere(file, SHARED_BASE + i64::from(i))? {
            return Err(LockError::Conflict {
                what: format!("\"{}\"", perm_name(i)),
            });
        }
    }
    for &i in unshared {
        if ofd_held_elsewhere(file, PERM_BASE + i64::from(i))? {
            return Err(LockError::Conflict {
                what: format!("shared \"{}\"", perm_name(i)),
            });
        }
    }
    Ok(())
}

fn flock_of(kind: libc::c_int, byte: i64) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: byte,
        l_len: 1,
        l_pid: 0,
    }
}

fn fcntl_lock(file: &File, cmd: libc::c_int, fl: &mut libc::flock) -> io::Result<()> {
    // SAFETY: `fl` is a valid, exclusively borrowed flock for the whole call, which is all
    // F_OFD_SETLK/F_OFD_GETLK read or write; the fd is owned by `file` and open.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, fl as *mut libc::flock) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A shared lock on one byte. Fails only if someone holds it exclusively (qemu never does for
/// long; its tests are F_OFD_GETLK).
fn ofd_lock(file: &File, byte: i64) -> Result<(), LockError> {
    let mut fl = flock_of(libc::F_RDLCK, byte);
    match fcntl_lock(file, libc::F_OFD_SETLK, &mut fl) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => {
            Err(LockError::Conflict {
                what: format!("byte {byte}"),
            })
        }
        Err(e) => Err(LockError::Io(e)),
    }
}

/// Whether another open file description holds any lock on `byte` (qemu's `qemu_lock_fd_test`
/// with an exclusive probe; our own locks never count).
fn ofd_held_elsewhere(file: &File, byte: i64) -> Result<bool, LockError> {
    let mut fl = flock_of(libc::F_WRLCK, byte);
    fcntl_lock(file, libc::F_OFD_GETLK, &mut fl)?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &std::path::Path, write: bool) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .unwrap()
    }

    #[test]
    fn readers_share_and_a_writer_excludes_everyone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, [0u8; 512]).unwrap();
        let r1 = open(&path, false);
        lock(&r1, LockMode::Read).unwrap();
        let r2 = open(&path, false);
        lock(&r2, LockMode::Read).unwrap();
        let w = open(&path, true);
        let err = lock(&w, LockMode::Write).unwrap_err();
        assert!(err.to_string().contains("\"write\" lock"), "{err}");
        drop(w);
        drop((r1, r2));
        let w = open(&path, true);
        lock(&w, LockMode::Write).unwrap();
        let r = open(&path, false);
        let err = lock(&r, LockMode::Read).unwrap_err();
        assert!(err.to_string().contains("shared \"write\" lock"), "{err}");
        let w2 = open(&path, true);
        assert!(lock(&w2, LockMode::Write).is_err());
    }

    /// A second reference to the open file description (as an io_uring request still holds
    /// one) keeps its locks past a close; `unlock` does not wait for it.
    #[test]
    fn unlock_releases_what_another_reference_would_keep() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, [0u8; 512]).unwrap();
        let w = open(&path, true);
        lock(&w, LockMode::Write).unwrap();
        let held = w.try_clone().unwrap();
        drop(w);
        let other = open(&path, true);
        assert!(
            try_lock(&other, LockMode::Write).is_err(),
            "the clone keeps the locks"
        );
        drop(other);
        unlock(&held).unwrap();
        let other = open(&path, true);
        try_lock(&other, LockMode::Write).unwrap();
    }
}
