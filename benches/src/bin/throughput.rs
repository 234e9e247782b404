//! Throughput harness: copies the same random data into our `serve-image`, into `qemu-nbd` (the
//! anchor) and into `nbdkit null` (the protocol ceiling), in alternation, with nbdcopy and with the
//! project's own pipelined client; checks every image against the source; prints a table. With
//! `--read`, also reads one image of the source back from ours and qemu-nbd (`nbdkit pattern` is
//! the ceiling) with nbdcopy.
//!
//! `cargo build --release -p hub && cargo run --release -p benches --bin throughput -- --help`

use std::fs::File;
use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use benches::client::{WriteJob, write_file};
use benches::report::{Measurement, Refs, Row, render};
use benches::size::{format_size, parse_size};
use benches::sys;
use clap::{Parser, ValueEnum};
use rand::{RngCore as _, SeedableRng as _};

const GIB: f64 = (1u64 << 30) as f64;
/// The storage rows' names; every row's throughput is also given as a ratio to `DD_NEW`.
const DD_NEW: &str = "dd new file";
const DD_PREALLOCATED: &str = "dd preallocated file";
/// The disk's limit with `--dir`: fio writing 2 MiB blocks direct through io_uring, 16 deep.
const FIO_DIRECT: &str = "fio direct, no fallocate";
const FIO_DIRECT_FALLOCATE: &str = "fio direct, fallocate";

#[derive(Debug, Parser)]
#[command(about = "NBD write throughput: our serve-image beside qemu-nbd and nbdkit null")]
struct Args {
    /// Bytes of random data copied per run (K, M, G, T suffixes).
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    size: u64,
    /// Where the source file and the images go (default /dev/shm, else the temp dir). With it,
    /// the servers include `qemu-nbd --cache=none --aio=io_uring` and the storage rows fio's
    /// direct writes (with and without fallocate) when fio is installed.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Connection counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    conns: Vec<usize>,
    /// Runs per combination (median and spread are over these).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// [default: ours,qemu-nbd,nbdkit-null,ours-tls,qemu-nbd-tls, and qemu-nbd-direct with --dir]
    #[arg(long, value_delimiter = ',')]
    servers: Option<Vec<ServerKind>>,
    #[arg(long, value_delimiter = ',', default_value = "nbdcopy,rust")]
    clients: Vec<ClientKind>,
    /// The sendense-hub binary (default: next to this executable).
    #[arg(long)]
    hub_bin: Option<PathBuf>,
    /// WRITE sizes of the Rust client (one table row each).
    #[arg(long, value_delimiter = ',', default_value = "2M", value_parser = parse_size)]
    rust_request_size: Vec<u64>,
    /// WRITEs in flight per connection for the Rust client.
    #[arg(long, default_value_t = 64)]
    rust_in_flight: usize,
    /// Skip the storage rows (`dd bs=2M conv=fdatasync` into a new and into a preallocated raw
    /// file in the same directory, no NBD; with `--dir` also fio direct writes).
    #[arg(long)]
    no_dd: bool,
    /// Also measure reads (restores): nbdcopy from each server into `null:`, of a QCOW2 image
    /// qemu-img made from the source; `nbdkit pattern` stands in for `nbdkit null`, whose holes
    /// nbdcopy would skip.
    #[arg(long)]
    read: bool,
    /// With `--read` and `--dir`: write back and drop the page cache before every read run, so
    /// reads come from the disk as a restore of an old backup does (root only).
    #[arg(long)]
    drop_caches: bool,
    /// With `--read`: the chain depths read (one row each). Depth 1 is the image qemu-img made
    /// from the source; each layer above it is a qemu-img overlay in which qemu-io rewrote 1% of
    /// the disk in 64 KiB pieces, so a restore of an old incremental reads through them all.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    depth: Vec<usize>,
    /// Also write the report (Markdown) to this file.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ServerKind {
    Ours,
    QemuNbd,
    /// qemu-nbd with `--cache=none --aio=io_uring` (O_DIRECT).
    QemuNbdDirect,
    NbdkitNull,
    /// Ours over TLS (`nbds+unix://`), x509 credentials from `sendense-hub tls init`.
    OursTls,
    /// qemu-nbd over TLS with the same credentials (`tls-creds-x509`): the anchor of the TLS row.
    QemuNbdTls,
}

