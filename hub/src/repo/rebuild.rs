//! `sendense-hub catalog rebuild`: a new catalog from the manifests in the repositories.
//!
//! The old catalog file (if any) is kept beside the new one, renamed, never deleted. Repositories
//! come from the old catalog when it can still be read, plus the default repository and any named
//! on the command line; backups from
//! the manifests found in them, parents before children; what no manifest holds (credentials, VM
//! contexts, protection objects) is copied from the old catalog when it can be read. What cannot
//! be rebuilt or carried over is reported. The only change in the repositories: a backup
//! directory that cannot be filed is moved into its repository's quarantine
//! ([`layout::QUARANTINE_DIR`]), so the next start, which refuses a directory the catalog does not
//! account for, proceeds instead of asking for another rebuild that would change nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::catalog::CATALOG_FILE;
use crate::catalog::{CarriedOver, Catalog, Repository};
use crate::error::{Error, Result};
use crate::repo::layout;
use crate::repo::manifest::{self, Manifest, Phase};
use crate::repo::reconcile::backup_dirs;
use crate::repo::{DEFAULT_REPOSITORY, default_repository_path};
use crate::state::now;

#[derive(Debug, Default)]
pub struct RebuildReport {
    /// Where the previous catalog was moved, if there was one.
    pub old_catalog: Option<PathBuf>,
    pub repositories: usize,
    pub backups: usize,
    /// Interrupted creations, left for the next start to remove.
    pub interrupted: Vec<PathBuf>,
    /// Directories that could not be rebuilt, and why.
    pub skipped: Vec<(PathBuf, String)>,
    /// Skipped backup directories moved into quarantine: from, to. A skipped backup directory
    /// not here could not be moved; its entry in `skipped` says why.
    pub quarantined: Vec<(PathBuf, PathBuf)>,
    /// Backups filed under the VM their directory names, not the one their manifest names:
    /// the directory, the manifest's name, the name used.
    pub renamed: Vec<(PathBuf, String, String)>,
    /// Credentials, VM contexts and protection objects taken from the old catalog.
    pub carried: Carried,
}

/// What became of the rows no manifest holds (credentials, VM contexts, protection objects).
#[derive(Debug, Default)]
pub enum Carried {
    /// There was no old catalog to take them from.
    #[default]
    NoOldCatalog,
    /// The old catalog could not be read or copied, and why; nothing of it came over.
    Lost(String),
    Over(CarriedOver),
}

/// `extra`: repositories outside the data dir, as `(id, path)`, for when the old catalog that
/// listed them is gone.
pub fn rebuild_catalog(data_dir: &Path, extra: &[(String, PathBuf)]) -> Result<RebuildReport> {
    let catalog_path = data_dir.join(CATALOG_FILE);
    let mut report = RebuildReport::default();
    let (repos, overlapping) =
        super::ownership::disjoint(repositories(data_dir, &catalog_path, extra)?);
    report.skipped.extend(overlapping);
    // Whole repositories left out stay where they are; what is skipped from here on is a
    // backup directory of a repository searched.
    let first_backup_dir = report.skipped.len();
    report.old_catalog = move_aside(data_dir, &catalog_path)?;
    let catalog = Catalog::open(&catalog_path)?;

    let mut found: Vec<(PathBuf, Manifest)> = Vec::new();
    for repo in &repos {
        catalog.insert_repository(repo)?;
        report.repositories += 1;
        found.extend(manifests(repo, &mut report)?);
    }
    insert_backups(&catalog, found, &mut report);
    quarantine(&mut report, first_backup_dir);
    // After the repositories, so policies and flows whose repository is gone can be told apart.
    if let Some(old) = &report.old_catalog {
        report.carried = match catalog.carry_over(old) {
            Ok(over) => Carried::Over(over),
            Err(e) => Carried::Lost(e.to_string()),
        };
    }
    Ok(report)
}

/// The repositories to search: the old catalog's, then `extra` (moving any of the same id),
/// and the default repository (always this data dir's) first.
fn repositories(
    data_dir: &Path,
    catalog_path: &Path,
    extra: &[(String, PathBuf)],
) -> Result<Vec<Repository>> {
    let mut repos = old_repositories(catalog_path);
    for (id, path) in extra {
        let path = std::path::absolute(path)
            .map_err(Error::io(format!("resolving {}", path.display())))?;
        // A repository the old catalog knew keeps its name and description at its new path.
        match repos.iter_mut().find(|r| r.id == *id) {
            Some(known) => known.path = path,
            None => repos.push(Repository {
                id: id.clone(),
                name: id.clone(),
                path,
                created_at: now(),
                description: None,
                s3: None,
            }),
        }
    }
    // The default repository is this data dir's own, whatever an old catalog (a copy's) says,
    // and first, so that a repository overlapping it is the one left out.
    let old_default = repos.iter().position(|r| r.id == DEFAULT_REPOSITORY);
    let mut default = match old_default {
        Some(at) => repos.remove(at),
        None => Repository {
            id: DEFAULT_REPOSITORY.into(),
            name: DEFAULT_REPOSITORY.into(),
            path: PathBuf::new(),
            created_at: now(),
            description: None,
            s3: None,
        },
    };
    default.path = default_repository_path(data_dir)?;
    repos.insert(0, default);
    Ok(repos)
}

