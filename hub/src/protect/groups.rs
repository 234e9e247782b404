//! Machine groups: VMs backed up together by a group's protection flow, each VM in at most one
//! group, with an optional schedule and a bound on how many of its VMs back up at once.

use serde::Deserialize;

use super::fields::{self, bounded, description, present, required_name};
use crate::catalog::{GroupSummary, MachineGroup, Member, Membership};
use crate::error::{Error, Result};
use crate::state::{Hub, now};

/// The most VM contexts one request adds.
pub const MAX_MEMBERS_PER_REQUEST: usize = 1000;

/// The body of `POST` and `PUT /api/v1/machine-groups[/{id}]`. On create `name` is required;
/// on update a missing field keeps its value.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct GroupRequest {
    /// 1 to 255 bytes, not only spaces; unique.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255)]
    pub name: Option<String>,
    /// At most 1024 bytes; `null` or empty clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 1024)]
    pub description: Option<Option<String>>,
    /// A schedule's id; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub schedule_id: Option<Option<String>>,
    /// 1 to 100; 10 when absent.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub max_concurrent_vms: Option<u32>,
    /// 0 to 100; 50 when absent.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100)]
    pub priority: Option<u32>,
    /// 1 to 255 bytes; `api` when absent. Set on create only.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255)]
    pub created_by: Option<String>,
}

/// The body of `POST /api/v1/machine-groups/{id}/vms`: one VM (`vm_context_id`, the old API)
/// or several (`vm_context_ids`, what the GUI sends), or both.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct AddMembers {
    #[serde(default)]
    pub vm_context_id: Option<String>,
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub vm_context_ids: Option<Vec<String>>,
    /// 0 to 100; 50 when absent.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100)]
    pub priority: Option<u32>,
    /// `true` when absent; a disabled member is not backed up by the group's flows.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// 1 to 255 bytes; `api` when absent.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255)]
    pub added_by: Option<String>,
}

/// The body of `PUT /api/v1/vm-contexts/{id}/group`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct AssignGroup {
    /// The group to move the VM into; `null` takes it out of its group.
    #[serde(default)]
    pub group_id: Option<String>,
    /// 0 to 100; 50 when absent.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100)]
    pub priority: Option<u32>,
    /// `true` when absent.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// 1 to 255 bytes; `api` when absent.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255)]
    pub added_by: Option<String>,
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("no machine group {id}"))
}

fn membership(
    context_id: String,
    group_id: &str,
    priority: Option<u32>,
    enabled: Option<bool>,
    added_by: Option<&str>,
) -> Result<Membership> {
    Ok(Membership {
        context_id,
        group_id: group_id.to_owned(),
        priority: bounded("priority", priority.unwrap_or(50), 0..=100)?,
        enabled: enabled.unwrap_or(true),
        added_by: required_name("added_by", added_by, Some("api"))?,
        added_at: now(),
    })
}

impl Hub {
    /// The request over the current group (none on create), checked; its schedule must exist.
    fn merge_group(
        &self,
        req: GroupRequest,
        current: Option<&MachineGroup>,
    ) -> Result<MachineGroup> {
        let schedule_id = fields::merged(req.schedule_id, current.map(|g| &g.schedule_id));
        if let Some(id) = &schedule_id {
            self.schedule(id)?;
        }
        let time = now();
        Ok(MachineGroup {
            id: current.map_or_else(fields::new_id, |g| g.id.clone()),
            name: required_name(
                "name",
                req.name.as_deref(),
                current.map(|g| g.name.as_str()),
            )?,
            description: description(fields::merged(
                req.description,
                current.map(|g| &g.description),
            ))?,
            schedule_id,
            max_concurrent_vms: bounded(
                "max_concurrent_vms",
                req.max_concurrent_vms
                    .or(current.map(|g| g.max_concurrent_vms))
                    .unwrap_or(10),
                1..=100,
            )?,
            priority: bounded(
                "priority",
                req.priority.or(current.map(|g| g.priority)).unwrap_or(50),
                0..=100,
            )?,
            created_by: match current {
                Some(g) => g.created_by.clone(),
                None => required_name("created_by", req.created_by.as_deref(), Some("api"))?,
            },
            created_at: current.map_or(time, |g| g.created_at),
            updated_at: time,
        })
    }

    pub fn create_group(&self, req: GroupRequest) -> Result<GroupSummary> {
        let group = self.merge_group(req, None)?;
        self.catalog.insert_group(&group)?;
        tracing::info!(group = %group.id, name = %group.name, "machine group created");
        self.group(&group.id)
    }

