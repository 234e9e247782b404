//! Copies to and restores from an S3 store, against rclone (Debian's) on the same store in the
//! same run: a three-node Garage cluster on loopback (replication factor 3, the `garage` binary
//! from PATH or `--garage`), a `sendense-hub` (the release binary, defaults, a child process)
//! with a chain of a full and two incrementals (`--full-mib` random bytes copied in with
//! nbdcopy, then `--increment-mib` rewritten by each incremental, 64 KiB pieces), then:
//! - copy: the hub's copy job of the chain (verify off: rclone checks size and MD5, not a read
//!   back), against `rclone copy` of the chain's files (the same bytes) to another prefix;
//! - restore: `nbdcopy` of the newest backup from a restore export reading the bucket, to
//!   `null:`, against `rclone cat` of the chain's image objects to /dev/null.
//!
//! Printed: seconds, GiB/s and the ratio ours/rclone for each (goals: copy ≥ 1.0, restore ≥ 0.8).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rand::{RngCore, SeedableRng};
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 3584)]
    full_mib: u64,
    #[arg(long, default_value_t = 256)]
    increment_mib: u64,
    /// Work directory: the hub's data dir and the Garage nodes' files.
    #[arg(long, default_value = "target/bench-s3")]
    dir: PathBuf,
    #[arg(long)]
    hub_bin: Option<PathBuf>,
    #[arg(long, default_value = "garage")]
    garage: PathBuf,
}

const GIB: f64 = (1u64 << 30) as f64;

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Children killed when the run ends, however it ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Store {
    endpoint: String,
    key_id: String,
    secret: String,
}

/// Three Garage nodes, one zone each, a key owning buckets `hub` and `rclone`.
fn garage(bin: &Path, dir: &Path, procs: &mut Procs) -> anyhow::Result<Store> {
    let rpc_secret: String = (0..32)
        .map(|i| format!("{:02x}", (i * 91 + 7) % 256))
        .collect();
    let mut configs = Vec::new();
    let mut s3_ports = Vec::new();
    for i in 0..3 {
        let root = dir.join(format!("garage{i}"));
        std::fs::create_dir_all(&root)?;
        let (rpc, s3) = (port()?, port()?);
        let config = root.join("garage.toml");
        let mut f = std::fs::File::create(&config)?;
        writeln!(f, "metadata_dir = {:?}", root.join("meta"))?;
        writeln!(f, "data_dir = {:?}", root.join("data"))?;
        writeln!(f, "db_engine = \"sqlite\"\nreplication_factor = 3")?;
        writeln!(f, "rpc_bind_addr = \"127.0.0.1:{rpc}\"")?;
        writeln!(f, "rpc_public_addr = \"127.0.0.1:{rpc}\"")?;
        writeln!(
            f,
            "rpc_secret = \"{rpc_secret}\"\n[s3_api]\ns3_region = \"garage\""
        )?;
        writeln!(
            f,
            "api_bind_addr = \"127.0.0.1:{s3}\"\nroot_domain = \".s3.localhost\""
        )?;
        procs.0.push(
            Command::new(bin)
                .arg("-c")
                .arg(&config)
                .arg("server")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?,
        );
        configs.push(config);
        s3_ports.push(s3);
    }
    std::thread::sleep(Duration::from_secs(2));
    let cli = |args: &[&str]| run(Command::new(bin).arg("-c").arg(&configs[0]).args(args));
    let mut ids = Vec::new();
    for c in &configs {
        ids.push(run(Command::new(bin)
            .arg("-c")
            .arg(c)
            .args(["node", "id", "-q"]))?);
    }
    for id in &ids[1..] {
        cli(&["node", "connect", id.trim()])?;
    }
    for (i, id) in ids.iter().enumerate() {
        cli(&[
            "layout",
            "assign",
            "-z",
            &format!("z{i}"),
            "-c",
            "10G",
            &id[..16],
        ])?;
    }
    cli(&["layout", "apply", "--version", "1"])?;
    let key = cli(&["key", "create", "bench"])?;
    let get = |name: &str| {
        key.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("{name} in {key}"))
    };
    let (key_id, secret) = (get("Key ID:")?, get("Secret key:")?);
    for bucket in ["hub", "rclone"] {
        cli(&["bucket", "create", bucket])?;
        cli(&[
            "bucket", "allow", "--read", "--write", "--owner", bucket, "--key", "bench",
        ])?;
    }
    Ok(Store {
        endpoint: format!("http://127.0.0.1:{}", s3_ports[0]),
        key_id,
        secret,
    })
}

