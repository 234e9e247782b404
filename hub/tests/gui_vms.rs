//! The Sendense GUI's reads of VMs (VM contexts, disks, group members, discovery, ungrouped VMs,
//! a machine's backups) against the hub's real answers, with discovery through the stand-in
//! SNA. Each test is named after the GUI file whose reads it checks.

mod common;

use axum::http::StatusCode;
use common::hub::*;
use common::sna::{StandIn, discover, vm};
use common::*;
use serde_json::{Value, json};

const HALF_GIB: u64 = 512 << 20;

/// web-1: 2 CPUs, a 512 MiB disk; odd-1: the SNA said no CPU count and no guest OS.
fn inventory() -> Value {
    let mut web = vm("vm-1", "web-1", 2, 4096);
    web["disks"][0]["capacity_bytes"] = json!(HALF_GIB);
    let mut odd = vm("vm-2", "odd-1", 0, 1024);
    odd["guest_os"] = json!("");
    json!({"vcenter": {"host": "vc.example", "datacenter": "DC1"}, "vms": [web, odd]})
}

async fn hub_with_vms(dir: &std::path::Path) -> (StandIn, TestHub, Vec<String>) {
    let sna = StandIn::start(dir, inventory());
    let mut config = test_config(dir.join("data"));
    config.sna_url = format!("http://127.0.0.1:{}", sna.port);
    let h = TestHub::start(config).await;
    let ids = discover(&h, &["web-1", "odd-1"]).await;
    (sna, h, ids)
}

