//! The hub driven like the SNA and an operator would: REST calls through the router, disks written
//! and read by real NBD clients (nbdcopy, python3-libnbd), images judged by qemu-img.

mod common;

use std::process::Command;

use axum::http::{Method, StatusCode};
use common::hub::*;
use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_disk_full_backup_completed_per_disk_then_restored() {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start(test_config(dir.path().join("data"))).await;
    let src0 = dir.path().join("src0.raw");
    let src1 = dir.path().join("src1.raw");
    let cap0 = 4 * MIB;
    let cap1 = 6 * MIB + 1536; // not a whole number of MiB: sizes are exact
    make_raw(&src0, cap0 as usize, 10);
    make_raw(&src1, cap1 as usize, 11);

    let req = json!({
        "vm_name": "web 01", "backup_type": "full", "tags": {"site": "a"},
        "disks": [disk(0, 2000, cap0), disk(1, 2016, cap1)],
    });
    let (status, b) = h.post("/api/v1/backups", &req).await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(b["status"], "ready");
    assert_eq!(b["repository_id"], "default");
    assert_eq!(b["disks_count"], 2);
    let id = b["backup_id"].as_str().unwrap().to_owned();
    let d = &b["disk_results"];
    let (e0, e1) = (
        d[0]["nbd_export_name"].as_str().unwrap(),
        d[1]["nbd_export_name"].as_str().unwrap(),
    );
    assert!(
        e0.ends_with("-disk0") && e1.ends_with("-disk1"),
        "{e0} {e1}"
    );
    assert!(
        e0.len() > "web_01--disk0".len() + 8,
        "export name has a random part: {e0}"
    );
    let (u0, u1) = (
        d[0]["nbd_uri"].as_str().unwrap().to_owned(),
        d[1]["nbd_uri"].as_str().unwrap().to_owned(),
    );
    assert_eq!(b["nbd_targets_string"], format!("2000:{u0},2016:{u1}"));
    assert_eq!(d[1]["capacity_bytes"], cap1);
    assert_eq!(d[0]["nbd_port"], h.hub.nbd_port);

    // The hub's NBD server does not list backup exports.
    let base_uri = format!("nbd://127.0.0.1:{}/", h.hub.nbd_port);
    let list = blocking(move || {
        Command::new("nbdinfo")
            .arg("--list")
            .arg(base_uri)
            .output()
            .unwrap()
    })
    .await;
    assert!(!String::from_utf8_lossy(&list.stdout).contains(e0));

    // The SNA writes each disk with two connections.
    nbdcopy(vec![
        "--connections=2".into(),
        src0.display().to_string(),
        u0.clone(),
    ])
    .await;
    h.wait_status(&id, "running").await;
    nbdcopy(vec![
        "--connections=2".into(),
        src1.display().to_string(),
        u1.clone(),
    ])
    .await;
    let (_, live) = h.get(&format!("/api/v1/backups/{id}")).await;
    assert!(live["bytes_written"].as_u64().unwrap() > 0, "{live}");

    // Per-disk completion, without a token, from the loopback peer; not from a remote one.
    let complete = format!("/api/v1/backups/{id}/complete");
    let body0 = r#"{"disk_id":0,"change_id":"52 3c-0/1","bytes_transferred":4194304}"#;
    assert_error(
        &h.call(Method::POST, &complete, Some(body0), Caller::Remote)
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let (s, after0) = h
        .call(Method::POST, &complete, Some(body0), Caller::Sna)
        .await;
    assert_eq!(s, StatusCode::OK, "{after0}");
    assert_eq!(after0["status"], "running");
    assert_eq!(after0["disk_results"][0]["status"], "completed");
    let telemetry =
        json!({"job_id": id, "status": "running", "progress_percent": 60.0, "disks": []});
    let (s, _) = h
        .call(
            Method::POST,
            &format!("/api/v1/telemetry/backup/{id}"),
            Some(&telemetry.to_string()),
            Caller::Sna,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let body1 = r#"{"disk_id":1,"change_id":"52 3c-1/9"}"#;
    let (s, _) = h
        .call(Method::POST, &complete, Some(body1), Caller::Sna)
        .await;
    assert_eq!(s, StatusCode::OK);
    let done = h.wait_status(&id, "completed").await;
    assert_eq!(done["progress_percent"], 100.0);
    assert_eq!(done["telemetry"]["progress_percent"], 60.0);
    assert!(
        done["disk_results"][1]["image_size_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    // Idempotent.
    let (s, again) = h
        .call(Method::POST, &complete, Some(body1), Caller::Sna)
        .await;
    assert_eq!(
        (s, again["status"].clone()),
        (StatusCode::OK, json!("completed"))
    );

    for (src, disk) in [
        (&src0, &done["disk_results"][0]),
        (&src1, &done["disk_results"][1]),
    ] {
        let image = std::path::PathBuf::from(disk["qcow2_path"].as_str().unwrap());
        qemu_img_check(&image);
        qemu_img_compare(src, &image);
        let info = run_ok(
            Command::new("qemu-img")
                .args(["info", "--output=json"])
                .arg(&image),
        );
        let info: Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["virtual-size"], disk["capacity_bytes"]);
    }

    // The change id the SNA asks for before its next incremental.
    let (s, cid) = h
        .call(
            Method::GET,
            "/api/v1/backups/changeid?vm_name=web%2001&disk_id=1",
            None,
            Caller::Sna,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{cid}");
    assert_eq!(
        cid,
        json!({"vm_name": "web 01", "disk_id": "1", "change_id": "52 3c-1/9", "backup_id": id,
            "message": "previous change id found"})
    );

    // Listing and filters.
    let (_, list) = h
        .get("/api/v1/backups?vm_name=web%2001&status=completed")
        .await;
    assert_eq!(list["backups"].as_array().unwrap().len(), 1);
    let (_, none) = h.get("/api/v1/backups?vm_name=other").await;
    assert_eq!(none["backups"], json!([]));

    // A restore export reads back exactly what was written.
    let (s, r) = h
        .post(
            "/api/v1/restores",
            &json!({"backup_id": id, "disk_id": 1, "ttl_seconds": 600}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let back = dir.path().join("back1.raw");
    nbdcopy(vec![
        r["nbd_uri"].as_str().unwrap().to_owned(),
        back.display().to_string(),
    ])
    .await;
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&src1).unwrap());
    let (_, restores) = h.get("/api/v1/restores").await;
    assert_eq!(restores["restores"].as_array().unwrap().len(), 1);
    // A restore is read-only.
    let uri = r["nbd_uri"].as_str().unwrap().to_owned();
    let src = src1.clone();
    let write = blocking(move || Command::new("nbdcopy").arg(src).arg(uri).output().unwrap()).await;
    assert!(!write.status.success());
    let rid = r["restore_id"].as_str().unwrap();
    let (s, _) = h
        .call(
            Method::DELETE,
            &format!("/api/v1/restores/{rid}"),
            None,
            Caller::Operator,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_error(
        &h.call(
            Method::DELETE,
            &format!("/api/v1/restores/{rid}"),
            None,
            Caller::Operator,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    let (s, metrics) = h.call(Method::GET, "/metrics", None, Caller::Remote).await;
    assert_eq!(s, StatusCode::OK);
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains("sendense_backups{status=\"completed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sendense_repository_free_bytes{repository=\"default\"}"),
        "{metrics}"
    );
    h.stop().await;
}

/// Changed blocks only: data and WRITE_ZEROES over parent data, into a grown disk.
const WRITE_CHANGES: &str = r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b"\xab" * 65536, 1 << 20)
h.zero(131072, 2 << 20)
h.pwrite(b"\xcd" * 65536, 4608 * 1024)
h.shutdown()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn incremental_holds_only_changed_clusters_and_its_chain_compares_equal() {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start(test_config(dir.path().join("data"))).await;
    let src = dir.path().join("src.raw");
    let mut data = make_raw(&src, (4 * MIB) as usize, 20);
    // Parent data under the zeroed range, so the zeroes must hide it.
    data[(2 * MIB) as usize..(2 * MIB + 131072) as usize].fill(0x11);
    std::fs::write(&src, &data).unwrap();
    let parent = completed_full(&h, "db", &src, 4 * MIB).await;
    let parent_id = parent["backup_id"].as_str().unwrap();

    // The disk grew by 1 MiB since, and a new disk (no parent image: a full image) was added.
    let req = json!({"vm_name": "db", "backup_type": "incremental",
        "disks": [disk(0, 2000, 5 * MIB), disk(1, 2001, MIB)]});
    let (s, inc) = h.post("/api/v1/backups", &req).await;
    assert_eq!(s, StatusCode::OK, "{inc}");
    assert_eq!(inc["parent_backup_id"], parent_id);
    let id = inc["backup_id"].as_str().unwrap().to_owned();
    let uri = inc["disk_results"][0]["nbd_uri"]
        .as_str()
        .unwrap()
        .to_owned();
    blocking(move || {
        run_ok(
            Command::new("/usr/bin/python3")
                .args(["-c", WRITE_CHANGES])
                .arg(uri),
        )
    })
    .await;
    // The new disk is left empty, but a client must have opened it to complete it.
    let uri1 = inc["disk_results"][1]["nbd_uri"]
        .as_str()
        .unwrap()
        .to_owned();
    blocking(move || run_ok(Command::new("nbdinfo").arg(uri1))).await;
    let (s, _) = h
        .call(
            Method::POST,
            &format!("/api/v1/backups/{id}/complete"),
            Some(r#"{"change_id":"c1"}"#),
            Caller::Sna,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let done = h.wait_status(&id, "completed").await;

    data.resize((5 * MIB) as usize, 0);
    data[MIB as usize..(MIB + 65536) as usize].fill(0xab);
    data[(2 * MIB) as usize..(2 * MIB + 131072) as usize].fill(0);
    data[4608 * 1024..4608 * 1024 + 65536].fill(0xcd);
    let expected = dir.path().join("expected.raw");
    std::fs::write(&expected, &data).unwrap();
    let image = std::path::PathBuf::from(done["disk_results"][0]["qcow2_path"].as_str().unwrap());
    qemu_img_check(&image);
    qemu_img_compare(&expected, &image);
    let info = |path: &std::path::Path| -> Value {
        let out = run_ok(
            Command::new("qemu-img")
                .args(["info", "--output=json"])
                .arg(path),
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert!(info(&image)["backing-filename"].is_string());
    assert_eq!(info(&image)["virtual-size"], 5 * MIB);
    let new_disk =
        std::path::PathBuf::from(done["disk_results"][1]["qcow2_path"].as_str().unwrap());
    qemu_img_check(&new_disk);
    assert!(
        info(&new_disk)["backing-filename"].is_null(),
        "{}",
        info(&new_disk)
    );

    // Only the changed clusters live in the incremental's own layer.
    let map = run_ok(
        Command::new("qemu-img")
            .args(["map", "--output=json", "-f", "qcow2"])
            .arg(&image),
    );
    let map: Vec<Value> = serde_json::from_slice(&map.stdout).unwrap();
    let own_data: Vec<(u64, u64)> = map
        .iter()
        .filter(|e| e["depth"] == 0 && e["data"] == true)
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        own_data,
        vec![(MIB, 65536), (4608 * 1024, 65536)],
        "{map:#?}"
    );
    let own_zero = map.iter().any(|e| {
        e["depth"] == 0
            && e["zero"] == true
            && e["start"].as_u64().unwrap() <= 2 * MIB
            && e["start"].as_u64().unwrap() + e["length"].as_u64().unwrap() >= 2 * MIB + 131072
    });
    assert!(
        own_zero,
        "zeroes over parent data are recorded in the incremental: {map:#?}"
    );

    // The chain, oldest first.
    let (s, chain) = h.get("/api/v1/backups/db/chain?disk_id=0").await;
    assert_eq!(s, StatusCode::OK, "{chain}");
    let ids: Vec<&str> = chain["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![parent_id, id.as_str()]);

    // A restore of the incremental reads through the chain.
    let (s, r) = h
        .post("/api/v1/restores", &json!({"backup_id": id, "disk_id": 0}))
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let back = dir.path().join("back.raw");
    nbdcopy(vec![
        r["nbd_uri"].as_str().unwrap().to_owned(),
        back.display().to_string(),
    ])
    .await;
    assert!(std::fs::read(&back).unwrap() == data);
    // The restored backup cannot be deleted while its restore is open; a parent never while a child exists.
    let rid = r["restore_id"].as_str().unwrap();
    assert_error(
        &h.call(
            Method::DELETE,
            &format!("/api/v1/backups/{id}"),
            None,
            Caller::Operator,
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    assert_error(
        &h.call(
            Method::DELETE,
            &format!("/api/v1/backups/{parent_id}"),
            None,
            Caller::Operator,
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    h.call(
        Method::DELETE,
        &format!("/api/v1/restores/{rid}"),
        None,
        Caller::Operator,
    )
    .await;
    let (s, _) = h
        .call(
            Method::DELETE,
            &format!("/api/v1/backups/{id}"),
            None,
            Caller::Operator,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(!image.exists());
    let (s, _) = h
        .call(
            Method::DELETE,
            &format!("/api/v1/backups/{parent_id}"),
            None,
            Caller::Operator,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_error(
        &h.get(&format!("/api/v1/backups/{parent_id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_error_status() {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start(test_config(dir.path().join("data"))).await;
    let bad = StatusCode::BAD_REQUEST;
    let post = |body: String| {
        let h = &h;
        async move {
            h.call(
                Method::POST,
                "/api/v1/backups",
                Some(&body),
                Caller::Operator,
            )
            .await
        }
    };

    // Authentication.
    let ok_body = full("vm", vec![disk(0, 2000, MIB)]).to_string();
    for caller in [Caller::Sna, Caller::Remote, Caller::WrongToken] {
        let r = h
            .call(Method::POST, "/api/v1/backups", Some(&ok_body), caller)
            .await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
        assert_error(
            &h.call(Method::GET, "/api/v1/backups", None, caller).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    }
    assert_error(
        &h.call(
            Method::GET,
            "/api/v1/backups/changeid?vm_name=x",
            None,
            Caller::Remote,
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let (s, health) = h.call(Method::GET, "/health", None, Caller::Remote).await;
    assert_eq!(
        (s, health["status"].clone()),
        (StatusCode::OK, json!("healthy"))
    );

    // 400s.
    assert_error(&post("{not json".into()).await, bad, "bad_request");
    // Over axum's body limit (2 MiB): 413 in the same shape.
    assert_error(
        &post("x".repeat(3 << 20)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    // No disks and no VM context: discovery has not run for this VM.
    assert_error(
        &post(r#"{"vm_name":"vm","backup_type":"full"}"#.into()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &post(r#"{"vm_name":"vm","backup_type":"weekly","disks":[]}"#.into()).await,
        bad,
        "bad_request",
    );
    assert_error(
        &post(full("vm", vec![]).to_string()).await,
        bad,
        "bad_request",
    );
    assert_error(
        &post(full("", vec![disk(0, 2000, MIB)]).to_string()).await,
        bad,
        "bad_request",
    );
    assert_error(
        &post(full("vm", vec![disk(0, 2000, 0)]).to_string()).await,
        bad,
        "bad_request",
    );
    assert_error(
        &post(full("vm", vec![disk(0, 2000, MIB + 100)]).to_string()).await,
        bad,
        "bad_request",
    );
    assert_error(
        &post(full("vm", vec![disk(0, 2000, MIB), disk(0, 2001, MIB)]).to_string()).await,
        bad,
        "bad_request",
    );
    assert_error(
        &post(full("vm", vec![disk(0, 2000, MIB), disk(1, 2000, MIB)]).to_string()).await,
        bad,
        "bad_request",
    );
    let mut listed_tags = full("vm", vec![disk(0, 2000, MIB)]);
    listed_tags["tags"] = json!(["a"]);
    assert_error(&post(listed_tags.to_string()).await, bad, "bad_request");
    let inc = json!({"vm_name": "vm", "backup_type": "incremental", "disks": [disk(0, 2000, MIB)]});
    assert_error(&post(inc.to_string()).await, bad, "bad_request");
    assert_error(
        &h.get("/api/v1/backups?status=sideways").await,
        bad,
        "bad_request",
    );
    assert_error(
        &h.post(
            "/api/v1/restores",
            &json!({"backup_id": "x", "disk_id": 0, "ttl_seconds": 0}),
        )
        .await,
        bad,
        "bad_request",
    );
    assert_error(
        &h.post(
            "/api/v1/repositories",
            &json!({"id": "a/b", "path": "/tmp"}),
        )
        .await,
        bad,
        "bad_request",
    );
    assert_error(
        &h.post(
            "/api/v1/repositories",
            &json!({"id": "r", "path": "relative"}),
        )
        .await,
        bad,
        "bad_request",
    );

    // 404s.
    let mut unknown_repo = full("vm", vec![disk(0, 2000, MIB)]);
    unknown_repo["repository_id"] = json!("nope");
    assert_error(
        &h.post("/api/v1/backups", &unknown_repo).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &h.get("/api/v1/backups/nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &h.call(
            Method::POST,
            "/api/v1/backups/nope/complete",
            Some("{}"),
            Caller::Sna,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &h.call(
            Method::POST,
            "/api/v1/telemetry/backup/nope",
            Some("{}"),
            Caller::Sna,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // Nothing to base on: 200 with an empty change id (the client then copies everything).
    let (s, none) = h
        .call(
            Method::GET,
            "/api/v1/backups/changeid?vm_name=vm&disk_id=0",
            None,
            Caller::Sna,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{none}");
    assert_eq!(none["change_id"], "");
    assert_eq!(none["disk_id"], "0");
    assert_error(
        &h.get("/api/v1/backups/vm/chain?disk_id=x").await,
        bad,
        "bad_request",
    );
    assert_error(
        &h.get("/api/v1/backups/stats?backup_type=weekly").await,
        bad,
        "bad_request",
    );
    assert_error(
        &h.post(
            "/api/v1/restores",
            &json!({"backup_id": "nope", "disk_id": 0}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &h.call(
            Method::POST,
            "/api/v1/backups/nope/cancel",
            None,
            Caller::Operator,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &h.call(
            Method::DELETE,
            "/api/v1/backups/nope",
            None,
            Caller::Operator,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &h.get("/api/v1/nothing-here").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let put = h
        .call(Method::PUT, "/api/v1/backups", Some("{}"), Caller::Operator)
        .await;
    assert_error(&put, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    // axum's own rejection (a path segment that is not UTF-8) in the same shape.
    assert_error(&h.get("/api/v1/backups/%FF").await, bad, "bad_request");
    // A body is an object: serde alone would read `[]` as a struct of defaults.
    let r = h
        .call(
            Method::POST,
            "/api/v1/backups/x/complete",
            Some("[]"),
            Caller::Sna,
        )
        .await;
    assert_error(&r, bad, "bad_request");
    assert_eq!(r.1["error"], "the body must be a JSON object");
    // The parser's words go to `details`, the message stays short.
    let r = post("{not json".into()).await;
    assert_eq!(r.1["error"], "invalid JSON body", "{}", r.1);
    assert!(!r.1["details"].as_str().unwrap().is_empty(), "{}", r.1);

    // A second repository works like the default one.
    let repo_path = dir.path().join("repo2");
    let (s, repo) = h
        .post(
            "/api/v1/repositories",
            &json!({"id": "r2", "name": "second", "path": repo_path}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{repo}");
    assert!(repo["free_bytes"].as_u64().unwrap() > 0);
    assert_error(
        &h.post(
            "/api/v1/repositories",
            &json!({"id": "r2", "path": repo_path}),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    let (_, repos) = h.get("/api/v1/repositories").await;
    assert_eq!(repos["repositories"].as_array().unwrap().len(), 2);

    // 409s around a backup that is ready.
    let mut in_r2 = full("vm", vec![disk(0, 2000, MIB)]);
    in_r2["repository_id"] = json!("r2");
    let (s, b) = h.post("/api/v1/backups", &in_r2).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let id = b["backup_id"].as_str().unwrap().to_owned();
    let image = std::path::PathBuf::from(b["disk_results"][0]["qcow2_path"].as_str().unwrap());
    assert!(image.starts_with(&repo_path) && image.exists());
    assert_error(
        &h.post("/api/v1/backups", &full("vm", vec![disk(0, 2000, MIB)]))
            .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    assert_error(
        &h.call(
            Method::DELETE,
            &format!("/api/v1/backups/{id}"),
            None,
            Caller::Operator,
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    assert_error(
        &h.post("/api/v1/restores", &json!({"backup_id": id, "disk_id": 0}))
            .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    assert_error(
        &h.call(
            Method::POST,
            &format!("/api/v1/backups/{id}/complete"),
            Some(r#"{"disk_id":7}"#),
            Caller::Sna,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // Cancel closes the export and removes the images; then completing is a conflict.
    let uri = b["disk_results"][0]["nbd_uri"].as_str().unwrap().to_owned();
    let (s, c) = h
        .call(
            Method::POST,
            &format!("/api/v1/backups/{id}/cancel"),
            None,
            Caller::Operator,
        )
        .await;
    assert_eq!(
        (s, c["status"].clone()),
        (StatusCode::OK, json!("cancelled")),
        "{c}"
    );
    assert!(!image.exists());
    let probe = blocking(move || Command::new("nbdinfo").arg(uri).output().unwrap()).await;
    assert!(!probe.status.success(), "cancelled export still served");
    assert_error(
        &h.call(
            Method::POST,
            &format!("/api/v1/backups/{id}/complete"),
            None,
            Caller::Sna,
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    // Cancelled: the VM may be backed up again, and the record can be deleted.
    let (s, again) = h
        .post("/api/v1/backups", &full("vm", vec![disk(0, 2000, MIB)]))
        .await;
    assert_eq!(s, StatusCode::OK, "{again}");
    let (s, _) = h
        .call(
            Method::DELETE,
            &format!("/api/v1/backups/{id}"),
            None,
            Caller::Operator,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_keeps_the_catalog_and_fails_unfinished_backups() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let src = dir.path().join("src.raw");
    make_raw(&src, (2 * MIB) as usize, 30);

    let h = TestHub::start(test_config(data.clone())).await;
    let token = h.token.clone();
    let done = completed_full(&h, "app", &src, 2 * MIB).await;
    let done_id = done["backup_id"].as_str().unwrap().to_owned();
    let (s, open) = h
        .post("/api/v1/backups", &full("other", vec![disk(0, 2000, MIB)]))
        .await;
    assert_eq!(s, StatusCode::OK);
    let open_id = open["backup_id"].as_str().unwrap().to_owned();
    h.stop().await;

    // What a crash between creating a backup's images and writing its row leaves: a directory
    // whose manifest says `creating`, that the catalog does not know. Beside it, a directory not
    // named like a backup, which is not ours to judge.
    let vm_dir = data.join("repository").join("other");
    let orphan = vm_dir.join("0b7ad0c2-35a1-4c41-9a43-1d1e6f0c7a11");
    let not_a_backup = vm_dir.join("notes");
    for dir in [&orphan, &not_a_backup] {
        std::fs::create_dir_all(dir).unwrap();
        qemu_img_create(&dir.join("disk0.qcow2"), MIB);
    }
    let creating = ::hub::repo::manifest::Manifest::creating(
        "0b7ad0c2-35a1-4c41-9a43-1d1e6f0c7a11",
        "other",
        "default",
        ::hub::catalog::BackupType::Full,
        None,
        time::OffsetDateTime::now_utc() - time::Duration::seconds(5),
    );
    ::hub::repo::manifest::write(&orphan, &creating).unwrap();
    let open_image =
        std::path::PathBuf::from(open["disk_results"][0]["qcow2_path"].as_str().unwrap());

    let h = TestHub::start(test_config(data)).await;
    assert!(!orphan.exists(), "the orphaned backup directory is removed");
    assert!(not_a_backup.join("disk0.qcow2").exists());
    assert!(open_image.exists(), "a failed backup keeps its image");
    assert_eq!(h.token, token, "the token file is kept");
    let (_, kept) = h.get(&format!("/api/v1/backups/{done_id}")).await;
    assert_eq!(kept["status"], "completed");
    assert_eq!(kept["disk_results"][0]["change_id"], "c0");
    let (_, failed) = h.get(&format!("/api/v1/backups/{open_id}")).await;
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("hub stopped"),
        "{failed}"
    );
    let image = std::path::PathBuf::from(kept["disk_results"][0]["qcow2_path"].as_str().unwrap());
    qemu_img_check(&image);
    qemu_img_compare(&src, &image);
    // The chain continues from the completed backup.
    let inc =
        json!({"vm_name": "app", "backup_type": "incremental", "disks": [disk(0, 2000, 2 * MIB)]});
    let (s, inc) = h.post("/api/v1/backups", &inc).await;
    assert_eq!(s, StatusCode::OK, "{inc}");
    assert_eq!(inc["parent_backup_id"], done_id.as_str());

    // A restore expires after its ttl: its export goes and it leaves the list.
    let (s, r) = h
        .post(
            "/api/v1/restores",
            &json!({"backup_id": done_id, "disk_id": 0, "ttl_seconds": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let mut left = Value::Null;
    for _ in 0..600 {
        left = h.get("/api/v1/restores").await.1;
        if left["restores"] == json!([]) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(left["restores"], json!([]), "{left}");
    let uri = r["nbd_uri"].as_str().unwrap().to_owned();
    let probe = blocking(move || Command::new("nbdinfo").arg(uri).output().unwrap()).await;
    assert!(!probe.status.success(), "expired restore still served");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_backup_goes_stale() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path().join("data"));
    config.stale_after = std::time::Duration::from_secs(1);
    let h = TestHub::start(config).await;
    let (s, b) = h
        .post("/api/v1/backups", &full("idle", vec![disk(0, 2000, MIB)]))
        .await;
    assert_eq!(s, StatusCode::OK);
    let id = b["backup_id"].as_str().unwrap();
    let failed = h.wait_status(id, "failed").await;
    assert!(
        failed["error"].as_str().unwrap().starts_with("stale"),
        "{failed}"
    );
    let uri = b["disk_results"][0]["nbd_uri"].as_str().unwrap().to_owned();
    let probe = blocking(move || Command::new("nbdinfo").arg(uri).output().unwrap()).await;
    assert!(!probe.status.success(), "stale export still served");
    h.stop().await;
}

/// Like the SNA: two connections, `complete` sent while they are still open, then one closes
/// with NBD_CMD_DISC and the other is just dropped.
const SNA_LIKE: &str = r#"
import nbd, os, sys
a = nbd.NBD(); a.connect_uri(sys.argv[1])
b = nbd.NBD(); b.connect_uri(sys.argv[1])
a.pwrite(b"\x5a" * 1048576, 0)
b.pwrite(b"\xa5" * 1048576, 1048576)
print("written", flush=True)
sys.stdin.readline()
a.shutdown()
os._exit(0)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn complete_before_disconnect_drains_open_connections() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path().join("data"));
    // Long enough that only the client closing its connections ends the drain here.
    config.drain_grace = std::time::Duration::from_secs(120);
    let h = TestHub::start(config).await;
    let (s, b) = h
        .post(
            "/api/v1/backups",
            &full("sna", vec![disk(4, 2003, 2 * MIB)]),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let id = b["backup_id"].as_str().unwrap().to_owned();
    let uri = b["disk_results"][0]["nbd_uri"].as_str().unwrap().to_owned();

    let mut py = Command::new("/usr/bin/python3")
        .args(["-c", SNA_LIKE])
        .arg(&uri)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(py.stdout.take().unwrap());
    let line = blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        line
    })
    .await;
    assert_eq!(line.trim(), "written");

    let complete = format!("/api/v1/backups/{id}/complete");
    let (s, c) = h
        .call(
            Method::POST,
            &complete,
            Some(r#"{"change_id":"sna-1"}"#),
            Caller::Sna,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(c["status"], "finalizing");
    assert_eq!(c["disk_results"][0]["status"], "completed");
    // While draining, the export takes no new connections.
    let probe_uri = uri.clone();
    let probe = blocking(move || Command::new("nbdinfo").arg(probe_uri).output().unwrap()).await;
    assert!(
        !probe.status.success(),
        "a finalising export accepted a connection"
    );
    let (_, still) = h.get(&format!("/api/v1/backups/{id}")).await;
    assert_eq!(still["status"], "finalizing");

    py.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let status = blocking(move || py.wait().unwrap()).await;
    assert!(status.success());
    let done = h.wait_status(&id, "completed").await;
    assert_eq!(done["disk_results"][0]["change_id"], "sna-1");
    assert_eq!(done["disk_results"][0]["bytes_written"], 2 * MIB);

    let mut expected = vec![0x5au8; MIB as usize];
    expected.extend(std::iter::repeat_n(0xa5u8, MIB as usize));
    let raw = dir.path().join("expected.raw");
    std::fs::write(&raw, &expected).unwrap();
    let image = std::path::PathBuf::from(done["disk_results"][0]["qcow2_path"].as_str().unwrap());
    assert!(image.ends_with("disk4.qcow2"));
    qemu_img_check(&image);
    qemu_img_compare(&raw, &image);
    h.stop().await;
}

/// The change id follows the VM's active backup (the client's disk_id=0 first query included), and
/// a failure the client reports in telemetry ends the backup `failed` with its message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn change_id_follows_the_active_backup_and_client_failures_end_it() {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start(test_config(dir.path().join("data"))).await;
    let src = dir.path().join("src.raw");
    make_raw(&src, MIB as usize, 3);
    let two_disks = |backup_type: &str| {
        json!({"vm_name": "db", "backup_type": backup_type,
            "disks": [disk(0, 2000, MIB), disk(1, 2001, MIB)]})
    };
    let change_id = |disk_id: u32| {
        let h = &h;
        async move {
            let (s, body) = h
                .call(
                    Method::GET,
                    &format!("/api/v1/backups/changeid?vm_name=db&disk_id={disk_id}"),
                    None,
                    Caller::Sna,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{body}");
            // The client decodes a map of strings.
            for (k, v) in body.as_object().unwrap() {
                assert!(v.is_string(), "{k} is not a string: {body}");
            }
            body
        }
    };
    let complete = |id: String, disk_id: u32, cid: &'static str| {
        let h = &h;
        async move {
            let body = json!({"disk_id": disk_id, "change_id": cid}).to_string();
            let (s, b) = h
                .call(
                    Method::POST,
                    &format!("/api/v1/backups/{id}/complete"),
                    Some(&body),
                    Caller::Sna,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{b}");
        }
    };

    let (s, full) = h.post("/api/v1/backups", &two_disks("full")).await;
    assert_eq!(s, StatusCode::OK, "{full}");
    let full_id = full["backup_id"].as_str().unwrap().to_owned();
    assert!(full_id.starts_with("backup-"), "{full_id}");
    for i in 0..2 {
        let uri = full["disk_results"][i]["nbd_uri"].as_str().unwrap();
        nbdcopy(vec![src.display().to_string(), uri.to_owned()]).await;
    }
    // A full backup copies everything, whatever came before.
    assert_eq!(change_id(0).await["change_id"], "");
    complete(full_id.clone(), 0, "c0").await;
    complete(full_id.clone(), 1, "c1").await;
    h.wait_status(&full_id, "completed").await;
    // Nothing active: the newest completed backup's change id.
    let answer = change_id(1).await;
    assert_eq!(
        (answer["change_id"].as_str(), answer["backup_id"].as_str()),
        (Some("c1"), Some(full_id.as_str()))
    );

    // An incremental: disk_id=0 is the first disk not completed yet, in target order.
    let (s, inc) = h.post("/api/v1/backups", &two_disks("incremental")).await;
    assert_eq!(s, StatusCode::OK, "{inc}");
    let inc_id = inc["backup_id"].as_str().unwrap().to_owned();
    let first = change_id(0).await;
    assert_eq!(
        (first["disk_id"].as_str(), first["change_id"].as_str()),
        (Some("0"), Some("c0"))
    );
    assert_eq!(first["backup_id"], full_id.as_str());
    // A disk is completed only once a client wrote it (here the whole source, unchanged).
    let inc_disk0 = inc["disk_results"][0]["nbd_uri"].as_str().unwrap();
    nbdcopy(vec![src.display().to_string(), inc_disk0.to_owned()]).await;
    complete(inc_id.clone(), 0, "c0b").await;
    let before_connect = change_id(0).await;
    assert_eq!(
        (
            before_connect["disk_id"].as_str(),
            before_connect["change_id"].as_str()
        ),
        (Some("1"), Some("c1"))
    );
    assert_eq!(change_id(1).await["change_id"], "c1");

    // Progress is stored with its time; a reported failure ends the backup.
    let telemetry = format!("/api/v1/telemetry/backup/{inc_id}");
    let progress = json!({"job_id": inc_id, "status": "running", "current_phase": "transferring",
        "bytes_transferred": 1024, "total_bytes": 2 * MIB, "progress_percent": 1.5});
    let (s, ack) = h
        .call(
            Method::POST,
            &telemetry,
            Some(&progress.to_string()),
            Caller::Sna,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{ack}");
    let stored = h.hub.backup(&inc_id).unwrap();
    assert!(stored.last_telemetry_at.is_some());
    assert_eq!(stored.telemetry.unwrap()["current_phase"], "transferring");
    let export = inc["disk_results"][1]["nbd_export_name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(h.hub.nbd.export_stats(&export).is_some());
    let failed = json!({"job_id": inc_id, "status": "failed",
        "error": {"message": "snapshot removed by vCenter"}});
    let (s, ack) = h
        .call(
            Method::POST,
            &telemetry,
            Some(&failed.to_string()),
            Caller::Sna,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{ack}");
    assert_eq!(ack["backup_status"], "failed");
    let (_, b) = h.get(&format!("/api/v1/backups/{inc_id}")).await;
    assert_eq!(b["status"], "failed");
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("snapshot removed by vCenter"),
        "{b}"
    );
    assert!(h.hub.nbd.export_stats(&export).is_none(), "export removed");
    // Nothing active again: back to the newest completed backup.
    assert_eq!(change_id(0).await["change_id"], "c0");

    // A full after a completed full is told to copy everything; an error given as a string ends it.
    let (s, again) = h.post("/api/v1/backups", &two_disks("full")).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    let again_id = again["backup_id"].as_str().unwrap().to_owned();
    let answer = change_id(0).await;
    assert_eq!(
        (answer["change_id"].as_str(), answer["backup_id"].as_str()),
        (Some(""), Some(again_id.as_str()))
    );
    let (s, _) = h
        .call(
            Method::POST,
            &format!("/api/v1/telemetry/backup/{again_id}"),
            Some(r#"{"error": "vanished"}"#),
            Caller::Sna,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let b = h.wait_status(&again_id, "failed").await;
    assert!(b["error"].as_str().unwrap().contains("vanished"), "{b}");
    // A telemetry body that is not an object is refused and changes nothing.
    let (s, _) = h
        .call(
            Method::POST,
            &format!("/api/v1/telemetry/backup/{full_id}"),
            Some(r#"["failed"]"#),
            Caller::Sna,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(h.hub.backup(&full_id).unwrap().status.as_str(), "completed");
    h.stop().await;
}

/// What the Sendense GUI reads: the backup object's names, progress from the client's telemetry
/// while a backup runs, `{backups, total}`, the stats and the chain in the old hub's shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gui_reads_views_list_stats_and_chain() {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start(test_config(dir.path().join("data"))).await;

    // No backup yet: an empty chain, zero stats.
    let (s, chain) = h.get("/api/v1/backups/gui%20vm/chain").await;
    assert_eq!(s, StatusCode::OK, "{chain}");
    assert_eq!(chain["backups"], json!([]));
    assert_eq!(chain["backup_count"], 0);
    assert_eq!(chain["vm_name"], "gui vm");
    assert_eq!(chain["full_backup_id"], Value::Null);
    let (s, stats) = h.get("/api/v1/backups/stats").await;
    assert_eq!(s, StatusCode::OK, "{stats}");
    assert_eq!(
        (stats["total"].clone(), stats["backup_count"].clone()),
        (json!(0), json!(0))
    );

    // A completed full, then an incremental on it that the client reports on.
    let src = dir.path().join("src.raw");
    make_raw(&src, MIB as usize, 3);
    let full_backup = completed_full(&h, "gui vm", &src, MIB).await;
    let full_id = full_backup["backup_id"].as_str().unwrap().to_owned();
    assert_eq!(full_backup["type"], "full");
    assert_eq!(full_backup["current_phase"], "completed");
    assert_eq!(full_backup["change_id"], "c0");
    assert_eq!(full_backup["error_message"], Value::Null);
    // The client reported no figure: what the NBD server received.
    assert!(full_backup["bytes_written"].as_u64().unwrap() > 0);
    assert_eq!(
        full_backup["bytes_transferred"],
        full_backup["bytes_written"]
    );

    let inc = json!({"vm_name": "gui vm", "backup_type": "incremental", "policy_id": "p-7",
        "disks": [disk(0, 2000, MIB)]});
    let (s, inc) = h.post("/api/v1/backups", &inc).await;
    assert_eq!(s, StatusCode::OK, "{inc}");
    let inc_id = inc["backup_id"].as_str().unwrap().to_owned();
    assert_eq!(
        (
            inc["type"].clone(),
            inc["policy_id"].clone(),
            inc["vm_context_id"].clone()
        ),
        (json!("incremental"), json!("p-7"), Value::Null)
    );
    assert_eq!(inc["last_telemetry_at"], Value::Null);
    let telemetry = json!({"job_id": inc_id, "status": "running", "current_phase": "transferring",
        "bytes_transferred": 4096, "transfer_speed_bps": 1000, "progress_percent": 42.5,
        "timestamp": "2026-11-28T05:00:00+01:00"});
    let (s, _) = h
        .call(
            Method::POST,
            &format!("/api/v1/telemetry/backup/{inc_id}"),
            Some(&telemetry.to_string()),
            Caller::Sna,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, running) = h.get(&format!("/api/v1/backups/{inc_id}")).await;
    assert_eq!(running["current_phase"], "transferring", "{running}");
    assert_eq!(running["progress_percent"], 42.5);
    assert_eq!(running["bytes_transferred"], 4096);
    assert_eq!(running["transfer_speed_bps"], 1000);
    // The time the hub received it, not the client's clock.
    let received = running["last_telemetry_at"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(received, &time::format_description::well_known::Rfc3339)
            .is_ok_and(|t| t.year() == time::OffsetDateTime::now_utc().year()),
        "{running}"
    );
    assert_ne!(received, "2026-11-28T04:00:00.000000Z");

    // Cancelled: the reason as error_message, on the backup and its disks.
    let (s, cancelled) = h
        .call(
            Method::POST,
            &format!("/api/v1/backups/{inc_id}/cancel"),
            None,
            Caller::Operator,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["error_message"], "cancelled by request");
    assert_eq!(cancelled["current_phase"], "cancelled");
    assert_eq!(
        cancelled["disk_results"][0]["error_message"],
        "cancelled by request"
    );
    assert!(
        full_backup["disk_results"][0]
            .get("error_message")
            .is_none()
    );

    // The list with its total, filtered by typed values.
    let (_, list) = h.get("/api/v1/backups?vm_name=gui%20vm").await;
    assert_eq!(list["total"], 2, "{list}");
    let (_, list) = h
        .get("/api/v1/backups?backup_type=incremental&status=cancelled")
        .await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["backups"][0]["backup_id"], inc_id.as_str());

    // Stats: counts by status and type, bytes of the images kept.
    let (_, stats) = h
        .get("/api/v1/backups/stats?vm_name=gui%20vm&repository_id=default")
        .await;
    let image_size = full_backup["disk_results"][0]["image_size_bytes"]
        .as_u64()
        .unwrap();
    assert_eq!(stats["total"], 2, "{stats}");
    assert_eq!(stats["backup_count"], 1);
    assert_eq!(stats["by_status"]["completed"], 1);
    assert_eq!(stats["by_status"]["cancelled"], 1);
    assert_eq!(stats["by_status"]["running"], 0);
    assert_eq!(
        (
            stats["by_type"]["full"].clone(),
            stats["by_type"]["incremental"].clone()
        ),
        (json!(1), json!(1))
    );
    assert_eq!(stats["total_size_bytes"], image_size);
    assert_eq!(stats["bytes_stored"], image_size);
    assert_eq!(stats["last_backup_at"], full_backup["completed_at"]);

    // The chain in the old shape.
    let (s, chain) = h.get("/api/v1/backups/gui%20vm/chain?disk_id=0").await;
    assert_eq!(s, StatusCode::OK, "{chain}");
    assert_eq!(chain["chain_id"], "gui vm-disk0-chain");
    assert_eq!(chain["disk_id"], 0);
    assert_eq!(chain["repository_id"], "default");
    assert_eq!(chain["full_backup_id"], full_id.as_str());
    assert_eq!(chain["backup_count"], 1);
    assert_eq!(chain["total_size_bytes"], image_size);
    assert_eq!(chain["backups"][0]["backup_id"], full_id.as_str());
    let (_, other_disk) = h.get("/api/v1/backups/gui%20vm/chain?disk_id=5").await;
    assert_eq!(other_disk["backups"], json!([]));
    h.stop().await;
}

/// `/health` checks that the catalog answers and every repository takes a new file; a repository
/// that does not is a 503 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_fails_when_a_repository_is_not_writable() {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start(test_config(dir.path().join("data"))).await;
    let repo = dir.path().join("second");
    let (s, r) = h
        .post(
            "/api/v1/repositories",
            &json!({"id": "second", "path": repo}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");

    let (s, health) = h.call(Method::GET, "/health", None, Caller::Remote).await;
    assert_eq!(s, StatusCode::OK, "{health}");
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["service"], "sendense-hub");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(health["database"], "ok");
    assert_eq!(health["repositories"].as_array().unwrap().len(), 2);
    assert!(
        health["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["writable"] == true)
    );
    // The probe leaves nothing behind (the owner's marker is the repository's own).
    let left = std::fs::read_dir(&repo)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name() != ::hub::repo::ownership::MARKER)
        .count();
    assert_eq!(left, 0);

    // Read-only, then gone. Root (CAP_DAC_OVERRIDE) writes into a read-only directory anyway:
    // then the read-only case shows nothing and is skipped.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&repo, std::fs::Permissions::from_mode(0o555)).unwrap();
        let root_writes = std::fs::write(repo.join("probe"), b"x").is_ok();
        let resp = h.call(Method::GET, "/health", None, Caller::Remote).await;
        let _ = std::fs::remove_file(repo.join("probe"));
        std::fs::set_permissions(&repo, std::fs::Permissions::from_mode(0o755)).unwrap();
        if root_writes {
            eprintln!(
                "read-only repository case skipped: this user writes into read-only directories (root)"
            );
        } else {
            assert_error(&resp, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
            assert!(
                resp.1["error"].as_str().unwrap().contains("second"),
                "{}",
                resp.1
            );
        }
    }
    std::fs::remove_dir_all(&repo).unwrap();
    let resp = h.call(Method::GET, "/health", None, Caller::Remote).await;
    assert_error(&resp, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    let body = &resp.1;
    assert_eq!(body["status"], "unhealthy", "{body}");
    assert_eq!(body["database"], "ok");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("repository second"),
        "{body}"
    );
    let second = &body["repositories"][1];
    assert_eq!(
        (second["id"].clone(), second["writable"].clone()),
        (json!("second"), json!(false))
    );
    assert_eq!(body["repositories"][0]["writable"], true);
    h.stop().await;
}

/// The OpenAPI document is served without a token, and every operation it lists reaches a handler
/// (neither the 404 nor the 405 fallback answers it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openapi_document_is_served_and_every_operation_is_routed() {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start(test_config(dir.path().join("data"))).await;
    let (s, doc) = h
        .call(Method::GET, "/api/v1/openapi.json", None, Caller::Remote)
        .await;
    assert_eq!(s, StatusCode::OK, "{doc}");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let uri = path
            .replace("{id}", "no-such-thing")
            .replace("{vm_name}", "no-such-vm")
            .replace("{context_id}", "no-such-context")
            .replace("{disk_id}", "0");
        assert!(!uri.contains('{'), "{uri}");
        for (method, _) in item.as_object().unwrap() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let (status, body) = h.call(method.clone(), &uri, None, Caller::Operator).await;
            operations += 1;
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {uri}: {body}"
            );
            assert!(
                !(status == StatusCode::NOT_FOUND && body["error"] == "no such route"),
                "{method} {uri}: {body}"
            );
        }
    }
    assert!(operations >= 31, "{operations}");
    h.stop().await;
}