struct Hub {
    api: String,
    token: String,
}

fn start_hub(bin: &Path, data: &Path, procs: &mut Procs) -> anyhow::Result<Hub> {
    let mut child = Command::new(bin)
        .args([
            "--log-json",
            "serve",
            "--api-listen",
            "127.0.0.1:0",
            "--nbd-listen",
        ])
        .arg("127.0.0.1:0")
        .env("SENDENSE_HUB_DATA_DIR", data)
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    procs.0.push(child);
    let api = loop {
        let line = lines.next().context("the hub exited")??;
        if let Some(a) = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["fields"]["api"].as_str().map(str::to_owned))
        {
            break a;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let token = std::fs::read_to_string(data.join("api-token"))?
        .trim()
        .to_owned();
    Ok(Hub { api, token })
}

impl Hub {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-f", "-X", method, "-H"])
            .arg(format!("Authorization: Bearer {}", self.token));
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "-d"])
                .arg(b.to_string());
        }
        Ok(serde_json::from_str(&run(
            cmd.arg(format!("http://{}{path}", self.api))
        )?)?)
    }

    fn wait(&self, path: &str, field: &str, done: &[&str]) -> anyhow::Result<Value> {
        loop {
            let v = self.call("GET", path, None)?;
            if done.iter().any(|d| v[field] == *d) {
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One backup written by `write` (given its NBD URI) and completed; its id.
    fn backup(
        &self,
        kind: &str,
        size: u64,
        write: impl FnOnce(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<String> {
        let b = self.call(
            "POST",
            "/api/v1/backups",
            Some(json!({"vm_name": "bench",
            "backup_type": kind, "disks": [{"disk_id": 0, "vmware_disk_key": 2000,
            "capacity_bytes": size}]})),
        )?;
        let id = b["backup_id"].as_str().context("backup_id")?.to_owned();
        write(
            b["disk_results"][0]["nbd_uri"]
                .as_str()
                .context("nbd_uri")?,
        )?;
        self.call(
            "POST",
            &format!("/api/v1/backups/{id}/complete"),
            Some(json!({"change_id": "c"})),
        )?;
        self.wait(
            &format!("/api/v1/backups/{id}"),
            "status",
            &["completed", "failed"],
        )?;
        Ok(id)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let hub_bin = match args.hub_bin {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("sendense-hub"),
    };
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::path::absolute(&args.dir)?;
    let mut procs = Procs(Vec::new());
    let store = garage(&args.garage, &dir, &mut procs)?;
    let hub = start_hub(&hub_bin, &dir.join("data"), &mut procs)?;

    let size = args.full_mib << 20;
    let raw = dir.join("full.raw");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&raw)?);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..args.full_mib {
            rng.fill_bytes(&mut buf);
            f.write_all(&buf)?;
        }
    }
    let mut ids = vec![hub.backup("full", size, |uri| {
        run(Command::new("nbdcopy").arg(&raw).arg(uri)).map(drop)
    })?];
    std::fs::remove_file(&raw)?;
    for k in 0..2u64 {
        ids.push(hub.backup("incremental", size, |uri| {
            let mut io = Command::new("qemu-io");
            io.args(["-f", "raw"]);
            let pieces = args.increment_mib * 16;
            let stride = size / 65536 / pieces;
            for p in 0..pieces {
                let at = (p * stride + k) * 65536;
                io.args(["-c", &format!("write -P {} {at} 64k", 1 + k)]);
            }
            run(io.arg(uri)).map(drop)
        })?);
    }
    let files: Vec<PathBuf> = ids
        .iter()
        .map(|id| {
            dir.join("data/repository/bench")
                .join(id)
                .join("disk0.qcow2")
        })
        .collect();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();

    hub.call(
        "POST",
        "/api/v1/repositories",
        Some(json!({"id": "garage", "type": "s3",
        "config": {"endpoint": store.endpoint, "region": "garage", "bucket": "hub",
        "access_key_id": store.key_id, "secret_access_key": store.secret, "path_style": true}})),
    )?;
    let t = Instant::now();
    let job = hub.call(
        "POST",
        &format!("/api/v1/backups/{}/copy", ids[2]),
        Some(json!({"repository_id": "garage", "verify": false})),
    )?;
    let job_id = job["job_id"].as_str().context("job_id")?;
    let end = hub.wait(
        &format!("/api/v1/jobs/{job_id}"),
        "status",
        &["succeeded", "failed", "cancelled"],
    )?;
    let ours_copy = t.elapsed().as_secs_f64();
    if end["status"] != "succeeded" {
        bail!("copy job: {end}");
    }

    let rclone = |sub: &[&str]| {
        let mut cmd = Command::new("rclone");
        // The AWS SDK inside rclone 1.60 fails on AWS_CA_BUNDLE ("unsupported transport"),
        // which some environments set; the store is plain HTTP on loopback.
        cmd.args(sub)
            .env_remove("AWS_CA_BUNDLE")
            .env("RCLONE_CONFIG_G_TYPE", "s3")
            .env("RCLONE_CONFIG_G_PROVIDER", "Other")
            .env("RCLONE_CONFIG_G_ENDPOINT", &store.endpoint)
            .env("RCLONE_CONFIG_G_REGION", "garage")
            .env("RCLONE_CONFIG_G_ACCESS_KEY_ID", &store.key_id)
            .env("RCLONE_CONFIG_G_SECRET_ACCESS_KEY", &store.secret)
            .env("RCLONE_CONFIG_G_FORCE_PATH_STYLE", "true");
        cmd
    };
    let t = Instant::now();
    for (id, f) in ids.iter().zip(&files) {
        run(rclone(&["copyto"])
            .arg(f)
            .arg(format!("g:rclone/bench/{id}/disk0.qcow2")))?;
    }
    let rclone_copy = t.elapsed().as_secs_f64();

    // Restores: caches dropped on no side (the store's files are in the page cache for both).
    let r = hub.call(
        "POST",
        "/api/v1/restores",
        Some(json!({"backup_id": ids[2], "disk_id": 0,
        "repository_id": "garage"})),
    )?;
    let uri = r["nbd_uri"].as_str().context("nbd_uri")?;
    let t = Instant::now();
    run(Command::new("nbdcopy").arg(uri).arg("null:"))?;
    let ours_restore = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for id in &ids {
        run(rclone(&["cat"])
            .arg(format!("g:hub/bench/{id}/disk0.qcow2"))
            .stdout(Stdio::null()))?;
    }
    let rclone_restore = t.elapsed().as_secs_f64();

    let gib = bytes as f64 / GIB;
    println!(
        "chain: full {} MiB + 2 x {} MiB rewritten; images {gib:.2} GiB",
        args.full_mib, args.increment_mib
    );
    println!("| what | ours s | rclone s | ours GiB/s | rclone GiB/s | ratio |");
    println!("|---|--:|--:|--:|--:|--:|");
    let row = |what: &str, ours: f64, theirs: f64, ours_gib: f64, theirs_gib: f64| {
        println!(
            "| {what} | {ours:.1} | {theirs:.1} | {:.2} | {:.2} | {:.2}× |",
            ours_gib / ours,
            theirs_gib / theirs,
            (ours_gib / ours) / (theirs_gib / theirs)
        );
    };
    row("copy of the chain", ours_copy, rclone_copy, gib, gib);
    // nbdcopy reads the guest's disk (its size); rclone the three images.
    row(
        "restore read",
        ours_restore,
        rclone_restore,
        size as f64 / GIB,
        gib,
    );
    Ok(())
}
