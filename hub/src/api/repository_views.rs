//! Repositories as the API shows them: our fields (`path`, `capacity_bytes`, `free_bytes`) and
//! the old Sendense hub's, which the GUI reads (`type`, `enabled`, `config`, `storage_info`,
//! `backup_count`; `app/repositories/page.tsx`, `CreateFlowModal.tsx`).

use serde::Serialize;

use crate::catalog::{Repository, fmt_time};
use crate::error::Result;
use crate::repo::manage::{Capacity, Place, place_of};
use crate::state::{Hub, now};

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RepositoryView {
    pub id: String,
    pub name: String,
    pub path: String,
    pub created_at: String,
    /// The filesystem's size; null when it cannot be read.
    pub capacity_bytes: Option<u64>,
    /// What can still be written there; null when it cannot be read.
    pub free_bytes: Option<u64>,
    /// `local` or `s3`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always true: the hub has no disabled repositories.
    pub enabled: bool,
    /// Always false: the hub does not make images immutable.
    pub is_immutable: bool,
    pub config: RepositoryConfigView,
    /// Null when the filesystem cannot be read.
    pub storage_info: Option<StorageInfo>,
    /// The GUI's card turns "warning" above 85 % from `storage.used_percentage`.
    pub storage: Option<StorageUse>,
    /// Backups of every status stored there.
    pub backup_count: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RepositoryConfigView {
    /// The directory; for an S3 repository `s3://<bucket>/<prefix>`.
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// An S3 repository's settings as given, all but the secret access key (never shown); the
    /// fields are absent for a local repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
}

/// The repository's filesystem, read when the answer was made (there is no cache to refresh).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StorageInfo {
    pub total_bytes: u64,
    /// In use on the filesystem by anything, not only by backups.
    pub used_bytes: u64,
    pub available_bytes: u64,
    pub used_percent: f64,
    pub backup_count: u64,
    /// When the figures were read: now.
    pub last_check_at: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StorageUse {
    pub used_percentage: f64,
}

/// `GET /repositories/{id}/storage`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RepositoryStorage {
    pub repository_id: String,
    #[serde(flatten)]
    pub info: StorageInfo,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RepositoryList {
    /// Always true (a failure is an error answer); the GUI requires it.
    pub success: bool,
    pub repositories: Vec<RepositoryView>,
    pub total: usize,
}

/// `POST /repositories`: the repository's own fields at the top (our clients) and under
/// `repository` (the old hub's answer).
#[derive(Serialize, utoipa::ToSchema)]
pub struct RepositoryCreated {
    pub success: bool,
    #[serde(flatten)]
    pub view: RepositoryView,
    pub repository: RepositoryView,
    /// An S3 repository: the copies its bucket already held, now in the catalog.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adopted_copies: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Rescanned {
    pub success: bool,
    pub adopted_copies: usize,
}

/// A test's verdict: a failed test is still a 200, with `success: false`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RepositoryTest {
    pub success: bool,
    pub message: String,
    /// Why it failed (the GUI shows `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_details: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<TestedStorage>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestedStorage {
    pub total_bytes: u64,
    pub available_bytes: u64,
    /// A file was created and removed there (for a path that does not exist yet: in its
    /// nearest existing parent).
    pub writable: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StorageRefreshed {
    pub success: bool,
    pub message: String,
    pub refreshed_count: usize,
    pub failed_count: usize,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RepositoryDeleted {
    pub success: bool,
    pub message: String,
    pub id: String,
}

pub fn storage_info(cap: &Capacity, backup_count: u64) -> StorageInfo {
    StorageInfo {
        total_bytes: cap.total_bytes,
        used_bytes: cap.used_bytes,
        available_bytes: cap.available_bytes,
        used_percent: cap.used_percent(),
        backup_count,
        last_check_at: fmt_time(now()),
    }
}

pub fn tested(cap: Option<Capacity>, message: String) -> RepositoryTest {
    RepositoryTest {
        success: true,
        message,
        error: None,
        error_details: None,
        storage: cap.map(|cap| TestedStorage {
            total_bytes: cap.total_bytes,
            available_bytes: cap.available_bytes,
            writable: true,
        }),
    }
}

pub fn failed_test(why: String) -> RepositoryTest {
    RepositoryTest {
        success: false,
        message: format!("test failed: {why}"),
        error: Some(why),
        error_details: None,
        storage: None,
    }
}

impl Hub {
    pub fn repository_view(&self, r: &Repository) -> Result<RepositoryView> {
        let backup_count = self.catalog.repository_backup_count(&r.id)?;
        // A bucket has no size to read: its figures stay null.
        let (kind, cap, s3) = match place_of(r) {
            Place::Local(path) => ("local", Capacity::of(path).ok(), None),
            Place::S3(s) => ("s3", None, Some(s)),
        };
        Ok(RepositoryView {
            id: r.id.clone(),
            name: r.name.clone(),
            path: r.path.display().to_string(),
            created_at: fmt_time(r.created_at),
            capacity_bytes: cap.map(|c| c.total_bytes),
            free_bytes: cap.map(|c| c.available_bytes),
            kind: kind.into(),
            enabled: true,
            is_immutable: false,
            config: RepositoryConfigView {
                path: r.path.display().to_string(),
                description: r.description.clone(),
                endpoint: s3.map(|s| s.endpoint.clone()),
                region: s3.map(|s| s.region.clone()),
                bucket: s3.map(|s| s.bucket.clone()),
                prefix: s3.map(|s| s.prefix.clone()),
                access_key_id: s3.map(|s| s.access_key_id.clone()),
                path_style: s3.map(|s| s.path_style),
            },
            storage_info: cap.map(|c| storage_info(&c, backup_count)),
            storage: cap.map(|c| StorageUse {
                used_percentage: c.used_percent(),
            }),
            backup_count,
        })
    }
}
