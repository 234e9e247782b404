//! Changes to the document utoipa writes, where it says less (or other) than the API does:
//! links between operations, bodies that may be left out, the real bounds of unsigned integers.

/// OpenAPI links from what a create returns to the operations on it, so a client generator (or
/// schemathesis' stateful phase) can follow a backup or restore through its life.
pub(super) fn add_links(doc: &mut serde_json::Value) {
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

/// [`crate::api::extract::ApiJson`] reads an empty body as `{}`: where the body's schema requires no field, the
/// body may be left out, and the document says so (utoipa marks every body required).
pub(super) fn optional_bodies(doc: &mut serde_json::Value) {
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
pub(super) fn unsigned_bounds(value: &mut serde_json::Value) {
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
