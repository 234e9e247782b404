//! Our images against qemu: random workloads vs an in-memory model, then `qemu-img check` and
//! `qemu-img compare`; chains with qemu's chain tools.

mod common;

use std::path::Path;

use common::*;
use qcow2::{CreateOptions, ExtentKind, Image, OpenOptions, StorageIo};
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
            ..Default::default()
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
                let mut data: Vec<u8> = (0..l).map(|i| byte.wrapping_add(i as u8 / 7)).collect();
                if rng.random_bool(0.3) {
                    // Zero stretches (often whole clusters) take the zero-detection path.
                    let a = rng.random_range(0..l);
                    let b = rng.random_range(a..=l);
                    data[a..b].fill(0);
                }
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

/// `QCOW2_STRESS_SEEDS=n` runs each random test with n seeds (default 1) for local soaking. Each
/// seed runs with buffered and with direct I/O (unaligned offsets and lengths included).
fn run_random(cluster_size: u32, size: u64, with_backing: bool, seed: u64) {
    let n: u64 = std::env::var("QCOW2_STRESS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    for i in 0..n {
        for io in [StorageIo::Buffered, StorageIo::Direct] {
            run_random_seed(cluster_size, size, with_backing, seed + i * 1000, io);
        }
    }
}

fn run_random_seed(cluster_size: u32, size: u64, with_backing: bool, seed: u64, io: StorageIo) {
    let Some(dir) = scratch_dir(io) else {
        return;
    };
    let rw = || OpenOptions {
        storage_io: io,
        ..rw()
    };
    let ro = || OpenOptions {
        storage_io: io,
        ..ro()
    };
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
    // Reopen and read back through our own reader too; block status agrees with qemu-img map.
    let img = Image::open(&top, &ro()).unwrap();
    let granule = u64::from(cluster_size).min(65536);
    let (theirs, ours) = (qemu_map(&top, granule, size), our_map(&img, granule));
    for (i, (t, o)) in theirs.iter().zip(&ours).enumerate() {
        assert_eq!(t, o, "block status of cluster {i}");
    }
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

#[test]
fn refcount_table_grows() {
    // 512 B clusters: one refcount-table cluster covers only 8 MiB of file.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.qcow2");
    create(&p, 24 << 20, 512, None);
    let img = Image::open(&p, &rw()).unwrap();
    let mut model = vec![0u8; 24 << 20];
    let mut rng = StdRng::seed_from_u64(9);
    for i in 0..20u64 {
        let data: Vec<u8> = (0..(1 << 20)).map(|_| rng.random()).collect();
        let off = ((i * 7) % 23) << 20;
        img.write_at(off, &data).unwrap();
        model[off as usize..off as usize + data.len()].copy_from_slice(&data);
        if i % 5 == 0 {
            img.flush().unwrap();
        }
    }
    img.close().unwrap();
    check_clean(&p);
    assert!(to_raw(&p) == model);
}

#[test]
fn concurrent_writers_share_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.qcow2");
    create(&p, 16 << 20, 65536, None);
    let img = Image::open(&p, &rw()).unwrap();
    // Four threads write interleaved 4 KiB pieces of the same fresh clusters.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let img = &img;
            s.spawn(move || {
                for c in 0..256u64 {
                    let off = c * 65536 + t * 16384 + (c % 3) * 4096;
                    img.write_at(off, &[t as u8 + 1; 4096]).unwrap();
                }
            });
        }
    });
    img.close().unwrap();
    check_clean(&p);
    let raw = to_raw(&p);
    for c in 0..256usize {
        for t in 0..4usize {
            let off = c * 65536 + t * 16384 + (c % 3) * 4096;
            assert!(
                raw[off..off + 4096].iter().all(|&b| b == t as u8 + 1),
                "cluster {c} thread {t}"
            );
        }
    }
    let (_, info) = qemu_img(&["check", "--output=json", p.to_str().unwrap()]);
    assert!(info.contains("\"allocated-clusters\": 256"), "{info}");
}

