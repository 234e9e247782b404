//! Helpers shared by the integration tests: qemu tools and a seeded RNG.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

pub fn qemu_img(args: &[&str]) -> (i32, String) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

pub fn qemu_img_ok(args: &[&str]) -> String {
    let (code, text) = qemu_img(args);
    assert_eq!(code, 0, "qemu-img {args:?}: {text}");
    text
}

pub fn qemu_io(img: &Path, cmd: &str) {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd])
        .arg(img)
        .output()
        .expect("qemu-io runs");
    assert!(
        out.status.success(),
        "qemu-io {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        !s.contains("error") && !s.contains("failed"),
        "qemu-io {cmd}: {s}"
    );
}

pub fn check_clean(img: &Path) {
    let (code, text) = qemu_img(&["check", "-f", "qcow2", img.to_str().unwrap()]);
    assert_eq!(code, 0, "qemu-img check {}: {text}", img.display());
    let ours = qcow2::check::check(img, false).unwrap();
    assert_eq!(
        ours.exit_code(),
        0,
        "our check of {}: {ours:?}",
        img.display()
    );
}

/// Converts (the whole chain of) `img` to raw and returns the bytes.
pub fn to_raw(img: &Path) -> Vec<u8> {
    let raw = img.with_extension("conv.raw");
    qemu_img_ok(&[
        "convert",
        "-O",
        "raw",
        img.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    let v = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    v
}

/// Per-cluster (kind, depth) from `qemu-img map`, in our terms: depth 1 = top, 0 = nowhere.
pub fn qemu_map(img: &Path, cluster: u64, size: u64) -> Vec<(qcow2::ExtentKind, u32)> {
    let text = qemu_img_ok(&["map", "--output=json", "-f", "qcow2", img.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = vec![(qcow2::ExtentKind::Unallocated, 0); size.div_ceil(cluster) as usize];
    for e in v.as_array().unwrap() {
        let start = e["start"].as_u64().unwrap();
        let len = e["length"].as_u64().unwrap();
        let kind = if !e["present"].as_bool().unwrap() {
            (qcow2::ExtentKind::Unallocated, 0)
        } else if e["data"].as_bool().unwrap() {
            (
                qcow2::ExtentKind::Data,
                e["depth"].as_u64().unwrap() as u32 + 1,
            )
        } else {
            (
                qcow2::ExtentKind::Zero,
                e["depth"].as_u64().unwrap() as u32 + 1,
            )
        };
        for c in start / cluster..(start + len).div_ceil(cluster) {
            out[c as usize] = kind;
        }
    }
    out
}

/// Per-cluster (kind, depth) from our block status.
pub fn our_map(img: &qcow2::Image, cluster: u64) -> Vec<(qcow2::ExtentKind, u32)> {
    let size = img.virtual_size();
    let mut out = vec![(qcow2::ExtentKind::Unallocated, 0); size.div_ceil(cluster) as usize];
    let mut pos = 0;
    for e in img.block_status(0, size).unwrap() {
        assert_eq!(e.offset, pos, "extents are contiguous");
        pos += e.length;
        for c in e.offset / cluster..(e.offset + e.length).div_ceil(cluster) {
            out[c as usize] = (e.kind, e.depth);
        }
    }
    assert_eq!(pos, size);
    out
}

/// A scratch directory for images opened with `io`. Direct I/O gets one on the build's filesystem
/// (`/tmp` may be tmpfs) and `None`, with a message, where that filesystem or kernel has none.
pub fn scratch_dir(io: qcow2::StorageIo) -> Option<tempfile::TempDir> {
    if io != qcow2::StorageIo::Direct {
        return Some(tempfile::tempdir().unwrap());
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let probe = dir.path().join("probe");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .unwrap();
    match qcow2::DirectStorage::new(qcow2::FileStorage::new(f)) {
        Ok(_) => Some(dir),
        Err((e, _)) => {
            eprintln!(
                "skipping the direct-I/O case: no direct I/O in {}: {e}",
                dir.path().display()
            );
            None
        }
    }
}
