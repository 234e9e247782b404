//! Many backup cycles in one process: file descriptors, threads and memory must not grow. Alone in
//! its test binary, so no other test's sockets or threads are counted.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use axum::http::StatusCode;
use common::hub::*;
use common::*;

/// Cycles measured, after a warm-up that lets pools and caches reach their size. 500 in all, as
/// the issue asks; about 40 s in a debug build on two cores.
const WARM_UP: usize = 20;
const CYCLES: usize = 480;

/// One client process for every cycle (spawning nbdcopy 500 times would measure fork): for each
/// URI on stdin it connects, writes 64 KiB, flushes and disconnects.
const CLIENT: &str = r#"
import nbd, sys
data = b"\x5a" * 65536
for line in sys.stdin:
    h = nbd.NBD()
    h.connect_uri(line.strip())
    h.pwrite(data, 0)
    h.flush()
    h.shutdown()
    del h
    print("ok", flush=True)
"#;

#[derive(Debug, Clone, Copy)]
struct Usage {
    fds: usize,
    threads: usize,
    rss_kib: u64,
}

fn usage() -> Usage {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    Usage {
        fds: std::fs::read_dir("/proc/self/fd").unwrap().count(),
        threads: field("Threads:") as usize,
        rss_kib: field("VmRSS:"),
    }
}

async fn cycle(h: &TestHub, client: &mut (impl Write, impl BufRead), n: usize) {
    let (s, b) = h
        .post("/api/v1/backups", &full("soak", vec![disk(0, 2000, MIB)]))
        .await;
    assert_eq!(s, StatusCode::OK, "cycle {n}: {b}");
    let id = b["backup_id"].as_str().unwrap().to_owned();
    let uri = b["disk_results"][0]["nbd_uri"].as_str().unwrap();
    writeln!(client.0, "{uri}").unwrap();
    client.0.flush().unwrap();
    let mut line = String::new();
    client.1.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ok", "cycle {n}");
    let (s, c) = h.complete(&id, r#"{"change_id":"soak"}"#).await;
    assert_eq!(s, StatusCode::OK, "cycle {n}: {c}");
    let done = h.wait_status(&id, "completed").await;
    assert_eq!(done["disk_results"][0]["bytes_written"], 65536, "cycle {n}");
    let (s, d) = h.delete(&id).await;
    assert_eq!(s, StatusCode::OK, "cycle {n}: {d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_backup_cycles_leak_no_fds_threads_or_memory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let h = TestHub::start(test_config(data.clone())).await;
    let mut py = ChildGuard(Some(
        Command::new("/usr/bin/python3")
            .args(["-c", CLIENT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let stdin = py.child().stdin.take().unwrap();
    let stdout = BufReader::new(py.child().stdout.take().unwrap());
    let mut client = (stdin, stdout);

    for n in 0..WARM_UP {
        cycle(&h, &mut client, n).await;
    }
    let before = usage();
    let started = std::time::Instant::now();
    for n in WARM_UP..WARM_UP + CYCLES {
        cycle(&h, &mut client, n).await;
    }
    let elapsed = started.elapsed();
    let after = usage();
    eprintln!(
        "soak: {CYCLES} cycles in {:.1} s; before {before:?}, after {after:?}",
        elapsed.as_secs_f64()
    );
    drop(client);
    let _ = py.child().wait();

    // Noise, not growth: a leaked fd, thread or image per cycle would show as hundreds.
    assert!(after.fds <= before.fds + 8, "fds {before:?} -> {after:?}");
    assert!(
        after.threads <= before.threads + 16,
        "threads {before:?} -> {after:?}"
    );
    assert!(
        after.rss_kib <= before.rss_kib + 32 * 1024,
        "RSS {before:?} -> {after:?}"
    );
    // Nothing left behind on disk either.
    let vm_dir = data.join("repository").join("soak");
    assert!(!vm_dir.exists(), "a backup directory outlived its delete");
    h.stop().await;
}
