//! NTFS images made by ntfs-3g's tools, read back through guestfs and compared with the
//! source byte for byte.
//!
//! `mkntfs` + `ntfscp` need no mount but can only put files in the root; the full tree
//! (deep and empty folders, symlinks, a hard link, a sparse file) is written through
//! ntfs-3g's FUSE driver into the image file, which needs /dev/fuse. That test says SKIPPED
//! where FUSE is not there.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use guestfs::{EntryKind, Error, probe};

fn mkntfs(img: &Path, mib: u64) {
    fs::File::create(img).unwrap().set_len(mib << 20).unwrap();
    common::run(
        Command::new("mkntfs")
            .args(["-F", "-Q", "-q", "-L", "GUESTNTFS"])
            .arg(img),
    );
}

fn ntfscp(img: &Path, src: &Path, dest: &str) {
    common::run(Command::new("ntfscp").arg("-q").arg(img).arg(src).arg(dest));
}

#[test]
fn files_copied_by_ntfscp_read_back_exactly() {
    require!("mkntfs" from "ntfs-3g", "ntfscp" from "ntfs-3g");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ntfs.img");
    mkntfs(&img, 32);
    let files: [(&str, Vec<u8>); 4] = [
        ("hello.txt", b"hello from windows\r\n".to_vec()),
        ("A Long Name With Spaces.txt", b"long".to_vec()),
        ("big.bin", common::pattern(common::BIG_LEN)),
        ("empty", Vec::new()),
    ];
    for (name, data) in &files {
        let src = dir.path().join("src");
        fs::write(&src, data).unwrap();
        ntfscp(&img, &src, name);
    }
    let before = fs::read(&img).unwrap();

    let fs = probe(common::open(&img)).unwrap();
    assert_eq!(fs.kind(), "ntfs");
    let info = fs.info();
    assert_eq!(info.label.as_deref(), Some("GUESTNTFS"));
    assert_eq!(info.uuid.as_deref().map(str::len), Some(16));
    assert_eq!(info.total_bytes, Some((32 << 20) - 512));
    let free = info.free_bytes.unwrap();
    assert!(free > 16 << 20 && free < 32 << 20, "free {free}");

    // The metafiles ($MFT, ...) are hidden and each name is listed once (no 8.3 alias).
    let names: Vec<String> = fs.list("/").unwrap().into_iter().map(|e| e.name).collect();
    let mut want: Vec<String> = files.iter().map(|f| f.0.to_owned()).collect();
    want.sort();
    assert_eq!(names, want);

    for (name, data) in &files {
        let e = fs.stat(name).unwrap();
        assert_eq!(e.kind, EntryKind::File);
        assert_eq!(e.size, data.len() as u64, "{name}");
        assert_eq!(e.mode, 0o644);
        assert!(e.modified.is_some_and(|t| t > 1_600_000_000));
        assert_eq!(&common::read_all(&*fs, name).unwrap(), data, "{name}");
    }
    // Lookups ignore case, as Windows does.
    assert_eq!(common::read_all(&*fs, "HELLO.TXT").unwrap(), files[0].1);
    assert!(matches!(fs.stat("$MFT"), Err(Error::NotFound(_))));
    assert!(matches!(fs.stat("/nope"), Err(Error::NotFound(_))));
    assert!(matches!(fs.open("/"), Err(Error::IsADirectory(_))));
    assert!(matches!(fs.list("hello.txt"), Err(Error::NotADirectory(_))));

    // Seeking into the middle of a non-resident file.
    let mut r = fs.open("big.bin").unwrap();
    r.seek(1_000_001).unwrap();
    let mut buf = vec![0u8; 70_000];
    let n = r.read(&mut buf).unwrap();
    assert_eq!(buf[..n], files[2].1[1_000_001..1_000_001 + n]);

    assert_eq!(fs::read(&img).unwrap(), before, "reading changed the image");
}

