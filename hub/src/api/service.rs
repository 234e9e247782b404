//! The service's own routes: `/health` (`/metrics` is in `metrics`, the document in `openapi`).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ErrorBody};
use crate::state::Hub;

#[utoipa::path(get, path = "/health", operation_id = "health", tag = "service",
    security(()),
    responses((status = 200, description = "Every check passed", body = crate::repo::health::Health),
        (status = 503, description = "A check failed: the report and the error body", body = UnhealthyBody)))]
/// `{status: "healthy", service, version, database, repositories}`; when a check fails, 503 with
/// the same fields and the error body's (`error` names the failing checks).
pub(super) async fn health(State(hub): State<Hub>) -> Response {
    let health = hub.health().await;
    if health.is_healthy() {
        return Json(health).into_response();
    }
    let (status, error) = ApiError::Unavailable(health.failures().join("; ")).body();
    (status, Json(UnhealthyBody { health, error })).into_response()
}

/// The 503 of `/health`: the health report and the error body in one object.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct UnhealthyBody {
    #[serde(flatten)]
    health: crate::repo::health::Health,
    #[serde(flatten)]
    error: ErrorBody,
}
