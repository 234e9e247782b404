//! `/api/v1/jobs` through the router, at the defaults.

mod common;

use axum::http::{Method, StatusCode};
use common::hub::*;

#[tokio::test]
async fn jobs_routes_answer_and_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start(test_config(dir.path().join("data"))).await;
    let (status, list) = h.get("/api/v1/jobs").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list, serde_json::json!({"jobs": [], "total": 0}));
    let (status, _) = h
        .get("/api/v1/jobs?type=protection_flow&status=failed&limit=5")
        .await;
    assert_eq!(status, StatusCode::OK);
    for bad in [
        "/api/v1/jobs?type=mystery",
        "/api/v1/jobs?status=sleeping",
        "/api/v1/jobs?limit=0",
        "/api/v1/jobs?limit=1001",
    ] {
        assert_error(&h.get(bad).await, StatusCode::BAD_REQUEST, "bad_request");
    }
    assert_error(
        &h.get("/api/v1/jobs/job-none").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &h.get("/api/v1/jobs/job-none/log").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let cancel = h
        .call(
            Method::POST,
            "/api/v1/jobs/job-none/cancel",
            None,
            Caller::Operator,
        )
        .await;
    assert_error(&cancel, StatusCode::NOT_FOUND, "not_found");
    // Without the token, nothing about jobs.
    let anonymous = h
        .call(Method::GET, "/api/v1/jobs", None, Caller::Remote)
        .await;
    assert_eq!(anonymous.0, StatusCode::UNAUTHORIZED);

    let (_, metrics) = h
        .call(Method::GET, "/metrics", None, Caller::Operator)
        .await;
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains("sendense_jobs{type=\"protection_flow\",status=\"failed\"} 0"),
        "{metrics}"
    );
    h.stop().await;
}
