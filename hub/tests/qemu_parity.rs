//! `check` and `info` answer as `qemu-img check`/`qemu-img info` do on odd images, and a
//! repository cannot be put where images cannot live.

mod common;

use std::process::Command;

use common::hub::*;
use common::*;
use serde_json::{Value, json};

#[test]
fn check_exits_as_qemu_img_on_unknown_incompatible_features() {
    let dir = tempfile::tempdir().unwrap();
    let image = tmp_path(&dir, "disk.qcow2");
    qemu_img_create(&image, 1 << 20);
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[72..80].copy_from_slice(&(1u64 << 40).to_be_bytes());
    std::fs::write(&image, &bytes).unwrap();
    let qemu = Command::new("qemu-img")
        .arg("check")
        .arg(&image)
        .output()
        .unwrap();
    let ours = Command::new(BIN).arg("check").arg(&image).output().unwrap();
    assert_ne!(qemu.status.code(), Some(0));
    assert_eq!(
        ours.status.code(),
        qemu.status.code(),
        "ours: {}",
        String::from_utf8_lossy(&ours.stderr)
    );
    assert!(String::from_utf8_lossy(&ours.stderr).contains("unknown incompatible features"));
}

#[test]
fn info_labels_a_raw_backing_file_as_qemu_img_does() {
    let dir = tempfile::tempdir().unwrap();
    let base = tmp_path(&dir, "base.raw");
    make_raw(&base, 1 << 20, 3);
    let image = tmp_path(&dir, "top.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw"])
            .arg(&image),
    );
    let qemu = run_ok(
        Command::new("qemu-img")
            .args(["info", "--backing-chain", "--output=json"])
            .arg(&image),
    );
    let qemu: Value = serde_json::from_slice(&qemu.stdout).unwrap();
    let ours = run_ok(Command::new(BIN).args(["info", "--json"]).arg(&image));
    let ours: Value = serde_json::from_slice(&ours.stdout).unwrap();
    let formats = |chain: &Value| -> Vec<String> {
        chain
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["format"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(formats(&ours["backing-chain"]), formats(&qemu));
    assert_eq!(formats(&qemu), ["qcow2", "raw"]);
    let text = run_ok(Command::new(BIN).arg("info").arg(&image));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("file format: raw"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_is_refused_where_images_cannot_live() {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start(test_config(dir.path().join("data"))).await;
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    for (i, path) in [
        "/proc/self",
        "/proc/self/fd",
        "/sys/kernel",
        file.to_str().unwrap(),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = h
            .post(
                "/api/v1/repositories",
                &json!({"id": format!("bad{i}"), "path": path}),
            )
            .await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    let good = dir.path().join("repo");
    let (status, body) = h
        .post("/api/v1/repositories", &json!({"id": "good", "path": good}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        std::fs::read_dir(&good)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != ::hub::repo::ownership::MARKER)
            .count(),
        0,
        "the probe file stayed"
    );
    h.stop().await;
}
