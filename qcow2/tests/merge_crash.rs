//! Crash safety of `qcow2::merge`: a child process merges Y into its backing file X and is
//! SIGKILLed at many moments (before, during and after the commit, around the rename). After
//! each kill: while X's file exists, Y still reads byte-exact through Y -> X -> ... and X checks
//! without corruption; then the recovery rule (X exists -> merge again) runs, and Y's path reads
//! as Y did, Y's child reads as it did, and qemu-img check finds no corruption. Half the rounds
//! merge the full at the bottom, half a middle image. The child is this test binary re-executed
//! with `QCOW2_MERGE_CHILD` set.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use qcow2::merge::{self, MergeOptions};
use qcow2::{CreateOptions, ErrorKind, Image, OpenOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SIZE: u64 = 32 << 20;
const ROUNDS: u64 = 24;

#[test]
fn merge_child_entry() {
    // Only does something when re-executed by `kill_merge_at_many_moments`.
    if let Ok(args) = std::env::var("QCOW2_MERGE_CHILD") {
        let (child, progress) = args.split_once('|').unwrap();
        let progress = PathBuf::from(progress);
        let opts = MergeOptions {
            progress: Some(Arc::new(move |done, total| {
                // One line per call, so a kill never leaves the file without a complete line.
                use std::io::Write as _;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&progress)
                    .unwrap();
                let _ = writeln!(f, "{done} {total}");
            })),
            ..Default::default()
        };
        merge::merge_into_child(Path::new(child), &opts).unwrap();
        std::fs::write(format!("{child}.done"), b"").unwrap();
    }
}

fn create(path: &Path, backing: Option<&Path>) {
    Image::create(
        path,
        &CreateOptions {
            size: SIZE,
            backing_file: backing.map(Path::to_path_buf),
            ..Default::default()
        },
    )
    .unwrap();
}

/// Pieces of 64 KiB ..= 1 MiB (some unaligned) spread over the disk, about a quarter of it, and
/// zero writes between them; `fill` writes everything.
fn scribble(path: &Path, seed: u64, fill: bool) {
    let img = Image::open(
        path,
        &OpenOptions {
            writable: true,
            open_backing: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < SIZE {
        let len = if fill {
            1 << 20
        } else {
            rng.random_range(64 << 10..=1 << 20)
        };
        let len = len.min(SIZE - pos);
        if fill || rng.random_range(0..4) == 0 {
            let word: u64 = rng.random();
            for (i, w) in buf[..len as usize].chunks_exact_mut(8).enumerate() {
                w.copy_from_slice(&(word ^ (pos + i as u64 * 8)).to_le_bytes());
            }
            img.write_at(pos, &buf[..len as usize]).unwrap();
        } else if rng.random_range(0..6) == 0 {
            img.write_zeroes(pos + 4096, len / 2, false).unwrap();
        }
        pos += len
            + if fill {
                0
            } else {
                rng.random_range(0..64 << 10)
            };
    }
    img.close().unwrap();
}

/// One round's chain: X, its child Y, Y's child Z, in one directory per backup (relative backing
/// names, so a copy of the tree is a chain of its own).
struct Chain {
    x: PathBuf,
    y: PathBuf,
    z: PathBuf,
}

impl Chain {
    fn at(dir: &Path) -> Chain {
        let p = |name: &str| dir.join(name).join("disk0.qcow2");
        Chain {
            x: p("x"),
            y: p("y"),
            z: p("z"),
        }
    }
}

/// What a template chain reads before the merge, and how much the merge has to do.
struct Expected {
    y_raw: Vec<u8>,
    z_raw: Vec<u8>,
    /// Files in Z's chain before the merge, Z included.
    depth: usize,
    /// Guest bytes Y maps itself (the merge's progress total).
    work: u64,
}

/// Even templates: X full <- Y <- Z. Odd: F <- X <- Y <- Z.
fn make_template(dir: &Path, middle: bool) -> Expected {
    for name in ["f", "x", "y", "z"] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
    }
    let c = Chain::at(dir);
    let seed = u64::from(middle) * 10;
    if middle {
        let f = dir.join("f").join("disk0.qcow2");
        create(&f, None);
        scribble(&f, seed, true);
        create(&c.x, Some(&f));
        scribble(&c.x, seed + 1, false);
    } else {
        create(&c.x, None);
        scribble(&c.x, seed + 1, true);
    }
    create(&c.y, Some(&c.x));
    scribble(&c.y, seed + 2, false);
    create(&c.z, Some(&c.y));
    scribble(&c.z, seed + 3, false);
    let y = Image::open(&c.y, &OpenOptions::default()).unwrap();
    let work = y
        .block_status(0, SIZE)
        .unwrap()
        .iter()
        .filter(|e| e.kind != qcow2::ExtentKind::Unallocated)
        .map(|e| e.length)
        .sum();
    Expected {
        y_raw: to_raw(&c.y),
        z_raw: to_raw(&c.z),
        depth: if middle { 4 } else { 3 },
        work,
    }
}

fn copy_tree(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success(), "cp: {out:?}");
}

