//! Chain merge (`qcow2::merge`) against qemu: chains made by qemu-img/qemu-io and by this crate,
//! merged at the bottom (the full) and in the middle; afterwards the merged child compares equal
//! (`qemu-img compare`) to a raw copy of it taken before, checks clean, its chain is one shorter
//! and its own child still reads byte-exact. Then idempotence, cancellation, the refusals, and a
//! full filesystem.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use qcow2::merge::{self, MergeOptions};
use qcow2::{CreateOptions, ErrorKind, Image, OpenOptions};

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn qemu_create(img: &Path, size: &str, backing: Option<&Path>) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if let Some(b) = backing {
        args.extend(["-b", s(b), "-F", "qcow2"]);
    }
    args.extend([s(img), size]);
    qemu_img_ok(&args);
}

/// A raw copy of what `img` (with its chain) reads now.
fn snapshot(img: &Path) -> PathBuf {
    let raw = img.with_extension("before.raw");
    qemu_img_ok(&["convert", "-O", "raw", s(img), s(&raw)]);
    raw
}

fn compare(raw: &Path, img: &Path) {
    qemu_img_ok(&["compare", "-f", "raw", "-F", "qcow2", s(raw), s(img)]);
}

/// The file names of `img`'s backing chain as qemu sees it, top first.
fn chain_of(img: &Path) -> Vec<String> {
    let text = qemu_img_ok(&["info", "--backing-chain", "--output=json", s(img)]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i["filename"].as_str().unwrap().to_owned())
        .collect()
}

/// F (data) <- Y (data over F, zero writes over F's data, a discard, data past F's) <- Z; merge
/// the full F into Y.
#[test]
fn bottom_merge_of_a_qemu_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (f, y, z) = (
        dir.path().join("f.qcow2"),
        dir.path().join("y.qcow2"),
        dir.path().join("z.qcow2"),
    );
    qemu_create(&f, "64M", None);
    qemu_io(&f, "write -P 0x11 0 8M");
    qemu_io(&f, "write -P 0x12 20M 3M");
    qemu_io(&f, "write -P 0x13 63M 1M");
    qemu_create(&y, "64M", Some(&f));
    qemu_io(&y, "write -P 0xab 1M 64k");
    qemu_io(&y, "write -P 0xac 1056k 3k");
    qemu_io(&y, "write -z 2M 1M");
    qemu_io(&y, "write -z 4M 100k");
    qemu_io(&y, "discard 20M 1M");
    qemu_io(&y, "write -P 0xad 40M 2M");
    qemu_io(&y, "write -P 0xae 63M 512");
    qemu_create(&z, "64M", Some(&y));
    qemu_io(&z, "write -P 0xcd 2M 64k");
    let (y_before, z_before) = (snapshot(&y), snapshot(&z));

    let report = merge::merge_into_child(&y, &MergeOptions::default()).unwrap();
    assert_eq!(report.parent, f);
    assert!(report.bytes_written >= 2 * MIB + 64 * 1024, "{report:?}");
    assert!(report.zeroed_bytes >= MIB, "{report:?}");

    assert!(!f.exists(), "the parent's path is gone");
    compare(&y_before, &y);
    compare(&z_before, &z);
    check_clean(&y);
    assert_eq!(chain_of(&z).len(), 2, "{:?}", chain_of(&z));
    assert_eq!(chain_of(&y).len(), 1);
    // Y's zero clusters over F's data read as zeros in the merged image.
    qemu_io(&y, "read -P 0 2M 1M");
    qemu_io(&y, "read -P 0 4M 100k");
    qemu_io(&y, "read -P 0x11 4196k 100k");
}

fn create(path: &Path, size: u64, cluster_size: u32, backing: Option<&Path>) {
    Image::create(
        path,
        &CreateOptions {
            size,
            cluster_size,
            backing_file: backing.map(Path::to_path_buf),
            ..Default::default()
        },
    )
    .unwrap();
}

