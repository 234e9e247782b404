//! 200 exports open at once (100 two-disk backups) on the real `sendense-hub serve` at its
//! defaults: the hub's thread count stays under a bound set by the machine's cores, not by the
//! number of exports, while all 200 disks are written at once; every backup completes byte-exact.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use ::hub::export::engine::IoEngine;
use ::hub::sys::threads;
use common::*;
use serde_json::json;

const BACKUPS: usize = 100;
const DISK: u64 = 1 << 20;

/// Connects to every URI on stdin, then writes each disk from its own thread, all at once after
/// a barrier, in 256 KiB requests without FLUSH (as the Sendense client often does), keeping each
/// disk's bytes in `RAW/<n>.raw`.
const WRITER: &str = r#"
import nbd, os, random, sys, threading
raw = sys.argv[1]
uris = [l.strip() for l in sys.stdin if l.strip()]
handles = []
for u in uris:
    h = nbd.NBD()
    h.connect_uri(u)
    handles.append(h)
start = threading.Barrier(len(handles))
errors = []
def write(n, h):
    data = random.Random(n).randbytes(h.get_size())
    with open(os.path.join(raw, f"{n}.raw"), "wb") as f:
        f.write(data)
    start.wait()
    try:
        for off in range(0, len(data), 256 * 1024):
            h.pwrite(data[off:off + 256 * 1024], off)
        h.shutdown()
    except Exception as e:
        errors.append(f"disk {n}: {e}")
threads = [threading.Thread(target=write, args=(n, h)) for n, h in enumerate(handles)]
for t in threads: t.start()
for t in threads: t.join()
if errors:
    sys.exit("\n".join(errors))
print("ok", flush=True)
"#;

fn threads_of(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// The most threads `pid` had, sampled every few milliseconds until stopped.
struct PeakThreads {
    peak: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<()>,
}

impl PeakThreads {
    fn watch(pid: u32) -> Self {
        let (peak, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let sampler = std::thread::spawn({
            let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
            move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(threads_of(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        Self {
            peak,
            stop,
            sampler,
        }
    }

    fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.sampler.join().unwrap();
        self.peak.load(Ordering::Relaxed)
    }
}

fn write_all_at_once(uris: &[String], raw: &Path) {
    let mut py = Command::new("/usr/bin/python3")
        .args(["-c", WRITER])
        .arg(raw)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = py.stdin.take().unwrap();
    for uri in uris {
        writeln!(stdin, "{uri}").unwrap();
    }
    drop(stdin);
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "writer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn two_hundred_exports_written_at_once_run_on_threads_bounded_by_the_cores() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let raw = dir.path().join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    let cores = threads::cores();
    let bound = threads::bound(cores, IoEngine::threads_for(cores));
    // Declared before the hub, so dropped after it: the cgroup is removed once the hub is gone.
    let cgroup = PidsCgroup::new(bound);
    let (hub, api, _nbd) = start_hub(&data);
    // Before any backup: from here on the kernel refuses the hub a thread past the bound, so a
    // spike between two samples fails the test too (a refused thread fails what needed it).
    if let Some(cg) = &cgroup {
        cg.admit(hub.pid());
    }
    let token = read_token(&data);
    let peak = PeakThreads::watch(hub.pid());

    let mut backups = Vec::new();
    let mut uris = Vec::new();
    for n in 0..BACKUPS {
        let b = create_full_of(&api, &token, &format!("vm-{n:03}"), DISK, 2);
        for d in b["disk_results"].as_array().unwrap() {
            uris.push(d["nbd_uri"].as_str().unwrap().to_owned());
        }
        backups.push(b["backup_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(uris.len(), 2 * BACKUPS);
    let open = threads_of(hub.pid());

    write_all_at_once(&uris, &raw);
    for id in &backups {
        let path = format!("/api/v1/backups/{id}/complete");
        ok(http(
            "POST",
            &api,
            &path,
            Some(&token),
            Some(&json!({"change_id": "c1"})),
        ));
    }
    let mut images: Vec<PathBuf> = Vec::new();
    for id in &backups {
        let done = wait_status(&api, &token, id, "completed");
        for d in done["disk_results"].as_array().unwrap() {
            assert_eq!(d["bytes_written"], DISK, "{done}");
            images.push(d["qcow2_path"].as_str().unwrap().into());
        }
    }
    let peak = peak.stop();

    // URIs and images are in the same order: backup by backup, disk by disk.
    for (n, image) in images.iter().enumerate() {
        qemu_img_compare(&raw.join(format!("{n}.raw")), image);
    }
    if let Some(cg) = &cgroup {
        assert_eq!(
            cg.refused(),
            0,
            "the kernel refused the hub a thread at the bound"
        );
    }
    eprintln!(
        "threads: {open} with {} exports open, {peak} at most; bound {bound} for {cores} cores",
        uris.len()
    );
    assert!(
        peak <= bound,
        "{peak} threads with {} exports: over the bound {bound}",
        uris.len()
    );
    // The bound itself must not allow a thread per export.
    assert!(
        bound < uris.len(),
        "bound {bound} for {} exports",
        uris.len()
    );
}

/// A cgroup whose `pids.max` (tasks: threads included) bounds a process moved into it.
struct PidsCgroup {
    dir: PathBuf,
}

impl PidsCgroup {
    /// `None`, saying why, where this machine gives no pids controller to write to (not root,
    /// no cgroup v1 `pids` hierarchy and no cgroup v2 one with `pids` enabled).
    fn new(limit: usize) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(1)
            != 0
        {
            eprintln!("not root: the thread bound is sampled but not enforced by a pids cgroup");
            return None;
        }
        let name = format!("sendense-io-engine-{}", std::process::id());
        for root in [
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ] {
            let root = Path::new(root);
            if !root.join("cgroup.procs").exists() {
                continue;
            }
            // cgroup v2 wants the controller enabled for the children first.
            if root.join("cgroup.subtree_control").exists() {
                let _ = std::fs::write(root.join("cgroup.subtree_control"), "+pids");
            }
            let dir = root.join(&name);
            if std::fs::create_dir(&dir).is_err() {
                continue;
            }
            if std::fs::write(dir.join("pids.max"), limit.to_string()).is_ok() {
                return Some(Self { dir });
            }
            let _ = std::fs::remove_dir(&dir);
        }
        eprintln!("no writable pids cgroup: the thread bound is sampled but not enforced");
        None
    }

    fn admit(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    /// Spawns that failed at the limit: none may have.
    fn refused(&self) -> u64 {
        let events = std::fs::read_to_string(self.dir.join("pids.events")).unwrap_or_default();
        events
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        // The hub is killed before this (its guard is declared later); wait for it to leave.
        for _ in 0..500 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn the_systemd_unit_tasks_max_covers_the_bound_up_to_64_cores() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/sendense-hub.service"
    ))
    .unwrap();
    let tasks_max: usize = unit
        .lines()
        .find_map(|l| l.strip_prefix("TasksMax="))
        .expect("the unit sets TasksMax=")
        .trim()
        .parse()
        .unwrap();
    for cores in [1, 2, 16, 64] {
        let bound = threads::bound(cores, IoEngine::threads_for(cores));
        assert!(
            bound <= tasks_max,
            "{cores} cores: bound {bound} > TasksMax={tasks_max}"
        );
        // The unit's comment states the figures: keep them true.
        if [2, 16, 64].contains(&cores) {
            assert!(
                unit.contains(&format!(" {bound} ")) || unit.contains(&format!(" {bound};")),
                "unit comment lacks {bound} for {cores} cores"
            );
        }
    }
}
