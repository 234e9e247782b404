//! Protection flows that run themselves, against the stand-in SNA at the hub's defaults: runs as
//! jobs, executions counted from every backup, refusals retried, and the shapes the Sendense GUI
//! reads (`protectionFlowsApi.ts`, `useFlowProgress.ts`).

mod common;

use std::path::Path;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::hub::*;
use common::standin::StandIn;
use common::*;
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;
const VMS: [&str; 4] = ["vm-a", "vm-b", "vm-c", "vm-d"];

fn vm(name: &str, capacity: u64) -> Value {
    json!({"id": format!("id-{name}"), "name": name, "path": format!("/DC1/vm/{name}"),
        "datacenter": "DC1", "power_state": "poweredOn", "guest_os": "ubuntu64Guest",
        "memory_mb": 1024, "num_cpu": 1,
        "disks": [{"id": "disk-2000", "label": "Hard disk 1", "path": format!("[ds1] {name}/d.vmdk"),
            "vmdk_path": format!("[ds1] {name}/d.vmdk"), "size_gb": 0, "capacity_bytes": capacity,
            "datastore": "ds1", "provisioning_type": "thin", "unit_number": 0}],
        "networks": []})
}

/// A hub whose SNA is the stand-in with `VMS` discovered (contexts made), at the defaults.
async fn hub_with_vms(dir: &Path) -> (TestHub, StandIn) {
    let src = dir.join("disk2000.raw");
    make_raw(&src, (2 * MIB) as usize, 7);
    let inventory = json!({"vcenter": {"host": "vc.example", "datacenter": "DC1"},
        "vms": VMS.iter().map(|n| vm(n, 2 * MIB)).collect::<Vec<_>>()});
    let mut sna = StandIn::start(
        dir,
        json!({"hub_url": "", "password": common::sna::PASSWORD, "inventory": inventory,
            "sources": {"2000": src}, "changed": {"2000": [[0, 65536]]}, "expect_change_id": {},
            "new_change_ids": {"2000": "cid-2000"}, "mode": "ok", "refuse_vms": [],
            "log": dir.join("sna-log.jsonl"), "errors": dir.join("sna-errors.jsonl")}),
    );
    // The defaults a user runs (not `test_config`'s shorter monitor interval and graces).
    let mut config = ::hub::Config {
        data_dir: dir.join("data"),
        ..::hub::Config::default()
    };
    config.sna_url = format!("http://127.0.0.1:{}", StandIn::port(dir));
    let h = TestHub::start(config).await;
    sna.set("hub_url", json!(h.serve_api().await));
    common::sna::discover(&h, &VMS).await;
    (h, sna)
}

