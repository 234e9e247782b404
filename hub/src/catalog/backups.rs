//! Backups and their disks: inserts, status changes, queries, and deletes with their pending
//! deletions.

use std::path::PathBuf;

use rusqlite::{OptionalExtension, params};
use time::OffsetDateTime;

use super::conn::Catalog;
use super::model::*;
use super::rows::*;
use crate::error::{Error, Result};

impl Catalog {
    pub fn insert_backup(&self, backup: &Backup) -> Result<()> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        tx.execute(
            &format!("INSERT INTO backups ({BACKUP_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"),
            params![
                backup.id,
                backup.vm_name,
                backup.repository_id,
                backup.backup_type.as_str(),
                backup.parent_backup_id,
                backup.status.as_str(),
                backup.error,
                backup.tags.as_ref().map(|t| t.to_string()),
                backup.telemetry.as_ref().map(|t| t.to_string()),
                fmt_time(backup.created_at),
                backup.started_at.map(fmt_time),
                backup.completed_at.map(fmt_time),
                backup.last_telemetry_at.map(fmt_time),
                backup.policy_id,
                backup.vm_context_id,
                backup.protected,
                backup.verify_state.as_str(),
                backup.verified_at.map(fmt_time),
                backup.verify_error,
                backup.note,
            ],
        )?;
        for (position, disk) in backup.disks.iter().enumerate() {
            tx.execute(
                "INSERT INTO backup_disks (backup_id, disk_id, position, vmware_disk_key, capacity_bytes, \
                 export_name, qcow2_path, completed, change_id, bytes_transferred, bytes_written, \
                 image_size, completed_at, digests_blake3) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    backup.id,
                    disk.disk_id,
                    position as i64,
                    disk.vmware_disk_key,
                    disk.capacity_bytes as i64,
                    disk.export_name,
                    disk.qcow2_path.to_string_lossy(),
                    disk.completed,
                    disk.change_id,
                    disk.bytes_transferred.map(|b| b as i64),
                    disk.bytes_written as i64,
                    disk.image_size.map(|b| b as i64),
                    disk.completed_at.map(fmt_time),
                    disk.digests_blake3,
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn backup(&self, id: &str) -> Result<Option<Backup>> {
        let conn = self.conn.lock();
        let sql = format!("SELECT {BACKUP_COLUMNS} FROM backups WHERE id = ?1");
        match query_rows(&conn, &sql, &[&id])?.pop() {
            None => Ok(None),
            Some((_, Ok(b))) => Ok(Some(b)),
            Some((id, Err(e))) => Err(Error::Internal(format!(
                "the catalog row of backup {id} is unreadable: {e}"
            ))),
        }
    }

    /// Whether the catalog has a row for `id`, and its status if that is readable.
    pub fn backup_status(&self, id: &str) -> Result<Option<std::result::Result<Status, String>>> {
        let conn = self.conn.lock();
        let status: Option<String> = conn
            .query_row("SELECT status FROM backups WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(status.map(|s| Status::parse(&s).ok_or(s)))
    }

    /// Newest first.
    pub fn backups(&self, filter: &BackupFilter) -> Result<Vec<Backup>> {
        let conn = self.conn.lock();
        let sql = format!(
            "SELECT {BACKUP_COLUMNS} FROM backups WHERE (?1 IS NULL OR vm_name = ?1) \
             AND (?2 IS NULL OR repository_id = ?2) AND (?3 IS NULL OR status = ?3) \
             AND (?4 IS NULL OR backup_type = ?4) ORDER BY created_at DESC, rowid DESC"
        );
        Ok(query_backups(
            &conn,
            &sql,
            &[
                &filter.vm_name,
                &filter.repository_id,
                &filter.status.map(Status::as_str),
                &filter.backup_type.map(BackupType::as_str),
            ],
        )?)
    }

    /// Backups whose exports were open (or being drained): ready, running, finalizing.
    pub fn active_backups(&self) -> Result<Vec<Backup>> {
        let conn = self.conn.lock();
        let sql = format!(
            "SELECT {BACKUP_COLUMNS} FROM backups WHERE status IN ('ready', 'running', 'finalizing') \
             ORDER BY rowid"
        );
        Ok(query_backups(&conn, &sql, &[])?)
    }

    /// The newest completed backup of a VM (in one repository, when given).
    pub fn latest_completed(
        &self,
        vm_name: &str,
        repository_id: Option<&str>,
    ) -> Result<Option<Backup>> {
        let conn = self.conn.lock();
        let sql = format!(
            "SELECT {BACKUP_COLUMNS} FROM backups WHERE vm_name = ?1 AND status = 'completed' \
             AND (?2 IS NULL OR repository_id = ?2) ORDER BY completed_at DESC, rowid DESC LIMIT 1"
        );
        Ok(query_backups(&conn, &sql, &[&vm_name, &repository_id])?.pop())
    }

    /// The backups that use `id` as parent, with their status as written.
    pub fn children(&self, id: &str) -> Result<Vec<(String, String)>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare("SELECT id, status FROM backups WHERE parent_backup_id = ?1 ORDER BY rowid")?;
        Ok(stmt
            .query_map([id], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// Completed and missing backups, oldest first (parents before their children): those whose
    /// files must be in the repository.
    pub fn settled_backups(&self) -> Result<Vec<Backup>> {
        let conn = self.conn.lock();
        let sql = format!(
            "SELECT {BACKUP_COLUMNS} FROM backups WHERE status IN ('completed', 'missing') \
             ORDER BY created_at, rowid"
        );
        Ok(query_backups(&conn, &sql, &[])?)
    }

    /// completed -> missing, with `why` as its error; or, with `why` `None`, missing ->
    /// completed, the error cleared (a completed backup has none). Times stay: the backup did
    /// not end again. Returns whether the row changed.
    pub fn set_missing(&self, id: &str, why: Option<&str>) -> Result<bool> {
        let (from, to) = match why {
            Some(_) => (Status::Completed, Status::Missing),
            None => (Status::Missing, Status::Completed),
        };
        let conn = self.writer();
        let changed = conn.execute(
            "UPDATE backups SET status = ?2, error = ?3 WHERE id = ?1 AND status = ?4",
            params![id, to.as_str(), why, from.as_str()],
        )?;
        Ok(changed == 1)
    }

    pub fn set_status(&self, id: &str, status: Status, error: Option<&str>) -> Result<()> {
        let conn = self.writer();
        let completed_at = (!status.is_active()).then(|| fmt_time(OffsetDateTime::now_utc()));
        conn.execute(
            "UPDATE backups SET status = ?2, error = COALESCE(?3, error), \
             completed_at = COALESCE(?4, completed_at) WHERE id = ?1",
            params![id, status.as_str(), error, completed_at],
        )?;
        Ok(())
    }

    /// ready -> running, once; returns whether this call made the change.
    pub fn mark_running(&self, id: &str) -> Result<bool> {
        let conn = self.writer();
        let changed = conn.execute(
            "UPDATE backups SET status = 'running', started_at = ?2 WHERE id = ?1 AND status = 'ready'",
            params![id, fmt_time(OffsetDateTime::now_utc())],
        )?;
        Ok(changed == 1)
    }

    pub fn set_telemetry(
        &self,
        id: &str,
        telemetry: &serde_json::Value,
        at: OffsetDateTime,
    ) -> Result<()> {
        let conn = self.writer();
        conn.execute(
            "UPDATE backups SET telemetry = ?2, last_telemetry_at = ?3 WHERE id = ?1",
            params![id, telemetry.to_string(), fmt_time(at)],
        )?;
        Ok(())
    }

    /// Record the client's `complete` for one disk. Values already recorded are kept when the
    /// call does not repeat them.
    pub fn mark_disk_complete(
        &self,
        id: &str,
        disk_id: u32,
        change_id: Option<&str>,
        bytes_transferred: Option<u64>,
    ) -> Result<()> {
        let conn = self.writer();
        conn.execute(
            "UPDATE backup_disks SET completed = 1, change_id = COALESCE(?3, change_id), \
             bytes_transferred = COALESCE(?4, bytes_transferred), completed_at = COALESCE(completed_at, ?5) \
             WHERE backup_id = ?1 AND disk_id = ?2",
            params![
                id,
                disk_id,
                change_id,
                bytes_transferred.map(|b| b as i64),
                fmt_time(OffsetDateTime::now_utc())
            ],
        )?;
        Ok(())
    }

    pub fn record_disk_result(
        &self,
        id: &str,
        disk_id: u32,
        bytes_written: u64,
        image_size: u64,
    ) -> Result<()> {
        let conn = self.writer();
        conn.execute(
            "UPDATE backup_disks SET bytes_written = ?3, image_size = ?4 WHERE backup_id = ?1 AND disk_id = ?2",
            params![id, disk_id, bytes_written as i64, image_size as i64],
        )?;
        Ok(())
    }

    /// Remove the rows of `doomed` (children before parents) and record each as a pending deletion
    /// of its directory, in one transaction: all or nothing.
    pub fn delete_backups(&self, doomed: &[(String, PathBuf)]) -> Result<()> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        delete_rows(&tx, doomed)?;
        tx.commit()?;
        Ok(())
    }

    /// Deletions whose files may still be there.
    pub fn pending_deletions(&self) -> Result<Vec<(String, PathBuf)>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare("SELECT backup_id, dir FROM deletions ORDER BY rowid")?;
        Ok(stmt
            .query_map([], |row| {
                Ok((row.get(0)?, PathBuf::from(row.get::<_, String>(1)?)))
            })?
            .collect::<rusqlite::Result<_>>()?)
    }

    pub fn finish_deletion(&self, id: &str) -> Result<()> {
        let conn = self.writer();
        conn.execute("DELETE FROM deletions WHERE backup_id = ?1", [id])?;
        Ok(())
    }

    pub fn count_by_status(&self) -> Result<Vec<(String, u64)>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare("SELECT status, COUNT(*) FROM backups GROUP BY status")?;
        Ok(stmt
            .query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))?
            .collect::<rusqlite::Result<_>>()?)
    }

