//! What the next backup builds on: the change id per disk the client asks for, and a VM's
//! chain from its full backup to the newest completed one.

use serde::Serialize;

use crate::catalog::{Backup, BackupFilter, BackupType, Status, VerifyState};
use crate::error::{Error, Result};
use crate::state::Hub;

/// The answer to the client's change-id query. The client decodes it into a Go
/// `map[string]string`, so every value is a string (a number would make it fall back to a
/// full copy into an overlay).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChangeIdAnswer {
    pub vm_name: String,
    pub disk_id: String,
    pub change_id: String,
    pub backup_id: String,
    pub message: String,
}

impl Hub {
    /// What the client's `GET /api/v1/backups/changeid` gets: the change id to base this disk's
    /// copy on, `""` when it must copy everything.
    pub fn change_id(&self, vm_name: &str, disk_id: u32) -> Result<ChangeIdAnswer> {
        let same_vm = BackupFilter {
            vm_name: Some(vm_name.to_owned()),
            ..BackupFilter::default()
        };
        let backups = self.catalog.backups(&same_vm)?;
        let answer = |disk_id: u32, change_id: Option<String>, backup_id: &str, message: &str| {
            ChangeIdAnswer {
                vm_name: vm_name.to_owned(),
                disk_id: disk_id.to_string(),
                change_id: change_id.unwrap_or_default(),
                backup_id: backup_id.to_owned(),
                message: message.to_owned(),
            }
        };
        // While a backup of the VM runs, the answer must follow that backup: a full one copies
        // everything even when an earlier backup left a change id (otherwise the client would
        // copy only changed blocks into an image with no backing file).
        if let Some(active) = backups.iter().find(|b| b.status.is_active()) {
            // The client asks once per disk *before* it connects, when it cannot know the disk's
            // index yet and sends disk_id=0, and again after connecting with the index read from
            // the export name. It walks the disks in the order of `nbd_targets_string` (our
            // order of `disks`) and completes each before the next, so a disk_id of 0 means the
            // first disk not completed yet; an explicit index means that disk.
            let disk = if disk_id == 0 {
                active
                    .disks
                    .iter()
                    .find(|d| !d.completed)
                    .or(active.disks.first())
            } else {
                active.disk(disk_id)
            };
            let Some(disk) = disk else {
                return Err(Error::NotFound(format!(
                    "backup {} of VM {vm_name:?} has no disk {disk_id}",
                    active.id
                )));
            };
            if active.backup_type == BackupType::Full {
                return Ok(answer(
                    disk.disk_id,
                    None,
                    &active.id,
                    "full backup: copy everything",
                ));
            }
            let parent = match &active.parent_backup_id {
                Some(parent_id) => self.catalog.backup(parent_id)?,
                None => None,
            };
            let Some(parent_disk) = parent.as_ref().and_then(|p| p.disk(disk.disk_id)) else {
                // A disk the parent does not have (added since) has no backing file.
                return Ok(answer(
                    disk.disk_id,
                    None,
                    &active.id,
                    "disk not in the parent backup: copy everything",
                ));
            };
            return Ok(answer(
                disk.disk_id,
                parent_disk.change_id.clone(),
                parent.as_ref().map_or("", |p| p.id.as_str()),
                "change id of the parent backup",
            ));
        }
        // No backup running: the newest completed one that recorded a change id for the disk.
        let found = backups
            .iter()
            .filter(|b| b.status == Status::Completed)
            .find_map(|b| {
                b.disk(disk_id)
                    .and_then(|d| d.change_id.clone())
                    .filter(|c| !c.is_empty())
                    .map(|c| (b, c))
            });
        if let Some((b, _)) = &found {
            if let Some(bad) = self.failed_in_chain(b)? {
                let why = format!(
                    "backup {} is not a base: backup {bad} of its chain failed verify; copy everything",
                    b.id
                );
                return Ok(answer(disk_id, None, &b.id, &why));
            }
        }
        Ok(match found {
            Some((b, c)) => answer(disk_id, Some(c), &b.id, "previous change id found"),
            None => answer(disk_id, None, "", "no previous backup found"),
        })
    }

    /// The backup of `b`'s chain (itself or one below) whose newest verify failed: such a chain
    /// is never the base of a new incremental.
    pub fn failed_in_chain(&self, b: &Backup) -> Result<Option<String>> {
        let mut at = Some(b.clone());
        let mut steps = 0;
        while let Some(layer) = at {
            if layer.verify_state == VerifyState::Failed {
                return Ok(Some(layer.id));
            }
            steps += 1;
            at = match &layer.parent_backup_id {
                Some(p) if steps < 10_000 => self.catalog.backup(p)?,
                _ => None,
            };
        }
        Ok(None)
    }

    /// From the full backup to the newest completed one of the VM; empty when there is none.
    pub fn chain(&self, vm_name: &str, repository_id: Option<&str>) -> Result<Vec<Backup>> {
        let Some(newest) = self.catalog.latest_completed(vm_name, repository_id)? else {
            return Ok(Vec::new());
        };
        let mut chain = vec![newest];
        while let Some(parent_id) = chain.last().and_then(|b| b.parent_backup_id.clone()) {
            if chain.len() > 10_000 || chain.iter().any(|b| b.id == parent_id) {
                return Err(Error::Internal(format!(
                    "backup chain of {vm_name:?} loops"
                )));
            }
            match self.catalog.backup(&parent_id)? {
                Some(parent) => chain.push(parent),
                None => break,
            }
        }
        chain.reverse();
        Ok(chain)
    }
}
