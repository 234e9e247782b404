//! The Sendense GUI's repository calls against the hub's real answers: each test is named after
//! the GUI file whose reads it checks (DRDAVIDBANNER/sendense, `source/current/sendense-gui`).

mod common;

use axum::http::{Method, StatusCode};
use common::hub::*;
use common::*;
use serde_json::{Value, json};

fn number(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

/// What `transformRepository` and the card read of one repository.
fn assert_gui_repository(r: &Value, path: &str) {
    assert!(r["id"].is_string() && r["name"].is_string(), "{r}");
    assert_eq!(r["type"], "local", "{r}");
    assert_eq!(r["enabled"], true, "{r}");
    assert_eq!(r["config"]["path"], path, "{r}");
    let info = &r["storage_info"];
    let total = number(&info["total_bytes"], "total_bytes");
    let used = number(&info["used_bytes"], "used_bytes");
    let available = number(&info["available_bytes"], "available_bytes");
    assert!(total > 0.0 && used <= total && available <= total, "{info}");
    let checked = info["last_check_at"].as_str().unwrap();
    time::OffsetDateTime::parse(checked, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("last_check_at {checked:?}: {e}"));
    let pct = number(&r["storage"]["used_percentage"], "storage.used_percentage");
    assert!((0.0..=100.0).contains(&pct), "{r}");
    number(&r["backup_count"], "backup_count");
    // Our own fields stay.
    assert_eq!(r["path"], path, "{r}");
    assert!(
        r["capacity_bytes"].is_u64() && r["free_bytes"].is_u64(),
        "{r}"
    );
}

async fn call(h: &TestHub, method: Method, uri: &str) -> (StatusCode, Value) {
    h.call(method, uri, None, Caller::Operator).await
}

/// `app/repositories/page.tsx`: the list (`success`, each repository's fields), creating with
/// the page's body (an id made, `success`), the card's test, refresh-storage, and delete (the
/// default refused, a repository with backups refused with `backup_count`, an empty one gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn app_repositories_page_tsx() {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start(test_config(dir.path().join("data"))).await;
    let nas = dir.path().join("nas");
    let body = json!({"name": "NAS", "type": "local", "enabled": true, "is_immutable": false,
        "config": {"path": nas, "description": "the rack's NAS"}});
    let (s, created) = h.post("/api/v1/repositories", &body).await;
    assert_eq!(s, StatusCode::OK, "{created}");
    assert_eq!(created["success"], true);
    assert_eq!(created["id"], "repo-local-1");
    assert_eq!(created["repository"]["id"], "repo-local-1");
    assert!(nas.is_dir());
    // Today's body still creates one.
    let old = dir.path().join("old");
    let (s, r) = h
        .post("/api/v1/repositories", &json!({"id": "old", "path": old}))
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        (r["id"].as_str(), r["name"].as_str()),
        (Some("old"), Some("old"))
    );

    let (s, list) = h.get("/api/v1/repositories").await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list["success"], true);
    let repos = list["repositories"].as_array().unwrap();
    assert_eq!(list["total"], repos.len());
    let by_id = |id: &str| repos.iter().find(|r| r["id"] == id).cloned().unwrap();
    let nas_path = nas.canonicalize().unwrap().display().to_string();
    let made = by_id("repo-local-1");
    assert_gui_repository(&made, &nas_path);
    assert_eq!(made["name"], "NAS");
    assert_eq!(made["config"]["description"], "the rack's NAS");
    assert_gui_repository(
        &by_id("old"),
        &old.canonicalize().unwrap().display().to_string(),
    );
    let default = by_id("default");
    assert_gui_repository(&default, default["path"].as_str().unwrap());

    // The card's test: a file is made there now; a directory gone is a 200 with success false.
    let (s, t) = call(&h, Method::POST, "/api/v1/repositories/repo-local-1/test").await;
    assert_eq!((s, &t["success"]), (StatusCode::OK, &json!(true)), "{t}");
    std::fs::remove_dir_all(&old).unwrap();
    let (s, t) = call(&h, Method::POST, "/api/v1/repositories/old/test").await;
    assert_eq!((s, &t["success"]), (StatusCode::OK, &json!(false)), "{t}");
    assert!(
        t["error"].as_str().unwrap().contains("cannot hold images"),
        "{t}"
    );
    let r = call(&h, Method::POST, "/api/v1/repositories/nope/test").await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");

    let (s, r) = call(&h, Method::POST, "/api/v1/repositories/refresh-storage").await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["success"], true);
    assert_eq!(
        (r["refreshed_count"].as_u64(), r["failed_count"].as_u64()),
        (Some(2), Some(1))
    );

    let (s, st) = h.get("/api/v1/repositories/repo-local-1/storage").await;
    assert_eq!(s, StatusCode::OK, "{st}");
    assert_eq!(st["repository_id"], "repo-local-1");
    for f in [
        "total_bytes",
        "used_bytes",
        "available_bytes",
        "used_percent",
        "backup_count",
    ] {
        number(&st[f], f);
    }
    assert!(st["last_check_at"].is_string(), "{st}");

    delete_refusals(&h, dir.path()).await;
    let (s, r) = call(&h, Method::DELETE, "/api/v1/repositories/old").await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(
        (r["success"].as_bool(), r["id"].as_str()),
        (Some(true), Some("old"))
    );
    let (_, list) = h.get("/api/v1/repositories").await;
    assert!(
        list["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["id"] != "old")
    );
    let r = call(&h, Method::DELETE, "/api/v1/repositories/old").await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    h.stop().await;
}

