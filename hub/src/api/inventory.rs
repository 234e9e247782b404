//! Discovery through the SNA and the VM contexts it fills.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use crate::catalog::{VmContext, VmDisk};
use crate::inventory::discovery::{DiscoverRequest, DiscoverResponse};
use crate::state::Hub;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ContextList {
    pub vm_contexts: Vec<VmContext>,
    pub count: usize,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ContextDetails {
    pub context: VmContext,
    pub disks: Vec<VmDisk>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DiskList {
    pub context_id: String,
    pub disks: Vec<VmDisk>,
    pub count: usize,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ContextDeleted {
    pub vm_name: String,
    pub deleted: bool,
}

#[utoipa::path(post, path = "/api/v1/discovery/discover-vms", operation_id = "discover_vms", tag = "discovery",
    request_body = DiscoverRequest,
    responses((status = 200, description = "The SNA's inventory; with `create_context`, the selected VMs' contexts made or refreshed; VMs the backup path would refuse, or whose name is not theirs alone, in `refused_vms` and never stored", body = DiscoverResponse),
        (status = 404, description = "No such credential", body = ErrorBody),
        (status = 409, description = "The credential is not active", body = ErrorBody),
        (status = 502, description = "The SNA refused, did not answer within the timeout, or gave an answer the hub cannot read", body = ErrorBody),
        (status = 503, description = "The credential key cannot open the credential's password", body = ErrorBody)))]
pub async fn discover(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<DiscoverRequest>,
) -> Result<Json<DiscoverResponse>, ApiError> {
    Ok(Json(hub.discover(req).await?))
}

#[utoipa::path(get, path = "/api/v1/vm-contexts", operation_id = "list_vm_contexts", tag = "discovery",
    responses((status = 200, description = "Every VM context, by VM name", body = ContextList)))]
pub async fn list(State(hub): State<Hub>) -> Result<Json<ContextList>, ApiError> {
    let vm_contexts = hub.vm_contexts()?;
    Ok(Json(ContextList {
        count: vm_contexts.len(),
        vm_contexts,
    }))
}

/// `{id}` is the VM name (a context id is accepted too): the router needs one parameter name per
/// position, and the old API had `/vm-contexts/{vm_name}` beside `/vm-contexts/{context_id}/disks`.
#[utoipa::path(get, path = "/api/v1/vm-contexts/{vm_name}", operation_id = "get_vm_context", tag = "discovery",
    params(("vm_name" = String, Path, description = "The VM name (a context id is accepted too)")),
    responses((status = 200, description = "The context and its disks", body = ContextDetails),
        (status = 404, description = "No context: run discovery", body = ErrorBody)))]
pub async fn get(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<ContextDetails>, ApiError> {
    let (context, disks) = hub.vm_context(&id)?;
    Ok(Json(ContextDetails { context, disks }))
}

/// The old `GET /vm-contexts/by-id/{context_id}`: the same answer as [`get`].
#[utoipa::path(get, path = "/api/v1/vm-contexts/by-id/{context_id}", operation_id = "get_vm_context_by_id", tag = "discovery",
    params(("context_id" = String, Path, description = "The context id (a VM name is accepted too)")),
    responses((status = 200, description = "The context and its disks", body = ContextDetails),
        (status = 404, description = "No context: run discovery", body = ErrorBody)))]
pub async fn get_by_id(
    hub: State<Hub>,
    id: Path<String>,
) -> Result<Json<ContextDetails>, ApiError> {
    get(hub, id).await
}

/// `{id}` is the context id (a VM name is accepted too).
#[utoipa::path(get, path = "/api/v1/vm-contexts/{context_id}/disks", operation_id = "vm_context_disks", tag = "discovery",
    params(("context_id" = String, Path, description = "The context id (a VM name is accepted too)")),
    responses((status = 200, description = "The context's disks, in the SNA's order", body = DiskList),
        (status = 404, description = "No context: run discovery", body = ErrorBody)))]
pub async fn disks(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<DiskList>, ApiError> {
    let (context, disks) = hub.vm_context(&id)?;
    Ok(Json(DiskList {
        context_id: context.context_id,
        count: disks.len(),
        disks,
    }))
}

/// `{id}` is the VM name.
#[utoipa::path(delete, path = "/api/v1/vm-contexts/{vm_name}", operation_id = "delete_vm_context", tag = "discovery",
    params(("vm_name" = String, Path, description = "The VM name")),
    responses((status = 200, description = "Deleted with its disks; the VM's backups stay", body = ContextDeleted),
        (status = 404, description = "No context for this VM", body = ErrorBody)))]
pub async fn delete(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<ContextDeleted>, ApiError> {
    hub.delete_vm_context(&id)?;
    Ok(Json(ContextDeleted {
        vm_name: id,
        deleted: true,
    }))
}
