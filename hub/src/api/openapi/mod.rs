//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations and the
//! types they take and return. Served at `/api/v1/openapi.json`.

use std::sync::LazyLock;

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, PathItem, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;

#[cfg(test)]
mod answers;
mod fixups;
#[cfg(test)]
mod tests;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sendense-hub",
        description = "Backup repository for the Sendense backup client: backups as QCOW2 images \
            written over NBD, restores as read-only NBD exports."
    ),
    paths(
        super::service::health,
        openapi_json,
        super::metrics::metrics,
        super::backups::create,
        super::backups::list,
        super::backups::stats,
        super::backups::get,
        super::backups::delete,
        super::backups::cancel,
        super::backups::chain,
        super::backups::set_protected,
        super::prune::prune,
        super::verify::verify_backup,
        super::verify::verify,
        super::verify::set_verify_new,
        super::copies::copy,
        super::copies::copies,
        super::copies::delete_copy,
        super::copies::bring_back,
        super::copies::repository_copies,
        super::backups::complete,
        super::backups::change_id,
        super::backups::telemetry,
        super::restores::create,
        super::restores::list,
        super::restores::delete,
        super::file_restore::mount,
        super::file_restore::mounts,
        super::file_restore::unmount,
        super::file_restore::files,
        super::file_restore::file_info,
        super::file_restore::download,
        super::file_restore::download_directory,
        super::file_restore::resources,
        super::file_restore::cleanup_status,
        super::file_restore::volumes,
        super::repositories::rescan,
        super::repositories::list,
        super::repositories::create,
        super::repositories::test_config,
        super::repositories::test,
        super::repositories::refresh_storage,
        super::repositories::storage,
        super::repositories::delete,
        super::credentials::list,
        super::credentials::create,
        super::credentials::default,
        super::credentials::get,
        super::credentials::update,
        super::credentials::delete,
        super::credentials::set_default,
        super::credentials::test,
        super::inventory::discover,
        super::inventory::list,
        super::inventory::ungrouped,
        super::inventory::get,
        super::inventory::delete,
        super::inventory::disks,
        super::inventory::get_by_id,
        super::schedules::create,
        super::schedules::list,
        super::schedules::get,
        super::schedules::update,
        super::schedules::delete,
        super::schedules::enable,
        super::schedules::executions,
        super::schedules::trigger,
        super::groups::create,
        super::groups::list,
        super::groups::get,
        super::groups::update,
        super::groups::delete,
        super::groups::add_vms,
        super::groups::remove_vm,
        super::groups::vms,
        super::groups::members,
        super::groups::set_group,
        super::policies::create,
        super::policies::list,
        super::policies::get,
        super::policies::update,
        super::policies::delete,
        super::flows::create,
        super::flows::list,
        super::flows::summary,
        super::flows::get,
        super::flows::update,
        super::flows::delete,
        super::flows::enable,
        super::flows::disable,
        super::flows::execute,
        super::flows::executions,
        super::flows::status,
        super::flows::test,
        super::flows::bulk_enable,
        super::flows::bulk_disable,
        super::flows::bulk_delete,
        super::jobs::list,
        super::jobs::get,
        super::jobs::log,
        super::jobs::cancel,
    ),
    components(schemas(ErrorBody)),
    security(("bearer_token" = [])),
    modifiers(&Common)
)]
pub struct ApiDoc;

#[utoipa::path(get, path = "/api/v1/openapi.json", operation_id = "openapi", tag = "service",
    security(()),
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object)))]
pub(super) async fn openapi_json() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()
}

/// The document as served, built once.
pub static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises");
    fixups::unsigned_bounds(&mut doc);
    fixups::optional_bodies(&mut doc);
    fixups::add_links(&mut doc);
    doc.to_string()
});

/// What every operation shares: the bearer scheme, and the error responses any of them can give
/// (bad query or path, 401 where a token is needed, 413 where a body is read, 404 where the path
/// names something, 500), so no annotation has to repeat them.
struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        let global_security = doc.security.clone().unwrap_or_default();
        for (path, item) in doc.paths.paths.iter_mut() {
            for op in operations(item) {
                let token_required = op
                    .security
                    .as_ref()
                    .unwrap_or(&global_security)
                    .iter()
                    .all(|req| *req != Default::default());
                let mut add = |status: &str, description: &str| {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description).into());
                };
                add("400", "The query, path or body is not valid");
                if token_required {
                    add("401", "Missing or wrong bearer token");
                }
                if path.contains('{') {
                    add("404", "Nothing by that name");
                }
                if op.request_body.is_some() {
                    add("413", "Body over the size limit");
                }
                add("500", "Internal error (the hub's log has the cause)");
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}
