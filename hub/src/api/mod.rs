//! The REST API, HTTP only: `fn app(hub) -> Router`, authentication, the JSON extractor, one
//! handler file per resource, the error type (`error`), the JSON views (`views`, and
//! `protect_views` for schedules, machine groups and policies), the OpenAPI
//! document (`openapi`) and the limits on API connections (`http_conn`).
//!
//! Handlers call `Hub` operations; nothing outside `api` imports it (but `serve`, which mounts
//! it).

mod auth;
mod backups;
mod copies;
mod credentials;
mod error;
pub mod extract;
mod file_restore;
mod flows;
mod groups;
pub(crate) mod http_conn;
mod inventory;
pub mod jobs;
mod metrics;
pub mod openapi;
mod policies;
pub mod protect_views;
mod prune;
mod repositories;
mod repository_views;
mod restores;
mod schedules;
mod service;
mod verify;
pub mod views;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};

pub use error::{ApiError, ErrorBody};
pub use extract::{ApiJson, ApiQuery};

use auth::{require_token, require_token_or_loopback};

use crate::state::Hub;

pub fn app(hub: Hub) -> Router {
    // The routes the SNA backup client calls: it sends no token, and reaches us through the SSH
    // tunnel whose end is on this host.
    let sna = Router::new()
        .route("/api/v1/backups/{id}/complete", post(backups::complete))
        .route("/api/v1/backups/changeid", get(backups::change_id))
        .route("/api/v1/telemetry/backup/{id}", post(backups::telemetry))
        .route_layer(middleware::from_fn_with_state(
            hub.clone(),
            require_token_or_loopback,
        ));
    let operator = Router::new()
        .merge(backup_routes())
        .merge(inventory_routes())
        .merge(flow_routes())
        .merge(schedule_group_policy_routes())
        .merge(job_routes())
        .route_layer(middleware::from_fn_with_state(hub.clone(), require_token));
    Router::new()
        .route("/health", get(service::health))
        .route("/api/v1/openapi.json", get(openapi::openapi_json))
        .route("/metrics", get(metrics::metrics))
        .merge(sna)
        .merge(operator)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(log_request))
        .with_state(hub)
}

/// Backups, restores and repositories.
fn backup_routes() -> Router<Hub> {
    Router::new()
        .route("/api/v1/backups", post(backups::create).get(backups::list))
        .route("/api/v1/backups/stats", get(backups::stats))
        .route(
            "/api/v1/backups/{id}",
            get(backups::get).delete(backups::delete),
        )
        .route("/api/v1/backups/{id}/cancel", post(backups::cancel))
        .route("/api/v1/backups/{id}/chain", get(backups::chain))
        .route(
            "/api/v1/backups/{id}/protected",
            put(backups::set_protected),
        )
        .route("/api/v1/prune", post(prune::prune))
        .route("/api/v1/backups/{id}/verify", post(verify::verify_backup))
        .route("/api/v1/backups/{id}/copy", post(copies::copy))
        .route("/api/v1/backups/{id}/copies", get(copies::copies))
        .route("/api/v1/copies/{id}", delete(copies::delete_copy))
        .route("/api/v1/copies/{id}/bring-back", post(copies::bring_back))
        .route(
            "/api/v1/repositories/{id}/copies",
            get(copies::repository_copies),
        )
        .route("/api/v1/verify", post(verify::verify))
        .route(
            "/api/v1/repositories/{id}/verify-new-backups",
            put(verify::set_verify_new),
        )
        .route(
            "/api/v1/restores",
            post(restores::create).get(restores::list),
        )
        .route("/api/v1/restores/{id}", delete(restores::delete))
        .merge(file_restore_routes())
        .route(
            "/api/v1/repositories",
            get(repositories::list).post(repositories::create),
        )
        .route("/api/v1/repositories/test", post(repositories::test_config))
        .route(
            "/api/v1/repositories/refresh-storage",
            post(repositories::refresh_storage),
        )
        .route("/api/v1/repositories/{id}", delete(repositories::delete))
        .route("/api/v1/repositories/{id}/test", post(repositories::test))
        .route(
            "/api/v1/repositories/{id}/rescan",
            post(repositories::rescan),
        )
        .route(
            "/api/v1/repositories/{id}/storage",
            get(repositories::storage),
        )
}

/// File-level restore: the old hub's `/restore/...` and the volumes of a backup's disk.
fn file_restore_routes() -> Router<Hub> {
    Router::new()
        .route("/api/v1/restore/mount", post(file_restore::mount))
        .route("/api/v1/restore/mounts", get(file_restore::mounts))
        .route("/api/v1/restore/resources", get(file_restore::resources))
        .route(
            "/api/v1/restore/cleanup-status",
            get(file_restore::cleanup_status),
        )
        .route("/api/v1/restore/{id}", delete(file_restore::unmount))
        .route("/api/v1/restore/{id}/files", get(file_restore::files))
        .route(
            "/api/v1/restore/{id}/file-info",
            get(file_restore::file_info),
        )
        .route("/api/v1/restore/{id}/download", get(file_restore::download))
        .route(
            "/api/v1/restore/{id}/download-directory",
            get(file_restore::download_directory),
        )
        .route(
            "/api/v1/backups/{id}/disks/{disk_id}/volumes",
            get(file_restore::volumes),
        )
}

