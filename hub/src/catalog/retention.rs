//! Retention's rows: the protected mark, and the merges in progress (see `hub::prune::merge`).

use std::path::PathBuf;

use rusqlite::{OptionalExtension, params};
use time::OffsetDateTime;

use super::conn::Catalog;
use super::model::*;
use super::rows::*;
use crate::error::Result;

/// A merge recorded before its first image was touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeIntent {
    /// The backup that goes.
    pub removed: String,
    /// Its only child, whose images end up holding the merged data.
    pub into: String,
    pub vm_name: String,
    pub repository_id: String,
}

impl Catalog {
    /// Whether the row exists.
    pub fn set_protected(&self, id: &str, protected: bool) -> Result<bool> {
        let conn = self.writer();
        Ok(conn.execute(
            "UPDATE backups SET protected = ?2 WHERE id = ?1",
            params![id, protected],
        )? == 1)
    }

    pub fn insert_merge(&self, m: &MergeIntent) -> Result<()> {
        let conn = self.writer();
        conn.execute(
            "INSERT INTO merges (removed, into_backup, vm_name, repository_id, started_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                m.removed,
                m.into,
                m.vm_name,
                m.repository_id,
                fmt_time(OffsetDateTime::now_utc())
            ],
        )?;
        Ok(())
    }

    /// Merges a stop interrupted, oldest first.
    pub fn merges(&self) -> Result<Vec<MergeIntent>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT removed, into_backup, vm_name, repository_id FROM merges ORDER BY rowid",
        )?;
        Ok(stmt
            .query_map([], |row| {
                Ok(MergeIntent {
                    removed: row.get(0)?,
                    into: row.get(1)?,
                    vm_name: row.get(2)?,
                    repository_id: row.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// The backup being merged in the VM's chain in that repository, if one is.
    pub fn merging_in(&self, vm_name: &str, repository_id: &str) -> Result<Option<String>> {
        let conn = self.conn.lock();
        Ok(conn
            .query_row(
                "SELECT removed FROM merges WHERE vm_name = ?1 AND repository_id = ?2 LIMIT 1",
                [vm_name, repository_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn drop_merge(&self, removed: &str) -> Result<()> {
        let conn = self.writer();
        conn.execute("DELETE FROM merges WHERE removed = ?1", [removed])?;
        Ok(())
    }

    /// The end of a merge, all at once: `into` takes `removed`'s parent and type and its images'
    /// new sizes; `removed` and `doomed` (its failed children, with `removed` last) go, each with
    /// a pending deletion of its directory; the intent goes.
    pub fn finish_merge(
        &self,
        into: &Backup,
        removed: &str,
        doomed: &[(String, PathBuf)],
    ) -> Result<()> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE backups SET parent_backup_id = ?2, backup_type = ?3 WHERE id = ?1",
            params![into.id, into.parent_backup_id, into.backup_type.as_str()],
        )?;
        for d in &into.disks {
            tx.execute(
                "UPDATE backup_disks SET image_size = ?3, digests_blake3 = ?4 \
                 WHERE backup_id = ?1 AND disk_id = ?2",
                params![
                    into.id,
                    d.disk_id,
                    d.image_size.map(|b| b as i64),
                    d.digests_blake3
                ],
            )?;
        }
        super::backups::delete_rows(&tx, doomed)?;
        tx.execute("DELETE FROM merges WHERE removed = ?1", [removed])?;
        tx.commit()?;
        Ok(())
    }
}
