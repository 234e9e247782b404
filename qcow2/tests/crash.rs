//! Crash safety: a child process writes and flushes in a loop and is SIGKILLed at many moments.
//! Each time `qemu-img check` (and ours) finds no corruption, and every write flushed before the
//! kill reads back, with buffered and with direct I/O. The child is this test binary re-executed
//! with `QCOW2_CRASH_CHILD` set.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use qcow2::{CreateOptions, Image, OpenOptions, StorageIo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SIZE: u64 = 16 << 20;
const SLOT: u64 = 48 << 10;
const SECTOR: usize = 512;
const FLUSH_EVERY: u64 = 7;

#[derive(Clone, Copy)]
struct Op {
    slot: u64,
    /// Sector range inside the slot.
    first: u64,
    count: u64,
    zero: bool,
}

fn slots() -> u64 {
    SIZE / SLOT
}

/// The deterministic schedule both processes agree on.
fn op(seed: u64, generation: u64) -> Op {
    let mut rng = StdRng::seed_from_u64(seed * 1_000_003 + generation);
    let per = SLOT / SECTOR as u64;
    let slot = rng.random_range(0..slots());
    let (first, count) = if rng.random_bool(0.5) {
        (0, per)
    } else {
        let f = rng.random_range(0..per);
        (f, rng.random_range(1..=per - f))
    };
    Op {
        slot,
        first,
        count,
        zero: rng.random_range(0..8) == 0,
    }
}

/// Every sector says who wrote it.
fn fill_sector(buf: &mut [u8], slot: u64, generation: u64, sector: u64) {
    buf[..8].copy_from_slice(&slot.to_le_bytes());
    buf[8..16].copy_from_slice(&generation.to_le_bytes());
    buf[16..24].copy_from_slice(&sector.to_le_bytes());
    for (i, b) in buf[24..].iter_mut().enumerate() {
        *b = (generation as u8).wrapping_mul(31).wrapping_add(i as u8) | 1;
    }
}

fn child(img: &Path, progress: &Path, seed: u64, storage_io: StorageIo) {
    let image = Image::open(
        img,
        &OpenOptions {
            writable: true,
            open_backing: true,
            l2_cache_bytes: 0,
            storage_io,
            ..Default::default()
        },
    )
    .unwrap();
    let mut prog = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(progress)
        .unwrap();
    let mut buf = vec![0u8; SLOT as usize];
    for generation in 1..200_000 {
        let o = op(seed, generation);
        let off = o.slot * SLOT + o.first * SECTOR as u64;
        let len = (o.count as usize) * SECTOR;
        if o.zero {
            image
                .write_zeroes(off, len as u64, generation % 2 == 0)
                .unwrap();
        } else {
            for s in 0..o.count {
                let at = s as usize * SECTOR;
                fill_sector(&mut buf[at..at + SECTOR], o.slot, generation, o.first + s);
            }
            image.write_at(off, &buf[..len]).unwrap();
        }
        if generation % FLUSH_EVERY == 0 {
            image.flush().unwrap();
            writeln!(prog, "{generation}").unwrap();
        }
    }
}

#[test]
fn crash_child_entry() {
    // Only does something when re-executed by `kill_at_many_moments`.
    if let Ok(args) = std::env::var("QCOW2_CRASH_CHILD") {
        let mut it = args.split('|');
        let img = PathBuf::from(it.next().unwrap());
        let progress = PathBuf::from(it.next().unwrap());
        let seed: u64 = it.next().unwrap().parse().unwrap();
        let io: StorageIo = it.next().unwrap().parse().unwrap();
        child(&img, &progress, seed, io);
    }
}

