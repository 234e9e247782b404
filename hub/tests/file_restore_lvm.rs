//! File-level restore through an LVM2 volume: a GPT disk whose one partition is a PV, made by
//! LVM's own tools on a loop device over that partition of the disk image (activation off:
//! no device-mapper, nothing mounted), its logical volume holding an ext4 made by `mke2fs -d`
//! where `pvs` says the LV's extents start; backed up over NBD and browsed through the API.
//! Needs root and a free loop device; SKIPPED without.

mod common;

use std::fs;
use std::process::Command;

use common::chain;
use common::restore::*;
use common::*;
use serde_json::json;

const PART_MIB: u64 = 160;
const DISK_MIB: u64 = PART_MIB + 2;
const LVM_CONFIG: &str = "--config=global{activation=0} backup{backup=0 archive=0} \
    devices{use_devicesfile=0} activation{udev_sync=0 udev_rules=0}";

/// Runs an LVM tool with [`LVM_CONFIG`]: its stdout.
fn lvm(tool: &str, args: &[&str]) -> String {
    let out = run_ok(
        Command::new(tool)
            .arg(LVM_CONFIG)
            .args(args)
            .env("LVM_SUPPRESS_FD_WARNINGS", "1"),
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_logical_volume_browses_like_a_partition() {
    require!("pvcreate" from "lvm2", "losetup" from "mount", "mke2fs" from "e2fsprogs",
        "sfdisk" from "fdisk", "curl" from "curl", "nbdcopy" from "libnbd-bin");
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    let script = format!(
        "label: gpt\nstart=2048, size={}, type=lvm\n",
        PART_MIB * 2048
    );
    partitioned_disk(&disk, DISK_MIB, &script, &[]);
    let attach = Command::new("losetup")
        .args(["-f", "--show", "--offset"])
        .arg(MIB.to_string())
        .arg("--sizelimit")
        .arg((PART_MIB * MIB).to_string())
        .arg(&disk)
        .output()
        .unwrap();
    if !attach.status.success() {
        eprintln!(
            "SKIPPED: no loop device here (needs root): {}",
            String::from_utf8_lossy(&attach.stderr)
        );
        return;
    }
    let dev = String::from_utf8(attach.stdout).unwrap().trim().to_owned();
    let made = std::panic::catch_unwind(|| {
        lvm("pvcreate", &["-q", &dev]);
        lvm("vgcreate", &["-q", "guestvg", &dev]);
        lvm(
            "lvcreate",
            &[
                "-q", "-an", "-Zn", "-l", "100%FREE", "-n", "root", "guestvg",
            ],
        );
        let bytes = |s: String| s.parse::<u64>().unwrap();
        let q = ["--noheadings", "--units", "b", "--nosuffix", "-o"];
        let pe_start = bytes(lvm("pvs", &[&q[..], &["pe_start", &dev]].concat()));
        let lv_size = bytes(lvm("lvs", &[&q[..], &["lv_size", "guestvg/root"]].concat()));
        (pe_start, lv_size)
    });
    let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    let (pe_start, lv_size) = made.unwrap();

    let src = dir.path().join("src");
    guest_tree(&src, b"hello from a logical volume\n");
    let ext4 = dir.path().join("root.ext4");
    run_ok(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", "lvroot", "-d"])
            .arg(&src)
            .arg(&ext4)
            .arg(format!("{}k", lv_size / 1024)),
    );
    let out = fs::OpenOptions::new().write(true).open(&disk).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&out, &fs::read(&ext4).unwrap(), MIB + pe_start)
        .unwrap();
    drop(out);

    let data = dir.path().join("data");
    let (_hub, api) = Api::start(&data);
    let size = (DISK_MIB * MIB) as usize;
    let full = chain::backup(&api.api, &api.token, "lvm-vm", "full", size, |uri| {
        run_ok(Command::new("nbdcopy").arg(&disk).arg(uri));
    });

    let vols = ok(api.get(&format!("/api/v1/backups/{full}/disks/0/volumes")));
    let v = vols["volumes"].as_array().unwrap();
    assert_eq!(v.len(), 2, "{vols}");
    assert_eq!(
        (&v[0]["name"], &v[0]["filesystem"], &v[0]["readable"]),
        (&json!("partition-1"), &json!("lvm2"), &json!(false)),
        "{vols}"
    );
    assert_eq!(
        (
            &v[1]["name"],
            &v[1]["filesystem"],
            &v[1]["label"],
            &v[1]["readable"],
            &v[1]["volume_group"],
            &v[1]["logical_volume"],
            &v[1]["size_bytes"]
        ),
        (
            &json!("lvm-guestvg-root"),
            &json!("ext4"),
            &json!("lvroot"),
            &json!(true),
            &json!("guestvg"),
            &json!("root"),
            &json!(lv_size)
        ),
        "{vols}"
    );

    let mid = api.mount(&full, 0)["mount_id"].as_str().unwrap().to_owned();
    let tree = ok(api.get(&format!(
        "/api/v1/restore/{mid}/files?path=/lvm-guestvg-root&recursive=true"
    )));
    assert_eq!(
        listing_of(&tree["files"], "/lvm-guestvg-root"),
        source_listing(&src)
    );
    let got = dir.path().join("got");
    for path in ["/hello.txt", "/big.bin", "/passwd-link"] {
        let (status, _) = api.curl(
            &format!("/api/v1/restore/{mid}/download?path=/lvm-guestvg-root{path}"),
            &got,
            &[],
        );
        assert_eq!(status, 200, "{path}");
        let want = if path == "/passwd-link" {
            "/etc/passwd"
        } else {
            path
        };
        assert!(
            fs::read(&got).unwrap() == fs::read(src.join(&want[1..])).unwrap(),
            "{path} differs"
        );
    }
    // The PV itself holds no files.
    let pv = api.get(&format!("/api/v1/restore/{mid}/files?path=/partition-1"));
    assert_eq!(pv.0, 422, "{}", pv.1);
}
