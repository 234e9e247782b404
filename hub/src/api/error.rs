//! The one error type of the HTTP API. Every refusal, whether from a handler, an extractor, the
//! token check or the router's fallbacks, has the body the Sendense GUI reads:
//! `{"error": "<message>", "details": "<more, or empty>", "code": "<machine code>", "timestamp"}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::catalog::fmt_time;
use crate::error::Error;

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    /// A body over the size limit.
    PayloadTooLarge(String),
    Unauthorized,
    NotFound(String),
    Conflict(String),
    /// What the request names existed, but its files are gone.
    Gone(String),
    MethodNotAllowed,
    /// The SNA refused or did not answer.
    BadGateway(String),
    /// Something the request needs is unavailable: the credential key, or a check of `/health`.
    Unavailable(String),
    /// The data dir's or a repository's filesystem is full (507): the message names the path.
    InsufficientStorage(String),
    /// Read but not understood: a damaged or unsupported guest filesystem (422).
    Unprocessable(String),
    /// Logged in full; the client only learns that something failed inside.
    Internal(String),
    /// A refusal made outside our handlers (axum's own rejections), kept with its status.
    Other {
        status: StatusCode,
        message: String,
    },
    /// Any of the above with more words for `details` (a parser's message, say).
    Detailed {
        error: Box<ApiError>,
        details: String,
    },
}

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// More about it, or empty.
    pub details: String,
    /// Stable machine code: `bad_request`, `unauthorized`, `not_found`, `conflict`, `gone`,
    /// `method_not_allowed`, `payload_too_large`, `internal`, ...
    pub code: String,
    /// When the hub answered (RFC 3339, UTC).
    #[schema(format = DateTime)]
    pub timestamp: String,
}

impl ApiError {
    pub fn with_details(self, details: impl Into<String>) -> ApiError {
        ApiError::Detailed {
            error: Box::new(self),
            details: details.into(),
        }
    }

    /// The status and machine code: the one table to extend with a new variant.
    fn kind(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Gone(_) => (StatusCode::GONE, "gone"),
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            ApiError::InsufficientStorage(_) => {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Other { status, .. } if status.is_server_error() => (*status, "internal"),
            ApiError::Other { status, .. } => (*status, "bad_request"),
            ApiError::Detailed { error, .. } => error.kind(),
        }
    }

    /// The message and details the client sees.
    fn public(self) -> (String, String) {
        match self {
            ApiError::BadRequest(m)
            | ApiError::PayloadTooLarge(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Gone(m)
            | ApiError::Unprocessable(m)
            | ApiError::Unavailable(m)
            | ApiError::BadGateway(m)
            | ApiError::Other { message: m, .. } => (m, String::new()),
            ApiError::InsufficientStorage(m) => {
                tracing::warn!(error = %m, "request failed: disk full");
                (m, String::new())
            }
            ApiError::Unauthorized => ("missing or wrong bearer token".into(), String::new()),
            ApiError::MethodNotAllowed => {
                ("this route does not take that method".into(), String::new())
            }
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "request failed");
                // The cause (errno text, path) helps whoever called; the log has it too.
                ("internal error".into(), m)
            }
            ApiError::Detailed { error, details } => {
                let (message, _) = error.public();
                (message, details)
            }
        }
    }

    /// The usual error answer with more fields beside (the old hub's `success: false`, say),
    /// for routes whose GUI caller reads them from a refusal.
    pub fn response_with(self, extra: &[(&str, serde_json::Value)]) -> Response {
        let (status, body) = self.body();
        let message = body.error.clone();
        let mut json = serde_json::to_value(body).unwrap_or_default();
        json["success"] = false.into();
        json["message"] = message.into();
        for (name, value) in extra {
            json[*name] = value.clone();
        }
        (status, Json(json)).into_response()
    }

    pub fn body(self) -> (StatusCode, ErrorBody) {
        let (status, code) = self.kind();
        let (error, details) = self.public();
        if status.is_client_error() {
            tracing::debug!(%status, %error, %details, "request refused");
        }
        let body = ErrorBody {
            error,
            details,
            code: code.to_owned(),
            timestamp: fmt_time(time::OffsetDateTime::now_utc()),
        };
        (status, body)
    }
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
            Error::Gone(m) => ApiError::Gone(m),
            Error::Unprocessable(m) => ApiError::Unprocessable(m),
            Error::Upstream(m) => ApiError::BadGateway(m),
            Error::Unavailable(m) => ApiError::Unavailable(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl ApiError {
    /// The error for a plain-text refusal axum made itself (a path segment that is not UTF-8,
    /// a body limit hit outside [`super::extract::ApiJson`]): same status, our shape.
    pub fn from_plain(status: StatusCode, text: &str) -> ApiError {
        let text = text.trim().to_owned();
        let err = match status {
            StatusCode::BAD_REQUEST => ApiError::BadRequest("bad request".into()),
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized,
            StatusCode::NOT_FOUND => ApiError::NotFound("not found".into()),
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge("body too large".into()),
            _ if status.is_server_error() => return ApiError::Internal(text),
            _ => ApiError::Other {
                status,
                message: status.canonical_reason().unwrap_or("refused").to_owned(),
            },
        };
        err.with_details(text)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.body();
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::ApiError;

    #[test]
    fn details_keep_the_status_and_code() {
        let (status, body) = ApiError::BadRequest("invalid JSON body".into())
            .with_details("expected value at line 1")
            .body();
        assert_eq!(status, 400);
        assert_eq!(body.code, "bad_request");
        assert_eq!(body.error, "invalid JSON body");
        assert_eq!(body.details, "expected value at line 1");
        assert!(
            time::OffsetDateTime::parse(
                &body.timestamp,
                &time::format_description::well_known::Rfc3339
            )
            .is_ok()
        );
    }

    #[test]
    fn internal_errors_carry_their_cause_in_details() {
        let (status, body) =
            ApiError::Internal("reading /data/catalog.sqlite: Permission denied".into()).body();
        assert_eq!(status, 500);
        assert_eq!(body.error, "internal error");
        assert_eq!(
            body.details,
            "reading /data/catalog.sqlite: Permission denied"
        );
    }
}
