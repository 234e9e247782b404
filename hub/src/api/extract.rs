//! Extractors whose every rejection is an [`ApiError`], so a bad body or query gets the API's
//! one error shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

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
}
