//! The Sendense GUI's source (vCenter credential) calls against the hub's real answers, with the
//! stand-in SNA; each test is named after the GUI file whose reads it checks.

mod common;

use axum::http::{Method, StatusCode};
use common::hub::*;
use common::sna::{PASSWORD, StandIn, vm};
use serde_json::{Value, json};

async fn started(dir: &std::path::Path) -> (StandIn, TestHub) {
    let inventory = json!({"vcenter": {"host": "vc.example", "datacenter": "DC1"},
        "vms": [vm("vm-1", "web-1", 2, 4096)]});
    let sna = StandIn::start(dir, inventory);
    let mut config = test_config(dir.join("data"));
    config.sna_url = format!("http://127.0.0.1:{}", sna.port);
    (sna, TestHub::start(config).await)
}

/// The page's save body, as `handleSave` builds it.
fn gui_body(name: &str, password: &str) -> Value {
    json!({"credential_name": name, "vcenter_host": "vc.example", "username": "admin",
        "password": password, "datacenter": "DC1", "is_active": true, "is_default": false})
}

async fn test_call(h: &TestHub, id: &Value) -> (StatusCode, Value) {
    let uri = format!("/api/v1/vmware-credentials/{id}/test");
    h.call(Method::POST, &uri, None, Caller::Operator).await
}

/// `app/settings/sources/page.tsx`: the card's test (`response.ok` and `success`), an edit with
/// the password left blank (kept: the test still passes), and `is_default: false` on every save
/// (a default stays the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn app_settings_sources_page_tsx() {
    let dir = tempfile::tempdir().unwrap();
    let (_sna, h) = started(dir.path()).await;
    let (s, c) = h
        .post("/api/v1/vmware-credentials", &gui_body("vc", PASSWORD))
        .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    let id = c["credential"]["id"].clone();
    let (s, t) = test_call(&h, &id).await;
    assert_eq!((s, &t["success"]), (StatusCode::OK, &json!(true)), "{t}");
    assert_eq!(t["vm_count"], 1, "{t}");

    let uri = format!("/api/v1/vmware-credentials/{id}/set-default");
    let r = h.call(Method::PUT, &uri, None, Caller::Operator).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    let uri = format!("/api/v1/vmware-credentials/{id}");
    let edit = gui_body("vc renamed", "").to_string();
    let (s, e) = h
        .call(Method::PUT, &uri, Some(&edit), Caller::Operator)
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(e["credential"]["credential_name"], "vc renamed");
    assert_eq!(e["credential"]["is_default"], true, "{e}");
    let (s, t) = test_call(&h, &id).await;
    assert_eq!(
        (s, &t["success"]),
        (StatusCode::OK, &json!(true)),
        "blank kept it: {t}"
    );

    // A wrong password: not ok, `success` false, the SNA's refusal in `message`.
    let wrong = gui_body("vc", "not-the-password").to_string();
    let (s, _) = h
        .call(Method::PUT, &uri, Some(&wrong), Caller::Operator)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, t) = test_call(&h, &id).await;
    assert!(!s.is_success(), "{s} {t}");
    assert_eq!(t["success"], false, "{t}");
    assert!(!t["message"].as_str().unwrap().is_empty(), "{t}");
    assert!(!t.to_string().contains("not-the-password"), "{t}");
    let r = test_call(&h, &json!(999)).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    h.stop().await;
}

/// `components/features/protection-groups/VMDiscoveryModal.tsx`: step 1's test reads
/// `response.ok` and `message`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_discovery_modal_tsx_connection_test() {
    let dir = tempfile::tempdir().unwrap();
    let (_sna, h) = started(dir.path()).await;
    let (_, good) = h
        .post("/api/v1/vmware-credentials", &gui_body("good", PASSWORD))
        .await;
    let (_, bad) = h
        .post("/api/v1/vmware-credentials", &gui_body("bad", "wrong-pw"))
        .await;
    let (s, t) = test_call(&h, &good["credential"]["id"]).await;
    assert!(s.is_success() && t["message"].is_string(), "{t}");
    let (s, t) = test_call(&h, &bad["credential"]["id"]).await;
    assert!(!s.is_success() && t["message"].is_string(), "{t}");
    h.stop().await;
}
