//! The repository on disk: where backups live (`layout`), their images (`images`: create, open,
//! close off the async threads), the manifest beside them (`manifest`), taking a backup directory
//! off the disk (`removal`), the start-time comparison of catalog and disk (`reconcile`), the
//! catalog rebuilt from manifests (`rebuild`), whether completed backups' files are still there
//! (`presence`), the repositories' health (`health`), who owns each and which paths may become
//! one (`ownership`), adding, testing and removing one (`manage`, kinds as `manage::Location`)
//! and whether a directory can hold images (`probe`).
//!
//! It knows the catalog's records and the files; it knows nothing of NBD, the SNA or HTTP, and
//! does not decide when a backup is made or removed (the `backup` room does). S3 repositories will
//! sit here.

pub mod digests;
pub mod health;
pub(crate) mod images;
pub mod layout;
pub mod limits;
pub mod manage;
pub mod manifest;
pub mod object_lock;
pub mod ownership;
pub(crate) mod presence;
pub(crate) mod probe;
pub mod rebuild;
pub(crate) mod reconcile;
pub(crate) mod removal;
pub mod s3;

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::catalog::{Catalog, Repository};
use crate::error::{Error, Result};

/// The repository every data dir has, at `<data dir>/repository`.
pub const DEFAULT_REPOSITORY: &str = "default";

/// `<data dir>/repository`, absolute. The default repository is always this data dir's own: a
/// catalog naming another is refused at start (`ownership::check_repositories`).
pub fn default_repository_path(data: &Path) -> Result<PathBuf> {
    std::path::absolute(data.join("repository"))
        .map_err(Error::io("resolving the default repository path"))
}

pub(crate) fn ensure_default_repository(catalog: &Catalog, data: &Path) -> Result<()> {
    if catalog.repository(DEFAULT_REPOSITORY)?.is_some() {
        return Ok(());
    }
    let path = default_repository_path(data)?;
    std::fs::create_dir_all(&path).map_err(Error::io(format!("creating {}", path.display())))?;
    crate::sys::datadir::private_dir(&path)?;
    catalog.insert_repository(&Repository {
        id: DEFAULT_REPOSITORY.into(),
        name: DEFAULT_REPOSITORY.into(),
        path,
        created_at: OffsetDateTime::now_utc(),
        description: None,
        s3: None,
    })
}
