//! `/api/v1/schedules`: the old hub's schedule routes (firing them is the scheduler's).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery};
use crate::api::protect_views::{
    ScheduleDeleted, ScheduleExecutionList, ScheduleExecutionView, ScheduleList, ScheduleView,
};
use crate::catalog::fmt_time;
use crate::protect::run::Trigger;
use crate::protect::schedules::ScheduleRequest;
use crate::state::{Hub, now};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only the enabled schedules.
    #[serde(default)]
    enabled_only: Option<bool>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EnableRequest {
    enabled: bool,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExecutionsQuery {
    /// 1 to 100; 20 when absent.
    #[serde(default)]
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// 1 to 1000000; 1 when absent.
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000000)]
    page: Option<u32>,
}

#[utoipa::path(post, path = "/api/v1/schedules", operation_id = "create_schedule", tag = "schedules",
    request_body(content = ScheduleRequest, description = "`name` and `cron_expression` are required"),
    responses((status = 201, description = "The new schedule", body = ScheduleView),
        (status = 400, description = "A field missing, out of range or too long, or a cron expression that cannot fire", body = ErrorBody),
        (status = 409, description = "A schedule of that name exists", body = ErrorBody)))]
pub async fn create(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<ScheduleRequest>,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    let schedule = hub.create_schedule(req)?;
    Ok((StatusCode::CREATED, Json((&schedule).into())))
}

#[utoipa::path(get, path = "/api/v1/schedules", operation_id = "list_schedules", tag = "schedules",
    params(ListQuery),
    responses((status = 200, description = "Every schedule, by name", body = ScheduleList)))]
pub async fn list(
    State(hub): State<Hub>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ScheduleList>, ApiError> {
    let schedules: Vec<ScheduleView> = hub
        .schedules(q.enabled_only.unwrap_or(false))?
        .iter()
        .map(Into::into)
        .collect();
    let enabled_count = schedules.iter().filter(|s| s.enabled).count();
    Ok(Json(ScheduleList {
        total_count: schedules.len(),
        enabled_count,
        disabled_count: schedules.len() - enabled_count,
        schedules,
        retrieved_at: fmt_time(now()),
    }))
}

#[utoipa::path(get, path = "/api/v1/schedules/{id}", operation_id = "get_schedule", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id")),
    responses((status = 200, description = "The schedule", body = ScheduleView),
        (status = 404, description = "No such schedule", body = ErrorBody)))]
pub async fn get(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    Ok(Json((&hub.schedule(&id)?).into()))
}

#[utoipa::path(put, path = "/api/v1/schedules/{id}", operation_id = "update_schedule", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id")),
    request_body(content = ScheduleRequest, description = "The fields to change; a missing one keeps its value"),
    responses((status = 200, description = "The schedule as changed", body = ScheduleView),
        (status = 400, description = "A field out of range or too long, or a cron expression that cannot fire", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 409, description = "Another schedule has that name", body = ErrorBody)))]
pub async fn update(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ScheduleRequest>,
) -> Result<Json<ScheduleView>, ApiError> {
    Ok(Json((&hub.update_schedule(&id, req)?).into()))
}

#[utoipa::path(delete, path = "/api/v1/schedules/{id}", operation_id = "delete_schedule", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id")),
    responses((status = 200, description = "Deleted", body = ScheduleDeleted),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 409, description = "A machine group or a protection flow uses it", body = ErrorBody)))]
pub async fn delete(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<ScheduleDeleted>, ApiError> {
    hub.delete_schedule(&id)?;
    Ok(Json(ScheduleDeleted {
        success: true,
        message: format!("schedule {id} deleted"),
        deleted_at: fmt_time(now()),
    }))
}

#[utoipa::path(post, path = "/api/v1/schedules/{id}/enable", operation_id = "enable_schedule", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id")),
    request_body = EnableRequest,
    responses((status = 200, description = "The schedule as changed", body = ScheduleView),
        (status = 404, description = "No such schedule", body = ErrorBody)))]
pub async fn enable(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<EnableRequest>,
) -> Result<Json<ScheduleView>, ApiError> {
    Ok(Json((&hub.enable_schedule(&id, req.enabled)?).into()))
}