/// The flow's executions, oldest first, once at least `n` have ended.
async fn ended_executions(h: &TestHub, flow_id: &str, n: usize) -> Vec<Value> {
    for _ in 0..900 {
        let (s, list) = h
            .get(&format!(
                "/api/v1/protection-flows/{flow_id}/executions?limit=100"
            ))
            .await;
        assert_eq!(s, StatusCode::OK, "{list}");
        let mut ended: Vec<Value> = list["executions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["status"] != "running")
            .cloned()
            .collect();
        if ended.len() >= n {
            ended.reverse();
            return ended;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("flow {flow_id}: fewer than {n} runs ended in 90 s");
}

/// Context ids of `names`, from the VM context list.
async fn context_ids(h: &TestHub, names: &[&str]) -> Vec<String> {
    let (_, list) = h.get("/api/v1/vm-contexts").await;
    names
        .iter()
        .map(|n| {
            list["vm_contexts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["vm_name"] == *n)
                .unwrap_or_else(|| panic!("no context for {n}: {list}"))["context_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// Poll the flow's newest execution until it is no longer running.
async fn finished_execution(h: &TestHub, flow_id: &str) -> Value {
    for _ in 0..600 {
        let (s, list) = h
            .get(&format!(
                "/api/v1/protection-flows/{flow_id}/executions?limit=1"
            ))
            .await;
        assert_eq!(s, StatusCode::OK, "{list}");
        let newest = &list["executions"][0];
        if newest.is_object() && newest["status"] != "running" {
            return newest.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the flow's run did not end");
}

async fn job_of(h: &TestHub, execution: &Value) -> Value {
    let (s, job) = h
        .get(&format!(
            "/api/v1/jobs/{}",
            execution["job_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{job}");
    job
}

/// Fields the GUI reads of a flow, with their JSON types.
fn assert_flow_shape(flow: &Value) {
    for key in [
        "id",
        "name",
        "flow_type",
        "target_type",
        "target_id",
        "repository_id",
        "created_at",
    ] {
        assert!(flow[key].is_string(), "{key}: {flow}");
    }
    assert!(flow["enabled"].is_boolean(), "{flow}");
    let status = &flow["status"];
    assert!(status["last_execution_status"].is_string(), "{flow}");
    for key in [
        "total_executions",
        "successful_executions",
        "failed_executions",
    ] {
        assert!(status[key].is_u64(), "{key}: {flow}");
    }
}

/// Fields the GUI reads of an execution (`useFlowProgress.ts`, the flow details panel).
fn assert_execution_shape(e: &Value) {
    for key in [
        "id",
        "status",
        "flow_id",
        "execution_type",
        "created_at",
        "job_id",
    ] {
        assert!(e[key].is_string(), "{key}: {e}");
    }
    for key in [
        "jobs_created",
        "jobs_completed",
        "jobs_failed",
        "jobs_skipped",
        "vms_processed",
        "bytes_transferred",
        "duration_seconds",
        "execution_time_seconds",
    ] {
        assert!(e[key].is_u64(), "{key}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vm_flow_runs_as_a_job_full_then_incremental_and_refusals_are_retried_then_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (h, mut sna) = hub_with_vms(dir.path()).await;

    // What the GUI's Create Flow sends.
    let (s, flow) = h
        .post(
            "/api/v1/protection-flows",
            &json!({"name": "nightly a", "flow_type": "backup", "target_type": "vm",
                "target_id": "vm-a", "repository_id": "default", "enabled": true}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{flow}");
    assert_flow_shape(&flow);
    assert_eq!(flow["target_name"], "vm-a");
    assert_eq!(flow["repository_name"], "default");
    assert_eq!(flow["status"]["last_execution_status"], "pending");
    let id = flow["id"].as_str().unwrap().to_owned();

    // Run it: a full, then an incremental on the full.
    let mut kinds = Vec::new();
    for round in 0..2 {
        let (s, started) = h
            .post(
                &format!("/api/v1/protection-flows/{id}/execute"),
                &json!({}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{started}");
        assert_execution_shape(&started);
        assert_eq!(
            (&started["status"], &started["jobs_created"]),
            (&json!("running"), &json!(1))
        );
        let e = finished_execution(&h, &id).await;
        assert_execution_shape(&e);
        assert_eq!(e["status"], "success", "round {round}: {e}");
        assert_eq!(
            (&e["jobs_completed"], &e["jobs_failed"]),
            (&json!(1), &json!(0)),
            "{e}"
        );
        assert!(e["bytes_transferred"].as_u64().unwrap() > 0, "{e}");
        let job = job_of(&h, &e).await;
        assert_eq!(
            (&job["type"], &job["status"], &job["target"]),
            (&json!("protection_flow"), &json!("succeeded"), &json!(id))
        );
        assert_eq!(job["progress_percent"], 100.0);
        let backup = e["created_job_ids"][0].as_str().unwrap();
        let (_, b) = h.get(&format!("/api/v1/backups/{backup}")).await;
        assert_eq!(b["status"], "completed", "{b}");
        kinds.push(b["backup_type"].as_str().unwrap().to_owned());
        let record = h.hub.backup(backup).unwrap();
        qemu_img_check(&record.disks[0].qcow2_path);
    }
    assert_eq!(kinds, ["full", "incremental"]);
    sna.assert_no_errors();

    let (_, flow) = h.get(&format!("/api/v1/protection-flows/{id}")).await;
    assert_eq!(flow["status"]["last_execution_status"], "success");
    assert_eq!(flow["status"]["total_executions"], 2);
    assert_eq!(flow["status"]["successful_executions"], 2);
    let (_, list) = h.get("/api/v1/protection-flows").await;
    assert_eq!(list["total"], 1);
    list_matches_each_flow(&h).await;
    let (_, jobs) = h
        .get("/api/v1/jobs?type=protection_flow&status=succeeded")
        .await;
    assert_eq!(jobs["total"], 2, "{jobs}");
    let (_, log) = h
        .get(&format!(
            "/api/v1/jobs/{}/log",
            jobs["jobs"][0]["id"].as_str().unwrap()
        ))
        .await;
    let lines: Vec<&str> = log["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("vm-a: backup") && l.ends_with("completed")),
        "{lines:?}"
    );

    // A nightly schedule on the flow, triggered now: one more run, listed as the schedule's.
    let (s, nightly) = h
        .post(
            "/api/v1/schedules",
            &json!({"name": "nightly", "cron_expression": "30 2 * * *",
            "timezone": "America/New_York"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{nightly}");
    let schedule_id = nightly["id"].as_str().unwrap().to_owned();
    let (s, changed) = h
        .call(
            Method::PUT,
            &format!("/api/v1/protection-flows/{id}"),
            Some(&json!({"schedule_id": schedule_id}).to_string()),
            Caller::Operator,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{changed}");
    assert_eq!(changed["schedule_name"], "nightly");
    assert!(
        changed["status"]["next_execution_time"].is_string(),
        "{changed}"
    );
    let (s, fired) = h
        .post(
            &format!("/api/v1/schedules/{schedule_id}/trigger"),
            &json!({"reason": "test"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{fired}");
    assert_eq!(
        (
            &fired["jobs_created"],
            &fired["job_ids"].as_array().unwrap().len()
        ),
        (&json!(1), &1),
        "{fired}"
    );
    let e = finished_execution(&h, &id).await;
    assert_eq!(e["status"], "success", "{e}");
    let (_, runs) = h
        .get(&format!("/api/v1/schedules/{schedule_id}/executions"))
        .await;
    assert_eq!(runs["total_count"], 1, "{runs}");
    assert_eq!(runs["executions"][0]["status"], "completed", "{runs}");
    assert_eq!(runs["executions"][0]["jobs_successful"], 1, "{runs}");

    // The SNA refuses this VM: the run fails (nothing completed), its job too, with the reason.
    sna.set("refuse_vms", json!(["vm-a"]));
    h.post(
        &format!("/api/v1/protection-flows/{id}/execute"),
        &json!({}),
    )
    .await;
    let e = finished_execution(&h, &id).await;
    assert_eq!(
        (&e["status"], &e["jobs_failed"], &e["partial"]),
        (&json!("failed"), &json!(1), &json!(false)),
        "{e}"
    );
    assert_eq!(e["error_message"], "1 of 1 backups failed");
    let job = job_of(&h, &e).await;
    assert_eq!(job["status"], "failed", "{job}");
    let (_, log) = h
        .get(&format!("/api/v1/jobs/{}/log", job["id"].as_str().unwrap()))
        .await;
    assert!(log.to_string().contains("backup not started"), "{log}");

    let (_, summary) = h.get("/api/v1/protection-flows/summary").await;
    let today = (
        &summary["total_executions_today"],
        &summary["successful_executions_today"],
        &summary["failed_executions_today"],
    );
    assert_eq!(today, (&json!(4), &json!(3), &json!(1)), "{summary}");
    let (_, metrics) = h
        .call(Method::GET, "/metrics", None, Caller::Operator)
        .await;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("sendense_jobs{type=\"protection_flow\",status=\"succeeded\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "sendense_flow_last_success_timestamp_seconds{{flow=\"{id}\"}}"
        )),
        "{metrics}"
    );
    h.stop().await;
}

#[tokio::test]
async fn bad_flows_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start(::hub::Config {
        data_dir: dir.path().join("data"),
        ..::hub::Config::default()
    })
    .await;
    let base = json!({"name": "f", "target_type": "vm", "target_id": "nobody", "repository_id": "default"});
    let cases = [
        (json!({"target_type": "vm"}), StatusCode::BAD_REQUEST),
        (base.clone(), StatusCode::NOT_FOUND),
        (
            json!({"name": "f", "target_type": "cluster", "target_id": "x", "repository_id": "default"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "f", "target_type": "group", "target_id": "g-none", "repository_id": "default"}),
            StatusCode::NOT_FOUND,
        ),
        (
            json!({"name": "x".repeat(256), "target_type": "vm", "target_id": "nobody", "repository_id": "default"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "f", "flow_type": "replication", "target_type": "vm", "target_id": "nobody", "repository_id": "default"}),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (body, want) in cases {
        let (s, answer) = h.post("/api/v1/protection-flows", &body).await;
        assert_eq!(s, want, "{body}: {answer}");
    }
    let (_, list) = h.get("/api/v1/protection-flows").await;
    assert_eq!(list, json!({"flows": [], "total": 0}));
    for (method, uri) in [
        (Method::GET, "/api/v1/protection-flows/flow-none"),
        (Method::POST, "/api/v1/protection-flows/flow-none/execute"),
        (Method::DELETE, "/api/v1/protection-flows/flow-none"),
        (Method::GET, "/api/v1/protection-flows/flow-none/executions"),
    ] {
        let (s, _) = h
            .call(method.clone(), uri, Some("{}"), Caller::Operator)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {uri}");
    }
    let (s, bulk) = h
        .post(
            "/api/v1/protection-flows/bulk-disable",
            &json!({"flow_ids": ["flow-none"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (&bulk["requested"], &bulk["failed"]),
        (&json!(1), &json!(1)),
        "{bulk}"
    );
    let (_, summary) = h.get("/api/v1/protection-flows/summary").await;
    assert_eq!(summary["total_flows"], 0, "{summary}");
    h.stop().await;
}

/// The case: a group of three VMs on a 6-field schedule firing every 5 s. One VM the SNA
/// refuses (retried once, then failed): the run is partial. Then every VM completes, later runs
/// are incrementals, a restart keeps the schedule with no tick run twice, and a 5-field schedule
/// fires too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_flow_runs_on_its_schedule_through_a_refusal_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (h, mut sna) = hub_with_vms(dir.path()).await;
    let (s, every5) = h
        .post(
            "/api/v1/schedules",
            &json!({"name": "every 5 s", "cron_expression": "*/5 * * * * *", "timezone": "Europe/Berlin",
                "retry_attempts": 1, "retry_delay_minutes": 0}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{every5}");
    let (_, minutely) = h
        .post(
            "/api/v1/schedules",
            &json!({"name": "minutely", "cron_expression": "* * * * *"}),
        )
        .await;
    let (s, group) = h
        .post(
            "/api/v1/machine-groups",
            &json!({"name": "web", "max_concurrent_vms": 2}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{group}");
    let group_id = group["id"].as_str().unwrap().to_owned();
    let members = context_ids(&h, &VMS[..3]).await;
    let (s, added) = h
        .post(
            &format!("/api/v1/machine-groups/{group_id}/vms"),
            &json!({"vm_context_ids": members}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{added}");
    sna.set("refuse_vms", json!(["vm-c"]));

    let (s, flow) = h
        .post(
            "/api/v1/protection-flows",
            &json!({"name": "web every 5 s", "flow_type": "backup", "target_type": "group",
                "target_id": group_id, "repository_id": "default",
                "schedule_id": every5["id"], "enabled": true}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{flow}");
    assert_eq!(flow["schedule_cron"], "*/5 * * * * *");
    assert_eq!(flow["target_name"], "web");
    assert!(flow["status"]["next_execution_time"].is_string(), "{flow}");
    let flow_id = flow["id"].as_str().unwrap().to_owned();
    let (_, minute_flow) = h
        .post(
            "/api/v1/protection-flows",
            &json!({"name": "d every minute", "target_type": "vm", "target_id": "vm-d",
                "repository_id": "default", "schedule_id": minutely["id"]}),
        )
        .await;
    let minute_flow = minute_flow["id"].as_str().unwrap().to_owned();

    // The first scheduled run: two complete, the refused VM is tried twice and fails.
    let first = ended_executions(&h, &flow_id, 1).await.remove(0);
    assert_execution_shape(&first);
    list_matches_each_flow(&h).await;
    assert_eq!(first["execution_type"], "scheduled");
    assert_eq!(
        (
            &first["status"],
            &first["partial"],
            &first["jobs_created"],
            &first["jobs_completed"],
            &first["jobs_failed"]
        ),
        (
            &json!("failed"),
            &json!(true),
            &json!(3),
            &json!(2),
            &json!(1)
        ),
        "{first}"
    );
    assert_eq!(first["error_message"], "1 of 3 backups failed");
    assert_eq!(job_of(&h, &first).await["status"], "warning");
    let starts = |sna: &StandIn, vm: &str| {
        sna.lines("log")
            .iter()
            .filter(|r| r["path"] == "/api/v1/backup/start" && r["body"]["vm_name"] == vm)
            .count()
    };
    assert_eq!(starts(&sna, "vm-c"), 2, "one retry of the refused VM");

    // The SNA takes vm-c again: a later run completes all three, the others as incrementals.
    sna.set("refuse_vms", json!([]));
    let runs = loop {
        let runs = ended_executions(&h, &flow_id, 1).await;
        if runs.iter().any(|e| e["status"] == "success") {
            break runs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ok = runs.iter().find(|e| e["status"] == "success").unwrap();
    assert_eq!(
        (&ok["jobs_created"], &ok["jobs_completed"]),
        (&json!(3), &json!(3)),
        "{ok}"
    );
    let mut types = Vec::new();
    for backup in ok["created_job_ids"].as_array().unwrap() {
        let (_, b) = h
            .get(&format!("/api/v1/backups/{}", backup.as_str().unwrap()))
            .await;
        assert_eq!(b["status"], "completed", "{b}");
        types.push((
            b["vm_name"].as_str().unwrap().to_owned(),
            b["backup_type"].as_str().unwrap().to_owned(),
        ));
    }
    types.sort();
    assert_eq!(
        types[0],
        ("vm-a".to_owned(), "incremental".to_owned()),
        "{types:?}"
    );
    assert_eq!(
        types[1],
        ("vm-b".to_owned(), "incremental".to_owned()),
        "{types:?}"
    );
    assert_eq!(types[2].0, "vm-c");

    sna.assert_no_errors();

    // A restart between ticks: the schedule goes on, and no tick runs twice. (A copy the stop
    // cut may leave the stand-in's client an error: not checked after this.)
    let before = ended_executions(&h, &flow_id, 1).await.len();
    let hub_config = h.hub.config.clone();
    h.stop().await;
    let h = TestHub::start(hub_config).await;
    sna.set("hub_url", json!(h.serve_api().await));
    let after = ended_executions(&h, &flow_id, before + 2).await;
    let mut ticks: Vec<&str> = after
        .iter()
        .filter_map(|e| e["scheduled_at"].as_str())
        .collect();
    let all = ticks.len();
    ticks.sort();
    ticks.dedup();
    assert_eq!(ticks.len(), all, "a tick ran twice: {after:#?}");
    assert!(
        after[before..].iter().any(|e| e["status"] == "success"),
        "{after:#?}"
    );

    // The 5-field schedule fired (within its minute) for vm-d.
    let minute_runs = ended_executions(&h, &minute_flow, 1).await;
    assert_eq!(minute_runs[0]["status"], "success", "{minute_runs:#?}");
    let (_, flow) = h.get(&format!("/api/v1/protection-flows/{flow_id}")).await;
    assert_flow_shape(&flow);
    assert!(
        flow["status"]["successful_executions"].as_u64().unwrap() >= 1,
        "{flow}"
    );
    h.stop().await;
}

/// The list (built for all flows at once) says of each flow what its own GET says; the next
/// run time only as much as both have one (a tick may pass between the two requests).
async fn list_matches_each_flow(h: &TestHub) {
    let (_, list) = h.get("/api/v1/protection-flows").await;
    let flows = list["flows"].as_array().unwrap();
    assert_eq!(list["total"], flows.len());
    for listed in flows {
        let uri = format!(
            "/api/v1/protection-flows/{}",
            listed["id"].as_str().unwrap()
        );
        let (_, mut one) = h.get(&uri).await;
        let mut listed = listed.clone();
        let next = |v: &mut Value| v["status"]["next_execution_time"].take();
        assert_eq!(next(&mut listed).is_string(), next(&mut one).is_string());
        assert_eq!(listed, one);
    }
}
