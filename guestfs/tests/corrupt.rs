//! Damaged images: every one must end in an `Err`, never a panic or a hang.

mod common;

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use guestfs::{EntryKind, Error, Filesystem, ReadAt, detect, probe};

/// An image in memory with one byte replaced, without copying 64 MiB per mutation.
struct Mutated {
    base: Arc<Vec<u8>>,
    at: u64,
    byte: u8,
}

impl ReadAt for Mutated {
    fn size(&self) -> u64 {
        self.base.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> guestfs::Result<()> {
        self.base.read_at(buf, offset)?;
        if (offset..offset + buf.len() as u64).contains(&self.at) {
            buf[(self.at - offset) as usize] = self.byte;
        }
        Ok(())
    }
}

/// Lists what is reachable and reads the first part of each file; counts errors. At most
/// `MAX_OPS` lists and opens: a damaged directory that loops back on itself is bounded by the
/// backend (a few MiB of reads each time, `Corrupt` after), but a walk that met it in every
/// directory it lists would still take minutes in a debug build.
fn walk(fs: &dyn Filesystem) -> usize {
    const MAX_OPS: usize = 120;
    let mut errors = 0;
    let mut todo = vec!["/".to_owned()];
    let mut ops = 0;
    while let Some(dir) = todo.pop() {
        ops += 1;
        if ops > MAX_OPS {
            break;
        }
        let entries = match fs.list(&dir) {
            Ok(e) => e,
            Err(_) => {
                errors += 1;
                continue;
            }
        };
        for e in entries.into_iter().take(100) {
            ops += 1;
            if ops > MAX_OPS {
                break;
            }
            match e.kind {
                EntryKind::Directory => todo.push(e.path),
                EntryKind::File | EntryKind::Symlink => {
                    let mut buf = vec![0u8; 16 * 1024];
                    match fs.open(&e.path) {
                        Ok(mut r) => {
                            for _ in 0..8 {
                                match r.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(_) => {}
                                    Err(_) => {
                                        errors += 1;
                                        break;
                                    }
                                }
                            }
                        }
                        Err(_) => errors += 1,
                    }
                }
                EntryKind::Other => {}
            }
        }
    }
    errors
}

/// A small LCG: deterministic, so a failure can be replayed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// Flips `rounds` metadata bytes (nonzero bytes in the first `span` bytes, where superblock,
/// descriptors, inode tables and directories live) one at a time, mounting and walking each.
/// `skip` leaves out bytes nothing parses (boot code). File contents are zeros in these trees,
/// so they are not "hot" either and the damage lands on metadata.
fn mutate_and_walk(
    image: &Path,
    span: usize,
    rounds: usize,
    seed: u64,
    skip: &dyn Fn(usize) -> bool,
) {
    let base = Arc::new(fs::read(image).unwrap());
    let hot: Vec<usize> = base[..span.min(base.len())]
        .iter()
        .enumerate()
        .filter(|(i, b)| **b != 0 && !skip(*i))
        .map(|(i, _)| i)
        .collect();
    assert!(!hot.is_empty());
    let baseline = walk(&*probe(base.clone()).unwrap());
    let mut rng = Lcg(seed);
    let (mut panics, mut refused, mut changed) = (Vec::new(), 0, 0);
    for _ in 0..rounds {
        let at = hot[rng.next() as usize % hot.len()] as u64;
        let byte = base[at as usize] ^ (1 + (rng.next() % 255) as u8);
        let m: Arc<dyn ReadAt> = Arc::new(Mutated {
            base: base.clone(),
            at,
            byte,
        });
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let _ = detect(&*m);
            match probe(m.clone()) {
                Ok(fs) => walk(&*fs),
                Err(_) => usize::MAX,
            }
        }));
        match outcome {
            Ok(usize::MAX) => refused += 1,
            Ok(n) if n != baseline => changed += 1,
            Ok(_) => {}
            Err(_) => panics.push((at, byte)),
        }
    }
    eprintln!(
        "{}: {} metadata bytes, {rounds} mutations: {refused} refused at mount, {changed} more or fewer errors walking",
        image.display(),
        hot.len()
    );
    assert!(panics.is_empty(), "panicked on (offset, byte): {panics:?}");
}

#[test]
fn ext4_truncated_to_half_errors_on_what_is_missing() {
    require!("mke2fs" from "e2fsprogs");
    let dir = tempfile::tempdir().unwrap();
    let img = common::make_ext4(dir.path(), "64M");
    let mut data = fs::read(&img).unwrap();
    data.truncate(data.len() / 2);
    match probe(Arc::new(data)) {
        Err(e) => eprintln!("refused at mount: {e}"),
        Ok(fs) => {
            let mut failures = 0;
            for p in ["/big.bin", "/hello.txt", "/a/b/c/deep.txt", "/etc/passwd"] {
                if let Err(e) = common::read_all(&*fs, p) {
                    eprintln!("{p}: {e}");
                    failures += 1;
                }
            }
            assert!(
                failures > 0 || walk(&*fs) > 0,
                "half an image read without one error"
            );
        }
    }
}

