//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations and the
//! types they take and return. Served at `/api/v1/openapi.json`.

use std::sync::LazyLock;

use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, PathItem, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sendense-hub",
        description = "Backup repository for the Sendense backup client: backups as QCOW2 images \
            written over NBD, restores as read-only NBD exports."
    ),
    paths(
        super::health,
        super::openapi_json,
        super::metrics::metrics,
        super::backups::create,
        super::backups::list,
        super::backups::stats,
        super::backups::get,
        super::backups::delete,
        super::backups::cancel,
        super::backups::chain,
        super::backups::complete,
        super::backups::change_id,
        super::backups::telemetry,
        super::restores::create,
        super::restores::list,
        super::restores::delete,
        super::repositories::list,
        super::repositories::create,
        super::credentials::list,
        super::credentials::create,
        super::credentials::default,
        super::credentials::get,
        super::credentials::update,
        super::credentials::delete,
        super::credentials::set_default,
        super::inventory::discover,
        super::inventory::list,
        super::inventory::get,
        super::inventory::delete,
        super::inventory::disks,
        super::inventory::get_by_id,
    ),
    components(schemas(ErrorBody)),
    security(("bearer_token" = [])),
    modifiers(&Common)
)]
pub struct ApiDoc;

/// The document as served, built once.
pub static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises");
    unsigned_bounds(&mut doc);
    optional_bodies(&mut doc);
    add_links(&mut doc);
    doc.to_string()
});

/// OpenAPI links from what a create returns to the operations on it, so a client generator (or
/// schemathesis' stateful phase) can follow a backup or restore through its life.
fn add_links(doc: &mut serde_json::Value) {
    let link = |operation: &str, parameters: serde_json::Value| serde_json::json!({ "operationId": operation, "parameters": parameters });
    let by_id = |field: &str| serde_json::json!({ "id": format!("$response.body#/{field}") });
    let backup_links = serde_json::json!({
        "GetBackup": link("get_backup", by_id("backup_id")),
        "CompleteBackup": link("complete_backup", by_id("backup_id")),
        "BackupTelemetry": link("backup_telemetry", by_id("backup_id")),
        "CancelBackup": link("cancel_backup", by_id("backup_id")),
        "DeleteBackup": link("delete_backup", by_id("backup_id")),
        "BackupChain": link(
            "backup_chain",
            serde_json::json!({ "vm_name": "$response.body#/vm_name" })
        ),
        "BackupChangeId": link(
            "backup_change_id",
            serde_json::json!({ "vm_name": "$response.body#/vm_name" })
        ),
    });
    let restore_links = serde_json::json!({
        "DeleteRestore": link("delete_restore", by_id("restore_id")),
    });
    let by_credential = || serde_json::json!({ "id": "$response.body#/credential/id" });
    let credential_links = serde_json::json!({
        "GetCredential": link("get_vmware_credential", by_credential()),
        "UpdateCredential": link("update_vmware_credential", by_credential()),
        "SetDefaultCredential": link("set_default_vmware_credential", by_credential()),
        "DeleteCredential": link("delete_vmware_credential", by_credential()),
        "DiscoverVms": {
            "operationId": "discover_vms",
            "requestBody": { "credential_id": "$response.body#/credential/id" },
        },
    });
    for (path, links) in [
        ("/api/v1/backups", backup_links),
        ("/api/v1/restores", restore_links),
        ("/api/v1/vmware-credentials", credential_links),
    ] {
        if let Some(ok) = doc
            .pointer_mut(&format!(
                "/paths/{}/post/responses/200",
                path.replace('/', "~1")
            ))
            .and_then(|r| r.as_object_mut())
        {
            ok.insert("links".to_owned(), links);
        }
    }
}

