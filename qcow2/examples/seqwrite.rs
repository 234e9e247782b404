//! Quick throughput probe (not a benchmark suite; criterion benches live in `benches/`):
//! sequential 2 MiB writes into a fresh image vs the same writes into a raw file, then random
//! 4 KiB reads from both. `cargo run --release -p qcow2 --example seqwrite -- DIR [GiB] [threads]`

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use qcow2::{CreateOptions, Image, OpenOptions};

fn drop_cache(f: &std::fs::File) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: posix_fadvise only reads its integer arguments; the fd stays open for the call.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("DIR"));
    let gib: u64 = args.next().map_or(2, |s| s.parse().unwrap());
    let threads: u64 = args.next().map_or(1, |s| s.parse().unwrap());
    let total = gib << 30;
    let chunk = 2u64 << 20;
    let buf = vec![0x5au8; chunk as usize];

    let raw_path = dir.join("probe.raw");
    let _ = std::fs::remove_file(&raw_path);
    let raw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&raw_path)
        .unwrap();
    let run = |write: &(dyn Fn(u64) + Sync)| {
        let next = AtomicU64::new(0);
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    loop {
                        let off = next.fetch_add(chunk, Ordering::Relaxed);
                        if off >= total {
                            break;
                        }
                        write(off);
                    }
                });
            }
        });
        t.elapsed().as_secs_f64()
    };
    let raw_secs = run(&|off| raw.write_all_at(&buf, off).unwrap());
    let t = Instant::now();
    raw.sync_data().unwrap();
    let raw_sync = t.elapsed().as_secs_f64();
    // Both runs start with the page cache in the same state: evict the raw file's pages.
    drop_cache(&raw);

    let img_path = dir.join("probe.qcow2");
    let _ = std::fs::remove_file(&img_path);
    Image::create(
        &img_path,
        &CreateOptions {
            size: total,
            ..Default::default()
        },
    )
    .unwrap();
    let img = Image::open(
        &img_path,
        &OpenOptions {
            writable: true,
            ..Default::default()
        },
    )
    .unwrap();
    let q_secs = run(&|off| img.write_at(off, &buf).unwrap());
    let t = Instant::now();
    img.flush().unwrap();
    let q_sync = t.elapsed().as_secs_f64();
    let gbs = |s: f64| total as f64 / s / (1u64 << 30) as f64;
    println!(
        "seq 2 MiB writes, {gib} GiB, {threads} thread(s): raw {:.2} GiB/s (+{raw_sync:.2}s sync), qcow2 {:.2} GiB/s (+{q_sync:.2}s flush) = {:.0}%",
        gbs(raw_secs),
        gbs(q_secs),
        100.0 * raw_secs / q_secs
    );

    let n = 200_000u64;
    let mut small = vec![0u8; 4096];
    let mut x = 88172645463325252u64;
    let mut offs = Vec::with_capacity(n as usize);
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        offs.push((x % (total / 4096)) * 4096);
    }
    let t = Instant::now();
    for &o in &offs {
        raw.read_exact_at(&mut small, o).unwrap();
    }
    let r_raw = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for &o in &offs {
        img.read_at(o, &mut small).unwrap();
    }
    let r_q = t.elapsed().as_secs_f64();
    println!(
        "random 4 KiB reads (page cache): raw {:.0}k/s, qcow2 {:.0}k/s = {:.0}%",
        n as f64 / r_raw / 1e3,
        n as f64 / r_q / 1e3,
        100.0 * r_raw / r_q
    );
    img.close().unwrap();
    let _ = std::fs::remove_file(&img_path);
    let _ = std::fs::remove_file(&raw_path);
}
