//! The direct-I/O backend: the file opened `O_DIRECT` (no page cache), reads and writes through
//! io_uring (`uring`), fdatasync at flush (still needed: it flushes the device's cache and makes
//! extent conversions and the file size durable).
//!
//! `O_DIRECT` wants the buffer address, the offset and the length aligned to what the filesystem
//! reports (`statx` `STATX_DIOALIGN`). Aligned calls (whole clusters from aligned payload buffers,
//! metadata tables) go straight to the disk. Anything else goes through an aligned bounce buffer:
//! a misaligned buffer with aligned offset and length is copied; a misaligned offset or length
//! (the header, 512-byte L1 sectors, odd guest writes) is a read-modify-write of the blocks it
//! touches, under a lock per block (striped) so that two such writes into one block never undo
//! each other. An aligned write covers whole blocks, so it shares a block with another write only
//! if their bytes overlap, and NBD leaves the order of overlapping writes open. A failed direct
//! write is returned as an error, never retried through the page cache.

use std::fs::File;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};

use super::uring::{self, Op};
use super::{FileStorage, Storage};

/// Locks serialising read-modify-writes, chosen by block number.
const RMW_STRIPES: usize = 64;

/// Used when the filesystem does not report its direct-I/O alignment (kernels before 6.1): no
/// disk in use has logical blocks larger than 4 KiB.
const FALLBACK_ALIGN: u32 = 4096;

/// Largest filesystem block we align to; a bigger `st_blksize` (some network filesystems report
/// megabytes) is a preferred I/O size, not a block, and is not used.
const MAX_BLOCK_ALIGN: u32 = 64 * 1024;

/// Direct-I/O alignment of one file, both powers of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DioAlign {
    /// Of buffer addresses.
    pub mem: usize,
    /// Of file offsets and lengths.
    pub offset: u64,
}

impl DioAlign {
    /// What `statx` reports for `file`; `Unsupported` when the filesystem says it has no direct
    /// I/O, the 4 KiB fallback when the kernel does not say.
    pub fn of(file: &File) -> io::Result<Self> {
        // SAFETY: an all-zero statx is a valid value of this plain C struct.
        let mut stx: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: the path is a valid NUL-terminated string, `stx` lives for the call and the fd
        // is owned by `file`; with AT_EMPTY_PATH statx describes the fd itself.
        let rc = unsafe {
            libc::statx(
                file.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                libc::STATX_DIOALIGN,
                &mut stx,
            )
        };
        if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
            return Ok(Self::fallback());
        }
        let (mem, off) = (stx.stx_dio_mem_align, stx.stx_dio_offset_align);
        if mem == 0 || off == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the filesystem has no direct I/O for this file",
            ));
        }
        if !mem.is_power_of_two() || !off.is_power_of_two() {
            return Ok(Self::fallback());
        }
        // What the kernel accepts is not what it runs in parallel. ext4 (and xfs) take a direct
        // write whose offset or buffer address is not aligned to the filesystem's block as
        // "unaligned I/O": under the inode lock held exclusive, after draining every direct I/O in
        // flight on the file, and never inline from io_uring (it punts it to a kernel worker). With
        // 512-byte aligned payload buffers on ext4 every WRITE took that path: one write at a
        // time, 8198 of 8198 punted (issue 11). So we align to the block as well.
        let block = Some(stx.stx_blksize)
            .filter(|b| b.is_power_of_two() && *b <= MAX_BLOCK_ALIGN)
            .unwrap_or(FALLBACK_ALIGN);
        Ok(Self {
            mem: mem.max(block) as usize,
            offset: u64::from(off.max(block)),
        })
    }

    fn fallback() -> Self {
        Self {
            mem: FALLBACK_ALIGN as usize,
            offset: u64::from(FALLBACK_ALIGN),
        }
    }

    fn aligned(&self, ptr: *const u8, offset: u64, len: usize) -> bool {
        (ptr as usize) % self.mem == 0
            && offset % self.offset == 0
            && (len as u64) % self.offset == 0
    }
}

