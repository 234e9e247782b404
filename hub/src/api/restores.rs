//! `/api/v1/restores`.

use axum::Json;
use axum::extract::{Path, State};

use super::{ApiError, ApiJson};
use crate::restores::CreateRestore;
use crate::state::Hub;
use crate::views::RestoreView;

pub async fn create(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<CreateRestore>,
) -> Result<Json<RestoreView>, ApiError> {
    let restore = hub.create_restore(req).await?;
    Ok(Json(hub.restore_view(&restore)))
}

pub async fn list(State(hub): State<Hub>) -> Result<Json<serde_json::Value>, ApiError> {
    let restores: Vec<RestoreView> = hub
        .restores()?
        .iter()
        .map(|r| hub.restore_view(r))
        .collect();
    Ok(Json(serde_json::json!({ "restores": restores })))
}

pub async fn delete(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    hub.delete_restore(&id).await?;
    Ok(Json(
        serde_json::json!({ "restore_id": id, "deleted": true }),
    ))
}
