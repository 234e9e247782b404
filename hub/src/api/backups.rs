//! `/api/v1/backups` and the SNA's telemetry route.

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiJson, ApiQuery};
use crate::backups::{ChangeIdAnswer, CompleteRequest, CreateBackup};
use crate::catalog::{BackupFilter, Status, fmt_time};
use crate::state::Hub;
use crate::views::BackupView;

pub async fn create(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<CreateBackup>,
) -> Result<Json<BackupView>, ApiError> {
    let backup = hub.start_backup(req).await?;
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
) -> Result<Json<serde_json::Value>, ApiError> {
    if let Some(status) = &filter.status {
        if Status::parse(status).is_none() {
            return Err(ApiError::BadRequest(format!("unknown status {status:?}")));
        }
    }
    let backups: Vec<BackupView> = hub
        .catalog
        .backups(&filter)?
        .iter()
        .map(|b| hub.backup_view(b))
        .collect();
    Ok(Json(serde_json::json!({ "backups": backups })))
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

/// The answer to the client's telemetry post (the old hub's fields, plus the backup's status).
#[derive(Debug, Serialize)]
pub struct TelemetryAck {
    pub backup_id: String,
    pub received: bool,
    pub status: &'static str,
    pub backup_status: Status,
    pub message: String,
    pub timestamp: String,
}

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

#[derive(Debug, Deserialize)]
pub struct ChangeIdQuery {
    vm_name: String,
    /// The client always sends one; the old hub's default was disk 0.
    #[serde(default)]
    disk_id: Option<u32>,
}

pub async fn change_id(
    State(hub): State<Hub>,
    ApiQuery(q): ApiQuery<ChangeIdQuery>,
) -> Result<Json<ChangeIdAnswer>, ApiError> {
    Ok(Json(hub.change_id(&q.vm_name, q.disk_id.unwrap_or(0))?))
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
) -> Result<Json<serde_json::Value>, ApiError> {
    let chain = hub.chain(&vm_name, q.repository_id.as_deref())?;
    let entries: Vec<serde_json::Value> = chain
        .iter()
        .map(|b| {
            let disks: Vec<serde_json::Value> = b
                .disks
                .iter()
                .filter(|d| q.disk_id.is_none_or(|id| id == d.disk_id))
                .map(|d| {
                    serde_json::json!({
                        "disk_id": d.disk_id,
                        "vmware_disk_key": d.vmware_disk_key,
                        "capacity_bytes": d.capacity_bytes,
                        "qcow2_path": d.qcow2_path,
                        "change_id": d.change_id,
                        "image_size_bytes": d.image_size,
                    })
                })
                .collect();
            serde_json::json!({
                "backup_id": b.id,
                "backup_type": b.backup_type,
                "parent_backup_id": b.parent_backup_id,
                "status": b.status,
                "created_at": fmt_time(b.created_at),
                "completed_at": b.completed_at.map(fmt_time),
                "disks": disks,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({
        "vm_name": vm_name,
        "disk_id": q.disk_id,
        "backups": entries,
    })))
}
