//! WRITEs whose payload covers whole clusters with zeros store zero clusters, not data.

mod common;

use std::path::Path;

use common::*;
use qcow2::{CreateOptions, ExtentKind, Image, OpenOptions};

const CS: u64 = 64 << 10;
const SIZE: u64 = 4 << 20;

fn rw() -> OpenOptions {
    OpenOptions {
        writable: true,
        open_backing: true,
        ..Default::default()
    }
}

fn create(path: &Path, backing: Option<&Path>) {
    Image::create(
        path,
        &CreateOptions {
            size: SIZE,
            cluster_size: CS as u32,
            backing_file: backing.map(Path::to_path_buf),
            backing_format: None,
            ..Default::default()
        },
    )
    .unwrap();
}

fn allocated_clusters(img: &Path) -> u64 {
    let text = qemu_img_ok(&["check", "--output=json", img.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["allocated-clusters"].as_u64().unwrap_or(0)
}

#[test]
fn zero_payload_over_fresh_clusters_allocates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.qcow2");
    create(&path, None);
    let before = allocated_clusters(&path);
    let img = Image::open(&path, &rw()).unwrap();
    // Unaligned start and end: the partial head and tail clusters are data, the 6 whole
    // clusters between them are zeros.
    img.write_at(CS / 2, &vec![0u8; 7 * CS as usize]).unwrap();
    // Zeros between data inside one payload.
    let mut buf = vec![0u8; 4 * CS as usize];
    buf[..CS as usize].fill(0x11);
    buf[3 * CS as usize..].fill(0x33);
    img.write_at(16 * CS, &buf).unwrap();
    img.close().unwrap();
    check_clean(&path);
    // Head and tail of the first write (2) and the two data clusters of the second.
    assert_eq!(allocated_clusters(&path), before + 4);
    let map = qemu_map(&path, CS, SIZE);
    for c in 1..7 {
        assert_ne!(map[c].0, ExtentKind::Data, "cluster {c}: {map:?}");
    }
    assert_eq!(map[16].0, ExtentKind::Data);
    assert_ne!(map[17].0, ExtentKind::Data);
    assert_ne!(map[18].0, ExtentKind::Data);
    assert_eq!(map[19].0, ExtentKind::Data);
    let mut want = vec![0u8; SIZE as usize];
    want[16 * CS as usize..17 * CS as usize].fill(0x11);
    want[19 * CS as usize..20 * CS as usize].fill(0x33);
    assert!(to_raw(&path) == want);
}

#[test]
fn zero_payload_over_backing_data_hides_the_parent() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    create(&base, None);
    let img = Image::open(&base, &rw()).unwrap();
    img.write_at(0, &vec![0xab; SIZE as usize]).unwrap();
    img.close().unwrap();
    create(&top, Some(&base));
    let before = allocated_clusters(&top);
    let img = Image::open(&top, &rw()).unwrap();
    img.write_at(2 * CS, &vec![0u8; 3 * CS as usize]).unwrap();
    let mut got = vec![1u8; 3 * CS as usize];
    img.read_at(2 * CS, &mut got).unwrap();
    assert!(got.iter().all(|&b| b == 0));
    img.close().unwrap();
    check_clean(&top);
    assert_eq!(
        allocated_clusters(&top),
        before,
        "no data cluster in the overlay"
    );
    let map = qemu_map(&top, CS, SIZE);
    for c in 2..5 {
        assert_eq!(map[c], (ExtentKind::Zero, 1), "cluster {c}: {map:?}");
    }
    assert_eq!(map[5], (ExtentKind::Data, 2));
    let mut want = vec![0xab; SIZE as usize];
    want[2 * CS as usize..5 * CS as usize].fill(0);
    assert!(to_raw(&top) == want);
}

#[test]
fn zero_payload_over_owned_data_reads_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.qcow2");
    create(&path, None);
    let img = Image::open(&path, &rw()).unwrap();
    img.write_at(0, &vec![0x5a; 4 * CS as usize]).unwrap();
    img.flush().unwrap();
    img.write_at(0, &vec![0u8; 4 * CS as usize]).unwrap();
    // The last cluster of the image, through a payload reaching the end.
    img.write_at(SIZE - CS, &vec![0u8; CS as usize]).unwrap();
    img.close().unwrap();
    check_clean(&path);
    assert!(to_raw(&path).iter().all(|&b| b == 0));
}
