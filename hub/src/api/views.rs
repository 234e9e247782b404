//! JSON shapes the API returns, built from catalog records and live export figures.

use std::time::SystemTime;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::catalog::{Backup, BackupFilter, BackupType, Disk, Restore, Status, fmt_time};
use crate::error::Result;
use crate::state::Hub;

/// A backup as the API shows it: a superset of the old Sendense hub's backup object (the names the
/// GUI reads) and our own figures.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BackupView {
    pub backup_id: String,
    /// The VM context the backup was made from; null for backups created with explicit disks.
    pub vm_context_id: Option<String>,
    pub vm_name: String,
    pub repository_id: String,
    pub backup_type: BackupType,
    /// The same as `backup_type` (the GUI reads this name).
    #[serde(rename = "type")]
    pub type_: BackupType,
    pub policy_id: Option<String>,
    pub parent_backup_id: Option<String>,
    pub status: Status,
    /// Never pruned, and not deleted until unprotected (`PUT /api/v1/backups/{id}/protected`).
    pub protected: bool,
    /// The newest verify of the backup and its chain: `none` (never), `ok`, `failed` (then it
    /// is never the base of a new incremental).
    pub verify_state: crate::catalog::VerifyState,
    #[schema(format = DateTime)]
    pub verified_at: Option<String>,
    /// The first failure found: backup, disk, guest offset, what.
    pub verify_error: Option<String>,
    /// Why the backup is a full when an incremental was asked (its base failed verify).
    pub note: Option<String>,
    /// Why the backup failed or was cancelled.
    pub error_message: Option<String>,
    /// The same as `error_message`.
    pub error: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub tags: Option<serde_json::Value>,
    pub disks_count: usize,
    /// The change id the client recorded for the first disk.
    pub change_id: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[schema(format = DateTime)]
    pub completed_at: Option<String>,
    pub nbd_targets_string: String,
    /// A completed backup: what the NBD server received (the SNA's `complete` says 0). Else what
    /// the client moved: its own figures (per disk at `complete`, else its latest telemetry),
    /// else what the NBD server received.
    pub bytes_transferred: u64,
    /// Bytes the NBD server received.
    pub bytes_written: u64,
    pub total_bytes: u64,
    /// The client's phase while the backup is active (from its telemetry), else the status.
    pub current_phase: String,
    pub progress_percent: f64,
    pub transfer_speed_bps: u64,
    pub connections: usize,
    #[schema(format = DateTime)]
    pub last_activity_at: Option<String>,
    /// When the client's latest telemetry arrived.
    #[schema(format = DateTime)]
    pub last_telemetry_at: Option<String>,
    /// The client's latest telemetry body, as sent.
    #[schema(value_type = Option<Object>)]
    pub telemetry: Option<serde_json::Value>,
    pub disk_results: Vec<DiskView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DiskView {
    pub disk_id: u32,
    pub vmware_disk_key: i64,
    pub nbd_host: String,
    pub nbd_port: u16,
    pub nbd_export_name: String,
    pub nbd_uri: String,
    pub qcow2_path: String,
    pub capacity_bytes: u64,
    /// ready, running, finalizing, completed, failed or cancelled.
    pub status: &'static str,
    /// Set when the disk's backup failed or was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    pub change_id: Option<String>,
    pub bytes_transferred: Option<u64>,
    pub bytes_written: u64,
    pub progress_percent: f64,
    pub transfer_speed_bps: u64,
    pub connections: usize,
    #[schema(format = DateTime)]
    pub last_activity_at: Option<String>,
    pub image_size_bytes: Option<u64>,
}

/// `GET /api/v1/backups`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BackupList {
    pub backups: Vec<BackupView>,
    pub total: usize,
}

/// `GET /api/v1/backups/stats`: the old hub's figures (`backup_count`, `total_size_bytes`,
/// `last_backup_at`, over completed backups) and counts of every backup that matches.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct BackupStats {
    /// Completed backups.
    pub backup_count: u64,
    /// Bytes the completed backups' images take on disk.
    pub total_size_bytes: u64,
    #[schema(format = DateTime)]
    pub last_backup_at: Option<String>,
    /// Every backup that matches, whatever its status.
    pub total: u64,
    pub by_status: StatusCounts,
    pub by_type: TypeCounts,
    /// Bytes the images of every matching backup take on disk.
    pub bytes_stored: u64,
}

#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct StatusCounts {
    pub ready: u64,
    pub running: u64,
    pub finalizing: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub missing: u64,
}

