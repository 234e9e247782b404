//! FAT12/16/32 (with long names) through `fatfs`.
//!
//! fatfs is a read-write library and its `FileSystem` wants `Read + Write + Seek`. It gets a
//! [`Cursor`], whose every write fails, so nothing can reach the image; on top of that it is
//! opened with access-date updates off (the one write a plain read would cause), and only
//! ever asked to read. Its unmount on drop only rewrites the dirty flag when a write set it,
//! which cannot happen here.
//!
//! fatfs follows cluster chains for as long as they go, and skips deleted entries inside one
//! step of its directory iterator: a damaged FAT whose chain loops back would make a listing
//! run for ever. Every operation therefore gets a read budget ([`Budget`]) sized from what a
//! sound volume can hold (a FAT directory has at most 65,536 entries, 2 MiB); past it the
//! volume is `Corrupt`.

use std::io::Read;
use std::sync::Arc;

use fatfs::{DirEntry, FileAttributes, FsOptions};

use super::budget::{Budget, Budgeted, budgeted};
use super::resolve::Tree;
use super::{Entry, EntryKind, FileReader};
use crate::error::{Error, Result};
use crate::path;
use crate::source::{Cursor, ReadAt};

type Disk = Cursor<Budgeted>;

/// Bytes reading one directory may take: its entries at their largest (65,536 of 32 bytes,
/// 2 MiB) plus the FAT lookups between its clusters. A sound volume never comes near it; a
/// chain that loops reaches it after a few thousand reads, not never.
const DIR_BUDGET: u64 = 4 << 20;
const READ_SLACK: u64 = 16 << 20;
/// Directory entries one listing may return (the FAT limit per directory).
const MAX_DIR_ENTRIES: usize = 65_536;

pub(crate) struct FatFs {
    fs: fatfs::FileSystem<Disk>,
    budget: Budget,
}

impl FatFs {
    pub(crate) fn load(volume: Arc<dyn ReadAt>) -> Result<Self> {
        let (disk, budget) = budgeted(volume, "fat", DIR_BUDGET);
        let options = FsOptions::new().update_accessed_date(false);
        let fs = fatfs::FileSystem::new(Cursor::new(disk), options)
            .map_err(|e| Error::Corrupt(format!("fat: {e}")))?;
        Ok(FatFs { fs, budget })
    }

    /// The entry at `parts` (not the root). FAT names compare without case, as the guest's
    /// OS does.
    fn find(&self, parts: &[String]) -> Result<DirEntry<'_, Disk>> {
        let mut dir = self.fs.root_dir();
        let mut found = None;
        for (i, name) in parts.iter().enumerate() {
            if i > 0 {
                let parent: &DirEntry<'_, Disk> = found
                    .as_ref()
                    .ok_or_else(|| Error::NotFound(path::join(parts)))?;
                if !parent.is_dir() {
                    return Err(Error::NotADirectory(path::join(&parts[..i])));
                }
                dir = parent.to_dir();
            }
            let mut hit = None;
            self.budget.set(DIR_BUDGET);
            for item in dir.iter().take(MAX_DIR_ENTRIES + 1) {
                let item = item.map_err(|e| io_err(e, parts))?;
                if item.file_name().eq_ignore_ascii_case(name) && !is_volume_label(&item) {
                    hit = Some(item);
                    break;
                }
            }
            found = Some(hit.ok_or_else(|| Error::NotFound(path::join(&parts[..=i])))?);
        }
        found.ok_or_else(|| Error::NotFound(path::join(parts)))
    }
}

fn is_volume_label(e: &DirEntry<'_, Disk>) -> bool {
    e.attributes().contains(FileAttributes::VOLUME_ID)
}

fn io_err(e: std::io::Error, parts: &[String]) -> Error {
    super::budget::io_error(e, "fat", &path::join(parts))
}

fn root_entry() -> Entry {
    Entry {
        name: String::new(),
        path: "/".to_owned(),
        kind: EntryKind::Directory,
        size: 0,
        mode: 0o755,
        modified: None,
        symlink_target: None,
    }
}

fn entry(parent: &[String], e: &DirEntry<'_, Disk>) -> Entry {
    let name = e.file_name();
    let mut parts = parent.to_vec();
    parts.push(name.clone());
    let dir = e.is_dir();
    let mut mode = if dir { 0o755 } else { 0o644 };
    if e.attributes().contains(FileAttributes::READ_ONLY) {
        mode &= !0o222;
    }
    Entry {
        name,
        path: path::join(&parts),
        kind: if dir {
            EntryKind::Directory
        } else {
            EntryKind::File
        },
        size: if dir { 0 } else { e.len() },
        mode,
        modified: unix_seconds(e.modified()),
        symlink_target: None,
    }
}

