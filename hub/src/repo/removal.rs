//! Removing what a backup left on disk: its directory (manifest first), and the pending-deletion
//! row once that is done. Used by cancel, delete and the start-time recovery.

use std::path::Path;

use crate::catalog::{Backup, Catalog};
use crate::repo::layout;

pub(crate) fn remove_backup_dir(backup: &Backup) {
    let dir = layout::backup_dir_of(backup);
    if let Err(err) = remove_dir_files(&dir) {
        tracing::warn!(dir = %dir.display(), %err, "removing backup images");
    }
}

/// The files of a deleted backup, then its pending-deletion row. On failure the row stays and
/// the next start tries again.
pub(crate) fn finish_deletion(catalog: &Catalog, id: &str, dir: &Path) {
    match remove_dir_files(dir) {
        Ok(()) => {
            if let Err(err) = catalog.finish_deletion(id) {
                tracing::warn!(backup_id = %id, %err, "pending deletion not cleared");
            }
        }
        Err(err) => tracing::warn!(backup_id = %id, dir = %dir.display(), %err,
            "files of a deleted backup not removed; the next start tries again"),
    }
}

/// A backup directory and everything in it, the manifest first (a directory half removed is then
/// no longer a backup to `catalog rebuild`); then the VM's directory if that emptied it.
pub(crate) fn remove_dir_files(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(layout::manifest_path(dir)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(vm_dir) = dir.parent() {
        // A non-empty one stays.
        let _ = std::fs::remove_dir(vm_dir);
    }
    Ok(())
}
