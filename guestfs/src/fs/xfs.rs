//! XFS through `lamxfs`: read-only by construction (no write path), pure Rust, no unsafe,
//! no_std; it reads v4 and v5 volumes with what stock `mkfs.xfs` turns on (CRCs checked,
//! 64-bit extent counts, sparse inodes, reflinks, parent pointers), all four directory
//! formats, inline and remote symlinks, and bounds its own walks (entries per directory,
//! B-tree nodes, extents). A log holding committed changes is replayed in memory, as
//! ext4-view does with a journal; nothing is written back. A log it cannot replay is refused
//! (`Unsupported`), rather than shown half-applied.
//!
//! Chosen over `xfs-core` (0.1.6), which reads only whole-image slices, maps extent block
//! numbers linearly (wrong wherever an AG's size is not a power of two, which is mkfs's usual
//! geometry) and ignores 64-bit extent counts.
//!
//! lamxfs surfaces size and mode but no times, and no space figures: the modification time
//! is read here from the inode core and the space from the superblock, both plain fixed
//! offsets of the on-disk format.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use lamxfs::{BlockRead, EntryKind as XfsKind, Inode, Path, Xfs};

use super::resolve::Tree;
use super::{Entry, EntryKind, FileReader, VolumeInfo};
use crate::error::{Error, Result};
use crate::path;
use crate::source::ReadAt;

/// lamxfs turns a failed read into its own `Io` error; the reason (a read past the volume, an
/// I/O error of the backup image) is kept here so the caller sees ours.
#[derive(Default)]
struct Fault(RefCell<Option<Error>>);

struct Disk {
    volume: Arc<dyn ReadAt>,
    fault: Rc<Fault>,
}

impl BlockRead for Disk {
    type Error = ();
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ()> {
        self.volume.read_at(buf, offset).map_err(|e| {
            *self.fault.0.borrow_mut() = Some(e);
        })
    }
}

/// The superblock fields this module reads itself (big-endian, at their on-disk offsets).
#[derive(Debug, Clone, Copy)]
struct Geometry {
    block_size: u64,
    ag_blocks: u64,
    inode_size: u64,
    inodes_per_block_log: u32,
    ag_block_log: u32,
    data_blocks: u64,
    free_blocks: u64,
}

impl Geometry {
    fn parse(sb: &[u8; 512]) -> Option<Self> {
        let u64_at = |at: usize| u64::from_be_bytes(sb[at..at + 8].try_into().unwrap_or_default());
        let u32_at = |at: usize| u32::from_be_bytes(sb[at..at + 4].try_into().unwrap_or_default());
        let u16_at = |at: usize| u16::from_be_bytes([sb[at], sb[at + 1]]);
        let g = Geometry {
            block_size: u64::from(u32_at(4)),
            data_blocks: u64_at(8),
            ag_blocks: u64::from(u32_at(84)),
            inode_size: u64::from(u16_at(104)),
            inodes_per_block_log: u32::from(sb[123]),
            ag_block_log: u32::from(sb[124]),
            free_blocks: u64_at(144),
        };
        // lamxfs has validated the geometry before this is parsed; these guard the shifts.
        (g.inodes_per_block_log + g.ag_block_log < 64).then_some(g)
    }

    /// Byte offset of inode `ino`: AG number, block in the AG and slot in the block are bit
    /// fields of the inode number.
    fn inode_offset(&self, ino: u64) -> Option<u64> {
        let agino_bits = self.ag_block_log + self.inodes_per_block_log;
        let ag = ino >> agino_bits;
        let agino = ino & ((1u64 << agino_bits) - 1);
        let block = agino >> self.inodes_per_block_log;
        let slot = agino & ((1u64 << self.inodes_per_block_log) - 1);
        ag.checked_mul(self.ag_blocks)?
            .checked_add(block)?
            .checked_mul(self.block_size)?
            .checked_add(slot.checked_mul(self.inode_size)?)
    }
}

/// `di_flags2` bit: timestamps are one 64-bit count of nanoseconds since 1901.
const DIFLAG2_BIGTIME: u64 = 1 << 3;
/// Seconds from 1901-12-13 (the bigtime epoch, `i32::MIN`) to 1970.
const BIGTIME_EPOCH_OFFSET: i64 = 1 << 31;

/// `di_mtime` of an inode core (`di_version` at 4, the time at 40, `di_flags2` at 120 on v3).
fn mtime(core: &[u8; 128]) -> i64 {
    let raw = u64::from_be_bytes(core[40..48].try_into().unwrap_or_default());
    let flags2 = u64::from_be_bytes(core[120..128].try_into().unwrap_or_default());
    if core[4] >= 3 && flags2 & DIFLAG2_BIGTIME != 0 {
        (raw / 1_000_000_000) as i64 - BIGTIME_EPOCH_OFFSET
    } else {
        i64::from((raw >> 32) as i32)
    }
}