/// A machine group `web` holding `members` (`POST /machine-groups`, then `.../vms` with
/// `body`'s extra fields): its id.
async fn group_web(h: &TestHub, members: &[String], mut body: Value) -> String {
    let (s, g) = h
        .post("/api/v1/machine-groups", &json!({"name": "web"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{g}");
    let gid = g["id"].as_str().unwrap().to_owned();
    body["vm_context_ids"] = json!(members);
    let (s, r) = h
        .post(&format!("/api/v1/machine-groups/{gid}/vms"), &body)
        .await;
    assert!(s.is_success(), "{r}");
    gid
}

/// What `getFlowMachines` gathers and the table reads: `os_type` (lowercased unchecked),
/// `cpu_count`, `memory_mb`, `power_state`, and `disks[].size_gb` summed.
fn assert_machine(m: &Value, disks: &Value, cpus: Option<i64>, os: &str, gb: f64) {
    assert_eq!(m["os_type"].as_str(), Some(os), "{m}");
    assert_eq!(m["cpu_count"].as_i64(), cpus, "{m}");
    assert!(
        m["memory_mb"].is_i64() && m["power_state"] == "poweredOn",
        "{m}"
    );
    let sum: f64 = disks["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["size_gb"].as_f64().expect("size_gb a number"))
        .sum();
    assert_eq!(sum, gb, "{disks}");
}

/// `components/features/protection-flows/FlowMachinesTable.tsx` (through `getFlowMachines` in
/// `protectionFlowsApi.ts`): a group flow's machines from `/vm-groups/{id}/members`, a VM flow's
/// from `/vm-contexts/by-id/{id}`'s `context`, disks from `/vm-contexts/{id}/disks`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flow_machines_table_tsx() {
    let dir = tempfile::tempdir().unwrap();
    let (_sna, h, ids) = hub_with_vms(dir.path()).await;
    let gid = group_web(&h, &ids, json!({})).await;
    let (s, members) = h.get(&format!("/api/v1/vm-groups/{gid}/members")).await;
    assert_eq!(s, StatusCode::OK, "{members}");
    for m in members["members"].as_array().unwrap() {
        let id = m["context_id"].as_str().unwrap();
        let (_, disks) = h.get(&format!("/api/v1/vm-contexts/{id}/disks")).await;
        match m["vm_name"].as_str().unwrap() {
            "web-1" => assert_machine(m, &disks, Some(2), "ubuntu64Guest", 0.5),
            _ => assert_machine(m, &disks, None, "", 1.0 / 1024.0),
        }
    }
    let (s, one) = h
        .get(&format!("/api/v1/vm-contexts/by-id/{}", ids[0]))
        .await;
    assert_eq!(s, StatusCode::OK, "{one}");
    let (_, disks) = h
        .get(&format!("/api/v1/vm-contexts/{}/disks", ids[0]))
        .await;
    assert_machine(&one["context"], &disks, Some(2), "ubuntu64Guest", 0.5);
    assert_eq!(one["disks"][0]["size_gb"], 0.5, "{one}");
    // Ours stay beside.
    assert_eq!(
        (
            one["context"]["num_cpu"].as_i64(),
            one["disks"][0]["capacity_bytes"].as_u64()
        ),
        (Some(2), Some(HALF_GIB))
    );
    h.stop().await;
}

/// `components/features/protection-flows/MachineDetailsModal.tsx`: the machine's fields, and
/// `bytes_transferred` of its completed backups (averaged and listed): the bytes received, not
/// the 0 the SNA's `complete` sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn machine_details_modal_tsx() {
    let dir = tempfile::tempdir().unwrap();
    let (_sna, h, ids) = hub_with_vms(dir.path()).await;
    let (_, one) = h
        .get(&format!("/api/v1/vm-contexts/by-id/{}", ids[1]))
        .await;
    let (_, disks) = h
        .get(&format!("/api/v1/vm-contexts/{}/disks", ids[1]))
        .await;
    assert_machine(&one["context"], &disks, None, "", 1.0 / 1024.0);

    let src = dir.path().join("web.raw");
    make_raw(&src, (2 * MIB) as usize, 5);
    let body = json!({"vm_name": "web-1", "backup_type": "full", "start_on_sna": false,
        "disks": [disk(0, 2000, 2 * MIB)]});
    let (s, b) = h.post("/api/v1/backups", &body).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let nbd = b["disk_results"][0]["nbd_uri"].as_str().unwrap().to_owned();
    nbdcopy(vec![src.display().to_string(), nbd]).await;
    let id = b["backup_id"].as_str().unwrap();
    let r = h
        .complete(id, r#"{"change_id":"c1","bytes_transferred":0}"#)
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    h.wait_status(id, "completed").await;
    let (_, list) = h
        .get("/api/v1/backups?vm_name=web-1&repository_id=default")
        .await;
    let done = &list["backups"][0];
    assert_eq!(done["status"], "completed", "{list}");
    let written = done["bytes_written"].as_u64().unwrap();
    assert!(written > 0, "{done}");
    assert_eq!(done["bytes_transferred"].as_u64(), Some(written), "{done}");
    for f in [
        "backup_id",
        "type",
        "current_phase",
        "created_at",
        "started_at",
        "completed_at",
    ] {
        assert!(done[f].is_string(), "{f}: {done}");
    }
    assert!(done["progress_percent"].is_number() && done["transfer_speed_bps"].is_number());
    h.stop().await;
}

/// `src/features/protection-flows/api/sourcesApi.ts` (`VMContext`, used by Create Flow): the
/// list's `vm_contexts[]` fields, `current_status` among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sources_api_ts() {
    let dir = tempfile::tempdir().unwrap();
    let (_sna, h, _) = hub_with_vms(dir.path()).await;
    let (s, list) = h.get("/api/v1/vm-contexts").await;
    assert_eq!(s, StatusCode::OK, "{list}");
    for c in list["vm_contexts"].as_array().unwrap() {
        for f in [
            "context_id",
            "vm_name",
            "vmware_vm_id",
            "vm_path",
            "vcenter_host",
            "datacenter",
            "os_type",
            "power_state",
        ] {
            assert!(c[f].is_string(), "{f}: {c}");
        }
        assert_eq!(c["current_status"], "discovered", "{c}");
    }
    h.stop().await;
}

/// `components/features/protection-groups/VMDiscoveryModal.tsx`: the discovery answer's
/// `discovered_vms[].{id, name, power_state, guest_os, num_cpu, memory_mb, networks}` and
/// `disks[].size_gb` summed (the SNA's whole GB would make 512 MiB a 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_discovery_modal_tsx() {
    let dir = tempfile::tempdir().unwrap();
    let (_sna, h, _) = hub_with_vms(dir.path()).await;
    let (_, creds) = h.get("/api/v1/vmware-credentials").await;
    let cid = creds["credentials"][0]["id"].clone();
    let (s, d) = h
        .post(
            "/api/v1/discovery/discover-vms",
            &json!({"credential_id": cid}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    let vms = d["discovered_vms"].as_array().unwrap();
    let web = vms.iter().find(|v| v["name"] == "web-1").unwrap();
    for f in ["id", "name", "power_state", "guest_os"] {
        assert!(web[f].is_string(), "{f}: {web}");
    }
    assert!(web["num_cpu"].is_i64() && web["memory_mb"].is_i64() && web["networks"].is_array());
    assert_eq!(web["disks"][0]["size_gb"], 0.5, "{web}");
    h.stop().await;
}

/// `components/features/protection-groups/CreateGroupModal.tsx`: `GET /discovery/ungrouped-vms`
/// → `vms[].{context_id, vm_name, power_state, datacenter, vcenter_host}`; a VM put in a group
/// leaves the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_group_modal_tsx() {
    let dir = tempfile::tempdir().unwrap();
    let (_sna, h, ids) = hub_with_vms(dir.path()).await;
    let (s, u) = h.get("/api/v1/discovery/ungrouped-vms").await;
    assert_eq!(s, StatusCode::OK, "{u}");
    assert_eq!(
        (u["count"].as_u64(), u["vms"].as_array().map(Vec::len)),
        (Some(2), Some(2))
    );
    assert!(u["retrieved_at"].is_string());
    for v in u["vms"].as_array().unwrap() {
        for f in [
            "context_id",
            "vm_name",
            "power_state",
            "datacenter",
            "vcenter_host",
            "current_status",
            "os_type",
        ] {
            assert!(v[f].is_string(), "{f}: {v}");
        }
    }
    group_web(&h, &ids[..1], json!({})).await;
    let (_, u) = h.get("/api/v1/discovery/ungrouped-vms").await;
    let left: Vec<&str> = u["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["context_id"].as_str().unwrap())
        .collect();
    assert_eq!(left, vec![ids[1].as_str()], "{u}");
    h.stop().await;
}

/// `app/protection-groups/page.tsx`: `GET /vm-contexts` → `vm_contexts[]`, whose `groups[]`
/// (`group_id`, `group_name`, `priority`, `enabled`) the Virtual Machines table shows as the
/// VM's group, "Ungrouped" when empty, and whose count of empty ones is "N ungrouped".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn app_protection_groups_page_tsx() {
    let dir = tempfile::tempdir().unwrap();
    let (_sna, h, ids) = hub_with_vms(dir.path()).await;
    let gid = group_web(&h, &ids[..1], json!({"priority": 7})).await;
    let (s, l) = h.get("/api/v1/vm-contexts").await;
    assert_eq!(s, StatusCode::OK, "{l}");
    let by_id = |id: &str| {
        l["vm_contexts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["context_id"] == id)
            .cloned()
            .unwrap()
    };
    let grouped = by_id(&ids[0]);
    assert_eq!(
        grouped["groups"],
        json!([{"group_id": gid, "group_name": "web", "priority": 7, "enabled": true}]),
        "{grouped}"
    );
    assert_eq!(grouped["group_count"], 1);
    let ungrouped = by_id(&ids[1]);
    assert_eq!(
        (&ungrouped["groups"], &ungrouped["group_count"]),
        (&json!([]), &json!(0))
    );
    // The machine details read the same context.
    let (_, d) = h
        .get(&format!("/api/v1/vm-contexts/by-id/{}", ids[0]))
        .await;
    assert_eq!(d["context"]["groups"][0]["group_name"], "web", "{d}");
    h.stop().await;
}
