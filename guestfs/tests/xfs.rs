//! XFS images made by `mkfs.xfs -p protofile` (no mount), read back through guestfs and
//! compared with the source tree byte for byte.
//!
//! A protofile names each entry with one whitespace-free token and cannot make hard links
//! or set times, so this tree has no names with spaces (the ext4, FAT and NTFS tests carry
//! those) and its times are mkfs's. What it adds: directories large enough for XFS's leaf
//! and node formats, and a volume of four AGs whose size is not a power of two, so an inode
//! or extent past the first AG is only found by decoding its AG number.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use guestfs::{EntryKind, Error, probe};

/// Entries of the big directory: past a 4 KiB block directory, into node format.
const MANY: usize = 5000;

fn make_xfs(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("src");
    common::guest_tree(&src);
    fs::create_dir_all(src.join("empty-dir")).unwrap();
    fs::create_dir_all(src.join("Ünïcode-✓/deeper/still/and/still")).unwrap();
    fs::write(
        src.join("Ünïcode-✓/deeper/still/and/still/naïve.txt"),
        b"caf\xc3\xa9\n",
    )
    .unwrap();
    fs::create_dir_all(src.join("many")).unwrap();
    for i in 0..MANY {
        fs::write(src.join(format!("many/file-{i:05}")), format!("{i}\n")).unwrap();
    }
    let proto_path = dir.join("proto");
    fs::write(&proto_path, common::xfs_protofile(&src)).unwrap();

    let img = dir.join("xfs.img");
    fs::File::create(&img).unwrap().set_len(300 << 20).unwrap();
    common::run(
        Command::new("mkfs.xfs")
            .args(["-q", "-f", "-L", "guestxfs", "-d", "agcount=4", "-p"])
            .arg(&proto_path)
            .arg(&img),
    );
    // What mkfs made is sound, so a difference below is ours.
    common::run(Command::new("xfs_repair").args(["-n", "-f"]).arg(&img));
    img
}

#[test]
fn a_tree_made_by_mkfs_xfs_reads_back_exactly() {
    require!("mkfs.xfs" from "xfsprogs");
    let dir = tempfile::tempdir().unwrap();
    let img = make_xfs(dir.path());
    let before = fs::read(&img).unwrap();
    let src = dir.path().join("src");

    let fs = probe(common::open(&img)).unwrap();
    assert_eq!(fs.kind(), "xfs");
    let info = fs.info();
    assert_eq!(info.label.as_deref(), Some("guestxfs"));
    assert_eq!(info.uuid.as_deref().map(str::len), Some(36));
    assert_eq!(info.total_bytes, Some(300 << 20));
    let free = info.free_bytes.unwrap();
    assert!(free > 200 << 20 && free < 300 << 20, "free {free}");

    let names: Vec<String> = fs.list("/").unwrap().into_iter().map(|e| e.name).collect();
    let mut want: Vec<String> = fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    want.sort();
    assert_eq!(names, want);

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
            ("/Ünïcode-✓/deeper/still/and/still/naïve.txt", 0o644),
        ],
    );
    // mkfs stamps every inode with its own clock.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let t = fs.stat("/hello.txt").unwrap().modified.unwrap();
    assert!((now - 600..=now + 5).contains(&t), "mtime {t} vs now {now}");

    // The big directory, every entry with its content.
    let many = fs.list("/many").unwrap();
    assert_eq!(many.len(), MANY);
    for (i, e) in many.iter().enumerate() {
        assert_eq!(e.name, format!("file-{i:05}"));
        assert_eq!(e.size, format!("{i}\n").len() as u64);
    }
    for i in [0, 1, 2499, MANY - 1] {
        assert_eq!(
            common::read_all(&*fs, &format!("/many/file-{i:05}")).unwrap(),
            format!("{i}\n").as_bytes()
        );
    }
    assert!(fs.list("/empty-dir").unwrap().is_empty());

    // Symlinks, resolved inside the guest.
    let link = fs.stat("/passwd-link").unwrap();
    assert_eq!(link.kind, EntryKind::Symlink);
    assert_eq!(link.symlink_target.as_deref(), Some("/etc/passwd"));
    assert_eq!(
        common::read_all(&*fs, "/passwd-link").unwrap(),
        b"guest-root:x:0:0:guest:/root:/bin/sh\n"
    );
    assert_eq!(
        common::read_all(&*fs, "/a/rel-link").unwrap(),
        b"deep down\n"
    );
    assert_eq!(
        fs.list("/a/b/c/up-link").unwrap().len(),
        fs.list("/a/b").unwrap().len()
    );
    assert!(matches!(
        fs.open("/host-only-link"),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(fs.open("/loop-a"), Err(Error::SymlinkLoop(_))));

    assert!(matches!(fs.stat("/nope"), Err(Error::NotFound(_))));
    assert!(matches!(fs.open("/a/b"), Err(Error::IsADirectory(_))));
    assert!(matches!(
        fs.list("/hello.txt"),
        Err(Error::NotADirectory(_))
    ));
    assert!(matches!(
        fs.stat("/hello.txt/x"),
        Err(Error::NotADirectory(_))
    ));

    // Seeking into the middle of a file.
    let mut r = fs.open("/big.bin").unwrap();
    r.seek(1_000_001).unwrap();
    let mut buf = vec![0u8; 70_000];
    let n = r.read(&mut buf).unwrap();
    assert_eq!(
        buf[..n],
        common::pattern(common::BIG_LEN)[1_000_001..1_000_001 + n]
    );

    assert_eq!(fs::read(&img).unwrap(), before, "reading changed the image");
}
