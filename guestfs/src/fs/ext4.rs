//! ext2/3/4 through `ext4-view`: read-only by construction (it has no write path), pure Rust,
//! handles extents, htree directories and checksums, and reads through a trait we implement
//! over [`ReadAt`]. It overlays a committed journal in memory; nothing is written back.

use std::sync::Arc;

use ext4_view::{Ext4, Ext4Error, Ext4Read, FileType, Metadata};

use super::resolve::Tree;
use super::{Entry, EntryKind, FileReader};
use crate::error::{Error, Result};
use crate::path;
use crate::source::ReadAt;

/// ext4-view wants `&mut self` reads into a 'static box; positional reads need no state.
struct Source(Arc<dyn ReadAt>);

impl Ext4Read for Source {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.0
            .read_at(dst, start_byte)
            .map_err(|e| Box::new(e) as _)
    }
}

pub(crate) struct Ext4Fs {
    fs: Ext4,
    space: Option<(u64, u64)>,
}

impl Ext4Fs {
    pub(crate) fn load(volume: Arc<dyn ReadAt>) -> Result<Self> {
        let mut sb = [0u8; 1024];
        volume.read_at(&mut sb, 1024)?;
        let fs = Ext4::load(Box::new(Source(volume))).map_err(|e| map_err(e, "/"))?;
        Ok(Ext4Fs {
            fs,
            space: space(&sb),
        })
    }

    fn entry(&self, parts: &[String], meta: &Metadata) -> Result<Entry> {
        let p = path::join(parts);
        let kind = match meta.file_type() {
            FileType::Regular => EntryKind::File,
            FileType::Directory => EntryKind::Directory,
            FileType::Symlink => EntryKind::Symlink,
            _ => EntryKind::Other,
        };
        let symlink_target = if kind == EntryKind::Symlink {
            let t = self.fs.read_link(p.as_str()).map_err(|e| map_err(e, &p))?;
            Some(String::from_utf8_lossy(t.as_ref()).into_owned())
        } else {
            None
        };
        Ok(Entry {
            name: parts.last().cloned().unwrap_or_default(),
            path: p,
            kind,
            size: meta.len(),
            mode: u32::from(meta.mode()),
            modified: Some(meta.modified().seconds()),
            symlink_target,
        })
    }
}

/// Total and free bytes from the superblock, which ext4-view does not expose: block counts
/// (with their high halves when the 64-bit feature is on) times the block size.
fn space(sb: &[u8; 1024]) -> Option<(u64, u64)> {
    let u32_at = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
    let log = u32_at(0x18);
    if log > 6 {
        return None;
    }
    let block = 1024u64 << log;
    let wide = u32_at(0x60) & 0x80 != 0;
    let hi = |at: usize| if wide { u64::from(u32_at(at)) << 32 } else { 0 };
    let total = u64::from(u32_at(0x04)) | hi(0x150);
    let free = u64::from(u32_at(0x0C)) | hi(0x158);
    Some((
        total.checked_mul(block)?,
        free.min(total).checked_mul(block)?,
    ))
}

/// Keeps "not found" and "damaged" apart; `path` names what was asked for.
fn map_err(e: Ext4Error, path: &str) -> Error {
    match e {
        Ext4Error::NotFound => Error::NotFound(path.to_owned()),
        Ext4Error::NotADirectory => Error::NotADirectory(path.to_owned()),
        Ext4Error::IsADirectory => Error::IsADirectory(path.to_owned()),
        Ext4Error::TooManySymlinks => Error::SymlinkLoop(path.to_owned()),
        Ext4Error::NotAbsolute | Ext4Error::MalformedPath | Ext4Error::PathTooLong => {
            Error::InvalidPath(path.to_owned())
        }
        Ext4Error::Io(inner) => match inner.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(other) => Error::Io(std::io::Error::other(other)),
        },
        e @ (Ext4Error::Incompatible(_)
        | Ext4Error::Encrypted
        | Ext4Error::IsASpecialFile
        | Ext4Error::FileTooLarge) => Error::Unsupported(format!("ext4: {e} ({path})")),
        other => Error::Corrupt(format!("ext4: {other} ({path})")),
    }
}

impl Tree for Ext4Fs {
    fn kind(&self) -> &'static str {
        "ext4"
    }

    fn lstat(&self, parts: &[String]) -> Result<Entry> {
        let p = path::join(parts);
        let meta = self
            .fs
            .symlink_metadata(p.as_str())
            .map_err(|e| map_err(e, &p))?;
        self.entry(parts, &meta)
    }

    fn info(&self) -> super::VolumeInfo {
        let label = self.fs.label().to_str().ok().map(str::to_owned);
        super::VolumeInfo {
            label: label.filter(|l| !l.is_empty()),
            uuid: Some(self.fs.uuid().to_string()),
            total_bytes: self.space.map(|s| s.0),
            free_bytes: self.space.map(|s| s.1),
        }
    }

    fn list_dir(&self, parts: &[String], limit: usize) -> Result<(Vec<Entry>, bool)> {
        let p = path::join(parts);
        let mut out = Vec::new();
        for item in self.fs.read_dir(p.as_str()).map_err(|e| map_err(e, &p))? {
            let item = item.map_err(|e| map_err(e, &p))?;
            let name = String::from_utf8_lossy(item.file_name().as_ref()).into_owned();
            if name == "." || name == ".." {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            let meta = item.metadata().map_err(|e| map_err(e, &p))?;
            let mut child = parts.to_vec();
            child.push(name);
            out.push(self.entry(&child, &meta)?);
        }
        Ok((out, false))
    }

    fn open_file(&self, parts: &[String], entry: &Entry) -> Result<Box<dyn FileReader + '_>> {
        let p = path::join(parts);
        let file = self.fs.open(p.as_str()).map_err(|e| map_err(e, &p))?;
        Ok(Box::new(Ext4File {
            file,
            size: entry.size,
            path: p,
        }))
    }
}

struct Ext4File {
    file: ext4_view::File,
    size: u64,
    path: String,
}

impl FileReader for Ext4File {
    fn size(&self) -> u64 {
        self.size
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.file
            .read_bytes(buf)
            .map_err(|e| map_err(e, &self.path))
    }
    fn seek(&mut self, pos: u64) -> Result<()> {
        self.file
            .seek_to(pos.min(self.size))
            .map_err(|e| map_err(e, &self.path))
    }
}
