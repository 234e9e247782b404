//! The document against the router and what the handlers promise.

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
        } else if path.extension().is_some_and(|e| e == "rs")
            // Test modules are not the router (this file's route strings are examples).
            && !path.ends_with("tests.rs")
        {
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
    let body =
        |path: &str, method: &str| doc["paths"][path][method]["requestBody"]["required"].clone();
    assert_eq!(body("/api/v1/vmware-credentials/{id}", "put"), false);
    assert_eq!(body("/api/v1/vmware-credentials", "post"), true);
    assert_eq!(body("/api/v1/discovery/discover-vms", "post"), true);
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
        doc["paths"]["/api/v1/restores"]["post"]["responses"]["200"]["links"]["DeleteRestore"]["parameters"]
            ["id"],
        "$response.body#/restore_id"
    );
    let required = doc["components"]["schemas"]["ErrorBody"]["required"].clone();
    assert_eq!(
        required,
        serde_json::json!(["error", "details", "code", "timestamp"])
    );
}
