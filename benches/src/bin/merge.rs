//! Chain merge (issue 19): `qcow2::merge::merge_into_child` against `qemu-img commit` of the same
//! chain. A full F (data on the head of every 4 MiB stripe, 25 % of the disk by default) and a
//! child Y rewriting a share of it in pieces of
//! 64 KiB ..= 1 MiB spread over the disk are made once; every round copies the pair twice, syncs
//! (and, as root, drops the page cache, so both start from the disk), then merges one copy with
//! ours and commits the other with qemu-img, in alternating order, and checks with
//! `qemu-img compare` that our merged Y reads as qemu's committed F. The ratio is qemu's time
//! over ours, per round; the median of the rounds is reported.
//!
//! Not a test: `cargo run --release -p benches --bin merge -- --dir /work/tmp`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use benches::stats::Summary;
use clap::Parser;
use qcow2::merge::{self, MergeOptions};
use qcow2::{CreateOptions, Image, OpenOptions, StorageIo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(about = "Chain merge: ours against qemu-img commit")]
struct Args {
    /// Virtual disk size.
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    size: u64,
    /// Share of the disk the child rewrites, in percent.
    #[arg(long, default_value_t = 10)]
    percent: u64,
    /// Share of the disk the full holds data on, in percent: the head of every 4 MiB stripe
    /// (the rest unallocated, as in a full of a disk not yet filled).
    #[arg(long, default_value_t = 25)]
    full_percent: u64,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where the images go (a temp dir is made inside); ext4 on a real disk for figures worth
    /// comparing (/tmp may be tmpfs elsewhere).
    #[arg(long, default_value = "/tmp")]
    dir: PathBuf,
    /// How our merge opens the parent: auto (direct on ext4), direct, buffered.
    #[arg(long, default_value = "auto")]
    storage_io: StorageIo,
}

fn parse_size(s: &str) -> Result<u64, String> {
    benches::size::parse_size(s)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir_in(&args.dir).context("temp dir")?;
    let load_start = load_average();
    let template = dir.path().join("template");
    let t0 = Instant::now();
    let child_bytes = make_template(&template, &args)?;
    eprintln!(
        "template: {} disk, child maps {} MiB, made in {:.1?}",
        benches::size::format_size(args.size),
        child_bytes >> 20,
        t0.elapsed()
    );
    let mut rows = Vec::new();
    for round in 0..args.rounds {
        let ours_dir = dir.path().join(format!("ours{round}"));
        let qemu_dir = dir.path().join(format!("qemu{round}"));
        copy_tree(&template, &ours_dir)?;
        copy_tree(&template, &qemu_dir)?;
        settle();
        let (ours, qemu) = if round % 2 == 0 {
            let o = run_ours(&ours_dir, args.storage_io)?;
            settle();
            (o, run_qemu(&qemu_dir)?)
        } else {
            let q = run_qemu(&qemu_dir)?;
            settle();
            (run_ours(&ours_dir, args.storage_io)?, q)
        };
        compare(
            &qemu_dir.join("f/disk0.qcow2"),
            &ours_dir.join("y/disk0.qcow2"),
        )?;
        let ratio = qemu.as_secs_f64() / ours.as_secs_f64();
        eprintln!("round {round}: ours {ours:.2?}, qemu-img commit {qemu:.2?}, ratio {ratio:.2}");
        rows.push((ours, qemu, ratio));
        std::fs::remove_dir_all(&ours_dir)?;
        std::fs::remove_dir_all(&qemu_dir)?;
    }
    report(&args, child_bytes, &rows, &load_start);
    Ok(())
}

