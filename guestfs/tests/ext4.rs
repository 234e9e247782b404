//! ext4 images made by `mke2fs -d`, read back through guestfs and compared with the source
//! tree byte for byte.

mod common;

use std::fs;
use std::sync::Arc;

use guestfs::{EntryKind, Error, Filesystem, ReadAt, Slice, detect, probe};

fn ext4() -> (tempfile::TempDir, std::path::PathBuf, Box<dyn Filesystem>) {
    let dir = tempfile::tempdir().unwrap();
    let img = common::make_ext4(dir.path(), "64M");
    let fs = probe(common::open(&img)).unwrap();
    (dir, img, fs)
}

#[test]
fn lists_stats_and_reads_like_the_source() {
    require!("mke2fs" from "e2fsprogs");
    let (dir, img, fs) = ext4();
    let before = fs::read(&img).unwrap();
    assert_eq!(fs.kind(), "ext4");

    let names: Vec<String> = fs.list("/").unwrap().into_iter().map(|e| e.name).collect();
    for want in [
        "a",
        "big.bin",
        "bin",
        "empty",
        "etc",
        "hello.txt",
        "passwd-link",
        "root",
        "loop-a",
    ] {
        assert!(
            names.contains(&want.to_owned()),
            "{want} missing from {names:?}"
        );
    }
    assert!(!names.iter().any(|n| n == "." || n == ".."));

    let src = dir.path().join("src");
    common::check_files(
        &*fs,
        &src,
        &[
            ("/hello.txt", 0o644),
            ("/bin/script.sh", 0o755),
            ("/root/secret", 0o600),
            ("/a/b/c/deep.txt", 0o640),
            ("/empty", 0o644),
            ("/big.bin", 0o644),
        ],
    );
    assert_eq!(fs.stat("/hello.txt").unwrap().modified, Some(common::MTIME));
    assert_eq!(
        common::read_all(&*fs, "/big.bin").unwrap(),
        common::pattern(common::BIG_LEN)
    );

    let d = fs.stat("/a/b").unwrap();
    assert_eq!(
        (d.kind, d.path.as_str(), d.name.as_str()),
        (EntryKind::Directory, "/a/b", "b")
    );
    assert!(matches!(fs.open("/a/b"), Err(Error::IsADirectory(_))));
    assert!(matches!(
        fs.list("/hello.txt"),
        Err(Error::NotADirectory(_))
    ));
    assert!(matches!(fs.stat("/nope"), Err(Error::NotFound(_))));
    assert!(matches!(
        fs.stat("/hello.txt/x"),
        Err(Error::NotADirectory(_))
    ));
    assert!(matches!(fs.stat("/bad\0name"), Err(Error::InvalidPath(_))));

    // Nothing above wrote to the image.
    drop(fs);
    assert!(fs::read(&img).unwrap() == before, "the image changed");
}

#[test]
fn dot_dot_cannot_escape_the_guest() {
    require!("mke2fs" from "e2fsprogs");
    let (_dir, _img, fs) = ext4();
    let guest = b"guest-root:x:0:0:guest:/root:/bin/sh\n".to_vec();
    for p in [
        "/../../etc/passwd",
        "../../../../etc/passwd",
        "/a/b/../../../etc/./passwd",
        "etc//passwd",
    ] {
        assert_eq!(common::read_all(&*fs, p).unwrap(), guest, "{p}");
    }
    assert_eq!(fs.list("/../..").unwrap(), fs.list("/").unwrap());
}

#[test]
fn symlinks_are_listed_and_resolved_only_inside_the_guest() {
    require!("mke2fs" from "e2fsprogs");
    let (_dir, _img, fs) = ext4();
    let l = fs.stat("/passwd-link").unwrap();
    assert_eq!(l.kind, EntryKind::Symlink);
    assert_eq!(l.symlink_target.as_deref(), Some("/etc/passwd"));
    let listed = fs
        .list("/")
        .unwrap()
        .into_iter()
        .find(|e| e.name == "passwd-link")
        .unwrap();
    assert_eq!(listed, l);

    // The absolute link reads the guest's /etc/passwd, never the host's.
    let via_link = common::read_all(&*fs, "/passwd-link").unwrap();
    assert_eq!(via_link, b"guest-root:x:0:0:guest:/root:/bin/sh\n");
    assert_ne!(Some(via_link), fs::read("/etc/passwd").ok());

    // A target that exists on the host only is not found in the guest.
    assert!(matches!(
        fs.open("/host-only-link"),
        Err(Error::NotFound(_))
    ));
    // Relative links, and one that climbs past the root and is clamped there.
    assert_eq!(
        common::read_all(&*fs, "/a/rel-link").unwrap(),
        b"deep down\n"
    );
    assert_eq!(
        fs.stat("/a/rel-link").unwrap().symlink_target.as_deref(),
        Some("b/c/deep.txt")
    );
    assert_eq!(
        common::read_all(&*fs, "/a/b/c/up-link/c/deep.txt").unwrap(),
        b"deep down\n"
    );
    let via_dir_link: Vec<String> = fs
        .list("/a/b/c/up-link")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(via_dir_link, ["c"]);
    assert!(matches!(fs.open("/loop-a"), Err(Error::SymlinkLoop(_))));
    assert_eq!(fs.stat("/loop-a").unwrap().kind, EntryKind::Symlink);
}

