//! The connection: opening the file (mode, WAL, migrations), and the writer through which every
//! change goes, so a full filesystem is named the same way everywhere.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use rusqlite::Connection;

use crate::error::{Error, Result};

/// The catalog's file in the data dir.
pub const CATALOG_FILE: &str = "catalog.sqlite";

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_sendense_flow.sql"),
    include_str!("../../migrations/0003_deletions.sql"),
    include_str!("../../migrations/0004_jobs.sql"),
    include_str!("../../migrations/0005_protection.sql"),
    include_str!("../../migrations/0006_execution_schedule.sql"),
    include_str!("../../migrations/0007_retention.sql"),
    include_str!("../../migrations/0008_verify.sql"),
    include_str!("../../migrations/0009_repository_description.sql"),
    include_str!("../../migrations/0010_s3_copies.sql"),
];

pub struct Catalog {
    pub(super) conn: Mutex<Connection>,
    path: PathBuf,
}

/// SQLite says "database or disk is full" for ENOSPC (and for a full quota).
pub fn is_disk_full(err: &rusqlite::Error) -> bool {
    err.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
}

/// The connection as the methods that change the catalog use it: a full filesystem becomes
/// [`Error::NoSpace`] naming the catalog file, so callers can free space or answer 507.
pub(super) struct Writer<'a> {
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
    pub(super) fn execute<P: rusqlite::Params>(&self, sql: &str, params: P) -> Result<usize> {
        self.conn.execute(sql, params).map_err(at_path(self.path))
    }

    pub(super) fn transaction(&mut self) -> Result<WriterTx<'_>> {
        let path = self.path;
        let tx = self.conn.transaction().map_err(at_path(path))?;
        Ok(WriterTx { tx, path })
    }
}

pub(super) struct WriterTx<'a> {
    tx: rusqlite::Transaction<'a>,
    path: &'a Path,
}

impl WriterTx<'_> {
    pub(super) fn execute<P: rusqlite::Params>(&self, sql: &str, params: P) -> Result<usize> {
        self.tx.execute(sql, params).map_err(at_path(self.path))
    }

    /// The transaction for reading: the checks a change depends on (who uses a row, which group
    /// holds a VM) then see exactly what the change will be applied to.
    pub(super) fn read(&self) -> &Connection {
        &self.tx
    }

    pub(super) fn commit(self) -> Result<()> {
        self.tx.commit().map_err(at_path(self.path))
    }
}

impl Catalog {
    /// The result of a write made without [`Writer`] (the inventory's transactions), with a full
    /// filesystem named as [`Writer`] names it.
    pub(super) fn written<T>(&self, result: Result<T>) -> Result<T> {
        result.map_err(|err| match err {
            Error::Catalog(e) => at_path(&self.path)(e),
            other => other,
        })
    }

    pub(super) fn writer(&self) -> Writer<'_> {
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
