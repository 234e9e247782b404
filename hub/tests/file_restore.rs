//! File-level restore through the API, against the `sendense-hub` binary at its defaults: a
//! guest disk built with the real tools and no mount (sfdisk's GPT, `mke2fs -d`, `mkfs.vfat` +
//! `mcopy`), written into a backup over NBD as the SNA writes it, then browsed and downloaded
//! with curl (ranges, zip, tar.gz) and compared with the source tree byte for byte.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::chain;
use common::restore::*;
use common::*;
use serde_json::json;

/// Partition 1 (ext4) at 1 MiB, partition 2 (FAT) after it.
const EXT4_MIB: u64 = 200;
const FAT_MIB: u64 = 32;
const DISK_MIB: u64 = 1 + EXT4_MIB + FAT_MIB + 1;

/// A GPT disk: partition 1 ext4 made from `src`, partition 2 FAT with two files.
fn guest_disk(dir: &Path, src: &Path, name: &str) -> PathBuf {
    let disk = dir.join(format!("{name}.raw"));
    let ext4 = dir.join(format!("{name}.ext4"));
    run_ok(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", "guest-root", "-U"])
            .arg("0b6a4c53-5f0e-4d4b-9d43-0d4f1b9e2a11")
            .arg("-E")
            .arg("hash_seed=2c1f7b0e-8f3a-4a55-b2c1-7a0b9a5e3c22")
            .arg("-d")
            .arg(src)
            .arg(&ext4)
            .arg(format!("{EXT4_MIB}M")),
    );
    let fat = dir.join(format!("{name}.fat"));
    run_ok(
        Command::new("mkfs.vfat")
            .args(["-C", "-F", "16", "-n", "EFI"])
            .arg(&fat)
            .arg((FAT_MIB * 1024).to_string()),
    );
    let efi = dir.join("efi-src");
    fs::create_dir_all(efi.join("EFI/BOOT")).unwrap();
    fs::write(efi.join("EFI/BOOT/BOOTX64.EFI"), vec![0x5Au8; 70_000]).unwrap();
    run_ok(
        Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-s", "-i"])
            .arg(&fat)
            .arg(efi.join("EFI"))
            .arg("::/"),
    );
    let script = format!(
        "label: gpt\nstart=2048, size={}, type=linux\nstart={}, size={}, type=uefi\n",
        EXT4_MIB * 2048,
        (1 + EXT4_MIB) * 2048,
        FAT_MIB * 2048
    );
    partitioned_disk(
        &disk,
        DISK_MIB,
        &script,
        &[(&ext4, MIB), (&fat, (1 + EXT4_MIB) * MIB)],
    );
    disk
}

