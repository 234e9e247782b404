//! Our images against qemu: random workloads vs an in-memory model, then `qemu-img check` and
//! `qemu-img compare`; chains with qemu's chain tools.

mod common;

use std::path::Path;

use common::*;
use qcow2::{CreateOptions, ExtentKind, Image, OpenOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rw() -> OpenOptions {
    OpenOptions {
        writable: true,
        open_backing: true,
        ..Default::default()
    }
}

fn ro() -> OpenOptions {
    OpenOptions {
        open_backing: true,
        ..Default::default()
    }
}

fn create(path: &Path, size: u64, cluster_size: u32, backing: Option<&Path>) {
    Image::create(
        path,
        &CreateOptions {
            size,
            cluster_size,
            backing_file: backing.map(Path::to_path_buf),
            backing_format: None,
        },
    )
    .unwrap();
}

/// Random writes / zeroes / discards / flushes, mirrored into `model`.
fn workload(img: &Image, model: &mut [u8], rng: &mut StdRng, ops: usize, has_backing: bool) {
    let size = model.len() as u64;
    let cs = img.cluster_size();
    for _ in 0..ops {
        let kind = rng.random_range(0..10);
        let len = match rng.random_range(0..4) {
            0 => rng.random_range(1..=512),
            1 => rng.random_range(1..=cs * 3),
            2 => cs * rng.random_range(1..=4),
            _ => rng.random_range(1..=size / 4),
        }
        .min(size);
        let off = if rng.random_bool(0.3) {
            (rng.random_range(0..=size - len) / cs * cs).min(size - len)
        } else {
            rng.random_range(0..=size - len)
        };
        let (o, l) = (off as usize, len as usize);
        match kind {
            0..=5 => {
                let byte: u8 = rng.random();
                let data: Vec<u8> = (0..l).map(|i| byte.wrapping_add(i as u8 / 7)).collect();
                img.write_at(off, &data).unwrap();
                model[o..o + l].copy_from_slice(&data);
            }
            6 | 7 => {
                img.write_zeroes(off, len, rng.random_bool(0.5)).unwrap();
                model[o..o + l].fill(0);
            }
            8 => {
                img.discard(off, len).unwrap();
                // Whole clusters read as zero afterwards (never the parent's data).
                let a = off.div_ceil(cs) * cs;
                let b = if off + len == size {
                    size
                } else {
                    (off + len) / cs * cs
                };
                if a < b {
                    model[a as usize..b as usize].fill(0);
                }
                let _ = has_backing;
            }
            _ => img.flush().unwrap(),
        }
        if rng.random_bool(0.2) {
            let l = rng.random_range(1..=(size / 8).max(1)) as usize;
            let o = rng.random_range(0..=model.len() - l);
            let mut got = vec![0u8; l];
            img.read_at(o as u64, &mut got).unwrap();
            assert!(got == model[o..o + l], "read at {o}+{l} differs from model");
        }
    }
}

fn run_random(cluster_size: u32, size: u64, with_backing: bool, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = vec![0u8; size as usize];
    let top = dir.path().join("top.qcow2");
    if with_backing {
        let base = dir.path().join("base.qcow2");
        create(&base, size, 65536, None);
        let img = Image::open(&base, &rw()).unwrap();
        workload(&img, &mut model, &mut rng, 40, false);
        img.close().unwrap();
        check_clean(&base);
        create(&top, size, cluster_size, Some(&base));
    } else {
        create(&top, size, cluster_size, None);
    }
    let img = Image::open(&top, &rw()).unwrap();
    workload(&img, &mut model, &mut rng, 150, with_backing);
    let mut all = vec![0u8; size as usize];
    img.read_at(0, &mut all).unwrap();
    assert!(all == model, "whole-image read differs from model");
    img.close().unwrap();
    check_clean(&top);
    let raw = dir.path().join("model.raw");
    std::fs::write(&raw, &model).unwrap();
    let (code, text) = qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        top.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "compare: {text}");
    // Reopen and read back through our own reader too.
    let img = Image::open(&top, &ro()).unwrap();
    let mut again = vec![0u8; size as usize];
    img.read_at(0, &mut again).unwrap();
    assert!(again == model);
}

#[test]
fn random_64k_plain() {
    run_random(65536, 8 << 20, false, 1);
}

#[test]
fn random_64k_backing() {
    run_random(65536, 8 << 20, true, 2);
}

#[test]
fn random_512_plain() {
    run_random(512, 1 << 20, false, 3);
}

#[test]
fn random_512_backing() {
    run_random(512, (1 << 20) + 1536, true, 4);
}

#[test]
fn random_2m_plain() {
    run_random(2 << 20, 12 << 20, false, 5);
}

#[test]
fn random_2m_backing() {
    run_random(2 << 20, 10 << 20, true, 6);
}

#[test]
fn fresh_sequential_writes_are_contiguous() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.qcow2");
    create(&p, 64 << 20, 65536, None);
    let img = Image::open(&p, &rw()).unwrap();
    let data = vec![0xabu8; 2 << 20];
    for i in 0..8 {
        img.write_at(i * (2 << 20), &data).unwrap();
    }
    let st = img.block_status(0, 64 << 20).unwrap();
    assert_eq!(st[0].kind, ExtentKind::Data);
    assert_eq!(st[0].length, 16 << 20);
    assert_eq!(st[1].kind, ExtentKind::Unallocated);
    img.close().unwrap();
    check_clean(&p);
    let map = qemu_img_ok(&["map", "--output=json", p.to_str().unwrap()]);
    // One data extent, contiguous in the file.
    let data_lines = map.lines().filter(|l| l.contains("\"data\": true")).count();
    assert_eq!(data_lines, 1, "{map}");
}