/// Rename the old catalog (with its WAL files) beside the new one; where it went, if it existed.
fn move_aside(data_dir: &Path, catalog_path: &Path) -> Result<Option<PathBuf>> {
    if !catalog_path.exists() {
        return Ok(None);
    }
    let moved = reserve_kept_name(data_dir)?;
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", catalog_path.display()));
        let to = PathBuf::from(format!("{}{suffix}", moved.display()));
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(format!(
                    "moving {} to {}",
                    from.display(),
                    to.display()
                ))(e));
            }
        }
    }
    Ok(Some(moved))
}

/// A name for the kept catalog that no file has: created empty with `create_new` (so two rebuilds
/// in one instant cannot both take it), and the rename then replaces only this placeholder. Names
/// whose WAL files exist are passed over, as the rename would replace those.
fn reserve_kept_name(data_dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let base = format!(
        "{CATALOG_FILE}.before-rebuild-{}.{:09}",
        stamp.as_secs(),
        stamp.subsec_nanos()
    );
    // A counter for the same nanosecond (a coarse clock); a thousand taken names is no accident.
    for n in 0..1000 {
        let name = if n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let path = data_dir.join(&name);
        let wal_taken = ["-wal", "-shm"].iter().any(|s| {
            data_dir
                .join(format!("{name}{s}"))
                .symlink_metadata()
                .is_ok()
        });
        if wal_taken {
            continue;
        }
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match created {
            Ok(_) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(format!("creating {}", path.display()))(e)),
        }
    }
    Err(Error::io(format!(
        "finding a free name beside {}",
        data_dir.join(base).display()
    ))(std::io::ErrorKind::AlreadyExists.into()))
}

/// The manifests of `repo`'s backup directories; interrupted creations and directories that
/// cannot be rebuilt go to `report`.
fn manifests(repo: &Repository, report: &mut RebuildReport) -> Result<Vec<(PathBuf, Manifest)>> {
    let dirs = backup_dirs(&repo.path).map_err(Error::io(format!(
        "reading repository {}",
        repo.path.display()
    )))?;
    let mut found = Vec::new();
    for dir in dirs {
        match manifest::read(&dir.path) {
            Ok(Some(m)) if m.status == Phase::Creating => report.interrupted.push(dir.path),
            Ok(Some(mut m)) => {
                // The directory says which repository and which VM it is in, whatever the file
                // claims: a manifest naming another VM would put these images in that VM's
                // chain, as the parent of its next incremental and in its restores.
                m.repository_id = repo.id.clone();
                if let Some(vm) = vm_of_dir(&dir.path)
                    && layout::safe_name(&m.vm_name) != vm
                {
                    report
                        .renamed
                        .push((dir.path.clone(), m.vm_name.clone(), vm.clone()));
                    m.vm_name = vm;
                    // The context was the other VM's.
                    m.vm_context_id = None;
                }
                found.push((dir.path, m));
            }
            Ok(None) => report.skipped.push((
                dir.path,
                "no manifest (move it out of the repository)".into(),
            )),
            Err(e) => report
                .skipped
                .push((dir.path, format!("unreadable manifest: {e}"))),
        }
    }
    Ok(found)
}

/// The VM directory's name of a backup directory (`<repository>/<vm>/<id>`).
fn vm_of_dir(dir: &Path) -> Option<String> {
    Some(dir.parent()?.file_name()?.to_str()?.to_owned())
}

/// Move every skipped backup directory (`report.skipped[from..]`) into its repository's
/// quarantine, keeping its VM directory's name; a directory that cannot be moved stays, with why
/// in its entry (the next start then names it).
fn quarantine(report: &mut RebuildReport, from: usize) {
    for (dir, why) in &mut report.skipped[from..] {
        match move_to_quarantine(dir) {
            Ok(to) => report.quarantined.push((dir.clone(), to)),
            Err(e) => why.push_str(&format!(
                "; could not be moved into quarantine ({e}): move it out of the repository"
            )),
        }
    }
}

