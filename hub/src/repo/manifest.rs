//! The manifest each backup directory holds: what the catalog knows about that backup, in a
//! small JSON file next to its images, so the repository alone can rebuild the catalog.
//!
//! Written atomically (temp file, fsync, rename, fsync the directory) at creation and after every
//! change of the backup's catalog row; the catalog is written first, so a manifest is at most one
//! change behind the catalog, never ahead of it. A manifest ahead of the catalog means the catalog
//! is older than the repository (see [`crate::repo::reconcile`]). Export names are left out: they are
//! capabilities of one process, not facts of the backup.

use std::path::Path;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::catalog::{Backup, BackupType, Disk, Status};
use crate::repo::layout;

/// Bumped when a reader of an older version could misread a newer file.
pub const FORMAT: u32 = 1;

/// A backup's status as the manifest records it: the catalog's statuses plus `creating`, the
/// state of a directory whose catalog row does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Creating,
    Ready,
    Running,
    Finalizing,
    Completed,
    Failed,
    Cancelled,
}

impl Phase {
    pub fn status(self) -> Option<Status> {
        Some(match self {
            Phase::Creating => return None,
            Phase::Ready => Status::Ready,
            Phase::Running => Status::Running,
            Phase::Finalizing => Status::Finalizing,
            Phase::Completed => Status::Completed,
            Phase::Failed => Status::Failed,
            Phase::Cancelled => Status::Cancelled,
        })
    }

    /// How far along the lifecycle; every final status is as far as it goes.
    fn rank(self) -> u8 {
        match self {
            Phase::Creating => 0,
            Phase::Ready => 1,
            Phase::Running => 2,
            Phase::Finalizing => 3,
            Phase::Completed | Phase::Failed | Phase::Cancelled => 4,
        }
    }

    /// Whether a catalog in state `self` cannot have produced a manifest in state `manifest`:
    /// the manifest went further, or both are final and differ.
    pub fn behind(self, manifest: Phase) -> bool {
        self.rank() < manifest.rank()
            || (self.rank() == 4 && manifest.rank() == 4 && self != manifest)
    }

    pub fn as_str(self) -> &'static str {
        match self.status() {
            Some(s) => s.as_str(),
            None => "creating",
        }
    }
}