/// DOS date and time (local, no zone) as if UTC; `None` for the all-zero "never set" stamp.
fn unix_seconds(t: fatfs::DateTime) -> Option<i64> {
    let (y, m, d) = (
        i64::from(t.date.year),
        i64::from(t.date.month),
        i64::from(t.date.day),
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from 1970-01-01 of a proleptic Gregorian date, counting years from March so the
    // leap day falls at the end of the year.
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = i64::from(t.time.hour) * 3600 + i64::from(t.time.min) * 60 + i64::from(t.time.sec);
    Some(days * 86_400 + secs)
}

impl Tree for FatFs {
    fn kind(&self) -> &'static str {
        "fat"
    }

    fn lstat(&self, parts: &[String]) -> Result<Entry> {
        if parts.is_empty() {
            return Ok(root_entry());
        }
        let e = self.find(parts)?;
        Ok(entry(&parts[..parts.len() - 1], &e))
    }

    fn info(&self) -> super::VolumeInfo {
        let label = self.fs.volume_label().trim_end().to_owned();
        let id = self.fs.volume_id();
        let cluster = u64::from(self.fs.cluster_size());
        // Counting free clusters reads the whole FAT (a few MiB at most); a damaged one is
        // simply not reported.
        self.budget.set(DIR_BUDGET * 16);
        let stats = self.fs.stats().ok();
        super::VolumeInfo {
            label: (!label.is_empty() && label != "NO NAME").then_some(label),
            uuid: Some(format!("{:04X}-{:04X}", id >> 16, id & 0xFFFF)),
            total_bytes: stats.map(|s| u64::from(s.total_clusters()) * cluster),
            free_bytes: stats.map(|s| u64::from(s.free_clusters()) * cluster),
        }
    }

    fn list_dir(&self, parts: &[String], limit: usize) -> Result<(Vec<Entry>, bool)> {
        let dir = if parts.is_empty() {
            self.fs.root_dir()
        } else {
            let e = self.find(parts)?;
            if !e.is_dir() {
                return Err(Error::NotADirectory(path::join(parts)));
            }
            e.to_dir()
        };
        // `find` spent from the budget; the listing gets its own.
        self.budget.set(DIR_BUDGET);
        let mut out = Vec::new();
        for item in dir.iter() {
            let item = item.map_err(|e| io_err(e, parts))?;
            if out.len() == MAX_DIR_ENTRIES {
                return Err(Error::Corrupt(format!(
                    "fat: {} has more than {MAX_DIR_ENTRIES} entries",
                    path::join(parts)
                )));
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            let name = item.file_name();
            if name == "." || name == ".." || is_volume_label(&item) {
                continue;
            }
            out.push(entry(parts, &item));
        }
        Ok((out, false))
    }

    fn open_file(&self, parts: &[String], entry: &Entry) -> Result<Box<dyn FileReader + '_>> {
        let e = self.find(parts)?;
        Ok(Box::new(FatFile {
            budget: &self.budget,
            file: e.to_file(),
            size: entry.size,
            left: entry.size,
            path: parts.to_vec(),
        }))
    }
}

struct FatFile<'a> {
    budget: &'a Budget,
    file: fatfs::File<'a, Disk>,
    size: u64,
    /// fatfs follows the cluster chain as long as it goes; the directory's size is the truth.
    left: u64,
    path: Vec<String>,
}

impl FileReader for FatFile<'_> {
    fn size(&self) -> u64 {
        self.size
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let want = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        self.budget.set(want as u64 + READ_SLACK);
        let n = self
            .file
            .read(&mut buf[..want])
            .map_err(|e| io_err(e, &self.path))?;
        if n == 0 {
            return Err(Error::Corrupt(format!(
                "fat: {} ends {} bytes before its size",
                path::join(&self.path),
                self.left
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
    fn seek(&mut self, pos: u64) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        let pos = pos.min(self.size);
        // fatfs walks the cluster chain to `pos`: one FAT entry per cluster passed.
        self.budget.set(4 * READ_SLACK);
        self.file
            .seek(SeekFrom::Start(pos))
            .map_err(|e| io_err(e, &self.path))?;
        self.left = self.size - pos;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dos_dates() {
        let t = |year, month, day, hour, min, sec| fatfs::DateTime {
            date: fatfs::Date { year, month, day },
            time: fatfs::Time {
                hour,
                min,
                sec,
                millis: 0,
            },
        };
        assert_eq!(unix_seconds(t(1980, 1, 1, 0, 0, 0)), Some(315_532_800));
        assert_eq!(
            unix_seconds(t(2024, 2, 29, 12, 30, 15)),
            Some(1_709_209_815)
        );
        assert_eq!(unix_seconds(t(2024, 0, 1, 0, 0, 0)), None);
    }
}
