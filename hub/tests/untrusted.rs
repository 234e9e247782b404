//! Images are untrusted: `serve-image` and `info` refuse backing files that are not regular files
//! (without hanging on a FIFO), and `serve-image` opens no backing file outside the image's
//! directory unless told to.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// An overlay naming `backing` (not opened at creation) as its `format` backing file.
fn overlay(dir: &tempfile::TempDir, backing: &str, format: &str) -> std::path::PathBuf {
    let image = tmp_path(dir, "top.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args([
                "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", format,
            ])
            .arg(&image)
            .arg("1M"),
    );
    image
}

fn serve_image_refuses(image: &Path, extra: &[&str], want: &str) {
    let out = bounded(
        Command::new(BIN)
            .args(["serve-image", "--listen", "127.0.0.1:0"])
            .args(extra)
            .arg(image),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "serve-image served {}",
        image.display()
    );
    assert!(stderr.contains(want), "{stderr}");
}

#[test]
fn a_fifo_as_backing_file_is_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = tmp_path(&dir, "base.raw");
    run_ok(Command::new("mkfifo").arg(&fifo));
    for format in ["raw", "qcow2"] {
        let image = overlay(&dir, "base.raw", format);
        serve_image_refuses(&image, &[], "is not a regular file (a FIFO)");
        // `info` shows the image alone, telling why the chain is missing.
        let out = bounded(Command::new(BIN).arg("info").arg(&image));
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("a FIFO"));
        std::fs::remove_file(&image).unwrap();
    }
    // The image itself as a FIFO.
    serve_image_refuses(&fifo, &[], "is not a regular file (a FIFO)");
    let out = bounded(Command::new(BIN).arg("check").arg(&fifo));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_device_as_backing_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let image = overlay(&dir, "/dev/zero", "raw");
    serve_image_refuses(
        &image,
        &["--allow-backing"],
        "is not a regular file (a character device)",
    );
}

#[test]
fn a_backing_file_outside_the_image_directory_needs_allow_backing() {
    let dir = tempfile::tempdir().unwrap();
    let image = overlay(&dir, "/etc/passwd", "raw");
    serve_image_refuses(&image, &[], "is outside");
    serve_image_refuses(&image, &["--read-only"], "is outside");
    // Trusted by the operator, it opens.
    let (mut server, uri) = serve_image(&["--listen", "127.0.0.1:0", "--allow-backing"], &image);
    run_ok(Command::new("nbdinfo").arg(&uri).stdout(Stdio::null()));
    assert!(server.terminate_and_wait().success());
    // A chain inside the image's directory needs no flag.
    let base = tmp_path(&dir, "base.qcow2");
    qemu_img_create(&base, 1 << 20);
    let inside = tmp_path(&dir, "inside.qcow2");
    run_ok(
        Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                "base.qcow2",
                "-F",
                "qcow2",
            ])
            .arg(&inside),
    );
    let (mut server, uri) = serve_image(&["--listen", "127.0.0.1:0"], &inside);
    run_ok(Command::new("nbdinfo").arg(&uri).stdout(Stdio::null()));
    assert!(server.terminate_and_wait().success());
}
