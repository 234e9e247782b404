//! Verify's rows: each backup's newest verify outcome, each disk's digests-file digest, and the
//! repositories that verify every new backup (see `hub::verify`).

use rusqlite::params;
use time::OffsetDateTime;

use super::conn::Catalog;
use super::model::*;
use super::rows::*;
use crate::error::Result;

impl Catalog {
    /// Records a verify's outcome; whether the row exists.
    pub fn set_verify(
        &self,
        id: &str,
        state: VerifyState,
        error: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<bool> {
        let conn = self.writer();
        Ok(conn.execute(
            "UPDATE backups SET verify_state = ?2, verify_error = ?3, verified_at = ?4 WHERE id = ?1",
            params![id, state.as_str(), error, fmt_time(at)],
        )? == 1)
    }

    pub fn set_disk_digests(&self, id: &str, disk_id: u32, digest: &str) -> Result<()> {
        let conn = self.writer();
        conn.execute(
            "UPDATE backup_disks SET digests_blake3 = ?3 WHERE backup_id = ?1 AND disk_id = ?2",
            params![id, disk_id, digest],
        )?;
        Ok(())
    }

    pub fn set_verify_new_backups(&self, repository_id: &str, on: bool) -> Result<bool> {
        let conn = self.writer();
        Ok(conn.execute(
            "UPDATE repositories SET verify_new_backups = ?2 WHERE id = ?1",
            params![repository_id, on],
        )? == 1)
    }

    pub fn verify_new_backups(&self, repository_id: &str) -> Result<bool> {
        let conn = self.conn.lock();
        let on: Option<bool> = rusqlite::OptionalExtension::optional(conn.query_row(
            "SELECT verify_new_backups FROM repositories WHERE id = ?1",
            [repository_id],
            |r| r.get(0),
        ))?;
        Ok(on.unwrap_or(false))
    }

    /// Completed backups due for a verify: never verified in a repository that verifies new
    /// backups, or (with `outdated_before`) last verified before that time. Oldest first.
    pub fn verify_due(&self, outdated_before: Option<OffsetDateTime>) -> Result<Vec<String>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT b.id FROM backups b JOIN repositories r ON r.id = b.repository_id \
             WHERE b.status = 'completed' AND ( \
               (b.verify_state = 'none' AND r.verify_new_backups = 1) \
               OR (?1 IS NOT NULL AND (b.verified_at IS NULL OR b.verified_at < ?1))) \
             ORDER BY b.created_at",
        )?;
        let ids = stmt
            .query_map([outdated_before.map(fmt_time)], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(ids)
    }

    /// Completed backups by verify state, every state present (0 when none).
    pub fn count_by_verify_state(&self) -> Result<Vec<(VerifyState, u64)>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT verify_state, COUNT(*) FROM backups WHERE status = 'completed' GROUP BY verify_state",
        )?;
        let rows: Vec<(String, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(VerifyState::ALL
            .into_iter()
            .map(|s| {
                let n = rows
                    .iter()
                    .find(|(k, _)| k == s.as_str())
                    .map_or(0, |r| r.1);
                (s, n as u64)
            })
            .collect())
    }
}