fn progress_of(path: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let last = text.lines().rfind(|l| l.contains(' '))?;
    let (done, total) = last.split_once(' ')?;
    Some((done.parse().ok()?, total.parse().ok()?))
}

/// Runs `f` until it is not refused for a lock a killed child still holds (with direct I/O its
/// io_uring keeps the file open a moment after the process is reaped), boundedly.
fn unlocked<T>(mut f: impl FnMut() -> qcow2::Result<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match f() {
            Err(e) if e.kind() == ErrorKind::Busy && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

fn check_no_corruption(img: &Path, what: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, text) = qemu_img(&["check", "-f", "qcow2", img.to_str().unwrap()]);
        if code == 1 && text.contains("lock") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        assert!(
            code == 0 || code == 3,
            "{what}: qemu-img check {code}: {text}"
        );
        return code;
    }
}

/// Kills the merging child once it reported `threshold` bytes done (None: at once), `delay`
/// later; returns whether it had finished.
fn run_and_kill(chain: &Chain, progress: &Path, threshold: Option<u64>, delay: Duration) -> bool {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(&exe)
        .args([
            "--exact",
            "merge_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "QCOW2_MERGE_CHILD",
            format!("{}|{}", chain.y.display(), progress.display()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let start = Instant::now();
    if let Some(threshold) = threshold {
        while progress_of(progress).is_none_or(|(done, _)| done < threshold) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "no progress");
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    std::thread::sleep(delay);
    let _ = child.kill();
    let status = child.wait().unwrap();
    let done = chain.y.with_extension("qcow2.done").exists();
    assert!(done || !status.success(), "child exited without finishing");
    done
}

/// After a kill: while X's file exists, Y reads as before through X and X is consistent; then
/// the recovery rule, and the merged chain reads as before. Returns (X was left, check exit).
fn recover_and_verify(chain: &Chain, want: &Expected, round: u64) -> (bool, i32) {
    let x_left = chain.x.exists();
    if x_left {
        check_no_corruption(&chain.x, &format!("round {round}: parent after kill"));
        assert!(
            to_raw(&chain.y) == want.y_raw,
            "round {round}: Y changed before the rename"
        );
        // The recovery rule.
        unlocked(|| merge::merge_into_child(&chain.y, &MergeOptions::default()));
    }
    assert!(!chain.x.exists());
    let code = check_no_corruption(&chain.y, &format!("round {round}: merged"));
    assert!(
        to_raw(&chain.y) == want.y_raw,
        "round {round}: merged Y differs"
    );
    assert!(to_raw(&chain.z) == want.z_raw, "round {round}: Z differs");
    let info = qemu_img_ok(&["info", "--backing-chain", chain.z.to_str().unwrap()]);
    assert_eq!(
        info.matches("image: ").count(),
        want.depth - 1,
        "round {round}: {info}"
    );
    (x_left, code)
}

#[test]
fn kill_merge_at_many_moments() {
    let dir = tempfile::tempdir().unwrap();
    let templates = [false, true].map(|middle| {
        let t = dir.path().join(format!("template{}", u8::from(middle)));
        let want = make_template(&t, middle);
        (t, want)
    });
    let mut outcomes = Vec::new();
    for round in 0..ROUNDS {
        let (template, want) = &templates[round as usize % 2];
        let rdir = dir.path().join(format!("r{round}"));
        copy_tree(template, &rdir);
        let chain = Chain::at(&rdir);
        let progress = rdir.join("progress");
        // Spread over the commit, some at its very end (around close and rename), some at once.
        let threshold = match round % 8 {
            0 => None,
            k => Some(want.work * (k - 1) / 6),
        };
        // Past the end of the commit, longer waits land in the close, the rename, or after.
        let delay = match round % 8 {
            7 => Duration::from_millis(round / 8 * 20),
            _ => Duration::from_micros(round * 397 % 3000),
        };
        let finished = run_and_kill(&chain, &progress, threshold, delay);
        let reached = progress_of(&progress).map_or(0, |(d, _)| d);
        let (x_left, code) = recover_and_verify(&chain, want, round);
        outcomes.push((reached, x_left, finished, code));
        std::fs::remove_dir_all(&rdir).unwrap();
    }
    eprintln!(
        "merge crash rounds (bytes done when killed, X left, child finished, check exit): {outcomes:?}"
    );
    let interrupted = outcomes.iter().filter(|o| o.1 && o.0 > 0).count();
    assert!(
        interrupted >= ROUNDS as usize / 2,
        "only {interrupted} rounds were killed during the commit"
    );
}