/// The default repository never goes; one holding a backup is refused with the `backup_count`
/// the page's alert names, and its path cannot be reused meanwhile.
async fn delete_refusals(h: &TestHub, dir: &std::path::Path) {
    let r = call(h, Method::DELETE, "/api/v1/repositories/default").await;
    assert_error(&r, StatusCode::CONFLICT, "conflict");
    assert_eq!(r.1["success"], false);
    let src = dir.join("app.raw");
    make_raw(&src, (2 * MIB) as usize, 7);
    let mut body = full("app", vec![disk(0, 2000, 2 * MIB)]);
    body["repository_id"] = json!("repo-local-1");
    let (s, b) = h.post("/api/v1/backups", &body).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let id = b["backup_id"].as_str().unwrap().to_owned();
    let r = call(h, Method::DELETE, "/api/v1/repositories/repo-local-1").await;
    assert_error(&r, StatusCode::CONFLICT, "conflict");
    assert_eq!(
        (r.1["success"].as_bool(), r.1["backup_count"].as_u64()),
        (Some(false), Some(1))
    );
    let (_, list) = h.get("/api/v1/repositories").await;
    let nas = list["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "repo-local-1");
    assert_eq!(nas.unwrap()["backup_count"], 1);
    let r = h
        .post(&format!("/api/v1/backups/{id}/cancel"), &json!({}))
        .await;
    assert!(r.0.is_success(), "{}", r.1);
}

/// `components/features/repositories/AddRepositoryModal.tsx`: `POST /repositories/test` with
/// `{type, config}` reads `success`, `error`/`message`, `storage.{total_bytes,
/// available_bytes, writable}`; a failed test is a 200, and a test creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn add_repository_modal_tsx() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let h = TestHub::start(test_config(data.clone())).await;
    let fresh = dir.path().join("not/yet");
    let (s, t) = h
        .post(
            "/api/v1/repositories/test",
            &json!({"type": "local", "config": {"path": fresh}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["success"], true, "{t}");
    assert!(t["message"].is_string());
    assert!(number(&t["storage"]["total_bytes"], "total") > 0.0);
    number(&t["storage"]["available_bytes"], "available");
    assert_eq!(t["storage"]["writable"], true);
    assert!(!fresh.exists(), "a test created {}", fresh.display());

    let refused = [
        json!({"type": "local", "config": {"path": data.join("inside")}}),
        json!({"type": "local", "config": {"path": "relative/dir"}}),
        json!({"type": "local", "config": {}}),
        json!({"type": "s3", "config": {"bucket": "b", "region": "r"}}),
        json!({"type": "local", "config": {"path": "/proc/self"}}),
    ];
    for body in refused {
        let (s, t) = h.post("/api/v1/repositories/test", &body).await;
        assert_eq!(s, StatusCode::OK, "{body}: {t}");
        assert_eq!(t["success"], false, "{body}: {t}");
        assert!(!t["error"].as_str().unwrap().is_empty(), "{t}");
        assert!(t["message"].is_string(), "{t}");
    }
    // A body the schema refuses (a config that is no object) is a 400, not a failed test.
    let r = h
        .post(
            "/api/v1/repositories/test",
            &json!({"type": "local", "config": [null, null]}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "bad_request");
    // The page's create with a type the hub lacks is a clear 400, not a repository.
    let body = json!({"name": "S3", "type": "s3", "enabled": true, "is_immutable": false,
        "config": {"bucket": "b"}});
    let r = h.post("/api/v1/repositories", &body).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "bad_request");
    let body = json!({"name": "x", "type": "local", "is_immutable": true,
        "config": {"path": dir.path().join("imm")}});
    let r = h.post("/api/v1/repositories", &body).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "bad_request");
    h.stop().await;
}

/// `components/features/protection-flows/CreateFlowModal.tsx`: keeps `repositories` with
/// `enabled`, shows `name`, `type.toUpperCase()`, `storage_info.available_bytes` and
/// `storage_info.backup_count`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_flow_modal_tsx() {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start(test_config(dir.path().join("data"))).await;
    let src = dir.path().join("app.raw");
    make_raw(&src, (2 * MIB) as usize, 3);
    completed_full(&h, "app", &src, 2 * MIB).await;
    let (s, list) = h.get("/api/v1/repositories").await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let offered: Vec<&Value> = list["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["enabled"] == true)
        .collect();
    assert_eq!(offered.len(), 1, "{list}");
    let r = offered[0];
    assert_eq!(
        (r["id"].as_str(), r["name"].as_str()),
        (Some("default"), Some("default"))
    );
    assert_eq!(r["type"].as_str().unwrap().to_uppercase(), "LOCAL");
    assert!(number(&r["storage_info"]["available_bytes"], "available") > 0.0);
    assert_eq!(r["storage_info"]["backup_count"], 1, "{r}");
    h.stop().await;
}