/// The runs of the schedule's flows made for it (its ticks and its triggers).
#[utoipa::path(get, path = "/api/v1/schedules/{id}/executions", operation_id = "schedule_executions", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id"), ExecutionsQuery),
    responses((status = 200, description = "A page of the schedule's runs, newest first", body = ScheduleExecutionList),
        (status = 400, description = "limit or page out of range", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody)))]
pub async fn executions(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ExecutionsQuery>,
) -> Result<Json<ScheduleExecutionList>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    let page = q.page.unwrap_or(1);
    if !(1..=100).contains(&limit) || page == 0 || page > 1_000_000 {
        return Err(ApiError::BadRequest(
            "limit must be 1 to 100 and page 1 to 1000000".into(),
        ));
    }
    let schedule = hub.schedule(&id)?;
    let offset = u64::from(page - 1) * u64::from(limit);
    let (runs, total) = hub.catalog.schedule_executions(&id, limit, offset)?;
    Ok(Json(ScheduleExecutionList {
        executions: runs
            .iter()
            .map(|e| ScheduleExecutionView::of(e, &schedule.name))
            .collect(),
        total_count: total,
        limit,
        page,
        page_size: limit,
        has_more: offset + (runs.len() as u64) < total,
        retrieved_at: fmt_time(now()),
    }))
}

/// What `trigger` answers: the runs it started, one per enabled flow on the schedule.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TriggerAnswer {
    /// The first run's id (the old hub had one execution per trigger).
    pub execution_id: Option<String>,
    pub schedule_id: String,
    pub schedule_name: String,
    pub status: &'static str,
    #[schema(format = DateTime)]
    pub triggered_at: String,
    pub triggered_by: String,
    pub reason: Option<String>,
    /// Backups to make, over all the runs.
    pub jobs_created: u64,
    pub vms_processed: u64,
    pub summary: String,
    pub execution_ids: Vec<String>,
    /// The runs' jobs (`/api/v1/jobs/{id}`).
    pub job_ids: Vec<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct TriggerRequest {
    pub reason: Option<String>,
    pub created_by: Option<String>,
}

/// Run now every enabled flow on the schedule (as its tick would, without moving its ticks).
#[utoipa::path(post, path = "/api/v1/schedules/{id}/trigger", operation_id = "trigger_schedule", tag = "schedules",
    params(("id" = String, Path, description = "Schedule id")),
    request_body = TriggerRequest,
    responses((status = 200, description = "The runs started", body = TriggerAnswer),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 409, description = "The schedule is disabled", body = ErrorBody)))]
pub async fn trigger(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<TriggerRequest>,
) -> Result<Json<TriggerAnswer>, ApiError> {
    let schedule = hub.schedule(&id)?;
    if !schedule.enabled {
        return Err(ApiError::from(crate::error::Error::Conflict(format!(
            "schedule {id} is disabled"
        ))));
    }
    let triggered_by = req.created_by.unwrap_or_else(|| "api".into());
    let mut answer = TriggerAnswer {
        execution_id: None,
        schedule_id: id.clone(),
        schedule_name: schedule.name.clone(),
        status: "running",
        triggered_at: fmt_time(now()),
        triggered_by: triggered_by.clone(),
        reason: req.reason,
        jobs_created: 0,
        vms_processed: 0,
        summary: String::new(),
        execution_ids: Vec::new(),
        job_ids: Vec::new(),
    };
    let mut refused = Vec::new();
    for flow in hub.flows()? {
        if flow.schedule_id.as_deref() != Some(id.as_str()) || !flow.enabled {
            continue;
        }
        let trigger = Trigger {
            execution_type: "manual",
            triggered_by: triggered_by.clone(),
            scheduled_at: None,
            schedule_id: Some(id.clone()),
        };
        match hub.execute_flow(&flow.id, trigger).await {
            Ok((execution, job)) => {
                answer.jobs_created += execution.jobs_created;
                answer.execution_ids.push(execution.id);
                answer.job_ids.push(job.id);
            }
            Err(err) => refused.push(format!("{}: {err}", flow.name)),
        }
    }
    answer.execution_id = answer.execution_ids.first().cloned();
    answer.summary = format!(
        "{} run(s) started{}",
        answer.execution_ids.len(),
        if refused.is_empty() {
            String::new()
        } else {
            format!("; not started: {}", refused.join("; "))
        }
    );
    if answer.execution_ids.is_empty() {
        answer.status = "skipped";
    }
    Ok(Json(answer))
}
