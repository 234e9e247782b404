//! Images made by qemu-img / qemu-io read byte-exact against `qemu-img convert -O raw`.

mod common;

use std::path::Path;

use common::*;
use qcow2::{Image, OpenOptions};

fn ro() -> OpenOptions {
    OpenOptions {
        open_backing: true,
        ..Default::default()
    }
}

fn read_all(p: &Path) -> Vec<u8> {
    let img = Image::open(p, &ro()).unwrap();
    let mut v = vec![0u8; img.virtual_size() as usize];
    // Odd-sized pieces exercise runs that start and end inside clusters.
    let mut pos = 0usize;
    let mut step = 3000usize;
    while pos < v.len() {
        let n = step.min(v.len() - pos);
        img.read_at(pos as u64, &mut v[pos..pos + n]).unwrap();
        pos += n;
        step = step * 7 % 200_003 + 511;
    }
    v
}

/// Mixed content: compressible runs, pseudo-random clusters, zeros.
fn source_raw(dir: &Path, size: usize) -> std::path::PathBuf {
    let mut v = vec![0u8; size];
    let mut x = 0x1234_5678u32;
    for (i, chunk) in v.chunks_mut(4096).enumerate() {
        match i % 5 {
            0 => chunk.fill(i as u8),
            1 | 2 => {
                for b in chunk.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    *b = x as u8;
                }
            }
            3 => {}
            _ => {
                for (j, b) in chunk.iter_mut().enumerate() {
                    *b = (j / 16) as u8;
                }
            }
        }
    }
    let p = dir.join("src.raw");
    std::fs::write(&p, &v).unwrap();
    p
}

fn assert_same(p: &Path) {
    let ours = read_all(p);
    let theirs = to_raw(p);
    assert_eq!(ours.len(), theirs.len());
    assert!(
        ours == theirs,
        "{} reads differ from qemu-img convert",
        p.display()
    );
}

#[test]
fn compressed_deflate_and_zstd() {
    let dir = tempfile::tempdir().unwrap();
    let src = source_raw(dir.path(), 3 << 20);
    for (name, opts) in [
        ("d.qcow2", "compression_type=zlib"),
        ("z.qcow2", "compression_type=zstd"),
    ] {
        let p = dir.path().join(name);
        qemu_img_ok(&[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            opts,
            src.to_str().unwrap(),
            p.to_str().unwrap(),
        ]);
        assert_same(&p);
        // Writing into compressed clusters: copy-on-write from the decompressed cluster.
        let img = Image::open(
            &p,
            &OpenOptions {
                writable: true,
                ..ro()
            },
        )
        .unwrap();
        img.write_at(70_000, &[0xee; 1000]).unwrap();
        img.write_zeroes(200_000, 300_000, true).unwrap();
        img.close().unwrap();
        let mut want = std::fs::read(&src).unwrap();
        want[70_000..71_000].fill(0xee);
        want[200_000..500_000].fill(0);
        check_clean(&p);
        assert!(read_all(&p) == want);
        assert!(to_raw(&p) == want);
    }
}

#[test]
fn extended_l2_subclusters() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let p = dir.path().join("e.qcow2");
    qemu_img_ok(&["create", "-f", "qcow2", base.to_str().unwrap(), "4M"]);
    qemu_io(&base, "write -P 0x55 0 4M");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on,cluster_size=64k",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        p.to_str().unwrap(),
    ]);
    qemu_io(&p, "write -P 0x11 2k 3k");
    qemu_io(&p, "write -P 0x22 70k 10k");
    qemu_io(&p, "write -z 130k 8k");
    qemu_io(&p, "write -P 0x33 1M 64k");
    qemu_io(&p, "write -z 1M 4k");
    assert_same(&p);
    let img = Image::open(&p, &ro()).unwrap();
    let st = img.block_status(0, 4 << 20).unwrap();
    assert!(st.iter().any(|e| e.depth == 2) && st.iter().any(|e| e.depth == 1));
}

