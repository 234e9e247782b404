//! `/api/v1/vmware-credentials`: Sendense's credential routes, integer ids, no password out.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use crate::inventory::credentials::{CredentialRequest, CredentialView};
use crate::state::Hub;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CredentialList {
    pub credentials: Vec<CredentialView>,
    pub count: usize,
    pub status: &'static str,
}

/// The answer to create, update and set-default (the old hub's `credential`, `status`, `message`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CredentialChanged {
    pub credential: CredentialView,
    pub status: &'static str,
    pub message: &'static str,
}

/// `GET .../default`: the old hub put the one credential under `credentials`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DefaultCredential {
    pub credentials: CredentialView,
    pub status: &'static str,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CredentialDeleted {
    pub id: i64,
    pub deleted: bool,
    pub status: &'static str,
    pub message: &'static str,
}

/// The body of create, for the document: [`CredentialRequest`] with the fields create requires
/// (update takes `CredentialRequest` itself, every field optional).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Never built: only its schema is used.
pub struct NewCredential {
    /// 1 to 255 bytes, not only spaces; unique. `name` is read as the same field.
    #[schema(min_length = 1)]
    credential_name: String,
    /// 1 to 255 bytes, not only spaces.
    #[schema(min_length = 1)]
    vcenter_host: String,
    /// 1 to 255 bytes, not only spaces.
    #[schema(min_length = 1)]
    username: String,
    /// Write-only: no answer ever carries it. 1 to 1024 bytes.
    #[schema(min_length = 1, write_only)]
    password: String,
    /// At most 255 bytes; empty when absent.
    datacenter: Option<String>,
    /// `true` when absent.
    is_active: Option<bool>,
    /// `false` when absent; `true` makes it the only default.
    is_default: Option<bool>,
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

#[utoipa::path(get, path = "/api/v1/vmware-credentials", operation_id = "list_vmware_credentials", tag = "credentials",
    responses((status = 200, description = "Every credential, by id; never a password", body = CredentialList)))]
pub async fn list(State(hub): State<Hub>) -> Result<Json<CredentialList>, ApiError> {
    let credentials: Vec<CredentialView> = hub.credentials()?.iter().map(Into::into).collect();
    Ok(Json(CredentialList {
        count: credentials.len(),
        credentials,
        status: "success",
    }))
}

#[utoipa::path(post, path = "/api/v1/vmware-credentials", operation_id = "create_vmware_credential", tag = "credentials",
    request_body = NewCredential,
    responses((status = 200, description = "Created; the password is stored sealed and never shown", body = CredentialChanged),
        (status = 400, description = "A field missing, empty or too long", body = ErrorBody),
        (status = 409, description = "A credential of that name exists", body = ErrorBody),
        (status = 503, description = "The credential key could not be loaded: no password can be sealed", body = ErrorBody)))]
pub async fn create(
    State(hub): State<Hub>,
    ApiJson(req): ApiJson<CredentialRequest>,
) -> Result<Json<CredentialChanged>, ApiError> {
    let credential = hub.create_credential(req)?;
    Ok(Json(changed(&credential, "credential created")))
}

#[utoipa::path(get, path = "/api/v1/vmware-credentials/{id}", operation_id = "get_vmware_credential", tag = "credentials",
    params(("id" = i64, Path, description = "Credential id")),
    responses((status = 200, description = "The credential; never its password", body = CredentialView),
        (status = 400, description = "The id is not an integer", body = ErrorBody),
        (status = 404, description = "No such credential", body = ErrorBody)))]
pub async fn get(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<CredentialView>, ApiError> {
    Ok(Json((&hub.credential(credential_id(&id)?)?).into()))
}

#[utoipa::path(put, path = "/api/v1/vmware-credentials/{id}", operation_id = "update_vmware_credential", tag = "credentials",
    params(("id" = i64, Path, description = "Credential id")),
    request_body(content = CredentialRequest, description = "The fields to change; a missing one (the password too) keeps its value. May be empty: no change"),
    responses((status = 200, description = "Updated", body = CredentialChanged),
        (status = 400, description = "The id is not an integer, or a field is empty or too long", body = ErrorBody),
        (status = 404, description = "No such credential", body = ErrorBody),
        (status = 409, description = "Another credential has that name", body = ErrorBody),
        (status = 503, description = "A password was given and the credential key could not be loaded", body = ErrorBody)))]
