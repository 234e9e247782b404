//! `/api/v1/backups` and the SNA's telemetry route.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;

use super::{ApiError, ApiJson, ApiQuery, ErrorBody};
use crate::backups::{CompleteRequest, CreateBackup};
use crate::catalog::BackupFilter;
use crate::state::Hub;
use crate::views::{BackupList, BackupStats, BackupView, ChainView};

#[utoipa::path(post, path = "/api/v1/backups", operation_id = "create_backup", tag = "backups",
    request_body = CreateBackup,
    responses((status = 200, description = "The backup, ready: images made and NBD exports open", body = BackupView),
        (status = 404, description = "No such repository", body = ErrorBody),
        (status = 409, description = "A backup of this VM is active", body = ErrorBody)))]
pub async fn create(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<CreateBackup>,
) -> Result<Json<BackupView>, ApiError> {
    let backup = hub.create_backup(req).await?;
    Ok(Json(hub.backup_view(&backup)))
}

#[utoipa::path(get, path = "/api/v1/backups/{id}", operation_id = "get_backup", tag = "backups",
    params(("id" = String, Path, description = "Backup id")),
    responses((status = 200, description = "The backup with live progress", body = BackupView),
        (status = 404, description = "No such backup", body = ErrorBody)))]
pub async fn get(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<BackupView>, ApiError> {
    Ok(Json(hub.backup_view(&hub.backup(&id)?)))
}

#[utoipa::path(get, path = "/api/v1/backups", operation_id = "list_backups", tag = "backups",
    params(BackupFilter),
    responses((status = 200, description = "Matching backups, newest first", body = BackupList)))]
pub async fn list(
    State(hub): State<Hub>,
    ApiQuery(filter): ApiQuery<BackupFilter>,
) -> Result<Json<BackupList>, ApiError> {
    Ok(Json(hub.backup_list(&filter)?))
}

#[utoipa::path(get, path = "/api/v1/backups/stats", operation_id = "backup_stats", tag = "backups",
    params(BackupFilter),
    responses((status = 200, description = "Counts and bytes of the matching backups", body = BackupStats)))]
pub async fn stats(
    State(hub): State<Hub>,
    ApiQuery(filter): ApiQuery<BackupFilter>,
) -> Result<Json<BackupStats>, ApiError> {
    Ok(Json(hub.backup_stats(&filter)?))
}

#[utoipa::path(post, path = "/api/v1/backups/{id}/complete", operation_id = "complete_backup", tag = "sna",
    params(("id" = String, Path, description = "Backup id")),
    request_body(content = CompleteRequest, description = "May be empty: every disk"),
    security((), ("bearer_token" = [])),
    responses((status = 200, description = "The backup; finalising once every disk is complete", body = BackupView),
        (status = 404, description = "No such backup or disk", body = ErrorBody),
        (status = 409, description = "The backup failed or was cancelled", body = ErrorBody)))]
pub async fn complete(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CompleteRequest>,
) -> Result<Json<BackupView>, ApiError> {
    let backup = hub.complete(&id, req).await?;
    Ok(Json(hub.backup_view(&backup)))
}

#[utoipa::path(post, path = "/api/v1/backups/{id}/cancel", operation_id = "cancel_backup", tag = "backups",
    params(("id" = String, Path, description = "Backup id")),
    responses((status = 200, description = "The cancelled backup; its images are removed", body = BackupView),
        (status = 404, description = "No such backup", body = ErrorBody),
        (status = 409, description = "The backup is finalising or finished", body = ErrorBody)))]
pub async fn cancel(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<BackupView>, ApiError> {
    let backup = hub.cancel(&id).await?;
    Ok(Json(hub.backup_view(&backup)))
}

#[utoipa::path(delete, path = "/api/v1/backups/{id}", operation_id = "delete_backup", tag = "backups",
    params(("id" = String, Path, description = "Backup id")),
    responses((status = 200, description = "Deleted with its images", body = crate::api::openapi::BackupDeleted),
        (status = 404, description = "No such backup", body = ErrorBody),
        (status = 409, description = "Active, a parent, or restoring", body = ErrorBody)))]
pub async fn delete(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    hub.delete_backup(&id).await?;
    Ok(Json(
        serde_json::json!({ "backup_id": id, "deleted": true }),
    ))
}

#[utoipa::path(post, path = "/api/v1/telemetry/backup/{id}", operation_id = "backup_telemetry", tag = "sna",
    params(("id" = String, Path, description = "Backup id")),
    request_body(content = Object, description = "The client's progress report (`current_phase`, `progress_percent`, `bytes_transferred`, `transfer_speed_bps`, `timestamp`, ...)"),
    security((), ("bearer_token" = [])),
    responses((status = 200, description = "Stored", body = crate::api::openapi::TelemetryReceived),
        (status = 404, description = "No such backup", body = ErrorBody)))]
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangeIdQuery {
    vm_name: String,
    #[serde(default)]
    disk_id: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/backups/changeid", operation_id = "backup_change_id", tag = "sna",
    params(ChangeIdQuery),
    security((), ("bearer_token" = [])),
    responses((status = 200, description = "The change id to base an incremental on", body = crate::api::openapi::ChangeIdAnswer),
        (status = 404, description = "No completed backup of the VM with that disk", body = ErrorBody)))]
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChainQuery {
    #[serde(default)]
    disk_id: Option<u32>,
    #[serde(default)]
    repository_id: Option<String>,
}

/// `{id}` is the VM name here (the router needs one parameter name per position).
#[utoipa::path(get, path = "/api/v1/backups/{vm_name}/chain", operation_id = "backup_chain", tag = "backups",
    params(("vm_name" = String, Path, description = "The VM name"), ChainQuery),
    responses((status = 200, description = "The chain, oldest first; empty when the VM has no completed backup", body = ChainView)))]
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
