//! LVM2 volumes made by the real tools: `pvcreate`, `vgcreate`, `lvcreate` and `lvextend` on a
//! loop device over an image file, with activation off (no device-mapper, nothing mounted),
//! so only the metadata is written; the filesystems are `mke2fs -d` images copied into the
//! LVs' extents where `lvs` says they are. Needs root and a free loop device; SKIPPED without.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use guestfs::{Error, ReadAt, logical_volumes, open_logical_volume, probe};

/// Off: the device-mapper (activation), metadata backups under /etc/lvm, udev, the devices
/// file: the tools touch nothing but the loop device.
const LVM_CONFIG: &str = "--config=global{activation=0} backup{backup=0 archive=0} \
    devices{use_devicesfile=0} activation{udev_sync=0 udev_rules=0}";

fn lvm(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .arg(LVM_CONFIG)
        .args(&args[1..])
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Detaches the loop device even when the test fails half way.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A segment of an LV: its bytes `[lv_start, lv_start + len)` are at PV extent `pe`.
struct Segment {
    lv: String,
    lv_start: u64,
    len: u64,
    pe: u64,
}

/// A 200 MiB PV in `pv` with VG `guestvg`: `root` (60 MiB, then extended by 8 MiB after `home`
/// was made, so its second segment lies elsewhere on the PV) and `home` (40 MiB). Returns the
/// segments, the first extent's offset and the extent size; None where it cannot run here.
fn make_vg(pv: &Path) -> Option<(Vec<Segment>, u64, u64)> {
    fs::File::create(pv).unwrap().set_len(200 << 20).unwrap();
    let attach = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(pv)
        .output()
        .ok()?;
    if !attach.status.success() {
        return None;
    }
    let dev = Loop(String::from_utf8(attach.stdout).unwrap().trim().to_owned());
    lvm(&["pvcreate", "-q", &dev.0]);
    lvm(&["vgcreate", "-q", "guestvg", &dev.0]);
    lvm(&[
        "lvcreate", "-q", "-an", "-Zn", "-L", "60M", "-n", "root", "guestvg",
    ]);
    lvm(&[
        "lvcreate", "-q", "-an", "-Zn", "-L", "40M", "-n", "home", "guestvg",
    ]);
    lvm(&["lvextend", "-q", "-L", "+8M", "guestvg/root"]);
    let num = |s: &str| s.trim().parse::<u64>().unwrap();
    let pe_start = num(&lvm(&[
        "pvs",
        "--noheadings",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        "pe_start",
        &dev.0,
    ]));
    let extent = num(&lvm(&[
        "vgs",
        "--noheadings",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        "vg_extent_size",
        "guestvg",
    ]));
    let rows = lvm(&[
        "lvs",
        "--noheadings",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        "lv_name,seg_start,seg_size,seg_pe_ranges",
        "guestvg",
    ]);
    let segments = rows
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let range = f[3].rsplit(':').next().unwrap();
            Segment {
                lv: f[0].to_owned(),
                lv_start: num(f[1]),
                len: num(f[2]),
                pe: num(range.split('-').next().unwrap()),
            }
        })
        .collect();
    drop(dev);
    Some((segments, pe_start, extent))
}

#[test]
fn linear_volumes_of_two_segments_read_like_their_images() {
    require!("pvcreate" from "lvm2", "losetup" from "mount", "mke2fs" from "e2fsprogs");
    if !nix_root() {
        eprintln!("SKIPPED: LVM's tools need root (for a loop device)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pv = dir.path().join("pv.img");
    let Some((segments, pe_start, extent)) = make_vg(&pv) else {
        eprintln!("SKIPPED: no loop device could be attached here");
        return;
    };
    assert_eq!(segments.iter().filter(|s| s.lv == "root").count(), 2);

    // The filesystems, each copied segment by segment to where LVM put it.
    let root = common::make_ext4(dir.path(), "68M");
    let home_src = dir.path().join("home-src");
    fs::create_dir_all(home_src.join("alice")).unwrap();
    fs::write(home_src.join("alice/notes.txt"), b"in home\n").unwrap();
    let home = dir.path().join("home.ext4");
    common::run(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", "home", "-d"])
            .arg(&home_src)
            .arg(&home)
            .arg("40M"),
    );
    let out = fs::OpenOptions::new().write(true).open(&pv).unwrap();
    for s in &segments {
        let image = fs::read(if s.lv == "root" { &root } else { &home }).unwrap();
        let part = &image[s.lv_start as usize..(s.lv_start + s.len) as usize];
        out.write_all_at(part, pe_start + s.pe * extent).unwrap();
    }
    drop(out);

    let volume = common::open(&pv);
    assert_eq!(guestfs::identify(&*volume).unwrap(), Some("lvm2"));
    let lvs = logical_volumes(volume.clone()).unwrap();
    let summary: Vec<(&str, &str, Option<u64>)> = lvs
        .iter()
        .map(|l| (l.vg.as_str(), l.name.as_str(), l.size))
        .collect();
    assert_eq!(
        summary,
        [
            ("guestvg", "home", Some(40 << 20)),
            ("guestvg", "root", Some(68 << 20))
        ]
    );

    // Byte for byte, across the jump between root's segments.
    let lv = open_logical_volume(volume.clone(), "root").unwrap();
    let want = fs::read(&root).unwrap();
    let mut got = vec![0u8; want.len()];
    for (i, chunk) in got.chunks_mut(3 << 20).enumerate() {
        lv.read_at(chunk, (i as u64) * (3 << 20)).unwrap();
    }
    assert!(got == want, "root LV differs from its image");
    assert!(lv.read_at(&mut [0u8; 2], (68 << 20) - 1).is_err());

    // And as filesystems.
    let fs = probe(lv).unwrap();
    assert_eq!(
        common::read_all(&*fs, "/big.bin").unwrap(),
        common::pattern(common::BIG_LEN)
    );
    let home_fs = probe(open_logical_volume(volume.clone(), "home").unwrap()).unwrap();
    assert_eq!(home_fs.info().label.as_deref(), Some("home"));
    assert_eq!(
        common::read_all(&*home_fs, "/alice/notes.txt").unwrap(),
        b"in home\n"
    );
    assert!(matches!(
        open_logical_volume(volume, "swap"),
        Err(Error::NotFound(_))
    ));

    // Damage to the label, the PV header or the metadata text: an error, never a panic.
    let base = fs::read(&pv).unwrap();
    let hot: Vec<usize> = (0..pe_start as usize).filter(|&i| base[i] != 0).collect();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut refused = 0;
    for _ in 0..300 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut d = base[..(pe_start + (72 << 20)) as usize].to_vec();
        let at = hot[seed as usize % hot.len()];
        d[at] ^= 1 + (seed >> 32) as u8 % 255;
        let d: std::sync::Arc<dyn ReadAt> = std::sync::Arc::new(d);
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                match logical_volumes(d.clone()) {
                    Ok(lvs) => {
                        for lv in lvs {
                            if let Ok(r) = open_logical_volume(d.clone(), &lv.name) {
                                let _ = r.read_at(&mut [0u8; 4096], 0);
                                let _ = probe(r).map(|fs| fs.list("/"));
                            }
                        }
                    }
                    Err(_) => refused += 1,
                }
            }));
        assert!(outcome.is_ok(), "panicked with byte {at} changed");
    }
    eprintln!(
        "{} metadata bytes, 300 mutations: {refused} refused",
        hot.len()
    );
}

fn nix_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}
