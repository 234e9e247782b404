//! The JSON of the protection objects (schedules, machine groups, policies): the old Sendense
//! hub's shapes, which the GUI reads.

use serde::Serialize;

use crate::catalog::{
    CopyMode, CopyRule, GroupSummary, Member, Membership, Policy, ReplicationType, Schedule,
    fmt_time,
};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduleView {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub cron_expression: String,
    pub timezone: String,
    pub skip_if_running: bool,
    pub max_concurrent_jobs: u32,
    pub replication_type: ReplicationType,
    pub retry_attempts: u32,
    pub retry_delay_minutes: u32,
    pub enabled: bool,
    pub created_by: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl From<&Schedule> for ScheduleView {
    fn from(s: &Schedule) -> Self {
        ScheduleView {
            id: s.id.clone(),
            name: s.name.clone(),
            description: s.description.clone(),
            cron_expression: s.cron_expression.clone(),
            timezone: s.timezone.clone(),
            skip_if_running: s.skip_if_running,
            max_concurrent_jobs: s.max_concurrent_jobs,
            replication_type: s.replication_type,
            retry_attempts: s.retry_attempts,
            retry_delay_minutes: s.retry_delay_minutes,
            enabled: s.enabled,
            created_by: s.created_by.clone(),
            created_at: fmt_time(s.created_at),
            updated_at: fmt_time(s.updated_at),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleView>,
    pub total_count: usize,
    pub enabled_count: usize,
    pub disabled_count: usize,
    #[schema(format = DateTime)]
    pub retrieved_at: String,
}

/// `DELETE /schedules/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduleDeleted {
    pub success: bool,
    pub message: String,
    #[schema(format = DateTime)]
    pub deleted_at: String,
}

/// One run of a schedule (the old hub's item).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduleExecutionView {
    pub execution_id: String,
    pub schedule_id: String,
    pub schedule_name: String,
    /// scheduled, running, completed, failed, skipped or cancelled.
    pub status: String,
    #[schema(format = DateTime)]
    pub scheduled_at: String,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[schema(format = DateTime)]
    pub completed_at: Option<String>,
    pub duration_seconds: Option<u64>,
    pub jobs_created: u32,
    pub jobs_successful: u32,
    pub jobs_failed: u32,
    pub vms_processed: u32,
    pub error_message: Option<String>,
    /// scheduled or manual.
    pub execution_type: String,
    pub triggered_by: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub summary: Option<serde_json::Value>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl ScheduleExecutionView {
    /// A flow's run for the schedule, in the old item's words (`success` is `completed`).
    pub fn of(e: &crate::catalog::FlowExecution, schedule_name: &str) -> ScheduleExecutionView {
        let status = match e.status.as_str() {
            "success" => "completed",
            other => other,
        };
        let ended = e.completed_at.unwrap_or(e.created_at);
        ScheduleExecutionView {
            execution_id: e.id.clone(),
            schedule_id: e.schedule_id.clone().unwrap_or_default(),
            schedule_name: schedule_name.to_owned(),
            status: status.to_owned(),
            scheduled_at: fmt_time(e.scheduled_at.unwrap_or(e.created_at)),
            started_at: e.started_at.map(fmt_time),
            completed_at: e.completed_at.map(fmt_time),
            duration_seconds: e
                .completed_at
                .zip(e.started_at)
                .map(|(end, start)| (end - start).whole_seconds().max(0) as u64),
            jobs_created: e.jobs_created as u32,
            jobs_successful: e.jobs_completed as u32,
            jobs_failed: e.jobs_failed as u32,
            vms_processed: e.vms_processed as u32,
            error_message: e.error_message.clone(),
            execution_type: e.execution_type.clone(),
            triggered_by: Some(e.triggered_by.clone()),
            summary: Some(serde_json::json!({"flow_id": e.flow_id, "job_id": e.job_id,
                "backup_ids": e.backup_ids})),
            created_at: fmt_time(e.created_at),
            updated_at: fmt_time(ended),
        }
    }
}

/// A page of a schedule's runs, newest first; `total_count` counts them all.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduleExecutionList {
    pub executions: Vec<ScheduleExecutionView>,
    pub total_count: u64,
    pub limit: u32,
    pub page: u32,
    /// The same as `limit` (the old hub's name).
    pub page_size: u32,
    pub has_more: bool,
    #[schema(format = DateTime)]
    pub retrieved_at: String,
}

/// A machine group with its schedule's name and member counts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupView {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub schedule_id: Option<String>,
    pub schedule_name: Option<String>,
    pub max_concurrent_vms: u32,
    pub priority: u32,
    pub total_vms: u32,
    pub enabled_vms: u32,
    pub disabled_vms: u32,
    /// Backups of its VMs running now (counted by the flow runner; 0 until it does).
    pub active_jobs: u32,
    #[schema(format = DateTime)]
    pub last_execution: Option<String>,
    pub created_by: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl From<&GroupSummary> for GroupView {
    fn from(s: &GroupSummary) -> Self {
        let g = &s.group;
        GroupView {
            id: g.id.clone(),
            name: g.name.clone(),
            description: g.description.clone(),
            schedule_id: g.schedule_id.clone(),
            schedule_name: s.schedule_name.clone(),
            max_concurrent_vms: g.max_concurrent_vms,
            priority: g.priority,
            total_vms: s.total_vms,
            enabled_vms: s.enabled_vms,
            disabled_vms: s.total_vms - s.enabled_vms,
            active_jobs: 0,
            last_execution: None,
            created_by: g.created_by.clone(),
            created_at: fmt_time(g.created_at),
            updated_at: fmt_time(g.updated_at),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupList {
    pub groups: Vec<GroupView>,
    pub total_count: usize,
    /// The `schedule_id` the list was filtered by.
    pub filtered_by: Option<String>,
    #[schema(format = DateTime)]
    pub retrieved_at: String,
}

/// `DELETE /machine-groups/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupDeleted {
    pub success: bool,
    pub message: String,
    pub group_id: String,
    #[schema(format = DateTime)]
    pub timestamp: String,
}

/// `POST /machine-groups/{id}/vms`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MembersAdded {
    pub success: bool,
    pub message: String,
    pub group_id: String,
    /// The VMs added by this request (not those already in the group).
    pub added_vm_context_ids: Vec<String>,
    pub total_vms: u32,
}

/// `DELETE /machine-groups/{id}/vms/{vm}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberRemoved {
    pub success: bool,
    pub message: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupVm {
    pub vm_context_id: String,
    pub vm_name: String,
    pub vmware_vm_id: String,
    pub priority: u32,
    pub enabled: bool,
    #[schema(format = DateTime)]
    pub added_at: String,
    pub added_by: String,
}

/// `GET /machine-groups/{id}/vms`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupVmList {
    pub group_id: String,
    pub group_name: String,
    pub total_vms: usize,
    pub vms: Vec<GroupVm>,
    #[schema(format = DateTime)]
    pub retrieved_at: String,
}

impl GroupVmList {
    pub fn new(group: &GroupSummary, members: &[Member]) -> Self {
        GroupVmList {
            group_id: group.group.id.clone(),
            group_name: group.group.name.clone(),
            total_vms: members.len(),
            vms: members
                .iter()
                .map(|m| GroupVm {
                    vm_context_id: m.context.context_id.clone(),
                    vm_name: m.context.vm_name.clone(),
                    vmware_vm_id: m.context.vmware_vm_id.clone(),
                    priority: m.membership.priority,
                    enabled: m.membership.enabled,
                    added_at: fmt_time(m.membership.added_at),
                    added_by: m.membership.added_by.clone(),
                })
                .collect(),
            retrieved_at: fmt_time(crate::state::now()),
        }
    }
}

/// A member as the GUI's protection groups page reads it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupMemberView {
    pub context_id: String,
    pub vm_name: String,
    /// Null when the SNA gave none.
    pub cpu_count: Option<i64>,
    pub memory_mb: i64,
    pub os_type: String,
    pub power_state: String,
    pub enabled: bool,
}

