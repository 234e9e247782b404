//! QCOW2 image engine. Knows nothing about NBD.
//!
//! Every operation takes `&self`: one [`Image`] serves many concurrent requests. Metadata lookups
//! and allocations happen under one short-held lock; data I/O happens outside it. Metadata
//! reaches the file in the order data -> refblocks -> refcount table -> L2 -> L1 (see `meta`).
//!
//! How a write reaches the file ([`Image::write_at`]): under the metadata lock the request is
//! cut into runs. A run of clusters this image owns (L2 entry with COPIED) is written in place
//! with one `pwrite` after the lock is dropped. A run of clusters that need a host cluster
//! (unallocated, zero, compressed, shared) gets its L2 tables first, then one contiguous
//! allocation at the end of the file (refcounts set in the cache, file preallocated ahead in
//! large `fallocate` steps), and its guest clusters are marked in flight; the lock is dropped
//! and the data goes out in one `pwrite` (partial clusters are filled from the chain into one
//! bounce buffer: copy-on-write in the same write). Then, under the lock again, the L2 entries
//! are installed in the cache, the old clusters queued for release, the in-flight marks cleared.
//! Dirty tables reach the file at `flush`, when too many are dirty, or when the cache must evict.
//!
//! Modules: `format` (pure on-disk types), `storage` (positional I/O backends), `meta` (caches,
//! allocator, ordered write-back), `image` (the request paths), `chain` (backing layers),
//! `compress` (deflate/zstd clusters), `check` (the checker).

mod chain;
pub mod check;
mod compress;
mod create;
mod error;
pub mod format;
mod image;
mod meta;
pub mod storage;

use std::path::PathBuf;

pub use error::{Error, ErrorKind, Result};
pub use image::Image;
pub use storage::{DirectStorage, FileStorage, MemStorage, Storage, StorageIo};

/// One fuzz case: open `data` as an image held in memory (read-only, then writable), read,
/// query block status, check and write. Errors are fine; panics, hangs and huge allocations are
/// bugs. Shared by the cargo-fuzz target and the unit tests that replay its findings.
#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) {
    use std::sync::Arc;
    let ro = OpenOptions {
        l2_cache_bytes: 1 << 20,
        ..Default::default()
    };
    let st: Arc<dyn Storage> = Arc::new(MemStorage::with_max_len(data.to_vec(), 64 << 20));
    if let Ok(img) = Image::open_storage(st, &ro) {
        let size = img.virtual_size();
        let n = size.min(256 << 10) as usize;
        let mut buf = vec![0u8; n];
        let _ = img.read_at(0, &mut buf);
        let tail = size.min(4096);
        let _ = img.read_at(size - tail, &mut buf[..tail as usize]);
        let _ = img.block_status(0, size.min(64 << 20));
        let _ = img.info_chain();
    }
    let _ = check::check_storage(&MemStorage::new(data.to_vec()), false);
    let _ = check::check_storage(&MemStorage::with_max_len(data.to_vec(), 64 << 20), true);
    let rw = OpenOptions {
        writable: true,
        ..ro
    };
    let st: Arc<dyn Storage> = Arc::new(MemStorage::with_max_len(data.to_vec(), 64 << 20));
    if let Ok(img) = Image::open_storage(st, &rw) {
        let size = img.virtual_size();
        let len = size.min(70_000);
        let _ = img.write_at(
            size / 3 / 512 * 512,
            &vec![0x5a; len.min(size - size / 3 / 512 * 512) as usize],
        );
        let _ = img.write_zeroes(0, size.min(1 << 20), true);
        let _ = img.discard(0, size.min(3 << 20));
        let _ = img.flush();
        let mut buf = vec![0u8; size.min(128 << 10) as usize];
        let _ = img.read_at(0, &mut buf);
        let _ = img.close();
    }
}

/// Options for [`Image::create`].
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Virtual size in bytes (a multiple of 512).
    pub size: u64,
    /// 512 B ..= 2 MiB, a power of two. Default 64 KiB.
    pub cluster_size: u32,
    /// Backing file, stored relative to the new image's directory when possible.
    pub backing_file: Option<PathBuf>,
    /// Backing format written into the header extension ("qcow2" or "raw"); default "qcow2".
    pub backing_format: Option<String>,
    /// How the new file's metadata is written (see [`StorageIo`]; `Auto` goes direct where
    /// the filesystem allows it).
    pub storage_io: StorageIo,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            size: 0,
            cluster_size: 65536,
            backing_file: None,
            backing_format: None,
            storage_io: StorageIo::Auto,
        }
    }
}

/// Options for [`Image::open`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    pub writable: bool,
    /// Open the backing files named inside the image. Images are untrusted: off by default.
    pub open_backing: bool,
    /// With `open_backing`: every file of the backing chain must lie inside this directory
    /// (symlinks resolved); a chain reaching elsewhere is refused.
    pub backing_dir: Option<PathBuf>,
    /// Deepest backing chain accepted.
    pub max_chain_depth: u32,
    /// Bytes of L2 tables kept in memory (a bound: tables are loaded lazily). The default covers
    /// a 2 TiB image at 64 KiB clusters. Refcount blocks get an eighth of this.
    pub l2_cache_bytes: usize,
    /// Page cache or direct I/O for the image files (see [`StorageIo`]).
    pub storage_io: StorageIo,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            writable: false,
            open_backing: false,
            backing_dir: None,
            max_chain_depth: 64,
            l2_cache_bytes: 256 << 20,
            storage_io: StorageIo::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Allocated data somewhere in the chain.
    Data,
    /// Reads as zeroes (zero flag, or unallocated with no backing data).
    Zero,
    /// Not allocated anywhere in the chain (reads as zeroes).
    Unallocated,
}

/// One run of guest bytes with the same status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub kind: ExtentKind,
    /// Depth in the chain that supplies the bytes: 1 = this image, 2 = its backing file, ...;
    /// 0 = unallocated in the whole chain.
    pub depth: u32,
}

/// What `sendense-hub info` prints.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub path: PathBuf,
    /// "qcow2", or the format of a backing file that is not a qcow2 ("raw").
    pub format: String,
    pub virtual_size: u64,
    pub cluster_size: u64,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    /// Host bytes of allocated clusters (data + metadata).
    pub allocated_bytes: u64,
    pub file_size: u64,
}
