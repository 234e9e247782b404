//! Discovery through the SNA and the VM contexts it fills.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use crate::catalog::{Membership, VmContext, VmDisk};
use crate::inventory::discovery::{DiscoverRequest, DiscoverResponse};
use crate::state::Hub;

/// A VM context with the GUI's names beside ours (`FlowMachinesTable.tsx`, `sourcesApi.ts`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VmContextView {
    #[serde(flatten)]
    pub context: VmContext,
    /// `guest_os` as the SNA gave it, empty when it gave none: the GUI lowercases it unchecked.
    pub os_type: String,
    /// `num_cpu`; null when the SNA gave none.
    pub cpu_count: Option<i64>,
    /// `discovered`: every context is made by discovery, and the hub keeps no other state of
    /// a VM (its backups are under `/backups`).
    pub current_status: &'static str,
    /// The machine groups it is in (`app/protection-groups/page.tsx`): at most one, since a VM
    /// belongs to one group here; empty when ungrouped.
    pub groups: Vec<GroupMembershipView>,
    pub group_count: usize,
}

/// A VM's place in a machine group, in the GUI's names.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupMembershipView {
    pub group_id: String,
    pub group_name: String,
    pub priority: u32,
    pub enabled: bool,
}

impl VmContextView {
    /// The view of `context`, in the group `membership` says (None: in none).
    pub fn new(context: VmContext, membership: Option<(Membership, String)>) -> Self {
        let groups: Vec<GroupMembershipView> = membership
            .into_iter()
            .map(|(m, group_name)| GroupMembershipView {
                group_id: m.group_id,
                group_name,
                priority: m.priority,
                enabled: m.enabled,
            })
            .collect();
        VmContextView {
            os_type: context.guest_os.clone(),
            cpu_count: known_cpus(context.num_cpu),
            current_status: "discovered",
            group_count: groups.len(),
            groups,
            context,
        }
    }

    /// Views of `contexts`, each with its group.
    fn all(hub: &Hub, contexts: Vec<VmContext>) -> Result<Vec<Self>, ApiError> {
        let mut memberships = hub.group_memberships()?;
        Ok(contexts
            .into_iter()
            .map(|c| {
                let m = memberships.remove(&c.context_id);
                VmContextView::new(c, m)
            })
            .collect())
    }
}

/// A CPU count the SNA reported; 0 is its default for "not said".
pub fn known_cpus(n: i64) -> Option<i64> {
    (n > 0).then_some(n)
}

/// A disk with the GUI's `size_gb` beside our `capacity_bytes`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VmDiskView {
    #[serde(flatten)]
    pub disk: VmDisk,
    /// `capacity_bytes` in GiB, unrounded (`sys::size::gib`).
    pub size_gb: f64,
}

fn disk_views(disks: Vec<VmDisk>) -> Vec<VmDiskView> {
    disks
        .into_iter()
        .map(|disk| VmDiskView {
            size_gb: crate::sys::size::gib(disk.capacity_bytes),
            disk,
        })
        .collect()
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ContextList {
    pub vm_contexts: Vec<VmContextView>,
    pub count: usize,
}

/// `GET /discovery/ungrouped-vms`, the old hub's shape.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UngroupedVms {
    pub vms: Vec<VmContextView>,
    pub count: usize,
    #[schema(format = DateTime)]
    pub retrieved_at: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ContextDetails {
    pub context: VmContextView,
    pub disks: Vec<VmDiskView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DiskList {
    pub context_id: String,
    pub disks: Vec<VmDiskView>,
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
    let vm_contexts = VmContextView::all(&hub, hub.vm_contexts()?)?;
    Ok(Json(ContextList {
        count: vm_contexts.len(),
        vm_contexts,
    }))
}

#[utoipa::path(get, path = "/api/v1/discovery/ungrouped-vms", operation_id = "ungrouped_vms", tag = "discovery",
    responses((status = 200, description = "VM contexts in no machine group", body = UngroupedVms)))]
pub async fn ungrouped(State(hub): State<Hub>) -> Result<Json<UngroupedVms>, ApiError> {
    let vms = VmContextView::all(&hub, hub.ungrouped_vm_contexts()?)?;
    Ok(Json(UngroupedVms {
        count: vms.len(),
        vms,
        retrieved_at: crate::catalog::fmt_time(crate::state::now()),
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
    let membership = hub.group_memberships()?.remove(&context.context_id);
    Ok(Json(ContextDetails {
        context: VmContextView::new(context, membership),
        disks: disk_views(disks),
    }))
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
        disks: disk_views(disks),
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
