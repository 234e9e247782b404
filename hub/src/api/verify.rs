//! Verify: of one backup (`/api/v1/backups/{id}/verify`), of a VM's or a repository's backups
//! (`/api/v1/verify`), each a job; and the repository option that verifies every new backup.

use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use super::jobs::accepted;
use crate::error::Error;
use crate::state::Hub;
use crate::verify::Scope;

#[utoipa::path(post, path = "/api/v1/backups/{id}/verify", operation_id = "verify_backup", tag = "backups",
    params(("id" = String, Path, description = "Backup id")),
    responses((status = 202, description = "The verify job (the backup's chain: files, backing files, digests, structure); `Location` names it", body = super::jobs::JobView),
        (status = 404, description = "No such backup", body = ErrorBody),
        (status = 409, description = "The backup is not completed, a prune is merging its chain, or a verify of it is queued or running", body = ErrorBody)))]
pub async fn verify_backup(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(accepted(&hub.start_verify(Scope::Backup(id)).await?))
}

/// A VM's backups (in one repository, or in all), or a whole repository's.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    #[serde(default)]
    pub vm_name: Option<String>,
    #[serde(default)]
    pub repository_id: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/verify", operation_id = "verify", tag = "backups",
    request_body = VerifyRequest,
    responses((status = 202, description = "One verify job over every completed backup named (each layer read once); `Location` names it", body = super::jobs::JobView),
        (status = 400, description = "Neither vm_name nor repository_id", body = ErrorBody),
        (status = 404, description = "No such repository, or no completed backup there", body = ErrorBody),
        (status = 409, description = "A verify of the same scope is queued or running", body = ErrorBody)))]
pub async fn verify(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> Result<Response, ApiError> {
    let scope = match (req.vm_name, req.repository_id) {
        (Some(vm_name), repository_id) if !vm_name.is_empty() => Scope::Vm {
            vm_name,
            repository_id,
        },
        (None, Some(r)) => Scope::Repository(r),
        _ => {
            return Err(Error::Invalid("give vm_name (non-empty) or repository_id".into()).into());
        }
    };
    Ok(accepted(&hub.start_verify(scope).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyNewRequest {
    pub verify_new_backups: bool,
}

/// The repository option as it now stands.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct VerifyNewView {
    pub repository_id: String,
    pub verify_new_backups: bool,
}

#[utoipa::path(put, path = "/api/v1/repositories/{id}/verify-new-backups", operation_id = "set_verify_new_backups", tag = "repositories",
    params(("id" = String, Path, description = "Repository id")),
    request_body = VerifyNewRequest,
    responses((status = 200, description = "The option: when on, every backup completed there (and every one never verified) is verified in a job", body = VerifyNewView),
        (status = 404, description = "No such repository", body = ErrorBody)))]
pub async fn set_verify_new(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<VerifyNewRequest>,
) -> Result<axum::Json<VerifyNewView>, ApiError> {
    if !hub
        .catalog
        .set_verify_new_backups(&id, req.verify_new_backups)?
    {
        return Err(Error::NotFound(format!("no repository {id:?}")).into());
    }
    Ok(axum::Json(VerifyNewView {
        repository_id: id,
        verify_new_backups: req.verify_new_backups,
    }))
}