/// [`super::ApiJson`] reads an empty body as `{}`: where the body's schema requires no field, the
/// body may be left out, and the document says so (utoipa marks every body required).
fn optional_bodies(doc: &mut serde_json::Value) {
    let schemas = doc["components"]["schemas"].clone();
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for body in paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("requestBody"))
    {
        let Some(schema) = body.pointer("/content/application~1json/schema") else {
            continue;
        };
        let schema = match schema["$ref"].as_str() {
            Some(name) => &schemas[name.trim_start_matches("#/components/schemas/")],
            None => schema,
        };
        let requires_nothing = schema["type"] == "object"
            && schema["required"]
                .as_array()
                .is_none_or(|fields| fields.is_empty());
        if requires_nothing {
            body["required"] = serde_json::Value::Bool(false);
        }
    }
}

/// utoipa writes `u32` as `format: int32, minimum: 0` and `u64` as `format: int64, minimum: 0`,
/// which bound them at the signed maximum: a client (or schemathesis) then takes 2^31 as out of
/// range although serde accepts it. Replace the format with the unsigned type's real bound
/// (`u16` reads as `u32` here: it only appears in responses). A bound set by an annotation stays.
fn unsigned_bounds(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            let unsigned = map.get("minimum").and_then(|m| m.as_f64()) >= Some(0.0);
            let bound = match map.get("format").and_then(|f| f.as_str()) {
                Some("int32") if unsigned => Some(("maximum", serde_json::json!(u32::MAX))),
                // 2^64, exclusive: every u64 and nothing more.
                Some("int64") if unsigned => Some((
                    "exclusiveMaximum",
                    serde_json::json!(18_446_744_073_709_551_616.0_f64),
                )),
                _ => None,
            };
            if let Some((key, limit)) = bound {
                map.remove("format");
                if !map.contains_key("maximum") {
                    map.insert(key.to_owned(), limit);
                }
            }
            map.values_mut().for_each(unsigned_bounds);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unsigned_bounds),
        _ => {}
    }
}

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

// Shapes the handlers build with `json!`, written out for the document.

#[derive(Serialize, ToSchema)]
pub struct BackupDeleted {
    pub backup_id: String,
    pub deleted: bool,
}

#[derive(Serialize, ToSchema)]
pub struct RestoreDeleted {
    pub restore_id: String,
    pub deleted: bool,
}

#[derive(Serialize, ToSchema)]
pub struct RestoreList {
    pub restores: Vec<crate::api::views::RestoreView>,
}

#[derive(Serialize, ToSchema)]
pub struct RepositoryList {
    pub repositories: Vec<crate::api::views::RepositoryView>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::ApiDoc;
    use utoipa::OpenApi;

    const METHODS: [&str; 7] = ["get", "post", "put", "delete", "patch", "head", "options"];

    /// The path with its parameters unnamed: the router names one parameter per position
    /// (`/backups/{id}/chain`), the document names what it holds (`/backups/{vm_name}/chain`).
    fn unnamed(path: &str) -> String {
        let mut out = String::new();
        let mut inside = false;
        for c in path.chars() {
            match c {
                '{' => {
                    inside = true;
                    out.push_str("{}");
                }
                '}' => inside = false,
                _ if !inside => out.push(c),
                _ => {}
            }
        }
        out
    }

