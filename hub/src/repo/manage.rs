//! Adding, testing and removing repositories, and what their filesystems hold.
//!
//! A repository's kind is a [`Location`]: today only a local directory. Each operation matches
//! on it, so a new kind (S3) is a new variant whose arms the compiler asks for.

use std::path::{Path, PathBuf};

use super::DEFAULT_REPOSITORY;
use crate::catalog::Repository;
use crate::error::{Error, Result};
use crate::state::{Hub, now};

/// Where a repository keeps its backups.
#[derive(Debug, Clone)]
pub enum Location {
    /// A directory on this host (absolute; created when missing).
    Local { path: PathBuf },
}

impl Location {
    /// The GUI's and the old hub's word for the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Location::Local { .. } => "local",
        }
    }
}

/// What the hub knows of the repository's kind: every row today is a local directory.
pub fn location_of(repo: &Repository) -> Location {
    Location::Local {
        path: repo.path.clone(),
    }
}

/// A repository to add. `id` is made (`repo-<kind>-<n>`) when not given.
#[derive(Debug)]
pub struct NewRepository {
    pub id: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub location: Location,
}

/// The filesystem under a repository, as `statvfs` sees it when asked.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub total_bytes: u64,
    /// Blocks in use on the filesystem, by anything (not only backups).
    pub used_bytes: u64,
    /// What an unprivileged writer can still use.
    pub available_bytes: u64,
}

impl Capacity {
    pub fn of(path: &Path) -> std::io::Result<Capacity> {
        let s = rustix::fs::statvfs(path)?;
        let total = s.f_blocks.saturating_mul(s.f_frsize);
        let free = s.f_bfree.saturating_mul(s.f_frsize);
        Ok(Capacity {
            total_bytes: total,
            used_bytes: total.saturating_sub(free),
            available_bytes: s.f_bavail.saturating_mul(s.f_frsize),
        })
    }

    /// Used over total, in percent with one decimal.
    pub fn used_percent(&self) -> f64 {
        if self.total_bytes == 0 {
            return 0.0;
        }
        let p = self.used_bytes as f64 * 100.0 / self.total_bytes as f64;
        (p * 10.0).round() / 10.0
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Hub {
    /// Checks the location, creates it, marks it ours, then records it. Under `ops`, so a made
    /// id is not taken by a concurrent add between the choice and the insert.
    pub async fn add_repository(&self, new: NewRepository) -> Result<Repository> {
        let _ops = self.ops.lock().await;
        let id = match new.id {
            Some(id) if valid_id(&id) => id,
            Some(_) => return Err(Error::Invalid("id must be 1 to 64 of [A-Za-z0-9_-]".into())),
            None => self.free_id(new.location.kind())?,
        };
        let Location::Local { path } = &new.location;
        let path = self.prepare_local(path, true)?;
        let repo = Repository {
            name: new
                .name
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| id.clone()),
            id,
            path,
            created_at: now(),
            description: new.description.filter(|d| !d.trim().is_empty()),
        };
        super::ownership::claim_repository(&repo, &self.config.data_dir)?;
        self.catalog.insert_repository(&repo)?;
        tracing::info!(repository = %repo.id, path = %repo.path.display(), "repository added");
        Ok(repo)
    }

    /// `repo-<kind>-<n>`, the smallest `n` not taken.
    fn free_id(&self, kind: &str) -> Result<String> {
        let taken: Vec<String> = self
            .catalog
            .repositories()?
            .into_iter()
            .map(|r| r.id)
            .collect();
        Ok((1u64..)
            .map(|n| format!("repo-{kind}-{n}"))
            .find(|id| !taken.contains(id))
            .expect("an unbounded range has a free id"))
    }

    /// The path with its symlinks resolved (what is stored), once the ownership rules allow it
    /// and it can hold images. With `create`, a missing directory is made; without, its nearest
    /// existing parent is what is checked, and nothing is changed.
    fn prepare_local(&self, path: &Path, create: bool) -> Result<PathBuf> {
        if !path.is_absolute() {
            return Err(Error::Invalid("path must be absolute".into()));
        }
        let path = super::ownership::check_new_path(&self.catalog, &self.config.data_dir, path)?;
        let probe_at = if create {
            std::fs::create_dir_all(&path)
                .map_err(|e| Error::Invalid(format!("cannot create {}: {e}", path.display())))?;
            path.clone()
        } else {
            path.ancestors()
                .find(|p| p.exists())
                .unwrap_or(Path::new("/"))
                .to_owned()
        };
        super::probe::usable_directory(&probe_at).map_err(|why| {
            Error::Invalid(format!("{} cannot hold images: {why}", probe_at.display()))
        })?;
        Ok(path)
    }

    /// Would [`Hub::add_repository`] accept this location? Nothing is created or recorded.
    pub fn test_location(&self, location: &Location) -> Result<Capacity> {
        let Location::Local { path } = location;
        let path = self.prepare_local(path, false)?;
        let at = path
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(Path::new("/"));
        Capacity::of(at).map_err(|e| Error::Invalid(format!("statvfs {}: {e}", at.display())))
    }

    /// Can the repository hold images now? Its directory is probed by creating a file.
    pub fn test_repository(&self, id: &str) -> Result<Capacity> {
        let repo = self.repository_or_404(id)?;
        let Location::Local { path } = location_of(&repo);
        super::probe::usable_directory(&path).map_err(|why| {
            Error::Invalid(format!("{} cannot hold images: {why}", path.display()))
        })?;
        Capacity::of(&path).map_err(|e| Error::Invalid(format!("statvfs {}: {e}", path.display())))
    }

    /// Forgets a repository no backup, flow or policy uses, and takes its ownership marker
    /// away so the directory may be added again. Its directory and anything else in it stay.
    pub async fn remove_repository(&self, id: &str) -> Result<Repository> {
        let _ops = self.ops.lock().await;
        let repo = self.repository_or_404(id)?;
        if repo.id == DEFAULT_REPOSITORY {
            return Err(Error::Conflict(
                "the default repository is the data dir's own and cannot be removed".into(),
            ));
        }
        let backups = self.catalog.repository_backup_count(id)?;
        if backups > 0 {
            return Err(Error::Conflict(format!(
                "repository {id:?} holds {backups} backup(s): delete them first"
            )));
        }
        if !self.catalog.delete_repository(id)? {
            return Err(Error::NotFound(format!("no repository {id:?}")));
        }
        let Location::Local { path } = location_of(&repo);
        let marker = path.join(super::ownership::MARKER);
        match std::fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // The row is gone; a marker left behind only makes a later add of this path refuse
            // with a message naming the file, so it is said here and not undone.
            Err(e) => {
                tracing::warn!(path = %marker.display(), error = %e, "repository marker left")
            }
        }
        tracing::info!(repository = %id, path = %path.display(), "repository removed");
        Ok(repo)
    }

    pub fn repository_or_404(&self, id: &str) -> Result<Repository> {
        self.catalog
            .repository(id)?
            .ok_or_else(|| Error::NotFound(format!("no repository {id:?}")))
    }
}
