//! Records kept in the catalog.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupType {
    Full,
    Incremental,
}

impl BackupType {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Incremental => "incremental",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "full" => Some(BackupType::Full),
            "incremental" => Some(BackupType::Incremental),
            _ => None,
        }
    }
}

/// ready (exports open) -> running (first connection) -> finalizing -> completed;
/// or failed / cancelled. completed <-> missing: a completed backup whose files (or its
/// parent's) are gone from the repository, found at a start or by a restore; a start that finds
/// them back makes it completed again (see `repo::presence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ready,
    Running,
    Finalizing,
    Completed,
    Failed,
    Cancelled,
    Missing,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Ready,
        Status::Running,
        Status::Finalizing,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
        Status::Missing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ready => "ready",
            Status::Running => "running",
            Status::Finalizing => "finalizing",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Missing => "missing",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Exports exist (or are being drained) for a backup in this state.
    pub fn is_active(self) -> bool {
        matches!(self, Status::Ready | Status::Running | Status::Finalizing)
    }
}

/// The outcome of a backup's newest verify.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VerifyState {
    /// Never verified.
    #[default]
    None,
    Ok,
    /// A corruption was found in the backup or its chain: it is never the base of a new
    /// incremental.
    Failed,
}

impl VerifyState {
    pub const ALL: [VerifyState; 3] = [VerifyState::None, VerifyState::Ok, VerifyState::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            VerifyState::None => "none",
            VerifyState::Ok => "ok",
            VerifyState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        VerifyState::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

#[derive(Debug, Clone)]
pub struct Repository {
    pub id: String,
    pub name: String,
    pub path: PathBuf,
    pub created_at: OffsetDateTime,
    /// The operator's words about it (the GUI's `config.description`).
    pub description: Option<String>,
    /// Where an `s3` repository's objects are; `None` for a local directory (`path`). For an S3
    /// repository `path` is `s3://<bucket>/<prefix>`, for people only.
    pub s3: Option<S3Settings>,
}

/// An S3 repository's settings, all but the secret access key (sealed apart, never shown).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct S3Settings {
    /// `http(s)://host[:port]`.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Keys start with `<prefix>/` (no leading or trailing slash; may be empty).
    #[serde(default)]
    pub prefix: String,
    pub access_key_id: String,
    /// `https://host/bucket/key` rather than `https://bucket.host/key`.
    #[serde(default)]
    pub path_style: bool,
}

#[derive(Debug, Clone)]
pub struct Backup {
    pub id: String,
    pub vm_name: String,
    pub repository_id: String,
    pub backup_type: BackupType,
    pub parent_backup_id: Option<String>,
    /// The Sendense policy that asked for this backup, when the request named one.
    pub policy_id: Option<String>,
    pub status: Status,
    pub error: Option<String>,
    pub tags: Option<serde_json::Value>,
    pub telemetry: Option<serde_json::Value>,
    pub created_at: OffsetDateTime,
    pub started_at: Option<OffsetDateTime>,
    pub completed_at: Option<OffsetDateTime>,
    /// When the client's telemetry last came (its body is `telemetry`).
    pub last_telemetry_at: Option<OffsetDateTime>,
    /// The VM context the disks came from (`None` when the request listed them).
    pub vm_context_id: Option<String>,
    /// Protected by an operator: never pruned, never deleted until unprotected.
    pub protected: bool,
    /// The newest verify of the backup and its chain (`hub::verify`).
    pub verify_state: VerifyState,
    pub verified_at: Option<OffsetDateTime>,
    /// The first failure of the newest verify: backup, disk, guest offset, what.
    pub verify_error: Option<String>,
    /// Why the backup is a full when an incremental was asked (its base failed verify).
    pub note: Option<String>,
    /// In the order the request listed them.
    pub disks: Vec<Disk>,
}

impl Backup {
    pub fn disk(&self, disk_id: u32) -> Option<&Disk> {
        self.disks.iter().find(|d| d.disk_id == disk_id)
    }
}

/// Serialised into the backup's manifest without the two facts of the place and the process: the
/// image path (the manifest's directory and `repo::layout::disk_path` give it) and the export name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    pub disk_id: u32,
    pub vmware_disk_key: i64,
    pub capacity_bytes: u64,
    #[serde(skip)]
    pub export_name: String,
    #[serde(skip)]
    pub qcow2_path: PathBuf,
    /// The client reported this disk complete.
    pub completed: bool,
    pub change_id: Option<String>,
    pub bytes_transferred: Option<u64>,
    /// Bytes the NBD server received for this disk (recorded when finalised).
    pub bytes_written: u64,
    /// Host size of the image file once finalised.
    pub image_size: Option<u64>,
    /// BLAKE3 (hex) of the disk's digests file `disk<N>.digests`, written at finalise (see
    /// `hub::repo::digests`); none before, and for backups older than verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digests_blake3: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone)]
pub struct Restore {
    pub id: String,
    pub backup_id: String,
    pub disk_id: u32,
    pub export_name: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// The S3 repository whose copy is read; `None`: the backup's own repository.
    pub repository_id: Option<String>,
}

/// Filters of `GET /api/v1/backups` (and of its stats): unknown values are refused by serde.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BackupFilter {
    pub vm_name: Option<String>,
    pub repository_id: Option<String>,
    pub status: Option<Status>,
    pub backup_type: Option<BackupType>,
}
