//! Completing a backup: the client's `complete` per disk, then the finalisation in the
//! background (exports closed to new clients, connections drained, images closed, results
//! recorded).

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::catalog::{Backup, Status};
use crate::error::{Error, Result};
use crate::state::{ActiveBackup, Hub};

/// At the drain deadline, a connection with nothing in flight and no request for this long is
/// idle: it is closed and the backup may still complete.
const DRAIN_QUIET: Duration = Duration::from_secs(2);

const DRAIN_POLL: Duration = Duration::from_millis(50);

const KEPT_WRITING: &str = "client kept writing after complete";

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

impl Hub {
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
            Status::Failed | Status::Cancelled | Status::Missing => {
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
        self.record_results(id, &active)?;
        self.write_digests(id).await
    }

    /// Each disk's digests file (see `repo::digests`), before the backup is `completed`: a
    /// completed backup always has its integrity data, so a verify can tell a corruption from a
    /// backup that never had digests. It reads what this backup wrote (an incremental's changed
    /// ranges, a full's used ranges), not the whole disk, on a blocking thread, after the
    /// exports are gone: the write path never pays for it.
    async fn write_digests(&self, id: &str) -> Result<()> {
        let backup = self.backup(id)?;
        let io = self.config.storage_io;
        for disk in backup.disks {
            let path = disk.qcow2_path.clone();
            let hex = tokio::task::spawn_blocking(move || {
                let digests = crate::repo::digests::compute(&path, io)?;
                crate::repo::digests::write(&path, &digests)
            })
            .await
            .map_err(|e| Error::Internal(format!("digest task: {e}")))??;
            self.catalog.set_disk_digests(id, disk.disk_id, &hex)?;
        }
        Ok(())
    }

    /// Wait until every disk's connections are closed, after `complete`, for at most
    /// `drain_grace`. A change that arrives meanwhile (refused by the export), or a client still
    /// busy at the deadline, fails the backup: `completed` promises every byte the client wrote
    /// arrived. An idle connection is not closed early: while it is open its client can still
    /// write, and that write must reach the sealed export and fail the backup rather than find
    /// the connection cut under a backup already `completed`.
    async fn drain(&self, active: &ActiveBackup) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.config.drain_grace;
        loop {
            let mut open = false;
            for disk in &active.disks {
                if disk.tally.late() > 0 {
                    return Err(Error::Conflict(KEPT_WRITING.into()));
                }
                open |= disk
                    .refresh_stats(&self.nbd)
                    .is_some_and(|s| s.connections > 0);
            }
            if !open {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return self.idle_at_deadline(active);
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// At the drain deadline: connections still open are cut, which is fine when they are idle
    /// (nothing in flight, no request for 2 s; clients such as the SNA may keep them open), and
    /// fails the backup when a client is still busy.
    fn idle_at_deadline(&self, active: &ActiveBackup) -> Result<()> {
        let quiet = DRAIN_QUIET.min(self.config.drain_grace);
        for disk in &active.disks {
            let Some(stats) = disk.refresh_stats(&self.nbd) else {
                continue;
            };
            let idle = stats
                .last_activity
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_none_or(|d| d >= quiet);
            if stats.connections > 0 && (disk.tally.in_flight() > 0 || !idle) {
                return Err(Error::Conflict(KEPT_WRITING.into()));
            }
        }
        Ok(())
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
