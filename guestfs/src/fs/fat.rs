//! FAT12/16/32 (with long names) through `fatfs`.
//!
//! fatfs is a read-write library and its `FileSystem` wants `Read + Write + Seek`. It gets a
//! [`Cursor`], whose every write fails, so nothing can reach the image; on top of that it is
//! opened with access-date updates off (the one write a plain read would cause), and only
//! ever asked to read. Its unmount on drop only rewrites the dirty flag when a write set it,
//! which cannot happen here.

use std::io::Read;
use std::sync::Arc;

use fatfs::{DirEntry, FileAttributes, FsOptions};

use super::resolve::Tree;
use super::{Entry, EntryKind, FileReader};
use crate::error::{Error, Result};
use crate::path;
use crate::source::{Cursor, ReadAt};

type Disk = Cursor<Arc<dyn ReadAt>>;

pub(crate) struct FatFs {
    fs: fatfs::FileSystem<Disk>,
}

impl FatFs {
    pub(crate) fn load(volume: Arc<dyn ReadAt>) -> Result<Self> {
        let options = FsOptions::new().update_accessed_date(false);
        let fs = fatfs::FileSystem::new(Cursor::new(volume), options)
            .map_err(|e| Error::Corrupt(format!("fat: {e}")))?;
        Ok(FatFs { fs })
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
            for item in dir.iter() {
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

/// fatfs reports a damaged volume as `InvalidData`/`UnexpectedEof`; a refused read of ours
/// comes back wrapped as `Other`.
fn io_err(e: std::io::Error, parts: &[String]) -> Error {
    match e.kind() {
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
            Error::Corrupt(format!("fat: {e} ({})", path::join(parts)))
        }
        _ => Error::Io(e),
    }
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

    fn list_dir(&self, parts: &[String]) -> Result<Vec<Entry>> {
        let dir = if parts.is_empty() {
            self.fs.root_dir()
        } else {
            let e = self.find(parts)?;
            if !e.is_dir() {
                return Err(Error::NotADirectory(path::join(parts)));
            }
            e.to_dir()
        };
        let mut out = Vec::new();
        for item in dir.iter() {
            let item = item.map_err(|e| io_err(e, parts))?;
            let name = item.file_name();
            if name == "." || name == ".." || is_volume_label(&item) {
                continue;
            }
            out.push(entry(parts, &item));
        }
        Ok(out)
    }

    fn open_file(&self, parts: &[String], entry: &Entry) -> Result<Box<dyn FileReader + '_>> {
        let e = self.find(parts)?;
        Ok(Box::new(FatFile {
            file: e.to_file(),
            size: entry.size,
            left: entry.size,
            path: parts.to_vec(),
        }))
    }
}

struct FatFile<'a> {
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
