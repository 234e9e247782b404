//! File-level restore against the disk-level restore of the same backup, in one run: a guest
//! filesystem (`--fs`, made with no mount: ext4 by `mke2fs -d`, XFS by `mkfs.xfs -p`, NTFS by
//! `mkntfs` + `ntfscp`) holding one `--size-mib` file (random bytes) and a folder of
//! `--entries` empty files (not on NTFS: ntfscp makes no folders, and one call per file would
//! take hours) is backed up into a `sendense-hub` (the release binary, defaults, a child
//! process) over NBD; then, alternating for `--rounds`:
//! - `curl` downloads the file from a mount (`/api/v1/restore/{id}/download`) to /dev/null;
//! - `nbdcopy` reads the disk from a restore export to `null:` (it reads only what is allocated:
//!   the file's extents and the filesystem's metadata, about the file's size).
//!
//! Both warm (the image is in the page cache after the backup). Then the folder is listed once
//! (`files?path=...&limit=N`): its time, and the hub's peak RSS growth during it (the peak is
//! reset first through `/proc/PID/clear_refs`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use rand::{RngCore, SeedableRng};
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Fs {
    Ext4,
    Xfs,
    Ntfs,
}

#[derive(Parser)]
struct Args {
    /// The guest filesystem the file is restored from.
    #[arg(long, value_enum, default_value = "ext4")]
    fs: Fs,
    /// Size of the file restored, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Entries of the folder listed.
    #[arg(long, default_value_t = 100_000)]
    entries: usize,
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Work directory (on the disk to measure; the repository lives there).
    #[arg(long, default_value = "target/bench-file-restore")]
    dir: PathBuf,
    /// The sendense-hub binary (default: next to this executable).
    #[arg(long)]
    hub_bin: Option<PathBuf>,
}

fn run(cmd: &mut Command) -> anyhow::Result<std::process::Output> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// The guest tree, the image made from it, and the entries its folder got.
fn make_guest(dir: &Path, fs: Fs, size: u64, entries: usize) -> anyhow::Result<(PathBuf, usize)> {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("many"))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut buf = vec![0u8; 4 << 20];
    let mut f = std::io::BufWriter::new(std::fs::File::create(src.join("big.bin"))?);
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        std::io::Write::write_all(&mut f, &buf[..n])?;
        left -= n as u64;
    }
    drop(f);
    let entries = if fs == Fs::Ntfs { 0 } else { entries };
    for i in 0..entries {
        std::fs::File::create(src.join(format!("many/entry-{i:07}")))?;
    }
    let image = dir.join("guest.img");
    // Room for the file, the folder's inodes and the journal.
    let mib = size / (1 << 20) + (entries as u64 / 2_000) + 128;
    match fs {
        Fs::Ext4 => {
            run(Command::new("mke2fs")
                .args(["-q", "-F", "-t", "ext4", "-N"])
                .arg((entries + 1000).to_string())
                .arg("-d")
                .arg(&src)
                .arg(&image)
                .arg(format!("{mib}M")))?;
        }
        Fs::Xfs => {
            let mut proto = String::from("bench\n0 0\nd--755 0 0\n");
            proto.push_str(&format!(
                "big.bin ---644 0 0 {}\n",
                src.join("big.bin").display()
            ));
            proto.push_str("many d--755 0 0\n");
            let empty = src.join("empty");
            std::fs::File::create(&empty)?;
            for i in 0..entries {
                proto.push_str(&format!("entry-{i:07} ---644 0 0 {}\n", empty.display()));
            }
            proto.push_str("$\n$\n");
            let proto_path = dir.join("proto");
            std::fs::write(&proto_path, proto)?;
            // Two AGs each larger than the file: xfsprogs 6.1's protofile writer runs a file
            // larger than its AG over the next AG's headers.
            std::fs::File::create(&image)?.set_len((2 * mib) << 20)?;
            run(Command::new("mkfs.xfs")
                .args(["-q", "-f", "-d", "agcount=2", "-p"])
                .arg(&proto_path)
                .arg(&image))?;
        }
        Fs::Ntfs => {
            std::fs::File::create(&image)?.set_len(mib << 20)?;
            run(Command::new("mkntfs").args(["-F", "-Q", "-q"]).arg(&image))?;
            run(Command::new("ntfscp")
                .arg("-q")
                .arg(&image)
                .arg(src.join("big.bin"))
                .arg("big.bin"))?;
        }
    }
    std::fs::remove_dir_all(&src)?;
    Ok((image, entries))
}

struct HubProc {
    child: std::process::Child,
    api: String,
    token: String,
}

