//! Repositories: where backups are stored.

use std::path::PathBuf;

use rusqlite::{OptionalExtension, params};

use super::conn::Catalog;
use super::model::*;
use super::rows::*;
use crate::error::{Error, Result};

impl Catalog {
    pub fn insert_repository(&self, repo: &Repository) -> Result<()> {
        self.insert_repository_sealed(repo, None)
    }

    /// With the repository's sealed secret (an S3 repository's secret access key).
    pub fn insert_repository_sealed(&self, repo: &Repository, sealed: Option<&[u8]>) -> Result<()> {
        let s3_config = repo
            .s3
            .as_ref()
            .map(|s| serde_json::to_string(s).expect("S3 settings serialise"));
        let kind = if repo.s3.is_some() { "s3" } else { "local" };
        let conn = self.writer();
        let inserted = conn.execute(
            "INSERT INTO repositories (id, name, path, created_at, description, kind, s3_config, \
             secret_sealed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING",
            params![
                repo.id,
                repo.name,
                repo.path.to_string_lossy(),
                fmt_time(repo.created_at),
                repo.description,
                kind,
                s3_config,
                sealed,
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
                &format!("SELECT {COLUMNS} FROM repositories WHERE id = ?1"),
                [id],
                repository_row,
            )
            .optional()?)
    }

    pub fn repositories(&self) -> Result<Vec<Repository>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM repositories ORDER BY id"))?;
        let repos = stmt
            .query_map([], repository_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(repos)
    }

    /// The repositories that are directories on this host (not S3 buckets): what the disk
    /// walkers (ownership, reconcile, health, metrics) look at.
    pub fn local_repositories(&self) -> Result<Vec<Repository>> {
        let mut all = self.repositories()?;
        all.retain(|r| r.s3.is_none());
        Ok(all)
    }

    /// The repository's sealed secret, if it has one.
    pub fn repository_secret(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let conn = self.conn.lock();
        Ok(conn
            .query_row(
                "SELECT secret_sealed FROM repositories WHERE id = ?1",
                [id],
                |row| row.get::<_, Option<Vec<u8>>>(0),
            )
            .optional()?
            .flatten())
    }

    /// Every repository secret, as `(repository id, sealed)`.
    pub fn repository_secrets(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(
            "SELECT id, secret_sealed FROM repositories WHERE secret_sealed IS NOT NULL ORDER BY id",
        )?;
        let all = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(all)
    }

    /// Backup rows of every status stored in the repository: what keeps it from being removed.
    pub fn repository_backup_count(&self, id: &str) -> Result<u64> {
        let conn = self.conn.lock();
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM backups WHERE repository_id = ?1",
            [id],
            |row| row.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    /// Removes the row, refused (`Conflict`) while a backup, a flow or a policy names the
    /// repository: the foreign keys say so, and the message says who.
    pub fn delete_repository(&self, id: &str) -> Result<bool> {
        let conn = self.writer();
        match conn.execute("DELETE FROM repositories WHERE id = ?1", [id]) {
            Ok(n) => Ok(n > 0),
            Err(Error::Catalog(e))
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) =>
            {
                Err(Error::Conflict(format!(
                    "repository {id:?} is still used by a backup, a copy, a protection flow or a policy"
                )))
            }
            Err(e) => Err(e),
        }
    }
}

const COLUMNS: &str = "id, name, path, created_at, description, s3_config";

fn repository_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Repository> {
    Ok(Repository {
        id: row.get(0)?,
        name: row.get(1)?,
        path: PathBuf::from(row.get::<_, String>(2)?),
        created_at: parse_time(&row.get::<_, String>(3)?)?,
        description: row.get(4)?,
        s3: match row.get::<_, Option<String>>(5)? {
            None => None,
            Some(json) => Some(serde_json::from_str(&json).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, e.into())
            })?),
        },
    })
}
