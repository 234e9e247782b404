//! `sendense-hub serve` as a real process, driven over real sockets like the README's quick
//! start: HTTP for the API, nbdcopy for the disk, SIGTERM at the end, and a restart on the same
//! data dir.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::*;
use serde_json::{Value, json};

/// A minimal HTTP/1.1 client (one request per connection), so the test needs no curl.
fn http(
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

fn ok(resp: (u16, Value)) -> Value {
    assert_eq!(resp.0, 200, "{}", resp.1);
    resp.1
}

/// Start `sendense-hub serve` on ephemeral ports; learn them from its JSON log. The data dir
/// comes from the environment; the listen flags win over (unusable) environment values.
fn start_hub(data: &Path) -> (ChildGuard, String, String) {
    let mut child = Command::new(BIN)
        .args([
            "--log-json",
            "serve",
            "--api-listen",
            "127.0.0.1:0",
            "--nbd-listen",
            "127.0.0.1:0",
        ])
        .env("SENDENSE_HUB_DATA_DIR", data)
        .env("SENDENSE_HUB_API_LISTEN", "192.0.2.1:1")
        .env("SENDENSE_HUB_NBD_LISTEN", "192.0.2.1:2")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let guard = ChildGuard(Some(child));
    let (tx, rx) = mpsc::channel::<String>();
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

fn create(api: &str, token: &str, vm: &str, capacity: u64) -> Value {
    let req = json!({"vm_name": vm, "backup_type": "full",
        "disks": [{"disk_id": 0, "vmware_disk_key": 2000, "capacity_bytes": capacity}]});
    ok(http(
        "POST",
        api,
        "/api/v1/backups",
        Some(token),
        Some(&req),
    ))
}

/// Writes 1 MiB, says so, then holds the connection open (no FLUSH) until stdin closes.
const HOLD_OPEN: &str = r#"
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(b"\x77" * 1048576, 1048576)
print("written", flush=True)
sys.stdin.readline()
"#;

#[test]
fn serve_process_quick_start_sigterm_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut hub, api, nbd) = start_hub(&data);
    assert_eq!(ok(http("GET", &api, "/health", None, None))["status"], "ok");

    let token = std::fs::read_to_string(data.join("api-token"))
        .unwrap()
        .trim()
        .to_owned();
    let src = dir.path().join("disk.raw");
    make_raw(&src, 3 << 20, 40);
    let backup = create(&api, &token, "quick", 3 << 20);
    let id = backup["backup_id"].as_str().unwrap().to_owned();
    let uri = backup["disk_results"][0]["nbd_uri"].as_str().unwrap();
    assert!(uri.starts_with(&format!("nbd://{nbd}/")), "{uri}");
    run_ok(Command::new("nbdcopy").arg(&src).arg(uri));
    // The SNA completes without a token (it comes from loopback through its tunnel).
    let body = json!({"disk_id": 0, "change_id": "x-1"});
    ok(http(
        "POST",
        &api,
        &format!("/api/v1/backups/{id}/complete"),
        None,
        Some(&body),
    ));
    let get = format!("/api/v1/backups/{id}");
    let mut status = Value::Null;
    for _ in 0..600 {
        status = ok(http("GET", &api, &get, Some(&token), None));
        if status["status"] == "completed" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(status["status"], "completed", "{status}");
    assert!(
        status["started_at"].is_string(),
        "the first connection was recorded: {status}"
    );
    // nbdcopy skips the all-zero MiB of the source.
    assert_eq!(
        status["disk_results"][0]["bytes_written"],
        2 << 20,
        "{status}"
    );
    // Without a token the operator routes refuse.
    let (code, err) = http("GET", &api, &get, None, None);
    assert_eq!((code, &err["error"]["code"]), (401, &json!("unauthorized")));

    // A second backup is mid-write, its connection open and never flushed, when SIGTERM comes.
    let open = create(&api, &token, "busy", 2 << 20);
    let open_id = open["backup_id"].as_str().unwrap().to_owned();
    let mut writer = Command::new("/usr/bin/python3")
        .args(["-c", HOLD_OPEN])
        .arg(open["disk_results"][0]["nbd_uri"].as_str().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(writer.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "written");

    let exit = hub.terminate_and_wait();
    assert!(exit.success(), "hub exited with {exit}");
    let _ = writer.stdin.take().unwrap().write_all(b"\n");
    let _ = writer.wait();

    let image = std::path::PathBuf::from(status["disk_results"][0]["qcow2_path"].as_str().unwrap());
    qemu_img_check(&image);
    qemu_img_compare(&src, &image);
    // What the interrupted client wrote was flushed at shutdown.
    let busy = std::path::PathBuf::from(open["disk_results"][0]["qcow2_path"].as_str().unwrap());
    qemu_img_check(&busy);
    let mut expected = vec![0u8; 2 << 20];
    expected[1 << 20..].fill(0x77);
    let raw = dir.path().join("busy.raw");
    std::fs::write(&raw, &expected).unwrap();
    qemu_img_compare(&raw, &busy);

    // Restart: the catalog is kept; the interrupted backup is failed.
    let (mut hub, api, _) = start_hub(&data);
    let kept = ok(http(
        "GET",
        &api,
        &format!("/api/v1/backups/{id}"),
        Some(&token),
        None,
    ));
    assert_eq!(kept["status"], "completed");
    let failed = ok(http(
        "GET",
        &api,
        &format!("/api/v1/backups/{open_id}"),
        Some(&token),
        None,
    ));
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("interrupted by restart"),
        "{failed}"
    );
    assert!(hub.terminate_and_wait().success());
}
