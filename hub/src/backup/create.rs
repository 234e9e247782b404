//! Creating a backup: the request and its checks, the parent an incremental builds on, the
//! images (overlays of the parent's) and their exports.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::catalog::{Backup, BackupFilter, BackupType, Disk, Status};
use crate::error::{Error, Result};
use crate::export::ImageExport;
use crate::repo::DEFAULT_REPOSITORY;
use crate::repo::images::{create_image, open_image};
use crate::repo::layout;
use crate::repo::limits;
use crate::repo::manifest::{self, Manifest};
use crate::state::{ActiveBackup, ActiveDisk, Hub, now};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateBackup {
    #[schema(min_length = 1, max_length = 255)]
    pub vm_name: String,
    #[serde(default)]
    pub repository_id: Option<String>,
    pub backup_type: BackupType,
    /// Without it, the disks come from the VM's context (filled by discovery).
    #[serde(default)]
    #[schema(min_items = 1, max_items = 256)]
    pub disks: Option<Vec<DiskRequest>>,
    #[serde(default)]
    pub parent_backup_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tags: Option<serde_json::Value>,
    /// The old API's backup policy; kept with the backup.
    #[serde(default)]
    pub policy_id: Option<String>,
    /// `false`: do not ask the SNA to start the copy (the caller drives the client itself).
    #[serde(default)]
    pub start_on_sna: Option<bool>,
    /// Set by the hub when the disks came from a VM context.
    #[serde(skip)]
    pub vm_context_id: Option<String>,
}

