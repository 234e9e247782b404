//! The checker agrees with `qemu-img check` on clean, leaking and hand-corrupted images.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use qcow2::{CreateOptions, Image, OpenOptions};

fn be64(f: &std::fs::File, off: u64) -> u64 {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, off).unwrap();
    u64::from_be_bytes(b)
}

/// An image of ours with data in guest clusters 0 and 1; returns (L1 offset, L2 offset, data
/// offset of cluster 0, refblock offset).
fn make(path: &Path) -> (u64, u64, u64, u64) {
    Image::create(
        path,
        &CreateOptions {
            size: 1 << 30,
            ..Default::default()
        },
    )
    .unwrap();
    let img = Image::open(
        path,
        &OpenOptions {
            writable: true,
            ..Default::default()
        },
    )
    .unwrap();
    img.write_at(0, &[7u8; 131072]).unwrap();
    img.close().unwrap();
    let f = std::fs::File::open(path).unwrap();
    let l1 = be64(&f, 40);
    let l2 = be64(&f, l1) & 0x00ff_ffff_ffff_fe00;
    let data = be64(&f, l2) & 0x00ff_ffff_ffff_fe00;
    let rt = be64(&f, 48);
    let rb = be64(&f, rt);
    (l1, l2, data, rb)
}

fn poke(path: &Path, off: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

fn qemu_code(path: &Path) -> i32 {
    qemu_img(&["check", "-f", "qcow2", path.to_str().unwrap()]).0
}

fn ours(path: &Path) -> qcow2::check::CheckReport {
    qcow2::check::check(path, false).unwrap()
}

#[test]
fn clean_images_pass() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ours.qcow2");
    make(&p);
    assert_eq!(ours(&p).exit_code(), 0, "{:?}", ours(&p));
    let q = dir.path().join("qemu.qcow2");
    qemu_img_ok(&["create", "-f", "qcow2", q.to_str().unwrap(), "8M"]);
    qemu_io(&q, "write -P 1 0 1M");
    qemu_io(&q, "write -z 2M 1M");
    assert_eq!(ours(&q).exit_code(), 0, "{:?}", ours(&q));
    let c = dir.path().join("comp.qcow2");
    qemu_img_ok(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        q.to_str().unwrap(),
        c.to_str().unwrap(),
    ]);
    assert_eq!(ours(&c).exit_code(), 0, "{:?}", ours(&c));
    let e = dir.path().join("ext.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on",
        e.to_str().unwrap(),
        "8M",
    ]);
    qemu_io(&e, "write -P 1 4k 4k");
    assert_eq!(ours(&e).exit_code(), 0, "{:?}", ours(&e));
}

#[test]
fn leaks_are_reported_and_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("leak.qcow2");
    let (_, _, data, rb) = make(&p);
    // Grow the file by two clusters and count them as used.
    let end = std::fs::metadata(&p).unwrap().len();
    poke(&p, end + 131071, &[0]);
    let c = end / 65536;
    poke(&p, rb + c * 2, &[0, 1, 0, 1]);
    assert_eq!(qemu_code(&p), 3);
    let r = ours(&p);
    assert_eq!((r.exit_code(), r.leaks), (3, 2), "{r:?}");
    let r = qcow2::check::check(&p, true).unwrap();
    assert_eq!((r.exit_code(), r.leaks_fixed), (0, 2));
    assert_eq!(qemu_code(&p), 0);
    assert_eq!(ours(&p).exit_code(), 0);
    let _ = data;
}

#[test]
fn refcount_below_references_is_corrupt_and_repairable() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("rc.qcow2");
    let (_, _, data, rb) = make(&p);
    poke(&p, rb + (data / 65536) * 2, &[0, 0]);
    assert_eq!(qemu_code(&p), 2);
    let r = ours(&p);
    assert_eq!(r.exit_code(), 2, "{r:?}");
    assert!(
        r.messages
            .iter()
            .any(|m| m.contains("refcount=0 reference=1")),
        "{r:?}"
    );
    let r = qcow2::check::check(&p, true).unwrap();
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!(qemu_code(&p), 0);
}

#[test]
fn missing_copied_bit_is_corrupt_and_repairable() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("copied.qcow2");
    let (_, l2, data, _) = make(&p);
    poke(&p, l2, &data.to_be_bytes());
    assert_eq!(qemu_code(&p), 2);
    let r = ours(&p);
    assert_eq!(r.exit_code(), 2, "{r:?}");
    assert!(
        r.messages.iter().any(|m| m.contains("OFLAG_COPIED")),
        "{r:?}"
    );
    let r = qcow2::check::check(&p, true).unwrap();
    assert_eq!(r.exit_code(), 0, "{r:?}");
    assert_eq!(qemu_code(&p), 0);
}

#[test]
fn l2_past_end_of_file_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("eof.qcow2");
    let (l1, _, _, _) = make(&p);
    let beyond = (1u64 << 30) | (1 << 63);
    poke(&p, l1 + 8, &beyond.to_be_bytes());
    assert_eq!(qemu_code(&p), 2);
    let r = ours(&p);
    assert_eq!(r.exit_code(), 2, "{r:?}");
    assert!(
        r.messages.iter().any(|m| m.contains("past the end")),
        "{r:?}"
    );
    // Reading through it is an error, not a panic or a read outside the file.
    let img = Image::open(&p, &OpenOptions::default()).unwrap();
    let guest = 512u64 << 20; // first cluster of L1 entry 1 (64 KiB clusters)
    if guest < img.virtual_size() {
        let e = img.read_at(guest, &mut [0u8; 512]).unwrap_err();
        assert_eq!(e.kind(), qcow2::ErrorKind::Corrupt);
    }
}

#[test]
fn repair_clears_the_dirty_bit() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dirty.qcow2");
    make(&p);
    poke(&p, 72, &1u64.to_be_bytes());
    assert!(
        Image::open(
            &p,
            &OpenOptions {
                writable: true,
                ..Default::default()
            }
        )
        .is_err()
    );
    let r = qcow2::check::check(&p, true).unwrap();
    assert_eq!(r.exit_code(), 0, "{r}");
    let img = Image::open(
        &p,
        &OpenOptions {
            writable: true,
            ..Default::default()
        },
    )
    .unwrap();
    img.write_at(0, &[1u8; 512]).unwrap();
    img.close().unwrap();
    check_clean(&p);
}
