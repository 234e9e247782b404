//! Concurrent backups (issue 23): N backups written at once into one in-process hub at its
//! defaults, beside N `qemu-nbd` processes (one per disk, as the old hub ran them) writing the
//! same bytes, for N = 1, 4, 16, 64. A row's bytes are split over its streams, so every row moves
//! the same total. Per row: aggregate GiB/s, server CPU s/GiB (the hub's process, or the sum of
//! the qemu-nbd processes), and fairness (the slowest stream's time over the fastest's).
//!
//! The hub runs in this process, so its CPU is this process's; the copies are `nbdcopy --flush`
//! child processes and not counted. Every image is checked against the source (`qemu-img
//! compare`) after its row.
//!
//! `cargo run --release -p benches --bin concurrency -- --dir /var/tmp/bench` (ext4: direct I/O);
//! without `--dir`, /dev/shm (tmpfs: buffered).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use axum::http::{Method, StatusCode};
use benches::inproc::InProcessHub;
use benches::size::{format_size, parse_size};
use benches::sys;
use clap::Parser;
use rand::{RngCore as _, SeedableRng as _};
use serde_json::{Value, json};

const GIB: f64 = (1u64 << 30) as f64;

#[derive(Debug, Parser)]
#[command(about = "Concurrent backups: one hub against one qemu-nbd per disk")]
struct Args {
    /// Bytes written per row, split over its streams (K, M, G suffixes).
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    total: u64,
    /// Stream counts, one row each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    streams: Vec<usize>,
    /// Where the source, the hub's data dir and qemu-nbd's images go (default /dev/shm).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Leave out the qemu-nbd rows.
    #[arg(long)]
    no_qemu: bool,
}

/// One row's outcome for one server.
struct Outcome {
    wall: Duration,
    cpu: Duration,
    slowest_over_fastest: f64,
}

impl Outcome {
    fn gib_per_s(&self, bytes: u64) -> f64 {
        bytes as f64 / GIB / self.wall.as_secs_f64()
    }

    fn cpu_per_gib(&self, bytes: u64) -> f64 {
        self.cpu.as_secs_f64() / (bytes as f64 / GIB)
    }
}

/// Runs `nbdcopy --flush SOURCE URI` for every URI at once; the wall time of all and each one's.
/// Each child is waited for by a thread asleep in `wait`, so waiting costs this process (whose
/// CPU is the hub's) nothing.
fn copy_all(source: &Path, uris: &[String]) -> Result<(Duration, Vec<Duration>)> {
    let began = Instant::now();
    let mut waiters = Vec::new();
    for uri in uris {
        let mut child = Command::new("nbdcopy")
            .arg("--flush")
            .arg(source)
            .arg(uri)
            .stdout(Stdio::null())
            .spawn()
            .context("nbdcopy")?;
        let uri = uri.clone();
        waiters.push(std::thread::spawn(move || -> Result<Duration> {
            let status = child.wait()?;
            ensure!(status.success(), "nbdcopy to {uri} failed: {status}");
            Ok(began.elapsed())
        }));
    }
    let mut each = Vec::new();
    for w in waiters {
        each.push(w.join().map_err(|_| anyhow::anyhow!("waiter panicked"))??);
    }
    Ok((began.elapsed(), each))
}

fn fairness(each: &[Duration]) -> f64 {
    let max = each.iter().max().copied().unwrap_or_default();
    let min = each.iter().min().copied().unwrap_or_default();
    max.as_secs_f64() / min.as_secs_f64().max(1e-9)
}