impl ServerKind {
    fn name(self) -> &'static str {
        match self {
            ServerKind::Ours => "ours",
            ServerKind::QemuNbd => "qemu-nbd",
            ServerKind::QemuNbdDirect => "qemu-nbd --cache=none --aio=io_uring",
            ServerKind::NbdkitNull => "nbdkit-null",
            ServerKind::OursTls => "ours-tls",
            ServerKind::QemuNbdTls => "qemu-nbd-tls",
        }
    }

    /// The same server in clear (TLS only adds flags and changes the URI).
    fn plain(self) -> ServerKind {
        match self {
            ServerKind::OursTls => ServerKind::Ours,
            ServerKind::QemuNbdTls => ServerKind::QemuNbd,
            other => other,
        }
    }

    fn tls(self) -> bool {
        self != self.plain()
    }

    /// Its name in rows of `client`: the ceiling of reads is `nbdkit pattern`.
    fn label(self, client: Client) -> &'static str {
        match (self, client) {
            (ServerKind::NbdkitNull, Client::NbdcopyRead { .. }) => NBDKIT_PATTERN,
            _ => self.name(),
        }
    }
}

const NBDKIT_PATTERN: &str = "nbdkit-pattern";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ClientKind {
    Nbdcopy,
    Rust,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Nbdcopy,
    Rust {
        request_size: u32,
    },
    /// nbdcopy from the server into `null:`, of the top of a chain of `depth` images.
    NbdcopyRead {
        depth: usize,
    },
}

impl Client {
    fn label(self) -> String {
        match self {
            Client::Nbdcopy => "nbdcopy".into(),
            Client::Rust { request_size } => format!("rust {}", format_size(request_size.into())),
            Client::NbdcopyRead { depth: 1 } => "nbdcopy read".into(),
            Client::NbdcopyRead { depth } => format!("nbdcopy read, depth {depth}"),
        }
    }
}

