//! The JSON of the protection objects (schedules, machine groups, policies): the old Sendense
//! hub's shapes, which the GUI reads.

use serde::Serialize;

use crate::catalog::{ReplicationType, Schedule, fmt_time};

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