/// `GET /vm-groups/{id}/members`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupMembers {
    pub members: Vec<GroupMemberView>,
    pub count: usize,
}

impl From<&[Member]> for GroupMembers {
    fn from(members: &[Member]) -> Self {
        GroupMembers {
            count: members.len(),
            members: members
                .iter()
                .map(|m| GroupMemberView {
                    context_id: m.context.context_id.clone(),
                    vm_name: m.context.vm_name.clone(),
                    cpu_count: super::inventory::known_cpus(m.context.num_cpu),
                    memory_mb: m.context.memory_mb,
                    os_type: m.context.guest_os.clone(),
                    power_state: m.context.power_state.clone(),
                    enabled: m.membership.enabled,
                })
                .collect(),
        }
    }
}

/// `PUT /vm-contexts/{id}/group`: the VM's membership now (`group_id` null: in no group).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GroupAssigned {
    pub success: bool,
    pub message: String,
    pub vm_context_id: String,
    pub group_id: Option<String>,
    pub priority: Option<u32>,
    pub enabled: Option<bool>,
    #[schema(format = DateTime)]
    pub added_at: Option<String>,
    pub added_by: Option<String>,
}

impl GroupAssigned {
    pub fn new(context_id: String, membership: Option<&Membership>) -> Self {
        GroupAssigned {
            success: true,
            message: match membership {
                Some(m) => format!("VM context {context_id} is in machine group {}", m.group_id),
                None => format!("VM context {context_id} is in no machine group"),
            },
            vm_context_id: context_id,
            group_id: membership.map(|m| m.group_id.clone()),
            priority: membership.map(|m| m.priority),
            enabled: membership.map(|m| m.enabled),
            added_at: membership.map(|m| fmt_time(m.added_at)),
            added_by: membership.map(|m| m.added_by.clone()),
        }
    }
}

