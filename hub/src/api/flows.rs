//! `/api/v1/protection-flows`: the old Sendense routes and shapes, on the hub's flows and jobs.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery};
use crate::catalog::FlowExecution;
use crate::catalog::fmt_time;
use crate::protect::flows::{FlowRequest, FlowStatus, FlowView, seconds_between};
use crate::protect::run::Trigger;
use crate::state::{Hub, now};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlowList {
    pub flows: Vec<FlowView>,
    pub total: usize,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlowSummary {
    pub total_flows: u64,
    pub enabled_flows: u64,
    pub disabled_flows: u64,
    pub backup_flows: u64,
    pub replication_flows: u64,
    pub total_executions_today: u64,
    pub successful_executions_today: u64,
    pub failed_executions_today: u64,
}

/// A run of a flow, in the old execution object's fields, with its job.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExecutionView {
    pub id: String,
    pub flow_id: String,
    pub flow_name: String,
    /// `running`, `success`, `failed` (also a partial result: `partial` is true) or `cancelled`.
    pub status: String,
    /// Some backups completed and some failed.
    pub partial: bool,
    /// `manual`, `scheduled` or `api`.
    pub execution_type: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub execution_time_seconds: u64,
    /// The same as `execution_time_seconds` (the GUI reads this name).
    pub duration_seconds: u64,
    pub jobs_created: u64,
    pub jobs_completed: u64,
    pub jobs_failed: u64,
    pub jobs_skipped: u64,
    pub vms_processed: u64,
    pub bytes_transferred: u64,
    pub error_message: Option<String>,
    /// The backups this run started.
    pub created_job_ids: Vec<String>,
    pub triggered_by: String,
    pub scheduled_at: Option<String>,
    pub created_at: String,
    /// The run's job (`/api/v1/jobs/{job_id}`).
    pub job_id: String,
}

impl ExecutionView {
    fn new(e: &FlowExecution, flow_name: &str) -> ExecutionView {
        let seconds = seconds_between(e.started_at, e.completed_at.or(Some(now())));
        ExecutionView {
            id: e.id.clone(),
            flow_id: e.flow_id.clone(),
            flow_name: flow_name.to_owned(),
            status: e.status.clone(),
            partial: e.status == "failed" && e.jobs_completed > 0 && e.jobs_failed > 0,
            execution_type: e.execution_type.clone(),
            started_at: e.started_at.map(fmt_time),
            completed_at: e.completed_at.map(fmt_time),
            execution_time_seconds: seconds,
            duration_seconds: seconds,
            jobs_created: e.jobs_created,
            jobs_completed: e.jobs_completed,
            jobs_failed: e.jobs_failed,
            jobs_skipped: e.jobs_skipped,
            vms_processed: e.vms_processed,
            bytes_transferred: e.bytes_transferred,
            error_message: e.error_message.clone(),
            created_job_ids: e.backup_ids.clone(),
            triggered_by: e.triggered_by.clone(),
            scheduled_at: e.scheduled_at.map(fmt_time),
            created_at: fmt_time(e.created_at),
            job_id: e.job_id.clone(),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExecutionList {
    /// Newest first.
    pub executions: Vec<ExecutionView>,
    /// All the flow's executions, not only those listed.
    pub total: u64,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExecutionQuery {
    /// At most this many (default 10, at most 100).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct BulkRequest {
    #[schema(max_items = 1000)]
    pub flow_ids: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BulkResult {
    pub action: &'static str,
    pub requested: usize,
    pub successful: usize,
    pub failed: usize,
    /// `"<flow id>: <reason>"` for each that failed.
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlowTest {
    pub valid: bool,
    pub errors: Option<Vec<String>>,
}

#[utoipa::path(post, path = "/api/v1/protection-flows", operation_id = "create_protection_flow", tag = "protection-flows",
    request_body = FlowRequest,
    responses((status = 201, description = "The flow", body = FlowView),
        (status = 404, description = "No such target, repository, policy or schedule", body = ErrorBody),
        (status = 409, description = "A flow of that name exists", body = ErrorBody)))]
pub async fn create(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<FlowRequest>,
) -> Result<Response, ApiError> {
    let flow = hub.create_flow(req).await?;
    Ok((StatusCode::CREATED, Json(hub.flow_view(&flow)?)).into_response())
}

#[utoipa::path(get, path = "/api/v1/protection-flows", operation_id = "list_protection_flows", tag = "protection-flows",
    responses((status = 200, description = "Every flow with its last run", body = FlowList)))]
pub async fn list(State(hub): State<Hub>) -> Result<Json<FlowList>, ApiError> {
    let flows = hub.flow_views()?;
    Ok(Json(FlowList {
        total: flows.len(),
        flows,
    }))
}

#[utoipa::path(get, path = "/api/v1/protection-flows/summary", operation_id = "protection_flow_summary", tag = "protection-flows",
    responses((status = 200, description = "Counts of flows and of today's runs (UTC)", body = FlowSummary)))]
