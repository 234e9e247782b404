//! `/api/v1/backups` and the SNA's telemetry route.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;

use super::{ApiError, ApiJson, ApiQuery};
use crate::backups::{CompleteRequest, CreateBackup};
use crate::catalog::BackupFilter;
use crate::state::Hub;
use crate::views::{BackupList, BackupStats, BackupView, ChainView};

pub async fn create(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<CreateBackup>,
) -> Result<Json<BackupView>, ApiError> {
    let backup = hub.create_backup(req).await?;
    Ok(Json(hub.backup_view(&backup)))
}

pub async fn get(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<BackupView>, ApiError> {
    Ok(Json(hub.backup_view(&hub.backup(&id)?)))
}

pub async fn list(
    State(hub): State<Hub>,
    ApiQuery(filter): ApiQuery<BackupFilter>,
) -> Result<Json<BackupList>, ApiError> {
    Ok(Json(hub.backup_list(&filter)?))
}

pub async fn stats(
    State(hub): State<Hub>,
    ApiQuery(filter): ApiQuery<BackupFilter>,
) -> Result<Json<BackupStats>, ApiError> {
    Ok(Json(hub.backup_stats(&filter)?))
}

pub async fn complete(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CompleteRequest>,
) -> Result<Json<BackupView>, ApiError> {
    let backup = hub.complete(&id, req).await?;
    Ok(Json(hub.backup_view(&backup)))
}

pub async fn cancel(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<BackupView>, ApiError> {
    let backup = hub.cancel(&id).await?;
    Ok(Json(hub.backup_view(&backup)))
}

pub async fn delete(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    hub.delete_backup(&id).await?;
    Ok(Json(
        serde_json::json!({ "backup_id": id, "deleted": true }),
    ))
}

pub async fn telemetry(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !body.is_object() {
        return Err(ApiError::BadRequest(
            "telemetry must be a JSON object".into(),
        ));
    }
    hub.set_telemetry(&id, &body)?;
    Ok(Json(
        serde_json::json!({ "backup_id": id, "received": true }),
    ))
}

#[derive(Debug, Deserialize)]
pub struct ChangeIdQuery {
    vm_name: String,
    #[serde(default)]
    disk_id: Option<u32>,
}

pub async fn change_id(
    State(hub): State<Hub>,
    ApiQuery(q): ApiQuery<ChangeIdQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (backup, disk_id) = hub.latest_with_disk(&q.vm_name, q.disk_id)?;
    let change_id = backup.disk(disk_id).and_then(|d| d.change_id.clone());
    Ok(Json(serde_json::json!({
        "vm_name": q.vm_name,
        "disk_id": disk_id,
        "change_id": change_id,
        "backup_job_id": backup.id,
    })))
}

#[derive(Debug, Deserialize)]
pub struct ChainQuery {
    #[serde(default)]
    disk_id: Option<u32>,
    #[serde(default)]
    repository_id: Option<String>,
}

/// `{id}` is the VM name here (the router needs one parameter name per position).
pub async fn chain(
    State(hub): State<Hub>,
    Path(vm_name): Path<String>,
    ApiQuery(q): ApiQuery<ChainQuery>,
) -> Result<Json<ChainView>, ApiError> {
    Ok(Json(hub.chain_view(
        &vm_name,
        q.disk_id,
        q.repository_id.as_deref(),
    )?))
}
