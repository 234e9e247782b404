//! Where image bytes live: a small positional-I/O trait with a buffered file backend, a direct-I/O
//! one (`O_DIRECT` through io_uring) and an in-memory one (tests, fuzzing). All methods take
//! `&self` so one image serves many requests at once.

mod direct;
mod file;
mod lock;
mod mem;
mod select;
mod uring;

pub use direct::{AlignedBuf, DioAlign, DirectStorage};
pub use file::FileStorage;
pub(crate) use file::open_regular;
pub use lock::{LockError, LockMode};
pub use mem::MemStorage;
pub use select::{StorageIo, open_file_storage};

use std::io;

#[allow(clippy::len_without_is_empty)]
pub trait Storage: Send + Sync {
    /// Fills `buf` from `offset`; reading past the end is an `UnexpectedEof` error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, extending the storage if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves space for `[offset, offset + len)`, growing the storage to cover it. Backends
    /// that cannot reserve simply grow.
    fn allocate(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Whether reserving space ahead of writes ([`Storage::allocate`]) makes the writes cheaper
    /// overall; the image only preallocates where it does.
    fn reserve_pays(&self) -> bool {
        true
    }
    /// Largest stretch to reserve at once. 64 MiB by default: `fallocate` of 256 MiB took ~55 ms
    /// on tmpfs, during which the file's inode lock stalls every write of the image.
    fn reserve_step(&self) -> u64 {
        64 << 20
    }
    /// Bytes still free where the storage lives, if it can tell: preallocation takes only a
    /// share of them, so images being written do not fill the disk with reserved space.
    fn free_bytes(&self) -> Option<u64> {
        None
    }
    /// Buffer address alignment at which writes and reads go to the storage without a copy
    /// (1: any buffer).
    fn io_alignment(&self) -> usize {
        1
    }
}