pub async fn summary(State(hub): State<Hub>) -> Result<Json<FlowSummary>, ApiError> {
    let today = now().replace_time(time::Time::MIDNIGHT);
    let mut s = FlowSummary {
        total_flows: 0,
        enabled_flows: 0,
        disabled_flows: 0,
        backup_flows: 0,
        replication_flows: 0,
        total_executions_today: 0,
        successful_executions_today: 0,
        failed_executions_today: 0,
    };
    for flow in hub.flows()? {
        s.total_flows += 1;
        if flow.enabled {
            s.enabled_flows += 1
        } else {
            s.disabled_flows += 1
        }
        if flow.flow_type == "backup" {
            s.backup_flows += 1
        } else {
            s.replication_flows += 1
        }
    }
    let (total, successful, failed) = hub.catalog.execution_counts_since(today)?;
    s.total_executions_today = total;
    s.successful_executions_today = successful;
    s.failed_executions_today = failed;
    Ok(Json(s))
}

#[utoipa::path(get, path = "/api/v1/protection-flows/{id}", operation_id = "get_protection_flow", tag = "protection-flows",
    params(("id" = String, Path, description = "Flow id")),
    responses((status = 200, description = "The flow", body = FlowView),
        (status = 404, description = "No such flow", body = ErrorBody)))]
pub async fn get(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<FlowView>, ApiError> {
    Ok(Json(hub.flow_view(&hub.flow(&id)?)?))
}

#[utoipa::path(put, path = "/api/v1/protection-flows/{id}", operation_id = "update_protection_flow", tag = "protection-flows",
    params(("id" = String, Path, description = "Flow id")),
    request_body = FlowRequest,
    responses((status = 200, description = "The flow as changed", body = FlowView),
        (status = 404, description = "No such flow, target, repository, policy or schedule", body = ErrorBody),
        (status = 409, description = "A flow of that name exists", body = ErrorBody)))]
pub async fn update(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<FlowRequest>,
) -> Result<Json<FlowView>, ApiError> {
    let flow = hub.update_flow(&id, req).await?;
    Ok(Json(hub.flow_view(&flow)?))
}

#[utoipa::path(delete, path = "/api/v1/protection-flows/{id}", operation_id = "delete_protection_flow", tag = "protection-flows",
    params(("id" = String, Path, description = "Flow id")),
    responses((status = 204, description = "Deleted, with its executions (their jobs stay)"),
        (status = 404, description = "No such flow", body = ErrorBody),
        (status = 409, description = "A run is in progress", body = ErrorBody)))]
pub async fn delete(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    hub.delete_flow(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(patch, path = "/api/v1/protection-flows/{id}/enable", operation_id = "enable_protection_flow", tag = "protection-flows",
    params(("id" = String, Path, description = "Flow id")),
    responses((status = 200, description = "The flow, enabled", body = FlowView),
        (status = 404, description = "No such flow", body = ErrorBody)))]
pub async fn enable(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<FlowView>, ApiError> {
    let flow = hub.set_flow_enabled(&id, true).await?;
    Ok(Json(hub.flow_view(&flow)?))
}

#[utoipa::path(patch, path = "/api/v1/protection-flows/{id}/disable", operation_id = "disable_protection_flow", tag = "protection-flows",
    params(("id" = String, Path, description = "Flow id")),
    responses((status = 200, description = "The flow, disabled (a run in progress goes on)", body = FlowView),
        (status = 404, description = "No such flow", body = ErrorBody)))]
pub async fn disable(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<FlowView>, ApiError> {
    let flow = hub.set_flow_enabled(&id, false).await?;
    Ok(Json(hub.flow_view(&flow)?))
}

#[utoipa::path(post, path = "/api/v1/protection-flows/{id}/execute", operation_id = "execute_protection_flow", tag = "protection-flows",
    params(("id" = String, Path, description = "Flow id")),
    responses((status = 200, description = "The run, started (its job: job_id)", body = ExecutionView),
        (status = 404, description = "No such flow or target", body = ErrorBody),
        (status = 409, description = "A run is in progress", body = ErrorBody)))]