    /// By name; only those on `schedule_id` when given.
    pub fn groups(&self, schedule_id: Option<&str>) -> Result<Vec<GroupSummary>> {
        self.catalog.groups(schedule_id)
    }

    pub fn group(&self, id: &str) -> Result<GroupSummary> {
        self.catalog.group(id)?.ok_or_else(|| not_found(id))
    }

    pub fn update_group(&self, id: &str, req: GroupRequest) -> Result<GroupSummary> {
        let current = self.group(id)?.group;
        let group = self.merge_group(req, Some(&current))?;
        if !self.catalog.update_group(&group)? {
            return Err(not_found(id));
        }
        tracing::info!(group = %id, "machine group updated");
        self.group(id)
    }

    /// Refused while it has VMs (400) or a protection flow targets it (409).
    pub fn delete_group(&self, id: &str) -> Result<()> {
        if !self.catalog.delete_group(id)? {
            return Err(not_found(id));
        }
        tracing::info!(group = %id, "machine group deleted");
        Ok(())
    }

    /// The group and its members with their VM contexts.
    pub fn group_members(&self, id: &str) -> Result<(GroupSummary, Vec<Member>)> {
        let group = self.group(id)?;
        let members = self.catalog.group_members(id)?;
        Ok((group, members))
    }

    /// VM contexts in no group: what the GUI's "Create Group" offers.
    /// Each grouped VM context's group (id, name, the member's priority and enabled), by
    /// context id.
    pub fn group_memberships(
        &self,
    ) -> Result<std::collections::HashMap<String, (crate::catalog::Membership, String)>> {
        self.catalog.memberships()
    }

    pub fn ungrouped_vm_contexts(&self) -> Result<Vec<crate::catalog::VmContext>> {
        let mut out = Vec::new();
        for context in self.vm_contexts()? {
            if self.catalog.membership(&context.context_id)?.is_none() {
                out.push(context);
            }
        }
        Ok(out)
    }

    /// The context id of a VM named by context id or VM name.
    fn context_id(&self, name_or_id: &str) -> Result<String> {
        self.catalog
            .vm_context(name_or_id)?
            .map(|(context, _)| context.context_id)
            .ok_or_else(|| Error::NotFound(format!("no VM context {name_or_id}")))
    }

    /// Add VMs to a group, all or none: an unknown VM is 404, one in another group 409; one
    /// already in this group stays as it is. Returns the context ids added.
    pub fn add_group_members(&self, id: &str, req: AddMembers) -> Result<Vec<String>> {
        self.group(id)?;
        let mut wanted: Vec<String> = req.vm_context_id.into_iter().collect();
        wanted.extend(req.vm_context_ids.unwrap_or_default());
        if wanted.is_empty() || wanted.len() > MAX_MEMBERS_PER_REQUEST {
            return Err(Error::Invalid(format!(
                "give 1 to {MAX_MEMBERS_PER_REQUEST} VM contexts in vm_context_id or vm_context_ids"
            )));
        }
        let mut members: Vec<Membership> = Vec::with_capacity(wanted.len());
        for vm in &wanted {
            let context_id = self.context_id(vm)?;
            if members.iter().any(|m| m.context_id == context_id) {
                continue;
            }
            members.push(membership(
                context_id,
                id,
                req.priority,
                req.enabled,
                req.added_by.as_deref(),
            )?);
        }
        let added = self.catalog.add_members(&members)?;
        tracing::info!(group = %id, added = added.len(), "VMs added to machine group");
        Ok(added)
    }

    pub fn remove_group_member(&self, id: &str, vm: &str) -> Result<()> {
        self.group(id)?;
        let context_id = self.context_id(vm)?;
        if !self.catalog.remove_member(id, &context_id)? {
            return Err(Error::NotFound(format!(
                "VM context {vm} is not in machine group {id}"
            )));
        }
        tracing::info!(group = %id, context = %context_id, "VM removed from machine group");
        Ok(())
    }

    /// Put a VM into a group (moving it out of any other), or out of its group with no
    /// `group_id`. Returns the context id and its membership now.
    pub fn assign_group(&self, vm: &str, req: AssignGroup) -> Result<(String, Option<Membership>)> {
        let context_id = self.context_id(vm)?;
        let new = match &req.group_id {
            Some(group_id) => {
                self.group(group_id)?;
                Some(membership(
                    context_id.clone(),
                    group_id,
                    req.priority,
                    req.enabled,
                    req.added_by.as_deref(),
                )?)
            }
            None => None,
        };
        self.catalog.set_membership(&context_id, new.as_ref())?;
        tracing::info!(context = %context_id, group = ?req.group_id, "VM group set");
        Ok((context_id, new))
    }
}
