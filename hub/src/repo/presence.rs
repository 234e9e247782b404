//! Whether the files of completed backups are still in their repositories.
//!
//! Files can go behind the hub's back (a hand, a bad script, a repository not mounted). A
//! completed backup whose image, or whose parent's, is not there is `missing`: at each start for
//! every completed backup ([`mark_at_start`]), and at once when a restore or an incremental needs
//! its chain ([`refuse_gone`]). A start that finds the files back makes it `completed` again:
//! `missing` is what the hub saw, not a step of the backup's life, so its manifest (where one is
//! left) keeps `completed` and nothing else changes. Only "not found" counts as gone: another error
//! (a permission) proves nothing about the file and is left to whoever opens it.

use std::collections::HashSet;

use crate::catalog::{Backup, Catalog, Status};
use crate::error::{Error, Result};

/// The first disk of `backup` whose image is not there.
fn gone_disk(backup: &Backup) -> Option<u32> {
    backup
        .disks
        .iter()
        .find(|d| {
            matches!(d.qcow2_path.symlink_metadata(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        })
        .map(|d| d.disk_id)
}

/// Why `backup` is missing, as its catalog row says it (no path: the repository's id).
fn gone_why(backup: &Backup, disk_id: u32) -> String {
    format!(
        "the image of disk {disk_id} is gone from repository {:?} (removed outside the hub)",
        backup.repository_id
    )
}

fn parent_why(parent: &str) -> String {
    format!("its parent backup {parent} is missing")
}

/// At a start: every completed backup whose files (or whose parent's) are gone becomes
/// `missing`, and every missing one whose files are all back `completed` again.
///
/// The two backups of a merge a stop interrupted are left alone: the removed one's images may
/// already be renamed over its child's, and the start finishes that merge next
/// (`prune::merge`), after which both are as the catalog says.
pub(crate) fn mark_at_start(catalog: &Catalog) -> Result<()> {
    let mut gone: HashSet<String> = HashSet::new();
    let merging: HashSet<String> = catalog
        .merges()?
        .into_iter()
        .flat_map(|m| [m.removed, m.into])
        .collect();
    for backup in catalog.settled_backups()? {
        if merging.contains(&backup.id) {
            continue;
        }
        let why = match (gone_disk(&backup), &backup.parent_backup_id) {
            (Some(disk_id), _) => Some(gone_why(&backup, disk_id)),
            (None, Some(parent)) if gone.contains(parent) => Some(parent_why(parent)),
            (None, _) => None,
        };
        match (&why, backup.status) {
            (Some(why), Status::Completed) => {
                catalog.set_missing(&backup.id, Some(why))?;
                tracing::error!(backup_id = %backup.id, vm = %backup.vm_name, %why,
                    "backup marked missing: its files are gone");
            }
            (None, Status::Missing) => {
                catalog.set_missing(&backup.id, None)?;
                tracing::info!(backup_id = %backup.id, vm = %backup.vm_name,
                    "the files of a missing backup are back: completed again");
            }
            _ => {}
        }
        if why.is_some() {
            gone.insert(backup.id);
        }
    }
    Ok(())
}

/// Refuse (410, naming the backup, not a path) a backup that is `missing` or whose chain has
/// an image gone; the ones found gone are marked `missing` on the way, so listing says so.
pub(crate) fn refuse_gone(catalog: &Catalog, backup: &Backup) -> Result<()> {
    let refusal = |why: &str| {
        Error::Gone(format!(
            "backup {} of VM {:?} is missing: {why}; delete it, or put its files back and restart \
             the hub",
            backup.id, backup.vm_name
        ))
    };
    match backup.status {
        Status::Missing => {
            return Err(refusal(
                backup.error.as_deref().unwrap_or("its files are gone"),
            ));
        }
        Status::Completed => {}
        // Not readable anyway, for reasons of its own that the caller gives.
        _ => return Ok(()),
    }
    // The chain from `backup` up, until an image is gone (or the full is reached).
    let mut chain: Vec<Backup> = Vec::new();
    let mut at = Some(backup.clone());
    let mut found = None;
    while let Some(b) = at.take() {
        if chain.iter().any(|c| c.id == b.id) {
            break; // a loop no catalog of ours holds; nothing more to check
        }
        if let Some(disk_id) = gone_disk(&b) {
            found = Some(gone_why(&b, disk_id));
            chain.push(b);
            break;
        }
        at = match &b.parent_backup_id {
            Some(p) => catalog.backup(p)?,
            None => None,
        };
        chain.push(b);
    }
    let Some(first_why) = found else {
        return Ok(());
    };
    // The gone one, then each child on it down to `backup`.
    let mut why = first_why;
    for b in chain.iter().rev() {
        if catalog.set_missing(&b.id, Some(&why))? {
            tracing::error!(backup_id = %b.id, vm = %b.vm_name, %why,
                "backup marked missing: its files are gone");
        }
        why = parent_why(&b.id);
    }
    let own = catalog.backup(&backup.id)?.and_then(|b| b.error);
    Err(refusal(own.as_deref().unwrap_or("its files are gone")))
}