/// F with data on `full_percent` of the disk, Y over it rewriting `percent` of it; returns the
/// bytes Y maps.
fn make_template(dir: &Path, args: &Args) -> anyhow::Result<u64> {
    let size = args.size;
    for d in ["f", "y"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let (f, y) = (dir.join("f/disk0.qcow2"), dir.join("y/disk0.qcow2"));
    create(&f, size, None)?;
    let mut rng = StdRng::seed_from_u64(19);
    let mut buf = vec![0u8; 4 << 20];
    let img = open_rw(&f)?;
    let stripe = buf.len() as u64;
    let head = (stripe * args.full_percent.min(100) / 100) as usize;
    let mut pos = 0;
    while pos < size && head > 0 {
        let n = (head as u64).min(size - pos) as usize;
        rng.fill(&mut buf[..n]);
        img.write_at(pos, &buf[..n])?;
        pos += stripe;
    }
    img.close()?;
    create(&y, size, Some(&f))?;
    let img = open_rw(&y)?;
    // Pieces at random places: a piece every `stride` bytes on average covers `percent`.
    let mean_piece = ((64u64 << 10) + (1 << 20)) / 2;
    let stride = mean_piece * 100 / args.percent.max(1);
    let mut written = 0;
    let mut pos = 0;
    loop {
        let len = rng.random_range(1u64..=16) * (64 << 10);
        let at = pos + rng.random_range(0..stride - len) / 65536 * 65536;
        if at + len > size {
            break;
        }
        rng.fill(&mut buf[..len as usize]);
        img.write_at(at, &buf[..len as usize])?;
        written += len;
        pos += stride;
    }
    img.close()?;
    Ok(written)
}

fn create(path: &Path, size: u64, backing: Option<&Path>) -> anyhow::Result<()> {
    Image::create(
        path,
        &CreateOptions {
            size,
            backing_file: backing.map(Path::to_path_buf),
            ..Default::default()
        },
    )?;
    Ok(())
}

fn open_rw(path: &Path) -> anyhow::Result<Image> {
    Ok(Image::open(
        path,
        &OpenOptions {
            writable: true,
            open_backing: true,
            ..Default::default()
        },
    )?)
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    run(Command::new("cp").arg("-a").arg(from).arg(to))
}

/// Dirty pages written back and, as root, the page cache dropped, so no run inherits the
/// previous one's write-back or finds its input cached.
fn settle() {
    if let Err(e) = benches::sys::drop_caches() {
        eprintln!("page cache kept ({e}); figures include cached reads");
    }
}

/// Our merge as its two steps, so the report can say what the rename and syncs cost.
fn run_ours(dir: &Path, storage_io: StorageIo) -> anyhow::Result<Duration> {
    let child = dir.join("y/disk0.qcow2");
    let cpu = benches::sys::self_cpu();
    let t = Instant::now();
    let copied = Arc::new(Mutex::new(Duration::ZERO));
    let at_end = copied.clone();
    let report = merge::commit_to_backing(
        &child,
        &MergeOptions {
            storage_io,
            progress: Some(Arc::new(move |done, total| {
                if done == total {
                    *at_end.lock().unwrap() = t.elapsed();
                }
            })),
            ..Default::default()
        },
    )?;
    let committed = t.elapsed();
    let copied = *copied.lock().unwrap();
    merge::replace_child_with_backing(&report.parent, &child)?;
    let all = t.elapsed();
    eprintln!(
        "  ours: data {copied:.2?}, commit (data, write-back, close) {committed:.2?}, rename and syncs {:.2?}; CPU {:.2?}",
        all - committed,
        benches::sys::self_cpu() - cpu
    );
    Ok(all)
}

fn run_qemu(dir: &Path) -> anyhow::Result<Duration> {
    let t = Instant::now();
    run(Command::new("qemu-img")
        .args(["commit", "-q", "-f", "qcow2"])
        .arg(dir.join("y/disk0.qcow2")))?;
    Ok(t.elapsed())
}

fn compare(a: &Path, b: &Path) -> anyhow::Result<()> {
    run(Command::new("qemu-img")
        .args(["compare", "-q", "-f", "qcow2", "-F", "qcow2"])
        .arg(a)
        .arg(b))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn report(args: &Args, child_bytes: u64, rows: &[(Duration, Duration, f64)], load_start: &str) {
    let secs = |f: fn(&(Duration, Duration, f64)) -> f64| {
        Summary::of(&rows.iter().map(f).collect::<Vec<_>>())
    };
    let mib = child_bytes as f64 / f64::from(1 << 20);
    println!(
        "| disk | full's data | child data | ours (storage {}) | qemu-img commit | ratio qemu/ours |",
        args.storage_io
    );
    println!("|---|---|---|---|---|---|");
    let (Some(o), Some(q), Some(r)) = (
        secs(|r| r.0.as_secs_f64()),
        secs(|r| r.1.as_secs_f64()),
        secs(|r| r.2),
    ) else {
        return;
    };
    println!(
        "| {} | {}% | {mib:.0} MiB | {:.2} s ({:.0} MiB/s; {:.2}-{:.2}) | {:.2} s ({:.0} MiB/s; {:.2}-{:.2}) | {:.2} ({:.2}-{:.2}) |",
        benches::size::format_size(args.size),
        args.full_percent,
        o.median,
        mib / o.median,
        o.min,
        o.max,
        q.median,
        mib / q.median,
        q.min,
        q.max,
        r.median,
        r.min,
        r.max
    );
    println!(
        "\n- {} rounds, medians (min-max); load average at start {load_start}, at end {}; dir {}",
        rows.len(),
        load_average(),
        args.dir.display()
    );
}
