//! Which backend `storage_io` picks, and thin images after close in both modes.

mod common;

use std::path::Path;

use common::*;
use qcow2::{CreateOptions, Image, OpenOptions, StorageIo};

fn make(path: &Path, size: u64) {
    Image::create(
        path,
        &CreateOptions {
            size,
            ..Default::default()
        },
    )
    .unwrap();
}

fn open(path: &Path, io: StorageIo, writable: bool) -> Image {
    Image::open(
        path,
        &OpenOptions {
            writable,
            storage_io: io,
            ..Default::default()
        },
    )
    .unwrap()
}

/// `auto` stays buffered on tmpfs and for read-only opens, and goes direct on a disk filesystem
/// (the build's, where direct I/O works); `buffered` and `direct` do what they say.
#[test]
fn auto_is_buffered_on_tmpfs_and_direct_on_disk() {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        let dir = tempfile::tempdir_in(shm).unwrap();
        let p = dir.path().join("a.qcow2");
        make(&p, 1 << 20);
        assert_eq!(open(&p, StorageIo::Auto, true).io_alignment(), 1);
    } else {
        eprintln!("skipping the tmpfs case: no /dev/shm");
    }
    let Some(dir) = scratch_dir(StorageIo::Direct) else {
        return;
    };
    let p = dir.path().join("a.qcow2");
    make(&p, 1 << 20);
    assert!(open(&p, StorageIo::Auto, true).io_alignment() > 1);
    assert_eq!(open(&p, StorageIo::Auto, false).io_alignment(), 1);
    assert_eq!(open(&p, StorageIo::Buffered, true).io_alignment(), 1);
    assert!(open(&p, StorageIo::Direct, false).io_alignment() > 1);
}

/// Preallocation ahead of the frontier is given back at close: the file ends at the last
/// allocated cluster and `qemu-img info` counts about the data written.
#[test]
fn images_stay_thin_after_close() {
    for io in [StorageIo::Buffered, StorageIo::Direct] {
        let Some(dir) = scratch_dir(io) else {
            continue;
        };
        let p = dir.path().join("a.qcow2");
        make(&p, 4 << 30);
        let img = open(&p, io, true);
        let data = vec![0x5au8; 1 << 20];
        // 24 MiB in 1 MiB writes, plus a few unaligned ones, spread over the disk.
        for i in 0..24u64 {
            img.write_at(i * (100 << 20), &data).unwrap();
        }
        img.write_at((3 << 30) + 777, &data[..5000]).unwrap();
        img.close().unwrap();
        check_clean(&p);
        let text = qemu_img_ok(&["info", "--output=json", p.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let actual = v["actual-size"].as_u64().unwrap();
        let len = std::fs::metadata(&p).unwrap().len();
        // Data 24 MiB + one 64 KiB cluster, plus header, tables and an L2 table per 512 MiB.
        assert!(actual < 26 << 20, "{io}: actual size {actual}");
        assert!(len < 26 << 20, "{io}: file length {len}");
        assert!(actual >= 24 << 20, "{io}: actual size {actual}");
    }
}
