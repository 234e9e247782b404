//! Copies through the API, as the copy tests drive them.

use serde_json::Value;

use super::chain::wait_job;
use super::{http, ok};

/// `POST /api/v1/backups/{backup}/copy` with `body`: its job's id (the answer must be 201).
pub fn copy_job(api: &str, token: &str, backup: &str, body: &Value) -> String {
    let path = format!("/api/v1/backups/{backup}/copy");
    let r = http("POST", api, &path, Some(token), Some(body));
    assert_eq!(r.0, 201, "{}", r.1);
    r.1["job_id"].as_str().unwrap().to_owned()
}

/// A copy job that must succeed.
pub fn copied(api: &str, token: &str, backup: &str, body: &Value) {
    let job = wait_job(api, token, &copy_job(api, token, backup, body));
    assert_eq!(job["status"], "succeeded", "{job}");
}

/// `GET /api/v1/backups/{backup}/copies`.
pub fn copies(api: &str, token: &str, backup: &str) -> Value {
    let path = format!("/api/v1/backups/{backup}/copies");
    ok(http("GET", api, &path, Some(token), None))
}

/// Waits until the job has sent bytes (true), or ended first (false).
pub fn when_sending(api: &str, token: &str, job: &str) -> bool {
    for _ in 0..3000 {
        let j = ok(http(
            "GET",
            api,
            &format!("/api/v1/jobs/{job}"),
            Some(token),
            None,
        ));
        if j["status"] != "queued" && j["status"] != "running" {
            return false;
        }
        if j["bytes_done"].as_u64().unwrap_or(0) > 0 {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}
