//! File-level restore of the other two filesystems guests carry, through the API against the
//! `sendense-hub` binary at its defaults: an MBR disk with an NTFS partition (ntfs-3g's
//! `mkntfs`, the tree written through its FUSE driver into the image file where /dev/fuse
//! exists, else flat files with `ntfscp`) and an XFS one (`mkfs.xfs -p protofile`), written
//! into a backup over NBD as the SNA writes it, browsed and downloaded with curl and compared
//! with the source trees byte for byte; then an incremental that changed one file.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::chain;
use common::restore::*;
use common::*;
use serde_json::json;

const NTFS_MIB: u64 = 200;
const XFS_MIB: u64 = 300;
const DISK_MIB: u64 = 1 + NTFS_MIB + XFS_MIB + 1;

/// Unmounts even when the test fails half way, so no FUSE mount outlives it.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// An NTFS image holding `src`: the whole tree through ntfs-3g where FUSE works, else only
/// `src`'s top-level files through ntfscp (which cannot make folders or links). Returns
/// whether the whole tree is in.
fn ntfs_image(img: &Path, src: &Path) -> bool {
    fs::File::create(img)
        .unwrap()
        .set_len(NTFS_MIB * MIB)
        .unwrap();
    run_ok(
        Command::new("mkntfs")
            .args(["-F", "-Q", "-q", "-L", "WINDATA"])
            .arg(img),
    );
    let mnt = img.with_extension("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let fuse = Path::new("/dev/fuse").exists()
        && have("ntfs-3g")
        && Command::new("ntfs-3g")
            .arg(img)
            .arg(&mnt)
            .output()
            .is_ok_and(|o| o.status.success());
    if fuse {
        let guard = Unmount(mnt.clone());
        run_ok(
            Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", src.display()))
                .arg(&mnt),
        );
        drop(guard);
        return true;
    }
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            run_ok(
                Command::new("ntfscp")
                    .arg("-q")
                    .arg(img)
                    .arg(e.path())
                    .arg(e.file_name()),
            );
        }
    }
    false
}

fn xfs_image(img: &Path, src: &Path) {
    fs::File::create(img)
        .unwrap()
        .set_len(XFS_MIB * MIB)
        .unwrap();
    let proto = img.with_extension("proto");
    fs::write(&proto, protofile(src)).unwrap();
    // Two AGs of 150 MiB: xfsprogs 6.1's protofile writer runs a file larger than an AG
    // (the 100 MiB one, in 75 MiB AGs) over the next AG's headers; xfs_repair confirms the
    // image is sound before it goes anywhere.
    run_ok(
        Command::new("mkfs.xfs")
            .args(["-q", "-f", "-L", "guestxfs", "-d", "agcount=2", "-p"])
            .arg(&proto)
            .arg(img),
    );
    run_ok(Command::new("xfs_repair").args(["-n", "-f"]).arg(img));
}

/// `mkfs.xfs -p`'s description of `src`: one line per entry (name, type and mode, uid, gid,
/// source file or link target), `$` closing each directory.
fn protofile(src: &Path) -> String {
    fn walk(dir: &Path, out: &mut String) {
        let mut items: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        items.sort_by_key(|e| e.file_name());
        for e in items {
            let name = e.file_name().into_string().unwrap();
            let meta = fs::symlink_metadata(e.path()).unwrap();
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(e.path()).unwrap();
                out.push_str(&format!("{name} l--777 0 0 {}\n", target.display()));
            } else if meta.is_dir() {
                out.push_str(&format!("{name} d--{mode:03o} 0 0\n"));
                walk(&e.path(), out);
            } else {
                out.push_str(&format!(
                    "{name} ---{mode:03o} 0 0 {}\n",
                    e.path().display()
                ));
            }
        }
        out.push_str("$\n");
    }
    let mut out = String::from("sendense\n0 0\nd--755 0 0\n");
    walk(src, &mut out);
    out
}

