//! Which data dir owns a repository, and which paths may become one.
//!
//! The catalog names repositories by absolute path, so a data dir copied elsewhere (`cp -a`)
//! would go on using the original's directories, and its deletes would remove the original's
//! images. So each repository holds [`MARKER`], naming its owner: the random id in
//! `<data>/hub-id` (made at first start) and the data dir's canonical path. A copy keeps the id
//! but not the path; a new data dir made at the old path has a new id; either is another owner.
//!
//! A repository another data dir owns makes the hub refuse to start, changing nothing, with a
//! message naming both and the way out. Running without it instead would list backups the hub
//! must neither restore nor delete, and the mistake (a copy, a shared mount) is the operator's to
//! settle before anything else happens; at start, before any file is touched, is when nothing is
//! lost by stopping.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::DEFAULT_REPOSITORY;
use crate::catalog::{Catalog, Repository};
use crate::error::{Error, Result};

/// In every repository's root: who owns it.
pub const MARKER: &str = ".sendense-repository";
/// In the data dir: its identity.
pub const HUB_ID: &str = "hub-id";

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    hub_id: String,
    data_dir: PathBuf,
    repository_id: String,
}

/// The data dir's identity, made at first start.
fn hub_id(data: &Path) -> Result<String> {
    let path = data.join(HUB_ID);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("reading {}", path.display()))(e)),
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    write_atomic(data, HUB_ID, id.as_bytes())?;
    Ok(id)
}

/// `<dir>/<name>` replaced whole (temp, fsync, rename, fsync dir), mode 0600: a crash leaves no
/// torn marker that would refuse a repository for nothing.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    crate::sys::datadir::replace_private(&tmp, &path, bytes)
        .map_err(Error::io(format!("writing {}", path.display())))
}

/// The path with every symlink resolved, for the part that exists; the rest appended as given
/// (a `..` there is refused by the caller).
fn resolved(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        if let Ok(canonical) = existing.canonicalize() {
            return rest.iter().rev().fold(canonical, |p, c| p.join(c));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return path.to_owned(),
        }
    }
}

/// At start: the catalog's default repository is this data dir's own `repository`, and every
/// repository is this data dir's (a marker is written where none is: repositories made before
/// markers, or one not yet claimed).
pub(crate) fn check_repositories(catalog: &Catalog, data: &Path) -> Result<()> {
    let data_dir = resolved(data);
    let id = hub_id(data)?;
    let repos = catalog.local_repositories()?;
    if let Some(default) = repos.iter().find(|r| r.id == DEFAULT_REPOSITORY) {
        let (stored, ours) = (resolved(&default.path), resolved(&data.join("repository")));
        if stored != ours {
            return Err(Error::Conflict(format!(
                "the catalog's default repository is {}, but this data dir's is {}: the data dir \
                 was copied or moved, and its catalog still names the original's images. Nothing \
                 was changed. To use this data dir on its own, run `sendense-hub catalog rebuild` \
                 on it (it files the backups under {} again)",
                stored.display(),
                ours.display(),
                ours.display()
            )));
        }
    }
    for repo in &repos {
        // A default repository that is a real directory in the data dir (not a symlink out) is
        // this data dir's whatever its marker says: a copy carries the original's marker along.
        let inside =
            repo.id == DEFAULT_REPOSITORY && resolved(&repo.path) == data_dir.join("repository");
        if inside && repo.path.is_dir() {
            write_marker(repo, &data_dir, &id)?;
        } else if repo.path.is_dir() {
            claim(repo, &data_dir, &id)?;
        } else {
            // Not mounted, or gone: nothing is written where the disk may appear later; health
            // reports it.
            tracing::warn!(repository = %repo.id, path = %repo.path.display(), "repository missing");
        }
    }
    Ok(())
}

/// Write this data dir's marker into `repo`, or refuse it when another data dir owns it.
pub(crate) fn claim_repository(repo: &Repository, data: &Path) -> Result<()> {
    claim(repo, &resolved(data), &hub_id(data)?)
}

