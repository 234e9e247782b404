//! Helpers shared by the integration tests: real peers (qemu-img, nbdcopy, nbdinfo, python3-libnbd)
//! and the built binary.
#![allow(dead_code)]

pub mod chain;
pub mod copies;
pub mod garage;
pub mod hub;
pub mod restore;
pub mod s3;
pub mod sna;
pub mod standin;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_sendense-hub");

/// Run a command, panic with its output unless it exits with one of `codes`.
pub fn run_expect(cmd: &mut Command, codes: &[i32]) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let code = out.status.code().unwrap_or(-1);
    assert!(
        codes.contains(&code),
        "{cmd:?} exited {code}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn run_ok(cmd: &mut Command) -> Output {
    run_expect(cmd, &[0])
}

pub fn qemu_img_check(image: &Path) {
    run_ok(
        Command::new("qemu-img")
            .args(["check", "-f", "qcow2"])
            .arg(image),
    );
}

/// Waits (at most 5 s) until qemu-img can lock `image`. A process killed with io_uring requests
/// in flight (direct I/O) keeps its image files, and their locks, open until the kernel has torn
/// its rings down, a moment after the process is reaped.
pub fn wait_unlocked(image: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let out = Command::new("qemu-img")
            .args(["info", "-f", "qcow2"])
            .arg(image)
            .output()
            .unwrap();
        let locked = String::from_utf8_lossy(&out.stderr).contains("lock");
        if !locked || std::time::Instant::now() > deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A new, empty qcow2 image made by qemu-img.
pub fn qemu_img_create(image: &Path, size: u64) {
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(image)
            .arg(size.to_string()),
    );
}

/// `qemu-img compare` of a raw file against a qcow2 image (with its chain).
pub fn qemu_img_compare(raw: &Path, image: &Path) {
    run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "qcow2"])
            .arg(raw)
            .arg(image),
    );
}

/// A raw file of `size` bytes: random data with some all-zero stretches, deterministic per seed.
pub fn make_raw(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; size];
    rng.fill(&mut data[..]);
    // Zero stretches exercise WRITE_ZEROES/holes in the copy tools.
    let chunk = 256 << 10;
    for (i, block) in data.chunks_mut(chunk).enumerate() {
        if i % 3 == 1 {
            block.fill(0);
        }
    }
    std::fs::write(path, &data).unwrap();
    data
}

/// A child process killed when dropped, so a failing test leaves nothing running.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child already waited")
    }

    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("child already waited").id()
    }

    pub fn terminate_and_wait(&mut self) -> std::process::ExitStatus {
        run_ok(Command::new("kill").args(["-TERM", &self.pid().to_string()]));
        let mut child = self.0.take().expect("child already waited");
        child.wait().unwrap()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Start `sendense-hub serve-image ARGS` and return it with the URI it prints on stdout.
pub fn serve_image(args: &[&str], image: &Path) -> (ChildGuard, String) {
    let child = Command::new(BIN)
        .arg("serve-image")
        .args(args)
        .arg(image)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn sendense-hub");
    let mut guard = ChildGuard(Some(child));
    let stdout = guard.child().stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let uri = line.trim().to_owned();
    assert!(uri.starts_with("nbd"), "serve-image printed {uri:?}");
    (guard, uri)
}

pub fn tmp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// Every file under `dir` (catalog, WAL, key file, images) that holds `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                // SQLite's -wal/-shm files go when the last connection closes.
                .unwrap_or_default()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                found.push(path);
            }
        }
    }
    found
}

/// Start `sendense-hub serve` on ephemeral ports; learn them from its JSON log. The data dir
/// comes from the environment; the listen flags win over (unusable) environment values.
pub fn start_hub(data: &Path) -> (ChildGuard, String, String) {
    start_hub_with(data, &[])
}

/// [`start_hub`] with more `serve` flags.
pub fn start_hub_with(data: &Path, extra: &[&str]) -> (ChildGuard, String, String) {
    let mut child = Command::new(BIN)
        .args([
            "--log-json",
            "serve",
            "--api-listen",
            "127.0.0.1:0",
            "--nbd-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("SENDENSE_HUB_DATA_DIR", data)
        .env("SENDENSE_HUB_API_LISTEN", "192.0.2.1:1")
        .env("SENDENSE_HUB_NBD_LISTEN", "192.0.2.1:2")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let guard = ChildGuard(Some(child));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("hub: {line}");
            let _ = tx.send(line);
        }
    });
    let (mut api, mut nbd) = (None, None);
    while api.is_none() || nbd.is_none() {
        let line = rx.recv().expect("hub exited before listening");
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(a) = v["fields"]["api"].as_str() {
            api = Some(a.to_owned());
        }
        if let Some(n) = v["fields"]["nbd"].as_str() {
            nbd = Some(n.to_owned());
        }
    }
    (guard, api.unwrap(), nbd.unwrap())
}

/// The API token the hub wrote into its data dir at first start.
pub fn read_token(data: &Path) -> String {
    std::fs::read_to_string(data.join("api-token"))
        .unwrap()
        .trim()
        .to_owned()
}

/// A minimal HTTP/1.1 client (one request per connection), so the test needs no curl.
pub fn http(
    method: &str,
    addr: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, payload) = response.split_once("\r\n\r\n").expect("HTTP response");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let value = serde_json::from_str(payload).unwrap_or(Value::String(payload.to_owned()));
    (status, value)
}

pub fn ok(resp: (u16, Value)) -> Value {
    assert_eq!(resp.0, 200, "{}", resp.1);
    resp.1
}

/// Polls the backup until it has `status` (or gives up after 30 s); returns the last body.
pub fn wait_status(api: &str, token: &str, id: &str, status: &str) -> Value {
    let path = format!("/api/v1/backups/{id}");
    let mut body = Value::Null;
    for _ in 0..600 {
        body = ok(http("GET", api, &path, Some(token), None));
        if body["status"] == status {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(body["status"], status, "{body}");
    body
}

/// `POST /api/v1/backups`: a full backup of one disk of `capacity` bytes; returns its body.
pub fn create_full(api: &str, token: &str, vm: &str, capacity: u64) -> Value {
    create_full_of(api, token, vm, capacity, 1)
}

/// [`create_full`] with `disks` disks (keys 2000, 2001, ...), each of `capacity` bytes.
pub fn create_full_of(api: &str, token: &str, vm: &str, capacity: u64, disks: u32) -> Value {
    let disks: Vec<Value> = (0..disks)
        .map(|id| serde_json::json!({"disk_id": id, "vmware_disk_key": 2000 + id, "capacity_bytes": capacity}))
        .collect();
    let req = serde_json::json!({"vm_name": vm, "backup_type": "full", "disks": disks});
    ok(http(
        "POST",
        api,
        "/api/v1/backups",
        Some(token),
        Some(&req),
    ))
}

/// Longest a command may run before the test calls it hung (a bound, not a timing).
const HANG: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `cmd`, killing it (and failing) if it runs past [`HANG`].
pub fn bounded(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} hung");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}
