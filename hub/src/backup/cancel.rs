//! Ending a backup before it completes: cancelled by an operator, failed (the client's report,
//! the monitor's staleness), or abandoned (its exports and images dropped).

use crate::catalog::{Backup, Status};
use crate::error::{Error, Result};
use crate::repo::removal;
use crate::state::Hub;

impl Hub {
    /// Close the exports and drop the images of an active backup (connections are cut).
    pub(crate) async fn abandon(&self, id: &str) {
        let active = self.active.lock().remove(id);
        let Some(active) = active else { return };
        for disk in &active.disks {
            disk.remove_export(&self.nbd).await;
            if let Err(err) = disk.close_image().await {
                tracing::warn!(export = %disk.export_name, %err, "closing image");
            }
            let written = disk.bytes_written();
            let size = self
                .catalog
                .backup(id)
                .ok()
                .flatten()
                .and_then(|b| {
                    b.disk(disk.disk_id)
                        .and_then(|d| std::fs::metadata(&d.qcow2_path).ok())
                })
                .map_or(0, |m| m.len());
            let _ = self
                .catalog
                .record_disk_result(id, disk.disk_id, written, size);
        }
    }

    pub async fn cancel(&self, id: &str) -> Result<Backup> {
        let _ops = self.ops.lock().await;
        let backup = self.backup(id)?;
        match backup.status {
            Status::Cancelled => return Ok(backup),
            Status::Ready | Status::Running => {}
            other => {
                return Err(Error::Conflict(format!(
                    "backup {id} is {}",
                    other.as_str()
                )));
            }
        }
        self.freeing(|| {
            self.catalog
                .set_status(id, Status::Cancelled, Some("cancelled by request"))
        })?;
        self.abandon(id).await;
        removal::remove_backup_dir(&backup);
        self.reserve.refill();
        tracing::info!(backup_id = %id, "backup cancelled");
        self.backup(id)
    }

    /// Fail an active backup that is not finalising (stale, or anything else that ends it).
    pub async fn fail(&self, id: &str, reason: &str) -> Result<()> {
        let _ops = self.ops.lock().await;
        let backup = self.backup(id)?;
        if !matches!(backup.status, Status::Ready | Status::Running) {
            return Ok(());
        }
        tracing::warn!(backup_id = %id, %reason, "backup failed");
        self.catalog.set_status(id, Status::Failed, Some(reason))?;
        self.abandon(id).await;
        self.sync_manifest(id).await;
        Ok(())
    }
}