#[test]
fn chain_works_with_qemu_tools() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("full")).unwrap();
    std::fs::create_dir(dir.path().join("inc")).unwrap();
    let base = dir.path().join("full/disk.qcow2");
    let top = dir.path().join("inc/disk.qcow2");
    let size = 4u64 << 20;
    create(&base, size, 65536, None);
    let mut model = vec![0u8; size as usize];
    let img = Image::open(&base, &rw()).unwrap();
    img.write_at(0, &vec![1u8; size as usize]).unwrap();
    img.close().unwrap();
    model.fill(1);
    create(&top, 0, 65536, Some(&base));
    let img = Image::open(&top, &rw()).unwrap();
    assert_eq!(img.virtual_size(), size);
    assert_eq!(img.info_chain().len(), 2);
    assert_eq!(
        img.info_chain()[0].backing_file.as_deref(),
        Some("../full/disk.qcow2")
    );
    img.write_at(100_000, &[2u8; 5000]).unwrap();
    model[100_000..105_000].fill(2);
    img.write_zeroes(1 << 20, 1 << 20, true).unwrap();
    model[1 << 20..2 << 20].fill(0);
    img.discard(3 << 20, 65536).unwrap();
    model[3 << 20..(3 << 20) + 65536].fill(0);
    let st = img.block_status(0, size).unwrap();
    assert_eq!(
        st[0],
        qcow2::Extent {
            offset: 0,
            length: 65536,
            kind: ExtentKind::Data,
            depth: 2
        }
    );
    assert_eq!(st[1].depth, 1);
    assert!(
        st.iter()
            .any(|e| e.kind == ExtentKind::Zero && e.offset == 1 << 20 && e.depth == 1)
    );
    img.close().unwrap();
    check_clean(&top);
    assert!(to_raw(&top) == model, "chain reads differ");
    let info = qemu_img_ok(&["info", "--backing-chain", top.to_str().unwrap()]);
    assert!(
        info.contains("full/disk.qcow2") && info.contains("backing file format: qcow2"),
        "{info}"
    );

    // rebase onto a copy of the base (safe mode compares contents), then commit into it.
    let base2 = dir.path().join("full/disk2.qcow2");
    qemu_img_ok(&[
        "convert",
        "-O",
        "qcow2",
        base.to_str().unwrap(),
        base2.to_str().unwrap(),
    ]);
    qemu_img_ok(&[
        "rebase",
        "-F",
        "qcow2",
        "-b",
        "../full/disk2.qcow2",
        top.to_str().unwrap(),
    ]);
    check_clean(&top);
    assert!(to_raw(&top) == model);
    qemu_img_ok(&["commit", top.to_str().unwrap()]);
    check_clean(&base2);
    assert!(to_raw(&base2) == model);
    // Our reader follows the rebased chain too.
    let img = Image::open(&top, &ro()).unwrap();
    let mut got = vec![0u8; size as usize];
    img.read_at(0, &mut got).unwrap();
    assert!(got == model);
}

