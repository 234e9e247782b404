//! NTFS through the `ntfs` crate: read-only by design (it has no write path), pure Rust, no
//! unsafe; it reads resident and non-resident data, sparse runs, attribute lists and the
//! `$I30` index B-trees. It takes a `Read + Seek` per call, so the volume's cursor sits in
//! a `RefCell` and every operation borrows it for its duration.
//!
//! What Windows shows is what is listed: the metafiles (`$MFT`, `$Bitmap`, ... the first 16
//! records) are hidden, and of a file's two names only the long one is listed (the 8.3 DOS
//! alias is skipped). Names compare without case, through the volume's `$UpCase`, as Windows
//! does. NTFS has no Unix permissions: files are 0644 and directories 0755, less write when
//! read-only.
//!
//! Symlinks are reparse points (made by Windows) or Interix links (made by ntfs-3g: a system
//! file holding `IntxLNK` and the target); junctions are reparse points too. Their targets are Windows paths, turned into
//! guest paths here: `..\x` becomes `../x`, `C:\Users\x` becomes `/Users/x` on this volume
//! (the drive letter cannot be known from inside a backup). Any other reparse point (dedup,
//! WOF-compressed, cloud placeholders), an EFS-encrypted file or an NTFS-compressed one
//! keeps its real content elsewhere, so opening one is `Unsupported`, never a file of zeros.
//!
//! The crate follows B-tree child pointers and data runs as far as they go; each call gets a
//! read budget ([`super::budget`]) so a damaged index that loops fails instead of spinning.

use std::cell::RefCell;
use std::io::SeekFrom;
use std::sync::Arc;

use ::ntfs::indexes::NtfsFileNameIndex;
use ::ntfs::structured_values::{NtfsFileAttributeFlags, NtfsFileNamespace};
use ::ntfs::{Ntfs, NtfsAttributeFlags, NtfsAttributeType, NtfsError, NtfsFile, NtfsReadSeek};

use super::budget::{Budget, Budgeted, budgeted};
use super::resolve::Tree;
use super::{Entry, EntryKind, FileReader, VolumeInfo};
use crate::error::{Error, Result};
use crate::path;
use crate::source::{Cursor, ReadAt};

type Disk = Cursor<Budgeted>;

/// What one step of a lookup or a listing may read: an index record or two (4 KiB each) and
/// a file record with its attribute list. A step of a sound volume reads a few KiB.
const STEP_BUDGET: u64 = 4 << 20;
/// Beyond the bytes asked for, what a read of file data may spend on its data runs.
const READ_SLACK: u64 = 16 << 20;
/// Records 0 to 15 are the metafiles; the root (5) is reached as `/`, never by name.
const FIRST_USER_RECORD: u64 = 16;
const ROOT_RECORD: u64 = 5;

const IO_REPARSE_TAG_MOUNT_POINT: u32 = 0xA000_0003;
const IO_REPARSE_TAG_SYMLINK: u32 = 0xA000_000C;
/// WSL's symlinks: version 2, then the target in UTF-8.
const IO_REPARSE_TAG_LX_SYMLINK: u32 = 0xA000_001D;
/// What ntfs-3g writes before the UTF-16 target of a symlink it creates (Interix's format).
const INTERIX_MAGIC: &[u8] = b"IntxLNK\x01";
/// Windows caps a reparse point's data at 16 KiB.
const MAX_REPARSE: u64 = 16 * 1024;

pub(crate) struct NtfsFs {
    ntfs: Ntfs,
    disk: RefCell<Disk>,
    budget: Budget,
}

impl NtfsFs {
    pub(crate) fn load(volume: Arc<dyn ReadAt>) -> Result<Self> {
        // $UpCase is 128 KiB; the boot sector and $MFT's first records a few KiB more.
        let (disk, budget) = budgeted(volume, "ntfs", STEP_BUDGET);
        let mut disk = Cursor::new(disk);
        let mut ntfs = Ntfs::new(&mut disk).map_err(|e| map_err(e, "/"))?;
        ntfs.read_upcase_table(&mut disk)
            .map_err(|e| map_err(e, "/"))?;
        Ok(NtfsFs {
            ntfs,
            disk: RefCell::new(disk),
            budget,
        })
    }