#[test]
fn chain_of_three_with_zero_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.qcow2");
    let b = dir.path().join("b.qcow2");
    let c = dir.path().join("c.qcow2");
    qemu_img_ok(&["create", "-f", "qcow2", a.to_str().unwrap(), "2M"]);
    qemu_io(&a, "write -P 0xaa 0 2M");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "a.qcow2",
        "-F",
        "qcow2",
        b.to_str().unwrap(),
    ]);
    qemu_io(&b, "write -z 64k 128k");
    qemu_io(&b, "write -P 0xbb 512k 100k");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "b.qcow2",
        "-F",
        "qcow2",
        c.to_str().unwrap(),
        "3M",
    ]);
    qemu_io(&c, "write -z 600k 64k");
    qemu_io(&c, "write -P 0xcc 1000k 3k");
    qemu_io(&c, "write -P 0xdd 2500k 8k");
    assert_same(&c);
    let img = Image::open(&c, &ro()).unwrap();
    let st = img.block_status(0, 3 << 20).unwrap();
    let depth_at = |off: u64| {
        st.iter()
            .find(|e| e.offset <= off && off < e.offset + e.length)
            .unwrap()
    };
    assert_eq!(depth_at(0).depth, 3);
    assert_eq!(depth_at(70_000).kind, qcow2::ExtentKind::Zero);
    assert_eq!(depth_at(70_000).depth, 2);
    assert_eq!(depth_at(2200 << 10).kind, qcow2::ExtentKind::Unallocated);
    // Beyond the base's end (2M) but below ours (3M): zeros from nowhere.
    assert_eq!(img.info_chain().len(), 3);
}

#[test]
fn small_and_large_clusters() {
    let dir = tempfile::tempdir().unwrap();
    for cs in ["512", "2M"] {
        let p = dir.path().join(format!("c{cs}.qcow2"));
        qemu_img_ok(&[
            "create",
            "-f",
            "qcow2",
            "-o",
            &format!("cluster_size={cs}"),
            p.to_str().unwrap(),
            "5M",
        ]);
        qemu_io(&p, "write -P 0x1 1000 70000");
        qemu_io(&p, "write -P 0x2 2M 1M");
        qemu_io(&p, "write -z 2200k 10k");
        qemu_io(&p, "discard 4M 512k");
        qemu_io(&p, "write -P 0x3 5119k 1k");
        assert_same(&p);
    }
}

#[test]
fn sparse_1tib() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.qcow2");
    qemu_img_ok(&["create", "-f", "qcow2", p.to_str().unwrap(), "1T"]);
    let spots: [(u64, u8); 3] = [(0, 1), (512 << 30, 2), ((1 << 40) - 8192, 3)];
    for (off, pat) in spots {
        qemu_io(&p, &format!("write -P {pat} {off} 8k"));
    }
    let img = Image::open(&p, &ro()).unwrap();
    assert_eq!(img.virtual_size(), 1 << 40);
    for (off, pat) in spots {
        let mut b = vec![0u8; 16384];
        let start = off.saturating_sub(4096).min((1 << 40) - 16384);
        img.read_at(start, &mut b).unwrap();
        for (i, &x) in b.iter().enumerate() {
            let g = start + i as u64;
            let want = if g >= off && g < off + 8192 { pat } else { 0 };
            assert_eq!(x, want, "offset {g}");
        }
    }
    let st = img.block_status(0, 1 << 40).unwrap();
    let data: Vec<_> = st
        .iter()
        .filter(|e| e.kind == qcow2::ExtentKind::Data)
        .collect();
    assert_eq!(data.len(), 3, "{st:?}");
    // Compare against qemu's raw conversion at the allocated spots.
    let raw = dir.path().join("big.raw");
    qemu_img_ok(&[
        "convert",
        "-O",
        "raw",
        p.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    let f = std::fs::File::open(&raw).unwrap();
    for (off, _) in spots {
        let mut theirs = vec![0u8; 8192];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut theirs, off).unwrap();
        let mut ours = vec![0u8; 8192];
        img.read_at(off, &mut ours).unwrap();
        assert_eq!(ours, theirs);
    }
}

#[test]
fn version_2_images() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("b.qcow2");
    let p = dir.path().join("v2.qcow2");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        base.to_str().unwrap(),
        "2M",
    ]);
    qemu_io(&base, "write -P 7 0 1M");
    qemu_img_ok(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        "-b",
        "b.qcow2",
        "-F",
        "qcow2",
        p.to_str().unwrap(),
    ]);
    qemu_io(&p, "write -P 8 100k 200k");
    assert_same(&p);
    let img = Image::open(&p, &ro()).unwrap();
    assert_eq!(img.info_chain()[0].backing_format.as_deref(), Some("qcow2"));
    // A reader's lock keeps writers out, as qemu's does.
    drop(img);
    let e = Image::open(
        &p,
        &OpenOptions {
            writable: true,
            ..ro()
        },
    )
    .err()
    .unwrap();
    assert_eq!(e.kind(), qcow2::ErrorKind::Unsupported);
}
