//! Verify's read of one image against fio's sequential direct read of the same file, in the same
//! run: a fully allocated QCOW2 of random data (`--size`, default 1 GiB) in `--dir` (a real disk:
//! tmpfs has no O_DIRECT), verified as a verify job reads a layer (the digests recomputed through
//! direct I/O, compared, and `qcow2::check`), then read by `fio --rw=read --direct=1 --bs=1M`.
//! Prints MiB/s of both, their ratio, and the verify's CPU (user + system of this process) per GiB.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use rand::RngCore;

#[derive(Parser)]
struct Args {
    /// Image size, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    #[arg(long, default_value = "target/bench-verify")]
    dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    let dir = tempfile::tempdir_in(&args.dir)?;
    let image = dir.path().join("disk0.qcow2");
    let size = args.size_mib << 20;
    make_image(&image, size)?;
    let digests = hub::repo::digests::compute(&image, qcow2::StorageIo::Buffered)?;
    let recorded_hex = hub::repo::digests::write(&image, &digests)?;

    let cpu0 = benches::sys::self_cpu();
    let t0 = Instant::now();
    let (recorded, hex) = match hub::repo::digests::read(&image)? {
        Some((Ok(d), hex)) => (d, hex),
        _ => bail!("digests file unreadable"),
    };
    let now = hub::repo::digests::compute(&image, qcow2::StorageIo::Direct)?;
    let report = qcow2::check::check(&image, false)?;
    let verify_secs = t0.elapsed().as_secs_f64();
    let verify_cpu = (benches::sys::self_cpu() - cpu0).as_secs_f64();
    let mismatches = hub::repo::digests::compare(&recorded, &now, 1).len();
    if hex != recorded_hex || mismatches > 0 || report.corruptions > 0 {
        bail!("the verify found a fault in a clean image");
    }

    let fio = fio_read(&image)?;
    let gib = size as f64 / (1u64 << 30) as f64;
    let verify_mibs = size as f64 / (1 << 20) as f64 / verify_secs;
    println!("| what | MiB/s | CPU s/GiB |");
    println!("|---|---|---|");
    println!(
        "| verify (digests via O_DIRECT + qcow2 check) | {verify_mibs:.0} | {:.3} |",
        verify_cpu / gib
    );
    println!("| fio --rw=read --direct=1 --bs=1M (psync) | {fio:.0} | - |");
    println!("ratio verify/fio: {:.2}", verify_mibs / fio);
    println!(
        "image {} MiB, {} ranges digested, in {}",
        args.size_mib,
        now.ranges.len(),
        args.dir.display()
    );
    Ok(())
}

/// A fully allocated image of random bytes, written through the crate in 2 MiB pieces and synced.
fn make_image(path: &Path, size: u64) -> anyhow::Result<()> {
    qcow2::Image::create(
        path,
        &qcow2::CreateOptions {
            size,
            storage_io: qcow2::StorageIo::Buffered,
            ..Default::default()
        },
    )?;
    let img = qcow2::Image::open(
        path,
        &qcow2::OpenOptions {
            writable: true,
            storage_io: qcow2::StorageIo::Buffered,
            ..Default::default()
        },
    )?;
    let mut buf = vec![0u8; 2 << 20];
    let mut rng = rand::rng();
    let mut at = 0;
    while at < size {
        rng.fill_bytes(&mut buf);
        let n = buf.len().min((size - at) as usize);
        img.write_at(at, &buf[..n])?;
        at += n as u64;
    }
    img.flush()?;
    img.close()?;
    Ok(())
}

/// fio's sequential direct read of the whole file, MiB/s.
fn fio_read(path: &Path) -> anyhow::Result<f64> {
    let out = Command::new("fio")
        .args([
            "--name=seq",
            "--rw=read",
            "--direct=1",
            "--bs=1M",
            "--ioengine=psync",
            "--readonly",
            "--output-format=json",
        ])
        .arg(format!("--filename={}", path.display()))
        .output()
        .context("running fio (apt-get install -y fio)")?;
    if !out.status.success() {
        bail!("fio failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let bw_kib = v["jobs"][0]["read"]["bw"]
        .as_f64()
        .context("fio's read bandwidth")?;
    Ok(bw_kib / 1024.0)
}
