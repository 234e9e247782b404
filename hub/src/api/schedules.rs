//! `/api/v1/schedules`: the old hub's schedule routes (firing them is the scheduler's).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery};
use crate::api::protect_views::{
    ScheduleDeleted, ScheduleExecutionList, ScheduleList, ScheduleView,
};
use crate::catalog::fmt_time;
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
    /// From 1; 1 when absent.
    #[serde(default)]
    #[param(minimum = 1)]
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

/// The runs are recorded by the scheduler, which fires the schedules through protection flows;
/// until it does there are none, and `total_count` is 0.
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
    if !(1..=100).contains(&limit) || page == 0 {
        return Err(ApiError::BadRequest(
            "limit must be 1 to 100 and page at least 1".into(),
        ));
    }
    hub.schedule(&id)?;
    Ok(Json(ScheduleExecutionList {
        executions: Vec::new(),
        total_count: 0,
        limit,
        page,
        page_size: limit,
        has_more: false,
        retrieved_at: fmt_time(now()),
    }))
}
