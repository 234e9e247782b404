//! The SQLite catalog: repositories, backups with their disks, restores.
//!
//! One connection behind a mutex; every call is a short statement or transaction, so callers use
//! it directly from async code. WAL mode keeps readers from waiting on the writer's fsync.

pub mod inventory;
pub mod model;

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, Row, params};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use inventory::{Credential, CredentialFields, VmContext, VmDisk};
pub use model::*;

use crate::error::{Error, Result};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
/// The catalog's file in the data dir.
pub const CATALOG_FILE: &str = "catalog.sqlite";

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_sendense_flow.sql"),
    include_str!("../../migrations/0003_deletions.sql"),
];

pub struct Catalog {
    conn: Mutex<Connection>,
    path: PathBuf,
}

/// SQLite says "database or disk is full" for ENOSPC (and for a full quota).
pub fn is_disk_full(err: &rusqlite::Error) -> bool {
    err.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

/// The connection as the methods that change the catalog use it: a full filesystem becomes
/// [`Error::NoSpace`] naming the catalog file, so callers can free space or answer 507.
struct Writer<'a> {
    conn: parking_lot::MutexGuard<'a, Connection>,
    path: &'a Path,
}

fn at_path(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| {
        if is_disk_full(&e) {
            Error::NoSpace {
                path: path.to_owned(),
            }
        } else {
            Error::Catalog(e)
        }
    }
}

impl Writer<'_> {
    fn execute<P: rusqlite::Params>(&self, sql: &str, params: P) -> Result<usize> {
        self.conn.execute(sql, params).map_err(at_path(self.path))
    }

    fn transaction(&mut self) -> Result<WriterTx<'_>> {
        let path = self.path;
        let tx = self.conn.transaction().map_err(at_path(path))?;
        Ok(WriterTx { tx, path })
    }
}

struct WriterTx<'a> {
    tx: rusqlite::Transaction<'a>,
    path: &'a Path,
}

impl WriterTx<'_> {
    fn execute<P: rusqlite::Params>(&self, sql: &str, params: P) -> Result<usize> {
        self.tx.execute(sql, params).map_err(at_path(self.path))
    }

    fn commit(self) -> Result<()> {
        self.tx.commit().map_err(at_path(self.path))
    }
}

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

fn parse_time(s: &str) -> rusqlite::Result<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn parse_opt_time(s: Option<String>) -> rusqlite::Result<Option<OffsetDateTime>> {
    s.as_deref().map(parse_time).transpose()
}

fn bad_value(what: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("bad {what} {value:?} in catalog").into(),
    )
}

fn parse_json(s: Option<String>) -> Option<serde_json::Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

const BACKUP_COLUMNS: &str = "id, vm_name, repository_id, backup_type, parent_backup_id, status, error, \
     tags, telemetry, created_at, started_at, completed_at, last_telemetry_at, policy_id, vm_context_id";

fn backup_from_row(row: &Row<'_>) -> rusqlite::Result<Backup> {
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
        disks: Vec::new(),
    })
}

fn disk_from_row(row: &Row<'_>) -> rusqlite::Result<Disk> {
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
    })
}

fn restore_from_row(row: &Row<'_>) -> rusqlite::Result<Restore> {
    Ok(Restore {
        id: row.get(0)?,
        backup_id: row.get(1)?,
        disk_id: row.get(2)?,
        export_name: row.get(3)?,
        created_at: parse_time(&row.get::<_, String>(4)?)?,
        expires_at: parse_time(&row.get::<_, String>(5)?)?,
    })
}

fn load_disks(conn: &Connection, backup: &mut Backup) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "SELECT disk_id, vmware_disk_key, capacity_bytes, export_name, qcow2_path, completed, change_id, \
         bytes_transferred, bytes_written, image_size, completed_at \
         FROM backup_disks WHERE backup_id = ?1 ORDER BY position",
    )?;
    backup.disks = stmt
        .query_map([&backup.id], disk_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(())
}

