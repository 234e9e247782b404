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
//! Modules: `format` (pure on-disk types), `storage` (positional I/O backends), `cache` (the
//! table cache of L2 tables and refblocks), `meta` (L1, L2, ordered write-back), `refcount`
//! (refcounts, allocator, preallocation), `image` (the request paths), `chain` (backing layers),
//! `compress` (deflate/zstd clusters), `check` (the checker, one method per phase), `merge` (a child committed into its
//! backing file, which then takes the child's place), `fuzzing` (the
//! fuzz target's entry point), `units` (`GuestCluster`, `HostOffset`).

// Every function short enough to read at once; the threshold is in the workspace's clippy.toml.
#![deny(clippy::too_many_lines)]

mod background;
mod cache;
mod chain;
pub mod check;
mod compress;
mod create;
mod error;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
mod image;
pub mod merge;
mod meta;
mod refcount;
pub mod storage;
mod units;

use std::path::PathBuf;

pub use error::{Error, ErrorKind, Result};
#[doc(hidden)]
pub use fuzzing::fuzz_one;
pub use image::Image;
pub use storage::{DirectStorage, FileStorage, MemStorage, Storage, StorageIo};

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
    /// With `open_backing`: every file of the backing chain must lie inside this directory or
    /// any directory below it (symlinks resolved, a prefix of the canonical path); a chain
    /// reaching elsewhere is refused ([`ErrorKind::Refused`]).
    pub backing_dir: Option<PathBuf>,
    /// No file of the chain, the image itself included, may be a symlink: each is opened with
    /// `O_NOFOLLOW` ([`ErrorKind::Refused`]). For callers that make every file themselves and
    /// so never make a symlink (the hub's repository).
    pub no_symlinks: bool,
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
            no_symlinks: false,
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
