//! FAT images made by `mkfs.vfat` and filled by `mcopy` (no mount), read back through guestfs.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use guestfs::{EntryKind, Error, ReadAt, Slice, detect, probe};

fn tree(src: &Path) {
    fs::create_dir_all(src.join("EFI/BOOT")).unwrap();
    fs::create_dir_all(src.join("docs/nested/deeper")).unwrap();
    fs::write(src.join("EFI/BOOT/BOOTX64.EFI"), common::pattern(200_000)).unwrap();
    fs::write(src.join("A long file name.txt"), b"long names survive\n").unwrap();
    fs::write(src.join("docs/nested/deeper/note.md"), b"# note\n").unwrap();
    fs::write(src.join("big.bin"), common::pattern(common::BIG_LEN)).unwrap();
    fs::write(src.join("empty.txt"), b"").unwrap();
}

/// `mkfs.vfat` of `kib` KiB with `fat_bits` (12/16/32), then `mcopy -s` of the tree.
fn make_fat(dir: &Path, kib: u32, fat_bits: &str) -> PathBuf {
    let src = dir.join("src");
    tree(&src);
    let img = dir.join("fat.img");
    common::run(
        Command::new("mkfs.vfat")
            .args(["-C", "-F", fat_bits, "-n", "GUESTFAT"])
            .arg(&img)
            .arg(kib.to_string()),
    );
    let mut mcopy = Command::new("mcopy");
    mcopy
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-s", "-m", "-i"])
        .arg(&img);
    for e in fs::read_dir(&src).unwrap() {
        mcopy.arg(e.unwrap().path());
    }
    common::run(mcopy.arg("::/"));
    img
}

fn check_tree(fs: &dyn guestfs::Filesystem, src: &Path) {
    assert_eq!(fs.kind(), "fat");
    let info = fs.info();
    assert_eq!(info.label.as_deref(), Some("GUESTFAT"));
    assert!(
        info.uuid
            .as_deref()
            .is_some_and(|u| u.len() == 9 && u.as_bytes()[4] == b'-')
    );
    assert!(info.free_bytes.unwrap() < info.total_bytes.unwrap());
    let names: Vec<String> = fs.list("/").unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(
        names,
        [
            "A long file name.txt",
            "EFI",
            "big.bin",
            "docs",
            "empty.txt"
        ]
    );
    for p in [
        "/EFI/BOOT/BOOTX64.EFI",
        "/A long file name.txt",
        "/docs/nested/deeper/note.md",
        "/big.bin",
        "/empty.txt",
    ] {
        let want = fs::read(src.join(&p[1..])).unwrap();
        let e = fs.stat(p).unwrap();
        assert_eq!(
            (e.kind, e.size, e.mode),
            (EntryKind::File, want.len() as u64, 0o644),
            "{p}"
        );
        assert!(e.modified.is_some(), "{p}");
        assert_eq!(common::read_all(fs, p).unwrap(), want, "{p}");
    }
    // FAT compares names without case, as Windows and the EFI firmware do.
    assert_eq!(fs.stat("/efi/boot/bootx64.efi").unwrap().size, 200_000);
    assert_eq!(fs.stat("/docs").unwrap().kind, EntryKind::Directory);
    assert_eq!(
        fs.list("/../../docs/./nested").unwrap()[0].path,
        "/docs/nested/deeper"
    );
    assert!(matches!(fs.open("/docs"), Err(Error::IsADirectory(_))));
    assert!(matches!(fs.stat("/missing"), Err(Error::NotFound(_))));
    assert!(matches!(fs.list("/big.bin"), Err(Error::NotADirectory(_))));
}

#[test]
fn fat16_whole_disk() {
    require!("mkfs.vfat" from "dosfstools", "mcopy" from "mtools");
    let dir = tempfile::tempdir().unwrap();
    let img = make_fat(dir.path(), 32 * 1024, "16");
    let before = fs::read(&img).unwrap();
    let source = common::open(&img);
    // The boot sector ends in 55 AA like an MBR; it must not be taken for one.
    let parts = detect(&*source).unwrap();
    assert_eq!(parts[0].kind, "whole-disk", "{parts:?}");
    let fs = probe(source).unwrap();
    check_tree(&*fs, &dir.path().join("src"));
    drop(fs);
    assert!(fs::read(&img).unwrap() == before, "the image changed");
}

#[test]
fn fat12_small_volume() {
    require!("mkfs.vfat" from "dosfstools", "mcopy" from "mtools");
    let dir = tempfile::tempdir().unwrap();
    let img = make_fat(dir.path(), 8 * 1024, "12");
    check_tree(
        &*probe(common::open(&img)).unwrap(),
        &dir.path().join("src"),
    );
}

#[test]
fn fat32_in_an_mbr_partition() {
    require!("mkfs.vfat" from "dosfstools", "mcopy" from "mtools", "sfdisk" from "fdisk");
    let dir = tempfile::tempdir().unwrap();
    let img = make_fat(dir.path(), 64 * 1024, "32");
    let disk = dir.path().join("disk.raw");
    common::make_disk(
        &disk,
        80,
        "label: dos\nstart=2048, size=131072, type=c, bootable\n",
    );
    common::dd_into(&disk, &img, 2048 * 512);
    let source = common::open(&disk);
    let parts = detect(&*source).unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(
        (parts[0].index, parts[0].start, parts[0].kind.as_str()),
        (1, 1 << 20, "mbr-0x0c")
    );
    let vol: Arc<dyn ReadAt> = Arc::new(Slice::new(source, parts[0].start, parts[0].len).unwrap());
    check_tree(&*probe(vol).unwrap(), &dir.path().join("src"));
}
