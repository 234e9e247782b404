//! Backup operations: create (images + exports), complete and finalise, cancel, fail, delete,
//! chains and change ids.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::catalog::{Backup, BackupFilter, BackupType, Disk, Status};
use crate::error::{Error, Result};
use crate::export::ImageExport;
use crate::repo::DEFAULT_REPOSITORY;
use crate::repo::images::{create_image, open_image};
use crate::repo::layout;
use crate::repo::manifest::{self, Manifest};
use crate::repo::removal;
use crate::state::{ActiveBackup, ActiveDisk, Hub, now};

/// Largest virtual size accepted for one disk (QCOW2 with 64 KiB clusters handles far more; this
/// only bounds what a request can ask for).
const MAX_CAPACITY: u64 = 256 << 40;
const MAX_DISKS: usize = 256;
const MAX_VM_NAME: usize = 255;
/// After `complete`, a connection with nothing in flight and no request for this long is done
/// (clients such as the SNA may keep it open); it is closed.
const DRAIN_QUIET: Duration = Duration::from_secs(2);
const DRAIN_POLL: Duration = Duration::from_millis(50);
const KEPT_WRITING: &str = "client kept writing after complete";

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

/// What the hub reads from a telemetry body; the whole body is stored as it came (the views read
/// the progress fields from it). Every field is read leniently: a value of an unexpected type is
/// left out rather than refusing the report, so a failure report is never lost to a bad counter.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct Telemetry {
    #[serde(default, deserialize_with = "lenient")]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub current_phase: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub bytes_transferred: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub total_bytes: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub transfer_speed_bps: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub progress_percent: Option<f64>,
    /// `{"message": ...}` as the client sends it, or a bare string.
    #[serde(default)]
    pub error: Option<serde_json::Value>,
}

fn lenient<'de, D: serde::Deserializer<'de>, T: serde::de::DeserializeOwned>(
    de: D,
) -> std::result::Result<Option<T>, D::Error> {
    let value = serde_json::Value::deserialize(de)?;
    Ok(serde_json::from_value(value).ok())
}

impl Telemetry {
    pub fn parse(body: &serde_json::Value) -> Result<Telemetry> {
        if !body.is_object() {
            return Err(Error::Invalid("telemetry must be a JSON object".into()));
        }
        serde_json::from_value(body.clone()).map_err(|e| Error::Invalid(format!("telemetry: {e}")))
    }

    /// The client's message when this report says the backup failed: `status: "failed"`, or
    /// any `error` that is not null.
    pub fn failure(&self) -> Option<String> {
        let error = self.error.as_ref().filter(|e| !e.is_null());
        let message = error
            .and_then(|e| match e {
                serde_json::Value::String(text) => Some(text.clone()),
                other => other["message"].as_str().map(str::to_owned),
            })
            .filter(|m| !m.trim().is_empty());
        let failed = error.is_some() || self.status.as_deref() == Some("failed");
        failed.then(|| message.unwrap_or_else(|| "no message given".to_owned()))
    }
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct CompleteRequest {
    /// A number, or a string of digits; none completes every disk.
    #[serde(default, deserialize_with = "lenient_u32")]
    #[schema(schema_with = lenient_u32_schema)]
    pub disk_id: Option<u32>,
    #[serde(default)]
    pub change_id: Option<String>,
    #[serde(default)]
    pub bytes_transferred: Option<u64>,
}

/// What [`lenient_u32`] takes: a u32, a string of digits, or null.
fn lenient_u32_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .maximum(Some(u32::MAX)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                // ASCII whitespace as Rust's `is_ascii_whitespace` (no \v), digits up to u32.
                .pattern(Some(r"^[ \t\n\f\r]*[0-9]{1,10}[ \t\n\f\r]*$")),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .build()
        .into()
}

/// A disk id as a number or a string of digits (clients differ in how they encode it).
fn lenient_u32<'de, D: serde::Deserializer<'de>>(
    de: D,
) -> std::result::Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrText {
        Num(u32),
        Text(String),
    }
    match Option::<NumOrText>::deserialize(de)? {
        None => Ok(None),
        Some(NumOrText::Num(n)) => Ok(Some(n)),
        Some(NumOrText::Text(t)) => {
            // Digits only (no sign), as the OpenAPI document's pattern says.
            let digits = t.trim_matches(|c: char| c.is_ascii_whitespace());
            digits
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| digits.parse().ok())
                .flatten()
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("disk_id {t:?} is not a number")))
        }
    }
}

