//! What the crate reads from: a size and exact positional reads.
//!
//! Positional (`&self`) rather than `Read + Seek` (`&mut self`) so one disk can be shared by
//! several partitions and readers without a cursor to fight over; the `Read + Seek` that
//! filesystem crates want is an adapter with its own cursor ([`Cursor`]).

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use crate::error::{Error, Result};

/// A read-only random-access byte source: a disk image, a partition, a buffer.
pub trait ReadAt: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fill `buf` from `offset`; a read that would pass the end is an error, never short.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
}

/// Checks that `len` bytes at `offset` lie inside `size` without overflowing.
pub(crate) fn check_bounds(offset: u64, len: usize, size: u64) -> Result<()> {
    let len = len as u64;
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfBounds { offset, len, size }),
    }
}

impl ReadAt for std::fs::File {
    fn size(&self) -> u64 {
        // A block device reports 0 in its metadata; seeking to the end is what tells its size,
        // but that needs `&mut`. Regular image files are what the crate is given for now.
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        check_bounds(offset, buf.len(), ReadAt::size(self))?;
        self.read_exact_at(buf, offset)?;
        Ok(())
    }
}

impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_bounds(offset, buf.len(), self.len() as u64)?;
        // In bounds of a slice whose length fits usize, so the conversion cannot fail.
        let start = usize::try_from(offset).map_err(|_| Error::OutOfBounds {
            offset,
            len: buf.len() as u64,
            size: self.len() as u64,
        })?;
        buf.copy_from_slice(&self[start..start + buf.len()]);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.as_slice().size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.as_slice().read_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Arc<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Box<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_at(buf, offset)
    }
}

/// A window `[start, start + len)` of another source: a partition. Reads are relative to
/// `start` and may not leave the window, so a filesystem in one partition cannot read its
/// neighbour's bytes whatever its metadata says.
#[derive(Debug, Clone)]
pub struct Slice<R> {
    inner: R,
    start: u64,
    len: u64,
}

impl<R: ReadAt> Slice<R> {
    /// Fails when the window does not lie inside `inner`.
    pub fn new(inner: R, start: u64, len: u64) -> Result<Self> {
        match start.checked_add(len) {
            Some(end) if end <= inner.size() => Ok(Slice { inner, start, len }),
            _ => Err(Error::OutOfBounds {
                offset: start,
                len,
                size: inner.size(),
            }),
        }
    }
}

impl<R: ReadAt> ReadAt for Slice<R> {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_bounds(offset, buf.len(), self.len)?;
        // No overflow: offset + len <= self.len and start + self.len fit (checked in new).
        self.inner.read_at(buf, self.start + offset)
    }
}

/// `Read + Seek` over a [`ReadAt`], for crates that want a stream. Reads at the end return 0
/// (as `Read` expects) rather than an error. `Write` is implemented only because some crates
/// (fatfs) require the bound; every write fails, so nothing can reach the image through it.
pub struct Cursor<R> {
    inner: R,
    pos: u64,
}

impl<R: ReadAt> Cursor<R> {
    pub fn new(inner: R) -> Self {
        Cursor { inner, pos: 0 }
    }
}

impl<R: ReadAt> Read for Cursor<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.inner.size();
        let left = size.saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        self.inner
            .read_at(&mut buf[..n], self.pos)
            .map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: ReadAt> Seek for Cursor<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.inner.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start",
            )),
        }
    }
}

impl<R: ReadAt> Write for Cursor<R> {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "guestfs is read-only",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_reads_are_exact_and_bounded() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut buf = [0u8; 10];
        data.read_at(&mut buf, 90).unwrap();
        assert_eq!(buf[0], 90);
        assert!(data.read_at(&mut buf, 91).is_err());
        assert!(data.read_at(&mut buf, u64::MAX).is_err());
    }

    #[test]
    fn slice_is_a_window() {
        let data: Vec<u8> = (0..100u8).collect();
        let s = Slice::new(&data, 10, 20).unwrap();
        let mut buf = [0u8; 5];
        s.read_at(&mut buf, 15).unwrap();
        assert_eq!(buf, [25, 26, 27, 28, 29]);
        assert!(s.read_at(&mut buf, 16).is_err());
        assert!(Slice::new(&data, 90, 11).is_err());
        assert!(Slice::new(&data, u64::MAX, 2).is_err());
    }

    #[test]
    fn cursor_reads_seeks_and_refuses_writes() {
        let data: Vec<u8> = (0..10u8).collect();
        let mut c = Cursor::new(&data);
        c.seek(SeekFrom::End(-3)).unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).unwrap();
        assert_eq!(out, [7, 8, 9]);
        assert!(c.write(b"x").is_err());
        assert!(c.seek(SeekFrom::Current(-100)).is_err());
    }
}
