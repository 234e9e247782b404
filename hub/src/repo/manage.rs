//! Adding, testing and removing repositories, and what their filesystems hold.
//!
//! A repository's kind is a [`Location`]: a local directory, or an S3 bucket (which holds
//! copies only, see `s3`). Each operation matches on it, so a new kind is a new variant whose
//! arms the compiler asks for.

use std::path::{Path, PathBuf};

use super::DEFAULT_REPOSITORY;
use super::s3::{self, Bucket, Patience};
use crate::catalog::{Repository, S3Settings};
use crate::error::{Error, Result};
use crate::state::{Hub, now};
use crate::sys::secrets::Secret;

/// Where a repository keeps its backups.
#[derive(Debug, Clone)]
pub enum Location {
    /// A directory on this host (absolute; created when missing).
    Local { path: PathBuf },
    /// A bucket and prefix on an S3-compatible store; copies only.
    S3 {
        settings: S3Settings,
        secret: Secret,
    },
}

impl Location {
    /// The GUI's and the old hub's word for the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Location::Local { .. } => "local",
            Location::S3 { .. } => "s3",
        }
    }
}

/// Where a stored repository is, without its secret.
#[derive(Debug, Clone)]
pub enum Place<'a> {
    Local(&'a Path),
    S3(&'a S3Settings),
}

pub fn place_of(repo: &Repository) -> Place<'_> {
    match &repo.s3 {
        Some(s) => Place::S3(s),
        None => Place::Local(&repo.path),
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

/// Whether keys under one prefix can be keys under the other ("" holds every key).
fn prefixes_overlap(a: &str, b: &str) -> bool {
    let under = |x: &str, y: &str| x.is_empty() || y == x || y.starts_with(&format!("{x}/"));
    under(a, b) || under(b, a)
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
        let (path, s3, sealed) = match &new.location {
            Location::Local { path } => (self.prepare_local(path, true)?, None, None),
            Location::S3 { settings, secret } => {
                let settings = self.prepare_s3(settings, secret).await?;
                let sealed = self.key()?.seal_repository_secret(&id, secret.expose());
                (
                    PathBuf::from(s3::display(&settings)),
                    Some(settings),
                    Some(sealed),
                )
            }
        };
        let repo = Repository {
            name: new
                .name
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| id.clone()),
            id,
            path,
            created_at: now(),
            description: new.description.filter(|d| !d.trim().is_empty()),
            s3,
        };
        if repo.s3.is_none() {
            super::ownership::claim_repository(&repo, &self.config.data_dir)?;
        }
        self.catalog
            .insert_repository_sealed(&repo, sealed.as_deref())?;
        tracing::info!(repository = %repo.id, path = %repo.path.display(), "repository added");
        Ok(repo)
    }

    /// The settings checked and the bucket probed (listed, a probe object written and
    /// removed): wrong credentials, a missing bucket or an unreachable endpoint are said now.
    async fn prepare_s3(&self, settings: &S3Settings, secret: &Secret) -> Result<S3Settings> {
        if secret.is_empty() {
            return Err(Error::Invalid(
                "config.secret_access_key is required".into(),
            ));
        }
        let settings = s3::checked(settings.clone())?;
        let overlapping = self.catalog.repositories()?.into_iter().find(|r| {
            r.s3.as_ref().is_some_and(|o| {
                o.endpoint == settings.endpoint
                    && o.bucket == settings.bucket
                    && prefixes_overlap(&o.prefix, &settings.prefix)
            })
        });
        if let Some(other) = overlapping {
            return Err(Error::Conflict(format!(
                "repository {:?} already uses {}: two repositories may not share keys",
                other.id,
                s3::display(other.s3.as_ref().expect("found by its settings"))
            )));
        }
        let bucket = Bucket::open(&settings, secret, Patience::Interactive)?;
        bucket.probe().await.map_err(Error::Invalid)?;
        Ok(settings)
    }

    /// The repository's bucket, its secret opened with the credential key.
    pub fn bucket_of(&self, repo: &Repository, patience: Patience) -> Result<Bucket> {
        let Some(settings) = &repo.s3 else {
            return Err(Error::Invalid(format!(
                "repository {:?} is a local directory, not an S3 bucket",
                repo.id
            )));
        };
        let sealed = self.catalog.repository_secret(&repo.id)?.ok_or_else(|| {
            Error::Unavailable(format!("repository {:?} has no secret stored", repo.id))
        })?;
        let secret = self
            .key()?
            .open_repository_secret(&repo.id, &sealed)
            .map_err(|err| {
                Error::Unavailable(format!(
                    "the secret of repository {:?} does not open: {err}",
                    repo.id
                ))
            })?;
        Bucket::open(settings, &secret, patience)
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
    /// An S3 location has no capacity to tell (`None`).
    pub async fn test_location(&self, location: &Location) -> Result<Option<Capacity>> {
        let path = match location {
            Location::Local { path } => path,
            Location::S3 { settings, secret } => {
                self.prepare_s3(settings, secret).await?;
                return Ok(None);
            }
        };
        let path = self.prepare_local(path, false)?;
        let at = path
            .ancestors()
            .find(|p| p.exists())
            .unwrap_or(Path::new("/"));
        Capacity::of(at)
            .map(Some)
            .map_err(|e| Error::Invalid(format!("statvfs {}: {e}", at.display())))
    }

    /// Can the repository hold images now? Its directory is probed by creating a file; a
    /// bucket by listing it and writing a probe object.
    pub async fn test_repository(&self, id: &str) -> Result<Option<Capacity>> {
        let repo = self.repository_or_404(id)?;
        let path = match place_of(&repo) {
            Place::Local(path) => path.to_owned(),
            Place::S3(_) => {
                let bucket = self.bucket_of(&repo, Patience::Interactive)?;
                bucket.probe().await.map_err(Error::Invalid)?;
                return Ok(None);
            }
        };
        super::probe::usable_directory(&path).map_err(|why| {
            Error::Invalid(format!("{} cannot hold images: {why}", path.display()))
        })?;
        Capacity::of(&path)
            .map(Some)
            .map_err(|e| Error::Invalid(format!("statvfs {}: {e}", path.display())))
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
        let copies = self.catalog.repository_copy_count(id)?;
        if copies > 0 {
            return Err(Error::Conflict(format!(
                "repository {id:?} holds {copies} copy(ies) of backups: delete them first"
            )));
        }
        if !self.catalog.delete_repository(id)? {
            return Err(Error::NotFound(format!("no repository {id:?}")));
        }
        let Place::Local(path) = place_of(&repo) else {
            tracing::info!(repository = %id, location = %repo.path.display(), "repository removed");
            return Ok(repo);
        };
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