/// The trees: the shared guest tree for NTFS; for XFS the same without whitespace in names
/// (a protofile's names are single tokens).
fn sources(dir: &Path, hello: &[u8]) -> (PathBuf, PathBuf) {
    let ntfs = dir.join(format!("ntfs-src-{}", hello.len()));
    guest_tree(&ntfs, hello);
    let xfs = dir.join(format!("xfs-src-{}", hello.len()));
    guest_tree(&xfs, hello);
    let spaced = xfs.join("docs/with space");
    let renamed = xfs.join("docs/with_space");
    fs::rename(&spaced, &renamed).unwrap();
    for e in fs::read_dir(&renamed).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap().replace(' ', "_");
        fs::rename(e.path(), renamed.join(name)).unwrap();
    }
    (ntfs, xfs)
}

/// An MBR disk: partition 1 NTFS (type 7), partition 2 XFS (type 83).
fn guest_disk(dir: &Path, ntfs_src: &Path, xfs_src: &Path, name: &str) -> (PathBuf, bool) {
    let disk = dir.join(format!("{name}.raw"));
    let (ntfs, xfs) = (
        dir.join(format!("{name}.ntfs")),
        dir.join(format!("{name}.xfs")),
    );
    let whole = ntfs_image(&ntfs, ntfs_src);
    xfs_image(&xfs, xfs_src);
    let script = format!(
        "label: dos\nstart=2048, size={}, type=7\nstart={}, size={}, type=83\n",
        NTFS_MIB * 2048,
        (1 + NTFS_MIB) * 2048,
        XFS_MIB * 2048
    );
    partitioned_disk(
        &disk,
        DISK_MIB,
        &script,
        &[(&ntfs, MIB), (&xfs, (1 + NTFS_MIB) * MIB)],
    );
    fs::remove_file(&ntfs).unwrap();
    fs::remove_file(&xfs).unwrap();
    (disk, whole)
}