    /// The file at `parts`, looked up one directory index at a time.
    fn find(&self, disk: &mut Disk, parts: &[String]) -> Result<NtfsFile<'_>> {
        self.budget.set(STEP_BUDGET);
        let mut file = self
            .ntfs
            .root_directory(disk)
            .map_err(|e| map_err(e, "/"))?;
        for (i, name) in parts.iter().enumerate() {
            let here = || path::join(&parts[..=i]);
            if !file.is_directory() {
                return Err(Error::NotADirectory(path::join(&parts[..i])));
            }
            self.budget.set(STEP_BUDGET);
            let index = file
                .directory_index(disk)
                .map_err(|e| map_err(e, &here()))?;
            let mut finder = index.finder();
            let entry = NtfsFileNameIndex::find(&mut finder, &self.ntfs, disk, name)
                .ok_or_else(|| Error::NotFound(here()))?
                .map_err(|e| map_err(e, &here()))?;
            let record = entry.file_reference().file_record_number();
            if record < FIRST_USER_RECORD {
                return Err(Error::NotFound(here()));
            }
            let next = entry
                .to_file(&self.ntfs, disk)
                .map_err(|e| map_err(e, &here()))?;
            file = next;
        }
        Ok(file)
    }

    fn entry(&self, disk: &mut Disk, parts: &[String], file: &NtfsFile<'_>) -> Result<Entry> {
        let p = path::join(parts);
        let info = file.info().map_err(|e| map_err(e, &p))?;
        let flags = info.file_attributes();
        let mut mode = if file.is_directory() { 0o755 } else { 0o644 };
        if flags.contains(NtfsFileAttributeFlags::READ_ONLY) {
            mode &= !0o222;
        }
        let dir = file.is_directory();
        let len = if dir { 0 } else { data_len(disk, file, &p)? };
        let target = if flags.contains(NtfsFileAttributeFlags::REPARSE_POINT) {
            reparse_data(disk, file, &p)?
                .as_deref()
                .and_then(reparse_target)
        } else if !dir && flags.contains(NtfsFileAttributeFlags::SYSTEM) {
            interix_target(disk, file, &p, len)?
        } else {
            None
        };
        let (kind, size) = match (&target, dir) {
            (Some(t), _) => (EntryKind::Symlink, t.len() as u64),
            (None, true) => (EntryKind::Directory, 0),
            (None, false) => (EntryKind::File, len),
        };
        Ok(Entry {
            name: parts.last().cloned().unwrap_or_default(),
            path: p,
            kind,
            size,
            mode,
            modified: unix_seconds(info.modification_time().nt_timestamp()),
            symlink_target: target,
        })
    }

    /// Bytes in use, from `$Bitmap` (one bit per cluster); `None` when it cannot be read.
    fn used_bytes(&self, disk: &mut Disk) -> Option<u64> {
        let cluster = u64::from(self.ntfs.cluster_size());
        let clusters = self.ntfs.size() / cluster;
        self.budget.set(clusters / 8 + READ_SLACK);
        let bitmap = self.ntfs.file(disk, 6).ok()?;
        let item = bitmap.data(disk, "")?.ok()?;
        let mut value = item.to_attribute().ok()?.value(disk).ok()?;
        let mut buf = vec![0u8; 1 << 20];
        let (mut used, mut left) = (0u64, clusters.div_ceil(8));
        while left > 0 {
            let n = value.read(disk, &mut buf).ok()?;
            if n == 0 {
                break;
            }
            let take = n.min(usize::try_from(left).unwrap_or(usize::MAX));
            used += buf[..take]
                .iter()
                .map(|b| u64::from(b.count_ones()))
                .sum::<u64>();
            left -= take as u64;
        }
        Some(used.min(clusters) * cluster)
    }
}

/// The length of the unnamed `$DATA` stream (0 when the file has none).
fn data_len(disk: &mut Disk, file: &NtfsFile<'_>, p: &str) -> Result<u64> {
    match file.data(disk, "") {
        None => Ok(0),
        Some(item) => {
            let item = item.map_err(|e| map_err(e, p))?;
            let attribute = item.to_attribute().map_err(|e| map_err(e, p))?;
            Ok(attribute.value_length())
        }
    }
}