#[test]
fn ext4_damaged_superblock_is_an_error() {
    require!("mke2fs" from "e2fsprogs");
    let dir = tempfile::tempdir().unwrap();
    let img = common::make_ext4(dir.path(), "64M");
    let base = fs::read(&img).unwrap();
    // Block size shift, inode count, blocks per group, the checksum itself.
    for (at, byte) in [
        (1024 + 24, 0xFF),
        (1024, 0xFF),
        (1024 + 33, 0x40),
        (1024 + 1020, 0x5A),
    ] {
        let mut d = base.clone();
        d[at] ^= byte;
        let err = probe(Arc::new(d))
            .err()
            .unwrap_or_else(|| panic!("byte {at} = {byte:#x} mounted"));
        eprintln!("byte {at}: {err}");
    }
    // Without its magic it is nothing we know.
    let mut d = base.clone();
    d[1024 + 56] = 0;
    assert!(matches!(probe(Arc::new(d)), Err(Error::UnknownFilesystem)));
    // Too small to hold a superblock at all.
    assert!(probe(Arc::new(base[..1500].to_vec())).is_err());
}

/// Metadata-heavy and content-free: nested dirs, a directory big enough for an htree index,
/// short (inline) and long (block) symlinks, files whose data is zeros.
fn meta_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c/d")).unwrap();
    fs::create_dir_all(root.join("many")).unwrap();
    for i in 0..400 {
        fs::write(
            root.join(format!("many/file-with-a-longish-name-{i:04}")),
            [0u8; 10],
        )
        .unwrap();
    }
    fs::write(root.join("a/b/c/d/zeros"), vec![0u8; 300_000]).unwrap();
    std::os::unix::fs::symlink("/a/b", root.join("short")).unwrap();
    std::os::unix::fs::symlink(format!("/{}", "x/".repeat(60)), root.join("long")).unwrap();
}

fn mke2fs(dir: &Path, kind: &str, extra: &[&str]) -> std::path::PathBuf {
    let src = dir.join(format!("src-{kind}"));
    fs::create_dir_all(&src).unwrap();
    meta_tree(&src);
    let img = dir.join(format!("{kind}.img"));
    common::run(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", kind])
            .args(extra)
            .arg("-d")
            .arg(&src)
            .arg(&img)
            .arg("16M"),
    );
    img
}

#[test]
fn ext4_random_metadata_damage_never_panics() {
    require!("mke2fs" from "e2fsprogs");
    let dir = tempfile::tempdir().unwrap();
    let img = mke2fs(dir.path(), "ext4", &[]);
    mutate_and_walk(&img, 16 << 20, 400, 1, &|_| false);
}

#[test]
fn ext2_without_checksums_random_damage_never_panics() {
    // No metadata checksums: damaged values reach the parser instead of failing a CRC.
    require!("mke2fs" from "e2fsprogs");
    let dir = tempfile::tempdir().unwrap();
    let img = mke2fs(dir.path(), "ext2", &[]);
    mutate_and_walk(&img, 16 << 20, 400, 2, &|_| false);
    let img = mke2fs(dir.path(), "ext4", &["-O", "^metadata_csum,^has_journal"]);
    mutate_and_walk(&img, 16 << 20, 400, 4, &|_| false);
}

#[test]
fn fat_damage_never_panics() {
    require!("mkfs.vfat" from "dosfstools", "mcopy" from "mtools");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("d/e")).unwrap();
    fs::write(src.join("d/e/f.txt"), [0u8; 9000]).unwrap();
    fs::write(src.join("A long name.txt"), [0u8; 100]).unwrap();
    for i in 0..40 {
        fs::write(src.join(format!("d/Another long name {i}.dat")), [0u8; 700]).unwrap();
    }
    for fat in ["12", "16", "32"] {
        let img = dir.path().join(format!("fat{fat}.img"));
        let kib = match fat {
            "12" => "8000",
            "16" => "32768",
            _ => "65536",
        };
        common::run(
            Command::new("mkfs.vfat")
                .args(["-C", "-F", fat])
                .arg(&img)
                .arg(kib),
        );
        common::run(
            Command::new("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .args(["-s", "-i"])
                .arg(&img)
                .arg(src.join("d"))
                .arg(src.join("A long name.txt"))
                .arg("::/"),
        );
        // Boot code (and FAT32's backup boot sector) is never parsed.
        let boot_code = |i: usize| (90..510).contains(&i) || (6 * 512..7 * 512).contains(&i);
        mutate_and_walk(&img, 1 << 20, 300, 3, &boot_code);
        // Half a FAT32 volume.
        let mut d = fs::read(&img).unwrap();
        d.truncate(d.len() / 2);
        let _ = probe(Arc::new(d)).map(|fs| walk(&*fs));
    }
}

