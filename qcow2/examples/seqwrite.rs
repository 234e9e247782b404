//! Quick throughput probe (not a benchmark suite; criterion benches live in `benches/`):
//! sequential 2 MiB writes into a fresh image vs the same writes into a fresh raw file on the
//! same filesystem, alternating, each run ending with fdatasync and its pages evicted so the
//! next starts from the same page-cache state; then random 4 KiB reads from both.
//! `cargo run --release -p qcow2 --example seqwrite -- DIR [GiB] [threads] [rounds]`

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use qcow2::{CreateOptions, Image, OpenOptions};

fn drop_cache(path: &std::path::Path) {
    if let Ok(f) = File::open(path) {
        // SAFETY: posix_fadvise only reads its integer arguments; the fd stays open for the call.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("DIR"));
    let gib: u64 = args.next().map_or(2, |s| s.parse().unwrap());
    let threads: u64 = args.next().map_or(1, |s| s.parse().unwrap());
    let rounds: u64 = args.next().map_or(2, |s| s.parse().unwrap());
    let total = gib << 30;
    let chunk = 2u64 << 20;
    let buf = vec![0x5au8; chunk as usize];
    let run = |write: &(dyn Fn(u64) + Sync)| {
        let next = AtomicU64::new(0);
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
    };
    let gbs = |s: f64| total as f64 / s / (1u64 << 30) as f64;
    let raw_path = dir.join("probe.raw");
    let img_path = dir.join("probe.qcow2");
    for round in 0..rounds {
        let _ = std::fs::remove_file(&raw_path);
        let t = Instant::now();
        let raw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&raw_path)
            .unwrap();
        run(&|off| raw.write_all_at(&buf, off).unwrap());
        let raw_buffered = t.elapsed().as_secs_f64();
        raw.sync_data().unwrap();
        let raw_total = t.elapsed().as_secs_f64();
        drop(raw);
        drop_cache(&raw_path);
        let _ = std::fs::remove_file(&raw_path);

        let _ = std::fs::remove_file(&img_path);
        let t = Instant::now();
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
        run(&|off| img.write_at(off, &buf).unwrap());
        let q_buffered = t.elapsed().as_secs_f64();
        img.close().unwrap();
        let q_total = t.elapsed().as_secs_f64();
        drop_cache(&img_path);
        println!(
            "round {round}: seq 2 MiB writes, {gib} GiB, {threads} thread(s): buffered raw {:.2} / qcow2 {:.2} GiB/s; \
             incl. sync raw {:.2} / qcow2 {:.2} GiB/s = {:.0}%",
            gbs(raw_buffered),
            gbs(q_buffered),
            gbs(raw_total),
            gbs(q_total),
            100.0 * raw_total / q_total
        );
    }

    // Random 4 KiB reads, everything in the page cache, L2 tables cached.
    let raw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&raw_path)
        .unwrap();
    run(&|off| raw.write_all_at(&buf, off).unwrap());
    let img = Image::open(&img_path, &OpenOptions::default()).unwrap();
    // Warm both: every page in the cache, every L2 table loaded.
    let mut big = vec![0u8; chunk as usize];
    for off in (0..total).step_by(chunk as usize) {
        raw.read_exact_at(&mut big, off).unwrap();
        img.read_at(off, &mut big).unwrap();
    }
    let mut small = vec![0u8; 4096];
    let mut x = 88172645463325252u64;
    let offs: Vec<u64> = (0..200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (total / 4096)) * 4096
        })
        .collect();
    for _ in 0..2 {
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
            offs.len() as f64 / r_raw / 1e3,
            offs.len() as f64 / r_q / 1e3,
            100.0 * r_raw / r_q
        );
    }
    let _ = std::fs::remove_file(&img_path);
    let _ = std::fs::remove_file(&raw_path);
}
