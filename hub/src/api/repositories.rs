//! `/api/v1/repositories`: our `{id, path, name?}` and the GUI's `{name, type, enabled,
//! is_immutable, config: {path, description?}}` both create one.

use std::path::PathBuf;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use super::repository_views::*;
use crate::catalog::S3Settings;
use crate::error::Error;
use crate::repo::manage::{Capacity, Location, NewRepository, Place, place_of};
use crate::state::Hub;
use crate::sys::secrets::Secret;

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct CreateRepository {
    /// Made as `repo-<type>-<n>` when absent.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    /// Absolute; created when missing. Or `config.path`.
    #[schema(value_type = Option<String>)]
    #[serde(default)]
    path: Option<PathBuf>,
    /// `local` (the default) or `s3` (copies only); other kinds are refused.
    #[serde(default, rename = "type")]
    kind: Option<String>,
    /// Only true: the hub has no disabled repositories.
    #[serde(default)]
    enabled: Option<bool>,
    /// Only false.
    #[serde(default)]
    is_immutable: Option<bool>,
    #[serde(default)]
    config: Option<RepositoryConfig>,
}

/// Read from a JSON object only: serde's derive would also take an array of the fields' values
/// (`[null, null]`), which the schema says is no repository config.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "serde_json::Map<String, serde_json::Value>")]
pub struct RepositoryConfig {
    /// A local repository's directory.
    #[schema(value_type = Option<String>)]
    path: Option<PathBuf>,
    description: Option<String>,
    /// An S3 repository: `http(s)://host[:port]`.
    endpoint: Option<String>,
    /// `us-east-1` when absent.
    region: Option<String>,
    bucket: Option<String>,
    /// Keys go under `<prefix>/`.
    prefix: Option<String>,
    access_key_id: Option<String>,
    /// Sealed at rest with the credential key; never shown again.
    #[schema(value_type = Option<String>, format = Password, write_only)]
    secret_access_key: Option<Secret>,
    /// Path-style requests (`host/bucket/key`); most self-hosted stores want true.
    path_style: Option<bool>,
}

#[derive(Deserialize)]
struct ConfigFields {
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    bucket: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    access_key_id: Option<String>,
    #[serde(default)]
    secret_access_key: Option<Secret>,
    #[serde(default)]
    path_style: Option<bool>,
}

impl TryFrom<serde_json::Map<String, serde_json::Value>> for RepositoryConfig {
    type Error = serde_json::Error;

    fn try_from(map: serde_json::Map<String, serde_json::Value>) -> Result<Self, Self::Error> {
        let f: ConfigFields = serde_json::from_value(serde_json::Value::Object(map))?;
        Ok(RepositoryConfig {
            path: f.path,
            description: f.description,
            endpoint: f.endpoint,
            region: f.region,
            bucket: f.bucket,
            prefix: f.prefix,
            access_key_id: f.access_key_id,
            secret_access_key: f.secret_access_key,
            path_style: f.path_style,
        })
    }
}

/// `POST /repositories/test`: a location that is not created.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TestRepository {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    config: Option<RepositoryConfig>,
    #[schema(value_type = Option<String>)]
    #[serde(default)]
    path: Option<PathBuf>,
}

/// The kind named by `type`, with its settings: the one place a new kind is parsed.
fn location(
    kind: Option<&str>,
    path: Option<PathBuf>,
    config: Option<&RepositoryConfig>,
) -> Result<Location, ApiError> {
    match kind.unwrap_or("local") {
        "local" => {
            let from_config = config.and_then(|c| c.path.clone());
            let path = match (path, from_config) {
                (Some(a), Some(b)) if a != b => {
                    return Err(ApiError::BadRequest(
                        "path and config.path name different directories".into(),
                    ));
                }
                (Some(p), _) | (None, Some(p)) => p,
                (None, None) => {
                    return Err(ApiError::BadRequest(
                        "a local repository needs path (or config.path)".into(),
                    ));
                }
            };
            Ok(Location::Local { path })
        }
        "s3" => {
            let c = config.ok_or_else(|| {
                ApiError::BadRequest(
                    "an s3 repository needs config: {endpoint, bucket, access_key_id, \
                     secret_access_key, region?, prefix?, path_style?}"
                        .into(),
                )
            })?;
            let need = |v: &Option<String>, name: &str| {
                v.clone()
                    .ok_or_else(|| ApiError::BadRequest(format!("config.{name} is required")))
            };
            Ok(Location::S3 {
                settings: S3Settings {
                    endpoint: need(&c.endpoint, "endpoint")?,
                    region: c.region.clone().unwrap_or_default(),
                    bucket: need(&c.bucket, "bucket")?,
                    prefix: c.prefix.clone().unwrap_or_default(),
                    access_key_id: need(&c.access_key_id, "access_key_id")?,
                    path_style: c.path_style.unwrap_or(false),
                },
                secret: c.secret_access_key.clone().ok_or_else(|| {
                    ApiError::BadRequest("config.secret_access_key is required".into())
                })?,
            })
        }
        other => Err(ApiError::BadRequest(format!(
            "repository type {:?} is not supported: only \"local\" and \"s3\"",
            other.chars().take(32).collect::<String>()
        ))),
    }
}