/// Fills as much of `buf` as the unnamed data stream holds from `pos`. The crate's stream
/// value borrows the file record, so each call finds the stream again and seeks: in-memory
/// work on the record, small next to the chunk it reads.
fn read_stream(
    disk: &mut Disk,
    file: &NtfsFile<'_>,
    p: &str,
    pos: u64,
    buf: &mut [u8],
) -> Result<usize> {
    let item = file
        .data(disk, "")
        .ok_or_else(|| Error::Corrupt(format!("ntfs: {p} has no data stream")))?
        .map_err(|e| map_err(e, p))?;
    let attribute = item.to_attribute().map_err(|e| map_err(e, p))?;
    let mut value = attribute.value(disk).map_err(|e| map_err(e, p))?;
    value
        .seek(disk, SeekFrom::Start(pos))
        .map_err(|e| map_err(e, p))?;
    let mut done = 0;
    while done < buf.len() {
        let n = value
            .read(disk, &mut buf[done..])
            .map_err(|e| map_err(e, p))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// The target of an Interix symlink, the kind ntfs-3g writes: a system file holding
/// `IntxLNK\1` and the target in UTF-16.
fn interix_target(
    disk: &mut Disk,
    file: &NtfsFile<'_>,
    p: &str,
    len: u64,
) -> Result<Option<String>> {
    if !(INTERIX_MAGIC.len() as u64..=MAX_REPARSE).contains(&len) {
        return Ok(None);
    }
    let mut buf = vec![0u8; len as usize];
    let n = read_stream(disk, file, p, 0, &mut buf)?;
    let Some(rest) = buf[..n].strip_prefix(INTERIX_MAGIC) else {
        return Ok(None);
    };
    let units: Vec<u16> = rest
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let target = String::from_utf16_lossy(&units);
    Ok((!target.is_empty()).then_some(target))
}

/// The raw `$REPARSE_POINT` value, if the file has one of sane size.
fn reparse_data(disk: &mut Disk, file: &NtfsFile<'_>, p: &str) -> Result<Option<Vec<u8>>> {
    let mut attributes = file.attributes();
    while let Some(item) = attributes.next(disk) {
        let item = item.map_err(|e| map_err(e, p))?;
        let attribute = item.to_attribute().map_err(|e| map_err(e, p))?;
        if attribute.ty().ok() != Some(NtfsAttributeType::ReparsePoint) {
            continue;
        }
        let len = attribute.value_length();
        if len > MAX_REPARSE {
            return Ok(None);
        }
        let mut value = attribute.value(disk).map_err(|e| map_err(e, p))?;
        let mut buf = vec![0u8; len as usize];
        value
            .read_exact(disk, &mut buf)
            .map_err(|e| map_err(e, p))?;
        return Ok(Some(buf));
    }
    Ok(None)
}

/// A symlink's or junction's target as a guest path, from a reparse point's data; `None`
/// for any other kind of reparse point (or damaged data).
fn reparse_target(data: &[u8]) -> Option<String> {
    let u16_at = |b: &[u8], at: usize| -> Option<usize> {
        Some(usize::from(u16::from_le_bytes(
            b.get(at..at + 2)?.try_into().ok()?,
        )))
    };
    let tag = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?);
    let body = data.get(8..8 + u16_at(data, 4)?)?;
    let (names, relative) = match tag {
        IO_REPARSE_TAG_SYMLINK => {
            let flags = u32::from_le_bytes(body.get(8..12)?.try_into().ok()?);
            (12, flags & 1 != 0)
        }
        IO_REPARSE_TAG_MOUNT_POINT => (8, false),
        IO_REPARSE_TAG_LX_SYMLINK => {
            let target = String::from_utf8_lossy(body.get(4..)?).into_owned();
            return (!target.is_empty()).then_some(target);
        }
        _ => return None,
    };
    let name = |off: usize, len: usize| -> Option<String> {
        let bytes = body.get(names + off..names + off + len)?;
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        Some(String::from_utf16_lossy(&units))
    };
    // The print name is what the user typed; the substitute name is the NT path (`\??\C:\x`).
    let print = name(u16_at(body, 4)?, u16_at(body, 6)?)?;
    let target = if print.is_empty() {
        name(u16_at(body, 0)?, u16_at(body, 2)?)?
    } else {
        print
    };
    let target = target.strip_prefix(r"\??\").unwrap_or(&target).to_owned();
    let unix = target.replace('\\', "/");
    if relative {
        return (!unix.is_empty()).then_some(unix);
    }
    // `C:/Users/x` → `/Users/x`: absolute on this volume.
    let b = unix.as_bytes();
    let rest = if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        &unix[2..]
    } else {
        &unix[..]
    };
    Some(format!("/{}", rest.trim_start_matches('/')))
}

/// 100 ns ticks since 1601 as Unix seconds; `None` for the zero "never set" stamp.
fn unix_seconds(ticks: u64) -> Option<i64> {
    const EPOCH_DIFF: i64 = 11_644_473_600;
    (ticks != 0).then(|| (ticks / 10_000_000) as i64 - EPOCH_DIFF)
}

/// Keeps "not found" and "damaged" apart; `path` names what was asked for.
fn map_err(e: NtfsError, path: &str) -> Error {
    match e {
        NtfsError::Io(inner) => super::budget::io_error(inner, "ntfs", path),
        NtfsError::NotADirectory { .. } => Error::NotADirectory(path.to_owned()),
        e @ (NtfsError::UnsupportedAttributeType { .. }
        | NtfsError::UnsupportedClusterSize { .. }
        | NtfsError::UnsupportedFileNamespace { .. }
        | NtfsError::UnsupportedSectorSize { .. }) => {
            Error::Unsupported(format!("ntfs: {e} ({path})"))
        }
        other => Error::Corrupt(format!("ntfs: {other} ({path})")),
    }
}

impl Tree for NtfsFs {
    fn kind(&self) -> &'static str {
        "ntfs"
    }

    fn lstat(&self, parts: &[String]) -> Result<Entry> {
        let mut disk = self.disk.borrow_mut();
        let file = self.find(&mut disk, parts)?;
        self.entry(&mut disk, parts, &file)
    }

    fn info(&self) -> VolumeInfo {
        let mut disk = self.disk.borrow_mut();
        self.budget.set(STEP_BUDGET);
        let label = match self.ntfs.volume_name(&mut *disk) {
            Some(Ok(name)) => Some(name.name().to_string_lossy()),
            _ => None,
        };
        let total = self.ntfs.size();
        VolumeInfo {
            label: label.filter(|l| !l.is_empty()),
            // As blkid prints it: the 64-bit serial in hex.
            uuid: Some(format!("{:016X}", self.ntfs.serial_number())),
            total_bytes: Some(total),
            free_bytes: self
                .used_bytes(&mut disk)
                .map(|used| total.saturating_sub(used)),
        }
    }

    fn list_dir(&self, parts: &[String], limit: usize) -> Result<(Vec<Entry>, bool)> {
        let mut disk = self.disk.borrow_mut();
        let dir = self.find(&mut disk, parts)?;
        let p = path::join(parts);
        if !dir.is_directory() {
            return Err(Error::NotADirectory(p));
        }
        let index = dir
            .directory_index(&mut *disk)
            .map_err(|e| map_err(e, &p))?;
        let mut entries = index.entries();
        let mut out = Vec::new();
        loop {
            self.budget.set(STEP_BUDGET);
            let Some(item) = entries.next(&mut *disk) else {
                break;
            };
            let item = item.map_err(|e| map_err(e, &p))?;
            let record = item.file_reference().file_record_number();
            let Some(key) = item.key() else { continue };
            let key = key.map_err(|e| map_err(e, &p))?;
            if record < FIRST_USER_RECORD || key.namespace() == NtfsFileNamespace::Dos {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            let mut child = parts.to_vec();
            child.push(key.name().to_string_lossy());
            let file = item
                .to_file(&self.ntfs, &mut *disk)
                .map_err(|e| map_err(e, &p))?;
            out.push(self.entry(&mut disk, &child, &file)?);
        }
        Ok((out, false))
    }

    fn open_file(&self, parts: &[String], entry: &Entry) -> Result<Box<dyn FileReader + '_>> {
        let mut disk = self.disk.borrow_mut();
        let file = self.find(&mut disk, parts)?;
        let p = path::join(parts);
        if file.file_record_number() == ROOT_RECORD || file.is_directory() {
            return Err(Error::IsADirectory(p));
        }
        let flags = file.info().map_err(|e| map_err(e, &p))?.file_attributes();
        let elsewhere = NtfsFileAttributeFlags::REPARSE_POINT | NtfsFileAttributeFlags::ENCRYPTED;
        if flags.intersects(elsewhere) {
            return Err(Error::Unsupported(format!(
                "ntfs: {p} keeps its content outside its data stream (encrypted or a reparse point)"
            )));
        }
        if let Some(item) = file.data(&mut *disk, "") {
            let item = item.map_err(|e| map_err(e, &p))?;
            let attribute = item.to_attribute().map_err(|e| map_err(e, &p))?;
            let stored = NtfsAttributeFlags::COMPRESSED | NtfsAttributeFlags::ENCRYPTED;
            if attribute.flags().intersects(stored) {
                return Err(Error::Unsupported(format!(
                    "ntfs: {p} is compressed or encrypted by NTFS"
                )));
            }
        }
        drop(disk);
        Ok(Box::new(NtfsReader {
            fs: self,
            file,
            size: entry.size,
            pos: 0,
            path: p,
        }))
    }
}