struct State {
    fs: Xfs<Disk>,
    fault: Rc<Fault>,
}

pub(crate) struct XfsFs {
    state: RefCell<State>,
    volume: Arc<dyn ReadAt>,
    geometry: Option<Geometry>,
    label: Option<String>,
    uuid: [u8; 16],
}

impl XfsFs {
    pub(crate) fn load(volume: Arc<dyn ReadAt>) -> Result<Self> {
        let fault = Rc::new(Fault::default());
        let disk = Disk {
            volume: volume.clone(),
            fault: fault.clone(),
        };
        let fs = Xfs::open(disk, volume.size()).map_err(|e| map_err(e, &fault, "/"))?;
        let mut sb = [0u8; 512];
        volume.read_at(&mut sb, 0)?;
        Ok(XfsFs {
            label: fs.label().map(str::to_owned),
            uuid: fs.uuid(),
            geometry: Geometry::parse(&sb),
            state: RefCell::new(State { fs, fault }),
            volume,
        })
    }

    fn modified(&self, ino: u64) -> Option<i64> {
        let at = self.geometry?.inode_offset(ino)?;
        let mut core = [0u8; 128];
        self.volume.read_at(&mut core, at).ok()?;
        (core[0..2] == *b"IN").then(|| mtime(&core))
    }

    fn entry(&self, state: &mut State, parts: &[String], inode: Inode) -> Result<Entry> {
        let p = path::join(parts);
        let meta = state
            .fs
            .metadata(&inode)
            .map_err(|e| map_err(e, &state.fault, &p))?;
        let kind = if meta.is_file() {
            EntryKind::File
        } else if meta.is_dir() {
            EntryKind::Directory
        } else if meta.is_symlink() {
            EntryKind::Symlink
        } else {
            EntryKind::Other
        };
        let symlink_target = if kind == EntryKind::Symlink {
            let target = state
                .fs
                .read_link(Path::new(p.as_bytes()))
                .map_err(|e| map_err(e, &state.fault, &p))?;
            Some(String::from_utf8_lossy(&target).into_owned())
        } else {
            None
        };
        Ok(Entry {
            name: parts.last().cloned().unwrap_or_default(),
            path: p,
            kind,
            size: meta.size(),
            mode: meta.mode() & 0o7777,
            modified: self.modified(inode.ino),
            symlink_target,
        })
    }
}

/// Keeps "not found" and "damaged" apart, and a failed read of the backup as what it was.
fn map_err(e: lamxfs::Error, fault: &Fault, path: &str) -> Error {
    use lamxfs::{Error as X, SuperblockReason as R};
    match e {
        X::Io { .. } => fault
            .0
            .borrow_mut()
            .take()
            .unwrap_or_else(|| Error::Corrupt(format!("xfs: a read failed ({path})"))),
        X::NotFound {
            component: "not_a_directory",
        } => Error::NotADirectory(path.to_owned()),
        X::NotFound { .. } => Error::NotFound(path.to_owned()),
        X::NotARegularFile => Error::IsADirectory(path.to_owned()),
        X::BadSuperblock(R::DirtyLog) => Error::Unsupported(
            "xfs: the log holds changes that cannot be replayed in memory".into(),
        ),
        X::BadSuperblock(R::ExternalLog | R::RealtimeDevice) | X::UnsupportedFeature(_) => {
            Error::Unsupported(format!("xfs: {}", e.token()))
        }
        X::FileTooLarge { .. } | X::OutOfMemory { .. } => {
            Error::Unsupported(format!("xfs: {} ({path})", e.token()))
        }
        other => Error::Corrupt(format!("xfs: {} ({path})", other.token())),
    }
}

fn resolve(state: &mut State, p: &str) -> Result<Inode> {
    state
        .fs
        .resolve(Path::new(p.as_bytes()))
        .map_err(|e| map_err(e, &state.fault, p))
}