/// Rename `dir` to its [`layout::quarantine_path`] (a `-<n>` suffix when that is taken), and
/// remove its VM directory if that emptied it. A rename: nothing is copied or deleted.
fn move_to_quarantine(dir: &Path) -> std::io::Result<PathBuf> {
    let invalid = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not <repository>/<vm>/<id>",
        )
    };
    let target = layout::quarantine_path(dir).ok_or_else(invalid)?;
    let parent = target.parent().ok_or_else(invalid)?;
    std::fs::create_dir_all(parent)?;
    for made in [parent.parent().unwrap_or(parent), parent] {
        crate::sys::datadir::private_dir(made).map_err(std::io::Error::other)?;
    }
    for n in 0..1000 {
        let to = if n == 0 {
            target.clone()
        } else {
            PathBuf::from(format!("{}-{n}", target.display()))
        };
        if to.symlink_metadata().is_ok() {
            continue;
        }
        std::fs::rename(dir, &to)?;
        if let Some(vm) = dir.parent() {
            let _ = std::fs::remove_dir(vm);
        }
        return Ok(to);
    }
    Err(std::io::ErrorKind::AlreadyExists.into())
}

/// Insert the backups of `found` into the catalog; what fails, or whose parent never got in or
/// is another VM's or another repository's, is reported as skipped.
fn insert_backups(
    catalog: &Catalog,
    mut found: Vec<(PathBuf, Manifest)>,
    report: &mut RebuildReport,
) {
    // Parents first: each pass inserts the backups whose parent is in (or none). Each inserted
    // id with its VM and repository.
    let mut inserted: HashMap<String, (String, String)> = HashMap::new();
    found.sort_by_key(|(_, m)| m.created_at);
    loop {
        let before = found.len();
        let mut waiting = Vec::new();
        for (dir, m) in found {
            let parent = m.parent_backup_id.as_ref().map(|p| (p, inserted.get(p)));
            let theirs = match parent {
                Some((_, None)) => {
                    waiting.push((dir, m));
                    continue;
                }
                Some((p, Some((vm, repo)))) if *vm != m.vm_name || *repo != m.repository_id => {
                    Some(format!(
                        "its parent backup {p} is of VM {vm:?} in repository {repo:?}, not of VM {:?} in {:?}",
                        m.vm_name, m.repository_id
                    ))
                }
                _ => None,
            };
            if let Some(why) = theirs {
                report.skipped.push((dir, why));
                continue;
            }
            match m.to_backup(&dir) {
                Ok(backup) => match catalog.insert_backup(&backup) {
                    Ok(()) => {
                        let owner = (backup.vm_name.clone(), backup.repository_id.clone());
                        inserted.insert(backup.id, owner);
                        report.backups += 1;
                    }
                    Err(e) => report.skipped.push((dir, e.to_string())),
                },
                Err(why) => report.skipped.push((dir, why)),
            }
        }
        found = waiting;
        if found.is_empty() || found.len() == before {
            break;
        }
    }
    for (dir, m) in found {
        let parent = m.parent_backup_id.unwrap_or_default();
        report.skipped.push((
            dir,
            format!("its parent backup {parent} could not be rebuilt"),
        ));
    }
}

/// The repositories the previous catalog lists, if it can still be read, with what the
/// operator gave them (name, description) and when they were made: no file on disk holds those.
/// A catalog older than the description column (migration 0009) gives none.
fn old_repositories(path: &Path) -> Vec<Repository> {
    if !path.exists() {
        return Vec::new();
    }
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let read = || -> rusqlite::Result<Vec<Repository>> {
        let conn = rusqlite::Connection::open_with_flags(path, flags)?;
        let described = conn
            .prepare("SELECT description FROM repositories LIMIT 0")
            .is_ok();
        // S3 repositories hold copies, not backups a rebuild walks; they come back with "bring
        // back" from their buckets, not from here.
        let kinds = conn
            .prepare("SELECT kind FROM repositories LIMIT 0")
            .is_ok();
        let sql = if kinds {
            "SELECT id, name, path, created_at, description FROM repositories WHERE kind = 'local' \
             ORDER BY id"
        } else if described {
            "SELECT id, name, path, created_at, description FROM repositories ORDER BY id"
        } else {
            "SELECT id, name, path, created_at, NULL FROM repositories ORDER BY id"
        };
        let mut stmt = conn.prepare(sql)?;
        stmt.query_map([], |row| {
            let created_at = row.get::<_, String>(3)?;
            Ok(Repository {
                id: row.get(0)?,
                name: row.get(1)?,
                path: PathBuf::from(row.get::<_, String>(2)?),
                // A time the old catalog cannot give back is today's, as for a new repository.
                created_at: crate::catalog::parse_time(&created_at).unwrap_or_else(|_| now()),
                description: row.get(4)?,
                s3: None,
            })
        })?
        .collect()
    };
    match read() {
        Ok(repos) => repos,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e,
                "previous catalog unreadable; only the default repository is searched");
            Vec::new()
        }
    }
}