#[test]
fn ntfs_damage_never_panics() {
    require!("mkntfs" from "ntfs-3g", "ntfscp" from "ntfs-3g");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ntfs.img");
    fs::File::create(&img).unwrap().set_len(4 << 20).unwrap();
    common::run(Command::new("mkntfs").args(["-F", "-Q", "-q"]).arg(&img));
    // Enough names that the root's index outgrows its record into an index allocation (a
    // B-tree), files resident and not; their content is zeros, so the damage lands on
    // metadata.
    let (small, large) = (dir.path().join("small"), dir.path().join("large"));
    fs::write(&small, [0u8; 100]).unwrap();
    fs::write(&large, [0u8; 9000]).unwrap();
    for i in 0..60 {
        let src = if i % 2 == 0 { &small } else { &large };
        common::run(
            Command::new("ntfscp")
                .arg("-q")
                .arg(&img)
                .arg(src)
                .arg(format!("A long file name number {i}.dat")),
        );
    }
    assert_eq!(
        probe(common::open(&img)).unwrap().list("/").unwrap().len(),
        60
    );
    // Left alone: boot code, and what no read of a file or directory parses ($LogFile,
    // filled with 0xFF, and $UpCase, 128 KiB counting up from 0, 1, 2 as u16s), so the
    // mutations land on the MFT, the index records and the bitmaps.
    let d = fs::read(&img).unwrap();
    let upcase_at = d
        .windows(10)
        .position(|w| w == [0, 0, 1, 0, 2, 0, 3, 0, 4, 0])
        .unwrap();
    let upcase = upcase_at..upcase_at + (128 << 10);
    let cold = |i: usize| (0x54..510).contains(&i) || d[i] == 0xFF || upcase.contains(&i);
    mutate_and_walk(&img, 4 << 20, 400, 5, &cold);
    let mut half = d.clone();
    half.truncate(d.len() / 2);
    let _ = probe(Arc::new(half)).map(|fs| walk(&*fs));
}

/// `mkfs.xfs -p` of [`meta_tree`], 64 MiB in 3 AGs (below the 300 MiB mkfs otherwise
/// insists on, allowed when fstests' variables are set), v5 (CRCs) or v4 (none, so damage
/// reaches every parser instead of stopping at a checksum).
fn mkfs_xfs(dir: &Path, crc: bool) -> std::path::PathBuf {
    let src = dir.join(format!("src-xfs-{crc}"));
    fs::create_dir_all(&src).unwrap();
    meta_tree(&src);
    let proto_path = dir.join(format!("proto-{crc}"));
    fs::write(&proto_path, common::xfs_protofile(&src)).unwrap();
    let img = dir.join(format!("xfs-{crc}.img"));
    fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    common::run(
        Command::new("mkfs.xfs")
            .envs([("TEST_DIR", "1"), ("TEST_DEV", "1"), ("QA_CHECK_FS", "1")])
            .args(["-q", "-f", "-d", "agcount=3", "-m"])
            .arg(if crc { "crc=1" } else { "crc=0" })
            .arg("-p")
            .arg(&proto_path)
            .arg(&img),
    );
    img
}

#[test]
fn xfs_damage_never_panics() {
    require!("mkfs.xfs" from "xfsprogs");
    let dir = tempfile::tempdir().unwrap();
    for (crc, seed) in [(true, 7), (false, 8)] {
        let img = mkfs_xfs(dir.path(), crc);
        let fs = probe(common::open(&img)).unwrap();
        assert_eq!(fs.list("/many").unwrap().len(), 400);
        drop(fs);
        // Every AG's headers and inodes, and the log (mutated, it must be refused or
        // replayed, never trusted into a panic).
        mutate_and_walk(&img, 64 << 20, 300, seed, &|_| false);
        let d = fs::read(&img).unwrap();
        let _ = probe(Arc::new(d[..d.len() / 2].to_vec())).map(|fs| walk(&*fs));
    }
}

/// Inputs the `guest_disk` fuzz target found to crash, replayed: each must end in errors, not
/// a panic. `fat-cluster-below-2.bin`: a directory whose cluster chain names cluster 1, for
/// which fatfs computes `cluster - 2` and overflows.
#[test]
fn fuzz_findings_replay_without_a_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-found");
    let mut n = 0;
    for f in fs::read_dir(dir).unwrap() {
        let data = fs::read(f.unwrap().path()).unwrap();
        guestfs::fuzzing::fuzz_one(&data);
        n += 1;
    }
    assert!(n > 0);
}