pub async fn update(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CredentialRequest>,
) -> Result<Json<CredentialChanged>, ApiError> {
    let credential = hub.update_credential(credential_id(&id)?, req)?;
    Ok(Json(changed(&credential, "credential updated")))
}

#[utoipa::path(delete, path = "/api/v1/vmware-credentials/{id}", operation_id = "delete_vmware_credential", tag = "credentials",
    params(("id" = i64, Path, description = "Credential id")),
    responses((status = 200, description = "Deleted", body = CredentialDeleted),
        (status = 400, description = "The id is not an integer", body = ErrorBody),
        (status = 404, description = "No such credential", body = ErrorBody),
        (status = 409, description = "VM contexts use it", body = ErrorBody)))]
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

/// `POST .../{id}/test`: passed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CredentialTested {
    pub success: bool,
    pub message: String,
    pub credential_id: i64,
    /// VMs the SNA listed with this login.
    pub vm_count: usize,
}

#[utoipa::path(post, path = "/api/v1/vmware-credentials/{id}/test", operation_id = "test_vmware_credential", tag = "credentials",
    params(("id" = i64, Path, description = "Credential id")),
    responses((status = 200, description = "The SNA logged in to vCenter with it and listed the inventory (nothing stored)", body = CredentialTested),
        (status = 400, description = "The id is not an integer", body = ErrorBody),
        (status = 404, description = "No such credential", body = ErrorBody),
        (status = 409, description = "The credential is not active", body = ErrorBody),
        (status = 502, description = "The SNA refused (a wrong login, vCenter unreachable) or did not answer; the body adds success false and message", body = ErrorBody),
        (status = 503, description = "The credential key cannot open its password", body = ErrorBody)))]
pub async fn test(State(hub): State<Hub>, Path(id): Path<String>) -> Response {
    let id = match credential_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    match hub.test_credential(id).await {
        Ok(vm_count) => Json(CredentialTested {
            success: true,
            message: format!("the SNA logged in to vCenter and listed {vm_count} VM(s)"),
            credential_id: id,
            vm_count,
        })
        .into_response(),
        // The discovery wizard shows `message`; the sources page reads `success`.
        Err(e) => ApiError::from(e).response_with(&[]),
    }
}

#[utoipa::path(put, path = "/api/v1/vmware-credentials/{id}/set-default", operation_id = "set_default_vmware_credential", tag = "credentials",
    params(("id" = i64, Path, description = "Credential id")),
    responses((status = 200, description = "It is the default now, and the only one", body = CredentialChanged),
        (status = 400, description = "The id is not an integer", body = ErrorBody),
        (status = 404, description = "No such credential", body = ErrorBody)))]
pub async fn set_default(
    State(hub): State<Hub>,
    Path(id): Path<String>,
) -> Result<Json<CredentialChanged>, ApiError> {
    let credential = hub.set_default_credential(credential_id(&id)?)?;
    Ok(Json(changed(&credential, "credential set as default")))
}

#[utoipa::path(get, path = "/api/v1/vmware-credentials/default", operation_id = "get_default_vmware_credential", tag = "credentials",
    responses((status = 200, description = "The default credential (under `credentials`, as the old hub had it)", body = DefaultCredential),
        (status = 404, description = "No credential is the default", body = ErrorBody)))]
pub async fn default(State(hub): State<Hub>) -> Result<Json<DefaultCredential>, ApiError> {
    Ok(Json(DefaultCredential {
        credentials: (&hub.default_credential()?).into(),
        status: "success",
    }))
}
