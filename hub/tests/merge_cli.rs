//! `sendense-hub merge CHILD` as a real process on a chain qemu-img and qemu-io made: the merged
//! child reads as before (`qemu-img compare`), checks clean, its child's chain is one shorter;
//! refusals (no backing file, a backing file outside `--backing-dir`, a chain open in a
//! `serve-image` export) exit 1 with the reason and change nothing.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn qemu_img(args: &[&str]) {
    run_ok(Command::new("qemu-img").args(args));
}

fn qemu_io(image: &Path, cmd: &str) {
    run_ok(
        Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", cmd])
            .arg(image),
    );
}

fn create(image: &Path, backing: Option<&Path>) {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2"]);
    if let Some(b) = backing {
        cmd.arg("-b").arg(b).args(["-F", "qcow2"]);
    }
    run_ok(cmd.arg(image).arg("32M"));
}

fn to_raw(image: &Path, raw: &Path) {
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        image.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
}

fn merge(args: &[&str], child: &Path, code: i32) -> (String, String) {
    let out = run_expect(
        Command::new(BIN).arg("merge").args(args).arg(child),
        &[code],
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn merge_subcommand_merges_and_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (f, y, z) = (d.join("f.qcow2"), d.join("y.qcow2"), d.join("z.qcow2"));
    create(&f, None);
    qemu_io(&f, "write -P 0x51 0 16M");
    create(&y, Some(&f));
    qemu_io(&y, "write -P 0x52 1M 64k");
    qemu_io(&y, "write -z 4M 1M");
    create(&z, Some(&y));
    qemu_io(&z, "write -P 0x53 8M 64k");
    let (y_raw, z_raw) = (d.join("y.raw"), d.join("z.raw"));
    to_raw(&y, &y_raw);
    to_raw(&z, &z_raw);

    // Refusals first: each leaves the chain as it was.
    let (_, err) = merge(&[], &f, 1);
    assert!(err.contains("no backing file"), "{err}");
    let elsewhere = tempfile::tempdir().unwrap();
    let (_, err) = merge(
        &["--backing-dir", elsewhere.path().to_str().unwrap()],
        &y,
        1,
    );
    assert!(err.contains("outside"), "{err}");
    {
        let (_export, _uri) = serve_image(
            &[
                "--read-only",
                "--socket",
                d.join("nbd.sock").to_str().unwrap(),
            ],
            &z,
        );
        let (_, err) = merge(&[], &y, 1);
        assert!(err.contains("lock"), "{err}");
    }
    wait_unlocked(&f);
    assert!(f.exists());
    qemu_img_compare(&y_raw, &y);

    let (out, _) = merge(&["--backing-dir", d.to_str().unwrap()], &y, 0);
    assert!(out.contains("merged") && out.contains("f.qcow2"), "{out}");
    assert!(!f.exists());
    qemu_img_compare(&y_raw, &y);
    qemu_img_compare(&z_raw, &z);
    qemu_img_check(&y);
    let out = run_ok(
        Command::new("qemu-img")
            .args(["info", "--backing-chain"])
            .arg(&z),
    );
    let info = String::from_utf8_lossy(&out.stdout);
    assert_eq!(info.matches("image: ").count(), 2, "{info}");

    let help = run_ok(Command::new(BIN).args(["merge", "--help"]));
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("catalog is not updated"), "{help}");
}
