//! `/api/v1/restores`.

use axum::Json;
use axum::extract::{Path, State};

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use crate::api::views::RestoreView;
use crate::restore::disk::CreateRestore;
use crate::state::Hub;

#[utoipa::path(post, path = "/api/v1/restores", operation_id = "create_restore", tag = "restores",
    request_body = CreateRestore,
    responses((status = 200, description = "A read-only NBD export of the disk as of the backup", body = RestoreView),
        (status = 404, description = "No such backup or disk", body = ErrorBody),
        (status = 409, description = "The backup is not completed", body = ErrorBody),
        (status = 410, description = "The backup's files, or its parent's, are gone from the repository: it is `missing`", body = ErrorBody)))]
pub async fn create(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<CreateRestore>,
) -> Result<Json<RestoreView>, ApiError> {
    let restore = hub.create_restore(req).await?;
    Ok(Json(hub.restore_view(&restore)))
}

#[utoipa::path(get, path = "/api/v1/restores", operation_id = "list_restores", tag = "restores",
    responses((status = 200, description = "Open restores", body = crate::api::views::RestoreList)))]
pub async fn list(State(hub): State<Hub>) -> Result<Json<serde_json::Value>, ApiError> {
    let restores: Vec<RestoreView> = hub
        .restores()?
        .iter()
        .map(|r| hub.restore_view(r))
        .collect();
    Ok(Json(serde_json::json!({ "restores": restores })))
}

#[utoipa::path(delete, path = "/api/v1/restores/{id}", operation_id = "delete_restore", tag = "restores",
    params(("id" = String, Path, description = "Restore id")),
    responses((status = 200, description = "Export closed", body = crate::api::views::RestoreDeleted),
        (status = 404, description = "No such restore", body = ErrorBody)))]
pub async fn delete(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    hub.delete_restore(&id).await?;
    Ok(Json(
        serde_json::json!({ "restore_id": id, "deleted": true }),
    ))
}