fn claim(repo: &Repository, data_dir: &Path, id: &str) -> Result<()> {
    let path = repo.path.join(MARKER);
    match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("reading {}", path.display()))(e)),
        Ok(bytes) => {
            let marker: Marker = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Conflict(format!(
                    "{} is not a repository marker ({e}); move it away if this repository is \
                     this hub's",
                    path.display()
                ))
            })?;
            if marker.hub_id != id || marker.data_dir != data_dir {
                return Err(Error::Conflict(format!(
                    "repository {:?} at {} belongs to the hub whose data dir is {} (hub id {}, \
                     says {}), not to this data dir {}: nothing was changed. If this data dir is \
                     a copy, move its catalog.db aside and run `sendense-hub catalog rebuild`, \
                     naming only its own repositories with --repository; if the data dir was \
                     moved and the old one is gone, delete {} and start again",
                    repo.id,
                    repo.path.display(),
                    marker.data_dir.display(),
                    marker.hub_id,
                    path.display(),
                    data_dir.display(),
                    path.display()
                )));
            }
            if marker.repository_id == repo.id {
                return Ok(());
            }
        }
    }
    write_marker(repo, data_dir, id)
}

fn write_marker(repo: &Repository, data_dir: &Path, id: &str) -> Result<()> {
    let marker = Marker {
        hub_id: id.to_owned(),
        data_dir: data_dir.to_owned(),
        repository_id: repo.id.clone(),
    };
    let text = serde_json::to_vec_pretty(&marker).map_err(|e| Error::Internal(e.to_string()))?;
    write_atomic(&repo.path, MARKER, &text)
}

/// Why `path` cannot be a new repository: the data dir (only the default repository lives
/// there), or equal to, inside or around an existing repository (rebuild would then file one's
/// backups under the other). Returns the path with its symlinks resolved, to be stored.
pub(crate) fn check_new_path(catalog: &Catalog, data: &Path, path: &Path) -> Result<PathBuf> {
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(Error::Invalid("path must not contain `..`".into()));
    }
    let path = resolved(path);
    let data_dir = resolved(data);
    if path == data_dir {
        return Err(Error::Invalid(format!(
            "{} is the hub's data dir; a repository must be outside it",
            path.display()
        )));
    }
    if path.starts_with(&data_dir) || data_dir.starts_with(&path) {
        let how = if path.starts_with(&data_dir) {
            "inside"
        } else {
            "around"
        };
        return Err(Error::Invalid(format!(
            "{} is {how} the hub's data dir {}, which holds only the default repository",
            path.display(),
            data_dir.display()
        )));
    }
    for repo in catalog.local_repositories()? {
        let theirs = resolved(&repo.path);
        let how = if path == theirs {
            "the path of"
        } else if path.starts_with(&theirs) {
            "inside"
        } else if theirs.starts_with(&path) {
            "around"
        } else {
            continue;
        };
        return Err(Error::Conflict(format!(
            "{} is {how} repository {:?} ({}); repositories must not overlap",
            path.display(),
            repo.id,
            theirs.display()
        )));
    }
    Ok(path)
}

/// `repos` without those overlapping an earlier one (the first listed wins: the default is
/// first), with why each was left out.
pub(crate) fn disjoint(repos: Vec<Repository>) -> (Vec<Repository>, Vec<(PathBuf, String)>) {
    let mut kept: Vec<(Repository, PathBuf)> = Vec::new();
    let mut left = Vec::new();
    for repo in repos {
        let path = resolved(&repo.path);
        match kept
            .iter()
            .find(|(_, p)| path.starts_with(p) || p.starts_with(&path))
        {
            Some((other, _)) => left.push((
                repo.path.clone(),
                format!(
                    "repository {:?} overlaps repository {:?}; not searched",
                    repo.id, other.id
                ),
            )),
            None => kept.push((repo, path)),
        }
    }
    (kept.into_iter().map(|(r, _)| r).collect(), left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_follows_symlinks_of_the_existing_part() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let canonical = real.canonicalize().unwrap();
        assert_eq!(
            resolved(&dir.path().join("link/a/b")),
            canonical.join("a/b")
        );
        assert_eq!(resolved(&dir.path().join("link")), canonical);
    }
}