fn validate(req: &CreateBackup) -> Result<()> {
    let invalid = |m: String| Err(Error::Invalid(m));
    if req.vm_name.trim().is_empty() || req.vm_name.len() > MAX_VM_NAME {
        return invalid(format!("vm_name must have 1 to {MAX_VM_NAME} bytes"));
    }
    if req
        .tags
        .as_ref()
        .is_some_and(|t| !t.is_object() && !t.is_null())
    {
        return invalid("tags must be a JSON object".into());
    }
    if req.disks().is_empty() || req.disks().len() > MAX_DISKS {
        return invalid(format!("disks must list 1 to {MAX_DISKS} disks"));
    }
    let mut ids = HashSet::new();
    let mut keys = HashSet::new();
    for d in req.disks() {
        if d.capacity_bytes == 0 || d.capacity_bytes % 512 != 0 {
            return invalid(format!(
                "disk {}: capacity_bytes must be a positive multiple of 512, got {}",
                d.disk_id, d.capacity_bytes
            ));
        }
        if d.capacity_bytes > MAX_CAPACITY {
            return invalid(format!(
                "disk {}: capacity_bytes {} is too large",
                d.disk_id, d.capacity_bytes
            ));
        }
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
        let same_vm = BackupFilter {
            vm_name: Some(req.vm_name.clone()),
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
                req.vm_name,
                running.status.as_str()
            )));
        }
        let parent = match req.backup_type {
            BackupType::Full => None,
            BackupType::Incremental => Some(self.find_parent(&req, &repository_id)?),
        };

        let id = new_backup_id();
        let dir = layout::backup_dir(&repo.path, &req.vm_name, &id);
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        for made in [dir.parent().unwrap_or(&dir), &dir] {
            crate::sys::datadir::private_dir(made)?;
        }
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
        if let Err(e) = manifest::write(&dir, &creating) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Error::io(format!(
                "writing {}",
                layout::manifest_path(&dir).display()
            ))(e));
        }

        let mut disks = Vec::with_capacity(req.disks().len());
        let mut active = Vec::with_capacity(req.disks().len());
        let made = self
            .make_disks(&req, parent.as_ref(), &dir, &mut disks, &mut active)
            .await;
        let backup = Backup {
            id: id.clone(),
            vm_name: req.vm_name.clone(),
            repository_id,
            backup_type: req.backup_type,
            parent_backup_id: parent.map(|p| p.id),
            policy_id: req.policy_id.clone(),
            status: Status::Ready,
            error: None,
            tags: req.tags,
            telemetry: None,
            created_at,
            started_at: None,
            completed_at: None,
            last_telemetry_at: None,
            vm_context_id: req.vm_context_id.clone(),
            disks,
        };
        if let Err(err) = made.and_then(|()| self.catalog.insert_backup(&backup)) {
            for disk in &active {
                let _ = self
                    .nbd
                    .remove_export(&disk.export_name, Duration::ZERO)
                    .await;
            }
            drop(active);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(err);
        }
        self.active.lock().insert(
            id.clone(),
            Arc::new(ActiveBackup {
                id: id.clone(),
                disks: active,
                last_touch: Mutex::new(SystemTime::now()),
                connected: Default::default(),
            }),
        );
        self.sync_manifest(&id).await;
        tracing::info!(backup_id = %id, vm = %backup.vm_name, disks = backup.disks.len(),
            backup_type = backup.backup_type.as_str(), "backup ready");
        Ok(backup)
    }

    fn find_parent(&self, req: &CreateBackup, repository_id: &str) -> Result<Backup> {
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

    /// Create, open and export each disk's image; what was made so far is in `disks`/`active`
    /// for the caller to undo on error.
    async fn make_disks(
        &self,
        req: &CreateBackup,
        parent: Option<&Backup>,
        dir: &std::path::Path,
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
            let image = open_image(path.clone(), true, io).await?;
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
                completed_at: None,
            });
        }
        Ok(())
    }

    pub fn backup(&self, id: &str) -> Result<Backup> {
        self.catalog
            .backup(id)?
            .ok_or_else(|| Error::NotFound(format!("no backup {id}")))
    }

    /// Mark one disk (or all) complete; when all are, finalise in the background. Idempotent.
    pub async fn complete(&self, id: &str, req: CompleteRequest) -> Result<Backup> {
        let _ops = self.ops.lock().await;
        let backup = self.backup(id)?;
        if let Some(disk_id) = req.disk_id {
            if backup.disk(disk_id).is_none() {
                return Err(Error::NotFound(format!(
                    "backup {id} has no disk {disk_id}"
                )));
            }
        }
        match backup.status {
            Status::Completed | Status::Finalizing => return Ok(backup),
            Status::Failed | Status::Cancelled => {
                return Err(Error::Conflict(format!(
                    "backup {id} is {}",
                    backup.status.as_str()
                )));
            }
            Status::Ready | Status::Running => {}
        }
        let targets: Vec<u32> = match req.disk_id {
            Some(disk_id) => vec![disk_id],
            None => backup.disks.iter().map(|d| d.disk_id).collect(),
        };
        let active = self.active.lock().get(id).cloned();
        if let Some(active) = &active {
            // All or nothing: every disk named must have had a client before any is marked.
            for disk in active.disks.iter().filter(|d| targets.contains(&d.disk_id)) {
                let first_time = backup.disk(disk.disk_id).is_some_and(|d| !d.completed);
                let seen = disk
                    .refresh_stats(&self.nbd)
                    .is_some_and(|s| s.total_connections > 0);
                if first_time && !seen {
                    return Err(Error::Conflict(format!(
                        "backup {id} disk {}: no client ever connected to its export, so nothing was written; write the disk first",
                        disk.disk_id
                    )));
                }
            }
        }
        for disk_id in targets {
            // From here on a change to the disk is refused and fails the backup.
            if let Some(disk) = active.as_ref().and_then(|a| a.disk(disk_id)) {
                disk.tally.seal();
            }
            self.catalog.mark_disk_complete(
                id,
                disk_id,
                req.change_id.as_deref(),
                req.bytes_transferred,
            )?;
            tracing::info!(backup_id = %id, disk_id, change_id = ?req.change_id, "disk complete");
        }
        if let Some(active) = active {
            active.touch();
            // A fast client may connect, write and complete between two lifecycle ticks; the
            // backup still ran, and its start time feeds the speed figure.
            let connected = active.disks.iter().any(|d| {
                self.nbd
                    .export_stats(&d.export_name)
                    .is_some_and(|s| s.total_connections > 0)
            });
            if connected && self.catalog.mark_running(id)? {
                active
                    .connected
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let backup = self.backup(id)?;
        if backup.disks.iter().all(|d| d.completed) {
            // What arrived so far survives a kill while finalising.
            let active = self.active.lock().get(id).cloned();
            if let Some(active) = active {
                self.record_results(id, &active)?;
            }
            self.catalog.set_status(id, Status::Finalizing, None)?;
            self.sync_manifest(id).await;
            let hub = self.clone();
            let id = id.to_owned();
            self.tasks.spawn(async move { hub.finalize(&id).await });
            return self.backup(backup.id.as_str());
        }
        self.sync_manifest(id).await;
        Ok(backup)
    }

    /// Stop the exports (draining open connections), close the images, record the results.
    async fn finalize(&self, id: &str) {
        let result = self.finalize_inner(id).await;
        let _ops = self.ops.lock().await;
        match result {
            Ok(()) => {
                self.active.lock().remove(id);
                if let Err(err) = self.catalog.set_status(id, Status::Completed, None) {
                    tracing::error!(backup_id = %id, %err, "recording completion");
                } else {
                    tracing::info!(backup_id = %id, "backup completed");
                }
            }
            Err(err) => {
                let reason = match err {
                    Error::Conflict(why) => why,
                    other => format!("finalising failed: {other}"),
                };
                tracing::error!(backup_id = %id, %reason, "backup failed while finalising");
                if let Err(err) = self.catalog.set_status(id, Status::Failed, Some(&reason)) {
                    tracing::error!(backup_id = %id, %err, "recording failure");
                }
                self.abandon(id).await;
            }
        }
        self.sync_manifest(id).await;
    }

    async fn finalize_inner(&self, id: &str) -> Result<()> {
        let active = self.active.lock().get(id).cloned();
        let Some(active) = active else {
            return Err(Error::Internal("no open images for this backup".into()));
        };
        for disk in &active.disks {
            if let Err(err) = self.nbd.close_export(&disk.export_name) {
                tracing::warn!(export = %disk.export_name, %err, "closing export to new clients");
            }
        }
        self.drain(&active).await?;
        for disk in &active.disks {
            disk.remove_export(&self.nbd).await;
        }
        if active.disks.iter().any(|d| d.tally.late() > 0) {
            return Err(Error::Conflict(KEPT_WRITING.into()));
        }
        for disk in &active.disks {
            disk.close_image().await?;
        }
        self.record_results(id, &active)
    }

    /// Wait until every disk's connections are closed or idle, after `complete`. A change that
    /// arrives meanwhile (refused by the export), or a client still busy at the drain deadline,
    /// fails the backup: `completed` promises every byte the client wrote arrived.
    async fn drain(&self, active: &ActiveBackup) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.config.drain_grace;
        let quiet = DRAIN_QUIET.min(self.config.drain_grace);
        loop {
            let mut settled = true;
            for disk in &active.disks {
                if disk.tally.late() > 0 {
                    return Err(Error::Conflict(KEPT_WRITING.into()));
                }
                let Some(stats) = disk.refresh_stats(&self.nbd) else {
                    continue;
                };
                let idle = stats
                    .last_activity
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_none_or(|d| d >= quiet);
                settled &= stats.connections == 0 || (disk.tally.in_flight() == 0 && idle);
            }
            if settled {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Conflict(KEPT_WRITING.into()));
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// Record each disk's bytes received and image size so far.
    fn record_results(&self, id: &str, active: &ActiveBackup) -> Result<()> {
        let backup = self.backup(id)?;
        for disk in &active.disks {
            let Some(record) = backup.disk(disk.disk_id) else {
                continue;
            };
            let size = std::fs::metadata(&record.qcow2_path)
                .map_err(Error::io(format!("stat {}", record.qcow2_path.display())))?
                .len();
            self.catalog
                .record_disk_result(id, disk.disk_id, disk.bytes_written(), size)?;
        }
        Ok(())
    }

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

    /// All or nothing: the rows go (with a pending deletion recorded for each) in one
    /// transaction, or the delete is refused; the files go after. Failed and cancelled children
    /// (never a base for anything) go with their parent; any other child keeps it.
    pub async fn delete_backup(&self, id: &str) -> Result<()> {
        let _ops = self.ops.lock().await;
        let backup = self.backup(id)?;
        if backup.status.is_active() {
            return Err(Error::Conflict(format!(
                "backup {id} is {}; cancel it first",
                backup.status.as_str()
            )));
        }
        let (riders, keepers): (Vec<_>, Vec<_>) =
            self.catalog
                .children(id)?
                .into_iter()
                .partition(|(_, status)| {
                    status == Status::Failed.as_str() || status == Status::Cancelled.as_str()
                });
        if !keepers.is_empty() {
            let list: Vec<String> = keepers
                .iter()
                .map(|(c, st)| format!("{c} ({st})"))
                .collect();
            return Err(Error::Conflict(format!(
                "backup {id} is the parent of {}; delete those first",
                list.join(", ")
            )));
        }
        if self.catalog.restores_of(id)? > 0 {
            return Err(Error::Conflict(format!("backup {id} has an open restore")));
        }
        let mut doomed = Vec::with_capacity(riders.len() + 1);
        for (child, _) in &riders {
            let dir = layout::backup_dir_of(&self.backup(child)?);
            doomed.push((child.clone(), dir));
        }
        doomed.push((id.to_owned(), layout::backup_dir_of(&backup)));
        self.freeing(|| self.catalog.delete_backups(&doomed))?;
        for (gone, dir) in &doomed {
            removal::finish_deletion(&self.catalog, gone, dir);
        }
        self.reserve.refill();
        tracing::info!(backup_id = %id, with_children = riders.len(), "backup deleted");
        Ok(())
    }

    /// Record the client's telemetry: the whole body, the time it came, and when it reports a
    /// failure, the end of the backup with the client's message.
    pub async fn telemetry(&self, id: &str, body: &serde_json::Value) -> Result<Backup> {
        let report = Telemetry::parse(body)?;
        self.backup(id)?;
        self.catalog.set_telemetry(id, body, now())?;
        if let Some(active) = self.active.lock().get(id) {
            active.touch();
        }
        if let Some(message) = report.failure() {
            // `fail` ignores a backup that already finished or is finalising: the client's
            // complete calls came first and the images are whole.
            self.fail(id, &format!("client reported failure: {message}"))
                .await?;
        }
        self.backup(id)
    }

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
        Ok(match found {
            Some((b, c)) => answer(disk_id, Some(c), &b.id, "previous change id found"),
            None => answer(disk_id, None, "", "no previous backup found"),
        })
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

#[cfg(test)]
mod tests {
    use super::{CompleteRequest, Telemetry, new_backup_id};

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

    #[test]
    fn telemetry_failures() {
        let t = |v: serde_json::Value| Telemetry::parse(&v).unwrap().failure();
        use serde_json::json;
        assert_eq!(
            t(json!({"status": "running", "progress_percent": 5.0})),
            None
        );
        assert_eq!(
            t(json!({"status": "failed", "error": {"message": "snapshot lost"}})).as_deref(),
            Some("snapshot lost")
        );
        assert_eq!(
            t(json!({"error": "disk gone"})).as_deref(),
            Some("disk gone")
        );
        assert_eq!(
            t(json!({"status": "failed"})).as_deref(),
            Some("no message given")
        );
        assert_eq!(t(json!({"error": null, "status": "running"})), None);
        assert!(Telemetry::parse(&json!([1])).is_err());
        // A bad counter does not hide the failure.
        assert_eq!(
            t(json!({"bytes_transferred": "many", "error": {"message": 5}})).as_deref(),
            Some("no message given")
        );
        let odd =
            Telemetry::parse(&json!({"bytes_transferred": -1, "progress_percent": 7})).unwrap();
        assert_eq!(
            (odd.bytes_transferred, odd.progress_percent),
            (None, Some(7.0))
        );
    }

    #[test]
    fn complete_bodies() {
        let parse = |s: &str| serde_json::from_str::<CompleteRequest>(s);
        assert_eq!(parse(r#"{"disk_id": 2}"#).unwrap().disk_id, Some(2));
        assert_eq!(parse(r#"{"disk_id": "3"}"#).unwrap().disk_id, Some(3));
        assert_eq!(parse(r#"{"disk_id": null}"#).unwrap().disk_id, None);
        assert_eq!(parse("{}").unwrap().disk_id, None);
        assert!(parse(r#"{"disk_id": "x"}"#).is_err());
        assert!(parse(r#"{"disk_id": -1}"#).is_err());
        assert_eq!(parse(r#"{"disk_id": " 7\n"}"#).unwrap().disk_id, Some(7));
        assert!(parse(r#"{"disk_id": "+7"}"#).is_err());
        assert!(parse(r#"{"disk_id": "7\u0085"}"#).is_err());
        assert!(parse(r#"{"disk_id": "4294967296"}"#).is_err());
    }
}
