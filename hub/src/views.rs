//! JSON shapes the API returns, built from catalog records and live export figures.

use std::time::SystemTime;

use serde::Serialize;
use time::OffsetDateTime;

use crate::catalog::{Backup, BackupType, Disk, Repository, Restore, Status, fmt_time};
use crate::state::Hub;

#[derive(Debug, Serialize)]
pub struct BackupView {
    pub backup_id: String,
    pub vm_name: String,
    pub repository_id: String,
    pub backup_type: BackupType,
    pub parent_backup_id: Option<String>,
    pub status: Status,
    pub error: Option<String>,
    pub tags: Option<serde_json::Value>,
    pub disks_count: usize,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub nbd_targets_string: String,
    pub bytes_written: u64,
    pub total_bytes: u64,
    pub progress_percent: f64,
    pub transfer_speed_bps: u64,
    pub connections: usize,
    pub last_activity_at: Option<String>,
    pub telemetry: Option<serde_json::Value>,
    pub disk_results: Vec<DiskView>,
}

#[derive(Debug, Serialize)]
pub struct DiskView {
    pub disk_id: u32,
    pub vmware_disk_key: i64,
    pub nbd_host: String,
    pub nbd_port: u16,
    pub nbd_export_name: String,
    pub nbd_uri: String,
    pub qcow2_path: String,
    pub capacity_bytes: u64,
    pub status: &'static str,
    pub change_id: Option<String>,
    pub bytes_transferred: Option<u64>,
    pub bytes_written: u64,
    pub progress_percent: f64,
    pub transfer_speed_bps: u64,
    pub connections: usize,
    pub last_activity_at: Option<String>,
    pub image_size_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct RestoreView {
    pub restore_id: String,
    pub backup_id: String,
    pub disk_id: u32,
    pub nbd_uri: String,
    pub nbd_export_name: String,
    pub created_at: String,
    pub expires_at: String,
}

#[derive(Debug, Serialize)]
pub struct RepositoryView {
    pub id: String,
    pub name: String,
    pub path: String,
    pub created_at: String,
    pub capacity_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
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
        let progress_percent = if b.status == Status::Completed {
            100.0
        } else {
            percent(bytes_written, total_bytes)
        };
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
            vm_name: b.vm_name.clone(),
            repository_id: b.repository_id.clone(),
            backup_type: b.backup_type,
            parent_backup_id: b.parent_backup_id.clone(),
            status: b.status,
            error: b.error.clone(),
            tags: b.tags.clone(),
            disks_count: b.disks.len(),
            created_at: fmt_time(b.created_at),
            started_at: b.started_at.map(fmt_time),
            completed_at: b.completed_at.map(fmt_time),
            nbd_targets_string: b
                .disks
                .iter()
                .map(|d| format!("{}:{}", d.vmware_disk_key, self.nbd_uri(&d.export_name)))
                .collect::<Vec<_>>()
                .join(","),
            bytes_written,
            total_bytes,
            progress_percent,
            transfer_speed_bps: speed(bytes_written, b.started_at, b.completed_at),
            connections: disk_results.iter().map(|d| d.connections).sum(),
            last_activity_at,
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

pub fn repository_view(r: &Repository) -> RepositoryView {
    let stats = rustix::fs::statvfs(&r.path).ok();
    RepositoryView {
        id: r.id.clone(),
        name: r.name.clone(),
        path: r.path.display().to_string(),
        created_at: fmt_time(r.created_at),
        capacity_bytes: stats
            .as_ref()
            .map(|s| s.f_blocks.saturating_mul(s.f_frsize)),
        free_bytes: stats
            .as_ref()
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize)),
    }
}