#[test]
fn ntfs_and_xfs_volumes_browse_and_download() {
    require!("mkntfs" from "ntfs-3g", "ntfscp" from "ntfs-3g", "mkfs.xfs" from "xfsprogs",
        "sfdisk" from "fdisk", "curl" from "curl", "nbdcopy" from "libnbd-bin", "unzip" from "unzip");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_hub, api) = Api::start(&data);
    let (ntfs_src, xfs_src) = sources(dir.path(), b"hello from the full backup\n");
    let (disk, whole_ntfs) = guest_disk(dir.path(), &ntfs_src, &xfs_src, "full");
    if !whole_ntfs {
        eprintln!("NOTE: no FUSE here: the NTFS partition holds only the top-level files");
    }
    let size = (DISK_MIB * MIB) as usize;
    let full = chain::backup(&api.api, &api.token, "win-vm", "full", size, |uri| {
        run_ok(Command::new("nbdcopy").arg(&disk).arg(uri));
    });

    let vols = ok(api.get(&format!("/api/v1/backups/{full}/disks/0/volumes")));
    let v = vols["volumes"].as_array().unwrap();
    assert_eq!(v.len(), 2, "{vols}");
    for (vol, fs, label, mib) in [
        (&v[0], "ntfs", "WINDATA", NTFS_MIB),
        (&v[1], "xfs", "guestxfs", XFS_MIB),
    ] {
        assert_eq!(
            (&vol["filesystem"], &vol["label"], &vol["readable"]),
            (&json!(fs), &json!(label), &json!(true)),
            "{vols}"
        );
        let used = vol["used_bytes"].as_u64().unwrap();
        assert!(used > BIG as u64 && used < mib * MIB, "{vols}");
    }

    let m = api.mount(&full, 0);
    let mid = m["mount_id"].as_str().unwrap().to_owned();
    assert_eq!(m["filesystem_type"], "ntfs,xfs");

    // Both trees, listed whole, against their sources (the flat NTFS one: its files).
    let mut ntfs_want = source_listing(&ntfs_src);
    if !whole_ntfs {
        ntfs_want.retain(|p, k| p.matches('/').count() == 1 && k.starts_with("file"));
    }
    for (part, want) in [
        ("/partition-1", &ntfs_want),
        ("/partition-2", &source_listing(&xfs_src)),
    ] {
        let tree = ok(api.get(&format!(
            "/api/v1/restore/{mid}/files?path={part}&recursive=true"
        )));
        assert_eq!(tree["truncated"], false);
        assert_eq!(&listing_of(&tree["files"], part), want, "{part}");
    }

    // Every file downloads byte for byte.
    let out = dir.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let got = out.join("f");
    for (part, src, want) in [
        ("/partition-1", &ntfs_src, &ntfs_want),
        ("/partition-2", &xfs_src, &source_listing(&xfs_src)),
    ] {
        for (path, kind) in want.iter() {
            if !kind.starts_with("file") {
                continue;
            }
            let (status, headers) = api.curl(
                &format!(
                    "/api/v1/restore/{mid}/download?path={}",
                    q(&format!("{part}{path}"))
                ),
                &got,
                &[],
            );
            assert_eq!(status, 200, "{part}{path}");
            let bytes = fs::read(src.join(&path[1..])).unwrap();
            assert_eq!(
                headers["content-length"],
                bytes.len().to_string(),
                "{part}{path}"
            );
            assert!(fs::read(&got).unwrap() == bytes, "{part}{path} differs");
        }
    }

    // Symlinks read the guest's files; traversal never reaches the host's.
    let guest_passwd = fs::read(xfs_src.join("etc/passwd")).unwrap();
    let mut parts = vec!["/partition-2"];
    if whole_ntfs {
        parts.push("/partition-1");
    }
    for part in parts {
        for link in ["/passwd-link", "/docs/up-link"] {
            let (status, _) = api.curl(
                &format!("/api/v1/restore/{mid}/download?path={part}{link}"),
                &got,
                &[],
            );
            assert_eq!(status, 200, "{part}{link}");
            assert_eq!(fs::read(&got).unwrap(), guest_passwd, "{part}{link}");
        }
    }
    api.never_leaves_the_guest(
        &mid,
        &[
            "/partition-2/../../../../etc/passwd",
            "/partition-2/%2e%2e/%2e%2e/etc/passwd",
            "/partition-1/..%2F..%2F..%2Fetc%2Fshadow",
        ],
        &guest_passwd,
        &got,
    );

    // The XFS partition as a zip, the NTFS one as a tar.gz: the trees come back whole.
    let unzipped = out.join("unzipped");
    api.unpacked(&mid, "/partition-2", "zip", &unzipped);
    same_tree(&xfs_src, &unzipped.join("partition-2"));
    if whole_ntfs {
        let untarred = out.join("untarred");
        api.unpacked(&mid, "/partition-1", "tar.gz", &untarred);
        same_tree(&ntfs_src, &untarred.join("partition-1"));
    }
    // NTFS names compare without case, as Windows does.
    let (status, _) = api.curl(
        &format!("/api/v1/restore/{mid}/download?path=/partition-1/HELLO.TXT"),
        &got,
        &[],
    );
    assert_eq!(
        (status, fs::read(&got).unwrap()),
        (200, b"hello from the full backup\n".to_vec())
    );

    // An incremental that changed one file on each shows the new content; the full the old.
    let (ntfs2, xfs2) = sources(dir.path(), b"hello from the incremental backup\n");
    let (disk2, _) = guest_disk(dir.path(), &ntfs2, &xfs2, "incr");
    let incr = chain::backup(&api.api, &api.token, "win-vm", "incremental", size, |uri| {
        run_ok(Command::new("nbdcopy").arg(&disk2).arg(uri));
    });
    let m2 = api.mount(&incr, 0);
    let mid2 = m2["mount_id"].as_str().unwrap();
    for part in ["/partition-1", "/partition-2"] {
        for (mount, want) in [
            (mid2, "hello from the incremental backup\n"),
            (mid.as_str(), "hello from the full backup\n"),
        ] {
            let (status, _) = api.curl(
                &format!("/api/v1/restore/{mount}/download?path={part}/hello.txt"),
                &got,
                &[],
            );
            assert_eq!(status, 200);
            assert_eq!(fs::read_to_string(&got).unwrap(), want, "{part}");
        }
    }
}