impl CreateBackup {
    fn disks(&self) -> &[DiskRequest] {
        self.disks.as_deref().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct DiskRequest {
    pub disk_id: u32,
    pub vmware_disk_key: i64,
    /// A positive multiple of 512, at most 256 TiB.
    #[schema(minimum = 512, maximum = 281_474_976_710_656_u64, multiple_of = 512)]
    pub capacity_bytes: u64,
}

/// A backup id as the Sendense client needs it: it takes the backup code path only for ids
/// starting with `backup-`, and reads a disk index from `-disk<digits>-` in the id before the
/// export name, so the id carries no VM name (a VM named `x-disk1-y` must not change disks).
fn new_backup_id() -> String {
    format!("backup-{}", uuid::Uuid::new_v4())
}

fn validate(req: &CreateBackup) -> Result<()> {
    let invalid = |m: String| Err(Error::Invalid(m));
    limits::check_vm_name(&req.vm_name).map_err(Error::Invalid)?;
    if req
        .tags
        .as_ref()
        .is_some_and(|t| !t.is_object() && !t.is_null())
    {
        return invalid("tags must be a JSON object".into());
    }
    limits::check_disk_count(req.disks().len()).map_err(Error::Invalid)?;
    let mut ids = HashSet::new();
    let mut keys = HashSet::new();
    for d in req.disks() {
        limits::check_capacity(d.capacity_bytes)
            .map_err(|why| Error::Invalid(format!("disk {}: {why}", d.disk_id)))?;
        if !ids.insert(d.disk_id) {
            return invalid(format!("duplicate disk_id {}", d.disk_id));
        }
        if !keys.insert(d.vmware_disk_key) {
            return invalid(format!("duplicate vmware_disk_key {}", d.vmware_disk_key));
        }
    }
    if req.backup_type == BackupType::Full && req.parent_backup_id.is_some() {
        return invalid("parent_backup_id is only valid for an incremental backup".into());
    }
    Ok(())
}

/// `<repository>/<vm>/<id>`, the VM's directory and the backup's both private.
fn make_backup_dir(repository: &Path, vm_name: &str, id: &str) -> Result<PathBuf> {
    let dir = layout::backup_dir(repository, vm_name, id);
    std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    for made in [dir.parent().unwrap_or(&dir), &dir] {
        crate::sys::datadir::private_dir(made)?;
    }
    Ok(dir)
}

/// Write the `creating` manifest. On failure the directory goes: without a manifest, it is one
/// the next start could not account for.
fn mark_creating(dir: &Path, creating: &Manifest) -> Result<()> {
    if let Err(e) = manifest::write(dir, creating) {
        let _ = std::fs::remove_dir_all(dir);
        return Err(Error::io(format!(
            "writing {}",
            layout::manifest_path(dir).display()
        ))(e));
    }
    Ok(())
}

/// The catalog row of a backup whose images and exports are made.
fn ready_backup(
    id: String,
    req: CreateBackup,
    repository_id: String,
    parent: Option<Backup>,
    created_at: OffsetDateTime,
    disks: Vec<Disk>,
) -> Backup {
    Backup {
        id,
        vm_name: req.vm_name,
        repository_id,
        backup_type: req.backup_type,
        parent_backup_id: parent.map(|p| p.id),
        policy_id: req.policy_id,
        status: Status::Ready,
        error: None,
        tags: req.tags,
        telemetry: None,
        created_at,
        started_at: None,
        completed_at: None,
        last_telemetry_at: None,
        vm_context_id: req.vm_context_id,
        protected: false,
        verify_state: Default::default(),
        verified_at: None,
        verify_error: None,
        note: None,
        disks,
    }
}

/// Backups are written over NBD into files: a bucket holds copies of them, not the backups.
pub(crate) fn refuse_bucket(repo: &crate::catalog::Repository) -> Result<()> {
    match repo.s3 {
        Some(_) => Err(Error::Invalid(format!(
            "repository {:?} is an S3 bucket: it holds copies of backups (a policy's copy rules, \
             POST /api/v1/backups/{{id}}/copy), not backups themselves",
            repo.id
        ))),
        None => Ok(()),
    }
}

impl Hub {
    pub async fn create_backup(&self, req: CreateBackup) -> Result<Backup> {
        validate(&req)?;
        let repository_id = req
            .repository_id
            .clone()
            .unwrap_or_else(|| DEFAULT_REPOSITORY.to_owned());
        let _ops = self.ops.lock().await;
        let repo = self
            .catalog
            .repository(&repository_id)?
            .ok_or_else(|| Error::NotFound(format!("no repository {repository_id:?}")))?;
        refuse_bucket(&repo)?;
        self.refuse_second_backup(&req.vm_name)?;
        if let Some(job) = self.pruning(&req.vm_name, &repository_id)? {
            return Err(Error::Conflict(format!(
                "a prune of VM {:?} is running on its chain (job {job}); back up after it ends",
                req.vm_name
            )));
        }
        let mut req = req;
        let mut parent = match req.backup_type {
            BackupType::Full => None,
            BackupType::Incremental => Some(self.find_parent(&req, &repository_id)?),
        };
        let mut note = None;
        if let Some(p) = &parent {
            if let Some(bad) = self.failed_in_chain(p)? {
                let why = format!(
                    "incremental asked, made a full: its base {} is not usable (backup {bad} of its chain failed verify)",
                    p.id
                );
                tracing::warn!(vm = %req.vm_name, base = %p.id, failed = %bad, "{why}");
                note = Some(why);
                req.backup_type = BackupType::Full;
                parent = None;
            }
        }

        let id = new_backup_id();
        let dir = make_backup_dir(&repo.path, &req.vm_name, &id)?;
        // Marks the directory as an unfinished creation until the row below exists.
        let created_at = now();
        let creating = Manifest::creating(
            &id,
            &req.vm_name,
            &repository_id,
            req.backup_type,
            parent.as_ref().map(|p| p.id.as_str()),
            created_at,
        );
        mark_creating(&dir, &creating)?;

        let mut disks = Vec::with_capacity(req.disks().len());
        let mut active = Vec::with_capacity(req.disks().len());
        let made = self
            .make_disks(
                &req,
                parent.as_ref(),
                &repo.path,
                &dir,
                &mut disks,
                &mut active,
            )
            .await;
        let mut backup = ready_backup(id.clone(), req, repository_id, parent, created_at, disks);
        backup.note = note;
        if let Err(err) = made.and_then(|()| self.catalog.insert_backup(&backup)) {
            self.undo_creation(active, &dir).await;
            return Err(err);
        }
        self.activate(&id, active);
        self.sync_manifest(&id).await;
        tracing::info!(backup_id = %id, vm = %backup.vm_name, disks = backup.disks.len(),
            backup_type = backup.backup_type.as_str(), "backup ready");
        Ok(backup)
    }

    /// One backup of a VM at a time.
    fn refuse_second_backup(&self, vm_name: &str) -> Result<()> {
        let same_vm = BackupFilter {
            vm_name: Some(vm_name.to_owned()),
            ..BackupFilter::default()
        };
        if let Some(running) = self
            .catalog
            .backups(&same_vm)?
            .into_iter()
            .find(|b| b.status.is_active())
        {
            return Err(Error::Conflict(format!(
                "backup {} of VM {:?} is {}",
                running.id,
                vm_name,
                running.status.as_str()
            )));
        }
        Ok(())
    }

    /// The parent an incremental builds on, its chain's files all there.
    fn find_parent(&self, req: &CreateBackup, repository_id: &str) -> Result<Backup> {
        let parent = self.named_or_latest_parent(req, repository_id)?;
        crate::repo::presence::refuse_gone(&self.catalog, &parent)?;
        Ok(parent)
    }

    fn named_or_latest_parent(&self, req: &CreateBackup, repository_id: &str) -> Result<Backup> {
        let Some(parent_id) = &req.parent_backup_id else {
            return self.catalog.latest_completed(&req.vm_name, Some(repository_id))?.ok_or_else(|| {
                Error::Invalid(format!(
                    "incremental backup of VM {:?} needs a completed backup in repository {repository_id:?}",
                    req.vm_name
                ))
            });
        };
        let parent = self
            .catalog
            .backup(parent_id)?
            .ok_or_else(|| Error::Invalid(format!("parent backup {parent_id} does not exist")))?;
        if parent.status != Status::Completed {
            return Err(Error::Invalid(format!(
                "parent backup {parent_id} is {}",
                parent.status.as_str()
            )));
        }
        if parent.vm_name != req.vm_name || parent.repository_id != repository_id {
            return Err(Error::Invalid(format!(
                "parent backup {parent_id} belongs to VM {:?} in repository {:?}",
                parent.vm_name, parent.repository_id
            )));
        }
        Ok(parent)
    }

    /// Create, open and export each disk's image in `dir` of `repository`; what was made so far is in `disks`/`active`
    /// for the caller to undo on error.
    async fn make_disks(
        &self,
        req: &CreateBackup,
        parent: Option<&Backup>,
        repository: &Path,
        dir: &Path,
        disks: &mut Vec<Disk>,
        active: &mut Vec<ActiveDisk>,
    ) -> Result<()> {
        for d in req.disks() {
            let path = layout::disk_path(dir, d.disk_id);
            let backing: Option<PathBuf> = parent
                .and_then(|p| p.disk(d.disk_id))
                .map(|pd| pd.qcow2_path.clone());
            let io = self.config.storage_io;
            create_image(path.clone(), d.capacity_bytes, backing, io).await?;
            // Through the parent's chain, which must stay inside the repository.
            let image = open_image(path.clone(), repository.to_owned(), true, io).await?;
            let export_name = layout::backup_export_name(&req.vm_name, d.disk_id);
            let export = ImageExport::new(Arc::clone(&image));
            let tally = export.tally();
            self.nbd.add_export(&export_name, Arc::new(export))?;
            active.push(ActiveDisk {
                disk_id: d.disk_id,
                export_name: export_name.clone(),
                image: Mutex::new(Some(image)),
                last_stats: Mutex::new(Default::default()),
                tally,
            });
            disks.push(Disk {
                disk_id: d.disk_id,
                vmware_disk_key: d.vmware_disk_key,
                capacity_bytes: d.capacity_bytes,
                export_name,
                qcow2_path: path,
                completed: false,
                change_id: None,
                bytes_transferred: None,
                bytes_written: 0,
                image_size: None,
                digests_blake3: None,
                completed_at: None,
            });
        }
        Ok(())
    }

    /// Take back what a failed creation made. The exports go first and the images are closed
    /// (`active` dropped) before their directory is removed.
    async fn undo_creation(&self, active: Vec<ActiveDisk>, dir: &Path) {
        for disk in &active {
            let _ = self
                .nbd
                .remove_export(&disk.export_name, Duration::ZERO)
                .await;
        }
        drop(active);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn activate(&self, id: &str, active: Vec<ActiveDisk>) {
        self.active.lock().insert(
            id.to_owned(),
            Arc::new(ActiveBackup {
                id: id.to_owned(),
                disks: active,
                last_touch: Mutex::new(SystemTime::now()),
                connected: Default::default(),
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_take_the_clients_backup_path() {
        let id = new_backup_id();
        assert!(id.starts_with("backup-"), "{id}");
        // The client's pattern for a disk index inside a job id.
        let has_disk = id
            .match_indices("-disk")
            .any(|(i, _)| id[i + 5..].chars().take_while(char::is_ascii_digit).count() > 0);
        assert!(!has_disk, "{id}");
    }
}
