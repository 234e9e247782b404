//! Rows to records and back: times as sortable text, and the backup rows with their disks.

use std::path::PathBuf;

use rusqlite::{Connection, Row};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::model::*;

/// RFC 3339 in UTC with a fixed number of fraction digits, so the text sorts like the time
/// (the catalog orders by these columns).
pub fn fmt_time(t: OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(FORMAT)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

pub(crate) fn parse_time(s: &str) -> rusqlite::Result<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

pub(super) fn parse_opt_time(s: Option<String>) -> rusqlite::Result<Option<OffsetDateTime>> {
    s.as_deref().map(parse_time).transpose()
}

pub(super) fn bad_value(what: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("bad {what} {value:?} in catalog").into(),
    )
}

/// A write refused by a UNIQUE constraint (a name taken) as a conflict saying `what`; other
/// errors unchanged (a foreign key refused is not a name taken).
pub(super) fn unique_taken(
    err: crate::error::Error,
    what: impl FnOnce() -> String,
) -> crate::error::Error {
    match err {
        crate::error::Error::Catalog(rusqlite::Error::SqliteFailure(e, _))
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
        {
            crate::error::Error::Conflict(what())
        }
        other => other,
    }
}

pub(super) fn parse_json(s: Option<String>) -> Option<serde_json::Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

pub(super) const BACKUP_COLUMNS: &str = "id, vm_name, repository_id, backup_type, parent_backup_id, status, error, \
     tags, telemetry, created_at, started_at, completed_at, last_telemetry_at, policy_id, vm_context_id, protected, \
     verify_state, verified_at, verify_error, note";

pub(super) fn backup_from_row(row: &Row<'_>) -> rusqlite::Result<Backup> {
    let backup_type: String = row.get(3)?;
    let status: String = row.get(5)?;
    Ok(Backup {
        id: row.get(0)?,
        vm_name: row.get(1)?,
        repository_id: row.get(2)?,
        backup_type: BackupType::parse(&backup_type)
            .ok_or_else(|| bad_value("backup type", &backup_type))?,
        parent_backup_id: row.get(4)?,
        status: Status::parse(&status).ok_or_else(|| bad_value("status", &status))?,
        error: row.get(6)?,
        tags: parse_json(row.get(7)?),
        telemetry: parse_json(row.get(8)?),
        created_at: parse_time(&row.get::<_, String>(9)?)?,
        started_at: parse_opt_time(row.get(10)?)?,
        completed_at: parse_opt_time(row.get(11)?)?,
        last_telemetry_at: parse_opt_time(row.get(12)?)?,
        policy_id: row.get(13)?,
        vm_context_id: row.get(14)?,
        protected: row.get(15)?,
        verify_state: {
            let v: String = row.get(16)?;
            VerifyState::parse(&v).ok_or_else(|| bad_value("verify state", &v))?
        },
        verified_at: parse_opt_time(row.get(17)?)?,
        verify_error: row.get(18)?,
        note: row.get(19)?,
        disks: Vec::new(),
    })
}

pub(super) fn disk_from_row(row: &Row<'_>) -> rusqlite::Result<Disk> {
    Ok(Disk {
        disk_id: row.get(0)?,
        vmware_disk_key: row.get(1)?,
        capacity_bytes: row.get::<_, i64>(2)? as u64,
        export_name: row.get(3)?,
        qcow2_path: PathBuf::from(row.get::<_, String>(4)?),
        completed: row.get(5)?,
        change_id: row.get(6)?,
        bytes_transferred: row.get::<_, Option<i64>>(7)?.map(|v| v as u64),
        bytes_written: row.get::<_, i64>(8)? as u64,
        image_size: row.get::<_, Option<i64>>(9)?.map(|v| v as u64),
        completed_at: parse_opt_time(row.get(10)?)?,
        digests_blake3: row.get(11)?,
    })
}

pub(super) fn restore_from_row(row: &Row<'_>) -> rusqlite::Result<Restore> {
    Ok(Restore {
        id: row.get(0)?,
        backup_id: row.get(1)?,
        disk_id: row.get(2)?,
        export_name: row.get(3)?,
        created_at: parse_time(&row.get::<_, String>(4)?)?,
        expires_at: parse_time(&row.get::<_, String>(5)?)?,
        repository_id: row.get(6)?,
    })
}

pub(super) fn load_disks(conn: &Connection, backup: &mut Backup) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "SELECT disk_id, vmware_disk_key, capacity_bytes, export_name, qcow2_path, completed, change_id, \
         bytes_transferred, bytes_written, image_size, completed_at, digests_blake3 \
         FROM backup_disks WHERE backup_id = ?1 ORDER BY position",
    )?;
    backup.disks = stmt
        .query_map([&backup.id], disk_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(())
}

/// The rows `sql` selects, each parsed on its own: one unreadable row (a bad timestamp written by
/// hand, say) must not hide the others.
pub(super) fn query_rows(
    conn: &Connection,
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<Vec<(String, rusqlite::Result<Backup>)>> {
    let mut stmt = conn.prepare(sql)?;
    let rows: Vec<(String, rusqlite::Result<Backup>)> = stmt
        .query_map(args, |row| {
            Ok((row.get::<_, String>(0)?, backup_from_row(row)))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows
        .into_iter()
        .map(|(id, backup)| {
            let backup = backup.and_then(|mut b| load_disks(conn, &mut b).map(|()| b));
            (id, backup)
        })
        .collect())
}

/// The readable backups `sql` selects; an unreadable row is logged with its id and skipped.
pub(super) fn query_backups(
    conn: &Connection,
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<Vec<Backup>> {
    Ok(query_rows(conn, sql, args)?
        .into_iter()
        .filter_map(|(id, backup)| match backup {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::error!(backup_id = %id, error = %e, "unreadable catalog row skipped");
                None
            }
        })
        .collect())
}
