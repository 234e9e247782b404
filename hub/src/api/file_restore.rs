//! `/api/v1/restore/...`: file-level restore in the old hub's routes and shapes (the Sendense
//! GUI's Restore page), and `GET /api/v1/backups/{id}/disks/{disk}/volumes` of our own.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery};
use crate::catalog::fmt_time;
use crate::restore::files::browse::{self, DEFAULT_LIMIT, FileEntry, FileList};
use crate::restore::files::download;
use crate::restore::files::mount::{Mount, MountRequest};
use crate::restore::files::stream::Format;
use crate::restore::files::volumes::Volume;
use crate::state::Hub;

/// A mount. No device or kernel mount is involved: the disk is read in process through its
/// QCOW2 chain. `mount_path` is where it is browsed (this API's path for it) and `nbd_device`
/// is empty; both are kept because the GUI reads them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MountInfo {
    pub mount_id: String,
    pub backup_id: String,
    /// The backup's disk (its `disk_id`), as `disk_index`.
    pub backup_disk_id: u32,
    pub disk_index: u32,
    pub mount_path: String,
    pub nbd_device: String,
    /// The readable filesystems' kinds, `,`-joined (`ext4`, `fat,ext4`), or `unknown`.
    pub filesystem_type: String,
    /// `mounted`: the disk is open and browsable until it expires or is deleted.
    pub status: &'static str,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// `last_accessed_at` plus the idle timeout: each listing or download moves it.
    #[schema(format = DateTime)]
    pub expires_at: String,
    #[schema(format = DateTime)]
    pub last_accessed_at: String,
    /// What the root lists: one directory per volume.
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MountList {
    pub mounts: Vec<MountInfo>,
    pub count: usize,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Unmounted {
    pub message: String,
    pub mount_id: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VolumeList {
    pub backup_id: String,
    pub disk_id: u32,
    pub volumes: Vec<Volume>,
}

/// The old hub's resource view; there are no devices, so the device fields count mounts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Resources {
    pub active_mounts: usize,
    pub max_mounts: usize,
    pub available_slots: usize,
    /// Always empty: no NBD device is used.
    pub allocated_devices: Vec<String>,
    /// Mounts that can still be opened (as `available_slots`).
    pub available_devices: usize,
    /// Mounts open, as a percentage of `max_mounts`.
    pub device_utilization_percent: f64,
}

/// The old hub's cleanup view; the two durations are in nanoseconds, as Go encoded them, and
/// again in seconds.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CleanupStatus {
    pub running: bool,
    pub cleanup_interval: u64,
    pub idle_timeout: u64,
    pub cleanup_interval_seconds: u64,
    pub idle_timeout_seconds: u64,
    pub active_mount_count: usize,
    pub expired_mount_count: usize,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FilesQuery {
    /// A path of the mount: `/`, `/partition-1`, `/partition-1/etc`. `..` never leaves the
    /// volume it is in.
    #[serde(default)]
    pub path: Option<String>,
    /// The whole tree below `path`, depth first.
    #[serde(default)]
    pub recursive: Option<bool>,
    /// Entries at most (default 100000, at most 1000000); past it the answer is `truncated`.
    #[serde(default)]
    pub limit: Option<usize>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PathQuery {
    pub path: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DirectoryQuery {
    #[serde(default)]
    pub path: Option<String>,
    /// `zip` (default) or `tar.gz`.
    #[serde(default)]
    pub format: Option<String>,
}

impl Hub {
    fn mount_info(&self, m: &Mount) -> MountInfo {
        MountInfo {
            mount_id: m.id.clone(),
            backup_id: m.backup_id.clone(),
            backup_disk_id: m.disk_id,
            disk_index: m.disk_id,
            mount_path: format!("/api/v1/restore/{}", m.id),
            nbd_device: String::new(),
            filesystem_type: m.filesystem_type(),
            status: "mounted",
            created_at: fmt_time(m.created_at),
            expires_at: fmt_time(self.mount_expires_at(m)),
            last_accessed_at: fmt_time(m.last_used()),
            volumes: m.volumes.clone(),
        }
    }
}

#[utoipa::path(post, path = "/api/v1/restore/mount", operation_id = "mount_backup", tag = "file-restore",
    request_body = MountRequest,
    responses((status = 200, description = "The backup's disk, open for browsing", body = MountInfo),
        (status = 404, description = "No such backup or disk", body = ErrorBody),
        (status = 409, description = "The backup is not completed, a prune is merging its chain, or max_mounts are open", body = ErrorBody),
        (status = 410, description = "The backup's files are gone from the repository", body = ErrorBody),
        (status = 422, description = "The disk's partition table cannot be read", body = ErrorBody)))]
pub async fn mount(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<MountRequest>,
) -> Result<Json<MountInfo>, ApiError> {
    let m = hub.mount_backup(req).await?;
    Ok(Json(hub.mount_info(&m)))
}

#[utoipa::path(get, path = "/api/v1/restore/mounts", operation_id = "list_mounts", tag = "file-restore",
    responses((status = 200, description = "Open mounts, oldest first", body = MountList)))]
