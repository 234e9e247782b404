//! Records of the protection objects (`hub::protect`): schedules, machine groups and their
//! members, policies with their copy rules.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::inventory::VmContext;

/// What a schedule's runs make: the old hub's names; `auto` is full when the VM has no usable
/// base, else incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationType {
    Full,
    Incremental,
    Auto,
}

impl ReplicationType {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicationType::Full => "full",
            ReplicationType::Incremental => "incremental",
            ReplicationType::Auto => "auto",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "full" => Some(ReplicationType::Full),
            "incremental" => Some(ReplicationType::Incremental),
            "auto" => Some(ReplicationType::Auto),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
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
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineGroup {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub schedule_id: Option<String>,
    pub max_concurrent_vms: u32,
    pub priority: u32,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A group with what its lists show: its schedule's name and its member counts.
#[derive(Debug, Clone)]
pub struct GroupSummary {
    pub group: MachineGroup,
    pub schedule_name: Option<String>,
    pub total_vms: u32,
    pub enabled_vms: u32,
}

/// A VM context's place in its (one) group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub context_id: String,
    pub group_id: String,
    pub priority: u32,
    pub enabled: bool,
    pub added_by: String,
    pub added_at: OffsetDateTime,
}

/// A member with its VM context.
#[derive(Debug, Clone)]
pub struct Member {
    pub membership: Membership,
    pub context: VmContext,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CopyMode {
    Immediate,
    Scheduled,
    Manual,
}

impl CopyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyMode::Immediate => "immediate",
            CopyMode::Scheduled => "scheduled",
            CopyMode::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "immediate" => Some(CopyMode::Immediate),
            "scheduled" => Some(CopyMode::Scheduled),
            "manual" => Some(CopyMode::Manual),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyRule {
    pub id: String,
    pub policy_id: String,
    pub destination_repository_id: String,
    pub copy_mode: CopyMode,
    pub priority: u32,
    pub enabled: bool,
    pub verify_after_copy: bool,
    pub created_at: OffsetDateTime,
}

/// How many backups the retention rules keep (each unset rule keeps nothing by itself).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub id: String,
    pub name: String,
    pub enabled: bool,
    pub primary_repository_id: String,
    pub retention_days: Option<u32>,
    pub retention: Retention,
    pub copy_rules: Vec<CopyRule>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}