fn last_flushed(progress: &Path) -> u64 {
    std::fs::read_to_string(progress)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

#[allow(clippy::needless_range_loop)]
fn verify(content: &[u8], seed: u64, flushed: u64, written: u64) {
    // Per slot: the last durable generation, and later ones that may or may not have landed.
    let n = slots() as usize;
    let per = SLOT / SECTOR as u64;
    let mut allowed: Vec<Vec<Vec<(u64, bool)>>> = vec![vec![vec![(0, false)]; per as usize]; n];
    for generation in 1..=written {
        let o = op(seed, generation);
        for s in o.first..o.first + o.count {
            let a = &mut allowed[o.slot as usize][s as usize];
            if generation <= flushed {
                a.clear();
            }
            a.push((generation, o.zero));
        }
    }
    let mut expect = vec![0u8; SECTOR];
    for slot in 0..n {
        for s in 0..per as usize {
            let off = slot * SLOT as usize + s * SECTOR;
            let got = &content[off..off + SECTOR];
            let ok = allowed[slot][s].iter().any(|&(generation, zero)| {
                if zero {
                    return got.iter().all(|&b| b == 0);
                }
                fill_sector(&mut expect, slot as u64, generation, s as u64);
                got == &expect[..]
            });
            assert!(
                ok,
                "slot {slot} sector {s}: content of generation {} not among {:?} (flushed {flushed})",
                u64::from_le_bytes(got[8..16].try_into().unwrap()),
                allowed[slot][s]
            );
        }
    }
}

#[test]
fn kill_at_many_moments_buffered() {
    kill_at_many_moments(StorageIo::Buffered);
}

#[test]
fn kill_at_many_moments_direct() {
    kill_at_many_moments(StorageIo::Direct);
}

fn kill_at_many_moments(io: StorageIo) {
    let Some(dir) = scratch_dir(io) else {
        return;
    };
    let base = dir.path().join("base.qcow2");
    Image::create(
        &base,
        &CreateOptions {
            size: SIZE,
            ..Default::default()
        },
    )
    .unwrap();
    {
        let img = Image::open(
            &base,
            &OpenOptions {
                writable: true,
                storage_io: io,
                ..Default::default()
            },
        )
        .unwrap();
        let mut buf = vec![0u8; SLOT as usize];
        for slot in 0..slots() {
            for s in 0..SLOT / SECTOR as u64 {
                let at = s as usize * SECTOR;
                fill_sector(&mut buf[at..at + SECTOR], slot, 0, s);
            }
            img.write_at(slot * SLOT, &buf).unwrap();
        }
        img.close().unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let mut outcomes = Vec::new();
    for round in 0..22u64 {
        let top = dir.path().join(format!("top{round}.qcow2"));
        let progress = dir.path().join(format!("progress{round}"));
        let cluster_size = [65536, 4096, 512][round as usize % 3];
        Image::create(
            &top,
            &CreateOptions {
                size: SIZE,
                cluster_size,
                backing_file: Some(base.clone()),
                backing_format: None,
                storage_io: io,
            },
        )
        .unwrap();
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                "QCOW2_CRASH_CHILD",
                format!("{}|{}|{round}|{io}", top.display(), progress.display()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // Let it get through a varying number of flushes, then a varying bit more.
        let want = 1 + (round % 6) * 3;
        let start = Instant::now();
        while last_flushed(&progress) < want * FLUSH_EVERY {
            assert!(child.try_wait().unwrap().is_none(), "child exited early");
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "child makes no progress"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(round * 397 % 5000));
        child.kill().unwrap();
        child.wait().unwrap();
        let flushed = last_flushed(&progress);
        // The child may have written up to one flush interval past the last recorded flush (and
        // the op it was in when killed).
        let written = flushed + FLUSH_EVERY;
        // With direct I/O the killed child's io_uring requests keep the image file (and its
        // locks) open until the kernel has torn the rings down, a moment after the process is
        // reaped: qemu-img then finds the image locked. Wait for that, boundedly.
        let lock_deadline = Instant::now() + Duration::from_secs(5);
        let (code, text) = loop {
            let (code, text) = qemu_img(&["check", "-f", "qcow2", top.to_str().unwrap()]);
            if code == 1 && text.contains("lock") && Instant::now() < lock_deadline {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            break (code, text);
        };
        assert!(
            code == 0 || code == 3,
            "round {round}: qemu-img check {code}: {text}"
        );
        let ours = qcow2::check::check(&top, false).unwrap();
        assert_eq!(
            ours.exit_code(),
            code,
            "round {round}: our check {ours:?} vs qemu {text}"
        );
        let raw = to_raw(&top);
        verify(&raw, round, flushed, written);
        let img = Image::open(
            &top,
            &OpenOptions {
                open_backing: true,
                ..Default::default()
            },
        )
        .unwrap();
        let mut ours_raw = vec![0u8; SIZE as usize];
        img.read_at(0, &mut ours_raw).unwrap();
        assert!(
            ours_raw == raw,
            "round {round}: our reader differs from qemu"
        );
        drop(img);
        // The crashed image stays usable.
        let img = Image::open(
            &top,
            &OpenOptions {
                writable: true,
                open_backing: true,
                storage_io: io,
                ..Default::default()
            },
        )
        .unwrap();
        img.write_at(SIZE - 70_000, &[9u8; 70_000]).unwrap();
        img.close().unwrap();
        let (code2, text) = qemu_img(&["check", "-f", "qcow2", top.to_str().unwrap()]);
        assert!(
            code2 == 0 || code2 == 3,
            "round {round} after reuse: {text}"
        );
        outcomes.push((flushed, code));
    }
    eprintln!("{io}: crash rounds (last flushed generation, qemu-img check exit): {outcomes:?}");
}