/// Where each peer is, or why it is not.
struct Tools {
    hub: std::result::Result<PathBuf, String>,
    qemu_img: Option<PathBuf>,
    qemu_nbd: Option<PathBuf>,
    nbdkit: Option<PathBuf>,
    nbdcopy: Option<PathBuf>,
    /// x509 credentials of the TLS rows (made by `sendense-hub tls init` in the work dir).
    tls_creds: std::result::Result<PathBuf, String>,
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl Tools {
    fn find(hub_bin: Option<&Path>) -> Tools {
        let hub = match hub_bin {
            Some(p) if p.is_file() => Ok(p.to_path_buf()),
            Some(p) => Err(format!("--hub-bin {} not found", p.display())),
            None => std::env::current_exe()
                .ok()
                .and_then(|e| Some(e.parent()?.join("sendense-hub")))
                .filter(|p| p.is_file())
                .ok_or_else(|| {
                    "sendense-hub not built: run `cargo build --release -p hub`".to_string()
                }),
        };
        Tools {
            hub,
            qemu_img: which("qemu-img"),
            qemu_nbd: which("qemu-nbd"),
            nbdkit: which("nbdkit"),
            nbdcopy: which("nbdcopy"),
            tls_creds: Err("TLS credentials not made yet".into()),
        }
    }

    fn server_missing(&self, kind: ServerKind) -> Option<String> {
        if kind.tls()
            && let Err(why) = &self.tls_creds
        {
            return Some(why.clone());
        }
        match kind.plain() {
            ServerKind::Ours => self.hub.as_ref().err().cloned(),
            ServerKind::QemuNbd | ServerKind::QemuNbdDirect if self.qemu_nbd.is_none() => {
                Some("qemu-nbd not found in PATH".into())
            }
            ServerKind::QemuNbd | ServerKind::QemuNbdDirect if self.qemu_img.is_none() => {
                Some("qemu-img not found in PATH".into())
            }
            ServerKind::NbdkitNull if self.nbdkit.is_none() => {
                Some("nbdkit not found in PATH".into())
            }
            _ => None,
        }
    }

    fn client_missing(&self, client: Client, tls: bool) -> Option<String> {
        match client {
            Client::Rust { .. } if tls => Some("the rust client speaks no TLS".into()),
            Client::Nbdcopy | Client::NbdcopyRead { .. } if self.nbdcopy.is_none() => {
                Some("nbdcopy not found in PATH".into())
            }
            Client::NbdcopyRead { .. } if self.qemu_img.is_none() || which("qemu-io").is_none() => {
                Some("qemu-img or qemu-io not found in PATH (they make the images read)".into())
            }
            _ => None,
        }
    }
}

fn tool(p: &Option<PathBuf>, name: &str) -> Result<PathBuf> {
    p.clone().ok_or_else(|| anyhow!("{name} not found in PATH"))
}

/// qemu-nbd's direct-I/O configuration (the one issue 11 measured).
const QEMU_NBD_DIRECT: [&str; 2] = ["--cache=none", "--aio=io_uring"];

/// A server started for one run, in its own temp dir.
struct Server {
    pid: u32,
    dir: tempfile::TempDir,
    socket: PathBuf,
    image: PathBuf,
    log: PathBuf,
    /// Set for a server over TLS: the client's `tls-certificates` directory.
    tls_creds: Option<PathBuf>,
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<_> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // A panic or an anyhow error prints its message first and a long backtrace after: show the
    // message.
    let shown: Vec<_> = match lines
        .iter()
        .position(|l| l.contains("panicked at") || l.starts_with("Error:"))
    {
        Some(i) => lines[i..lines.len().min(i + 2)].to_vec(),
        None => lines[lines.len().saturating_sub(3)..].to_vec(),
    };
    if shown.is_empty() {
        String::new()
    } else {
        format!(" (log: {})", shown.join(" / "))
    }
}

fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} {}: {}{}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Starts `kind` on a new image of `size`, or read-only on `read_image` when given.
fn start_server(
    kind: ServerKind,
    tools: &Tools,
    size: u64,
    base: &Path,
    read_image: Option<&Path>,
) -> Result<Server> {
    let dir = tempfile::Builder::new().prefix("run-").tempdir_in(base)?;
    let socket = dir.path().join("nbd.sock");
    let image = dir.path().join("image.qcow2");
    let log = dir.path().join("server.log");
    let mut cmd = match (kind.plain(), read_image) {
        (ServerKind::Ours, Some(read)) => {
            let hub = tools.hub.clone().map_err(|e| anyhow!(e))?;
            let mut c = Command::new(hub);
            c.args(["serve-image", "--read-only", "--socket"])
                .arg(&socket)
                .arg(read);
            c
        }
        (ServerKind::QemuNbd | ServerKind::QemuNbdDirect, Some(read)) => {
            let mut c = Command::new(tool(&tools.qemu_nbd, "qemu-nbd")?);
            c.args(["-r", "-f", "qcow2", "-t", "--shared=8", "-k"])
                .arg(&socket);
            if kind == ServerKind::QemuNbdDirect {
                c.args(QEMU_NBD_DIRECT);
            }
            c.arg(read);
            c
        }
        (ServerKind::NbdkitNull, Some(_)) => {
            let mut c = Command::new(tool(&tools.nbdkit, "nbdkit")?);
            c.args(["-f", "-r", "-U"])
                .arg(&socket)
                .arg("pattern")
                .arg(format!("size={size}"));
            c
        }
        (ServerKind::Ours, None) => {
            let hub = tools.hub.clone().map_err(|e| anyhow!(e))?;
            let mut c = Command::new(hub);
            c.arg("serve-image")
                .arg("--create")
                .arg(size.to_string())
                .arg("--socket")
                .arg(&socket)
                .arg(&image);
            c
        }
        (ServerKind::QemuNbd | ServerKind::QemuNbdDirect, None) => {
            run_quiet(
                Command::new(tool(&tools.qemu_img, "qemu-img")?)
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&image)
                    .arg(size.to_string()),
            )?;
            let mut c = Command::new(tool(&tools.qemu_nbd, "qemu-nbd")?);
            c.args(["-f", "qcow2", "-t", "--shared=8", "-k"])
                .arg(&socket);
            if kind == ServerKind::QemuNbdDirect {
                c.args(QEMU_NBD_DIRECT);
            }
            c.arg(&image);
            c
        }
        (ServerKind::NbdkitNull, None) => {
            let mut c = Command::new(tool(&tools.nbdkit, "nbdkit")?);
            c.arg("-f")
                .arg("-U")
                .arg(&socket)
                .arg("null")
                .arg(format!("size={size}"));
            c
        }
        (ServerKind::OursTls | ServerKind::QemuNbdTls, _) => unreachable!("plain() has no TLS"),
    };
    if kind.tls() {
        let creds = tools.tls_creds.clone().map_err(|e| anyhow!(e))?;
        if kind.plain() == ServerKind::Ours {
            cmd.arg("--tls-creds").arg(&creds);
        } else {
            let object = format!(
                "tls-creds-x509,id=tls0,dir={},endpoint=server,verify-peer=off",
                creds.display()
            );
            cmd.args(["--object", &object, "--tls-creds", "tls0"]);
        }
    }
    let pid = sys::spawn(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?),
    )
    .with_context(|| format!("starting {}", kind.name()))?;
    let server = Server {
        pid,
        dir,
        socket,
        image,
        log,
        tls_creds: kind.tls().then(|| tools.tls_creds.clone().ok()).flatten(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = sys::try_reap(server.pid)? {
            bail!(
                "{} exited before accepting: {}{}",
                kind.name(),
                r.status,
                log_tail(&server.log)
            );
        }
        if UnixStream::connect(&server.socket).is_ok() {
            return Ok(server);
        }
        if Instant::now() > deadline {
            let _ = sys::kill(server.pid);
            let _ = sys::reap_within(server.pid, Duration::from_secs(10));
            bail!(
                "{} did not accept within 20 s{}",
                kind.name(),
                log_tail(&server.log)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGTERM, then wait; returns the reaped figures and VmHWM read just before the signal (KiB).
fn stop_server(server: &Server) -> Result<(sys::Reaped, Option<u64>)> {
    let hwm = sys::peak_rss_kib(server.pid);
    sys::terminate(server.pid)?;
    if let Some(r) = sys::reap_within(server.pid, Duration::from_secs(120))? {
        return Ok((r, hwm));
    }
    sys::kill(server.pid)?;
    sys::reap_within(server.pid, Duration::from_secs(10))?;
    bail!(
        "server did not exit within 120 s of SIGTERM{}",
        log_tail(&server.log)
    )
}

/// Copies with `client`; returns wall time and client CPU time.
fn run_client(
    client: Client,
    tools: &Tools,
    server: &Server,
    source: &Path,
    size: u64,
    conns: usize,
    in_flight: usize,
) -> Result<(Duration, Duration)> {
    let timeout = Duration::from_secs(60 + size / (10 << 20));
    match client {
        Client::Nbdcopy | Client::NbdcopyRead { .. } => {
            let log = server.dir.path().join("client.log");
            let uri = match &server.tls_creds {
                None => format!("nbd+unix:///?socket={}", server.socket.display()),
                Some(creds) => format!(
                    "nbds+unix:///?socket={}&tls-certificates={}",
                    server.socket.display(),
                    creds.display()
                ),
            };
            let mut cmd = Command::new(tool(&tools.nbdcopy, "nbdcopy")?);
            cmd.arg("-C").arg(conns.to_string());
            if matches!(client, Client::NbdcopyRead { .. }) {
                cmd.arg(&uri).arg("null:");
            } else {
                cmd.arg("--flush").arg(source).arg(&uri);
            }
            let start = Instant::now();
            let pid = sys::spawn(
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(File::create(&log)?),
            )
            .context("starting nbdcopy")?;
            let Some(r) = sys::reap_within(pid, timeout)? else {
                sys::kill(pid)?;
                sys::reap_within(pid, Duration::from_secs(10))?;
                bail!("nbdcopy did not finish within {} s", timeout.as_secs());
            };
            let wall = start.elapsed();
            if !r.status.success() {
                bail!("nbdcopy {}{}", r.status, log_tail(&log));
            }
            Ok((wall, r.cpu))
        }
        Client::Rust { request_size } => {
            let mut job = WriteJob::new(server.socket.clone(), source.to_path_buf(), size);
            job.connections = conns;
            job.request_size = request_size;
            job.in_flight = in_flight;
            let cpu0 = sys::self_cpu();
            let report = write_file(&job).context("rust client")?;
            Ok((report.elapsed, sys::self_cpu().saturating_sub(cpu0)))
        }
    }
}

/// `sendense-hub tls init` into the work dir: one CA and server certificate for every TLS row, ours
/// and qemu-nbd's alike (qemu's layout, which both read).
fn make_tls_creds(tools: &Tools, work: &Path) -> std::result::Result<PathBuf, String> {
    let hub = tools.hub.clone()?;
    let dir = work.join("tls");
    run_quiet(Command::new(hub).args(["tls", "init"]).arg(&dir))
        .map_err(|e| format!("sendense-hub tls init: {e:#}"))?;
    Ok(dir)
}

fn verify(kind: ServerKind, tools: &Tools, image: &Path, source: &Path) -> Result<()> {
    let kind = kind.plain();
    if kind == ServerKind::NbdkitNull {
        return Ok(());
    }
    let qemu_img = tool(&tools.qemu_img, "qemu-img")?;
    if kind == ServerKind::Ours {
        run_quiet(
            Command::new(&qemu_img)
                .args(["check", "-q", "-f", "qcow2"])
                .arg(image),
        )
        .context("qemu-img check")?;
    }
    run_quiet(
        Command::new(&qemu_img)
            .args(["compare", "-q", "-f", "qcow2", "-F", "raw"])
            .arg(image)
            .arg(source),
    )
    .context("image differs from source (qemu-img compare)")
}

#[allow(clippy::too_many_arguments)]
fn one_run(
    round: usize,
    kind: ServerKind,
    client: Client,
    conns: usize,
    args: &Args,
    tools: &Tools,
    source: &Path,
    work: &Path,
    read_images: &[(usize, PathBuf)],
) -> Result<Measurement> {
    let read_image = match client {
        Client::NbdcopyRead { depth } => read_images
            .iter()
            .find(|(d, _)| *d == depth)
            .map(|(_, p)| p.as_path()),
        _ => None,
    };
    let reads = read_image.is_some();
    let server = start_server(kind, tools, args.size, work, read_image)?;
    if reads && args.drop_caches {
        // After the server opened the image, so its first reads come from the disk too.
        sys::drop_caches().context("dropping the page cache")?;
    }
    let copied = run_client(
        client,
        tools,
        &server,
        source,
        args.size,
        conns,
        args.rust_in_flight,
    );
    let stopped = stop_server(&server);
    let (wall, client_cpu) = copied.map_err(|e| anyhow!("{e:#}{}", log_tail(&server.log)))?;
    let (reaped, hwm_kib) = stopped?;
    if !reaped.status.success() {
        bail!(
            "{} exited with {} after SIGTERM{}",
            kind.name(),
            reaped.status,
            log_tail(&server.log)
        );
    }
    if !reads {
        verify(kind, tools, &server.image, source)?;
    }
    let gib = args.size as f64 / GIB;
    let rss_kib = hwm_kib.unwrap_or(0).max(reaped.max_rss_kib);
    Ok(Measurement {
        round,
        gib_per_s: gib / wall.as_secs_f64(),
        server_cpu_per_gib: reaped.cpu.as_secs_f64() / gib,
        client_cpu_per_gib: client_cpu.as_secs_f64() / gib,
        server_peak_rss_mib: rss_kib as f64 / 1024.0,
    })
}

/// The storage rows: no NBD, no QCOW2, the same filesystem. `dd` writes the source into a raw
/// file: into a new file it is the floor for a new image (the filesystem allocates as the data
/// arrives, as it does for every server here); into a preallocated file it is the issue's disk
/// reference (the preallocation is not timed). fio writes 2 MiB blocks direct through io_uring,
/// 16 deep, into a new file, with and without `--fallocate=native` (issue 11's disk limit; its
/// fallocate is timed, as ours is). Their CPU counts as "server" CPU.
fn storage_run(
    round: usize,
    row: &str,
    size: u64,
    source: &Path,
    work: &Path,
) -> Result<Measurement> {
    let dir = tempfile::Builder::new()
        .prefix("storage-")
        .tempdir_in(work)?;
    let target = dir.path().join("raw");
    let mut cmd = if row == DD_NEW || row == DD_PREALLOCATED {
        let file = File::create(&target)?;
        if row == DD_PREALLOCATED {
            sys::preallocate(&file, size).context("preallocating the dd target")?;
        }
        drop(file);
        let mut c = Command::new("dd");
        c.arg(format!("if={}", source.display()))
            .arg(format!("of={}", target.display()))
            .args(["bs=2M", "conv=notrunc,fdatasync", "status=none"]);
        c
    } else {
        let fallocate = if row == FIO_DIRECT_FALLOCATE {
            "native"
        } else {
            "none"
        };
        let mut c = Command::new("fio");
        c.args([
            "--name=write",
            "--rw=write",
            "--bs=2M",
            "--direct=1",
            "--ioengine=io_uring",
            "--iodepth=16",
            "--end_fsync=1",
            "--output=/dev/null",
        ])
        .arg(format!("--fallocate={fallocate}"))
        .arg(format!("--size={size}"))
        .arg(format!("--filename={}", target.display()));
        c
    };
    let name = cmd.get_program().to_string_lossy().into_owned();
    let start = Instant::now();
    let pid = sys::spawn(cmd.stdin(Stdio::null()).stdout(Stdio::null()))
        .with_context(|| format!("starting {name}"))?;
    let timeout = Duration::from_secs(60 + size / (10 << 20));
    let Some(r) = sys::reap_within(pid, timeout)? else {
        sys::kill(pid)?;
        sys::reap_within(pid, Duration::from_secs(10))?;
        bail!("{name} did not finish within {} s", timeout.as_secs());
    };
    let wall = start.elapsed();
    if !r.status.success() {
        bail!("{name} {}", r.status);
    }
    let gib = size as f64 / GIB;
    Ok(Measurement {
        round,
        gib_per_s: gib / wall.as_secs_f64(),
        server_cpu_per_gib: r.cpu.as_secs_f64() / gib,
        client_cpu_per_gib: 0.0,
        server_peak_rss_mib: r.max_rss_kib as f64 / 1024.0,
    })
}

/// One chain for every depth asked: `read.qcow2` (qemu-img convert of the source) and overlays
/// on it, each with 1% of the disk rewritten in 64 KiB pieces at places that differ per layer.
/// The top of the chain at each depth asked, with that depth.
fn make_chains(
    tools: &Tools,
    source: &Path,
    work: &Path,
    depths: &[usize],
) -> Result<Vec<(usize, PathBuf)>> {
    const PIECE: u64 = 64 << 10;
    let qemu_img = tool(&tools.qemu_img, "qemu-img")?;
    let qemu_io = which("qemu-io").context("qemu-io not found in PATH")?;
    let size = std::fs::metadata(source)?.len();
    let base = work.join("read.qcow2");
    run_quiet(
        Command::new(&qemu_img)
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(source)
            .arg(&base),
    )?;
    let deepest = depths.iter().copied().max().unwrap_or(1);
    let pieces = (size / PIECE).max(1);
    let per_layer = (pieces / 100).max(1);
    let mut tops = vec![(1, base.clone())];
    let mut below = base;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0xc4a1_5eed);
    for depth in 2..=deepest {
        let top = work.join(format!("read-{depth}.qcow2"));
        run_quiet(
            Command::new(&qemu_img)
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(&below)
                .arg(&top),
        )?;
        let mut io = Command::new(&qemu_io);
        io.args(["-f", "qcow2"]);
        for _ in 0..per_layer {
            let at = (rng.next_u64() % pieces) * PIECE;
            let len = PIECE.min(size - at);
            io.arg("-c")
                .arg(format!("write -P {} {at} {len}", depth % 255 + 1));
        }
        run_quiet(io.arg(&top))?;
        tops.push((depth, top.clone()));
        below = top;
    }
    tops.retain(|(d, _)| depths.contains(d));
    Ok(tops)
}

fn generate_source(path: &Path, size: u64) -> Result<()> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5e4d_e45e);
    let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

/// The filesystem type holding `path`, from the text of /proc/self/mounts (longest mount prefix).
fn fs_type(path: &Path, mounts: &str) -> Option<String> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, mnt, ty) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mnt).then(|| (mnt.len(), ty.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, ty)| ty)
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}

