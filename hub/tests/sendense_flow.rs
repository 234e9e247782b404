//! The Sendense flow end to end, through the hub's API alone, against a stand-in SNA
//! (`sna_standin.py`: the SNA's discover and backup/start routes, and a copy done the way the
//! Sendense client does it with libnbd). Credential → discovery → full backup of a two-disk VM →
//! incremental after changing known extents → a full after a full; then an SNA that refuses, one
//! that does not answer, and a client that reports a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use axum::http::StatusCode;
use common::hub::*;
use common::standin::StandIn;
use common::*;
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;
const PASSWORD: &str = "Vc-pa55-7d1e-in-clear?";
const VM: &str = "pg-01";

fn disk(id: &str, label: &str, capacity: u64) -> Value {
    json!({"id": id, "label": label, "path": format!("[ds1] {VM}/{label}.vmdk"),
        "vmdk_path": format!("[ds1] {VM}/{label}.vmdk"), "size_gb": 0, "capacity_bytes": capacity,
        "datastore": "ds1", "provisioning_type": "thin", "unit_number": 0})
}

/// Discovery of `VM` only, with contexts.
async fn discover(h: &TestHub, credential_id: i64) -> Value {
    let (s, d) = h
        .post(
            "/api/v1/discovery/discover-vms",
            &json!({"credential_id": credential_id, "selected_vms": [VM], "create_context": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    d
}

/// (disk_id, VMware key, capacity) of each disk of `GET /api/v1/vm-contexts/{vm}`.
fn context_disks(ctx: &Value) -> Vec<(u64, u64, u64)> {
    ctx["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["disk_id"].as_u64().unwrap(),
                d["vmware_disk_key"].as_u64().unwrap(),
                d["capacity_bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Overwrite `extents` of `path` with fresh random bytes, or zeros.
fn change(path: &Path, extents: &[(u64, u64, bool)], seed: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    for (i, &(offset, len, zero)) in extents.iter().enumerate() {
        let mut data = vec![0u8; len as usize];
        if !zero {
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64 + 1);
            for b in &mut data {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8 | 1;
            }
        }
        file.write_all_at(&data, offset).unwrap();
    }
}

/// The guest ranges the image itself (depth 0) maps, data or zero clusters, merged.
fn top_layer_ranges(image: &Path) -> Vec<(u64, u64)> {
    let out = run_ok(
        Command::new("qemu-img")
            .args(["map", "--output=json", "-f", "qcow2"])
            .arg(image),
    );
    let map: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for e in map.iter().filter(|e| e["depth"] == 0) {
        let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        match ranges.last_mut() {
            Some(last) if last.0 + last.1 == start => last.1 += len,
            _ => ranges.push((start, len)),
        }
    }
    ranges
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sendense_flow_against_a_stand_in_sna() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (cap0, cap1) = (40 * MIB + 1536, 8 * MIB);
    let (src0, src1) = (
        dir.path().join("disk2000.raw"),
        dir.path().join("disk2001.raw"),
    );
    make_raw(&src0, cap0 as usize, 20);
    make_raw(&src1, cap1 as usize, 21);

    let inventory = json!({
        "vcenter": {"host": "vc.example", "datacenter": "DC1"},
        "vms": [
            {"id": "vm-101", "name": VM, "path": format!("/DC1/vm/{VM}"), "datacenter": "DC1",
             "power_state": "poweredOn", "guest_os": "ubuntu64Guest", "memory_mb": 4096, "num_cpu": 2,
             "disks": [disk("disk-2000", "Hard disk 1", cap0), disk("disk-2001", "Hard disk 2", cap1)],
             "networks": [{"label": "Network adapter 1", "network_name": "VM Network"}]},
            {"id": "vm-102", "name": "not-selected", "path": "/DC1/vm/not-selected",
             "disks": [disk("disk-2000", "Hard disk 1", MIB)], "networks": []}
        ]
    });
    let mut sna = StandIn::start(
        dir.path(),
        json!({
            "hub_url": "", "password": PASSWORD, "inventory": inventory,
            "sources": {"2000": src0, "2001": src1},
            "changed": {}, "expect_change_id": {},
            "new_change_ids": {"2000": "52 3c 9a-full/2000", "2001": "52 3c 9a-full/2001"},
            "mode": "ok", "hang_secs": 4,
            "log": dir.path().join("sna-log.jsonl"), "errors": dir.path().join("sna-errors.jsonl"),
        }),
    );
    let mut config = test_config(data.clone());
    config.sna_url = format!("http://127.0.0.1:{}", StandIn::port(dir.path()));
    config.sna_timeout = Duration::from_secs(2);
    let h = TestHub::start(config).await;
    sna.set("hub_url", json!(h.serve_api().await));

    // A credential.
    let (s, c) = h
        .post(
            "/api/v1/vmware-credentials",
            &json!({"credential_name": "vc", "vcenter_host": "vc.example", "username":
                "administrator@vsphere.local", "password": PASSWORD, "datacenter": "DC1",
                "is_default": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    let credential_id = c["credential"]["id"].as_i64().unwrap();

    // No backup before discovery.
    let full = json!({"vm_name": VM, "backup_type": "full", "repository_id": "default",
        "policy_id": "gold", "tags": {"site": "a"}});
    let (s, b) = h.post("/api/v1/backups", &full).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");

    // Discovery through the SNA makes a context of the selected VM only.
    let d = discover(&h, credential_id).await;
    assert_eq!(d["discovery_count"], 2);
    assert_eq!(d["discovered_vms"][0]["name"], VM);
    assert_eq!(d["discovered_vms"][0]["existing"], false);
    assert!(d["discovered_vms"][0]["context_id"].is_string(), "{d}");
    assert!(d["discovered_vms"][1]["context_id"].is_null(), "{d}");
    let (_, list) = h.get("/api/v1/vm-contexts").await;
    assert_eq!(list["count"], 1, "{list}");
    let (s, ctx) = h.get(&format!("/api/v1/vm-contexts/{VM}")).await;
    assert_eq!(s, StatusCode::OK, "{ctx}");
    assert_eq!(ctx["context"]["vm_path"], format!("/DC1/vm/{VM}"));
    assert_eq!(ctx["context"]["credential_id"], credential_id);
    let disks = context_disks(&ctx);
    assert_eq!(disks, vec![(0, 2000, cap0), (1, 2001, cap1)]);
    let context_id = ctx["context"]["context_id"].as_str().unwrap().to_owned();
    // The context uses the credential: it cannot go.
    let (s, _) = h
        .call(
            axum::http::Method::DELETE,
            &format!("/api/v1/vmware-credentials/{credential_id}"),
            None,
            Caller::Operator,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (_, by_id) = h
        .get(&format!("/api/v1/vm-contexts/{context_id}/disks"))
        .await;
    assert_eq!(by_id["count"], 2, "{by_id}");
    let (_, by_id) = h
        .get(&format!("/api/v1/vm-contexts/by-id/{context_id}"))
        .await;
    assert_eq!(by_id["context"]["vm_name"], VM, "{by_id}");

    // Full: the hub asks the SNA to start it; the stand-in client copies both disks.
    let (s, b) = h.post("/api/v1/backups", &full).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let full_id = b["backup_id"].as_str().unwrap().to_owned();
    assert!(full_id.starts_with("backup-"), "{full_id}");
    let done = h.wait_status(&full_id, "completed").await;
    sna.assert_no_errors();
    let start = sna.last_start();
    assert_eq!(start["job_id"], full_id.as_str());
    assert_eq!(start["vm_name"], VM);
    assert_eq!(start["vm_path"], format!("/DC1/vm/{VM}"));
    assert_eq!(start["vcenter_host"], "vc.example");
    assert_eq!(start["vcenter_user"], "administrator@vsphere.local");
    assert_eq!(start["password_ok"], true);
    assert_eq!(start["nbd_host"], "127.0.0.1");
    assert_eq!(start["nbd_targets"], done["nbd_targets_string"]);
    assert_eq!(
        (&start["backup_type"], &start["previous_change_id"]),
        (&json!("full"), &json!(""))
    );
    let record = h.hub.backup(&full_id).unwrap();
    assert_eq!(record.vm_context_id.as_deref(), Some(context_id.as_str()));
    assert_eq!(record.policy_id.as_deref(), Some("gold"));
    assert!(record.last_telemetry_at.is_some());
    let full_images: Vec<PathBuf> = record.disks.iter().map(|d| d.qcow2_path.clone()).collect();
    for (src, image) in [(&src0, &full_images[0]), (&src1, &full_images[1])] {
        qemu_img_check(image);
        qemu_img_compare(src, image);
    }

    // Incremental after changing known extents of both disks (cluster-aligned, one zeroed).
    let changed0 = [
        (MIB, 64 * KIB, false),
        (20 * MIB, 128 * KIB, true),
        (39 * MIB, 64 * KIB, false),
    ];
    let changed1 = [(0, 64 * KIB, false), (6 * MIB, 192 * KIB, false)];
    change(&src0, &changed0, 1);
    change(&src1, &changed1, 2);
    let extents =
        |c: &[(u64, u64, bool)]| c.iter().map(|&(o, l, _)| json!([o, l])).collect::<Vec<_>>();
    sna.set(
        "changed",
        json!({"2000": extents(&changed0), "2001": extents(&changed1)}),
    );
    sna.set(
        "expect_change_id",
        json!({"2000": "52 3c 9a-full/2000", "2001": "52 3c 9a-full/2001"}),
    );
    sna.set(
        "new_change_ids",
        json!({"2000": "52 3c 9a-inc/2000", "2001": "52 3c 9a-inc/2001"}),
    );
    let (s, b) = h
        .post(
            "/api/v1/backups",
            &json!({"vm_name": VM, "backup_type": "incremental", "repository_id": "default"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let inc_id = b["backup_id"].as_str().unwrap().to_owned();
    assert_eq!(b["parent_backup_id"], full_id.as_str());
    h.wait_status(&inc_id, "completed").await;
    sna.assert_no_errors();
    let start = sna.last_start();
    assert_eq!(
        (&start["backup_type"], &start["previous_change_id"]),
        (&json!("incremental"), &json!("52 3c 9a-full/2000"))
    );
    let inc = h.hub.backup(&inc_id).unwrap();
    for (i, (src, changed)) in [(&src0, &changed0[..]), (&src1, &changed1[..])]
        .into_iter()
        .enumerate()
    {
        let image = &inc.disks[i].qcow2_path;
        qemu_img_check(image);
        qemu_img_compare(src, image);
        let want: Vec<(u64, u64)> = changed.iter().map(|&(o, l, _)| (o, l)).collect();
        assert_eq!(top_layer_ranges(image), want, "overlay of disk {i}");
    }
    assert_eq!(inc.disks[1].change_id.as_deref(), Some("52 3c 9a-inc/2001"));

    // A full after completed backups copies everything into an image with no backing file.
    change(&src1, &[(2 * MIB, 64 * KIB, false)], 3);
    sna.set("expect_change_id", json!({}));
    sna.set("changed", json!({}));
    let (s, b) = h.post("/api/v1/backups", &full).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let again_id = b["backup_id"].as_str().unwrap().to_owned();
    h.wait_status(&again_id, "completed").await;
    sna.assert_no_errors();
    let again = h.hub.backup(&again_id).unwrap();
    for (src, d) in [(&src0, &again.disks[0]), (&src1, &again.disks[1])] {
        let info = run_ok(
            Command::new("qemu-img")
                .args(["info", "--output=json"])
                .arg(&d.qcow2_path),
        );
        let info: Value = serde_json::from_slice(&info.stdout).unwrap();
        assert!(info["backing-filename"].is_null(), "{info}");
        qemu_img_compare(src, &d.qcow2_path);
    }

    // An SNA that refuses (500) or does not answer in time: 502 with its message, the backup
    // failed, its exports and images gone.
    for (mode, says) in [
        ("status500", "sendense-backup-client binary not found"),
        ("hang", "did not answer"),
    ] {
        sna.set("mode", json!(mode));
        let (s, body) = h.post("/api/v1/backups", &full).await;
        assert_eq!(s, StatusCode::BAD_GATEWAY, "{mode}: {body}");
        assert!(body.to_string().contains(says), "{mode}: {body}");
        assert!(!body.to_string().contains(PASSWORD));
        let (_, list) = h
            .get(&format!("/api/v1/backups?vm_name={VM}&status=failed"))
            .await;
        let failed = &list["backups"][0];
        assert!(failed["error"].as_str().unwrap().contains(says), "{failed}");
        let record = h.hub.backup(failed["backup_id"].as_str().unwrap()).unwrap();
        for d in &record.disks {
            assert!(h.hub.nbd.export_stats(&d.export_name).is_none());
            assert!(!d.qcow2_path.exists(), "{}", d.qcow2_path.display());
        }
        assert!(!record.disks[0].qcow2_path.parent().unwrap().exists());
    }

    // The client reports a failure: the backup ends failed with its message.
    sna.set("mode", json!("client_fail"));
    let (s, b) = h.post("/api/v1/backups", &full).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let failed = h
        .wait_status(b["backup_id"].as_str().unwrap(), "failed")
        .await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("vCenter removed the snapshot"),
        "{failed}"
    );
    sna.assert_no_errors();

    // "start_on_sna": false leaves the SNA alone (the caller drives the client).
    let calls = sna.lines("log").len();
    let (s, b) = h
        .post(
            "/api/v1/backups",
            &json!({"vm_name": VM, "backup_type": "full", "start_on_sna": false}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["status"], "ready");
    assert_eq!(sna.lines("log").len(), calls);
    let (s, _) = h
        .post(
            &format!(
                "/api/v1/backups/{}/cancel",
                b["backup_id"].as_str().unwrap()
            ),
            &json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    // A second discovery updates the context: a grown disk and an added one keep their numbers.
    let mut grown = sna.config["inventory"].clone();
    grown["vms"][0]["disks"][1]["capacity_bytes"] = json!(cap1 * 2);
    grown["vms"][0]["disks"]
        .as_array_mut()
        .unwrap()
        .insert(0, disk("disk-2002", "Hard disk 3", MIB));
    sna.set("inventory", grown);
    let d = discover(&h, credential_id).await;
    assert_eq!(d["discovered_vms"][0]["existing"], true);
    let (_, ctx) = h.get(&format!("/api/v1/vm-contexts/{VM}")).await;
    let disks = context_disks(&ctx);
    assert_eq!(
        disks,
        vec![(2, 2002, MIB), (0, 2000, cap0), (1, 2001, cap1 * 2)]
    );

    // Without its context the VM cannot be backed up from the old body; its backups stay.
    let (s, _) = h
        .call(
            axum::http::Method::DELETE,
            &format!("/api/v1/vm-contexts/{VM}"),
            None,
            Caller::Operator,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = h.get(&format!("/api/v1/vm-contexts/{VM}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h.post("/api/v1/backups", &full).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h.get(&format!("/api/v1/backups/{inc_id}")).await;
    assert_eq!(s, StatusCode::OK);

    h.stop().await;
    let leaks = files_containing(&data, PASSWORD.as_bytes());
    assert!(leaks.is_empty(), "password in clear in {leaks:?}");
}