impl StatusCounts {
    fn slot(&mut self, status: Status) -> &mut u64 {
        match status {
            Status::Ready => &mut self.ready,
            Status::Running => &mut self.running,
            Status::Finalizing => &mut self.finalizing,
            Status::Completed => &mut self.completed,
            Status::Failed => &mut self.failed,
            Status::Cancelled => &mut self.cancelled,
            Status::Missing => &mut self.missing,
        }
    }
}

#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct TypeCounts {
    pub full: u64,
    pub incremental: u64,
}

/// A backup chain in the old hub's shape: the full backup and the incrementals on it, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChainView {
    pub chain_id: String,
    /// Null until backups are made from VM contexts.
    pub vm_context_id: Option<String>,
    pub vm_name: String,
    /// The disk asked for; null for all disks.
    pub disk_id: Option<u32>,
    /// Null when the chain is empty.
    pub repository_id: Option<String>,
    pub full_backup_id: Option<String>,
    pub backups: Vec<BackupView>,
    /// Bytes the chain's images (of that disk, or of all) take on disk.
    pub total_size_bytes: u64,
    pub backup_count: usize,
}

/// The figures of the client's telemetry the views show (`current_phase`, `progress_percent`, ...);
/// fields it left out or sent with another type are `None`.
#[derive(Debug, Default, PartialEq)]
pub struct TelemetryProgress {
    pub current_phase: Option<String>,
    pub progress_percent: Option<f64>,
    pub bytes_transferred: Option<u64>,
    pub transfer_speed_bps: Option<u64>,
    pub timestamp: Option<String>,
}

