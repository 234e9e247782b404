//! `/api/v1/jobs`: background work, its progress and its log.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::extract::ApiQuery;
use crate::catalog::{Job, JobFilter, JobLogLine, JobStatus, fmt_time};
use crate::jobs::JobKind;
use crate::state::Hub;

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// The job's type (`protection_flow`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    pub status: Option<JobStatus>,
    /// At most this many, newest first (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A job as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: JobStatus,
    /// What the job works on (a flow id, say).
    pub target: String,
    pub progress_percent: f64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub created_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub error: Option<String>,
    /// What the job produced, by kind (a flow run: its execution and backups).
    pub result: Option<serde_json::Value>,
}

impl From<&Job> for JobView {
    fn from(job: &Job) -> JobView {
        let progress_percent = if job.status == JobStatus::Succeeded {
            100.0
        } else if job.bytes_total > 0 {
            (job.bytes_done as f64 * 100.0 / job.bytes_total as f64).min(100.0)
        } else {
            0.0
        };
        JobView {
            id: job.id.clone(),
            kind: job.kind.clone(),
            status: job.status,
            target: job.target.clone(),
            progress_percent,
            bytes_done: job.bytes_done,
            bytes_total: job.bytes_total,
            created_at: fmt_time(job.created_at),
            started_at: job.started_at.map(fmt_time),
            ended_at: job.ended_at.map(fmt_time),
            error: job.error.clone(),
            result: job.result.clone(),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// How many match the filter, without the limit.
    pub total: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobLogLineView {
    pub seq: u64,
    pub at: String,
    /// `info`, `warn` or `error`.
    pub level: String,
    pub message: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobLog {
    pub job_id: String,
    /// The newest lines, oldest first.
    pub lines: Vec<JobLogLineView>,
}

impl From<JobLogLine> for JobLogLineView {
    fn from(l: JobLogLine) -> JobLogLineView {
        JobLogLineView {
            seq: l.seq,
            at: fmt_time(l.at),
            level: l.level,
            message: l.message,
        }
    }
}

/// `202 Accepted` with the job and `Location: /api/v1/jobs/{id}`: what every route that starts
/// background work answers.
pub fn accepted(job: &Job) -> Response {
    (
        StatusCode::ACCEPTED,
        [(LOCATION, format!("/api/v1/jobs/{}", job.id))],
        Json(JobView::from(job)),
    )
        .into_response()
}

#[utoipa::path(get, path = "/api/v1/jobs", operation_id = "list_jobs", tag = "jobs",
    params(JobQuery),
    responses((status = 200, description = "Jobs, newest first", body = JobList)))]
pub async fn list(
    State(hub): State<Hub>,
    ApiQuery(q): ApiQuery<JobQuery>,
) -> Result<Json<JobList>, ApiError> {
    if let Some(kind) = q.kind.as_deref() {
        if JobKind::parse(kind).is_none() {
            let known: Vec<_> = JobKind::ALL.iter().map(|k| k.as_str()).collect();
            return Err(ApiError::BadRequest(format!(
                "unknown job type {kind:?} (known: {})",
                known.join(", ")
            )));
        }
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1 to {MAX_LIMIT}"
        )));
    }
    let filter = JobFilter {
        kind: q.kind,
        status: q.status,
        limit: Some(limit),
    };
    let (jobs, total) = hub.jobs.list(&filter)?;
    Ok(Json(JobList {
        jobs: jobs.iter().map(JobView::from).collect(),
        total,
    }))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", operation_id = "get_job", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "The job, with live progress while it runs", body = JobView),
        (status = 404, description = "No such job", body = ErrorBody)))]
pub async fn get(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    Ok(Json(JobView::from(&hub.jobs.get(&id)?)))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/log", operation_id = "get_job_log", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "The job's newest log lines", body = JobLog),
        (status = 404, description = "No such job", body = ErrorBody)))]
pub async fn log(State(hub): State<Hub>, Path(id): Path<String>) -> Result<Json<JobLog>, ApiError> {
    let lines = hub.jobs.log(&id)?;
    Ok(Json(JobLog {
        job_id: id,
        lines: lines.into_iter().map(JobLogLineView::from).collect(),
    }))
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", operation_id = "cancel_job", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 202, description = "Cancel requested: a queued job ends at once, a running one when its work stops", body = JobView),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job already ended", body = ErrorBody)))]
pub async fn cancel(State(hub): State<Hub>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job = hub.jobs.cancel(&id)?;
    Ok(accepted(&job))
}