impl From<Status> for Phase {
    fn from(s: Status) -> Phase {
        match s {
            Status::Ready => Phase::Ready,
            Status::Running => Phase::Running,
            Status::Finalizing => Phase::Finalizing,
            Status::Completed => Phase::Completed,
            Status::Failed => Phase::Failed,
            Status::Cancelled => Phase::Cancelled,
            // What the hub saw of the files, not a step of the backup's life: the manifest (if
            // its directory is still there) keeps `completed`, so files found back match it.
            Status::Missing => Phase::Completed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub backup_id: String,
    pub vm_name: String,
    pub repository_id: String,
    pub backup_type: BackupType,
    pub parent_backup_id: Option<String>,
    pub status: Phase,
    pub error: Option<String>,
    pub tags: Option<serde_json::Value>,
    /// The Sendense policy and VM context of the backup (absent in older manifests).
    #[serde(default)]
    pub policy_id: Option<String>,
    #[serde(default)]
    pub vm_context_id: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub protected: bool,
    /// The newest verify (absent in older manifests: never verified).
    #[serde(default)]
    pub verify_state: crate::catalog::VerifyState,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub verified_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub verify_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
    /// Without their paths and export names (see [`Disk`]).
    pub disks: Vec<Disk>,
}

impl Manifest {
    /// The manifest of a directory whose images are being made (no catalog row yet).
    pub fn creating(
        backup_id: &str,
        vm_name: &str,
        repository_id: &str,
        backup_type: BackupType,
        parent_backup_id: Option<&str>,
        created_at: OffsetDateTime,
    ) -> Manifest {
        Manifest {
            format: FORMAT,
            backup_id: backup_id.to_owned(),
            vm_name: vm_name.to_owned(),
            repository_id: repository_id.to_owned(),
            backup_type,
            parent_backup_id: parent_backup_id.map(str::to_owned),
            status: Phase::Creating,
            error: None,
            tags: None,
            policy_id: None,
            vm_context_id: None,
            protected: false,
            verify_state: Default::default(),
            verified_at: None,
            verify_error: None,
            note: None,
            created_at,
            started_at: None,
            completed_at: None,
            disks: Vec::new(),
        }
    }

    pub fn of(b: &Backup) -> Manifest {
        Manifest {
            format: FORMAT,
            backup_id: b.id.clone(),
            vm_name: b.vm_name.clone(),
            repository_id: b.repository_id.clone(),
            backup_type: b.backup_type,
            parent_backup_id: b.parent_backup_id.clone(),
            status: b.status.into(),
            // A missing backup's error says what the hub saw missing; the manifest keeps
            // `completed`, which has none.
            error: (b.status != Status::Missing)
                .then(|| b.error.clone())
                .flatten(),
            tags: b.tags.clone(),
            policy_id: b.policy_id.clone(),
            vm_context_id: b.vm_context_id.clone(),
            protected: b.protected,
            verify_state: b.verify_state,
            verified_at: b.verified_at,
            verify_error: b.verify_error.clone(),
            note: b.note.clone(),
            created_at: b.created_at,
            started_at: b.started_at,
            completed_at: b.completed_at,
            disks: b
                .disks
                .iter()
                .map(|d| Disk {
                    export_name: String::new(),
                    qcow2_path: Default::default(),
                    ..d.clone()
                })
                .collect(),
        }
    }

    /// Whether the catalog's record of the backup is behind this manifest.
    pub fn ahead_of(&self, catalog: &Backup) -> bool {
        let phase = Phase::from(catalog.status);
        if phase.behind(self.status) {
            return true;
        }
        // A disk's `complete` reached the manifest only after the catalog recorded it.
        self.disks
            .iter()
            .any(|m| m.completed && catalog.disk(m.disk_id).is_none_or(|d| !d.completed))
    }

    /// The catalog record this manifest describes, with its images in `dir` and fresh export
    /// names. Refuses a manifest that does not match where it lies.
    pub fn to_backup(&self, dir: &Path) -> Result<Backup, String> {
        if self.format > FORMAT {
            return Err(format!(
                "manifest format {} is newer than this binary reads ({FORMAT})",
                self.format
            ));
        }
        let Some(status) = self.status.status() else {
            return Err("creation was interrupted (status creating)".into());
        };
        if dir.file_name().and_then(|n| n.to_str()) != Some(self.backup_id.as_str()) {
            return Err(format!(
                "manifest names backup {} but lies in {}",
                self.backup_id,
                dir.display()
            ));
        }
        if self.disks.is_empty() {
            return Err("manifest lists no disks".into());
        }
        let mut disks = self.disks.clone();
        for d in &mut disks {
            d.qcow2_path = layout::disk_path(dir, d.disk_id);
            d.export_name = layout::backup_export_name(&self.vm_name, d.disk_id);
            if status != Status::Cancelled && !d.qcow2_path.is_file() {
                return Err(format!(
                    "disk {}: image {} is missing",
                    d.disk_id,
                    d.qcow2_path.display()
                ));
            }
        }
        Ok(Backup {
            id: self.backup_id.clone(),
            vm_name: self.vm_name.clone(),
            repository_id: self.repository_id.clone(),
            backup_type: self.backup_type,
            parent_backup_id: self.parent_backup_id.clone(),
            status,
            error: self.error.clone(),
            tags: self.tags.clone(),
            telemetry: None,
            created_at: self.created_at,
            started_at: self.started_at,
            completed_at: self.completed_at,
            last_telemetry_at: None,
            policy_id: self.policy_id.clone(),
            vm_context_id: self.vm_context_id.clone(),
            protected: self.protected,
            verify_state: self.verify_state,
            verified_at: self.verified_at,
            verify_error: self.verify_error.clone(),
            note: self.note.clone(),
            disks,
        })
    }
}

/// Reads `<dir>/manifest.json`; `Ok(None)` when there is none.
pub fn read(dir: &Path) -> std::io::Result<Option<Manifest>> {
    let path = layout::manifest_path(dir);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Replaces `<dir>/manifest.json` atomically and durably: a crash leaves the old or the new
/// file, never a torn one. Mode 0600 whatever the umask.
pub fn write(dir: &Path, manifest: &Manifest) -> std::io::Result<()> {
    let path = layout::manifest_path(dir);
    let tmp = layout::manifest_temp_path(dir);
    let text = serde_json::to_vec_pretty(manifest).map_err(std::io::Error::other)?;
    crate::sys::datadir::replace_private(&tmp, &path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_order() {
        assert!(Phase::Ready.behind(Phase::Completed));
        assert!(Phase::Failed.behind(Phase::Completed));
        assert!(!Phase::Completed.behind(Phase::Running));
        assert!(!Phase::Completed.behind(Phase::Completed));
        assert!(!Phase::Ready.behind(Phase::Creating));
    }

    #[test]
    fn written_atomically_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let m = Manifest::creating(
            "id",
            "vm",
            "default",
            BackupType::Full,
            None,
            OffsetDateTime::now_utc(),
        );
        assert!(read(dir.path()).unwrap().is_none());
        write(dir.path(), &m).unwrap();
        let back = read(dir.path()).unwrap().unwrap();
        assert_eq!(back, m);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["manifest.json"]);
        std::fs::write(layout::manifest_path(dir.path()), b"{").unwrap();
        assert!(read(dir.path()).is_err());
    }
}