pub async fn execute(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<ExecutionView>, ApiError> {
    let trigger = Trigger {
        execution_type: "manual",
        triggered_by: "api".into(),
        scheduled_at: None,
        schedule_id: None,
    };
    let (execution, _job) = hub.execute_flow(&id, trigger).await?;
    let flow = hub.flow(&id)?;
    Ok(Json(ExecutionView::new(&execution, &flow.name)))
}

#[utoipa::path(get, path = "/api/v1/protection-flows/{id}/executions", operation_id = "list_protection_flow_executions", tag = "protection-flows",
    params(("id" = String, Path, description = "Flow id"), ExecutionQuery),
    responses((status = 200, description = "The flow's runs, newest first", body = ExecutionList),
        (status = 404, description = "No such flow", body = ErrorBody)))]
pub async fn executions(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ExecutionQuery>,
) -> Result<Json<ExecutionList>, ApiError> {
    let limit = q.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be 1 to 100".into()));
    }
    let flow = hub.flow(&id)?;
    let (list, total) = hub.catalog.executions(&id, limit)?;
    let executions = list
        .iter()
        .map(|e| ExecutionView::new(e, &flow.name))
        .collect();
    Ok(Json(ExecutionList { executions, total }))
}

#[utoipa::path(get, path = "/api/v1/protection-flows/{id}/status", operation_id = "protection_flow_status", tag = "protection-flows",
    params(("id" = String, Path, description = "Flow id")),
    responses((status = 200, description = "The flow's last run and next one", body = FlowStatus),
        (status = 404, description = "No such flow", body = ErrorBody)))]
pub async fn status(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<FlowStatus>, ApiError> {
    Ok(Json(hub.flow_view(&hub.flow(&id)?)?.status))
}

#[utoipa::path(post, path = "/api/v1/protection-flows/{id}/test", operation_id = "test_protection_flow", tag = "protection-flows",
    params(("id" = String, Path, description = "Flow id")),
    responses((status = 200, description = "Whether the flow can run, and why not", body = FlowTest),
        (status = 404, description = "No such flow", body = ErrorBody)))]
pub async fn test(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<FlowTest>, ApiError> {
    let flow = hub.flow(&id)?;
    let errors: Vec<String> = hub
        .flow_problems(&flow)?
        .iter()
        .map(|e| e.to_string())
        .collect();
    Ok(Json(FlowTest {
        valid: errors.is_empty(),
        errors: (!errors.is_empty()).then_some(errors),
    }))
}

const MAX_BULK: usize = 1000;

async fn bulk(
    hub: &Hub,
    req: BulkRequest,
    action: &'static str,
) -> Result<Json<BulkResult>, ApiError> {
    if req.flow_ids.len() > MAX_BULK {
        return Err(ApiError::BadRequest(format!("at most {MAX_BULK} flow_ids")));
    }
    let mut errors = Vec::new();
    for id in &req.flow_ids {
        let done = match action {
            "enable" => hub.set_flow_enabled(id, true).await.map(drop),
            "disable" => hub.set_flow_enabled(id, false).await.map(drop),
            _ => hub.delete_flow(id).await,
        };
        if let Err(err) = done {
            errors.push(format!("{id}: {err}"));
        }
    }
    Ok(Json(BulkResult {
        action,
        requested: req.flow_ids.len(),
        successful: req.flow_ids.len() - errors.len(),
        failed: errors.len(),
        errors,
    }))
}

#[utoipa::path(post, path = "/api/v1/protection-flows/bulk-enable", operation_id = "bulk_enable_protection_flows", tag = "protection-flows",
    request_body = BulkRequest,
    responses((status = 200, description = "What was done to each", body = BulkResult)))]
pub async fn bulk_enable(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<BulkRequest>,
) -> Result<Json<BulkResult>, ApiError> {
    bulk(&hub, req, "enable").await
}

#[utoipa::path(post, path = "/api/v1/protection-flows/bulk-disable", operation_id = "bulk_disable_protection_flows", tag = "protection-flows",
    request_body = BulkRequest,
    responses((status = 200, description = "What was done to each", body = BulkResult)))]
pub async fn bulk_disable(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<BulkRequest>,
) -> Result<Json<BulkResult>, ApiError> {
    bulk(&hub, req, "disable").await
}

#[utoipa::path(post, path = "/api/v1/protection-flows/bulk-delete", operation_id = "bulk_delete_protection_flows", tag = "protection-flows",
    request_body = BulkRequest,
    responses((status = 200, description = "What was done to each", body = BulkResult)))]
pub async fn bulk_delete(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<BulkRequest>,
) -> Result<Json<BulkResult>, ApiError> {
    bulk(&hub, req, "delete").await
}