fn machine_summary(work: &Path, tools: &Tools) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib >> 20);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let canon = work.canonicalize().unwrap_or_else(|_| work.to_path_buf());
    let fs = std::fs::read_to_string("/proc/self/mounts")
        .ok()
        .and_then(|m| fs_type(&canon, &m))
        .unwrap_or("?".into());
    let version = |p: &Option<PathBuf>| {
        p.as_ref().map_or("missing".to_string(), |p| {
            first_line(Command::new(p).arg("--version"))
        })
    };
    let now = time::OffsetDateTime::now_utc();
    format!(
        "- date: {:04}-{:02}-{:02} {:02}:{:02} UTC\n- machine: {cores} cores ({cpu}), {mem_gib} GiB RAM, Linux {}, unix sockets (loopback), data on {fs} ({})\n- peers: {}; {}; {}\n",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        kernel.trim(),
        work.display(),
        version(&tools.qemu_nbd),
        version(&tools.nbdkit),
        version(&tools.nbdcopy),
    )
}

/// Other work on the machine skews every figure: the report says how busy it was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Without `--servers`: ours and the anchors, over TLS too, and qemu-nbd with direct I/O when the
/// run writes to a real filesystem (`--dir`).
fn default_servers(on_disk: bool) -> Vec<ServerKind> {
    let mut s = vec![ServerKind::Ours, ServerKind::QemuNbd];
    if on_disk {
        s.push(ServerKind::QemuNbdDirect);
    }
    s.extend([
        ServerKind::NbdkitNull,
        ServerKind::OursTls,
        ServerKind::QemuNbdTls,
    ]);
    s
}

