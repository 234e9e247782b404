//! `/api/v1/machine-groups`, `/api/v1/vm-groups/{id}/members` and
//! `/api/v1/vm-contexts/{id}/group`: the old hub's machine group routes.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery};
use crate::api::protect_views::{
    GroupAssigned, GroupDeleted, GroupList, GroupMembers, GroupView, GroupVmList, MemberRemoved,
    MembersAdded,
};
use crate::catalog::fmt_time;
use crate::protect::groups::{AddMembers, AssignGroup, GroupRequest};
use crate::state::{Hub, now};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only the groups on this schedule.
    #[serde(default)]
    schedule_id: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/machine-groups", operation_id = "create_machine_group", tag = "machine-groups",
    request_body(content = GroupRequest, description = "`name` is required"),
    responses((status = 201, description = "The new group", body = GroupView),
        (status = 400, description = "A field missing, out of range or too long", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 409, description = "A group of that name exists", body = ErrorBody)))]
pub async fn create(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<GroupRequest>,
) -> Result<(StatusCode, Json<GroupView>), ApiError> {
    let group = hub.create_group(req)?;
    Ok((StatusCode::CREATED, Json((&group).into())))
}

#[utoipa::path(get, path = "/api/v1/machine-groups", operation_id = "list_machine_groups", tag = "machine-groups",
    params(ListQuery),
    responses((status = 200, description = "Every group, by name", body = GroupList)))]
pub async fn list(
    State(hub): State<Hub>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<GroupList>, ApiError> {
    let groups: Vec<GroupView> = hub
        .groups(q.schedule_id.as_deref())?
        .iter()
        .map(Into::into)
        .collect();
    Ok(Json(GroupList {
        total_count: groups.len(),
        groups,
        filtered_by: q.schedule_id,
        retrieved_at: fmt_time(now()),
    }))
}

#[utoipa::path(get, path = "/api/v1/machine-groups/{id}", operation_id = "get_machine_group", tag = "machine-groups",
    params(("id" = String, Path, description = "Group id")),
    responses((status = 200, description = "The group", body = GroupView),
        (status = 404, description = "No such group", body = ErrorBody)))]
pub async fn get(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<GroupView>, ApiError> {
    Ok(Json((&hub.group(&id)?).into()))
}

#[utoipa::path(put, path = "/api/v1/machine-groups/{id}", operation_id = "update_machine_group", tag = "machine-groups",
    params(("id" = String, Path, description = "Group id")),
    request_body(content = GroupRequest, description = "The fields to change; a missing one keeps its value"),
    responses((status = 200, description = "The group as changed", body = GroupView),
        (status = 400, description = "A field out of range or too long", body = ErrorBody),
        (status = 404, description = "No such group or schedule", body = ErrorBody),
        (status = 409, description = "Another group has that name", body = ErrorBody)))]
pub async fn update(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<GroupRequest>,
) -> Result<Json<GroupView>, ApiError> {
    Ok(Json((&hub.update_group(&id, req)?).into()))
}

#[utoipa::path(delete, path = "/api/v1/machine-groups/{id}", operation_id = "delete_machine_group", tag = "machine-groups",
    params(("id" = String, Path, description = "Group id")),
    responses((status = 200, description = "Deleted", body = GroupDeleted),
        (status = 400, description = "The group has VMs: remove them first", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
        (status = 409, description = "A protection flow targets it", body = ErrorBody)))]
pub async fn delete(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<GroupDeleted>, ApiError> {
    hub.delete_group(&id)?;
    Ok(Json(GroupDeleted {
        success: true,
        message: format!("machine group {id} deleted"),
        group_id: id,
        timestamp: fmt_time(now()),
    }))
}

#[utoipa::path(post, path = "/api/v1/machine-groups/{id}/vms", operation_id = "add_machine_group_vms", tag = "machine-groups",
    params(("id" = String, Path, description = "Group id")),
    request_body = AddMembers,
    responses((status = 200, description = "Added; VMs already in this group stay as they were", body = MembersAdded),
        (status = 400, description = "No VM given, or a field out of range", body = ErrorBody),
        (status = 404, description = "No such group or VM context", body = ErrorBody),
        (status = 409, description = "A VM is in another group: nothing was added", body = ErrorBody)))]
pub async fn add_vms(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<AddMembers>,
) -> Result<Json<MembersAdded>, ApiError> {
    let added = hub.add_group_members(&id, req)?;
    let group = hub.group(&id)?;
    Ok(Json(MembersAdded {
        success: true,
        message: format!("{} VMs added to machine group {id}", added.len()),
        group_id: id,
        added_vm_context_ids: added,
        total_vms: group.total_vms,
    }))
}

#[utoipa::path(delete, path = "/api/v1/machine-groups/{id}/vms/{context_id}", operation_id = "remove_machine_group_vm", tag = "machine-groups",
    params(("id" = String, Path, description = "Group id"),
        ("context_id" = String, Path, description = "VM context id or VM name")),
    responses((status = 200, description = "Removed", body = MemberRemoved),
        (status = 404, description = "No such group or VM context, or the VM is not in this group", body = ErrorBody)))]
pub async fn remove_vm(
    State(hub): State<Hub>,
    Path((id, vm)): Path<(String, String)>,
) -> Result<Json<MemberRemoved>, ApiError> {
    hub.remove_group_member(&id, &vm)?;
    Ok(Json(MemberRemoved {
        success: true,
        message: format!("VM {vm} removed from machine group {id}"),
    }))
}

#[utoipa::path(get, path = "/api/v1/machine-groups/{id}/vms", operation_id = "list_machine_group_vms", tag = "machine-groups",
    params(("id" = String, Path, description = "Group id")),
    responses((status = 200, description = "The group's VMs, by priority", body = GroupVmList),
        (status = 404, description = "No such group", body = ErrorBody)))]
pub async fn vms(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<GroupVmList>, ApiError> {
    let (group, members) = hub.group_members(&id)?;
    Ok(Json(GroupVmList::new(&group, &members)))
}

#[utoipa::path(get, path = "/api/v1/vm-groups/{id}/members", operation_id = "vm_group_members", tag = "machine-groups",
    params(("id" = String, Path, description = "Group id")),
    responses((status = 200, description = "The group's VMs as the GUI reads them", body = GroupMembers),
        (status = 404, description = "No such group", body = ErrorBody)))]
pub async fn members(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<GroupMembers>, ApiError> {
    let (_, members) = hub.group_members(&id)?;
    Ok(Json(members.as_slice().into()))
}

#[utoipa::path(put, path = "/api/v1/vm-contexts/{id}/group", operation_id = "set_vm_context_group", tag = "machine-groups",
    params(("id" = String, Path, description = "VM context id or VM name")),
    request_body(content = AssignGroup, description = "`group_id` moves the VM into that group (out of any other); null or absent takes it out of its group"),
    responses((status = 200, description = "The VM's group now", body = GroupAssigned),
        (status = 400, description = "A field out of range", body = ErrorBody),
        (status = 404, description = "No such VM context or group", body = ErrorBody)))]
pub async fn set_group(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<AssignGroup>,
) -> Result<Json<GroupAssigned>, ApiError> {
    let (context_id, membership) = hub.assign_group(&id, req)?;
    Ok(Json(GroupAssigned::new(context_id, membership.as_ref())))
}