#[test]
fn gpt_disk_with_ext4_in_partition_2() {
    require!("mke2fs" from "e2fsprogs", "sfdisk" from "fdisk");
    let dir = tempfile::tempdir().unwrap();
    let (disk, source) = common::partitioned_ext4(
        dir.path(),
        100,
        "label: gpt\nstart=2048, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n\
         start=16384, size=131072, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
        16384,
    );
    let parts = detect(&*source).unwrap();
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(
        (parts[0].index, parts[0].start, parts[0].kind.as_str()),
        (1, 1 << 20, "efi-system")
    );
    assert_eq!(
        (
            parts[1].index,
            parts[1].start,
            parts[1].len,
            parts[1].kind.as_str()
        ),
        (2, 16384 * 512, 64 << 20, "linux")
    );
    let vol: Arc<dyn ReadAt> = Arc::new(Slice::new(source, parts[1].start, parts[1].len).unwrap());
    let fs = probe(vol).unwrap();
    assert_eq!(
        common::read_all(&*fs, "/big.bin").unwrap(),
        common::pattern(common::BIG_LEN)
    );
    // The empty ESP holds nothing we know.
    let esp: Arc<dyn ReadAt> =
        Arc::new(Slice::new(common::open(&disk), parts[0].start, parts[0].len).unwrap());
    assert!(matches!(probe(esp), Err(Error::UnknownFilesystem)));
}

#[test]
fn mbr_disk_with_ext4_in_a_logical_partition() {
    require!("mke2fs" from "e2fsprogs", "sfdisk" from "fdisk");
    let dir = tempfile::tempdir().unwrap();
    let (_disk, source) = common::partitioned_ext4(
        dir.path(),
        120,
        "label: dos\nstart=2048, size=8192, type=83\nstart=10240, size=200000, type=5\n\
         start=12288, size=4096, type=82\nstart=20480, size=131072, type=83\n",
        20480,
    );
    let parts = detect(&*source).unwrap();
    let summary: Vec<(u32, u64, String)> = parts
        .iter()
        .map(|p| (p.index, p.start / 512, p.kind.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (1, 2048, "mbr-0x83".into()),
            (5, 12288, "mbr-0x82".into()),
            (6, 20480, "mbr-0x83".into())
        ]
    );
    let p = &parts[2];
    let fs = probe(Arc::new(Slice::new(source, p.start, p.len).unwrap())).unwrap();
    assert_eq!(
        common::read_all(&*fs, "/a/b/c/deep.txt").unwrap(),
        b"deep down\n"
    );
}

#[test]
fn a_bare_ext4_image_is_one_whole_disk_volume() {
    require!("mke2fs" from "e2fsprogs");
    let (_dir, img, _fs) = ext4();
    let parts = detect(&*common::open(&img)).unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(
        (parts[0].index, parts[0].start, parts[0].kind.as_str()),
        (0, 0, "whole-disk")
    );
}

#[test]
fn volume_info_seek_and_bounded_listing() {
    require!("mke2fs" from "e2fsprogs", "blkid" from "util-linux");
    let (_dir, img, fs) = ext4();
    let info = fs.info();
    assert_eq!(info.label.as_deref(), Some("guest"));
    let blkid = std::process::Command::new("blkid")
        .args(["-o", "value", "-s", "UUID"])
        .arg(&img)
        .output()
        .unwrap();
    let uuid = String::from_utf8_lossy(&blkid.stdout).trim().to_owned();
    assert_eq!(info.uuid.as_deref(), Some(uuid.as_str()));
    let (total, free) = (info.total_bytes.unwrap(), info.free_bytes.unwrap());
    assert_eq!(total, 64 << 20);
    assert!(free > 0 && free < total, "free {free} of {total}");

    // A ranged read starts where it is told.
    let want = common::pattern(common::BIG_LEN);
    let mut r = fs.open("/big.bin").unwrap();
    r.seek(1_000_003).unwrap();
    let mut buf = vec![0u8; 5000];
    let mut got = 0;
    while got < buf.len() {
        got += r.read(&mut buf[got..]).unwrap();
    }
    assert_eq!(buf, want[1_000_003..1_005_003]);

    let all = fs.list("/").unwrap();
    let some = fs.list_limited("/", 3).unwrap();
    assert!(some.truncated);
    assert_eq!(some.entries.len(), 3);
    let whole = fs.list_limited("/", all.len()).unwrap();
    assert!(!whole.truncated);
    assert_eq!(whole.entries, all);
}
