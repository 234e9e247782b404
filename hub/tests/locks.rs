//! Our image locks and qemu's are the same locks: qemu-io, qemu-img and qemu-nbd refuse an image
//! we write, with their own message, and we refuse an image qemu holds.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::hub::*;
use common::*;
use serde_json::json;

const MIB: u64 = 1 << 20;

/// Runs a qemu tool that must fail on a locked image; returns its stderr.
fn qemu_refuses(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{cmd:?} opened a locked image: {stderr}"
    );
    stderr
}

/// qemu-io writing, and qemu-img info reading, an image held for writing by us.
fn assert_qemu_locked_out(image: &Path) {
    let err = qemu_refuses(
        Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write 0 4k"])
            .arg(image),
    );
    assert!(err.contains("Failed to get \"write\" lock"), "{err}");
    let err = qemu_refuses(Command::new("qemu-img").arg("info").arg(image));
    assert!(err.contains("Failed to get shared \"write\" lock"), "{err}");
    // qemu-nbd would serve it for ever if it got in.
    let socket = image.with_extension("sock");
    let out = bounded(
        Command::new("qemu-nbd")
            .args(["-f", "qcow2", "-k"])
            .arg(&socket)
            .arg(image),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Failed to get \"write\" lock"),
        "{err}"
    );
}

#[test]
fn qemu_cannot_open_an_image_serve_image_writes() {
    let dir = tempfile::tempdir().unwrap();
    let image = tmp_path(&dir, "disk.qcow2");
    let (mut server, _uri) = serve_image(&["--listen", "127.0.0.1:0", "--create", "4M"], &image);
    assert_qemu_locked_out(&image);
    assert!(server.terminate_and_wait().success());
    // Released with the process: qemu gets in now.
    run_ok(
        Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write 0 4k"])
            .arg(&image),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_cannot_open_the_image_of_a_running_backup() {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start(test_config(dir.path().join("data"))).await;
    let req = json!({"vm_name": "vm1", "backup_type": "full",
        "disks": [{"disk_id": 0, "vmware_disk_key": 2000, "capacity_bytes": 4 * MIB}]});
    let (status, b) = h.post("/api/v1/backups", &req).await;
    assert_eq!(status, 200, "{b}");
    let image = std::path::PathBuf::from(b["disk_results"][0]["qcow2_path"].as_str().unwrap());
    blocking(move || assert_qemu_locked_out(&image)).await;
    h.stop().await;
}

/// qemu-nbd serving `image` writable until dropped.
struct QemuNbd {
    _child: ChildGuard,
}

impl QemuNbd {
    fn start(image: &Path, socket: &Path) -> Self {
        let child = Command::new("qemu-nbd")
            .args(["-f", "qcow2", "-k"])
            .arg(socket)
            .arg(image)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let guard = ChildGuard(Some(child));
        // qemu-nbd opens (and locks) the image before it creates the socket.
        for _ in 0..600 {
            if socket.exists() {
                return Self { _child: guard };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("qemu-nbd did not start");
    }
}

#[test]
fn we_refuse_an_image_qemu_holds() {
    let dir = tempfile::tempdir().unwrap();
    let image = tmp_path(&dir, "disk.qcow2");
    qemu_img_create(&image, 4 * MIB);
    let nbd = QemuNbd::start(&image, &tmp_path(&dir, "nbd.sock"));
    for args in [
        vec!["serve-image", "--listen", "127.0.0.1:0"],
        vec!["serve-image", "--read-only", "--listen", "127.0.0.1:0"],
        vec!["info"],
        vec!["check"],
    ] {
        let out = bounded(Command::new(BIN).args(&args).arg(&image));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} opened an image qemu-nbd holds"
        );
        assert!(
            stderr.contains("lock") && stderr.contains("another process"),
            "{args:?}: {stderr}"
        );
    }
    drop(nbd);
    run_ok(Command::new(BIN).arg("check").arg(&image));
}
