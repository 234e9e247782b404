//! Slow and silent HTTP clients against `sendense-hub serve` as a real process with a small file
//! descriptor limit: they are closed and cannot keep another client from an answer.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Longest the test waits on the hub before calling it hung (a bound, not a timing).
const HANG: Duration = Duration::from_secs(120);

/// `sendense-hub serve` with `config`, file descriptors limited to `nofile`; returns the API address.
fn start(dir: &tempfile::TempDir, config: &str, nofile: u32) -> (ChildGuard, String) {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(BIN)
        .arg("--log-json")
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .args(["--api-listen", "127.0.0.1:0", "--nbd-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let guard = ChildGuard(Some(child));
    let mut api = None;
    let mut lines = lines.map_while(Result::ok);
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(a) = v["fields"]["api"].as_str() {
            api = Some(a.to_owned());
            break;
        }
    }
    // Keep draining the log so the hub never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let pid = guard.0.as_ref().unwrap().id().to_string();
    let limit = format!("--nofile={nofile}:{nofile}");
    run_ok(Command::new("prlimit").args(["--pid", &pid, &limit]));
    (guard, api.expect("hub exited before listening"))
}

/// Reads until the server answers or closes; panics if it does neither within [`HANG`].
fn until_answered_or_closed(s: &mut TcpStream, what: &str) -> Vec<u8> {
    s.set_read_timeout(Some(HANG)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("{what}: neither answered nor closed ({e})"),
        }
    }
}

fn get_health(api: &str) -> String {
    let mut s = TcpStream::connect(api).unwrap();
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    String::from_utf8_lossy(&until_answered_or_closed(&mut s, "GET /health")).into_owned()
}

#[test]
fn silent_connections_are_closed_and_never_lock_out_a_client() {
    let dir = tempfile::tempdir().unwrap();
    // 300 silent connections exceed this process's 200 descriptors unless the cap holds.
    let (_hub, api) = start(&dir, "api_idle_timeout_secs = 2\n", 200);
    let mut silent: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(&api).unwrap())
        .collect();
    let answer = get_health(&api);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for (i, s) in silent.iter_mut().enumerate() {
        let got = until_answered_or_closed(s, &format!("silent connection {i}"));
        assert!(got.is_empty(), "a silent connection got {got:?}");
    }
    let answer = get_health(&api);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn a_trickled_body_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (_hub, api) = start(&dir, "api_body_timeout_secs = 1\n", 1024);
    let token = std::fs::read_to_string(dir.path().join("data/api-token")).unwrap();
    let mut s = TcpStream::connect(&api).unwrap();
    write!(
        s,
        "POST /api/v1/backups HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{",
        token.trim()
    )
    .unwrap();
    // One byte every 100 ms: the whole body would take almost three hours.
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading: {e}"),
        }
        assert!(
            start.elapsed() < HANG,
            "a trickled body held its request open"
        );
        if s.write_all(b" ").is_err() {
            break;
        }
    }
    let answer = get_health(&api);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
