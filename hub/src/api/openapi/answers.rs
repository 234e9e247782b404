//! What handlers build, serialised, against the schemas the document gives their answers.

use serde_json::Value;

/// `value` against `schema` for what the document uses: `$ref`, `allOf`, `oneOf`, `type`
/// (one or a list), `properties` (no others), `required`, `items`, `minimum` and `date-time`.
/// Returns where it does not match.
pub(super) fn mismatch(doc: &Value, schema: &Value, value: &Value, at: &str) -> Option<String> {
    if let Some(name) = schema["$ref"].as_str() {
        return mismatch(doc, named(doc, name), value, at);
    }
    if let Some(all) = schema["allOf"].as_array() {
        return all_of_mismatch(doc, all, value, at);
    }
    if let Some(any) = schema["oneOf"].as_array() {
        return any
            .iter()
            .all(|s| mismatch(doc, s, value, at).is_some())
            .then(|| format!("{at}: no oneOf matches {value}"));
    }
    if let Some(m) = scalar_mismatch(schema, value, at) {
        return Some(m);
    }
    if let Some(items) = value.as_array() {
        return items
            .iter()
            .enumerate()
            .find_map(|(i, v)| mismatch(doc, &schema["items"], v, &format!("{at}[{i}]")));
    }
    fields_mismatch(doc, schema, value, at)
}

/// The component a `$ref` names.
fn named<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    &doc["components"]["schemas"][reference.trim_start_matches("#/components/schemas/")]
}

/// Each part sees only its own properties (how utoipa writes `serde(flatten)`); what no part
/// claims is undocumented.
fn all_of_mismatch(doc: &Value, all: &[Value], value: &Value, at: &str) -> Option<String> {
    let mut rest = value.as_object().cloned().unwrap_or_default();
    for part in all {
        let part = match part["$ref"].as_str() {
            Some(name) => named(doc, name),
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
    (!rest.is_empty()).then(|| format!("{at}: undocumented {rest:?}"))
}

/// The value's own type, its `minimum` and its `date-time` format.
fn scalar_mismatch(schema: &Value, value: &Value, at: &str) -> Option<String> {
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
    None
}

/// An object's required properties, and no property the schema does not name.
fn fields_mismatch(doc: &Value, schema: &Value, value: &Value, at: &str) -> Option<String> {
    let (Some(fields), Some(props)) = (value.as_object(), schema["properties"].as_object()) else {
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

use crate::api::credentials::{CredentialChanged, CredentialDeleted, CredentialList};
use crate::api::inventory::{
    ContextDeleted, ContextDetails, ContextList, DiskList, VmContextView, VmDiskView,
};
use crate::catalog::{Credential, VmContext, VmDisk};
use crate::inventory::credentials::CredentialView;
use crate::inventory::discovery::{DiscoverResponse, DiscoveredVm, RefusedVm, SnaDisk, SnaVm};

/// `(method, path, the answer as the handler serialises it)`.
type Answer = (&'static str, &'static str, serde_json::Result<Value>);

/// What the credential, discovery and VM-context handlers build, serialised, matches the
/// schema the document gives their 200 (schemathesis cannot reach most of these: no SNA runs
/// there, so no VM context exists).
#[test]
fn flow_answers_match_their_schemas() {
    let doc: Value = serde_json::from_str(&super::DOCUMENT).unwrap();
    let answers = credential_answers().into_iter().chain(inventory_answers());
    for (method, path, value) in answers {
        let value = value.unwrap();
        let schema = &doc["paths"][path][method]["responses"]["200"]["content"]["application/json"]
            ["schema"];
        assert!(schema.is_object(), "{method} {path}: no 200 schema");
        if let Some(m) = mismatch(&doc, schema, &value, "$") {
            panic!("{method} {path}: {m}");
        }
    }
}

/// The checker can fail: an extra field, a missing one, a wrong type.
#[test]
fn the_checker_finds_extra_missing_and_wrong_fields() {
    let doc: Value = serde_json::from_str(&super::DOCUMENT).unwrap();
    let view = || CredentialView::from(&credential());
    let schema = serde_json::json!({"$ref": "#/components/schemas/CredentialView"});
    assert!(mismatch(&doc, &schema, &serde_json::to_value(view()).unwrap(), "$").is_none());
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

fn credential_answers() -> Vec<Answer> {
    let view = || CredentialView::from(&credential());
    vec![
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
    ]
}

fn inventory_answers() -> Vec<Answer> {
    let (context, disk, vm) = (context(), disk(), sna_vm());
    vec![
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
                refused_vms: vec![RefusedVm {
                    id: "vm-9".into(),
                    name: "twin".into(),
                    reason: "2 VMs of this inventory are named \"twin\"".into(),
                }],
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
                vm_contexts: vec![VmContextView::new(context.clone(), None)],
                count: 1,
            }),
        ),
        (
            "get",
            "/api/v1/vm-contexts/{vm_name}",
            serde_json::to_value(ContextDetails {
                context: VmContextView::new(context.clone(), None),
                disks: vec![VmDiskView {
                    size_gb: 1.0,
                    disk: disk.clone(),
                }],
            }),
        ),
        (
            "get",
            "/api/v1/vm-contexts/{context_id}/disks",
            serde_json::to_value(DiskList {
                context_id: context.context_id.clone(),
                disks: vec![VmDiskView { size_gb: 1.0, disk }],
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
    ]
}

fn credential() -> Credential {
    let now = time::OffsetDateTime::now_utc();
    Credential {
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
    }
}

fn context() -> VmContext {
    let now = time::OffsetDateTime::now_utc();
    VmContext {
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
    }
}

fn disk() -> VmDisk {
    VmDisk {
        disk_id: 0,
        vmware_disk_key: 2000,
        label: "Hard disk 1".into(),
        vmdk_path: "[ds1] pg-01/pg-01.vmdk".into(),
        datastore: "ds1".into(),
        capacity_bytes: u64::MAX,
        provisioning_type: "thin".into(),
        unit_number: 0,
    }
}

fn sna_vm() -> SnaVm {
    SnaVm {
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
            size_gb: 1.0,
            capacity_bytes: 1 << 30,
            datastore: String::new(),
            provisioning_type: String::new(),
            unit_number: 0,
        }],
        networks: vec![
            serde_json::json!({"name": "VM Network"}),
            serde_json::json!("x"),
        ],
    }
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
