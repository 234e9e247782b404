//! Copies of backups into S3 repositories, in the old hub's shapes: `POST
//! /api/v1/backups/{id}/copy` (201 `{message, copy_id, status}`, plus the job) and `GET
//! /api/v1/backups/{id}/copies` (a bare array of `BackupCopyResponse`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use crate::catalog::{BackupCopy, fmt_time};
use crate::copy::CopyRequest;
use crate::state::Hub;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyBody {
    /// An S3 repository.
    pub repository_id: String,
    /// Read every object back and compare it with what was sent (default true).
    #[serde(default)]
    pub verify: Option<bool>,
    /// Where the bucket has Object Lock: days each object stays locked (the bucket's default
    /// retention when longer or when absent).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 36_500)]
    pub retain_days: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CopyStarted {
    pub message: String,
    /// The backup's own copy (the chain's missing layers below it get rows of their own).
    pub copy_id: String,
    pub status: String,
    pub job_id: String,
}

/// The old hub's `BackupCopyResponse`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CopyView {
    pub id: String,
    pub source_backup_id: String,
    pub repository_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_rule_id: Option<String>,
    /// `pending`, `copying`, `verifying`, `completed` or `failed`.
    pub status: String,
    /// Where the layer's objects are: `<prefix>/<vm>/<backup id>` in the bucket.
    pub file_path: String,
    pub size_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_completed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<String>,
    /// `pending` (not read back, or not yet), `passed` or `failed`.
    pub verification_status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    pub created_at: String,
    /// Where the bucket has Object Lock: no object of the copy can be deleted before this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain_until: Option<String>,
    /// The backup this layer reads through at the destination (its copy is there too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_backup_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

impl From<&BackupCopy> for CopyView {
    fn from(c: &BackupCopy) -> Self {
        CopyView {
            id: c.id.clone(),
            source_backup_id: c.backup_id.clone(),
            repository_id: c.repository_id.clone(),
            copy_rule_id: c.copy_rule_id.clone(),
            status: c.status.as_str().into(),
            file_path: c.object_prefix.clone(),
            size_bytes: c.size_bytes,
            copy_started_at: c.copy_started_at.map(fmt_time),
            copy_completed_at: c.copy_completed_at.map(fmt_time),
            verified_at: c.verified_at.map(fmt_time),
            verification_status: c.verification_status.clone(),
            error_message: c.error_message.clone(),
            created_at: fmt_time(c.created_at),
            retain_until: c.retain_until.map(fmt_time),
            parent_backup_id: c.parent_backup_id.clone(),
            job_id: c.job_id.clone(),
        }
    }
}

#[utoipa::path(post, path = "/api/v1/backups/{id}/copy", operation_id = "copy_backup", tag = "backups",
    params(("id" = String, Path, description = "Backup id")),
    request_body = CopyBody,
    responses((status = 201, description = "A copy job of the backup's chain (what the destination lacks, bottom up); `Location` names the job", body = CopyStarted),
        (status = 400, description = "The destination is not an S3 repository", body = ErrorBody),
        (status = 404, description = "No such backup or repository", body = ErrorBody),
        (status = 409, description = "The backup is not completed or is copied there already; a copy, prune or merge of its chain is under way", body = ErrorBody),
        (status = 503, description = "The credential key that opens the repository's secret is unavailable", body = ErrorBody)))]
pub async fn copy(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CopyBody>,
) -> Result<Response, ApiError> {
    let (job, row) = hub
        .start_copy(CopyRequest {
            backup_id: id,
            repository_id: body.repository_id,
            copy_rule_id: None,
            verify: body.verify.unwrap_or(true),
            retain_days: body.retain_days,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        [(LOCATION, format!("/api/v1/jobs/{}", job.id))],
        Json(CopyStarted {
            message: format!("copy of backup {} queued (job {})", row.backup_id, job.id),
            copy_id: row.id,
            status: row.status.as_str().into(),
            job_id: job.id,
        }),
    )
        .into_response())
}

#[utoipa::path(get, path = "/api/v1/backups/{id}/copies", operation_id = "backup_copies", tag = "backups",
    params(("id" = String, Path, description = "Backup id")),
    responses((status = 200, description = "The backup's copies, oldest first", body = [CopyView]),
        (status = 404, description = "No such backup, and no copy of it", body = ErrorBody)))]
pub async fn copies(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<Vec<CopyView>>, ApiError> {
    let copies = hub.catalog.copies_of_backup(&id)?;
    // A backup pruned locally keeps its copies: they are still listed under its id.
    if copies.is_empty() {
        hub.backup(&id)?;
    }
    Ok(Json(copies.iter().map(CopyView::from).collect()))
}

#[utoipa::path(delete, path = "/api/v1/copies/{id}", operation_id = "delete_copy", tag = "backups",
    params(("id" = String, Path, description = "Copy id")),
    responses((status = 200, description = "The copy's objects and row are gone", body = CopyView),
        (status = 404, description = "No such copy", body = ErrorBody),
        (status = 409, description = "Its job is live, its objects are locked until a date the message gives, or a copy above reads through it", body = ErrorBody),
        (status = 502, description = "The bucket refused or did not answer", body = ErrorBody)))]
pub async fn delete_copy(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<CopyView>, ApiError> {
    let copy = hub.delete_copy(&id).await?;
    Ok(Json(CopyView::from(&copy)))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BringBackBody {
    /// A local repository (the default one when absent).
    #[serde(default)]
    pub repository_id: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/copies/{id}/bring-back", operation_id = "bring_back_copy", tag = "backups",
    params(("id" = String, Path, description = "Copy id")),
    request_body = BringBackBody,
    responses((status = 202, description = "A job downloading the copy's chain (the layers the repository lacks, bottom up, each checked against its recorded BLAKE3) into the local repository as its backups; `Location` names it", body = super::jobs::JobView),
        (status = 400, description = "The target is an S3 repository", body = ErrorBody),
        (status = 404, description = "No such copy or repository, or a layer's copy is missing", body = ErrorBody),
        (status = 409, description = "The copy is not completed, the backup is there already or in another repository, or a copy of the chain is under way", body = ErrorBody)))]
pub async fn bring_back(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<BringBackBody>,
) -> Result<Response, ApiError> {
    let job = hub
        .start_bring_back(&id, body.repository_id.as_deref())
        .await?;
    Ok(super::jobs::accepted(&job))
}

#[utoipa::path(get, path = "/api/v1/repositories/{id}/copies", operation_id = "repository_copies", tag = "repositories",
    params(("id" = String, Path, description = "Repository id")),
    responses((status = 200, description = "Every copy in the repository, oldest first", body = [CopyView]),
        (status = 404, description = "No such repository", body = ErrorBody)))]
pub async fn repository_copies(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<Vec<CopyView>>, ApiError> {
    hub.repository_or_404(&id)?;
    let copies = hub.catalog.copies_in_repository(&id)?;
    Ok(Json(copies.iter().map(CopyView::from).collect()))
}
