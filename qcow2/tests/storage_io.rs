//! Which backend `storage_io` picks, and thin images after close in both modes.

mod common;

use std::path::Path;

use common::*;
use qcow2::{CreateOptions, Image, OpenOptions, StorageIo};

fn make(path: &Path, size: u64) {
    Image::create(
        path,
        &CreateOptions {
            size,
            ..Default::default()
        },
    )
    .unwrap();
}

fn open(path: &Path, io: StorageIo, writable: bool) -> Image {
    Image::open(
        path,
        &OpenOptions {
            writable,
            storage_io: io,
            ..Default::default()
        },
    )
    .unwrap()
}

/// `auto` stays buffered on tmpfs and for read-only opens, and goes direct on a disk filesystem
/// (the build's, where direct I/O works); `buffered` and `direct` do what they say.
#[test]
fn auto_is_buffered_on_tmpfs_and_direct_on_disk() {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        let dir = tempfile::tempdir_in(shm).unwrap();
        let p = dir.path().join("a.qcow2");
        make(&p, 1 << 20);
        assert_eq!(open(&p, StorageIo::Auto, true).io_alignment(), 1);
    } else {
        eprintln!("skipping the tmpfs case: no /dev/shm");
    }
    let Some(dir) = scratch_dir(StorageIo::Direct) else {
        return;
    };
    let p = dir.path().join("a.qcow2");
    make(&p, 1 << 20);
    assert!(open(&p, StorageIo::Auto, true).io_alignment() > 1);
    assert_eq!(open(&p, StorageIo::Auto, false).io_alignment(), 1);
    assert_eq!(open(&p, StorageIo::Buffered, true).io_alignment(), 1);
    assert!(open(&p, StorageIo::Direct, false).io_alignment() > 1);
}

/// Direct I/O asks for buffers aligned to the filesystem's block, not only to what `O_DIRECT`
/// accepts (often 512 B): ext4 runs a write from a buffer below block alignment under its inode
/// lock held exclusive, one at a time, and io_uring hands every such write to a kernel worker.
#[test]
fn direct_buffers_are_aligned_to_the_filesystem_block() {
    use std::os::unix::fs::MetadataExt;
    let Some(dir) = scratch_dir(StorageIo::Direct) else {
        return;
    };
    let p = dir.path().join("a.qcow2");
    make(&p, 1 << 20);
    let block = std::fs::metadata(&p).unwrap().blksize() as usize;
    let align = open(&p, StorageIo::Direct, true).io_alignment();
    assert!(
        block.is_power_of_two() && block <= 64 << 10,
        "st_blksize {block}"
    );
    assert!(align >= block, "alignment {align} below the block {block}");
}

