//! `/api/v1/backups` and the SNA's telemetry route.

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery};
use crate::api::views::{BackupList, BackupStats, BackupView, ChainView};
use crate::backup::chain::ChangeIdAnswer;
use crate::backup::complete::CompleteRequest;
use crate::backup::create::CreateBackup;
use crate::catalog::{BackupFilter, Status, fmt_time};
use crate::state::Hub;

#[utoipa::path(post, path = "/api/v1/backups", operation_id = "create_backup", tag = "backups",
    request_body = CreateBackup,
    responses((status = 200, description = "The backup, ready: images made and NBD exports open", body = BackupView),
        (status = 404, description = "No such repository, or no VM context (run discovery)", body = ErrorBody),
        (status = 409, description = "A backup of this VM is active", body = ErrorBody),
        (status = 410, description = "The incremental's parent lost its files (or its parent did): it is now `missing`", body = ErrorBody),
        (status = 502, description = "The SNA refused to start the copy or did not answer; the backup is failed and its images removed", body = ErrorBody),
        (status = 503, description = "The credential key cannot open the VM's vCenter password", body = ErrorBody)))]
pub async fn create(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<CreateBackup>,
) -> Result<Json<BackupView>, ApiError> {
    let backup = hub.start_backup(req).await?;
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
    responses((status = 200, description = "Deleted with its images", body = crate::api::views::BackupDeleted),
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

/// The answer to the client's telemetry post (the old hub's fields, plus the backup's status).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TelemetryAck {
    pub backup_id: String,
    pub received: bool,
    pub status: &'static str,
    pub backup_status: Status,
    pub message: String,
    #[schema(format = DateTime)]
    pub timestamp: String,
}

#[utoipa::path(post, path = "/api/v1/telemetry/backup/{id}", operation_id = "backup_telemetry", tag = "sna",
    params(("id" = String, Path, description = "Backup id")),
    request_body(content = Object, description = "The client's progress report (`current_phase`, `progress_percent`, `bytes_transferred`, `transfer_speed_bps`, `timestamp`, ...)"),
    security((), ("bearer_token" = [])),
    responses((status = 200, description = "Stored", body = TelemetryAck),
        (status = 404, description = "No such backup", body = ErrorBody)))]
pub async fn telemetry(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<TelemetryAck>, ApiError> {
    let backup = hub.telemetry(&id, &body).await?;
    Ok(Json(TelemetryAck {
        backup_id: id,
        received: true,
        status: "success",
        backup_status: backup.status,
        message: "telemetry received".into(),
        timestamp: fmt_time(time::OffsetDateTime::now_utc()),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangeIdQuery {
    vm_name: String,
    /// The client always sends one; the old hub's default was disk 0.
    #[serde(default)]
    disk_id: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/backups/changeid", operation_id = "backup_change_id", tag = "sna",
    params(ChangeIdQuery),
    security((), ("bearer_token" = [])),
    responses((status = 200, description = "The change id to base this disk's copy on; `change_id` empty: copy everything", body = ChangeIdAnswer),
        (status = 404, description = "The VM's active backup has no such disk", body = ErrorBody)))]
pub async fn change_id(
    State(hub): State<Hub>,
    ApiQuery(q): ApiQuery<ChangeIdQuery>,
) -> Result<Json<ChangeIdAnswer>, ApiError> {
    Ok(Json(hub.change_id(&q.vm_name, q.disk_id.unwrap_or(0))?))
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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProtectRequest {
    pub protected: bool,
}

#[utoipa::path(put, path = "/api/v1/backups/{id}/protected", operation_id = "protect_backup", tag = "backups",
    params(("id" = String, Path, description = "Backup id")),
    request_body = ProtectRequest,
    responses((status = 200, description = "The backup with its new mark: a protected backup is never pruned nor deleted", body = BackupView),
        (status = 404, description = "No such backup", body = ErrorBody),
        (status = 409, description = "The backup is not completed", body = ErrorBody)))]
pub async fn set_protected(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ProtectRequest>,
) -> Result<Json<BackupView>, ApiError> {
    let backup = hub.set_protected(&id, req.protected).await?;
    Ok(Json(hub.backup_view(&backup)))
}
