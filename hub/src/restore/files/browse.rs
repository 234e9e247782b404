//! Listings and file info of a mount, in the shapes the Sendense GUI reads: `/` shows one
//! directory per volume, everything below is the guest's own tree.

use serde::Serialize;

use super::fs_error;
use super::mount::{InUse, Mount};
use super::volumes::{self, Volume};
use crate::catalog::fmt_time;
use crate::error::{Error, Result};
use crate::repo::images::blocking;

/// A listing's default size, and the most one may ask: a directory larger than the limit
/// comes back `truncated` rather than exhausting memory.
pub const DEFAULT_LIMIT: usize = 100_000;
pub const MAX_LIMIT: usize = 1_000_000;
/// A recursive listing stops descending this deep (a damaged filesystem can loop).
const MAX_DEPTH: usize = 256;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FileEntry {
    pub name: String,
    /// The path to give back to `files`, `file-info` and `download`: `/partition-N/...`.
    pub path: String,
    /// `file` or `directory` (a symlink, a device or a FIFO is a `file` with
    /// `is_symlink`/`kind` saying more).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `file`, `directory`, `symlink` or `other`.
    #[serde(rename = "kind")]
    pub detail: &'static str,
    pub size: u64,
    /// Permission bits, `%04o`.
    pub mode: String,
    /// RFC 3339, UTC; absent when the filesystem keeps none.
    pub modified_time: Option<String>,
    pub is_symlink: bool,
    /// The link's target as stored in the guest; never followed outside it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FileList {
    pub mount_id: String,
    pub path: String,
    pub files: Vec<FileEntry>,
    pub total_count: usize,
    /// The directory (or tree) holds more than `files`; ask with a larger `limit` or browse
    /// deeper.
    pub truncated: bool,
}

fn volume_entry(m: &Mount, v: &Volume) -> FileEntry {
    FileEntry {
        name: v.name.clone(),
        path: format!("/{}", v.name),
        kind: "directory",
        detail: "directory",
        size: v.size_bytes,
        mode: "0755".to_owned(),
        modified_time: Some(fmt_time(m.created_at)),
        is_symlink: false,
        symlink_target: None,
    }
}

fn entry(volume: &str, e: guestfs::Entry) -> FileEntry {
    use guestfs::EntryKind as K;
    let (kind, detail) = match e.kind {
        K::Directory => ("directory", "directory"),
        K::File => ("file", "file"),
        K::Symlink => ("file", "symlink"),
        K::Other => ("file", "other"),
    };
    let is_symlink = e.kind == K::Symlink;
    FileEntry {
        name: e.name,
        path: if e.path == "/" {
            format!("/{volume}")
        } else {
            format!("/{volume}{}", e.path)
        },
        kind,
        detail,
        size: e.size,
        mode: format!("{:04o}", e.mode & 0o7777),
        modified_time: e
            .modified
            .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
            .map(fmt_time),
        is_symlink,
        symlink_target: e.symlink_target,
    }
}

/// The listing of `path` (one directory, or the tree below it with `recursive`), at most
/// `limit` entries.
pub async fn list(use_: InUse, path: String, recursive: bool, limit: usize) -> Result<FileList> {
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Error::Invalid(format!("limit must be 1 to {MAX_LIMIT}")));
    }
    blocking(move || {
        let m = use_.mount();
        let mut files = Vec::new();
        let mut truncated = false;
        // (volume, guest directory, depth) still to list.
        let mut todo: Vec<(String, String, usize)> = Vec::new();
        match volumes::split(&path).map_err(fs_error)? {
            None => {
                for v in &m.volumes {
                    files.push(volume_entry(m, v));
                    if recursive && v.readable {
                        todo.push((v.name.clone(), "/".to_owned(), 1));
                    }
                }
            }
            Some((volume, inner)) => todo.push((volume, inner, 0)),
        }
        todo.reverse();
        let mut open: Option<(String, Box<dyn guestfs::Filesystem>)> = None;
        while let Some((volume, dir, depth)) = todo.pop() {
            if files.len() >= limit {
                truncated = true;
                break;
            }
            if open.as_ref().is_none_or(|(name, _)| *name != volume) {
                let v = m.volume(&volume)?;
                let fs = v.open(m.disk()).map_err(fs_error)?;
                open = Some((volume.clone(), fs));
            }
            let Some((_, fs)) = open.as_ref() else {
                continue;
            };
            let listing = match fs.list_limited(&dir, limit - files.len()) {
                Ok(l) => l,
                // The path asked for must list; below it, a directory that cannot is shown
                // (it is in its parent's listing) and its contents are left out.
                Err(e) if depth > 0 => {
                    tracing::warn!(mount_id = %m.id, %volume, dir, error = %e, "listing a directory below the one asked for");
                    continue;
                }
                Err(e) => return Err(fs_error(e)),
            };
            truncated |= listing.truncated;
            let mut below = Vec::new();
            // Moved, not copied: a listing of 100,000 entries is held once.
            for e in listing.entries {
                if recursive && e.kind == guestfs::EntryKind::Directory && depth < MAX_DEPTH {
                    below.push((volume.clone(), e.path.clone(), depth + 1));
                }
                files.push(entry(&volume, e));
            }
            // Depth first, in name order.
            todo.extend(below.into_iter().rev());
        }
        truncated |= !todo.is_empty();
        let total_count = files.len();
        Ok(FileList {
            mount_id: m.id.clone(),
            path,
            files,
            total_count,
            truncated,
        })
    })
    .await
}

/// One entry: a final symlink is described (with its target), not followed.
pub async fn info(use_: InUse, path: String) -> Result<FileEntry> {
    blocking(move || {
        let m = use_.mount();
        let Some((volume, inner)) = volumes::split(&path).map_err(fs_error)? else {
            return Ok(FileEntry {
                name: String::new(),
                path: "/".to_owned(),
                kind: "directory",
                detail: "directory",
                size: 0,
                mode: "0755".to_owned(),
                modified_time: Some(fmt_time(m.created_at)),
                is_symlink: false,
                symlink_target: None,
            });
        };
        let v = m.volume(&volume)?;
        let fs = v.open(m.disk()).map_err(fs_error)?;
        let e = fs.stat(&inner).map_err(fs_error)?;
        if e.path == "/" {
            return Ok(volume_entry(m, v));
        }
        Ok(entry(&volume, e))
    })
    .await
}