impl TelemetryProgress {
    pub fn parse(body: Option<&serde_json::Value>) -> TelemetryProgress {
        let Some(body) = body else {
            return TelemetryProgress::default();
        };
        let text = |k: &str| {
            body.get(k)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let count = |k: &str| {
            body.get(k)
                .and_then(|v| v.as_f64())
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|v| v as u64)
        };
        TelemetryProgress {
            current_phase: text("current_phase"),
            progress_percent: body
                .get("progress_percent")
                .and_then(|v| v.as_f64())
                .filter(|v| v.is_finite())
                .map(|v| v.clamp(0.0, 100.0)),
            bytes_transferred: count("bytes_transferred"),
            transfer_speed_bps: count("transfer_speed_bps"),
            timestamp: text("timestamp")
                .and_then(|t| OffsetDateTime::parse(&t, &Rfc3339).ok())
                .map(fmt_time),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RestoreView {
    pub restore_id: String,
    pub backup_id: String,
    pub disk_id: u32,
    pub nbd_uri: String,
    pub nbd_export_name: String,
    pub created_at: String,
    pub expires_at: String,
}

fn percent(done: u64, total: u64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let p = (done as f64 * 100.0 / total as f64).min(100.0);
    (p * 10.0).round() / 10.0
}

fn speed(bytes: u64, started: Option<OffsetDateTime>, until: Option<OffsetDateTime>) -> u64 {
    let Some(started) = started else { return 0 };
    let end = until.unwrap_or_else(OffsetDateTime::now_utc);
    let secs = (end - started).as_seconds_f64();
    if secs <= 0.0 {
        0
    } else {
        (bytes as f64 / secs.max(1.0)) as u64
    }
}

fn fmt_system(t: SystemTime) -> String {
    fmt_time(OffsetDateTime::from(t))
}

impl Hub {
    pub fn backup_view(&self, b: &Backup) -> BackupView {
        let disk_results: Vec<DiskView> = b.disks.iter().map(|d| self.disk_view(b, d)).collect();
        let bytes_written = disk_results.iter().map(|d| d.bytes_written).sum();
        let total_bytes = b.disks.iter().map(|d| d.capacity_bytes).sum();
        // The client's figures only describe a backup still in progress; a finished one is
        // described by what the hub recorded.
        let telemetry = TelemetryProgress::parse(b.telemetry.as_ref());
        let live = if b.status.is_active() {
            &telemetry
        } else {
            &TelemetryProgress::default()
        };
        let progress_percent = if b.status == Status::Completed {
            100.0
        } else {
            live.progress_percent
                .unwrap_or_else(|| percent(bytes_written, total_bytes))
        };
        let reported: Option<u64> = b.disks.iter().map(|d| d.bytes_transferred).sum();
        let last_activity_at = b
            .disks
            .iter()
            .filter_map(|d| {
                self.disk_stats(&b.id, d.disk_id)
                    .and_then(|s| s.last_activity)
            })
            .max()
            .map(fmt_system);
        BackupView {
            backup_id: b.id.clone(),
            vm_context_id: b.vm_context_id.clone(),
            vm_name: b.vm_name.clone(),
            repository_id: b.repository_id.clone(),
            backup_type: b.backup_type,
            type_: b.backup_type,
            policy_id: b.policy_id.clone(),
            parent_backup_id: b.parent_backup_id.clone(),
            status: b.status,
            protected: b.protected,
            verify_state: b.verify_state,
            verified_at: b.verified_at.map(fmt_time),
            verify_error: b.verify_error.clone(),
            note: b.note.clone(),
            error_message: b.error.clone(),
            error: b.error.clone(),
            tags: b.tags.clone(),
            disks_count: b.disks.len(),
            change_id: b.disks.first().and_then(|d| d.change_id.clone()),
            created_at: fmt_time(b.created_at),
            started_at: b.started_at.map(fmt_time),
            completed_at: b.completed_at.map(fmt_time),
            nbd_targets_string: self.nbd_targets(b),
            bytes_transferred: if b.status == Status::Completed {
                bytes_written
            } else {
                reported.or(live.bytes_transferred).unwrap_or(bytes_written)
            },
            bytes_written,
            total_bytes,
            current_phase: live
                .current_phase
                .clone()
                .unwrap_or_else(|| b.status.as_str().to_owned()),
            progress_percent,
            transfer_speed_bps: live
                .transfer_speed_bps
                .unwrap_or_else(|| speed(bytes_written, b.started_at, b.completed_at)),
            connections: disk_results.iter().map(|d| d.connections).sum(),
            last_activity_at,
            // When the hub received it; the client's own clock only where no time was recorded.
            last_telemetry_at: b.last_telemetry_at.map(fmt_time).or(telemetry.timestamp),
            telemetry: b.telemetry.clone(),
            disk_results,
        }
    }

    fn disk_view(&self, b: &Backup, d: &Disk) -> DiskView {
        let live = self.disk_stats(&b.id, d.disk_id);
        let bytes_written = live
            .as_ref()
            .map_or(d.bytes_written, |s| s.bytes_written.max(d.bytes_written));
        let status = match (b.status, d.completed) {
            (Status::Completed, _) => "completed",
            (Status::Failed, _) => "failed",
            (Status::Cancelled, _) => "cancelled",
            (Status::Missing, _) => "missing",
            (_, true) => "completed",
            (other, false) => other.as_str(),
        };
        DiskView {
            disk_id: d.disk_id,
            vmware_disk_key: d.vmware_disk_key,
            nbd_host: self.nbd_host.clone(),
            nbd_port: self.nbd_port,
            nbd_export_name: d.export_name.clone(),
            nbd_uri: self.nbd_uri(&d.export_name),
            qcow2_path: d.qcow2_path.display().to_string(),
            capacity_bytes: d.capacity_bytes,
            status,
            error_message: matches!(
                b.status,
                Status::Failed | Status::Cancelled | Status::Missing
            )
            .then(|| b.error.clone())
            .flatten(),
            change_id: d.change_id.clone(),
            bytes_transferred: d.bytes_transferred,
            bytes_written,
            progress_percent: if status == "completed" {
                100.0
            } else {
                percent(bytes_written, d.capacity_bytes)
            },
            transfer_speed_bps: speed(
                bytes_written,
                b.started_at,
                d.completed_at.or(b.completed_at),
            ),
            connections: live.as_ref().map_or(0, |s| s.connections),
            last_activity_at: live.and_then(|s| s.last_activity).map(fmt_system),
            image_size_bytes: d.image_size,
        }
    }

    /// Newest first.
    pub fn backup_list(&self, filter: &BackupFilter) -> Result<BackupList> {
        let backups: Vec<BackupView> = self
            .catalog
            .backups(filter)?
            .iter()
            .map(|b| self.backup_view(b))
            .collect();
        Ok(BackupList {
            total: backups.len(),
            backups,
        })
    }

    pub fn backup_stats(&self, filter: &BackupFilter) -> Result<BackupStats> {
        let mut stats = BackupStats::default();
        for b in self.catalog.backups(filter)? {
            stats.total += 1;
            *stats.by_status.slot(b.status) += 1;
            match b.backup_type {
                BackupType::Full => stats.by_type.full += 1,
                BackupType::Incremental => stats.by_type.incremental += 1,
            }
            let stored: u64 = b.disks.iter().map(|d| stored_bytes(&b, d)).sum();
            stats.bytes_stored += stored;
            if b.status == Status::Completed {
                stats.backup_count += 1;
                stats.total_size_bytes += stored;
                // Newest first, so the first completed one is the last backup.
                if stats.last_backup_at.is_none() {
                    stats.last_backup_at = b.completed_at.map(fmt_time);
                }
            }
        }
        Ok(stats)
    }

    /// The chain of a VM's newest completed backup (in one repository, when given); with a
    /// disk id, only backups that have that disk, each showing only it.
    pub fn chain_view(
        &self,
        vm_name: &str,
        disk_id: Option<u32>,
        repository_id: Option<&str>,
    ) -> Result<ChainView> {
        let chain: Vec<Backup> = self
            .chain(vm_name, repository_id)?
            .into_iter()
            .filter(|b| disk_id.is_none_or(|id| b.disk(id).is_some()))
            .collect();
        let total_size_bytes = chain
            .iter()
            .flat_map(|b| b.disks.iter().map(move |d| (b, d)))
            .filter(|(_, d)| disk_id.is_none_or(|id| id == d.disk_id))
            .map(|(b, d)| stored_bytes(b, d))
            .sum();
        let backups: Vec<BackupView> = chain
            .iter()
            .map(|b| {
                let mut view = self.backup_view(b);
                view.disk_results
                    .retain(|d| disk_id.is_none_or(|id| id == d.disk_id));
                view
            })
            .collect();
        Ok(ChainView {
            chain_id: match disk_id {
                Some(id) => format!("{vm_name}-disk{id}-chain"),
                None => format!("{vm_name}-chain"),
            },
            vm_context_id: chain.last().and_then(|b| b.vm_context_id.clone()),
            vm_name: vm_name.to_owned(),
            disk_id,
            repository_id: chain.first().map(|b| b.repository_id.clone()),
            full_backup_id: chain
                .iter()
                .find(|b| b.backup_type == BackupType::Full)
                .map(|b| b.id.clone()),
            backup_count: backups.len(),
            backups,
            total_size_bytes,
        })
    }

    pub fn restore_view(&self, r: &Restore) -> RestoreView {
        RestoreView {
            restore_id: r.id.clone(),
            backup_id: r.backup_id.clone(),
            disk_id: r.disk_id,
            nbd_uri: self.nbd_uri(&r.export_name),
            nbd_export_name: r.export_name.clone(),
            created_at: fmt_time(r.created_at),
            expires_at: fmt_time(r.expires_at),
        }
    }
}

/// The image's size as recorded when the backup ended, or as it is now while it runs; cancelled
/// backups keep no images.
fn stored_bytes(b: &Backup, d: &Disk) -> u64 {
    match (b.status, d.image_size) {
        (Status::Cancelled, _) => 0,
        (_, Some(size)) => size,
        (status, None) if status.is_active() => {
            std::fs::metadata(&d.qcow2_path).map_or(0, |m| m.len())
        }
        _ => 0,
    }
}

// Shapes the handlers build with `json!`, written out for the document.

#[derive(Serialize, utoipa::ToSchema)]
pub struct BackupDeleted {
    pub backup_id: String,
    pub deleted: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RestoreDeleted {
    pub restore_id: String,
    pub deleted: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RestoreList {
    pub restores: Vec<RestoreView>,
}

#[cfg(test)]
mod tests {
    use super::TelemetryProgress;

    #[test]
    fn telemetry_progress_fields() {
        let body = serde_json::json!({
            "current_phase": "transferring", "progress_percent": 150.0,
            "bytes_transferred": 10, "transfer_speed_bps": -5,
            "timestamp": "2026-11-28T05:00:00.5+01:00",
        });
        let p = TelemetryProgress::parse(Some(&body));
        assert_eq!(p.current_phase.as_deref(), Some("transferring"));
        assert_eq!(p.progress_percent, Some(100.0));
        assert_eq!(p.bytes_transferred, Some(10));
        assert_eq!(p.transfer_speed_bps, None);
        assert_eq!(p.timestamp.as_deref(), Some("2026-11-28T04:00:00.500000Z"));

        let odd = serde_json::json!({"current_phase": 3, "progress_percent": "x", "timestamp": "yesterday"});
        assert_eq!(
            TelemetryProgress::parse(Some(&odd)),
            TelemetryProgress::default()
        );
        assert_eq!(TelemetryProgress::parse(None), TelemetryProgress::default());
    }
}
