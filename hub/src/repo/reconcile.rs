//! Catalog and repository kept in step: each backup's manifest follows its catalog row, and at
//! start the two are compared before anything is changed.
//!
//! Nothing is removed because the catalog does not know it. A manifest the catalog lacks, or one
//! further along than the catalog's row, means the catalog is empty, missing or older than the
//! repository: the hub refuses to start and says to run `sendense-hub catalog rebuild`. The only
//! directories removed are interrupted creations: a manifest saying `creating`, written before this
//! process started, and no catalog row (no client ever saw its exports: they are handed out only
//! after the row exists); or a directory holding nothing but a manifest's temp file.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::repo::layout;
use crate::repo::manifest::{self, Manifest, Phase};
use crate::state::Hub;

/// Serialises manifest writes (read the row, write the file), so an older state never
/// overwrites a newer one.
static WRITING: parking_lot::Mutex<()> = parking_lot::const_mutex(());

/// A directory of a repository that can hold a backup: `<repository>/<vm>/<id>`.
pub(crate) struct BackupDir {
    pub path: PathBuf,
    pub id: String,
}

/// Every `<vm>/<id>` directory of a repository that holds a manifest or is named like a backup
/// (none in quarantine: [`layout::QUARANTINE_DIR`]).
pub(crate) fn backup_dirs(repository: &Path) -> std::io::Result<Vec<BackupDir>> {
    let mut out = Vec::new();
    let vms = match std::fs::read_dir(repository) {
        Ok(v) => v,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for vm in vms {
        let vm = vm?;
        if !vm.file_type()?.is_dir() || vm.file_name() == layout::QUARANTINE_DIR {
            continue;
        }
        for entry in std::fs::read_dir(vm.path())? {
            let entry = entry?;
            let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            // A manifest makes a backup directory whatever its name; without one, only the
            // name can say it was meant to be one.
            let is_dir = entry.file_type()?.is_dir();
            if is_dir
                && (layout::is_backup_id(&id) || layout::manifest_path(&entry.path()).exists())
            {
                out.push(BackupDir {
                    path: entry.path(),
                    id,
                });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// What the start-time comparison decided for one directory.
enum Action {
    /// An interrupted creation: remove it.
    Remove(PathBuf, &'static str),
    /// The catalog is ahead of (or has no) manifest: write it from the catalog.
    Rewrite(String),
}

/// Compare every repository with the catalog. Refuses (changing nothing) when the catalog is
/// behind; otherwise removes interrupted creations and brings manifests up to the catalog.
pub(crate) fn check_catalog(
    catalog: &Catalog,
    catalog_path: &Path,
    data_dir: &Path,
    started: OffsetDateTime,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut actions = Vec::new();
    // Deleted, files still going (see `removal::finish_deletion`): not a backup any more.
    let deleting: std::collections::HashSet<String> = catalog
        .pending_deletions()?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    for repo in catalog.local_repositories()? {
        let dirs = match backup_dirs(&repo.path) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(repository = %repo.id, path = %repo.path.display(), error = %e,
                    "repository not readable; its backups not checked against the catalog");
                continue;
            }
        };
        for dir in dirs.into_iter().filter(|d| !deleting.contains(&d.id)) {
            compare(catalog, dir, started, &mut problems, &mut actions)?;
        }
    }
    if !problems.is_empty() {
        return Err(Error::CatalogBehind(behind(
            &problems,
            catalog_path,
            data_dir,
        )));
    }
    Ok(carry_out(actions))
}

/// Compare one directory with its catalog row: a problem if the catalog is behind it, else what
/// (if anything) to do to it.
fn compare(
    catalog: &Catalog,
    dir: BackupDir,
    started: OffsetDateTime,
    problems: &mut Vec<String>,
    actions: &mut Vec<Action>,
) -> Result<()> {
    let known = catalog.backup_status(&dir.id)?;
    let shown = dir.path.display();
    match (manifest::read(&dir.path), known) {
        (Ok(Some(m)), None) if m.status == Phase::Creating && m.created_at < started => {
            actions.push(Action::Remove(dir.path, "interrupted creation"));
        }
        (Ok(Some(m)), None) => problems.push(format!(
            "{shown}: backup {} of VM {:?} ({}) is not in the catalog",
            m.backup_id,
            m.vm_name,
            m.status.as_str()
        )),
        (Ok(Some(m)), Some(Ok(_))) => match catalog.backup(&dir.id) {
            Ok(Some(b)) if m.ahead_of(&b) => problems.push(format!(
                "{shown}: the catalog says backup {} is {}, its manifest says {}",
                b.id,
                b.status.as_str(),
                m.status.as_str()
            )),
            Ok(Some(b)) if m != Manifest::of(&b) => actions.push(Action::Rewrite(b.id)),
            _ => {}
        },
        (Ok(Some(_)), Some(Err(_))) => {} // an unreadable row: reported by the catalog
        (Ok(None), Some(_)) => actions.push(Action::Rewrite(dir.id)),
        (Ok(None), None) if holds_only_temp_files(&dir.path) => {
            actions.push(Action::Remove(
                dir.path,
                "creation interrupted before its manifest",
            ));
        }
        (Ok(None), None) => {
            problems.push(format!("{shown}: not in the catalog and holds no manifest"))
        }
        (Err(e), Some(_)) => {
            tracing::warn!(path = %shown, error = %e, "unreadable manifest; rewritten from the catalog");
            actions.push(Action::Rewrite(dir.id));
        }
        (Err(e), None) => problems.push(format!(
            "{shown}: not in the catalog, and its manifest is unreadable: {e}"
        )),
    }
    Ok(())
}

/// Why the hub refuses to start: the first few `problems`, and how to rebuild the catalog.
fn behind(problems: &[String], catalog_path: &Path, data_dir: &Path) -> String {
    let shown = problems.len().min(5);
    let mut msg = format!(
        "the catalog {} is empty, missing or older than the repository ({} backup director{} it does not account for):\n  {}",
        catalog_path.display(),
        problems.len(),
        if problems.len() == 1 { "y" } else { "ies" },
        problems[..shown].join("\n  ")
    );
    if problems.len() > shown {
        msg.push_str(&format!("\n  and {} more", problems.len() - shown));
    }
    msg.push_str(&format!(
        "\nNothing was changed. Stop every hub using this data dir and run `sendense-hub catalog rebuild --data-dir {}` to rebuild the catalog from the backups' manifests; it moves each directory it cannot file into `{}` in its repository (nothing is deleted), so the next start proceeds.",
        data_dir.display(),
        layout::QUARANTINE_DIR
    ));
    msg
}

/// Remove the interrupted creations; the ids whose manifests are to be rewritten.
fn carry_out(actions: Vec<Action>) -> Vec<String> {
    let mut rewrite = Vec::new();
    for action in actions {
        match action {
            Action::Remove(path, why) => match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    tracing::warn!(path = %path.display(), why, "removed an unfinished backup directory");
                    if let Some(vm) = path.parent() {
                        // The VM's directory goes too if that emptied it.
                        let _ = std::fs::remove_dir(vm);
                    }
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e,
                    "cannot remove an unfinished backup directory"),
            },
            Action::Rewrite(id) => rewrite.push(id),
        }
    }
    rewrite
}

/// Whether `dir` holds nothing, or only a manifest's temp file.
fn holds_only_temp_files(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.into_iter().all(|e| {
        e.is_ok_and(|e| {
            e.file_type().is_ok_and(|t| t.is_file())
                && e.file_name() == layout::manifest_temp_path(Path::new("")).as_os_str()
        })
    })
}

impl Hub {
    /// Write a backup's manifest from its catalog row (after every change of that row). A
    /// failure is logged: the manifest then lags the catalog, which the next start repairs.
    pub(crate) async fn sync_manifest(&self, id: &str) {
        let hub = self.clone();
        let id = id.to_owned();
        let done = tokio::task::spawn_blocking(move || hub.write_manifest(&id)).await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(%err, "manifest not updated; the next start rewrites it")
            }
            Err(err) => tracing::warn!(%err, "manifest task"),
        }
    }

    pub(crate) fn write_manifest(&self, id: &str) -> Result<()> {
        let _one_at_a_time = WRITING.lock();
        let Some(backup) = self.catalog.backup(id)? else {
            return Ok(());
        };
        let Some(dir) = layout::dir_of_backup(&backup) else {
            return Ok(());
        };
        if !dir.is_dir() {
            // Cancelled or deleted: the directory went with its images.
            return Ok(());
        }
        manifest::write(dir, &Manifest::of(&backup)).map_err(Error::io(format!(
            "writing {}",
            layout::manifest_path(dir).display()
        )))
    }
}
