//! The file backend: pread/pwrite, fdatasync, fallocate.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use super::Storage;

#[derive(Debug)]
pub struct FileStorage {
    file: File,
}

impl FileStorage {
    pub fn new(file: File) -> Self {
        Self { file }
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Takes an exclusive advisory lock (flock) without waiting; released when the file closes.
    /// Keeps two writers of ours off one image (qemu uses separate OFD locks).
    pub fn try_lock_exclusive(&self) -> io::Result<()> {
        // SAFETY: flock only reads its integer arguments; the fd is owned by `self.file`.
        let rc = unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Storage for FileStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        };
        // SAFETY: fallocate only reads its integer arguments; the fd is owned by `self.file` and
        // open for the duration of the call.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, off, l) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // Filesystems without fallocate: growing the file is all we needed.
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
                let end = offset + len;
                if self.len()? < end {
                    self.file.set_len(end)?;
                }
                Ok(())
            }
            _ => Err(err),
        }
    }
}