fn main() -> Result<()> {
    let args = Args::parse();
    let servers = args
        .servers
        .clone()
        .unwrap_or_else(|| default_servers(args.dir.is_some()));
    if args.runs == 0 || args.conns.contains(&0) || args.size == 0 {
        bail!("--runs, --conns and --size must be positive");
    }
    let mut tools = Tools::find(args.hub_bin.as_deref());
    let mut clients = Vec::new();
    for c in &args.clients {
        match c {
            ClientKind::Nbdcopy => clients.push(Client::Nbdcopy),
            ClientKind::Rust => {
                for &s in &args.rust_request_size {
                    let request_size = u32::try_from(s)
                        .ok()
                        .filter(|&s| s > 0)
                        .context("--rust-request-size out of range")?;
                    clients.push(Client::Rust { request_size });
                }
            }
        }
    }
    if args.read {
        if args.depth.contains(&0) {
            bail!("--depth counts images: 1 is the base alone");
        }
        for &depth in &args.depth {
            clients.push(Client::NbdcopyRead { depth });
        }
    }
    if args.drop_caches {
        if !args.read || args.dir.is_none() {
            bail!("--drop-caches needs --read and --dir (tmpfs pages are not dropped)");
        }
        sys::drop_caches().map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                anyhow!("--drop-caches needs root (writing /proc/sys/vm/drop_caches: {e})")
            }
            _ => anyhow!("--drop-caches: writing /proc/sys/vm/drop_caches: {e}"),
        })?;
    }
    let base = args.dir.clone().unwrap_or_else(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        }
    });
    let work = tempfile::Builder::new()
        .prefix("sendense-throughput-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a temp dir in {}", base.display()))?;
    if let Err(why) = &tools.hub {
        eprintln!("note: ours is skipped: {why}");
    }
    if servers.iter().any(|s| s.tls()) {
        tools.tls_creds = make_tls_creds(&tools, work.path());
    }

    let load_start = load_average();
    let source = work.path().join("source.raw");
    let t = Instant::now();
    generate_source(&source, args.size).context("writing the source file")?;
    eprintln!(
        "source: {} of random data in {:.1} s",
        format_size(args.size),
        t.elapsed().as_secs_f64()
    );
    // The image every server reads, made by qemu-img so no server reads its own writing.
    let read_images = if args.read {
        let t = Instant::now();
        let chain = make_chains(&tools, &source, work.path(), &args.depth)
            .context("making the images to read")?;
        eprintln!("images to read: made in {:.1} s", t.elapsed().as_secs_f64());
        chain
    } else {
        Vec::new()
    };

    let mut rows = Vec::new();
    for &client in &clients {
        for &conns in &args.conns {
            for &server in &servers {
                let missing = tools
                    .server_missing(server)
                    .or_else(|| tools.client_missing(client, server.tls()));
                rows.push(Row {
                    server: server.label(client).into(),
                    client: client.label(),
                    conns,
                    missing,
                    ..Row::default()
                });
            }
        }
    }
    let dd_rows = rows.len();
    if !args.no_dd {
        let dd_missing = || {
            which("dd")
                .is_none()
                .then(|| "dd not found in PATH".to_string())
        };
        let fio_missing = || {
            which("fio")
                .is_none()
                .then(|| "fio not found in PATH".to_string())
        };
        let mut storage = vec![
            (DD_NEW, "dd bs=2M conv=fdatasync", dd_missing()),
            (DD_PREALLOCATED, "dd bs=2M conv=fdatasync", dd_missing()),
        ];
        if args.dir.is_some() {
            let fio = "fio 2M io_uring depth 16 end_fsync";
            storage.push((FIO_DIRECT, fio, fio_missing()));
            storage.push((FIO_DIRECT_FALLOCATE, fio, fio_missing()));
        }
        for (server, client, missing) in storage {
            rows.push(Row {
                server: server.into(),
                client: client.into(),
                conns: 1,
                missing,
                ..Row::default()
            });
        }
    }
    for run in 1..=args.runs {
        for row in rows[dd_rows..].iter_mut().filter(|r| r.missing.is_none()) {
            match storage_run(run, &row.server, args.size, &source, work.path()) {
                Ok(m) => {
                    eprintln!(
                        "run {run}/{} {}: {:.2} GiB/s",
                        args.runs, row.server, m.gib_per_s
                    );
                    row.runs.push(m);
                }
                Err(e) => row.failures.push(format!("run {run}: {e:#}")),
            }
        }
        let mut i = 0;
        for &client in &clients {
            for &conns in &args.conns {
                for &server in &servers {
                    let row = &mut rows[i];
                    i += 1;
                    if row.missing.is_some() {
                        continue;
                    }
                    let what = format!(
                        "run {run}/{} {} / {} / {conns} conns",
                        args.runs, row.server, row.client
                    );
                    match one_run(
                        run,
                        server,
                        client,
                        conns,
                        &args,
                        &tools,
                        &source,
                        work.path(),
                        &read_images,
                    ) {
                        Ok(m) => {
                            eprintln!(
                                "{what}: {:.2} GiB/s, server {:.2} CPU s/GiB, {:.0} MiB RSS",
                                m.gib_per_s, m.server_cpu_per_gib, m.server_peak_rss_mib
                            );
                            row.runs.push(m);
                        }
                        Err(e) => {
                            eprintln!("{what}: FAILED: {e:#}");
                            row.failures.push(format!("run {run}: {e:#}"));
                        }
                    }
                }
            }
        }
    }

    let report = format!(
        "{}- load average (1/5/15 min) at start: {load_start}; at end: {}\n- {} per run, {} run(s) per row, servers in alternation; ratios are medians of per-round ratios; nbdcopy `-C N --flush` (reads: `-C N URI null:`{}); rust client {} in flight per connection\n\n{}",
        machine_summary(work.path(), &tools),
        load_average(),
        format_size(args.size),
        args.runs,
        if args.drop_caches {
            ", page cache dropped before each"
        } else {
            ""
        },
        args.rust_in_flight,
        render(
            &rows,
            &Refs {
                anchor: ServerKind::QemuNbd.name(),
                ceilings: &[ServerKind::NbdkitNull.name(), NBDKIT_PATTERN],
                storage: DD_NEW,
            }
        ),
    );
    println!("{report}");
    if let Some(out) = &args.output {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_sizes() {
        let a = Args::try_parse_from([
            "throughput",
            "--size",
            "2G",
            "--conns",
            "1,4,8",
            "--servers",
            "ours,nbdkit-null",
            "--clients",
            "rust",
            "--rust-request-size",
            "256K,2M",
        ])
        .unwrap();
        assert_eq!(a.size, 2 << 30);
        assert_eq!(a.conns, vec![1, 4, 8]);
        assert_eq!(
            a.servers,
            Some(vec![ServerKind::Ours, ServerKind::NbdkitNull])
        );
        assert_eq!(a.clients, vec![ClientKind::Rust]);
        assert_eq!(a.rust_request_size, vec![256 << 10, 2 << 20]);
        let d = Args::try_parse_from(["throughput"]).unwrap();
        assert_eq!((d.size, d.runs, d.conns.clone()), (4 << 30, 3, vec![1, 4]));
        assert_eq!(d.servers, None);
        assert!(default_servers(false).contains(&ServerKind::OursTls));
        assert!(default_servers(true).contains(&ServerKind::QemuNbdDirect));
        let q = Args::try_parse_from(["throughput", "--servers", "qemu-nbd-direct"]).unwrap();
        assert_eq!(q.servers, Some(vec![ServerKind::QemuNbdDirect]));
        assert!(Args::try_parse_from(["throughput", "--servers", "nbd-server"]).is_err());
        assert!(Args::try_parse_from(["throughput", "--size", "lots"]).is_err());
        let r = Args::try_parse_from(["throughput", "--read", "--depth", "1,16,64"]).unwrap();
        assert_eq!(r.depth, vec![1, 16, 64]);
        assert_eq!(d.depth, vec![1]);
    }

    /// The chains read are real qemu chains of the depth asked, each layer changing the disk.
    #[test]
    fn chains_have_the_depth_asked() {
        let tools = Tools::find(None);
        if tools.qemu_img.is_none() || which("qemu-io").is_none() {
            eprintln!("skipped: qemu-img or qemu-io not in PATH");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.raw");
        generate_source(&source, 8 << 20).unwrap();
        let tops = make_chains(&tools, &source, dir.path(), &[1, 3]).unwrap();
        assert_eq!(tops.iter().map(|(d, _)| *d).collect::<Vec<_>>(), [1, 3]);
        let out = Command::new("qemu-img")
            .args(["info", "--backing-chain", "--output=json"])
            .arg(&tops[1].1)
            .output()
            .unwrap();
        let chain: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(chain.as_array().map(Vec::len), Some(3), "{chain}");
        let same = |a: &Path, b: &Path| {
            Command::new("qemu-img")
                .args(["compare", "-q"])
                .arg(a)
                .arg(b)
                .status()
                .unwrap()
                .success()
        };
        assert!(same(&tops[0].1, &source));
        assert!(!same(&tops[1].1, &tops[0].1));
    }

    #[test]
    fn finds_filesystem_by_longest_mount() {
        let mounts =
            "/dev/vda / ext4 rw 0 0\ntmpfs /dev/shm tmpfs rw 0 0\ntmpfs /dev tmpfs rw 0 0\n";
        assert_eq!(
            fs_type(Path::new("/dev/shm/x"), mounts).as_deref(),
            Some("tmpfs")
        );
        assert_eq!(
            fs_type(Path::new("/work/x"), mounts).as_deref(),
            Some("ext4")
        );
    }

    #[test]
    fn client_labels() {
        assert_eq!(Client::Nbdcopy.label(), "nbdcopy");
        assert_eq!(
            Client::Rust {
                request_size: 256 << 10
            }
            .label(),
            "rust 256K"
        );
    }
}
