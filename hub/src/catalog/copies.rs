//! Copies of backups' layers in other repositories (`crate::copy`).

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::conn::Catalog;
use super::rows::*;
use crate::error::{Error, Result};

/// The old hub's copy states, which the GUI reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyStatus {
    Pending,
    Copying,
    Verifying,
    Completed,
    Failed,
}

impl CopyStatus {
    const ALL: [CopyStatus; 5] = [
        CopyStatus::Pending,
        CopyStatus::Copying,
        CopyStatus::Verifying,
        CopyStatus::Completed,
        CopyStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CopyStatus::Pending => "pending",
            CopyStatus::Copying => "copying",
            CopyStatus::Verifying => "verifying",
            CopyStatus::Completed => "completed",
            CopyStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> CopyStatus {
        CopyStatus::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .unwrap_or(CopyStatus::Failed)
    }

    /// Queued or under way: a job owns the row.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            CopyStatus::Pending | CopyStatus::Copying | CopyStatus::Verifying
        )
    }
}

/// One disk's objects in a copy, with the BLAKE3 of each as uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopiedDisk {
    pub disk_id: u32,
    pub image_key: String,
    pub image_bytes: u64,
    pub image_blake3: String,
    pub digests_key: Option<String>,
    pub digests_blake3: Option<String>,
}

#[derive(Debug, Clone)]
pub struct BackupCopy {
    pub id: String,
    pub backup_id: String,
    pub repository_id: String,
    pub vm_name: String,
    pub backup_type: String,
    /// The layer below, as it was when this layer was copied.
    pub parent_backup_id: Option<String>,
    pub copy_rule_id: Option<String>,
    pub job_id: Option<String>,
    pub status: CopyStatus,
    /// `pending` (not verified yet, or not asked), `passed`, `failed`.
    pub verification_status: String,
    /// The key under which the layer's objects are: `<prefix>/<vm>/<backup id>`.
    pub object_prefix: String,
    pub size_bytes: u64,
    pub disks: Vec<CopiedDisk>,
    pub retain_until: Option<OffsetDateTime>,
    pub error_message: Option<String>,
    pub copy_started_at: Option<OffsetDateTime>,
    pub copy_completed_at: Option<OffsetDateTime>,
    pub verified_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
}

const COLUMNS: &str = "id, backup_id, repository_id, vm_name, backup_type, parent_backup_id, \
    copy_rule_id, job_id, status, verification_status, object_prefix, size_bytes, disks, \
    retain_until, error_message, copy_started_at, copy_completed_at, verified_at, created_at";

fn copy_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<BackupCopy> {
    let disks: String = row.get(12)?;
    Ok(BackupCopy {
        id: row.get(0)?,
        backup_id: row.get(1)?,
        repository_id: row.get(2)?,
        vm_name: row.get(3)?,
        backup_type: row.get(4)?,
        parent_backup_id: row.get(5)?,
        copy_rule_id: row.get(6)?,
        job_id: row.get(7)?,
        status: CopyStatus::parse(&row.get::<_, String>(8)?),
        verification_status: row.get(9)?,
        object_prefix: row.get(10)?,
        size_bytes: row.get::<_, i64>(11)?.max(0) as u64,
        disks: serde_json::from_str(&disks).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(12, rusqlite::types::Type::Text, e.into())
        })?,
        retain_until: parse_opt_time(row.get(13)?)?,
        error_message: row.get(14)?,
        copy_started_at: parse_opt_time(row.get(15)?)?,
        copy_completed_at: parse_opt_time(row.get(16)?)?,
        verified_at: parse_opt_time(row.get(17)?)?,
        created_at: parse_time(&row.get::<_, String>(18)?)?,
    })
}

/// What a copy's progress changes on its row.
#[derive(Debug, Default)]
pub struct CopyUpdate {
    pub status: Option<CopyStatus>,
    pub job_id: Option<String>,
    pub verification_status: Option<&'static str>,
    pub size_bytes: Option<u64>,
    pub disks: Option<Vec<CopiedDisk>>,
    pub retain_until: Option<OffsetDateTime>,
    pub error_message: Option<Option<String>>,
    pub copy_started_at: Option<OffsetDateTime>,
    pub copy_completed_at: Option<OffsetDateTime>,
    pub verified_at: Option<OffsetDateTime>,
}