fn compare(source: &Path, image: &Path) -> Result<()> {
    let out = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "qcow2"])
        .arg(source)
        .arg(image)
        .output()?;
    ensure!(
        out.status.success(),
        "{} differs from the source: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

async fn call(h: &InProcessHub, method: Method, uri: &str, body: Option<&Value>) -> Result<Value> {
    let (status, answer) = h.call(method, uri, body).await;
    ensure!(status == StatusCode::OK, "{uri}: {status} {answer}");
    Ok(answer)
}

/// `n` one-disk full backups of `each` bytes written at once into the hub, completed, checked
/// and deleted.
async fn ours(h: &InProcessHub, source: &Path, n: usize, each: u64) -> Result<Outcome> {
    let mut ids = Vec::new();
    let mut uris = Vec::new();
    for i in 0..n {
        let req = json!({"vm_name": format!("bench-{i:03}"), "backup_type": "full",
            "disks": [{"disk_id": 0, "vmware_disk_key": 2000, "capacity_bytes": each}]});
        let b = call(h, Method::POST, "/api/v1/backups", Some(&req)).await?;
        uris.push(
            b["disk_results"][0]["nbd_uri"]
                .as_str()
                .context("nbd_uri")?
                .to_owned(),
        );
        ids.push(b["backup_id"].as_str().context("backup_id")?.to_owned());
    }
    let cpu_before = sys::self_cpu();
    let src = source.to_owned();
    let (wall, times) = tokio::task::spawn_blocking(move || copy_all(&src, &uris)).await??;
    let cpu = sys::self_cpu() - cpu_before;
    for id in &ids {
        let uri = format!("/api/v1/backups/{id}/complete");
        call(h, Method::POST, &uri, Some(&json!({"change_id": "bench"}))).await?;
    }
    for id in &ids {
        let image = wait_completed(h, id).await?;
        compare(source, &image)?;
        call(h, Method::DELETE, &format!("/api/v1/backups/{id}"), None).await?;
    }
    Ok(Outcome {
        wall,
        cpu,
        slowest_over_fastest: fairness(&times),
    })
}

async fn wait_completed(h: &InProcessHub, id: &str) -> Result<PathBuf> {
    for _ in 0..6000 {
        let b = call(h, Method::GET, &format!("/api/v1/backups/{id}"), None).await?;
        match b["status"].as_str() {
            Some("completed") => {
                let path = b["disk_results"][0]["qcow2_path"]
                    .as_str()
                    .context("qcow2_path")?;
                return Ok(path.into());
            }
            Some("failed" | "cancelled") => bail!("backup {id}: {b}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    bail!("backup {id} did not complete")
}

/// `n` qemu-nbd processes, one image of `each` bytes each, written at once.
fn qemu(dir: &Path, source: &Path, n: usize, each: u64, direct: bool) -> Result<Outcome> {
    let mut servers = Vec::new();
    let mut uris = Vec::new();
    for i in 0..n {
        let image = dir.join(format!("qemu-{i}.qcow2"));
        let socket = dir.join(format!("qemu-{i}.sock"));
        let made = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image)
            .arg(each.to_string())
            .status()?;
        ensure!(made.success(), "qemu-img create");
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(["-f", "qcow2", "-t", "--shared=8", "-k"])
            .arg(&socket);
        if direct {
            cmd.args(["--cache=none", "--aio=io_uring"]);
        }
        cmd.arg(&image).stdout(Stdio::null()).stderr(Stdio::null());
        servers.push((sys::spawn(&mut cmd)?, image));
        uris.push(format!("nbd+unix:///?socket={}", socket.display()));
    }
    for uri in &uris {
        let socket = uri.trim_start_matches("nbd+unix:///?socket=");
        let began = Instant::now();
        while !Path::new(socket).exists() {
            ensure!(
                began.elapsed() < Duration::from_secs(30),
                "qemu-nbd did not listen"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let (wall, times) = copy_all(source, &uris)?;
    let mut cpu = Duration::ZERO;
    for (pid, image) in servers {
        sys::terminate(pid)?;
        let reaped = sys::reap_within(pid, Duration::from_secs(30))?.context("qemu-nbd exit")?;
        cpu += reaped.cpu;
        compare(source, &image)?;
        std::fs::remove_file(&image)?;
    }
    Ok(Outcome {
        wall,
        cpu,
        slowest_over_fastest: fairness(&times),
    })
}

fn source_file(path: &Path, len: u64) -> Result<()> {
    use std::io::Write as _;
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        rng.fill_bytes(&mut block);
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

fn on_tmpfs(dir: &Path) -> bool {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "tmpfs")
        .unwrap_or(false)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(!args.streams.contains(&0), "--streams must be positive");
    let base = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/dev/shm"));
    let dir =
        tempfile::tempdir_in(&base).with_context(|| format!("temp dir in {}", base.display()))?;
    let direct = !on_tmpfs(dir.path());
    let h = benches::inproc::start_hub(&dir.path().join("hub"), |_| {}).await;
    println!(
        "{} per row, in {} ({}), {} cores",
        format_size(args.total),
        base.display(),
        if direct {
            "direct I/O"
        } else {
            "tmpfs, buffered"
        },
        hub::sys::threads::cores()
    );
    println!(
        "| streams | server | aggregate GiB/s | CPU s/GiB | CPU/GiB vs 1 stream | aggregate vs 1 stream | slowest/fastest |"
    );
    println!("|--:|---|--:|--:|--:|--:|--:|");
    let mut first: [Option<(f64, f64)>; 2] = [None, None];
    for &n in &args.streams {
        // Whole MiB per stream, as the Sendense client's disks are.
        let each = (args.total / n as u64) >> 20 << 20;
        ensure!(each > 0, "--total too small for {n} streams");
        let source = dir.path().join("source.raw");
        source_file(&source, each)?;
        let bytes = each * n as u64;
        let mut results = vec![("sendense-hub", ours(&h, &source, n, each).await?)];
        if !args.no_qemu {
            let q = qemu(dir.path(), &source, n, each, direct)?;
            results.push((
                if direct {
                    "qemu-nbd ×N, cache=none"
                } else {
                    "qemu-nbd ×N"
                },
                q,
            ));
        }
        for (k, (name, o)) in results.iter().enumerate() {
            let (gib, cpu) = (o.gib_per_s(bytes), o.cpu_per_gib(bytes));
            let (gib1, cpu1) = *first[k].get_or_insert((gib, cpu));
            println!(
                "| {n} | {name} | {gib:.2} | {cpu:.2} | {:.2}× | {:.0}% | {:.2} |",
                cpu / cpu1,
                100.0 * gib / gib1,
                o.slowest_over_fastest
            );
        }
    }
    h.stop().await;
    Ok(())
}