/// Preallocation ahead of the frontier is given back at close: the file ends at the last
/// allocated cluster and `qemu-img info` counts about the data written.
#[test]
fn images_stay_thin_after_close() {
    for io in [StorageIo::Buffered, StorageIo::Direct] {
        let Some(dir) = scratch_dir(io) else {
            continue;
        };
        let p = dir.path().join("a.qcow2");
        make(&p, 4 << 30);
        let img = open(&p, io, true);
        let data = vec![0x5au8; 1 << 20];
        // 24 MiB in 1 MiB writes, plus a few unaligned ones, spread over the disk.
        for i in 0..24u64 {
            img.write_at(i * (100 << 20), &data).unwrap();
        }
        img.write_at((3 << 30) + 777, &data[..5000]).unwrap();
        img.close().unwrap();
        check_clean(&p);
        let text = qemu_img_ok(&["info", "--output=json", p.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let actual = v["actual-size"].as_u64().unwrap();
        let len = std::fs::metadata(&p).unwrap().len();
        // Data 24 MiB + one 64 KiB cluster, plus header, tables and an L2 table per 512 MiB.
        assert!(actual < 26 << 20, "{io}: actual size {actual}");
        assert!(len < 26 << 20, "{io}: file length {len}");
        assert!(actual >= 24 << 20, "{io}: actual size {actual}");
    }
}

/// The file is reserved ahead of the allocation frontier while the image is open, never past
/// what the image can use (a 16 MiB disk never grows to a 256 MiB step), and trimmed at close.
#[test]
fn preallocation_runs_ahead_but_stays_within_the_image() {
    for io in [StorageIo::Buffered, StorageIo::Direct] {
        let Some(dir) = scratch_dir(io) else {
            continue;
        };
        let small = dir.path().join("small.qcow2");
        make(&small, 16 << 20);
        let img = open(&small, io, true);
        for i in 0..16u64 {
            img.write_at(i << 20, &vec![i as u8 + 1; 1 << 20]).unwrap();
        }
        let len = std::fs::metadata(&small).unwrap().len();
        assert!(len <= 18 << 20, "{io}: a 16 MiB image's file grew to {len}");
        img.close().unwrap();
        check_clean(&small);

        let big = dir.path().join("big.qcow2");
        make(&big, 8 << 30);
        let img = open(&big, io, true);
        // Reservations run on their own thread: write on, pausing between writes, until one shows
        // as file length ahead of the data (tmpfs reserves nothing).
        let fs = std::process::Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(dir.path())
            .output()
            .unwrap();
        let on_tmpfs = String::from_utf8_lossy(&fs.stdout).trim() == "tmpfs";
        let mut written = 0u64;
        while !on_tmpfs && std::fs::metadata(&big).unwrap().len() < written + (3 << 20) {
            assert!(
                written < 64 << 20,
                "{io}: no preallocation ahead of the data"
            );
            img.write_at(written, &vec![0x77; 1 << 20]).unwrap();
            written += 1 << 20;
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        img.close().unwrap();
        check_clean(&big);
        let len = std::fs::metadata(&big).unwrap().len();
        assert!(
            len < written + (1 << 20),
            "{io}: file length {len} after close, {written} written"
        );
    }
}

/// Preallocation takes at most an eighth of the space still free: near a full disk it stops, and
/// the image grows by what is written, so reserved space never crowds out the data of other
/// backups. Checked on storage with 24 MiB free after the data (an eighth is 3 MiB, below the
/// smallest reservation) against storage with room, where the same writes are reserved ahead.
#[test]
fn preallocation_leaves_a_nearly_full_disk_alone() {
    use qcow2::{MemStorage, Storage};
    use std::sync::Arc;

    fn file_len_after_writes(max_len: u64) -> (u64, u64) {
        let mem = Arc::new(MemStorage::with_max_len(Vec::new(), max_len));
        Image::create_storage(&*mem, 8 << 30, 65536).unwrap();
        let st: Arc<dyn Storage> = mem.clone();
        let img = Image::open_storage(
            st,
            &OpenOptions {
                writable: true,
                ..Default::default()
            },
        )
        .unwrap();
        let data = vec![0x42u8; 1 << 20];
        for i in 0..8u64 {
            img.write_at(i << 20, &data).unwrap();
            // Reservations run on their own thread: give each a moment.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Wait (up to 2 s, for a loaded machine) for a reservation to show.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while mem.len().unwrap() < 10 << 20 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let len = mem.len().unwrap();
        img.close().unwrap();
        (len, mem.len().unwrap())
    }
    // 8 MiB of data and a little metadata: without reservation the storage ends just past it.
    let (tight, tight_closed) = file_len_after_writes(32 << 20);
    assert!(
        tight < 9 << 20,
        "reserved ahead on a nearly full disk: {tight} bytes"
    );
    assert!(tight_closed <= tight);
    let (roomy, roomy_closed) = file_len_after_writes(4 << 30);
    assert!(
        roomy >= 10 << 20,
        "no reservation ahead with room to spare: {roomy} bytes"
    );
    assert!(
        roomy_closed < 9 << 20,
        "the reserved tail stays after close: {roomy_closed}"
    );
}