#[test]
fn browse_and_download_a_backup_s_files() {
    require!("mke2fs" from "e2fsprogs", "sfdisk" from "fdisk", "mkfs.vfat" from "dosfstools",
        "mcopy" from "mtools", "curl" from "curl", "nbdcopy" from "libnbd-bin", "unzip" from "unzip");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_hub, api) = Api::start(&data);
    let src = dir.path().join("src");
    guest_tree(&src, b"hello from the full backup\n");
    let disk = guest_disk(dir.path(), &src, "full");
    let size = (DISK_MIB * MIB) as usize;
    let full = chain::backup(&api.api, &api.token, "fs-vm", "full", size, |uri| {
        run_ok(Command::new("nbdcopy").arg(&disk).arg(uri));
    });

    // The volumes, without a mount.
    let vols = ok(api.get(&format!("/api/v1/backups/{full}/disks/0/volumes")));
    let v = vols["volumes"].as_array().unwrap();
    assert_eq!(v.len(), 2, "{vols}");
    assert_eq!(
        (
            &v[0]["name"],
            &v[0]["filesystem"],
            &v[0]["label"],
            &v[0]["uuid"]
        ),
        (
            &json!("partition-1"),
            &json!("ext4"),
            &json!("guest-root"),
            &json!("0b6a4c53-5f0e-4d4b-9d43-0d4f1b9e2a11")
        ),
        "{vols}"
    );
    assert_eq!(v[0]["size_bytes"], EXT4_MIB * MIB);
    assert_eq!(v[0]["total_bytes"], EXT4_MIB * MIB);
    let used = v[0]["used_bytes"].as_u64().unwrap();
    assert!(used > BIG as u64 && used < EXT4_MIB * MIB, "{vols}");
    assert_eq!(
        (&v[1]["name"], &v[1]["filesystem"], &v[1]["label"]),
        (&json!("partition-2"), &json!("fat"), &json!("EFI"))
    );

    // Mount, as the GUI does.
    let m = api.mount(&full, 0);
    let mid = m["mount_id"].as_str().unwrap().to_owned();
    assert_eq!(
        (&m["backup_id"], &m["disk_index"], &m["status"]),
        (&json!(full), &json!(0), &json!("mounted"))
    );
    assert_eq!(m["filesystem_type"], "ext4,fat");
    let mounts = ok(api.get("/api/v1/restore/mounts"));
    assert_eq!(mounts["count"], 1);
    assert_eq!(
        (
            &mounts["mounts"][0]["backup_id"],
            &mounts["mounts"][0]["disk_index"]
        ),
        (&json!(full), &json!(0))
    );

    // `/` is one directory per partition; the GUI appends `name` to the path it is at.
    let root = ok(api.get(&format!("/api/v1/restore/{mid}/files?path=/")));
    let names: Vec<&str> = root["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["partition-1", "partition-2"]);
    assert_eq!(root["files"][0]["path"], "/partition-1");
    assert_eq!(root["files"][0]["type"], "directory");

    // One directory, then the whole tree, against the source.
    let top = ok(api.get(&format!("/api/v1/restore/{mid}/files?path=/partition-1")));
    let want = source_listing(&src);
    let top_want: BTreeMap<String, String> = want
        .iter()
        .filter(|(p, _)| p.matches('/').count() == 1)
        .map(|(p, k)| (p.clone(), k.clone()))
        .collect();
    assert_eq!(listing_of(&top["files"], "/partition-1"), top_want);
    let hello = top["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "hello.txt")
        .unwrap();
    assert_eq!(
        (&hello["mode"], &hello["is_symlink"]),
        (&json!("0644"), &json!(false))
    );
    assert!(
        hello["modified_time"].as_str().unwrap().ends_with('Z'),
        "{hello}"
    );
    let tree = ok(api.get(&format!(
        "/api/v1/restore/{mid}/files?path=/partition-1&recursive=true"
    )));
    assert_eq!(tree["truncated"], false);
    assert_eq!(listing_of(&tree["files"], "/partition-1"), want);
    let some = ok(api.get(&format!(
        "/api/v1/restore/{mid}/files?path=/partition-1&recursive=true&limit=5"
    )));
    assert_eq!(
        (&some["total_count"], &some["truncated"]),
        (&json!(5), &json!(true))
    );

    // Every file downloads byte for byte; a symlink gives its target inside the guest.
    let out = dir.path().join("out");
    fs::create_dir_all(&out).unwrap();
    for (path, kind) in &want {
        if !kind.starts_with("file") {
            continue;
        }
        let got = out.join("f");
        let (status, headers) = api.curl(
            &format!(
                "/api/v1/restore/{mid}/download?path={}",
                q(&format!("/partition-1{path}"))
            ),
            &got,
            &[],
        );
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            fs::read(&got).unwrap(),
            fs::read(src.join(&path[1..])).unwrap(),
            "{path}"
        );
        assert_eq!(
            headers["content-length"],
            fs::metadata(src.join(&path[1..]))
                .unwrap()
                .len()
                .to_string()
        );
    }
    let guest_passwd = fs::read(src.join("etc/passwd")).unwrap();
    for link in ["/passwd-link", "/docs/up-link"] {
        let got = out.join("link");
        let (status, _) = api.curl(
            &format!("/api/v1/restore/{mid}/download?path=/partition-1{link}"),
            &got,
            &[],
        );
        assert_eq!(status, 200);
        assert_eq!(
            fs::read(&got).unwrap(),
            guest_passwd,
            "{link} must read the guest's file"
        );
    }
    let info = ok(api.get(&format!(
        "/api/v1/restore/{mid}/file-info?path=/partition-1/passwd-link"
    )));
    assert_eq!(
        (&info["is_symlink"], &info["symlink_target"]),
        (&json!(true), &json!("/etc/passwd"))
    );

    // Traversal, plain and encoded, never reaches the host's files.
    api.never_leaves_the_guest(
        &mid,
        &[
            "/partition-1/../../../../etc/passwd",
            "/partition-1/%2e%2e/%2e%2e/etc/passwd",
            "%2F..%2F..%2Fetc%2Fpasswd",
            "/../../../etc/passwd",
            "/partition-1/..%2F..%2F..%2Fetc%2Fshadow",
        ],
        &guest_passwd,
        &out.join("trav"),
    );

    // Ranges.
    let got = out.join("range");
    let (status, headers) = api.curl(
        &format!("/api/v1/restore/{mid}/download?path=/partition-1/big.bin"),
        &got,
        &["-r", "50000000-50999999"],
    );
    assert_eq!(status, 206);
    assert_eq!(
        headers["content-range"],
        format!("bytes 50000000-50999999/{BIG}")
    );
    let big = fs::read(src.join("big.bin")).unwrap();
    assert_eq!(fs::read(&got).unwrap(), big[50_000_000..51_000_000]);
    let (status, _) = api.curl(
        &format!("/api/v1/restore/{mid}/download?path=/partition-1/big.bin"),
        &got,
        &["-r", &format!("{BIG}-")],
    );
    assert_eq!(status, 416);

    // Directories as archives: empty folders and symlinks kept.
    let unzipped = out.join("unzipped");
    api.unpacked(&mid, "/partition-1", "zip", &unzipped);
    let lost = unzipped.join("partition-1/lost+found");
    assert!(lost.is_dir());
    fs::remove_dir(&lost).unwrap();
    same_tree(&src, &unzipped.join("partition-1"));
    let untarred = out.join("untarred");
    api.unpacked(&mid, "/partition-1/docs", "tar.gz", &untarred);
    same_tree(&src.join("docs"), &untarred.join("docs"));
    let zip = out.join("etc.zip");
    // A directory through `download` is a zip too.
    let (status, headers) = api.curl(
        &format!("/api/v1/restore/{mid}/download?path=/partition-1/empty"),
        &zip,
        &[],
    );
    assert_eq!(
        (status, headers["content-type"].as_str()),
        (200, "application/zip")
    );

    // The FAT partition reads too.
    let (status, _) = api.curl(
        &format!("/api/v1/restore/{mid}/download?path=/partition-2/efi/boot/bootx64.efi"),
        &got,
        &[],
    );
    assert_eq!(status, 200);
    assert_eq!(fs::read(&got).unwrap(), vec![0x5Au8; 70_000]);

    // Refusals.
    let missing = api.get(&format!(
        "/api/v1/restore/{mid}/files?path=/partition-1/nope"
    ));
    assert_eq!(missing.0, 404, "{}", missing.1);
    let not_dir = api.get(&format!(
        "/api/v1/restore/{mid}/files?path=/partition-1/hello.txt"
    ));
    assert_eq!(not_dir.0, 400, "{}", not_dir.1);
    let no_vol = api.get(&format!("/api/v1/restore/{mid}/files?path=/partition-9"));
    assert_eq!(no_vol.0, 404, "{}", no_vol.1);
    let bad_format = api.get(&format!(
        "/api/v1/restore/{mid}/download-directory?path=/&format=rar"
    ));
    assert_eq!(bad_format.0, 400, "{}", bad_format.1);

    // An incremental that changed one file shows the new content; the full still the old.
    let src2 = dir.path().join("src2");
    guest_tree(&src2, b"hello from the incremental\n");
    let disk2 = guest_disk(dir.path(), &src2, "incr");
    let incr = chain::backup(&api.api, &api.token, "fs-vm", "incremental", size, |uri| {
        run_ok(Command::new("nbdcopy").arg(&disk2).arg(uri));
    });
    let m2 = api.mount(&incr, 0);
    let mid2 = m2["mount_id"].as_str().unwrap();
    for (mount, want) in [
        (mid2, "hello from the incremental\n"),
        (mid.as_str(), "hello from the full backup\n"),
    ] {
        let (status, _) = api.curl(
            &format!("/api/v1/restore/{mount}/download?path=/partition-1/hello.txt"),
            &got,
            &[],
        );
        assert_eq!(status, 200);
        assert_eq!(fs::read_to_string(&got).unwrap(), want);
    }

    // Resources count mounts; unmounting ends one; deleting a backup ends its mounts.
    let res = ok(api.get("/api/v1/restore/resources"));
    assert_eq!(
        (
            &res["active_mounts"],
            &res["max_mounts"],
            &res["available_slots"]
        ),
        (&json!(2), &json!(16), &json!(14))
    );
    let cleanup = ok(api.get("/api/v1/restore/cleanup-status"));
    assert_eq!(
        (
            &cleanup["idle_timeout_seconds"],
            &cleanup["active_mount_count"]
        ),
        (&json!(3600), &json!(2))
    );
    let gone = ok(http(
        "DELETE",
        &api.api,
        &format!("/api/v1/restore/{mid}"),
        Some(&api.token),
        None,
    ));
    assert_eq!(gone["mount_id"], json!(mid));
    assert_eq!(
        api.get(&format!("/api/v1/restore/{mid}/files?path=/")).0,
        404
    );
    ok(http(
        "DELETE",
        &api.api,
        &format!("/api/v1/backups/{incr}"),
        Some(&api.token),
        None,
    ));
    assert_eq!(ok(api.get("/api/v1/restore/mounts"))["count"], 0);
}
