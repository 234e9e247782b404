//! The REST API, HTTP only: `fn app(hub) -> Router`, authentication, the JSON extractor, one
//! handler file per resource, the error type (`error`), the JSON views (`views`), the OpenAPI
//! document (`openapi`) and the limits on API connections (`http_conn`).
//!
//! Handlers call `Hub` operations; nothing outside `api` imports it (but `serve`, which mounts
//! it).

mod backups;
mod credentials;
mod error;
pub(crate) mod http_conn;
mod inventory;
mod metrics;
pub mod openapi;
mod repositories;
mod restores;
pub mod views;

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;

pub use error::{ApiError, ErrorBody};

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
        .route("/api/v1/backups", post(backups::create).get(backups::list))
        .route("/api/v1/backups/stats", get(backups::stats))
        .route(
            "/api/v1/backups/{id}",
            get(backups::get).delete(backups::delete),
        )
        .route("/api/v1/backups/{id}/cancel", post(backups::cancel))
        .route("/api/v1/backups/{id}/chain", get(backups::chain))
        .route(
            "/api/v1/restores",
            post(restores::create).get(restores::list),
        )
        .route("/api/v1/restores/{id}", delete(restores::delete))
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
            "/api/v1/vmware-credentials/{id}/set-default",
            put(credentials::set_default),
        )
        .route("/api/v1/discovery/discover-vms", post(inventory::discover))
        .route("/api/v1/vm-contexts", get(inventory::list))
        .route(
            "/api/v1/vm-contexts/{id}",
            get(inventory::get).delete(inventory::delete),
        )
        .route("/api/v1/vm-contexts/{id}/disks", get(inventory::disks))
        .route("/api/v1/vm-contexts/by-id/{id}", get(inventory::get_by_id))
        .route(
            "/api/v1/repositories",
            get(repositories::list).post(repositories::create),
        )
        .route_layer(middleware::from_fn_with_state(hub.clone(), require_token));
    Router::new()
        .route("/health", get(health))
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics::metrics))
        .merge(sna)
        .merge(operator)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(log_request))
        .with_state(hub)
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

#[utoipa::path(get, path = "/api/v1/openapi.json", operation_id = "openapi", tag = "service",
    security(()),
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object)))]
async fn openapi_json() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi::DOCUMENT.as_str(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/health", operation_id = "health", tag = "service",
    security(()),
    responses((status = 200, description = "Every check passed", body = crate::repo::health::Health),
        (status = 503, description = "A check failed: the report and the error body", body = UnhealthyBody)))]
/// `{status: "healthy", service, version, database, repositories}`; when a check fails, 503 with
/// the same fields and the error body's (`error` names the failing checks).
async fn health(State(hub): State<Hub>) -> Response {
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
    error: error::ErrorBody,
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn bearer_ok(hub: &Hub, parts: &Parts) -> bool {
    parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| hub.token_matches(token.trim()))
}

async fn require_token(
    State(hub): State<Hub>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    if !bearer_ok(&hub, &parts) {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(Request::from_parts(parts, body)).await)
}

async fn require_token_or_loopback(
    State(hub): State<Hub>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let loopback = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(peer)| is_loopback(peer.ip()));
    if !loopback && !bearer_ok(&hub, &parts) {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(Request::from_parts(parts, body)).await)
}

/// Loopback, also as an IPv4-mapped IPv6 address (an API listening on `[::]`).
fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
    }
}

/// A JSON body whose every rejection (unreadable, too large, malformed, wrong fields) is an
/// [`ApiError`]. The content type is not checked: existing clients do not all send one. An empty
/// body reads as `{}`, so optional-field bodies may be left out. Every body is an object: serde
/// would otherwise read a struct from an array (`[]` as a struct of defaults).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("body too large".into()).with_details(e.body_text())
            } else {
                ApiError::BadRequest("unreadable body".into()).with_details(e.body_text())
            }
        })?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        }
        let err = match serde_json::from_slice(text) {
            Ok(value) => return Ok(ApiJson(value)),
            Err(err) => err,
        };
        // JSON Schema (and so our OpenAPI document) counts `3.0` as an integer; serde does not.
        // Only a body that fails as sent is read again with such numbers made integers.
        serde_json::from_slice::<serde_json::Value>(text)
            .ok()
            .map(integral_floats_as_integers)
            .and_then(|value| serde_json::from_value(value).ok())
            .map(ApiJson)
            .ok_or_else(|| {
                ApiError::BadRequest("invalid JSON body".into()).with_details(err.to_string())
            })
    }
}

/// `3.0` becomes `3` wherever it is an exact integer; everything else is left as it is.
fn integral_floats_as_integers(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // Below 2^63 in magnitude every integral f64 converts to i64 exactly; 2^63..2^64 to u64.
            if f.fract() == 0.0 && f.abs() < 9_223_372_036_854_775_808.0 {
                Value::from(f as i64)
            } else if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                Value::from(f as u64)
            } else {
                Value::Number(n)
            }
        }
        Value::Array(items) => {
            Value::Array(items.into_iter().map(integral_floats_as_integers).collect())
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, integral_floats_as_integers(v)))
                .collect(),
        ),
        other => other,
    }
}

/// Query strings whose rejection is an [`ApiError`].
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::BadRequest("invalid query".into()).with_details(e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn integral_floats() {
        let v = serde_json::json!({"a": [3.0, 2.5, -1.0, 1e300], "b": 9.007199254740992e15});
        assert_eq!(
            super::integral_floats_as_integers(v),
            serde_json::json!({"a": [3, 2.5, -1, 1e300], "b": 9_007_199_254_740_992_u64})
        );
    }

    #[test]
    fn loopback_peers() {
        for ip in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert!(super::is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.1", "::ffff:10.0.0.1", "2001:db8::1"] {
            assert!(!super::is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }
}
