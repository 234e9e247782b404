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
