//! Discovery through the SNA and the VM contexts it fills.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use super::{ApiError, ApiJson};
use crate::catalog::{VmContext, VmDisk};
use crate::discovery::{DiscoverRequest, DiscoverResponse};
use crate::state::Hub;

#[derive(Debug, Serialize)]
pub struct ContextList {
    pub vm_contexts: Vec<VmContext>,
    pub count: usize,
}

#[derive(Debug, Serialize)]
pub struct ContextDetails {
    pub context: VmContext,
    pub disks: Vec<VmDisk>,
}

#[derive(Debug, Serialize)]
pub struct DiskList {
    pub context_id: String,
    pub disks: Vec<VmDisk>,
    pub count: usize,
}

#[derive(Debug, Serialize)]
pub struct ContextDeleted {
    pub vm_name: String,
    pub deleted: bool,
}

pub async fn discover(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<DiscoverRequest>,
) -> Result<Json<DiscoverResponse>, ApiError> {
    Ok(Json(hub.discover(req).await?))
}

pub async fn list(State(hub): State<Hub>) -> Result<Json<ContextList>, ApiError> {
    let vm_contexts = hub.vm_contexts()?;
    Ok(Json(ContextList {
        count: vm_contexts.len(),
        vm_contexts,
    }))
}

/// `{id}` is the VM name (a context id is accepted too): the router needs one parameter name per
/// position, and the old API had `/vm-contexts/{vm_name}` beside `/vm-contexts/{context_id}/disks`.
pub async fn get(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<ContextDetails>, ApiError> {
    let (context, disks) = hub.vm_context(&id)?;
    Ok(Json(ContextDetails { context, disks }))
}

/// `{id}` is the context id (a VM name is accepted too).
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
