//! Discovery through the stand-in SNA keeps only VM contexts the backup path can take, one per
//! VM name, and stops filing a large answer once its caller is gone (issue 22, item 11).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::hub::*;
use common::sna::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The hub as a user runs it: every setting at its default but the data dir and the SNA.
fn defaults(data: PathBuf, sna_port: u16) -> ::hub::Config {
    ::hub::Config {
        sna_url: format!("http://127.0.0.1:{sna_port}"),
        ..default_config(data)
    }
}

async fn discover_all(h: &TestHub, credential_id: &Value) -> Value {
    let (s, d) = h
        .post(
            "/api/v1/discovery/discover-vms",
            &json!({"credential_id": credential_id, "create_context": true}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    d
}

fn names(list: &Value, field: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v[field].as_str().unwrap().to_owned())
        .collect()
}

/// The reason given for the refused VM named `name`.
fn reason<'a>(d: &'a Value, name: &str) -> &'a str {
    let refused = d["refused_vms"].as_array().unwrap();
    let found = refused.iter().find(|r| r["name"] == name);
    found.unwrap_or_else(|| panic!("{name:?} not refused: {d}"))["reason"]
        .as_str()
        .unwrap()
}

/// Issue 22, item 11: discovery stored contexts the backup path then refused (10,000 disks, an
/// empty or a 5,000-character name, a capacity not a multiple of 512), and a second VM of one
/// name silently replaced the first. Now each is refused and listed with why, and not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn discovery_refuses_and_lists_vms_the_backup_path_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let mut many_disks = vm("vm-2", "many-disks", 2, 4096);
    let disk = many_disks["disks"][0].clone();
    many_disks["disks"] = (0..10_000)
        .map(|k| {
            let mut d = disk.clone();
            d["id"] = json!(format!("disk-{}", 2000 + k));
            d
        })
        .collect();
    let mut odd = vm("vm-3", "odd-size", 2, 4096);
    odd["disks"][0]["capacity_bytes"] = json!(1000);
    let long = "x".repeat(5000);
    let inventory = json!({"vcenter": {"host": "vc.example", "datacenter": "DC1"},
        "vms": [vm("vm-1", "web-1", 2, 4096), many_disks, odd, vm("vm-4", "", 2, 4096),
            vm("vm-5", &long, 2, 4096), vm("vm-6", "twin", 2, 4096), vm("vm-7", "twin", 2, 4096)]});
    let mut sna = StandIn::start(dir.path(), inventory.clone());
    let h = TestHub::start(defaults(dir.path().join("data"), sna.port)).await;
    let cred = default_credential(&h).await;

    let d = discover_all(&h, &cred).await;
    assert_eq!(names(&d["discovered_vms"], "name"), ["web-1"], "{d}");
    assert_eq!(
        (d["discovery_count"].clone(), d["contexts_created"].clone()),
        (json!(1), json!(1))
    );
    assert!(reason(&d, "many-disks").contains("1 to 256 disks"), "{d}");
    assert!(reason(&d, "odd-size").contains("multiple of 512"), "{d}");
    assert!(reason(&d, "").contains("vm_name"), "{d}");
    assert!(reason(&d, &long).contains("vm_name"), "{d}");
    let twins = reason(&d, "twin");
    assert!(twins.contains("vm-6") && twins.contains("vm-7"), "{d}");
    assert_eq!(d["refused_vms"].as_array().unwrap().len(), 6, "{d}");
    let (_, list) = h.get("/api/v1/vm-contexts").await;
    assert_eq!(names(&list["vm_contexts"], "vm_name"), ["web-1"], "{list}");
    // What was refused is what the backup path refuses: a backup of the odd disk is a 400.
    let (s, r) = h
        .post(
            "/api/v1/backups",
            &json!({"vm_name": "odd-size", "backup_type": "full",
                "disks": [{"disk_id": 0, "vmware_disk_key": 2000, "capacity_bytes": 1000}]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{r}");

    // Another VM named web-1 (another VMware id) does not take over web-1's context...
    let mut other = inventory.clone();
    other["vms"] = json!([vm("vm-99", "web-1", 8, 65536)]);
    sna.set_inventory(other);
    let d = discover_all(&h, &cred).await;
    assert!(reason(&d, "web-1").contains("vm-1"), "{d}");
    let (_, web) = h.get("/api/v1/vm-contexts/web-1").await;
    assert_eq!(web["context"]["vmware_vm_id"], "vm-1", "{web}");
    // ...until the operator deletes that context.
    let (s, _) = h
        .call(
            axum::http::Method::DELETE,
            "/api/v1/vm-contexts/web-1",
            None,
            Caller::Operator,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let d = discover_all(&h, &cred).await;
    assert_eq!(d["contexts_created"], 1, "{d}");
    let (_, web) = h.get("/api/v1/vm-contexts/web-1").await;
    assert_eq!(web["context"]["vmware_vm_id"], "vm-99", "{web}");
    h.stop().await;
}

fn contexts_in(catalog: &Path) -> i64 {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(catalog, flags).unwrap();
    conn.query_row("SELECT COUNT(*) FROM vm_contexts", [], |r| r.get(0))
        .unwrap()
}

/// Issue 22, item 11: a 150,000-VM discovery went on filing contexts after its caller went
/// away. Now it stops between batches: the client hangs up once contexts are being written, and
/// the count stops short of the answer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_discovery_whose_caller_goes_away_stops_filing() {
    const VMS: i64 = 150_000;
    let dir = tempfile::tempdir().unwrap();
    let mut sna = StandIn::start(dir.path(), json!({"vms": []}));
    sna.set_generated(VMS as u64);
    let data = dir.path().join("data");
    let h = TestHub::start(defaults(data.clone(), sna.port)).await;
    let cred = default_credential(&h).await;
    let base = h.serve_api().await;

    let addr = base.trim_start_matches("http://").to_owned();
    let body = json!({"credential_id": cred, "create_context": true}).to_string();
    let mut client = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "POST /api/v1/discovery/discover-vms HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        h.token,
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let catalog = data.join("catalog.sqlite");
    let deadline = Instant::now() + Duration::from_secs(300);
    while contexts_in(&catalog) == 0 {
        assert!(Instant::now() < deadline, "discovery never wrote a context");
        // An answer before any context was written would be a failure too.
        let mut byte = [0u8; 1];
        if let Ok(read) =
            tokio::time::timeout(Duration::from_millis(5), client.read(&mut byte)).await
        {
            panic!("answered before filing: {read:?}");
        }
    }
    drop(client);
    // Written until the count holds still; it must hold short of the answer's.
    let mut last = contexts_in(&catalog);
    let mut still_since = Instant::now();
    while still_since.elapsed() < Duration::from_secs(2) {
        assert!(Instant::now() < deadline, "still filing: {last}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = contexts_in(&catalog);
        if now != last {
            (last, still_since) = (now, Instant::now());
        }
    }
    eprintln!("contexts written: {last} of {VMS}");
    assert!(last < VMS, "all {last} contexts written for a caller gone");
    // The hub still serves.
    let (s, _) = h.get("/api/v1/vmware-credentials").await;
    assert_eq!(s, StatusCode::OK);
    h.stop().await;
}
