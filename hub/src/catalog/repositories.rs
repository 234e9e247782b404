//! Repositories: where backups are stored.

use std::path::PathBuf;

use rusqlite::{OptionalExtension, params};

use super::conn::Catalog;
use super::model::*;
use super::rows::*;
use crate::error::{Error, Result};

impl Catalog {
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
}
