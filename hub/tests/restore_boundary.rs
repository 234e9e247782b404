//! The hub opens only what lies inside the repository: a backup whose image names a backing file
//! outside it, or whose `disk0.qcow2` is a symlink, is refused, and no byte of the outside file
//! reaches an NBD client (issue 22, defect 7).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use axum::http::StatusCode;
use common::hub::*;
use common::*;
use serde_json::{Value, json};

/// What the outside file holds, over and over: a restore that serves it shows it.
const SECRET: &[u8] = b"bytes-from-outside-the-repository;";

/// A 1 MiB raw file full of `SECRET` in `dir` (outside the data dir).
fn outside_raw(dir: &Path) -> PathBuf {
    let path = dir.join("outside.raw");
    let bytes: Vec<u8> = SECRET.iter().copied().cycle().take(MIB as usize).collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Replaces `image` by a 1 MiB qcow2 overlay naming `backing` (a raw file), as a hostile or
/// careless hand could leave it for `catalog rebuild` to pick up.
fn overlay_over(image: &Path, backing: &str) {
    std::fs::remove_file(image).unwrap();
    run_ok(
        Command::new("qemu-img")
            .args([
                "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "raw",
            ])
            .arg(image)
            .arg("1M"),
    );
}

/// A completed one-disk full backup of `vm`; its id and disk 0's image.
async fn completed(h: &TestHub, dir: &Path, vm: &str) -> (String, PathBuf) {
    let src = dir.join(format!("{vm}.raw"));
    make_raw(&src, MIB as usize, 5);
    let b = completed_full(h, vm, &src, MIB).await;
    let image = b["disk_results"][0]["qcow2_path"].as_str().unwrap().into();
    (b["backup_id"].as_str().unwrap().to_owned(), image)
}

/// Asks for a restore of `id`'s disk 0 and expects a refusal; when an export opens anyway, its
/// bytes are read and must not carry the outside file's.
async fn assert_restore_refused(h: &TestHub, dir: &Path, id: &str, case: &str) {
    let (s, r): (StatusCode, Value) = h
        .post("/api/v1/restores", &json!({"backup_id": id, "disk_id": 0}))
        .await;
    if s == StatusCode::OK {
        let back = dir.join(format!("{case}.back"));
        nbdcopy(vec![
            r["nbd_uri"].as_str().unwrap().to_owned(),
            back.display().to_string(),
        ])
        .await;
        let bytes = std::fs::read(&back).unwrap();
        let leaked = bytes.windows(SECRET.len()).any(|w| w == SECRET);
        panic!("{case}: the restore was served (outside bytes reached the client: {leaked})");
    }
    assert_eq!(s, StatusCode::CONFLICT, "{case}: {r}");
    let msg = r["error"].as_str().unwrap_or_default();
    assert!(msg.contains("outside the repository"), "{case}: {r}");
    let (_, list) = h.get("/api/v1/restores").await;
    assert_eq!(list["restores"], json!([]), "{case}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restores_refuse_backing_files_and_symlinks_outside_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start(test_config(dir.path().join("data"))).await;
    let outside = outside_raw(dir.path());

    // (a) The image names a backing file outside the repository, by absolute name...
    let (id, image) = completed(&h, dir.path(), "absolute").await;
    overlay_over(&image, outside.to_str().unwrap());
    assert_restore_refused(&h, dir.path(), &id, "absolute").await;
    // ...and by a relative one climbing out of it.
    let (id, image) = completed(&h, dir.path(), "relative").await;
    let depth = image.strip_prefix(dir.path()).unwrap().components().count() - 1;
    let climb = format!("{}outside.raw", "../".repeat(depth));
    overlay_over(&image, &climb);
    assert_restore_refused(&h, dir.path(), &id, "relative").await;
    // ...or through a symlink inside the backup directory.
    let (id, image) = completed(&h, dir.path(), "linked").await;
    std::os::unix::fs::symlink(&outside, image.with_file_name("base.raw")).unwrap();
    overlay_over(&image, "base.raw");
    assert_restore_refused(&h, dir.path(), &id, "linked-backing").await;

    // (b) `disk0.qcow2` itself a symlink to an image outside the repository.
    let (id, image) = completed(&h, dir.path(), "symlink").await;
    let out_image = dir.path().join("outside.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&outside)
            .arg(&out_image),
    );
    std::fs::remove_file(&image).unwrap();
    std::os::unix::fs::symlink(&out_image, &image).unwrap();
    assert_restore_refused(&h, dir.path(), &id, "symlinked-image").await;
    // Even a symlink to another backup's image inside the repository: images are regular files.
    let (_, other) = completed(&h, dir.path(), "other").await;
    std::fs::remove_file(&image).unwrap();
    std::os::unix::fs::symlink(&other, &image).unwrap();
    let (s, r) = h
        .post("/api/v1/restores", &json!({"backup_id": id, "disk_id": 0}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{r}");

    // An incremental on a parent whose chain reaches out is refused too (copy-on-write would
    // copy the outside bytes into the new image).
    let (_, image) = completed(&h, dir.path(), "parent").await;
    overlay_over(&image, outside.to_str().unwrap());
    let (s, r) = h
        .post(
            "/api/v1/backups",
            &json!({"vm_name": "parent", "backup_type": "incremental",
                "disks": [disk(0, 2000, MIB)]}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("outside the repository"),
        "{r}"
    );
    h.stop().await;
}