/// A file's unnamed data stream, read through [`read_stream`] from where the last read ended.
struct NtfsReader<'a> {
    fs: &'a NtfsFs,
    file: NtfsFile<'a>,
    size: u64,
    pos: u64,
    path: String,
}

impl FileReader for NtfsReader<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let want = usize::try_from(self.size - self.pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let mut disk = self.fs.disk.borrow_mut();
        self.fs.budget.set(want as u64 + READ_SLACK);
        let p = &self.path;
        let done = read_stream(&mut disk, &self.file, p, self.pos, &mut buf[..want])?;
        if done == 0 {
            return Err(Error::Corrupt(format!(
                "ntfs: {p} ends {} bytes before its size",
                self.size - self.pos
            )));
        }
        self.pos += done as u64;
        Ok(done)
    }

    fn seek(&mut self, pos: u64) -> Result<()> {
        self.pos = pos.min(self.size);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    /// A reparse point of `tag` whose substitute and print names are `sub` and `print`.
    fn reparse(tag: u32, sub: &str, print: &str, flags: Option<u32>) -> Vec<u8> {
        let (sub, print) = (utf16(sub), utf16(print));
        let mut body = Vec::new();
        for v in [0, sub.len(), sub.len(), print.len()] {
            body.extend_from_slice(&(v as u16).to_le_bytes());
        }
        if let Some(f) = flags {
            body.extend_from_slice(&f.to_le_bytes());
        }
        body.extend_from_slice(&sub);
        body.extend_from_slice(&print);
        let mut data = tag.to_le_bytes().to_vec();
        data.extend_from_slice(&(body.len() as u16).to_le_bytes());
        data.extend_from_slice(&[0, 0]);
        data.extend_from_slice(&body);
        data
    }

    #[test]
    fn symlink_targets_become_guest_paths() {
        let t = |d: Vec<u8>| reparse_target(&d);
        assert_eq!(
            t(reparse(
                IO_REPARSE_TAG_SYMLINK,
                r"..\a\b",
                r"..\a\b",
                Some(1)
            ))
            .as_deref(),
            Some("../a/b")
        );
        assert_eq!(
            t(reparse(
                IO_REPARSE_TAG_SYMLINK,
                r"\??\C:\Windows\x",
                "",
                Some(0)
            ))
            .as_deref(),
            Some("/Windows/x")
        );
        assert_eq!(
            t(reparse(
                IO_REPARSE_TAG_MOUNT_POINT,
                r"\??\D:\data",
                r"D:\data",
                None
            ))
            .as_deref(),
            Some("/data")
        );
        let mut lx = IO_REPARSE_TAG_LX_SYMLINK.to_le_bytes().to_vec();
        lx.extend_from_slice(&[8, 0, 0, 0, 2, 0, 0, 0]);
        lx.extend_from_slice(b"/etc");
        assert_eq!(t(lx).as_deref(), Some("/etc"));
        // Dedup, damaged lengths, and nothing at all are not links.
        assert_eq!(t(reparse(0x8000_0013, "x", "x", None)), None);
        let mut cut = reparse(IO_REPARSE_TAG_SYMLINK, "abc", "abc", Some(1));
        cut.truncate(20);
        assert_eq!(t(cut), None);
        assert_eq!(t(Vec::new()), None);
    }

    #[test]
    fn nt_times() {
        assert_eq!(unix_seconds(0), None);
        assert_eq!(unix_seconds(116_444_736_000_000_000), Some(0));
    }
}
