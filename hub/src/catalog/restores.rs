//! Restores: the open restore exports, recorded so a restart can clear them.

use rusqlite::params;

use super::conn::Catalog;
use super::model::*;
use super::rows::*;
use crate::error::Result;

impl Catalog {
    pub fn insert_restore(&self, restore: &Restore) -> Result<()> {
        let conn = self.writer();
        conn.execute(
            "INSERT INTO restores (id, backup_id, disk_id, export_name, created_at, expires_at, \
             repository_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                restore.id,
                restore.backup_id,
                restore.disk_id,
                restore.export_name,
                fmt_time(restore.created_at),
                fmt_time(restore.expires_at),
                restore.repository_id,
            ],
        )?;
        Ok(())
    }

    pub fn restores(&self) -> Result<Vec<Restore>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT id, backup_id, disk_id, export_name, created_at, expires_at, repository_id \
             FROM restores ORDER BY rowid DESC",
        )?;
        Ok(stmt
            .query_map([], restore_from_row)?
            .collect::<rusqlite::Result<_>>()?)
    }

    pub fn delete_restore(&self, id: &str) -> Result<bool> {
        let conn = self.writer();
        Ok(conn.execute("DELETE FROM restores WHERE id = ?1", [id])? == 1)
    }

    /// Open restores of the backup's own images (a restore of a copy in a bucket is not one).
    pub fn restores_of(&self, backup_id: &str) -> Result<usize> {
        let conn = self.conn.lock();
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM restores WHERE backup_id = ?1 AND repository_id IS NULL",
            [backup_id],
            |r| r.get(0),
        )?;
        Ok(n as usize)
    }

    pub fn clear_restores(&self) -> Result<()> {
        let conn = self.writer();
        conn.execute("DELETE FROM restores", [])?;
        Ok(())
    }
}
