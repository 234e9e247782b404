//! `/api/v1/vmware-credentials`: Sendense's credential routes, integer ids, no password out.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use super::{ApiError, ApiJson};
use crate::credentials::{CredentialRequest, CredentialView};
use crate::state::Hub;

#[derive(Debug, Serialize)]
pub struct CredentialList {
    pub credentials: Vec<CredentialView>,
    pub count: usize,
    pub status: &'static str,
}

/// The answer to create, update and set-default (the old hub's `credential`, `status`, `message`).
#[derive(Debug, Serialize)]
pub struct CredentialChanged {
    pub credential: CredentialView,
    pub status: &'static str,
    pub message: &'static str,
}

/// `GET .../default`: the old hub put the one credential under `credentials`.
#[derive(Debug, Serialize)]
pub struct DefaultCredential {
    pub credentials: CredentialView,
    pub status: &'static str,
}

#[derive(Debug, Serialize)]
pub struct CredentialDeleted {
    pub id: i64,
    pub deleted: bool,
    pub status: &'static str,
    pub message: &'static str,
}

/// Credential ids are integers (Sendense's); anything else is a 400 in the API's error shape.
fn credential_id(text: &str) -> Result<i64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::BadRequest(format!("credential id {text:?} is not an integer")))
}

fn changed(credential: &crate::catalog::Credential, message: &'static str) -> CredentialChanged {
    CredentialChanged {
        credential: credential.into(),
        status: "success",
        message,
    }
}

pub async fn list(State(hub): State<Hub>) -> Result<Json<CredentialList>, ApiError> {
    let credentials: Vec<CredentialView> = hub.credentials()?.iter().map(Into::into).collect();
    Ok(Json(CredentialList {
        count: credentials.len(),
        credentials,
        status: "success",
    }))
}

pub async fn create(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<CredentialRequest>,
) -> Result<Json<CredentialChanged>, ApiError> {
    let credential = hub.create_credential(req)?;
    Ok(Json(changed(&credential, "credential created")))
}

pub async fn get(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<CredentialView>, ApiError> {
    Ok(Json((&hub.credential(credential_id(&id)?)?).into()))
}

pub async fn update(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CredentialRequest>,
) -> Result<Json<CredentialChanged>, ApiError> {
    let credential = hub.update_credential(credential_id(&id)?, req)?;
    Ok(Json(changed(&credential, "credential updated")))
}

pub async fn delete(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<CredentialDeleted>, ApiError> {
    let id = credential_id(&id)?;
    hub.delete_credential(id)?;
    Ok(Json(CredentialDeleted {
        id,
        deleted: true,
        status: "success",
        message: "credential deleted",
    }))
}

pub async fn set_default(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<CredentialChanged>, ApiError> {
    let credential = hub.set_default_credential(credential_id(&id)?)?;
    Ok(Json(changed(&credential, "credential set as default")))
}

pub async fn default(State(hub): State<Hub>) -> Result<Json<DefaultCredential>, ApiError> {
    Ok(Json(DefaultCredential {
        credentials: (&hub.default_credential()?).into(),
        status: "success",
    }))
}