    pub fn bytes_received_finished(&self) -> Result<u64> {
        let conn = self.conn.lock();
        let total: i64 = conn.query_row(
            "SELECT COALESCE(SUM(d.bytes_written), 0) FROM backup_disks d JOIN backups b ON b.id = d.backup_id \
             WHERE b.status NOT IN ('ready', 'running', 'finalizing')",
            [],
            |row| row.get(0),
        )?;
        Ok(total as u64)
    }

    // --- restores
}

/// In `tx`: the rows of `doomed` go (children before parents), each with a pending deletion of
/// its directory.
pub(super) fn delete_rows(
    tx: &super::conn::WriterTx<'_>,
    doomed: &[(String, PathBuf)],
) -> Result<()> {
    let now = fmt_time(OffsetDateTime::now_utc());
    for (id, dir) in doomed {
        tx.execute(
            "INSERT OR REPLACE INTO deletions (backup_id, dir, requested_at) VALUES (?1, ?2, ?3)",
            params![id, dir.to_string_lossy(), now],
        )?;
        tx.execute("DELETE FROM backups WHERE id = ?1", [id])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str, vm: &str, status: Status) -> Backup {
        Backup {
            id: id.into(),
            vm_name: vm.into(),
            repository_id: "default".into(),
            backup_type: BackupType::Full,
            parent_backup_id: None,
            policy_id: None,
            status,
            error: None,
            tags: None,
            telemetry: None,
            created_at: OffsetDateTime::now_utc(),
            started_at: None,
            completed_at: None,
            last_telemetry_at: None,
            vm_context_id: None,
            protected: false,
            verify_state: Default::default(),
            verified_at: None,
            verify_error: None,
            note: None,
            disks: vec![Disk {
                disk_id: 3,
                vmware_disk_key: 2001,
                capacity_bytes: 1 << 20,
                export_name: format!("{vm}-{id}-disk3"),
                qcow2_path: "/x/disk3.qcow2".into(),
                completed: false,
                change_id: None,
                bytes_transferred: None,
                bytes_written: 0,
                image_size: None,
                digests_blake3: None,
                completed_at: None,
            }],
        }
    }

    #[test]
    fn times_sort_as_text() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let a = fmt_time(t);
        let b = fmt_time(t + time::Duration::milliseconds(100));
        assert_eq!(a, "2023-11-14T22:13:20.000000Z");
        assert!(a < b);
        assert_eq!(
            parse_time(&b).unwrap(),
            t + time::Duration::milliseconds(100)
        );
    }

    #[test]
    fn round_trip_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.sqlite");
        {
            let cat = Catalog::open(&path).unwrap();
            let repo = Repository {
                id: "default".into(),
                name: "default".into(),
                path: dir.path().into(),
                created_at: OffsetDateTime::now_utc(),
                description: None,
                s3: None,
            };
            cat.insert_repository(&repo).unwrap();
            assert!(matches!(
                cat.insert_repository(&repo),
                Err(Error::Conflict(_))
            ));
            cat.insert_backup(&sample("a", "vm1", Status::Ready))
                .unwrap();
            cat.mark_disk_complete("a", 3, Some("cid"), Some(42))
                .unwrap();
            cat.mark_disk_complete("a", 3, None, None).unwrap();
            cat.set_status("a", Status::Completed, None).unwrap();
        }
        // Migrations are not applied twice; data survives.
        let cat = Catalog::open(&path).unwrap();
        let b = cat.backup("a").unwrap().unwrap();
        assert_eq!(b.status, Status::Completed);
        assert!(b.completed_at.is_some());
        assert_eq!(b.disks[0].change_id.as_deref(), Some("cid"));
        assert_eq!(b.disks[0].bytes_transferred, Some(42));
        assert_eq!(
            cat.latest_completed("vm1", Some("default"))
                .unwrap()
                .unwrap()
                .id,
            "a"
        );
        assert!(cat.latest_completed("vm2", None).unwrap().is_none());
        assert!(cat.backup("zz").unwrap().is_none());
    }
}