#[test]
fn open_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.qcow2");
    create(&p, 1 << 20, 65536, None);
    // Exists already.
    let e = Image::create(
        &p,
        &CreateOptions {
            size: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_eq!(e.kind(), qcow2::ErrorKind::InvalidArgument);
    let set_bits = |bits: u64| {
        let mut b = std::fs::read(&p).unwrap();
        b[72..80].copy_from_slice(&bits.to_be_bytes());
        std::fs::write(&p, &b).unwrap();
    };
    set_bits(1 << 40);
    assert_eq!(
        Image::open(&p, &ro()).err().unwrap().kind(),
        qcow2::ErrorKind::Unsupported
    );
    set_bits(1); // dirty: readable, not writable
    assert!(Image::open(&p, &ro()).is_ok());
    assert!(Image::open(&p, &rw()).is_err());
    set_bits(2); // corrupt
    assert!(Image::open(&p, &rw()).is_err());
    set_bits(0);
    let first = Image::open(&p, &rw()).unwrap();
    // A second writer is refused while the first holds the image.
    assert_eq!(
        Image::open(&p, &rw()).err().unwrap().kind(),
        qcow2::ErrorKind::Busy
    );
    // So is a reader (qemu's locks: a reader does not share "write").
    assert_eq!(
        Image::open(&p, &ro()).err().unwrap().kind(),
        qcow2::ErrorKind::Busy
    );
    first.close().unwrap();
    assert!(Image::open(&p, &ro()).is_ok());
    // A loop: a -> b -> a.
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.qcow2");
    create(&a, 1 << 20, 65536, None);
    create(&b, 1 << 20, 65536, Some(&a));
    qemu_img_ok(&[
        "rebase",
        "-u",
        "-F",
        "qcow2",
        "-b",
        "b.qcow2",
        a.to_str().unwrap(),
    ]);
    let e = Image::open(&b, &ro()).err().unwrap();
    assert!(e.message.contains("loop"), "{e}");
    // Depth limit.
    let e = Image::open(
        &b,
        &OpenOptions {
            max_chain_depth: 0,
            ..ro()
        },
    )
    .err()
    .unwrap();
    assert!(e.message.contains("deeper"), "{e}");
    // Backing not opened: unallocated reads fail instead of inventing zeros.
    let img = Image::open(&b, &OpenOptions::default()).unwrap();
    assert!(img.read_at(0, &mut [0u8; 512]).is_err());
}

#[test]
fn qemu_images_with_other_refcount_widths_are_writable() {
    let dir = tempfile::tempdir().unwrap();
    for bits in ["1", "8", "64"] {
        let p = dir.path().join(format!("rc{bits}.qcow2"));
        qemu_img_ok(&[
            "create",
            "-f",
            "qcow2",
            "-o",
            &format!("refcount_bits={bits}"),
            p.to_str().unwrap(),
            "8M",
        ]);
        qemu_io(&p, "write -P 3 0 1M");
        let img = Image::open(&p, &rw()).unwrap();
        img.write_at(3 << 20, &[4u8; 300_000]).unwrap();
        img.write_at(500_000, &[5u8; 1000]).unwrap();
        img.discard(0, 256 << 10).unwrap();
        img.close().unwrap();
        check_clean(&p);
        let raw = to_raw(&p);
        assert!(raw[..256 << 10].iter().all(|&b| b == 0));
        assert!(raw[256 << 10..500_000].iter().all(|&b| b == 3));
        assert!(raw[500_000..501_000].iter().all(|&b| b == 5));
        assert!(raw[3 << 20..(3 << 20) + 300_000].iter().all(|&b| b == 4));
    }
}

#[test]
fn concurrent_mixed_operations_on_shared_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    let size: u64 = 6 << 20;
    create(&base, size, 65536, None);
    {
        let img = Image::open(&base, &rw()).unwrap();
        img.write_at(0, &vec![0x77u8; size as usize]).unwrap();
        img.close().unwrap();
    }
    create(&top, size, 4096, Some(&base));
    // Small cache so tables get evicted and written back while others are in flight.
    let img = Image::open(
        &top,
        &OpenOptions {
            l2_cache_bytes: 0,
            ..rw()
        },
    )
    .unwrap();
    let threads = 4u64;
    // Regions deliberately not cluster aligned: neighbours share clusters at the boundaries.
    let region = size / threads - 1000;
    let models: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let img = &img;
                s.spawn(move || {
                    let start = t * (size / threads) + 500;
                    let mut model = vec![0x77u8; region as usize];
                    let mut rng = StdRng::seed_from_u64(100 + t);
                    for _ in 0..300 {
                        let len = rng.random_range(1..=20_000u64).min(region);
                        let off = rng.random_range(0..=region - len);
                        let (o, l) = (off as usize, len as usize);
                        match rng.random_range(0..10) {
                            0..=5 => {
                                let b: u8 = rng.random();
                                img.write_at(start + off, &vec![b; l]).unwrap();
                                model[o..o + l].fill(b);
                            }
                            6 => {
                                img.write_zeroes(start + off, len, rng.random_bool(0.5))
                                    .unwrap();
                                model[o..o + l].fill(0);
                            }
                            7 => img.flush().unwrap(),
                            _ => {
                                let mut got = vec![0u8; l];
                                img.read_at(start + off, &mut got).unwrap();
                                assert!(got == model[o..o + l], "thread {t} read at {off}+{len}");
                            }
                        }
                    }
                    model
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    img.close().unwrap();
    check_clean(&top);
    let raw = to_raw(&top);
    for (t, model) in models.iter().enumerate() {
        let start = t * (size / threads) as usize + 500;
        assert!(raw[start..start + model.len()] == model[..], "region {t}");
    }
}

#[test]
fn raw_backing_file() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let top = dir.path().join("top.qcow2");
    let mut model: Vec<u8> = (0..3u32 << 20).map(|i| (i / 4096) as u8).collect();
    std::fs::write(&base, &model).unwrap();
    Image::create(
        &top,
        &CreateOptions {
            size: 4 << 20,
            backing_file: Some(base.clone()),
            backing_format: Some("raw".into()),
            ..Default::default()
        },
    )
    .unwrap();
    model.resize(4 << 20, 0);
    let img = Image::open(&top, &rw()).unwrap();
    img.write_at(10_000, &[0xfe; 100]).unwrap();
    model[10_000..10_100].fill(0xfe);
    img.write_zeroes(1 << 20, 200_000, true).unwrap();
    model[1 << 20..(1 << 20) + 200_000].fill(0);
    img.write_at((3 << 20) - 50, &[0xfd; 100]).unwrap();
    model[(3 << 20) - 50..(3 << 20) + 50].fill(0xfd);
    let chain = img.info_chain();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0].backing_format.as_deref(), Some("raw"));
    img.close().unwrap();
    check_clean(&top);
    assert!(to_raw(&top) == model);
    let info = qemu_img_ok(&["info", "--backing-chain", top.to_str().unwrap()]);
    assert!(info.contains("backing file format: raw"), "{info}");
}