fn writable(path: &Path) -> Image {
    Image::open(
        path,
        &OpenOptions {
            writable: true,
            open_backing: true,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Writes `pieces` runs of a pattern derived from `seed`, plus zero writes, into `path`.
fn scribble(path: &Path, seed: u8, pieces: &[(u64, u64)], zeros: &[(u64, u64)]) {
    let img = writable(path);
    for (i, &(off, len)) in pieces.iter().enumerate() {
        let buf: Vec<u8> = (0..len)
            .map(|b| seed.wrapping_add(i as u8).wrapping_mul(7) ^ (b as u8) | 1)
            .collect();
        img.write_at(off, &buf).unwrap();
    }
    for &(off, len) in zeros {
        img.write_zeroes(off, len, false).unwrap();
    }
    img.close().unwrap();
}

/// F <- I1 <- I2 <- I3 made by this crate, in one directory per backup like the hub's repository,
/// with cluster sizes that differ between parent and child both ways; merge I1 (middle) into I2.
#[test]
fn middle_merge_of_our_chain_with_mixed_cluster_sizes() {
    for (x_cluster, y_cluster) in [(65536, 4096), (4096, 65536), (65536, 65536)] {
        let dir = tempfile::tempdir().unwrap();
        let p = |b: &str| {
            std::fs::create_dir_all(dir.path().join(b)).unwrap();
            dir.path().join(b).join("disk0.qcow2")
        };
        let (f, i1, i2, i3) = (p("full"), p("inc1"), p("inc2"), p("inc3"));
        let size = 32 * MIB + 12_800;
        create(&f, size, 65536, None);
        scribble(&f, 1, &[(0, 32 * MIB)], &[]);
        create(&i1, size, x_cluster, Some(&f));
        scribble(&i1, 2, &[(3 * MIB, 5 * MIB), (30 * MIB, 100_000)], &[]);
        create(&i2, size, y_cluster, Some(&i1));
        scribble(
            &i2,
            3,
            &[
                (4 * MIB + 1000, 70_000),
                (10 * MIB, MIB),
                (size - 5000, 5000),
            ],
            &[
                (5 * MIB, 2 * MIB),
                (20 * MIB + 512, 3000),
                (31 * MIB, 128 * 1024),
            ],
        );
        create(&i3, size, 65536, Some(&i2));
        scribble(&i3, 4, &[(5 * MIB + 4096, 8192)], &[]);
        let (i2_before, i3_before) = (snapshot(&i2), snapshot(&i3));

        let opts = MergeOptions {
            backing_dir: Some(dir.path().to_path_buf()),
            no_symlinks: true,
            expect_parent: Some(i1.clone()),
            ..Default::default()
        };
        let report = merge::merge_into_child(&i2, &opts).unwrap();
        assert_eq!(report.parent, i1);
        assert!(!i1.exists());
        compare(&i2_before, &i2);
        compare(&i3_before, &i3);
        check_clean(&i2);
        check_clean(&f);
        assert_eq!(chain_of(&i3).len(), 3, "{x_cluster}/{y_cluster}");
        // Our reader agrees with qemu's on the merged chain.
        let img = Image::open(
            &i3,
            &OpenOptions {
                open_backing: true,
                ..Default::default()
            },
        )
        .unwrap();
        let mut got = vec![0u8; size as usize];
        img.read_at(0, &mut got).unwrap();
        assert!(got == std::fs::read(&i3_before).unwrap());
    }
}

/// Re-committing is harmless: commit, commit again, then replace.
#[test]
fn commit_twice_then_replace() {
    let dir = tempfile::tempdir().unwrap();
    let (f, y) = (dir.path().join("f.qcow2"), dir.path().join("y.qcow2"));
    qemu_create(&f, "16M", None);
    qemu_io(&f, "write -P 0x21 0 16M");
    qemu_create(&y, "16M", Some(&f));
    qemu_io(&y, "write -P 0x22 1M 1M");
    qemu_io(&y, "write -z 4M 2M");
    let before = snapshot(&y);
    let first = merge::commit_to_backing(&y, &MergeOptions::default()).unwrap();
    // Between the steps the child still reads as before through its (committed) parent.
    compare(&before, &y);
    check_clean(&f);
    let second = merge::commit_to_backing(&y, &MergeOptions::default()).unwrap();
    assert_eq!(first, second);
    compare(&before, &y);
    check_clean(&f);
    merge::replace_child_with_backing(&first.parent, &y).unwrap();
    compare(&before, &y);
    check_clean(&y);
    // Replacing again finds no parent any more: the merge is done.
    let again = merge::replace_child_with_backing(&first.parent, &y).unwrap_err();
    assert_eq!(again.kind(), ErrorKind::Io, "{again}");
}

/// A cancelled commit stops with `Cancelled`, the child unchanged and the parent consistent; the
/// next merge finishes. Progress counts up to the work announced.
#[test]
fn cancel_and_progress() {
    let dir = tempfile::tempdir().unwrap();
    let (f, y) = (dir.path().join("f.qcow2"), dir.path().join("y.qcow2"));
    create(&f, 64 * MIB, 65536, None);
    scribble(&f, 5, &[(0, 64 * MIB)], &[]);
    create(&y, 64 * MIB, 65536, Some(&f));
    scribble(&y, 6, &[(0, 40 * MIB)], &[(50 * MIB, MIB)]);
    let before = snapshot(&y);
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let opts = MergeOptions {
        cancel: Some(cancel.clone()),
        progress: Some(Arc::new(move |done, _| {
            if done >= 8 * MIB {
                flag.store(true, Ordering::Relaxed);
            }
        })),
        ..Default::default()
    };
    let err = merge::merge_into_child(&y, &opts).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(f.exists());
    compare(&before, &y);
    check_clean(&f);

    let seen = Arc::new(Seen::default());
    let seen2 = seen.clone();
    let opts = MergeOptions {
        progress: Some(Arc::new(move |done, total| seen2.record(done, total))),
        ..Default::default()
    };
    merge::merge_into_child(&y, &opts).unwrap();
    let (last, total, calls) = seen.get();
    assert_eq!(last, total);
    assert_eq!(total, 41 * MIB);
    assert!(calls >= 5, "{calls} progress calls");
    compare(&before, &y);
    check_clean(&y);
}

/// The last (done, total) and how many calls, checked to grow monotonically.
#[derive(Default)]
struct Seen(std::sync::Mutex<(u64, u64, u64)>);

impl Seen {
    fn record(&self, done: u64, total: u64) {
        let mut s = self.0.lock().unwrap();
        assert!(
            done >= s.0 && done <= total,
            "{done} after {} of {total}",
            s.0
        );
        *s = (done, total, s.2 + 1);
    }

    fn get(&self) -> (u64, u64, u64) {
        *self.0.lock().unwrap()
    }
}

/// Bytes of every file in `dir` (names sorted), to prove a refusal changed nothing.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn refused(child: &Path, opts: &MergeOptions, kind: ErrorKind, needle: &str) {
    let dir = child.parent().unwrap();
    let before = files(dir);
    let err = merge::merge_into_child(child, opts).unwrap_err();
    assert_eq!(err.kind(), kind, "{err}");
    assert!(err.message.contains(needle), "{err}");
    assert!(files(dir) == before, "a refusal changed a file: {err}");
}

#[test]
fn refusals_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (f, y, other) = (d.join("f.qcow2"), d.join("y.qcow2"), d.join("o.qcow2"));
    qemu_create(&f, "8M", None);
    qemu_io(&f, "write -P 0x31 0 1M");
    qemu_create(&y, "8M", Some(&f));
    qemu_io(&y, "write -P 0x32 0 64k");
    qemu_create(&other, "8M", None);

    // The caller expected another parent.
    let expect = MergeOptions {
        expect_parent: Some(other.clone()),
        ..Default::default()
    };
    refused(&y, &expect, ErrorKind::InvalidArgument, "not");
    let err = merge::replace_child_with_backing(&other, &y).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(other.exists() && f.exists());

    // The parent is open elsewhere (a restore reading it).
    let held = Image::open(&f, &OpenOptions::default()).unwrap();
    refused(&y, &MergeOptions::default(), ErrorKind::Busy, "lock");
    drop(held);

    // No backing file at all.
    refused(
        &f,
        &MergeOptions::default(),
        ErrorKind::InvalidArgument,
        "no backing",
    );

    // Different virtual sizes.
    let big = d.join("big.qcow2");
    qemu_create(&big, "16M", Some(&f));
    refused(
        &big,
        &MergeOptions::default(),
        ErrorKind::Unsupported,
        "sizes",
    );
    std::fs::remove_file(&big).unwrap();

    // A parent reached through a symlink, with no_symlinks; and outside backing_dir.
    let link = d.join("link.qcow2");
    std::os::unix::fs::symlink(&f, &link).unwrap();
    let via_link = d.join("via.qcow2");
    qemu_create(&via_link, "8M", Some(&link));
    let strict = MergeOptions {
        no_symlinks: true,
        ..Default::default()
    };
    refused(&via_link, &strict, ErrorKind::Refused, "symlink");
    std::fs::remove_file(&via_link).unwrap();
    let inner = d.join("inner");
    std::fs::create_dir(&inner).unwrap();
    let inner_child = inner.join("c.qcow2");
    qemu_create(&inner_child, "8M", Some(&f));
    let confined = MergeOptions {
        backing_dir: Some(inner.clone()),
        ..Default::default()
    };
    refused(&inner_child, &confined, ErrorKind::Refused, "outside");
    std::fs::remove_file(&inner_child).unwrap();
    std::fs::remove_file(&link).unwrap();

    // A parent naming its backing file relative to its directory, which the child's directory
    // would resolve to another file.
    let sub = d.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let mid = sub.join("mid.qcow2");
    qemu_img_ok(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "../f.qcow2",
        "-F",
        "qcow2",
        s(&mid),
        "8M",
    ]);
    let top = d.join("top.qcow2");
    qemu_create(&top, "8M", Some(&mid));
    refused(
        &top,
        &MergeOptions::default(),
        ErrorKind::Unsupported,
        "relative",
    );

    // Nothing above broke the chain.
    check_clean(&f);
    compare(&snapshot(&y), &y);
    merge::merge_into_child(&y, &MergeOptions::default()).unwrap();
    check_clean(&y);
}