/// The rows `sql` selects, each parsed on its own: one unreadable row (a bad timestamp written by
/// hand, say) must not hide the others.
fn query_rows(
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
fn query_backups(
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

impl Catalog {
    /// The result of a write made without [`Writer`] (the inventory's transactions), with a full
    /// filesystem named as [`Writer`] names it.
    fn written<T>(&self, result: Result<T>) -> Result<T> {
        result.map_err(|err| match err {
            Error::Catalog(e) => at_path(&self.path)(e),
            other => other,
        })
    }

    fn writer(&self) -> Writer<'_> {
        Writer {
            conn: self.conn.lock(),
            path: &self.path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn open(path: &Path) -> Result<Catalog> {
        prepare_file(path)?;
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| not_a_catalog(path, e))?;
        // A completed backup must stay recorded through a power cut; writes are rare.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Catalog {
            conn: Mutex::new(conn),
            path: path.to_owned(),
        })
    }

    // --- repositories

    pub fn insert_repository(&self, repo: &Repository) -> Result<()> {
        let conn = self.writer();
        let inserted = conn.execute(
            "INSERT INTO repositories (id, name, path, created_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (id) DO NOTHING",
            params![
                repo.id,
                repo.name,
                repo.path.to_string_lossy(),
                fmt_time(repo.created_at)
            ],
        )?;
        if inserted == 0 {
            return Err(Error::Conflict(format!(
                "repository {:?} already exists",
                repo.id
            )));
        }
        Ok(())
    }

    pub fn repository(&self, id: &str) -> Result<Option<Repository>> {
        let conn = self.conn.lock();
        Ok(conn
            .query_row(
                "SELECT id, name, path, created_at FROM repositories WHERE id = ?1",
                [id],
                |row| {
                    Ok(Repository {
                        id: row.get(0)?,
                        name: row.get(1)?,
                        path: PathBuf::from(row.get::<_, String>(2)?),
                        created_at: parse_time(&row.get::<_, String>(3)?)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn repositories(&self) -> Result<Vec<Repository>> {
        let conn = self.conn.lock();
        let mut stmt =
            conn.prepare("SELECT id, name, path, created_at FROM repositories ORDER BY id")?;
        let repos = stmt
            .query_map([], |row| {
                Ok(Repository {
                    id: row.get(0)?,
                    name: row.get(1)?,
                    path: PathBuf::from(row.get::<_, String>(2)?),
                    created_at: parse_time(&row.get::<_, String>(3)?)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(repos)
    }

    // --- backups

    pub fn insert_backup(&self, backup: &Backup) -> Result<()> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        tx.execute(
            &format!("INSERT INTO backups ({BACKUP_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"),
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
            ],
        )?;
        for (position, disk) in backup.disks.iter().enumerate() {
            tx.execute(
                "INSERT INTO backup_disks (backup_id, disk_id, position, vmware_disk_key, capacity_bytes, \
                 export_name, qcow2_path, completed, change_id, bytes_transferred, bytes_written, \
                 image_size, completed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
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
        let now = fmt_time(OffsetDateTime::now_utc());
        for (id, dir) in doomed {
            tx.execute(
                "INSERT OR REPLACE INTO deletions (backup_id, dir, requested_at) VALUES (?1, ?2, ?3)",
                params![id, dir.to_string_lossy(), now],
            )?;
            tx.execute("DELETE FROM backups WHERE id = ?1", [id])?;
        }
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

    pub fn insert_restore(&self, restore: &Restore) -> Result<()> {
        let conn = self.writer();
        conn.execute(
            "INSERT INTO restores (id, backup_id, disk_id, export_name, created_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                restore.id,
                restore.backup_id,
                restore.disk_id,
                restore.export_name,
                fmt_time(restore.created_at),
                fmt_time(restore.expires_at)
            ],
        )?;
        Ok(())
    }

    pub fn restores(&self) -> Result<Vec<Restore>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT id, backup_id, disk_id, export_name, created_at, expires_at FROM restores ORDER BY rowid DESC",
        )?;
        Ok(stmt
            .query_map([], restore_from_row)?
            .collect::<rusqlite::Result<_>>()?)
    }

    pub fn delete_restore(&self, id: &str) -> Result<bool> {
        let conn = self.writer();
        Ok(conn.execute("DELETE FROM restores WHERE id = ?1", [id])? == 1)
    }

    pub fn restores_of(&self, backup_id: &str) -> Result<usize> {
        let conn = self.conn.lock();
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM restores WHERE backup_id = ?1",
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

/// Create the file (mode 0600 whatever the umask; SQLite gives its WAL and index the same mode) or
/// check that it can be opened, so a wrong owner or mode is reported with the path and the errno
/// instead of SQLite's "unable to open database file".
fn prepare_file(path: &Path) -> Result<()> {
    crate::sys::datadir::open_private(path)
        .map(drop)
        .map_err(Error::io(format!("opening the catalog {}", path.display())))
}

fn not_a_catalog(path: &Path, e: rusqlite::Error) -> Error {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) {
        return Error::Config(format!(
            "{} is not an SQLite database ({e}); move it away and run `sendense-hub catalog rebuild` to rebuild the catalog from the backups' manifests",
            path.display()
        ));
    }
    Error::Catalog(e)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let applied: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let applied = usize::try_from(applied).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(Error::Config(format!(
            "catalog schema version {applied} is newer than this binary knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "catalog migrated");
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
