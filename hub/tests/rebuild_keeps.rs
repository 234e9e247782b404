//! `sendense-hub catalog rebuild` (the real binary) keeps what the manifests cannot give back:
//! every old catalog it moves aside, and the credentials, VM contexts and protection objects.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use axum::http::StatusCode;
use common::hub::*;
use common::sna::*;
use common::*;
use serde_json::json;

/// `sendense-hub catalog rebuild --data-dir DATA`: exit code and stdout.
fn rebuild(data: &Path) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["catalog", "rebuild", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("rebuild: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), stdout)
}

/// The old catalogs kept beside the catalog (without their WAL files).
fn kept(data: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("catalog.sqlite.before-rebuild-")
                && !name.ends_with("-wal")
                && !name.ends_with("-shm")
        })
        .collect();
    files.sort();
    files
}

fn count(catalog: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(catalog).unwrap();
    conn.query_row(sql, [], |row| row.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_rebuilds_in_one_second_keep_both_old_catalogs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    TestHub::start(test_config(data.clone())).await.stop().await;
    // A row only the hub's own catalog has (rebuild carries no jobs), to tell the two apart.
    rusqlite::Connection::open(data.join("catalog.sqlite"))
        .unwrap()
        .execute(
            "INSERT INTO jobs (id, kind, target, status, created_at)
             VALUES ('marker', 'test', 't', 'succeeded', '2026-01-01T00:00:00Z')",
            [],
        )
        .unwrap();
    // Both runs at the start of one second, as a script running them back to back would.
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_nanos(
        1_000_000_000 - u64::from(since.subsec_nanos()),
    ));
    let (first, out1) = rebuild(&data);
    let (second, out2) = rebuild(&data);
    assert_eq!((first, second), (0, 0), "{out1}{out2}");
    let kept = kept(&data);
    assert_eq!(kept.len(), 2, "{kept:?}\n{out1}{out2}");
    assert!(out1.contains(&kept[0].display().to_string()), "{out1}");
    assert!(out2.contains(&kept[1].display().to_string()), "{out2}");
    // The hub's catalog is the first kept, untouched by the second run.
    let marker = "SELECT COUNT(*) FROM jobs WHERE id = 'marker'";
    assert_eq!(count(&kept[0], marker), 1);
    assert_eq!(count(&kept[1], marker), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_carries_credentials_contexts_and_protection_over() {
    let dir = tempfile::tempdir().unwrap();
    let sna = StandIn::start(
        dir.path(),
        json!({
            "vcenter": {"host": "vc.example", "datacenter": "DC1"},
            "vms": [vm("vm-1", "web-1", 2, 4096), vm("vm-2", "db-1", 4, 8192)]
        }),
    );
    let data = dir.path().join("data");
    let mut config = test_config(data.clone());
    config.sna_url = format!("http://127.0.0.1:{}", sna.port);
    let h = TestHub::start(config.clone()).await;
    let contexts = discover(&h, &["web-1", "db-1"]).await;
    let (_, creds) = h.get("/api/v1/vmware-credentials").await;
    let cred_id = creds["credentials"][0]["id"].clone();
    let (_, schedule) = h
        .post(
            "/api/v1/schedules",
            &json!({"name": "nightly", "cron_expression": "0 2 * * *"}),
        )
        .await;
    let (s, group) = h
        .post(
            "/api/v1/machine-groups",
            &json!({"name": "web", "schedule_id": schedule["id"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{group}");
    let group_id = group["id"].as_str().unwrap().to_owned();
    let (s, added) = h
        .post(
            &format!("/api/v1/machine-groups/{group_id}/vms"),
            &json!({"vm_context_id": contexts[0]}),
        )
        .await;
    assert!(s.is_success(), "{added}");
    let (s, policy) = h
        .post(
            "/api/v1/policies",
            &json!({"name": "gold", "primary_repository_id": "default"}),
        )
        .await;
    assert!(s.is_success(), "{policy}");
    let (s, flow) = h
        .post(
            "/api/v1/protection-flows",
            &json!({"name": "web nightly", "flow_type": "backup", "target_type": "group",
                "target_id": group_id, "repository_id": "default", "policy_id": policy["id"],
                "schedule_id": schedule["id"], "enabled": false}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{flow}");
    let nas = dir.path().join("nas");
    let body = json!({"name": "NAS", "type": "local", "enabled": true,
        "config": {"path": nas, "description": "the rack's NAS"}});
    let (s, repo) = h.post("/api/v1/repositories", &body).await;
    assert_eq!(s, StatusCode::OK, "{repo}");
    let (_, before) = h.get("/api/v1/repositories").await;
    h.stop().await;
    let tick = "2026-11-30T02:00:00Z";
    rusqlite::Connection::open(data.join("catalog.sqlite"))
        .unwrap()
        .execute("UPDATE protection_flows SET last_tick_at = ?1", [tick])
        .unwrap();

    let (code, out) = rebuild(&data);
    assert_eq!(code, 0, "{out}");
    for said in [
        "1 credential(s)",
        "2 VM context(s)",
        "1 schedule(s)",
        "1 machine group(s) with 1 member(s)",
        "1 policy(ies)",
        "1 protection flow(s)",
    ] {
        assert!(out.contains(said), "{said}: {out}");
    }
    let ticks = "SELECT COUNT(*) FROM protection_flows WHERE last_tick_at = '2026-11-30T02:00:00Z'";
    assert_eq!(count(&data.join("catalog.sqlite"), ticks), 1);

    let h = TestHub::start(config.clone()).await;
    let (s, cred) = h
        .get(&format!("/api/v1/vmware-credentials/{cred_id}"))
        .await;
    assert_eq!(s, StatusCode::OK, "{cred}");
    // The password still opens with the same key: the stand-in accepts the login.
    let (s, found) = h
        .post(
            "/api/v1/discovery/discover-vms",
            &json!({"credential_id": cred_id, "create_context": false}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{found}");
    let (_, list) = h.get("/api/v1/vm-contexts").await;
    assert_eq!(list["count"], 2, "{list}");
    let (s, members) = h
        .get(&format!("/api/v1/vm-groups/{group_id}/members"))
        .await;
    assert_eq!(
        (s, &members["count"]),
        (StatusCode::OK, &json!(1)),
        "{members}"
    );
    let (_, flows) = h.get("/api/v1/protection-flows").await;
    assert_eq!(flows["total"], 1, "{flows}");
    assert_eq!(flows["flows"][0]["schedule_id"], schedule["id"], "{flows}");
    // No file holds a repository's name, description or creation time: the old catalog does.
    let (_, after) = h.get("/api/v1/repositories").await;
    let pick = |list: &serde_json::Value, id: &str| {
        let r = list["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no repository {id}: {list}"));
        (
            r["name"].clone(),
            r["config"]["description"].clone(),
            r["created_at"].clone(),
        )
    };
    let id = repo["id"].as_str().unwrap();
    assert_eq!(pick(&after, id), pick(&before, id), "{after}");
    assert_eq!(pick(&after, id).1, "the rack's NAS", "{after}");
    assert_eq!(pick(&after, "default"), pick(&before, "default"), "{after}");
    h.stop().await;

    // No old catalog: the loss is said, not silent.
    for name in ["catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm"] {
        let _ = std::fs::remove_file(data.join(name));
    }
    let (code, out) = rebuild(&data);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("lost") && out.contains("no previous catalog"),
        "{out}"
    );
}

fn remove_catalog(data: &Path) {
    for name in ["catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm"] {
        let _ = std::fs::remove_file(data.join(name));
    }
}

/// A completed one-disk full backup of `vm` from a source made of `seed`; the backup's body.
async fn backed_up(h: &TestHub, dir: &Path, vm: &str, seed: u64) -> serde_json::Value {
    let src = dir.join(format!("{vm}-{seed}.raw"));
    make_raw(&src, MIB as usize, seed);
    completed_full(h, vm, &src, MIB).await
}

fn dir_of(backup: &serde_json::Value) -> PathBuf {
    Path::new(backup["disk_results"][0]["qcow2_path"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_owned()
}

/// Issue 22, item 11: after a rebuild that skipped directories, the start refused and asked for
/// another rebuild, which skipped them again. Now the rebuild moves them into the repository's
/// quarantine (untouched) and says where, and the start proceeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_quarantines_what_it_cannot_file_and_the_next_start_proceeds() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let h = TestHub::start(default_config(data.clone())).await;
    let kept = backed_up(&h, dir.path(), "app", 1).await;
    let broken = backed_up(&h, dir.path(), "db", 2).await;
    h.stop().await;
    let repo = data.join("repository");
    // A directory without a manifest, and one whose manifest is not JSON.
    let stray = repo.join("app/5f1c9e3a-8b7d-4e2f-a6c4-2d3b9e8f1a00");
    std::fs::create_dir_all(&stray).unwrap();
    qemu_img_create(&stray.join("disk0.qcow2"), MIB);
    std::fs::write(dir_of(&broken).join("manifest.json"), b"{ torn").unwrap();
    remove_catalog(&data);

    let (code, out) = rebuild(&data);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("could not rebuild 2"), "{out}");
    let stray_moved = repo
        .join(".quarantine/app")
        .join(stray.file_name().unwrap());
    let broken_moved = repo
        .join(".quarantine/db")
        .join(dir_of(&broken).file_name().unwrap());
    for moved in [&stray_moved, &broken_moved] {
        assert!(out.contains(&moved.display().to_string()), "{out}");
        // Moved whole, not rewritten.
        qemu_img_check(&moved.join("disk0.qcow2"));
    }
    assert!(!stray.exists() && !dir_of(&broken).exists());
    assert!(!repo.join("db").exists(), "the emptied VM directory stays");

    // Starts (twice: a start does not undo the quarantine), with the filed backup only.
    for _ in 0..2 {
        let h = TestHub::start(default_config(data.clone())).await;
        assert_eq!(backup_ids(&h).await, [kept["backup_id"].as_str().unwrap()]);
        h.stop().await;
    }
    assert!(broken_moved.join("manifest.json").is_file());
}

/// Issue 22, item 11: rebuild trusted a manifest's `vm_name` over the directory it lies in, so a
/// manifest naming another VM put these images into that VM's chain (its restores, the parent of
/// its next incremental). Now the directory names the VM, the report says so, and a child whose
/// parent is then another VM's is not filed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_files_a_backup_under_the_vm_its_directory_names() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let h = TestHub::start(default_config(data.clone())).await;
    let web = backed_up(&h, dir.path(), "web", 1).await;
    let src = dir.path().join("web-inc.raw");
    make_raw(&src, MIB as usize, 3);
    let inc = completed_incremental(&h, "web", &src, MIB, "c1").await;
    let inc_id = inc["backup_id"].as_str().unwrap().to_owned();
    h.stop().await;
    // The full's manifest now claims VM "db"; the incremental's directory moves under "db".
    let web_dir = dir_of(&web);
    let manifest = web_dir.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["vm_name"] = json!("db");
    std::fs::write(&manifest, m.to_string()).unwrap();
    let repo = data.join("repository");
    std::fs::create_dir_all(repo.join("db")).unwrap();
    let inc_dir = repo.join("db").join(&inc_id);
    std::fs::rename(dir_of(&inc), &inc_dir).unwrap();
    remove_catalog(&data);

    let (code, out) = rebuild(&data);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(r#"filed under VM "web""#) && out.contains(r#"names VM "db""#),
        "{out}"
    );
    assert!(
        out.contains("its parent backup") && out.contains(&inc_id),
        "{out}"
    );
    let h = TestHub::start(default_config(data.clone())).await;
    let (s, back) = h
        .get(&format!(
            "/api/v1/backups/{}",
            web["backup_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{back}");
    assert_eq!(back["vm_name"], "web", "{back}");
    let (_, db) = h.get("/api/v1/backups?vm_name=db").await;
    assert_eq!(db["backups"], json!([]), "{db}");
    let (s, _) = h.get(&format!("/api/v1/backups/{inc_id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // db has no completed backup to build on; web's next incremental builds on web's full.
    let (s, r) = h
        .post(
            "/api/v1/backups",
            &json!({"vm_name": "db", "backup_type": "incremental", "disks": [disk(0, 2000, MIB)]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{r}");
    h.stop().await;
}
