//! Where image bytes live: a small positional-I/O trait with a file backend and an in-memory one
//! (tests, fuzzing). All methods take `&self` so one image serves many requests at once.

mod file;
mod lock;
mod mem;

pub use file::FileStorage;
pub(crate) use file::open_regular;
pub use lock::{LockError, LockMode};
pub use mem::MemStorage;

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
}