impl Tree for XfsFs {
    fn kind(&self) -> &'static str {
        "xfs"
    }

    fn lstat(&self, parts: &[String]) -> Result<Entry> {
        let mut state = self.state.borrow_mut();
        let p = path::join(parts);
        let inode = resolve(&mut state, &p)?;
        self.entry(&mut state, parts, inode)
    }

    fn info(&self) -> VolumeInfo {
        let u = self.uuid;
        let space = self.geometry.and_then(|g| {
            Some((
                g.data_blocks.checked_mul(g.block_size)?,
                g.free_blocks.min(g.data_blocks).checked_mul(g.block_size)?,
            ))
        });
        VolumeInfo {
            label: self.label.clone().filter(|l| !l.is_empty()),
            uuid: Some(format!(
                "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
                u[0],
                u[1],
                u[2],
                u[3],
                u[4],
                u[5],
                u[6],
                u[7],
                u[8],
                u[9],
                u[10],
                u[11],
                u[12],
                u[13],
                u[14],
                u[15]
            )),
            total_bytes: space.map(|s| s.0),
            free_bytes: space.map(|s| s.1),
        }
    }

    fn list_dir(&self, parts: &[String], limit: usize) -> Result<(Vec<Entry>, bool)> {
        let mut state = self.state.borrow_mut();
        let p = path::join(parts);
        let inode = resolve(&mut state, &p)?;
        let meta = state
            .fs
            .metadata(&inode)
            .map_err(|e| map_err(e, &state.fault, &p))?;
        if !meta.is_dir() {
            return Err(Error::NotADirectory(p));
        }
        let items = state
            .fs
            .read_dir(Path::new(p.as_bytes()))
            .map_err(|e| map_err(e, &state.fault, &p))?;
        let mut out = Vec::new();
        for item in items {
            if item.name == b"." || item.name == b".." {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            let mut child = parts.to_vec();
            child.push(String::from_utf8_lossy(&item.name).into_owned());
            let inode = Inode {
                ino: item.inode_number,
            };
            match self.entry(&mut state, &child, inode) {
                Ok(entry) => out.push(entry),
                // A name whose inode is damaged is still listed, as what it claims to be, so
                // one bad inode does not hide its siblings.
                Err(Error::Corrupt(_)) => out.push(Entry {
                    name: child.last().cloned().unwrap_or_default(),
                    path: path::join(&child),
                    kind: match item.kind {
                        XfsKind::Regular => EntryKind::File,
                        XfsKind::Directory => EntryKind::Directory,
                        XfsKind::Symlink => EntryKind::Symlink,
                        XfsKind::Other => EntryKind::Other,
                    },
                    size: 0,
                    mode: 0,
                    modified: None,
                    symlink_target: None,
                }),
                Err(e) => return Err(e),
            }
        }
        Ok((out, false))
    }

    fn open_file(&self, parts: &[String], entry: &Entry) -> Result<Box<dyn FileReader + '_>> {
        let mut state = self.state.borrow_mut();
        let p = path::join(parts);
        if entry.kind == EntryKind::Directory {
            return Err(Error::IsADirectory(p));
        }
        let inode = resolve(&mut state, &p)?;
        Ok(Box::new(XfsFile {
            fs: self,
            inode,
            size: entry.size,
            pos: 0,
            path: p,
        }))
    }
}

struct XfsFile<'a> {
    fs: &'a XfsFs,
    inode: Inode,
    size: u64,
    pos: u64,
    path: String,
}

impl FileReader for XfsFile<'_> {
    fn size(&self) -> u64 {
        self.size
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut state = self.fs.state.borrow_mut();
        let n = state
            .fs
            .read_file_at(&self.inode, self.pos, buf)
            .map_err(|e| map_err(e, &state.fault, &self.path))?;
        self.pos += n as u64;
        Ok(n)
    }
    fn seek(&mut self, pos: u64) -> Result<()> {
        self.pos = pos.min(self.size);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_both_encodings() {
        let mut core = [0u8; 128];
        core[4] = 3;
        // Legacy: seconds in the high half.
        core[40..44].copy_from_slice(&1_700_000_000i32.to_be_bytes());
        assert_eq!(mtime(&core), 1_700_000_000);
        core[40..44].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(mtime(&core), -5);
        // Bigtime: nanoseconds since 1901-12-13 20:45:52.
        core[120..128].copy_from_slice(&DIFLAG2_BIGTIME.to_be_bytes());
        let ns = (1_700_000_000u64 + (1 << 31)) * 1_000_000_000 + 123;
        core[40..48].copy_from_slice(&ns.to_be_bytes());
        assert_eq!(mtime(&core), 1_700_000_000);
        // A v2 inode has no flags2: the same bytes are legacy.
        core[4] = 2;
        assert_eq!(mtime(&core), i64::from((ns >> 32) as i32));
    }

    #[test]
    fn inode_numbers_hold_ag_block_and_slot() {
        let g = Geometry {
            block_size: 4096,
            ag_blocks: 1000, // not a power of two: AG 1 starts at block 1000, not 1024
            inode_size: 512,
            inodes_per_block_log: 3,
            ag_block_log: 10,
            data_blocks: 4000,
            free_blocks: 10,
        };
        assert_eq!(g.inode_offset(128), Some(16 * 4096));
        let ino = (1 << 13) | (5 << 3) | 2;
        assert_eq!(g.inode_offset(ino), Some((1000 + 5) * 4096 + 2 * 512));
    }
}
