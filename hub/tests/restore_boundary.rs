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

async fn status_of(h: &TestHub, id: &str) -> Value {
    let (s, b) = h.get(&format!("/api/v1/backups/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b
}

/// A restore that must be refused 410 `gone`, naming the backup and no path of the host.
async fn assert_gone(h: &TestHub, id: &str, names: &str) {
    let r = h
        .post("/api/v1/restores", &json!({"backup_id": id, "disk_id": 0}))
        .await;
    assert_error(&r, StatusCode::GONE, "gone");
    let text = r.1.to_string();
    assert!(text.contains(id) && text.contains(names), "{text}");
    assert!(!text.contains(&h.data_dir.display().to_string()), "{text}");
}

/// Issue 22, item 11: a restore of a backup whose files vanished was a 500 with internals (the
/// image's path, the errno). Now it is 410 `gone` naming the backup and no path, and the backups
/// of the broken chain are `missing` at once, so listing says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_of_a_backup_whose_files_vanished_is_gone_naming_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let h = TestHub::start(default_config(data.clone())).await;
    let (full, full_image) = completed(&h, dir.path(), "app").await;
    let src = dir.path().join("app-inc.raw");
    make_raw(&src, MIB as usize, 6);
    let inc = completed_incremental(&h, "app", &src, MIB, "c1").await;
    let inc_id = inc["backup_id"].as_str().unwrap().to_owned();

    // The full's whole directory goes behind the hub's back: the incremental's chain is broken.
    std::fs::remove_dir_all(full_image.parent().unwrap()).unwrap();
    assert_gone(&h, &inc_id, &full).await;
    for id in [&full, &inc_id] {
        let b = status_of(&h, id).await;
        assert_eq!(b["status"], "missing", "{b}");
    }
    assert_gone(&h, &full, "gone from repository").await;
    // The next incremental of the VM has nothing to build on, and says so (not a 500).
    let (s, r) = h
        .post(
            "/api/v1/backups",
            &json!({"vm_name": "app", "backup_type": "incremental", "disks": [disk(0, 2000, MIB)]}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{r}");
    // A missing backup can still be deleted (its files are gone already), children first.
    let (s, r) = h.delete(&full).await;
    assert!(
        s == StatusCode::CONFLICT && r.to_string().contains(&inc_id),
        "{r}"
    );
    assert_eq!(h.delete(&inc_id).await.0, StatusCode::OK);
    assert_eq!(h.delete(&full).await.0, StatusCode::OK);
    h.stop().await;
}

/// Issue 22, item 11: the start-up reconcile did not notice a completed backup whose files
/// vanished, so listing said `completed`. Now a start marks it `missing` (and a restore of it is
/// 410), and the start after its files are back marks it `completed` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_marks_backups_whose_files_vanished_missing_and_completed_once_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let h = TestHub::start(default_config(data.clone())).await;
    let (other, other_image) = completed(&h, dir.path(), "other").await;
    let (kept, _) = completed(&h, dir.path(), "kept").await;
    h.stop().await;

    // While stopped, the backup's directory is moved away: the start marks it missing.
    let other_dir = other_image.parent().unwrap().to_owned();
    let aside = dir.path().join("aside");
    std::fs::rename(&other_dir, &aside).unwrap();
    let h = TestHub::start(default_config(data.clone())).await;
    let b = status_of(&h, &other).await;
    assert_eq!(b["status"], "missing", "{b}");
    assert!(
        b["disk_results"][0]["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("gone")),
        "{b}"
    );
    let (_, listed) = h.get("/api/v1/backups?status=missing").await;
    assert_eq!(listed["backups"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(status_of(&h, &kept).await["status"], "completed");
    assert_gone(&h, &other, "gone from repository").await;
    h.stop().await;

    // Back where it was: completed again at the next start, and restorable.
    std::fs::rename(&aside, &other_dir).unwrap();
    let h = TestHub::start(default_config(data.clone())).await;
    let b = status_of(&h, &other).await;
    assert_eq!(b["status"], "completed", "{b}");
    let (s, r) = h
        .post(
            "/api/v1/restores",
            &json!({"backup_id": other, "disk_id": 0}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let back = dir.path().join("other.back");
    nbdcopy(vec![
        r["nbd_uri"].as_str().unwrap().to_owned(),
        back.display().to_string(),
    ])
    .await;
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(dir.path().join("other.raw")).unwrap()
    );
    h.stop().await;
}