pub async fn mounts(State(hub): State<Hub>) -> Json<MountList> {
    let mounts: Vec<MountInfo> = hub.mounts().iter().map(|m| hub.mount_info(m)).collect();
    Json(MountList {
        count: mounts.len(),
        mounts,
    })
}

#[utoipa::path(delete, path = "/api/v1/restore/{id}", operation_id = "unmount", tag = "file-restore",
    params(("id" = String, Path, description = "Mount id")),
    responses((status = 200, description = "Closed", body = Unmounted),
        (status = 404, description = "No such mount", body = ErrorBody)))]
pub async fn unmount(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<Unmounted>, ApiError> {
    hub.unmount(&id)?;
    Ok(Json(Unmounted {
        message: "unmounted".into(),
        mount_id: id,
    }))
}

#[utoipa::path(get, path = "/api/v1/restore/{id}/files", operation_id = "list_files", tag = "file-restore",
    params(("id" = String, Path, description = "Mount id"), FilesQuery),
    responses((status = 200, description = "The directory's entries (or the tree's, with `recursive`), by name", body = FileList),
        (status = 404, description = "No such mount, volume or path", body = ErrorBody),
        (status = 422, description = "The guest filesystem is damaged or not read here", body = ErrorBody)))]
pub async fn files(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<FilesQuery>,
) -> Result<Json<FileList>, ApiError> {
    let use_ = hub.use_mount(&id)?;
    let path = q.path.unwrap_or_else(|| "/".into());
    let list = browse::list(
        use_,
        path,
        q.recursive.unwrap_or(false),
        q.limit.unwrap_or(DEFAULT_LIMIT),
    )
    .await?;
    Ok(Json(list))
}

#[utoipa::path(get, path = "/api/v1/restore/{id}/file-info", operation_id = "file_info", tag = "file-restore",
    params(("id" = String, Path, description = "Mount id"), PathQuery),
    responses((status = 200, description = "The entry; a symlink is described with its target, not followed", body = FileEntry),
        (status = 404, description = "No such mount, volume or path", body = ErrorBody),
        (status = 422, description = "The guest filesystem is damaged or not read here", body = ErrorBody)))]
pub async fn file_info(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> Result<Json<FileEntry>, ApiError> {
    let use_ = hub.use_mount(&id)?;
    Ok(Json(browse::info(use_, q.path).await?))
}

#[utoipa::path(get, path = "/api/v1/restore/{id}/download", operation_id = "download_file", tag = "file-restore",
    params(("id" = String, Path, description = "Mount id"), PathQuery,
        ("Range" = Option<String>, Header, description = "One byte range (`bytes=A-B`, `bytes=A-`, `bytes=-N`)")),
    responses((status = 200, description = "The file (symlinks followed inside the guest only), or a zip of a directory", content_type = "application/octet-stream"),
        (status = 206, description = "The range asked for", content_type = "application/octet-stream"),
        (status = 404, description = "No such mount, volume or path", body = ErrorBody),
        (status = 416, description = "The range lies past the end of the file"),
        (status = 422, description = "The guest filesystem is damaged, the path is not a regular file, or a symlink loops", body = ErrorBody)))]
