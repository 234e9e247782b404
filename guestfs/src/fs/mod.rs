//! Guest filesystems behind one trait, and [`probe`] to pick the right one for a volume.
//!
//! Each backend (`ext4`, `fat`, `ntfs`, `xfs`) only answers for paths whose parent components are real
//! directories ([`resolve::Tree`]); symlinks are resolved once, in `resolve`, inside the guest
//! and with `..` clamped at its root, so no backend can be talked into following a link
//! anywhere else, and none ever touches the host's filesystem.
//!
//! The handles are not `Send`: ext4-view, fatfs, ntfs and lamxfs keep their state in `Rc`/`RefCell`. A
//! caller on an async runtime opens and uses a filesystem inside one blocking task.

mod budget;
mod ext4;
mod fat;
mod ntfs;
mod resolve;
mod xfs;

use std::sync::Arc;

pub(crate) use resolve::guarded;

use crate::error::{Error, Result};
use crate::source::ReadAt;

/// What a directory entry is. Devices, FIFOs and sockets are `Other`: listed, never opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
    Other,
}

/// One file, directory or link as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The last component; empty for the root.
    pub name: String,
    /// Absolute guest path, resolved (no `.`, `..` or symlinks among the parents).
    pub path: String,
    pub kind: EntryKind,
    /// Bytes of content (for a symlink: of its target string).
    pub size: u64,
    /// Permission bits (`0o7777`); FAT has none, so it gets 0o755/0o644, less write when
    /// read-only.
    pub mode: u32,
    /// Last modification, Unix seconds. FAT stores local time without a zone; it is taken as UTC.
    pub modified: Option<i64>,
    /// The link's target as stored, for `Symlink` only. Never followed on the host.
    pub symlink_target: Option<String>,
}

/// A file's content, read front to back in caller-sized chunks, so restoring a large file
/// holds one buffer, not the file.
pub trait FileReader {
    fn size(&self) -> u64;
    /// Reads up to `buf.len()` bytes; 0 at the end of the file.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize>;
    /// Moves to byte `pos` (at most the size), for ranged downloads.
    fn seek(&mut self, pos: u64) -> Result<()>;
}

/// What a volume says about itself, for listing a disk's filesystems.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeInfo {
    pub label: Option<String>,
    /// ext4's UUID, FAT's 32-bit serial as `XXXX-XXXX` (as `blkid` prints them).
    pub uuid: Option<String>,
    pub total_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
}

/// A directory's entries, at most as many as were asked for.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub entries: Vec<Entry>,
    /// The directory holds more than `entries`.
    pub truncated: bool,
}

/// What [`Filesystem::list`] returns at most: a directory larger than this (a damaged one, or a
/// hostile one of a billion entries) is an error there, and a truncated [`Listing`] through
/// [`Filesystem::list_limited`].
pub const MAX_LIST: usize = 1 << 20;

/// A guest filesystem, read-only. Paths are guest paths ([`crate::path`]): relative ones are
/// taken from the root and `..` never climbs above it.
pub trait Filesystem {
    /// "ext4", "fat", ...
    fn kind(&self) -> &'static str;
    /// Entries of a directory (symlinks on the way, and a final one, followed inside the
    /// guest), without `.` and `..`, sorted by name.
    fn list(&self, path: &str) -> Result<Vec<Entry>> {
        let listing = self.list_limited(path, MAX_LIST)?;
        if listing.truncated {
            return Err(Error::Unsupported(format!(
                "{path} holds more than {MAX_LIST} entries"
            )));
        }
        Ok(listing.entries)
    }
    /// Like `list`, but reads at most `limit` entries (in the directory's own order, then
    /// sorted) and says whether there were more.
    fn list_limited(&self, path: &str, limit: usize) -> Result<Listing>;
    /// Label, UUID and space of the volume.
    fn info(&self) -> VolumeInfo;
    /// The entry itself: a final symlink is described, not followed.
    fn stat(&self, path: &str) -> Result<Entry>;
    /// A regular file's content; symlinks are followed inside the guest, at most
    /// [`resolve::MAX_SYMLINKS`] of them.
    fn open(&self, path: &str) -> Result<Box<dyn FileReader + '_>>;
}

