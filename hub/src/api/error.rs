//! The one error type of the HTTP API: `{"error": {"code", "message"}}` with the right status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::Error;

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    /// A body over the size limit.
    PayloadTooLarge(String),
    Unauthorized,
    NotFound(String),
    Conflict(String),
    MethodNotAllowed,
    /// The data dir's or a repository's filesystem is full (507): the message names the path.
    InsufficientStorage(String),
    /// Logged in full; the client only learns that something failed inside.
    Internal(String),
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        if let Some(at) = err.no_space() {
            return ApiError::InsufficientStorage(format!("no space left on device: {at}"));
        }
        match err {
            Error::Invalid(m) => ApiError::BadRequest(m),
            Error::NotFound(m) => ApiError::NotFound(m),
            Error::Conflict(m) => ApiError::Conflict(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            ApiError::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", m),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token".to_owned(),
            ),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method".to_owned(),
            ),
            ApiError::InsufficientStorage(m) => {
                tracing::warn!(error = %m, "request failed: disk full");
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage", m)
            }
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    // The cause (errno text, path) helps whoever called; the log has it too.
                    format!("internal error: {m}"),
                )
            }
        };
        if status.is_client_error() {
            tracing::debug!(%status, %message, "request refused");
        }
        let body = serde_json::json!({ "error": { "code": code, "message": message } });
        (status, Json(body)).into_response()
    }
}