/// Mounts `img` with ntfs-3g at `mnt`; false when FUSE is not available here.
fn fuse_mount(img: &Path, mnt: &Path) -> bool {
    if !Path::new("/dev/fuse").exists() || !common::have("ntfs-3g") {
        return false;
    }
    fs::create_dir_all(mnt).unwrap();
    Command::new("ntfs-3g")
        .arg(img)
        .arg(mnt)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Unmounts even when the test fails half way, so no FUSE mount outlives it.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_tree_written_by_ntfs_3g_reads_back_exactly() {
    require!("mkntfs" from "ntfs-3g");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ntfs.img");
    mkntfs(&img, 64);
    let mnt = dir.path().join("mnt");
    if !fuse_mount(&img, &mnt) {
        eprintln!("SKIPPED: ntfs-3g could not mount through FUSE here (needs /dev/fuse and root)");
        return;
    }
    let guard = Unmount(mnt.clone());
    common::guest_tree(&mnt);
    fs::create_dir_all(mnt.join("empty dir")).unwrap();
    fs::create_dir_all(mnt.join("Ünïcode ✓/deeper/still")).unwrap();
    fs::write(
        mnt.join("Ünïcode ✓/deeper/still/naïve.txt"),
        b"caf\xc3\xa9\n",
    )
    .unwrap();
    fs::hard_link(mnt.join("a/b/c/deep.txt"), mnt.join("hard-link")).unwrap();
    let sparse = fs::File::create(mnt.join("sparse")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(b"island", 5 << 20).unwrap();
    drop(sparse);
    symlink("../hello.txt", mnt.join("a/up-rel")).unwrap();
    drop(guard);

    let fs = probe(common::open(&img)).unwrap();
    let src = dir.path().join("src");
    common::guest_tree(&src);
    for f in [
        "hello.txt",
        "bin/script.sh",
        "a/b/c/deep.txt",
        "big.bin",
        "empty",
    ] {
        assert_eq!(
            common::read_all(&*fs, f).unwrap(),
            fs::read(src.join(f)).unwrap(),
            "{f}"
        );
    }
    // Symlinks are resolved inside the guest: the absolute one gives the guest's passwd.
    let link = fs.stat("passwd-link").unwrap();
    assert_eq!(link.kind, EntryKind::Symlink);
    assert_eq!(link.symlink_target.as_deref(), Some("/etc/passwd"));
    assert_eq!(
        common::read_all(&*fs, "passwd-link").unwrap(),
        b"guest-root:x:0:0:guest:/root:/bin/sh\n"
    );
    assert_eq!(
        common::read_all(&*fs, "a/rel-link").unwrap(),
        b"deep down\n"
    );
    assert_eq!(
        common::read_all(&*fs, "a/up-rel").unwrap(),
        b"hello from the guest\n"
    );
    assert_eq!(
        fs.list("a/b/c/up-link").unwrap().len(),
        fs.list("a/b").unwrap().len()
    );
    assert!(matches!(fs.open("host-only-link"), Err(Error::NotFound(_))));
    assert!(matches!(fs.open("loop-a"), Err(Error::SymlinkLoop(_))));

    assert!(fs.list("empty dir").unwrap().is_empty());
    assert_eq!(
        common::read_all(&*fs, "Ünïcode ✓/deeper/still/naïve.txt").unwrap(),
        b"caf\xc3\xa9\n"
    );
    assert_eq!(common::read_all(&*fs, "hard-link").unwrap(), b"deep down\n");
    let data = common::read_all(&*fs, "sparse").unwrap();
    assert_eq!(data.len(), 8 << 20);
    assert_eq!(&data[5 << 20..(5 << 20) + 6], b"island");
    assert!(data[..5 << 20].iter().all(|&b| b == 0));
    let hello = fs.stat("hello.txt").unwrap();
    assert_eq!(hello.modified, Some(common::MTIME));
}