impl Drop for HubProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_hub(bin: &Path, data: &Path) -> anyhow::Result<HubProc> {
    let mut child = Command::new(bin)
        .args([
            "--log-json",
            "serve",
            "--api-listen",
            "127.0.0.1:0",
            "--nbd-listen",
            "127.0.0.1:0",
        ])
        .env("SENDENSE_HUB_DATA_DIR", data)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let api = loop {
        let line = lines.next().context("the hub exited before listening")??;
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if let Some(a) = v["fields"]["api"].as_str() {
                break a.to_owned();
            }
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let token = std::fs::read_to_string(data.join("api-token"))?
        .trim()
        .to_owned();
    Ok(HubProc { child, api, token })
}

impl HubProc {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-f", "-X", method, "-H"])
            .arg(format!("Authorization: Bearer {}", self.token));
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "-d"])
                .arg(b.to_string());
        }
        let out = run(cmd.arg(format!("http://{}{path}", self.api)))?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Seconds and bytes of a GET to /dev/null.
    fn timed_get(&self, path: &str) -> anyhow::Result<(f64, u64)> {
        let out = run(Command::new("curl")
            .args([
                "-sS",
                "-f",
                "-o",
                "/dev/null",
                "-w",
                "%{time_total} %{size_download}",
                "-H",
            ])
            .arg(format!("Authorization: Bearer {}", self.token))
            .arg(format!("http://{}{path}", self.api)))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text.split_whitespace();
        let secs = it.next().context("time")?.parse()?;
        let bytes = it.next().context("size")?.parse()?;
        Ok((secs, bytes))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match &args.hub_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("sendense-hub"),
    };
    if !bin.is_file() {
        bail!("sendense-hub not built: run `cargo build --release -p hub`");
    }
    std::fs::create_dir_all(&args.dir)?;
    let work = tempfile::tempdir_in(&args.dir)?;
    let size = args.size_mib << 20;
    let (image, entries) = make_guest(work.path(), args.fs, size, args.entries)?;
    let capacity = std::fs::metadata(&image)?.len();
    let hub = start_hub(&bin, &work.path().join("data"))?;

    let b = hub.call(
        "POST",
        "/api/v1/backups",
        Some(
            json!({"vm_name": "bench-fs", "backup_type": "full", "start_on_sna": false,
            "disks": [{"disk_id": 0, "vmware_disk_key": 2000, "capacity_bytes": capacity}]}),
        ),
    )?;
    let id = b["backup_id"].as_str().context("backup_id")?.to_owned();
    let uri = b["disk_results"][0]["nbd_uri"]
        .as_str()
        .context("nbd_uri")?;
    run(Command::new("nbdcopy").arg(&image).arg(uri))?;
    hub.call(
        "POST",
        &format!("/api/v1/backups/{id}/complete"),
        Some(json!({})),
    )?;
    for _ in 0..600 {
        if hub.call("GET", &format!("/api/v1/backups/{id}"), None)?["status"] == "completed" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::fs::remove_file(&image)?;

    let restore = hub.call(
        "POST",
        "/api/v1/restores",
        Some(json!({"backup_id": id, "disk_id": 0})),
    )?;
    let restore_uri = restore["nbd_uri"].as_str().context("nbd_uri")?.to_owned();
    let mount = hub.call(
        "POST",
        "/api/v1/restore/mount",
        Some(json!({"backup_id": id, "disk_index": 0})),
    )?;
    let mid = mount["mount_id"].as_str().context("mount_id")?.to_owned();
    let volume = mount["volumes"][0]["name"]
        .as_str()
        .context("volume")?
        .to_owned();

    let (mut file_gibs, mut disk_gibs) = (Vec::new(), Vec::new());
    let gib = (1u64 << 30) as f64;
    for _ in 0..args.rounds {
        let (secs, bytes) = hub.timed_get(&format!(
            "/api/v1/restore/{mid}/download?path=/{volume}/big.bin"
        ))?;
        if bytes != size {
            bail!("downloaded {bytes} bytes, not {size}");
        }
        file_gibs.push(bytes as f64 / gib / secs);
        let t = Instant::now();
        run(Command::new("nbdcopy").arg(&restore_uri).arg("null:"))?;
        disk_gibs.push(size as f64 / gib / t.elapsed().as_secs_f64());
    }

    let listing = if entries > 0 {
        let pid = hub.child.id();
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").context("resetting the peak RSS")?;
        let before = rss_kib(pid, "VmRSS:").context("VmRSS")?;
        let (secs, bytes) = hub.timed_get(&format!(
            "/api/v1/restore/{mid}/files?path=/{volume}/many&limit={entries}"
        ))?;
        let peak = rss_kib(pid, "VmHWM:").context("VmHWM")?;
        format!(
            "listing {entries} entries: {secs:.2} s, {} KiB of JSON, hub RSS {before} KiB -> peak {peak} KiB (+{} KiB)",
            bytes / 1024,
            peak.saturating_sub(before)
        )
    } else {
        "listing: not measured on this filesystem".to_owned()
    };
    let (f, d) = (median(file_gibs.clone()), median(disk_gibs.clone()));
    println!(
        "| what (warm, {} rounds alternating, medians) | GiB/s |",
        args.rounds
    );
    println!("|---|--:|");
    println!(
        "| file download, {} MiB from {} (curl) | {f:.2} |",
        args.size_mib,
        match args.fs {
            Fs::Ext4 => "ext4",
            Fs::Xfs => "XFS",
            Fs::Ntfs => "NTFS",
        }
    );
    println!("| nbdcopy of the restore export (the same bytes and metadata) | {d:.2} |");
    println!("ratio file/disk: {:.2}", f / d);
    println!("rounds: file {file_gibs:.2?} GiB/s, disk {disk_gibs:.2?} GiB/s");
    println!("{listing}");
    Ok(())
}