/// vCenter credentials, discovery and VM contexts.
fn inventory_routes() -> Router<Hub> {
    Router::new()
        .route(
            "/api/v1/vmware-credentials",
            get(credentials::list).post(credentials::create),
        )
        .route(
            "/api/v1/vmware-credentials/default",
            get(credentials::default),
        )
        .route(
            "/api/v1/vmware-credentials/{id}",
            get(credentials::get)
                .put(credentials::update)
                .delete(credentials::delete),
        )
        .route(
            "/api/v1/vmware-credentials/{id}/test",
            post(credentials::test),
        )
        .route(
            "/api/v1/vmware-credentials/{id}/set-default",
            put(credentials::set_default),
        )
        .route("/api/v1/discovery/discover-vms", post(inventory::discover))
        .route("/api/v1/discovery/ungrouped-vms", get(inventory::ungrouped))
        .route("/api/v1/vm-contexts", get(inventory::list))
        .route(
            "/api/v1/vm-contexts/{id}",
            get(inventory::get).delete(inventory::delete),
        )
        .route("/api/v1/vm-contexts/{id}/disks", get(inventory::disks))
        .route("/api/v1/vm-contexts/by-id/{id}", get(inventory::get_by_id))
}

/// Protection flows and their runs.
fn flow_routes() -> Router<Hub> {
    Router::new()
        .route(
            "/api/v1/protection-flows",
            post(flows::create).get(flows::list),
        )
        .route("/api/v1/protection-flows/summary", get(flows::summary))
        .route(
            "/api/v1/protection-flows/bulk-enable",
            post(flows::bulk_enable),
        )
        .route(
            "/api/v1/protection-flows/bulk-disable",
            post(flows::bulk_disable),
        )
        .route(
            "/api/v1/protection-flows/bulk-delete",
            post(flows::bulk_delete),
        )
        .route(
            "/api/v1/protection-flows/{id}",
            get(flows::get).put(flows::update).delete(flows::delete),
        )
        .route("/api/v1/protection-flows/{id}/enable", patch(flows::enable))
        .route(
            "/api/v1/protection-flows/{id}/disable",
            patch(flows::disable),
        )
        .route(
            "/api/v1/protection-flows/{id}/execute",
            post(flows::execute),
        )
        .route(
            "/api/v1/protection-flows/{id}/executions",
            get(flows::executions),
        )
        .route("/api/v1/protection-flows/{id}/status", get(flows::status))
        .route("/api/v1/protection-flows/{id}/test", post(flows::test))
}

/// Background work.
fn job_routes() -> Router<Hub> {
    Router::new()
        .route("/api/v1/jobs", get(jobs::list))
        .route("/api/v1/jobs/{id}", get(jobs::get))
        .route("/api/v1/jobs/{id}/log", get(jobs::log))
        .route("/api/v1/jobs/{id}/cancel", post(jobs::cancel))
}

/// Schedules, machine groups and policies (`crate::protect`), behind the operator's token.
fn schedule_group_policy_routes() -> Router<Hub> {
    Router::new()
        .route(
            "/api/v1/schedules",
            post(schedules::create).get(schedules::list),
        )
        .route(
            "/api/v1/schedules/{id}",
            get(schedules::get)
                .put(schedules::update)
                .delete(schedules::delete),
        )
        .route("/api/v1/schedules/{id}/enable", post(schedules::enable))
        .route("/api/v1/schedules/{id}/trigger", post(schedules::trigger))
        .route(
            "/api/v1/schedules/{id}/executions",
            get(schedules::executions),
        )
        .route(
            "/api/v1/machine-groups",
            post(groups::create).get(groups::list),
        )
        .route(
            "/api/v1/machine-groups/{id}",
            get(groups::get).put(groups::update).delete(groups::delete),
        )
        .route(
            "/api/v1/machine-groups/{id}/vms",
            post(groups::add_vms).get(groups::vms),
        )
        .route(
            "/api/v1/machine-groups/{id}/vms/{context_id}",
            delete(groups::remove_vm),
        )
        .route("/api/v1/vm-groups/{id}/members", get(groups::members))
        .route("/api/v1/vm-contexts/{id}/group", put(groups::set_group))
        .route(
            "/api/v1/policies",
            post(policies::create).get(policies::list),
        )
        .route(
            "/api/v1/policies/{id}",
            get(policies::get)
                .put(policies::update)
                .delete(policies::delete),
        )
}

/// One log line per request: state changes at info, reads and the periodic telemetry at debug,
/// failures at warn.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let ms = started.elapsed().as_millis() as u64;
    if resp.status().is_server_error() {
        tracing::warn!(%method, %path, status, ms, "request");
    } else if method == axum::http::Method::GET || path.starts_with("/api/v1/telemetry/") {
        tracing::debug!(%method, %path, status, ms, "request");
    } else {
        tracing::info!(%method, %path, status, ms, "request");
    }
    resp
}

/// Every error response in the one shape: refusals axum makes before a handler runs (a path
/// segment that is not UTF-8, say) come as plain text, and are rewritten here.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let text = axum::body::to_bytes(resp.into_body(), 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    ApiError::from_plain(status, &text).into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
