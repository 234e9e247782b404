//! Schedules, machine groups and policies through the hub's HTTP API: create, list, get, update
//! and delete of each at the defaults, the shapes the Sendense GUI reads, and every refusal
//! (400, 404, 409) leaving the catalog as it was. VM contexts come from discovery through the
//! stand-in SNA; protection flows, whose API is built elsewhere, are rows written directly.

mod common;

use axum::http::{Method, StatusCode};
use common::hub::*;
use common::sna::{StandIn, discover, vm};
use serde_json::{Value, json};

async fn put(h: &TestHub, uri: &str, body: &Value) -> (StatusCode, Value) {
    h.call(Method::PUT, uri, Some(&body.to_string()), Caller::Operator)
        .await
}

async fn delete(h: &TestHub, uri: &str) -> (StatusCode, Value) {
    h.call(Method::DELETE, uri, None, Caller::Operator).await
}

/// A list as the API answers it, without its `retrieved_at` (which changes every time).
async fn snapshot(h: &TestHub, uri: &str) -> Value {
    let (s, mut v) = h.get(uri).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    if let Some(o) = v.as_object_mut() {
        o.remove("retrieved_at");
    }
    v
}

/// Each request is refused with `status`, and `list` answers the same after as before.
async fn refused(
    h: &TestHub,
    list: &str,
    status: StatusCode,
    requests: &[(Method, String, Value)],
) {
    let before = snapshot(h, list).await;
    for (method, uri, body) in requests {
        let body = match body {
            Value::String(raw) => raw.clone(),
            other => other.to_string(),
        };
        let resp = h
            .call(method.clone(), uri, Some(&body), Caller::Operator)
            .await;
        assert_eq!(resp.0, status, "{method} {uri} {body}: {}", resp.1);
        assert!(
            resp.1["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{}",
            resp.1
        );
        assert_eq!(
            snapshot(h, list).await,
            before,
            "{method} {uri} {body} changed {list}"
        );
    }
}

/// Every field named, of the JSON type given: s string, S string or null, b bool, n number,
/// N number or null, a array, A array or null, o object.
fn assert_shape(v: &Value, fields: &[(&str, char)]) {
    for (name, kind) in fields {
        let f = &v[name];
        let ok = match kind {
            's' => f.is_string(),
            'S' => f.is_string() || f.is_null(),
            'b' => f.is_boolean(),
            'n' => f.is_u64() || f.is_i64(),
            'N' => f.is_u64() || f.is_i64() || f.is_null(),
            'a' => f.is_array(),
            'A' => f.is_array() || f.is_null(),
            _ => f.is_object(),
        };
        let present = v.as_object().is_some_and(|o| o.contains_key(*name));
        assert!(present && ok, "{name} is not {kind} in {v:#}");
    }
}

fn uuid(v: &Value) -> String {
    let id = v["id"].as_str().unwrap();
    assert_eq!(
        uuid::Uuid::parse_str(id).unwrap().get_version_num(),
        4,
        "{id}"
    );
    id.to_owned()
}

/// A protection flow row, as the flows' API (built elsewhere) will write it.
fn insert_flow(
    h: &TestHub,
    name: &str,
    target: (&str, &str),
    policy: Option<&str>,
    schedule: Option<&str>,
) {
    let conn = rusqlite::Connection::open(h.data_dir.join("catalog.sqlite")).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn.execute(
        "INSERT INTO protection_flows (id, name, flow_type, target_type, target_id, repository_id, \
         policy_id, schedule_id, enabled, created_by, created_at, updated_at) \
         VALUES (?1, ?1, 'backup', ?2, ?3, 'default', ?4, ?5, 1, 'test', '2026-01-01T00:00:00.000000Z', \
         '2026-01-01T00:00:00.000000Z')",
        rusqlite::params![name, target.0, target.1, policy, schedule],
    )
    .unwrap();
}

fn drop_flow(h: &TestHub, name: &str) {
    let conn = rusqlite::Connection::open(h.data_dir.join("catalog.sqlite")).unwrap();
    conn.execute("DELETE FROM protection_flows WHERE id = ?1", [name])
        .unwrap();
}

const SCHEDULE_FIELDS: [(&str, char); 14] = [
    ("id", 's'),
    ("name", 's'),
    ("description", 'S'),
    ("cron_expression", 's'),
    ("timezone", 's'),
    ("skip_if_running", 'b'),
    ("max_concurrent_jobs", 'n'),
    ("replication_type", 's'),
    ("retry_attempts", 'n'),
    ("retry_delay_minutes", 'n'),
    ("enabled", 'b'),
    ("created_by", 's'),
    ("created_at", 's'),
    ("updated_at", 's'),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_crud_shapes_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start(test_config(dir.path().join("data"))).await;
    let (s, nightly) = h
        .post(
            "/api/v1/schedules",
            &json!({"name": "nightly", "cron_expression": "0 2 * * *"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{nightly}");
    assert_shape(&nightly, &SCHEDULE_FIELDS);
    let id = uuid(&nightly);
    for (field, default) in [
        ("timezone", json!("UTC")),
        ("skip_if_running", json!(true)),
        ("max_concurrent_jobs", json!(10)),
        ("replication_type", json!("auto")),
        ("retry_attempts", json!(0)),
        ("retry_delay_minutes", json!(5)),
        ("enabled", json!(true)),
        ("created_by", json!("api")),
        ("description", Value::Null),
    ] {
        assert_eq!(nightly[field], default, "{field}");
    }
    let (_, list) = h.get("/api/v1/schedules").await;
    assert_shape(
        &list,
        &[
            ("schedules", 'a'),
            ("total_count", 'n'),
            ("enabled_count", 'n'),
            ("disabled_count", 'n'),
            ("retrieved_at", 's'),
        ],
    );
    assert_eq!(
        (
            &list["total_count"],
            &list["enabled_count"],
            &list["disabled_count"]
        ),
        (&json!(1), &json!(1), &json!(0))
    );
    assert_eq!(list["schedules"][0], nightly);
    let uri = format!("/api/v1/schedules/{id}");
    assert_eq!(h.get(&uri).await, (StatusCode::OK, nightly.clone()));

    let (s, changed) = put(&h, &uri, &json!({"cron_expression": "*/5 * * * * *",
        "timezone": "Europe/Berlin", "replication_type": "incremental", "description": "every 5 s"})).await;
    assert_eq!(s, StatusCode::OK, "{changed}");
    assert_eq!(
        (
            &changed["name"],
            &changed["cron_expression"],
            &changed["timezone"]
        ),
        (
            &json!("nightly"),
            &json!("*/5 * * * * *"),
            &json!("Europe/Berlin")
        )
    );
    assert_eq!(
        (
            &changed["replication_type"],
            &changed["description"],
            &changed["created_at"]
        ),
        (
            &json!("incremental"),
            &json!("every 5 s"),
            &nightly["created_at"]
        )
    );
    let (s, off) = h
        .post(&format!("{uri}/enable"), &json!({"enabled": false}))
        .await;
    assert_eq!(
        (s, &off["enabled"]),
        (StatusCode::OK, &json!(false)),
        "{off}"
    );
    let (_, list) = h.get("/api/v1/schedules").await;
    assert_eq!(
        (&list["enabled_count"], &list["disabled_count"]),
        (&json!(0), &json!(1))
    );
    let (_, only) = h.get("/api/v1/schedules?enabled_only=true").await;
    assert_eq!(only["total_count"], 0, "{only}");
    let (s, runs) = h.get(&format!("{uri}/executions?limit=5&page=2")).await;
    assert_eq!(s, StatusCode::OK, "{runs}");
    assert_eq!(
        (
            &runs["executions"],
            &runs["total_count"],
            &runs["limit"],
            &runs["page"]
        ),
        (&json!([]), &json!(0), &json!(5), &json!(2))
    );
    let (s, other) = h
        .post(
            "/api/v1/schedules",
            &json!({"name": "weekly", "cron_expression": "@weekly"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{other}");
    let other_uri = format!("/api/v1/schedules/{}", other["id"].as_str().unwrap());

    let list = "/api/v1/schedules";
    let new = |body: Value| (Method::POST, list.to_owned(), body);
    refused(&h, list, StatusCode::BAD_REQUEST, &[
        new(json!({"name": "x".repeat(256), "cron_expression": "@daily"})),
        new(json!({"name": " ", "cron_expression": "@daily"})),
        new(json!({"name": "no-cron"})),
        new(json!({"name": "four", "cron_expression": "* * * *"})),
        new(json!({"name": "seven", "cron_expression": "* * * * * * *"})),
        new(json!({"name": "tz", "cron_expression": "@daily", "timezone": ""})),
        new(json!({"name": "jobs", "cron_expression": "@daily", "max_concurrent_jobs": 0})),
        new(json!({"name": "jobs", "cron_expression": "@daily", "max_concurrent_jobs": 1001})),
        new(json!({"name": "retry", "cron_expression": "@daily", "retry_attempts": 11})),
        new(json!({"name": "delay", "cron_expression": "@daily", "retry_delay_minutes": 1441})),
        new(json!({"name": "type", "cron_expression": "@daily", "replication_type": "sometimes"})),
        new(json!("{\"name\": ")),
        (Method::PUT, uri.clone(), json!({"cron_expression": "not cron"})),
        (Method::PUT, uri.clone(), json!({"name": "y".repeat(300)})),
        (Method::POST, format!("{uri}/enable"), json!({"enabled": "yes"})),
        (Method::GET, format!("{uri}/executions?limit=0"), Value::Null),
    ]).await;
    refused(
        &h,
        list,
        StatusCode::CONFLICT,
        &[
            new(json!({"name": "nightly", "cron_expression": "@daily"})),
            (Method::PUT, other_uri.clone(), json!({"name": "nightly"})),
        ],
    )
    .await;
    let missing = "/api/v1/schedules/4b0c3a64-0000-4000-8000-000000000000";
    refused(
        &h,
        list,
        StatusCode::NOT_FOUND,
        &[
            (Method::GET, missing.to_owned(), Value::Null),
            (Method::PUT, missing.to_owned(), json!({"enabled": true})),
            (Method::DELETE, missing.to_owned(), Value::Null),
            (
                Method::POST,
                format!("{missing}/enable"),
                json!({"enabled": true}),
            ),
            (Method::GET, format!("{missing}/executions"), Value::Null),
        ],
    )
    .await;

    // In use by a group, then by a flow: refused; free: deleted.
    let (s, group) = h
        .post(
            "/api/v1/machine-groups",
            &json!({"name": "g", "schedule_id": id}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{group}");
    assert_eq!(group["schedule_name"], "nightly", "{group}");
    refused(
        &h,
        list,
        StatusCode::CONFLICT,
        &[(Method::DELETE, uri.clone(), Value::Null)],
    )
    .await;
    let group_uri = format!("/api/v1/machine-groups/{}", group["id"].as_str().unwrap());
    assert_eq!(delete(&h, &group_uri).await.0, StatusCode::OK);
    insert_flow(&h, "f", ("vm", "some-vm"), None, Some(&id));
    refused(
        &h,
        list,
        StatusCode::CONFLICT,
        &[(Method::DELETE, uri.clone(), Value::Null)],
    )
    .await;
    drop_flow(&h, "f");
    let (s, gone) = delete(&h, &uri).await;
    assert_eq!(s, StatusCode::OK, "{gone}");
    assert_shape(
        &gone,
        &[("success", 'b'), ("message", 's'), ("deleted_at", 's')],
    );
    assert_eq!(gone["success"], true);
    assert_eq!(h.get(&uri).await.0, StatusCode::NOT_FOUND);
    assert_eq!(h.get(list).await.1["total_count"], 1);
    h.stop().await;
}

const GROUP_FIELDS: [(&str, char); 15] = [
    ("id", 's'),
    ("name", 's'),
    ("description", 'S'),
    ("schedule_id", 'S'),
    ("schedule_name", 'S'),
    ("max_concurrent_vms", 'n'),
    ("priority", 'n'),
    ("total_vms", 'n'),
    ("enabled_vms", 'n'),
    ("disabled_vms", 'n'),
    ("active_jobs", 'n'),
    ("last_execution", 'S'),
    ("created_by", 's'),
    ("created_at", 's'),
    ("updated_at", 's'),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_groups_members_shapes_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let sna = StandIn::start(
        dir.path(),
        json!({
            "vcenter": {"host": "vc.example", "datacenter": "DC1"},
            "vms": [vm("vm-1", "web-1", 2, 4096), vm("vm-2", "web-2", 4, 8192), vm("vm-3", "db-1", 8, 16384)]
        }),
    );
    let mut config = test_config(dir.path().join("data"));
    config.sna_url = format!("http://127.0.0.1:{}", sna.port);
    let h = TestHub::start(config).await;
    let ids = discover(&h, &["web-1", "web-2", "db-1"]).await;
    let (a, b, c) = (&ids[0], &ids[1], &ids[2]);
    let (_, schedule) = h
        .post(
            "/api/v1/schedules",
            &json!({"name": "nightly", "cron_expression": "0 2 * * *"}),
        )
        .await;

    let (s, web) = h
        .post(
            "/api/v1/machine-groups",
            &json!({"name": "web", "schedule_id": schedule["id"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{web}");
    assert_shape(&web, &GROUP_FIELDS);
    let web_id = uuid(&web);
    assert_eq!(
        (
            &web["max_concurrent_vms"],
            &web["priority"],
            &web["created_by"],
            &web["total_vms"]
        ),
        (&json!(10), &json!(50), &json!("api"), &json!(0))
    );
    assert_eq!(web["schedule_name"], "nightly");
    let web_uri = format!("/api/v1/machine-groups/{web_id}");
    let (s, added) = h
        .post(
            &format!("{web_uri}/vms"),
            &json!({"vm_context_id": a, "enabled": false, "priority": 3}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{added}");
    assert_eq!(added["added_vm_context_ids"], json!([a]));
    // The GUI's shape; a VM already in this group is no error and stays as it was.
    let (s, added) = h
        .post(
            &format!("{web_uri}/vms"),
            &json!({"vm_context_ids": [b, a]}),
        )
        .await;
    assert_eq!(
        (s, &added["added_vm_context_ids"], &added["total_vms"]),
        (StatusCode::OK, &json!([b]), &json!(2)),
        "{added}"
    );
    let (_, got) = h.get(&web_uri).await;
    assert_eq!(
        (&got["total_vms"], &got["enabled_vms"], &got["disabled_vms"]),
        (&json!(2), &json!(1), &json!(1)),
        "{got}"
    );
    let (_, vms) = h.get(&format!("{web_uri}/vms")).await;
    assert_shape(
        &vms,
        &[
            ("group_id", 's'),
            ("group_name", 's'),
            ("total_vms", 'n'),
            ("vms", 'a'),
            ("retrieved_at", 's'),
        ],
    );
    assert_shape(
        &vms["vms"][0],
        &[
            ("vm_context_id", 's'),
            ("vm_name", 's'),
            ("vmware_vm_id", 's'),
            ("priority", 'n'),
            ("enabled", 'b'),
            ("added_at", 's'),
            ("added_by", 's'),
        ],
    );
    assert_eq!(
        (
            &vms["vms"][0]["vm_name"],
            &vms["vms"][0]["priority"],
            &vms["vms"][0]["enabled"]
        ),
        (&json!("web-1"), &json!(3), &json!(false))
    );
    let (s, members) = h.get(&format!("/api/v1/vm-groups/{web_id}/members")).await;
    assert_eq!(
        (s, &members["count"]),
        (StatusCode::OK, &json!(2)),
        "{members}"
    );
    let member = &members["members"][1];
    assert_shape(
        member,
        &[
            ("context_id", 's'),
            ("vm_name", 's'),
            ("cpu_count", 'n'),
            ("memory_mb", 'n'),
            ("os_type", 's'),
            ("power_state", 's'),
        ],
    );
    assert_eq!(
        (
            &member["context_id"],
            &member["vm_name"],
            &member["cpu_count"],
            &member["memory_mb"]
        ),
        (&json!(b), &json!("web-2"), &json!(4), &json!(8192))
    );
    assert_eq!(
        (&member["os_type"], &member["power_state"]),
        (&json!("ubuntu64Guest"), &json!("poweredOn"))
    );

    let (_, db) = h
        .post("/api/v1/machine-groups", &json!({"name": "db"}))
        .await;
    let db_uri = format!("/api/v1/machine-groups/{}", uuid(&db));
    let list = "/api/v1/machine-groups";
    let missing = "/api/v1/machine-groups/4b0c3a64-0000-4000-8000-000000000000";
    // A VM in another group: the whole request is refused, c is not added either.
    refused(
        &h,
        list,
        StatusCode::CONFLICT,
        &[
            (
                Method::POST,
                format!("{db_uri}/vms"),
                json!({"vm_context_ids": [c, a]}),
            ),
            (Method::POST, list.to_owned(), json!({"name": "web"})),
            (Method::PUT, db_uri.clone(), json!({"name": "web"})),
        ],
    )
    .await;
    refused(
        &h,
        list,
        StatusCode::BAD_REQUEST,
        &[
            (
                Method::POST,
                list.to_owned(),
                json!({"name": "n".repeat(256)}),
            ),
            (Method::POST, list.to_owned(), json!({})),
            (
                Method::POST,
                list.to_owned(),
                json!({"name": "m", "max_concurrent_vms": 0}),
            ),
            (
                Method::POST,
                list.to_owned(),
                json!({"name": "m", "priority": 101}),
            ),
            (Method::POST, list.to_owned(), json!("[1]")),
            (Method::POST, format!("{db_uri}/vms"), json!({})),
            (
                Method::POST,
                format!("{db_uri}/vms"),
                json!({"vm_context_ids": []}),
            ),
            (
                Method::POST,
                format!("{db_uri}/vms"),
                json!({"vm_context_id": c, "priority": -1}),
            ),
            // Deleting a group with VMs: 400, as the old hub answered.
            (Method::DELETE, web_uri.clone(), Value::Null),
        ],
    )
    .await;
    refused(
        &h,
        list,
        StatusCode::NOT_FOUND,
        &[
            (Method::GET, missing.to_owned(), Value::Null),
            (Method::PUT, missing.to_owned(), json!({"priority": 1})),
            (Method::DELETE, missing.to_owned(), Value::Null),
            (Method::GET, format!("{missing}/vms"), Value::Null),
            (
                Method::GET,
                format!("/api/v1/vm-groups/{}/members", &missing[24..]),
                Value::Null,
            ),
            (
                Method::POST,
                format!("{missing}/vms"),
                json!({"vm_context_id": c}),
            ),
            (
                Method::POST,
                format!("{db_uri}/vms"),
                json!({"vm_context_ids": [c, "no-such-vm"]}),
            ),
            (Method::DELETE, format!("{db_uri}/vms/{a}"), Value::Null),
            (Method::DELETE, format!("{missing}/vms/{a}"), Value::Null),
            (
                Method::POST,
                list.to_owned(),
                json!({"name": "s", "schedule_id": "no-such-schedule"}),
            ),
            (
                Method::PUT,
                format!("/api/v1/vm-contexts/{c}/group"),
                json!({"group_id": "no-such-group"}),
            ),
            (
                Method::PUT,
                "/api/v1/vm-contexts/no-such-vm/group".to_owned(),
                json!({"group_id": null}),
            ),
        ],
    )
    .await;

    // PUT /vm-contexts/{id}/group moves a VM, and null takes it out.
    let (s, moved) = put(
        &h,
        &format!("/api/v1/vm-contexts/{a}/group"),
        &json!({"group_id": db["id"]}),
    )
    .await;
    assert_eq!(
        (s, &moved["group_id"], &moved["vm_context_id"]),
        (StatusCode::OK, &db["id"], &json!(a)),
        "{moved}"
    );
    assert_eq!(h.get(&db_uri).await.1["total_vms"], 1);
    assert_eq!(h.get(&web_uri).await.1["total_vms"], 1);
    let (s, out) = put(
        &h,
        &format!("/api/v1/vm-contexts/{a}/group"),
        &json!({"group_id": null}),
    )
    .await;
    assert_eq!(
        (s, &out["group_id"]),
        (StatusCode::OK, &Value::Null),
        "{out}"
    );
    assert_eq!(h.get(&db_uri).await.1["total_vms"], 0);

    let (s, changed) = put(
        &h,
        &web_uri,
        &json!({"description": "front ends", "schedule_id": null, "max_concurrent_vms": 2}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{changed}");
    assert_eq!(
        (
            &changed["description"],
            &changed["schedule_id"],
            &changed["max_concurrent_vms"],
            &changed["name"]
        ),
        (&json!("front ends"), &Value::Null, &json!(2), &json!("web"))
    );
    let (_, all) = h.get(list).await;
    assert_shape(
        &all,
        &[("groups", 'a'), ("total_count", 'n'), ("retrieved_at", 's')],
    );
    assert_eq!(all["total_count"], 2);
    assert_shape(&all["groups"][0], &GROUP_FIELDS);

    // A flow targets db: 409; web's last VM removed, web goes.
    insert_flow(&h, "f", ("group", db["id"].as_str().unwrap()), None, None);
    refused(
        &h,
        list,
        StatusCode::CONFLICT,
        &[(Method::DELETE, db_uri.clone(), Value::Null)],
    )
    .await;
    let (s, removed) = delete(&h, &format!("{web_uri}/vms/{b}")).await;
    assert_eq!(
        (s, &removed["success"]),
        (StatusCode::OK, &json!(true)),
        "{removed}"
    );
    let (s, gone) = delete(&h, &web_uri).await;
    assert_eq!(s, StatusCode::OK, "{gone}");
    assert_shape(
        &gone,
        &[
            ("success", 'b'),
            ("message", 's'),
            ("group_id", 's'),
            ("timestamp", 's'),
        ],
    );
    assert_eq!(h.get(&web_uri).await.0, StatusCode::NOT_FOUND);
    assert_eq!(h.get(list).await.1["total_count"], 1);
    h.stop().await;
}

const POLICY_FIELDS: [(&str, char); 14] = [
    ("id", 's'),
    ("name", 's'),
    ("enabled", 'b'),
    ("primary_repository_id", 's'),
    ("retention_days", 'N'),
    ("copy_rules", 'A'),
    ("keep_last", 'N'),
    ("keep_hourly", 'N'),
    ("keep_daily", 'N'),
    ("keep_weekly", 'N'),
    ("keep_monthly", 'N'),
    ("keep_yearly", 'N'),
    ("created_at", 's'),
    ("updated_at", 's'),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_crud_shapes_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start(test_config(dir.path().join("data"))).await;
    for repo in ["offsite", "third"] {
        let (s, r) = h
            .post(
                "/api/v1/repositories",
                &json!({"id": repo, "path": dir.path().join(repo)}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{r}");
    }
    let (s, gold) = h
        .post(
            "/api/v1/policies",
            &json!({"name": "gold", "primary_repository_id": "default", "retention_days": 30}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{gold}");
    assert_shape(&gold, &POLICY_FIELDS);
    let gold_uri = format!("/api/v1/policies/{}", uuid(&gold));
    assert_eq!(
        (
            &gold["enabled"],
            &gold["copy_rules"],
            &gold["retention_days"],
            &gold["keep_daily"]
        ),
        (&json!(true), &Value::Null, &json!(30), &Value::Null)
    );
    let (s, silver) = h
        .post("/api/v1/policies", &json!({"name": "silver", "primary_repository_id": "default",
            "copy_rules": [{"destination_repository_id": "offsite"}], "keep_daily": 7, "keep_last": 0}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{silver}");
    let rule = &silver["copy_rules"][0];
    assert_shape(
        rule,
        &[
            ("id", 's'),
            ("policy_id", 's'),
            ("destination_repository_id", 's'),
            ("copy_mode", 's'),
            ("priority", 'n'),
            ("enabled", 'b'),
            ("verify_after_copy", 'b'),
            ("created_at", 's'),
        ],
    );
    assert_eq!(
        (
            &rule["policy_id"],
            &rule["copy_mode"],
            &rule["priority"],
            &rule["enabled"],
            &rule["verify_after_copy"]
        ),
        (
            &silver["id"],
            &json!("immediate"),
            &json!(1),
            &json!(true),
            &json!(false)
        )
    );
    assert_eq!(
        (&silver["keep_daily"], &silver["keep_last"]),
        (&json!(7), &json!(0))
    );
    let silver_uri = format!("/api/v1/policies/{}", uuid(&silver));
    let (_, all) = h.get("/api/v1/policies").await;
    assert!(all.is_array(), "a bare array: {all}");
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(h.get(&silver_uri).await, (StatusCode::OK, silver.clone()));

    let (s, changed) = put(
        &h,
        &gold_uri,
        &json!({"keep_last": 3, "copy_rules": [{"destination_repository_id": "offsite",
        "copy_mode": "scheduled", "priority": 2, "verify_after_copy": true}]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{changed}");
    assert_eq!(
        (
            &changed["retention_days"],
            &changed["keep_last"],
            &changed["name"]
        ),
        (&json!(30), &json!(3), &json!("gold"))
    );
    assert_eq!(
        (
            &changed["copy_rules"][0]["copy_mode"],
            &changed["copy_rules"][0]["priority"]
        ),
        (&json!("scheduled"), &json!(2))
    );
    assert_eq!(changed["created_at"], gold["created_at"]);
    let (s, cleared) = put(
        &h,
        &gold_uri,
        &json!({"copy_rules": null, "retention_days": null}),
    )
    .await;
    assert_eq!(
        (
            s,
            &cleared["copy_rules"],
            &cleared["retention_days"],
            &cleared["keep_last"]
        ),
        (StatusCode::OK, &Value::Null, &Value::Null, &json!(3)),
        "{cleared}"
    );

    let list = "/api/v1/policies";
    let new = |body: Value| (Method::POST, list.to_owned(), body);
    let copy = |rules: Value| json!({"name": "p", "primary_repository_id": "default", "copy_rules": rules});
    refused(&h, list, StatusCode::BAD_REQUEST, &[
        new(json!({"name": "p".repeat(256), "primary_repository_id": "default"})),
        new(json!({"name": "p"})),
        new(json!({"primary_repository_id": "default"})),
        new(copy(json!([{"destination_repository_id": "default"}]))),
        new(copy(json!([{"destination_repository_id": "offsite"}, {"destination_repository_id": "offsite"}]))),
        new(copy(json!([{"destination_repository_id": "offsite", "copy_mode": "sometimes"}]))),
        new(copy(json!([{"destination_repository_id": "offsite", "priority": 0}]))),
        new(copy(json!([{}]))),
        new(json!({"name": "p", "primary_repository_id": "default", "keep_last": -1})),
        new(json!("{\"name\"")),
        // silver copies to offsite: offsite cannot become its primary.
        (Method::PUT, silver_uri.clone(), json!({"primary_repository_id": "offsite"})),
    ]).await;
    refused(&h, list, StatusCode::NOT_FOUND, &[
        new(json!({"name": "p", "primary_repository_id": "nowhere"})),
        new(copy(json!([{"destination_repository_id": "third"}, {"destination_repository_id": "nowhere"}]))),
        (Method::GET, format!("{list}/no-such-policy"), Value::Null),
        (Method::PUT, format!("{list}/no-such-policy"), json!({"enabled": false})),
        (Method::DELETE, format!("{list}/no-such-policy"), Value::Null),
    ]).await;
    refused(
        &h,
        list,
        StatusCode::CONFLICT,
        &[
            new(json!({"name": "gold", "primary_repository_id": "default"})),
            (Method::PUT, silver_uri.clone(), json!({"name": "gold"})),
        ],
    )
    .await;

    insert_flow(&h, "f", ("vm", "some-vm"), silver["id"].as_str(), None);
    refused(
        &h,
        list,
        StatusCode::CONFLICT,
        &[(Method::DELETE, silver_uri.clone(), Value::Null)],
    )
    .await;
    let (s, gone) = delete(&h, &gold_uri).await;
    assert_eq!(s, StatusCode::OK, "{gone}");
    assert_shape(&gone, &[("message", 's'), ("id", 's')]);
    assert_eq!(gone["id"], gold["id"]);
    assert_eq!(h.get(&gold_uri).await.0, StatusCode::NOT_FOUND);
    assert_eq!(h.get(list).await.1.as_array().unwrap().len(), 1);
    h.stop().await;
}