/// Which filesystem lies on a volume, by its magic numbers; the known ones that cannot be
/// read yet are `Unsupported` with their name rather than `UnknownFilesystem`.
pub fn probe(volume: Arc<dyn ReadAt>) -> Result<Box<dyn Filesystem>> {
    let kind = identify(&*volume)?;
    resolve::guarded(kind.unwrap_or("volume"), "opening it", || match kind {
        Some("ext") => Ok(Box::new(ext4::Ext4Fs::load(volume)?) as Box<dyn Filesystem>),
        Some("fat") => Ok(Box::new(fat::FatFs::load(volume)?)),
        Some("ntfs") => Ok(Box::new(self::ntfs::NtfsFs::load(volume)?)),
        Some("xfs") => Ok(Box::new(xfs::XfsFs::load(volume)?)),
        Some(other) => Err(Error::Unsupported(other.to_owned())),
        None => Err(Error::UnknownFilesystem),
    })
}

/// Reads `len` bytes at `offset`, or `None` when the volume is too small to have them.
fn peek(volume: &dyn ReadAt, offset: u64, len: usize) -> Result<Option<Vec<u8>>> {
    if offset
        .checked_add(len as u64)
        .is_none_or(|end| end > volume.size())
    {
        return Ok(None);
    }
    let mut buf = vec![0u8; len];
    volume.read_at(&mut buf, offset)?;
    Ok(Some(buf))
}

/// The name of the filesystem (or other volume content) on `volume`.
pub fn identify(volume: &dyn ReadAt) -> Result<Option<&'static str>> {
    if let Some(b) = peek(volume, 0, 512)? {
        if &b[3..11] == b"NTFS    " {
            return Ok(Some("ntfs"));
        }
        if &b[3..11] == b"EXFAT   " {
            return Ok(Some("exfat"));
        }
        if &b[0..4] == b"XFSB" {
            return Ok(Some("xfs"));
        }
        if is_fat_boot_sector(&b) {
            return Ok(Some("fat"));
        }
    }
    if let Some(b) = peek(volume, 1024 + 56, 2)? {
        if b == [0x53, 0xEF] {
            return Ok(Some("ext"));
        }
    }
    // LVM puts its label in one of the first four sectors (the second, unless told otherwise).
    for sector in 0..4 {
        if peek(volume, sector * 512, 8)?.is_some_and(|b| b == b"LABELONE") {
            return Ok(Some("lvm2"));
        }
    }
    if let Some(b) = peek(volume, 0x10040, 8)? {
        if &b == b"_BHRfS_M" {
            return Ok(Some("btrfs"));
        }
    }
    if let Some(b) = peek(volume, 4096 - 10, 10)? {
        if &b == b"SWAPSPACE2" {
            return Ok(Some("swap"));
        }
    }
    Ok(None)
}

/// A FAT boot sector: a jump, the 55 AA mark, and a BPB whose sector and cluster sizes are
/// powers of two in range (what fatfs itself insists on before mounting).
fn is_fat_boot_sector(b: &[u8]) -> bool {
    let bytes_per_sector = u16::from_le_bytes([b[11], b[12]]);
    let sectors_per_cluster = b[13];
    (b[0] == 0xEB || b[0] == 0xE9)
        && b[510..512] == [0x55, 0xAA]
        && (512..=4096).contains(&bytes_per_sector)
        && bytes_per_sector.is_power_of_two()
        && sectors_per_cluster.is_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics() {
        let mut v = vec![0u8; 8192];
        assert_eq!(identify(&v).unwrap(), None);
        v[1024 + 56] = 0x53;
        v[1024 + 57] = 0xEF;
        assert_eq!(identify(&v).unwrap(), Some("ext"));
        v[0..4].copy_from_slice(b"XFSB");
        assert_eq!(identify(&v).unwrap(), Some("xfs"));
        // The magic alone is not a volume: damaged, not unsupported.
        assert!(matches!(probe(Arc::new(v.clone())), Err(Error::Corrupt(_))));
        v[0..4].fill(0);
        v[1024 + 56..1024 + 58].fill(0);
        v[512..520].copy_from_slice(b"LABELONE");
        assert!(matches!(probe(Arc::new(v)), Err(Error::Unsupported(s)) if s == "lvm2"));
        assert!(matches!(
            probe(Arc::new(vec![0u8; 10])),
            Err(Error::UnknownFilesystem)
        ));
    }
}
