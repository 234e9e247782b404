//! Building real images with the real tools, in a tempdir, without root or mounting.
#![allow(dead_code)] // each test binary uses its own part of this

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use guestfs::{Filesystem, ReadAt};

/// Whether `name` is on PATH (or in the sbin dirs, where mke2fs and sfdisk live).
pub fn have(name: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(name).exists())
        || Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {name}"))
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Skips the test (returns) with a message naming the missing tool and its package.
#[macro_export]
macro_rules! require {
    ($($tool:literal from $pkg:literal),+) => {
        $(if !common::have($tool) {
            eprintln!("SKIPPED: `{}` not found (apt-get install {})", $tool, $pkg);
            return;
        })+
    };
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A few MiB plus a tail that is not a block multiple, no two nearby bytes alike, so a
/// misplaced block or a short read shows.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + i / 4096 * 7 + 11) % 251) as u8)
        .collect()
}

pub const BIG_LEN: usize = 3 * 1024 * 1024 + 12_345;
pub const MTIME: i64 = 1_600_000_000;

/// The guest tree used by the ext4 tests, with its own /etc/passwd so "the guest's file, not
/// the host's" can be told apart by content.
pub fn guest_tree(root: &Path) {
    let w = |p: &str, data: &[u8], mode: u32| {
        let path = root.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    };
    w("hello.txt", b"hello from the guest\n", 0o644);
    w("bin/script.sh", b"#!/bin/sh\necho hi\n", 0o755);
    w("root/secret", b"s3cret", 0o600);
    w("a/b/c/deep.txt", b"deep down\n", 0o640);
    w(
        "etc/passwd",
        b"guest-root:x:0:0:guest:/root:/bin/sh\n",
        0o644,
    );
    w("empty", b"", 0o644);
    w("big.bin", &pattern(BIG_LEN), 0o644);
    symlink("/etc/passwd", root.join("passwd-link")).unwrap();
    symlink("b/c/deep.txt", root.join("a/rel-link")).unwrap();
    symlink("../../../../../a/b", root.join("a/b/c/up-link")).unwrap();
    symlink("/usr/bin/env", root.join("host-only-link")).unwrap();
    symlink("loop-b", root.join("loop-a")).unwrap();
    symlink("loop-a", root.join("loop-b")).unwrap();
    run(Command::new("touch")
        .arg("-h")
        .arg("-d")
        .arg(format!("@{MTIME}"))
        .arg(root.join("hello.txt")));
}

/// `mke2fs -d`: an ext4 image populated from a directory, no mount needed.
pub fn make_ext4(dir: &Path, size: &str) -> PathBuf {
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    guest_tree(&src);
    let img = dir.join("ext4.img");
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "guest", "-d"])
        .arg(&src)
        .arg(&img)
        .arg(size));
    img
}

/// A sparse disk of `mib` MiB with the partition table `script` written by sfdisk.
pub fn make_disk(path: &Path, mib: u64, script: &str) {
    let f = fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
    drop(f);
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg("--no-reread")
        .arg("--no-tell-kernel")
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copies an image into a disk at a byte offset, the way `dd conv=notrunc` does.
pub fn dd_into(disk: &Path, image: &Path, offset: u64) {
    run(Command::new("dd")
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", disk.display()))
        .args([
            "bs=1M",
            "conv=notrunc,sparse",
            "status=none",
            "oflag=seek_bytes",
        ])
        .arg(format!("seek={offset}")));
}

pub fn open(path: &Path) -> Arc<dyn ReadAt> {
    Arc::new(fs::File::open(path).unwrap())
}

/// A `mib`-MiB disk in `dir` partitioned by the sfdisk `script`, with the ext4 image of
/// `make_ext4` copied in at 512-byte sector `sector`: the disk's path and an open reader.
pub fn partitioned_ext4(
    dir: &Path,
    mib: u64,
    script: &str,
    sector: u64,
) -> (PathBuf, Arc<dyn ReadAt>) {
    let img = make_ext4(dir, "64M");
    let disk = dir.join("disk.raw");
    make_disk(&disk, mib, script);
    dd_into(&disk, &img, sector * 512);
    let source = open(&disk);
    (disk, source)
}

/// Streams a file in small chunks, checking no chunk overruns and the total matches the size.
pub fn read_all(fs: &dyn Filesystem, path: &str) -> guestfs::Result<Vec<u8>> {
    let mut r = fs.open(path)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024 + 3];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        assert!(n <= buf.len());
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        out.len() as u64,
        r.size(),
        "{path}: streamed length vs size"
    );
    Ok(out)
}

/// A `mkfs.xfs -p` protofile of the tree at `src`: the root, then each entry as one line
/// (name, type and mode, uid, gid, and the source file or link target), `$` closing each
/// directory. Names are single tokens, so none may hold whitespace.
pub fn xfs_protofile(src: &Path) -> String {
    fn walk(dir: &Path, out: &mut String) {
        let mut items: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        items.sort_by_key(|e| e.file_name());
        for item in items {
            let name = item.file_name().into_string().unwrap();
            assert!(
                !name.contains(char::is_whitespace),
                "protofile names: {name}"
            );
            let meta = fs::symlink_metadata(item.path()).unwrap();
            let mode = meta.permissions().mode() & 0o777;
            let line = if meta.file_type().is_symlink() {
                let target = fs::read_link(item.path()).unwrap();
                format!("{name} l--777 0 0 {}\n", target.display())
            } else if meta.is_dir() {
                format!("{name} d--{mode:03o} 0 0\n")
            } else {
                format!("{name} ---{mode:03o} 0 0 {}\n", item.path().display())
            };
            out.push_str(&line);
            if meta.is_dir() {
                walk(&item.path(), out);
            }
        }
        out.push_str("$\n");
    }
    let mut out = String::from("guestfs-test\n0 0\nd--755 0 0\n");
    walk(src, &mut out);
    out
}

/// Each `(guest path, mode)` is a regular file of that mode whose size and content are the
/// source tree's file of the same path.
pub fn check_files(fs: &dyn Filesystem, src: &Path, files: &[(&str, u32)]) {
    for &(path, mode) in files {
        let e = fs.stat(path).unwrap();
        let want = fs::read(src.join(&path[1..])).unwrap();
        assert_eq!(e.kind, guestfs::EntryKind::File, "{path}");
        assert_eq!(e.mode, mode, "{path}");
        assert_eq!(e.size, want.len() as u64, "{path}");
        assert_eq!(read_all(fs, path).unwrap(), want, "{path}");
    }
}
