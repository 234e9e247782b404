//! Restores: a read-only export of one disk as of one backup, through its backing chain.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::catalog::{Backup, Disk, Repository, Restore, Status};
use crate::error::{Error, Result};
use crate::export::ImageExport;
use crate::repo::images::open_image;
use crate::repo::layout;
use crate::state::{Hub, now};

const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateRestore {
    pub backup_id: String,
    pub disk_id: u32,
    /// 1 s to 7 days; the hub's default when left out.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 604_800)]
    pub ttl_seconds: Option<u64>,
    /// An S3 repository holding a copy of the backup: the disk is read from the copy's objects
    /// (the backup need not be in this hub's repositories any more). Absent: the backup's own.
    #[serde(default)]
    pub repository_id: Option<String>,
}

impl Hub {
    pub async fn create_restore(&self, req: CreateRestore) -> Result<Restore> {
        let ttl = req
            .ttl_seconds
            .map(Duration::from_secs)
            .unwrap_or(self.config.default_restore_ttl);
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(Error::Invalid(format!(
                "ttl_seconds must be 1 to {}",
                MAX_TTL.as_secs()
            )));
        }
        let _ops = self.ops.lock().await;
        let bucket = match &req.repository_id {
            Some(r) => Some(self.repository_or_404(r)?).filter(|repo| repo.s3.is_some()),
            None => None,
        };
        let (image, vm_name) = match &bucket {
            Some(repo) => {
                let (image, copy) = self
                    .open_copy_chain(&req.backup_id, req.disk_id, repo)
                    .await?;
                (image, copy.vm_name)
            }
            None => {
                let (backup, disk, repository) = self.restorable(&req.backup_id, req.disk_id)?;
                if req
                    .repository_id
                    .as_ref()
                    .is_some_and(|r| *r != repository.id)
                {
                    return Err(Error::Invalid(format!(
                        "backup {} is in repository {}; repository_id names it or an S3 \
                         repository holding a copy",
                        backup.id, repository.id
                    )));
                }
                let image = open_image(
                    disk.qcow2_path.clone(),
                    repository.path,
                    false,
                    self.config.storage_io,
                )
                .await?;
                (image, backup.vm_name)
            }
        };
        let export_name = layout::restore_export_name(&vm_name, req.disk_id);
        self.nbd.add_export(
            &export_name,
            Arc::new(ImageExport::new(Arc::clone(&image)).read_only()),
        )?;
        let created_at = now();
        let restore = Restore {
            id: uuid::Uuid::new_v4().to_string(),
            backup_id: req.backup_id.clone(),
            disk_id: req.disk_id,
            export_name,
            created_at,
            expires_at: created_at + ttl,
            repository_id: bucket.map(|r| r.id),
        };
        if let Err(err) = self.catalog.insert_restore(&restore) {
            let _ = self
                .nbd
                .remove_export(&restore.export_name, Duration::ZERO)
                .await;
            return Err(err);
        }
        self.restores.lock().insert(restore.id.clone(), image);
        tracing::info!(restore_id = %restore.id, backup_id = %restore.backup_id,
            disk_id = restore.disk_id, repository = ?restore.repository_id, "restore export open");
        Ok(restore)
    }

    /// The backup, its disk and its repository, when that disk can be read as of the backup:
    /// the backup is completed, its files are there, and no prune is merging its chain.
    pub(crate) fn restorable(
        &self,
        backup_id: &str,
        disk_id: u32,
    ) -> Result<(Backup, Disk, Repository)> {
        let backup = self.backup(backup_id)?;
        let disk = backup.disk(disk_id).cloned().ok_or_else(|| {
            Error::NotFound(format!("backup {} has no disk {disk_id}", backup.id))
        })?;
        crate::repo::presence::refuse_gone(&self.catalog, &backup)?;
        if backup.status != Status::Completed {
            return Err(Error::Conflict(format!(
                "backup {} is {}; only completed backups can be restored",
                backup.id,
                backup.status.as_str()
            )));
        }
        self.refuse_while_merging(&backup)?;
        let repository = self
            .catalog
            .repository(&backup.repository_id)?
            .ok_or_else(|| {
                Error::Internal(format!(
                    "backup {} is in repository {:?}, which is not in the catalog",
                    backup.id, backup.repository_id
                ))
            })?;
        Ok((backup, disk, repository))
    }

    /// A prune may rename the chain's images under a restore, and a backup being merged away no
    /// longer holds its own point in time.
    pub(crate) fn refuse_while_merging(&self, backup: &Backup) -> Result<()> {
        if let Some(m) = self
            .catalog
            .merges()?
            .into_iter()
            .find(|m| m.removed == backup.id)
        {
            return Err(Error::Conflict(format!(
                "backup {} is being merged into {} by a prune and can no longer be restored; restore {} instead",
                backup.id, m.into, m.into
            )));
        }
        if let Some(job) = self.pruning(&backup.vm_name, &backup.repository_id)? {
            return Err(Error::Conflict(format!(
                "a prune of VM {:?} is running on this chain (job {job}); restore after it ends",
                backup.vm_name
            )));
        }
        Ok(())
    }

    pub fn restores(&self) -> Result<Vec<Restore>> {
        self.catalog.restores()
    }

    pub async fn delete_restore(&self, id: &str) -> Result<()> {
        let _ops = self.ops.lock().await;
        let restore = self
            .catalog
            .restores()?
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| Error::NotFound(format!("no restore {id}")))?;
        if let Err(err) = self
            .nbd
            .remove_export(&restore.export_name, Duration::ZERO)
            .await
        {
            tracing::warn!(export = %restore.export_name, %err, "removing restore export");
        }
        self.restores.lock().remove(id);
        self.catalog.delete_restore(id)?;
        tracing::info!(restore_id = %id, "restore closed");
        Ok(())
    }
}