impl Catalog {
    /// The copy row for this layer in the repository, made `pending` for `job_id`: a new row, or
    /// a failed one taken again (its id kept). A live or completed row is left as it is and
    /// refused (`Conflict`).
    pub fn claim_copy(&self, new: &BackupCopy) -> Result<BackupCopy> {
        self.written((|| {
            let mut conn = self.conn.lock();
            let tx = conn.transaction()?;
            let existing = tx
                .query_row(
                    &format!(
                        "SELECT {COLUMNS} FROM backup_copies WHERE backup_id = ?1 AND repository_id = ?2"
                    ),
                    params![new.backup_id, new.repository_id],
                    copy_row,
                )
                .optional()?;
            let row = match existing {
                Some(old) if old.status != CopyStatus::Failed => {
                    return Err(Error::Conflict(format!(
                        "backup {} already has a copy in repository {} ({})",
                        old.backup_id,
                        old.repository_id,
                        old.status.as_str()
                    )));
                }
                Some(old) => {
                    tx.execute(
                        "UPDATE backup_copies SET status = 'pending', verification_status = 'pending', \
                         job_id = ?2, copy_rule_id = ?3, parent_backup_id = ?4, error_message = NULL, \
                         copy_started_at = NULL, copy_completed_at = NULL, verified_at = NULL \
                         WHERE id = ?1",
                        params![old.id, new.job_id, new.copy_rule_id, new.parent_backup_id],
                    )?;
                    BackupCopy {
                        id: old.id,
                        created_at: old.created_at,
                        disks: old.disks,
                        ..new.clone()
                    }
                }
                None => {
                    tx.execute(
                        &format!(
                            "INSERT INTO backup_copies ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, \
                             ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
                        ),
                        params![
                            new.id,
                            new.backup_id,
                            new.repository_id,
                            new.vm_name,
                            new.backup_type,
                            new.parent_backup_id,
                            new.copy_rule_id,
                            new.job_id,
                            new.status.as_str(),
                            new.verification_status,
                            new.object_prefix,
                            new.size_bytes as i64,
                            serde_json::to_string(&new.disks).expect("disks serialise"),
                            new.retain_until.map(fmt_time),
                            new.error_message,
                            new.copy_started_at.map(fmt_time),
                            new.copy_completed_at.map(fmt_time),
                            new.verified_at.map(fmt_time),
                            fmt_time(new.created_at),
                        ],
                    )?;
                    new.clone()
                }
            };
            tx.commit()?;
            Ok(row)
        })())
    }

    pub fn update_copy(&self, id: &str, u: CopyUpdate) -> Result<()> {
        let conn = self.writer();
        conn.execute(
            "UPDATE backup_copies SET \
             status = COALESCE(?2, status), \
             verification_status = COALESCE(?3, verification_status), \
             size_bytes = COALESCE(?4, size_bytes), \
             disks = COALESCE(?5, disks), \
             retain_until = COALESCE(?6, retain_until), \
             error_message = CASE WHEN ?7 THEN ?8 ELSE error_message END, \
             copy_started_at = COALESCE(?9, copy_started_at), \
             copy_completed_at = COALESCE(?10, copy_completed_at), \
             verified_at = COALESCE(?11, verified_at), \
             job_id = COALESCE(?12, job_id) \
             WHERE id = ?1",
            params![
                id,
                u.status.map(CopyStatus::as_str),
                u.verification_status,
                u.size_bytes.map(|n| n as i64),
                u.disks
                    .map(|d| serde_json::to_string(&d).expect("disks serialise")),
                u.retain_until.map(fmt_time),
                u.error_message.is_some(),
                u.error_message.flatten(),
                u.copy_started_at.map(fmt_time),
                u.copy_completed_at.map(fmt_time),
                u.verified_at.map(fmt_time),
                u.job_id,
            ],
        )?;
        Ok(())
    }

    pub fn copy(&self, id: &str) -> Result<Option<BackupCopy>> {
        let conn = self.conn.lock();
        Ok(conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM backup_copies WHERE id = ?1"),
                [id],
                copy_row,
            )
            .optional()?)
    }

    /// The copy of a layer in a repository, whatever its state.
    pub fn copy_in(&self, backup_id: &str, repository_id: &str) -> Result<Option<BackupCopy>> {
        let conn = self.conn.lock();
        Ok(conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM backup_copies WHERE backup_id = ?1 AND repository_id = ?2"
                ),
                params![backup_id, repository_id],
                copy_row,
            )
            .optional()?)
    }

    /// Oldest first.
    pub fn copies_of_backup(&self, backup_id: &str) -> Result<Vec<BackupCopy>> {
        self.copies_where("backup_id = ?1", backup_id)
    }

    pub fn copies_in_repository(&self, repository_id: &str) -> Result<Vec<BackupCopy>> {
        self.copies_where("repository_id = ?1", repository_id)
    }

    fn copies_where(&self, clause: &str, value: &str) -> Result<Vec<BackupCopy>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM backup_copies WHERE {clause} ORDER BY created_at, id"
        ))?;
        let all = stmt
            .query_map([value], copy_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(all)
    }

    pub fn delete_copy(&self, id: &str) -> Result<bool> {
        let conn = self.writer();
        Ok(conn.execute("DELETE FROM backup_copies WHERE id = ?1", [id])? == 1)
    }

    pub fn repository_copy_count(&self, repository_id: &str) -> Result<u64> {
        let conn = self.conn.lock();
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM backup_copies WHERE repository_id = ?1",
            [repository_id],
            |row| row.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    /// Copies a stop left queued or under way: failed, saying so. Run at start, before any job.
    pub fn fail_unfinished_copies(&self) -> Result<usize> {
        let conn = self.writer();
        let n = conn.execute(
            "UPDATE backup_copies SET status = 'failed', error_message = \
             'the hub stopped before the copy ended; copy again to finish it (what was uploaded is checked, not sent twice)' \
             WHERE status IN ('pending', 'copying', 'verifying')",
            [],
        )?;
        Ok(n)
    }
}
