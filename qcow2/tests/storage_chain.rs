//! A chain whose layers are not files: each image's bytes in a `MemStorage` (as an object in a
//! bucket would be), opened bottom up with `Image::open_storage_over`, reads as qemu-img reads the
//! same chain of files.

mod common;

use std::sync::Arc;

use common::{qemu_img_ok, qemu_io, to_raw};
use qcow2::{Image, MemStorage, OpenOptions};

fn storage(path: &std::path::Path) -> Arc<MemStorage> {
    Arc::new(MemStorage::new(std::fs::read(path).unwrap()))
}

#[test]
fn layers_in_memory_read_as_the_files_do() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let base = p("base.qcow2");
    qemu_img_ok(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "8M"]);
    qemu_io(&base, "write -P 0x11 0 8M");
    let overlay = |name: &str, backing: &str, writes: &[&str]| {
        let path = p(name);
        let args = ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing];
        qemu_img_ok(&[&args[..], &[path.to_str().unwrap()]].concat());
        for w in writes {
            qemu_io(&path, w);
        }
        path
    };
    let mid = overlay(
        "mid.qcow2",
        "base.qcow2",
        &["write -P 0x22 1M 64k", "write -z 3M 128k"],
    );
    let top = overlay(
        "top.qcow2",
        "mid.qcow2",
        &["write -P 0x33 1M 4k", "write -P 0x44 7M 1M"],
    );

    let opts = OpenOptions::default();
    let chain = [&base, &mid, &top]
        .iter()
        .fold(None::<Image>, |below, path| {
            Some(match below {
                None => Image::open_storage(storage(path), &opts).unwrap(),
                Some(b) => Image::open_storage_over(storage(path), &opts, b).unwrap(),
            })
        });
    let img = chain.unwrap();
    let mut got = vec![0u8; 8 << 20];
    img.read_at(0, &mut got).unwrap();
    assert!(
        got == to_raw(&top),
        "the in-memory chain reads other bytes than qemu-img"
    );

    // The bottom layer names no backing file: nothing may be put under it.
    let lone = Image::open_storage(storage(&base), &opts).unwrap();
    let Err(err) = Image::open_storage_over(storage(&base), &opts, lone) else {
        panic!("a layer without a backing file took one");
    };
    assert!(err.to_string().contains("no backing file"), "{err}");
    // Writable layers over a given backing are refused.
    let below = Image::open_storage(storage(&base), &opts).unwrap();
    let writable = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    assert!(Image::open_storage_over(storage(&mid), &writable, below).is_err());
}
