//! `/api/v1/repositories`.

use std::path::PathBuf;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use crate::api::views::{RepositoryView, repository_view};
use crate::catalog::Repository;
use crate::state::{Hub, now};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateRepository {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    id: String,
    #[serde(default)]
    name: Option<String>,
    /// Absolute; created when missing.
    #[schema(value_type = String)]
    path: PathBuf,
}

#[utoipa::path(get, path = "/api/v1/repositories", operation_id = "list_repositories", tag = "repositories",
    responses((status = 200, description = "Repositories with capacity and free bytes", body = crate::api::views::RepositoryList)))]
pub async fn list(State(hub): State<Hub>) -> Result<Json<serde_json::Value>, ApiError> {
    let repos: Vec<RepositoryView> = hub
        .catalog
        .repositories()?
        .iter()
        .map(repository_view)
        .collect();
    Ok(Json(serde_json::json!({ "repositories": repos })))
}

#[utoipa::path(post, path = "/api/v1/repositories", operation_id = "create_repository", tag = "repositories",
    request_body = CreateRepository,
    responses((status = 200, description = "The new repository", body = RepositoryView),
        (status = 400, description = "The path is the data dir, inside or around it, or cannot hold images", body = ErrorBody),
        (status = 409, description = "The id is taken, the path overlaps a repository, or another data dir owns it", body = ErrorBody)))]
pub async fn create(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<CreateRepository>,
) -> Result<Json<RepositoryView>, ApiError> {
    let id_ok = !req.id.is_empty()
        && req.id.len() <= 64
        && req
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !id_ok {
        return Err(ApiError::BadRequest(
            "id must be 1 to 64 of [A-Za-z0-9_-]".into(),
        ));
    }
    if !req.path.is_absolute() {
        return Err(ApiError::BadRequest("path must be absolute".into()));
    }
    // Checked before anything is created, on the path with its symlinks resolved, which is what
    // is stored.
    let path =
        crate::repo::ownership::check_new_path(&hub.catalog, &hub.config.data_dir, &req.path)?;
    std::fs::create_dir_all(&path)
        .map_err(|e| ApiError::BadRequest(format!("cannot create {}: {e}", path.display())))?;
    usable_directory(&path).map_err(|why| {
        ApiError::BadRequest(format!("{} cannot hold images: {why}", path.display()))
    })?;
    let repo = Repository {
        name: req.name.unwrap_or_else(|| req.id.clone()),
        id: req.id,
        path,
        created_at: now(),
    };
    crate::repo::ownership::claim_repository(&repo, &hub.config.data_dir)?;
    hub.catalog.insert_repository(&repo)?;
    tracing::info!(repository = %repo.id, path = %repo.path.display(), "repository added");
    Ok(Json(repository_view(&repo)))
}

/// Kernel filesystems that show processes or devices as files: nothing stored there is kept.
#[allow(clippy::unnecessary_cast)] // the magics are i64 or u32 depending on the target
const VIRTUAL_FILESYSTEMS: [(i64, &str); 9] = [
    (libc::PROC_SUPER_MAGIC as i64, "proc"),
    (libc::SYSFS_MAGIC as i64, "sysfs"),
    (libc::DEVPTS_SUPER_MAGIC as i64, "devpts"),
    (libc::CGROUP_SUPER_MAGIC as i64, "cgroup"),
    (libc::CGROUP2_SUPER_MAGIC as i64, "cgroup2"),
    (libc::DEBUGFS_MAGIC as i64, "debugfs"),
    (libc::TRACEFS_MAGIC as i64, "tracefs"),
    (libc::SECURITYFS_MAGIC as i64, "securityfs"),
    (libc::BPF_FS_MAGIC as i64, "bpf"),
];

/// Why `path` cannot hold images: not a directory, a kernel filesystem (`/proc/self`), or a
/// place where a regular file cannot be created and removed.
fn usable_directory(path: &std::path::Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("not a directory".into());
    }
    let fs = rustix::fs::statfs(path).map_err(|e| format!("statfs: {e}"))?;
    #[allow(clippy::unnecessary_cast)] // f_type is i64 or u32 depending on the target
    let kind = fs.f_type as i64;
    if let Some((_, name)) = VIRTUAL_FILESYSTEMS.iter().find(|(magic, _)| *magic == kind) {
        return Err(format!("it is on the kernel's {name} filesystem"));
    }
    let probe = path.join(format!(".sendense-probe-{}", uuid::Uuid::new_v4().simple()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|file| {
            let regular = file.metadata()?.is_file();
            drop(file);
            std::fs::remove_file(&probe)?;
            if regular {
                Ok(())
            } else {
                Err(std::io::Error::other(
                    "a new file there is not a regular file",
                ))
            }
        })
        .map_err(|e| format!("cannot create a file there: {e}"))
}
