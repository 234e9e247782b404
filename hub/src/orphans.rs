//! Image directories that no catalog row names. `create_backup` makes `<repository>/<vm>/<id>/`
//! and its images before it inserts the backup's row, so a crash in between leaves a directory
//! nobody can reach. No client ever wrote into it: export names are handed out only in the answer
//! to the create call, after the row exists. Such directories are removed at start; anything that
//! does not look exactly like one is left alone and reported.

use std::path::Path;

use crate::catalog::Catalog;
use crate::error::Result;

/// Removes the orphaned backup directories of every repository; returns how many went.
pub(crate) fn sweep(catalog: &Catalog) -> Result<usize> {
    let mut removed = 0;
    for repo in catalog.repositories()? {
        let Ok(vms) = std::fs::read_dir(&repo.path) else {
            tracing::warn!(repository = %repo.id, path = %repo.path.display(),
                "repository not readable; orphaned images not looked for");
            continue;
        };
        for vm in vms
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        {
            let Ok(backups) = std::fs::read_dir(vm.path()) else {
                continue;
            };
            let before = removed;
            for entry in backups.flatten() {
                let path = entry.path();
                let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if !is_dir || !crate::layout::is_backup_id(&id) || catalog.backup(&id)?.is_some() {
                    continue;
                }
                if !holds_only_images(&path) {
                    tracing::warn!(path = %path.display(),
                        "directory named like a backup but unknown to the catalog and not only images; left alone");
                    continue;
                }
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {
                        tracing::warn!(path = %path.display(),
                            "removed the images of a backup whose creation was interrupted");
                        removed += 1;
                    }
                    Err(e) => tracing::warn!(path = %path.display(), error = %e,
                        "cannot remove the images of an interrupted backup"),
                }
            }
            if removed > before {
                // The VM's directory goes too if that emptied it (`remove_dir` keeps a non-empty one).
                let _ = std::fs::remove_dir(vm.path());
            }
        }
    }
    Ok(removed)
}

/// Whether `dir` holds nothing but regular files named `disk<N>.qcow2`.
fn holds_only_images(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.into_iter().all(|e| {
        let Ok(e) = e else { return false };
        let is_file = e.file_type().is_ok_and(|t| t.is_file());
        is_file
            && e.file_name()
                .to_str()
                .is_some_and(crate::layout::is_disk_file)
    })
}
