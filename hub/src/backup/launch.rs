//! `POST /api/v1/backups` as the old hub did it: disks from the VM context when the body lists
//! none, then the SNA's `POST /api/v1/backup/start`, which runs the Sendense client against the
//! backup's NBD targets. A refusal or silence from the SNA fails the backup and removes its images.

use serde::{Deserialize, Serialize};

use crate::backup::create::{CreateBackup, DiskRequest};
use crate::catalog::{Backup, BackupType, Status};
use crate::error::{Error, Result};
use crate::repo::removal::remove_backup_dir;
use crate::state::Hub;
use crate::sys::echo;

/// The SNA's `POST /api/v1/backup/start` body (the old hub's, field for field).
#[derive(Serialize)]
struct SnaBackupStart<'a> {
    job_id: &'a str,
    vm_name: &'a str,
    vcenter_host: &'a str,
    vcenter_user: &'a str,
    vcenter_password: &'a str,
    vm_path: &'a str,
    nbd_host: &'a str,
    nbd_targets: &'a str,
    backup_type: &'a str,
    previous_change_id: &'a str,
}

/// The SNA's answer: `{job_id, status: "started", message, started_at, pid}`.
#[derive(Debug, Default, Deserialize)]
struct SnaStarted {
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
}

impl Hub {
    /// Create the backup (disks from the body, else from the VM context) and, when the context
    /// has a credential and the body does not say `"start_on_sna": false`, start it on the SNA.
    pub async fn start_backup(&self, mut req: CreateBackup) -> Result<Backup> {
        let context = self.catalog.vm_context(&req.vm_name)?;
        if req.disks.is_none() {
            let Some((_, disks)) = &context else {
                return Err(Error::NotFound(format!(
                    "VM not found: run discovery (no VM context for {:?})",
                    req.vm_name
                )));
            };
            req.disks = Some(
                disks
                    .iter()
                    .map(|d| DiskRequest {
                        disk_id: d.disk_id,
                        vmware_disk_key: d.vmware_disk_key,
                        capacity_bytes: d.capacity_bytes,
                    })
                    .collect(),
            );
        }
        req.vm_context_id = context.as_ref().map(|(c, _)| c.context_id.clone());
        let start_on = match (&context, req.start_on_sna) {
            (_, Some(false)) => None,
            (Some((c, _)), _) => c.credential_id.map(|id| (c.clone(), id)),
            (None, _) => None,
        };
        // The password is opened before anything is made: a wrong key leaves nothing behind.
        let login = match &start_on {
            Some((_, credential_id)) => Some(self.vcenter_login(*credential_id)?),
            None => None,
        };
        let backup = self.create_backup(req).await?;
        let (Some((context, _)), Some(login)) = (start_on, login) else {
            return Ok(backup);
        };
        let parent_change_id = self.first_disk_parent_change_id(&backup)?;
        let targets = self.nbd_targets(&backup);
        let body = SnaBackupStart {
            job_id: &backup.id,
            vm_name: &backup.vm_name,
            vcenter_host: &login.vcenter_host,
            vcenter_user: &login.username,
            vcenter_password: login.password.expose(),
            vm_path: &context.vm_path,
            nbd_host: &self.nbd_host,
            nbd_targets: &targets,
            backup_type: backup.backup_type.as_str(),
            previous_change_id: &parent_change_id,
        };
        let secret = &[login.password.expose()];
        let answer: Result<SnaStarted> = self.sna.post("/api/v1/backup/start", &body, secret).await;
        let refusal = match answer {
            Ok(started) if started.status != "failed" => {
                let message = echo::quote(started.message.as_bytes(), secret);
                tracing::info!(backup_id = %backup.id, sna = %self.sna.url(), %message,
                    "backup started on the SNA");
                return self.backup(&backup.id);
            }
            // Its message, like a refusal's body, may echo the password.
            Ok(started) => format!(
                "the SNA did not start the backup: {}",
                echo::quote(started.message.as_bytes(), secret)
            ),
            Err(Error::Upstream(message)) => message,
            Err(other) => return Err(other),
        };
        self.fail(&backup.id, &refusal).await?;
        let after = self.backup(&backup.id)?;
        if after.status != Status::Failed {
            // The SNA answered late or oddly, but a client reached the hub and completed (or
            // someone cancelled): what happened to the backup stands.
            tracing::warn!(backup_id = %backup.id, status = after.status.as_str(), %refusal,
                "the SNA's answer came after the backup moved on");
            return Ok(after);
        }
        remove_backup_dir(&after);
        Err(Error::Upstream(refusal))
    }

    /// The SNA refuses an incremental without a previous change id; the client then asks per
    /// disk (`GET /api/v1/backups/changeid`), so this is the first disk's.
    fn first_disk_parent_change_id(&self, backup: &Backup) -> Result<String> {
        if backup.backup_type == BackupType::Full {
            return Ok(String::new());
        }
        let Some(parent_id) = &backup.parent_backup_id else {
            return Ok(String::new());
        };
        let parent = self.backup(parent_id)?;
        Ok(backup
            .disks
            .first()
            .and_then(|d| parent.disk(d.disk_id))
            .and_then(|d| d.change_id.clone())
            .unwrap_or_default())
    }
}
