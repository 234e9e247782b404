//! `/api/v1/policies`: the old hub's policy routes, and the PUT it lacked.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use crate::api::protect_views::{PolicyDeleted, PolicyView};
use crate::protect::policies::PolicyRequest;
use crate::state::Hub;

#[utoipa::path(post, path = "/api/v1/policies", operation_id = "create_policy", tag = "policies",
    request_body(content = PolicyRequest, description = "`name` and `primary_repository_id` are required"),
    responses((status = 201, description = "The new policy", body = PolicyView),
        (status = 400, description = "A field missing or too long, or a copy rule to the primary or repeated", body = ErrorBody),
        (status = 404, description = "The primary or a copy destination repository does not exist", body = ErrorBody),
        (status = 409, description = "A policy of that name exists", body = ErrorBody)))]
pub async fn create(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<PolicyRequest>,
) -> Result<(StatusCode, Json<PolicyView>), ApiError> {
    let policy = hub.create_policy(req)?;
    Ok((StatusCode::CREATED, Json((&policy).into())))
}

#[utoipa::path(get, path = "/api/v1/policies", operation_id = "list_policies", tag = "policies",
    responses((status = 200, description = "Every policy, by name (a bare array, as the old hub answered)", body = Vec<PolicyView>)))]
pub async fn list(State(hub): State<Hub>) -> Result<Json<Vec<PolicyView>>, ApiError> {
    Ok(Json(hub.policies()?.iter().map(Into::into).collect()))
}

#[utoipa::path(get, path = "/api/v1/policies/{id}", operation_id = "get_policy", tag = "policies",
    params(("id" = String, Path, description = "Policy id")),
    responses((status = 200, description = "The policy", body = PolicyView),
        (status = 404, description = "No such policy", body = ErrorBody)))]
pub async fn get(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<PolicyView>, ApiError> {
    Ok(Json((&hub.policy(&id)?).into()))
}

#[utoipa::path(put, path = "/api/v1/policies/{id}", operation_id = "update_policy", tag = "policies",
    params(("id" = String, Path, description = "Policy id")),
    request_body(content = PolicyRequest, description = "The fields to change; a missing one keeps its value, `copy_rules` replaces them all"),
    responses((status = 200, description = "The policy as changed", body = PolicyView),
        (status = 400, description = "A field too long, or a copy rule to the primary or repeated", body = ErrorBody),
        (status = 404, description = "No such policy, or a repository it names does not exist", body = ErrorBody),
        (status = 409, description = "Another policy has that name", body = ErrorBody)))]
pub async fn update(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PolicyRequest>,
) -> Result<Json<PolicyView>, ApiError> {
    Ok(Json((&hub.update_policy(&id, req)?).into()))
}

#[utoipa::path(delete, path = "/api/v1/policies/{id}", operation_id = "delete_policy", tag = "policies",
    params(("id" = String, Path, description = "Policy id")),
    responses((status = 200, description = "Deleted, with its copy rules", body = PolicyDeleted),
        (status = 404, description = "No such policy", body = ErrorBody),
        (status = 409, description = "A protection flow uses it", body = ErrorBody)))]
pub async fn delete(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<PolicyDeleted>, ApiError> {
    hub.delete_policy(&id)?;
    Ok(Json(PolicyDeleted {
        message: "policy deleted".into(),
        id,
    }))
}
