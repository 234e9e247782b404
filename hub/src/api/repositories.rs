//! `/api/v1/repositories`.

use std::path::PathBuf;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;

use super::{ApiError, ApiJson, ErrorBody};
use crate::catalog::Repository;
use crate::state::{Hub, now};
use crate::views::{RepositoryView, repository_view};

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
    responses((status = 200, description = "Repositories with capacity and free bytes", body = crate::api::openapi::RepositoryList)))]
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
        (status = 409, description = "The id is taken", body = ErrorBody)))]
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
    std::fs::create_dir_all(&req.path)
        .map_err(|e| ApiError::BadRequest(format!("cannot create {}: {e}", req.path.display())))?;
    let repo = Repository {
        name: req.name.unwrap_or_else(|| req.id.clone()),
        id: req.id,
        path: req.path,
        created_at: now(),
    };
    hub.catalog.insert_repository(&repo)?;
    tracing::info!(repository = %repo.id, path = %repo.path.display(), "repository added");
    Ok(Json(repository_view(&repo)))
}