#[utoipa::path(get, path = "/api/v1/repositories", operation_id = "list_repositories", tag = "repositories",
    responses((status = 200, description = "Repositories with their filesystems' figures", body = RepositoryList)))]
pub async fn list(State(hub): State<Hub>) -> Result<Json<RepositoryList>, ApiError> {
    let repositories = hub
        .catalog
        .repositories()?
        .iter()
        .map(|r| hub.repository_view(r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(RepositoryList {
        success: true,
        total: repositories.len(),
        repositories,
    }))
}

#[utoipa::path(post, path = "/api/v1/repositories", operation_id = "create_repository", tag = "repositories",
    request_body = CreateRepository,
    responses((status = 200, description = "The new repository", body = RepositoryCreated),
        (status = 400, description = "The path is the data dir, inside or around it, or cannot hold images; an unknown type; enabled false or is_immutable true", body = ErrorBody),
        (status = 409, description = "The id is taken, the path overlaps a repository, or another data dir owns it", body = ErrorBody)))]
pub async fn create(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<CreateRepository>,
) -> Result<Json<RepositoryCreated>, ApiError> {
    if req.enabled == Some(false) {
        return Err(ApiError::BadRequest(
            "enabled: false is not supported: every repository is enabled".into(),
        ));
    }
    if req.is_immutable == Some(true) {
        return Err(ApiError::BadRequest(
            "is_immutable: true is not supported: the hub does not make images immutable".into(),
        ));
    }
    let location = location(req.kind.as_deref(), req.path, req.config.as_ref())?;
    let repo = hub
        .add_repository(NewRepository {
            id: req.id,
            name: req.name,
            description: req.config.and_then(|c| c.description),
            location,
        })
        .await?;
    // A bucket that already holds copies (this hub's before it lost its disks, say): they are
    // the catalog's again. A listing that fails leaves the repository added; a rescan retries.
    let adopted_copies = match repo.s3 {
        Some(_) => match hub.adopt_copies(&repo).await {
            Ok(n) => Some(n),
            Err(err) => {
                tracing::warn!(repository = %repo.id, %err, "the bucket's copies were not read");
                Some(0)
            }
        },
        None => None,
    };
    let view = hub.repository_view(&repo)?;
    Ok(Json(RepositoryCreated {
        success: true,
        repository: view.clone(),
        view,
        adopted_copies,
    }))
}

/// A refusal about the location becomes a failed test; anything else stays an error.
fn verdict(
    result: crate::error::Result<Option<Capacity>>,
    ok: &str,
) -> Result<RepositoryTest, ApiError> {
    match result {
        Ok(cap) => Ok(tested(cap, ok.into())),
        Err(Error::Invalid(why) | Error::Conflict(why)) => Ok(failed_test(why)),
        Err(e) => Err(e.into()),
    }
}

#[utoipa::path(post, path = "/api/v1/repositories/test", operation_id = "test_repository_config", tag = "repositories",
    request_body = TestRepository,
    responses((status = 200, description = "Whether the location could become a repository (success false says why); nothing is created", body = RepositoryTest),
        (status = 400, description = "An unknown type or no path", body = ErrorBody)))]
pub async fn test_config(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<TestRepository>,
) -> Result<Json<RepositoryTest>, ApiError> {
    let location = match location(req.kind.as_deref(), req.path, req.config.as_ref()) {
        Ok(l) => l,
        Err(ApiError::BadRequest(why)) => return Ok(Json(failed_test(why))),
        Err(e) => return Err(e),
    };
    let result = hub.test_location(&location).await;
    Ok(Json(verdict(result, "the location can hold images")?))
}

#[utoipa::path(post, path = "/api/v1/repositories/{id}/test", operation_id = "test_repository", tag = "repositories",
    params(("id" = String, Path)),
    responses((status = 200, description = "Whether a file can be created and removed in the repository now (success false says why)", body = RepositoryTest),
        (status = 404, description = "No such repository", body = ErrorBody)))]
