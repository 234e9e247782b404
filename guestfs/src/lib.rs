//! Read-only access to the partition tables and filesystems of a guest disk.
//!
//! What this crate owns:
//! - [`ReadAt`]: the one thing it needs from a disk, "read exactly these bytes at this
//!   offset", and [`Slice`], a bounds-checked window of one (a partition);
//! - [`partition::detect`]: GPT, MBR with extended/logical partitions, a protective MBR in
//!   front of a GPT, or no table at all (the whole disk is one volume);
//! - [`fs::probe`]: the filesystem on a volume by its magic, behind the [`fs::Filesystem`]
//!   trait (list, stat, open and stream a file);
//! - [`lvm`]: the logical volumes of an LVM2 physical volume, each a [`ReadAt`] of its own;
//! - [`path`]: resolving a guest path so that nothing (`..`, an absolute symlink) leaves the
//!   guest filesystem.
//!
//! What it must not know: QCOW2, NBD, the hub, the catalog. A caller hands it a reader
//! (later: one over a qcow2 image at a point in time) and gets files back.
//!
//! It never writes: no write path exists in [`ReadAt`], and the adapters that filesystem crates
//! insist on for `Write` refuse every write. Journals are not replayed to the disk (ext4-view
//! overlays a committed journal in memory while reading, which changes nothing on the image).
//! No input makes it panic: every offset and length taken from the image is checked.

pub mod error;
pub mod fs;
pub mod fuzzing;
pub mod lvm;
pub mod partition;
pub mod path;
pub mod source;

pub use error::{Error, Result};

pub use fs::{
    Entry, EntryKind, FileReader, Filesystem, Listing, MAX_LIST, VolumeInfo, identify, probe,
};
pub use lvm::{LogicalVolume, logical_volumes, open_logical_volume};
pub use partition::{Partition, detect};
pub use source::{ReadAt, Slice};
