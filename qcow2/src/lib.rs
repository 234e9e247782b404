//! QCOW2 image engine. Knows nothing about NBD.
//!
//! This file is the public contract the other crates build against (the engine behind it is being
//! written). Every operation takes `&self`: one [`Image`] serves many concurrent requests.

use std::path::{Path, PathBuf};

/// What went wrong, so callers (the NBD layer) can map a kind to an errno in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    Io,
    InvalidFormat,
    Unsupported,
    Corrupt,
    OutOfBounds,
    NoSpace,
    ReadOnly,
    InvalidArgument,
}

#[derive(Debug, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

pub type Result<T> = std::result::Result<T, Error>;

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
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            size: 0,
            cluster_size: 65536,
            backing_file: None,
            backing_format: None,
        }
    }
}

/// Options for [`Image::open`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    pub writable: bool,
    /// Open the backing files named inside the image. Images are untrusted: off by default.
    pub open_backing: bool,
    /// Deepest backing chain accepted.
    pub max_chain_depth: u32,
    /// Bytes of L2 tables kept in memory.
    pub l2_cache_bytes: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            writable: false,
            open_backing: false,
            max_chain_depth: 64,
            l2_cache_bytes: 32 << 20,
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
    pub virtual_size: u64,
    pub cluster_size: u64,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    /// Host bytes of allocated clusters (data + metadata).
    pub allocated_bytes: u64,
    pub file_size: u64,
}

pub struct Image {
    _private: (),
}

impl Image {
    pub fn create(_path: &Path, _opts: &CreateOptions) -> Result<()> {
        todo!()
    }
    pub fn open(_path: &Path, _opts: &OpenOptions) -> Result<Image> {
        todo!()
    }
    pub fn virtual_size(&self) -> u64 {
        todo!()
    }
    pub fn cluster_size(&self) -> u64 {
        todo!()
    }
    pub fn is_writable(&self) -> bool {
        todo!()
    }
    /// Info of this image and, in order, each image of its backing chain.
    pub fn info_chain(&self) -> Vec<ImageInfo> {
        todo!()
    }
    pub fn read_at(&self, _offset: u64, _buf: &mut [u8]) -> Result<()> {
        todo!()
    }
    pub fn write_at(&self, _offset: u64, _buf: &[u8]) -> Result<()> {
        todo!()
    }
    /// Zeroes without allocating data clusters; `unmap` lets it free clusters (never exposing
    /// backing data).
    pub fn write_zeroes(&self, _offset: u64, _len: u64, _unmap: bool) -> Result<()> {
        todo!()
    }
    pub fn discard(&self, _offset: u64, _len: u64) -> Result<()> {
        todo!()
    }
    pub fn block_status(&self, _offset: u64, _len: u64) -> Result<Vec<Extent>> {
        todo!()
    }
    /// Everything acknowledged before this call is durable when it returns.
    pub fn flush(&self) -> Result<()> {
        todo!()
    }
    /// Flush, trim any preallocated tail, release the file.
    pub fn close(self) -> Result<()> {
        todo!()
    }
}

pub mod check {
    //! Consistency checker, classified the way `qemu-img check` does.
    use std::path::Path;

    #[derive(Debug, Clone, Default)]
    pub struct CheckReport {
        pub corruptions: u64,
        pub leaks: u64,
        pub leaks_fixed: u64,
        pub corruptions_fixed: u64,
        /// One line per problem found, with offsets.
        pub messages: Vec<String>,
    }

    impl CheckReport {
        /// 0 clean, 3 leaks only, 2 corrupt (as `qemu-img check`).
        pub fn exit_code(&self) -> i32 {
            if self.corruptions > self.corruptions_fixed {
                2
            } else if self.leaks > self.leaks_fixed {
                3
            } else {
                0
            }
        }
    }

    pub fn check(_path: &Path, _repair: bool) -> super::Result<CheckReport> {
        todo!()
    }
}