pub async fn test(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<RepositoryTest>, ApiError> {
    let result = hub.test_repository(&id).await;
    Ok(Json(verdict(result, "the repository can hold images")?))
}

#[utoipa::path(post, path = "/api/v1/repositories/{id}/rescan", operation_id = "rescan_repository", tag = "repositories",
    params(("id" = String, Path)),
    responses((status = 200, description = "The copies found in the S3 repository's bucket that the catalog lacked, now listed (completed; each layer's manifest is written last)", body = Rescanned),
        (status = 400, description = "A local repository", body = ErrorBody),
        (status = 404, description = "No such repository", body = ErrorBody),
        (status = 502, description = "The bucket could not be listed", body = ErrorBody)))]
pub async fn rescan(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<Rescanned>, ApiError> {
    let repo = hub.repository_or_404(&id)?;
    if repo.s3.is_none() {
        return Err(ApiError::BadRequest(format!(
            "repository {id:?} is a local directory; only S3 repositories are rescanned"
        )));
    }
    let adopted_copies = hub.adopt_copies(&repo).await?;
    Ok(Json(Rescanned {
        success: true,
        adopted_copies,
    }))
}

#[utoipa::path(post, path = "/api/v1/repositories/refresh-storage", operation_id = "refresh_repository_storage", tag = "repositories",
    responses((status = 200, description = "How many repositories' filesystems could be read; the figures are read at every answer, so nothing is cached", body = StorageRefreshed)))]
pub async fn refresh_storage(State(hub): State<Hub>) -> Result<Json<StorageRefreshed>, ApiError> {
    let repos = hub.catalog.repositories()?;
    let mut failed = 0;
    for r in &repos {
        let ok = match place_of(r) {
            Place::Local(path) => Capacity::of(path).is_ok(),
            Place::S3(_) => hub.test_repository(&r.id).await.is_ok(),
        };
        failed += usize::from(!ok);
    }
    let refreshed = repos.len() - failed;
    Ok(Json(StorageRefreshed {
        success: true,
        message: format!("{refreshed} read, {failed} could not be read"),
        refreshed_count: refreshed,
        failed_count: failed,
    }))
}

#[utoipa::path(get, path = "/api/v1/repositories/{id}/storage", operation_id = "repository_storage", tag = "repositories",
    params(("id" = String, Path)),
    responses((status = 200, description = "The repository's filesystem now", body = RepositoryStorage),
        (status = 404, description = "No such repository", body = ErrorBody),
        (status = 503, description = "Its filesystem cannot be read", body = ErrorBody)))]
pub async fn storage(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<RepositoryStorage>, ApiError> {
    let repo = hub.repository_or_404(&id)?;
    let info = match place_of(&repo) {
        Place::Local(path) => {
            let cap = Capacity::of(path).map_err(|e| {
                ApiError::Unavailable(format!("cannot read {}: {e}", path.display()))
            })?;
            storage_info(&cap, hub.catalog.repository_backup_count(&id)?)
        }
        Place::S3(_) => copies_storage(&hub, &id)?,
    };
    Ok(Json(RepositoryStorage {
        repository_id: repo.id,
        info,
    }))
}

/// A bucket has no capacity to read: its figures are what the completed copies in it hold
/// (`total_bytes` and `available_bytes` 0: unknown), and `backup_count` counts those copies.
fn copies_storage(hub: &Hub, id: &str) -> Result<StorageInfo, ApiError> {
    let copies = hub.catalog.copies_in_repository(id)?;
    let done: Vec<_> = copies
        .iter()
        .filter(|c| c.status == crate::catalog::CopyStatus::Completed)
        .collect();
    let used = done.iter().map(|c| c.size_bytes).sum();
    Ok(StorageInfo {
        total_bytes: 0,
        used_bytes: used,
        available_bytes: 0,
        used_percent: 0.0,
        backup_count: done.len() as u64,
        last_check_at: crate::catalog::fmt_time(crate::state::now()),
    })
}

#[utoipa::path(delete, path = "/api/v1/repositories/{id}", operation_id = "delete_repository", tag = "repositories",
    params(("id" = String, Path)),
    responses((status = 200, description = "Forgotten; its directory stays on disk, without the ownership marker", body = RepositoryDeleted),
        (status = 404, description = "No such repository", body = ErrorBody),
        (status = 409, description = "The default repository, or backups, a flow or a policy use it (the body adds success false and backup_count)", body = ErrorBody)))]
pub async fn delete(State(hub): State<Hub>, Path(id): Path<String>) -> Response {
    match hub.remove_repository(&id).await {
        Ok(repo) => Json(RepositoryDeleted {
            success: true,
            message: format!("repository {:?} removed", repo.id),
            id: repo.id,
        })
        .into_response(),
        Err(Error::Conflict(why)) => {
            // The GUI names the backups in its alert when the refusal carries `backup_count`.
            let count = hub.catalog.repository_backup_count(&id).unwrap_or(0);
            let extra = [("backup_count", count.into())];
            ApiError::Conflict(why).response_with(if count > 0 { &extra } else { &[] })
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}