/// With the filesystem full the commit fails with `NoSpace`, the child reads as before, the
/// parent stays consistent, and the merge finishes once there is room. Needs root (a small tmpfs).
#[test]
fn disk_full_is_no_space_and_retry_finishes() {
    // SAFETY: geteuid has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping disk_full_is_no_space_and_retry_finishes: needs root to mount a tmpfs");
        return;
    }
    let mnt = tempfile::tempdir().unwrap();
    let m = mnt.path();
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs", s(m)])
        .output()
        .unwrap();
    assert!(out.status.success(), "mount: {out:?}");
    let _unmount = Unmount(m.to_path_buf());
    let (f, y) = (m.join("f.qcow2"), m.join("y.qcow2"));
    qemu_create(&f, "32M", None);
    qemu_io(&f, "write -P 0x41 0 4M");
    qemu_create(&y, "32M", Some(&f));
    qemu_io(&y, "write -P 0x42 8M 8M");
    qemu_io(&y, "write -z 0 1M");
    // The rest of the 24 MiB taken but 2 MiB: the commit needs 8 MiB more.
    let fill = m.join("filler");
    let free = free_bytes(m);
    std::fs::write(&fill, vec![1u8; (free - 2 * MIB) as usize]).unwrap();
    let before_y = std::fs::read(&y).unwrap();

    let err = merge::merge_into_child(&y, &MergeOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoSpace, "{err}");
    assert!(f.exists());
    assert!(
        std::fs::read(&y).unwrap() == before_y,
        "the child was changed"
    );
    let (code, text) = qemu_img(&["check", "-f", "qcow2", s(&f)]);
    assert!(code == 0 || code == 3, "parent after ENOSPC: {text}");
    qemu_io(&y, "read -P 0x42 8M 8M");
    qemu_io(&y, "read -P 0x41 1M 3M");

    std::fs::remove_file(&fill).unwrap();
    merge::merge_into_child(&y, &MergeOptions::default()).unwrap();
    assert!(!f.exists());
    let (code, text) = qemu_img(&["check", "-f", "qcow2", s(&y)]);
    assert!(code == 0 || code == 3, "merged after retry: {text}");
    qemu_io(&y, "read -P 0 0 1M");
    qemu_io(&y, "read -P 0x41 1M 3M");
    qemu_io(&y, "read -P 0x42 8M 8M");
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1", s(dir)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}