/// A buffer whose first byte sits at an address aligned to `align`: a `Vec` over-allocated by up
/// to `align - 1` bytes and used from the first aligned byte on, so no unsafe allocation code is
/// needed.
pub struct AlignedBuf {
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` zeroed bytes.
    pub fn zeroed(len: usize, align: usize) -> Self {
        Self::reuse(Vec::new(), len, align)
    }

    /// `len` bytes in `vec`'s allocation, from its first address aligned to `align` (a power of
    /// two; 0 or 1 for none). Bytes `vec` already initialised keep their contents (the caller
    /// overwrites them), the rest are zeroed. `vec` is reallocated only if it has no room, so a
    /// pooled buffer keeps its aligned start from one use to the next.
    pub fn reuse(mut vec: Vec<u8>, len: usize, align: usize) -> Self {
        let align = align.max(1);
        if !Self::fits(&vec, len, align) {
            vec.reserve_exact((len + align - 1).saturating_sub(vec.len()));
        }
        let start = vec.as_ptr().align_offset(align);
        if vec.len() < start + len {
            vec.resize(start + len, 0);
        }
        Self { vec, start, len }
    }

    /// Whether `vec`'s allocation holds `len` bytes from its first address aligned to `align`
    /// (a power of two), so [`AlignedBuf::reuse`] would not reallocate it.
    pub fn fits(vec: &Vec<u8>, len: usize, align: usize) -> bool {
        vec.capacity() >= vec.as_ptr().align_offset(align.max(1)) + len
    }

    /// The allocation, and where in it this buffer's bytes are.
    pub fn into_parts(self) -> (Vec<u8>, std::ops::Range<usize>) {
        (self.vec, self.start..self.start + self.len)
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.vec[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..self.start + self.len]
    }
}

#[derive(Debug)]
pub struct DirectStorage {
    /// The same file as the buffered backend would use, opened `O_DIRECT`: size, truncation,
    /// fallocate and the writer's lock go through it unchanged.
    file: FileStorage,
    align: DioAlign,
    rmw: [Mutex<()>; RMW_STRIPES],
    /// Caller bytes that went through a bounce buffer (the cost alignment end to end avoids).
    bounced: AtomicU64,
}

impl DirectStorage {
    /// Switches `file` to `O_DIRECT`. Fails where the filesystem has no direct I/O (EINVAL from
    /// the kernel, or `statx` saying so) or io_uring is unavailable; `file` is left buffered then.
    pub fn new(file: FileStorage) -> Result<Self, (io::Error, FileStorage)> {
        let align = match DioAlign::of(file.file()).and_then(|a| uring::probe().map(|()| a)) {
            Ok(a) => a,
            Err(e) => return Err((e, file)),
        };
        if let Err(e) = set_direct(file.file().as_raw_fd()) {
            return Err((e, file));
        }
        Ok(Self {
            file,
            align,
            rmw: std::array::from_fn(|_| Mutex::new(())),
            bounced: AtomicU64::new(0),
        })
    }

    pub fn alignment(&self) -> DioAlign {
        self.align
    }

    /// Bytes of reads and writes that were copied through a bounce buffer so far.
    pub fn bounced_bytes(&self) -> u64 {
        self.bounced.load(Ordering::Relaxed)
    }

    fn fd(&self) -> RawFd {
        self.file.file().as_raw_fd()
    }

    /// The aligned span `[start, end)` around `offset..offset + len`.
    fn span(&self, offset: u64, len: usize) -> io::Result<(u64, u64)> {
        let a = self.align.offset;
        let end = offset
            .checked_add(len as u64)
            .and_then(|e| e.checked_next_multiple_of(a))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        Ok((offset / a * a, end))
    }

    /// Locks the stripes of blocks `first` and `last` in a fixed order (no deadlock between two
    /// read-modify-writes taking the same pair).
    fn lock_blocks(
        &self,
        first: u64,
        last: u64,
    ) -> (MutexGuard<'_, ()>, Option<MutexGuard<'_, ()>>) {
        let s1 = (first % RMW_STRIPES as u64) as usize;
        let s2 = (last % RMW_STRIPES as u64) as usize;
        let (lo, hi) = (s1.min(s2), s1.max(s2));
        let g1 = self.rmw[lo].lock();
        let g2 = (hi != lo).then(|| self.rmw[hi].lock());
        (g1, g2)
    }
}

/// Sets `O_DIRECT` on an open file description.
fn set_direct(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFL/F_SETFL only reads and sets integer flags of an fd we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_DIRECT) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Storage for DirectStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if self.align.aligned(buf.as_ptr(), offset, buf.len()) {
            let len = buf.len();
            let done = uring::run(self.fd(), &mut [Op::Read { buf, offset }])?;
            return if done[0] == len {
                Ok(())
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        let (start, end) = self.span(offset, buf.len())?;
        self.bounced.fetch_add(buf.len() as u64, Ordering::Relaxed);
        let mut bounce = AlignedBuf::zeroed((end - start) as usize, self.align.mem);
        let done = uring::run(
            self.fd(),
            &mut [Op::Read {
                buf: &mut bounce,
                offset: start,
            }],
        )?;
        let at = (offset - start) as usize;
        if done[0] < at + buf.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.copy_from_slice(&bounce[at..at + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if self.align.aligned(buf.as_ptr(), offset, buf.len()) {
            uring::run(self.fd(), &mut [Op::Write { buf, offset }])?;
            return Ok(());
        }
        let (start, end) = self.span(offset, buf.len())?;
        self.bounced.fetch_add(buf.len() as u64, Ordering::Relaxed);
        let a = self.align.offset;
        let mut bounce = AlignedBuf::zeroed((end - start) as usize, self.align.mem);
        let at = (offset - start) as usize;
        let head = offset != start;
        let tail = offset + buf.len() as u64 != end;
        if !head && !tail {
            // Only the buffer is misaligned: one copy, no read.
            bounce.copy_from_slice(buf);
            uring::run(
                self.fd(),
                &mut [Op::Write {
                    buf: &bounce,
                    offset,
                }],
            )?;
            return Ok(());
        }
        let (first, last) = (start / a, end / a - 1);
        let _locked = self.lock_blocks(first, last);
        {
            // The partial blocks' current bytes (zeros past the end of the file), read together.
            let whole = bounce.len();
            let (head_buf, rest) = bounce.split_at_mut(a as usize);
            let mut ops = Vec::with_capacity(2);
            if head || (tail && first == last) {
                ops.push(Op::Read {
                    buf: head_buf,
                    offset: start,
                });
            }
            if tail && first != last {
                let at = whole - a as usize - a as usize;
                ops.push(Op::Read {
                    buf: &mut rest[at..],
                    offset: end - a,
                });
            }
            uring::run(self.fd(), &mut ops)?;
        }
        bounce[at..at + buf.len()].copy_from_slice(buf);
        uring::run(
            self.fd(),
            &mut [Op::Write {
                buf: &bounce,
                offset: start,
            }],
        )?;
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.file.flush()
    }

    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    /// `fallocate` only. The buffered backend grows the file with `ftruncate` where the
    /// filesystem has no `fallocate`, which is safe there because its writes take the same lock;
    /// direct writes do not, and a truncate racing a write past the old end would cut it off. So
    /// here the reservation fails instead (and the image stops reserving).
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        };
        // SAFETY: fallocate only reads its integer arguments; the fd is owned by `self.file` and
        // open for the duration of the call.
        let rc = unsafe { libc::fallocate(self.fd(), 0, off, l) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn reserve_pays(&self) -> bool {
        self.file.reserve_pays()
    }

    fn free_bytes(&self) -> Option<u64> {
        self.file.free_bytes()
    }

    /// Bigger steps than buffered: a direct write past the end of the file (or into a hole) is an
    /// extending write, which ext4 and xfs complete synchronously and io_uring hands to a kernel
    /// worker; writes into fallocated space are neither (fio on ext4 here: 1.5 GiB/s with
    /// fallocate against 0.5-0.9 without, issue 11). `fallocate` on a disk filesystem only
    /// allocates extents, so 256 MiB is quick and runs on its own thread anyway.
    fn reserve_step(&self) -> u64 {
        256 << 20
    }

    fn io_alignment(&self) -> usize {
        self.align.mem.max(self.align.offset as usize)
    }
}