    /// `(path, method)` of every `.route("path", get(..).post(..))` in the source text.
    fn routes_in(src: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (at, _) in src.match_indices(".route(") {
            let rest = src[at + ".route(".len()..].trim_start();
            let Some(rest) = rest.strip_prefix('"') else {
                continue;
            };
            let Some(end) = rest.find('"') else { continue };
            let path = &rest[..end];
            // The method router: up to the `)` that closes `.route(`.
            let mut depth = 1;
            let body: String = rest[end + 1..]
                .chars()
                .take_while(|c| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth > 0
                })
                .collect();
            for method in METHODS {
                for (i, _) in body.match_indices(&format!("{method}(")) {
                    let before = body[..i].chars().next_back();
                    if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_')) {
                        out.push((unnamed(path), method.to_owned()));
                    }
                }
            }
        }
        out
    }

    fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path.display().to_string(), text));
            }
        }
    }

    #[test]
    fn route_scan_reads_method_chains() {
        let src = r#"Router::new().route("/a/{id}", get(h::get).delete(h::delete))
            .route("/b", post(create)).route_layer(x)"#;
        assert_eq!(
            routes_in(src),
            [("/a/{}", "get"), ("/a/{}", "delete"), ("/b", "post")]
                .map(|(p, m)| (p.to_owned(), m.to_owned()))
        );
    }

    /// A route added to the router without an annotation (or an annotation left out of
    /// `ApiDoc`'s `paths`) fails here: every `.route(..)` in `src/api/` must be in the document,
    /// and the document must hold nothing else.
    #[test]
    fn every_route_is_in_the_document() {
        let mut files = Vec::new();
        sources(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api"),
            &mut files,
        );
        let mut in_code = BTreeSet::new();
        for (name, text) in &files {
            // Test modules (this one's included) are not the router.
            let text = text.split("#[cfg(test)]").next().unwrap();
            // The scan only sees `.route(..)`: keep the router flat so it sees everything.
            for other in [".nest(", ".route_service(", ".nest_service("] {
                assert!(
                    !text.contains(other),
                    "{name} uses {other}: extend this test's scan"
                );
            }
            in_code.extend(routes_in(text));
        }
        assert!(in_code.contains(&("/health".to_owned(), "get".to_owned())));
        assert!(in_code.len() >= 18, "{in_code:?}");

        let doc = ApiDoc::openapi();
        let mut in_doc = BTreeSet::new();
        for (path, item) in &doc.paths.paths {
            let json = serde_json::to_value(item).unwrap();
            for method in METHODS {
                if json.get(method).is_some() {
                    in_doc.insert((unnamed(path), method.to_owned()));
                }
            }
        }
        let missing: Vec<_> = in_code.difference(&in_doc).collect();
        assert!(
            missing.is_empty(),
            "routes without an OpenAPI annotation: {missing:?}"
        );
        let extra: Vec<_> = in_doc.difference(&in_code).collect();
        assert!(extra.is_empty(), "documented but not routed: {extra:?}");
    }

    /// Every property name in `schema`, following `$ref`s into the components.
    fn properties(doc: &serde_json::Value, schema: &serde_json::Value, out: &mut BTreeSet<String>) {
        match schema {
            serde_json::Value::Object(map) => {
                if let Some(name) = map.get("$ref").and_then(|r| r.as_str()) {
                    let name = name.trim_start_matches("#/components/schemas/");
                    if out.insert(format!("#{name}")) {
                        properties(doc, &doc["components"]["schemas"][name], out);
                    }
                }
                if let Some(props) = map.get("properties").and_then(|p| p.as_object()) {
                    out.extend(props.keys().cloned());
                }
                map.values().for_each(|v| properties(doc, v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| properties(doc, v, out)),
            _ => {}
        }
    }

    /// The vCenter password goes in (write-only) and never comes out: no response schema of any
    /// operation has a `password` property.
    #[test]
    fn password_is_write_only() {
        let doc: serde_json::Value = serde_json::from_str(&super::DOCUMENT).unwrap();
        let mut in_responses = BTreeSet::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                properties(&doc, &op["responses"], &mut in_responses);
            }
        }
        assert!(in_responses.contains("#CredentialView"), "{in_responses:?}");
        assert!(!in_responses.contains("password"), "{in_responses:?}");
        let credentials = &doc["paths"]["/api/v1/vmware-credentials"]["post"];
        let mut in_request = BTreeSet::new();
        properties(&doc, &credentials["requestBody"], &mut in_request);
        assert!(in_request.contains("password"), "{in_request:?}");
        for schema in ["NewCredential", "CredentialRequest"] {
            assert_eq!(
                doc["components"]["schemas"][schema]["properties"]["password"]["writeOnly"], true,
                "{schema}"
            );
        }
    }

    /// Discovery's failures are documented: the SNA's (502) and the credential key's (503).
    #[test]
    fn discovery_documents_upstream_failures() {
        let doc: serde_json::Value = serde_json::from_str(&super::DOCUMENT).unwrap();
        let responses = &doc["paths"]["/api/v1/discovery/discover-vms"]["post"]["responses"];
        for status in ["200", "400", "401", "404", "409", "502", "503"] {
            assert!(responses.get(status).is_some(), "{status}: {responses}");
        }
        // A body that may be empty (every field optional) is not required; one with required
        // fields is.
        let body = |path: &str, method: &str| {
            doc["paths"][path][method]["requestBody"]["required"].clone()
        };
        assert_eq!(body("/api/v1/vmware-credentials/{id}", "put"), false);
        assert_eq!(body("/api/v1/vmware-credentials", "post"), true);
        assert_eq!(body("/api/v1/discovery/discover-vms", "post"), true);
    }

    /// `value` against `schema` for what the document uses: `$ref`, `allOf`, `oneOf`, `type`
    /// (one or a list), `properties` (no others), `required`, `items`, `minimum` and `date-time`.
    /// Returns where it does not match.
    fn mismatch(
        doc: &serde_json::Value,
        schema: &serde_json::Value,
        value: &serde_json::Value,
        at: &str,
    ) -> Option<String> {
        use serde_json::Value;
        if let Some(name) = schema["$ref"].as_str() {
            let name = name.trim_start_matches("#/components/schemas/");
            return mismatch(doc, &doc["components"]["schemas"][name], value, at);
        }
        if let Some(all) = schema["allOf"].as_array() {
            // Each part sees only its own properties (how utoipa writes `serde(flatten)`).
            let mut rest = value.as_object().cloned().unwrap_or_default();
            for part in all {
                let part = match part["$ref"].as_str() {
                    Some(name) => {
                        &doc["components"]["schemas"]
                            [name.trim_start_matches("#/components/schemas/")]
                    }
                    None => part,
                };
                let own: serde_json::Map<_, _> = rest
                    .iter()
                    .filter(|(k, _)| part["properties"].get(k.as_str()).is_some())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                rest.retain(|k, _| !own.contains_key(k));
                if let Some(m) = mismatch(doc, part, &Value::Object(own), at) {
                    return Some(m);
                }
            }
            return (!rest.is_empty()).then(|| format!("{at}: undocumented {rest:?}"));
        }
        if let Some(any) = schema["oneOf"].as_array() {
            return any
                .iter()
                .all(|s| mismatch(doc, s, value, at).is_some())
                .then(|| format!("{at}: no oneOf matches {value}"));
        }
        let type_of = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let allowed = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(|t| t.as_str()).collect(),
            _ => vec![type_of],
        };
        if !allowed.contains(&type_of) {
            return Some(format!("{at}: {type_of} {value}, documented {allowed:?}"));
        }
        if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), value.as_f64()) {
            if n < min {
                return Some(format!("{at}: {n} below {min}"));
            }
        }
        if schema["format"] == "date-time" {
            let text = value.as_str().unwrap_or_default();
            let rfc3339 = &time::format_description::well_known::Rfc3339;
            if time::OffsetDateTime::parse(text, rfc3339).is_err() {
                return Some(format!("{at}: {text:?} is not RFC 3339"));
            }
        }
        if let Some(items) = value.as_array() {
            return items
                .iter()
                .enumerate()
                .find_map(|(i, v)| mismatch(doc, &schema["items"], v, &format!("{at}[{i}]")));
        }
        let (Some(fields), Some(props)) = (value.as_object(), schema["properties"].as_object())
        else {
            return None;
        };
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap_or_default();
            if !fields.contains_key(name) {
                return Some(format!("{at}: required {name} missing"));
            }
        }
        fields.iter().find_map(|(k, v)| match props.get(k) {
            Some(s) => mismatch(doc, s, v, &format!("{at}.{k}")),
            None => Some(format!("{at}: undocumented field {k}")),
        })
    }

    /// What the credential, discovery and VM-context handlers build, serialised, matches the
    /// schema the document gives their 200 (schemathesis cannot reach most of these: no SNA runs
    /// there, so no VM context exists).
    #[test]
    fn flow_answers_match_their_schemas() {
        use crate::api::credentials::{CredentialChanged, CredentialDeleted, CredentialList};
        use crate::api::inventory::{ContextDeleted, ContextDetails, ContextList, DiskList};
        use crate::catalog::{Credential, VmContext, VmDisk};
        use crate::inventory::credentials::CredentialView;
        use crate::inventory::discovery::{DiscoverResponse, DiscoveredVm, SnaDisk, SnaVm};

        let doc: serde_json::Value = serde_json::from_str(&super::DOCUMENT).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let credential = Credential {
            id: 7,
            credential_name: "vc".into(),
            vcenter_host: "vc.example".into(),
            username: "u".into(),
            password_sealed: vec![1, 2, 3],
            datacenter: String::new(),
            is_active: true,
            is_default: false,
            created_at: now,
            updated_at: now,
        };
        let view = || CredentialView::from(&credential);
        let context = VmContext {
            context_id: "ctx-1".into(),
            vm_name: "pg-01".into(),
            vmware_vm_id: "vm-1".into(),
            vm_path: "/DC1/vm/pg-01".into(),
            vcenter_host: "vc.example".into(),
            datacenter: "DC1".into(),
            credential_id: None,
            power_state: "poweredOn".into(),
            guest_os: "linux".into(),
            memory_mb: 4096,
            num_cpu: 2,
            created_at: now,
            updated_at: now,
        };
        let disk = VmDisk {
            disk_id: 0,
            vmware_disk_key: 2000,
            label: "Hard disk 1".into(),
            vmdk_path: "[ds1] pg-01/pg-01.vmdk".into(),
            datastore: "ds1".into(),
            capacity_bytes: u64::MAX,
            provisioning_type: "thin".into(),
            unit_number: 0,
        };
        let vm = SnaVm {
            id: "vm-1".into(),
            name: "pg-01".into(),
            path: String::new(),
            datacenter: String::new(),
            power_state: String::new(),
            guest_os: String::new(),
            memory_mb: 0,
            num_cpu: 0,
            disks: vec![SnaDisk {
                id: "disk-2000".into(),
                label: String::new(),
                path: String::new(),
                vmdk_path: String::new(),
                size_gb: 1,
                capacity_bytes: 1 << 30,
                datastore: String::new(),
                provisioning_type: String::new(),
                unit_number: 0,
            }],
            networks: vec![
                serde_json::json!({"name": "VM Network"}),
                serde_json::json!("x"),
            ],
        };
        let answers = [
            (
                "get",
                "/api/v1/vmware-credentials",
                serde_json::to_value(CredentialList {
                    credentials: vec![view()],
                    count: 1,
                    status: "success",
                }),
            ),
            (
                "post",
                "/api/v1/vmware-credentials",
                serde_json::to_value(CredentialChanged {
                    credential: view(),
                    status: "success",
                    message: "credential created",
                }),
            ),
            (
                "get",
                "/api/v1/vmware-credentials/{id}",
                serde_json::to_value(view()),
            ),
            (
                "delete",
                "/api/v1/vmware-credentials/{id}",
                serde_json::to_value(CredentialDeleted {
                    id: 7,
                    deleted: true,
                    status: "success",
                    message: "credential deleted",
                }),
            ),
            (
                "post",
                "/api/v1/discovery/discover-vms",
                serde_json::to_value(DiscoverResponse {
                    discovered_vms: vec![
                        DiscoveredVm {
                            vm: vm.clone(),
                            existing: false,
                            context_id: None,
                        },
                        DiscoveredVm {
                            vm,
                            existing: true,
                            context_id: Some("ctx-1".into()),
                        },
                    ],
                    discovery_count: 2,
                    contexts_created: 0,
                    contexts_updated: 1,
                    status: "success",
                    message: "discovered".into(),
                }),
            ),
            (
                "get",
                "/api/v1/vm-contexts",
                serde_json::to_value(ContextList {
                    vm_contexts: vec![context.clone()],
                    count: 1,
                }),
            ),
            (
                "get",
                "/api/v1/vm-contexts/{vm_name}",
                serde_json::to_value(ContextDetails {
                    context: context.clone(),
                    disks: vec![disk.clone()],
                }),
            ),
            (
                "get",
                "/api/v1/vm-contexts/{context_id}/disks",
                serde_json::to_value(DiskList {
                    context_id: context.context_id.clone(),
                    disks: vec![disk],
                    count: 1,
                }),
            ),
            (
                "delete",
                "/api/v1/vm-contexts/{vm_name}",
                serde_json::to_value(ContextDeleted {
                    vm_name: "pg-01".into(),
                    deleted: true,
                }),
            ),
        ];
        for (method, path, value) in answers {
            let value = value.unwrap();
            let schema = &doc["paths"][path][method]["responses"]["200"]["content"]["application/json"]
                ["schema"];
            assert!(schema.is_object(), "{method} {path}: no 200 schema");
            if let Some(m) = mismatch(&doc, schema, &value, "$") {
                panic!("{method} {path}: {m}");
            }
        }
        // The checker can fail: an extra field, a missing one, a wrong type.
        let schema = serde_json::json!({"$ref": "#/components/schemas/CredentialView"});
        let mut leaked = serde_json::to_value(view()).unwrap();
        leaked["password"] = "x".into();
        assert!(mismatch(&doc, &schema, &leaked, "$").is_some());
        let mut missing = serde_json::to_value(view()).unwrap();
        missing.as_object_mut().unwrap().remove("username");
        assert!(mismatch(&doc, &schema, &missing, "$").is_some());
        let mut wrong = serde_json::to_value(view()).unwrap();
        wrong["id"] = "7".into();
        assert!(mismatch(&doc, &schema, &wrong, "$").is_some());
    }

    /// The Sendense client decodes the change-id answer into a Go `map[string]string`: every
    /// property is a required string. The telemetry answer's time is RFC 3339.
    #[test]
    fn sna_answers_match_what_the_client_reads() {
        let doc: serde_json::Value = serde_json::from_str(&super::DOCUMENT).unwrap();
        let answer = &doc["components"]["schemas"]["ChangeIdAnswer"];
        let props = answer["properties"].as_object().unwrap();
        assert_eq!(props.len(), 5, "{answer}");
        for (name, schema) in props {
            assert_eq!(schema["type"], "string", "{name}: {schema}");
            assert!(
                answer["required"]
                    .as_array()
                    .unwrap()
                    .contains(&name.as_str().into()),
                "{name}"
            );
        }
        let ack = &doc["components"]["schemas"]["TelemetryAck"]["properties"];
        assert_eq!(ack["timestamp"]["format"], "date-time", "{ack}");
        assert_eq!(ack["backup_status"]["$ref"], "#/components/schemas/Status");
    }

    #[test]
    fn document_is_openapi_3_1_with_errors_and_bearer() {
        let doc: serde_json::Value = serde_json::from_str(&super::DOCUMENT).unwrap();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer_token"]["scheme"],
            "bearer"
        );
        let list = &doc["paths"]["/api/v1/backups"]["get"];
        assert_eq!(
            list["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody"
        );
        // Public routes need no token, so they cannot answer 401.
        assert!(
            doc["paths"]["/health"]["get"]["responses"]
                .get("401")
                .is_none()
        );
        assert!(
            doc["paths"]["/api/v1/openapi.json"]["get"]["responses"]
                .get("401")
                .is_none()
        );
        let links = &doc["paths"]["/api/v1/backups"]["post"]["responses"]["200"]["links"];
        assert_eq!(links["GetBackup"]["operationId"], "get_backup");
        assert_eq!(
            doc["paths"]["/api/v1/restores"]["post"]["responses"]["200"]["links"]["DeleteRestore"]
                ["parameters"]["id"],
            "$response.body#/restore_id"
        );
        let required = doc["components"]["schemas"]["ErrorBody"]["required"].clone();
        assert_eq!(
            required,
            serde_json::json!(["error", "details", "code", "timestamp"])
        );
    }
}