/// A copy rule (the old hub's `BackupCopyRule`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CopyRuleView {
    pub id: String,
    pub policy_id: String,
    pub destination_repository_id: String,
    pub copy_mode: CopyMode,
    pub priority: u32,
    pub enabled: bool,
    pub verify_after_copy: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl From<&CopyRule> for CopyRuleView {
    fn from(r: &CopyRule) -> Self {
        CopyRuleView {
            id: r.id.clone(),
            policy_id: r.policy_id.clone(),
            destination_repository_id: r.destination_repository_id.clone(),
            copy_mode: r.copy_mode,
            priority: r.priority,
            enabled: r.enabled,
            verify_after_copy: r.verify_after_copy,
            created_at: fmt_time(r.created_at),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PolicyView {
    pub id: String,
    pub name: String,
    pub enabled: bool,
    pub primary_repository_id: String,
    pub retention_days: Option<u32>,
    /// `null` when the policy has none (as the old hub answered).
    pub copy_rules: Option<Vec<CopyRuleView>>,
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl From<&Policy> for PolicyView {
    fn from(p: &Policy) -> Self {
        let r = &p.retention;
        PolicyView {
            id: p.id.clone(),
            name: p.name.clone(),
            enabled: p.enabled,
            primary_repository_id: p.primary_repository_id.clone(),
            retention_days: p.retention_days,
            copy_rules: (!p.copy_rules.is_empty())
                .then(|| p.copy_rules.iter().map(Into::into).collect()),
            keep_last: r.keep_last,
            keep_hourly: r.keep_hourly,
            keep_daily: r.keep_daily,
            keep_weekly: r.keep_weekly,
            keep_monthly: r.keep_monthly,
            keep_yearly: r.keep_yearly,
            created_at: fmt_time(p.created_at),
            updated_at: fmt_time(p.updated_at),
        }
    }
}

/// `DELETE /policies/{id}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PolicyDeleted {
    pub message: String,
    pub id: String,
}