pub async fn download(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PathQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let use_ = hub.use_mount(&id)?;
    Ok(download::download(use_, q.path, &headers).await?)
}

#[utoipa::path(get, path = "/api/v1/restore/{id}/download-directory", operation_id = "download_directory", tag = "file-restore",
    params(("id" = String, Path, description = "Mount id"), DirectoryQuery),
    responses((status = 200, description = "The directory as an archive, empty directories and symlinks kept; files that could not be read are named in RESTORE-ERRORS.txt", content_type = "application/zip"),
        (status = 404, description = "No such mount, volume or path", body = ErrorBody),
        (status = 422, description = "The guest filesystem is damaged or not read here", body = ErrorBody)))]
pub async fn download_directory(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DirectoryQuery>,
) -> Result<Response, ApiError> {
    let format = Format::parse(q.format.as_deref())?;
    let use_ = hub.use_mount(&id)?;
    let path = q.path.unwrap_or_else(|| "/".into());
    Ok(download::download_directory(use_, path, format).await?)
}

#[utoipa::path(get, path = "/api/v1/restore/resources", operation_id = "mount_resources", tag = "file-restore",
    responses((status = 200, description = "Mounts open and the room left", body = Resources)))]
pub async fn resources(State(hub): State<Hub>) -> Json<Resources> {
    let active = hub.mounts().len();
    let max = hub.config.max_mounts;
    let free = max.saturating_sub(active);
    Json(Resources {
        active_mounts: active,
        max_mounts: max,
        available_slots: free,
        allocated_devices: Vec::new(),
        available_devices: free,
        device_utilization_percent: (active as f64 * 1000.0 / max as f64).round() / 10.0,
    })
}

#[utoipa::path(get, path = "/api/v1/restore/cleanup-status", operation_id = "mount_cleanup_status", tag = "file-restore",
    responses((status = 200, description = "How idle mounts are ended", body = CleanupStatus)))]
pub async fn cleanup_status(State(hub): State<Hub>) -> Json<CleanupStatus> {
    let interval = hub.config.monitor_interval;
    let idle = hub.config.mount_idle_timeout;
    Json(CleanupStatus {
        running: true,
        cleanup_interval: interval.as_nanos() as u64,
        idle_timeout: idle.as_nanos() as u64,
        cleanup_interval_seconds: interval.as_secs(),
        idle_timeout_seconds: idle.as_secs(),
        active_mount_count: hub.mounts().len(),
        expired_mount_count: hub.expired_mount_count(),
    })
}

#[utoipa::path(get, path = "/api/v1/backups/{id}/disks/{disk_id}/volumes", operation_id = "backup_disk_volumes", tag = "file-restore",
    params(("id" = String, Path, description = "Backup id"), ("disk_id" = u32, Path, description = "Disk id")),
    responses((status = 200, description = "The disk's partitions and filesystems: type, label, UUID, size and space", body = VolumeList),
        (status = 404, description = "No such backup or disk", body = ErrorBody),
        (status = 409, description = "The backup is not completed", body = ErrorBody),
        (status = 422, description = "The disk's partition table cannot be read", body = ErrorBody)))]
pub async fn volumes(
    State(hub): State<Hub>,
    Path((id, disk_id)): Path<(String, u32)>,
) -> Result<Json<VolumeList>, ApiError> {
    let volumes = hub.disk_volumes(&id, disk_id).await?;
    Ok(Json(VolumeList {
        backup_id: id,
        disk_id,
        volumes,
    }))
}
